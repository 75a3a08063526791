//! Pieces every rebalance-aware consumer context needs, for contexts that position
//! their partitions themselves (the lake writer from the lake, the speed layer from
//! Redis): taking and giving up partitions under either protocol, and handing what the
//! callback saw to the polling loop.
//!
//! librdkafka calls a context's `rebalance` from inside `poll`, on the polling thread;
//! the loop then drains the [`RebalanceLog`] before it uses the record `poll` returned.

use std::sync::{Mutex, MutexGuard, PoisonError};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;

/// A [`crate::manual_commit_consumer`] in `group` with `context` that takes its
/// partitions cooperatively (a rebalance moves only the partitions that change owner)
/// and is given up by the group after `session_timeout` without a heartbeat (librdkafka
/// heartbeats from a background thread, so slow work between polls does not count).
pub fn cooperative_consumer<C: ConsumerContext>(
    config: &fraud_config::KafkaConfig,
    group: &str,
    context: C,
    session_timeout: std::time::Duration,
) -> Result<BaseConsumer<C>, crate::Error> {
    crate::manual_commit_consumer_with(config, group, context, |client| {
        client
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                session_timeout.as_millis().to_string(),
            );
    })
}

/// Takes the partitions of `list` (only those, under the cooperative protocol).
pub fn assign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &TopicPartitionList,
) -> KafkaResult<()> {
    if cooperative(consumer) {
        consumer.incremental_assign(list)
    } else {
        consumer.assign(list)
    }
}

/// Gives up the partitions of `list` (all of them, under the eager protocol).
pub fn unassign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &TopicPartitionList,
) -> KafkaResult<()> {
    if cooperative(consumer) {
        consumer.incremental_unassign(list)
    } else {
        consumer.unassign()
    }
}

fn cooperative<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
    matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    )
}

/// The partitions of `topic` in `list`.
pub fn partitions(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements_for_topic(topic)
        .iter()
        .map(|element| element.partition())
        .collect()
}

/// Drops the whole assignment and returns the partitions of `topic` that were dropped.
fn drop_assignment<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &TopicPartitionList,
    topic: &str,
) -> (Vec<i32>, KafkaResult<()>) {
    let dropped = consumer
        .assignment()
        .map(|assignment| partitions(&assignment, topic))
        .unwrap_or_default();
    (dropped, unassign(consumer, list))
}

/// Handles a rebalance that is not an assignment: a revocation gives up `list`; an
/// error drops the whole assignment (as librdkafka's default handler does). Either way
/// the partitions of `topic` given up go to `log` as `revoked(partitions)`. Returns
/// `false`, doing nothing, for an assignment: positioning is the caller's.
pub fn give_up<C: ConsumerContext, E>(
    consumer: &BaseConsumer<C>,
    error: RDKafkaRespErr,
    list: &TopicPartitionList,
    topic: &str,
    log: &RebalanceLog<E>,
    revoked: impl FnOnce(Vec<i32>) -> E,
) -> bool {
    let (given_up, unassigned) = match error {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => return false,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
            let given_up = partitions(list, topic);
            tracing::info!(
                partitions = ?given_up,
                lost = consumer.assignment_lost(),
                "partitions revoked"
            );
            (given_up, unassign(consumer, list))
        }
        other => {
            tracing::error!(error = ?other, "rebalance error; dropping the whole assignment");
            drop_assignment(consumer, list, topic)
        }
    };
    log.push(revoked(given_up));
    if let Err(error) = unassigned {
        log.fail(anyhow::anyhow!("failed to give up partitions: {error}"));
    }
    true
}

/// What a rebalance callback saw, in order, and its first failure, for the polling loop.
#[derive(Debug)]
pub struct RebalanceLog<E> {
    events: Mutex<Vec<E>>,
    failure: Mutex<Option<anyhow::Error>>,
}

impl<E> Default for RebalanceLog<E> {
    fn default() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        }
    }
}

impl<E> RebalanceLog<E> {
    pub fn push(&self, event: E) {
        lock(&self.events).push(event);
    }

    /// The events since the last call, in order.
    pub fn take(&self) -> Vec<E> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Logs `error` and keeps it, unless an earlier failure is kept already.
    pub fn fail(&self, error: anyhow::Error) {
        tracing::error!(error = format!("{error:#}"), "rebalance failed");
        lock(&self.failure).get_or_insert(error);
    }

    /// The first failure, if any.
    pub fn take_failure(&self) -> Option<anyhow::Error> {
        lock(&self.failure).take()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
