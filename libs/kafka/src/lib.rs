//! Kafka for the platform: client settings, topic administration and the readiness probe.
//!
//! Every service builds its clients here, so the settings that carry the platform's
//! guarantees live in one place: producers are idempotent with `acks=all` (a record is
//! acknowledged only once every in-sync replica has it), consumers never auto-commit
//! (a consumer commits only what it has finished).

pub mod rebalance;

use std::time::Duration;

use fraud_config::KafkaConfig;
use fraud_service::{Probe, ProbeFuture};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

/// Kafka failures, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to create a Kafka {what}: {source}")]
    Client {
        what: &'static str,
        source: KafkaError,
    },
    #[error("failed to {operation} topic `{topic}`: {reason}")]
    Topic {
        operation: &'static str,
        topic: String,
        reason: String,
    },
}

/// Settings every client shares.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("socket.keepalive.enable", "true");
    client
}

/// A producer whose acknowledgements mean durable: idempotent, `acks=all`, ordered per
/// partition even across retries, compressed.
pub fn durable_producer(config: &KafkaConfig) -> Result<FutureProducer, Error> {
    durable_producer_with(config, |_| {})
}

/// [`durable_producer`] with extra settings (queue bounds, timeouts) applied by `tune`;
/// the durability settings cannot be overridden.
pub fn durable_producer_with(
    config: &KafkaConfig,
    tune: impl FnOnce(&mut ClientConfig),
) -> Result<FutureProducer, Error> {
    let mut client = client_config(config);
    // A 1 ms linger lets a burst of records share produce requests while a lone record
    // waits little; a caller tunes it (ingest sends single events with none).
    client
        .set("compression.type", &config.compression)
        .set("linger.ms", "1");
    tune(&mut client);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .create()
        .map_err(|source| Error::Client {
            what: "producer",
            source,
        })
}

/// A consumer in `group_id` that starts from the earliest offset when the group has
/// none and never commits on its own.
///
/// It is a polling consumer, meant for a dedicated thread (or `spawn_blocking`):
/// librdkafka's calls block, and a group consumer's close must poll its own queue until
/// it has left the group, which a runtime thread must not wait for.
pub fn manual_commit_consumer(config: &KafkaConfig, group_id: &str) -> Result<BaseConsumer, Error> {
    manual_commit_consumer_with(config, group_id, DefaultConsumerContext, |_| {})
}

/// [`manual_commit_consumer`] with a consumer context (e.g. one that reacts to
/// rebalances) and extra settings applied by `tune` (assignment strategy, timeouts); the
/// commit settings cannot be overridden.
pub fn manual_commit_consumer_with<C: ConsumerContext>(
    config: &KafkaConfig,
    group_id: &str,
    context: C,
    tune: impl FnOnce(&mut ClientConfig),
) -> Result<BaseConsumer<C>, Error> {
    let mut client = client_config(config);
    // librdkafka's defaults (1 byte, 500 ms) answer a fetch as soon as one record is
    // there: under a steady trickle every consumer sends about one fetch per produced
    // batch, and the broker's request handling becomes the largest cost on a small
    // machine. A fetch now waits for a fuller answer, up to a few ms.
    client
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.min.bytes", config.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", config.fetch_max_wait_ms.to_string());
    tune(&mut client);
    client
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create_with_context(context)
        .map_err(|source| Error::Client {
            what: "consumer",
            source,
        })
}

/// Closes a group consumer (by dropping `owner`, which holds it) and waits at most
/// `timeout` for it to have left its group; returns whether it did.
///
/// librdkafka's close polls until the member has left, which, without a group coordinator
/// (a broker down, or a fresh one still creating its offsets topic), can take
/// indefinitely. The drop runs on a thread of its own, so a stopping service is not held
/// past its grace period: a member that did not get to leave is noticed by the group
/// after its session timeout instead, and its partitions move as after a crash. Call it
/// only once everything the consumer's work produced is safe.
pub fn close_within<T: Send + 'static>(owner: T, timeout: std::time::Duration) -> bool {
    let (left, done) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("kafka-close".to_owned())
        .spawn(move || {
            drop(owner);
            let _ = left.send(());
        });
    match closing {
        Ok(_) => done.recv_timeout(timeout).is_ok(),
        // The owner went down with the failed spawn: closed, on this thread.
        Err(_) => true,
    }
}

/// Creates `topic` with `partitions` partitions (replication factor 1 is for a
/// single-broker cluster; real clusters provision topics themselves). An existing topic
/// is left as it is.
pub async fn ensure_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), Error> {
    let admin = admin_client(config)?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let results = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .map_err(|error| topic_error("create", topic, error.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(topic_error("create", topic, code.to_string())),
        }
    }
    Ok(())
}

/// Deletes `topic` (tests clean up after themselves with it).
pub async fn delete_topic(config: &KafkaConfig, topic: &str) -> Result<(), Error> {
    let admin = admin_client(config)?;
    let results = admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .map_err(|error| topic_error("delete", topic, error.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((_, code)) => return Err(topic_error("delete", topic, code.to_string())),
        }
    }
    Ok(())
}

fn admin_client(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, Error> {
    client_config(config)
        .create()
        .map_err(|source| Error::Client {
            what: "admin client",
            source,
        })
}

fn topic_error(operation: &'static str, topic: &str, reason: String) -> Error {
    Error::Topic {
        operation,
        topic: topic.to_owned(),
        reason,
    }
}

/// Ready when the brokers answer a metadata request and, when the service needs a topic,
/// that topic exists with partitions.
pub struct KafkaProbe {
    consumer: std::sync::Arc<BaseConsumer>,
    topic: Option<String>,
    timeout: Duration,
}

impl KafkaProbe {
    /// A probe of the cluster in `config`, and of `topic` when given.
    pub fn new(
        config: &KafkaConfig,
        topic: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let consumer = client_config(config)
            .create()
            .map_err(|source| Error::Client {
                what: "metadata client",
                source,
            })?;
        Ok(Self {
            consumer: std::sync::Arc::new(consumer),
            topic: topic.map(str::to_owned),
            timeout,
        })
    }
}

impl Probe for KafkaProbe {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn check(&self) -> ProbeFuture<'_> {
        let consumer = std::sync::Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            // librdkafka's metadata call blocks; keep it off the runtime threads.
            tokio::task::spawn_blocking(move || {
                let metadata = consumer
                    .fetch_metadata(topic.as_deref(), timeout)
                    .map_err(|error| format!("metadata request failed: {error}"))?;
                if metadata.brokers().is_empty() {
                    return Err("the cluster reported no brokers".to_owned());
                }
                let Some(topic) = topic else {
                    return Ok(());
                };
                let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                    return Err(format!("topic `{topic}` is missing"));
                };
                if let Some(error) = found.error() {
                    return Err(format!(
                        "topic `{topic}`: {:?}",
                        RDKafkaErrorCode::from(error)
                    ));
                }
                if found.partitions().is_empty() {
                    return Err(format!("topic `{topic}` has no partitions"));
                }
                Ok(())
            })
            .await
            .map_err(|error| format!("probe task failed: {error}"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::close_within;

    /// Stands in for a consumer whose close takes `close_for`.
    struct SlowClose {
        close_for: Duration,
        closed: Arc<AtomicBool>,
    }

    impl Drop for SlowClose {
        fn drop(&mut self) {
            std::thread::sleep(self.close_for);
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    fn slow(close_for: Duration) -> (SlowClose, Arc<AtomicBool>) {
        let closed = Arc::new(AtomicBool::new(false));
        let owner = SlowClose {
            close_for,
            closed: Arc::clone(&closed),
        };
        (owner, closed)
    }

    #[test]
    fn a_quick_close_is_waited_for() {
        let (owner, closed) = slow(Duration::from_millis(50));
        assert!(close_within(owner, Duration::from_secs(30)));
        assert!(closed.load(Ordering::SeqCst), "closed before it returns");
    }

    #[test]
    fn a_hanging_close_is_left_behind_after_the_timeout() {
        let (owner, closed) = slow(Duration::from_secs(3600));
        let started = Instant::now();
        assert!(!close_within(owner, Duration::from_millis(200)));
        assert!(started.elapsed() < Duration::from_secs(60));
        assert!(
            !closed.load(Ordering::SeqCst),
            "still closing in the background"
        );
    }
}
