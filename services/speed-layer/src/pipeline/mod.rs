//! The pipeline: poll a batch, apply it to Redis, publish window updates, commit.
//!
//! # Order of effects
//! For every batch: (1) check that the meta key still names this instance's generation
//! (else Redis lost its data: start or join a new generation and rebuild, discarding the
//! batch); (2) apply every customer's run to its state and write the new states, each
//! only if its key still holds the state it was applied to
//! ([`fraud_speed_view::StateWriter`]: the states it has no copy of are read first, the
//! writes go in one pipeline);
//! (3) publish one window update per touched customer (several for a hot customer's
//! long run, each listing a part of its events) and wait for the brokers: its
//! window, and every record of the customer's run that was applied, in offset order,
//! each with whether the customer had used its vendor before and with the window at its
//! own instant, `W(c, ts)` over the state after the batch ([`fraud_speed_view::update`]);
//! (4) commit the batch's offsets. A crash anywhere
//! replays from the last commit: the offset fence makes the replay change
//! nothing, and the updates are published again (at least once; a consumer keeps the one
//! with the largest source offset). A replayed record is not applied again, but when the
//! state still holds its event, it is answered as on the first delivery
//! (kept with the event), and the update lists it again: after a crash between (2) and
//! (3) the replayed batch's updates list the lost ones' events again, each with the
//! answers of its first delivery and its window over the state as it is then.
//! A failure of Redis or Kafka retries the same batch with backoff until it succeeds or
//! the service stops.
//!
//! # Positions and rebuilds
//! When partitions are assigned, the rebalance callback (module `consumer`) looks at the
//! meta key: a partition `ready` in the current generation continues from the group's
//! committed offset; any other is rebuilt: it starts at the first offset whose timestamp
//! (the ingest time) is at or after `min(now - retention, T_b) - future skew`, far enough
//! back for every event the windows and the increments since T_b can need, and is
//! complete once applied up to the partition's end at that moment. A partition being
//! rebuilt is marked `rebuilding` in the meta key, so the view reads as degraded and a
//! crash mid-rebuild rebuilds again.
//!
//! # Threads
//! Polling, decoding and the producer calls run on the pipeline's own thread; the async
//! clients run on a runtime of its own with one thread, never on the service's runtime.
//! Batches overlap by one: while batch N's Redis pipeline runs on the runtime's thread,
//! the pipeline thread polls and decodes batch N + 1; once N is applied, N + 1 goes to
//! Redis and N's updates are published and its offsets committed meanwhile. Should N be
//! applied while N + 1 is still filling (records coming slowly: N + 1 may wait a whole
//! `speed.max_batch_wait_ms` for them), N is finished then, without waiting for N + 1. A customer's
//! records still reach Redis in offset order (N + 1 starts only after N is applied), a
//! commit still follows the Redis effect and the updates of everything it covers, and
//! nothing is in flight when partitions are replanned or a generation starts.
//!
//! # Metrics
//! `speed_records_total{outcome}` (applied, late, duplicate, replayed, undecodable),
//! `speed_batches_total`, `speed_batch_seconds`, `speed_window_updates_total`,
//! `speed_rebuilds_total`, `speed_retries_total` and the gauge `speed_degraded`.

mod batch;
mod consumer;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fraud_config::{KafkaConfig, RedisConfig, Settings};
use fraud_service::Shutdown;
use fraud_speed_view::Tuning;

use crate::{StateHealth, Watermark};

/// The pipeline, configured and ready to start.
pub struct Pipeline {
    config: Config,
    watermark: Arc<Watermark>,
    health: Arc<StateHealth>,
}

#[derive(Debug, Clone)]
struct Config {
    kafka: KafkaConfig,
    redis: RedisConfig,
    topic: String,
    updates_topic: String,
    group: String,
    tuning: Tuning,
    max_future_skew_ms: i64,
    max_batch_records: usize,
    max_batch_wait: Duration,
    /// The updates producer's codec (`speed.updates_compression`).
    updates_compression: String,
    /// Customers whose state the writer keeps a copy of (`speed.cached_customers`).
    cached_customers: usize,
    timeout: Duration,
}

impl Config {
    /// How long the writer keeps an unused copy: after the retention nothing of the
    /// state matters to a window any more, and the key may have expired.
    fn copy_idle(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.tuning.retention_ms).unwrap_or(0))
    }
}

impl Pipeline {
    /// Reads its configuration; performs no I/O.
    pub fn new(
        settings: &Settings,
        watermark: Arc<Watermark>,
        health: Arc<StateHealth>,
    ) -> anyhow::Result<Self> {
        let speed = &settings.speed;
        let retention_ms = speed.retention_ms();
        let config = Config {
            kafka: settings.kafka.clone(),
            redis: settings.redis.clone(),
            topic: settings.kafka.transactions_topic.clone(),
            updates_topic: settings.kafka.window_updates_topic.clone(),
            group: speed.group.clone(),
            tuning: Tuning {
                retention_ms,
                idle_ttl_ms: retention_ms,
                increments_ttl_ms: i64::try_from(speed.increments_ttl_ms)
                    .context("speed.increments_ttl_ms is too large")?,
            },
            max_future_skew_ms: i64::try_from(settings.ingest.max_future_skew_ms)
                .context("ingest.max_future_skew_ms is too large")?,
            max_batch_records: usize::try_from(speed.max_batch_records)?.max(1),
            max_batch_wait: Duration::from_millis(speed.max_batch_wait_ms),
            updates_compression: speed.updates_compression.clone(),
            cached_customers: usize::try_from(speed.cached_customers)
                .context("speed.cached_customers is too large")?,
            timeout: settings.service.probe_timeout().max(Duration::from_secs(5)),
        };
        Ok(Self {
            config,
            watermark,
            health,
        })
    }

    /// Starts the pipeline on a thread of its own, as the task `pipeline` of `shutdown`:
    /// it stops when shutdown begins (after finishing the batch in hand), and a failure
    /// (or a panic) fails the task, which shuts the service down.
    pub fn spawn(self, shutdown: &Shutdown) {
        shutdown.spawn_thread("speed-pipeline", move |should_stop| {
            worker::run(self.config, self.watermark, self.health, should_stop)
        });
    }
}
