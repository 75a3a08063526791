//! The batch layer: exact recomputation of per-customer aggregates and baselines from the
//! Parquet lake into Postgres, nightly (`schedule`) and on demand (`run`).
//!
//! At this stage it applies the schema migrations ([`migrate`]) and, in `schedule` mode,
//! serves its operational endpoints on the batch port: `/healthz`, `/readyz` (Postgres)
//! and `/metrics` ([`App`]).

use fraud_config::Settings;
use fraud_postgres::PostgresProbe;
use fraud_service::startup::Service;
use fraud_service::{HttpService, Readiness, Shutdown};

/// Applies every pending schema migration to the configured database.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = fraud_postgres::lazy_pool(&settings.postgres, settings.service.probe_timeout())?;
    fraud_postgres::migrate(&pool).await?;
    let applied = fraud_postgres::MIGRATOR.iter().count();
    tracing::info!(migrations = applied, "schema is up to date");
    pool.close().await;
    Ok(())
}

/// The batch layer in `schedule` mode, bound and ready to run.
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
    const NAME: &'static str = "batch-layer";

    /// Connects lazily to Postgres and binds `settings.batch.listen`.
    async fn build(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<Self> {
        let timeout = settings.service.probe_timeout();
        let pool = fraud_postgres::lazy_pool(&settings.postgres, timeout)?;
        let readiness = Readiness::new(timeout)
            .with_shutdown(shutdown.clone())
            .with(PostgresProbe::new(pool));
        let router = fraud_service::ops::routes(readiness);
        let http = HttpService::bind(settings.batch.listen, router, shutdown).await?;
        Ok(Self { http })
    }

    /// Serves until shutdown, then drains.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.http.run_until_stopped().await
    }
}
