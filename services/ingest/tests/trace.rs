//! The W3C trace context of a `POST /v1/transactions` travels into the Kafka record's
//! headers, so everything downstream joins the same trace.

use std::time::Duration;

use fraud_service::auth::key_sha256;
use fraud_testkit::kafka::read_all;
use fraud_testkit::otlp::OtlpCollector;
use fraud_testkit::service::Binary;
use fraud_testkit::{get_json, local_settings, poll_for, unique_name, wait_until};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn the_callers_trace_id_reaches_the_record_headers() {
    let collector = OtlpCollector::start().await;
    let settings = local_settings();
    let topic = unique_name("ingest-trace");
    fraud_kafka::ensure_topic(&settings.kafka, &topic, 1, 1)
        .await
        .expect("create the topic");
    let lake = std::env::temp_dir().join(&topic);
    let extra = format!(
        "[kafka]\ntransactions_topic = \"{topic}\"\n[redis]\nkey_prefix = \"{topic}:\"\n\
         [lake]\nroot = \"{}\"\nwriter_group = \"{topic}-lake\"\n\
         [auth]\nkeys = [{{ name = \"t\", sha256 = \"{}\", scopes = [\"ingest\"] }}]\n",
        lake.display(),
        key_sha256("trace-key")
    );
    let binary = Binary {
        path: env!("CARGO_BIN_EXE_ingest"),
        args: &[],
        section: "ingest",
    };
    let (_process, base) = binary.start(
        &extra,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    wait_until(Duration::from_secs(30), "ingest to be ready", || {
        let url = format!("{base}/readyz");
        async move { matches!(get_json(&url).await, Some((200, _))) }
    })
    .await;

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/transactions"))
        .bearer_auth("trace-key")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .body(r#"{"customerId":"c","vendorId":"v","transactionSum":"3.10","ts":"2026-01-01T00:00:00Z"}"#)
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), 202);

    let kafka = settings.kafka.clone();
    let read_topic = topic.clone();
    let records = tokio::task::spawn_blocking(move || read_all(&kafka, &read_topic))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    let traceparent = String::from_utf8(
        records[0]
            .header("traceparent")
            .expect("a traceparent header")
            .to_vec(),
    )
    .unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "the record continues the caller's trace: {traceparent}"
    );
    // The request span itself is exported under the same trace id.
    let trace_id_bytes: Vec<u8> = (0..TRACE_ID.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TRACE_ID[i..i + 2], 16).unwrap())
        .collect();
    poll_for(
        Duration::from_secs(15),
        "the request span at the collector",
        || {
            let seen = collector.saw_bytes(&trace_id_bytes);
            async move { seen.then_some(()) }
        },
    )
    .await;
    fraud_kafka::delete_topic(&settings.kafka, &topic)
        .await
        .expect("delete the test topic");
    fraud_testkit::redis_keys::delete_prefix(settings.redis.url.expose(), &format!("{topic}:"))
        .await
        .expect("delete the test's Redis keys");
    let _ = std::fs::remove_dir_all(&lake);
}
