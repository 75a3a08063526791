//! The harness of the serving API's integration tests: a database, topics, Redis prefix,
//! consumer groups and alerts exchange of the test's own; API keys of each scope; a
//! speed layer and a serving API in this process; producing transactions. A queue bound
//! to the exchange and the alert stream's reader are `fraud_testkit::{amqp, sse}`.
#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use fraud_config::{ApiKeyConfig, Scope, Settings};
use fraud_events::TransactionEvent;
use fraud_service::Shutdown;
use fraud_service::startup::Service;
use fraud_testkit::{local_settings, unique_name};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

/// API keys of the test, one per scope (and one with every scope).
pub const READ_KEY: &str = "test-key-read";
pub const ADMIN_KEY: &str = "test-key-admin";
pub const INGEST_KEY: &str = "test-key-ingest";
pub const ALL_KEY: &str = "test-key-all";

/// A test's own servers' namespaces.
pub struct ServingTest {
    pub settings: Settings,
    pub pool: PgPool,
    pub producer: FutureProducer,
}

/// A serving API started in this process.
pub struct RunningServing {
    pub shutdown: Shutdown,
    pub base: String,
    /// The instance's batch row cache.
    pub batch_cache: std::sync::Arc<serving_api::risk::cache::BatchCache>,
}

impl ServingTest {
    pub async fn create(name: &str) -> ServingTest {
        Self::create_with(name, |_| {}).await
    }

    /// [`ServingTest::create`] with settings changed by `tune` (e.g. another RabbitMQ).
    pub async fn create_with(name: &str, tune: impl FnOnce(&mut Settings)) -> ServingTest {
        let mut settings = local_settings();
        let own = unique_name(name);
        let url = fraud_testkit::postgres::create_database(name).await;
        settings.postgres.url = fraud_config::Secret::new(url);
        settings.kafka.transactions_topic = own.clone();
        settings.kafka.window_updates_topic = format!("{own}-updates");
        settings.redis.key_prefix = format!("{own}:");
        settings.speed.group = format!("{own}-speed");
        settings.speed.listen = "127.0.0.1:0".parse().unwrap();
        settings.serving.group = format!("{own}-serving");
        settings.serving.listen = "127.0.0.1:0".parse().unwrap();
        settings.rabbitmq.alerts_exchange = format!("{own}.alerts");
        settings.auth.keys = [
            (READ_KEY, vec![Scope::Read]),
            (ADMIN_KEY, vec![Scope::Admin]),
            (INGEST_KEY, vec![Scope::Ingest]),
            (ALL_KEY, vec![Scope::Ingest, Scope::Read, Scope::Admin]),
        ]
        .into_iter()
        .map(|(key, scopes)| ApiKeyConfig {
            name: key.to_owned(),
            sha256: fraud_service::auth::key_sha256(key),
            scopes,
        })
        .collect();
        tune(&mut settings);
        let pool =
            fraud_postgres::lazy_pool(&settings.postgres, Duration::from_secs(5)).expect("a pool");
        fraud_postgres::migrate(&pool)
            .await
            .expect("migrate the test database");
        fraud_kafka::ensure_topic(&settings.kafka, &own, 4, 1)
            .await
            .expect("create the topic");
        fraud_kafka::ensure_topic(&settings.kafka, &settings.kafka.window_updates_topic, 2, 1)
            .await
            .expect("create the updates topic");
        let producer = fraud_kafka::durable_producer(&settings.kafka).expect("a producer");
        ServingTest {
            settings,
            pool,
            producer,
        }
    }

    /// Starts a speed layer in this process; stop it with the returned `Shutdown`.
    pub async fn start_speed(&self) -> Shutdown {
        let shutdown = Shutdown::new(Duration::from_secs(20));
        let app = speed_layer::App::build(&self.settings, shutdown.clone())
            .await
            .expect("the speed layer starts");
        tokio::spawn(async move {
            if let Err(error) = app.run_until_stopped().await {
                panic!("the speed layer failed: {error:#}");
            }
        });
        shutdown
    }

    /// Starts a serving API in this process.
    pub async fn start_serving(&self) -> RunningServing {
        self.start_serving_with(&self.settings).await
    }

    /// Starts a serving API in this process with other settings (e.g. another RabbitMQ).
    pub async fn start_serving_with(&self, settings: &Settings) -> RunningServing {
        let shutdown = Shutdown::new(Duration::from_secs(20));
        let app = serving_api::App::build(settings, shutdown.clone())
            .await
            .expect("the serving API starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let batch_cache = app.batch_cache();
        tokio::spawn(async move {
            if let Err(error) = app.run_until_stopped().await {
                panic!("the serving API failed: {error:#}");
            }
        });
        RunningServing {
            shutdown,
            base,
            batch_cache,
        }
    }

    /// Produces `events` in order (each keyed by customer, timestamped with its ingest
    /// time) and returns where each landed.
    pub async fn produce(&self, events: &[TransactionEvent]) -> Vec<(i32, i64)> {
        fraud_testkit::kafka::produce_transactions(
            &self.producer,
            &self.settings.kafka.transactions_topic,
            events,
        )
        .await
    }

    /// Whether the serving group has committed every record of the updates topic so
    /// far: every update published is evaluated and its alerts are committed.
    pub async fn is_caught_up(&self) -> bool {
        fraud_testkit::kafka::group_caught_up(
            &self.settings.kafka,
            &self.settings.serving.group,
            &self.settings.kafka.window_updates_topic,
        )
        .await
    }

    /// Waits until [`ServingTest::is_caught_up`].
    pub async fn caught_up(&self) {
        fraud_testkit::wait_until(
            Duration::from_secs(30),
            "the serving group evaluated every update",
            || self.is_caught_up(),
        )
        .await;
    }

    /// Publishes `watermark` (UTC ms, hour-aligned) as a succeeded batch run's T_b, with
    /// the notification the batch layer sends in its publishing transaction.
    pub async fn publish_watermark(&self, watermark: i64) {
        sqlx::query(
            "WITH run AS (INSERT INTO batch_runs (watermark, status, finished_at) \
             VALUES (to_timestamp($1 / 1000.0), 'succeeded', now()) RETURNING run_id) \
             SELECT pg_notify($2, run_id::text) FROM run",
        )
        .bind(watermark as f64)
        .bind(serving_api::risk::cache::CHANNEL)
        .execute(&self.pool)
        .await
        .expect("publish a watermark");
    }

    /// Deletes the test's keys, topics, exchange and database.
    pub async fn remove(self) {
        let handle = fraud_redis::RedisHandle::new(&self.settings.redis, Duration::from_secs(5))
            .expect("a redis handle");
        if let Ok(mut redis) = handle.connection().await {
            let pattern = format!("{}*", self.settings.redis.key_prefix);
            let keys: Vec<String> = redis::AsyncCommands::keys(&mut redis, pattern)
                .await
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: () = redis::AsyncCommands::del(&mut redis, chunk)
                    .await
                    .unwrap_or(());
            }
        }
        for topic in [
            self.settings.kafka.transactions_topic.as_str(),
            self.settings.kafka.window_updates_topic.as_str(),
        ] {
            let _ = fraud_kafka::delete_topic(&self.settings.kafka, topic).await;
        }
        self.pool.close().await;
        fraud_testkit::postgres::drop_database(self.settings.postgres.url.expose()).await;
    }
}

/// A transaction of `customer` at `vendor` for `amount` minor units, at `ts` (UTC ms),
/// ingested at `ts`.
pub fn transaction(
    id: &str,
    customer: &str,
    vendor: &str,
    amount: i64,
    ts: i64,
) -> TransactionEvent {
    use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
    TransactionEvent {
        transaction_id: TransactionId::parse(id).expect("a transaction id"),
        customer_id: CustomerId::parse(customer).expect("a customer id"),
        vendor_id: VendorId::parse(vendor).expect("a vendor id"),
        amount: Money::from_minor(amount),
        currency: Currency::EUR,
        event_time: EventTime::from_millis(ts).expect("an event time"),
        ingest_time: EventTime::from_millis(ts).expect("an ingest time"),
    }
}

/// The wall clock in UTC ms.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// `GET base + path` with `key` as the bearer: status and JSON body (`Null` if not JSON).
pub async fn get(base: &str, path: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("the serving API answers");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}
