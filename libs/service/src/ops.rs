//! The operational routes every service serves, and serving a router until shutdown.
//!
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 when every probe passes, else 503, with a JSON report of each.
//! - `GET /metrics`: the Prometheus text format.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Readiness;

/// The `/healthz`, `/readyz` and `/metrics` routes; merge them into the service's router.
///
/// Installs the process's metrics recorder, so what is recorded from here on is served.
pub fn routes(readiness: Readiness) -> Router {
    fraud_telemetry::metrics::install();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let report = readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        fraud_telemetry::metrics::render(),
    )
}

/// Serves `router` on `listener` until `stop` is cancelled, then finishes the requests
/// in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(|error| anyhow::anyhow!("http server failed: {error}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::{Probe, ProbeFuture};

    struct Fixed(&'static str, Result<(), String>);

    impl Probe for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn check(&self) -> ProbeFuture<'_> {
            let outcome = self.1.clone();
            Box::pin(async move { outcome })
        }
    }

    struct Hangs;

    impl Probe for Hangs {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn check(&self) -> ProbeFuture<'_> {
            Box::pin(std::future::pending())
        }
    }

    async fn get_status(router: Router, path: &str) -> (StatusCode, serde_json::Value) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    #[tokio::test]
    async fn readyz_is_200_only_when_every_probe_passes() {
        let all_ok = Readiness::new(Duration::from_secs(1))
            .with(Fixed("kafka", Ok(())))
            .with(Fixed("redis", Ok(())));
        let (status, body) = get_status(routes(all_ok), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["ready"], true);

        let one_down = Readiness::new(Duration::from_secs(1))
            .with(Fixed("kafka", Ok(())))
            .with(Fixed("redis", Err("connection refused".into())));
        let (status, body) = get_status(routes(one_down), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"][1]["name"], "redis");
        assert_eq!(body["checks"][1]["error"], "connection refused");
    }

    #[tokio::test]
    async fn a_hanging_probe_times_out_instead_of_hanging_readyz() {
        let readiness = Readiness::new(Duration::from_millis(20)).with(Hangs);
        let (status, body) = get_status(routes(readiness), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body["checks"][0]["error"]
                .as_str()
                .unwrap()
                .contains("no answer within 20 ms")
        );
    }

    #[tokio::test]
    async fn readyz_reports_not_ready_while_shutting_down() {
        let shutdown = crate::Shutdown::new(Duration::from_secs(1));
        let readiness = Readiness::new(Duration::from_secs(1)).with_shutdown(shutdown.clone());
        let (status, _) = get_status(routes(readiness.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        shutdown.trigger();
        let (status, body) = get_status(routes(readiness), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["shuttingDown"], true);
    }

    #[tokio::test]
    async fn healthz_and_metrics_answer() {
        let readiness = Readiness::new(Duration::from_secs(1));
        let router = routes(readiness);
        let (status, body) = get_status(router.clone(), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        metrics::counter!("ops_test_events_total").increment(3);
        let response = router
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(text.to_vec()).unwrap();
        assert!(text.contains("ops_test_events_total 3"), "{text}");
    }
}
