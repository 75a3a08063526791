//! `GET`/`PUT /v1/rules`: versions and entity tags, the preconditions (428, 412), every
//! problem of an invalid set listed (422) with nothing changed, the auth matrix, answers
//! as documented in `/openapi.json`, and a changed set taking effect on evaluation in
//! another instance without a restart.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, INGEST_KEY, READ_KEY, ServingTest};
use fraud_speed_view::WindowUpdate;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

/// A `/v1/rules` request: status, ETag and body.
async fn call(
    base: &str,
    method: reqwest::Method,
    key: Option<&str>,
    if_match: Option<&str>,
    content_type: Option<&str>,
    body: Option<String>,
) -> (u16, Option<String>, Value, String) {
    let mut request = reqwest::Client::new().request(method, format!("{base}/v1/rules"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.expect("the serving API answers");
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|value| value.to_str().unwrap().to_owned());
    let media_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, etag, body, media_type)
}

async fn get_rules(base: &str, key: Option<&str>) -> (u16, Option<String>, Value, String) {
    call(base, reqwest::Method::GET, key, None, None, None).await
}

async fn put_rules(
    base: &str,
    key: Option<&str>,
    if_match: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value, String) {
    call(
        base,
        reqwest::Method::PUT,
        key,
        if_match,
        Some("application/json"),
        Some(body.to_string()),
    )
    .await
}

/// The schema `/openapi.json` documents for the answer of `method` with `status`, as a
/// schema whose root is the whole document (so `$ref`s into components resolve).
fn documented(spec: &Value, method: &str, status: u16, media_type: &str) -> Value {
    let mut response = &spec["paths"]["/v1/rules"][method]["responses"][status.to_string()];
    if let Some(reference) = response["$ref"].as_str() {
        response = spec
            .pointer(&reference[1..])
            .expect("a documented response");
    }
    let media = media_type.split(';').next().unwrap().trim();
    let schema = &response["content"][media]["schema"];
    assert!(
        !schema.is_null(),
        "the document has no {media} body for {method} {status}"
    );
    let mut root = spec.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!("#/$defs/answer");
    root["$defs"] = json!({ "answer": schema });
    root
}

fn assert_documented(spec: &Value, method: &str, status: u16, media_type: &str, body: &Value) {
    let schema = documented(spec, method, status, media_type);
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{method} {status} {body} does not match the document: {errors:?}"
    );
}

fn lowered_sum_limit(rules: &Value, limit_minor: i64) -> Value {
    let mut rules = rules.clone();
    for rule in rules.as_array_mut().unwrap() {
        if rule["id"] == "sum-30m-over-limit" {
            rule["condition"]["limit_minor"] = json!(limit_minor);
        }
    }
    json!({ "rules": rules })
}

#[tokio::test]
async fn get_put_round_trip_with_versions_and_preconditions() {
    let test = ServingTest::create("rules-round-trip").await;
    let serving = test.start_serving().await;
    let base = &serving.base;
    let (_, spec) = common::get(base, "/openapi.json", None).await;

    let (status, etag, initial, media) = get_rules(base, Some(ADMIN_KEY)).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"0\"")));
    assert_documented(&spec, "get", 200, &media, &initial);
    // The documented schema is not vacuous.
    let validator = jsonschema::validator_for(&documented(&spec, "get", 200, &media)).unwrap();
    for wrong in [
        json!({"version": 0}),
        json!({"version": 0, "rules": [{"id": "x", "severity": "high"}]}),
        json!({"version": 0, "rules": [{"id": "x", "severity": "high",
               "condition": {"kind": "window_count_over", "limit_minor": 5}}]}),
    ] {
        assert!(!validator.is_valid(&wrong), "{wrong}");
    }
    assert_eq!(initial["version"], 0);
    let defaults = serde_json::to_value(&test.settings.serving.rules).unwrap();
    assert_eq!(initial["rules"], defaults);
    assert_eq!(
        initial["rules"][0],
        json!({"id": "sum-30m-over-limit", "severity": "high", "enabled": true,
               "condition": {"kind": "window_sum_over", "limit_minor": 500000}})
    );

    // Without If-Match: 428, and `*` is not enough either.
    let changed = lowered_sum_limit(&initial["rules"], 1_000);
    let (status, _, problem, media) = put_rules(base, Some(ADMIN_KEY), None, &changed).await;
    assert_eq!(status, 428, "{problem}");
    assert_documented(&spec, "put", 428, &media, &problem);
    assert_eq!(media, "application/problem+json");
    let (status, ..) = put_rules(base, Some(ADMIN_KEY), Some("*"), &changed).await;
    assert_eq!(status, 428);

    // Not JSON: 415; JSON syntax broken: 400.
    let (status, _, problem, media) = call(
        base,
        reqwest::Method::PUT,
        Some(ADMIN_KEY),
        Some("\"0\""),
        Some("text/plain"),
        Some(changed.to_string()),
    )
    .await;
    assert_eq!(status, 415, "{problem}");
    assert_documented(&spec, "put", 415, &media, &problem);
    let (status, _, problem, media) = call(
        base,
        reqwest::Method::PUT,
        Some(ADMIN_KEY),
        Some("\"0\""),
        Some("application/json"),
        Some("{\"rules\": [".to_owned()),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_documented(&spec, "put", 400, &media, &problem);

    // The change, based on version 0.
    let (status, etag, stored, media) =
        put_rules(base, Some(ADMIN_KEY), Some("\"0\""), &changed).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"1\"")), "{stored}");
    assert_documented(&spec, "put", 200, &media, &stored);
    assert_eq!(stored["version"], 1);
    assert_eq!(stored["rules"], changed["rules"]);
    let (status, etag, read, _) = get_rules(base, Some(ADMIN_KEY)).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"1\"")));
    assert_eq!(read, stored);
    let created_by: String =
        sqlx::query_scalar("SELECT created_by FROM rule_sets WHERE version = 1")
            .fetch_one(&test.pool)
            .await
            .unwrap();
    assert_eq!(created_by, ADMIN_KEY);

    // Based on a stale version: 412, nothing stored.
    let other = lowered_sum_limit(&initial["rules"], 2_000);
    let (status, _, problem, media) = put_rules(base, Some(ADMIN_KEY), Some("\"0\""), &other).await;
    assert_eq!(status, 412, "{problem}");
    assert_documented(&spec, "put", 412, &media, &problem);
    assert!(
        problem["detail"].as_str().unwrap().contains("\"1\""),
        "{problem}"
    );
    let (status, ..) = put_rules(base, Some(ADMIN_KEY), Some("\"one\""), &other).await;
    assert_eq!(status, 412);

    // Invalid: 422 listing every problem; nothing stored.
    let invalid = json!({"rules": [
        {"id": "Not An Id", "severity": "high", "condition": {"kind": "window_sum_over", "limit_minor": 0}},
        {"id": "twice", "severity": "severe", "condition": {"kind": "window_count_over", "limit": 5}},
        {"id": "twice", "severity": "low", "condition": {"kind": "window_count_over", "limit": 5}},
        {"id": "twice", "severity": "low", "condition": {"kind": "window_count_over", "limit": 5}},
        {"id": "no-kind", "severity": "low", "enabled": 1, "condition": {"limit": 5}},
        {"id": "baseline", "severity": "low",
         "condition": {"kind": "window_sum_over_baseline_peak", "multiple_percent": 2000000, "min_sum_minor": -1}},
    ]});
    let (status, _, problem, media) =
        put_rules(base, Some(ADMIN_KEY), Some("\"1\""), &invalid).await;
    assert_eq!(status, 422, "{problem}");
    assert_documented(&spec, "put", 422, &media, &problem);
    let listed: Vec<(&str, &str)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            (
                error["pointer"].as_str().unwrap(),
                error["detail"].as_str().unwrap(),
            )
        })
        .collect();
    let pointers: Vec<&str> = listed.iter().map(|(pointer, _)| *pointer).collect();
    assert_eq!(
        pointers,
        vec![
            "/rules/0/condition/limit_minor",
            "/rules/0/id",
            "/rules/1/severity",
            "/rules/3/id",
            "/rules/4/condition/kind",
            "/rules/4/enabled",
            "/rules/5/condition/min_sum_minor",
            "/rules/5/condition/multiple_percent",
        ],
        "{problem}"
    );
    assert!(
        listed[3].1.contains("`twice` is used by another rule"),
        "{listed:?}"
    );
    let (_, etag, after, _) = get_rules(base, Some(ADMIN_KEY)).await;
    assert_eq!((etag.as_deref(), &after), (Some("\"1\""), &stored));

    // A body that is not `{"rules": [...]}`.
    let (status, _, problem, _) =
        put_rules(base, Some(ADMIN_KEY), Some("\"1\""), &json!({"rule": []})).await;
    assert_eq!(status, 422);
    assert_eq!(
        problem["errors"],
        json!([{"pointer": "/rule", "detail": "unknown field; the body is `{\"rules\": [...]}`"},
               {"pointer": "/rules", "detail": "is required"}])
    );

    serving.shutdown.trigger();
    test.remove().await;
}

#[tokio::test]
async fn the_auth_matrix() {
    let test = ServingTest::create("rules-auth").await;
    let serving = test.start_serving().await;
    let base = &serving.base;
    let (_, spec) = common::get(base, "/openapi.json", None).await;
    let (_, _, current, _) = get_rules(base, Some(ADMIN_KEY)).await;
    let body = json!({ "rules": current["rules"] });
    for (key, expected) in [
        (None, 401),
        (Some("not-a-key"), 401),
        (Some(READ_KEY), 403),
        (Some(INGEST_KEY), 403),
        (Some(ADMIN_KEY), 200),
    ] {
        let (status, _, answer, media) = get_rules(base, key).await;
        assert_eq!(status, expected, "GET with {key:?}: {answer}");
        assert_documented(&spec, "get", status, &media, &answer);
        let version = if expected == 200 { "\"0\"" } else { "\"5\"" };
        let (status, _, answer, media) = put_rules(base, key, Some(version), &body).await;
        assert_eq!(status, expected, "PUT with {key:?}: {answer}");
        assert_documented(&spec, "put", status, &media, &answer);
    }
    // Only the admin's PUT was stored.
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM rule_sets")
        .fetch_one(&test.pool)
        .await
        .unwrap();
    assert_eq!(versions, 1);
    serving.shutdown.trigger();
    test.remove().await;
}

async fn publish(test: &ServingTest, update: &WindowUpdate) {
    let payload = serde_json::to_vec(update).unwrap();
    let record = FutureRecord::to(&test.settings.kafka.window_updates_topic)
        .key(&update.customer_id)
        .payload(&payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: "schema-version",
            value: Some(fraud_speed_view::update::UPDATE_SCHEMA_VERSION),
        }));
    test.producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)
        .expect("publish an update");
}

/// Waits until `group` has committed every record of the updates topic.
async fn caught_up(test: &ServingTest, group: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = test.settings.kafka.clone();
    let topic = test.settings.kafka.window_updates_topic.clone();
    let group = group.to_owned();
    fraud_testkit::wait_until(DEADLINE, "the serving group evaluated every update", || {
        let (kafka, topic, group) = (kafka.clone(), topic.clone(), group.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &kafka.brokers)
                    .set("group.id", &group)
                    .set("enable.auto.commit", "false")
                    .create()
                    .expect("a consumer");
                let timeout = Duration::from_secs(5);
                let mut list = rdkafka::TopicPartitionList::new();
                let mut ends = Vec::new();
                for partition in 0..2 {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, partition, timeout)
                        .expect("watermarks");
                    ends.push((partition, high));
                    list.add_partition(&topic, partition);
                }
                let committed = consumer
                    .committed_offsets(list, timeout)
                    .expect("committed offsets");
                ends.iter().all(|(partition, high)| {
                    *high == 0
                        || committed
                            .find_partition(&topic, *partition)
                            .and_then(|element| element.offset().to_raw())
                            == Some(*high)
                })
            })
            .await
            .unwrap()
        }
    })
    .await;
}

#[tokio::test]
async fn a_changed_rule_set_takes_effect_on_evaluation_without_a_restart() {
    let test = ServingTest::create("rules-live").await;
    let mut evaluating = test.settings.clone();
    evaluating.rabbitmq.url =
        fraud_config::Secret::new("amqp://guest:guest@127.0.0.1:1/%2f".into());
    let evaluator = test.start_serving_with(&evaluating).await;
    // The change goes through another instance, whose own consumer reads another topic:
    // the evaluator learns of it only through the store.
    let mut admin_settings = evaluating.clone();
    admin_settings.kafka.window_updates_topic =
        format!("{}-unused", test.settings.kafka.window_updates_topic);
    admin_settings.serving.group = format!("{}-admin", test.settings.serving.group);
    let admin = test.start_serving_with(&admin_settings).await;

    let now = fraud_domain::EventTime::now().as_millis();
    let update = |as_of: i64| WindowUpdate {
        customer_id: "lowered".to_owned(),
        as_of,
        // 10.01: over a limit of 10.00, far under the default 5000.00.
        sum_minor: 1_001,
        count: 1,
        max_minor: 1_001,
        distinct_vendors: 1,
        events: Vec::new(),
        source_partition: 0,
        source_offset: 1,
        generation: "00000000000000aa".to_owned(),
    };
    let alerts = || async {
        let rows: Vec<(String, i64, serde_json::Value)> =
            sqlx::query_as("SELECT rule_id, rule_version, body FROM alerts")
                .fetch_all(&test.pool)
                .await
                .unwrap();
        rows
    };
    // Under the defaults, 10.01 fires nothing.
    publish(&test, &update(now - 120 * 60 * 1000)).await;
    caught_up(&test, &test.settings.serving.group).await;
    assert!(alerts().await.is_empty());

    let (_, _, current, _) = get_rules(&admin.base, Some(ADMIN_KEY)).await;
    let lowered = lowered_sum_limit(&current["rules"], 1_000);
    let (status, ..) = put_rules(&admin.base, Some(ADMIN_KEY), Some("\"0\""), &lowered).await;
    assert_eq!(status, 200);
    let changed_at = std::time::Instant::now();

    // Updates keep coming, an hour apart in event time (each would start an episode);
    // within the refresh period one is evaluated under the new set.
    let mut as_of = now;
    let raised = fraud_testkit::poll_for(DEADLINE, "an alert under the lowered limit", || {
        as_of += 60 * 60 * 1000;
        let this = update(as_of);
        let test = &test;
        let alerts = &alerts;
        async move {
            publish(test, &this).await;
            let rows = alerts().await;
            (!rows.is_empty()).then_some(rows)
        }
    })
    .await;
    let took = changed_at.elapsed();
    assert!(
        took < serving_api::rules::REFRESH + Duration::from_secs(4),
        "the change took {took:?} to take effect"
    );
    assert_eq!(raised.len(), 1, "{raised:?}");
    let (rule, version, body) = &raised[0];
    assert_eq!(rule, "sum-30m-over-limit");
    assert_eq!(*version, 1);
    assert_eq!(body["threshold"], "10.00");
    assert_eq!(body["observed"], "10.01");

    evaluator.shutdown.trigger();
    admin.shutdown.trigger();
    test.remove().await;
}
