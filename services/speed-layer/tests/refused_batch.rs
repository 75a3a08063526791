//! A batch Redis refuses holds back every batch behind it: were a later batch applied
//! first, a customer's later records would reach Redis before its earlier ones, and the
//! offset fence would then skip the earlier ones as replayed. Here the first batch
//! holds a customer whose state the writer cannot read, so every try of it fails;
//! nothing behind it may be applied meanwhile, and once the state is readable again
//! everything is, exactly. (Checked against a pipeline that let later batches go on
//! after a failure: this test failed.)

mod common;

use std::time::Duration;

use common::{Model, SpeedTest, assert_exact, counter, event, start_in_process};
use fraud_speed_view::customer_key;
use fraud_testkit::{get_text, wait_until};
use redis::AsyncCommands;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_refused_batch_is_applied_before_every_batch_behind_it() {
    // Small batches, so that many are waiting behind the first.
    let test = SpeedTest::create_with("speed-refused", 1, |settings| {
        settings.speed.max_batch_records = 10;
    })
    .await;
    let retention = test.settings.speed.retention_ms();
    let run = fraud_testkit::unique_name("tx");
    let now = fraud_domain::EventTime::now().as_millis();

    // A state the writer cannot read fails every batch that holds its customer: the
    // first batch, which also holds records of every other customer.
    let poisoned = customer_key(&test.settings.redis.key_prefix, "poisoned");
    let mut redis = redis::Client::open(test.settings.redis.url.expose().to_owned())
        .expect("a redis client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let () = redis
        .set(&poisoned, "not a state")
        .await
        .expect("plant the unreadable state");
    let mut events = vec![event(
        &format!("{run}-p"),
        "poisoned",
        "v0",
        500,
        now - 60_000,
    )];
    events.extend((0..400).map(|i| {
        event(
            &format!("{run}-{i}"),
            &format!("c{}", i % 4),
            &format!("v{}", i % 3),
            100 + i,
            now - 20 * 60_000 + i * 1_000,
        )
    }));
    let produced = test.produce(events).await;
    let (shutdown, port) = start_in_process(&test.settings).await;

    // The first batch is refused and retried (100, 200, 400 ms apart): long enough for
    // the batches behind it to have been applied, were they not held back.
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    wait_until(
        DEADLINE,
        "the refused batch to be retried three times",
        || async {
            match get_text(&metrics).await {
                Some((200, text)) => counter(&text, "speed_retries_total") >= 3,
                _ => false,
            }
        },
    )
    .await;
    for customer in ["c0", "c1", "c2", "c3"] {
        assert_eq!(
            test.state(customer).await,
            None,
            "{customer}: nothing behind the refused batch is applied before it"
        );
    }

    // Readable again: everything is applied, exactly.
    let () = redis
        .del(&poisoned)
        .await
        .expect("remove the unreadable state");
    let model = Model::of(&produced, retention);
    wait_until(DEADLINE, "every record to be applied", || {
        test.caught_up(&model)
    })
    .await;
    assert_exact(&test, &model, retention).await;

    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}
