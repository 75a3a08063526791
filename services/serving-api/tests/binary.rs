//! The real `serving-api` binary: it serves, reports readiness honestly, stops cleanly and
//! rejects a bad configuration with every problem listed.

use fraud_testkit::service::{self, Binary};

fn binary() -> Binary<'static> {
    Binary {
        path: env!("CARGO_BIN_EXE_serving-api"),
        args: &[],
        section: "serving",
    }
}

#[tokio::test]
async fn serves_health_readiness_and_metrics_then_stops_on_sigterm() {
    service::check_serves_and_stops_cleanly(binary()).await;
}

#[tokio::test]
async fn is_not_ready_while_redis_is_unreachable() {
    service::check_not_ready_without(
        binary(),
        &[("FRAUD_REDIS__URL", "redis://127.0.0.1:1")],
        &["redis"],
    )
    .await;
}

#[test]
fn an_invalid_configuration_exits_2_listing_every_problem() {
    service::check_invalid_configuration_is_listed(binary());
}
