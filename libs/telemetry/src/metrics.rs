//! The process's Prometheus recorder.
//!
//! Metrics are recorded through the `metrics` facade (`counter!`, `histogram!`, …) with
//! fixed names (`*_total`, `*_seconds`) and low-cardinality labels; `/metrics` renders
//! them in the Prometheus text format.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder once per process (later calls are no-ops) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); ours still renders
        // whatever is recorded through it, so that is not an error worth stopping for.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The metrics in the Prometheus text exposition format.
pub fn render() -> String {
    install().render()
}
