//! The pipeline's loop, on its own thread.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fraud_events::SCHEMA_VERSION_HEADER;
use fraud_redis::RedisHandle;
use fraud_speed_view::meta::{PartitionStatus, Progress, SpeedMeta};
use fraud_speed_view::update::{MAX_EVENTS_PER_UPDATE, UPDATE_SCHEMA_VERSION};
use fraud_speed_view::{
    AppliedEvent, ApplyOutcome, Generation, RecordOutcome, StateWriter, WindowUpdate, customer_key,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use redis::AsyncCommands;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use fraud_config::KafkaConfig;

use super::Config;
use super::batch::Batch;
use super::consumer::{self, Plan, Positioner, PositioningContext, Rebalance};
use crate::{StateHealth, Watermark};

/// How long one poll waits when nothing is buffered: the latency of noticing shutdown.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long one poll waits while a batch is in Redis: how soon after it is applied its
/// updates go out and it is committed, when records come slowly.
const PENDING_POLL_TIMEOUT: Duration = Duration::from_millis(1);
/// How often the generation is checked and progress reported while idle.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping pipeline waits to leave its group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs the pipeline until `should_stop` says so or it fails.
pub(super) fn run(
    config: Config,
    watermark: Arc<Watermark>,
    health: Arc<StateHealth>,
    should_stop: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("speed-redis")
            .enable_all()
            .build()
            .context("failed to start the pipeline's runtime")?,
    );
    let redis = Arc::new(RedisHandle::new(&config.redis, config.timeout)?);
    let positioner = Arc::new(Positioner::new(
        &config.kafka,
        Arc::clone(&runtime),
        Arc::clone(&redis),
        &config.redis.key_prefix,
        config.topic.clone(),
        watermark,
        config.tuning.retention_ms,
        config.max_future_skew_ms,
        config.timeout,
    )?);
    let consumer = consumer::create(
        &config.kafka,
        &config.group,
        PositioningContext::new(Arc::clone(&positioner)),
    )?;
    consumer
        .subscribe(&[&config.topic])
        .with_context(|| format!("failed to subscribe to `{}`", config.topic))?;
    let producer = fraud_kafka::durable_producer(&KafkaConfig {
        compression: config.updates_compression.clone(),
        ..config.kafka.clone()
    })?;
    tracing::info!(
        topic = %config.topic,
        group = %config.group,
        updates = %config.updates_topic,
        "speed layer pipeline started"
    );
    let mut worker = Worker {
        writer: Arc::new(
            StateWriter::new().with_copies(config.cached_customers, config.copy_idle()),
        ),
        config,
        consumer,
        producer,
        runtime,
        redis,
        positioner,
        health,
        assigned: BTreeMap::new(),
        positions: BTreeMap::new(),
        unplanned: BTreeSet::new(),
        dropped_from: BTreeMap::new(),
    };
    let outcome = worker.run(&should_stop);
    if !fraud_kafka::close_within(worker, LEAVE_TIMEOUT) {
        tracing::warn!("the pipeline did not leave its group in time");
    }
    outcome
}

struct Worker {
    config: Config,
    writer: Arc<StateWriter>,
    consumer: BaseConsumer<PositioningContext>,
    producer: FutureProducer,
    runtime: Arc<Runtime>,
    redis: Arc<RedisHandle>,
    positioner: Arc<Positioner>,
    health: Arc<StateHealth>,
    /// Assigned partitions, each with the offset its rebuild completes at (if rebuilding).
    assigned: BTreeMap<i32, Option<i64>>,
    /// Per partition: the last offset applied and its record's timestamp.
    positions: BTreeMap<i32, (i64, Option<i64>)>,
    /// Assigned partitions not positioned yet, paused until they are.
    unplanned: BTreeSet<i32>,
    /// Per partition: the first offset of a batch dropped before it was applied.
    dropped_from: BTreeMap<i32, i64>,
}

/// A polled batch whose Redis pipeline runs on the runtime's thread.
struct Pending {
    batch: Batch,
    applying: Applying,
    started: Instant,
}

/// A pending batch's Redis pipeline: running, or done with its result.
enum Applying {
    Running(JoinHandle<Result<Vec<ApplyOutcome>, NotApplied>>),
    Done(Result<Vec<ApplyOutcome>, NotApplied>),
}

/// What applying one batch to Redis needs, owned, so that it runs while the pipeline
/// thread polls the next batch.
struct Applier {
    writer: Arc<StateWriter>,
    redis: Arc<RedisHandle>,
    positioner: Arc<Positioner>,
    tuning: fraud_speed_view::Tuning,
    runs: Vec<(String, Vec<fraud_speed_view::Record>)>,
}

impl Applier {
    async fn apply(self) -> Result<Vec<ApplyOutcome>, NotApplied> {
        let failed = |error: anyhow::Error| NotApplied::Failed(error);
        let generation = self
            .positioner
            .generation()
            .ok_or(NotApplied::GenerationLost)?;
        let mut connection = self
            .redis
            .connection()
            .await
            .map_err(|error| failed(error.into()))?;
        let current: Option<String> = connection
            .hget(&self.positioner.meta_key, "generation")
            .await
            .map_err(|error| failed(error.into()))?;
        if current.as_deref() != Some(generation.to_string().as_str()) {
            return Err(NotApplied::GenerationLost);
        }
        let outcomes = self
            .writer
            .apply(
                &mut connection,
                generation,
                self.positioner.watermark.get(),
                self.tuning,
                &self.runs,
            )
            .await
            .map_err(|error| failed(error.into()))?;
        let mut totals = [0_u64; 4];
        for outcome in &outcomes {
            totals[0] += outcome.applied;
            totals[1] += outcome.late;
            totals[2] += outcome.duplicates;
            totals[3] += outcome.replayed;
        }
        for (outcome, total) in ["applied", "late", "duplicate", "replayed"]
            .into_iter()
            .zip(totals)
        {
            metrics::counter!("speed_records_total", "outcome" => outcome).increment(total);
        }
        Ok(outcomes)
    }
}

/// A window update to publish, with the span of its publication: a child of the trace
/// of the record that caused it (the customer's last of the batch), whose context the
/// update's headers carry. The span ends once the update is acknowledged.
struct Outgoing {
    update: WindowUpdate,
    headers: Vec<(String, String)>,
    _span: tracing::Span,
}

/// Why a batch was not applied.
enum NotApplied {
    /// Redis lost its data (or another instance started a new generation).
    GenerationLost,
    Failed(anyhow::Error),
}

impl Worker {
    fn run(&mut self, should_stop: &impl Fn() -> bool) -> anyhow::Result<()> {
        let mut last_check: Option<Instant> = None;
        // The batch whose Redis pipeline is running while the next one is polled.
        let mut pending: Option<Pending> = None;
        loop {
            if should_stop() {
                if let Some(pending) = pending.take() {
                    self.finish(pending, None, should_stop)?;
                }
                tracing::info!("speed layer pipeline stopped");
                return Ok(());
            }
            let batch = self.poll_batch(&mut pending, should_stop)?;
            let next = (!batch.is_empty()).then_some(batch);
            pending = match pending.take() {
                Some(previous) => self.finish(previous, next, should_stop)?,
                None => next.map(|batch| self.start(batch)),
            };
            if last_check.is_none_or(|at| at.elapsed() >= CHECK_EVERY) {
                last_check = Some(Instant::now());
                // Replanning seeks partitions and a new generation starts over: never
                // with a batch in flight, whose records would then count as replayed.
                if let Some(pending) = pending.take() {
                    self.finish(pending, None, should_stop)?;
                }
                if let Err(error) = self.check_generation() {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "could not check the generation"
                    );
                }
                self.report_progress();
            }
            self.update_health();
        }
    }

    /// Polls up to `max_batch_records` records, waiting at most `max_batch_wait` after
    /// the first one. Meanwhile, once `pending` is applied, it is finished (its updates
    /// published, its offsets committed) rather than after this poll, which would hold
    /// its updates back by a whole batch wait; should applying it have failed, polling
    /// stops and the caller's [`Worker::finish`] deals with it (and with this batch).
    fn poll_batch(
        &mut self,
        pending: &mut Option<Pending>,
        should_stop: &impl Fn() -> bool,
    ) -> anyhow::Result<Batch> {
        let mut batch = Batch::default();
        let mut deadline: Option<Instant> = None;
        while batch.records < self.config.max_batch_records {
            if let Some(in_flight) = pending.as_mut() {
                if let Applying::Running(handle) = &mut in_flight.applying
                    && handle.is_finished()
                {
                    in_flight.applying = Applying::Done(
                        self.runtime
                            .block_on(handle)
                            .unwrap_or_else(|error| Err(NotApplied::Failed(error.into()))),
                    );
                }
                match in_flight.applying {
                    Applying::Done(Ok(_)) => {
                        if let Some(applied) = pending.take() {
                            self.finish(applied, None, should_stop)?;
                        }
                    }
                    Applying::Done(Err(_)) => break,
                    Applying::Running(_) => {}
                }
            }
            let mut timeout = match deadline {
                None => POLL_TIMEOUT,
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            };
            if pending.is_some() {
                timeout = timeout.min(PENDING_POLL_TIMEOUT);
            }
            let polled = self.consumer.poll(timeout);
            // Rebalances happen inside `poll`, before the record it returns.
            apply_rebalances(
                self.consumer.context(),
                &mut self.assigned,
                &mut self.positions,
                &mut self.unplanned,
            )?;
            match polled {
                Some(Ok(message)) => {
                    batch.push(&message);
                    deadline.get_or_insert_with(|| Instant::now() + self.config.max_batch_wait);
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka consumer error");
                    if deadline.is_none() {
                        break;
                    }
                }
                None => {
                    if deadline.is_none_or(|deadline| Instant::now() >= deadline) {
                        break;
                    }
                }
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
        }
        Ok(batch)
    }

    /// Starts applying `batch` to Redis, on the runtime's thread, so that the next batch
    /// is polled and decoded meanwhile.
    fn start(&self, batch: Batch) -> Pending {
        let applying = Applying::Running(self.runtime.spawn(self.applier(&batch).apply()));
        Pending {
            batch,
            applying,
            started: Instant::now(),
        }
    }

    fn applier(&self, batch: &Batch) -> Applier {
        Applier {
            writer: Arc::clone(&self.writer),
            redis: Arc::clone(&self.redis),
            positioner: Arc::clone(&self.positioner),
            tuning: self.config.tuning,
            runs: batch
                .runs
                .iter()
                .map(|run| {
                    (
                        customer_key(&self.config.redis.key_prefix, &run.customer),
                        run.records.clone(),
                    )
                })
                .collect(),
        }
    }

    /// Finishes `pending`: waits for its Redis pipeline (retrying failures until it
    /// succeeds or the service stops), starts `next` (a customer's records reach Redis
    /// in offset order: `next` only after `pending` is applied), then publishes
    /// `pending`'s updates and commits it while `next` is being applied. Returns `next`
    /// in flight. When the generation was lost both are dropped: the rebuild reads their
    /// records again. When the service stops, nothing more is committed and the batches
    /// are replayed later, harmlessly.
    fn finish(
        &mut self,
        pending: Pending,
        next: Option<Batch>,
        should_stop: &impl Fn() -> bool,
    ) -> anyhow::Result<Option<Pending>> {
        let Pending {
            batch,
            applying,
            started,
        } = pending;
        let mut backoff = RETRY_FIRST;
        let mut result = match applying {
            Applying::Running(handle) => self
                .runtime
                .block_on(handle)
                .unwrap_or_else(|error| Err(NotApplied::Failed(error.into()))),
            Applying::Done(result) => result,
        };
        let outcomes = loop {
            match result {
                Ok(outcomes) => break outcomes,
                Err(NotApplied::GenerationLost) => {
                    // The batches are dropped: the rebuild reads their records again (and
                    // a partition that needs no rebuild goes back to the first start).
                    for dropped in std::iter::once(&batch).chain(next.as_ref()) {
                        for (&partition, &first) in &dropped.starts {
                            self.dropped_from.entry(partition).or_insert(first);
                        }
                    }
                    self.rebuild_all()?;
                    return Ok(None);
                }
                Err(NotApplied::Failed(error)) => {
                    metrics::counter!("speed_retries_total").increment(1);
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = backoff.as_millis() as u64,
                        "applying a batch failed; retrying"
                    );
                    if !self.pause(backoff, should_stop) {
                        return Ok(None);
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                    result = self.runtime.block_on(self.applier(&batch).apply());
                }
            }
        };
        let next = next.map(|batch| self.start(batch));
        let updates = self.updates(&batch, &outcomes);
        let mut backoff = RETRY_FIRST;
        while let Err(error) = self.runtime.block_on(self.publish(&updates)) {
            metrics::counter!("speed_retries_total").increment(1);
            tracing::warn!(
                error = format!("{error:#}"),
                "publishing window updates failed; retrying"
            );
            if !self.pause(backoff, should_stop) {
                // `next` is not committed either: its commit would cover this batch.
                return Ok(None);
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
        self.commit(&batch);
        self.complete_rebuilds(&batch)?;
        metrics::counter!("speed_batches_total").increment(1);
        metrics::histogram!("speed_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(next)
    }

    /// Waits `pause` while polling nothing; `false` when the service is stopping.
    fn pause(&self, pause: Duration, should_stop: &impl Fn() -> bool) -> bool {
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if should_stop() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(pause));
        }
        !should_stop()
    }

    /// One update per customer of the batch, each with its span and trace headers.
    fn updates(&self, batch: &Batch, outcomes: &[ApplyOutcome]) -> Vec<Outgoing> {
        let generation = self
            .positioner
            .generation()
            .map(|generation| generation.to_string())
            .unwrap_or_default();
        batch
            .runs
            .iter()
            .zip(outcomes)
            .filter_map(|(run, outcome)| {
                let state = &outcome.state;
                let as_of = state.clock?;
                // The outcome per record says which were applied (now, or by a
                // delivery before a crash, still held), and whether the customer had used
                // each one's vendor before it (see `AppliedEvent::vendor_seen_before`).
                let applied: Vec<_> = run
                    .records
                    .iter()
                    .zip(&run.events)
                    .zip(&outcome.records)
                    .filter_map(|((record, event), verdict)| match *verdict {
                        RecordOutcome::Applied { vendor_seen_before }
                        | RecordOutcome::ReplayedHeld { vendor_seen_before } => {
                            Some((record, event, vendor_seen_before))
                        }
                        _ => None,
                    })
                    .collect();
                // W(c, ts) of every applied event as of the end of the batch
                // (`AppliedEvent::window`), and W(c, as_of), in one sweep.
                let mut times: Vec<i64> = applied.iter().map(|(record, ..)| record.ts).collect();
                times.push(as_of);
                let mut windows = state.windows_at(&times);
                let window = windows.pop()?;
                let events: Vec<AppliedEvent> = applied
                    .into_iter()
                    .zip(windows)
                    .map(
                        |((record, event, vendor_seen_before), at_event)| AppliedEvent {
                            offset: record.offset,
                            transaction_id: event.transaction_id.as_str().to_owned(),
                            vendor_id: event.vendor_id.as_str().to_owned(),
                            amount_minor: record.amount,
                            ts: record.ts,
                            vendor_seen_before,
                            window: Some(at_event.into()),
                        },
                    )
                    .collect();
                let received: Vec<(&str, &str)> = run
                    .trace
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .collect();
                let update = WindowUpdate {
                    customer_id: run.customer.clone(),
                    as_of,
                    sum_minor: window.sum,
                    count: window.count,
                    max_minor: window.max,
                    distinct_vendors: window.distinct_vendors,
                    events,
                    source_partition: run.partition,
                    source_offset: state.last_offset,
                    generation: generation.clone(),
                };
                // A hot customer's run may list more events than one Kafka message holds.
                let outgoing: Vec<Outgoing> = update
                    .into_parts(MAX_EVENTS_PER_UPDATE)
                    .into_iter()
                    .map(|update| {
                        let span = tracing::info_span!(
                            parent: None,
                            "window update",
                            otel.kind = "producer",
                            source.partition = update.source_partition,
                            source.offset = update.source_offset,
                            applied = update.events.len(),
                        );
                        fraud_telemetry::propagation::follow(&span, &received);
                        let headers = fraud_telemetry::propagation::headers_for(&span, &received);
                        Outgoing {
                            update,
                            headers,
                            _span: span,
                        }
                    })
                    .collect();
                Some(outgoing)
            })
            .flatten()
            .collect()
    }

    async fn publish(&self, updates: &[Outgoing]) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(updates.len());
        for Outgoing {
            update,
            headers: trace,
            ..
        } in updates
        {
            let payload = serde_json::to_vec(update)?;
            let mut headers = OwnedHeaders::new().insert(Header {
                key: SCHEMA_VERSION_HEADER,
                value: Some(UPDATE_SCHEMA_VERSION),
            });
            for (key, value) in trace {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let record = FutureRecord::to(&self.config.updates_topic)
                .key(&update.customer_id)
                .payload(&payload)
                .headers(headers);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(error, _)| anyhow::anyhow!("failed to enqueue an update: {error}"))?;
            pending.push(delivery);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => anyhow::bail!("an update was not acknowledged: {error}"),
                Err(_) => anyhow::bail!("the producer shut down"),
            }
        }
        metrics::counter!("speed_window_updates_total").increment(updates.len() as u64);
        Ok(())
    }

    /// Commits the batch's offsets of the partitions still assigned.
    fn commit(&mut self, batch: &Batch) {
        let mut offsets = TopicPartitionList::new();
        for (&partition, &(offset, timestamp)) in &batch.ends {
            if !self.assigned.contains_key(&partition) {
                continue;
            }
            self.positions.insert(partition, (offset, timestamp));
            if let Err(error) = offsets.add_partition_offset(
                &self.config.topic,
                partition,
                Offset::Offset(offset + 1),
            ) {
                tracing::warn!(%error, partition, "could not build an offset to commit");
            }
        }
        if offsets.count() == 0 {
            return;
        }
        if let Err(error) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(%error, "offset commit failed (the batch will be replayed, harmlessly)");
        }
    }

    /// Marks partitions whose rebuild this batch completed as ready.
    fn complete_rebuilds(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let Some(generation) = self.positioner.generation() else {
            return Ok(());
        };
        let mut fields = Vec::new();
        for (&partition, &(offset, _)) in &batch.ends {
            if let Some(Some(until)) = self.assigned.get(&partition)
                && offset >= *until
            {
                tracing::info!(partition, "partition rebuilt");
                fields.push(SpeedMeta::status_field(partition, PartitionStatus::Ready));
                self.assigned.insert(partition, None);
            }
        }
        self.positioner.set_fields(generation, &fields)
    }

    /// Starts or joins a new generation and rebuilds every assigned partition.
    fn rebuild_all(&mut self) -> anyhow::Result<()> {
        // Copies of the lost generation would only fail their writes.
        self.writer.forget_copies();
        let partitions: Vec<i32> = self.assigned.keys().copied().collect();
        self.pause_partitions(&partitions)?;
        for &partition in &partitions {
            // Not complete until planned and rebuilt: an offset never reached.
            self.assigned.insert(partition, Some(i64::MAX));
        }
        self.unplanned.extend(partitions);
        self.plan_unplanned();
        Ok(())
    }

    /// Plans the paused, unplanned partitions: positions them and resumes them. When
    /// the servers do not answer they stay paused for the next try.
    fn plan_unplanned(&mut self) {
        if self.unplanned.is_empty() {
            return;
        }
        let partitions: Vec<i32> = self.unplanned.iter().copied().collect();
        let planned = self.positioner.plan(&partitions).and_then(|plans| {
            self.seek(&plans)?;
            Ok(plans)
        });
        match planned {
            Ok(plans) => {
                for plan in plans {
                    self.assigned.insert(plan.partition, plan.rebuild_until);
                    self.positions.remove(&plan.partition);
                }
                if let Err(error) = self.resume_partitions(&partitions) {
                    tracing::warn!(%error, "could not resume partitions");
                    return;
                }
                self.unplanned.clear();
            }
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                ?partitions,
                "could not plan partitions yet; they stay paused"
            ),
        }
    }

    fn partition_list(&self, partitions: &[i32]) -> anyhow::Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(&self.config.topic, partition);
        }
        Ok(list)
    }

    fn pause_partitions(&self, partitions: &[i32]) -> anyhow::Result<()> {
        let list = self.partition_list(partitions)?;
        self.consumer
            .pause(&list)
            .context("failed to pause partitions")
    }

    fn resume_partitions(&self, partitions: &[i32]) -> anyhow::Result<()> {
        let list = self.partition_list(partitions)?;
        self.consumer
            .resume(&list)
            .context("failed to resume partitions")
    }

    fn seek(&mut self, plans: &[Plan]) -> anyhow::Result<()> {
        for plan in plans {
            let dropped = self.dropped_from.remove(&plan.partition);
            if let Some(start) = plan.start.or(dropped) {
                self.consumer
                    .seek(
                        &self.config.topic,
                        plan.partition,
                        Offset::Offset(start),
                        self.config.timeout,
                    )
                    .with_context(|| format!("failed to seek partition {}", plan.partition))?;
            }
        }
        Ok(())
    }

    /// Establishes the generation if needed, plans paused partitions, and notices a lost
    /// generation while no records arrive.
    fn check_generation(&mut self) -> anyhow::Result<()> {
        let Some(generation) = self.positioner.generation() else {
            self.positioner.establish()?;
            self.plan_unplanned();
            return Ok(());
        };
        self.plan_unplanned();
        let current: Option<String> = self.runtime.block_on(async {
            let mut connection = self.redis.connection().await?;
            let current: Option<String> = connection
                .hget(&self.positioner.meta_key, "generation")
                .await?;
            anyhow::Ok(current)
        })?;
        if current.as_deref().and_then(Generation::parse_hex) != Some(generation) {
            self.rebuild_all()?;
        }
        Ok(())
    }

    /// Writes each assigned partition's progress to the meta key.
    fn report_progress(&self) {
        let Some(generation) = self.positioner.generation() else {
            return;
        };
        let now = now_millis();
        let mut fields = Vec::new();
        for &partition in self.assigned.keys() {
            let Ok((_, high)) = self.positioner.offsets.fetch_watermarks(
                &self.config.topic,
                partition,
                Duration::from_secs(1),
            ) else {
                continue;
            };
            let (next, last_record_ts) = match self.positions.get(&partition) {
                Some(&(offset, timestamp)) => (offset + 1, timestamp),
                // Nothing applied since it was assigned: where the consumer stands.
                None => match self.position(partition) {
                    Some(next) => (next, None),
                    None => continue,
                },
            };
            fields.push(SpeedMeta::progress_field(
                partition,
                Progress {
                    written_at: now,
                    behind: (high - next).max(0),
                    last_record_ts,
                },
            ));
        }
        if let Err(error) = self.positioner.set_fields(generation, &fields) {
            tracing::debug!(error = format!("{error:#}"), "could not report progress");
        }
    }

    /// The consumer's position in `partition`, when it has one.
    fn position(&self, partition: i32) -> Option<i64> {
        let positions = self.consumer.position().ok()?;
        match positions
            .find_partition(&self.config.topic, partition)?
            .offset()
        {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    fn update_health(&self) {
        let rebuilding: Vec<i32> = self
            .assigned
            .iter()
            .filter(|(_, until)| until.is_some())
            .map(|(partition, _)| *partition)
            .collect();
        self.health.set(if self.positioner.generation().is_none() {
            Some("the speed state's generation is not established yet".to_owned())
        } else if rebuilding.is_empty() {
            None
        } else {
            Some(format!(
                "rebuilding partitions {rebuilding:?} of `{}` from Kafka",
                self.config.topic
            ))
        });
    }
}

/// Takes the assignment changes the rebalance callback saw.
fn apply_rebalances(
    context: &PositioningContext,
    assigned: &mut BTreeMap<i32, Option<i64>>,
    positions: &mut BTreeMap<i32, (i64, Option<i64>)>,
    unplanned: &mut BTreeSet<i32>,
) -> anyhow::Result<()> {
    if let Some(failure) = context.log().take_failure() {
        return Err(failure);
    }
    for rebalance in context.log().take() {
        match rebalance {
            Rebalance::Assigned(plans) => {
                for plan in plans {
                    assigned.insert(plan.partition, plan.rebuild_until);
                    positions.remove(&plan.partition);
                }
            }
            Rebalance::AssignedUnplanned(partitions) => {
                for partition in partitions {
                    // Not complete until planned (and rebuilt): an offset never reached.
                    assigned.insert(partition, Some(i64::MAX));
                    positions.remove(&partition);
                    unplanned.insert(partition);
                }
            }
            Rebalance::Revoked(partitions) => {
                for partition in partitions {
                    assigned.remove(&partition);
                    positions.remove(&partition);
                    unplanned.remove(&partition);
                }
            }
        }
    }
    Ok(())
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
