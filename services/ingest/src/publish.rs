//! Producing accepted transactions to Kafka, durably and with back-pressure.
//!
//! Records are keyed by `customerId`, carry the schema version and the W3C trace
//! context in their headers, and go through the durable producer (idempotent,
//! `acks=all`). A record counts as accepted only once the brokers acknowledged it. When
//! the producer's bounded queue is full the request is refused (503) at once instead of
//! buffering without limit.

use std::time::Duration;

use fraud_config::{IngestConfig, KafkaConfig};
use fraud_events::TransactionEvent;
use fraud_events::{CONTENT_TYPE, CONTENT_TYPE_HEADER, SCHEMA_VERSION, SCHEMA_VERSION_HEADER};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The headers of a transaction record: the value's schema version and media type, then
/// the W3C trace context pairs in `trace`.
pub fn record_headers(trace: &[(String, String)]) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(2 + trace.len())
        .insert(Header {
            key: SCHEMA_VERSION_HEADER,
            value: Some(SCHEMA_VERSION),
        })
        .insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(CONTENT_TYPE),
        });
    for (name, value) in trace {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    headers
}

/// A producer ingest publishes with: the platform's durable producer with a queue of
/// at most `queue_max` records that gives up on an acknowledgement after `timeout` and
/// waits `linger` to fill a batch. The ingest benchmark's reference producer is built
/// here too, so the two always compare the same settings.
pub fn producer(
    config: &KafkaConfig,
    queue_max: u32,
    timeout: Duration,
    linger: Duration,
) -> Result<FutureProducer, fraud_kafka::Error> {
    fraud_kafka::durable_producer_with(config, |client| {
        client
            .set("queue.buffering.max.messages", queue_max.to_string())
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("linger.ms", linger.as_millis().to_string());
    })
}

/// Why an event was not produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the producer queue is full")]
    QueueFull,
    #[error("the brokers did not acknowledge the record: {0}")]
    NotAcknowledged(String),
}

/// Produces transactions to the transactions topic, through one of two producers: one
/// for requests of several events, which lingers (`ingest.linger_ms`) so that a batch's
/// records share produce requests, and one for requests of a single event, which sends
/// at once (`ingest.single_event_linger_ms`) instead of waiting for records that will
/// not come. Records of one request never span both, and a request is answered only
/// once its records are acknowledged, so a customer's records stay in the order of the
/// requests that were answered.
pub struct Publisher {
    batches: FutureProducer,
    single_events: FutureProducer,
    topic: String,
}

impl Publisher {
    /// A publisher whose producers each queue at most `ingest.producer_queue_max`
    /// records and give up on an acknowledgement after `ingest.produce_timeout_ms`.
    pub fn new(kafka: &KafkaConfig, ingest: &IngestConfig) -> Result<Self, fraud_kafka::Error> {
        let timeout = Duration::from_millis(ingest.produce_timeout_ms);
        let with_linger = |linger_ms: u32| {
            let linger = Duration::from_millis(linger_ms.into());
            producer(kafka, ingest.producer_queue_max, timeout, linger)
        };
        Ok(Self {
            batches: with_linger(ingest.linger_ms)?,
            single_events: with_linger(ingest.single_event_linger_ms)?,
            topic: kafka.transactions_topic.clone(),
        })
    }

    /// Produces every event, with the W3C trace context pairs `trace` in its headers, and
    /// waits for the brokers; one result per event, in order.
    pub async fn publish_all(
        &self,
        events: &[&TransactionEvent],
        trace: &[(String, String)],
    ) -> Vec<Result<(), PublishError>> {
        let producer = if events.len() == 1 {
            &self.single_events
        } else {
            &self.batches
        };
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let payload = fraud_events::encode(event);
            let headers = record_headers(trace);
            let record = FutureRecord::to(&self.topic)
                .key(event.customer_id.as_str())
                .payload(&payload)
                // The ingest time, explicitly: consumers that rebuild "everything since
                // t" seek by it (an event's ts is at most the future skew past it).
                .timestamp(event.ingest_time.as_millis())
                .headers(headers);
            pending.push(match producer.send_result(record) {
                Ok(delivery) => Some(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
                Err((error, _)) => {
                    tracing::warn!(%error, "failed to enqueue a record");
                    None
                }
            });
        }
        let mut results = Vec::with_capacity(pending.len());
        for delivery in pending {
            results.push(match delivery {
                None => Err(PublishError::QueueFull),
                Some(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(PublishError::NotAcknowledged(error.to_string())),
                    Err(_canceled) => Err(PublishError::NotAcknowledged(
                        "the producer shut down".to_owned(),
                    )),
                },
            });
        }
        results
    }
}
