//! The batch layer's Postgres side: the run lock, the run log, what was computed from
//! which files, and publishing a run's rows in one transaction through `COPY`.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt as _;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::baselines::{self, DayInputs, Inputs};
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
    /// The last succeeded run.
    pub run_id: Option<i64>,
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
    let run_id: Option<i64> =
        sqlx::query_scalar("SELECT max(run_id) FROM batch_runs WHERE status = 'succeeded'")
            .fetch_one(&mut *connection)
            .await?;
    let rows: Vec<(NaiveDate, String, Option<Vec<String>>)> =
        sqlx::query_as("SELECT event_date, fingerprint, listing FROM batch_days")
            .fetch_all(&mut *connection)
            .await?;
    let mut previous = Previous {
        watermark: watermark.map(|w| w.timestamp_millis()),
        run_id,
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
    /// For the windows' transaction ([`baselines::keep_windows`]).
    pool: PgPool,
    full: bool,
    pub rows: u64,
    /// The baselines' window.
    window: (NaiveDate, NaiveDate),
    /// Gathers what the days added bring to the commit; taken by [`Finishing`].
    gatherer: Option<Gatherer>,
    /// An incremental run's reads of what is stored, ahead of the days.
    ahead: Option<ReadAhead>,
    /// The days not added yet.
    remaining: usize,
    /// The commit's rows, prepared once the last day is known ([`Finishing`]).
    finishing: Option<Finishing>,
    run_id: i64,
    watermark: DateTime<Utc>,
    /// The day partitions of `batch_hourly` and `batch_daily` (see
    /// [`crate::partitions`]), as the transaction sees them.
    partitions: HashSet<String>,
}

/// What the days bring to the commit, gathered on a thread of its own as they are added
/// (work ahead, [`crate::background`]), not on the transaction's path: per (customer,
/// vendor) the first use among the days, merged into `batch_vendors` at the commit, one
/// row each (a customer's vendor recurs on many days; staging a row per day and vendor
/// sent Postgres ten times the rows); and the baselines' inputs of the days in their
/// window. The channel is unbounded: a day's share is a small part of its rows, and
/// gathering it takes far less time than writing them.
struct Gatherer {
    days: std::sync::mpsc::Sender<(Vec<VendorRow>, Option<DayInputs>)>,
    gathered: futures::future::BoxFuture<'static, anyhow::Result<(FirstUses, Inputs)>>,
}

impl Gatherer {
    fn start() -> Gatherer {
        let (days, received) = std::sync::mpsc::channel();
        let gathered = crate::background::alongside(move || {
            let mut vendors = FirstUses::default();
            let mut inputs = Inputs::default();
            for (day_vendors, day_inputs) in received {
                for VendorRow {
                    customer,
                    vendor,
                    first_seen,
                } in day_vendors
                {
                    let first = vendors.entry((customer, vendor)).or_insert(first_seen);
                    *first = (*first).min(first_seen);
                }
                if let Some(day_inputs) = day_inputs {
                    inputs.add_day(day_inputs);
                }
            }
            (vendors, inputs)
        });
        Gatherer {
            days,
            gathered: Box::pin(gathered),
        }
    }
}

/// What the commit sends, prepared on a task of its own as soon as every day's rows are
/// known, so that it is ready when the last day's rows are in Postgres: the vendors to
/// merge and the baselines with their windows (the baselines' CPU work is about a
/// quarter of a second for 100,000 customers). Dropped, it stops.
type Finishing = AbortOnDropHandle<anyhow::Result<Finished>>;

/// The vendors' binary `COPY` rows, and what [`baselines::prepare`] made.
type Finished = (BinaryRows, Option<(BinaryRows, BinaryRows)>);

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
    /// The baselines' inputs, sent before the vendors are read.
    inputs: Option<oneshot::Receiver<Inputs>>,
    task: Option<AbortOnDropHandle<anyhow::Result<FirstUses>>>,
}

/// Per (customer, vendor), the first use (UTC ms).
type FirstUses = HashMap<(String, String), i64, foldhash::fast::RandomState>;

/// Every row of `batch_vendors`.
async fn read_vendors(connection: &mut PgConnection) -> anyhow::Result<FirstUses> {
    let data = copy_out(
        connection,
        "COPY (SELECT customer_id, vendor_id, first_seen FROM batch_vendors) \
         TO STDOUT (FORMAT binary)",
    )
    .await?;
    crate::background::ahead(move || {
        let mut vendors = FirstUses::default();
        let mut reader = BinaryReader::new(&data)?;
        while reader.row()?.is_some() {
            let pair = (reader.text()?.to_owned(), reader.text()?.to_owned());
            vendors.insert(pair, reader.timestamp()?);
        }
        Ok(vendors)
    })
    .await?
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
        published: Option<i64>,
        watermark: DateTime<Utc>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(DAYS_AHEAD);
        let (inputs_sender, inputs) = oneshot::channel();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
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
            // The run stopped when nobody receives them.
            let _ = inputs_sender.send(inputs);
            read_vendors(&mut connection).await
        }));
        Self {
            days: receiver,
            inputs: Some(inputs),
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
    async fn inputs(&mut self) -> anyhow::Result<Inputs> {
        let inputs = self
            .inputs
            .take()
            .context("the baselines' inputs were taken twice")?;
        match inputs.await {
            Ok(inputs) => Ok(inputs),
            // The task ended early: it failed.
            Err(_) => {
                Err(self.finish().await.err().unwrap_or_else(|| {
                    anyhow::anyhow!("the baselines' inputs were not read ahead")
                }))
            }
        }
    }

    /// The vendors it read, once every day has been taken.
    async fn finish(&mut self) -> anyhow::Result<FirstUses> {
        let task = self
            .task
            .take()
            .context("the reads ahead were finished twice")?;
        task.await.context("reading ahead panicked")?
    }
}

/// A day's stored hourly and daily rows of the customers `scope` holds.
async fn read_day(
    connection: &mut PgConnection,
    date: NaiveDate,
    scope: &Scope,
) -> anyhow::Result<StoredDay> {
    let Some(customers) = scope.customers() else {
        let hours = copy_out(connection, &rows::select_hours(date)).await?;
        let days = copy_out(connection, &rows::select_days(date)).await?;
        return crate::background::ahead(move || {
            Ok(StoredDay {
                date,
                hours: rows::stored_hours(&hours)?,
                days: rows::stored_days(&days)?,
            })
        })
        .await?;
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
        // The rows come as fast as the loop takes them, so the stream is never pending
        // and, left alone, the loop would keep its worker thread for the whole output
        // (tens of megabytes), with no thread of the runtime polling for I/O meanwhile:
        // the run's transaction, waiting on its socket, stalled until the loop ended.
        tokio::task::consume_budget().await;
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
        (run_id, watermark): (i64, i64),
    ) -> anyhow::Result<Self> {
        let watermark = millis_to_time(watermark);
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
            pool: pool.clone(),
            full,
            rows: 0,
            window: baselines::window(watermark),
            gatherer: Some(Gatherer::start()),
            ahead: (!full)
                .then(|| ReadAhead::start(pool.clone(), days.to_vec(), published, watermark)),
            remaining: days.len(),
            finishing: None,
            run_id,
            watermark,
            partitions,
        })
    }

    /// Publishes one day's rows, of the customers the day's scope (as given to
    /// [`Publication::begin`]) holds: copies them in (a full run), or writes what differs
    /// from the stored day (an incremental run).
    pub async fn add_day(&mut self, date: NaiveDate, mut day: DayAggregates) -> anyhow::Result<()> {
        debug_assert!(day.days.iter().all(|row| row.day == day_start(date)));
        let inputs = (self.window.0..=self.window.1)
            .contains(&date)
            .then(|| DayInputs::of(&day.days));
        self.gatherer
            .as_ref()
            .context("a day added after the last")?
            .days
            .send((std::mem::take(&mut day.vendors), inputs))
            .context("gathering the days' vendors and baselines stopped")?;
        self.remaining = self
            .remaining
            .checked_sub(1)
            .context("more days added than the run recomputes")?;
        // An incremental run's stored day, taken before the last day hands the reads
        // ahead over to the commit's preparation.
        let stored = match self.ahead.as_mut() {
            Some(ahead) => Some(ahead.day(date).await?),
            None => None,
        };
        if self.remaining == 0 {
            self.finish_ahead();
        }
        let Some(stored) = stored else {
            self.rows += self
                .write(HOURLY, date, rows::hour_rows(day_start(date), &day.hours))
                .await?;
            self.rows += self.write(DAILY, date, rows::day_rows(&day.days)).await?;
            return Ok(());
        };
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

    /// Starts [`Finishing`] once every day has been added (or the run has none); after
    /// that, does nothing.
    fn finish_ahead(&mut self) {
        let Some(Gatherer { days, gathered }) = self.gatherer.take() else {
            return;
        };
        // The gatherer's loop ends with the channel.
        drop(days);
        let ahead = self.ahead.take();
        let (run_id, as_of) = (self.run_id, self.watermark);
        self.finishing = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let (vendors, inputs) = gathered.await?;
            let Some(mut ahead) = ahead else {
                // A full run copies the vendors into the emptied table (merged in Rust, so
                // one row per pair).
                return crate::background::ahead(move || {
                    let prepared = baselines::prepare(inputs, run_id, as_of);
                    (vendor_rows(vendors, &FirstUses::default()), prepared)
                })
                .await;
            };
            // The run's rows (a few days) go into the stored ones (most of the window),
            // and the baselines are prepared while the stored vendors are still read.
            let mut stored = ahead.inputs().await?;
            stored.merge(inputs);
            let prepared =
                crate::background::ahead(move || baselines::prepare(stored, run_id, as_of));
            let known = ahead.finish().await?;
            let vendors = crate::background::ahead(move || vendor_rows(vendors, &known)).await?;
            Ok((vendors, prepared.await?))
        })));
    }

    /// Merges the vendors, derives the baselines as of the watermark from the daily rows,
    /// records the days' fingerprints and the run as succeeded, notifies
    /// [`RUNS_CHANNEL`], and commits.
    pub async fn commit(
        mut self,
        fingerprints: &BTreeMap<NaiveDate, (String, Vec<String>)>,
        input_files: usize,
    ) -> anyhow::Result<u64> {
        anyhow::ensure!(
            self.remaining == 0,
            "{} day(s) of the run were not added",
            self.remaining
        );
        // Started by the last day, or now when the run has none.
        self.finish_ahead();
        let finishing = self
            .finishing
            .take()
            .context("the commit was prepared twice")?;
        let (vendors, prepared) = finishing.await.context("preparing the commit panicked")??;
        let (run_id, as_of, full) = (self.run_id, self.watermark, self.full);
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
        // The windows go in on a connection of their own while the baselines go in here.
        let (rows, windows) = match prepared {
            Some((rows, windows)) => (Some(rows), Some(windows)),
            None => (None, None),
        };
        // Dropped (the run failed), it stops: its transaction rolls back.
        let windows = windows.map(|windows| {
            let pool = self.pool.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut connection = pool
                    .acquire()
                    .await
                    .context("a connection to keep the baselines' windows")?;
                baselines::keep_windows(&mut connection, windows).await
            }))
        });
        self.rows += baselines::derive(&mut self.transaction, run_id, as_of, rows).await?;
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
        if let Some(windows) = windows {
            // A cache: without it the next run reads the daily rows.
            match windows.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(
                    error = format!("{error:#}"),
                    "could not keep the baselines' windows; the next run reads the daily rows"
                ),
                Err(error) => tracing::warn!(%error, "keeping the baselines' windows panicked"),
            }
        }
        Ok(rows)
    }
}

/// The binary `COPY` rows of `vendors` (per pair, the first use among the run's days)
/// but those `known` (the stored first uses) holds at the same time or earlier: an
/// incremental run sends only the pairs that are new or used earlier than stored (most of
/// a night's pairs are known).
fn vendor_rows(vendors: FirstUses, known: &FirstUses) -> BinaryRows {
    let mut rows = BinaryRows::new();
    for (pair, first_seen) in vendors {
        if known.get(&pair).is_some_and(|stored| *stored <= first_seen) {
            continue;
        }
        rows.row(3)
            .text(&pair.0)
            .text(&pair.1)
            .timestamp(first_seen);
    }
    rows
}

fn millis_to_time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).expect("a representable time")
}
