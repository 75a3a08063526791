//! Reading a whole topic back, to check exactly what was produced.

use std::time::{Duration, Instant};

use fraud_config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (ms), if it has one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }
}

/// Every record of `topic` up to its current end, in partition and offset order.
/// Blocking: call it from `spawn_blocking` in async tests.
pub fn read_all(config: &KafkaConfig, topic: &str) -> Vec<Record> {
    read_all_within(config, topic, Duration::from_secs(60))
}

/// [`read_all`], failing when reading takes longer than `deadline`.
pub fn read_all_within(config: &KafkaConfig, topic: &str, deadline: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.auto.commit", "false")
        .set("group.id", crate::unique_name("read-all"))
        .create()
        .expect("a consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|partition| partition.id())
        .collect();
    let mut ends = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .expect("watermarks");
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("assign");
            ends.push((partition, high));
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let done = |records: &Vec<Record>| {
        ends.iter().all(|(partition, high)| {
            records
                .iter()
                .any(|r| r.partition == *partition && r.offset == high - 1)
        })
    };
    while !done(&records) {
        assert!(
            started.elapsed() < deadline,
            "could not read {topic} to its end"
        );
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = polled.expect("a record");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.unwrap_or_default().to_vec(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    records.sort_by_key(|record| (record.partition, record.offset));
    records
}

/// Produces `events` to `topic` as ingest does (keyed by customer, timestamped with the
/// ingest time, with the schema-version header), in order, and returns where each landed
/// as `(partition, offset)`.
pub async fn produce_transactions(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    events: &[fraud_events::TransactionEvent],
) -> Vec<(i32, i64)> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;

    let mut landed = Vec::with_capacity(events.len());
    // In slices, so the producer's queue never overflows.
    for slice in events.chunks(50_000) {
        let mut pending = Vec::with_capacity(slice.len());
        for event in slice {
            let payload = fraud_events::encode(event);
            let record = FutureRecord::to(topic)
                .key(event.customer_id.as_str())
                .payload(&payload)
                .timestamp(event.ingest_time.as_millis())
                .headers(OwnedHeaders::new().insert(Header {
                    key: fraud_events::SCHEMA_VERSION_HEADER,
                    value: Some(fraud_events::SCHEMA_VERSION),
                }));
            pending.push(producer.send_result(record).expect("enqueue a record"));
        }
        for delivery in pending {
            match delivery.await.expect("a delivery report") {
                Ok(delivery) => landed.push((delivery.partition, delivery.offset)),
                Err((error, _)) => panic!("produce failed: {error}"),
            }
        }
    }
    landed
}

/// Whether consumer `group` has committed every record of `topic` so far (each
/// partition's committed offset is its high watermark; an empty partition needs none).
pub async fn group_caught_up(config: &KafkaConfig, group: &str, topic: &str) -> bool {
    let config = config.clone();
    let group = group.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let timeout = Duration::from_secs(5);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .expect("the topic's metadata");
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|partition| partition.id())
            .collect();
        let mut list = TopicPartitionList::new();
        for &partition in &partitions {
            list.add_partition(&topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, timeout)
            .expect("committed offsets");
        partitions.iter().all(|&partition| {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .expect("watermarks");
            high == 0
                || committed
                    .find_partition(&topic, partition)
                    .and_then(|element| element.offset().to_raw())
                    == Some(high)
        })
    })
    .await
    .expect("read the group's offsets")
}
