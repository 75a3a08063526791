//! The speed layer: exact 30-minute sliding windows per customer, kept in Redis from the
//! `transactions` topic.
//!
//! At this stage it serves its operational endpoints on the speed-layer port: `/healthz`,
//! `/readyz` (Kafka with the transactions topic, and Redis) and `/metrics`.
//! [`App::build`] binds the listener, so callers learn the real port before
//! [`App::run_until_stopped`].

use std::sync::Arc;

use fraud_config::Settings;
use fraud_kafka::KafkaProbe;
use fraud_redis::{RedisHandle, RedisProbe};
use fraud_service::startup::Service;
use fraud_service::{HttpService, Readiness, Shutdown};

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

impl Service for App {
    const NAME: &'static str = "speed-layer";

    /// Connects lazily to its servers and binds `settings.speed.listen`.
    async fn build(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<Self> {
        let timeout = settings.service.probe_timeout();
        let redis = Arc::new(RedisHandle::new(&settings.redis, timeout)?);
        let readiness = Readiness::new(timeout)
            .with_shutdown(shutdown.clone())
            .with(KafkaProbe::new(
                &settings.kafka,
                Some(&settings.kafka.transactions_topic),
                timeout,
            )?)
            .with(RedisProbe::new(redis));
        let router = fraud_service::ops::routes(readiness);
        let http = HttpService::bind(settings.speed.listen, router, shutdown).await?;
        Ok(Self { http })
    }

    /// Serves until shutdown, then drains.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.http.run_until_stopped().await
    }
}
