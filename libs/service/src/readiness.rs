//! Readiness: can this service do its work right now?
//!
//! A service lists a [`Probe`] per server it needs. [`Readiness::check`] runs them all
//! at once, each bounded by the probe timeout, and reports every result; the service is
//! ready only when all pass and it is not shutting down.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Shutdown;

/// What a probe's check returns: `Err` carries a reason an operator can act on.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A check of one server a service depends on.
pub trait Probe: Send + Sync + 'static {
    /// A short name for the report, e.g. `kafka`.
    fn name(&self) -> &'static str;
    /// Checks the server with a real request (a metadata fetch, `SELECT 1`, `PING`).
    fn check(&self) -> ProbeFuture<'_>;
}

/// The outcome of one probe.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

/// The outcome of every probe.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessReport {
    pub ready: bool,
    pub shutting_down: bool,
    pub checks: Vec<ProbeReport>,
}

/// A service's probes.
#[derive(Clone)]
pub struct Readiness {
    probes: Vec<Arc<dyn Probe>>,
    timeout: Duration,
    shutdown: Option<Shutdown>,
}

impl Readiness {
    /// No probes yet; each probe may take at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            probes: Vec::new(),
            timeout,
            shutdown: None,
        }
    }

    /// Adds a probe.
    pub fn with(mut self, probe: impl Probe) -> Self {
        self.probes.push(Arc::new(probe));
        self
    }

    /// Reports not ready once shutdown has begun, so load balancers drain the instance.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Runs every probe concurrently.
    pub async fn check(&self) -> ReadinessReport {
        let checks = futures::future::join_all(self.probes.iter().map(|probe| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(self.timeout, probe.check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
            };
            ProbeReport {
                name: probe.name(),
                ok: outcome.is_ok(),
                error: outcome.err(),
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
        }))
        .await;
        let shutting_down = self
            .shutdown
            .as_ref()
            .is_some_and(Shutdown::is_shutting_down);
        ReadinessReport {
            ready: !shutting_down && checks.iter().all(|check| check.ok),
            shutting_down,
            checks,
        }
    }
}
