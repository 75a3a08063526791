//! Each real server, reached through the platform's own client code.

use std::time::Duration;

use fraud_amqp::{AmqpHandle, ConfirmedPublisher, OutgoingMessage};
use fraud_service::Probe;
use fraud_testkit::{local_settings, unique_name};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sqlx::Connection;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn kafka_durable_producer_to_manual_commit_consumer() {
    let mut settings = local_settings();
    let topic = unique_name("servers-test");
    settings.kafka.transactions_topic = topic.clone();
    fraud_kafka::ensure_topic(&settings.kafka, &topic, 3, 1)
        .await
        .expect("create the topic");
    // Creating it twice is harmless.
    fraud_kafka::ensure_topic(&settings.kafka, &topic, 3, 1)
        .await
        .expect("create the topic again");

    let producer = fraud_kafka::durable_producer(&settings.kafka).expect("producer");
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("customer-42")
                .payload("hello, kafka")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "schema-version",
                    value: Some("1"),
                })),
            DEADLINE,
        )
        .await
        .expect("the broker acknowledged the record");
    assert!(delivery.offset >= 0);

    let consumer = fraud_kafka::manual_commit_consumer(&settings.kafka, &unique_name("group"))
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    // The consumer polls and closes on a blocking thread, as the services' consumers do.
    let expected_partition = delivery.partition;
    let expected_offset = delivery.offset;
    let subscribed_topic = topic.clone();
    tokio::task::spawn_blocking(move || {
        // A poll also serves group events (the assignment) and may return without a record.
        let started = std::time::Instant::now();
        let message = loop {
            if let Some(polled) = consumer.poll(Duration::from_millis(100)) {
                break polled.expect("a record, not an error");
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no record within the deadline"
            );
        };
        assert_eq!(message.key(), Some(&b"customer-42"[..]));
        assert_eq!(message.payload(), Some(&b"hello, kafka"[..]));
        assert_eq!(message.partition(), expected_partition);
        assert_eq!(message.offset(), expected_offset);
        let header = message.headers().expect("headers").get(0);
        assert_eq!(header.key, "schema-version");
        assert_eq!(header.value, Some(&b"1"[..]));
        consumer
            .commit_message(&message, CommitMode::Sync)
            .expect("commit the offset");
        drop(message);
        let committed = consumer
            .committed(DEADLINE)
            .expect("read the committed offsets");
        let position = committed
            .find_partition(&subscribed_topic, expected_partition)
            .expect("the partition")
            .offset();
        assert_eq!(position, rdkafka::Offset::Offset(expected_offset + 1));
    })
    .await
    .expect("the consumer thread");

    fraud_kafka::delete_topic(&settings.kafka, &topic)
        .await
        .expect("delete the topic");
}

#[tokio::test]
async fn kafka_probe_fails_for_a_missing_topic_and_passes_for_an_existing_one() {
    let settings = local_settings();
    let missing = unique_name("missing-topic");
    let probe = fraud_kafka::KafkaProbe::new(&settings.kafka, Some(&missing), DEADLINE).unwrap();
    let error = probe.check().await.expect_err("the topic does not exist");
    assert!(error.contains(&missing), "{error}");

    let existing = unique_name("probe-topic");
    fraud_kafka::ensure_topic(&settings.kafka, &existing, 1, 1)
        .await
        .unwrap();
    let probe = fraud_kafka::KafkaProbe::new(&settings.kafka, Some(&existing), DEADLINE).unwrap();
    probe.check().await.expect("the topic exists");
    fraud_kafka::delete_topic(&settings.kafka, &existing)
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_round_trip_under_a_private_prefix() {
    let mut settings = local_settings();
    settings.redis.key_prefix = format!("{}:", unique_name("servers-test"));
    let handle = fraud_redis::RedisHandle::new(&settings.redis, DEADLINE).expect("handle");
    let mut connection = handle.connection().await.expect("connect");
    let key = handle.key("greeting");
    assert!(key.starts_with(&settings.redis.key_prefix));
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("hello, redis")
        .arg("EX")
        .arg(60)
        .query_async(&mut connection)
        .await
        .expect("SET");
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(value.as_deref(), Some("hello, redis"));
    let deleted: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1);
}

#[tokio::test]
async fn postgres_migrations_apply_to_a_fresh_database_and_are_idempotent() {
    let settings = local_settings();
    let database = unique_name("fraud_test").replace('-', "_");
    let admin_url = settings.postgres.url.expose().clone();
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to the fraud database");
    // The name is ours: letters, digits and underscores only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("create a private database");

    let mut test_settings = settings.clone();
    let test_url = replace_database(&admin_url, &database);
    test_settings.postgres.url = fraud_config::Secret::new(test_url);
    let pool = fraud_postgres::lazy_pool(&test_settings.postgres, DEADLINE).expect("pool");
    fraud_postgres::migrate(&pool).await.expect("migrate");
    fraud_postgres::migrate(&pool).await.expect("migrate again");

    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .expect("read the migration log");
    let expected: Vec<(i64, bool)> = fraud_postgres::MIGRATOR
        .iter()
        .map(|migration| (migration.version, true))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(applied, expected);

    // The run log exists and keeps its invariants.
    sqlx::query(
        "INSERT INTO batch_runs (watermark, status) VALUES ('2026-01-01T10:00:00Z', 'running')",
    )
    .execute(&pool)
    .await
    .expect("an hour-aligned watermark is accepted");
    let misaligned = sqlx::query(
        "INSERT INTO batch_runs (watermark, status) VALUES ('2026-01-01T10:30:00Z', 'running')",
    )
    .execute(&pool)
    .await;
    assert!(misaligned.is_err(), "a watermark must be hour-aligned");

    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the private database");
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{database}")
}

#[tokio::test]
async fn rabbitmq_confirmed_publish_reaches_a_bound_queue() {
    let settings = local_settings();
    let exchange = unique_name("alerts-test");
    let handle = AmqpHandle::new(&settings.rabbitmq, "servers-test");
    let publisher = ConfirmedPublisher::open(&handle).await.expect("open");
    fraud_amqp::declare_topic_exchange(publisher.channel(), &exchange)
        .await
        .expect("declare the exchange");

    let subscriber = handle.channel().await.expect("subscriber channel");
    let queue = subscriber
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a private queue");
    subscriber
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "alert.high.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let message = OutgoingMessage {
        exchange: &exchange,
        routing_key: "alert.high.sum_30m",
        message_id: "alert-0001",
        content_type: "application/json",
        payload: br#"{"alertId":"alert-0001"}"#,
        headers: vec![(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )],
    };
    publisher.publish(&message).await.expect("confirmed");

    let delivered = fraud_testkit::poll_for(DEADLINE, "the message in the bound queue", || {
        let subscriber = subscriber.clone();
        let queue = queue.name().clone();
        async move {
            subscriber
                .basic_get(queue, BasicGetOptions::default())
                .await
                .expect("basic.get")
        }
    })
    .await;
    let delivery = delivered.delivery;
    assert_eq!(delivery.data, message.payload);
    assert_eq!(delivery.routing_key.as_str(), "alert.high.sum_30m");
    let properties = &delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.as_str()),
        Some("alert-0001")
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    let traceparent = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("traceparent").cloned());
    assert!(
        matches!(traceparent, Some(AMQPValue::LongString(ref value)) if value.as_bytes().starts_with(b"00-0af7651916cd43dd")),
        "{traceparent:?}"
    );
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");

    // A mandatory message that no queue is bound for is an error, not a silent loss.
    let unroutable = OutgoingMessage {
        routing_key: "alert.low.nobody_listens",
        message_id: "alert-0002",
        ..message.clone()
    };
    let error = publisher
        .publish(&unroutable)
        .await
        .expect_err("unroutable");
    assert!(
        matches!(error, fraud_amqp::Error::Unroutable { .. }),
        "{error}"
    );

    publisher
        .channel()
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete the exchange");
}
