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
