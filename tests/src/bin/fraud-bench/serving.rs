//! `fraud-bench serving`: the serving API's benchmark (`deploy/dev bench serving`).
//!
//! In one run, with a Postgres database, topics (transactions, window updates), a Redis
//! key prefix, consumer groups (speed layer, serving API, lake writer), an alerts
//! exchange, a lake directory and API keys of its own, all removed at the end:
//! 1. **state** (not timed): `--customers` customers get batch views in Postgres (a
//!    succeeded `batch_runs` row with T_b one hour before the last full hour, and
//!    `batch_hourly`, `batch_daily`, `batch_baselines` and `batch_vendors` rows for
//!    every customer, in the day partitions `batch_day_partitions` makes,
//!    written by `INSERT … SELECT` from formulas the checks recompute), and speed state
//!    in Redis written by the real release `speed-layer` from a pre-filled transactions
//!    topic (`--events-per-customer` events each, event times within the last
//!    20 minutes); the release `serving-api` then starts and evaluates every window
//!    update until its group's lag is 0;
//! 2. **risk**: `--clients` concurrent clients sharing one keep-alive HTTP/1.1 client
//!    `GET /v1/customers/{id}/risk` over random customers for `--seconds` after a
//!    warm-up; every answer must be 200, and a sample is checked against what was
//!    written (window, today, last 24 hours, baseline, freshness);
//! 3. **reference**: the same client code against an axum handler in a process of its
//!    own (this program with a hidden flag: its own runtime, like the serving API's)
//!    that answers the same route with a fixed body of the size of a real risk answer;
//! 4. **alerts**: the release `ingest` starts too, and a queue of our own is bound to
//!    the exchange with `alert.#`. A short probe of single-event POSTs at `--clients`
//!    gives the maximum ingest rate; then single events are posted at `--alert-load` of
//!    it, among them `--alert-customers` customers who each get 6 events of 950.00, so
//!    the 6th POST takes their window over the default `sum-30m-over-limit` (500000
//!    minor units). An alert's delay is its delivery on the queue minus the sending of
//!    the POST that made the rule fire; every expected alert must arrive exactly once.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use clap::Args;
use fraud_config::{KafkaConfig, Settings};
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_testkit::{ChildProcess, free_port, unique_name};
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::BaseConsumer;

use super::{
    BUSY_BACKGROUND_PERCENT, CpuUsage, JSON, LoadResult, Machine, Part, Pids, RequestBody,
    SINGLES_POOL_PER_SECOND, Target, ThreadMatch, delete_group, delete_redis_keys, fmt_int,
    fmt_micros, fmt_rate, http_client, latency_histogram, lock, machine_ticks, p50_p99_max, pass,
    process_ticks, produce_all, progress, run_line, run_load, sample_lag, stop_process, tail,
    uuid_hex, wait_for_quiet, wait_for_topic, workspace_root, write_report,
};

#[derive(Args, Clone)]
pub(super) struct ServingArgs {
    /// Customers with state in both views; the risk phase reads random ones.
    #[arg(long, default_value_t = 100_000)]
    customers: usize,
    /// Events of each customer in the speed layer's window.
    #[arg(long, default_value_t = 5)]
    events_per_customer: usize,
    /// Days of `batch_daily` rows per customer (before T_b's day).
    #[arg(long, default_value_t = 30)]
    batch_days: u32,
    /// Hours of `batch_hourly` rows per customer (the hours before T_b).
    #[arg(long, default_value_t = 24)]
    batch_hours: u32,
    /// Concurrent clients of the risk, reference and probe phases.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Length of each measured risk and reference phase, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Warm-up before each measured phase, in seconds.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Every this many risk answers one is kept and checked.
    #[arg(long, default_value_t = 50)]
    check_every: u64,
    /// Length of the ingest probe that finds the maximum rate, in seconds.
    #[arg(long, default_value_t = 5)]
    probe_seconds: u64,
    /// Length of the alert phase, in seconds.
    #[arg(long, default_value_t = 20)]
    alert_seconds: u64,
    /// Rate of the alert phase, as a share of the probe's maximum.
    #[arg(long, default_value_t = 0.5)]
    alert_load: f64,
    /// Rate of the alert phase in POSTs/s, instead of `--alert-load` × the maximum.
    #[arg(long)]
    alert_rate: Option<f64>,
    /// Customers whose window goes over the limit during the alert phase (one alert
    /// each).
    #[arg(long, default_value_t = 1_000)]
    alert_customers: usize,
    /// How long to wait for the expected alerts after the last POST, in seconds.
    #[arg(long, default_value_t = 60)]
    alert_wait_seconds: u64,
    /// Partitions of the benchmark's topics (the platform's topic has 12).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// How long to wait, before each measured phase, for other work on the machine to end.
    #[arg(long, default_value_t = 60)]
    quiet_wait_seconds: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 20_190_530)]
    seed: u64,
    /// The serving-api binary (default: `serving-api` next to this program).
    #[arg(long)]
    serving_bin: Option<PathBuf>,
    /// The speed-layer binary (default: `speed-layer` next to this program).
    #[arg(long)]
    speed_bin: Option<PathBuf>,
    /// The ingest binary (default: `ingest` next to this program).
    #[arg(long)]
    ingest_bin: Option<PathBuf>,
    /// Where to write the report (default: `target/bench/serving.md` under the workspace).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Internal: serve the reference on this port (the benchmark starts this program so).
    #[arg(long, hide = true)]
    reference_port: Option<u16>,
    /// Internal: the reference's fixed body.
    #[arg(long, hide = true)]
    reference_body: Option<PathBuf>,
}

/// Targets of the issue.
const RATIO_TARGET: f64 = 0.3;
const RISK_P99_TARGET_MICROS: u64 = 5_000;
const ALERT_P99_TARGET_MICROS: u64 = 100_000;

/// The default rule the alert phase makes fire, and its limit (minor units).
const ALERT_RULE: &str = "sum-30m-over-limit";
const ALERT_LIMIT_MINOR: i64 = 500_000;
/// Events of an alert customer and their amount: 5 × 950.00 = 4,750.00 is under the
/// limit, the 6th takes the window to 5,700.00. Each is at most 1,000.00, so the
/// new-vendor rule (over 1,000.00) never fires, and 6 events stay under the count rule.
const ALERT_EVENTS: usize = 6;
const ALERT_AMOUNT_MINOR: i64 = 95_000;
const _: () = assert!(
    (ALERT_EVENTS as i64 - 1) * ALERT_AMOUNT_MINOR <= ALERT_LIMIT_MINOR
        && ALERT_EVENTS as i64 * ALERT_AMOUNT_MINOR > ALERT_LIMIT_MINOR
);
/// Amounts of every other event: at most 200.00, so no rule fires for them.
const SMALL_AMOUNT_MINOR: std::ops::RangeInclusive<i64> = 100..=20_000;
/// Amounts of the risk customers' events (at most 5 × 500.00 in a window, under every
/// limit; their baseline peaks are at least 1,000.00, so 300% of it is never reached).
const RISK_AMOUNT_MINOR: std::ops::RangeInclusive<i64> = 100..=50_000;
/// The risk customers' event times fall within this long before the pre-fill.
const RISK_EVENT_SPAN_MS: i64 = 20 * MINUTE;
/// First customer id of each population (ids are decimal, as card numbers are).
const RISK_ID_BASE: i64 = 5_100_000_000_000_000;
const BACKGROUND_ID_BASE: i64 = 5_200_000_000_000_000;
const ALERT_ID_BASE: i64 = 5_300_000_000_000_000;
/// Customers of the probe and the alert phase's other events.
const BACKGROUND_CUSTOMERS: usize = 100_000;
/// POSTs in flight at most during the paced alert phase.
const ALERT_SENDERS: usize = 64;
/// How often a consumer group's lag is sampled while waiting for it.
const LAG_INTERVAL: Duration = Duration::from_millis(250);
/// CPUs of other work during a phase above which the report says its figures are low.
const OTHER_WORK_CORES: f64 = 0.3;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

pub(super) async fn serving_benchmark(args: ServingArgs) -> anyhow::Result<()> {
    if let Some(port) = args.reference_port {
        return serve_reference(port, args.reference_body.as_deref()).await;
    }
    if args.customers == 0
        || args.events_per_customer == 0
        || args.clients == 0
        || args.partitions <= 0
        || args.alert_customers == 0
        || args.seconds == 0
        || args.check_every == 0
    {
        bail!(
            "--customers, --events-per-customer, --clients, --partitions, --alert-customers, \
             --seconds and --check-every must be positive"
        );
    }
    if !(args.alert_load > 0.0 && args.alert_load <= 1.0) || args.alert_seconds < 5 {
        bail!("--alert-load must be in (0, 1] and --alert-seconds at least 5");
    }
    let settings = Settings::load(None).context("load the platform's configuration")?;
    let bins = Binaries {
        serving: super::service_binary(
            args.serving_bin.as_deref(),
            "serving-api",
            "--serving-bin",
        )?,
        speed: super::service_binary(args.speed_bin.as_deref(), "speed-layer", "--speed-bin")?,
        ingest: super::service_binary(args.ingest_bin.as_deref(), "ingest", "--ingest-bin")?,
        bench: std::env::current_exe().context("locate this program")?,
    };
    let report_path = args.report.clone().unwrap_or_else(|| {
        workspace_root()
            .join("target")
            .join("bench")
            .join("serving.md")
    });

    let mut stack = ServingStack::create(&settings, &args).await?;
    let measured = measure(&args, &settings, &mut stack, &bins).await;
    let cleanup = stack.remove().await;
    let measured = measured?;
    for problem in &cleanup {
        progress(format!("clean-up: {problem}"));
    }
    let report = render_report(&args, &stack, &bins, &measured, &cleanup);
    write_report(&report, &report_path)?;
    let wrong = measured.wrong();
    if !wrong.is_empty() {
        bail!("wrong results (see the report): {}", wrong.join("; "));
    }
    Ok(())
}

struct Binaries {
    serving: PathBuf,
    speed: PathBuf,
    ingest: PathBuf,
    bench: PathBuf,
}

// ---------------------------------------------------------------------------------------
// The reference: a fixed body from an axum handler in a process of its own
// ---------------------------------------------------------------------------------------

/// Serves `GET /v1/customers/{id}/risk` with the body in `body_file` until killed.
async fn serve_reference(port: u16, body_file: Option<&Path>) -> anyhow::Result<()> {
    let body_file = body_file.context("--reference-body is required with --reference-port")?;
    let body = Bytes::from(
        std::fs::read(body_file).with_context(|| format!("read {}", body_file.display()))?,
    );
    let router = axum::Router::new().route(
        "/v1/customers/{customer_id}/risk",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("bind 127.0.0.1:{port}"))?;
    axum::serve(listener, router).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The stack: a database, topics, groups, a Redis prefix, an exchange, a lake directory,
// API keys, and the processes
// ---------------------------------------------------------------------------------------

struct ServingStack {
    kafka: KafkaConfig,
    redis_url: String,
    rabbitmq_url: String,
    database: String,
    topic: String,
    updates_topic: String,
    prefix: String,
    speed_group: String,
    serving_group: String,
    writer_group: String,
    exchange: String,
    dir: PathBuf,
    read_key: String,
    ingest_key: String,
    partitions: i32,
    processes: Vec<Running>,
    topics_created: bool,
}

/// A process the benchmark started.
struct Running {
    name: &'static str,
    process: Option<ChildProcess>,
    pid: u32,
    base: String,
    stopped_cleanly: Option<bool>,
}

impl ServingStack {
    async fn create(settings: &Settings, args: &ServingArgs) -> anyhow::Result<ServingStack> {
        let name = unique_name("bench-serving");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(dir.join("lake"))
            .with_context(|| format!("create {}", dir.display()))?;
        let mut stack = ServingStack {
            kafka: settings.kafka.clone(),
            redis_url: settings.redis.url.expose().clone(),
            rabbitmq_url: settings.rabbitmq.url.expose().clone(),
            database: String::new(),
            topic: format!("{name}-transactions"),
            updates_topic: format!("{name}-updates"),
            prefix: format!("{name}:"),
            speed_group: format!("{name}-speed"),
            serving_group: format!("{name}-serving"),
            writer_group: format!("{name}-lake-writer"),
            exchange: format!("{name}.alerts"),
            dir,
            read_key: format!("bench_read_{}", uuid_hex(&mut rand::rng())),
            ingest_key: format!("bench_ingest_{}", uuid_hex(&mut rand::rng())),
            partitions: args.partitions,
            processes: Vec::new(),
            topics_created: false,
        };
        let created = async {
            progress(format!(
                "creating topics {} and {} ({} partitions)",
                stack.topic, stack.updates_topic, args.partitions
            ));
            stack.topics_created = true;
            for topic in [&stack.topic, &stack.updates_topic] {
                fraud_kafka::ensure_topic(&stack.kafka, topic, args.partitions, 1)
                    .await
                    .with_context(|| {
                        format!("create topic {topic} (is Kafka up? deploy/dev up --servers-only)")
                    })?;
                wait_for_topic(&stack.kafka, topic, args.partitions).await?;
            }
            stack.database = fraud_testkit::postgres::create_database("bench_serving").await;
            progress(format!("database {}", database_name(&stack.database)));
            let pool = stack.pool()?;
            fraud_postgres::migrate(&pool)
                .await
                .context("migrate the benchmark's database")?;
            pool.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = created {
            for problem in stack.remove().await {
                progress(format!("clean-up: {problem}"));
            }
            return Err(error);
        }
        Ok(stack)
    }

    fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        let config = fraud_config::PostgresConfig {
            url: fraud_config::Secret::new(self.database.clone()),
            max_connections: 4,
        };
        Ok(fraud_postgres::lazy_pool(&config, Duration::from_secs(30))?)
    }

    /// The `FRAUD_…` variables of every service: the benchmark's names, `listen` on a
    /// free port, logs at `warn`, the per-key rate limit out of the way; the rest is the
    /// defaults (a developer's own `FRAUD_` variables are removed).
    fn command(&self, bin: &Path, listen_variable: &str, port: u16) -> Command {
        let mut command = Command::new(bin);
        for (variable, _) in std::env::vars() {
            if variable.starts_with("FRAUD_") || variable == "RUST_LOG" {
                command.env_remove(variable);
            }
        }
        let keys = format!(
            "[{{name=\"bench-read\", sha256=\"{}\", scopes=[\"read\"]}}, {{name=\"bench-ingest\", sha256=\"{}\", scopes=[\"ingest\"]}}]",
            fraud_service::auth::key_sha256(&self.read_key),
            fraud_service::auth::key_sha256(&self.ingest_key)
        );
        command.envs([
            ("FRAUD_KAFKA__BROKERS", self.kafka.brokers.clone()),
            ("FRAUD_KAFKA__TRANSACTIONS_TOPIC", self.topic.clone()),
            (
                "FRAUD_KAFKA__WINDOW_UPDATES_TOPIC",
                self.updates_topic.clone(),
            ),
            ("FRAUD_POSTGRES__URL", self.database.clone()),
            ("FRAUD_REDIS__URL", self.redis_url.clone()),
            ("FRAUD_REDIS__KEY_PREFIX", self.prefix.clone()),
            ("FRAUD_RABBITMQ__URL", self.rabbitmq_url.clone()),
            ("FRAUD_RABBITMQ__ALERTS_EXCHANGE", self.exchange.clone()),
            ("FRAUD_AUTH__KEYS", keys),
            (
                "FRAUD_LAKE__ROOT",
                self.dir.join("lake").display().to_string(),
            ),
            ("FRAUD_LAKE__WRITER_GROUP", self.writer_group.clone()),
            ("FRAUD_SPEED__GROUP", self.speed_group.clone()),
            ("FRAUD_SERVING__GROUP", self.serving_group.clone()),
            (
                "FRAUD_INGEST__RATE_LIMIT_PER_SECOND",
                super::BENCH_RATE_LIMIT.to_string(),
            ),
            (
                "FRAUD_INGEST__RATE_LIMIT_BURST",
                super::BENCH_RATE_LIMIT.to_string(),
            ),
            ("FRAUD_TELEMETRY__LOG_FILTER", "warn".to_owned()),
            (listen_variable, format!("127.0.0.1:{port}")),
        ]);
        command
    }

    /// Starts a process; `ready` says whether to wait for its `/readyz` to answer 200.
    async fn start(
        &mut self,
        name: &'static str,
        command: Command,
        port: u16,
        ready: bool,
    ) -> anyhow::Result<&Running> {
        let base = format!("http://127.0.0.1:{port}");
        progress(format!("starting {name} on {base}"));
        let process = ChildProcess::spawn(&format!("bench-{name}"), command);
        self.processes.push(Running {
            name,
            pid: process.pid(),
            process: Some(process),
            base,
            stopped_cleanly: None,
        });
        let index = self.processes.len() - 1;
        if ready {
            self.wait_ready(index, Duration::from_secs(60)).await?;
        }
        Ok(&self.processes[index])
    }

    /// Waits for process `index` to answer `/readyz` with 200 (or, with no `/readyz`, to
    /// answer at all).
    async fn wait_ready(&mut self, index: usize, bound: Duration) -> anyhow::Result<()> {
        let running = &mut self.processes[index];
        let process = running.process.as_mut().context("not running")?;
        super::wait_ready(process, running.name, &running.base, &[200, 404], bound).await?;
        Ok(())
    }

    fn pid(&self, name: &str) -> u32 {
        self.processes
            .iter()
            .find(|running| running.name == name)
            .map_or(0, |running| running.pid)
    }

    fn base(&self, name: &str) -> String {
        self.processes
            .iter()
            .find(|running| running.name == name)
            .map(|running| running.base.clone())
            .unwrap_or_default()
    }

    /// A process that has exited, with its output.
    fn exited(&mut self) -> Option<(&'static str, String)> {
        self.processes.iter_mut().find_map(|running| {
            let process = running.process.as_mut()?;
            (!process.is_running()).then(|| (running.name, process.output()))
        })
    }

    /// Stops every process (SIGTERM, then SIGKILL after 30 s), deletes the topics, the
    /// groups, the Redis keys, the exchange, the database and the directory; returns what
    /// could not be cleaned up.
    async fn remove(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // Ingest first (no more transactions), the serving API last.
        for running in self.processes.iter_mut().rev() {
            if let Some(process) = running.process.take()
                && let Some(clean) = stop_process(process, running.name, &mut problems).await
            {
                running.stopped_cleanly = Some(clean);
            }
        }
        if self.topics_created {
            for topic in [&self.topic, &self.updates_topic] {
                if let Err(error) = fraud_kafka::delete_topic(&self.kafka, topic).await {
                    problems.push(format!("delete topic {topic}: {error}"));
                }
            }
            self.topics_created = false;
        }
        for group in [&self.speed_group, &self.serving_group, &self.writer_group] {
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
        if let Err(error) = delete_exchange(&self.rabbitmq_url, &self.exchange).await {
            problems.push(format!("delete exchange {}: {error:#}", self.exchange));
        }
        if !self.database.is_empty() {
            fraud_testkit::postgres::drop_database(&self.database).await;
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("remove {}: {error}", self.dir.display()));
        }
        problems
    }
}

fn database_name(url: &str) -> &str {
    url.rsplit_once('/').map_or(url, |(_, name)| name)
}

async fn delete_exchange(url: &str, exchange: &str) -> anyhow::Result<()> {
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Samples the lag of `group` on `topic` until it is 0 with something committed (or
/// `bound`); returns how long that took, `None` when it did not happen. Fails when a
/// process of the stack exits meanwhile.
async fn wait_for_lag_zero(
    stack: &mut ServingStack,
    topic: &str,
    group: &str,
    bound: Duration,
    what: &str,
) -> anyhow::Result<Option<Duration>> {
    let consumer: BaseConsumer = fraud_kafka::client_config(&stack.kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("create a lag consumer")?;
    let consumer = Arc::new(consumer);
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if let Some((name, output)) = stack.exited() {
            bail!("{name} exited; its output:\n{}", tail(&output, 40));
        }
        let sample = {
            let consumer = Arc::clone(&consumer);
            let topic = topic.to_owned();
            let partitions = stack.partitions;
            tokio::task::spawn_blocking(move || sample_lag(&consumer, &topic, partitions)).await?
        };
        match sample {
            Ok(sample) if sample.lag == 0 && sample.committed_partitions > 0 => {
                return Ok(Some(started.elapsed()));
            }
            Ok(sample) if last_report.elapsed() >= Duration::from_secs(5) => {
                last_report = Instant::now();
                progress(format!(
                    "{what}: {:.0}s, lag {}",
                    started.elapsed().as_secs_f64(),
                    fmt_int(sample.lag as u64)
                ));
            }
            Ok(_) => {}
            Err(error) => progress(format!("{what}: lag sample failed: {error:#}")),
        }
        if started.elapsed() >= bound {
            return Ok(None);
        }
        tokio::time::sleep(LAG_INTERVAL).await;
    }
}

// ---------------------------------------------------------------------------------------
// The state: batch views in Postgres, speed state in Redis (through the speed layer)
// ---------------------------------------------------------------------------------------

fn risk_customer(index: usize) -> String {
    (RISK_ID_BASE + index as i64).to_string()
}

/// The batch rows' figures, as the `INSERT … SELECT` statements below write them.
fn hour_count(customer: i64, hours_back: i64) -> i64 {
    1 + (customer + hours_back) % 3
}

fn hour_max(customer: i64, hours_back: i64) -> i64 {
    1_000 + (customer * 7 + hours_back * 13) % 5_000
}

fn baseline_p95(customer: i64) -> i64 {
    100_000 + (customer % 1_000) * 100
}

const INSERT_RUN: &str = "INSERT INTO batch_runs (watermark, status, finished_at, rows_written) \
     VALUES ($1, 'succeeded', now(), $2)";

const INSERT_HOURLY: &str = "\
INSERT INTO batch_hourly (customer_id, hour, event_date, sum_minor, count, max_minor, distinct_vendors)
SELECT ($1::bigint + i)::text, $2::timestamptz - make_interval(hours => h),
       (($2::timestamptz - make_interval(hours => h)) AT TIME ZONE 'UTC')::date,
       (1 + (i + h) % 3) * (1000 + (i * 7 + h * 13) % 5000), 1 + (i + h) % 3,
       1000 + (i * 7 + h * 13) % 5000, 1
FROM generate_series($3::bigint, $4::bigint - 1) AS i CROSS JOIN generate_series(1, $5::int) AS h";

const INSERT_DAILY: &str = "\
INSERT INTO batch_daily (customer_id, day, sum_minor, count, max_minor, distinct_vendors,
                         peak_30m_sum_minor, peak_30m_count, peak_30m_end)
SELECT ($1::bigint + i)::text, $2::date - d, 40000 + (i % 100) * 100, 4, 20000, 2, 25000, 2,
       (($2::date - d)::timestamp AT TIME ZONE 'UTC') + interval '12 hours'
FROM generate_series($3::bigint, $4::bigint - 1) AS i CROSS JOIN generate_series(1, $5::int) AS d";

const INSERT_BASELINES: &str = "\
INSERT INTO batch_baselines (customer_id, as_of, active_days, mean_daily_minor,
                             stddev_daily_minor, p95_peak_30m_minor, max_peak_30m_minor, run_id)
SELECT ($1::bigint + i)::text, $2::timestamptz, $5::int, 40000 + (i % 100) * 100, 5000,
       100000 + (i % 1000) * 100, 150000 + (i % 1000) * 100, 0
FROM generate_series($3::bigint, $4::bigint - 1) AS i";

/// One vendor per customer, as the batch layer records for every customer with a stored
/// day (the serving API asks it whether a customer is known).
const INSERT_VENDORS: &str = "\
INSERT INTO batch_vendors (customer_id, vendor_id, first_seen)
SELECT ($1::bigint + i)::text, 'bench-batch-vendor', $2::timestamptz - interval '1 day'
FROM generate_series($3::bigint, $4::bigint - 1) AS i";

struct BatchViews {
    watermark: i64,
    rows: u64,
    elapsed: Duration,
}

/// Writes the batch views of every risk customer and publishes T_b.
async fn write_batch_views(
    stack: &ServingStack,
    args: &ServingArgs,
    watermark: i64,
) -> anyhow::Result<BatchViews> {
    let started = Instant::now();
    let pool = stack.pool()?;
    let tb = DateTime::<Utc>::from_timestamp_millis(watermark).context("T_b")?;
    let tb_day: NaiveDate = tb.date_naive();
    let customers = args.customers as i64;
    let chunk = 20_000_i64;
    let mut rows = 0_u64;
    // The day partitions of the rows below (migrations/0007).
    let first_hour = tb - chrono::Duration::hours(i64::from(args.batch_hours));
    let first_day =
        (tb_day - chrono::Days::new(u64::from(args.batch_days))).min(first_hour.date_naive());
    sqlx::query("SELECT batch_day_partitions($1, $2)")
        .bind(first_day)
        .bind(tb_day)
        .execute(&pool)
        .await
        .context("make the day partitions")?;
    // And the baselines' partition of the rows' run (migrations/0009).
    sqlx::query("SELECT batch_baselines_partition(0)")
        .execute(&pool)
        .await
        .context("make the baselines partition")?;
    let mut from = 0_i64;
    while from < customers {
        let to = (from + chunk).min(customers);
        rows += sqlx::query(INSERT_HOURLY)
            .bind(RISK_ID_BASE)
            .bind(tb)
            .bind(from)
            .bind(to)
            .bind(args.batch_hours as i32)
            .execute(&pool)
            .await
            .context("insert batch_hourly")?
            .rows_affected();
        rows += sqlx::query(INSERT_DAILY)
            .bind(RISK_ID_BASE)
            .bind(tb_day)
            .bind(from)
            .bind(to)
            .bind(args.batch_days as i32)
            .execute(&pool)
            .await
            .context("insert batch_daily")?
            .rows_affected();
        rows += sqlx::query(INSERT_BASELINES)
            .bind(RISK_ID_BASE)
            .bind(tb)
            .bind(from)
            .bind(to)
            .bind(args.batch_days as i32)
            .execute(&pool)
            .await
            .context("insert batch_baselines")?
            .rows_affected();
        rows += sqlx::query(INSERT_VENDORS)
            .bind(RISK_ID_BASE)
            .bind(tb)
            .bind(from)
            .bind(to)
            .execute(&pool)
            .await
            .context("insert batch_vendors")?
            .rows_affected();
        from = to;
    }
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .context("analyze")?;
    sqlx::query(INSERT_RUN)
        .bind(tb)
        .bind(rows as i64)
        .execute(&pool)
        .await
        .context("publish the batch run")?;
    pool.close().await;
    Ok(BatchViews {
        watermark,
        rows,
        elapsed: started.elapsed(),
    })
}

/// One event of a risk customer, as written.
#[derive(Clone, Copy)]
struct HeldEvent {
    ts: i64,
    amount: i64,
}

struct SpeedState {
    /// Per risk customer, its events.
    events: Vec<Vec<HeldEvent>>,
    produced: usize,
    produce_elapsed: Duration,
    /// From starting the speed layer to its lag at 0.
    applied_after: Option<Duration>,
    /// From starting the serving API to its group's lag at 0.
    evaluated_after: Option<Duration>,
}

/// Transactions of the risk customers: `--events-per-customer` each, event times within
/// the last 20 minutes, 1–3 vendors per customer.
fn risk_events(args: &ServingArgs, run: &str, now_ms: i64) -> anyhow::Result<RiskEvents> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let vendors: Vec<String> = (0..(args.customers / 5).max(10))
        .map(|i| format!("vendor-{i:06}"))
        .collect();
    let mut records = Vec::with_capacity(args.customers * args.events_per_customer);
    let mut events = Vec::with_capacity(args.customers);
    let ingest_time = EventTime::from_millis(now_ms)?;
    for customer in 0..args.customers {
        let id = CustomerId::parse(&risk_customer(customer))?;
        let own: Vec<usize> = (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(0..vendors.len()))
            .collect();
        let mut held = Vec::with_capacity(args.events_per_customer);
        for k in 0..args.events_per_customer {
            let ts = now_ms - rng.random_range(1_000..RISK_EVENT_SPAN_MS);
            let amount = rng.random_range(RISK_AMOUNT_MINOR);
            let record = TransactionEvent {
                transaction_id: TransactionId::parse(&format!("{run}r{customer:07}-{k}"))?,
                customer_id: id.clone(),
                vendor_id: VendorId::parse(&vendors[own[k % own.len()]])?,
                amount: Money::from_minor(amount),
                currency: Currency::EUR,
                event_time: EventTime::from_millis(ts)?,
                ingest_time,
            };
            records.push((id.as_str().to_owned(), fraud_events::encode(&record)));
            held.push(HeldEvent { ts, amount });
        }
        events.push(held);
    }
    Ok(RiskEvents { records, events })
}

struct RiskEvents {
    records: Vec<(String, Vec<u8>)>,
    events: Vec<Vec<HeldEvent>>,
}

/// Pre-fills the topic with the risk customers' events, runs the speed layer until it
/// has applied them all, then the serving API until it has evaluated every update.
async fn write_speed_state(
    stack: &mut ServingStack,
    args: &ServingArgs,
    settings: &Settings,
    bins: &Binaries,
    run: &str,
) -> anyhow::Result<SpeedState> {
    let now_ms = Utc::now().timestamp_millis();
    let generated = risk_events(args, run, now_ms)?;
    progress(format!(
        "pre-filling {} with {} events of {} customers",
        stack.topic,
        fmt_int(generated.records.len() as u64),
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
    let (produced, failed, _) = produce_all(&producer, &stack.topic, &generated.records).await;
    let produce_elapsed = started.elapsed();
    if failed > 0 {
        bail!("{failed} pre-fill records were not acknowledged");
    }
    drop(producer);

    let port = free_port();
    let command = stack.command(&bins.speed, "FRAUD_SPEED__LISTEN", port);
    stack.start("speed-layer", command, port, false).await?;
    let started = Instant::now();
    let topic = stack.topic.clone();
    let group = stack.speed_group.clone();
    let applied_after = wait_for_lag_zero(
        stack,
        &topic,
        &group,
        Duration::from_secs(600),
        "speed layer applying",
    )
    .await?;
    if applied_after.is_none() {
        bail!("the speed layer did not apply the pre-filled topic within 600s");
    }
    let index = stack.processes.len() - 1;
    stack.wait_ready(index, Duration::from_secs(60)).await?;
    progress(format!(
        "speed layer: {} events applied {:.1}s after its start",
        fmt_int(produced as u64),
        started.elapsed().as_secs_f64()
    ));

    let port = free_port();
    let command = stack.command(&bins.serving, "FRAUD_SERVING__LISTEN", port);
    let started = Instant::now();
    stack.start("serving-api", command, port, true).await?;
    let topic = stack.updates_topic.clone();
    let group = stack.serving_group.clone();
    let evaluated_after = wait_for_lag_zero(
        stack,
        &topic,
        &group,
        Duration::from_secs(600),
        "serving API evaluating",
    )
    .await?;
    if evaluated_after.is_none() {
        bail!("the serving API did not evaluate every window update within 600s");
    }
    progress(format!(
        "serving API: every window update evaluated {:.1}s after its start",
        started.elapsed().as_secs_f64()
    ));
    Ok(SpeedState {
        events: generated.events,
        produced,
        produce_elapsed,
        applied_after,
        evaluated_after,
    })
}

// ---------------------------------------------------------------------------------------
// CPU of every process of the run
// ---------------------------------------------------------------------------------------

/// The process groups of the CPU table, in its column order.
const CPU_GROUPS: [&str; 9] = [
    "serving-api",
    "speed-layer",
    "ingest",
    "reference",
    "Kafka",
    "Redis",
    "PostgreSQL",
    "RabbitMQ",
    "fraud-bench",
];

/// CPU time of each process group at one moment, per pid (processes come and go:
/// Postgres starts a backend per connection).
struct GroupSnapshot {
    at: Instant,
    busy: u64,
    total: u64,
    ticks: Vec<HashMap<u32, u64>>,
}

impl GroupSnapshot {
    fn take(stack: &ServingStack) -> GroupSnapshot {
        let (busy, total) = machine_ticks();
        let mut ticks: Vec<HashMap<u32, u64>> = vec![HashMap::new(); CPU_GROUPS.len()];
        for (group, name) in CPU_GROUPS.iter().enumerate().take(4) {
            let pid = stack.pid(name);
            if pid != 0 {
                ticks[group].insert(pid, process_ticks(pid));
            }
        }
        let bench = std::process::id();
        ticks[8].insert(bench, process_ticks(bench));
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                let group = if cmdline.contains("kafka.Kafka") {
                    4
                } else if cmdline.starts_with("redis-server") || cmdline.contains("/redis-server") {
                    5
                } else if cmdline.starts_with("postgres") || cmdline.contains("/postgres ") {
                    6
                } else if cmdline.contains("beam.smp") && cmdline.contains("rabbit") {
                    7
                } else {
                    continue;
                };
                ticks[group].insert(pid, process_ticks(pid));
            }
        }
        GroupSnapshot {
            at: Instant::now(),
            busy,
            total,
            ticks,
        }
    }

    fn usage_until(&self, later: &GroupSnapshot) -> GroupUsage {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cores = |ticks: u64| ticks as f64 / ticks_per_second / seconds;
        let groups: Vec<f64> = (0..CPU_GROUPS.len())
            .map(|group| {
                cores(
                    later.ticks[group]
                        .iter()
                        .map(|(pid, after)| {
                            after.saturating_sub(self.ticks[group].get(pid).copied().unwrap_or(0))
                        })
                        .sum(),
                )
            })
            .collect();
        let busy = cores(later.busy.saturating_sub(self.busy));
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        GroupUsage {
            seconds,
            machine_busy_percent: later.busy.saturating_sub(self.busy) as f64 / total * 100.0,
            other_cores: (busy - groups.iter().sum::<f64>()).max(0.0),
            groups,
        }
    }
}

#[derive(Clone)]
struct GroupUsage {
    seconds: f64,
    machine_busy_percent: f64,
    groups: Vec<f64>,
    other_cores: f64,
}

fn group_cpu_table(rows: &[(String, GroupUsage)]) -> String {
    let mut r = String::from("| phase | seconds | machine |");
    for group in CPU_GROUPS {
        let _ = write!(r, " {group} |");
    }
    r.push_str(" other |\n|---|---|---|");
    for _ in 0..=CPU_GROUPS.len() {
        r.push_str("---|");
    }
    r.push('\n');
    for (phase, usage) in rows {
        let _ = write!(
            r,
            "| {phase} | {:.1} | {:.0}% |",
            usage.seconds, usage.machine_busy_percent
        );
        for cores in &usage.groups {
            let _ = write!(r, " {cores:.2} |");
        }
        let _ = writeln!(r, " {:.2} |", usage.other_cores);
    }
    r
}

// ---------------------------------------------------------------------------------------
// The risk and reference phases
// ---------------------------------------------------------------------------------------

/// A GET phase: the load and the answers kept for checking (customer index, body).
struct GetPhase {
    load: LoadResult,
    kept: Vec<(usize, Bytes)>,
    /// Answers of 200.
    ok: u64,
}

/// `clients` tasks sharing `client` GET `base/v1/customers/{id}/risk` of random risk
/// customers until `stop_at`; requests sent from `record_from` on are counted, and
/// every `keep_every`th counted answer is kept.
async fn run_gets(
    client: &reqwest::Client,
    base: &str,
    authorization: &str,
    args: &ServingArgs,
    record_from: Instant,
    stop_at: Instant,
    seed: u64,
) -> GetPhase {
    let (customers, clients, keep_every) = (args.customers, args.clients, args.check_every);
    let kept = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..clients {
        let client = client.clone();
        let base = base.to_owned();
        let authorization = authorization.to_owned();
        let kept = Arc::clone(&kept);
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (task as u64).wrapping_mul(0x9e37_79b9));
            let mut part = Part::default();
            let mut ok = 0_u64;
            while Instant::now() < stop_at {
                let customer = rng.random_range(0..customers);
                let url = format!("{base}/v1/customers/{}/risk", risk_customer(customer));
                let sent = Instant::now();
                let response = client
                    .get(&url)
                    .header("authorization", &authorization)
                    .send()
                    .await;
                let outcome = match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body = response.bytes().await.unwrap_or_default();
                        Ok((status, body))
                    }
                    Err(error) => Err(error.to_string()),
                };
                let done = Instant::now();
                if sent < record_from {
                    continue;
                }
                part.last = Some(done);
                let _ = part
                    .latency
                    .record((done.duration_since(sent).as_micros() as u64).max(1));
                match outcome {
                    Ok((status, body)) => {
                        part.requests += 1;
                        *part.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            ok += 1;
                        } else if part.first_failure.is_none() {
                            part.first_failure = Some(format!(
                                "{status}: {}",
                                String::from_utf8_lossy(&body)
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            ));
                        }
                        let n = counter.fetch_add(1, Ordering::Relaxed) as u64;
                        if n.is_multiple_of(keep_every) {
                            lock(&kept).push((customer, body));
                        }
                    }
                    Err(error) => {
                        part.transport_errors += 1;
                        if part.first_failure.is_none() {
                            part.first_failure = Some(format!("no answer: {error}"));
                        }
                    }
                }
            }
            (part, ok)
        }));
    }
    let mut parts = Vec::with_capacity(tasks.len());
    let mut ok = 0;
    for task in tasks {
        if let Ok((part, part_ok)) = task.await {
            ok += part_ok;
            parts.push(part);
        }
    }
    let load = LoadResult::merge(parts, record_from);
    let kept = std::mem::take(&mut *lock(&kept));
    GetPhase { load, kept, ok }
}

/// One measured GET phase after its warm-up, with the CPU of its measured window.
async fn get_phase(
    args: &ServingArgs,
    stack: &ServingStack,
    base: &str,
    name: &str,
    seed: u64,
) -> anyhow::Result<(GetPhase, GroupUsage)> {
    progress(format!(
        "{name}: {} clients for {}s (after {}s of warm-up)",
        args.clients, args.seconds, args.warmup_seconds
    ));
    let client = http_client()?;
    let record_from = Instant::now() + Duration::from_secs(args.warmup_seconds);
    let stop_at = record_from + Duration::from_secs(args.seconds);
    let authorization = format!("Bearer {}", stack.read_key);
    let load = run_gets(
        &client,
        base,
        &authorization,
        args,
        record_from,
        stop_at,
        seed,
    );
    let cpu = async {
        tokio::time::sleep_until(record_from.into()).await;
        let before = GroupSnapshot::take(stack);
        tokio::time::sleep_until(stop_at.into()).await;
        before.usage_until(&GroupSnapshot::take(stack))
    };
    let (phase, cpu) = tokio::join!(load, cpu);
    progress(format!(
        "{name}: {} requests/s, p50 {} p99 {}",
        fmt_rate(phase.load.requests_per_second()),
        fmt_micros(phase.load.latency.value_at_quantile(0.50)),
        fmt_micros(phase.load.latency.value_at_quantile(0.99))
    ));
    Ok((phase, cpu))
}

/// What the check of the kept risk answers found.
#[derive(Default)]
struct AnswerCheck {
    checked: u64,
    wrong: u64,
    first_wrong: Option<String>,
    degraded: u64,
}

fn money(minor: i64) -> String {
    Money::from_minor(minor).to_string()
}

fn millis_of(value: &serde_json::Value) -> Option<i64> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|time| time.timestamp_millis())
}

/// Checks one answer against what was written: the window `(asOf − 30 min, asOf]` of
/// the customer's events, today and the last 24 hours (batch hours in the range up to
/// T_b plus the events after T_b in it), the baseline's p95 peak, known, not degraded.
fn check_answer(
    body: &[u8],
    customer: usize,
    events: &[HeldEvent],
    batch: &BatchViews,
    args: &ServingArgs,
) -> Result<bool, String> {
    let answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| format!("not JSON: {error}"))?;
    let as_of = millis_of(&answer["asOf"]).ok_or("no asOf")?;
    let index = customer as i64;
    let mut problems = Vec::new();
    let mut expect = |what: &str, got: &serde_json::Value, want: serde_json::Value| {
        if *got != want {
            problems.push(format!("{what} is {got}, expected {want}"));
        }
    };
    expect(
        "customerId",
        &answer["customerId"],
        risk_customer(customer).into(),
    );
    expect("known", &answer["known"], true.into());
    let window: Vec<&HeldEvent> = events
        .iter()
        .filter(|event| event.ts > as_of - 30 * MINUTE && event.ts <= as_of)
        .collect();
    expect(
        "window30m.count",
        &answer["window30m"]["count"],
        window.len().into(),
    );
    expect(
        "window30m.sum",
        &answer["window30m"]["sum"],
        money(window.iter().map(|event| event.amount).sum()).into(),
    );
    for range in ["today", "last24h"] {
        let from = millis_of(&answer[range]["from"]).ok_or(format!("no {range}.from"))?;
        let mut count = 0;
        let mut sum = 0;
        for hours_back in 1..=i64::from(args.batch_hours) {
            let hour = batch.watermark - hours_back * HOUR;
            if hour >= from && hour <= as_of {
                let c = hour_count(index, hours_back);
                count += c;
                sum += c * hour_max(index, hours_back);
            }
        }
        for event in events {
            if event.ts > batch.watermark && event.ts >= from && event.ts <= as_of {
                count += 1;
                sum += event.amount;
            }
        }
        expect(
            &format!("{range}.count"),
            &answer[range]["count"],
            count.into(),
        );
        expect(
            &format!("{range}.sum"),
            &answer[range]["sum"],
            money(sum).into(),
        );
    }
    expect(
        "baseline.p95Peak30m",
        &answer["baseline"]["p95Peak30m"],
        money(baseline_p95(index)).into(),
    );
    let degraded = answer["freshness"]["degraded"] != serde_json::Value::Bool(false);
    if problems.is_empty() {
        Ok(degraded)
    } else {
        Err(problems.join("; "))
    }
}

fn check_answers(
    kept: &[(usize, Bytes)],
    state: &SpeedState,
    batch: &BatchViews,
    args: &ServingArgs,
) -> AnswerCheck {
    let mut check = AnswerCheck::default();
    for (customer, body) in kept {
        check.checked += 1;
        match check_answer(body, *customer, &state.events[*customer], batch, args) {
            Ok(degraded) => check.degraded += u64::from(degraded),
            Err(problem) => {
                check.wrong += 1;
                check.first_wrong.get_or_insert_with(|| {
                    format!("customer {}: {problem}", risk_customer(*customer))
                });
            }
        }
    }
    check
}

// ---------------------------------------------------------------------------------------
// The alert phase
// ---------------------------------------------------------------------------------------

/// A delivery on the bound queue.
struct Delivered {
    at: Instant,
    body: Vec<u8>,
    routing_key: String,
}

/// A queue of the benchmark's own, bound to the exchange with `alert.#`, read on a task
/// into `received`.
struct AlertQueue {
    received: Arc<Mutex<Vec<Delivered>>>,
    task: tokio::task::JoinHandle<()>,
    connection: lapin::Connection,
}

impl AlertQueue {
    async fn bind(url: &str, exchange: &str) -> anyhow::Result<AlertQueue> {
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .context("connect to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        fraud_amqp::declare_topic_exchange(&channel, exchange).await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "alert.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let at = Instant::now();
                    lock(&received).push(Delivered {
                        at,
                        routing_key: delivery.routing_key.as_str().to_owned(),
                        body: delivery.data,
                    });
                }
            })
        };
        Ok(AlertQueue {
            received,
            task,
            connection,
        })
    }

    fn count(&self) -> usize {
        lock(&self.received).len()
    }

    async fn close(self) -> Vec<Delivered> {
        let _ = self.connection.close(200, "done".into()).await;
        self.task.abort();
        std::mem::take(&mut *lock(&self.received))
    }
}

/// A planned POST of the alert phase.
struct Planned {
    body: Bytes,
    /// The alert customer and which of its events, if it is one.
    alert: Option<(usize, usize)>,
}

/// A POST as sent.
#[derive(Clone, Copy)]
struct Sent {
    sent: Instant,
    answered: Instant,
    status: u16,
}

fn event_json(transaction: &str, customer: &str, vendor: &str, amount: i64, ts: i64) -> String {
    let ts = DateTime::<Utc>::from_timestamp_millis(ts)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    format!(
        "{{\"transactionId\":\"{transaction}\",\"customerId\":\"{customer}\",\"vendorId\":\"{vendor}\",\"transactionSum\":\"{}\",\"ts\":\"{ts}\"}}",
        money(amount)
    )
}

/// Single events of background customers (small amounts), `ts` = `ts_ms`.
struct Background {
    rng: StdRng,
    run: String,
    next: usize,
}

impl Background {
    fn event(&mut self, ts_ms: i64) -> String {
        self.next += 1;
        let customer = (BACKGROUND_ID_BASE + self.rng.random_range(0..BACKGROUND_CUSTOMERS) as i64)
            .to_string();
        let vendor = format!("shop-{:04}", self.rng.random_range(0..2_000));
        let amount = self.rng.random_range(SMALL_AMOUNT_MINOR);
        event_json(
            &format!("{}b{:09}", self.run, self.next),
            &customer,
            &vendor,
            amount,
            ts_ms,
        )
    }
}

fn alert_customer(index: usize) -> String {
    (ALERT_ID_BASE + index as i64).to_string()
}

fn alert_transaction(run: &str, customer: usize, k: usize) -> String {
    format!("{run}a{customer:07}-{k}")
}

/// The alert phase's POSTs: `total` at `rate` from `start_ms`, with each alert
/// customer's 6 events spread over the phase (the 6th in its last quarter or so).
fn plan_alert_phase(
    background: &mut Background,
    run: &str,
    alert_customers: usize,
    total: usize,
    rate: f64,
    start_ms: i64,
) -> Vec<Planned> {
    let at = |i: usize| start_ms + (i as f64 * 1000.0 / rate) as i64;
    let mut alert_slots: Vec<Option<(usize, usize)>> = vec![None; total];
    for customer in 0..alert_customers {
        for k in 0..ALERT_EVENTS {
            let share = (k as f64 + customer as f64 / alert_customers as f64) / ALERT_EVENTS as f64;
            let mut slot = ((share * 0.9 * total as f64) as usize).min(total - 1);
            while alert_slots[slot].is_some() {
                slot = (slot + 1) % total;
            }
            alert_slots[slot] = Some((customer, k));
        }
    }
    alert_slots
        .into_iter()
        .enumerate()
        .map(|(i, alert)| {
            let json = match alert {
                Some((customer, k)) => event_json(
                    &alert_transaction(run, customer, k),
                    &alert_customer(customer),
                    &format!("shop-a{customer:05}"),
                    ALERT_AMOUNT_MINOR,
                    at(i),
                ),
                None => background.event(at(i)),
            };
            Planned {
                body: Bytes::from(json),
                alert,
            }
        })
        .collect()
}

/// Posts `planned` at `rate` from `start` with at most `ALERT_SENDERS` in flight; a POST
/// due while every sender waits for an answer is sent late.
async fn paced_posts(
    client: &reqwest::Client,
    target: &Target,
    planned: Arc<Vec<Planned>>,
    rate: f64,
    start: Instant,
) -> Vec<Option<Sent>> {
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(vec![None; planned.len()]));
    let first_failure = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..ALERT_SENDERS {
        let client = client.clone();
        let url = target.url.clone();
        let authorization = target.authorization.clone();
        let planned = Arc::clone(&planned);
        let next = Arc::clone(&next);
        let results = Arc::clone(&results);
        let first_failure = Arc::clone(&first_failure);
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(post) = planned.get(index) else {
                    break;
                };
                let due = start + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", JSON)
                    .header("authorization", &authorization)
                    .body(post.body.clone())
                    .send()
                    .await;
                let status = match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let text = response.text().await.unwrap_or_default();
                        if status != 202 && !first_failure.swap(true, Ordering::Relaxed) {
                            progress(format!(
                                "alert phase: a POST answered {status}: {}",
                                text.chars().take(300).collect::<String>()
                            ));
                        }
                        status
                    }
                    Err(error) => {
                        if !first_failure.swap(true, Ordering::Relaxed) {
                            progress(format!("alert phase: a POST had no answer: {error}"));
                        }
                        0
                    }
                };
                lock(&results)[index] = Some(Sent {
                    sent,
                    answered: Instant::now(),
                    status,
                });
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    std::mem::take(&mut *lock(&results))
}

struct AlertPhase {
    /// The probe: single-event POSTs at `--clients` (the maximum rate).
    probe: LoadResult,
    target_rate: f64,
    posted: usize,
    /// From the first POST sent to the last answered.
    window: Duration,
    not_accepted: u64,
    /// How late the POSTs were sent against their plan, in microseconds.
    lateness: Histogram<u64>,
    /// Alert customers whose 6 POSTs were all accepted, in order (each answered before
    /// the next was sent): the alerts expected.
    expected: usize,
    /// Alert customers left out: a POST not accepted, or sent before the previous one
    /// was answered.
    left_out: usize,
    /// Expected alerts received once, twice or more, and not at all.
    received_once: usize,
    received_more: usize,
    missing: usize,
    /// Alerts of the expected customers of another rule or transaction than expected.
    mismatched: usize,
    first_mismatch: Option<String>,
    /// Alerts of the expected customers that name no event (neither `event` nor
    /// `lastEvent`).
    undescribed: usize,
    /// Alerts of other customers (not expected), by routing key.
    unexpected: BTreeMap<String, u64>,
    /// POST sent → alert delivered, in microseconds.
    delay: Histogram<u64>,
    /// POST sent → alert raised (`raisedAt`, wall clock), in microseconds.
    to_raised: Histogram<u64>,
    /// After the last POST, until every expected alert was received.
    all_received_after: Option<Duration>,
    cpu_probe: GroupUsage,
    cpu: GroupUsage,
}

impl AlertPhase {
    fn posted_rate(&self) -> f64 {
        self.posted as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn exactly_once(&self) -> bool {
        self.missing == 0 && self.received_more == 0 && self.mismatched == 0
    }
}

async fn alert_phase(
    args: &ServingArgs,
    stack: &mut ServingStack,
    bins: &Binaries,
    run: &str,
) -> anyhow::Result<AlertPhase> {
    let port = free_port();
    let command = stack.command(&bins.ingest, "FRAUD_INGEST__LISTEN", port);
    stack.start("ingest", command, port, true).await?;
    let queue = AlertQueue::bind(&stack.rabbitmq_url, &stack.exchange).await?;
    let client = http_client()?;
    let target = Target {
        url: format!("{}/v1/transactions", stack.base("ingest")),
        authorization: format!("Bearer {}", stack.ingest_key),
    };
    let mut background = Background {
        rng: StdRng::seed_from_u64(args.seed ^ 0xa1e7),
        run: run.to_owned(),
        next: 0,
    };

    // The probe: as the ingest benchmark's singles, briefly.
    let idle = Pids::find(0, [ThreadMatch::None, ThreadMatch::None]);
    wait_for_quiet(&idle, args.quiet_wait_seconds).await;
    let probe_warmup = 1;
    let pool = (args.probe_seconds + probe_warmup) * SINGLES_POOL_PER_SECOND;
    let now_ms = Utc::now().timestamp_millis();
    let bodies: Vec<RequestBody> = (0..pool)
        .map(|_| RequestBody {
            bytes: Bytes::from(background.event(now_ms - 1_000)),
            events: 1,
        })
        .collect();
    progress(format!(
        "alert phase: probing the maximum rate, single-event POSTs at {} clients for {}s",
        args.clients, args.probe_seconds
    ));
    let record_from = Instant::now() + Duration::from_secs(probe_warmup);
    let stop_at = record_from + Duration::from_secs(args.probe_seconds);
    let load = run_load(
        &client,
        &target,
        &bodies,
        JSON,
        args.clients,
        Some(stop_at),
        Some(record_from),
    );
    let cpu = async {
        tokio::time::sleep_until(record_from.into()).await;
        let before = GroupSnapshot::take(stack);
        tokio::time::sleep_until(stop_at.into()).await;
        before.usage_until(&GroupSnapshot::take(stack))
    };
    let (probe, cpu_probe) = tokio::join!(load, cpu);
    let maximum = probe.events_per_second();
    progress(format!(
        "alert phase: maximum {} POSTs/s accepted (p99 {})",
        fmt_rate(maximum),
        fmt_micros(probe.latency.value_at_quantile(0.99))
    ));
    if maximum <= 0.0 {
        bail!(
            "the probe had no POST accepted ({})",
            probe.first_failure.clone().unwrap_or_default()
        );
    }
    // Let the speed layer and the serving API catch up with the probe.
    let topic = stack.topic.clone();
    let group = stack.speed_group.clone();
    wait_for_lag_zero(
        stack,
        &topic,
        &group,
        Duration::from_secs(120),
        "speed layer",
    )
    .await?;
    let topic = stack.updates_topic.clone();
    let group = stack.serving_group.clone();
    wait_for_lag_zero(
        stack,
        &topic,
        &group,
        Duration::from_secs(120),
        "serving API",
    )
    .await?;

    let target_rate = args.alert_rate.unwrap_or(maximum * args.alert_load);
    let total = (target_rate * args.alert_seconds as f64).round() as usize;
    if total < ALERT_EVENTS * args.alert_customers * 2 {
        bail!(
            "the alert phase has {total} POSTs: too few for {} alert customers (at most a \
             sixth of a half of them); lower --alert-customers or raise --alert-seconds",
            args.alert_customers
        );
    }
    wait_for_quiet(&idle, args.quiet_wait_seconds).await;
    let start_ms = Utc::now().timestamp_millis() + 2_000;
    let planned = Arc::new(plan_alert_phase(
        &mut background,
        run,
        args.alert_customers,
        total,
        target_rate,
        start_ms,
    ));
    let wait_ms = start_ms - Utc::now().timestamp_millis();
    if wait_ms > 0 {
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
    progress(format!(
        "alert phase: {} POSTs at {} POSTs/s ({} alert customers)",
        fmt_int(total as u64),
        fmt_rate(target_rate),
        fmt_int(args.alert_customers as u64)
    ));
    let start = Instant::now();
    let start_wall_ms = Utc::now().timestamp_millis();
    let before = GroupSnapshot::take(stack);
    let sent = paced_posts(&client, &target, Arc::clone(&planned), target_rate, start).await;
    let cpu = before.usage_until(&GroupSnapshot::take(stack));
    let last_answer = sent
        .iter()
        .flatten()
        .map(|s| s.answered)
        .max()
        .unwrap_or(start);
    let first_sent = sent.iter().flatten().map(|s| s.sent).min().unwrap_or(start);
    let mut lateness = latency_histogram();
    for (index, post) in sent.iter().enumerate() {
        if let Some(post) = post {
            let due = start + Duration::from_secs_f64(index as f64 / target_rate);
            let _ = lateness
                .record((post.sent.saturating_duration_since(due).as_micros() as u64).max(1));
        }
    }

    // Which alert customers' POSTs were all accepted, in order: their 6th made the rule
    // fire.
    let mut by_customer: Vec<[Option<Sent>; ALERT_EVENTS]> =
        vec![[None; ALERT_EVENTS]; args.alert_customers];
    for (post, sent) in planned.iter().zip(&sent) {
        if let Some((customer, k)) = post.alert {
            by_customer[customer][k] = *sent;
        }
    }
    let crossing: Vec<Option<Instant>> = by_customer
        .iter()
        .map(|posts| {
            let all: Option<Vec<Sent>> = posts.iter().copied().collect();
            let all = all?;
            let in_order = all.windows(2).all(|pair| pair[0].answered <= pair[1].sent);
            (all.iter().all(|post| post.status == 202) && in_order)
                .then(|| all[ALERT_EVENTS - 1].sent)
        })
        .collect();
    let expected = crossing.iter().flatten().count();
    progress(format!(
        "alert phase: posted at {} POSTs/s; waiting for {} alerts",
        fmt_rate(
            sent.len() as f64
                / last_answer
                    .duration_since(first_sent)
                    .as_secs_f64()
                    .max(1e-9)
        ),
        fmt_int(expected as u64)
    ));
    let expected_customers: HashMap<String, usize> = (0..args.alert_customers)
        .filter(|customer| crossing[*customer].is_some())
        .map(|customer| (alert_customer(customer), customer))
        .collect();
    let count_expected = |received: &[Delivered]| {
        received
            .iter()
            .filter(|delivery| {
                serde_json::from_slice::<serde_json::Value>(&delivery.body)
                    .ok()
                    .and_then(|body| body["customerId"].as_str().map(str::to_owned))
                    .is_some_and(|customer| expected_customers.contains_key(&customer))
            })
            .count()
    };
    let deadline = last_answer + Duration::from_secs(args.alert_wait_seconds);
    let mut all_received_after = None;
    while Instant::now() < deadline {
        let seen = count_expected(&lock(&queue.received));
        if seen >= expected {
            all_received_after = Some(last_answer.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some((name, output)) = stack.exited() {
            bail!(
                "{name} exited during the alert phase; its output:\n{}",
                tail(&output, 40)
            );
        }
    }
    // A second delivery of the same alert would come soon after the first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    progress(format!(
        "alert phase: {} deliveries on the queue",
        queue.count()
    ));
    let received = queue.close().await;

    let mut times: Vec<u32> = vec![0; args.alert_customers];
    let mut delay = latency_histogram();
    let mut to_raised = latency_histogram();
    let mut mismatched = 0;
    let mut undescribed = 0;
    let mut first_mismatch = None;
    let mut unexpected: BTreeMap<String, u64> = BTreeMap::new();
    for delivery in &received {
        let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap_or_default();
        let customer = body["customerId"].as_str().unwrap_or_default();
        let Some(&index) = expected_customers.get(customer) else {
            *unexpected.entry(delivery.routing_key.clone()).or_default() += 1;
            continue;
        };
        let crossing_tx = alert_transaction(run, index, ALERT_EVENTS - 1);
        // The event the alert describes: `event` (or `lastEvent` in the body's first
        // form), the last event the update applied for a window rule.
        let described = ["event", "lastEvent"]
            .iter()
            .map(|field| &body[*field])
            .find(|event| !event.is_null())
            .map(|event| event["transactionId"].clone());
        if described.is_none() {
            undescribed += 1;
        }
        if body["rule"] != ALERT_RULE
            || described
                .as_ref()
                .is_some_and(|transaction| *transaction != crossing_tx.as_str())
        {
            mismatched += 1;
            first_mismatch.get_or_insert_with(|| {
                format!(
                    "customer {customer}: rule {}, event {} (expected {ALERT_RULE}, {crossing_tx})",
                    body["rule"],
                    described.unwrap_or_default()
                )
            });
            continue;
        }
        times[index] += 1;
        if times[index] == 1
            && let Some(sent) = crossing[index]
        {
            let _ = delay
                .record((delivery.at.saturating_duration_since(sent).as_micros() as u64).max(1));
            if let Some(raised) = millis_of(&body["raisedAt"]) {
                // The POST's wall-clock time from its place on the monotonic clock.
                let sent_ms =
                    start_wall_ms + sent.saturating_duration_since(start).as_millis() as i64;
                let _ = to_raised.record(((raised - sent_ms).max(0) as u64 * 1_000).max(1));
            }
        }
    }
    let received_once = crossing
        .iter()
        .zip(&times)
        .filter(|(crossing, times)| crossing.is_some() && **times == 1)
        .count();
    let received_more = times.iter().filter(|times| **times > 1).count();
    let missing = crossing
        .iter()
        .zip(&times)
        .filter(|(crossing, times)| crossing.is_some() && **times == 0)
        .count();
    Ok(AlertPhase {
        probe,
        target_rate,
        posted: sent.iter().flatten().count(),
        window: last_answer.duration_since(first_sent),
        not_accepted: sent
            .iter()
            .map(|post| post.map_or(1, |post| u64::from(post.status != 202)))
            .sum(),
        lateness,
        expected,
        left_out: args.alert_customers - expected,
        received_once,
        received_more,
        missing,
        mismatched,
        undescribed,
        first_mismatch,
        unexpected,
        delay,
        to_raised,
        all_received_after,
        cpu_probe,
        cpu,
    })
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// The serving API's batch row cache, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct CacheCounts {
    hits: u64,
    misses: u64,
    evictions: u64,
    entries: u64,
}

impl CacheCounts {
    /// The counters now; `None` when `/metrics` cannot be read.
    async fn read(client: &reqwest::Client, base: &str) -> Option<CacheCounts> {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        // Unlabelled series: `name value`; a series not recorded yet is 0.
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .map_or(0, |value| value.max(0.0).round() as u64)
        };
        Some(CacheCounts {
            hits: value("serving_risk_batch_cache_hits_total"),
            misses: value("serving_risk_batch_cache_misses_total"),
            evictions: value("serving_risk_batch_cache_evictions_total"),
            entries: value("serving_risk_batch_cache_entries"),
        })
    }
}

struct Measured {
    batch: BatchViews,
    state: SpeedState,
    risk: GetPhase,
    /// The serving API's batch row cache before and after the risk phase.
    risk_cache: Option<(CacheCounts, CacheCounts)>,
    reference: GetPhase,
    /// Bytes of the real risk answer the reference serves.
    reference_body: usize,
    check: AnswerCheck,
    alerts: Result<AlertPhase, String>,
    cpu: Vec<(String, GroupUsage)>,
    /// The machine before each measured phase.
    background: Vec<(&'static str, CpuUsage)>,
}

impl Measured {
    /// Results that are wrong, not merely slow.
    fn wrong(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        if self.check.wrong > 0 {
            wrong.push(format!(
                "{} of {} risk answers checked differ from what was written",
                self.check.wrong, self.check.checked
            ));
        }
        if self.risk.ok < self.risk.load.requests || self.risk.load.transport_errors > 0 {
            wrong.push("risk answers other than 200".to_owned());
        }
        if let Ok(alerts) = &self.alerts
            && !alerts.exactly_once()
        {
            wrong.push(format!(
                "expected alerts not received exactly once: {} missing, {} more than once, {} of another rule or transaction",
                alerts.missing, alerts.received_more, alerts.mismatched
            ));
        }
        wrong
    }
}

async fn measure(
    args: &ServingArgs,
    settings: &Settings,
    stack: &mut ServingStack,
    bins: &Binaries,
) -> anyhow::Result<Measured> {
    let run = uuid_hex(&mut rand::rng())[..12].to_owned();
    // T_b: one hour before the last full hour, so every event of the speed layer's
    // windows is after it.
    let now = Utc::now().timestamp_millis();
    let watermark = now - now.rem_euclid(HOUR) - HOUR;
    progress(format!(
        "writing the batch views of {} customers",
        fmt_int(args.customers as u64)
    ));
    let batch = write_batch_views(stack, args, watermark).await?;
    progress(format!(
        "batch views: {} rows in {:.1}s",
        fmt_int(batch.rows),
        batch.elapsed.as_secs_f64()
    ));
    let state = write_speed_state(stack, args, settings, bins, &run).await?;

    // A real answer's bytes are the reference's body.
    let serving = stack.base("serving-api");
    let client = http_client()?;
    let sample = client
        .get(format!("{serving}/v1/customers/{}/risk", risk_customer(0)))
        .bearer_auth(&stack.read_key)
        .send()
        .await?;
    if sample.status() != 200 {
        bail!(
            "GET /risk answered {}: {}",
            sample.status(),
            sample.text().await?
        );
    }
    let body = sample.bytes().await?;
    let body_file = stack.dir.join("reference-body.json");
    std::fs::write(&body_file, &body)?;
    let port = free_port();
    let mut command = Command::new(&bins.bench);
    command
        .arg("serving")
        .arg("--reference-port")
        .arg(port.to_string())
        .arg("--reference-body")
        .arg(&body_file);
    stack.start("reference", command, port, true).await?;
    let reference_base = stack.base("reference");

    let idle = Pids::find(0, [ThreadMatch::None, ThreadMatch::None]);
    let mut background = Vec::new();
    let mut cpu = Vec::new();
    background.push((
        "before the risk phase",
        wait_for_quiet(&idle, args.quiet_wait_seconds).await,
    ));
    let cache_before = CacheCounts::read(&client, &serving).await;
    let (risk, risk_cpu) = get_phase(args, stack, &serving, "risk", args.seed).await?;
    let risk_cache = match (cache_before, CacheCounts::read(&client, &serving).await) {
        (Some(before), Some(after)) => Some((before, after)),
        _ => None,
    };
    cpu.push(("risk".to_owned(), risk_cpu));
    background.push((
        "before the reference",
        wait_for_quiet(&idle, args.quiet_wait_seconds).await,
    ));
    let (reference, reference_cpu) =
        get_phase(args, stack, &reference_base, "reference", args.seed ^ 1).await?;
    cpu.push(("reference".to_owned(), reference_cpu));
    let check = check_answers(&risk.kept, &state, &batch, args);
    progress(format!(
        "checked {} risk answers: {} wrong, {} degraded",
        check.checked, check.wrong, check.degraded
    ));

    let alerts = match alert_phase(args, stack, bins, &run).await {
        Ok(alerts) => {
            progress(format!(
                "alert phase: {} of {} alerts received once; delay p50 {} p99 {}",
                alerts.received_once,
                alerts.expected,
                fmt_micros(alerts.delay.value_at_quantile(0.50)),
                fmt_micros(alerts.delay.value_at_quantile(0.99))
            ));
            cpu.push(("ingest probe".to_owned(), alerts.cpu_probe.clone()));
            cpu.push(("alerts".to_owned(), alerts.cpu.clone()));
            Ok(alerts)
        }
        Err(error) => {
            progress(format!("alert phase: not measurable: {error:#}"));
            Err(format!("{error:#}"))
        }
    };
    Ok(Measured {
        batch,
        state,
        risk,
        risk_cache,
        reference,
        reference_body: body.len(),
        check,
        alerts,
        cpu,
        background,
    })
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn latency_line(load: &LoadResult) -> String {
    format!(
        "{} / {} / {} / {}",
        fmt_micros(load.latency.value_at_quantile(0.50)),
        fmt_micros(load.latency.value_at_quantile(0.99)),
        fmt_micros(load.latency.value_at_quantile(0.999)),
        fmt_micros(load.latency.max())
    )
}

fn render_report(
    args: &ServingArgs,
    stack: &ServingStack,
    bins: &Binaries,
    m: &Measured,
    cleanup: &[String],
) -> String {
    let machine = Machine::describe();
    let now = Utc::now();
    let risk_rate = m.risk.load.requests_per_second();
    let reference_rate = m.reference.load.requests_per_second();
    let ratio = risk_rate / reference_rate.max(1e-9);
    let risk_p99 = m.risk.load.latency.value_at_quantile(0.99);
    let mut r = String::new();
    let _ = writeln!(r, "# Serving API benchmark\n");
    let _ = writeln!(
        r,
        "{}\n",
        run_line(
            &machine,
            now,
            "Kafka, Redis, PostgreSQL and RabbitMQ on the same machine as the services and \
             this load generator",
            "fraud-bench serving"
        )
    );
    let _ = writeln!(r, "| figure | value |\n|---|---|");
    let _ = writeln!(
        r,
        "| state (not timed) | {} customers, each with {} events in the speed layer's window (Redis) and {} hourly, {} daily and 1 baseline row in the batch views (Postgres, {} rows) |",
        fmt_int(args.customers as u64),
        args.events_per_customer,
        args.batch_hours,
        args.batch_days,
        fmt_int(m.batch.rows)
    );
    let _ = writeln!(
        r,
        "| risk: `GET /v1/customers/{{id}}/risk`, {} clients, random customers, {} s | {} requests/s |",
        args.clients,
        args.seconds,
        fmt_rate(risk_rate)
    );
    let _ = writeln!(
        r,
        "| risk: latency p50 / p99 / p99.9 / max | {} |",
        latency_line(&m.risk.load)
    );
    let _ = writeln!(
        r,
        "| risk: answers other than 200 | {} of {} ({}) |",
        fmt_int(m.risk.load.requests + m.risk.load.transport_errors - m.risk.ok),
        fmt_int(m.risk.load.requests + m.risk.load.transport_errors),
        m.risk.load.statuses_text()
    );
    match m.risk_cache {
        Some((before, after)) => {
            let hits = after.hits.saturating_sub(before.hits);
            let misses = after.misses.saturating_sub(before.misses);
            let _ = writeln!(
                r,
                "| risk: batch rows from the serving API's cache, warm-up included: hits / misses (Postgres) / evictions; entries before → after | {} / {} ({:.1}% hits) / {}; {} → {} |",
                fmt_int(hits),
                fmt_int(misses),
                100.0 * hits as f64 / (hits + misses).max(1) as f64,
                fmt_int(after.evictions.saturating_sub(before.evictions)),
                fmt_int(before.entries),
                fmt_int(after.entries)
            );
        }
        None => {
            let _ = writeln!(
                r,
                "| risk: batch rows from the serving API's cache | not known (its `/metrics` could not be read) |"
            );
        }
    }
    let _ = writeln!(
        r,
        "| risk: answers checked against what was written | {} checked, {} wrong, {} degraded |",
        fmt_int(m.check.checked),
        fmt_int(m.check.wrong),
        fmt_int(m.check.degraded)
    );
    let _ = writeln!(
        r,
        "| reference: axum handler, fixed body of {} bytes, same client code | {} requests/s |",
        fmt_int(m.reference_body as u64),
        fmt_rate(reference_rate)
    );
    let _ = writeln!(
        r,
        "| reference: latency p50 / p99 / p99.9 / max | {} |",
        latency_line(&m.reference.load)
    );
    let _ = writeln!(r, "| ratio: risk ÷ reference | {:.0}% |", ratio * 100.0);
    match &m.alerts {
        Ok(a) => {
            let _ = writeln!(
                r,
                "| ingest probe: single-event POSTs, {} clients, {} s (the maximum rate) | {} POSTs/s accepted, p99 {} |",
                args.clients,
                args.probe_seconds,
                fmt_rate(a.probe.events_per_second()),
                fmt_micros(a.probe.latency.value_at_quantile(0.99))
            );
            let _ = writeln!(
                r,
                "| alert phase: single-event POSTs, planned rate ({:.0}% of the maximum) / achieved | {} / {} POSTs/s, {} POSTs, {} not accepted; sent late p99 {} |",
                a.target_rate / a.probe.events_per_second().max(1e-9) * 100.0,
                fmt_rate(a.target_rate),
                fmt_rate(a.posted_rate()),
                fmt_int(a.posted as u64),
                fmt_int(a.not_accepted),
                fmt_micros(a.lateness.value_at_quantile(0.99))
            );
            let _ = writeln!(
                r,
                "| alerts: expected / received exactly once / more than once / missing | {} / {} / {} / {}{} |",
                fmt_int(a.expected as u64),
                fmt_int(a.received_once as u64),
                fmt_int(a.received_more as u64),
                fmt_int(a.missing as u64),
                if a.left_out > 0 {
                    format!(
                        " ({} alert customers left out: a POST not accepted, or sent before the previous one was answered)",
                        fmt_int(a.left_out as u64)
                    )
                } else {
                    String::new()
                }
            );
            if a.undescribed > 0 {
                let _ = writeln!(
                    r,
                    "| alerts: of the expected ones, naming no event (neither `event` nor `lastEvent`) | {} |",
                    fmt_int(a.undescribed as u64)
                );
            }
            let _ = writeln!(
                r,
                "| alerts: every expected alert received, after the last POST's answer | {} |",
                a.all_received_after.map_or(
                    format!("not within {} s", args.alert_wait_seconds),
                    |after| format!("{:.2} s", after.as_secs_f64())
                )
            );
            let _ = writeln!(
                r,
                "| alerts: POST sent → delivered on the bound queue, p50 / p99 / max | {} |",
                p50_p99_max(&a.delay)
            );
            let _ = writeln!(
                r,
                "| alerts: of which POST sent → alert raised (`raisedAt`, ms resolution), p50 / p99 | {} / {} |",
                fmt_micros(a.to_raised.value_at_quantile(0.50)),
                fmt_micros(a.to_raised.value_at_quantile(0.99))
            );
            let _ = writeln!(
                r,
                "| alerts: of other customers (not expected) | {} |",
                if a.unexpected.is_empty() {
                    "none".to_owned()
                } else {
                    a.unexpected
                        .iter()
                        .map(|(key, count)| format!("{key}: {count}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        Err(reason) => {
            let _ = writeln!(r, "| alert phase | not measurable: {reason} |");
        }
    }

    let _ = writeln!(r, "\n## Targets (issue 6)\n");
    let _ = writeln!(r, "| target | measured | result |\n|---|---|---|");
    let _ = writeln!(
        r,
        "| risk ≥ {:.0}% of the reference's requests/s | {:.0}% ({} ÷ {}) | {} |",
        RATIO_TARGET * 100.0,
        ratio * 100.0,
        fmt_rate(risk_rate),
        fmt_rate(reference_rate),
        pass(ratio >= RATIO_TARGET)
    );
    let _ = writeln!(
        r,
        "| risk p99 ≤ {} at {} clients | {} | {} |",
        fmt_micros(RISK_P99_TARGET_MICROS),
        args.clients,
        fmt_micros(risk_p99),
        pass(risk_p99 <= RISK_P99_TARGET_MICROS)
    );
    match &m.alerts {
        Ok(a) => {
            let p99 = a.delay.value_at_quantile(0.99);
            let load = a.posted_rate() / a.probe.events_per_second().max(1e-9);
            let _ = writeln!(
                r,
                "| alert delivery p99 ≤ {} at half the maximum ingest rate, every alert exactly once | {} at {} POSTs/s ({:.0}% of the maximum); {} of {} alerts exactly once | {} |",
                fmt_micros(ALERT_P99_TARGET_MICROS),
                fmt_micros(p99),
                fmt_rate(a.posted_rate()),
                load * 100.0,
                fmt_int(a.received_once as u64),
                fmt_int(a.expected as u64),
                if load < 0.45 {
                    "**not measured** (load under half)"
                } else {
                    pass(p99 <= ALERT_P99_TARGET_MICROS && a.exactly_once())
                }
            );
        }
        Err(reason) => {
            let _ = writeln!(
                r,
                "| alert delivery p99 ≤ {} at half the maximum ingest rate | not measurable: {reason} | **not measured** |",
                fmt_micros(ALERT_P99_TARGET_MICROS)
            );
        }
    }
    let failures: Vec<&String> = [&m.risk.load, &m.reference.load]
        .iter()
        .filter_map(|load| load.first_failure.as_ref())
        .collect();
    if let Some(first) = failures.first() {
        let _ = writeln!(
            r,
            "\nFirst answer other than 200: `{}`.",
            first.replace('|', "\\|").replace('\n', " ")
        );
    }
    if let Some(first) = &m.check.first_wrong {
        let _ = writeln!(
            r,
            "\nFirst wrong risk answer: {}.",
            first.replace('|', "\\|")
        );
    }
    if let Ok(a) = &m.alerts
        && let Some(first) = &a.first_mismatch
    {
        let _ = writeln!(r, "\nFirst unexpected alert of an alert customer: {first}.");
    }

    let _ = writeln!(r, "\n## CPU during each phase\n");
    let _ = writeln!(
        r,
        "CPUs' worth of time used (out of {}) over each measured window (after its warm-up); \
         `machine` is the share of every CPU that was busy; `reference` is the reference's \
         process (idle outside its phase); the load generator and the alert queue's \
         consumer run inside fraud-bench; `other` is everything else on the machine.\n",
        machine.cpus
    );
    r.push_str(&group_cpu_table(&m.cpu));
    for (phase, usage) in &m.background {
        if usage.machine_busy_percent > BUSY_BACKGROUND_PERCENT {
            let _ = writeln!(
                r,
                "\n**The machine was {:.0}% busy {phase}** (other work: builds, services): \
                 the figures are lower than on a quiet machine.",
                usage.machine_busy_percent
            );
        }
    }
    for (phase, usage) in &m.cpu {
        if usage.other_cores > OTHER_WORK_CORES {
            let _ = writeln!(
                r,
                "\n**Other work used {:.2} CPUs during the {phase} phase** (builds, tests or \
                 services outside this benchmark): its figures are lower than on a quiet \
                 machine.",
                usage.other_cores
            );
        }
    }

    let _ = writeln!(r, "\n## How it is measured\n");
    let method = [
        format!(
            "**state**: T_b is {} (one hour before the last full hour at the start), published as a succeeded `batch_runs` row; every customer has `batch_hourly` rows for the {} hours before T_b, `batch_daily` rows for the {} days before T_b's day and a `batch_baselines` row (`INSERT … SELECT` from formulas the check recomputes, then `ANALYZE`; {:.1} s). Its {} events (event times within the 20 minutes before the pre-fill, 1.00–500.00 each) were produced as ingest produces them ({:.1} s) and applied by the release speed layer from the topic (every partition applied {}); the release serving API then evaluated every window update ({}): no rule fires for these customers.",
            DateTime::<Utc>::from_timestamp_millis(m.batch.watermark)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_default(),
            args.batch_hours,
            args.batch_days,
            m.batch.elapsed.as_secs_f64(),
            fmt_int(m.state.produced as u64),
            m.state.produce_elapsed.as_secs_f64(),
            m.state
                .applied_after
                .map_or("not".to_owned(), |after| format!(
                    "{:.1} s after its start",
                    after.as_secs_f64()
                )),
            m.state
                .evaluated_after
                .map_or("not".to_owned(), |after| format!(
                    "{:.1} s after its start",
                    after.as_secs_f64()
                )),
        ),
        format!(
            "**risk**: {} tokio tasks share one reqwest client (keep-alive HTTP/1.1, TCP_NODELAY), each sending `GET /v1/customers/{{id}}/risk` with the read key for a customer drawn uniformly from the {}, the next as soon as the answer is read whole; {} s of warm-up, then {} s measured. Latency runs from sending the request to reading the whole answer. Every answer must be 200; every {}th is kept and checked: window count and sum equal the customer's events in `(asOf − 30 min, asOf]`, today's and the last 24 hours' count and sum equal the batch hours in the range up to T_b plus the events after T_b in it, the baseline's p95 peak equals the row written, `known` is true.",
            args.clients,
            fmt_int(args.customers as u64),
            args.warmup_seconds,
            args.seconds,
            args.check_every
        ),
        format!(
            "**reference**: an axum 0.8 router with the same route, returning a fixed {}-byte body (a real risk answer of this run) as `application/json`, in a process of its own (this program, started with a hidden flag), so that it has its own tokio runtime with a worker per CPU as the serving API has, and its CPU is counted apart from the load generator's. It checks no key and reads nothing: what HTTP alone costs on this machine. Measured right after the risk phase with the same client code, clients, warm-up and length.",
            fmt_int(m.reference_body as u64)
        ),
        format!(
            "**alerts**: the release ingest runs too, and an exclusive queue of the benchmark's own is bound to the exchange with `alert.#`. The maximum ingest rate is that of a {} s probe of single-event POSTs at {} clients (after 1 s of warm-up, the ingest benchmark's method; every service running). After the speed layer and the serving API have caught up, single-event POSTs are sent at {:.0}% of it for {} s, paced to a plan by up to {} senders (each event's `ts` is its planned time). Other events are of 100,000 other customers, 1.00–200.00 each, so no rule fires for them. {} alert customers each get 6 POSTs of 950.00 at one vendor, spread over the phase in order (each answered before the next is sent): the 6th takes the window from 4,750.00 to 5,700.00, over the `sum-30m-over-limit` limit of 5,000.00. An alert's delay is the monotonic time from sending that 6th POST to the delivery's arrival in this process; it must name the rule and, when it names an event (`event`, or `lastEvent` in the body's first form), the 6th transaction, and each must arrive exactly once (deliveries are counted for {} s after the last expected one, or after a bound of {} s). `raisedAt` (wall clock, ms) splits the delay into raising (ingest, Kafka, speed layer, window update, evaluation, Postgres) and delivery (outbox relay, RabbitMQ).",
            args.probe_seconds,
            args.clients,
            args.alert_load * 100.0,
            args.alert_seconds,
            ALERT_SENDERS,
            fmt_int(args.alert_customers as u64),
            3,
            args.alert_wait_seconds
        ),
    ];
    for line in method {
        let _ = writeln!(r, "- {line}");
    }

    let _ = writeln!(r, "\n## Settings\n");
    let mut lines = vec![
        format!(
            "binaries: `{}`, `{}`, `{}`",
            bins.serving.display(),
            bins.speed.display(),
            bins.ingest.display()
        ),
        format!(
            "services: defaults, except through `FRAUD_…` variables: database `{}`, topics `{}` and `{}` ({} partitions), Redis key prefix `{}`, groups `{}`, `{}` and `{}`, exchange `{}`, a lake directory, one read and one ingest key, ingest's per-key rate limit raised to {}/s, logs at `warn`; all removed at the end",
            database_name(&stack.database),
            stack.topic,
            stack.updates_topic,
            args.partitions,
            stack.prefix,
            stack.speed_group,
            stack.serving_group,
            stack.writer_group,
            stack.exchange,
            fmt_int(u64::from(super::BENCH_RATE_LIMIT))
        ),
    ];
    for running in &stack.processes {
        lines.push(format!(
            "{} stopped {}",
            running.name,
            match running.stopped_cleanly {
                Some(true) => "cleanly on SIGTERM",
                Some(false) => "by SIGKILL after SIGTERM timed out",
                None => "(it had exited already)",
            }
        ));
    }
    if !cleanup.is_empty() {
        lines.push(format!("clean-up problems: {}", cleanup.join("; ")));
    }
    for line in lines {
        let _ = writeln!(r, "- {line}");
    }
    r
}
