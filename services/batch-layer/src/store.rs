//! The batch layer's Postgres side: the run lock, the run log, what was computed from
//! which files, and publishing a run's rows in one transaction through `COPY`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::compute::{DayAggregates, DayRow, HourRow, VendorRow};
use crate::lake::day_start;

/// The advisory lock every run takes: two runs never overlap.
const RUN_LOCK: i64 = 0x0066_7261_7564_6261; // "fraudba"

/// The channel notified, with the run id as text, in the transaction that publishes a
/// run: readers caching a run's rows (the serving API) move to the new run at once.
pub const RUNS_CHANNEL: &str = "fraud_batch_runs";

/// Another run holds the lock.
#[derive(Debug, thiserror::Error)]
#[error("another batch run is in progress (it holds the advisory lock); this one exits")]
pub struct Locked;

/// Takes the run lock on a connection of its own, held until the connection closes
/// (a killed run's lock goes with its connection).
pub async fn lock(pool: &PgPool) -> anyhow::Result<PoolConnection<Postgres>> {
    let mut connection = pool.acquire().await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RUN_LOCK)
        .fetch_one(&mut *connection)
        .await?;
    if !taken {
        return Err(Locked.into());
    }
    Ok(connection)
}

/// What the last succeeded run left.
#[derive(Debug, Default)]
pub struct Previous {
    pub watermark: Option<i64>,
    pub fingerprints: BTreeMap<NaiveDate, String>,
}

/// Marks runs left `running` by a run that died as failed (the caller holds the lock,
/// so none of them is running), and reads what the last succeeded run left.
pub async fn previous(connection: &mut PgConnection) -> anyhow::Result<Previous> {
    let stale = sqlx::query(
        "UPDATE batch_runs SET status = 'failed', finished_at = now(), \
         error = 'interrupted: the run stopped before it finished' WHERE status = 'running'",
    )
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if stale > 0 {
        tracing::warn!(runs = stale, "marked runs that never finished as failed");
    }
    let watermark: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT max(watermark) FROM batch_runs WHERE status = 'succeeded'")
            .fetch_one(&mut *connection)
            .await?;
    let rows: Vec<(NaiveDate, String)> =
        sqlx::query_as("SELECT event_date, fingerprint FROM batch_days")
            .fetch_all(&mut *connection)
            .await?;
    Ok(Previous {
        watermark: watermark.map(|w| w.timestamp_millis()),
        fingerprints: rows.into_iter().collect(),
    })
}

/// Logs a run as started; returns its id.
pub async fn start_run(connection: &mut PgConnection, watermark: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO batch_runs (watermark, status) VALUES ($1, 'running') RETURNING run_id",
    )
    .bind(millis_to_time(watermark))
    .fetch_one(connection)
    .await?)
}

/// Logs a run as failed with `error`.
pub async fn fail_run(
    connection: &mut PgConnection,
    run_id: i64,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE batch_runs SET status = 'failed', finished_at = now(), error = $2 \
         WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(error)
    .execute(connection)
    .await?;
    Ok(())
}

/// A run's publication, open until [`Publication::commit`]: the days it replaces are
/// deleted and their new rows copied in, all in one transaction.
pub struct Publication {
    transaction: sqlx::Transaction<'static, Postgres>,
    pub rows: u64,
    /// Per (customer, vendor), the first use among the days copied: merged into
    /// `batch_vendors` at the commit, one row each (a customer's vendor recurs on many
    /// days; staging a row per day and vendor sent Postgres ten times the rows).
    vendors: HashMap<(String, String), i64>,
}

impl Publication {
    /// Opens the transaction and deletes the rows of `days` (all rows when `full`).
    pub async fn begin(pool: &PgPool, days: &[NaiveDate], full: bool) -> anyhow::Result<Self> {
        let mut transaction = pool.begin().await?;
        if full {
            for statement in [
                "DELETE FROM batch_hourly",
                "DELETE FROM batch_daily",
                "DELETE FROM batch_vendors",
                "DELETE FROM batch_days",
            ] {
                sqlx::query(statement).execute(&mut *transaction).await?;
            }
        } else {
            sqlx::query("DELETE FROM batch_hourly WHERE event_date = ANY($1)")
                .bind(days)
                .execute(&mut *transaction)
                .await?;
            sqlx::query("DELETE FROM batch_daily WHERE day = ANY($1)")
                .bind(days)
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query(
            "CREATE TEMPORARY TABLE new_vendors (customer_id TEXT, vendor_id TEXT, \
             first_seen TIMESTAMPTZ) ON COMMIT DROP",
        )
        .execute(&mut *transaction)
        .await?;
        Ok(Self {
            transaction,
            rows: 0,
            vendors: HashMap::new(),
        })
    }

    /// Copies one day's rows in.
    pub async fn add_day(&mut self, date: NaiveDate, day: &DayAggregates) -> anyhow::Result<()> {
        let mut hours = String::new();
        for HourRow {
            customer,
            hour,
            sum,
            count,
            max,
            distinct_vendors,
        } in &day.hours
        {
            writeln!(
                hours,
                "{},{},{date},{sum},{count},{max},{distinct_vendors}",
                csv(customer),
                rfc3339(*hour)
            )?;
        }
        let mut days = String::new();
        for DayRow {
            customer,
            day,
            sum,
            count,
            max,
            distinct_vendors,
            peak_sum,
            peak_count,
            peak_end,
        } in &day.days
        {
            debug_assert_eq!(*day, day_start(date));
            writeln!(
                days,
                "{},{date},{sum},{count},{max},{distinct_vendors},{peak_sum},{peak_count},{}",
                csv(customer),
                rfc3339(*peak_end)
            )?;
        }
        for VendorRow {
            customer,
            vendor,
            first_seen,
        } in &day.vendors
        {
            match self.vendors.get_mut(&(customer.clone(), vendor.clone())) {
                Some(first) => *first = (*first).min(*first_seen),
                None => {
                    self.vendors
                        .insert((customer.clone(), vendor.clone()), *first_seen);
                }
            }
        }
        self.rows += self
            .copy(
                "COPY batch_hourly (customer_id, hour, event_date, sum_minor, count, max_minor, \
                 distinct_vendors) FROM STDIN (FORMAT csv)",
                hours,
            )
            .await?;
        self.rows += self
            .copy(
                "COPY batch_daily (customer_id, day, sum_minor, count, max_minor, \
                 distinct_vendors, peak_30m_sum_minor, peak_30m_count, peak_30m_end) \
                 FROM STDIN (FORMAT csv)",
                days,
            )
            .await?;
        Ok(())
    }

    async fn copy(&mut self, statement: &str, data: String) -> anyhow::Result<u64> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut copy = self.transaction.copy_in_raw(statement).await?;
        copy.send(data.into_bytes()).await?;
        Ok(copy.finish().await?)
    }

    /// Merges the vendors, derives the baselines as of `watermark` from the daily rows,
    /// records the days' fingerprints and the run as succeeded, notifies
    /// [`RUNS_CHANNEL`], and commits.
    pub async fn commit(
        mut self,
        run_id: i64,
        watermark: i64,
        fingerprints: &BTreeMap<NaiveDate, (String, usize)>,
        input_files: usize,
    ) -> anyhow::Result<u64> {
        let mut vendors = String::new();
        for ((customer, vendor), first_seen) in std::mem::take(&mut self.vendors) {
            writeln!(
                vendors,
                "{},{},{}",
                csv(&customer),
                csv(&vendor),
                rfc3339(first_seen)
            )?;
        }
        self.copy(
            "COPY new_vendors (customer_id, vendor_id, first_seen) FROM STDIN (FORMAT csv)",
            vendors,
        )
        .await?;
        let tx = &mut self.transaction;
        self.rows += sqlx::query(
            "INSERT INTO batch_vendors (customer_id, vendor_id, first_seen) \
             SELECT customer_id, vendor_id, first_seen FROM new_vendors \
             ON CONFLICT (customer_id, vendor_id) DO UPDATE \
             SET first_seen = LEAST(batch_vendors.first_seen, EXCLUDED.first_seen) \
             WHERE EXCLUDED.first_seen < batch_vendors.first_seen",
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM batch_baselines")
            .execute(&mut **tx)
            .await?;
        self.rows += sqlx::query(
            "INSERT INTO batch_baselines (customer_id, as_of, active_days, mean_daily_minor, \
             stddev_daily_minor, p95_peak_30m_minor, max_peak_30m_minor) \
             SELECT customer_id, $1, count(*), \
                    round(sum(sum_minor)::numeric / 30, 4), \
                    round(sqrt((30 * sum(sum_minor::numeric * sum_minor) \
                                - sum(sum_minor)::numeric ^ 2)::numeric(60, 20)) / 30, 4), \
                    percentile_disc(0.95) WITHIN GROUP (ORDER BY peak_30m_sum_minor), \
                    max(peak_30m_sum_minor) \
             FROM batch_daily \
             WHERE day > ($1 AT TIME ZONE 'UTC')::date - 30 AND day <= ($1 AT TIME ZONE 'UTC')::date \
             GROUP BY customer_id",
        )
        .bind(millis_to_time(watermark))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        for (date, (fingerprint, files)) in fingerprints {
            sqlx::query(
                "INSERT INTO batch_days (event_date, fingerprint, files, run_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (event_date) DO UPDATE \
                 SET fingerprint = EXCLUDED.fingerprint, files = EXCLUDED.files, \
                     run_id = EXCLUDED.run_id",
            )
            .bind(date)
            .bind(fingerprint)
            .bind(i32::try_from(*files).unwrap_or(i32::MAX))
            .bind(run_id)
            .execute(&mut **tx)
            .await?;
        }
        let rows = self.rows;
        sqlx::query(
            "UPDATE batch_runs SET status = 'succeeded', finished_at = now(), \
             input_files = $2, rows_written = $3 WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(i64::try_from(input_files).unwrap_or(i64::MAX))
        .bind(i64::try_from(rows).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
        // Delivered at the commit, with the rows it announces.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(RUNS_CHANNEL)
            .bind(run_id.to_string())
            .execute(&mut **tx)
            .await?;
        self.transaction.commit().await?;
        Ok(rows)
    }
}

fn millis_to_time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).expect("a representable time")
}

fn rfc3339(millis: i64) -> String {
    millis_to_time(millis).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A CSV field: quoted, with quotes doubled (ids are printable but may hold commas).
fn csv(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}
