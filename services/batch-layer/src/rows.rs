//! A day's rows as Postgres receives and returns them (binary `COPY`), and what must
//! change for a stored day to become a recomputed one.
//!
//! An incremental run recomputes days that are already stored (late arrivals touch the
//! two days before the new one), and most of their rows come out the same. Rather than
//! deleting a whole day and copying it in again, the run reads the stored rows back,
//! deletes the ones that changed or vanished and copies in the ones that changed or are
//! new: the stored day ends up exactly the recomputed one, for a fraction of the writes.

use std::collections::HashMap;
use std::hash::Hash;

use chrono::{DateTime, Utc};

use crate::binary::{BinaryReader, BinaryRows, Malformed};
use crate::compute::{DayRow, HourRow};
use crate::partitions::{DAILY, HOURLY};

/// The binary `COPY` data of `hours` (all of the day starting at `day`), in the column
/// order of [`HOURLY`]'s `COPY`.
pub fn hour_rows<'a>(day: i64, hours: impl IntoIterator<Item = &'a HourRow>) -> BinaryRows {
    let mut out = BinaryRows::new();
    for row in hours {
        out.row(7)
            .text(&row.customer)
            .timestamp(row.hour)
            .date(day)
            .int8(row.sum)
            .int8(row.count)
            .int8(row.max)
            .int4(int4(row.distinct_vendors));
    }
    out
}

/// The binary `COPY` data of `days`, in the column order of [`DAILY`]'s `COPY`.
pub fn day_rows<'a>(days: impl IntoIterator<Item = &'a DayRow>) -> BinaryRows {
    let mut out = BinaryRows::new();
    for row in days {
        out.row(9)
            .text(&row.customer)
            .date(row.day)
            .int8(row.sum)
            .int8(row.count)
            .int8(row.max)
            .int4(int4(row.distinct_vendors))
            .int8(row.peak_sum)
            .int8(row.peak_count)
            .timestamp(row.peak_end);
    }
    out
}

/// A customer has fewer distinct vendors in a day than there are events, which
/// `compute` counts in `i64`; the column is `INTEGER`.
fn int4(value: i64) -> i32 {
    i32::try_from(value).expect("distinct vendors of a day fit in an INTEGER")
}

/// A stored hour's key (customer, hour start) and its figures.
pub type HourKey = (String, i64);
pub type HourValue = (i64, i64, i64, i64);

/// The columns a stored hour is read back with: [`HourKey`], then [`HourValue`].
const HOUR_COLUMNS: &str = "customer_id, hour, sum_minor, count, max_minor, distinct_vendors";

/// The columns a stored day is read back with: its customer, then [`DayValue`].
const DAY_COLUMNS: &str = "customer_id, sum_minor, count, max_minor, distinct_vendors, \
    peak_30m_sum_minor, peak_30m_count, peak_30m_end";

/// `SELECT` of a day's stored hours, in [`stored_hours`]' column order.
pub fn select_hours(date: chrono::NaiveDate) -> String {
    format!(
        "COPY (SELECT {HOUR_COLUMNS} FROM batch_hourly WHERE {}) TO STDOUT (FORMAT binary)",
        HOURLY.rows_of(date)
    )
}

/// `SELECT` of a day's stored daily rows, in [`stored_days`]' column order.
pub fn select_days(date: chrono::NaiveDate) -> String {
    format!(
        "COPY (SELECT {DAY_COLUMNS} FROM batch_daily WHERE {}) TO STDOUT (FORMAT binary)",
        DAILY.rows_of(date)
    )
}

/// The stored hours read with [`select_hours`].
pub fn stored_hours(data: &[u8]) -> Result<HashMap<HourKey, HourValue>, Malformed> {
    let mut reader = BinaryReader::new(data)?;
    let mut out = HashMap::new();
    while reader.row()?.is_some() {
        let key = (reader.text()?.to_owned(), reader.timestamp()?);
        let value = (
            reader.int8()?,
            reader.int8()?,
            reader.int8()?,
            i64::from(reader.int4()?),
        );
        out.insert(key, value);
    }
    Ok(out)
}

/// The stored hours of `date` of `customers`.
pub async fn customers_hours(
    connection: &mut sqlx::PgConnection,
    date: chrono::NaiveDate,
    customers: &[&str],
) -> sqlx::Result<HashMap<HourKey, HourValue>> {
    // The condition on the partition key is made of a constant and a date.
    let rows: Vec<(String, DateTime<Utc>, i64, i64, i64, i32)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {HOUR_COLUMNS} FROM batch_hourly WHERE {} AND customer_id = ANY($1)",
            HOURLY.rows_of(date)
        )))
        .bind(customers)
        .fetch_all(connection)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(customer, hour, sum, count, max, vendors)| {
            (
                (customer, hour.timestamp_millis()),
                (sum, count, max, i64::from(vendors)),
            )
        })
        .collect())
}

/// The stored daily rows of `date` of `customers`, by customer.
pub async fn customers_days(
    connection: &mut sqlx::PgConnection,
    date: chrono::NaiveDate,
    customers: &[&str],
) -> sqlx::Result<HashMap<String, DayValue>> {
    type Row = (String, i64, i64, i64, i32, i64, i64, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DAY_COLUMNS} FROM batch_daily WHERE {} AND customer_id = ANY($1)",
        DAILY.rows_of(date)
    )))
    .bind(customers)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(customer, sum, count, max, vendors, peak_sum, peak_count, end)| {
                (
                    customer,
                    (
                        sum,
                        count,
                        max,
                        i64::from(vendors),
                        peak_sum,
                        peak_count,
                        end.timestamp_millis(),
                    ),
                )
            },
        )
        .collect())
}

pub fn hour_key(row: &HourRow) -> HourKey {
    (row.customer.clone(), row.hour)
}

pub fn hour_value(row: &HourRow) -> HourValue {
    (row.sum, row.count, row.max, row.distinct_vendors)
}

pub type DayValue = (i64, i64, i64, i64, i64, i64, i64);

/// The stored daily rows read with [`select_days`], by customer.
pub fn stored_days(data: &[u8]) -> Result<HashMap<String, DayValue>, Malformed> {
    let mut reader = BinaryReader::new(data)?;
    let mut out = HashMap::new();
    while reader.row()?.is_some() {
        let customer = reader.text()?.to_owned();
        let value = (
            reader.int8()?,
            reader.int8()?,
            reader.int8()?,
            i64::from(reader.int4()?),
            reader.int8()?,
            reader.int8()?,
            reader.timestamp()?,
        );
        out.insert(customer, value);
    }
    Ok(out)
}

pub fn day_key(row: &DayRow) -> String {
    row.customer.clone()
}

pub fn day_value(row: &DayRow) -> DayValue {
    (
        row.sum,
        row.count,
        row.max,
        row.distinct_vendors,
        row.peak_sum,
        row.peak_count,
        row.peak_end,
    )
}

/// What turns the `stored` rows (by key) into exactly `new`: the keys to delete (rows
/// that changed or are no longer there) and the rows to insert (changed or new).
/// Deleting first, then inserting, leaves exactly `new`.
pub fn changes<R, K: Hash + Eq, V: PartialEq>(
    mut stored: HashMap<K, V>,
    new: &[R],
    key: impl Fn(&R) -> K,
    value: impl Fn(&R) -> V,
) -> (Vec<K>, Vec<&R>) {
    let mut deletes = Vec::new();
    let mut inserts = Vec::new();
    for row in new {
        let row_key = key(row);
        match stored.remove(&row_key) {
            Some(old) if old == value(row) => {}
            Some(_) => {
                deletes.push(row_key);
                inserts.push(row);
            }
            None => inserts.push(row),
        }
    }
    deletes.extend(stored.into_keys());
    (deletes, inserts)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use proptest::prelude::*;

    const D: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn hour(customer: &str, hour: i64, sum: i64) -> HourRow {
        HourRow {
            customer: customer.into(),
            hour: D + hour * 3_600_000,
            sum,
            count: 1,
            max: sum,
            distinct_vendors: 1,
        }
    }

    #[test]
    fn stored_rows_read_back_as_copied() {
        let hours = vec![hour("c,1", 0, 5), hour("c\"2", 23, i64::MAX)];
        let data = hour_rows(D, &hours).finish();
        // The COPY data of hours has the date in between; read back as the select's
        // columns it is not, so encode the select's shape by hand.
        assert!(!data.is_empty());
        let mut selected = BinaryRows::new();
        for row in &hours {
            selected
                .row(6)
                .text(&row.customer)
                .timestamp(row.hour)
                .int8(row.sum)
                .int8(row.count)
                .int8(row.max)
                .int4(int4(row.distinct_vendors));
        }
        let stored = stored_hours(&selected.finish()).unwrap();
        for row in &hours {
            assert_eq!(stored[&hour_key(row)], hour_value(row));
        }
        let days = vec![DayRow {
            customer: "c".into(),
            day: D,
            sum: 7,
            count: 2,
            max: 5,
            distinct_vendors: 2,
            peak_sum: 7,
            peak_count: 2,
            peak_end: D + 61_001,
        }];
        let mut selected = BinaryRows::new();
        for row in &days {
            let value = day_value(row);
            selected
                .row(8)
                .text(&row.customer)
                .int8(value.0)
                .int8(value.1)
                .int8(value.2)
                .int4(int4(value.3))
                .int8(value.4)
                .int8(value.5)
                .timestamp(value.6);
        }
        let stored = stored_days(&selected.finish()).unwrap();
        assert_eq!(stored["c"], day_value(&days[0]));
    }

    proptest! {
        /// Deleting the keys, then inserting the rows, turns any stored day into the
        /// new one; unchanged rows are neither deleted nor inserted.
        #[test]
        fn changes_turn_the_stored_rows_into_the_new_ones(
            stored in prop::collection::btree_map((0..6_u8, 0..24_i64), 1..4_i64, 0..30),
            new in prop::collection::btree_map((0..6_u8, 0..24_i64), 1..4_i64, 0..30),
        ) {
            let to_rows = |map: &BTreeMap<(u8, i64), i64>| -> Vec<HourRow> {
                map.iter().map(|(&(c, h), &sum)| hour(&format!("c{c}"), h, sum)).collect()
            };
            let stored_rows = to_rows(&stored);
            let new_rows = to_rows(&new);
            let stored_map: HashMap<HourKey, HourValue> =
                stored_rows.iter().map(|r| (hour_key(r), hour_value(r))).collect();
            let (deletes, inserts) = changes(stored_map.clone(), &new_rows, hour_key, hour_value);
            let mut after = stored_map.clone();
            for key in &deletes {
                prop_assert!(after.remove(key).is_some(), "deletes only stored rows");
            }
            for row in &inserts {
                prop_assert!(
                    after.insert(hour_key(row), hour_value(row)).is_none(),
                    "inserts never collide with a kept row"
                );
            }
            let expected: HashMap<HourKey, HourValue> =
                new_rows.iter().map(|r| (hour_key(r), hour_value(r))).collect();
            prop_assert_eq!(&after, &expected);
            let unchanged = new_rows
                .iter()
                .filter(|r| stored_map.get(&hour_key(r)) == Some(&hour_value(r)))
                .count();
            prop_assert_eq!(inserts.len(), new_rows.len() - unchanged);
        }
    }
}
