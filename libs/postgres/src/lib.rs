//! PostgreSQL for the platform: the connection pool, the schema migrations (the files in
//! the repository's `migrations/`, embedded at build time) and the readiness probe.
//!
//! Pools connect lazily, so a service starts (and reports not ready) while Postgres is
//! down, and recovers by itself when it is back.

use std::time::Duration;

use fraud_config::PostgresConfig;
use fraud_service::{Probe, ProbeFuture};
use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema migrations, from the repository's `migrations/` directory.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Postgres failures, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres.url is not a valid connection URL: {0}")]
    InvalidUrl(sqlx::Error),
    #[error("failed to apply the schema migrations: {0}")]
    Migrate(#[from] MigrateError),
}

/// A lazily connecting pool; acquiring a connection waits at most `acquire_timeout`.
pub fn lazy_pool(config: &PostgresConfig, acquire_timeout: Duration) -> Result<PgPool, Error> {
    let options: PgConnectOptions = config.url.expose().parse().map_err(Error::InvalidUrl)?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options))
}

/// Applies every migration not yet applied (concurrent callers are serialised by an
/// advisory lock that sqlx takes).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The batch watermark T_b in UTC ms: the watermark of the latest successful batch run,
/// `None` before the first one. The batch layer's results are exact for `ts <= T_b`; the
/// speed layer keeps what comes after.
pub async fn batch_watermark(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM max(watermark)) * 1000)::bigint \
         FROM batch_runs WHERE status = 'succeeded'",
    )
    .fetch_one(pool)
    .await
}

/// Ready when `SELECT 1` succeeds.
pub struct PostgresProbe {
    pool: PgPool,
}

impl PostgresProbe {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl Probe for PostgresProbe {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn check(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&self.pool)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        })
    }
}
