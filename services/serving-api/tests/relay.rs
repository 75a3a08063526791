//! The alert outbox relay against the real Postgres and RabbitMQ: what a subscriber's
//! queue receives, what the outbox keeps, RabbitMQ unreachable and back, a SIGKILLed
//! serving API, and two relays on one outbox.
//!
//! Alerts are written as the alert writer (`evaluate`) writes them: in one transaction
//! under its advisory lock, the `alerts` row, its `alert_outbox` row, and
//! `pg_notify('fraud_alerts', seq)`.
//!
//! "Exactly once" on a queue is checked with a sentinel: once the relay's rows have left
//! the outbox, their messages were confirmed, so they are in the queue; a sentinel the
//! test publishes afterwards comes behind them, and what arrived before it is all
//! there is.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ServingTest;
use fraud_config::Settings;
use fraud_testkit::amqp::{Subscriber, header, message_id};
use fraud_testkit::service::Binary;
use fraud_testkit::{get_json, get_text, local_settings, wait_until};
use lapin::message::Delivery;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use serving_api::evaluate::store::{ALERTS_CHANNEL, ALERTS_LOCK};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

/// kill(2)'s SIGKILL.
const SIGKILL: i32 = 9;

/// An alert as written.
#[derive(Debug, Clone)]
struct Raised {
    alert_id: Uuid,
    seq: i64,
    routing_key: String,
    body: Value,
    traceparent: String,
}

/// Writes one alert per (customer, rule, severity) in one transaction, as the alert
/// writer does.
async fn raise(pool: &PgPool, alerts: &[(&str, &str, &str)]) -> Vec<Raised> {
    raise_with(pool, alerts, true).await
}

/// [`raise`], without the notification when `notify` is false (as if it were lost).
async fn raise_with(pool: &PgPool, alerts: &[(&str, &str, &str)], notify: bool) -> Vec<Raised> {
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ALERTS_LOCK)
        .execute(&mut *transaction)
        .await
        .expect("take the alerts lock");
    let mut raised = Vec::new();
    for (customer, rule, severity) in alerts {
        let alert_id = Uuid::new_v4();
        let trace_id = Uuid::new_v4().simple().to_string();
        let traceparent = format!(
            "00-{trace_id}-{}-01",
            &Uuid::new_v4().simple().to_string()[..16]
        );
        let body = json!({
            "alertId": alert_id,
            "customerId": customer,
            "rule": rule,
            "severity": severity,
            "observed": "1500.00",
            "threshold": "1000.00",
        });
        let routing_key = format!("alert.{severity}.{rule}");
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO alerts (alert_id, customer_id, rule_id, rule_version, severity, \
                                 episode_start, as_of, body, trace_context) \
             VALUES ($1, $2, $3, 0, $4, now(), now(), $5::text::jsonb, $6::text::jsonb) RETURNING seq",
        )
        .bind(alert_id)
        .bind(customer)
        .bind(rule)
        .bind(severity)
        .bind(body.to_string())
        .bind(json!({"traceparent": traceparent, "tracestate": "fraud=test"}).to_string())
        .fetch_one(&mut *transaction)
        .await
        .expect("insert an alert");
        sqlx::query("INSERT INTO alert_outbox (alert_id, routing_key) VALUES ($1, $2)")
            .bind(alert_id)
            .bind(&routing_key)
            .execute(&mut *transaction)
            .await
            .expect("insert its outbox row");
        raised.push(Raised {
            alert_id,
            seq,
            routing_key,
            body,
            traceparent,
        });
    }
    for alert in raised.iter().filter(|_| notify) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ALERTS_CHANNEL)
            .bind(alert.seq.to_string())
            .execute(&mut *transaction)
            .await
            .expect("notify");
    }
    transaction.commit().await.expect("commit the alerts");
    raised
}

async fn outbox_len(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM alert_outbox")
        .fetch_one(pool)
        .await
        .expect("count the outbox")
}

async fn wait_for_empty_outbox(pool: &PgPool) {
    wait_until(DEADLINE, "the outbox to empty", || async {
        outbox_len(pool).await == 0
    })
    .await;
}

/// `delivery` is `alert` as the relay must publish it.
fn assert_is(delivery: &Delivery, alert: &Raised) {
    assert_eq!(
        message_id(delivery),
        alert.alert_id.to_string(),
        "message_id"
    );
    assert_eq!(
        delivery.routing_key.as_str(),
        alert.routing_key,
        "routing key"
    );
    assert_eq!(
        *delivery.properties.delivery_mode(),
        Some(2),
        "persistent delivery"
    );
    assert_eq!(
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|kind| kind.as_str()),
        Some("application/json")
    );
    assert_eq!(
        header(delivery, "traceparent").as_deref(),
        Some(alert.traceparent.as_str())
    );
    assert_eq!(
        header(delivery, "tracestate").as_deref(),
        Some("fraud=test")
    );
    assert_eq!(header(delivery, "alert-seq"), Some(alert.seq.to_string()));
    let body: Value = serde_json::from_slice(&delivery.data).expect("a JSON body");
    assert_eq!(body, alert.body, "the body as written");
}

/// (published_at is set, routed, published_by) of an alert.
async fn publication(pool: &PgPool, alert_id: Uuid) -> (bool, Option<bool>, Option<String>) {
    sqlx::query_as(
        "SELECT published_at IS NOT NULL, routed, published_by FROM alerts WHERE alert_id = $1",
    )
    .bind(alert_id)
    .fetch_one(pool)
    .await
    .expect("read the alert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_the_queues_bound_to_its_key_with_its_id_headers_and_body() {
    let test = ServingTest::create("relay-route").await;
    let exchange = test.settings.rabbitmq.alerts_exchange.clone();
    let mut everything = Subscriber::bind(&exchange, "alert.#").await;
    let mut high = Subscriber::bind(&exchange, "alert.high.*").await;
    let serving = test.start_serving().await;

    let raised = raise(
        &test.pool,
        &[
            ("c-1", "sum-30m", "high"),
            ("c-2", "count-30m", "low"),
            ("c-1", "new-vendor", "critical"),
            ("c-3", "baseline-multiple", "high"),
        ],
    )
    .await;
    let received = everything.receive(4).await;
    for (delivery, alert) in received.iter().zip(&raised) {
        assert_is(delivery, alert);
    }
    let high_received = high.receive(2).await;
    assert_is(&high_received[0], &raised[0]);
    assert_is(&high_received[1], &raised[3]);

    wait_for_empty_outbox(&test.pool).await;
    assert!(
        everything.rest("alert.x.sentinel").await.is_empty(),
        "nothing twice"
    );
    assert!(
        high.rest("alert.high.sentinel").await.is_empty(),
        "only the high ones"
    );
    for alert in &raised {
        let (published, routed, by) = publication(&test.pool, alert.alert_id).await;
        assert!(published, "published_at is set");
        assert_eq!(routed, Some(true));
        assert!(
            by.is_some_and(|by| !by.is_empty()),
            "published_by names the relay"
        );
    }

    serving.shutdown.trigger();
    everything.delete_exchange().await;
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_no_queue_is_bound_for_leaves_the_outbox_marked_unroutable_and_counted() {
    let test = ServingTest::create("relay-unroutable").await;
    let serving = test.start_serving().await;
    let raised = raise(&test.pool, &[("c-1", "nobody-listens", "medium")]).await;
    wait_for_empty_outbox(&test.pool).await;
    let (published, routed, _) = publication(&test.pool, raised[0].alert_id).await;
    assert!(published);
    assert_eq!(
        routed,
        Some(false),
        "the broker returned it: no queue took it"
    );
    let (status, metrics) = get_text(&format!("{}/metrics", serving.base))
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200);
    let unroutable = metrics
        .lines()
        .find(|line| line.starts_with(r#"serving_relay_published_total{outcome="unroutable"}"#))
        .unwrap_or_else(|| panic!("no unroutable count in:\n{metrics}"));
    let count: f64 = unroutable.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{unroutable}");

    serving.shutdown.trigger();
    test.remove().await;
}

/// A TCP proxy to RabbitMQ that the test can cut (every connection closed, new ones
/// closed at once) and restore, so the serving API really loses the broker while the
/// shared broker keeps running for other tests.
struct TcpProxy {
    port: u16,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: JoinHandle<()>,
}

impl TcpProxy {
    async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("its address").port();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepting = tokio::spawn({
            let open = Arc::clone(&open);
            let connections = Arc::clone(&connections);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(relay);
                }
            }
        });
        TcpProxy {
            port,
            open,
            connections,
            accepting,
        }
    }

    /// The AMQP URL through the proxy.
    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Closes every connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

fn rabbitmq_address() -> SocketAddr {
    "127.0.0.1:5672".parse().unwrap()
}

/// Every outbox row of `alerts` has failed at least `attempts` times, with an error.
async fn attempts_at_least(pool: &PgPool, alerts: &[Raised], attempts: i32) -> bool {
    let ids: Vec<Uuid> = alerts.iter().map(|alert| alert.alert_id).collect();
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alert_outbox \
         WHERE alert_id = ANY($1) AND attempts >= $2 AND last_error IS NOT NULL",
    )
    .bind(&ids)
    .bind(attempts)
    .fetch_one(pool)
    .await
    .expect("read the outbox");
    failed == ids.len() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_raised_while_rabbitmq_is_unreachable_wait_in_the_outbox_and_all_flow_when_it_is_back()
 {
    let proxy = TcpProxy::start(rabbitmq_address()).await;
    let url = proxy.url();
    let test = ServingTest::create_with("relay-outage", |settings: &mut Settings| {
        settings.rabbitmq.url = fraud_config::Secret::new(url);
    })
    .await;
    let exchange = test.settings.rabbitmq.alerts_exchange.clone();
    let mut subscriber = Subscriber::bind(&exchange, "alert.#").await;
    let serving = test.start_serving().await;

    let before = raise(&test.pool, &[("c-1", "r", "high"), ("c-2", "r", "low")]).await;
    for (delivery, alert) in subscriber.receive(2).await.iter().zip(&before) {
        assert_is(delivery, alert);
    }
    wait_for_empty_outbox(&test.pool).await;

    proxy.cut();
    let mut during = Vec::new();
    for index in 0..5 {
        let customer = format!("c-{index}");
        during.extend(raise(&test.pool, &[(customer.as_str(), "r", "medium")]).await);
    }
    wait_until(DEADLINE, "every waiting alert to have failed twice", || {
        attempts_at_least(&test.pool, &during, 2)
    })
    .await;
    assert_eq!(outbox_len(&test.pool).await, 5, "they wait in the outbox");
    assert!(
        subscriber.rest("alert.x.sentinel").await.is_empty(),
        "nothing was delivered while RabbitMQ was unreachable"
    );
    let (published, _, _) = publication(&test.pool, during[0].alert_id).await;
    assert!(!published);

    proxy.restore();
    let received = subscriber.receive(5).await;
    for (delivery, alert) in received.iter().zip(&during) {
        assert_is(delivery, alert);
    }
    wait_for_empty_outbox(&test.pool).await;
    assert!(
        subscriber.rest("alert.x.sentinel").await.is_empty(),
        "each once"
    );
    for alert in &during {
        assert!(publication(&test.pool, alert.alert_id).await.0);
    }
    let (_, metrics) = get_text(&format!("{}/metrics", serving.base))
        .await
        .expect("/metrics answers");
    assert!(
        metrics.contains(r#"serving_relay_failed_attempts_total{reason="broker_unavailable"}"#),
        "failed attempts are not counted:\n{metrics}"
    );

    serving.shutdown.trigger();
    subscriber.delete_exchange().await;
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_unsendable_alert_backs_off_on_its_own_and_holds_up_no_other() {
    let test = ServingTest::create("relay-nack").await;
    let exchange = test.settings.rabbitmq.alerts_exchange.clone();
    let mut subscriber = Subscriber::bind(&exchange, "alert.*.ok").await;
    let refusing = subscriber.bind_refusing_queue("alert.*.refused").await;
    let serving = test.start_serving().await;

    let refused = raise(&test.pool, &[("c-1", "refused", "high")]).await;
    wait_until(DEADLINE, "the refused alert to be retried", || {
        attempts_at_least(&test.pool, &refused, 2)
    })
    .await;
    let (error, waits): (String, bool) = sqlx::query_as(
        "SELECT last_error, next_attempt_at > enqueued_at FROM alert_outbox WHERE alert_id = $1",
    )
    .bind(refused[0].alert_id)
    .fetch_one(&test.pool)
    .await
    .expect("read its outbox row");
    assert!(error.contains("nack"), "{error}");
    assert!(waits, "a refused row waits before its next attempt");

    // A routing key longer than AMQP allows: the row waits with its error, and the
    // relay (the whole service) keeps running.
    let long_rule = "r".repeat(300);
    let unsendable = raise(&test.pool, &[("c-9", long_rule.as_str(), "low")]).await;
    wait_until(DEADLINE, "the unsendable alert to be retried", || {
        attempts_at_least(&test.pool, &unsendable, 2)
    })
    .await;
    let error: String =
        sqlx::query_scalar("SELECT last_error FROM alert_outbox WHERE alert_id = $1")
            .bind(unsendable[0].alert_id)
            .fetch_one(&test.pool)
            .await
            .expect("read its outbox row");
    assert!(error.contains("routing key"), "{error}");

    // Behind it in seq order, other alerts flow.
    let others = raise(&test.pool, &[("c-2", "ok", "low"), ("c-3", "ok", "high")]).await;
    for (delivery, alert) in subscriber.receive(2).await.iter().zip(&others) {
        assert_is(delivery, alert);
    }
    wait_until(
        DEADLINE,
        "only the refused and unsendable alerts to wait in the outbox",
        || async { outbox_len(&test.pool).await == 2 },
    )
    .await;

    // Once a queue takes it, it is delivered at its next attempt.
    subscriber
        .channel
        .queue_delete(
            refusing.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the refusing queue");
    subscriber
        .channel
        .queue_bind(
            subscriber.queue.as_str().into(),
            exchange.as_str().into(),
            "alert.*.refused".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the refused key to the subscriber's queue");
    assert_is(&subscriber.next().await, &refused[0]);
    wait_until(DEADLINE, "only the unsendable alert to wait", || async {
        outbox_len(&test.pool).await == 1
    })
    .await;
    assert!(!publication(&test.pool, unsendable[0].alert_id).await.0);

    serving.shutdown.trigger();
    subscriber.delete_exchange().await;
    test.remove().await;
}

fn serving_binary() -> Binary<'static> {
    Binary {
        path: env!("CARGO_BIN_EXE_serving-api"),
        args: &[],
        section: "serving",
    }
}

/// The test's own database, exchange, topics and group for the binary, and `amqp_url`.
fn binary_env(settings: &Settings, amqp_url: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "FRAUD_POSTGRES__URL",
            settings.postgres.url.expose().clone(),
        ),
        ("FRAUD_RABBITMQ__URL", amqp_url.to_owned()),
        (
            "FRAUD_RABBITMQ__ALERTS_EXCHANGE",
            settings.rabbitmq.alerts_exchange.clone(),
        ),
        (
            "FRAUD_KAFKA__TRANSACTIONS_TOPIC",
            settings.kafka.transactions_topic.clone(),
        ),
        (
            "FRAUD_KAFKA__WINDOW_UPDATES_TOPIC",
            settings.kafka.window_updates_topic.clone(),
        ),
        ("FRAUD_SERVING__GROUP", settings.serving.group.clone()),
    ]
}

async fn start_binary(settings: &Settings, amqp_url: &str) -> fraud_testkit::ChildProcess {
    let env = binary_env(settings, amqp_url);
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let (process, base) = serving_binary().start("", &env);
    wait_until(DEADLINE, "the serving API to answer /healthz", || {
        let url = format!("{base}/healthz");
        async move { matches!(get_json(&url).await, Some((200, _))) }
    })
    .await;
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_written_before_a_sigkill_is_delivered_once_after_the_restart() {
    let test = ServingTest::create("relay-sigkill").await;
    let exchange = test.settings.rabbitmq.alerts_exchange.clone();
    let mut subscriber = Subscriber::bind(&exchange, "alert.#").await;

    let mut first = start_binary(&test.settings, "amqp://guest:guest@127.0.0.1:1/%2f").await;
    let raised = raise(&test.pool, &[("c-1", "sum-30m", "high")]).await;
    wait_until(
        DEADLINE,
        "the first instance to try (and fail) to publish",
        || attempts_at_least(&test.pool, &raised, 1),
    )
    .await;
    first.signal(SIGKILL);
    first.wait_for_exit(DEADLINE);
    assert_eq!(
        outbox_len(&test.pool).await,
        1,
        "the alert waits in the outbox"
    );
    assert!(!publication(&test.pool, raised[0].alert_id).await.0);

    let real_url = local_settings().rabbitmq.url.expose().clone();
    let second = start_binary(&test.settings, &real_url).await;
    let delivery = subscriber.next().await;
    assert_is(&delivery, &raised[0]);
    wait_for_empty_outbox(&test.pool).await;
    assert!(
        subscriber.rest("alert.x.sentinel").await.is_empty(),
        "delivered once"
    );
    assert!(publication(&test.pool, raised[0].alert_id).await.0);

    drop(second);
    drop(first);
    subscriber.delete_exchange().await;
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_publish_every_alert_once() {
    let test = ServingTest::create("relay-two").await;
    let exchange = test.settings.rabbitmq.alerts_exchange.clone();
    let mut subscriber = Subscriber::bind(&exchange, "alert.#").await;
    let one = test.start_serving().await;
    let two = test.start_serving().await;

    let specs: Vec<(String, &str, &str)> = (0..600)
        .map(|index| (format!("c-{index}"), "sum-30m", ["low", "high"][index % 2]))
        .collect();
    let mut raised = Vec::new();
    for chunk in specs.chunks(200) {
        let chunk: Vec<(&str, &str, &str)> = chunk
            .iter()
            .map(|(customer, rule, severity)| (customer.as_str(), *rule, *severity))
            .collect();
        raised.extend(raise(&test.pool, &chunk).await);
    }
    let received = subscriber.receive(raised.len()).await;
    wait_for_empty_outbox(&test.pool).await;
    let duplicates = subscriber.rest("alert.x.sentinel").await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for delivery in received.iter().chain(&duplicates) {
        *counts.entry(message_id(delivery)).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = raised
        .iter()
        .map(|alert| (alert.alert_id.to_string(), 1))
        .collect();
    assert_eq!(counts, expected, "every alert once, none twice");
    let relays: i64 = sqlx::query_scalar("SELECT count(DISTINCT published_by) FROM alerts")
        .fetch_one(&test.pool)
        .await
        .expect("count the relays");
    assert_eq!(relays, 2, "both relays published a share of the outbox");

    one.shutdown.trigger();
    two.shutdown.trigger();
    subscriber.delete_exchange().await;
    test.remove().await;
}
