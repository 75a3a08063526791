//! The speed layer in process against the real Kafka and Redis: random streams (out of
//! order, duplicated, spanning several days of event time) leave exactly the windows and
//! increments an independent model computes, and every touched customer gets a window
//! update.

mod common;

use std::time::Duration;

use common::{Model, SpeedTest, assert_exact, event};
use fraud_testkit::wait_until;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRng, TestRunner};

const DEADLINE: Duration = Duration::from_secs(120);

/// A random stream: customers, vendors, event times rising over `days` with disorder of
/// up to 50 minutes, ~5% duplicates (same transaction, same content), some events exactly
/// on hour boundaries and exactly 30 minutes apart.
fn stream(
    rng: &mut TestRng,
    run: &str,
    events: usize,
    days: i64,
) -> Vec<fraud_events::TransactionEvent> {
    let start = 1_767_225_600_000_i64; // 2026-01-01T00:00:00Z
    let span = days * 24 * 3_600_000;
    let mut out: Vec<fraud_events::TransactionEvent> = Vec::with_capacity(events);
    for i in 0..events {
        if i > 0 && rng.random_range(0..20) == 0 {
            let original = out[rng.random_range(0..out.len())].clone();
            out.push(original);
            continue;
        }
        let customer = format!("c{}", rng.random_range(0..12));
        let vendor = format!("v{}", rng.random_range(0..6));
        let base = start + span * i as i64 / events as i64;
        let mut ts = base - rng.random_range(0..50 * 60_000);
        match rng.random_range(0..10) {
            0 => ts -= ts.rem_euclid(3_600_000), // on the hour
            1 if !out.is_empty() => ts = out[out.len() - 1].event_time.as_millis() + 30 * 60_000,
            _ => {}
        }
        let amount = rng.random_range(1..1_000_000);
        out.push(event(
            &format!("{run}-{i}"),
            &customer,
            &vendor,
            amount,
            ts.max(start),
        ));
    }
    out
}

#[tokio::test]
async fn random_streams_give_exactly_the_model_s_windows_and_increments() {
    let test = SpeedTest::create("speed-exact", 3).await;
    let retention = test.settings.speed.retention_ms();
    let mut rng = TestRunner::new(Config::default()).new_rng();
    let run = fraud_testkit::unique_name("tx");
    let events = stream(&mut rng, &run, 3000, 3);

    // Half before the speed layer starts, half while it runs.
    let mut produced = test.produce(events[..1500].to_vec()).await;
    let shutdown = test.start().await;
    produced.extend(test.produce(events[1500..].to_vec()).await);
    let model = Model::of(&produced, retention);
    assert!(model.late > 0, "the stream exercises lateness");
    assert!(model.duplicates > 0, "the stream exercises duplicates");

    wait_until(DEADLINE, "every record to be applied", || {
        test.caught_up(&model)
    })
    .await;
    assert_exact(&test, &model, retention).await;
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}

#[tokio::test]
async fn the_trace_context_of_a_transaction_travels_to_its_window_update() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;

    let test = SpeedTest::create("speed-trace", 1).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let run = fraud_testkit::unique_name("tx");
    let now = fraud_domain::EventTime::now().as_millis();
    let transaction = event(&format!("{run}-1"), "traced", "v1", 12_345, now);
    let payload = fraud_events::encode(&transaction);
    test.producer
        .send(
            FutureRecord::to(test.topic())
                .key("traced")
                .payload(&payload)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: fraud_events::SCHEMA_VERSION_HEADER,
                            value: Some(fraud_events::SCHEMA_VERSION),
                        })
                        .insert(Header {
                            key: "traceparent",
                            value: Some(traceparent),
                        }),
                ),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("produce");
    let shutdown = test.start().await;
    let kafka = test.settings.kafka.clone();
    let topic = test.settings.kafka.window_updates_topic.clone();
    let records = fraud_testkit::poll_for(DEADLINE, "the window update", || {
        let kafka = kafka.clone();
        let topic = topic.clone();
        async move {
            let records =
                tokio::task::spawn_blocking(move || fraud_testkit::kafka::read_all(&kafka, &topic))
                    .await
                    .unwrap();
            (!records.is_empty()).then_some(records)
        }
    })
    .await;
    assert_eq!(
        records[0].header("traceparent"),
        Some(traceparent.as_bytes())
    );
    assert_eq!(records[0].key.as_deref(), Some(&b"traced"[..]));
    let update: fraud_speed_view::WindowUpdate = serde_json::from_slice(&records[0].value).unwrap();
    assert_eq!(
        (update.sum_minor, update.count, update.as_of),
        (12_345, 1, now)
    );
    let last = update
        .last_event
        .expect("the transaction that caused the update");
    assert_eq!(last.vendor_id, "v1");
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}
