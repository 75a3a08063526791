//! The harness of the speed layer's integration tests: a topic, updates topic, Redis
//! prefix and group of the test's own; producing events; reading the state back; and an
//! independent model of what the state must say.
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::time::Duration;

use fraud_config::Settings;
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_service::Shutdown;
use fraud_service::startup::Service;
use fraud_speed_view::meta::{SpeedMeta, meta_key};
use fraud_speed_view::{CustomerState, WINDOW_MS, customer_key};
use fraud_testkit::{local_settings, unique_name};
use rdkafka::producer::FutureProducer;
use redis::AsyncCommands;

/// A test's own topics, Redis prefix and consumer group.
pub struct SpeedTest {
    pub settings: Settings,
    pub producer: FutureProducer,
    redis: redis::aio::ConnectionManager,
}

/// An event as produced, with where it landed.
#[derive(Debug, Clone)]
pub struct Produced {
    pub event: TransactionEvent,
    pub partition: i32,
    pub offset: i64,
}

impl SpeedTest {
    pub async fn create(name: &str, partitions: i32) -> SpeedTest {
        Self::create_with(name, partitions, |_| {}).await
    }

    /// [`SpeedTest::create`] with settings changed by `tune` (e.g. another Redis).
    pub async fn create_with(
        name: &str,
        partitions: i32,
        tune: impl FnOnce(&mut Settings),
    ) -> SpeedTest {
        let mut settings = local_settings();
        let own = unique_name(name);
        // A database of its own: the batch watermark T_b the speed layer reads is the
        // test's to set (none unless it publishes one).
        settings.postgres.url = fraud_config::Secret::new(create_database(name).await);
        tune(&mut settings);
        settings.kafka.transactions_topic = own.clone();
        settings.kafka.window_updates_topic = format!("{own}-updates");
        settings.redis.key_prefix = format!("{own}:");
        settings.speed.group = format!("{own}-speed");
        settings.speed.listen = "127.0.0.1:0".parse().unwrap();
        fraud_kafka::ensure_topic(&settings.kafka, &own, partitions, 1)
            .await
            .expect("create the topic");
        fraud_kafka::ensure_topic(&settings.kafka, &settings.kafka.window_updates_topic, 2, 1)
            .await
            .expect("create the updates topic");
        let producer = fraud_kafka::durable_producer(&settings.kafka).expect("a producer");
        let handle = fraud_redis::RedisHandle::new(&settings.redis, Duration::from_secs(5))
            .expect("a redis handle");
        let redis = handle.connection().await.expect("redis");
        SpeedTest {
            settings,
            producer,
            redis,
        }
    }

    pub fn topic(&self) -> &str {
        &self.settings.kafka.transactions_topic
    }

    /// Starts a speed layer in this process; stop it with the returned `Shutdown`.
    pub async fn start(&self) -> Shutdown {
        start_in_process(&self.settings).await.0
    }

    /// Produces `events` in order (each keyed by customer, timestamped with its ingest
    /// time) and returns where each landed.
    pub async fn produce(&self, events: Vec<TransactionEvent>) -> Vec<Produced> {
        let landed =
            fraud_testkit::kafka::produce_transactions(&self.producer, self.topic(), &events).await;
        events
            .into_iter()
            .zip(landed)
            .map(|(event, (partition, offset))| Produced {
                event,
                partition,
                offset,
            })
            .collect()
    }

    /// The customer's state in the current generation (`None` when absent).
    pub async fn state(&self, customer: &str) -> Option<CustomerState> {
        self.try_state(customer).await.expect("read the state")
    }

    /// [`SpeedTest::state`], with Redis errors returned (a restarted server).
    pub async fn try_state(&self, customer: &str) -> redis::RedisResult<Option<CustomerState>> {
        let mut redis = self.redis.clone();
        let meta = self.try_meta().await?;
        let bytes: Option<Vec<u8>> = redis
            .get(customer_key(&self.settings.redis.key_prefix, customer))
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let state = CustomerState::decode(&bytes).expect("a readable state");
        Ok((Some(state.generation) == meta.generation).then_some(state))
    }

    pub async fn meta(&self) -> SpeedMeta {
        self.try_meta().await.expect("read the meta key")
    }

    pub async fn try_meta(&self) -> redis::RedisResult<SpeedMeta> {
        let mut redis = self.redis.clone();
        SpeedMeta::read(&mut redis, &meta_key(&self.settings.redis.key_prefix)).await
    }

    /// Whether every customer of `model` has its last record applied (or skipped) and
    /// the view is not degraded.
    pub async fn caught_up(&self, model: &Model) -> bool {
        match self.try_meta().await {
            Ok(meta) if meta.degraded().is_none() => {}
            _ => return false,
        }
        for (customer, expected) in &model.last_offsets {
            match self.try_state(customer).await {
                Ok(Some(state)) if state.last_offset == *expected => {}
                _ => return false,
            }
        }
        true
    }

    /// Every window update published so far.
    pub async fn updates(&self) -> Vec<fraud_speed_view::WindowUpdate> {
        let kafka = self.settings.kafka.clone();
        let topic = self.settings.kafka.window_updates_topic.clone();
        let records =
            tokio::task::spawn_blocking(move || fraud_testkit::kafka::read_all(&kafka, &topic))
                .await
                .expect("read the updates");
        records
            .iter()
            .map(|record| {
                assert_eq!(
                    record.header("schema-version"),
                    Some(fraud_speed_view::update::UPDATE_SCHEMA_VERSION.as_bytes())
                );
                serde_json::from_slice(&record.value).expect("a window update")
            })
            .collect()
    }

    /// Publishes `watermark` (UTC ms, hour-aligned) as a succeeded batch run's T_b.
    pub async fn publish_watermark(&self, watermark: i64) {
        let pool = fraud_postgres::lazy_pool(&self.settings.postgres, Duration::from_secs(5))
            .expect("a pool");
        sqlx::query(
            "INSERT INTO batch_runs (watermark, status, finished_at) \
             VALUES (to_timestamp($1 / 1000.0), 'succeeded', now())",
        )
        .bind(watermark as f64)
        .execute(&pool)
        .await
        .expect("publish a watermark");
    }

    /// Deletes every key, topic and the database of the test.
    pub async fn remove(self) {
        let mut redis = self.redis.clone();
        let pattern = format!("{}*", self.settings.redis.key_prefix);
        let keys: Vec<String> = redis.keys(pattern).await.unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: () = redis.del(chunk).await.unwrap_or(());
        }
        for topic in [
            self.settings.kafka.transactions_topic.as_str(),
            self.settings.kafka.window_updates_topic.as_str(),
        ] {
            let _ = fraud_kafka::delete_topic(&self.settings.kafka, topic).await;
        }
        fraud_testkit::postgres::drop_database(self.settings.postgres.url.expose()).await;
    }
}

pub fn event(
    transaction: &str,
    customer: &str,
    vendor: &str,
    amount_minor: i64,
    ts: i64,
) -> TransactionEvent {
    TransactionEvent {
        transaction_id: TransactionId::parse(transaction).unwrap(),
        customer_id: CustomerId::parse(customer).unwrap(),
        vendor_id: VendorId::parse(vendor).unwrap(),
        amount: Money::from_minor(amount_minor),
        currency: Currency::EUR,
        event_time: EventTime::from_millis(ts).unwrap(),
        // Ingest time: never more than the future skew before the event time.
        ingest_time: EventTime::from_millis(ts.max(1)).unwrap(),
    }
}

/// What the state must say, computed naively: every applied event kept forever, the
/// rules applied record by record in offset order per customer.
#[derive(Debug, Default)]
pub struct Model {
    pub applied: BTreeMap<String, Vec<(i64, i64, String)>>,
    /// Per customer, what the window updates must list, in offset order: every applied
    /// record's (offset, transaction id, whether the customer used its vendor before).
    pub listed: BTreeMap<String, Vec<(i64, String, bool)>>,
    pub last_offsets: BTreeMap<String, i64>,
    pub late: u64,
    pub duplicates: u64,
}

impl Model {
    /// The model of `produced` with `retention_ms` (window + allowed lateness).
    pub fn of(produced: &[Produced], retention_ms: i64) -> Model {
        let mut ordered: Vec<&Produced> = produced.iter().collect();
        ordered.sort_by_key(|p| (p.partition, p.offset));
        let mut model = Model::default();
        let mut seen: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for record in ordered {
            let customer = record.event.customer_id.as_str().to_owned();
            model.last_offsets.insert(customer.clone(), record.offset);
            let applied = model.applied.entry(customer.clone()).or_default();
            let clock = applied.iter().map(|(ts, _, _)| *ts).max();
            let ts = record.event.event_time.as_millis();
            if clock.is_some_and(|clock| ts <= clock - retention_ms) {
                model.late += 1;
                continue;
            }
            let transaction = record.event.transaction_id.as_str().to_owned();
            let ids = seen.entry(customer.clone()).or_default();
            if ids.iter().any(|(id, _)| *id == transaction) {
                model.duplicates += 1;
                continue;
            }
            // Used before: an applied event with the same vendor, inside the retention of
            // the clock before this one (`AppliedEvent::vendor_seen_before`).
            let vendor = record.event.vendor_id.as_str();
            let seen_before = clock.is_some_and(|clock| {
                applied
                    .iter()
                    .any(|(at, _, used)| used == vendor && *at > clock - retention_ms)
            });
            model.listed.entry(customer.clone()).or_default().push((
                record.offset,
                transaction.clone(),
                seen_before,
            ));
            ids.push((transaction, ts));
            applied.push((
                ts,
                record.event.amount.minor(),
                record.event.vendor_id.as_str().to_owned(),
            ));
        }
        model
    }

    pub fn clock(&self, customer: &str) -> Option<i64> {
        self.applied[customer].iter().map(|(ts, _, _)| *ts).max()
    }

    /// (sum, count, max, distinct vendors) of `W(customer, t)`.
    pub fn window(&self, customer: &str, t: i64) -> (i64, i64, i64, i64) {
        let inside: Vec<&(i64, i64, String)> = self.applied[customer]
            .iter()
            .filter(|(ts, _, _)| t - WINDOW_MS < *ts && *ts <= t)
            .collect();
        let mut vendors: Vec<&str> = inside.iter().map(|(_, _, v)| v.as_str()).collect();
        vendors.sort();
        vendors.dedup();
        (
            inside.iter().map(|(_, amount, _)| amount).sum(),
            inside.len() as i64,
            inside
                .iter()
                .map(|(_, amount, _)| *amount)
                .max()
                .unwrap_or(0),
            vendors.len() as i64,
        )
    }

    /// (sum, count) of the applied events with `from <= ts <= until`.
    pub fn total(&self, customer: &str, from: i64, until: i64) -> (i64, i64) {
        let inside = self.applied[customer]
            .iter()
            .filter(|(ts, _, _)| from <= *ts && *ts <= until);
        inside.fold((0, 0), |(sum, count), (_, amount, _)| {
            (sum + amount, count + 1)
        })
    }
}

/// Asserts the state of every customer of `model` agrees with it at several instants.
pub async fn assert_exact(test: &SpeedTest, model: &Model, retention_ms: i64) {
    let lateness = retention_ms - WINDOW_MS;
    for customer in model.applied.keys() {
        let state = test
            .state(customer)
            .await
            .unwrap_or_else(|| panic!("no state for {customer}"));
        let clock = model.clock(customer).expect("a customer with events");
        assert_eq!(state.clock, Some(clock), "{customer}: clock");
        for t in [
            clock - lateness,
            clock - 1,
            clock,
            clock + 1,
            clock + WINDOW_MS - 1,
            clock + WINDOW_MS,
        ] {
            let window = state.window_at(t);
            assert_eq!(
                (
                    window.sum,
                    window.count,
                    window.max,
                    window.distinct_vendors
                ),
                model.window(customer, t),
                "{customer}: window at {t} (clock {clock})"
            );
        }
        // Today so far, and the hour of the clock, from the increments.
        let day = clock - clock.rem_euclid(24 * 3_600_000);
        let hour = clock - clock.rem_euclid(3_600_000);
        for from in [day, hour] {
            assert_eq!(
                state.total_between(None, from, clock),
                model.total(customer, from, clock),
                "{customer}: total from {from} to {clock}"
            );
        }
    }
}

/// The value of the metric line starting with `series` in a Prometheus text page (summed
/// over its label sets when `series` has none).
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Starts a speed layer with `settings` in this process; returns its shutdown and its
/// port.
pub async fn start_in_process(settings: &Settings) -> (Shutdown, u16) {
    let shutdown = Shutdown::new(Duration::from_secs(20));
    let app = speed_layer::App::build(settings, shutdown.clone())
        .await
        .expect("the speed layer starts");
    let port = app.port();
    let handle = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) = app.run_until_stopped().await {
            panic!("the speed layer failed: {error:#}");
        }
        drop(handle);
    });
    (shutdown, port)
}

/// Creates a database of the test's own (with the platform's schema); its URL.
pub async fn create_database(hint: &str) -> String {
    let url = fraud_testkit::postgres::create_database(hint).await;
    let mut settings = local_settings().postgres;
    settings.url = fraud_config::Secret::new(url.clone());
    let pool = fraud_postgres::lazy_pool(&settings, Duration::from_secs(5)).expect("a pool");
    fraud_postgres::migrate(&pool)
        .await
        .expect("migrate the test database");
    pool.close().await;
    url
}
