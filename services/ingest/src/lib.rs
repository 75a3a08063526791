//! The ingest service: `POST /v1/transactions` into Kafka, and the lake writer.
//!
//! At this stage it serves its operational endpoints on the ingest port: `/healthz`,
//! `/readyz` (Kafka with the transactions topic, and Redis, which will hold the
//! idempotency keys) and `/metrics`. [`App::build`] binds the listener, so callers learn
//! the real port (tests ask for port 0) before [`App::run_until_stopped`].

use std::sync::Arc;

use fraud_config::Settings;
use fraud_kafka::KafkaProbe;
use fraud_redis::{RedisHandle, RedisProbe};
use fraud_service::{HttpService, Readiness, Shutdown};

/// The ingest service, bound and ready to run.
pub struct App {
    http: HttpService,
}

impl App {
    /// Connects lazily to its servers and binds `settings.ingest.listen`.
    pub async fn build(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<Self> {
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
        let http = HttpService::bind(settings.ingest.listen, router, shutdown).await?;
        Ok(Self { http })
    }

    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// Serves until shutdown, then drains.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.http.run_until_stopped().await
    }
}
