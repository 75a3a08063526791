//! The batch watermark T_b, read from Postgres now and then.
//!
//! The speed layer needs it twice: hourly increments before T_b can be dropped (the batch
//! has them), and a rebuild must reach back to T_b. Unknown (Postgres down, or no batch
//! run yet) means nothing is dropped and a rebuild starts at the beginning of the topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use fraud_service::Shutdown;
use sqlx::PgPool;

const UNKNOWN: i64 = i64::MIN;

/// The last T_b read (UTC ms), shared with the pipeline.
#[derive(Debug)]
pub struct Watermark(AtomicI64);

impl Watermark {
    pub fn unknown() -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(UNKNOWN)))
    }

    pub fn get(&self) -> Option<i64> {
        let value = self.0.load(Ordering::Relaxed);
        (value != UNKNOWN).then_some(value)
    }

    pub fn set(&self, watermark: Option<i64>) {
        self.0
            .store(watermark.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }
}

/// Reads T_b every `every` until shutdown. A failed read keeps the last value.
pub(crate) fn spawn_watcher(
    shutdown: &Shutdown,
    pool: PgPool,
    watermark: Arc<Watermark>,
    every: Duration,
) {
    let token = shutdown.token();
    shutdown.spawn("watermark", async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            match fraud_postgres::batch_watermark(&pool).await {
                Ok(value) => {
                    if value != watermark.get() {
                        tracing::info!(watermark = ?value, "batch watermark");
                    }
                    watermark.set(value);
                }
                Err(error) => tracing::debug!(%error, "could not read the batch watermark"),
            }
        }
    });
}
