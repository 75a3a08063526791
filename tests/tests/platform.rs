//! The user's path through the real service binaries (`ingest`, `speed-layer`,
//! `serving-api`, and `batch-layer run`), in namespaces of the test's own: transactions
//! posted one by one and in a batch (with an idempotent replay and a conflicting reuse
//! of an id), risk read from the speed layer alone, the alerts they caused received on a
//! bound queue and on the Server-Sent Event stream with the same ids, the lake holding
//! every accepted event once, a batch run, and merged figures (window, today, last 24
//! hours, `/daily`, `batch_daily`) equal to an exact recomputation over what was posted.

use std::collections::BTreeSet;
use std::time::Duration;

use platform_tests::platform::Platform;
use platform_tests::reference::{self, Event, HOUR_MS, LakeRow, instant};
use serde_json::{Value, json};

const MINUTE: i64 = 60_000;
const DEADLINE: Duration = Duration::from_secs(60);

fn event(id: &str, customer: &str, vendor: &str, amount: i64, ts: i64) -> Event {
    Event {
        id: id.to_owned(),
        customer: customer.to_owned(),
        vendor: vendor.to_owned(),
        amount,
        ts,
    }
}

fn body(event: &Event) -> Value {
    json!({
        "transactionId": event.id,
        "customerId": event.customer,
        "vendorId": event.vendor,
        "transactionSum": reference::money(event.amount),
        "ts": instant(event.ts),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_posted_to_ingest_come_back_as_risk_alerts_lake_rows_and_merged_figures() {
    let platform = Platform::start("platform-e2e").await;
    let mut queue = platform.subscribe("alert.#").await;
    let mut stream = platform.alert_stream("lastEventId=0").await;

    // The batch watermark will be the start of the previous hour: events on both sides
    // of it (one exactly on it, which the batch counts), all within the last 2 hours.
    let now = reference::millis(&instant(chrono::Utc::now().timestamp_millis()));
    let watermark = reference::hour_of(now) - HOUR_MS;
    let a = "cust-a";
    let b = "4716123412341234567"; // a card number: more than 2^53, kept digit for digit
    let posted = vec![
        event("a-1", a, "shop-1", 10_000, watermark - 100 * MINUTE),
        // A large amount at a vendor `a` never used: new-vendor-large-amount.
        event("a-2", a, "shop-2", 400_000, watermark - 10 * MINUTE),
        // 5500.00 in 30 minutes: sum-30m-over-limit.
        event("a-3", a, "shop-1", 150_000, watermark - 5 * MINUTE),
        event("a-4", a, "shop-1", 1_000, watermark),
        // Long after the episode, a vendor `a` knows, and under every limit.
        event("a-5", a, "shop-1", 150_000, now - 2 * MINUTE),
        event("b-1", b, "shop-9", 1_234, watermark - 30 * MINUTE),
        event("b-2", b, "shop-8", 99, watermark + MINUTE),
        event("b-3", b, "shop-9", 5_001, now - MINUTE),
    ];

    // One transaction alone, then batches, each posted once the one before is
    // evaluated: the speed layer publishes one window update per customer and applied
    // batch, at the customer's latest event, so the rules see every window below only
    // when each request is a batch of its own. `a-2`, judged by the event rule, is the
    // last of `a`'s events in its request.
    let (status, answer) = platform.post_transactions(&body(&posted[0])).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"transactionId": "a-1", "replayed": false}));
    for (ids, accepted) in [
        (&["b-1", "a-2"][..], 2),
        (&["a-3", "a-4", "b-2"], 3),
        (&["a-5", "b-3"], 2),
    ] {
        platform.caught_up(DEADLINE).await;
        let batch: Vec<Value> = posted
            .iter()
            .filter(|event| ids.contains(&event.id.as_str()))
            .map(body)
            .collect();
        let (status, answer) = platform.post_transactions(&Value::Array(batch)).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["accepted"], accepted, "{answer}");
        assert_eq!(answer["replayed"], 0, "{answer}");
    }
    // The same transaction again is an idempotent replay; other content under its id
    // is a conflict; neither is counted again anywhere below.
    let (status, answer) = platform.post_transactions(&body(&posted[1])).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"transactionId": "a-2", "replayed": true}));
    let mut conflicting = body(&posted[1]);
    conflicting["transactionSum"] = json!("4000.01");
    let (status, answer) = platform.post_transactions(&conflicting).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(platform.transactions_in_kafka().await, posted.len() as i64);

    // The alerts they caused: the same two, with the same ids, on the queue and on the
    // stream.
    let deliveries = queue.receive(2).await;
    let mut on_queue: Vec<(String, String, String)> = deliveries
        .iter()
        .map(|delivery| {
            let alert: Value = serde_json::from_slice(&delivery.data).expect("a JSON alert");
            assert_eq!(
                delivery.routing_key.as_str(),
                format!(
                    "alert.{}.{}",
                    alert["severity"].as_str().unwrap(),
                    alert["rule"].as_str().unwrap()
                ),
            );
            assert_eq!(fraud_testkit::amqp::message_id(delivery), alert["alertId"]);
            (
                alert["rule"].as_str().unwrap().to_owned(),
                alert["customerId"].as_str().unwrap().to_owned(),
                alert["alertId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    on_queue.sort();
    let rules: Vec<(&str, &str)> = on_queue
        .iter()
        .map(|(rule, customer, _)| (rule.as_str(), customer.as_str()))
        .collect();
    assert_eq!(
        rules,
        [("new-vendor-large-amount", a), ("sum-30m-over-limit", a)],
        "{on_queue:?}"
    );
    let mut on_stream = Vec::new();
    for _ in 0..2 {
        let event = stream.next_event().await.expect("the stream is open");
        assert_eq!(event.event, "alert");
        on_stream.push((
            event.data["rule"].as_str().unwrap().to_owned(),
            event.data["customerId"].as_str().unwrap().to_owned(),
            event.data["alertId"].as_str().unwrap().to_owned(),
        ));
    }
    on_stream.sort();
    assert_eq!(on_stream, on_queue);

    // Risk and /daily from the speed layer alone (no batch run yet) are exact at their
    // asOf.
    platform.caught_up(DEADLINE).await;
    let days = (
        reference::date(reference::day_of(now) - reference::DAY_MS),
        reference::date(reference::day_of(now)),
    );
    let days = (days.0.as_str(), days.1.as_str());
    for customer in [a, b] {
        let risk = platform.check_customer(customer, &posted, None, days).await;
        if customer == a {
            assert_eq!(risk["window30m"]["sum"], "1500.00", "{risk}");
        }
    }

    // The lake holds every accepted event once, exactly as posted.
    platform.lake_complete(DEADLINE).await;
    let lake = platform.lake_rows();
    let expected: BTreeSet<LakeRow> = posted.iter().map(Event::lake_row).collect();
    assert_eq!(lake.len(), posted.len(), "{lake:?}");
    assert_eq!(lake.into_iter().collect::<BTreeSet<_>>(), expected);

    // A batch run at the watermark; the merged figures agree with the recomputation.
    let run = platform.run_batch(watermark).await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("published: watermark {}", instant(watermark))),
        "{run:?}"
    );
    assert_eq!(
        reference::batch_daily(&platform.pool).await,
        reference::daily_all(&posted, watermark)
    );
    for customer in [a, b] {
        platform
            .check_customer(customer, &posted, Some(watermark), days)
            .await;
    }

    // The history holds the two alerts and nothing else; nothing more was delivered.
    let history = platform.alert_history().await;
    let mut listed: Vec<&str> = history
        .iter()
        .map(|alert| alert["alertId"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut delivered: Vec<&str> = on_queue.iter().map(|(_, _, id)| id.as_str()).collect();
    delivered.sort_unstable();
    assert_eq!(listed, delivered);
    assert!(queue.rest("alert.x.sentinel").await.is_empty());

    queue.delete_exchange().await;
    platform.stop().await;
}
