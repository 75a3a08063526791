//! The batch layer's Postgres side: the run lock, the run log, what was computed from
//! which files, and publishing a run's rows in one transaction through `COPY`.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt as _;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::baselines::{self, Inputs};
use crate::binary::{BinaryReader, BinaryRows};
use crate::compute::{DayAggregates, VendorRow};
use crate::lake::day_start;
use crate::partitions::{DAILY, DayTable, HOURLY};
use crate::rows;
use crate::scope::Scope;

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
    /// The files each day was computed from, when known (see [`crate::scope`]).
    pub listings: BTreeMap<NaiveDate, Vec<String>>,
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
    let rows: Vec<(NaiveDate, String, Option<Vec<String>>)> =
        sqlx::query_as("SELECT event_date, fingerprint, listing FROM batch_days")
            .fetch_all(&mut *connection)
            .await?;
    let mut previous = Previous {
        watermark: watermark.map(|w| w.timestamp_millis()),
        ..Previous::default()
    };
    for (date, fingerprint, listing) in rows {
        previous.fingerprints.insert(date, fingerprint);
        if let Some(listing) = listing {
            previous.listings.insert(date, listing);
        }
    }
    Ok(previous)
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
/// deleting and copying only the rows that differ ([`crate::rows::changes`]). A day not
/// stored yet goes into a partition of its own, made by the run
/// ([`DayTable::load_new`]).
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
    /// The day partitions of `batch_hourly` and `batch_daily` (see
    /// [`crate::partitions`]), as the transaction sees them.
    partitions: HashSet<String>,
}

/// What an incremental run reads of the stored tables, read on a connection of its own
/// while the run reads the lake and computes: each recomputed day's stored rows (of the
/// customers recomputed), in the run's order and at most [`DAYS_AHEAD`] days ahead (so
/// memory holds a few days, however many the run recomputes), then the baselines' inputs
/// of the rows it does not recompute, needed only at the commit. Dropped, it stops.
/// It reads what was committed before the run, which is what the run's transaction still
/// holds when it turns to a day: the run holds the lock, nothing else writes the views,
/// and the transaction changes a day only once it has its stored rows.
struct ReadAhead {
    days: mpsc::Receiver<anyhow::Result<StoredDay>>,
    task: Option<JoinHandle<anyhow::Result<(Inputs, StoredVendors)>>>,
}

/// The stored vendors: per (customer, vendor), the first use (UTC ms).
type StoredVendors = HashMap<(String, String), i64, foldhash::fast::RandomState>;

/// Every row of `batch_vendors`.
async fn read_vendors(connection: &mut PgConnection) -> anyhow::Result<StoredVendors> {
    let data = copy_out(
        connection,
        "COPY (SELECT customer_id, vendor_id, first_seen FROM batch_vendors) \
         TO STDOUT (FORMAT binary)",
    )
    .await?;
    let mut vendors = StoredVendors::default();
    let mut reader = BinaryReader::new(&data)?;
    while reader.row()?.is_some() {
        let pair = (reader.text()?.to_owned(), reader.text()?.to_owned());
        vendors.insert(pair, reader.timestamp()?);
    }
    Ok(vendors)
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
    fn start(
        pool: PgPool,
        days: Vec<(NaiveDate, Scope)>,
        published: Option<DateTime<Utc>>,
        watermark: DateTime<Utc>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(DAYS_AHEAD);
        let task = tokio::spawn(async move {
            let mut connection = pool
                .acquire()
                .await
                .context("a connection to read the stored rows ahead")?;
            for (date, scope) in &days {
                let stored = read_day(&mut connection, *date, scope).await;
                let failed = stored.is_err();
                if sender.send(stored).await.is_err() || failed {
                    // The run stopped, or learns why from this day's error.
                    return Ok(Default::default());
                }
            }
            drop(sender);
            // The stored baselines hold their windows' days; the daily rows, when not.
            let windows = match published {
                Some(published) => {
                    baselines::read_windows(&mut connection, published, watermark, &days).await?
                }
                None => None,
            };
            let inputs = match windows {
                Some(inputs) => inputs,
                None => {
                    tracing::info!(
                        "the stored baselines do not hold their days: reading the daily rows"
                    );
                    baselines::read_stored(&mut connection, watermark, &days).await?
                }
            };
            Ok((inputs, read_vendors(&mut connection).await?))
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

    /// The baselines' inputs and the vendors it read, once every day has been taken.
    async fn finish(&mut self) -> anyhow::Result<(Inputs, StoredVendors)> {
        let task = self
            .task
            .take()
            .context("the reads ahead were finished twice")?;
        task.await.context("reading ahead panicked")?
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A day's stored hourly and daily rows of the customers `scope` holds.
async fn read_day(
    connection: &mut PgConnection,
    date: NaiveDate,
    scope: &Scope,
) -> anyhow::Result<StoredDay> {
    let Some(customers) = scope.customers() else {
        let hours = rows::stored_hours(&copy_out(connection, &rows::select_hours(date)).await?)?;
        let days = rows::stored_days(&copy_out(connection, &rows::select_days(date)).await?)?;
        return Ok(StoredDay { date, hours, days });
    };
    let customers: Vec<&str> = customers.iter().map(String::as_str).collect();
    Ok(StoredDay {
        date,
        hours: rows::customers_hours(connection, date, &customers).await?,
        days: rows::customers_days(connection, date, &customers).await?,
    })
}

/// Sends `data` (binary `COPY` rows) with `statement`; returns the rows copied.
pub(crate) async fn copy_in(
    connection: &mut PgConnection,
    statement: &str,
    data: BinaryRows,
) -> anyhow::Result<u64> {
    let data = data.finish();
    if data.is_empty() {
        return Ok(0);
    }
    let mut copy = connection.copy_in_raw(statement).await?;
    copy.send(data).await?;
    Ok(copy.finish().await?)
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
        days: &[(NaiveDate, Scope)],
        published: Option<i64>,
        watermark: i64,
    ) -> anyhow::Result<Self> {
        let watermark = millis_to_time(watermark);
        let published = published.map(millis_to_time);
        let mut transaction = pool.begin().await?;
        let mut partitions = HOURLY.partitions(&mut transaction).await?;
        partitions.extend(DAILY.partitions(&mut transaction).await?);
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
            ahead: (!full)
                .then(|| ReadAhead::start(pool.clone(), days.to_vec(), published, watermark)),
            partitions,
        })
    }

    /// Publishes one day's rows, of the customers the day's scope (as given to
    /// [`Publication::begin`]) holds: copies them in (a full run), or writes what differs
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
            self.rows += self
                .write(HOURLY, date, rows::hour_rows(day_start(date), &day.hours))
                .await?;
            self.rows += self.write(DAILY, date, rows::day_rows(&day.days)).await?;
            return Ok(());
        }
        let stored = self
            .ahead
            .as_mut()
            .expect("an incremental run reads ahead")
            .day(date)
            .await?;
        // Rows are deleted from the day's partition, which exists when the day has
        // stored rows.
        let (deletes, inserts) =
            rows::changes(stored.hours, &day.hours, rows::hour_key, rows::hour_value);
        if !deletes.is_empty() {
            let (customers, hours): (Vec<String>, Vec<DateTime<Utc>>) = deletes
                .into_iter()
                .map(|(customer, hour)| (customer, millis_to_time(hour)))
                .unzip();
            // The partition's name is made of a constant and a date.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {} h USING unnest($1::text[], $2::timestamptz[]) \
                 AS k(customer_id, hour) WHERE h.customer_id = k.customer_id AND h.hour = k.hour",
                HOURLY.partition(date)
            )))
            .bind(customers)
            .bind(hours)
            .execute(&mut *self.transaction)
            .await?;
        }
        self.rows += self
            .write(HOURLY, date, rows::hour_rows(day_start(date), inserts))
            .await?;

        let (deletes, inserts) =
            rows::changes(stored.days, &day.days, rows::day_key, rows::day_value);
        if !deletes.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {} WHERE customer_id = ANY($1)",
                DAILY.partition(date)
            )))
            .bind(deletes)
            .execute(&mut *self.transaction)
            .await?;
        }
        self.rows += self.write(DAILY, date, rows::day_rows(inserts)).await?;
        Ok(())
    }

    /// Copies `data` (rows of `date`) into `table`'s partition of `date`, making the
    /// partition when the day has none yet; returns the rows copied.
    async fn write(
        &mut self,
        table: DayTable,
        date: NaiveDate,
        data: BinaryRows,
    ) -> anyhow::Result<u64> {
        if data.rows() == 0 {
            return Ok(0);
        }
        let partition = table.partition(date);
        if self.partitions.contains(&partition) {
            return copy_in(&mut self.transaction, &table.copy_into(&partition), data).await;
        }
        let rows = table.load_new(&mut self.transaction, date, data).await?;
        self.partitions.insert(partition);
        Ok(rows)
    }

    /// Merges the vendors, derives the baselines as of `watermark` from the daily rows,
    /// records the days' fingerprints and the run as succeeded, notifies
    /// [`RUNS_CHANNEL`], and commits.
    pub async fn commit(
        mut self,
        run_id: i64,
        watermark: i64,
        fingerprints: &BTreeMap<NaiveDate, (String, Vec<String>)>,
        input_files: usize,
    ) -> anyhow::Result<u64> {
        // The baselines are derived and encoded while Postgres merges the vendors.
        let mut inputs = std::mem::take(&mut self.baselines);
        let mut known = StoredVendors::default();
        if let Some(ahead) = self.ahead.as_mut() {
            // The run's rows (a few days) go into the stored ones (most of the window).
            let (mut stored, vendors) = ahead.finish().await?;
            stored.merge(inputs);
            inputs = stored;
            known = vendors;
        }
        let as_of = millis_to_time(watermark);
        let prepared =
            tokio::task::spawn_blocking(move || baselines::prepare(inputs, run_id, as_of));
        // A full run copies the vendors into the emptied table (merged in Rust, so one
        // row per pair); an incremental run merges them with the stored first uses.
        let full = self.full;
        let mut vendors = BinaryRows::new();
        for (pair, first_seen) in std::mem::take(&mut self.vendors) {
            // An incremental run sends only the pairs that are new or used earlier than
            // stored (most of a night's pairs are known); the upsert below checks again.
            if known.get(&pair).is_some_and(|stored| *stored <= first_seen) {
                continue;
            }
            vendors
                .row(3)
                .text(&pair.0)
                .text(&pair.1)
                .timestamp(first_seen);
        }
        if full {
            self.rows += copy_in(
                &mut self.transaction,
                "COPY batch_vendors (customer_id, vendor_id, first_seen) FROM STDIN \
                 (FORMAT binary)",
                vendors,
            )
            .await?;
        } else {
            copy_in(
                &mut self.transaction,
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
        let prepared = prepared.await.context("deriving the baselines panicked")?;
        self.rows += baselines::derive(&mut self.transaction, run_id, as_of, prepared).await?;
        let tx = &mut self.transaction;
        for (date, (fingerprint, listing)) in fingerprints {
            sqlx::query(
                "INSERT INTO batch_days (event_date, fingerprint, files, run_id, listing) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_date) DO UPDATE \
                 SET fingerprint = EXCLUDED.fingerprint, files = EXCLUDED.files, \
                     run_id = EXCLUDED.run_id, listing = EXCLUDED.listing",
            )
            .bind(date)
            .bind(fingerprint)
            .bind(i32::try_from(listing.len()).unwrap_or(i32::MAX))
            .bind(run_id)
            .bind(listing)
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
