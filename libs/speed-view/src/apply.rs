//! The writer's side: the script that applies runs of customers' records, many
//! customers in one script call, and how a batch's calls go to Redis in one pipeline.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use crate::meta::Generation;
use crate::state::{CustomerState, DecodeError};

/// One Kafka record of a customer, ready for the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub ts: i64,
    pub amount: i64,
    pub vendor: [u8; 8],
    pub transaction: [u8; 8],
}

impl Record {
    /// The size of a packed record.
    const PACKED_LEN: usize = 40;

    /// The record as the script reads it ([`Record::PACKED_LEN`] bytes).
    fn pack_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.ts.to_le_bytes());
        out.extend_from_slice(&self.amount.to_le_bytes());
        out.extend_from_slice(&self.vendor);
        out.extend_from_slice(&self.transaction);
    }
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

/// What the script decided for one record of a run.
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

impl RecordOutcome {
    /// The script's byte for it.
    fn from_byte(byte: u8) -> Option<RecordOutcome> {
        Some(match byte {
            b'n' => RecordOutcome::Applied {
                vendor_seen_before: false,
            },
            b's' => RecordOutcome::Applied {
                vendor_seen_before: true,
            },
            b'l' => RecordOutcome::Late,
            b'd' => RecordOutcome::Duplicate,
            b'r' => RecordOutcome::Replayed,
            b'S' => RecordOutcome::ReplayedHeld {
                vendor_seen_before: true,
            },
            b'N' => RecordOutcome::ReplayedHeld {
                vendor_seen_before: false,
            },
            _ => return None,
        })
    }
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

/// Applying failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected reply from the apply script: {0}")]
    Reply(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The apply script (`apply.lua`).
///
/// One script call applies the runs of many customers: the call itself (looking the
/// script up, setting up its arguments, resetting its environment) costs Redis about as
/// much as the `GET` and the `SET` of a customer, so a call per customer spent most of
/// Redis' time on calls. Calls take [`ApplyScript::runs_per_call`] runs each, so that
/// one call does not hold Redis (single-threaded: every other client waits meanwhile)
/// for long, and the calls of a batch go in one pipeline.
///
/// # Keys and Redis Cluster
/// The script's first line, `#!lua flags=allow-cross-slot-keys`, lets one call touch
/// keys of many slots; every key is declared (`KEYS`). On a standalone Redis, the only
/// kind the platform connects to today, the flag has no effect and any keys may share
/// a call. On a cluster the flag lets the script's own commands reach keys of several
/// slots of the node it runs on, but the keys a call declares must still hash to one
/// slot, and a key of another node is an error. A cluster writer would therefore group
/// each batch's runs by node (slot of the `{customerId}` hash tag → node, from the
/// cluster's slot map, refreshed on `MOVED`), declare one key per call for routing and
/// pass the others as arguments, and send each node its calls; or, keeping the script
/// as it is, make one call per slot (16,384 slots: with 100,000 customers that is
/// close to a call per customer again). A failed call writes nothing (the script
/// computes every state before it writes one), so a `MOVED` or `ASK` in the middle of
/// a slot migration fails that call whole and the batch is retried.
pub struct ApplyScript {
    script: Script,
    runs_per_call: usize,
}

/// Runs per script call unless [`ApplyScript::with_runs_per_call`] says otherwise. At
/// about 9 µs of Redis time a customer, a call holds Redis for about 5 ms, and the
/// call's own cost (measured at about 1.6 µs a customer with a call per customer) is
/// spread over 500 customers.
pub const RUNS_PER_CALL: usize = 500;

impl Default for ApplyScript {
    fn default() -> Self {
        Self::new()
    }
}

impl ApplyScript {
    pub fn new() -> Self {
        Self::with_runs_per_call(RUNS_PER_CALL)
    }

    /// At most `runs_per_call` runs (at least 1) in one script call.
    pub fn with_runs_per_call(runs_per_call: usize) -> Self {
        Self {
            script: Script::new(include_str!("apply.lua")),
            runs_per_call: runs_per_call.max(1),
        }
    }

    /// Most runs applied by one script call.
    pub fn runs_per_call(&self) -> usize {
        self.runs_per_call
    }

    /// Applies each `(key, records)` run, [`ApplyScript::runs_per_call`] runs per script
    /// call, the calls in one pipeline; outcomes in the same order, each with one
    /// [`RecordOutcome`] per record. A key may come more than once: its later run starts
    /// from the state the earlier one left. Safe to repeat: replays change nothing.
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
        let mut pipeline = redis::pipe();
        let watermark = watermark.map(|w| w.to_string()).unwrap_or_default();
        let calls = runs.chunks(self.runs_per_call);
        for call in calls.clone() {
            let command = pipeline
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(call.len());
            for (key, _) in call {
                command.arg(key);
            }
            command
                .arg(generation.as_bytes())
                .arg(tuning.retention_ms)
                .arg(&watermark)
                .arg(tuning.idle_ttl_ms)
                .arg(tuning.increments_ttl_ms);
            for (_, records) in call {
                let mut packed = Vec::with_capacity(records.len() * Record::PACKED_LEN);
                for record in records {
                    record.pack_into(&mut packed);
                }
                command.arg(packed);
            }
        }
        let replies: Vec<Value> = match pipeline.query_async(connection).await {
            Ok(replies) => replies,
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis restarted (or flushed its scripts): load it and send again.
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
        let mut outcomes = Vec::with_capacity(runs.len());
        for (reply, call) in replies.into_iter().zip(calls) {
            let Value::Array(items) = reply else {
                return Err(ApplyError::Reply(format!("{reply:?}")));
            };
            if items.len() != 2 * call.len() {
                return Err(ApplyError::Reply(format!(
                    "{} items for {} runs",
                    items.len(),
                    call.len()
                )));
            }
            let mut items = items.into_iter();
            for (_, records) in call {
                let (Some(state), Some(verdicts)) = (items.next(), items.next()) else {
                    unreachable!("two items per run, counted above");
                };
                outcomes.push(outcome(state, verdicts, records.len())?);
            }
        }
        Ok(outcomes)
    }
}

/// One run's part of a reply: its state, and one byte per record.
fn outcome(state: Value, verdicts: Value, records: usize) -> Result<ApplyOutcome, ApplyError> {
    let Value::BulkString(state) = state else {
        return Err(ApplyError::Reply(format!("state {state:?}")));
    };
    // An empty Lua string may come back as an empty bulk string or as nil.
    let verdicts = match verdicts {
        Value::BulkString(bytes) => bytes,
        Value::Nil => Vec::new(),
        other => return Err(ApplyError::Reply(format!("outcomes {other:?}"))),
    };
    if verdicts.len() != records {
        return Err(ApplyError::Reply(format!(
            "{} outcomes for {records} records",
            verdicts.len()
        )));
    }
    let per_record = verdicts
        .iter()
        .map(|&byte| RecordOutcome::from_byte(byte))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApplyError::Reply(format!("outcomes {verdicts:?}")))?;
    let tally = |wanted: fn(&RecordOutcome) -> bool| {
        per_record.iter().filter(|record| wanted(record)).count() as u64
    };
    Ok(ApplyOutcome {
        state: CustomerState::decode(&state)?,
        applied: tally(|record| matches!(record, RecordOutcome::Applied { .. })),
        late: tally(|record| *record == RecordOutcome::Late),
        duplicates: tally(|record| *record == RecordOutcome::Duplicate),
        replayed: tally(|record| {
            matches!(
                record,
                RecordOutcome::Replayed | RecordOutcome::ReplayedHeld { .. }
            )
        }),
        records: per_record,
    })
}
