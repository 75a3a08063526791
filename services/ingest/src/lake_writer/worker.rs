//! The writer's loop, on its own thread: poll, buffer, write chunks, commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use fraud_events::{SCHEMA_VERSION_HEADER, TransactionEvent};
use fraud_lake::Lake;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::runtime::Runtime;

use super::Config;
use super::chunk_writer::{ChunkWriter, Written};
use super::consumer::{self, Rebalance, RecoveringContext};
use super::partitions::Pushed;

/// How long one poll waits for a record: the latency of noticing shutdown and idle
/// partitions.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// How long moving the consumer to a fenced-off partition's new position may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping writer waits to leave its consumer group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the writer until `should_stop` says so (then writes what it holds and leaves the
/// group) or until it fails (then it writes nothing more).
pub(super) fn run(config: Config, should_stop: impl Fn() -> bool) -> anyhow::Result<()> {
    // Object-store calls are async; this thread drives them on a runtime of its own, so
    // the service's runtime threads never wait on Parquet encoding or file writes.
    let runtime = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the lake writer's runtime")?,
    );
    let lake = Arc::new(Lake::open(&config.root).context("failed to open the lake")?);
    let context = RecoveringContext::new(
        Arc::clone(&lake),
        Arc::clone(&runtime),
        config.topic.clone(),
    );
    let consumer = consumer::create(&config.kafka, &config.group, context)?;
    consumer
        .subscribe(&[&config.topic])
        .with_context(|| format!("failed to subscribe to `{}`", config.topic))?;
    tracing::info!(
        topic = %config.topic,
        group = %config.group,
        root = %config.root,
        max_rows_per_file = config.max_rows_per_file,
        "lake writer started"
    );
    let identity = super::identity();
    tracing::info!(identity = %identity, "lake writer claims chunks as this identity");
    let mut worker = Worker {
        writer: ChunkWriter::new(lake, &config, identity),
        consumer,
        runtime,
        config,
    };
    let outcome = worker.run(should_stop);
    metrics::gauge!("lake_records_buffered").set(0.0);
    leave_group(worker);
    outcome
}

/// Leaves the consumer group, waiting at most [`LEAVE_TIMEOUT`] (see
/// [`fraud_kafka::close_within`]); everything the writer held is in the lake by now.
fn leave_group(worker: Worker) {
    if !fraud_kafka::close_within(worker, LEAVE_TIMEOUT) {
        tracing::warn!(
            timeout_ms = LEAVE_TIMEOUT.as_millis() as u64,
            "lake writer did not leave its group in time; the group will notice after the \
             session timeout"
        );
    }
}

struct Worker {
    config: Config,
    consumer: BaseConsumer<RecoveringContext>,
    runtime: Arc<Runtime>,
    writer: ChunkWriter,
}

impl Worker {
    fn run(&mut self, should_stop: impl Fn() -> bool) -> anyhow::Result<()> {
        loop {
            if should_stop() {
                // Still the owner of every buffered partition: write what it holds.
                for partition in self.writer.non_empty() {
                    self.write_chunk(partition)?;
                }
                tracing::info!("lake writer stopped");
                return Ok(());
            }
            let record = match self.consumer.poll(POLL_TIMEOUT) {
                None => None,
                Some(Ok(message)) => Some(decode(&message)?),
                Some(Err(error)) => {
                    // librdkafka reports transient conditions (a broker down, a topic not
                    // yet created) here and keeps retrying on its own.
                    tracing::warn!(%error, "kafka consumer error");
                    None
                }
            };
            // Rebalances happen inside `poll`, before the record it returns.
            self.apply_rebalances()?;
            if let Some((partition, offset, event)) = record {
                let pushed = self.writer.push(partition, offset, &event)?;
                match pushed {
                    Pushed::Buffered { full: true } => self.write_chunk(partition)?,
                    Pushed::Buffered { full: false } => {}
                    Pushed::NotAssigned => {
                        tracing::debug!(partition, offset, "record of an unassigned partition")
                    }
                }
            }
            for partition in self.writer.due() {
                self.write_chunk(partition)?;
            }
            metrics::gauge!("lake_records_buffered").set(self.writer.buffered() as f64);
        }
    }

    fn apply_rebalances(&mut self) -> anyhow::Result<()> {
        let log = self.consumer.context().log();
        if let Some(failure) = log.take_failure() {
            return Err(failure);
        }
        for rebalance in log.take() {
            match rebalance {
                Rebalance::Assigned(positions) => {
                    for (partition, position) in positions {
                        self.writer.assign(partition, position);
                    }
                }
                Rebalance::Revoked(partitions) => {
                    for partition in partitions {
                        let dropped = self.writer.revoke(partition);
                        if dropped > 0 {
                            tracing::info!(partition, dropped, "unwritten records dropped");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `partition`'s open chunk under its claim, then commits its end to Kafka
    /// (for lag monitoring; the position always comes from the lake). Fenced off by
    /// another writer's claim, it moves the consumer to where the claims put the
    /// partition.
    fn write_chunk(&mut self, partition: i32) -> anyhow::Result<()> {
        if self.consumer.assignment_lost() {
            // The group has already given the partition away: its new owner writes it.
            let dropped = self.writer.discard(partition);
            if dropped > 0 {
                tracing::warn!(partition, dropped, "assignment lost; chunk not written");
            }
            return Ok(());
        }
        let started = Instant::now();
        let written = self.runtime.block_on(self.writer.write_chunk(partition))?;
        match written {
            Written::Nothing => Ok(()),
            Written::Chunk {
                id,
                rows,
                files,
                created,
            } => {
                metrics::counter!("lake_records_written_total").increment(rows as u64);
                metrics::counter!("lake_files_written_total").increment(created as u64);
                tracing::debug!(
                    chunk = %id,
                    rows,
                    files = files.len(),
                    already_there = files.len() - created,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "chunk written"
                );
                self.commit(partition, id.last_offset() + 1);
                Ok(())
            }
            Written::Fenced {
                chunk,
                fence,
                resume,
            } => {
                metrics::counter!("lake_chunks_fenced_total").increment(1);
                tracing::warn!(
                    partition,
                    chunk = %chunk,
                    fence = %fence,
                    next_offset = resume.next_offset,
                    claimed = resume.claim.as_ref().map(ToString::to_string),
                    "chunk not written: another writer claimed the partition's range; \
                     continuing where the claims say"
                );
                if self.consumer.assignment_lost() {
                    self.writer.revoke(partition);
                    return Ok(());
                }
                self.consumer
                    .seek(
                        &self.config.topic,
                        partition,
                        Offset::Offset(resume.next_offset),
                        SEEK_TIMEOUT,
                    )
                    .with_context(|| {
                        format!(
                            "failed to move partition {partition} to offset {} after a fence",
                            resume.next_offset
                        )
                    })
            }
        }
    }

    fn commit(&self, partition: i32, next_offset: i64) {
        let mut offsets = TopicPartitionList::new();
        if let Err(error) =
            offsets.add_partition_offset(&self.config.topic, partition, Offset::Offset(next_offset))
        {
            tracing::debug!(%error, partition, "offsets to commit not built");
            return;
        }
        if let Err(error) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(%error, partition, "offset commit failed (monitoring only)");
        }
    }
}

/// A record's partition, offset and event. A record that does not decode is a poison
/// record: the writer stops rather than leave a hole in the lake.
fn decode(message: &BorrowedMessage<'_>) -> anyhow::Result<(i32, i64, TransactionEvent)> {
    let partition = message.partition();
    let offset = message.offset();
    let version = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == SCHEMA_VERSION_HEADER)
            .and_then(|header| header.value)
    });
    match fraud_events::decode(version, message.payload().unwrap_or_default()) {
        Ok(event) => Ok((partition, offset, event)),
        Err(error) => {
            tracing::error!(
                topic = message.topic(),
                partition,
                offset,
                %error,
                "undecodable record; the lake writer stops"
            );
            Err(anyhow!(
                "the record at partition {partition} offset {offset} of `{}` cannot be \
                 decoded: {error}",
                message.topic()
            ))
        }
    }
}
