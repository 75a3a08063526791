//! `POST /v1/transactions` against real Kafka and Redis: what is accepted is in the
//! topic exactly once with exactly the posted values; what is rejected gets its status
//! and problem body, and nothing of it is produced.

mod common;

use common::{Harness, READER, WRITER, events, transaction};
use serde_json::json;

#[tokio::test]
async fn an_accepted_transaction_is_in_the_topic_once_with_exactly_its_values() {
    let ingest = Harness::start(|_| {}).await;
    let (status, headers, body) = ingest
        .post_json(&transaction(
            "tx-1",
            json!(4929878788898271234_u64),
            json!(99.90),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"transactionId": "tx-1", "replayed": false}));
    assert!(headers.get("idempotent-replayed").is_none());

    let records = ingest.records().await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        record.key.as_deref(),
        Some(&b"4929878788898271234"[..]),
        "keyed by customer"
    );
    assert_eq!(record.header("schema-version"), Some(&b"1"[..]));
    let event = &events(&records)[0];
    assert_eq!(event.transaction_id.as_str(), "tx-1");
    assert_eq!(event.customer_id.as_str(), "4929878788898271234");
    assert_eq!(event.vendor_id.as_str(), "04ec092a-421a-4481");
    assert_eq!(event.amount.minor(), 9990);
    assert_eq!(event.currency.as_str(), "EUR");
    assert_eq!(event.event_time.as_millis(), 1_559_200_850_100);
    assert_eq!(
        record.timestamp,
        Some(event.ingest_time.as_millis()),
        "the record's timestamp is the ingest time (rebuilds seek by it)"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn a_replay_answers_the_same_and_is_produced_once_a_reuse_is_409() {
    let ingest = Harness::start(|_| {}).await;
    let original = transaction("tx-replay", json!("c-1"), json!("10.00"));
    let (first, _, first_body) = ingest.post_json(&original).await;
    let (second, headers, second_body) = ingest.post_json(&original).await;
    assert_eq!((first, second), (202, 202));
    assert_eq!(first_body["transactionId"], second_body["transactionId"]);
    assert_eq!(second_body["replayed"], true);
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");

    let reused = transaction("tx-replay", json!("c-1"), json!("10.01"));
    let (status, _, problem) = ingest.post_json(&reused).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/0/transactionId");

    // In a batch: the same id twice with the same content counts once.
    let twice = json!([
        transaction("tx-twice", json!("c-2"), json!(1)),
        transaction("tx-twice", json!("c-2"), json!(1)),
        transaction("tx-replay", json!("c-1"), json!("10.00")),
    ]);
    let (status, _, body) = ingest.post_json(&twice).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["replayed"], 2);

    let ids: Vec<String> = events(&ingest.records().await)
        .iter()
        .map(|event| event.transaction_id.as_str().to_owned())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["tx-replay", "tx-twice"],
        "each produced once: {ids:?}"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn one_bad_item_rejects_the_batch_with_every_error_and_produces_nothing() {
    let ingest = Harness::start(|_| {}).await;
    let batch = json!([
        transaction("ok-1", json!("c"), json!(5)),
        {"customerId": "c", "vendorId": "v", "transactionSum": "1.005", "ts": "2026-01-01T00:00:00"},
        transaction("ok-2", json!("c"), json!(0)),
    ]);
    let (status, headers, problem) = ingest.post_json(&batch).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        vec!["/1/transactionSum", "/1/ts", "/2/transactionSum"]
    );
    assert!(
        ingest.records().await.is_empty(),
        "nothing of a rejected batch is produced"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn ndjson_batches_are_accepted_whole() {
    let ingest = Harness::start(|_| {}).await;
    let lines: Vec<String> = (0..50)
        .map(|i| {
            transaction(
                &format!("nd-{i}"),
                json!(format!("c-{}", i % 7)),
                json!(format!("{i}.05")),
            )
            .to_string()
        })
        .collect();
    let (status, _, body) = ingest
        .post(Some(WRITER), "application/x-ndjson", lines.join("\n"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 50);
    assert_eq!(
        body["transactions"][7]["transactionId"], "nd-7",
        "in request order"
    );
    let produced = events(&ingest.records().await);
    assert_eq!(produced.len(), 50);
    let total: i64 = produced.iter().map(|event| event.amount.minor()).sum();
    assert_eq!(total, (0..50).map(|i| i * 100 + 5).sum::<i64>());
    ingest.stop().await;
}

#[tokio::test]
async fn the_auth_matrix() {
    let ingest = Harness::start(|_| {}).await;
    let body = transaction("auth-1", json!("c"), json!(1)).to_string();
    let (none, headers, problem) = ingest.post(None, "application/json", body.clone()).await;
    assert_eq!(none, 401, "{problem}");
    assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    let (wrong, _, _) = ingest
        .post(Some("not-a-key"), "application/json", body.clone())
        .await;
    assert_eq!(wrong, 401);
    let (read_only, _, problem) = ingest
        .post(Some(READER), "application/json", body.clone())
        .await;
    assert_eq!(read_only, 403, "{problem}");
    assert!(ingest.records().await.is_empty());
    let (right, _, _) = ingest.post(Some(WRITER), "application/json", body).await;
    assert_eq!(right, 202);
    ingest.stop().await;
}

#[tokio::test]
async fn bad_requests_get_their_status_and_a_problem_never_a_5xx() {
    let ingest = Harness::start(|settings| {
        settings.ingest.max_body_bytes = 2_000;
        settings.ingest.max_batch_items = 3;
    })
    .await;
    let valid = transaction("bad-0", json!("c"), json!(1)).to_string();
    let cases: Vec<(&str, String, u16)> = vec![
        ("text/plain", valid.clone(), 415),
        ("application/json", "{\"customerId\": ".to_owned(), 400),
        ("application/json", "\"just a string\"".to_owned(), 400),
        (
            "application/json",
            format!("[{}]", vec![valid.clone(); 4].join(",")),
            413,
        ),
        (
            "application/json",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(3_000)),
            413,
        ),
        ("application/x-ndjson", format!("{valid}\nnot json\n"), 400),
        ("application/json", "[]".to_owned(), 422),
    ];
    for (content_type, body, expected) in cases {
        let (status, headers, problem) =
            ingest.post(Some(WRITER), content_type, body.clone()).await;
        assert_eq!(status, expected, "{content_type} {body:.60}: {problem}");
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/problem+json"
        );
        assert_eq!(problem["status"], expected);
        assert!(problem["detail"].is_string(), "{problem}");
    }
    assert!(ingest.records().await.is_empty(), "nothing was produced");
    ingest.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let ingest = Harness::start(|settings| {
        settings.ingest.rate_limit_per_second = 1;
        settings.ingest.rate_limit_burst = 2;
    })
    .await;
    // The limit applies before anything else is read, so quick requests with a wrong
    // media type (415) use up the burst without waiting on Kafka: no refill between them.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let (status, headers, _) = ingest.post(Some(WRITER), "text/plain", "x").await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers.get("retry-after").cloned();
        }
    }
    assert_eq!(statuses, vec![415, 415, 429]);
    assert_eq!(retry_after.unwrap(), "1");
    ingest.stop().await;
}

#[tokio::test]
async fn back_pressure_is_503_and_a_retry_loses_nothing_and_doubles_nothing() {
    // A producer queue of one record: a batch of 30 overflows it.
    let tight = Harness::start(|settings| settings.ingest.producer_queue_max = 1).await;
    let batch = json!(
        (0..30)
            .map(|i| transaction(&format!("bp-{i}"), json!(format!("c-{i}")), json!(1)))
            .collect::<Vec<_>>()
    );
    let (status, headers, problem) = tight.post_json(&batch).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    let settings = tight.stop_keeping_namespace().await;

    // The client retries the whole batch against an instance with room.
    let mut roomy_settings = settings;
    roomy_settings.ingest.producer_queue_max = 100_000;
    let roomy = Harness::taking_over(roomy_settings).await;
    let (status, _, body) = roomy.post_json(&batch).await;
    assert_eq!(status, 202, "{body}");
    let accepted = body["accepted"].as_u64().unwrap();
    let replayed = body["replayed"].as_u64().unwrap();
    assert_eq!(accepted + replayed, 30);
    assert!(
        replayed >= 1,
        "what the first attempt produced is a replay now"
    );
    let mut ids: Vec<String> = events(&roomy.records().await)
        .iter()
        .map(|event| event.transaction_id.as_str().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("bp-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every transaction exactly once");
    roomy.stop().await;
}

#[tokio::test]
async fn a_request_beyond_the_in_flight_limit_is_refused_at_once_and_produces_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ingest = Harness::start(|settings| settings.ingest.max_in_flight_requests = 1).await;
    // A request whose body is only half sent holds the one slot.
    let held_body = transaction("in-flight-held", json!("c-held"), json!(12.5)).to_string();
    let (first_half, second_half) = held_body.split_at(held_body.len() / 2);
    let address = ingest.base.trim_start_matches("http://").to_owned();
    let mut held = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/transactions HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {WRITER}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        held_body.len()
    );
    held.write_all(head.as_bytes()).await.unwrap();
    held.write_all(first_half.as_bytes()).await.unwrap();

    // Another request is refused before anything of it is read: a body of the wrong
    // media type gets 415 while a slot is free and 503 once the held request has it.
    let (headers, problem) = fraud_testkit::poll_for(
        std::time::Duration::from_secs(10),
        "a request refused for the held slot",
        || async {
            let (status, headers, problem) = ingest.post(Some(WRITER), "text/plain", "x").await;
            assert!(status == 415 || status == 503, "{status}: {problem}");
            (status == 503).then_some((headers, problem))
        },
    )
    .await;
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(problem["status"], 503);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("as many requests"),
        "{problem}"
    );

    // The held request completes; its slot is free again for the next one.
    held.write_all(second_half.as_bytes()).await.unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let next = transaction("in-flight-next", json!("c-next"), json!(3));
    let (status, _, body) = ingest.post_json(&next).await;
    assert_eq!(status, 202, "{body}");

    let mut ids: Vec<String> = events(&ingest.records().await)
        .iter()
        .map(|event| event.transaction_id.as_str().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["in-flight-held", "in-flight-next"]);
    ingest.stop().await;
}
