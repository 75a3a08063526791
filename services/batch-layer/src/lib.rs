//! The batch layer: exact recomputation of per-customer aggregates and baselines from the
//! Parquet lake into Postgres, nightly (`schedule`) and on demand (`run`).
//!
//! A run ([`run`]) takes the Postgres advisory lock (a second run says so and exits),
//! chooses the watermark T_b (hour-aligned; by default the last full hour the lake is
//! complete for, [`completeness`]), refuses to publish when the lake writer is behind
//! T_b, and recomputes the `event_date` days whose lake files changed since the last
//! succeeded run (all days with `--full`), one day at a time ([`compute`]): events
//! deduplicated by `transactionId` and cut at `ts <= T_b`, aggregated per customer and
//! hour and per customer and day with the day's peak 30-minute window. The rows of the
//! recomputed days, the vendors, the baselines (derived from the stored daily rows of
//! the last 30 days, [`baselines`]) and the run-log entry are replaced in one
//! transaction, the rows going in through binary `COPY` ([`binary`]); an incremental run
//! recomputes a day that only gained files (late arrivals) for the customers of those
//! files alone ([`scope`]), writes only the rows of a stored day that changed ([`rows`]),
//! and loads a day not stored yet into a partition of its own, indexed after the load
//! ([`partitions`]).
//! Readers see the previous run or this one, never a mix. Tables:
//! `migrations/0002_batch_views.sql`, partitioned by day in `0007_batch_day_partitions.sql`.
//!
//! In `schedule` mode ([`App`]) it serves `/healthz`, `/readyz` (Postgres) and
//! `/metrics` and runs the job on `batch.schedule` (cron with seconds, UTC).

mod background;
mod baselines;
mod binary;
pub mod completeness;
pub mod compute;
mod job;
pub mod lake;
mod partitions;
mod rows;
mod schedule;
mod scope;
mod store;

use fraud_config::Settings;
use fraud_postgres::PostgresProbe;
use fraud_service::startup::Service;
use fraud_service::{HttpService, Readiness, Shutdown};

pub use job::{Backwards, Incomplete, RunOptions, RunReport, RunTimes, run};
pub use store::Locked;

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

    /// Connects lazily to Postgres, binds `settings.batch.listen` and starts the
    /// scheduler.
    async fn build(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<Self> {
        let timeout = settings.service.probe_timeout();
        let pool = fraud_postgres::lazy_pool(&settings.postgres, timeout)?;
        schedule::spawn(settings, &shutdown)?;
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
