//! The customers' baselines as of T_b, derived from the stored daily rows of the 30 UTC
//! days ending with T_b's day (`migrations/0002_batch_views.sql`).
//!
//! The window moves by a day every night, so every customer's baseline is derived again
//! (its `as_of` changes, and nearly every customer has a row on the day that leaves or a
//! day that was recomputed). Aggregating a month of daily rows in SQL costs a sort of
//! them by customer for the ordered-set percentile; here Postgres only streams the three
//! columns needed, the grouping and the nearest-rank percentile are done in Rust, and
//! Postgres applies the same numeric formulas as before to one row per customer, so the
//! results are the same to the last digit. Should a customer's sum of squared daily
//! sums not fit in `i128`, the derivation falls back to the SQL aggregate.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt as _;
use sqlx::PgConnection;

use crate::binary::BinaryReader;

/// The fraction of the daily peaks' percentile (nearest rank), as the SQL's
/// `percentile_disc(0.95)`.
const PERCENTILE: f64 = 0.95;

/// The SQL derivation: the definition, and the fallback.
const DERIVE_IN_SQL: &str = "\
INSERT INTO batch_baselines (customer_id, as_of, active_days, mean_daily_minor,
    stddev_daily_minor, p95_peak_30m_minor, max_peak_30m_minor)
SELECT customer_id, $1, count(*),
       round(sum(sum_minor)::numeric / 30, 4),
       round(sqrt((30 * sum(sum_minor::numeric * sum_minor)
                   - sum(sum_minor)::numeric ^ 2)::numeric(60, 20)) / 30, 4),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY peak_30m_sum_minor),
       max(peak_30m_sum_minor)
FROM batch_daily
WHERE day > ($1 AT TIME ZONE 'UTC')::date - 30 AND day <= ($1 AT TIME ZONE 'UTC')::date
GROUP BY customer_id";

/// The same formulas over one row of per-customer sums (`sum(sum_minor)` and
/// `sum(sum_minor::numeric * sum_minor)` have the same values and scale 0 either way).
const DERIVE_FROM_SUMS: &str = "\
INSERT INTO batch_baselines (customer_id, as_of, active_days, mean_daily_minor,
    stddev_daily_minor, p95_peak_30m_minor, max_peak_30m_minor)
SELECT customer_id, $1, active_days,
       round(sum_minor / 30, 4),
       round(sqrt((30 * sum_squares - sum_minor ^ 2)::numeric(60, 20)) / 30, 4),
       p95_peak, max_peak
FROM baseline_sums";

/// Replaces every baseline with the ones as of `watermark` (in the caller's transaction);
/// returns the rows written.
pub async fn derive(
    connection: &mut PgConnection,
    watermark: DateTime<Utc>,
) -> anyhow::Result<u64> {
    sqlx::query("DELETE FROM batch_baselines")
        .execute(&mut *connection)
        .await?;
    let last = watermark.date_naive();
    let first = last - chrono::Days::new(29);
    let data = daily_columns(connection, first, last).await?;
    let Some(customers) = per_customer(&data)? else {
        tracing::warn!("a sum of squared daily sums exceeds i128: baselines derived in SQL");
        return Ok(sqlx::query(DERIVE_IN_SQL)
            .bind(watermark)
            .execute(&mut *connection)
            .await?
            .rows_affected());
    };
    let mut csv = String::new();
    for (customer, sums) in &customers {
        writeln!(
            csv,
            "\"{}\",{},{},{},{},{}",
            customer.replace('"', "\"\""),
            sums.active_days,
            sums.sum,
            sums.sum_squares,
            sums.p95_peak,
            sums.max_peak
        )?;
    }
    drop(customers);
    sqlx::query(
        "CREATE TEMPORARY TABLE baseline_sums (customer_id TEXT, active_days INTEGER, \
         sum_minor NUMERIC, sum_squares NUMERIC, p95_peak BIGINT, max_peak BIGINT) \
         ON COMMIT DROP",
    )
    .execute(&mut *connection)
    .await?;
    if !csv.is_empty() {
        let mut copy = connection
            .copy_in_raw("COPY baseline_sums FROM STDIN (FORMAT csv)")
            .await?;
        copy.send(csv.into_bytes()).await?;
        copy.finish().await?;
    }
    Ok(sqlx::query(DERIVE_FROM_SUMS)
        .bind(watermark)
        .execute(&mut *connection)
        .await?
        .rows_affected())
}

/// `batch_daily`'s customer, daily sum and daily peak for the days `first..=last`.
async fn daily_columns(
    connection: &mut PgConnection,
    first: NaiveDate,
    last: NaiveDate,
) -> anyhow::Result<Vec<u8>> {
    let statement = format!(
        "COPY (SELECT customer_id, sum_minor, peak_30m_sum_minor FROM batch_daily \
         WHERE day >= '{first}' AND day <= '{last}') TO STDOUT (FORMAT binary)"
    );
    let mut stream = connection.copy_out_raw(&statement).await?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// One customer's baseline inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    active_days: i64,
    sum: i128,
    sum_squares: i128,
    p95_peak: i64,
    max_peak: i64,
}

/// Groups the rows of [`daily_columns`] by customer; `None` when a sum overflows.
fn per_customer(data: &[u8]) -> anyhow::Result<Option<HashMap<&str, Sums>>> {
    let mut reader = BinaryReader::new(data)?;
    let mut days: HashMap<&str, (Vec<i64>, Vec<i64>)> = HashMap::new();
    while reader.row()?.is_some() {
        let customer = reader.text()?;
        let sum = reader.int8()?;
        let peak = reader.int8()?;
        let (sums, peaks) = days.entry(customer).or_default();
        sums.push(sum);
        peaks.push(peak);
    }
    let mut out = HashMap::with_capacity(days.len());
    for (customer, (sums, mut peaks)) in days {
        let Some(baseline) = sums_of(&sums, &mut peaks) else {
            return Ok(None);
        };
        out.insert(customer, baseline);
    }
    Ok(Some(out))
}

/// A customer's inputs from its days' sums and peaks (at least one day); `None` on
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
    peaks.sort_unstable();
    Some(Sums {
        active_days: sums.len() as i64,
        sum,
        sum_squares,
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
        let got = sums_of(&sums, &mut peaks).unwrap();
        assert_eq!(got.sum, 2 * i128::from(i64::MAX));
    }

    #[test]
    fn rows_are_grouped_by_customer() {
        let mut rows = BinaryRows::new();
        for (customer, sum, peak) in [("a", 5, 5), ("b", 7, 3), ("a", 1, 1)] {
            rows.row(3).text(customer).int8(sum).int8(peak);
        }
        let data = rows.finish();
        let grouped = per_customer(&data).unwrap().unwrap();
        assert_eq!(grouped.len(), 2);
        assert_eq!((grouped["a"].active_days, grouped["a"].sum), (2, 6));
        assert_eq!(grouped["a"].sum_squares, 26);
        assert_eq!((grouped["b"].p95_peak, grouped["b"].max_peak), (3, 3));
    }
}
