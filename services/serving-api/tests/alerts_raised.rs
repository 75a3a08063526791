//! Rules evaluated on every window update: each default rule fires exactly over its
//! threshold, one alert per episode (with its outbox row, routing key and trace
//! context), the same ids on a replay, and no alert twice with two instances.
//!
//! Most cases publish window updates to the test's updates topic directly, which pins a
//! rule's input exactly; one drives the real speed layer end to end. The serving API
//! runs with an unreachable RabbitMQ, so the relay leaves every outbox row in place to be
//! checked.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ServingTest;
use fraud_config::Settings;
use fraud_domain::{CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_speed_view::AppliedEvent;
use fraud_speed_view::WindowUpdate;
use fraud_speed_view::update::UPDATE_SCHEMA_VERSION;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use serving_api::evaluate::episode::alert_id;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);
const MINUTE: i64 = 60 * 1000;

/// The test's settings with a RabbitMQ nobody listens on: outbox rows stay.
fn without_broker(test: &ServingTest) -> Settings {
    let mut settings = test.settings.clone();
    settings.rabbitmq.url = fraud_config::Secret::new("amqp://guest:guest@127.0.0.1:1/%2f".into());
    settings
}

fn update(customer: &str, as_of: i64, sum: i64, count: i64) -> WindowUpdate {
    WindowUpdate {
        customer_id: customer.to_owned(),
        as_of,
        sum_minor: sum,
        count,
        max_minor: sum,
        distinct_vendors: 1,
        events: Vec::new(),
        source_partition: 3,
        source_offset: as_of % 1_000_000,
        generation: "00000000000000aa".to_owned(),
    }
}

fn with_event(
    mut update: WindowUpdate,
    vendor: &str,
    amount: i64,
    seen_before: bool,
) -> WindowUpdate {
    update.events.push(AppliedEvent {
        offset: update.source_offset,
        transaction_id: format!("{}-{}", update.customer_id, update.as_of),
        vendor_id: vendor.to_owned(),
        amount_minor: amount,
        ts: update.as_of,
        vendor_seen_before: seen_before,
        // As from a speed layer that predates per-event windows: the window rules judge
        // the update's window at asOf.
        window: None,
    });
    update
}

/// A W3C traceparent unique to `update`.
fn traceparent(update: &WindowUpdate) -> String {
    let trace = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{}{}", update.customer_id, update.as_of).as_bytes(),
    );
    format!("00-{}-00f067aa0ba902b7-01", trace.simple())
}

/// Publishes `updates` as the speed layer does (keyed by customer, schema-version
/// [`UPDATE_SCHEMA_VERSION`]),
/// each with its own traceparent and a fixed tracestate.
async fn publish(test: &ServingTest, updates: &[WindowUpdate]) {
    for update in updates {
        let payload = serde_json::to_vec(update).unwrap();
        let parent = traceparent(update);
        let record = FutureRecord::to(&test.settings.kafka.window_updates_topic)
            .key(&update.customer_id)
            .payload(&payload)
            .headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "schema-version",
                        value: Some(UPDATE_SCHEMA_VERSION),
                    })
                    .insert(Header {
                        key: "traceparent",
                        value: Some(parent.as_str()),
                    })
                    .insert(Header {
                        key: "tracestate",
                        value: Some("vendor=test"),
                    }),
            );
        test.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("publish an update");
    }
}

/// Whether `group` has committed every record of the updates topic: every update
/// published so far is evaluated and its alerts are committed.
async fn is_caught_up(test: &ServingTest, group: &str) -> bool {
    fraud_testkit::kafka::group_caught_up(
        &test.settings.kafka,
        group,
        &test.settings.kafka.window_updates_topic,
    )
    .await
}

/// Waits until [`is_caught_up`].
async fn caught_up(test: &ServingTest, group: &str) {
    fraud_testkit::wait_until(DEADLINE, "the serving group evaluated every update", || {
        is_caught_up(test, group)
    })
    .await;
}

/// An alert as stored, with its outbox row's routing key.
#[derive(Debug, Clone)]
struct Alert {
    alert_id: Uuid,
    customer: String,
    rule: String,
    episode_start: i64,
    as_of: i64,
    body: Value,
    trace_context: Value,
    routing_key: Option<String>,
}

/// alert id, customer, rule, episode start, as of, body, trace context, routing key.
type AlertRow = (Uuid, String, String, i64, i64, Value, Value, Option<String>);

async fn alerts(test: &ServingTest) -> Vec<Alert> {
    let rows: Vec<AlertRow> = sqlx::query_as(
        "SELECT a.alert_id, a.customer_id, a.rule_id, \
                (extract(epoch FROM a.episode_start) * 1000)::int8, \
                (extract(epoch FROM a.as_of) * 1000)::int8, \
                a.body, a.trace_context, o.routing_key \
         FROM alerts a LEFT JOIN alert_outbox o USING (alert_id) ORDER BY a.seq",
    )
    .fetch_all(&test.pool)
    .await
    .expect("read alerts");
    rows.into_iter()
        .map(
            |(alert_id, customer, rule, episode_start, as_of, body, trace_context, routing_key)| {
                Alert {
                    alert_id,
                    customer,
                    rule,
                    episode_start,
                    as_of,
                    body,
                    trace_context,
                    routing_key,
                }
            },
        )
        .collect()
}

/// The (customer, rule) of every alert.
fn fired(alerts: &[Alert]) -> BTreeSet<(String, String)> {
    alerts
        .iter()
        .map(|alert| (alert.customer.clone(), alert.rule.clone()))
        .collect()
}

fn pair(customer: &str, rule: &str) -> (String, String) {
    (customer.to_owned(), rule.to_owned())
}

fn now() -> i64 {
    EventTime::now().as_millis()
}

#[tokio::test]
async fn each_default_rule_fires_just_over_its_threshold_and_not_at_it() {
    let test = ServingTest::create("alerts-thresholds").await;
    // Baselines: a p95 peak of 1000.00, so 300 % of it is 3000.00 (in a partition of
    // their own, as a batch run would make).
    sqlx::query("SELECT batch_baselines_partition(0)")
        .execute(&test.pool)
        .await
        .unwrap();
    for customer in ["base-under", "base-over"] {
        sqlx::query(
            "INSERT INTO batch_baselines (customer_id, as_of, active_days, mean_daily_minor, \
             stddev_daily_minor, p95_peak_30m_minor, max_peak_30m_minor, run_id) \
             VALUES ($1, now(), 10, 1000, 10, 100000, 120000, 0)",
        )
        .bind(customer)
        .execute(&test.pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO batch_vendors VALUES ('vendor-batch', 'v-old', now())")
        .execute(&test.pool)
        .await
        .unwrap();
    let serving = test.start_serving_with(&without_broker(&test)).await;
    let t = now();
    let updates = vec![
        update("sum-under", t, 500_000, 1),
        update("sum-over", t, 500_001, 1),
        update("count-under", t, 2_000, 20),
        update("count-over", t, 2_100, 21),
        update("base-under", t, 300_000, 2),
        update("base-over", t, 300_001, 2),
        with_event(
            update("vendor-under", t, 100_000, 1),
            "v-new",
            100_000,
            false,
        ),
        with_event(
            update("vendor-over", t, 100_001, 1),
            "v-new",
            100_001,
            false,
        ),
        with_event(
            update("vendor-batch", t, 100_001, 1),
            "v-old",
            100_001,
            false,
        ),
        with_event(
            update("vendor-window", t, 100_101, 2),
            "v-seen",
            100_001,
            true,
        ),
    ];
    publish(&test, &updates).await;
    caught_up(&test, &test.settings.serving.group).await;

    let alerts = alerts(&test).await;
    assert_eq!(
        fired(&alerts),
        BTreeSet::from([
            pair("sum-over", "sum-30m-over-limit"),
            pair("count-over", "count-30m-over-limit"),
            pair("base-over", "sum-30m-over-baseline-peak"),
            pair("vendor-over", "new-vendor-large-amount"),
        ]),
        "{alerts:#?}"
    );
    assert_eq!(alerts.len(), 4);
    let expected = [
        ("sum-over", "high", "5000.01", "5000.00"),
        ("base-over", "medium", "3000.01", "3000.00"),
        ("vendor-over", "high", "1000.01", "1000.00"),
    ];
    for alert in &alerts {
        let body = &alert.body;
        let severity = body["severity"].as_str().unwrap();
        assert_eq!(
            alert.routing_key.as_deref(),
            Some(format!("alert.{severity}.{}", alert.rule).as_str()),
            "the outbox row of {alert:?}"
        );
        assert_eq!(alert.alert_id, alert_id(&alert.customer, &alert.rule, t));
        assert_eq!(body["alertId"], alert.alert_id.to_string());
        assert_eq!(body["customerId"], alert.customer);
        assert_eq!(body["rule"], alert.rule);
        assert_eq!(body["ruleVersion"], 0);
        let as_of = EventTime::from_millis(t).unwrap().to_rfc3339();
        assert_eq!(body["asOf"], as_of);
        assert_eq!(body["episodeStart"], as_of);
        assert!(EventTime::parse_rfc3339(body["raisedAt"].as_str().unwrap()).is_ok());
        assert_eq!((alert.as_of, alert.episode_start), (t, t));
        assert_eq!(body["sourcePartition"], 3);
        assert_eq!(body["sourceOffset"], t % 1_000_000);
        let published = updates
            .iter()
            .find(|update| update.customer_id == alert.customer)
            .unwrap();
        assert_eq!(
            alert.trace_context,
            serde_json::json!({"traceparent": traceparent(published), "tracestate": "vendor=test"})
        );
        assert_eq!(
            body["window"]["sum"],
            Money::from_minor(published.sum_minor).to_string()
        );
        assert_eq!(body["window"]["count"], published.count);
        assert_eq!(body["window"]["distinctVendors"], 1);
        if let Some(&(_, severity, observed, threshold)) = expected
            .iter()
            .find(|(customer, ..)| *customer == alert.customer)
        {
            assert_eq!(body["severity"], severity);
            assert_eq!(body["observed"], observed);
            assert_eq!(body["threshold"], threshold);
        }
    }
    let count = alerts
        .iter()
        .find(|alert| alert.customer == "count-over")
        .unwrap();
    assert_eq!(
        (&count.body["observed"], &count.body["threshold"]),
        (&Value::from(21), &Value::from(20))
    );
    assert_eq!(count.body["kind"], "window_count_over");
    assert_eq!(count.body["event"], Value::Null);
    let vendor = alerts
        .iter()
        .find(|alert| alert.customer == "vendor-over")
        .unwrap();
    assert_eq!(
        vendor.body["event"],
        serde_json::json!({
            "transactionId": format!("vendor-over-{t}"),
            "vendorId": "v-new",
            "amount": "1000.01",
            "ts": EventTime::from_millis(t).unwrap().to_rfc3339(),
            "knownVendor": false,
        })
    );
    let episodes: i64 = sqlx::query_scalar("SELECT count(*) FROM rule_episodes")
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(episodes, 4);

    serving.shutdown.trigger();
    test.remove().await;
}

#[tokio::test]
async fn one_alert_per_episode_and_a_replay_raises_nothing_new() {
    let test = ServingTest::create("alerts-episodes").await;
    let serving = test.start_serving_with(&without_broker(&test)).await;
    let t = now() - 3 * 60 * MINUTE;
    let over = |as_of| update("episodic", as_of, 600_000, 3);
    // Firing at t, t + 10 min and t + 40 min (gaps of at most 30 min: one episode), a
    // quiet update, then firing 30 min + 1 ms after the last firing: a second episode,
    // extended once more.
    let second = t + 70 * MINUTE + 1;
    let updates = [
        over(t),
        over(t + 10 * MINUTE),
        over(t + 40 * MINUTE),
        update("episodic", t + 50 * MINUTE, 100, 1),
        over(second),
        over(second + MINUTE),
    ];
    publish(&test, &updates[..3]).await;
    caught_up(&test, &test.settings.serving.group).await;
    let first_alerts = alerts(&test).await;
    assert_eq!(first_alerts.len(), 1, "{first_alerts:#?}");
    publish(&test, &updates[3..]).await;
    caught_up(&test, &test.settings.serving.group).await;

    let raised = alerts(&test).await;
    let ids: Vec<Uuid> = raised.iter().map(|alert| alert.alert_id).collect();
    assert_eq!(
        ids,
        vec![
            alert_id("episodic", "sum-30m-over-limit", t),
            alert_id("episodic", "sum-30m-over-limit", second),
        ],
        "{raised:#?}"
    );
    assert_eq!(raised[0].alert_id, first_alerts[0].alert_id);
    assert_eq!((raised[1].episode_start, raised[1].as_of), (second, second));
    assert!(
        raised
            .iter()
            .all(|alert| alert.routing_key.as_deref() == Some("alert.high.sum-30m-over-limit"))
    );
    assert_eq!(
        raised[1].trace_context["traceparent"],
        traceparent(&updates[4])
    );
    let episode: (i64, i64, Uuid) = sqlx::query_as(
        "SELECT (extract(epoch FROM started_at) * 1000)::int8, \
                (extract(epoch FROM last_fired_at) * 1000)::int8, alert_id \
         FROM rule_episodes WHERE customer_id = 'episodic' AND rule_id = 'sum-30m-over-limit'",
    )
    .fetch_one(&test.pool)
    .await
    .unwrap();
    assert_eq!(episode, (second, second + MINUTE, ids[1]));

    // A second instance in a new group reads every update from the start, beside the
    // first: nothing new, the same ids.
    let mut replaying = without_broker(&test);
    replaying.serving.group = format!("{}-replay", test.settings.serving.group);
    let replay = test.start_serving_with(&replaying).await;
    caught_up(&test, &replaying.serving.group).await;
    // A restart of the first instance (in its own group) too.
    serving.shutdown.trigger();
    serving.shutdown.wait().await.expect("a clean stop");
    let restarted = test.start_serving_with(&without_broker(&test)).await;
    publish(&test, &[over(second + 2 * MINUTE)]).await;
    caught_up(&test, &test.settings.serving.group).await;
    caught_up(&test, &replaying.serving.group).await;
    let after = alerts(&test).await;
    assert_eq!(
        after.iter().map(|alert| alert.alert_id).collect::<Vec<_>>(),
        ids,
        "{after:#?}"
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_outbox")
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(outbox, 2);

    replay.shutdown.trigger();
    restarted.shutdown.trigger();
    test.remove().await;
}

#[tokio::test]
async fn two_instances_in_one_group_raise_no_alert_twice() {
    let test = ServingTest::create("alerts-two-instances").await;
    let settings = without_broker(&test);
    let first = test.start_serving_with(&settings).await;
    let t = now() - 60 * MINUTE;
    let customers: Vec<String> = (0..40).map(|n| format!("pair-{n}")).collect();
    // Three firing updates a customer, one episode each; the second instance joins (a
    // rebalance) while they are being published.
    let round = |step: i64| -> Vec<WindowUpdate> {
        customers
            .iter()
            .map(|customer| update(customer, t + step * MINUTE, 700_000, 2))
            .collect()
    };
    publish(&test, &round(0)).await;
    let second = test.start_serving_with(&settings).await;
    // Both are members, each with a partition of its own, before the rest comes (an
    // empty assignment encodes in 10 bytes; one with a partition of the topic in more).
    fraud_testkit::wait_until(DEADLINE, "two members sharing the partitions", || {
        let brokers = test.settings.kafka.brokers.clone();
        let group = test.settings.serving.group.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create()
                    .expect("a client");
                let groups = consumer
                    .fetch_group_list(Some(&group), Duration::from_secs(5))
                    .expect("the group");
                groups.groups().first().is_some_and(|info| {
                    info.state() == "Stable"
                        && info.members().len() == 2
                        && info
                            .members()
                            .iter()
                            .all(|member| member.assignment().is_some_and(|bytes| bytes.len() > 16))
                })
            })
            .await
            .unwrap()
        }
    })
    .await;
    publish(&test, &round(1)).await;
    publish(&test, &round(2)).await;
    caught_up(&test, &test.settings.serving.group).await;

    let raised = alerts(&test).await;
    assert_eq!(raised.len(), customers.len(), "{raised:#?}");
    let expected: BTreeSet<Uuid> = customers
        .iter()
        .map(|customer| alert_id(customer, "sum-30m-over-limit", t))
        .collect();
    let ids: BTreeSet<Uuid> = raised.iter().map(|alert| alert.alert_id).collect();
    assert_eq!(ids, expected);

    first.shutdown.trigger();
    second.shutdown.trigger();
    test.remove().await;
}

fn event(
    transaction: &str,
    customer: &str,
    vendor: &str,
    amount: i64,
    ts: i64,
) -> TransactionEvent {
    TransactionEvent {
        transaction_id: TransactionId::parse(transaction).unwrap(),
        customer_id: CustomerId::parse(customer).unwrap(),
        vendor_id: VendorId::parse(vendor).unwrap(),
        amount: Money::from_minor(amount),
        currency: fraud_domain::Currency::EUR,
        event_time: EventTime::from_millis(ts).unwrap(),
        ingest_time: EventTime::from_millis(ts).unwrap(),
    }
}

#[tokio::test]
async fn through_the_speed_layer_a_vendor_used_earlier_in_the_window_is_known() {
    let test = ServingTest::create("alerts-speed").await;
    let speed = test.start_speed().await;
    let serving = test.start_serving_with(&without_broker(&test)).await;
    let t = now() - 5 * MINUTE;
    let produced = test
        .produce(&[
            // Used v1 a minute earlier: a large amount there is not at a new vendor.
            event("seen-1", "seen", "v1", 1_000, t),
            event("seen-2", "seen", "v1", 150_000, t + MINUTE),
            // Never used v1 before: it is.
            event("fresh-1", "fresh", "v0", 1_000, t),
            event("fresh-2", "fresh", "v1", 150_000, t + MINUTE),
            // 5000.01 in the window (the large amount at a vendor used before).
            event("sum-1", "summer", "v1", 90_000, t),
            event("sum-2", "summer", "v1", 410_001, t + MINUTE),
        ])
        .await;
    assert_eq!(produced.len(), 6);
    // The speed layer publishes an update per customer and batch; wait for the last
    // event's update of each customer, then for the serving group to have evaluated it.
    let kafka = test.settings.kafka.clone();
    let topic = test.settings.kafka.window_updates_topic.clone();
    let updates: Vec<WindowUpdate> =
        fraud_testkit::poll_for(DEADLINE, "every customer's last update", || {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            async move {
                let records = tokio::task::spawn_blocking(move || {
                    fraud_testkit::kafka::read_all(&kafka, &topic)
                })
                .await
                .unwrap();
                let updates: Vec<WindowUpdate> = records
                    .iter()
                    .map(|record| serde_json::from_slice(&record.value).unwrap())
                    .collect();
                let done = ["seen", "fresh", "summer"].iter().all(|customer| {
                    updates
                        .iter()
                        .any(|update| update.customer_id == *customer && update.as_of == t + MINUTE)
                });
                done.then_some(updates)
            }
        })
        .await;
    let last = |customer: &str| {
        updates
            .iter()
            .filter(|update| update.customer_id == customer && update.as_of == t + MINUTE)
            .find_map(|update| update.events.last().cloned())
            .unwrap()
    };
    assert!(last("seen").vendor_seen_before);
    assert!(!last("fresh").vendor_seen_before);
    caught_up(&test, &test.settings.serving.group).await;

    let raised = alerts(&test).await;
    assert_eq!(
        fired(&raised),
        BTreeSet::from([
            pair("fresh", "new-vendor-large-amount"),
            pair("summer", "sum-30m-over-limit"),
        ]),
        "{raised:#?}"
    );
    let summer = raised
        .iter()
        .find(|alert| alert.customer == "summer")
        .unwrap();
    assert_eq!(summer.body["observed"], "5000.01");
    assert_eq!(summer.body["window"]["count"], 2);
    assert_eq!(summer.episode_start, t + MINUTE);

    serving.shutdown.trigger();
    speed.trigger();
    test.remove().await;
}

/// Under load a customer's records share a speed batch, and its one update lists them
/// all: a large amount at a new vendor followed, in the same batch, by a small purchase
/// still raises the new-vendor alert, about the large one. A large amount at a vendor
/// used earlier in the same batch raises none.
#[tokio::test]
async fn a_new_vendor_large_amount_followed_in_the_same_batch_still_raises_its_alert() {
    // A speed batch waits 3 s after its first record: records produced together share one.
    let test = ServingTest::create_with("alerts-one-batch", |settings| {
        settings.speed.max_batch_wait_ms = 3_000;
    })
    .await;
    let speed = test.start_speed().await;
    let serving = test.start_serving_with(&without_broker(&test)).await;
    let t = now() - 5 * MINUTE;
    let produced = test
        .produce(&[
            // 1500.00 at a vendor never used, then 10.00 elsewhere.
            event("burst-1", "burst", "v-new", 150_000, t),
            event("burst-2", "burst", "v-usual", 1_000, t + MINUTE),
            // 1500.00 at a vendor used a minute earlier in the same batch.
            event("known-1", "known", "v1", 1_000, t),
            event("known-2", "known", "v1", 150_000, t + MINUTE),
            event("known-3", "known", "v2", 500, t + 2 * MINUTE),
        ])
        .await;
    assert_eq!(produced.len(), 5);
    let kafka = test.settings.kafka.clone();
    let topic = test.settings.kafka.window_updates_topic.clone();
    let updates: Vec<WindowUpdate> =
        fraud_testkit::poll_for(DEADLINE, "both customers' updates", || {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            async move {
                let records = tokio::task::spawn_blocking(move || {
                    fraud_testkit::kafka::read_all(&kafka, &topic)
                })
                .await
                .unwrap();
                let updates: Vec<WindowUpdate> = records
                    .iter()
                    .map(|record| {
                        assert_eq!(
                            record.header("schema-version"),
                            Some(UPDATE_SCHEMA_VERSION.as_bytes())
                        );
                        serde_json::from_slice(&record.value).unwrap()
                    })
                    .collect();
                let done = [("burst", t + MINUTE), ("known", t + 2 * MINUTE)]
                    .iter()
                    .all(|(customer, as_of)| {
                        updates
                            .iter()
                            .any(|update| update.customer_id == *customer && update.as_of == *as_of)
                    });
                done.then_some(updates)
            }
        })
        .await;
    // The premise: one update per customer, listing every record in order.
    let listed = |customer: &str| -> Vec<Vec<(String, bool)>> {
        updates
            .iter()
            .filter(|update| update.customer_id == customer)
            .map(|update| {
                update
                    .events
                    .iter()
                    .map(|event| (event.transaction_id.clone(), event.vendor_seen_before))
                    .collect()
            })
            .collect()
    };
    let seen = |id: &str, before: bool| (id.to_owned(), before);
    assert_eq!(
        listed("burst"),
        vec![vec![seen("burst-1", false), seen("burst-2", false)]]
    );
    assert_eq!(
        listed("known"),
        vec![vec![
            seen("known-1", false),
            seen("known-2", true),
            seen("known-3", false)
        ]]
    );
    caught_up(&test, &test.settings.serving.group).await;

    let raised = alerts(&test).await;
    assert_eq!(
        fired(&raised),
        BTreeSet::from([pair("burst", "new-vendor-large-amount")]),
        "{raised:#?}"
    );
    assert_eq!(raised.len(), 1);
    let alert = &raised[0];
    // The episode starts at the event's instant, not at the batch's last (asOf), so the
    // id does not depend on how the records were batched.
    assert_eq!((alert.episode_start, alert.as_of), (t, t));
    assert_eq!(
        alert.alert_id,
        alert_id("burst", "new-vendor-large-amount", t)
    );
    assert_eq!(
        alert.routing_key.as_deref(),
        Some("alert.high.new-vendor-large-amount")
    );
    assert_eq!(alert.body["observed"], "1500.00");
    assert_eq!(alert.body["threshold"], "1000.00");
    assert_eq!(
        alert.body["event"],
        serde_json::json!({
            "transactionId": "burst-1",
            "vendorId": "v-new",
            "amount": "1500.00",
            "ts": EventTime::from_millis(t).unwrap().to_rfc3339(),
            "knownVendor": false,
        })
    );
    // It points at the large purchase's record, not at the batch's last one.
    assert_eq!(alert.body["sourcePartition"], produced[0].0);
    assert_eq!(alert.body["sourceOffset"], produced[0].1);
    // Its window is the one at its instant: the large purchase alone.
    assert_eq!(alert.body["window"]["count"], 1);
    assert_eq!(alert.body["window"]["sum"], "1500.00");

    serving.shutdown.trigger();
    speed.trigger();
    test.remove().await;
}

/// The customer "crossing"'s records (t = the first's event time): 3000.00, then
/// 2500.00 20 minutes later (the window holds 5500.00: over 5000.00), then 100.00 at
/// t + 31 min, when the first has left the window (2600.00). The batch layer knows the
/// vendor, so no new-vendor alert.
fn crossing_records(t: i64) -> Vec<TransactionEvent> {
    vec![
        event("crossing-1", "crossing", "v1", 300_000, t),
        event("crossing-2", "crossing", "v1", 250_000, t + 20 * MINUTE),
        event("crossing-3", "crossing", "v1", 10_000, t + 31 * MINUTE),
    ]
}

/// Runs the speed layer and the serving API over [`crossing_records`], all in one speed
/// batch (`batched`) or one record per batch; returns the alerts raised, the customer's
/// updates and where the records landed.
async fn crossing(batched: bool, t: i64) -> (Vec<Alert>, Vec<WindowUpdate>, Vec<(i32, i64)>) {
    let test = ServingTest::create_with("alerts-crossing", |settings| {
        if batched {
            // A speed batch waits 3 s after its first record: records produced together
            // share one.
            settings.speed.max_batch_wait_ms = 3_000;
        }
    })
    .await;
    sqlx::query("INSERT INTO batch_vendors VALUES ('crossing', 'v1', now())")
        .execute(&test.pool)
        .await
        .unwrap();
    let speed = test.start_speed().await;
    let serving = test.start_serving_with(&without_broker(&test)).await;
    let updates_until = |as_of: i64| {
        let kafka = test.settings.kafka.clone();
        let topic = test.settings.kafka.window_updates_topic.clone();
        fraud_testkit::poll_for(DEADLINE, "the customer's update", move || {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            async move {
                let records = tokio::task::spawn_blocking(move || {
                    fraud_testkit::kafka::read_all(&kafka, &topic)
                })
                .await
                .unwrap();
                let updates: Vec<WindowUpdate> = records
                    .iter()
                    .map(|record| serde_json::from_slice(&record.value).unwrap())
                    .collect();
                updates
                    .iter()
                    .any(|update| update.customer_id == "crossing" && update.as_of == as_of)
                    .then_some(updates)
            }
        })
    };
    let records = crossing_records(t);
    let mut produced = Vec::new();
    let updates = if batched {
        produced = test.produce(&records).await;
        updates_until(t + 31 * MINUTE).await
    } else {
        let mut updates = Vec::new();
        for record in &records {
            produced.extend(test.produce(std::slice::from_ref(record)).await);
            updates = updates_until(record.event_time.as_millis()).await;
        }
        updates
    };
    test.caught_up().await;
    let raised = alerts(&test).await;
    serving.shutdown.trigger();
    speed.trigger();
    test.remove().await;
    (raised, updates, produced)
}

/// A window that crosses 5000.00 at a middle record of one speed batch and is back under
/// it at the batch's last (the oldest record left the window) raises its alert, about
/// the crossing instant; the same records one per batch raise the same alert, same id.
#[tokio::test]
async fn a_window_over_the_limit_only_inside_one_speed_batch_raises_its_alert() {
    let t = now() - 35 * MINUTE;
    let crossed = t + 20 * MINUTE;
    let rule = "sum-30m-over-limit";
    let (raised, updates, produced) = crossing(true, t).await;
    // The premise: one update for the three records, whose own window (at asOf) is
    // under the limit, with each record's window listed.
    let update = match updates.as_slice() {
        [update] => update,
        other => panic!("one update expected: {other:#?}"),
    };
    assert_eq!((update.as_of, update.sum_minor), (t + 31 * MINUTE, 260_000));
    let sums: Vec<Option<i64>> = update
        .events
        .iter()
        .map(|event| event.window.map(|window| window.sum_minor))
        .collect();
    assert_eq!(sums, vec![Some(300_000), Some(550_000), Some(260_000)]);

    assert_eq!(
        fired(&raised),
        BTreeSet::from([pair("crossing", rule)]),
        "{raised:#?}"
    );
    assert_eq!(raised.len(), 1);
    let alert = &raised[0];
    assert_eq!(alert.alert_id, alert_id("crossing", rule, crossed));
    assert_eq!((alert.episode_start, alert.as_of), (crossed, crossed));
    let at = EventTime::from_millis(crossed).unwrap().to_rfc3339();
    let body = &alert.body;
    assert_eq!(body["asOf"], at);
    assert_eq!(body["episodeStart"], at);
    assert_eq!(
        (&body["observed"], &body["threshold"]),
        (&Value::from("5500.00"), &Value::from("5000.00"))
    );
    assert_eq!(
        body["window"],
        serde_json::json!({"sum": "5500.00", "count": 2, "max": "3000.00", "distinctVendors": 1})
    );
    assert_eq!(
        body["event"],
        serde_json::json!({
            "transactionId": "crossing-2",
            "vendorId": "v1",
            "amount": "2500.00",
            "ts": at,
            "knownVendor": true,
        })
    );
    assert_eq!(body["sourcePartition"], produced[1].0);
    assert_eq!(body["sourceOffset"], produced[1].1);

    // One record per batch: three updates, and the same alert.
    let (single, updates, _) = crossing(false, t).await;
    assert_eq!(updates.len(), 3, "{updates:#?}");
    assert_eq!(single.len(), 1, "{single:#?}");
    assert_eq!(single[0].alert_id, alert.alert_id);
    let without_raised_at = |body: &Value| {
        let mut body = body.clone();
        body.as_object_mut().unwrap().remove("raisedAt");
        body
    };
    assert_eq!(without_raised_at(&single[0].body), without_raised_at(body));
}

#[tokio::test]
async fn an_undecodable_update_is_counted_and_skipped() {
    let test = ServingTest::create("alerts-undecodable").await;
    let serving = test.start_serving_with(&without_broker(&test)).await;
    let topic = test.settings.kafka.window_updates_topic.clone();
    let valid = serde_json::to_vec(&update("garbled", now(), 1, 1)).unwrap();
    // Version 1 is a version this reader no longer knows.
    for (payload, version) in [
        (&b"{not json"[..], UPDATE_SCHEMA_VERSION),
        (&valid[..], "1"),
    ] {
        let record = FutureRecord::to(&topic)
            .key("garbled")
            .payload(payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: "schema-version",
                value: Some(version),
            }));
        test.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
    // Behind them, in the same partition, an update that fires.
    let t = now();
    publish(&test, &[update("garbled", t, 500_001, 1)]).await;
    caught_up(&test, &test.settings.serving.group).await;
    let raised = alerts(&test).await;
    assert_eq!(
        raised
            .iter()
            .map(|alert| alert.alert_id)
            .collect::<Vec<_>>(),
        vec![alert_id("garbled", "sum-30m-over-limit", t)]
    );
    let (status, metrics) = fraud_testkit::get_text(&format!("{}/metrics", serving.base))
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    // Only this test publishes undecodable updates in this process.
    assert!(
        metrics.contains("serving_window_updates_total{outcome=\"undecodable\"} 2\n"),
        "{metrics}"
    );
    serving.shutdown.trigger();
    test.remove().await;
}

/// The value of the counter `name` in `/metrics` (0 when absent).
async fn counter(base: &str, name: &str) -> u64 {
    let (_, metrics) = fraud_testkit::get_text(&format!("{base}/metrics"))
        .await
        .expect("metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_postgres_failure_retries_the_same_updates_until_they_are_judged() {
    let test = ServingTest::create("alerts-retry").await;
    let serving = test.start_serving_with(&without_broker(&test)).await;
    // Every insert into alerts fails until the trigger is dropped.
    for statement in [
        "CREATE FUNCTION refuse_alerts() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'alerts refused by the test'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON alerts \
         FOR EACH ROW EXECUTE FUNCTION refuse_alerts()",
    ] {
        sqlx::query(statement).execute(&test.pool).await.unwrap();
    }
    let retries_before = counter(&serving.base, "serving_evaluation_retries_total").await;
    let t = now();
    publish(
        &test,
        &[
            update("retried", t, 500_001, 1),
            update("retried", t + MINUTE, 500_002, 1),
        ],
    )
    .await;
    fraud_testkit::wait_until(DEADLINE, "two retries", || async {
        counter(&serving.base, "serving_evaluation_retries_total").await >= retries_before + 2
    })
    .await;
    // Nothing judged, nothing committed, nothing skipped.
    assert!(alerts(&test).await.is_empty());
    let episodes: i64 = sqlx::query_scalar("SELECT count(*) FROM rule_episodes")
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(episodes, 0);
    assert!(!is_caught_up(&test, &test.settings.serving.group).await);

    sqlx::query("DROP TRIGGER refuse ON alerts")
        .execute(&test.pool)
        .await
        .unwrap();
    caught_up(&test, &test.settings.serving.group).await;
    let raised = alerts(&test).await;
    assert_eq!(
        raised
            .iter()
            .map(|alert| alert.alert_id)
            .collect::<Vec<_>>(),
        vec![alert_id("retried", "sum-30m-over-limit", t)]
    );
    assert_eq!(
        raised[0].routing_key.as_deref(),
        Some("alert.high.sum-30m-over-limit")
    );
    serving.shutdown.trigger();
    test.remove().await;
}
