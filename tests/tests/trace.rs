//! One trace from a `POST /v1/transactions` to the alert it caused, through the real
//! binaries, each exporting its spans over OTLP to a collector the test runs.
//!
//! The test posts one transaction over the default `sum-30m-over-limit` with a
//! `traceparent` of its own and follows the W3C trace context hop by hop: the
//! transaction record's headers, the window update's headers, the alert's stored
//! `trace_context`, and the AMQP message's headers. At each hop the span id sent on is
//! that of a span the collector received from that service, under the test's trace id,
//! whose parent is the previous hop's span: ingest's `POST /v1/transactions` (a child of
//! the test's span), the speed layer's `window update`, the serving API's `evaluate
//! window update`, and its relay's `publish alert`.

use std::time::Duration;

use fraud_testkit::kafka::read_all;
use fraud_testkit::otlp::{ExportedSpan, OtlpCollector};
use fraud_testkit::poll_for;
use platform_tests::platform::Platform;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
/// The trace and the span of the caller: chosen by the test.
const TRACE_ID: &str = "5ee6bd4a2b1e4f0c9d8a7b6c5d4e3f21";
const CALLER_SPAN: &str = "a1b2c3d4e5f60718";

/// The span id of a `traceparent` of the test's trace (failing on any other trace).
fn span_of(traceparent: &str, hop: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert!(
        parts.len() == 4 && parts[0] == "00" && parts[3] == "01",
        "{hop}: not a sampled W3C traceparent: {traceparent}"
    );
    assert_eq!(parts[1], TRACE_ID, "{hop} left the trace: {traceparent}");
    assert_ne!(
        parts[2], CALLER_SPAN,
        "{hop} sends the caller's span on, not a span of its own"
    );
    parts[2].to_owned()
}

/// The `traceparent` header of the only record of `topic`.
async fn record_traceparent(platform: &Platform, topic: &str) -> String {
    let kafka = platform.settings.kafka.clone();
    let topic = topic.to_owned();
    let records = tokio::task::spawn_blocking(move || read_all(&kafka, &topic))
        .await
        .expect("read the topic");
    assert_eq!(records.len(), 1, "one record");
    let value = records[0]
        .header("traceparent")
        .expect("a traceparent header");
    String::from_utf8(value.to_vec()).expect("a text header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_of_a_post_reaches_the_alert_it_caused() {
    let collector = OtlpCollector::start().await;
    let platform = Platform::start_with(
        "trace",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            // Export every 100 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let mut queue = platform.subscribe("alert.*.sum-30m-over-limit").await;

    // 6000.00 alone is over the 30-minute limit of 5000.00.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/transactions", platform.ingest.base))
        .bearer_auth(&platform.ingest_key)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("tracestate", "test=1")
        .json(&json!({
            "transactionId": "traced-1",
            "customerId": "traced-customer",
            "vendorId": "shop-1",
            "transactionSum": "6000.00",
            "ts": now,
        }))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(response.status(), 202);

    // The alert's message carries the trace, and so does every hop before it.
    let delivery = queue.next().await;
    let alert: serde_json::Value = serde_json::from_slice(&delivery.data).expect("a JSON alert");
    assert_eq!(alert["rule"], "sum-30m-over-limit", "{alert}");
    let header = |name| fraud_testkit::amqp::header(&delivery, name);
    let publish = span_of(&header("traceparent").expect("a traceparent"), "the relay");
    assert_eq!(header("tracestate").as_deref(), Some("test=1"));
    let kafka = &platform.settings.kafka;
    let ingest = span_of(
        &record_traceparent(&platform, &kafka.transactions_topic).await,
        "ingest",
    );
    let speed = span_of(
        &record_traceparent(&platform, &kafka.window_updates_topic).await,
        "the speed layer",
    );
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT trace_context FROM alerts WHERE alert_id::text = $1")
            .bind(alert["alertId"].as_str().expect("an alert id"))
            .fetch_one(&platform.pool)
            .await
            .expect("the alert's row");
    let evaluate = span_of(
        stored["traceparent"]
            .as_str()
            .expect("a stored traceparent"),
        "the evaluation",
    );
    assert_eq!(stored["tracestate"], "test=1", "{stored}");

    // Each of those is a span exported by its service, a child of the hop before.
    let hops = [
        ("ingest", "POST /v1/transactions", &ingest, CALLER_SPAN),
        ("speed-layer", "window update", &speed, ingest.as_str()),
        (
            "serving-api",
            "evaluate window update",
            &evaluate,
            speed.as_str(),
        ),
        ("serving-api", "publish alert", &publish, evaluate.as_str()),
    ];
    let spans: Vec<ExportedSpan> = poll_for(DEADLINE, "every hop's span at the collector", || {
        let spans = collector.spans();
        let complete = hops
            .iter()
            .all(|(_, _, id, _)| spans.iter().any(|span| span.span_id == **id));
        async move { complete.then_some(spans) }
    })
    .await;
    for (service, name, id, parent) in hops {
        let span = spans
            .iter()
            .find(|span| span.span_id == *id)
            .expect("polled for");
        assert_eq!(
            (
                span.service.as_str(),
                span.name.as_str(),
                span.trace_id.as_str(),
                span.parent_span_id.as_str()
            ),
            (service, name, TRACE_ID, parent),
            "{span:?}"
        );
    }

    platform.stop().await;
}
