//! The consumer, and where each assigned partition starts: at the group's committed
//! offset when its state is complete in the current generation, else far enough back
//! (by timestamp) to rebuild it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use fraud_config::KafkaConfig;
use fraud_kafka::rebalance::{self, RebalanceLog};
use fraud_redis::RedisHandle;
use fraud_speed_view::Generation;
use fraud_speed_view::meta::{PartitionStatus, SpeedMeta, meta_key};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Runtime;

use crate::Watermark;

/// How long a member may go without a heartbeat before its partitions move.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra reach of a rebuild beyond what the window and T_b strictly need, for clock
/// differences between ingest instances.
const REBUILD_MARGIN_MS: i64 = 60_000;

/// A consumer in `group` that takes its partitions cooperatively and commits only what
/// the pipeline commits.
pub(crate) fn create(
    kafka: &KafkaConfig,
    group: &str,
    context: PositioningContext,
) -> anyhow::Result<BaseConsumer<PositioningContext>> {
    rebalance::cooperative_consumer(kafka, group, context, SESSION_TIMEOUT)
        .context("failed to create the speed layer's Kafka consumer")
}

/// Where a partition starts and whether it is being rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub partition: i32,
    /// `None`: the group's committed offset.
    pub start: Option<i64>,
    /// Rebuilding until this offset (inclusive).
    pub rebuild_until: Option<i64>,
}

/// What positions partitions: shared by the rebalance callback and the worker.
pub(crate) struct Positioner {
    pub runtime: Arc<Runtime>,
    pub redis: Arc<RedisHandle>,
    pub meta_key: String,
    pub topic: String,
    pub watermark: Arc<Watermark>,
    pub retention_ms: i64,
    pub max_future_skew_ms: i64,
    pub timeout: Duration,
    /// A client of its own for offset lookups: on the group consumer's connection they
    /// would queue behind its long-polling fetches (up to `fetch.wait.max.ms` each).
    pub offsets: BaseConsumer,
    generation: Mutex<Option<Generation>>,
}

impl Positioner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kafka: &KafkaConfig,
        runtime: Arc<Runtime>,
        redis: Arc<RedisHandle>,
        prefix: &str,
        topic: String,
        watermark: Arc<Watermark>,
        retention_ms: i64,
        max_future_skew_ms: i64,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let offsets = fraud_kafka::client_config(kafka)
            .create()
            .context("failed to create the offset-lookup client")?;
        Ok(Self {
            offsets,
            runtime,
            redis,
            meta_key: meta_key(prefix),
            topic,
            watermark,
            retention_ms,
            max_future_skew_ms,
            timeout,
            generation: Mutex::new(None),
        })
    }

    /// The generation this instance writes, as last established.
    pub fn generation(&self) -> Option<Generation> {
        *lock(&self.generation)
    }

    /// Establishes the current generation (creating one when Redis has none) and reads
    /// the meta key.
    pub fn establish(&self) -> anyhow::Result<(Generation, SpeedMeta)> {
        self.runtime.block_on(async {
            let mut connection = self.redis.connection().await?;
            let (generation, created) =
                SpeedMeta::ensure_generation(&mut connection, &self.meta_key).await?;
            if created {
                tracing::warn!(
                    %generation,
                    "no speed state in Redis (first start, or Redis lost its data): \
                     new generation, partitions are rebuilt from Kafka"
                );
            }
            let previous = lock(&self.generation).replace(generation);
            if previous.is_some_and(|previous| previous != generation) {
                tracing::warn!(%generation, "joined a new generation");
            }
            let meta = SpeedMeta::read(&mut connection, &self.meta_key).await?;
            Ok((generation, meta))
        })
    }

    /// Plans `partitions`: `ready` ones continue, others are rebuilt. Marks the rebuilt
    /// ones in the meta key.
    pub fn plan(&self, partitions: &[i32]) -> anyhow::Result<Vec<Plan>> {
        let consumer = &self.offsets;
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let (generation, meta) = self.establish()?;
        let from = self.watermark.get().map(|watermark| {
            let now = fraud_domain_now();
            (now - self.retention_ms).min(watermark) - self.max_future_skew_ms - REBUILD_MARGIN_MS
        });
        let mut plans = Vec::with_capacity(partitions.len());
        let mut fields = Vec::new();
        for &partition in partitions {
            if meta.statuses.get(&partition) == Some(&PartitionStatus::Ready) {
                plans.push(Plan {
                    partition,
                    start: None,
                    rebuild_until: None,
                });
                continue;
            }
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition, self.timeout)
                .with_context(|| format!("failed to read the offsets of partition {partition}"))?;
            let start = match from {
                None => low,
                Some(from) => self
                    .offset_for_time(consumer, partition, from, high)?
                    .max(low),
            };
            let until = high - 1;
            let status = if until < start {
                PartitionStatus::Ready
            } else {
                metrics::counter!("speed_rebuilds_total").increment(1);
                PartitionStatus::Rebuilding { until }
            };
            if status == PartitionStatus::Ready {
                tracing::info!(partition, start, "partition has nothing to rebuild");
            } else {
                tracing::info!(partition, start, until, "rebuilding partition from Kafka");
            }
            fields.push(SpeedMeta::status_field(partition, status));
            plans.push(Plan {
                partition,
                start: Some(start),
                rebuild_until: (status != PartitionStatus::Ready).then_some(until),
            });
        }
        if let Ok(metadata) = consumer.fetch_metadata(Some(&self.topic), self.timeout)
            && let Some(topic) = metadata.topics().first()
        {
            fields.push((
                "partitions".to_owned(),
                topic.partitions().len().to_string(),
            ));
        }
        self.set_fields(generation, &fields)?;
        Ok(plans)
    }

    /// Sets meta fields in `generation`; a generation that is no longer current is left
    /// alone (the worker notices at its next batch).
    pub fn set_fields(
        &self,
        generation: Generation,
        fields: &[(String, String)],
    ) -> anyhow::Result<()> {
        if fields.is_empty() {
            return Ok(());
        }
        self.runtime.block_on(async {
            let mut connection = self.redis.connection().await?;
            let current =
                SpeedMeta::set_if_current(&mut connection, &self.meta_key, generation, fields)
                    .await?;
            if !current {
                tracing::warn!(%generation, "generation no longer current; meta not updated");
            }
            Ok(())
        })
    }

    fn offset_for_time(
        &self,
        consumer: &BaseConsumer,
        partition: i32,
        timestamp: i64,
        high: i64,
    ) -> anyhow::Result<i64> {
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(&self.topic, partition, Offset::Offset(timestamp))?;
        let found = consumer
            .offsets_for_times(query, self.timeout)
            .with_context(|| format!("failed to look up partition {partition} by time"))?;
        let offset = found
            .find_partition(&self.topic, partition)
            .map(|element| element.offset());
        Ok(match offset {
            Some(Offset::Offset(offset)) => offset,
            // No record at or after the time: nothing to rebuild.
            _ => high,
        })
    }
}

fn fraud_domain_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A change of assignment, for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rebalance {
    Assigned(Vec<Plan>),
    /// Assigned but not planned (Redis or Kafka did not answer): paused until the worker
    /// plans them.
    AssignedUnplanned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// The consumer's context: positions newly assigned partitions.
pub(crate) struct PositioningContext {
    positioner: Arc<Positioner>,
    log: RebalanceLog<Rebalance>,
}

impl PositioningContext {
    pub fn new(positioner: Arc<Positioner>) -> Self {
        Self {
            positioner,
            log: RebalanceLog::default(),
        }
    }

    /// What the rebalance callback saw since the last call, and its first failure.
    pub fn log(&self) -> &RebalanceLog<Rebalance> {
        &self.log
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        rebalance::partitions(list, &self.positioner.topic)
    }
}

impl ClientContext for PositioningContext {}

impl ConsumerContext for PositioningContext {
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
            &self.positioner.topic,
            &self.log,
            Rebalance::Revoked,
        ) {
            return;
        }
        let partitions = self.partitions(list);
        let plans = match self.positioner.plan(&partitions) {
            Ok(plans) => plans,
            Err(error) => {
                // Taken but paused: nothing is consumed from an unplanned
                // position; the worker plans them once the servers answer.
                tracing::warn!(
                    error = format!("{error:#}"),
                    ?partitions,
                    "could not plan the assigned partitions; paused until it can"
                );
                let taken = rebalance::assign(consumer, list).and_then(|()| consumer.pause(list));
                match taken {
                    Ok(()) => self.log.push(Rebalance::AssignedUnplanned(partitions)),
                    Err(error) => self
                        .log
                        .fail(anyhow!("failed to take the assignment: {error}")),
                }
                return;
            }
        };
        for plan in &plans {
            if let Some(start) = plan.start
                && let Err(error) = list.set_partition_offset(
                    &self.positioner.topic,
                    plan.partition,
                    Offset::Offset(start),
                )
            {
                return self
                    .log
                    .fail(anyhow!("failed to position a partition: {error}"));
            }
        }
        match rebalance::assign(consumer, list) {
            Ok(()) => self.log.push(Rebalance::Assigned(plans)),
            Err(error) => self
                .log
                .fail(anyhow!("failed to take the assignment: {error}")),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "speed layer offset commit failed");
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
