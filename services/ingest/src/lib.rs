//! The ingest service: `POST /v1/transactions` into Kafka, and the lake writer.
//!
//! - [`api`]: the HTTP API (authentication, limits, decoding and validation of every item,
//!   the answer), with [`idempotency`] (ids remembered in Redis) and [`publish`] (durable
//!   production to Kafka with back-pressure).
//! - [`lake_writer`]: its own consumer group, writing the Parquet lake.
//!
//! The same port serves `/healthz`, `/readyz` (Kafka with the transactions topic, and
//! Redis) and `/metrics`. [`App::build`] binds the listener, so callers learn the real
//! port (tests ask for port 0) before [`App::run_until_stopped`].

use std::sync::Arc;
use std::time::Duration;

use fraud_config::Settings;
use fraud_kafka::KafkaProbe;
use fraud_redis::{RedisHandle, RedisProbe};
use fraud_service::startup::Service;
use fraud_service::{HttpService, Readiness, Shutdown};

pub mod api;
pub mod idempotency;
pub mod lake_writer;
pub mod publish;

/// The ingest service, bound and ready to run.
pub struct App {
    http: HttpService,
    lake_writer: lake_writer::LakeWriter,
    shutdown: Shutdown,
}

impl App {
    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.http.port()
    }
}

impl Service for App {
    const NAME: &'static str = "ingest";

    /// Connects lazily to its servers and binds `settings.ingest.listen`.
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
            .with(RedisProbe::new(Arc::clone(&redis)));
        let ingest = &settings.ingest;
        let produce_timeout = Duration::from_millis(ingest.produce_timeout_ms);
        let idempotency = idempotency::Idempotency::new(
            redis,
            // A reservation outlives the longest produce, then frees the id.
            produce_timeout + Duration::from_secs(5),
            Duration::from_millis(ingest.idempotency_horizon_ms),
        );
        let publisher = publish::Publisher::new(&settings.kafka, ingest)?;
        let api = api::Ingest::new(settings, idempotency, publisher)?;
        let lake_writer = lake_writer::LakeWriter::new(settings)?;
        let router = api::routes(Arc::new(api)).merge(fraud_service::ops::routes(readiness));
        let http = HttpService::bind(settings.ingest.listen, router, shutdown.clone()).await?;
        Ok(Self {
            http,
            lake_writer,
            shutdown,
        })
    }

    /// Starts the lake writer, serves until shutdown, then drains.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.lake_writer.spawn(&self.shutdown);
        self.http.run_until_stopped().await
    }
}
