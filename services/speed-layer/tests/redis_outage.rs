//! Redis unreachable when partitions are assigned, then back empty, then killed (its data
//! lost) mid-stream: the speed layer waits with its partitions paused, rebuilds from
//! Kafka each time, and ends exact.

mod common;

use std::time::Duration;

use common::{Model, SpeedTest, assert_exact, event};
use fraud_testkit::{PrivateRedis, wait_until};

const DEADLINE: Duration = Duration::from_secs(120);

fn events(run: &str, range: std::ops::Range<i64>, now: i64) -> Vec<fraud_events::TransactionEvent> {
    range
        .map(|i| {
            // Event times in the last ~20 minutes, out of order by up to 8 minutes.
            let ts = now - 20 * 60_000 + i * 200 - (i * 7919 % 480_000);
            event(
                &format!("{run}-{i}"),
                &format!("c{}", i % 40),
                &format!("v{}", i % 7),
                1 + i * 37 % 100_000,
                ts,
            )
        })
        .collect()
}

#[tokio::test]
async fn redis_down_then_back_empty_then_lost_again_ends_exact() {
    let mut redis = PrivateRedis::new();
    redis.start();
    let url = redis.url();
    let test = SpeedTest::create_with("speed-outage", 3, |settings| {
        settings.redis.url = fraud_config::Secret::new(url);
    })
    .await;
    let retention = test.settings.speed.retention_ms();
    let run = fraud_testkit::unique_name("tx");
    let now = fraud_domain::EventTime::now().as_millis();

    // Down before the speed layer is assigned its partitions: it must wait, not fail.
    redis.kill();
    let mut produced = test.produce(events(&run, 0..2000, now)).await;
    let shutdown = test.start().await;
    produced.extend(test.produce(events(&run, 2000..3000, now)).await);
    redis.start();
    let model = Model::of(&produced, retention);
    wait_until(DEADLINE, "every record to be applied", || {
        test.caught_up(&model)
    })
    .await;
    assert_exact(&test, &model, retention).await;
    let first = test.meta().await.generation;

    // Lost mid-stream: a restart without persistence.
    redis.kill();
    redis.start();
    produced.extend(test.produce(events(&run, 3000..5000, now)).await);
    let model = Model::of(&produced, retention);
    wait_until(DEADLINE, "every record to be applied again", || {
        test.caught_up(&model)
    })
    .await;
    assert_ne!(test.meta().await.generation, first, "a new generation");
    assert_exact(&test, &model, retention).await;

    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}
