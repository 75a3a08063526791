//! `/risk`'s batch rows, kept in this process per customer and batch run, so that a
//! request whose customer is cached reads only the speed view (Redis) and no Postgres.
//!
//! # What is cached: nothing that depends on `now`
//! For customer c and the run in force (its id and T_b): the `batch_hourly` sums and
//! counts of the hours `[T_b − 23 h, T_b]`, whether the batch knows c, and c's baseline.
//! For any `now >= T_b` the ranges of [`Ranges::at`] start at or after `T_b − 23 h`
//! (today at `day_floor(now) >= floor_hour(now) − 23 h`, the last 24 hours at
//! `floor_hour(now) − 23 h`), so their batch parts `[from, T_b]` are sums of cached
//! hours, whatever `now` is and across a day boundary. A request with `now` before T_b
//! (a clock behind the batch layer's) reads Postgres, as before.
//!
//! # Which run
//! The run in force is the latest succeeded `batch_runs` row (runs never overlap and
//! their watermarks never go back, so it also has the highest T_b). A run publishes its
//! rows and its `batch_runs` row in one transaction, and until the next run they never
//! change: the rows of (customer, run) can be kept as long as that run is in force.
//! [`BatchCache::spawn_follower`] follows the run in force: `LISTEN` on [`CHANNEL`] (the
//! batch layer notifies in the publishing transaction) and, for a notification missed
//! while the listening connection was down, a check every [`REFRESH`]. Every shard
//! holds the rows of one run only and is emptied when the run in force changes; a
//! lookup asks for the run in force, so an answer never mixes two runs' rows, and it
//! uses that run's own T_b in the merge.
//!
//! # A run published while a request is in flight
//! A request reads Redis first, then looks the run in force up here. If the switch
//! comes between the two, the request uses the new run (or misses and reads Postgres,
//! whose snapshot is later still): the state it read was trimmed with a watermark no
//! newer than that run's, so the merge stays exact (see `read`). If the switch comes
//! after the lookup, the request answers with the previous run, whole, with that run's
//! T_b: exact as long as the speed state it read still holds the hours after that T_b.
//! It does unless the speed layer learned the new T_b and rewrote the customer's state
//! before this process learned it: the speed layer polls `batch_runs` every
//! `speed.watermark_refresh_ms` (default 60 s) and drops the hours before the new T_b
//! at the customer's next write; this process learns a run from its notification,
//! within milliseconds of the commit (within [`REFRESH`] if the notification was lost).
//! So the speed layer would have to poll in those milliseconds and write the customer
//! before the notification is handled; with the listener down, within the second. Only
//! a speed layer that kept the hours before a new T_b for a while after learning it
//! (longer than [`REFRESH`]) would close that gap entirely. A row read from Postgres on
//! a miss always comes with the run of that read.
//!
//! # Filling
//! A new run empties the cache; the follower then fills it in bulk with the rows of the
//! customers that have batch hours in the day up to T_b (the most recently active
//! first, up to the capacity), one streaming statement in a snapshot that still has the
//! run in force. Without it every request would miss right after the nightly switch, as
//! if there were no cache; customers filled are exactly what a miss would have read.
//!
//! # When Postgres does not answer
//! Cached rows are still used, since they are exact for their run; but once the run in
//! force has not been confirmed for [`CONFIRMED_FOR`] the answer is `degraded`, saying
//! which run's figures it gives and since when the run is unconfirmed. Customers not
//! cached get what they got before: the speed view alone, degraded.
//!
//! # Bounded memory
//! At most `serving.batch_cache_entries` customers (0: no cache), in up to [`SHARDS`]
//! shards of a mutex each, each evicting by CLOCK (second chance): an entry used since
//! the hand last passed is skipped once. An entry takes about [`ENTRY_BYTES`] bytes plus
//! [`HOUR_BYTES`] per hour of the 24 with spending (at most 24): the slot, the index
//! entry, the customer id (shared by both) and the rows (see the unit test that checks
//! the sizes of the parts).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use fraud_service::Shutdown;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::merge::{Ranges, Totals};
use super::read::{self, BaselineRow};
use fraud_speed_view::HOUR_MS;

/// The channel the batch layer notifies, with the run id as text, in the transaction
/// that publishes a run (`batch_layer::store::RUNS_CHANNEL`).
pub const CHANNEL: &str = "fraud_batch_runs";

/// How often the run in force is checked, notifications or not.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How long after the last check that answered the run in force counts as confirmed.
pub const CONFIRMED_FOR: Duration = Duration::from_secs(3);

/// Shards of the cache (each a mutex), at most.
pub const SHARDS: usize = 64;

/// Bytes an entry takes besides its hours, about: the slot (32), the index entry (24
/// plus hash table slack), the customer id (its text plus 16, one allocation shared by
/// slot and index) and the rows (16 + 72, one allocation), rounded up for the
/// allocator, with a customer id of 20 bytes.
pub const ENTRY_BYTES: usize = 240;

/// Bytes of each cached hour.
pub const HOUR_BYTES: usize = std::mem::size_of::<HourTotals>();

/// A published batch run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub id: i64,
    /// T_b, UTC ms (hour-aligned).
    pub watermark: i64,
}

/// One `batch_hourly` row's sum and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourTotals {
    /// The hour's start, UTC ms.
    pub hour: i64,
    pub sum: i64,
    pub count: i64,
}

/// A customer's batch rows of one run, as `/risk` needs them at any `now`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerRows {
    /// The batch has a day of this customer.
    pub known: bool,
    pub baseline: Option<BaselineRow>,
    /// The hours up to T_b (ascending); cached: only those from `T_b − 23 h`.
    pub hours: Box<[HourTotals]>,
}

impl CustomerRows {
    /// The batch part of a range starting at `from` (hour-aligned): the hours from
    /// `from` up to T_b (every stored hour is at most T_b).
    pub fn totals_from(&self, from: i64) -> Totals {
        self.hours.iter().filter(|hour| hour.hour >= from).fold(
            Totals::default(),
            |totals, hour| {
                totals.plus(Totals {
                    sum: hour.sum,
                    count: hour.count,
                })
            },
        )
    }

    /// What is kept of these rows for `run`: the hours any `now >= T_b` can need.
    fn for_cache(&self, run: Option<Run>) -> CustomerRows {
        let first = run.map_or(i64::MAX, |run| run.watermark - 23 * HOUR_MS);
        CustomerRows {
            known: self.known,
            baseline: self.baseline.clone(),
            hours: self
                .hours
                .iter()
                .filter(|hour| hour.hour >= first)
                .copied()
                .collect(),
        }
    }
}

/// Whether rows cached for `run` answer a request at `ranges.now`: no run (no hours),
/// or `now >= T_b`, so that both ranges start at or after `T_b − 23 h`.
pub fn covers(run: Option<Run>, ranges: Ranges) -> bool {
    run.is_none_or(|run| {
        let covered = ranges.now >= run.watermark;
        debug_assert!(!covered || ranges.last24h_from >= run.watermark - 23 * HOUR_MS);
        debug_assert!(ranges.today_from >= ranges.last24h_from);
        covered
    })
}

/// The batch side of one `/risk` answer.
#[derive(Debug)]
pub struct BatchRead {
    /// The run and the customer's rows of it, or why they could not be read.
    pub rows: Result<(Option<Run>, Arc<CustomerRows>), String>,
    /// Set when the rows are cached ones of a run Postgres has not confirmed lately.
    pub unconfirmed: Option<String>,
}

/// What this process knows of the run in force.
#[derive(Debug, Clone, Copy)]
enum InForce {
    /// Not read yet.
    Unknown,
    /// `run` (`None`: no run has succeeded), last confirmed at `confirmed_at`.
    Known {
        run: Option<Run>,
        confirmed_at: Instant,
    },
}

/// `/risk`'s batch rows per customer, of the run in force.
pub struct BatchCache {
    in_force: RwLock<InForce>,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    entries: AtomicI64,
    /// Asks [`BatchCache::keep_fresh`] to check the run in force now.
    check_now: Notify,
}

impl BatchCache {
    /// A cache of at most `capacity` customers (0: nothing is cached).
    pub fn new(capacity: usize) -> BatchCache {
        // Fewer shards than SHARDS for a small capacity, so none is left without room.
        let count = capacity.clamp(1, SHARDS);
        let shards = (0..count)
            .map(|index| {
                let share = capacity / count + usize::from(index < capacity % count);
                Mutex::new(Shard::new(share))
            })
            .collect();
        BatchCache {
            in_force: RwLock::new(InForce::Unknown),
            shards,
            hasher: RandomState::new(),
            entries: AtomicI64::new(0),
            check_now: Notify::new(),
        }
    }

    /// The batch rows of `customer` for a request at `ranges`: cached ones of the run
    /// in force when there are, else one Postgres statement (kept for later when its
    /// run is the run in force).
    pub async fn risk_rows(
        &self,
        pool: &PgPool,
        timeout: Duration,
        customer: &str,
        ranges: Ranges,
    ) -> BatchRead {
        if let Some(hit) = self.lookup(customer, ranges) {
            return hit;
        }
        let known = match *read_lock(&self.in_force) {
            InForce::Known { run: Some(run), .. } => Some(run.watermark),
            _ => None,
        };
        match read::risk_rows(pool, timeout, customer, ranges, known).await {
            Ok((run, rows)) => {
                let rows = Arc::new(rows);
                self.remember(customer, run, &rows);
                BatchRead {
                    rows: Ok((run, rows)),
                    unconfirmed: None,
                }
            }
            Err(error) => BatchRead {
                rows: Err(error),
                unconfirmed: None,
            },
        }
    }

    /// The cached rows of `customer` of the run in force, if they answer `ranges`.
    fn lookup(&self, customer: &str, ranges: Ranges) -> Option<BatchRead> {
        let InForce::Known { run, confirmed_at } = *read_lock(&self.in_force) else {
            metrics::counter!("serving_risk_batch_cache_misses_total").increment(1);
            return None;
        };
        if !covers(run, ranges) {
            metrics::counter!("serving_risk_batch_cache_misses_total").increment(1);
            return None;
        }
        let found = self.shard(customer).get(customer, run.map(|run| run.id));
        let Some(rows) = found else {
            metrics::counter!("serving_risk_batch_cache_misses_total").increment(1);
            return None;
        };
        metrics::counter!("serving_risk_batch_cache_hits_total").increment(1);
        let unconfirmed = (confirmed_at.elapsed() > CONFIRMED_FOR).then(|| {
            let run = run.map_or_else(
                || "no run (none had succeeded)".to_owned(),
                |run| format!("run {} (T_b {})", run.id, super::rfc3339(run.watermark)),
            );
            format!(
                "Postgres has not confirmed the batch run in force for {} s: the figures up \
                 to the batch watermark and the baseline are those of {run}, kept in memory; \
                 a newer run may have been published since",
                confirmed_at.elapsed().as_secs()
            )
        });
        Some(BatchRead {
            rows: Ok((run, rows)),
            unconfirmed,
        })
    }

    /// Keeps `rows` of `customer` read with `run`, if `run` is the run in force.
    fn remember(&self, customer: &str, run: Option<Run>, rows: &CustomerRows) {
        let InForce::Known { run: in_force, .. } = *read_lock(&self.in_force) else {
            return;
        };
        if in_force != run {
            if run.map(|run| run.id) > in_force.map(|run| run.id) {
                // Postgres has a newer run than this process knows of.
                self.check_now.notify_one();
            }
            return;
        }
        let kept = Arc::new(rows.for_cache(run));
        let outcome = self
            .shard(customer)
            .insert(customer, run.map(|run| run.id), kept);
        match outcome {
            Inserted::Added => {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
            Inserted::Evicted => {
                metrics::counter!("serving_risk_batch_cache_evictions_total").increment(1);
            }
            Inserted::Kept | Inserted::Refused => return,
        }
        metrics::gauge!("serving_risk_batch_cache_entries")
            .set(self.entries.load(Ordering::Relaxed) as f64);
    }

    /// Records `run` as the run in force, confirmed now; a change empties every shard
    /// (and is returned).
    pub fn confirm(&self, run: Option<Run>) -> bool {
        let previous = {
            let mut in_force = write_lock(&self.in_force);
            let previous = match *in_force {
                InForce::Unknown => None,
                InForce::Known { run, .. } => Some(run),
            };
            *in_force = InForce::Known {
                run,
                confirmed_at: Instant::now(),
            };
            previous
        };
        if previous == Some(run) {
            return false;
        }
        tracing::info!(
            run = ?run.map(|run| run.id),
            watermark = ?run.map(|run| super::rfc3339(run.watermark)),
            "batch rows cached for a new run in force"
        );
        metrics::counter!("serving_risk_batch_cache_run_changes_total").increment(1);
        let mut dropped = 0;
        for shard in &self.shards {
            dropped += lock(shard).reset(run.map(|run| run.id));
        }
        let left = self.entries.fetch_sub(dropped as i64, Ordering::Relaxed) - dropped as i64;
        metrics::gauge!("serving_risk_batch_cache_entries").set(left.max(0) as f64);
        true
    }

    /// Fills the cache, emptied for `run`, with the rows of the customers active in the
    /// day up to its T_b, the most recently active first, up to the capacity: the
    /// likeliest to be asked about. Read in bulk, they cost Postgres a fraction of one
    /// statement each, and the requests after a switch do not all miss at once. Stops
    /// adding as soon as another run is in force.
    async fn fill(&self, pool: &PgPool, run: Run) {
        let started = Instant::now();
        let capacity = self.capacity();
        if capacity == 0 {
            return;
        }
        let filled = read::active_rows(pool, run, capacity, |customer, rows| {
            self.remember(customer, Some(run), &rows);
        })
        .await;
        match filled {
            Ok(Some(customers)) => tracing::info!(
                run = run.id,
                customers,
                seconds = started.elapsed().as_secs_f64(),
                "filled the batch row cache"
            ),
            Ok(None) => tracing::debug!(run = run.id, "another run came before the fill"),
            Err(error) => {
                tracing::warn!(%error, run = run.id, "could not fill the batch row cache")
            }
        }
    }

    /// Whether `customer`'s rows of run `run_id` are cached and that run is in force:
    /// what a request for the customer would use without reading Postgres.
    pub fn holds(&self, customer: &str, run_id: Option<i64>) -> bool {
        let in_force = match *read_lock(&self.in_force) {
            InForce::Known { run, .. } => run.map(|run| run.id),
            InForce::Unknown => return false,
        };
        in_force == run_id && self.shard(customer).get(customer, run_id).is_some()
    }

    fn capacity(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).capacity).sum()
    }

    /// Follows the run in force until shutdown: `LISTEN` on [`CHANNEL`], a check at
    /// every notification, every [`REFRESH`] and when a read found a newer run.
    pub fn spawn_follower(self: &Arc<Self>, pool: PgPool, timeout: Duration, shutdown: &Shutdown) {
        let cache = Arc::clone(self);
        shutdown.spawn(
            "batch-run-follower",
            cache.keep_fresh(pool, timeout, shutdown.token()),
        );
    }

    async fn keep_fresh(
        self: Arc<Self>,
        pool: PgPool,
        timeout: Duration,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut listener: Option<PgListener> = None;
        let mut listener_failed = false;
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                notification = next_notification(&mut listener) => {
                    if let Err(error) = notification {
                        tracing::warn!(%error, "lost the batch run listener; checking every second until it is back");
                        listener = None;
                        listener_failed = true;
                    }
                }
                () = self.check_now.notified() => {}
                _ = tick.tick() => {
                    if listener.is_none() {
                        match bounded(timeout, listen(&pool)).await {
                            Ok(connected) => {
                                if listener_failed {
                                    tracing::info!("batch run listener is back");
                                }
                                listener = Some(connected);
                                listener_failed = false;
                            }
                            Err(error) => {
                                if !listener_failed {
                                    tracing::warn!(%error, "cannot listen for batch runs; checking every second");
                                }
                                listener_failed = true;
                            }
                        }
                    }
                }
            }
            match bounded(timeout, read::run_in_force(&pool)).await {
                Ok(run) => {
                    if self.confirm(run)
                        && let Some(run) = run
                    {
                        // Its own task: checks go on meanwhile, and a newer run stops it.
                        let cache = Arc::clone(&self);
                        let pool = pool.clone();
                        tokio::spawn(async move { cache.fill(&pool, run).await });
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot check the batch run in force");
                }
            }
        }
    }

    fn shard(&self, customer: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(customer) as usize) % self.shards.len();
        lock(&self.shards[index])
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The next notification; never resolves without a listener.
async fn next_notification(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

async fn bounded<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard leaves consistent data (no operation panics midway).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads `lock`, whether or not a writer panicked (the guarded values stay consistent).
pub(super) fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `lock`, whether or not a writer panicked (the guarded values stay consistent).
pub(super) fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inserted {
    Added,
    /// The customer's entry of the same run was there already and stays: a run's rows
    /// never change, so a second read of them (a fill after a request's miss) is the same.
    Kept,
    /// Took the place of another customer's entry.
    Evicted,
    /// Of another run than the shard's, or no capacity.
    Refused,
}

/// One shard: the entries of one run, at most `capacity`.
struct Shard {
    /// The run (`Some(None)`: no run succeeded) every entry is of; `None` before any.
    run: Option<Option<i64>>,
    capacity: usize,
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Slot>,
    /// The CLOCK hand: the next slot considered for eviction.
    hand: usize,
}

struct Slot {
    customer: Arc<str>,
    rows: Arc<CustomerRows>,
    /// Used since the hand last passed.
    referenced: bool,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            run: None,
            capacity,
            index: HashMap::new(),
            slots: Vec::new(),
            hand: 0,
        }
    }

    fn get(&mut self, customer: &str, run: Option<i64>) -> Option<Arc<CustomerRows>> {
        if self.run != Some(run) {
            return None;
        }
        let slot = &mut self.slots[*self.index.get(customer)?];
        slot.referenced = true;
        Some(Arc::clone(&slot.rows))
    }

    fn insert(&mut self, customer: &str, run: Option<i64>, rows: Arc<CustomerRows>) -> Inserted {
        if self.run != Some(run) || self.capacity == 0 {
            return Inserted::Refused;
        }
        if self.index.contains_key(customer) {
            return Inserted::Kept;
        }
        let customer: Arc<str> = Arc::from(customer);
        if self.slots.len() < self.capacity {
            self.index.insert(Arc::clone(&customer), self.slots.len());
            self.slots.push(Slot {
                customer,
                rows,
                referenced: false,
            });
            return Inserted::Added;
        }
        // Second chance: at most one turn clears every bit, so this ends.
        while self.slots[self.hand].referenced {
            self.slots[self.hand].referenced = false;
            self.hand = (self.hand + 1) % self.slots.len();
        }
        let at = self.hand;
        self.hand = (self.hand + 1) % self.slots.len();
        let evicted = std::mem::replace(
            &mut self.slots[at],
            Slot {
                customer: Arc::clone(&customer),
                rows,
                referenced: false,
            },
        );
        self.index.remove(&evicted.customer);
        self.index.insert(customer, at);
        debug_assert_eq!(self.index.len(), self.slots.len());
        Inserted::Evicted
    }

    /// Empties the shard for `run`; returns how many entries it dropped.
    fn reset(&mut self, run: Option<i64>) -> usize {
        let dropped = self.slots.len();
        self.run = Some(run);
        self.index = HashMap::new();
        self.slots = Vec::new();
        self.hand = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25T00:00:00Z.
    const DAY: i64 = 1_795_564_800_000;

    fn rows(hours: &[(i64, i64, i64)]) -> CustomerRows {
        CustomerRows {
            known: true,
            baseline: None,
            hours: hours
                .iter()
                .map(|&(hour, sum, count)| HourTotals { hour, sum, count })
                .collect(),
        }
    }

    fn run(id: i64, watermark: i64) -> Option<Run> {
        Some(Run { id, watermark })
    }

    #[test]
    fn cached_hours_answer_every_later_now_like_the_statement() {
        let tb = DAY + 5 * HOUR_MS;
        // Hours from T_b − 30 h to T_b, 1 per hour, sum = hours before T_b.
        let all: Vec<(i64, i64, i64)> = (0..=30)
            .map(|back| (tb - back * HOUR_MS, back, 1))
            .collect();
        let stored = rows(&all);
        let cached = stored.for_cache(run(1, tb));
        assert_eq!(cached.hours.len(), 24, "T_b − 23 h ..= T_b");
        // Every now from T_b to two days on, by 7-minute steps.
        let mut now = tb;
        while now < tb + 2 * 24 * HOUR_MS {
            let ranges = Ranges::at(now);
            assert!(covers(run(1, tb), ranges));
            for from in [ranges.today_from, ranges.last24h_from] {
                // What the statement sums: the stored hours in [from, T_b].
                let expected = all
                    .iter()
                    .filter(|(hour, _, _)| *hour >= from && *hour <= tb)
                    .fold(Totals::default(), |t, &(_, sum, count)| {
                        t.plus(Totals { sum, count })
                    });
                assert_eq!(cached.totals_from(from), expected, "now {now}, from {from}");
            }
            now += 7 * 60_000;
        }
        // Before T_b, the cache does not answer.
        assert!(!covers(run(1, tb), Ranges::at(tb - 1)));
        assert!(!covers(run(1, tb), Ranges::at(tb - 3 * HOUR_MS)));
        assert!(covers(None, Ranges::at(tb)));
        assert!(rows(&[]).for_cache(None).hours.is_empty());
    }

    #[test]
    fn an_entry_is_found_only_for_its_run() {
        let cache = BatchCache::new(100);
        let tb = DAY;
        let ranges = Ranges::at(DAY + 3 * HOUR_MS);
        let customer_rows = rows(&[(tb, 5, 1)]);
        // Nothing is kept before the run in force is known.
        cache.remember("c", run(1, tb), &customer_rows);
        assert!(cache.lookup("c", ranges).is_none());
        cache.confirm(run(1, tb));
        cache.remember("c", run(1, tb), &customer_rows);
        let hit = cache.lookup("c", ranges).expect("cached");
        assert_eq!(hit.rows.as_ref().unwrap().0, run(1, tb));
        assert!(hit.unconfirmed.is_none());
        // Rows read with another run than the one in force are not kept.
        cache.remember("d", run(0, tb - HOUR_MS), &customer_rows);
        assert!(cache.lookup("d", ranges).is_none());
        // A new run (even with the same T_b): nothing of the old one is found.
        cache.confirm(run(2, tb));
        assert!(cache.lookup("c", ranges).is_none());
        assert_eq!(cache.entries.load(Ordering::Relaxed), 0);
        // A late insert of run 1's rows after the switch is refused.
        cache.remember("c", run(1, tb), &customer_rows);
        assert!(cache.lookup("c", ranges).is_none());
        cache.remember("c", run(2, tb), &rows(&[(tb, 7, 2)]));
        let hit = cache.lookup("c", ranges).expect("cached");
        assert_eq!(
            hit.rows.unwrap().1.totals_from(tb),
            Totals { sum: 7, count: 2 }
        );
    }

    #[test]
    fn cached_rows_of_an_unconfirmed_run_say_so() {
        let cache = BatchCache::new(10);
        let ranges = Ranges::at(DAY + 3 * HOUR_MS);
        cache.confirm(run(4, DAY));
        cache.remember("c", run(4, DAY), &rows(&[(DAY, 5, 1)]));
        assert!(cache.lookup("c", ranges).unwrap().unconfirmed.is_none());
        // Postgres has not answered the checks for a while.
        let long_ago = Instant::now()
            .checked_sub(CONFIRMED_FOR + Duration::from_secs(2))
            .expect("a process older than that");
        *write_lock(&cache.in_force) = InForce::Known {
            run: run(4, DAY),
            confirmed_at: long_ago,
        };
        let hit = cache.lookup("c", ranges).expect("still used");
        let reason = hit.unconfirmed.expect("degraded");
        assert!(reason.contains("run 4"), "{reason}");
        assert!(reason.contains("has not confirmed"), "{reason}");
        assert_eq!(
            hit.rows.unwrap().1.totals_from(DAY),
            Totals { sum: 5, count: 1 }
        );
        // Confirmed again: the same entries, no longer degraded.
        cache.confirm(run(4, DAY));
        assert!(cache.lookup("c", ranges).unwrap().unconfirmed.is_none());
    }

    #[test]
    fn capacity_is_kept_and_used_entries_get_a_second_chance() {
        let mut shard = Shard::new(3);
        shard.reset(Some(1));
        let entry = |n: i64| Arc::new(rows(&[(DAY, n, 1)]));
        for name in ["a", "b", "c"] {
            assert_eq!(shard.insert(name, Some(1), entry(1)), Inserted::Added);
        }
        assert_eq!(shard.insert("a", Some(1), entry(2)), Inserted::Kept);
        assert_eq!(
            shard.get("a", Some(1)),
            Some(entry(1)),
            "the first rows stay"
        );
        // a and c used: b goes first.
        assert!(shard.get("a", Some(1)).is_some());
        assert!(shard.get("c", Some(1)).is_some());
        assert_eq!(shard.insert("d", Some(1), entry(1)), Inserted::Evicted);
        assert!(shard.get("b", Some(1)).is_none());
        assert_eq!(shard.slots.len(), 3);
        assert_eq!(shard.index.len(), 3);
        for name in ["a", "c", "d"] {
            assert!(shard.get(name, Some(1)).is_some(), "{name}");
        }
        assert_eq!(shard.insert("e", Some(2), entry(1)), Inserted::Refused);
        let mut empty = Shard::new(0);
        empty.reset(Some(1));
        assert_eq!(empty.insert("a", Some(1), entry(1)), Inserted::Refused);

        // The whole cache never holds more than its capacity.
        let cache = BatchCache::new(100);
        cache.confirm(run(1, DAY));
        for n in 0..1_000 {
            cache.remember(&format!("customer-{n}"), run(1, DAY), &rows(&[]));
        }
        let held: usize = cache
            .shards
            .iter()
            .map(|shard| lock(shard).slots.len())
            .sum();
        assert!(held <= 100, "{held}");
        assert_eq!(cache.entries.load(Ordering::Relaxed) as usize, held);
    }

    #[test]
    fn the_documented_entry_size_holds() {
        use std::mem::size_of;
        let slot = size_of::<Slot>();
        let index_entry = size_of::<(Arc<str>, usize)>() + 1;
        let id = 16 + 20;
        let rows = 16 + size_of::<CustomerRows>();
        let parts = slot + index_entry * 8 / 7 + id + rows;
        assert!(parts <= ENTRY_BYTES, "{parts} > {ENTRY_BYTES}");
        assert!(
            parts + 64 >= ENTRY_BYTES,
            "{parts}: the estimate is far too high"
        );
        assert_eq!(HOUR_BYTES, 24);
    }
}
