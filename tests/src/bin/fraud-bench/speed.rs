//! `fraud-bench speed`: the speed layer's benchmark (`deploy/dev bench speed`).
//!
//! In one run, on a transactions topic (12 partitions), an updates topic, a Redis key
//! prefix and consumer groups of its own, all removed at the end:
//! 1. **pre-fill** (not timed): `--events` transactions over `--customers` customers,
//!    each encoded as ingest encodes it (`fraud_events::encode`, key = customer id,
//!    headers `schema-version: 1` and `content-type`, timestamp = ingest time), with
//!    event times within the last 25 minutes, so every event is inside its customer's
//!    window once applied;
//! 2. **reference**: a plain `BaseConsumer` with the speed layer's consumer settings, in a
//!    fresh group, that reads and decodes every record and does nothing else;
//! 3. **main phase**: the real `speed-layer` binary starts on the pre-filled topic and
//!    applies it to Redis (exactly once in effect); the time until every partition is
//!    applied to its end comes from its group's committed offsets against the high
//!    watermarks, sampled every 250 ms (also the lag series of the report);
//! 4. **memory**: `INFO memory` before and after the main phase, every state read back
//!    (the events held must be exactly the events produced), and `MEMORY USAGE` of a
//!    sample of keys;
//! 5. **delay**: the topic switched to `LogAppendTime`, events produced at half the
//!    main phase's rate; each event's delay runs from its append time (the broker's
//!    timestamp in the delivery report) to the creation time of the first window update
//!    of its customer whose `sourceOffset` covers it (the speed layer publishes that
//!    update only after the Redis pipeline holding the event has returned).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Args;
use fraud_config::{KafkaConfig, Settings};
use fraud_domain::EventTime;
use fraud_speed_view::CustomerState;
use fraud_speed_view::meta::{SpeedMeta, meta_key};
use fraud_testkit::{ChildProcess, free_port, unique_name};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};

use super::{
    BUSY_BACKGROUND_PERCENT, CpuSnapshot, CpuUsage, EventGenerator, LagSample, LagSampler, Machine,
    Pids, ThreadMatch, cpu_table, delete_group, delete_redis_keys, fmt_int, fmt_micros, fmt_rate,
    http_client, latency_histogram, pass, progress, run_line, tail, wait_for_quiet, wait_for_topic,
    workspace_root, write_report,
};

#[derive(Args, Clone)]
pub(super) struct SpeedArgs {
    /// Events pre-filled into the topic (the main phase applies them all).
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Distinct customers of the events.
    #[arg(long, default_value_t = 100_000)]
    customers: usize,
    /// Zipf exponent of the customers' popularity (0: every customer equally likely).
    #[arg(long, default_value_t = 0.0)]
    customer_skew: f64,
    /// Event times fall within this many minutes before the run (under 30, so that every
    /// event is inside its customer's window).
    #[arg(long, default_value_t = 25)]
    event_span_minutes: u64,
    /// Partitions of the benchmark's topics (the platform's topic has 12).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Bound on the main phase, in seconds (the report says when it was reached).
    #[arg(long, default_value_t = 600)]
    main_timeout_seconds: u64,
    /// Length of the delay phase, in seconds.
    #[arg(long, default_value_t = 20)]
    delay_seconds: u64,
    /// Rate of the delay phase, as a share of the main phase's rate.
    #[arg(long, default_value_t = 0.5)]
    delay_load: f64,
    /// Rate of the delay phase in events/s, instead of `--delay-load` × the main phase's
    /// rate (to compare runs, or to probe the speed layer at a given load).
    #[arg(long)]
    delay_rate: Option<f64>,
    /// `linger.ms` of the delay phase's producer (ingest's settings otherwise). The delay
    /// runs from the broker's append, so the linger is not part of it; it sets how many
    /// produce requests the broker, on the same two cores, handles for the load.
    #[arg(long, default_value_t = 5)]
    delay_linger_ms: u32,
    /// Customer keys whose `MEMORY USAGE` is read.
    #[arg(long, default_value_t = 2_000)]
    memory_sample_keys: usize,
    /// How long to wait, before measuring, for other work on the machine to end.
    #[arg(long, default_value_t = 60)]
    quiet_wait_seconds: u64,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 20_190_530)]
    seed: u64,
    /// The speed-layer binary (default: `speed-layer` next to this program).
    #[arg(long)]
    speed_bin: Option<PathBuf>,
    /// Where to write the report (default: `target/bench/speed.md` under the workspace).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// The speed layer's session timeout (services/speed-layer/src/pipeline/consumer.rs): the
/// reference consumer is made as the speed layer's is, with
/// `fraud_kafka::rebalance::cooperative_consumer`.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The speed layer's pipeline thread (services/speed-layer/src/pipeline/mod.rs).
const PIPELINE_THREAD: &str = "speed-pipeline";
/// librdkafka's threads (`rdk:main`, `rdk:broker…`).
const LIBRDKAFKA_THREADS: &str = "rdk:";
/// How often the speed layer's group lag is sampled.
const LAG_INTERVAL: Duration = Duration::from_millis(250);
/// CPUs of other work during a phase above which the report says its figures are low.
const OTHER_WORK_CORES: f64 = 0.3;
/// Most rows of the lag table.
const LAG_ROWS: u64 = 40;

/// Targets of the issue.
const RATE_TARGET: f64 = 100_000.0;
const RATIO_TARGET: f64 = 0.4;
const DELAY_P99_TARGET_MICROS: u64 = 100_000;
const MEMORY_TARGET_BYTES: f64 = 100.0;

pub(super) async fn speed_benchmark(args: SpeedArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.customers == 0 || args.partitions <= 0 {
        bail!("--events, --customers and --partitions must be positive");
    }
    if !(1..30).contains(&args.event_span_minutes) {
        bail!("--event-span-minutes must be between 1 and 29 (the window is 30 minutes)");
    }
    if !(args.delay_load > 0.0 && args.delay_load <= 1.0) || args.delay_seconds == 0 {
        bail!("--delay-load must be in (0, 1] and --delay-seconds positive");
    }
    let settings = Settings::load(None).context("load the platform's configuration")?;
    let speed_bin = super::service_binary(args.speed_bin.as_deref(), "speed-layer", "--speed-bin")?;
    let report_path = args.report.clone().unwrap_or_else(|| {
        workspace_root()
            .join("target")
            .join("bench")
            .join("speed.md")
    });

    let mut stack = SpeedStack::create(&settings, &args).await?;
    let measured = measure(&args, &settings, &mut stack, &speed_bin).await;
    let cleanup = stack.remove().await;
    let measured = measured?;
    for problem in &cleanup {
        progress(format!("clean-up: {problem}"));
    }
    let report = render_report(&args, &settings, &stack, &speed_bin, &measured, &cleanup);
    write_report(&report, &report_path)
}

// ---------------------------------------------------------------------------------------
// The stack: topics, groups, Redis prefix and the speed-layer process
// ---------------------------------------------------------------------------------------

struct SpeedStack {
    kafka: KafkaConfig,
    redis_url: String,
    topic: String,
    updates_topic: String,
    prefix: String,
    group: String,
    reference_group: String,
    partitions: i32,
    speed: Option<ChildProcess>,
    speed_pid: u32,
    speed_port: u16,
    stopped_cleanly: Option<bool>,
}

impl SpeedStack {
    async fn create(settings: &Settings, args: &SpeedArgs) -> anyhow::Result<SpeedStack> {
        let name = unique_name("bench-speed");
        let mut stack = SpeedStack {
            kafka: settings.kafka.clone(),
            redis_url: settings.redis.url.expose().clone(),
            topic: format!("{name}-transactions"),
            updates_topic: format!("{name}-updates"),
            prefix: format!("{name}:"),
            group: format!("{name}-speed"),
            reference_group: format!("{name}-reference"),
            partitions: args.partitions,
            speed: None,
            speed_pid: 0,
            speed_port: 0,
            stopped_cleanly: None,
        };
        progress(format!(
            "creating topics {} and {} ({} partitions)",
            stack.topic, stack.updates_topic, args.partitions
        ));
        for topic in [stack.topic.clone(), stack.updates_topic.clone()] {
            let created = async {
                fraud_kafka::ensure_topic(&stack.kafka, &topic, args.partitions, 1)
                    .await
                    .with_context(|| {
                        format!("create topic {topic} (is Kafka up? deploy/dev up --servers-only)")
                    })?;
                wait_for_topic(&stack.kafka, &topic, args.partitions).await
            }
            .await;
            if let Err(error) = created {
                for problem in stack.remove().await {
                    progress(format!("clean-up: {problem}"));
                }
                return Err(error);
            }
        }
        Ok(stack)
    }

    /// Starts the speed layer on the benchmark's topics, prefix and group (the rest of its
    /// configuration as this program read it); returns when it was started.
    fn start_speed(&mut self, settings: &Settings, speed_bin: &Path) -> Instant {
        self.speed_port = free_port();
        let command = speed_command(
            settings,
            speed_bin,
            &SpeedPlace {
                topic: &self.topic,
                updates_topic: &self.updates_topic,
                redis_url: &self.redis_url,
                prefix: &self.prefix,
                group: &self.group,
                port: self.speed_port,
            },
        );
        progress(format!(
            "starting {} (metrics on 127.0.0.1:{})",
            speed_bin.display(),
            self.speed_port
        ));
        let process = ChildProcess::spawn("bench-speed-layer", command);
        let started = Instant::now();
        self.speed_pid = process.pid();
        self.speed = Some(process);
        started
    }

    /// `Some(output)` when the speed layer has exited.
    fn speed_exited(&mut self) -> Option<String> {
        let process = self.speed.as_mut()?;
        (!process.is_running()).then(|| process.output())
    }

    /// Stops the speed layer (SIGTERM, then SIGKILL after 30 s).
    async fn stop_speed(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(process) = self.speed.take()
            && let Some(clean) =
                super::stop_process(process, "the speed layer", &mut problems).await
        {
            self.stopped_cleanly = Some(clean);
        }
        problems
    }

    /// Stops the speed layer, deletes the topics, the groups and the Redis keys; returns
    /// what could not be cleaned up.
    async fn remove(&mut self) -> Vec<String> {
        let mut problems = self.stop_speed().await;
        for topic in [&self.topic, &self.updates_topic] {
            if let Err(error) = fraud_kafka::delete_topic(&self.kafka, topic).await {
                problems.push(format!("delete topic {topic}: {error}"));
            }
        }
        for group in [&self.group, &self.reference_group] {
            if let Err(error) = delete_group(&self.kafka, group).await {
                problems.push(format!("delete group {group}: {error}"));
            }
        }
        match delete_redis_keys(&self.redis_url, &self.prefix).await {
            Ok(deleted) => progress(format!(
                "deleted {} Redis keys {}*",
                fmt_int(deleted),
                self.prefix
            )),
            Err(error) => problems.push(format!("delete Redis keys {}*: {error}", self.prefix)),
        }
        problems
    }
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// Everything measured in one run.
struct Measured {
    prefill: Prefill,
    reference: ReferenceRead,
    main: MainPhase,
    /// The speed layer's counters after the main phase (`None` when unreadable).
    metrics: Option<BTreeMap<String, f64>>,
    memory_before: RedisMemory,
    memory_after: RedisMemory,
    scan: StateScan,
    delay: Result<Delay, String>,
    /// Every lag sample of the speed layer's group, from its start on.
    lag: Vec<LagSample>,
    lag_errors: Vec<String>,
    cpu: Vec<(&'static str, CpuUsage)>,
    /// The machine before the reference and before the main phase.
    background: CpuUsage,
    background_main: CpuUsage,
}

async fn measure(
    args: &SpeedArgs,
    settings: &Settings,
    stack: &mut SpeedStack,
    speed_bin: &Path,
) -> anyhow::Result<Measured> {
    let mut generator = EventGenerator::with_shape(
        args.seed,
        args.customers,
        args.customer_skew,
        i64::try_from(args.event_span_minutes * 60_000)?,
        false,
    );
    let prefill = prefill(args, settings, stack, &mut generator).await?;

    let idle = Pids::find(0, [ThreadMatch::None, ThreadMatch::None]);
    let background = wait_for_quiet(&idle, args.quiet_wait_seconds).await;
    let mut cpu = Vec::new();

    progress(format!(
        "reference: a plain consumer reads and decodes {} records",
        fmt_int(prefill.events as u64)
    ));
    let before = CpuSnapshot::take(&idle);
    let reference = {
        let kafka = stack.kafka.clone();
        let topic = stack.topic.clone();
        let group = stack.reference_group.clone();
        let ends = prefill.ends.clone();
        tokio::task::spawn_blocking(move || read_reference(&kafka, &topic, &group, &ends)).await??
    };
    cpu.push(("reference", before.usage_until(&CpuSnapshot::take(&idle))));
    progress(format!(
        "reference: {} records/s",
        fmt_rate(reference.rate())
    ));

    let background_main = wait_for_quiet(&idle, args.quiet_wait_seconds).await;
    let redis = redis::Client::open(stack.redis_url.as_str())?;
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .context("connect to Redis")?;
    let memory_before = RedisMemory::read(&mut connection).await?;

    // The main phase: the speed layer applies the whole topic.
    let sampler = LagSampler::start(
        stack.kafka.clone(),
        stack.topic.clone(),
        stack.group.clone(),
        stack.partitions,
        LAG_INTERVAL,
    );
    let started = stack.start_speed(settings, speed_bin);
    let pids = Pids::find(
        stack.speed_pid,
        [
            ThreadMatch::Named(PIPELINE_THREAD),
            ThreadMatch::Prefixed(LIBRDKAFKA_THREADS),
        ],
    );
    let before = CpuSnapshot::take(&pids);
    let timeout = Duration::from_secs(args.main_timeout_seconds);
    let mut last_report = Instant::now();
    // CPU is also split at the sample where half the events are applied.
    let mut half: Option<CpuSnapshot> = None;
    let end = loop {
        tokio::time::sleep(LAG_INTERVAL).await;
        if let Some(output) = stack.speed_exited() {
            sampler.stop();
            bail!(
                "the speed layer exited during the main phase; its output:\n{}",
                tail(&output, 40)
            );
        }
        let samples = sampler.samples();
        let mut since_start = samples.iter().filter(|s| s.at >= started);
        if half.is_none()
            && since_start
                .clone()
                .any(|s| s.lag <= prefill.events as i64 / 2)
        {
            half = Some(CpuSnapshot::take(&pids));
        }
        if let Some(done) = since_start
            .clone()
            .find(|s| s.lag == 0 && s.committed_partitions > 0)
        {
            break Some(done.at);
        }
        if last_report.elapsed() >= Duration::from_secs(5)
            && let Some(last) = since_start.next_back()
        {
            last_report = Instant::now();
            progress(format!(
                "main phase: {:.0}s, lag {}",
                started.elapsed().as_secs_f64(),
                fmt_int(last.lag as u64)
            ));
        }
        if started.elapsed() >= timeout {
            progress(format!(
                "main phase: not every partition applied within {}s",
                timeout.as_secs()
            ));
            break None;
        }
    };
    let after = CpuSnapshot::take(&pids);
    cpu.push(("main phase", before.usage_until(&after)));
    if let Some(half) = half {
        cpu.push((
            "main phase: first half of the events",
            before.usage_until(&half),
        ));
        cpu.push(("main phase: second half", half.usage_until(&after)));
    }
    let main = MainPhase::from_samples(started, end, &sampler.samples(), prefill.events as i64);
    progress(format!("main phase: {}", main.summary()));

    let memory_after = RedisMemory::read(&mut connection).await?;
    let metrics = speed_metrics(stack.speed_port).await;
    progress("reading every customer's state back");
    let scan = StateScan::read(
        &mut connection,
        &stack.prefix,
        args.memory_sample_keys,
        prefill.customers,
    )
    .await?;
    progress(format!(
        "Redis: {} keys hold {} events ({} produced)",
        fmt_int(scan.keys),
        fmt_int(scan.events),
        fmt_int(prefill.events as u64)
    ));

    let delay = match main.rate() {
        Some(rate) if main.end.is_some() => {
            let target = args.delay_rate.unwrap_or(rate * args.delay_load);
            let delay = delay_phase(
                args,
                settings,
                stack,
                &mut generator,
                target,
                &sampler,
                &pids,
            )
            .await;
            match delay {
                Ok(delay) => {
                    progress(format!("delay: {}", delay.summary()));
                    cpu.push(("delay phase (while producing)", delay.cpu));
                    Ok(delay)
                }
                Err(error) => {
                    progress(format!("delay: not measurable: {error:#}"));
                    Err(format!("{error:#}"))
                }
            }
        }
        _ => Err("the main phase did not apply every event, so it has no maximum rate".to_owned()),
    };

    let (samples, lag_errors) = sampler.stop();
    let lag = samples.into_iter().filter(|s| s.at >= started).collect();
    Ok(Measured {
        prefill,
        reference,
        main,
        metrics,
        memory_before,
        memory_after,
        scan,
        delay,
        lag,
        lag_errors,
        cpu,
        background,
        background_main,
    })
}

// ---------------------------------------------------------------------------------------
// Pre-fill
// ---------------------------------------------------------------------------------------

struct Prefill {
    events: usize,
    customers: usize,
    vendors: usize,
    amount_sum: i64,
    elapsed: Duration,
    /// Per partition: (partition, low, high) after the pre-fill.
    ends: Vec<(i32, i64, i64)>,
    /// When the events were generated from (their times are before it).
    generated_at_ms: i64,
    oldest_event_ms: i64,
    newest_event_ms: i64,
    /// Most events of one customer.
    max_per_customer: usize,
}

/// Produces every event as ingest would (key, headers, value, timestamp = ingest time)
/// with a producer tuned for throughput, and waits for every acknowledgement.
async fn prefill(
    args: &SpeedArgs,
    settings: &Settings,
    stack: &SpeedStack,
    generator: &mut EventGenerator,
) -> anyhow::Result<Prefill> {
    progress(format!(
        "pre-filling {} with {} events over {} customers",
        stack.topic,
        fmt_int(args.events as u64),
        fmt_int(args.customers as u64)
    ));
    let producer = fraud_kafka::durable_producer_with(&settings.kafka, |client| {
        client
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", "120000");
    })?;
    let started = Instant::now();
    let mut pending = VecDeque::new();
    let mut per_customer: HashMap<String, usize> = HashMap::new();
    let mut amount_sum = 0_i64;
    let mut oldest = i64::MAX;
    let mut newest = i64::MIN;
    let mut failed = 0_usize;
    let mut first_failure = None;
    for produced in 0..args.events {
        let event = generator.next_event();
        let record = event.record()?;
        let payload = fraud_events::encode(&record);
        *per_customer.entry(event.customer_id).or_default() += 1;
        amount_sum += record.amount.minor();
        oldest = oldest.min(event.event_ms);
        newest = newest.max(event.event_ms);
        loop {
            let headers = ingest::publish::record_headers(&[]);
            let future = FutureRecord::to(&stack.topic)
                .key(record.customer_id.as_str())
                .payload(payload.as_slice())
                .timestamp(record.ingest_time.as_millis())
                .headers(headers);
            match producer.send_result(future) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match pending.pop_front() {
                        Some(delivery) => {
                            if let Err(error) = acknowledged(delivery.await) {
                                failed += 1;
                                first_failure.get_or_insert(error);
                            }
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((error, _)) => bail!("could not enqueue a pre-fill record: {error}"),
            }
        }
        // Bound the futures held: the acknowledgements arrive in order anyway.
        while pending.len() > 200_000 {
            if let Some(delivery) = pending.pop_front()
                && let Err(error) = acknowledged(delivery.await)
            {
                failed += 1;
                first_failure.get_or_insert(error);
            }
        }
        if (produced + 1) % 500_000 == 0 {
            progress(format!(
                "pre-fill: {} events enqueued in {:.1}s",
                fmt_int(produced as u64 + 1),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    for delivery in pending {
        if let Err(error) = acknowledged(delivery.await) {
            failed += 1;
            first_failure.get_or_insert(error);
        }
    }
    if failed > 0 {
        bail!(
            "{failed} pre-fill records were not acknowledged (first: {})",
            first_failure.unwrap_or_default()
        );
    }
    let elapsed = started.elapsed();
    let ends = {
        let kafka = stack.kafka.clone();
        let topic = stack.topic.clone();
        let partitions = stack.partitions;
        tokio::task::spawn_blocking(move || watermarks(&kafka, &topic, partitions)).await??
    };
    let in_topic: i64 = ends.iter().map(|(_, low, high)| high - low).sum();
    if in_topic != args.events as i64 {
        bail!(
            "the topic holds {in_topic} records after the pre-fill of {}",
            args.events
        );
    }
    progress(format!(
        "pre-filled {} events in {:.1}s ({} records/s, not timed)",
        fmt_int(args.events as u64),
        elapsed.as_secs_f64(),
        fmt_rate(args.events as f64 / elapsed.as_secs_f64())
    ));
    Ok(Prefill {
        events: args.events,
        customers: per_customer.len(),
        vendors: generator.vendors.len(),
        amount_sum,
        elapsed,
        ends,
        generated_at_ms: generator.now_ms,
        oldest_event_ms: oldest,
        newest_event_ms: newest,
        max_per_customer: per_customer.values().copied().max().unwrap_or(0),
    })
}

/// Whether a delivery future's outcome is an acknowledgement (else why not).
fn acknowledged<E>(outcome: Result<OwnedDeliveryResult, E>) -> Result<(), String> {
    match outcome {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error.to_string()),
        Err(_) => Err("the producer shut down".to_owned()),
    }
}

/// (partition, low, high) of every partition of `topic`.
fn watermarks(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let consumer: BaseConsumer = fraud_kafka::client_config(kafka)
        .create()
        .context("create a metadata client")?;
    (0..partitions)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .with_context(|| format!("watermarks of {topic} partition {partition}"))?;
            Ok((partition, low, high))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The reference: a consumer that only reads and decodes
// ---------------------------------------------------------------------------------------

struct ReferenceRead {
    records: u64,
    undecodable: u64,
    /// From creating the consumer to its first record, and to its last.
    first_at: Duration,
    last_at: Duration,
}

impl ReferenceRead {
    /// Records/s from the first record to the last.
    fn rate(&self) -> f64 {
        self.records.saturating_sub(1) as f64
            / self
                .last_at
                .saturating_sub(self.first_at)
                .as_secs_f64()
                .max(1e-9)
    }

    /// Records/s from creating the consumer (joining its group included).
    fn rate_from_start(&self) -> f64 {
        self.records as f64 / self.last_at.as_secs_f64().max(1e-9)
    }
}

/// The record's `schema-version` header.
fn schema_version<'a>(message: &'a rdkafka::message::BorrowedMessage<'_>) -> Option<&'a [u8]> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == fraud_events::SCHEMA_VERSION_HEADER)
            .and_then(|header| header.value)
    })
}

/// Reads every record of `topic` up to `ends` in a fresh group, decoding each.
fn read_reference(
    kafka: &KafkaConfig,
    topic: &str,
    group: &str,
    ends: &[(i32, i64, i64)],
) -> anyhow::Result<ReferenceRead> {
    let consumer = fraud_kafka::rebalance::cooperative_consumer(
        kafka,
        group,
        DefaultConsumerContext,
        SESSION_TIMEOUT,
    )?;
    let started = Instant::now();
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribe to {topic}"))?;
    let mut remaining: HashMap<i32, i64> = ends
        .iter()
        .filter(|(_, low, high)| high > low)
        .map(|(partition, _, high)| (*partition, high - 1))
        .collect();
    let mut records = 0_u64;
    let mut undecodable = 0_u64;
    let mut first_at = None;
    let mut last_at = Duration::ZERO;
    while !remaining.is_empty() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the reference consumer read {records} records in 600s and did not reach the end"
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                match fraud_events::decode(
                    schema_version(&message),
                    message.payload().unwrap_or_default(),
                ) {
                    Ok(event) => {
                        std::hint::black_box(&event);
                    }
                    Err(_) => undecodable += 1,
                }
                records += 1;
                let now = started.elapsed();
                first_at.get_or_insert(now);
                last_at = now;
                let partition = message.partition();
                if remaining
                    .get(&partition)
                    .is_some_and(|last| message.offset() >= *last)
                {
                    remaining.remove(&partition);
                }
            }
            Some(Err(error)) => progress(format!("reference consumer: {error}")),
            None => {}
        }
    }
    fraud_kafka::close_within(consumer, Duration::from_secs(5));
    Ok(ReferenceRead {
        records,
        undecodable,
        first_at: first_at.unwrap_or_default(),
        last_at,
    })
}

// ---------------------------------------------------------------------------------------
// The main phase
// ---------------------------------------------------------------------------------------

struct MainPhase {
    started: Instant,
    /// The first sample with every partition applied to its end.
    end: Option<Instant>,
    /// The first sample with a committed offset, and the lag then.
    first_commit: Option<(Instant, i64)>,
    /// The last sample (the end, or where the phase was cut off), and the lag then.
    last: Option<(Instant, i64)>,
    events: i64,
    max_lag: i64,
    /// The most events applied in any `FASTEST_WINDOW`, as a rate, and when that window
    /// started (after the start).
    fastest: Option<(f64, Duration)>,
}

/// The window of the main phase's fastest rate.
const FASTEST_WINDOW: Duration = Duration::from_secs(5);

impl MainPhase {
    fn from_samples(
        started: Instant,
        end: Option<Instant>,
        samples: &[LagSample],
        events: i64,
    ) -> MainPhase {
        let during: Vec<&LagSample> = samples
            .iter()
            .filter(|s| s.at >= started && end.is_none_or(|end| s.at <= end))
            .collect();
        MainPhase {
            started,
            end,
            first_commit: during
                .iter()
                .find(|s| s.committed_partitions > 0)
                .map(|s| (s.at, s.lag)),
            last: during.last().map(|s| (s.at, s.lag)),
            events,
            max_lag: during.iter().map(|s| s.lag).max().unwrap_or(0),
            fastest: during
                .iter()
                .filter_map(|from| {
                    let to = during.iter().find(|to| to.at >= from.at + FASTEST_WINDOW)?;
                    let seconds = to.at.duration_since(from.at).as_secs_f64();
                    Some((
                        (from.lag - to.lag).max(0) as f64 / seconds,
                        from.at.duration_since(started),
                    ))
                })
                .max_by(|a, b| a.0.total_cmp(&b.0)),
        }
    }

    /// Events/s applied from the first commit seen to the end (or the last sample).
    fn rate(&self) -> Option<f64> {
        let (from, lag_from) = self.first_commit?;
        let (to, lag_to) = self.last?;
        let seconds = to.duration_since(from).as_secs_f64();
        (seconds > 0.0 && lag_from > lag_to).then(|| (lag_from - lag_to) as f64 / seconds)
    }

    /// Events/s from starting the process to every partition applied.
    fn rate_from_start(&self) -> Option<f64> {
        let end = self.end?;
        Some(self.events as f64 / end.duration_since(self.started).as_secs_f64().max(1e-9))
    }

    fn summary(&self) -> String {
        match (self.end, self.rate()) {
            (Some(end), Some(rate)) => format!(
                "{} events/s; every partition applied {:.1}s after the start",
                fmt_rate(rate),
                end.duration_since(self.started).as_secs_f64()
            ),
            (Some(end), None) => format!(
                "every partition applied {:.1}s after the start (too quick to take a rate)",
                end.duration_since(self.started).as_secs_f64()
            ),
            (None, rate) => format!(
                "not finished; {} events/s while it ran, lag {} at the end",
                rate.map(fmt_rate).unwrap_or_else(|| "no".to_owned()),
                fmt_int(self.last.map_or(self.events, |(_, lag)| lag) as u64)
            ),
        }
    }
}

/// The speed layer's own counters (`speed_…` lines of `/metrics`).
async fn speed_metrics(port: u16) -> Option<BTreeMap<String, f64>> {
    let client = http_client().ok()?;
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|line| line.starts_with("speed_"))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect(),
    )
}

fn metric(metrics: &BTreeMap<String, f64>, name: &str) -> u64 {
    metrics.get(name).copied().unwrap_or(0.0) as u64
}

/// The speed layer's batches between two readings of its counters.
#[derive(Clone, Copy, Default)]
struct BatchStats {
    batches: u64,
    /// Records polled into them (applied, late, duplicate, replayed, undecodable).
    records: u64,
    updates: u64,
    /// Time spent applying, publishing and committing them (not polling).
    seconds: f64,
}

impl BatchStats {
    fn read(metrics: &BTreeMap<String, f64>) -> BatchStats {
        BatchStats {
            batches: metric(metrics, "speed_batches_total"),
            records: ["applied", "late", "duplicate", "replayed", "undecodable"]
                .iter()
                .map(|outcome| {
                    metric(
                        metrics,
                        &format!("speed_records_total{{outcome=\"{outcome}\"}}"),
                    )
                })
                .sum(),
            updates: metric(metrics, "speed_window_updates_total"),
            seconds: metrics
                .get("speed_batch_seconds_sum")
                .copied()
                .unwrap_or(0.0),
        }
    }

    fn since(&self, earlier: &BatchStats) -> BatchStats {
        BatchStats {
            batches: self.batches.saturating_sub(earlier.batches),
            records: self.records.saturating_sub(earlier.records),
            updates: self.updates.saturating_sub(earlier.updates),
            seconds: (self.seconds - earlier.seconds).max(0.0),
        }
    }

    /// "N batches of R records (U updates) on average, each applied, published and
    /// committed in T ms on average".
    fn describe(&self) -> String {
        if self.batches == 0 {
            return "no batch".to_owned();
        }
        let batches = self.batches as f64;
        format!(
            "{} batches of {:.0} records and {:.0} window updates on average, each applied, published and committed in {:.1} ms on average",
            fmt_int(self.batches),
            self.records as f64 / batches,
            self.updates as f64 / batches,
            self.seconds * 1000.0 / batches
        )
    }
}

// ---------------------------------------------------------------------------------------
// Redis: memory, and every state read back
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct RedisMemory {
    used: u64,
    rss: u64,
    keys: u64,
}

impl RedisMemory {
    async fn read(
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> anyhow::Result<RedisMemory> {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(connection)
            .await
            .context("INFO memory")?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| {
                    line.strip_prefix(name)?
                        .strip_prefix(':')?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let keys: u64 = redis::cmd("DBSIZE").query_async(connection).await?;
        Ok(RedisMemory {
            used: field("used_memory"),
            rss: field("used_memory_rss"),
            keys,
        })
    }
}

#[derive(Default)]
struct StateScan {
    /// Keys of the current generation and what they hold.
    keys: u64,
    events: u64,
    amount_sum: i64,
    value_bytes: u64,
    hours: u64,
    max_events: usize,
    other_generation: u64,
    undecodable: u64,
    /// The meta key's view.
    degraded: Option<String>,
    /// The `MEMORY USAGE` sample.
    sample_keys: u64,
    sample_usage: u64,
    sample_events: u64,
}

impl StateScan {
    /// Reads every customer key under `prefix` (SCAN, MGET) and the `MEMORY USAGE` of
    /// about `sample` of them, spread over the keyspace.
    async fn read(
        connection: &mut redis::aio::MultiplexedConnection,
        prefix: &str,
        sample: usize,
        customers: usize,
    ) -> anyhow::Result<StateScan> {
        let meta = SpeedMeta::read(connection, &meta_key(prefix)).await?;
        let mut scan = StateScan {
            degraded: meta.degraded(),
            ..StateScan::default()
        };
        let pattern = format!("{prefix}speed:c:*");
        let every = (customers / sample.max(1)).max(1);
        let mut sampled: Vec<(String, usize)> = Vec::new();
        let mut seen = 0_usize;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(connection)
                .await?;
            if !keys.is_empty() {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(connection)
                    .await?;
                for (key, value) in keys.into_iter().zip(values) {
                    let Some(bytes) = value else { continue };
                    match CustomerState::decode(&bytes) {
                        Ok(state) if Some(state.generation) == meta.generation => {
                            seen += 1;
                            scan.keys += 1;
                            scan.events += state.events.len() as u64;
                            scan.amount_sum += state.events.iter().map(|e| e.amount).sum::<i64>();
                            scan.value_bytes += bytes.len() as u64;
                            scan.hours += state.hours.len() as u64;
                            scan.max_events = scan.max_events.max(state.events.len());
                            if seen.is_multiple_of(every) && sampled.len() < sample {
                                sampled.push((key, state.events.len()));
                            }
                        }
                        Ok(_) => scan.other_generation += 1,
                        Err(_) => scan.undecodable += 1,
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for chunk in sampled.chunks(500) {
            let mut pipeline = redis::pipe();
            for (key, _) in chunk {
                pipeline
                    .cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
            let usages: Vec<Option<u64>> = pipeline.query_async(connection).await?;
            for ((_, events), usage) in chunk.iter().zip(usages) {
                if let Some(usage) = usage {
                    scan.sample_keys += 1;
                    scan.sample_usage += usage;
                    scan.sample_events += *events as u64;
                }
            }
        }
        Ok(scan)
    }

    fn sample_bytes_per_event(&self) -> Option<f64> {
        (self.sample_events > 0).then(|| self.sample_usage as f64 / self.sample_events as f64)
    }
}

// ---------------------------------------------------------------------------------------
// The delay phase
// ---------------------------------------------------------------------------------------

struct Delay {
    target_rate: f64,
    /// The production window.
    window: Duration,
    produced: u64,
    failed: u64,
    /// Events whose append time is the broker's (`LogAppendTime`); the others count from
    /// the producer's timestamp.
    log_append: u64,
    probes: u32,
    updates: u64,
    /// Updates whose timestamp is not a `CreateTime` (not expected).
    updates_not_create_time: u64,
    unreadable_updates: u64,
    matched: u64,
    unmatched: u64,
    /// Kafka append to visibility, in microseconds (millisecond resolution).
    histogram: Histogram<u64>,
    max_lag: i64,
    /// From the end of production to the group's lag back at 0.
    drained_after: Option<Duration>,
    /// CPU while producing.
    cpu: CpuUsage,
    /// The speed layer's batches from the first event to the lag back at 0.
    batches: Option<BatchStats>,
}

impl Delay {
    fn produced_rate(&self) -> f64 {
        self.produced as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn quantile(&self, quantile: f64) -> u64 {
        self.histogram.value_at_quantile(quantile)
    }

    fn summary(&self) -> String {
        format!(
            "{} events at {} events/s; p50 {} p99 {}; {} not seen visible",
            fmt_int(self.produced),
            fmt_rate(self.produced_rate()),
            fmt_micros(self.quantile(0.50)),
            fmt_micros(self.quantile(0.99)),
            fmt_int(self.unmatched)
        )
    }
}

/// An event of the delay phase as acknowledged.
struct Appended {
    customer: String,
    offset: i64,
    append_ms: i64,
    log_append: bool,
}

/// A window update as read back.
struct SeenUpdate {
    customer: String,
    source_offset: i64,
    created_ms: i64,
    create_time: bool,
}

/// A fresh transaction of a known customer: event time = ingest time = `at_ms` (now when
/// `None`).
fn delay_record(
    generator: &mut EventGenerator,
    at_ms: Option<i64>,
) -> anyhow::Result<(String, Vec<u8>, i64)> {
    let event = generator.next_event();
    let mut record = event.record()?;
    if let Some(at_ms) = at_ms {
        record.ingest_time = EventTime::from_millis(at_ms)?;
    }
    record.event_time = record.ingest_time;
    Ok((
        event.customer_id,
        fraud_events::encode(&record),
        record.ingest_time.as_millis(),
    ))
}

fn send(
    producer: &FutureProducer,
    topic: &str,
    customer: &str,
    payload: &[u8],
    timestamp: i64,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let record = FutureRecord::to(topic)
        .key(customer)
        .payload(payload)
        .timestamp(timestamp)
        .headers(ingest::publish::record_headers(&[]));
    producer.send_result(record).map_err(|(error, _)| error)
}

async fn delay_phase(
    args: &SpeedArgs,
    settings: &Settings,
    stack: &SpeedStack,
    generator: &mut EventGenerator,
    target_rate: f64,
    sampler: &LagSampler,
    pids: &Pids,
) -> anyhow::Result<Delay> {
    // The broker stamps each record with its append time from now on, and returns it in
    // the delivery report.
    let admin: AdminClient<DefaultClientContext> =
        fraud_kafka::client_config(&stack.kafka).create()?;
    let config = AlterConfig::new(ResourceSpecifier::Topic(&stack.topic))
        .set("message.timestamp.type", "LogAppendTime");
    for result in admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .context("alter the topic's configuration")?
    {
        if let Err((_, code)) = result {
            bail!(
                "set message.timestamp.type=LogAppendTime on {}: {code}",
                stack.topic
            );
        }
    }
    // Ingest's producer settings (services/ingest/src/publish.rs), with a linger of
    // `--delay-linger-ms`: paced evenly, the load would otherwise reach the broker as
    // hundreds of small requests a second, where ingest at this rate takes its events in
    // batch requests of up to 1,000 and produces each at once. The broker shares the
    // machine with the pipeline being measured, and the delay starts at the append.
    let producer = fraud_kafka::durable_producer_with(&settings.kafka, |client| {
        client
            .set(
                "queue.buffering.max.messages",
                settings.ingest.producer_queue_max.to_string(),
            )
            .set(
                "message.timeout.ms",
                settings.ingest.produce_timeout_ms.to_string(),
            )
            .set("linger.ms", args.delay_linger_ms.to_string());
    })?;
    // Probe until the broker applies the new timestamp type (the probes are ordinary
    // events; the speed layer applies them like any other).
    let mut probes = 0;
    loop {
        probes += 1;
        let (customer, payload, timestamp) = delay_record(generator, None)?;
        let delivery = send(&producer, &stack.topic, &customer, &payload, timestamp)?;
        if let Ok(Ok(delivery)) = delivery.await
            && matches!(delivery.timestamp, Timestamp::LogAppendTime(_))
        {
            break;
        }
        if probes >= 30 {
            bail!("the broker did not stamp records with LogAppendTime within 15s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every event is encoded before the phase, stamped (event and ingest time) with the
    // moment it is planned to be sent, so that the phase's CPU is the load's, not the
    // generator's.
    let total = (target_rate * args.delay_seconds as f64).round() as usize;
    progress(format!(
        "delay: generating {} events",
        fmt_int(total as u64)
    ));
    let planned_start_ms =
        Utc::now().timestamp_millis() + 2_000 + i64::try_from(total / 200).unwrap_or(0);
    let mut events = Vec::with_capacity(total);
    for i in 0..total {
        let at_ms = planned_start_ms + (i as f64 * 1000.0 / target_rate) as i64;
        events.push(delay_record(generator, Some(at_ms))?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = {
        let kafka = stack.kafka.clone();
        let topic = stack.updates_topic.clone();
        let partitions = stack.partitions;
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || read_updates(&kafka, &topic, partitions, &stop, ready_tx))
    };
    // The reader is positioned at the updates topic's end before the first event.
    let positioned =
        tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(30))).await?;
    if positioned.is_err() {
        stop.store(true, Ordering::Relaxed);
        let failure = reader.join();
        bail!(
            "the updates reader did not start: {}",
            match failure {
                Ok(Err(error)) => format!("{error:#}"),
                _ => "no answer within 30s".to_owned(),
            }
        );
    }

    progress(format!(
        "delay: producing {} events/s for {}s",
        fmt_rate(target_rate),
        args.delay_seconds
    ));
    let (sender, mut receiver) =
        tokio::sync::mpsc::unbounded_channel::<(String, rdkafka::producer::DeliveryFuture)>();
    let collector = tokio::spawn(async move {
        let mut appended = Vec::new();
        let mut failed = 0_u64;
        while let Some((customer, delivery)) = receiver.recv().await {
            match delivery.await {
                Ok(Ok(delivery)) => appended.push(Appended {
                    customer,
                    offset: delivery.offset,
                    append_ms: delivery.timestamp.to_millis().unwrap_or(0),
                    log_append: matches!(delivery.timestamp, Timestamp::LogAppendTime(_)),
                }),
                _ => failed += 1,
            }
        }
        (appended, failed)
    });
    let wait_ms = planned_start_ms - Utc::now().timestamp_millis();
    if wait_ms > 0 {
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
    let stats_before = speed_metrics(stack.speed_port).await;
    let cpu_before = CpuSnapshot::take(pids);
    let started = Instant::now();
    let mut events = events.into_iter();
    let mut sent = 0_usize;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * target_rate) as usize).min(total);
        while sent < due {
            let Some((customer, payload, timestamp)) = events.next() else {
                sent = total;
                break;
            };
            let delivery = loop {
                match send(&producer, &stack.topic, &customer, &payload, timestamp) {
                    Ok(delivery) => break delivery,
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(error) => bail!("could not enqueue a delay-phase record: {error}"),
                }
            };
            let _ = sender.send((customer, delivery));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(pids));
    drop(sender);
    let (appended, failed) = collector.await?;
    let produced_end = Instant::now();
    let window = produced_end.duration_since(started);

    // Wait for the speed layer to have applied (and committed) everything, then for the
    // reader to reach the updates topic's end.
    let drained_after = loop {
        if let Some(zero) = sampler
            .samples()
            .iter()
            .find(|s| s.at > produced_end && s.lag == 0)
        {
            break Some(zero.at.duration_since(produced_end));
        }
        if produced_end.elapsed() > Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(LAG_INTERVAL).await;
    };
    let stats_after = speed_metrics(stack.speed_port).await;
    let batches = stats_before
        .zip(stats_after)
        .map(|(before, after)| BatchStats::read(&after).since(&BatchStats::read(&before)));
    stop.store(true, Ordering::Relaxed);
    let updates = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the updates reader panicked"))??;
    let max_lag = sampler
        .samples()
        .iter()
        .filter(|s| s.at >= started)
        .map(|s| s.lag)
        .max()
        .unwrap_or(0);

    // Each event is visible from the first update of its customer covering its offset.
    let mut by_customer: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for update in &updates.seen {
        by_customer
            .entry(update.customer.as_str())
            .or_default()
            .push((update.source_offset, update.created_ms));
    }
    for list in by_customer.values_mut() {
        list.sort_unstable();
        // Earliest creation among the updates at or after each offset.
        for i in (0..list.len().saturating_sub(1)).rev() {
            list[i].1 = list[i].1.min(list[i + 1].1);
        }
    }
    let mut histogram = latency_histogram();
    let mut matched = 0;
    let mut unmatched = 0;
    for event in &appended {
        let visible = by_customer.get(event.customer.as_str()).and_then(|list| {
            let i = list.partition_point(|(offset, _)| *offset < event.offset);
            list.get(i).map(|(_, created)| *created)
        });
        match visible {
            Some(created) => {
                matched += 1;
                let micros = (created - event.append_ms).max(0) as u64 * 1_000;
                let _ = histogram.record(micros.max(1));
            }
            None => unmatched += 1,
        }
    }
    Ok(Delay {
        target_rate,
        window,
        produced: appended.len() as u64 + failed,
        failed,
        log_append: appended.iter().filter(|event| event.log_append).count() as u64,
        probes,
        updates: updates.seen.len() as u64,
        updates_not_create_time: updates.seen.iter().filter(|u| !u.create_time).count() as u64,
        unreadable_updates: updates.unreadable,
        matched,
        unmatched,
        histogram,
        max_lag,
        drained_after,
        cpu,
        batches,
    })
}

/// The two fields of a window update the delay needs; serde skips the rest (its events
/// and windows) without building them, so reading the updates costs the machine less.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateSource {
    customer_id: String,
    source_offset: i64,
}

struct UpdatesRead {
    seen: Vec<SeenUpdate>,
    unreadable: u64,
}

/// Reads the updates topic from its current end until `stop`, then on to the end it has
/// then (at most 15 s more).
fn read_updates(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<UpdatesRead> {
    // Fetches as the platform's consumers fetch (`kafka.fetch_min_bytes`,
    // `kafka.fetch_max_wait_ms`): with librdkafka's defaults the reader would ask the
    // broker for every few updates, and that load would slow the pipeline it measures. The
    // delay is read from the updates' `CreateTime`, so when the reader sees them does not
    // matter.
    let consumer: BaseConsumer = fraud_kafka::client_config(kafka)
        .set("group.id", unique_name("bench-updates-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.min.bytes", kafka.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", kafka.fetch_max_wait_ms.to_string())
        .create()
        .context("create the updates reader")?;
    let timeout = Duration::from_secs(10);
    let mut assignment = TopicPartitionList::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
        next.insert(partition, high);
    }
    consumer.assign(&assignment)?;
    let _ = ready.send(());
    let mut read = UpdatesRead {
        seen: Vec::new(),
        unreadable: 0,
    };
    let mut ends: Option<(HashMap<i32, i64>, Instant)> = None;
    loop {
        if ends.is_none() && stop.load(Ordering::Relaxed) {
            let mut highs = HashMap::new();
            for partition in 0..partitions {
                let (_, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
                highs.insert(partition, high);
            }
            ends = Some((highs, Instant::now() + Duration::from_secs(15)));
        }
        if let Some((highs, deadline)) = &ends
            && (highs
                .iter()
                .all(|(partition, high)| next.get(partition).is_some_and(|n| n >= high))
                || Instant::now() > *deadline)
        {
            return Ok(read);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                next.insert(message.partition(), message.offset() + 1);
                let timestamp = message.timestamp();
                match serde_json::from_slice::<UpdateSource>(message.payload().unwrap_or_default())
                {
                    Ok(update) => read.seen.push(SeenUpdate {
                        customer: update.customer_id,
                        source_offset: update.source_offset,
                        created_ms: timestamp.to_millis().unwrap_or(0),
                        create_time: matches!(timestamp, Timestamp::CreateTime(_)),
                    }),
                    Err(_) => read.unreadable += 1,
                }
            }
            Some(Err(error)) => progress(format!("updates reader: {error}")),
            None => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn render_report(
    args: &SpeedArgs,
    settings: &Settings,
    stack: &SpeedStack,
    speed_bin: &Path,
    m: &Measured,
    cleanup: &[String],
) -> String {
    let machine = Machine::describe();
    let now = Utc::now();
    let prefill = &m.prefill;
    let reference = m.reference.rate();
    let rate = m.main.rate();
    let ratio = rate.map(|rate| rate / reference);
    let scan = &m.scan;
    let memory_delta = m.memory_after.used as i64 - m.memory_before.used as i64;
    let per_event = (scan.events > 0).then(|| memory_delta as f64 / scan.events as f64);
    let mut r = String::new();
    let _ = writeln!(r, "# Speed layer benchmark\n");
    let _ = writeln!(
        r,
        "{}\n",
        run_line(
            &machine,
            now,
            "Kafka, Redis (and PostgreSQL, RabbitMQ) on the same machine as the speed layer \
             and this load generator",
            "fraud-bench speed"
        )
    );

    let _ = writeln!(r, "| figure | value |\n|---|---|");
    let _ = writeln!(
        r,
        "| pre-filled topic ({} partitions; not timed) | {} events over {} customers (at most {} per customer), event times within the {} min before the run |",
        args.partitions,
        fmt_int(prefill.events as u64),
        fmt_int(prefill.customers as u64),
        fmt_int(prefill.max_per_customer as u64),
        args.event_span_minutes
    );
    let _ = writeln!(
        r,
        "| reference: plain consumer, reads and decodes every record (first record to last) | {} records/s |",
        fmt_rate(reference)
    );
    let _ = writeln!(
        r,
        "| reference: from creating the consumer (joining its group included) | {} records/s, all {} read after {:.1} s |",
        fmt_rate(m.reference.rate_from_start()),
        fmt_int(m.reference.records),
        m.reference.last_at.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "| speed layer: applied, from its first commit to every partition applied to its end | {} |",
        match (rate, m.main.end) {
            (Some(rate), Some(_)) => format!("{} events/s", fmt_rate(rate)),
            (Some(rate), None) => format!(
                "{} events/s (**not finished within {} s**)",
                fmt_rate(rate),
                args.main_timeout_seconds
            ),
            (None, _) => "not measurable (no commit seen before the end)".to_owned(),
        }
    );
    if let (Some(from_start), Some(end)) = (m.main.rate_from_start(), m.main.end) {
        let _ = writeln!(
            r,
            "| speed layer: from starting the process (start-up, group join, rebuild planning included) | {} events/s, all applied after {:.1} s (first commit seen after {:.1} s) |",
            fmt_rate(from_start),
            end.duration_since(m.main.started).as_secs_f64(),
            m.main.first_commit.map_or(0.0, |(at, _)| at
                .duration_since(m.main.started)
                .as_secs_f64())
        );
    }
    if let Some((fastest, from)) = m.main.fastest {
        let _ = writeln!(
            r,
            "| speed layer: fastest {} s of the main phase (for comparison; not the figure of the targets) | {} events/s (from {:.0} s after the start) |",
            FASTEST_WINDOW.as_secs(),
            fmt_rate(fastest),
            from.as_secs_f64()
        );
    }
    if let Some(ratio) = ratio {
        let _ = writeln!(
            r,
            "| ratio: speed layer ÷ reference | {:.0}% |",
            ratio * 100.0
        );
    }
    let exact = scan.events == prefill.events as u64 && scan.amount_sum == prefill.amount_sum;
    let _ = writeln!(
        r,
        "| exactly once: events held in Redis after the main phase (every state read back) | {} of {} produced, in {} keys; sum of amounts {}{} |",
        fmt_int(scan.events),
        fmt_int(prefill.events as u64),
        fmt_int(scan.keys),
        if scan.amount_sum == prefill.amount_sum {
            "equal to the produced sum"
        } else {
            "**differs from the produced sum**"
        },
        if exact { "" } else { " (**not exact**)" }
    );
    match &m.metrics {
        Some(metrics) => {
            let records = |outcome: &str| {
                fmt_int(metric(
                    metrics,
                    &format!("speed_records_total{{outcome=\"{outcome}\"}}"),
                ))
            };
            let _ = writeln!(
                r,
                "| speed layer's counters: records applied / late / duplicate / replayed / undecodable | {} / {} / {} / {} / {} |",
                records("applied"),
                records("late"),
                records("duplicate"),
                records("replayed"),
                records("undecodable")
            );
            let _ = writeln!(
                r,
                "| speed layer's batches in the main phase | {} |",
                BatchStats::read(metrics).describe()
            );
        }
        None => {
            let _ = writeln!(r, "| speed layer's counters | not readable from /metrics |");
        }
    }
    let _ = writeln!(
        r,
        "| consumer lag: largest (records, summed over partitions) | {} |",
        fmt_int(m.main.max_lag as u64)
    );
    let _ = writeln!(
        r,
        "| Redis `used_memory` before → after the main phase | {} → {} ({:+.1} MiB; keys {} → {}) |",
        mib(m.memory_before.used),
        mib(m.memory_after.used),
        memory_delta as f64 / 1024.0 / 1024.0,
        fmt_int(m.memory_before.keys),
        fmt_int(m.memory_after.keys)
    );
    let _ = writeln!(
        r,
        "| Redis memory per in-window event: `used_memory` delta ÷ events held | {} |",
        per_event.map_or("not measurable".to_owned(), |bytes| format!(
            "{bytes:.1} bytes"
        ))
    );
    let _ = writeln!(
        r,
        "| Redis memory per in-window event: `MEMORY USAGE` of {} keys ÷ their {} events | {} |",
        fmt_int(scan.sample_keys),
        fmt_int(scan.sample_events),
        scan.sample_bytes_per_event()
            .map_or("not measurable".to_owned(), |bytes| format!(
                "{bytes:.1} bytes"
            ))
    );
    let _ = writeln!(
        r,
        "| of which the stored state itself (value bytes ÷ events held) | {:.1} bytes ({} events per key on average, {} hourly increments per key) |",
        scan.value_bytes as f64 / scan.events.max(1) as f64,
        format_args!("{:.1}", scan.events as f64 / scan.keys.max(1) as f64),
        format_args!("{:.1}", scan.hours as f64 / scan.keys.max(1) as f64)
    );
    match &m.delay {
        Ok(delay) => {
            let _ = writeln!(
                r,
                "| delay phase: {} events produced at {} events/s ({:.0}% of the applied rate) for {:.1} s | {} events/s achieved |",
                fmt_int(delay.produced),
                fmt_rate(delay.target_rate),
                delay.target_rate / rate.unwrap_or(f64::INFINITY) * 100.0,
                delay.window.as_secs_f64(),
                fmt_rate(delay.produced_rate())
            );
            let _ = writeln!(
                r,
                "| delay: Kafka append → visible in Redis, p50 / p90 / p99 / p99.9 / max ({} events) | {} / {} / {} / {} / {} |",
                fmt_int(delay.matched),
                fmt_micros(delay.quantile(0.50)),
                fmt_micros(delay.quantile(0.90)),
                fmt_micros(delay.quantile(0.99)),
                fmt_micros(delay.quantile(0.999)),
                fmt_micros(delay.histogram.max())
            );
            if let Some(batches) = &delay.batches {
                let _ = writeln!(
                    r,
                    "| speed layer's batches in the delay phase | {} |",
                    batches.describe()
                );
            }
            let _ = writeln!(
                r,
                "| delay phase: events never seen visible / lag largest / lag back to 0 after production | {} / {} / {} |",
                fmt_int(delay.unmatched),
                fmt_int(delay.max_lag as u64),
                delay
                    .drained_after
                    .map_or("not within 60 s".to_owned(), |after| format!(
                        "{:.2} s",
                        after.as_secs_f64()
                    ))
            );
        }
        Err(reason) => {
            let _ = writeln!(r, "| delay | not measurable: {reason} |");
        }
    }

    let _ = writeln!(r, "\n## Targets (the issue's)\n");
    let _ = writeln!(r, "| target | measured | result |\n|---|---|---|");
    let measured_rate = rate.filter(|_| m.main.end.is_some());
    let _ = writeln!(
        r,
        "| ≥ {} events/s applied, exactly once in effect | {} | {} |",
        fmt_rate(RATE_TARGET),
        measured_rate.map_or("not measured".to_owned(), |rate| format!(
            "{} events/s{}",
            fmt_rate(rate),
            if exact { "" } else { ", **not exact**" }
        )),
        measured_rate.map_or("**not measured**", |rate| pass(
            rate >= RATE_TARGET && exact
        ))
    );
    let _ = writeln!(
        r,
        "| ≥ {:.0}% of the read-only reference | {} | {} |",
        RATIO_TARGET * 100.0,
        ratio.map_or("not measured".to_owned(), |ratio| format!(
            "{:.0}% ({} ÷ {})",
            ratio * 100.0,
            fmt_rate(rate.unwrap_or(0.0)),
            fmt_rate(reference)
        )),
        ratio.map_or("**not measured**", |ratio| pass(
            ratio >= RATIO_TARGET && m.main.end.is_some()
        ))
    );
    match &m.delay {
        Ok(delay) => {
            let p99 = delay.quantile(0.99);
            // Events never seen visible count as later than any bound.
            let unseen_share = delay.unmatched as f64 / delay.produced.max(1) as f64;
            // A lighter load than half the measured maximum proves nothing about the target.
            let load = delay.target_rate / rate.unwrap_or(f64::INFINITY);
            let _ = writeln!(
                r,
                "| p99 Kafka append → visible in Redis ≤ {} at half the maximum rate | {} at {} events/s ({:.0}% of the applied rate){} | {} |",
                fmt_micros(DELAY_P99_TARGET_MICROS),
                fmt_micros(p99),
                fmt_rate(delay.target_rate),
                load * 100.0,
                if delay.unmatched > 0 {
                    format!("; {} events never seen visible", fmt_int(delay.unmatched))
                } else {
                    String::new()
                },
                if load < 0.495 {
                    "**not measured** (load under half)"
                } else {
                    pass(p99 <= DELAY_P99_TARGET_MICROS && unseen_share < 0.01)
                }
            );
        }
        Err(reason) => {
            let _ = writeln!(
                r,
                "| p99 Kafka append → visible in Redis ≤ {} at half the maximum rate | not measurable: {reason} | **not measured** |",
                fmt_micros(DELAY_P99_TARGET_MICROS)
            );
        }
    }
    let _ = writeln!(
        r,
        "| ≤ {:.0} bytes of Redis memory per in-window event | {} (`MEMORY USAGE` sample: {}) | {} |",
        MEMORY_TARGET_BYTES,
        per_event.map_or("not measurable".to_owned(), |bytes| format!(
            "{bytes:.1} bytes"
        )),
        scan.sample_bytes_per_event()
            .map_or("none".to_owned(), |bytes| format!("{bytes:.1} bytes")),
        per_event.map_or("**not measured**", |bytes| pass(
            bytes <= MEMORY_TARGET_BYTES
        ))
    );

    let _ = writeln!(r, "\n## Consumer lag during the main phase\n");
    let _ = writeln!(
        r,
        "The speed layer's group: the sum over partitions of the high watermark minus the \
         committed offset (the speed layer commits after each batch is applied and its \
         updates published), sampled every {} ms from the start of the process.\n",
        LAG_INTERVAL.as_millis()
    );
    r.push_str(&lag_table(&m.main, &m.lag));
    if !m.lag_errors.is_empty() {
        let _ = writeln!(
            r,
            "\n{} lag samples failed (first: {}).",
            m.lag_errors.len(),
            m.lag_errors[0]
        );
    }

    let _ = writeln!(r, "\n## CPU during each phase\n");
    let _ = writeln!(
        r,
        "CPUs' worth of time used (out of {}); `machine` is the share of every CPU that was \
         busy; `pipeline thread` is the speed layer's thread that polls, decodes, groups, \
         calls Redis and builds the updates; `librdkafka threads` are its consumer's and \
         producer's (`rdk:`) threads; the reference consumer, the delay phase's producer \
         and its updates reader run inside fraud-bench.\n",
        machine.cpus
    );
    let rows: Vec<(&str, CpuUsage)> = [
        ("before the reference (idle)", m.background),
        ("before the main phase (idle)", m.background_main),
    ]
    .into_iter()
    .chain(m.cpu.iter().copied())
    .collect();
    r.push_str(&cpu_table(
        "speed layer",
        &["of which pipeline thread", "of which librdkafka threads"],
        &rows,
    ));
    let busiest = m
        .background
        .machine_busy_percent
        .max(m.background_main.machine_busy_percent);
    if busiest > BUSY_BACKGROUND_PERCENT {
        let _ = writeln!(
            r,
            "\n**The machine was {busiest:.0}% busy before a phase started** (other work: \
             builds, services): every figure above is lower than on a quiet machine."
        );
    }
    for (phase, usage) in &m.cpu {
        if usage.other_cores > OTHER_WORK_CORES {
            let _ = writeln!(
                r,
                "\n**Other work used {:.2} CPUs during the {phase}** (builds, tests or services \
                 outside this benchmark): its figures are lower than on a quiet machine.",
                usage.other_cores
            );
        }
    }

    let _ = writeln!(r, "\n## How it is measured\n");
    let method = [
        "**applied rate**: the speed layer's group lag is sampled every 250 ms; the rate is the lag at the first sample with a committed offset divided by the time from that sample to the first sample with lag 0 (every partition applied to its end and committed). The rate from the process start also counts start-up, joining the group and planning the rebuild (a fresh prefix has no state, so every partition is rebuilt from the topic: the same apply path as live traffic).".to_owned(),
        "**reference**: a `BaseConsumer` with the speed layer's consumer settings (`fraud_kafka::rebalance::cooperative_consumer`: read_committed, no auto-commit, cooperative-sticky, session timeout 10 s) in a fresh group reads every record and decodes it with `fraud_events::decode`, and does nothing else. It ran just before the main phase on the same records, so both read from the page cache.".to_owned(),
        "**exactly once**: after the main phase every customer key of the prefix is read back (SCAN, MGET) and decoded; every event was produced once with a distinct transaction id and is inside its window, so the states must hold exactly the events produced, with the same sum of amounts.".to_owned(),
        format!("**memory**: `used_memory` of `INFO memory` just before the speed layer starts and once it has applied everything; the delta includes anything else written to this Redis meanwhile (the key count before and after shows whether others wrote). `MEMORY USAGE key SAMPLES 0` of every {}th customer key (about {}) divided by the events those keys hold does not depend on other writers.", (prefill.customers / args.memory_sample_keys.max(1)).max(1), fmt_int(args.memory_sample_keys as u64)),
        "**delay**: after the main phase the topic is switched to `message.timestamp.type=LogAppendTime`, so each record's timestamp, returned in its delivery report, is the broker's append time. Fresh events of the same customers, encoded before the phase with event time = ingest time = the moment each is due, are produced with ingest's producer settings but `linger.ms` 5 (`--delay-linger-ms`; it is before the append, so outside the delay, and spares the broker sharing the machine hundreds of small requests a second), paced evenly at the target rate. A reader consumes the updates topic from its end, fetching as the platform's consumers do (`kafka.fetch_min_bytes`, `kafka.fetch_max_wait_ms`) and decoding only each update's customer and `sourceOffset`; the speed layer publishes one update per customer and batch, after the Redis pipeline that applied the batch has returned, and the update's `CreateTime` is stamped when it is handed to its producer. An event's delay is the `CreateTime` of the first update of its customer whose `sourceOffset` is at or past the event's offset, minus the event's append time: an upper bound on the time to visibility (the key was written before the pipeline returned), with millisecond resolution; the same machine's clock on both sides. Every event of the phase is measured, none sampled.".to_owned(),
    ];
    for line in method {
        let _ = writeln!(r, "- {line}");
    }

    let _ = writeln!(r, "\n## Settings\n");
    let speed = &settings.speed;
    let mut lines = vec![
        format!("speed-layer binary: `{}`", speed_bin.display()),
        format!(
            "speed layer: max_batch_records {}, max_batch_wait_ms {}, allowed_lateness_ms {}, increments_ttl_ms {}, updates_compression {}; log filter `warn`; its own topic, updates topic, Redis key prefix `{}` and group `{}` through `FRAUD_…` variables",
            fmt_int(u64::from(speed.max_batch_records)),
            speed.max_batch_wait_ms,
            fmt_int(speed.allowed_lateness_ms),
            fmt_int(speed.increments_ttl_ms),
            speed.updates_compression,
            stack.prefix,
            stack.group
        ),
        format!(
            "topics: `{}` and `{}` (updates), {} partitions each, replication 1, deleted at the end",
            stack.topic, stack.updates_topic, args.partitions
        ),
        format!(
            "events: {} customers ({}), {} vendors, 1–5 vendors per customer, log-normal amounts with cents, event times from {} to {} min before the pre-fill started, ingest time (and Kafka timestamp) when produced; seed {}",
            fmt_int(prefill.customers as u64),
            if args.customer_skew == 0.0 {
                "uniform popularity".to_owned()
            } else {
                format!("Zipf popularity, exponent {}", args.customer_skew)
            },
            fmt_int(prefill.vendors as u64),
            format_args!(
                "{:.1}",
                (prefill.generated_at_ms - prefill.oldest_event_ms) as f64 / 60_000.0
            ),
            format_args!(
                "{:.1}",
                (prefill.generated_at_ms - prefill.newest_event_ms) as f64 / 60_000.0
            ),
            args.seed
        ),
        format!(
            "pre-fill: `fraud_kafka::durable_producer_with` (idempotent, acks=all, zstd) with linger.ms 20 and 10,000-record batches, {} records in {:.1} s ({} records/s)",
            fmt_int(prefill.events as u64),
            prefill.elapsed.as_secs_f64(),
            fmt_rate(prefill.events as f64 / prefill.elapsed.as_secs_f64().max(1e-9))
        ),
        format!(
            "reference: {} records read, {} undecodable",
            fmt_int(m.reference.records),
            fmt_int(m.reference.undecodable)
        ),
        format!(
            "state read back: {} keys of the current generation, {} of another, {} undecodable; most events in one key {}; meta key {}",
            fmt_int(scan.keys),
            fmt_int(scan.other_generation),
            fmt_int(scan.undecodable),
            fmt_int(scan.max_events as u64),
            scan.degraded
                .as_deref()
                .map_or("says every partition is ready".to_owned(), |why| format!(
                    "says: {why}"
                ))
        ),
        format!(
            "Redis `used_memory_rss` before → after the main phase: {} → {}",
            mib(m.memory_before.rss),
            mib(m.memory_after.rss)
        ),
    ];
    if let Ok(delay) = &m.delay {
        lines.push(format!(
            "delay phase: ingest's producer settings (queue.buffering.max.messages {}, message.timeout.ms {}) with linger.ms {}; {} probe record(s) until the broker stamped append times; {} of {} events with the broker's append time; {} not acknowledged; {} updates read ({} unreadable, {} without a CreateTime)",
            fmt_int(u64::from(settings.ingest.producer_queue_max)),
            settings.ingest.produce_timeout_ms,
            args.delay_linger_ms,
            delay.probes,
            fmt_int(delay.log_append),
            fmt_int(delay.produced - delay.failed),
            fmt_int(delay.failed),
            fmt_int(delay.updates),
            fmt_int(delay.unreadable_updates),
            fmt_int(delay.updates_not_create_time)
        ));
    }
    lines.push(format!(
        "speed layer stopped {}",
        match stack.stopped_cleanly {
            Some(true) => "cleanly on SIGTERM",
            Some(false) => "by SIGKILL after SIGTERM timed out",
            None => "(it had exited already)",
        }
    ));
    if !cleanup.is_empty() {
        lines.push(format!("clean-up problems: {}", cleanup.join("; ")));
    }
    for line in lines {
        let _ = writeln!(r, "- {line}");
    }
    r
}

/// The lag at whole seconds from the start (at most `LAG_ROWS` rows), with the rate
/// applied between rows.
fn lag_table(main: &MainPhase, samples: &[LagSample]) -> String {
    let mut r = String::new();
    let Some(last) = samples
        .iter()
        .rev()
        .find(|s| main.end.is_none_or(|end| s.at <= end))
    else {
        return "No lag sample was taken.\n".to_owned();
    };
    let span = last.at.duration_since(main.started).as_secs();
    let step = span.div_ceil(LAG_ROWS).max(1);
    let _ = writeln!(
        r,
        "| seconds since the start | lag (records) | applied since the previous row |\n|---|---|---|"
    );
    let mut previous: Option<&LagSample> = None;
    let mut second = 0;
    loop {
        let at = main.started + Duration::from_secs(second);
        let sample = if second >= span {
            Some(last)
        } else {
            samples.iter().find(|s| s.at >= at)
        };
        let Some(sample) = sample else { break };
        let applied = previous.map_or(String::new(), |previous| {
            let seconds = sample.at.duration_since(previous.at).as_secs_f64();
            if seconds > 0.0 && sample.committed_partitions > 0 {
                format!(
                    "{} events/s",
                    fmt_rate((previous.lag - sample.lag).max(0) as f64 / seconds)
                )
            } else {
                String::new()
            }
        });
        let _ = writeln!(
            r,
            "| {:.1} | {} | {} |",
            sample.at.duration_since(main.started).as_secs_f64(),
            fmt_int(sample.lag as u64),
            applied
        );
        previous = Some(sample);
        if second >= span {
            break;
        }
        second += step;
    }
    r
}

/// Where a benchmark's speed layer works: its topics, Redis prefix, group and port.
pub struct SpeedPlace<'a> {
    pub topic: &'a str,
    pub updates_topic: &'a str,
    pub redis_url: &'a str,
    pub prefix: &'a str,
    pub group: &'a str,
    pub port: u16,
}

/// The command that starts the speed layer at `place`, the rest of its configuration as
/// this program read it (`settings`); logs at `warn`.
pub fn speed_command(settings: &Settings, speed_bin: &Path, place: &SpeedPlace<'_>) -> Command {
    let mut command = Command::new(speed_bin);
    // Only what is set here: a developer's FRAUD_ variables must not leak in.
    for (variable, _) in std::env::vars() {
        if variable.starts_with("FRAUD_") {
            command.env_remove(variable);
        }
    }
    let speed = &settings.speed;
    let env = [
        ("FRAUD_KAFKA__BROKERS", settings.kafka.brokers.clone()),
        ("FRAUD_KAFKA__TRANSACTIONS_TOPIC", place.topic.to_owned()),
        (
            "FRAUD_KAFKA__WINDOW_UPDATES_TOPIC",
            place.updates_topic.to_owned(),
        ),
        ("FRAUD_REDIS__URL", place.redis_url.to_owned()),
        ("FRAUD_REDIS__KEY_PREFIX", place.prefix.to_owned()),
        (
            "FRAUD_POSTGRES__URL",
            settings.postgres.url.expose().clone(),
        ),
        (
            "FRAUD_INGEST__MAX_FUTURE_SKEW_MS",
            settings.ingest.max_future_skew_ms.to_string(),
        ),
        ("FRAUD_SPEED__GROUP", place.group.to_owned()),
        ("FRAUD_SPEED__LISTEN", format!("127.0.0.1:{}", place.port)),
        (
            "FRAUD_SPEED__ALLOWED_LATENESS_MS",
            speed.allowed_lateness_ms.to_string(),
        ),
        (
            "FRAUD_SPEED__INCREMENTS_TTL_MS",
            speed.increments_ttl_ms.to_string(),
        ),
        (
            "FRAUD_SPEED__MAX_BATCH_RECORDS",
            speed.max_batch_records.to_string(),
        ),
        (
            "FRAUD_SPEED__MAX_BATCH_WAIT_MS",
            speed.max_batch_wait_ms.to_string(),
        ),
        (
            "FRAUD_SPEED__WATERMARK_REFRESH_MS",
            speed.watermark_refresh_ms.to_string(),
        ),
        (
            "FRAUD_SPEED__UPDATES_COMPRESSION",
            speed.updates_compression.clone(),
        ),
        ("FRAUD_TELEMETRY__LOG_FILTER", "warn".to_owned()),
    ];
    command.envs(env);
    command
}
