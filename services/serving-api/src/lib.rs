//! The serving API: customer risk merged from the batch and speed views, fraud rules
//! evaluated on every window update, and alerts published to RabbitMQ.
//!
//! At this stage it serves its operational endpoints on the serving port: `/healthz`,
//! `/readyz` (Postgres, Redis, RabbitMQ and the Kafka cluster) and `/metrics`.
//! [`App::build`] binds the listener, so callers learn the real port before
//! [`App::run_until_stopped`].

use std::sync::Arc;

use fraud_amqp::{AmqpHandle, AmqpProbe};
use fraud_config::Settings;
use fraud_kafka::KafkaProbe;
use fraud_postgres::PostgresProbe;
use fraud_redis::{RedisHandle, RedisProbe};
use fraud_service::startup::Service;
use fraud_service::{HttpService, Readiness, Shutdown};

/// The serving API, bound and ready to run.
pub struct App {
    http: HttpService,
}

impl App {
    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.http.port()
    }
}

impl Service for App {
    const NAME: &'static str = "serving-api";

    /// Connects lazily to its servers and binds `settings.serving.listen`.
    async fn build(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<Self> {
        let timeout = settings.service.probe_timeout();
        let pool = fraud_postgres::lazy_pool(&settings.postgres, timeout)?;
        let redis = Arc::new(RedisHandle::new(&settings.redis, timeout)?);
        let amqp = Arc::new(AmqpHandle::new(&settings.rabbitmq, "serving-api"));
        let readiness = Readiness::new(timeout)
            .with_shutdown(shutdown.clone())
            .with(PostgresProbe::new(pool))
            .with(RedisProbe::new(redis))
            .with(AmqpProbe::new(amqp))
            .with(KafkaProbe::new(&settings.kafka, None, timeout)?);
        let router = fraud_service::ops::routes(readiness);
        let http = HttpService::bind(settings.serving.listen, router, shutdown).await?;
        Ok(Self { http })
    }

    /// Serves until shutdown, then drains.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.http.run_until_stopped().await
    }
}
