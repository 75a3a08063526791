//! The batch layer's Postgres side: the run lock, the run log, what was computed from
//! which files, and publishing a run's rows in one transaction through `COPY`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt as _;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::baselines::{self, Inputs};
use crate::binary::BinaryRows;
use crate::compute::{DayAggregates, VendorRow};
use crate::lake::day_start;
use crate::rows;
use crate::spill::Spill;

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

/// A run's publication, open until [`Publication::commit`]: the days it recomputes get
/// their new rows, all in one transaction. A full run deletes every row first and copies
/// the days in; an incremental run turns each stored day into the recomputed one by
/// deleting and copying only the rows that differ ([`crate::rows::changes`]).
pub struct Publication {
    transaction: sqlx::Transaction<'static, Postgres>,
    full: bool,
    pub rows: u64,
    /// Per (customer, vendor), the first use among the days copied: merged into
    /// `batch_vendors` at the commit, one row each (a customer's vendor recurs on many
    /// days; staging a row per day and vendor sent Postgres ten times the rows).
    vendors: HashMap<(String, String), i64>,
    /// The baselines' window, and their inputs from the days copied so far.
    window: (NaiveDate, NaiveDate),
    baselines: Inputs,
    /// An incremental run's reads of what is stored, ahead of the days.
    ahead: Option<ReadAhead>,
    /// A full run's hourly and daily rows, spilled day by day and copied in key order
    /// once every day is computed ([`Publication::write_spilled`]).
    spilled_hours: Spill,
    spilled_days: Spill,
}

/// What an incremental run reads of the stored tables, read on a connection of its own
/// while the run reads the lake and computes: each recomputed day's stored rows, in the
/// run's order and at most [`DAYS_AHEAD`] days ahead (so memory holds a few days, however
/// many the run recomputes), then the baselines' inputs of the window's days it does not
/// recompute, needed only at the commit.
/// It reads what was committed before the run, which is what the run's transaction still
/// holds when it turns to a day: the run holds the lock, nothing else writes the views,
/// and the transaction changes a day only once it has its stored rows.
struct ReadAhead {
    days: mpsc::Receiver<anyhow::Result<StoredDay>>,
    task: Option<JoinHandle<anyhow::Result<Inputs>>>,
}

/// A day's rows as stored before the run.
struct StoredDay {
    date: NaiveDate,
    hours: HashMap<rows::HourKey, rows::HourValue>,
    days: HashMap<String, rows::DayValue>,
}

/// Days whose stored rows are read before the run turns to them.
const DAYS_AHEAD: usize = 2;

impl ReadAhead {
    fn start(pool: PgPool, days: Vec<NaiveDate>, watermark: DateTime<Utc>) -> Self {
        let (sender, receiver) = mpsc::channel(DAYS_AHEAD);
        let task = tokio::spawn(async move {
            let mut connection = pool
                .acquire()
                .await
                .context("a connection to read the stored rows ahead")?;
            let recomputed: BTreeSet<NaiveDate> = days.iter().copied().collect();
            for date in days {
                let stored = read_day(&mut connection, date).await;
                let failed = stored.is_err();
                if sender.send(stored).await.is_err() || failed {
                    // The run stopped, or learns why from this day's error.
                    return Ok(Inputs::default());
                }
            }
            drop(sender);
            baselines::read_stored(&mut connection, watermark, &recomputed).await
        });
        Self {
            days: receiver,
            task: Some(task),
        }
    }

    /// The stored rows of `date`, the next day of the run.
    async fn day(&mut self, date: NaiveDate) -> anyhow::Result<StoredDay> {
        match self.days.recv().await {
            Some(stored) => {
                let stored = stored?;
                anyhow::ensure!(
                    stored.date == date,
                    "read {} ahead where {date} was next",
                    stored.date
                );
                Ok(stored)
            }
            // The task ended early: it failed before this day.
            None => Err(self.finish().await.err().unwrap_or_else(|| {
                anyhow::anyhow!("the stored rows of {date} were not read ahead")
            })),
        }
    }

    /// The baselines' inputs it read, once every day has been taken.
    async fn finish(&mut self) -> anyhow::Result<Inputs> {
        let task = self
            .task
            .take()
            .context("the reads ahead were finished twice")?;
        task.await.context("reading ahead panicked")?
    }
}

/// A day's stored hourly and daily rows.
async fn read_day(connection: &mut PgConnection, date: NaiveDate) -> anyhow::Result<StoredDay> {
    let hours = rows::stored_hours(&copy_out(connection, &rows::select_hours(date)).await?)?;
    let days = rows::stored_days(&copy_out(connection, &rows::select_days(date)).await?)?;
    Ok(StoredDay { date, hours, days })
}

/// The whole output of a `COPY … TO STDOUT`.
pub(crate) async fn copy_out(
    connection: &mut PgConnection,
    statement: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut stream = connection.copy_out_raw(statement).await?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

impl Publication {
    /// Opens the transaction for a run that recomputes `days` (in order) as of
    /// `watermark`; when `full`, deletes every row of the views, else starts reading
    /// ahead what is stored.
    pub async fn begin(
        pool: &PgPool,
        full: bool,
        days: &[NaiveDate],
        watermark: i64,
    ) -> anyhow::Result<Self> {
        let watermark = millis_to_time(watermark);
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
            sqlx::query(
                "CREATE TEMPORARY TABLE new_vendors (customer_id TEXT, vendor_id TEXT, \
                 first_seen TIMESTAMPTZ) ON COMMIT DROP",
            )
            .execute(&mut *transaction)
            .await?;
        }
        Ok(Self {
            transaction,
            full,
            rows: 0,
            vendors: HashMap::new(),
            window: baselines::window(watermark),
            baselines: Inputs::default(),
            ahead: (!full).then(|| ReadAhead::start(pool.clone(), days.to_vec(), watermark)),
            spilled_hours: Spill::default(),
            spilled_days: Spill::default(),
        })
    }

    /// Publishes one day's rows: copies them in (a full run), or writes what differs
    /// from the stored day (an incremental run).
    pub async fn add_day(&mut self, date: NaiveDate, day: &DayAggregates) -> anyhow::Result<()> {
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
        debug_assert!(day.days.iter().all(|row| row.day == day_start(date)));
        if (self.window.0..=self.window.1).contains(&date) {
            self.baselines.add_rows(&day.days);
        }
        if self.full {
            // Spilled, and copied in key order at the end: see `crate::spill`. A day's
            // rows are a few tens of MB, written to the page cache in milliseconds.
            self.spilled_hours
                .add(rows::hour_rows(day_start(date), &day.hours))
                .context("spilling a day's hourly rows")?;
            self.spilled_days
                .add(rows::day_rows(&day.days))
                .context("spilling a day's daily rows")?;
            return Ok(());
        }
        let stored = self
            .ahead
            .as_mut()
            .expect("an incremental run reads ahead")
            .day(date)
            .await?;
        let (deletes, inserts) =
            rows::changes(stored.hours, &day.hours, rows::hour_key, rows::hour_value);
        let (customers, hours): (Vec<String>, Vec<DateTime<Utc>>) = deletes
            .into_iter()
            .map(|(customer, hour)| (customer, millis_to_time(hour)))
            .unzip();
        sqlx::query(
            "DELETE FROM batch_hourly h USING unnest($1::text[], $2::timestamptz[]) \
             AS k(customer_id, hour) WHERE h.customer_id = k.customer_id AND h.hour = k.hour",
        )
        .bind(customers)
        .bind(hours)
        .execute(&mut *self.transaction)
        .await?;
        self.rows += self
            .copy(rows::COPY_HOURS, rows::hour_rows(day_start(date), inserts))
            .await?;

        let (deletes, inserts) =
            rows::changes(stored.days, &day.days, rows::day_key, rows::day_value);
        sqlx::query("DELETE FROM batch_daily WHERE day = $1 AND customer_id = ANY($2)")
            .bind(date)
            .bind(deletes)
            .execute(&mut *self.transaction)
            .await?;
        self.rows += self.copy(rows::COPY_DAYS, rows::day_rows(inserts)).await?;
        Ok(())
    }

    /// Copies a full run's spilled rows, hourly then daily, each table in key order (one
    /// `COPY` merging the days' runs); nothing for an incremental run. Called once every
    /// day has been added.
    pub async fn write_spilled(&mut self) -> anyhow::Result<()> {
        let spills = [
            (rows::COPY_HOURS, std::mem::take(&mut self.spilled_hours)),
            (rows::COPY_DAYS, std::mem::take(&mut self.spilled_days)),
        ];
        for (statement, spill) in spills {
            if spill.rows() == 0 {
                continue;
            }
            let (sender, mut chunks) = mpsc::channel::<Vec<u8>>(4);
            let merging = tokio::task::spawn_blocking(move || {
                spill.merge(|chunk| {
                    sender
                        .blocking_send(chunk)
                        .map_err(|_| anyhow::anyhow!("the COPY of the merged rows stopped"))
                })
            });
            let mut copy = self.transaction.copy_in_raw(statement).await?;
            while let Some(chunk) = chunks.recv().await {
                copy.send(chunk).await?;
            }
            match merging.await {
                Ok(Ok(())) => self.rows += copy.finish().await?,
                Ok(Err(error)) => {
                    copy.abort(format!("{error:#}")).await?;
                    return Err(error.context("merging the spilled rows"));
                }
                Err(panic) => {
                    copy.abort("merging the spilled rows panicked").await?;
                    return Err(anyhow::Error::new(panic).context("merging the spilled rows"));
                }
            }
        }
        Ok(())
    }

    /// Sends `data` (binary `COPY` rows) with `statement`; returns the rows copied.
    async fn copy(&mut self, statement: &str, data: BinaryRows) -> anyhow::Result<u64> {
        let data = data.finish();
        if data.is_empty() {
            return Ok(0);
        }
        let mut copy = self.transaction.copy_in_raw(statement).await?;
        copy.send(data).await?;
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
        // A full run copies the vendors into the emptied table (merged in Rust, so one
        // row per pair); an incremental run merges them with the stored first uses.
        let full = self.full;
        let mut vendors = BinaryRows::new();
        for ((customer, vendor), first_seen) in std::mem::take(&mut self.vendors) {
            vendors
                .row(3)
                .text(&customer)
                .text(&vendor)
                .timestamp(first_seen);
        }
        if full {
            self.rows += self
                .copy(
                    "COPY batch_vendors (customer_id, vendor_id, first_seen) FROM STDIN \
                     (FORMAT binary)",
                    vendors,
                )
                .await?;
        } else {
            self.copy(
                "COPY new_vendors (customer_id, vendor_id, first_seen) FROM STDIN \
                 (FORMAT binary)",
                vendors,
            )
            .await?;
            // Only the pairs that are new or used earlier than stored reach the upsert:
            // `ON CONFLICT DO UPDATE` locks (so writes) every conflicting row, even when
            // its `WHERE` keeps the row as it is, and most of a night's pairs are known.
            // The run holds the advisory lock, so nobody else writes the table meanwhile.
            self.rows += sqlx::query(
                "INSERT INTO batch_vendors (customer_id, vendor_id, first_seen) \
                 SELECT n.customer_id, n.vendor_id, n.first_seen FROM new_vendors n \
                 LEFT JOIN batch_vendors v \
                   ON v.customer_id = n.customer_id AND v.vendor_id = n.vendor_id \
                 WHERE v.customer_id IS NULL OR n.first_seen < v.first_seen \
                 ON CONFLICT (customer_id, vendor_id) DO UPDATE \
                 SET first_seen = LEAST(batch_vendors.first_seen, EXCLUDED.first_seen) \
                 WHERE EXCLUDED.first_seen < batch_vendors.first_seen",
            )
            .execute(&mut *self.transaction)
            .await?
            .rows_affected();
        }
        let mut inputs = std::mem::take(&mut self.baselines);
        if let Some(ahead) = self.ahead.as_mut() {
            inputs.merge(ahead.finish().await?);
        }
        self.rows +=
            baselines::derive(&mut self.transaction, millis_to_time(watermark), inputs).await?;
        let tx = &mut self.transaction;
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
