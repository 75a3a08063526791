//! The real `speed-layer` binary: it serves, reports readiness honestly, stops cleanly and
//! rejects a bad configuration with every problem listed.

use fraud_testkit::service::{self, Binary};
use fraud_testkit::{local_settings, unique_name};

fn binary() -> Binary<'static> {
    Binary {
        path: env!("CARGO_BIN_EXE_speed-layer"),
        args: &[],
        section: "speed",
    }
}

/// Topics of the test's own, so the instance rebuilds nothing of the dev stack's.
async fn own_topics() -> (String, String) {
    let kafka = local_settings().kafka;
    let transactions = unique_name("speed-bin");
    let updates = format!("{transactions}-updates");
    for topic in [&transactions, &updates] {
        fraud_kafka::ensure_topic(&kafka, topic, 2, 1)
            .await
            .expect("create a topic");
    }
    (transactions, updates)
}

async fn delete_topics(topics: [&str; 2]) {
    let kafka = local_settings().kafka;
    for topic in topics {
        fraud_kafka::delete_topic(&kafka, topic)
            .await
            .expect("delete a topic");
    }
}

#[tokio::test]
async fn serves_health_readiness_and_metrics_then_stops_on_sigterm() {
    let (transactions, updates) = own_topics().await;
    service::check_serves_and_stops_cleanly_with(
        binary(),
        &[
            ("FRAUD_KAFKA__TRANSACTIONS_TOPIC", &transactions),
            ("FRAUD_KAFKA__WINDOW_UPDATES_TOPIC", &updates),
        ],
    )
    .await;
    delete_topics([&transactions, &updates]).await;
}

#[tokio::test]
async fn is_not_ready_while_redis_is_unreachable() {
    let (transactions, updates) = own_topics().await;
    service::check_not_ready_without(
        binary(),
        &[
            ("FRAUD_REDIS__URL", "redis://127.0.0.1:1"),
            ("FRAUD_KAFKA__TRANSACTIONS_TOPIC", &transactions),
            ("FRAUD_KAFKA__WINDOW_UPDATES_TOPIC", &updates),
        ],
        // The state cannot be checked either.
        &["redis", "state"],
    )
    .await;
    delete_topics([&transactions, &updates]).await;
}

#[test]
fn an_invalid_configuration_exits_2_listing_every_problem() {
    service::check_invalid_configuration_is_listed(binary());
}
