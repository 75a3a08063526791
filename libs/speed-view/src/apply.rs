//! The writer's side: the script that applies a run of one customer's records, and how
//! runs for many customers go to Redis in one pipeline.

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
    /// The record as the script reads it (40 bytes).
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
    /// Skipped: at or before the last applied offset (already applied earlier).
    Replayed,
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
    /// Skipped: at or before the last applied offset (already applied earlier).
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
pub struct ApplyScript {
    script: Script,
}

impl Default for ApplyScript {
    fn default() -> Self {
        Self::new()
    }
}

impl ApplyScript {
    pub fn new() -> Self {
        Self {
            script: Script::new(include_str!("apply.lua")),
        }
    }

    /// Applies each `(key, records)` run in one pipeline, one script call per customer;
    /// outcomes in the same order, each with one [`RecordOutcome`] per record. Safe to
    /// repeat: replays change nothing.
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
        for (key, records) in runs {
            let mut packed = Vec::with_capacity(records.len() * 40);
            for record in records {
                record.pack_into(&mut packed);
            }
            pipeline
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1)
                .arg(key)
                .arg(generation.as_bytes())
                .arg(tuning.retention_ms)
                .arg(&watermark)
                .arg(tuning.idle_ttl_ms)
                .arg(tuning.increments_ttl_ms)
                .arg(packed);
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
        if replies.len() != runs.len() {
            return Err(ApplyError::Reply(format!(
                "{} replies to {} runs",
                replies.len(),
                runs.len()
            )));
        }
        replies
            .into_iter()
            .zip(runs)
            .map(|(reply, (_, records))| outcome(reply, records.len()))
            .collect()
    }
}

fn outcome(reply: Value, records: usize) -> Result<ApplyOutcome, ApplyError> {
    let Value::Array(items) = reply else {
        return Err(ApplyError::Reply(format!("{reply:?}")));
    };
    let [state, applied, late, duplicates, replayed, verdicts] = <[Value; 6]>::try_from(items)
        .map_err(|items| ApplyError::Reply(format!("{} items", items.len())))?;
    let Value::BulkString(state) = state else {
        return Err(ApplyError::Reply(format!("state {state:?}")));
    };
    let count = |value: Value| match value {
        Value::Int(n) if n >= 0 => Ok(n as u64),
        other => Err(ApplyError::Reply(format!("count {other:?}"))),
    };
    // An empty Lua string may come back as an empty bulk string or as nil.
    let verdicts = match verdicts {
        Value::BulkString(bytes) => bytes,
        Value::Nil => Vec::new(),
        other => return Err(ApplyError::Reply(format!("outcomes {other:?}"))),
    };
    let per_record = verdicts
        .iter()
        .map(|&byte| RecordOutcome::from_byte(byte))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApplyError::Reply(format!("outcomes {verdicts:?}")))?;
    let outcome = ApplyOutcome {
        state: CustomerState::decode(&state)?,
        records: per_record,
        applied: count(applied)?,
        late: count(late)?,
        duplicates: count(duplicates)?,
        replayed: count(replayed)?,
    };
    let tally = |wanted: fn(&RecordOutcome) -> bool| {
        outcome
            .records
            .iter()
            .filter(|record| wanted(record))
            .count() as u64
    };
    let tallied = (
        tally(|record| matches!(record, RecordOutcome::Applied { .. })),
        tally(|record| *record == RecordOutcome::Late),
        tally(|record| *record == RecordOutcome::Duplicate),
        tally(|record| *record == RecordOutcome::Replayed),
    );
    let counted = (
        outcome.applied,
        outcome.late,
        outcome.duplicates,
        outcome.replayed,
    );
    if outcome.records.len() != records || tallied != counted {
        return Err(ApplyError::Reply(format!(
            "{} outcomes {tallied:?} for {records} records counted {counted:?}",
            outcome.records.len()
        )));
    }
    Ok(outcome)
}
