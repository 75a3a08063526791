//! The meta key `<prefix>speed:meta`: the current generation, and per partition
//! whether its state is complete (`ready`) or still being rebuilt from Kafka, plus the
//! speed layer's progress for freshness figures.
//!
//! Fields of the hash:
//! - `generation`: 16 hex digits;
//! - `partitions`: the topic's partition count;
//! - `p:<partition>`: `ready`, or `rebuilding:<offset>` (complete once the partition
//!   is applied up to that offset);
//! - `progress:<partition>`: `<written at ms> <records behind> <timestamp ms of the last
//!   record applied>`.
//!
//! Every write but the creation of a generation is conditional on the generation still
//! being current, so a writer that has not noticed a loss yet cannot resurrect a
//! partition's `ready` for a generation that never rebuilt it.

use std::collections::BTreeMap;
use std::fmt;

use redis::aio::ConnectionLike;
use redis::{AsyncCommands, RedisError, Script};

/// A generation of the speed layer's state: 8 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Generation([u8; 8]);

impl Generation {
    pub fn random() -> Generation {
        Generation(rand::random())
    }
    pub fn from_bytes(bytes: [u8; 8]) -> Generation {
        Generation(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
    pub fn parse_hex(text: &str) -> Option<Generation> {
        let bytes = hex::decode(text).ok()?;
        Some(Generation(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Generation({self})")
    }
}

/// A partition's state in the current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionStatus {
    Ready,
    /// Complete once applied up to (and including) this offset.
    Rebuilding {
        until: i64,
    },
}

impl PartitionStatus {
    fn encode(self) -> String {
        match self {
            PartitionStatus::Ready => "ready".to_owned(),
            PartitionStatus::Rebuilding { until } => format!("rebuilding:{until}"),
        }
    }
    fn decode(text: &str) -> Option<PartitionStatus> {
        match text.split_once(':') {
            None if text == "ready" => Some(PartitionStatus::Ready),
            Some(("rebuilding", until)) => Some(PartitionStatus::Rebuilding {
                until: until.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// The speed layer's progress on one partition, as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Wall-clock ms when it was written.
    pub written_at: i64,
    /// Records in the partition not applied yet.
    pub behind: i64,
    /// Kafka timestamp (ingest time) of the last record applied, if any.
    pub last_record_ts: Option<i64>,
}

/// The meta key as read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpeedMeta {
    pub generation: Option<Generation>,
    pub partitions: Option<u32>,
    pub statuses: BTreeMap<i32, PartitionStatus>,
    pub progress: BTreeMap<i32, Progress>,
}

/// The meta key under `prefix`.
pub fn meta_key(prefix: &str) -> String {
    format!("{prefix}speed:meta")
}

/// Sets fields only while the generation is still `ARGV[1]`.
const SET_IF_CURRENT: &str = r"
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1";

impl SpeedMeta {
    /// Reads the meta key (`SpeedMeta::default()` when it is missing).
    pub async fn read<C: ConnectionLike + Send + Sync>(
        connection: &mut C,
        key: &str,
    ) -> Result<SpeedMeta, RedisError> {
        let fields: BTreeMap<String, String> = connection.hgetall(key).await?;
        let mut meta = SpeedMeta::default();
        for (field, value) in fields {
            if field == "generation" {
                meta.generation = Generation::parse_hex(&value);
            } else if field == "partitions" {
                meta.partitions = value.parse().ok();
            } else if let Some(partition) = field.strip_prefix("p:") {
                if let (Ok(partition), Some(status)) =
                    (partition.parse(), PartitionStatus::decode(&value))
                {
                    meta.statuses.insert(partition, status);
                }
            } else if let Some(partition) = field.strip_prefix("progress:")
                && let (Ok(partition), Some(progress)) = (partition.parse(), parse_progress(&value))
            {
                meta.progress.insert(partition, progress);
            }
        }
        Ok(meta)
    }

    /// Why the view is not complete, if it is not: no generation (Redis empty or lost
    /// its data), or partitions not rebuilt yet.
    pub fn degraded(&self) -> Option<String> {
        if self.generation.is_none() {
            return Some(
                "the speed layer's state is missing (Redis empty or lost its data)".into(),
            );
        }
        let ready = self
            .statuses
            .values()
            .filter(|status| **status == PartitionStatus::Ready)
            .count();
        let expected = self.partitions.map_or(self.statuses.len(), |n| n as usize);
        if ready < expected.max(1) {
            return Some(format!(
                "the speed layer is rebuilding its state from Kafka ({ready} of {expected} \
                 partitions ready)"
            ));
        }
        None
    }

    /// The current generation, creating one when there is none; `true` when created.
    pub async fn ensure_generation<C: ConnectionLike + Send + Sync>(
        connection: &mut C,
        key: &str,
    ) -> Result<(Generation, bool), RedisError> {
        let fresh = Generation::random();
        let created: bool = connection
            .hset_nx(key, "generation", fresh.to_string())
            .await?;
        if created {
            return Ok((fresh, true));
        }
        let current: Option<String> = connection.hget(key, "generation").await?;
        match current.as_deref().and_then(Generation::parse_hex) {
            Some(generation) => Ok((generation, false)),
            // Lost again between the two calls, or unreadable: start over.
            None => {
                let _: () = connection.del(key).await?;
                Box::pin(Self::ensure_generation(connection, key)).await
            }
        }
    }

    /// Sets fields if `generation` is still current; `false` when it is not.
    pub async fn set_if_current<C: ConnectionLike + Send + Sync>(
        connection: &mut C,
        key: &str,
        generation: Generation,
        fields: &[(String, String)],
    ) -> Result<bool, RedisError> {
        let script = Script::new(SET_IF_CURRENT);
        let mut invocation = script.key(key);
        invocation.arg(generation.to_string());
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        invocation.invoke_async(connection).await
    }

    /// The field and value that set `partition`'s status.
    pub fn status_field(partition: i32, status: PartitionStatus) -> (String, String) {
        (format!("p:{partition}"), status.encode())
    }

    /// The field and value that report `partition`'s progress.
    pub fn progress_field(partition: i32, progress: Progress) -> (String, String) {
        (
            format!("progress:{partition}"),
            format!(
                "{} {} {}",
                progress.written_at,
                progress.behind,
                progress.last_record_ts.unwrap_or(-1)
            ),
        )
    }
}

fn parse_progress(text: &str) -> Option<Progress> {
    let mut parts = text.split(' ');
    let written_at = parts.next()?.parse().ok()?;
    let behind = parts.next()?.parse().ok()?;
    let last: i64 = parts.next()?.parse().ok()?;
    Some(Progress {
        written_at,
        behind,
        last_record_ts: (last >= 0).then_some(last),
    })
}
