//! The lake writer: consumes the transactions topic in its own consumer group
//! (`lake.writer_group`) and writes the Parquet lake ([`fraud_lake`]) exactly once.
//!
//! # Chunks
//! Records are buffered per partition in an open *chunk*: a run of consecutive records
//! of one partition. A chunk is closed and written when
//! - it holds `lake.max_rows_per_file` records: by count, deterministic;
//! - its partition has had no new record for `lake.idle_flush_ms`, so the tail of a
//!   partition that goes quiet reaches the lake within that time (plus one poll, 100 ms).
//!   The idle rule looks at the wall clock, so two writers of a partition may cut it
//!   differently; exactness never depends on where a chunk ends, because a chunk is
//!   claimed before it is written and only the claimed range is ever written (below);
//! - its first record has waited `lake.max_chunk_age_ms`, so a partition that trickles
//!   (never idle, never full) is in the lake within that time too (same wall-clock
//!   caveat, same exactness);
//! - the service shuts down cleanly (it still owns its partitions then).
//!
//! A chunk that completes another writer's claim closes at the claimed last offset and
//! at no other point (not even at shutdown: its next owner completes it).
//!
//! A chunk is split by event date into one file per UTC date, every file named
//! `<partition>-<firstOffset>-<lastOffset>.parquet` after the whole chunk and recording
//! the chunk's row count. Before its files, the chunk is *claimed*
//! ([`fraud_lake::claim`]): `_claims/transactions/<partition>/<firstOffset>`, holding its
//! last offset, row count and the writer's identity, created only if absent. Its files
//! are then written one after another, each created only if absent and appearing whole
//! under its final name; the next chunk of the partition starts only after that.
//!
//! # Exactly once
//! The position comes from the lake itself, never from Kafka's committed offsets. When
//! partitions are assigned, the rebalance callback (module `consumer`) recovers each one
//! ([`fraud_lake::recovery`]): with claims, the newest claim decides. Its chunk complete
//! (its files' rows add up to its claimed count), the partition resumes after it;
//! incomplete (its writer stopped, or is still writing), the partition resumes at its
//! first offset and the writer must *complete exactly that chunk*: the open chunk closes
//! at the claimed last offset and nowhere else, whatever the row limit or the clock say,
//! so the files it writes are the claimed ones (those already there are kept). Without
//! claims (a lake from before them), the newest chunk by file name decides as it always
//! did: complete, resume after it; incomplete, delete its files and resume at its first
//! offset. Staged leftovers are deleted either way. The offsets go into the assignment
//! handed to librdkafka, so the first fetch is already at the lake's position; nothing
//! is fetched from the group's committed offsets. The writer accepts only consecutive
//! offsets from there: a gap or a step back is an error, never skipped. Offsets are
//! committed after each chunk only so that lag shows in the usual Kafka tools.
//!
//! A record that does not decode stops the writer with its partition and offset; the
//! task fails and takes the service down rather than leave a hole in the lake.
//!
//! # Rebalances, and writers that do not know they lost a partition
//! Partitions move cooperatively (only the ones that change owner are revoked). A
//! revoked partition's unwritten records are dropped; its next owner rewrites them from
//! the lake. A writer that has lost its partitions without noticing (a zombie: frozen
//! past the session timeout) may still write the chunk it holds; checking
//! `assignment_lost` before writing narrows that window, the claims close it. Claims
//! chain (each chunk is claimed at the offset after the previous claim's), so the
//! zombie's chunk starts where the new owner's chain has, or will have, a claim of its
//! own, whatever wall-clock points cut either writer's chunks:
//! - the new owner claimed that offset first: the zombie's claim finds a different range
//!   there and the zombie writes nothing ([`Written::Fenced`]). A zombie so far behind
//!   that the claim was collected meanwhile finds newer claims and is fenced too;
//! - the zombie claimed first: the owner's claim loses. It drops its open chunk, moves
//!   its consumer back to the zombie's first offset (a seek), completes exactly the
//!   zombie's chunk (the zombie may be writing the same files at the same time: each is
//!   created once, the other create fails harmlessly) and goes on after it;
//! - both claimed the same range: the same files, created once each.
//!
//! What this relies on: a create-if-absent PUT (a local directory; S3 or a compatible
//! store with conditional put, object_store's default `If-None-Match`); records at an
//! offset never change (the chunk's rows are a function of its range); and every writer
//! of the lake claims (during a rolling upgrade from a writer without claims, the old one
//! is not fenced). A zombie whose staged file the owner's recovery deletes fails its
//! write and stops (the service exits; its restart rejoins the group).
//!
//! Claims stay small and few: after each chunk, all but the partition's newest four are
//! deleted (every one before the newest is of a complete chunk).
//!
//! # Memory and CPU
//! Each assigned partition buffers at most `lake.max_rows_per_file` records (in Arrow
//! column builders), so memory is bounded by `max_rows_per_file` × assigned partitions,
//! plus librdkafka's prefetch queue (`queued.max.messages.kbytes`, 64 MiB by default).
//! While a chunk is written nothing is polled, so Kafka itself is the back-pressure.
//! Polling, Parquet encoding and writing all happen on the writer's own thread (with a
//! current-thread runtime for the object store), never on the service's runtime.
//!
//! # Metrics
//! `lake_records_written_total`, `lake_files_written_total` (files this writer
//! created), `lake_chunks_recovered_total` (incomplete unclaimed chunks removed when
//! partitions are assigned), `lake_chunks_fenced_total` (chunks not written because
//! another writer's claim covers them) and the gauge `lake_records_buffered`.

mod chunk_writer;
mod consumer;
mod partitions;
mod worker;

// The writer apart from Kafka, for tests that play a second writer of a partition.
#[doc(hidden)]
pub use chunk_writer::{ChunkWriter, Written};
#[doc(hidden)]
pub use partitions::{Position, Pushed};

use std::time::Duration;

use anyhow::Context;
use fraud_config::{KafkaConfig, Settings};
use fraud_lake::LakeRoot;
use fraud_service::Shutdown;

/// The lake writer, configured and ready to start.
pub struct LakeWriter {
    config: Config,
}

/// What the writer needs from the settings, checked.
#[derive(Debug, Clone)]
struct Config {
    kafka: KafkaConfig,
    topic: String,
    group: String,
    root: LakeRoot,
    max_rows_per_file: usize,
    row_group_rows: usize,
    idle_flush: Duration,
    max_chunk_age: Duration,
}

impl Config {
    fn new(settings: &Settings) -> anyhow::Result<Self> {
        let lake = &settings.lake;
        let root = LakeRoot::configured(lake).context("lake.root is not usable")?;
        Ok(Config {
            kafka: settings.kafka.clone(),
            topic: settings.kafka.transactions_topic.clone(),
            group: lake.writer_group.clone(),
            root,
            max_rows_per_file: usize::try_from(lake.max_rows_per_file)?.max(1),
            row_group_rows: usize::try_from(lake.row_group_rows)?.max(1),
            idle_flush: Duration::from_millis(lake.idle_flush_ms.max(1)),
            max_chunk_age: Duration::from_millis(lake.max_chunk_age_ms.max(1)),
        })
    }
}

/// Who a writer says it is in its claims: host, process and start time (for people
/// reading a claim; no decision depends on it).
fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    format!("{host} pid {} started {started}", std::process::id())
}

impl LakeWriter {
    /// Reads its configuration; performs no I/O.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            config: Config::new(settings)?,
        })
    }

    /// Starts the writer on a thread of its own, as the task `lake-writer` of
    /// `shutdown`: it stops when shutdown begins, and a failure (or a panic) fails the
    /// task, which shuts the service down.
    pub fn spawn(self, shutdown: &Shutdown) {
        shutdown.spawn_thread("lake-writer", move |should_stop| {
            worker::run(self.config, should_stop)
        });
    }
}
