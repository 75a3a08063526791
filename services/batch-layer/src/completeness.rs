//! Whether the lake holds every record Kafka had by a time: the batch layer publishes
//! only watermarks the lake is complete for.
//!
//! The lake holds every record stamped up to T when, in every partition of the
//! transactions topic, the lake's next missing offset is at or after the first record
//! stamped after T + slack, where the slack bounds how long after its stamp (the ingest
//! time) a record can be appended: records are not appended in stamp order. An event
//! with `ts <= T` ingested later than that is a late arrival: the next run that sees its
//! file recomputes its day.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use fraud_config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A partition where the lake is behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    pub partition: i32,
    /// The lake's next missing offset.
    pub lake_next: i64,
    /// The first offset after the time: everything before it must be in the lake.
    pub needed: i64,
}

/// The topic's partitions, for offset lookups by time.
pub struct KafkaTopic {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl KafkaTopic {
    /// Looks the topic up (blocking).
    pub fn open(config: &KafkaConfig) -> anyhow::Result<KafkaTopic> {
        let consumer: BaseConsumer = fraud_kafka::client_config(config)
            .create()
            .context("failed to create a Kafka client")?;
        let topic = config.transactions_topic.clone();
        let metadata = consumer
            .fetch_metadata(Some(&topic), TIMEOUT)
            .with_context(|| format!("failed to read the metadata of `{topic}`"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        anyhow::ensure!(!partitions.is_empty(), "topic `{topic}` has no partitions");
        Ok(KafkaTopic {
            consumer,
            topic,
            partitions,
        })
    }

    /// The partitions where `lake_next` is behind the records with timestamps up to `t`
    /// (blocking); empty when the lake is complete up to `t`.
    pub fn behind(&self, lake_next: &BTreeMap<i32, i64>, t: i64) -> anyhow::Result<Vec<Behind>> {
        let mut needed = self.offsets(&self.partitions, Offset::Offset(t + 1))?;
        // No record after t: every record so far, the partition's end (one request for
        // all of them; a timestamp of -1 asks for the end).
        let ends: Vec<i32> = self
            .partitions
            .iter()
            .copied()
            .filter(|partition| !needed.contains_key(partition))
            .collect();
        if !ends.is_empty() {
            let found = self.offsets(&ends, Offset::End)?;
            for partition in ends {
                let end = found.get(&partition).copied().with_context(|| {
                    format!(
                        "no end offset for partition {partition} of `{}`",
                        self.topic
                    )
                })?;
                needed.insert(partition, end);
            }
        }
        let mut behind = Vec::new();
        for (partition, needed) in needed {
            let lake_next = lake_next.get(&partition).copied().unwrap_or(0);
            if lake_next < needed {
                behind.push(Behind {
                    partition,
                    lake_next,
                    needed,
                });
            }
        }
        Ok(behind)
    }

    /// The offsets Kafka finds for `partitions` at `timestamp` (the first record stamped
    /// at or after it; with [`Offset::End`], the end), of the partitions it found one
    /// for.
    fn offsets(&self, partitions: &[i32], timestamp: Offset) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut query = TopicPartitionList::new();
        for &partition in partitions {
            query.add_partition_offset(&self.topic, partition, timestamp)?;
        }
        let found = self
            .consumer
            .offsets_for_times(query, TIMEOUT)
            .context("failed to look offsets up by time")?;
        Ok(partitions
            .iter()
            .filter_map(
                |&partition| match found.find_partition(&self.topic, partition)?.offset() {
                    Offset::Offset(offset) => Some((partition, offset)),
                    _ => None,
                },
            )
            .collect())
    }
}
