//! The customers' baselines as of T_b, derived from the stored daily rows of the 30 UTC
//! days ending with T_b's day (`migrations/0002_batch_views.sql`).
//!
//! The window moves by a day every night, so every customer's baseline is derived again
//! (its `as_of` changes, and nearly every customer has a row on the day that leaves or a
//! day that was recomputed). Aggregating a month of daily rows in SQL ([`DERIVE_IN_SQL`],
//! the definition) costs a sort of them by customer for the ordered-set percentile, and
//! Postgres' `numeric` square root is slow; here the grouping, the nearest-rank
//! percentile, the mean and the spread are computed in Rust, in integers: the mean
//! `round(S / 30, 4)` and the spread `round(sqrt(30 Q − S²) / 30, 4)` (S the sum of the
//! daily sums, Q of their squares) are exact, rounded half away from zero as `round`
//! does, and the rows go into the table through binary `COPY`. The SQL computes the
//! square root to 20 decimals, which gives the same 4 decimals: the exact value is never
//! within 10⁻²⁰ of a rounding boundary while the spread is below 5.7 × 10⁸ minor units
//! (`4·10⁸·N` and `900·(2m + 1)²` are distinct multiples of 4). Should a customer's
//! figures not fit in `i128`, the derivation falls back to the SQL.
//!
//! The inputs ([`Inputs`]) are gathered during the run, not read back at its end: the
//! days the run recomputes come from its own rows, and the window's other days (which
//! the run does not change) are read on a connection of their own while the lake is
//! read, so that neither waits for the other. They come from the days each baseline was
//! derived from, which a run keeps for the next in `batch_baseline_windows`
//! (`migrations/0010`, `0011`; [`keep_windows`] writes them in a transaction of their own,
//! [`read_windows`] reads them: one row per customer), or, when those are not the last
//! succeeded run's (the table is unlogged: empty after a crash; a run failed or stopped
//! between its two commits), from the stored daily rows ([`read_stored`]: a row per
//! customer and day).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Connection as _, PgConnection};

use crate::binary::{BinaryReader, BinaryRows};
use crate::compute::{DAY_MS, DayRow};
use crate::partitions::{NewPartition, partitions_of};
use crate::scope::{Customers, Scope};
use crate::store::copy_in;

/// Days in a baseline's window: the 30 UTC days ending with T_b's day.
const WINDOW_DAYS: u64 = 30;

/// The fraction of the daily peaks' percentile (nearest rank), as the SQL's
/// `percentile_disc(0.95)`.
const PERCENTILE: f64 = 0.95;

/// The SQL derivation: the definition, and the fallback (into the run's partition,
/// `{partition}`, for run `$2`).
const DERIVE_IN_SQL: &str = "\
INSERT INTO {partition} (customer_id, as_of, active_days, mean_daily_minor,
    stddev_daily_minor, p95_peak_30m_minor, max_peak_30m_minor, run_id)
SELECT customer_id, $1, count(*),
       round(sum(sum_minor)::numeric / 30, 4),
       round(sqrt((30 * sum(sum_minor::numeric * sum_minor)
                   - sum(sum_minor)::numeric ^ 2)::numeric(60, 20)) / 30, 4),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY peak_30m_sum_minor),
       max(peak_30m_sum_minor), $2
FROM batch_daily
WHERE day > ($1 AT TIME ZONE 'UTC')::date - 30 AND day <= ($1 AT TIME ZONE 'UTC')::date
GROUP BY customer_id";

/// The baselines' `COPY` into the run's partition, `{partition}`, in the column order of
/// [`encode`]'s rows.
const COPY_BASELINES: &str = "COPY {partition} (customer_id, as_of, active_days, \
    mean_daily_minor, stddev_daily_minor, p95_peak_30m_minor, max_peak_30m_minor, run_id) \
    FROM STDIN (FORMAT binary)";

/// The partitioned table of the baselines (`migrations/0009`): a partition per run.
const BASELINES: &str = "batch_baselines";

/// The windows' `COPY`, in the column order of [`encode`]'s windows.
const COPY_WINDOWS: &str = "COPY batch_baseline_windows (customer_id, run_id, days) \
    FROM STDIN (FORMAT binary)";

/// The days of the baselines as of `watermark`: `first..=last`.
pub fn window(watermark: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let last = watermark.date_naive();
    (last - chrono::Days::new(WINDOW_DAYS - 1), last)
}

/// One of a customer's days in a baseline's window: the day (days since 1970-01-01,
/// UTC), its sum and its peak (`batch_daily`'s `sum_minor` and `peak_30m_sum_minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowDay {
    day: i32,
    sum: i64,
    peak: i64,
}

/// The baselines' inputs: per customer, its days in the window. (Keyed with foldhash: a
/// month of daily rows is millions of lookups, and SipHash was a fifth of the night's
/// time in this process.)
#[derive(Debug, Default)]
pub struct Inputs {
    customers: HashMap<String, Vec<WindowDay>, foldhash::fast::RandomState>,
}

/// A day's inputs of the baselines, taken from its rows.
#[derive(Debug, Default)]
pub struct DayInputs(Vec<(String, WindowDay)>);

impl DayInputs {
    /// The inputs of a day's rows (the rows `batch_daily` holds, or will hold, for that
    /// day).
    pub fn of(rows: &[DayRow]) -> DayInputs {
        DayInputs(
            rows.iter()
                .map(|row| {
                    let day = WindowDay {
                        day: day_number(row.day),
                        sum: row.sum,
                        peak: row.peak_sum,
                    };
                    (row.customer.clone(), day)
                })
                .collect(),
        )
    }
}

impl Inputs {
    /// Adds a day's inputs.
    pub fn add_day(&mut self, day: DayInputs) {
        for (customer, day) in day.0 {
            self.customers.entry(customer).or_default().push(day);
        }
    }

    /// Adds what another gathering found (of other days).
    pub fn merge(&mut self, other: Inputs) {
        for (customer, days) in other.customers {
            self.customers.entry(customer).or_default().extend(days);
        }
    }

    fn add(&mut self, customer: &str, day: WindowDay) {
        match self.customers.get_mut(customer) {
            Some(days) => days.push(day),
            None => {
                self.customers.insert(customer.to_owned(), vec![day]);
            }
        }
    }

    /// Reads rows of [`read_stored`]'s binary `COPY` output, but those of the customers
    /// in `skip`.
    fn add_binary(&mut self, data: &[u8], skip: Option<&Customers>) -> anyhow::Result<()> {
        let mut reader = BinaryReader::new(data)?;
        while reader.row()?.is_some() {
            let customer = reader.text()?;
            let day = WindowDay {
                day: day_number(reader.date()?),
                sum: reader.int8()?,
                peak: reader.int8()?,
            };
            if !skip.is_some_and(|skip| skip.contains(customer)) {
                self.add(customer, day);
            }
        }
        Ok(())
    }

    /// Each customer's baseline, and its days in day order, by customer; `None` when a
    /// sum overflows.
    fn per_customer(self) -> Option<Vec<(String, Sums, Vec<WindowDay>)>> {
        let mut out = Vec::with_capacity(self.customers.len());
        for (customer, mut days) in self.customers {
            days.sort_unstable();
            let sums: Vec<i64> = days.iter().map(|day| day.sum).collect();
            let mut peaks: Vec<i64> = days.iter().map(|day| day.peak).collect();
            let baseline = sums_of(&sums, &mut peaks)?;
            out.push((customer, baseline, days));
        }
        // In the primary key's order: Postgres builds the new partition's key from
        // presorted rows about three times faster (a third of the partition's load).
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }
}

/// The day number (days since 1970-01-01) of a day starting at `day_start` (UTC ms).
fn day_number(day_start: i64) -> i32 {
    i32::try_from(day_start.div_euclid(DAY_MS)).expect("a date Postgres can hold")
}

/// `batch_baseline_windows.days` (`migrations/0011`): a format byte (2), then per day
/// in the window, in day order, three LEB128 varints of zigzag-encoded integers: the day
/// number less the previous day's (the first day's: less 0), the sum and the peak.
/// About 6 bytes a day where fixed-width fields took 20: the table is copied in whole by
/// every run and out by the next, while its transaction waits.
const WINDOW_FORMAT: u8 = 2;

fn encode_window(days: &[WindowDay]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + days.len() * 7);
    out.push(WINDOW_FORMAT);
    let mut previous = 0;
    for day in days {
        put_varint(&mut out, zigzag(i64::from(day.day) - previous));
        put_varint(&mut out, zigzag(day.sum));
        put_varint(&mut out, zigzag(day.peak));
        previous = i64::from(day.day);
    }
    out
}

/// The days of an [`encode_window`] value; `None` when it is not one (another format,
/// a truncated or overlong varint, a day number out of range).
fn decode_window(data: &[u8]) -> Option<Vec<WindowDay>> {
    let mut data = data.strip_prefix(&[WINDOW_FORMAT])?;
    let mut days = Vec::with_capacity(data.len() / 6);
    let mut day = 0_i64;
    while !data.is_empty() {
        day = day.checked_add(unzigzag(take_varint(&mut data)?))?;
        days.push(WindowDay {
            day: i32::try_from(day).ok()?,
            sum: unzigzag(take_varint(&mut data)?),
            peak: unzigzag(take_varint(&mut data)?),
        });
    }
    Some(days)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at the start of `data`, which moves past it.
fn take_varint(data: &mut &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    for (index, &byte) in data.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        // The tenth byte holds the 64th bit alone.
        if index == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            *data = &data[index + 1..];
            return Some(value);
        }
    }
    None
}

/// The inputs of the baselines as of `watermark` that the stored windows of the
/// baselines hold, but the rows `recomputed` replaces; `None` when they are not all
/// those of run `published` (the last succeeded run; see [`keep_windows`]), and the
/// daily rows must be read instead ([`read_stored`]).
///
/// Every day of the new window is either in the published window or after its last day,
/// and every day from the published watermark's on is recomputed whole: the windows
/// hold all the stored days the new baselines need.
pub async fn read_windows(
    connection: &mut PgConnection,
    published: i64,
    watermark: DateTime<Utc>,
    recomputed: &[(NaiveDate, Scope)],
) -> anyhow::Result<Option<Inputs>> {
    let data = crate::store::copy_out(
        connection,
        "COPY (SELECT customer_id, run_id, days FROM batch_baseline_windows) \
         TO STDOUT (FORMAT binary)",
    )
    .await?;
    let recomputed = recomputed.to_vec();
    crate::background::ahead(move || windows_inputs(&data, published, watermark, &recomputed))
        .await?
}

/// [`read_windows`] of the windows' binary `COPY` output, `data`.
fn windows_inputs(
    data: &[u8],
    published: i64,
    watermark: DateTime<Utc>,
    recomputed: &[(NaiveDate, Scope)],
) -> anyhow::Result<Option<Inputs>> {
    let (first, last) = window(watermark);
    let number = |date: NaiveDate| day_number(crate::lake::day_start(date));
    let whole: HashSet<i32> = recomputed
        .iter()
        .filter(|(_, scope)| scope.customers().is_none())
        .map(|(date, _)| number(*date))
        .collect();
    let partial: HashMap<i32, &Customers> = recomputed
        .iter()
        .filter_map(|(date, scope)| Some((number(*date), scope.customers()?)))
        .collect();
    let (first, last) = (number(first), number(last));
    let mut inputs = Inputs::default();
    let mut reader = BinaryReader::new(data)?;
    let mut rows = 0;
    while reader.row()?.is_some() {
        rows += 1;
        let customer = reader.text()?;
        let run = reader.int8()?;
        let Some(days) = decode_window(reader.bytes()?) else {
            return Ok(None);
        };
        if run != published {
            return Ok(None);
        }
        for day in days {
            let replaced = whole.contains(&day.day)
                || partial
                    .get(&day.day)
                    .is_some_and(|customers| customers.contains(customer));
            if (first..=last).contains(&day.day) && !replaced {
                inputs.add(customer, day);
            }
        }
    }
    Ok((rows > 0).then_some(inputs))
}

/// The stored inputs of the days of the window as of `watermark` but the rows `recomputed`
/// replaces (the run adds those itself): all of a day recomputed whole, the recomputed
/// customers' of a day recomputed in part.
pub async fn read_stored(
    connection: &mut PgConnection,
    watermark: DateTime<Utc>,
    recomputed: &[(NaiveDate, Scope)],
) -> anyhow::Result<Inputs> {
    let (first, last) = window(watermark);
    let select = |condition: &str| {
        format!(
            "COPY (SELECT customer_id, day, sum_minor, peak_30m_sum_minor FROM batch_daily \
             WHERE {condition}) TO STDOUT (FORMAT binary)"
        )
    };
    let in_window = |date: &NaiveDate| (first..=last).contains(date);
    let skipped: Vec<String> = recomputed
        .iter()
        .filter(|(date, _)| in_window(date))
        .map(|(date, _)| format!("'{date}'"))
        .collect();
    let skip = if skipped.is_empty() {
        String::new()
    } else {
        format!(" AND day NOT IN ({})", skipped.join(", "))
    };
    let all = crate::store::copy_out(
        connection,
        &select(&format!("day >= '{first}' AND day <= '{last}'{skip}")),
    )
    .await?;
    let mut partial = Vec::new();
    for (date, scope) in recomputed.iter().filter(|(date, _)| in_window(date)) {
        if scope.customers().is_some() {
            let data =
                crate::store::copy_out(connection, &select(&format!("day = '{date}'"))).await?;
            partial.push((data, scope.clone()));
        }
    }
    // A month of daily rows: decoded as work ahead, like the windows.
    crate::background::ahead(move || {
        let mut inputs = Inputs::default();
        inputs.add_binary(&all, None)?;
        for (data, scope) in &partial {
            inputs.add_binary(data, scope.customers())?;
        }
        Ok(inputs)
    })
    .await?
}

/// The name of run `run_id`'s partition of `batch_baselines`: this and the run id.
const PARTITION_PREFIX: &str = "batch_baselines_r";

/// The name of run `run_id`'s partition of `batch_baselines`.
pub fn partition(run_id: i64) -> String {
    format!("{PARTITION_PREFIX}{run_id}")
}

/// The baselines of run `run_id` as of `watermark`, and their windows, as binary `COPY`
/// rows, derived from `inputs`, which must hold every day of the window as the run's
/// transaction has it; `None` when a customer's figures do not fit in `i128` ([`derive`]
/// then derives them in SQL). CPU only: the caller runs it while Postgres works.
pub fn prepare(
    inputs: Inputs,
    run_id: i64,
    watermark: DateTime<Utc>,
) -> Option<(BinaryRows, BinaryRows)> {
    let customers = inputs.per_customer()?;
    Some(encode(&customers, run_id, watermark))
}

/// Replaces every baseline with the ones as of `watermark` (`rows`, prepared by
/// [`prepare`]; `None`: derived in SQL): they go into a partition of run `run_id`'s own
/// (loaded, then indexed and attached), and the other partitions' rows are deleted.
/// Returns the rows written.
pub async fn derive(
    connection: &mut PgConnection,
    run_id: i64,
    watermark: DateTime<Utc>,
    rows: Option<BinaryRows>,
) -> anyhow::Result<u64> {
    let new = NewPartition::create(connection, BASELINES, partition(run_id)).await?;
    let rows = match rows {
        Some(rows) => {
            copy_in(
                connection,
                &COPY_BASELINES.replace("{partition}", &new.name),
                rows,
            )
            .await?
        }
        None => {
            tracing::warn!("a sum of squared daily sums exceeds i128: baselines derived in SQL");
            // The statement is made of a constant and the partition's name.
            sqlx::query(sqlx::AssertSqlSafe(
                DERIVE_IN_SQL.replace("{partition}", &new.name),
            ))
            .bind(watermark)
            .bind(run_id)
            .execute(&mut *connection)
            .await?
            .rows_affected()
        }
    };
    new.attach(
        connection,
        "customer_id, run_id",
        &format!("run_id = {run_id}"),
        &format!("IN ({run_id})"),
    )
    .await?;
    sqlx::query("DELETE FROM batch_baselines WHERE run_id <> $1")
        .bind(run_id)
        .execute(&mut *connection)
        .await?;
    Ok(rows)
}

/// Replaces the kept windows with `windows` (the run's, [`prepare`]d), in a transaction
/// of its own on `connection`: next to the run's publishing transaction, not in it. The
/// rows name their run, and the next run uses them only if that run succeeded (see
/// [`read_windows`]), so either order of the two commits, or a failure of either, is
/// safe. Only batch runs, one at a time (the advisory lock), use the table: `TRUNCATE`'s
/// lock holds nobody up.
pub async fn keep_windows(
    connection: &mut PgConnection,
    windows: BinaryRows,
) -> anyhow::Result<()> {
    let mut transaction = connection.begin().await?;
    sqlx::query("TRUNCATE batch_baseline_windows")
        .execute(&mut *transaction)
        .await?;
    copy_in(&mut transaction, COPY_WINDOWS, windows).await?;
    transaction.commit().await?;
    Ok(())
}

/// Drops the partitions of `batch_baselines` of runs before the latest one's, which
/// that run emptied, when nobody is reading them (a reader holding one, whose snapshot
/// is older than the latest run, makes this give up until a later run). Returns how
/// many it dropped.
pub async fn drop_emptied(connection: &mut PgConnection) -> anyhow::Result<usize> {
    let runs: Vec<i64> = partitions_of(connection, BASELINES)
        .await?
        .iter()
        .filter_map(|name| name.strip_prefix(PARTITION_PREFIX))
        .filter(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|run| run.parse().ok())
        .collect();
    let Some(&latest) = runs.iter().max() else {
        return Ok(0);
    };
    let mut dropped = 0;
    for run in runs.into_iter().filter(|run| *run < latest) {
        // Dropping a partition locks the parent: a short wait at most, in a transaction
        // of its own, so that readers queued behind it are not held up.
        let mut transaction = connection.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '200ms'")
            .execute(&mut *transaction)
            .await?;
        // The name is made of a constant and a number.
        let drop = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE {}",
            partition(run)
        )))
        .execute(&mut *transaction)
        .await;
        match drop {
            Ok(_) => {
                transaction.commit().await?;
                dropped += 1;
            }
            Err(error) => {
                tracing::info!(%error, run, "an emptied baselines partition stays for now");
                transaction.rollback().await?;
            }
        }
    }
    Ok(dropped)
}

/// The binary `COPY` rows of `customers`' baselines, of run `run_id`, and of their
/// windows.
fn encode(
    customers: &[(String, Sums, Vec<WindowDay>)],
    run_id: i64,
    watermark: DateTime<Utc>,
) -> (BinaryRows, BinaryRows) {
    let as_of = watermark.timestamp_millis();
    let mut rows = BinaryRows::new();
    let mut windows = BinaryRows::new();
    for (customer, sums, days) in customers {
        rows.row(8)
            .text(customer)
            .timestamp(as_of)
            .int4(i32::try_from(sums.active_days).expect("at most 30 days"))
            .numeric4(sums.mean4)
            .numeric4(sums.stddev4)
            .int8(sums.p95_peak)
            .int8(sums.max_peak)
            .int8(run_id);
        windows
            .row(3)
            .text(customer)
            .int8(run_id)
            .bytes(&encode_window(days));
    }
    (rows, windows)
}

/// One customer's baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    active_days: i64,
    sum: i128,
    sum_squares: i128,
    /// The mean daily spend times 10⁴, rounded.
    mean4: i128,
    /// The spread of daily spend times 10⁴, rounded.
    stddev4: i128,
    p95_peak: i64,
    max_peak: i64,
}

/// A customer's baseline from its days' sums and peaks (at least one day); `None` on
/// overflow.
fn sums_of(sums: &[i64], peaks: &mut [i64]) -> Option<Sums> {
    debug_assert!(!sums.is_empty() && sums.len() == peaks.len());
    let mut sum = 0_i128;
    let mut sum_squares = 0_i128;
    for &day in sums {
        let day = i128::from(day);
        sum = sum.checked_add(day)?;
        sum_squares = sum_squares.checked_add(day.checked_mul(day)?)?;
    }
    let days = WINDOW_DAYS as i128;
    // round(S / 30, 4) = sign(S) · floor((|S| · 10⁴ + 15) / 30).
    let mean4 = (sum.unsigned_abs().checked_mul(10_000)?.checked_add(15)? / 30) as i128;
    let mean4 = if sum < 0 { -mean4 } else { mean4 };
    // round(sqrt(N) / 30, 4) = floor((sqrt(N · 10⁸) + 15) / 30), and the floor of the
    // root can be taken first (15 and 30 are integers). N ≥ 0 for at most 30 days.
    let spread = days
        .checked_mul(sum_squares)?
        .checked_sub(sum.checked_mul(sum)?)?;
    let spread = u128::try_from(spread).ok()?.checked_mul(100_000_000)?;
    let stddev4 = ((spread.isqrt() + 15) / 30) as i128;
    peaks.sort_unstable();
    Some(Sums {
        active_days: sums.len() as i64,
        sum,
        sum_squares,
        mean4,
        stddev4,
        p95_peak: peaks[nearest_rank(peaks.len()) - 1],
        max_peak: *peaks.last()?,
    })
}

/// The 1-based rank `percentile_disc(0.95)` returns among `rows` sorted values:
/// Postgres computes `ceil(0.95 * rows)` in double precision (and takes the first row
/// below 1). This is a count of days, not money.
fn nearest_rank(rows: usize) -> usize {
    let rank = (PERCENTILE * rows as f64).ceil() as usize;
    rank.clamp(1, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::BinaryRows;

    #[test]
    fn the_rank_is_the_smallest_k_with_k_over_n_at_least_the_percentile() {
        // Exact rational arithmetic: the smallest k with 20 k >= 19 n.
        for rows in 1_usize..=1000 {
            let exact = (19 * rows).div_ceil(20);
            assert_eq!(nearest_rank(rows), exact, "{rows} rows");
        }
    }

    #[test]
    fn a_customer_s_inputs_are_its_sums_squares_percentile_and_maximum() {
        let sums = [300, -0, 100, 250];
        let mut peaks = [40, 10, 30, 20];
        let got = sums_of(&sums, &mut peaks).unwrap();
        assert_eq!(
            got,
            Sums {
                active_days: 4,
                sum: 650,
                sum_squares: 90_000 + 10_000 + 62_500,
                // 650 / 30 = 21.6666…
                mean4: 216_667,
                // sqrt(30 · 162,500 − 650²) / 30 = sqrt(4,452,500) / 30 = 70.336492…
                stddev4: 703_365,
                p95_peak: 40, // ceil(0.95 * 4) = 4th of 4
                max_peak: 40,
            }
        );
        let sums = [1; 20];
        let mut peaks: Vec<i64> = (1..=20).collect();
        assert_eq!(sums_of(&sums, &mut peaks).unwrap().p95_peak, 19);
    }

    #[test]
    fn huge_daily_sums_fall_back_to_sql_rather_than_overflow() {
        let sums = [i64::MAX; 30];
        let mut peaks = [1; 30];
        assert_eq!(sums_of(&sums, &mut peaks), None);
        let sums = [i64::MAX; 2];
        let mut peaks = [1; 2];
        assert_eq!(sums_of(&sums, &mut peaks), None, "S² overflows");
        // Ten billion a day still fits: 1e12 and 2e12 minor units.
        let sums = [1_000_000_000_000, 2_000_000_000_000];
        let got = sums_of(&sums, &mut [1, 2]).unwrap();
        assert_eq!(got.mean4, 1_000_000_000_000_000);
        assert_rounded(got.stddev4, 141 * 10_i128.pow(24));
    }

    /// `stddev4` is sqrt(n · 10⁸) / 30 rounded: |sqrt(n · 10⁸) − 30 · stddev4| ≤ 15,
    /// i.e. (30 · stddev4 − 15)² ≤ n · 10⁸ ≤ (30 · stddev4 + 15)² (equality at either end
    /// is impossible: n · 10⁸ is a multiple of 4, (30 s ± 15)² is odd).
    fn assert_rounded(stddev4: i128, n: i128) {
        let (low, high) = (30 * stddev4 - 15, 30 * stddev4 + 15);
        let scaled = n * 100_000_000;
        assert!(
            low.max(0).pow(2) < scaled && scaled < high.pow(2),
            "{stddev4} for {n}"
        );
    }

    proptest::proptest! {
        #[test]
        fn windows_decode_to_what_was_encoded(
            start in -100_000_i32..100_000,
            steps in proptest::collection::vec((1_i32..40, proptest::num::i64::ANY, proptest::num::i64::ANY), 0..=30)
        ) {
            let mut day = start;
            let days: Vec<WindowDay> = steps
                .into_iter()
                .map(|(step, sum, peak)| {
                    day += step;
                    WindowDay { day, sum, peak }
                })
                .collect();
            proptest::prop_assert_eq!(decode_window(&encode_window(&days)), Some(days));
        }
    }

    proptest::proptest! {
        #[test]
        fn the_mean_and_spread_are_the_exact_values_rounded_to_4_decimals(
            sums in proptest::collection::vec(-1_000_000_000_000_i64..1_000_000_000_000, 1..=30)
        ) {
            let mut peaks = vec![0; sums.len()];
            let got = sums_of(&sums, &mut peaks).unwrap();
            let s: i128 = sums.iter().map(|&x| i128::from(x)).sum();
            let q: i128 = sums.iter().map(|&x| i128::from(x).pow(2)).sum();
            // |S · 10⁴ − 30 · mean4| ≤ 15, ties (an exact half) away from zero.
            let error = s * 10_000 - 30 * got.mean4;
            proptest::prop_assert!(error.abs() < 15 || error == 15 * -s.signum(), "{error}");
            let n = 30 * q - s * s;
            if n == 0 {
                proptest::prop_assert_eq!(got.stddev4, 0);
            } else {
                assert_rounded(got.stddev4, n);
            }
        }
    }

    fn day_row(customer: &str, sum: i64, peak_sum: i64) -> DayRow {
        DayRow {
            customer: customer.to_owned(),
            day: 0,
            sum,
            count: 1,
            max: sum,
            distinct_vendors: 1,
            peak_sum,
            peak_count: 1,
            peak_end: 0,
        }
    }

    /// [`read_stored`]'s output for two customers' rows of `DAY`: a's (5, 5), b's (7, 3).
    fn stored_rows() -> Vec<u8> {
        let mut rows = BinaryRows::new();
        for (customer, sum, peak) in [("a", 5, 5), ("b", 7, 3)] {
            rows.row(4).text(customer).date(DAY).int8(sum).int8(peak);
        }
        rows.finish()
    }

    fn grouped(inputs: Inputs) -> HashMap<String, Sums> {
        inputs
            .per_customer()
            .unwrap()
            .into_iter()
            .map(|(customer, sums, _)| (customer, sums))
            .collect()
    }

    #[test]
    fn rows_stored_and_recomputed_are_grouped_by_customer() {
        let mut stored = Inputs::default();
        stored.add_binary(&stored_rows(), None).unwrap();
        let mut inputs = Inputs::default();
        inputs.add_day(DayInputs::of(&[day_row("a", 1, 1), day_row("c", 2, 2)]));
        inputs.merge(stored);
        let grouped = grouped(inputs);
        assert_eq!(grouped.len(), 3);
        assert_eq!((grouped["a"].active_days, grouped["a"].sum), (2, 6));
        assert_eq!(grouped["a"].sum_squares, 26);
        assert_eq!((grouped["b"].p95_peak, grouped["b"].max_peak), (3, 3));
        assert_eq!(grouped["c"].active_days, 1);
    }

    #[test]
    fn stored_rows_of_recomputed_customers_are_skipped() {
        let mut stored = Inputs::default();
        let skip: Customers = ["a".to_owned()].into_iter().collect();
        stored.add_binary(&stored_rows(), Some(&skip)).unwrap();
        assert_eq!(grouped(stored).keys().collect::<Vec<_>>(), ["b"]);
    }

    /// 2026-01-01, a day start (UTC ms).
    const DAY: i64 = 1_767_225_600_000;

    #[test]
    fn a_window_reads_back_as_written() {
        let days = [
            WindowDay {
                day: day_number(DAY),
                sum: 5,
                peak: i64::MAX,
            },
            WindowDay {
                day: day_number(DAY) + 1,
                sum: -7,
                peak: 0,
            },
        ];
        let data = encode_window(&days);
        assert_eq!(decode_window(&data).unwrap(), days);
        assert_eq!(decode_window(&encode_window(&[])).unwrap(), []);
        assert!(
            decode_window(&data[..data.len() - 1]).is_none(),
            "truncated"
        );
        assert!(decode_window(&[1]).is_none(), "another format");
        assert!(
            decode_window(&[
                2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0
            ])
            .is_none(),
            "a varint past 64 bits"
        );
        // A day number past i32.
        let mut far = vec![WINDOW_FORMAT];
        for value in [zigzag(i64::from(i32::MAX) + 1), 0, 0] {
            put_varint(&mut far, value);
        }
        assert!(decode_window(&far).is_none());
        assert!(decode_window(&[]).is_none());
    }

    #[test]
    fn the_window_is_the_30_days_ending_with_the_watermark_s_day() {
        let watermark = DateTime::parse_from_rfc3339("2026-12-07T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (first, last) = window(watermark);
        assert_eq!(last, NaiveDate::from_ymd_opt(2026, 12, 7).unwrap());
        assert_eq!(first, NaiveDate::from_ymd_opt(2026, 11, 8).unwrap());
    }
}
