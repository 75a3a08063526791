//! The speed layer: exact 30-minute sliding windows and hourly increments per customer,
//! kept in Redis from the `transactions` topic, exactly once in effect.
//!
//! One or more instances form the consumer group `speed.group` and split the topic's
//! partitions. Each instance polls batches of records on a thread of its own
//! ([`pipeline`]), applies each customer's run of records to its state and writes the
//! new states to Redis with a compare-and-set, a batch in one or two round trips (the
//! rules, the encoding and their invariants live in [`fraud_speed_view`], shared with
//! the serving API), publishes one window update per touched customer (its window and
//! the events the batch applied) to `kafka.window_updates_topic`, and only then commits
//! the offsets.
//!
//! When Redis loses its data the meta key goes with it; the instance that notices
//! starts a new generation and every instance rebuilds its partitions from Kafka, by
//! timestamp, back to what the windows and the increments since the batch watermark
//! need. Until then `/readyz` answers 503 naming the rebuild, and the meta key tells the
//! serving API the view is degraded.
//!
//! Operational endpoints on `speed.listen`: `/healthz`, `/readyz` (Kafka with the
//! transactions topic, Redis, and the state being complete) and `/metrics`.

pub mod pipeline;
mod watermark;

use std::sync::{Arc, Mutex};

use fraud_config::Settings;
use fraud_kafka::KafkaProbe;
use fraud_redis::{RedisHandle, RedisProbe};
use fraud_service::startup::Service;
use fraud_service::{HttpService, Probe, ProbeFuture, Readiness, Shutdown};

pub use watermark::Watermark;

/// The speed layer, bound and ready to run.
pub struct App {
    http: HttpService,
}

impl App {
    /// The port of the operational endpoints.
    pub fn port(&self) -> u16 {
        self.http.port()
    }
}

/// Whether this instance's state is complete, as its pipeline last saw it.
#[derive(Debug, Default)]
pub struct StateHealth {
    degraded: Mutex<Option<String>>,
}

impl StateHealth {
    /// A new health, degraded until the pipeline has looked at the state.
    pub fn starting() -> Arc<Self> {
        Arc::new(Self {
            degraded: Mutex::new(Some("the pipeline has not checked its state yet".into())),
        })
    }

    pub fn set(&self, degraded: Option<String>) {
        metrics::gauge!("speed_degraded").set(if degraded.is_some() { 1.0 } else { 0.0 });
        *self
            .degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = degraded;
    }

    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Not ready while the state is being rebuilt.
struct StateProbe(Arc<StateHealth>);

impl Probe for StateProbe {
    fn name(&self) -> &'static str {
        "state"
    }

    fn check(&self) -> ProbeFuture<'_> {
        let degraded = self.0.degraded();
        Box::pin(async move { degraded.map_or(Ok(()), Err) })
    }
}

impl Service for App {
    const NAME: &'static str = "speed-layer";

    /// Binds `settings.speed.listen` and starts the pipeline and the watermark watcher;
    /// servers are connected lazily.
    async fn build(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<Self> {
        let timeout = settings.service.probe_timeout();
        let redis = Arc::new(RedisHandle::new(&settings.redis, timeout)?);
        let pool = fraud_postgres::lazy_pool(&settings.postgres, timeout)?;
        let watermark = Watermark::unknown();
        watermark::spawn_watcher(
            &shutdown,
            pool,
            Arc::clone(&watermark),
            std::time::Duration::from_millis(settings.speed.watermark_refresh_ms),
        );
        let health = StateHealth::starting();
        pipeline::Pipeline::new(settings, Arc::clone(&watermark), Arc::clone(&health))?
            .spawn(&shutdown);
        let readiness = Readiness::new(timeout)
            .with_shutdown(shutdown.clone())
            .with(KafkaProbe::new(
                &settings.kafka,
                Some(&settings.kafka.transactions_topic),
                timeout,
            )?)
            .with(RedisProbe::new(redis))
            .with(StateProbe(health));
        let router = fraud_service::ops::routes(readiness);
        let http = HttpService::bind(settings.speed.listen, router, shutdown).await?;
        Ok(Self { http })
    }

    /// Serves until shutdown, then drains.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.http.run_until_stopped().await
    }
}
