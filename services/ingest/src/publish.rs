//! Producing accepted transactions to Kafka, durably and with back-pressure.
//!
//! Records are keyed by `customerId`, carry the schema version and the W3C trace
//! context in their headers, and go through the durable producer (idempotent,
//! `acks=all`). A record counts as accepted only once the brokers acknowledged it. When
//! the producer's bounded queue is full the request is refused (503) at once instead of
//! buffering without limit.

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

/// Ingest's two producers (see [`Publisher`]), for requests of several events and of
/// one: each the platform's durable producer with a queue of at most
/// `ingest.producer_queue_max` records that gives up on an acknowledgement after
/// `ingest.produce_timeout_ms`, lingering `ingest.linger_ms` and
/// `ingest.single_event_linger_ms` respectively. The ingest benchmark's reference
/// producers are built here too, so the two always compare the same settings.
pub struct Producers {
    pub batches: FutureProducer,
    pub single_events: FutureProducer,
}

impl Producers {
    pub fn new(kafka: &KafkaConfig, ingest: &IngestConfig) -> Result<Self, fraud_kafka::Error> {
        let with_linger = |linger_ms: u32| {
            fraud_kafka::durable_producer_with(kafka, |client| {
                client
                    .set(
                        "queue.buffering.max.messages",
                        ingest.producer_queue_max.to_string(),
                    )
                    .set("message.timeout.ms", ingest.produce_timeout_ms.to_string())
                    .set("linger.ms", linger_ms.to_string());
            })
        };
        Ok(Self {
            batches: with_linger(ingest.linger_ms)?,
            single_events: with_linger(ingest.single_event_linger_ms)?,
        })
    }
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
    /// A publisher with [`Producers`] to `kafka.transactions_topic`.
    pub fn new(kafka: &KafkaConfig, ingest: &IngestConfig) -> Result<Self, fraud_kafka::Error> {
        let Producers {
            batches,
            single_events,
        } = Producers::new(kafka, ingest)?;
        Ok(Self {
            batches,
            single_events,
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
