//! The speed layer in process against the real Kafka and Redis: random streams (out of
//! order, duplicated, spanning several days of event time) leave exactly the windows and
//! increments an independent model computes, and every touched customer gets a window
//! update listing exactly the records applied.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Model, SpeedTest, assert_exact, event};
use fraud_speed_view::{
    Record, RecordOutcome, StateWriter, Tuning, WindowUpdate, customer_key, digest,
};
use fraud_testkit::wait_until;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRng, TestRunner};

const DEADLINE: Duration = Duration::from_secs(120);
const MINUTE: i64 = 60 * 1000;

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
    // The updates list every applied record once, in offset order, with the model's
    // vendorSeenBefore, and nothing else (no late or duplicate record).
    let listed = fraud_testkit::poll_for(DEADLINE, "every update published", || async {
        let listed = listed_events(&test.updates().await);
        (listed == model.listed).then_some(listed)
    })
    .await;
    assert_eq!(listed, model.listed);
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}

/// Per customer, the events `updates` list, in order, as the model's `listed`; checks
/// that each update's events are in offset order, at or before its source offset.
fn listed_events(updates: &[WindowUpdate]) -> BTreeMap<String, Vec<(i64, String, bool)>> {
    let mut listed: BTreeMap<String, Vec<(i64, String, bool)>> = BTreeMap::new();
    for update in updates {
        let offsets: Vec<i64> = update.events.iter().map(|event| event.offset).collect();
        assert!(
            offsets.is_sorted()
                && offsets
                    .last()
                    .is_none_or(|last| *last <= update.source_offset),
            "{update:?}"
        );
        listed
            .entry(update.customer_id.clone())
            .or_default()
            .extend(update.events.iter().map(|event| {
                (
                    event.offset,
                    event.transaction_id.clone(),
                    event.vendor_seen_before,
                )
            }));
    }
    listed
}

/// A listed event as the tests compare it: offset, transaction id, amount, event time,
/// vendor id and whether the customer had used the vendor before.
type ListedEvent = (i64, String, i64, i64, String, bool);

/// The events `update` lists.
fn listed_in(update: &WindowUpdate) -> Vec<ListedEvent> {
    update
        .events
        .iter()
        .map(|event| {
            (
                event.offset,
                event.transaction_id.clone(),
                event.amount_minor,
                event.ts,
                event.vendor_id.clone(),
                event.vendor_seen_before,
            )
        })
        .collect()
}

/// How `record` must be listed, with `seen` as its vendor answer.
fn as_listed(record: &common::Produced, seen: bool) -> ListedEvent {
    (
        record.offset,
        record.event.transaction_id.as_str().to_owned(),
        record.event.amount.minor(),
        record.event.event_time.as_millis(),
        record.event.vendor_id.as_str().to_owned(),
        seen,
    )
}

/// A customer's records that land in one batch give one update listing exactly the
/// records the batch applied, in offset order, each saying whether the customer had
/// used its vendor before it: through an event of an earlier batch, or one earlier in
/// the same batch. The duplicate and the late record are not listed.
#[tokio::test]
async fn one_update_lists_every_record_its_batch_applied_in_order() {
    // A batch waits 3 s after its first record: records produced together share one.
    let test = SpeedTest::create_with("speed-events", 1, |settings| {
        settings.speed.max_batch_wait_ms = 3_000;
    })
    .await;
    let retention = test.settings.speed.retention_ms();
    let run = fraud_testkit::unique_name("tx");
    let id = |name: &str| format!("{run}-{name}");
    let t = fraud_domain::EventTime::now().as_millis() - 5 * MINUTE;
    let shutdown = test.start().await;
    let first = test
        .produce(vec![event(&id("a"), "multi", "v1", 1_000, t - 10 * MINUTE)])
        .await;
    let update_of = |offset: i64| {
        let test = &test;
        async move {
            test.updates()
                .await
                .into_iter()
                .find(|update| update.customer_id == "multi" && update.source_offset == offset)
        }
    };
    let earlier = fraud_testkit::poll_for(DEADLINE, "the first batch's update", || {
        update_of(first[0].offset)
    })
    .await;
    assert_eq!(earlier.events.len(), 1);
    assert!(!earlier.events[0].vendor_seen_before, "{earlier:?}");

    let b = event(&id("b"), "multi", "v2", 150_000, t - 5 * MINUTE);
    let produced = test
        .produce(vec![
            // A vendor never used: not seen before.
            b.clone(),
            // v1, used by "a" in the earlier batch.
            event(&id("c"), "multi", "v1", 500, t - 4 * MINUTE),
            // A duplicate of "b": not applied, not listed.
            b,
            // v2, used by "b" earlier in this batch.
            event(&id("d"), "multi", "v2", 700, t),
            // Exactly the retention behind the clock (t): late, not listed.
            event(&id("late"), "multi", "v3", 300, t - retention),
            // v3: the late record was never applied, so not seen before.
            event(&id("e"), "multi", "v3", 900, t - MINUTE),
        ])
        .await;
    let last = produced.last().unwrap().offset;
    let update =
        fraud_testkit::poll_for(DEADLINE, "the second batch's update", || update_of(last)).await;
    let expected = |index: usize, seen: bool| as_listed(&produced[index], seen);
    assert_eq!(
        listed_in(&update),
        vec![
            expected(0, false),
            expected(1, true),
            expected(3, true),
            expected(5, false),
        ]
    );
    // One update for the whole batch: no other update of the customer after the first.
    let after_first: Vec<WindowUpdate> = test
        .updates()
        .await
        .into_iter()
        .filter(|update| update.customer_id == "multi" && update.source_offset > first[0].offset)
        .collect();
    assert_eq!(after_first, vec![update.clone()], "one batch, one update");
    assert_eq!(
        (
            update.as_of,
            update.sum_minor,
            update.count,
            update.max_minor
        ),
        (t, 1_000 + 150_000 + 500 + 700 + 900, 5, 150_000)
    );
    assert_eq!(update.distinct_vendors, 3);
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}

/// A listed event: transaction id, event time and its window (sum, count, max, distinct
/// vendors).
type Listed = (String, i64, Option<(i64, i64, i64, i64)>);

/// Every record a batch applied is listed with its own window `W(c, ts)`, the one the
/// independent model computes over every record applied by the end of the batch: a
/// window that crosses 5000.00 at a middle record and is back under it at the batch's
/// last (older events left it); a record out of order (its `ts` behind the clock),
/// which is then inside the window of the record before it; and the window's start
/// excluded exactly (`ts - 30 min < e.ts`).
#[tokio::test]
async fn each_record_of_a_batch_is_listed_with_its_exact_window() {
    // A batch waits 3 s after its first record: records produced together share one. A
    // lateness of an hour keeps every window below exact however far back it reaches
    // (`AppliedEvent::window`).
    let test = SpeedTest::create_with("speed-windows", 1, |settings| {
        settings.speed.max_batch_wait_ms = 3_000;
        settings.speed.allowed_lateness_ms = 60 * 60 * 1000;
    })
    .await;
    let retention = test.settings.speed.retention_ms();
    let run = fraud_testkit::unique_name("tx");
    let id = |name: &str| format!("{run}-{name}");
    let t = fraud_domain::EventTime::now().as_millis() - MINUTE;
    let shutdown = test.start().await;
    let mut produced = test
        .produce(vec![event(
            &id("a"),
            "windows",
            "v1",
            100_000,
            t - 50 * MINUTE,
        )])
        .await;
    let update_of = |offset: i64| {
        let test = &test;
        async move {
            test.updates()
                .await
                .into_iter()
                .find(|update| update.customer_id == "windows" && update.source_offset == offset)
        }
    };
    let first = produced[0].offset;
    fraud_testkit::poll_for(DEADLINE, "the first batch's update", || update_of(first)).await;
    produced.extend(
        test.produce(vec![
            event(&id("b"), "windows", "v2", 200_000, t - 40 * MINUTE),
            // W(t - 25 min) holds a, b, c and d (below): 6050.00, over 5000.00.
            event(&id("c"), "windows", "v1", 300_000, t - 25 * MINUTE),
            // Out of order: behind the clock (t - 25 min), so inside c's window too.
            event(&id("d"), "windows", "v3", 5_000, t - 30 * MINUTE),
            // W(t) starts after t - 30 min: c and e only (a, b gone, d exactly out).
            event(&id("e"), "windows", "v2", 1_000, t),
        ])
        .await,
    );
    let last = produced.last().unwrap().offset;
    let update =
        fraud_testkit::poll_for(DEADLINE, "the second batch's update", || update_of(last)).await;
    let after_first: Vec<WindowUpdate> = test
        .updates()
        .await
        .into_iter()
        .filter(|update| update.customer_id == "windows" && update.source_offset > first)
        .collect();
    assert_eq!(after_first, vec![update.clone()], "one batch, one update");

    // The model: every record applied up to the end of the batch, kept forever.
    let model = Model::of(&produced, retention);
    let windows: Vec<Listed> = update
        .events
        .iter()
        .map(|event| {
            let window = event.window.map(|window| {
                (
                    window.sum_minor,
                    window.count,
                    window.max_minor,
                    window.distinct_vendors,
                )
            });
            (event.transaction_id.clone(), event.ts, window)
        })
        .collect();
    let expected: Vec<Listed> = produced[1..]
        .iter()
        .map(|record| {
            let ts = record.event.event_time.as_millis();
            (
                record.event.transaction_id.as_str().to_owned(),
                ts,
                Some(model.window("windows", ts)),
            )
        })
        .collect();
    assert_eq!(windows, expected);
    // The same figures by hand: the crossing at c, back under at e.
    let by_hand = [
        (300_000, 2, 200_000, 2),
        (605_000, 4, 300_000, 3),
        (305_000, 3, 200_000, 3),
        (301_000, 2, 300_000, 2),
    ];
    assert_eq!(
        windows
            .iter()
            .map(|(_, _, window)| window.unwrap())
            .collect::<Vec<_>>(),
        by_hand
    );
    // The update's own window is W(c, asOf), the last record's here.
    assert_eq!(update.as_of, t);
    assert_eq!(
        (
            update.sum_minor,
            update.count,
            update.max_minor,
            update.distinct_vendors
        ),
        model.window("windows", t)
    );
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
    assert_eq!(
        update.events.len(),
        1,
        "the transaction that caused the update"
    );
    assert_eq!(update.events[0].vendor_id, "v1");
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}

/// A batch a speed layer applied to Redis and then crashed before it published its
/// window updates and committed: the restarted instance replays it, applies nothing
/// again, and its update lists the batch's events with the answers of the lost
/// delivery, so rules about single events still judge them. The crashed instance's
/// effect is the state writer run directly, in the current generation, as the pipeline
/// runs it.
#[tokio::test]
async fn a_batch_whose_updates_were_lost_in_a_crash_is_listed_when_replayed() {
    let test = SpeedTest::create("speed-lost-updates", 1).await;
    let settings = &test.settings;
    let run = fraud_testkit::unique_name("tx");
    let id = |name: &str| format!("{run}-{name}");
    let t = fraud_domain::EventTime::now().as_millis() - 5 * MINUTE;
    let customer = "lost";

    // An earlier event, applied, published and committed; then a clean stop.
    test.produce(vec![event(
        &id("a"),
        customer,
        "v1",
        1_000,
        t - 10 * MINUTE,
    )])
    .await;
    let shutdown = test.start().await;
    wait_until(DEADLINE, "the first event committed", || {
        fraud_testkit::kafka::group_caught_up(
            &settings.kafka,
            &settings.speed.group,
            &settings.kafka.transactions_topic,
        )
    })
    .await;
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    let committed_updates = test.updates().await.len();

    // The batch of the crashed instance: in Redis, never published nor committed.
    let b = event(&id("b"), customer, "v2", 150_000, t - 5 * MINUTE);
    let produced = test
        .produce(vec![
            b.clone(),
            event(&id("c"), customer, "v1", 500, t - 4 * MINUTE),
            // An exact copy of "b": a duplicate.
            b,
            event(&id("d"), customer, "v2", 700, t),
        ])
        .await;
    let generation = test.meta().await.generation.expect("a generation");
    let records: Vec<Record> = produced
        .iter()
        .map(|p| Record {
            offset: p.offset,
            ts: p.event.event_time.as_millis(),
            amount: p.event.amount.minor(),
            vendor: digest(p.event.vendor_id.as_str()),
            transaction: digest(p.event.transaction_id.as_str()),
        })
        .collect();
    let retention_ms = settings.speed.retention_ms();
    let tuning = Tuning {
        retention_ms,
        idle_ttl_ms: retention_ms,
        increments_ttl_ms: i64::try_from(settings.speed.increments_ttl_ms).unwrap(),
    };
    let handle = fraud_redis::RedisHandle::new(&settings.redis, Duration::from_secs(5))
        .expect("a redis handle");
    let mut redis = handle.connection().await.expect("redis");
    let key = customer_key(&settings.redis.key_prefix, customer);
    let lost = StateWriter::new()
        .apply(&mut redis, generation, None, tuning, &[(key, records)])
        .await
        .expect("apply")
        .pop()
        .expect("one outcome");
    let applied = |vendor_seen_before| RecordOutcome::Applied { vendor_seen_before };
    assert_eq!(
        lost.records,
        vec![
            applied(false),
            applied(true),
            RecordOutcome::Duplicate,
            applied(true)
        ]
    );
    assert_eq!(
        test.updates().await.len(),
        committed_updates,
        "nothing published"
    );

    // The restart replays the batch from the committed offset.
    let shutdown = test.start().await;
    let last = produced.last().unwrap().offset;
    let update = fraud_testkit::poll_for(DEADLINE, "the replayed batch's update", || async {
        test.updates()
            .await
            .into_iter()
            .find(|update| update.customer_id == customer && update.source_offset == last)
    })
    .await;
    let expected = |index: usize, seen: bool| as_listed(&produced[index], seen);
    // The lost delivery's answers; the exact copy of "b" is listed again too, with
    // b's answer (its event is held, and the state cannot tell a copy from the
    // original), which judges the same instant again.
    assert_eq!(
        listed_in(&update),
        vec![
            expected(0, false),
            expected(1, true),
            expected(2, false),
            expected(3, true),
        ]
    );
    for event in &update.events {
        let window = event.window.expect("a window");
        assert_eq!(
            window,
            test.state(customer)
                .await
                .unwrap()
                .window_at(event.ts)
                .into()
        );
    }
    // Nothing was applied twice.
    let state = test.state(customer).await.expect("a state");
    assert_eq!(state, lost.state);
    assert_eq!(state.events.len(), 4);
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}

#[tokio::test]
async fn a_batch_s_updates_do_not_wait_for_the_next_batch_to_fill() {
    // Batches of at most two records that wait a minute for a second one: the first two
    // records make a full batch, the third starts one that stays open.
    let test = SpeedTest::create_with("speed-prompt", 1, |settings| {
        settings.speed.max_batch_records = 2;
        settings.speed.max_batch_wait_ms = 60_000;
    })
    .await;
    let run = fraud_testkit::unique_name("tx");
    let id = |name: &str| format!("{run}-{name}");
    let t = fraud_domain::EventTime::now().as_millis() - 5 * MINUTE;
    test.produce(vec![
        event(&id("a1"), "full", "v1", 100, t),
        event(&id("a2"), "full", "v1", 200, t + 1),
        event(&id("b1"), "open", "v1", 300, t + 2),
    ])
    .await;
    let shutdown = test.start().await;
    // The full batch's update comes once it is applied, while the next batch waits for
    // its second record (a minute): well within that.
    let update = fraud_testkit::poll_for(
        Duration::from_secs(20),
        "the full batch's update while the next batch is open",
        || async {
            test.updates()
                .await
                .into_iter()
                .find(|update| update.customer_id == "full")
        },
    )
    .await;
    assert_eq!((update.count, update.sum_minor), (2, 300), "{update:?}");
    assert!(
        !test.updates().await.iter().any(|u| u.customer_id == "open"),
        "the open batch is not applied yet"
    );
    // Its second record closes the open batch.
    test.produce(vec![event(&id("b2"), "open", "v1", 400, t + 3)])
        .await;
    let update = fraud_testkit::poll_for(DEADLINE, "the second batch's update", || async {
        test.updates()
            .await
            .into_iter()
            .find(|update| update.customer_id == "open")
    })
    .await;
    assert_eq!((update.count, update.sum_minor), (2, 700), "{update:?}");
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}

#[tokio::test]
async fn a_hot_customer_s_update_is_split_into_messages_kafka_takes() {
    // One batch of 4,000 records of one customer: listed in one update, they would make
    // a message over Kafka's 1 MB limit, and the pipeline would retry it for ever.
    let test = SpeedTest::create_with("speed-hot", 1, |settings| {
        settings.speed.max_batch_records = 20_000;
        settings.speed.max_batch_wait_ms = 3_000;
    })
    .await;
    let retention = test.settings.speed.retention_ms();
    let run = fraud_testkit::unique_name("tx");
    let t = fraud_domain::EventTime::now().as_millis() - 20 * MINUTE;
    let events: Vec<_> = (0..4_000)
        .map(|i| {
            event(
                &format!("{run}-{i:05}-a-transaction-id-of-some-length"),
                "hot",
                &format!("vendor-{}", i % 50),
                100 + i,
                t + i * 200,
            )
        })
        .collect();
    let produced = test.produce(events).await;
    let shutdown = test.start().await;
    let model = Model::of(&produced, retention);
    wait_until(DEADLINE, "every record to be applied", || {
        test.caught_up(&model)
    })
    .await;
    assert_exact(&test, &model, retention).await;

    let last = produced.last().expect("records").offset;
    let updates = fraud_testkit::poll_for(DEADLINE, "the updates of every record", || async {
        let updates: Vec<WindowUpdate> = test
            .updates()
            .await
            .into_iter()
            .filter(|update| update.customer_id == "hot")
            .collect();
        let listed: usize = updates.iter().map(|update| update.events.len()).sum();
        (listed >= produced.len()).then_some(updates)
    })
    .await;
    // Every record listed once, in offset order, in parts each within the bound. Each
    // part is at the latest event time listed so far (the last at the customer's
    // clock), with the exact window there.
    let offsets: Vec<i64> = updates
        .iter()
        .flat_map(|update| update.events.iter().map(|event| event.offset))
        .collect();
    let expected: Vec<i64> = produced.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, expected);
    assert!(updates.len() >= 4, "{} updates", updates.len());
    let mut latest = i64::MIN;
    for update in &updates {
        assert!(
            update.events.len() <= 1_000,
            "{} events",
            update.events.len()
        );
        assert_eq!(update.source_offset, last);
        latest = update
            .events
            .iter()
            .map(|event| event.ts)
            .fold(latest, i64::max);
        assert_eq!(
            update.as_of, latest,
            "a part is at the latest time listed so far"
        );
        assert_eq!(
            (
                update.sum_minor,
                update.count,
                update.max_minor,
                update.distinct_vendors
            ),
            model.window("hot", update.as_of),
            "the window at {}",
            update.as_of
        );
    }
    assert_eq!(Some(latest), model.clock("hot"));
    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    test.remove().await;
}
