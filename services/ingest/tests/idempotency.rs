//! The idempotency protocol against real Kafka and Redis: one claim per event, one
//! confirmation per request (services/ingest/src/idempotency.rs). A request that dies
//! between its claim and the brokers' acknowledgement loses nothing and doubles nothing;
//! replays and conflicts hold across whole batches.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Harness, WRITER, events, transaction};
use fraud_domain::{Currency, EventTime, Money};
use fraud_redis::RedisHandle;
use ingest::api::decode::{self, Rules};
use ingest::idempotency::{Idempotency, Reservation};
use serde_json::{Value, json};

/// The `(transactionId, fingerprint)` ingest derives from `body` (one transaction).
fn key_of(body: &Value) -> (String, String) {
    let bytes = body.to_string();
    let (framing, items) = decode::split_json(bytes.as_bytes()).unwrap();
    let rules = Rules {
        currency: Currency::EUR,
        max_amount: Money::from_minor(i64::MAX),
        max_future_skew_ms: 300_000,
        max_items: 10,
        now: EventTime::now(),
    };
    let event = decode::validate(framing, &items, &rules).unwrap().remove(0);
    (
        event.transaction_id.as_str().to_owned(),
        event.content_fingerprint(),
    )
}

fn store(ingest: &Harness, reserve_for: Duration) -> Idempotency {
    let redis = RedisHandle::new(&ingest.settings.redis, Duration::from_secs(5)).unwrap();
    Idempotency::new(Arc::new(redis), reserve_for, Duration::from_secs(600))
}

fn ids(ingest_events: &[fraud_events::TransactionEvent]) -> Vec<String> {
    let mut ids: Vec<String> = ingest_events
        .iter()
        .map(|event| event.transaction_id.as_str().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_crash_between_claim_and_ack_neither_loses_the_event_nor_produces_it_twice() {
    let ingest = Harness::start(|_| {}).await;
    let body = transaction("tx-crash", json!("c-1"), json!("12.34"));
    let (id, fingerprint) = key_of(&body);

    // A request claims the id, then its process dies before anything reaches Kafka: it
    // neither confirms nor releases.
    let reserve_for = Duration::from_millis(1_500);
    let dead = store(&ingest, reserve_for);
    let (_claim, answers) = dead.claim(&[(&id, &fingerprint)]).await.unwrap();
    assert_eq!(answers, vec![Reservation::Reserved]);
    let claimed_at = Instant::now();
    drop(dead);

    // Before the claim's deadline the retry cannot know: it is asked to retry.
    let (status, headers, problem) = ingest.post_json(&body).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert!(ingest.records().await.is_empty(), "nothing produced yet");

    // Past it, the retry takes the claim over and produces the event: not lost.
    tokio::time::sleep((claimed_at + reserve_for + Duration::from_millis(200)) - Instant::now())
        .await;
    let (status, _, answer) = ingest.post_json(&body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["replayed"], false, "{answer}");
    // And a further replay is a replay: produced once.
    let (status, headers, answer) = ingest.post_json(&body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["replayed"], true, "{answer}");
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(ids(&events(&ingest.records().await)), vec!["tx-crash"]);
    ingest.stop().await;
}

#[tokio::test]
async fn a_stale_claim_with_other_content_gives_the_id_to_the_new_content() {
    let ingest = Harness::start(|_| {}).await;
    let first = transaction("tx-stale", json!("c-1"), json!("1.00"));
    let second = transaction("tx-stale", json!("c-1"), json!("2.00"));
    let (id, fingerprint) = key_of(&first);
    let dead = store(&ingest, Duration::from_millis(300));
    dead.claim(&[(&id, &fingerprint)]).await.unwrap();

    // While the first claim may still be producing, other content is a conflict...
    let (status, _, problem) = ingest.post_json(&second).await;
    assert_eq!(status, 409, "{problem}");
    // ...once it is stale (its producer died), the id is free, as an expired reservation was.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, answer) = ingest.post_json(&second).await;
    assert_eq!(status, 202, "{answer}");
    let produced = events(&ingest.records().await);
    assert_eq!(produced.len(), 1);
    assert_eq!(produced[0].amount.minor(), 200);
    ingest.stop().await;
}

#[tokio::test]
async fn a_claim_confirmed_by_another_instance_is_a_replay_there() {
    let ingest = Harness::start(|_| {}).await;
    let other = Harness::on(ingest.settings.clone()).await;
    let body = transaction("tx-other", json!("c-1"), json!(5));
    let (status, _, answer) = ingest.post_json(&body).await;
    assert_eq!((status, &answer["replayed"]), (202, &json!(false)));
    let (status, _, answer) = other.post_json(&body).await;
    assert_eq!(
        (status, &answer["replayed"]),
        (202, &json!(true)),
        "{answer}"
    );
    other.stop().await;
    assert_eq!(ids(&events(&ingest.records().await)), vec!["tx-other"]);
    ingest.stop().await;
}

#[tokio::test]
async fn keys_of_the_former_protocol_are_still_read() {
    let ingest = Harness::start(|_| {}).await;
    let body = transaction("tx-former", json!("c-1"), json!(7));
    let (id, fingerprint) = key_of(&body);
    let redis = RedisHandle::new(&ingest.settings.redis, Duration::from_secs(5)).unwrap();
    let mut connection = redis.connection().await.unwrap();
    let key = redis.key(&format!("ingest:txn:{id}"));
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(format!("d:{fingerprint}"))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    let (status, _, answer) = ingest.post_json(&body).await;
    assert_eq!(
        (status, &answer["replayed"]),
        (202, &json!(true)),
        "{answer}"
    );
    let reused = transaction("tx-former", json!("c-1"), json!(8));
    assert_eq!(ingest.post_json(&reused).await.0, 409);
    assert!(ingest.records().await.is_empty());
    ingest.stop().await;
}

fn ndjson(items: &[Value]) -> String {
    items
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn replays_and_conflicts_hold_across_a_whole_batch() {
    let ingest = Harness::start(|_| {}).await;
    let batch: Vec<Value> = (0..300)
        .map(|i| {
            transaction(
                &format!("b-{i}"),
                json!(format!("c-{}", i % 13)),
                json!(format!("{i}.25")),
            )
        })
        .collect();
    let post = |items: &[Value]| ingest.post(Some(WRITER), "application/x-ndjson", ndjson(items));

    let (status, _, body) = post(&batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["replayed"].as_u64()),
        (Some(300), Some(0))
    );

    // The whole batch again: every item a replay, nothing produced again.
    let (status, _, body) = post(&batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["replayed"].as_u64()),
        (Some(0), Some(300))
    );
    assert!(
        body["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["replayed"] == true)
    );

    // Replays, two ids reused with other content and one new id: 409 naming exactly the
    // reused ones, and nothing of the batch produced, not even the new one.
    let mut mixed = batch.clone();
    mixed[17] = transaction("b-17", json!("c-4"), json!("99.99"));
    mixed[230] = transaction("b-230", json!("someone-else"), json!("230.25"));
    mixed.push(transaction("b-new", json!("c-1"), json!(1)));
    let (status, _, problem) = post(&mixed).await;
    assert_eq!(status, 409, "{problem}");
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, vec!["/17/transactionId", "/230/transactionId"]);

    // The new id's claim was given back: without the conflicts the batch is accepted,
    // the new id produced, the rest replays.
    let mut fixed = batch.clone();
    fixed.push(transaction("b-new", json!("c-1"), json!(1)));
    let (status, _, body) = post(&fixed).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["replayed"].as_u64()),
        (Some(1), Some(300))
    );

    let mut expected: Vec<String> = (0..300).map(|i| format!("b-{i}")).collect();
    expected.push("b-new".to_owned());
    expected.sort();
    assert_eq!(
        ids(&events(&ingest.records().await)),
        expected,
        "each exactly once"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn the_same_batch_posted_concurrently_is_produced_once() {
    let ingest = Harness::start(|_| {}).await;
    let batch: Vec<Value> = (0..200)
        .map(|i| transaction(&format!("cc-{i}"), json!(format!("c-{i}")), json!(3)))
        .collect();
    let body = ndjson(&batch);
    let answers = futures::future::join_all(
        (0..4).map(|_| ingest.post(Some(WRITER), "application/x-ndjson", body.clone())),
    )
    .await;
    for (status, _, answer) in &answers {
        // Each is either accepted (first or replay) or told to retry while another
        // request is producing the same events.
        assert!(matches!(status, 202 | 503), "{status}: {answer}");
    }
    assert!(answers.iter().any(|(status, _, _)| *status == 202));
    // A retry after they all ended is a replay of every item.
    let (status, _, answer) = ingest
        .post(Some(WRITER), "application/x-ndjson", body.clone())
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["replayed"].as_u64(), Some(200), "{answer}");
    let mut expected: Vec<String> = (0..200).map(|i| format!("cc-{i}")).collect();
    expected.sort();
    assert_eq!(
        ids(&events(&ingest.records().await)),
        expected,
        "each exactly once"
    );
    ingest.stop().await;
}
