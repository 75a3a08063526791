//! The lake writer: consumes the transactions topic in its own consumer group
//! (`lake.writer_group`) and writes the Parquet lake ([`fraud_lake`]) exactly once.
//!
//! # Chunks
//! Records are buffered per partition in an open *chunk*: a run of consecutive records
//! of one partition. A chunk is closed and written when
//! - it holds `lake.max_rows_per_file` records: by count, deterministic;
//! - its partition has had no new record for `lake.idle_flush_ms`, so the tail of a
//!   partition that goes quiet reaches the lake within that time (plus one poll, 100 ms).
//!   The idle rule looks at the wall clock, but exactness never depends on where a chunk
//!   ends: recovery rewrites an unfinished chunk from its first offset, whatever
//!   boundaries the rewrite gets;
//! - its first record has waited `lake.max_chunk_age_ms`, so a partition that trickles
//!   (never idle, never full) is in the lake within that time too (same wall-clock
//!   caveat, same exactness);
//! - the service shuts down cleanly (it still owns its partitions then).
//!
//! A chunk is split by event date into one file per UTC date, every file named
//! `<partition>-<firstOffset>-<lastOffset>.parquet` after the whole chunk and recording
//! the chunk's row count. Its files are written one after another, each appearing whole
//! under its final name; the next chunk of the partition starts only after that.
//!
//! # Exactly once
//! The position comes from the lake itself, never from Kafka's committed offsets. When
//! partitions are assigned, the rebalance callback (module `consumer`) recovers each one:
//! the newest chunk is complete when its files' rows add up to its recorded count;
//! otherwise its files (and staged leftovers) are deleted and the partition resumes at
//! that chunk's first offset, else at the newest chunk's last offset + 1, else at the
//! partition's first offset. The offsets go into the assignment handed to librdkafka,
//! so the first fetch is already at the lake's position; nothing is fetched from the
//! group's committed offsets. The writer accepts only consecutive offsets from there: a
//! gap or a step back is an error, never skipped. Offsets are committed after each
//! chunk only so that lag shows in the usual Kafka tools.
//!
//! A record that does not decode stops the writer with its partition and offset; the
//! task fails and takes the service down rather than leave a hole in the lake.
//!
//! # Rebalances
//! Partitions move cooperatively (only the ones that change owner are revoked). A
//! revoked partition's unwritten records are dropped; its next owner rewrites them from
//! the lake. A writer that has lost its partitions without noticing (frozen past the
//! session timeout) could still write the chunk it holds before its next poll; it checks
//! `assignment_lost` just before writing, which narrows but does not close that window.
//! Overlapping chunks are then caught at the next recovery (an error, never resolved
//! silently); a real fence needs a conditional commit per partition in the object store.
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
//! `lake_records_written_total`, `lake_files_written_total`,
//! `lake_chunks_recovered_total` (incomplete chunks removed when partitions are
//! assigned) and the gauge `lake_records_buffered`.

mod consumer;
mod partitions;
mod worker;

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

impl LakeWriter {
    /// Reads its configuration; performs no I/O.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let lake = &settings.lake;
        let root = LakeRoot::parse(&lake.root).context("lake.root is not usable")?;
        let config = Config {
            kafka: settings.kafka.clone(),
            topic: settings.kafka.transactions_topic.clone(),
            group: lake.writer_group.clone(),
            root,
            max_rows_per_file: usize::try_from(lake.max_rows_per_file)?.max(1),
            row_group_rows: usize::try_from(lake.row_group_rows)?.max(1),
            idle_flush: Duration::from_millis(lake.idle_flush_ms.max(1)),
            max_chunk_age: Duration::from_millis(lake.max_chunk_age_ms.max(1)),
        };
        Ok(Self { config })
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
