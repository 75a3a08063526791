//! The writer's side: runs of customers' records applied to their states in Redis,
//! exactly once in effect, many customers in one round trip.
//!
//! # Read, apply, write if unchanged
//! [`StateWriter::apply`] takes a batch's runs (one customer's records each, in offset
//! order) in three steps:
//! 1. the states it holds no copy of are read, a `GET` per key, in one pipeline;
//! 2. every run is applied in memory ([`crate::run`]: every decision is made there);
//! 3. every new state is written by `store.lua` only if its key still holds the header
//!    of the state the run was applied to, with its TTL; many customers a script call,
//!    the calls in one pipeline.
//!
//! A key that holds something else by then (another instance wrote it: a zombie that
//! has not noticed it lost the partition, or the partition's new owner; or it expired,
//! or Redis lost it) is read again and its run applied again to what it holds, where the
//! records already applied are replays: a compare-and-set on the customer's last offset,
//! so the read, the apply and the write act as one step, and an instance can never
//! overwrite effects it has not seen.
//!
//! The header is enough to compare: it holds the generation, the last offset, the clock,
//! the oldest event time and the counts of events and hours. Within a generation the
//! records up to the last offset decide the events inside the retention and the hours;
//! two writers may differ only in when they trimmed and in which hours they dropped
//! before T_b, and both show in the counts.
//!
//! # The writer's copies
//! A writer made [`StateWriter::with_copies`] keeps the states it wrote (up to a number
//! of customers, each for an idle time after its last use), so step 1 reads only
//! customers it has not seen lately. A stale copy costs a second round trip, never a
//! wrong state: the write compares it with Redis. The speed layer owns its partitions'
//! customers, so its copies are almost always current. Redis no longer decodes, searches
//! or rebuilds a state: for a customer it runs a `GETRANGE` of 43 bytes and a `SET`,
//! in a script call shared by many customers.
//!
//! Earlier speed layers applied the runs inside Redis, in a Lua script that read,
//! decided and wrote; Redis spent 6–12 µs a customer on it (most of it making and
//! hashing Lua strings of the whole state three times), the busiest part of the
//! machine. See README, Benchmarks, Speed layer.
//!
//! # Keys and Redis Cluster
//! Reads are single-key `GET`s, cluster-friendly as they are. The write script's first
//! line, `#!lua flags=allow-cross-slot-keys`, lets one call write keys of many slots;
//! every key is declared (`KEYS`). On a standalone Redis, the only kind the platform
//! connects to today, the flag has no effect and any keys may share a call. On a cluster
//! the flag lets the script's own commands reach keys of several slots of the node it
//! runs on, but the keys a call declares must still hash to one slot, and a key of
//! another node is an error. A cluster writer would therefore group each batch's writes
//! by node (slot of the `{customerId}` hash tag → node, from the cluster's slot map,
//! refreshed on `MOVED`), declare one key per call for routing and pass the others as
//! arguments, and send each node its calls. A call that fails (a `MOVED` in the middle
//! of a slot migration) fails the batch, which is retried: the writes that went through
//! are then found as they are and the records they applied are replays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use crate::meta::Generation;
use crate::run::{self, Applied};
use crate::state::{CustomerState, DecodeError, HEADER_LEN};

/// One Kafka record of a customer, as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub ts: i64,
    pub amount: i64,
    pub vendor: [u8; 8],
    pub transaction: [u8; 8],
}

/// The speed layer's retention and expiry, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// The window plus the allowed lateness: how far behind the customer's clock an
    /// event may be and still be applied.
    pub retention_ms: i64,
    /// How long a state without hourly increments lives after its last write.
    pub idle_ttl_ms: i64,
    /// How long a state holding hourly increments lives after its last write.
    pub increments_ttl_ms: i64,
}

/// What was decided for one record of a run ([`crate::run`] says how).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Applied. `vendor_seen_before`: the customer had used the record's vendor before
    /// it, inside the retention (defined in [`crate::update::AppliedEvent`]).
    Applied { vendor_seen_before: bool },
    /// Skipped: older than the customer's clock minus the retention.
    Late,
    /// Skipped: a transaction already applied.
    Duplicate,
    /// Skipped: at or before the last applied offset (delivered before), and not held
    /// as the same event inside the retention: applied earlier and since past the
    /// retention, or skipped when first delivered (late, duplicate), or applied by a
    /// speed layer that did not record `vendor_seen_before`.
    Replayed,
    /// Skipped: at or before the last applied offset, and the same event (time,
    /// amount, vendor, transaction) is held inside the retention: it was applied by an
    /// earlier delivery (a crash or a rebalance came before that batch's window updates
    /// were committed), with this answer then. A window update lists it again.
    ReplayedHeld { vendor_seen_before: bool },
}

/// What applying one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The customer's state after the run.
    pub state: CustomerState,
    /// One per record of the run, in the run's (offset) order. The state alone cannot
    /// tell: a duplicate of a held transaction leaves no trace, and the run may trim
    /// events it applied itself.
    pub records: Vec<RecordOutcome>,
    pub applied: u64,
    /// Skipped: older than the customer's clock minus the retention.
    pub late: u64,
    /// Skipped: a transaction already applied.
    pub duplicates: u64,
    /// Skipped: at or before the last applied offset (delivered before), held or not.
    pub replayed: u64,
}

/// Applying failed; no run of the batch was written, or a retry finds the ones that were
/// as they are.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
    #[error("{key}: {error}")]
    Decode { key: String, error: DecodeError },
    #[error("{key}: {error}")]
    Overflow { key: String, error: run::Overflow },
    #[error("{keys} customers' states kept changing while being written ({attempts} attempts)")]
    Contended { keys: usize, attempts: usize },
}

/// Writes the speed layer's customer states (the module header says how).
pub struct StateWriter {
    script: Script,
    runs_per_call: usize,
    copies: Option<Mutex<Copies>>,
}

/// Customers per write call unless [`StateWriter::with_runs_per_call`] says otherwise: at
/// about 5 µs of Redis time a customer (mostly the call's Lua handling the state it is
/// given), a call holds Redis (single-threaded: every other client waits meanwhile) for
/// about 2.5 ms, and the call's own cost is spread over many customers.
pub const RUNS_PER_CALL: usize = 500;

/// How many times a batch reads, applies and writes the customers whose keys changed
/// under it before it gives up (and is retried as a whole later). Only another writer
/// of the same customers makes a key change twice in a row.
const ATTEMPTS: usize = 8;

impl Default for StateWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl StateWriter {
    /// A writer that keeps no copies: every batch reads its customers' states.
    pub fn new() -> Self {
        Self::with_runs_per_call(RUNS_PER_CALL)
    }

    /// At most `runs_per_call` customers (at least 1) written by one script call.
    pub fn with_runs_per_call(runs_per_call: usize) -> Self {
        Self {
            script: Script::new(include_str!("store.lua")),
            runs_per_call: runs_per_call.max(1),
            copies: None,
        }
    }

    /// Keeps a copy of the state of up to `customers` customers it wrote (0: none), each
    /// until it has not been used for `idle`.
    pub fn with_copies(mut self, customers: usize, idle: Duration) -> Self {
        self.copies = (customers > 0).then(|| {
            Mutex::new(Copies {
                entries: HashMap::default(),
                capacity: customers,
                idle,
                swept: Instant::now(),
            })
        });
        self
    }

    /// Most customers written by one script call.
    pub fn runs_per_call(&self) -> usize {
        self.runs_per_call
    }

    /// Drops every copy (when Redis lost its data: they would only fail their writes).
    pub fn forget_copies(&self) {
        if let Some(copies) = &self.copies {
            copies.lock().expect("copies lock").entries.clear();
        }
    }

    /// Applies each `(key, records)` run to its customer's state in Redis; outcomes in
    /// the same order, each with one [`RecordOutcome`] per record. A key may come more
    /// than once: its later run starts from the state the earlier one left. Safe to
    /// repeat: replays change nothing. On an error nothing was written, except by
    /// write calls that went through before a failed one; a retry finds those.
    pub async fn apply<C: ConnectionLike + Send + Sync>(
        &self,
        connection: &mut C,
        generation: Generation,
        watermark: Option<i64>,
        tuning: Tuning,
        runs: &[(String, Vec<Record>)],
    ) -> Result<Vec<ApplyOutcome>, ApplyError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; runs.len()];
        let mut bases = self.take_copies(runs);
        let mut pending: Vec<usize> = (0..runs.len()).collect();
        for _ in 0..ATTEMPTS {
            self.read_missing(connection, runs, &pending, &mut bases)
                .await?;
            // Apply every pending run to the state its customer's last run left.
            let mut writes = Vec::with_capacity(pending.len());
            for &index in &pending {
                let (key, records) = &runs[index];
                let base = bases.remove(key.as_str()).unwrap_or_default();
                let applied = run::apply_run(base.state, generation, watermark, tuning, records)
                    .map_err(|error| ApplyError::Overflow {
                        key: key.clone(),
                        error,
                    })?;
                let bytes = applied.state.encode();
                bases.insert(
                    key,
                    Base {
                        state: Some(applied.state.clone()),
                        header: bytes[..HEADER_LEN].to_vec(),
                    },
                );
                writes.push(Write {
                    index,
                    expected: base.header,
                    bytes,
                    applied,
                });
            }
            let written = self.write(connection, runs, &writes).await?;
            let mut changed = Vec::new();
            for (write, written) in writes.into_iter().zip(written) {
                if written {
                    outcomes[write.index] = Some(outcome(write.applied));
                } else {
                    changed.push(write.index);
                }
            }
            // Those keys are read again: every later run of such a key failed too (it
            // expected the state of the one that did not go through).
            for &index in &changed {
                bases.remove(runs[index].0.as_str());
            }
            pending = changed;
            if pending.is_empty() {
                self.keep_copies(bases);
                return Ok(outcomes
                    .into_iter()
                    .map(|outcome| outcome.expect("every run written"))
                    .collect());
            }
        }
        Err(ApplyError::Contended {
            keys: pending.len(),
            attempts: ATTEMPTS,
        })
    }

    /// Reads the states of the pending runs' keys that `bases` has no state for.
    async fn read_missing<'a, C: ConnectionLike + Send + Sync>(
        &self,
        connection: &mut C,
        runs: &'a [(String, Vec<Record>)],
        pending: &[usize],
        bases: &mut Bases<'a>,
    ) -> Result<(), ApplyError> {
        let mut missing: Vec<&str> = Vec::new();
        for &index in pending {
            let key = runs[index].0.as_str();
            if !bases.contains_key(key) {
                bases.insert(key, Base::default());
                missing.push(key);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for key in &missing {
            pipeline.get(key);
        }
        let stored: Vec<Option<Vec<u8>>> = pipeline.query_async(connection).await?;
        if stored.len() != missing.len() {
            return Err(ApplyError::Reply(format!(
                "{} replies to {} reads",
                stored.len(),
                missing.len()
            )));
        }
        for (key, bytes) in missing.into_iter().zip(stored) {
            let Some(bytes) = bytes else { continue };
            let state = CustomerState::decode(&bytes).map_err(|error| ApplyError::Decode {
                key: key.to_owned(),
                error,
            })?;
            let header = bytes[..HEADER_LEN.min(bytes.len())].to_vec();
            bases.insert(
                key,
                Base {
                    state: Some(state),
                    header,
                },
            );
        }
        Ok(())
    }

    /// Writes each state whose key still holds the header it was applied to; whether it
    /// was written, in `writes`' order.
    async fn write<C: ConnectionLike + Send + Sync>(
        &self,
        connection: &mut C,
        runs: &[(String, Vec<Record>)],
        writes: &[Write],
    ) -> Result<Vec<bool>, ApplyError> {
        let mut pipeline = redis::pipe();
        let calls = writes.chunks(self.runs_per_call);
        for call in calls.clone() {
            let command = pipeline
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(call.len());
            for write in call {
                command.arg(&runs[write.index].0);
            }
            for write in call {
                command
                    .arg(&write.expected)
                    .arg(&write.bytes)
                    .arg(write.applied.ttl_ms);
            }
        }
        let replies: Vec<Value> = match pipeline.query_async(connection).await {
            Ok(replies) => replies,
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis restarted (or flushed its scripts): load it and send again. No
                // call ran: a script missing for one is missing for all.
                self.script.prepare_invoke().load_async(connection).await?;
                pipeline.query_async(connection).await?
            }
            Err(error) => return Err(error.into()),
        };
        if replies.len() != calls.len() {
            return Err(ApplyError::Reply(format!(
                "{} replies to {} calls",
                replies.len(),
                calls.len()
            )));
        }
        let mut written = Vec::with_capacity(writes.len());
        for (reply, call) in replies.into_iter().zip(calls) {
            let Value::BulkString(flags) = reply else {
                return Err(ApplyError::Reply(format!("{reply:?}")));
            };
            if flags.len() != call.len() {
                return Err(ApplyError::Reply(format!(
                    "{} flags for {} writes",
                    flags.len(),
                    call.len()
                )));
            }
            written.extend(flags.iter().map(|&flag| flag == b'1'));
        }
        Ok(written)
    }

    /// Takes the copies of the runs' customers (they come back once written).
    fn take_copies<'a>(&self, runs: &'a [(String, Vec<Record>)]) -> Bases<'a> {
        let mut bases = Bases::with_capacity_and_hasher(runs.len(), RandomState::default());
        let Some(copies) = &self.copies else {
            return bases;
        };
        let mut copies = copies.lock().expect("copies lock");
        let idle = copies.idle;
        for (key, _) in runs {
            if let Some(copy) = copies.entries.remove(key.as_str())
                && copy.used.elapsed() < idle
            {
                bases.insert(key.as_str(), copy.base);
            }
        }
        bases
    }

    /// Keeps the states just written as copies.
    fn keep_copies(&self, bases: Bases<'_>) {
        let Some(copies) = &self.copies else {
            return;
        };
        let mut copies = copies.lock().expect("copies lock");
        let now = Instant::now();
        if now.duration_since(copies.swept) >= copies.idle / 4 {
            let idle = copies.idle;
            copies
                .entries
                .retain(|_, copy| now.duration_since(copy.used) < idle);
            copies.swept = now;
        }
        for (key, base) in bases {
            if base.state.is_some() && copies.entries.len() < copies.capacity {
                copies
                    .entries
                    .insert(key.to_owned(), Copy { base, used: now });
            }
        }
    }
}

/// A customer's state as stored (`None`: no key), with the stored header (empty: no
/// key), which a write compares.
#[derive(Default)]
struct Base {
    state: Option<CustomerState>,
    header: Vec<u8>,
}

/// A copy of a customer's state, as the writer last wrote it.
struct Copy {
    base: Base,
    used: Instant,
}

/// The base of each customer of a batch, by key.
type Bases<'a> = HashMap<&'a str, Base, RandomState>;

struct Copies {
    entries: HashMap<String, Copy, RandomState>,
    capacity: usize,
    idle: Duration,
    swept: Instant,
}

/// A run applied, to be written if its key still holds `expected`.
struct Write {
    /// The run's place in the batch.
    index: usize,
    expected: Vec<u8>,
    bytes: Vec<u8>,
    applied: Applied,
}

fn outcome(applied: Applied) -> ApplyOutcome {
    let tally = |wanted: fn(&RecordOutcome) -> bool| {
        applied
            .records
            .iter()
            .filter(|record| wanted(record))
            .count() as u64
    };
    ApplyOutcome {
        applied: tally(|record| matches!(record, RecordOutcome::Applied { .. })),
        late: tally(|record| *record == RecordOutcome::Late),
        duplicates: tally(|record| *record == RecordOutcome::Duplicate),
        replayed: tally(|record| {
            matches!(
                record,
                RecordOutcome::Replayed | RecordOutcome::ReplayedHeld { .. }
            )
        }),
        state: applied.state,
        records: applied.records,
    }
}
