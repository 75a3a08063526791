//! `GET /v1/alerts` and `GET /v1/alerts/stream` against a real serving API and Postgres:
//! filters and pages (every alert once, in order, also with inserts between pages), 400s
//! for bad parameters, the stream live and resumed without loss or repetition, and the
//! auth matrix.
//!
//! Alerts are written as the alert writer (`evaluate`) writes them: in one transaction
//! under its advisory lock, the `alerts` row, its `alert_outbox` row, and
//! `pg_notify('fraud_alerts', seq)`.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{ADMIN_KEY, ALL_KEY, INGEST_KEY, READ_KEY, ServingTest, get};
use fraud_testkit::sse::SseClient;
use serde_json::{Value, json};
use serving_api::evaluate::store::{ALERTS_CHANNEL, ALERTS_LOCK};
use sqlx::PgPool;
use uuid::Uuid;

/// One alert to write: customer, severity, and when it was raised (`None`: now).
struct Spec<'a> {
    customer: &'a str,
    severity: &'a str,
    raised_at: Option<DateTime<Utc>>,
}

fn spec(customer: &str) -> Spec<'_> {
    Spec {
        customer,
        severity: "high",
        raised_at: None,
    }
}

/// An alert as written.
#[derive(Debug, Clone)]
struct Raised {
    alert_id: String,
    seq: i64,
    customer: String,
}

/// Writes the alerts in one transaction as the alert writer does; `notify: false` leaves
/// out the notification (as if it were lost).
async fn raise_with(pool: &PgPool, specs: &[Spec<'_>], notify: bool) -> Vec<Raised> {
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ALERTS_LOCK)
        .execute(&mut *transaction)
        .await
        .expect("take the alerts lock");
    let mut raised = Vec::new();
    for spec in specs {
        let alert_id = Uuid::new_v4();
        let body = json!({
            "alertId": alert_id,
            "customerId": spec.customer,
            "rule": "sum-30m",
            "severity": spec.severity,
            "observed": "1500.00",
        });
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO alerts (alert_id, customer_id, rule_id, rule_version, severity, \
                                 episode_start, as_of, raised_at, body, trace_context) \
             VALUES ($1, $2, 'sum-30m', 0, $3, now(), now(), coalesce($4, now()), \
                     $5::text::jsonb, '{}') RETURNING seq",
        )
        .bind(alert_id)
        .bind(spec.customer)
        .bind(spec.severity)
        .bind(spec.raised_at)
        .bind(body.to_string())
        .fetch_one(&mut *transaction)
        .await
        .expect("insert an alert");
        sqlx::query("INSERT INTO alert_outbox (alert_id, routing_key) VALUES ($1, $2)")
            .bind(alert_id)
            .bind(format!("alert.{}.sum-30m", spec.severity))
            .execute(&mut *transaction)
            .await
            .expect("insert its outbox row");
        if notify {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(ALERTS_CHANNEL)
                .bind(seq.to_string())
                .execute(&mut *transaction)
                .await
                .expect("notify");
        }
        raised.push(Raised {
            alert_id: alert_id.to_string(),
            seq,
            customer: spec.customer.to_owned(),
        });
    }
    transaction.commit().await.expect("commit the alerts");
    raised
}

async fn raise(pool: &PgPool, specs: &[Spec<'_>]) -> Vec<Raised> {
    raise_with(pool, specs, true).await
}

/// Every page of `GET /v1/alerts?{query}` (with `limit`), following `nextCursor`; the
/// alerts of each page.
async fn all_pages(base: &str, query: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/alerts?limit={limit}");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = get(base, &path, Some(READ_KEY)).await;
        assert_eq!(status, 200, "{path}: {page}");
        let alerts = page["alerts"].as_array().expect("alerts").clone();
        assert!(alerts.len() <= limit, "a page holds at most `limit`");
        pages.push(alerts);
        match &page["nextCursor"] {
            Value::Null => return pages,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("nextCursor is {other}"),
        }
        assert!(pages.len() < 1000, "paging does not end");
    }
}

fn ids(alerts: &[Value]) -> Vec<String> {
    alerts
        .iter()
        .map(|alert| alert["alertId"].as_str().expect("alertId").to_owned())
        .collect()
}

fn expected_ids<'a>(alerts: impl IntoIterator<Item = &'a Raised>) -> Vec<String> {
    alerts
        .into_iter()
        .map(|alert| alert.alert_id.clone())
        .collect()
}

/// Asserts `value` is valid against `#/components/schemas/{name}` of the served
/// OpenAPI document.
fn assert_documented(document: &Value, name: &str, value: &Value) {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\nin {value:#}");
}

async fn served_document(base: &str) -> Value {
    let (status, document) = get(base, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in ["/v1/alerts", "/v1/alerts/stream"] {
        assert!(
            document["paths"][path]["get"].is_object(),
            "{path} is not documented"
        );
    }
    document
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_and_pages_every_alert_once_in_seq_order() {
    let test = ServingTest::create("alerts-history").await;
    let serving = test.start_serving().await;
    let base_time = DateTime::parse_from_rfc3339("2026-11-20T10:00:00.250Z")
        .unwrap()
        .with_timezone(&Utc);
    // 120 alerts: customers a and b interleaved, one minute apart, out of seq order
    // in time for a few (raised_at is when the rule fired, not when it committed).
    let customers: Vec<&str> = (0..120)
        .map(|index| if index % 3 == 0 { "c-a" } else { "c-b" })
        .collect();
    let specs: Vec<Spec<'_>> = customers
        .iter()
        .enumerate()
        .map(|(index, customer)| Spec {
            customer,
            severity: "high",
            raised_at: Some(base_time + chrono::Duration::minutes(index as i64)),
        })
        .collect();
    let raised = raise(&test.pool, &specs).await;

    // The default page is 100 and says more follows; the rest comes after it.
    let (status, first) = get(&serving.base, "/v1/alerts", Some(READ_KEY)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["alerts"].as_array().unwrap().len(), 100);
    let cursor = first["nextCursor"].as_str().expect("more follows");
    let (_, second) = get(
        &serving.base,
        &format!("/v1/alerts?cursor={cursor}"),
        Some(READ_KEY),
    )
    .await;
    assert_eq!(second["alerts"].as_array().unwrap().len(), 20);
    assert!(second["nextCursor"].is_null());

    // An alert is its body with seq, raisedAt and publishedAt.
    let item = &first["alerts"][1];
    assert_eq!(item["alertId"], raised[1].alert_id);
    assert_eq!(item["customerId"], "c-b");
    assert_eq!(item["rule"], "sum-30m");
    assert_eq!(item["seq"], raised[1].seq);
    assert_eq!(item["raisedAt"], "2026-11-20T10:01:00.250Z");
    assert!(item.get("publishedAt").is_some(), "{item}");
    let document = served_document(&serving.base).await;
    assert_documented(&document, "AlertsPage", &first);
    assert_documented(&document, "AlertsPage", &second);
    let validator = jsonschema::validator_for(&json!({
        "$ref": "#/components/schemas/AlertsPage",
        "components": document["components"],
    }))
    .unwrap();
    assert!(
        !validator.is_valid(&json!({"alerts": [{"alertId": "x"}], "nextCursor": null})),
        "the documented page is not vacuous"
    );

    // Small pages: every alert once, in seq order, whatever the page size.
    for limit in [1, 7, 120, 1000] {
        let pages = all_pages(&serving.base, "", limit).await;
        let listed: Vec<String> = pages.iter().flat_map(|page| ids(page)).collect();
        assert_eq!(listed, expected_ids(&raised), "limit {limit}");
        let seqs: Vec<i64> = pages
            .iter()
            .flatten()
            .map(|alert| alert["seq"].as_i64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]));
    }

    // Filters: one customer; raised at or after an instant; both.
    let only_a = all_pages(&serving.base, "customerId=c-a", 9).await.concat();
    assert_eq!(
        ids(&only_a),
        expected_ids(raised.iter().filter(|alert| alert.customer == "c-a"))
    );
    let since = "2026-11-20T11:30:00.250Z"; // the 91st alert's raisedAt exactly
    let recent = all_pages(&serving.base, &format!("since={since}"), 8)
        .await
        .concat();
    assert_eq!(ids(&recent), expected_ids(&raised[90..]));
    let since_offset = "2026-11-20T12:30:00.250%2B01:00"; // the same instant
    let recent_a = all_pages(
        &serving.base,
        &format!("customerId=c-a&since={since_offset}"),
        4,
    )
    .await
    .concat();
    assert_eq!(
        ids(&recent_a),
        expected_ids(raised[90..].iter().filter(|alert| alert.customer == "c-a"))
    );
    let (_, none) = get(
        &serving.base,
        "/v1/alerts?customerId=nobody",
        Some(READ_KEY),
    )
    .await;
    assert_eq!(none, json!({"alerts": [], "nextCursor": null}));

    // Inserts between pages: the pages already read do not shift; the new alerts come
    // on later pages, each once.
    let (_, page) = get(&serving.base, "/v1/alerts?limit=50", Some(READ_KEY)).await;
    let mut listed = ids(page["alerts"].as_array().unwrap());
    let later: Vec<Spec<'_>> = (0..30).map(|_| spec("c-a")).collect();
    let more = raise(&test.pool, &later).await;
    let mut cursor = page["nextCursor"].as_str().unwrap().to_owned();
    loop {
        let (_, page) = get(
            &serving.base,
            &format!("/v1/alerts?limit=50&cursor={cursor}"),
            Some(READ_KEY),
        )
        .await;
        listed.extend(ids(page["alerts"].as_array().unwrap()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed, expected_ids(raised.iter().chain(&more)));

    serving.shutdown.trigger();
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_answer_400_problems_naming_each() {
    let test = ServingTest::create("alerts-400").await;
    let serving = test.start_serving().await;
    let raised = raise(&test.pool, &[spec("c-1")]).await;
    let beyond = raised[0].seq + 1000;
    let document = served_document(&serving.base).await;
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("/v1/alerts?limit=0".into(), vec!["/query/limit"]),
        ("/v1/alerts?limit=1001".into(), vec!["/query/limit"]),
        ("/v1/alerts?limit=ten".into(), vec!["/query/limit"]),
        ("/v1/alerts?since=yesterday".into(), vec!["/query/since"]),
        (
            "/v1/alerts?since=2026-11-20T10:00:00".into(),
            vec!["/query/since"],
        ),
        ("/v1/alerts?cursor=42".into(), vec!["/query/cursor"]),
        ("/v1/alerts?customerId=".into(), vec!["/query/customerId"]),
        (
            "/v1/alerts?customer_id=c-1".into(),
            vec!["/query/customer_id"],
        ),
        ("/v1/alerts?limit=5&limit=6".into(), vec!["/query/limit"]),
        (
            "/v1/alerts?limit=-1&since=soon".into(),
            vec!["/query/limit", "/query/since"],
        ),
        (
            "/v1/alerts/stream?lastEventId=-1".into(),
            vec!["/query/lastEventId"],
        ),
        (
            "/v1/alerts/stream?lastEventId=x".into(),
            vec!["/query/lastEventId"],
        ),
        (
            format!("/v1/alerts/stream?lastEventId={beyond}"),
            vec!["/query/lastEventId"],
        ),
        (
            "/v1/alerts/stream?customerId=".into(),
            vec!["/query/customerId"],
        ),
        ("/v1/alerts/stream?limit=5".into(), vec!["/query/limit"]),
    ];
    for (path, pointers) in cases {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", serving.base))
            .bearer_auth(READ_KEY)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status().as_u16(), 400, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let problem: Value = response.json().await.expect("a problem");
        assert_eq!(problem["status"], 400);
        assert_documented(&document, "Problem", &problem);
        let found: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no errors in {problem}"))
            .iter()
            .map(|error| error["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(found, pointers, "{path}: {problem}");
    }
    let response = reqwest::Client::new()
        .get(format!("{}/v1/alerts/stream", serving.base))
        .bearer_auth(READ_KEY)
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/header/Last-Event-ID");

    serving.shutdown.trigger();
    test.remove().await;
}

/// The next `alerts.len()` events of `client` are `alerts`, in order.
async fn expect(client: &mut SseClient, alerts: &[Raised]) {
    for alert in alerts {
        let event = client.next_event().await.expect("the stream is open");
        assert_eq!(event.event, "alert");
        assert_eq!(
            (event.id, event.data["alertId"].as_str().unwrap_or_default()),
            (alert.seq, alert.alert_id.as_str()),
            "expected seq {} next, got {event:?}",
            alert.seq
        );
        assert_eq!(event.data["seq"], alert.seq);
        assert!(event.data["raisedAt"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_live_alerts_and_resumes_after_last_event_id_without_loss_or_repetition() {
    let test = ServingTest::create("alerts-stream").await;
    let serving = test.start_serving().await;
    let base = serving.base.as_str();
    let old = raise(&test.pool, &[spec("c-1"), spec("c-2")]).await;

    // Without an id: only what comes next.
    let mut live = SseClient::connect(base, READ_KEY, "", None).await;
    let first = raise(&test.pool, &[spec("c-1"), spec("c-2")]).await;
    let event = live.next_event().await.expect("an event");
    assert_documented(&served_document(base).await, "AlertsEvent", &event.data);
    assert_eq!(event.data["customerId"], "c-1");
    assert_eq!(
        (event.id, event.data["seq"].as_i64()),
        (first[0].seq, Some(first[0].seq))
    );
    expect(&mut live, &first[1..]).await;
    let second = raise(&test.pool, &[spec("c-3")]).await;
    expect(&mut live, &second).await;
    drop(live);

    // Missed while disconnected, then resumed after the last id seen: the missed ones,
    // then live ones, nothing twice.
    let missed = raise(&test.pool, &[spec("c-1"), spec("c-2"), spec("c-1")]).await;
    let mut resumed = SseClient::connect(base, READ_KEY, "", Some(second[0].seq)).await;
    expect(&mut resumed, &missed).await;
    let after = raise(&test.pool, &[spec("c-2")]).await;
    expect(&mut resumed, &after).await;

    // A notification lost: the stream still gets the alert (the poll finds it).
    let silent = raise_with(&test.pool, &[spec("c-4")], false).await;
    expect(&mut resumed, &silent).await;

    // ?lastEventId=0 replays everything; the header wins over the query.
    let everything: Vec<Raised> = [&old, &first, &second, &missed, &after, &silent]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut replay = SseClient::connect(base, READ_KEY, "lastEventId=0", None).await;
    expect(&mut replay, &everything).await;
    let mut header_wins =
        SseClient::connect(base, READ_KEY, "lastEventId=0", Some(after[0].seq)).await;
    expect(&mut header_wins, &silent).await;

    // One customer's alerts only.
    let mut customer =
        SseClient::connect(base, READ_KEY, "customerId=c-1&lastEventId=0", None).await;
    let of_c1: Vec<Raised> = everything
        .iter()
        .filter(|alert| alert.customer == "c-1")
        .cloned()
        .collect();
    expect(&mut customer, &of_c1).await;
    let mixed = raise(&test.pool, &[spec("c-2"), spec("c-1")]).await;
    expect(&mut customer, &mixed[1..]).await;

    // A replay longer than a page (100 alerts) comes whole and in order.
    let specs: Vec<Spec<'_>> = (0..250).map(|_| spec("c-9")).collect();
    let many = raise(&test.pool, &specs).await;
    let mut long = SseClient::connect(base, READ_KEY, "customerId=c-9", Some(0)).await;
    expect(&mut long, &many).await;

    // Every stream ends when the service shuts down (so the drain does not wait);
    // alerts not sent yet may still come before the end, never one sent before.
    serving.shutdown.trigger();
    for stream in [
        &mut resumed,
        &mut replay,
        &mut header_wins,
        &mut customer,
        &mut long,
    ] {
        while stream.next_event().await.is_some() {}
    }
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_endpoints_need_a_key_with_the_read_scope() {
    let test = ServingTest::create("alerts-auth").await;
    let serving = test.start_serving().await;
    for path in ["/v1/alerts", "/v1/alerts/stream"] {
        for (key, expected) in [
            (None, 401),
            (Some("not-a-key"), 401),
            (Some(INGEST_KEY), 403),
            (Some(ADMIN_KEY), 403),
            (Some(READ_KEY), 200),
            (Some(ALL_KEY), 200),
        ] {
            let mut request = reqwest::Client::new().get(format!("{}{path}", serving.base));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.expect("an answer");
            assert_eq!(response.status().as_u16(), expected, "{path} with {key:?}");
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            let wanted = match (expected, path) {
                (200, "/v1/alerts") => "application/json",
                (200, _) => "text/event-stream",
                _ => "application/problem+json",
            };
            assert_eq!(content_type, wanted, "{path} with {key:?}");
        }
    }
    serving.shutdown.trigger();
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_keep_alive_comments() {
    let test = ServingTest::create("alerts-keepalive").await;
    let serving = test.start_serving().await;
    let mut idle = SseClient::connect(&serving.base, READ_KEY, "", None).await;
    let started = std::time::Instant::now();
    assert_eq!(idle.next_comment().await, "keep-alive");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the keep-alive comes every 15 s"
    );
    serving.shutdown.trigger();
    test.remove().await;
}
