//! The writer's Kafka consumer, and the rebalance callback that positions it from the
//! lake.
//!
//! librdkafka calls [`RecoveringContext::rebalance`] from inside `poll`, on the
//! writer's own thread, before the new assignment takes effect. For every newly assigned
//! partition the callback recovers the lake ([`fraud_lake::Lake::recover`]: deletes an
//! incomplete unclaimed newest chunk and staged leftovers; an incomplete claimed chunk is
//! to be completed) and writes the resume offset into the assignment itself, so the
//! consumer's very first fetch is at the lake's position.
//! The group's committed offsets are never used. A failure in the callback is kept for
//! the worker to raise and the partitions are left unassigned, so nothing is consumed
//! from a position that did not come from the lake.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use fraud_config::KafkaConfig;
use fraud_kafka::rebalance::{self, RebalanceLog};
use fraud_lake::Lake;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Runtime;

use super::partitions::Position;

/// How long a Kafka member may go without a heartbeat before the group gives its
/// partitions to another writer. librdkafka heartbeats from a background thread, so a
/// slow chunk write does not count against it; a crashed writer's partitions move after
/// at most this long (Kafka's default, 45 s, would stall the lake that much longer).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one watermark query may take during a rebalance.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer in `group` for the lake writer: it never commits on its own (the offsets
/// it commits are for lag monitoring only), reads only committed records, and takes
/// its partitions cooperatively (a rebalance revokes only the partitions that move).
pub(crate) fn create(
    kafka: &KafkaConfig,
    group: &str,
    context: RecoveringContext,
) -> anyhow::Result<BaseConsumer<RecoveringContext>> {
    rebalance::cooperative_consumer(kafka, group, context, SESSION_TIMEOUT)
        .context("failed to create the lake writer's Kafka consumer")
}

/// A change of assignment, for the worker to apply to its buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rebalance {
    /// These partitions are now ours, each resuming at its position.
    Assigned(Vec<(i32, Position)>),
    /// These partitions are no longer ours.
    Revoked(Vec<i32>),
}

/// The consumer's context: recovers the lake when partitions are assigned.
pub(crate) struct RecoveringContext {
    lake: Arc<Lake>,
    runtime: Arc<Runtime>,
    topic: String,
    log: RebalanceLog<Rebalance>,
}

impl RecoveringContext {
    pub fn new(lake: Arc<Lake>, runtime: Arc<Runtime>, topic: String) -> Self {
        Self {
            lake,
            runtime,
            topic,
            log: RebalanceLog::default(),
        }
    }

    /// What the rebalance callback saw since the last call, and its first failure.
    pub fn log(&self) -> &RebalanceLog<Rebalance> {
        &self.log
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        rebalance::partitions(list, &self.topic)
    }

    /// Recovers the lake for `assignment`'s partitions and sets each one's offset to
    /// the lake's position.
    fn position_from_lake(
        &self,
        consumer: &BaseConsumer<Self>,
        assignment: &mut TopicPartitionList,
    ) -> anyhow::Result<Vec<(i32, Position)>> {
        let partitions = self.partitions(assignment);
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let recoveries = self
            .runtime
            .block_on(self.lake.recover(&partitions))
            .with_context(|| format!("failed to recover the lake for partitions {partitions:?}"))?;
        let mut positions = Vec::with_capacity(recoveries.len());
        for recovery in recoveries {
            let state = &recovery.state;
            let partition = state.partition;
            if let Some(incomplete) = &state.incomplete
                && let Some(claim) = &incomplete.claim
            {
                tracing::warn!(
                    partition,
                    claim = %claim,
                    rows_found = incomplete.rows_found,
                    files = incomplete.files.len(),
                    "the newest claimed chunk is not complete; completing exactly that chunk"
                );
            } else if let Some(incomplete) = &state.incomplete {
                metrics::counter!("lake_chunks_recovered_total").increment(1);
                tracing::warn!(
                    partition,
                    chunk = %incomplete.id,
                    rows_found = incomplete.rows_found,
                    chunk_rows = incomplete.chunk_rows,
                    files = recovery.removed_files.len(),
                    "removed an incomplete chunk left by a writer that stopped mid-chunk"
                );
            }
            if !recovery.removed_staged.is_empty() {
                tracing::warn!(
                    partition,
                    files = ?recovery.removed_staged,
                    "removed staged files left by a writer that stopped mid-write"
                );
            }
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
                .with_context(|| format!("failed to read the offsets of partition {partition}"))?;
            let position = Position::resume(state.resume_at(), low);
            let next_offset = match state.resume_at().offset() {
                None => low,
                Some(offset) if (low..=high).contains(&offset) => offset,
                Some(offset) => {
                    return Err(anyhow!(
                        "partition {partition}: the lake continues at offset {offset}, but the \
                         topic holds offsets {low}..{high} only (recreated topic, or records \
                         deleted by retention before the lake had them)"
                    ));
                }
            };
            assignment
                .set_partition_offset(&self.topic, partition, Offset::Offset(next_offset))
                .with_context(|| format!("failed to position partition {partition}"))?;
            tracing::info!(
                partition,
                next_offset,
                complete_chunks = state.complete_chunks,
                "partition assigned; resuming at the lake's position"
            );
            debug_assert_eq!(position.next_offset, next_offset);
            positions.push((partition, position));
        }
        Ok(positions)
    }
}

impl ClientContext for RecoveringContext {}

impl ConsumerContext for RecoveringContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        if rebalance::give_up(
            consumer,
            error,
            list,
            &self.topic,
            &self.log,
            Rebalance::Revoked,
        ) {
            return;
        }
        let positions = match self.position_from_lake(consumer, list) {
            Ok(positions) => positions,
            // Not assigned: nothing is consumed from a position the lake did not give.
            Err(error) => return self.log.fail(error),
        };
        match rebalance::assign(consumer, list) {
            Ok(()) => self.log.push(Rebalance::Assigned(positions)),
            Err(error) => self
                .log
                .fail(anyhow!("failed to take the assignment: {error}")),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // Committed offsets only feed lag monitoring; a failed commit changes nothing.
        if let Err(error) = result {
            tracing::debug!(%error, "lake writer offset commit failed");
        }
    }
}
