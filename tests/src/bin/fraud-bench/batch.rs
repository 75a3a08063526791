//! `fraud-bench batch`: the batch layer's benchmark (`deploy/dev bench batch`).
//!
//! In one run, with a lake directory, an (empty) transactions topic and Postgres
//! databases of its own, all removed at the end:
//! 1. **lake** (not timed): `--events` transactions over `--days` UTC days and
//!    `--customers` customers, written with `fraud-lake` exactly as the lake writer
//!    writes them: records in ingest-time order, keyed by customer into `--partitions`
//!    partitions with consecutive offsets, each partition's records cut into chunks
//!    (at `lake.max_rows_per_file` records, after `--chunk-minutes` of ingest time, and
//!    at every midnight of ingest time), each chunk split by event date into one
//!    Parquet file per date (`Lake::write_chunk`). Late arrivals and duplicates land in
//!    later chunks, so in extra files of older dates, as they do in a real lake;
//! 2. **full recompute**: the release `batch-layer run --full --as-of T` (T the midnight
//!    after the last day) on an empty database; wall time from spawn to exit and peak
//!    memory (`ru_maxrss` from `wait4`), the phases' times from its log;
//! 3. **DuckDB** (the reference): a Python with DuckDB from PyPI computes the same
//!    tables (hourly, daily with the peak 30-minute window, vendors, baselines, with the
//!    batch layer's definitions) from the same files; its time is the SQL's, measured
//!    inside the script. The tables' row counts, sums and an order-free checksum of
//!    every row (md5 of the row's text) must equal the batch layer's, else the
//!    benchmark fails;
//! 4. **`psql \copy`** (the reference of the load): the rows the batch layer wrote,
//!    exported to CSV, loaded by `psql \copy` in one transaction into empty tables of
//!    the same schema in a fresh database (the same day partitions created first, with
//!    `CREATE TABLE … PARTITION OF`); compared with the batch layer's own time in
//!    Postgres (deleting, copying, writing the vendors, deriving the baselines,
//!    committing), in rows written per second;
//! 5. **incremental night**: one more day of files (that day's events and the late
//!    arrivals for earlier days ingested that day), then `batch-layer run --as-of T+1d`
//!    (not `--full`), measured the same way, and checked against DuckDB again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use fraud_config::{KafkaConfig, Settings};
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_lake::{ChunkBuilder, Lake, LakeRoot};
use fraud_testkit::unique_name;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    BUSY_BACKGROUND_PERCENT, CpuSnapshot, CpuUsage, Machine, Pids, ThreadMatch, fmt_int, fmt_rate,
    parquet_files, pick, progress, run_line, tail, wait_for_quiet, wait_for_topic, workspace_root,
    write_report, zipf_cdf,
};

#[derive(Args, Clone)]
pub(super) struct BatchArgs {
    /// Events in the lake at the full recompute (duplicate records not counted).
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// UTC days the events span; the incremental night adds one more day of
    /// `events / days` events.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Distinct customers.
    #[arg(long, default_value_t = 100_000)]
    customers: usize,
    /// Zipf exponent of the customers' popularity (0: every customer equally likely).
    #[arg(long, default_value_t = 0.5)]
    customer_skew: f64,
    /// Percentage of events that arrive late: ingested 1 minute to 48 hours after their
    /// event time (log-uniform); the others 20 ms to 3 s after it.
    #[arg(long, default_value_t = 1.0)]
    late_percent: f64,
    /// Percentage of events that ingest published twice (a client's retry: the same
    /// transaction 1–60 s later, in a later offset).
    #[arg(long, default_value_t = 0.2)]
    duplicate_percent: f64,
    /// Percentage of events that start a burst: 1–5 more events of the same customer,
    /// each 5 s to 10 min after the previous one.
    #[arg(long, default_value_t = 2.0)]
    burst_percent: f64,
    /// Partitions of the lake (and of the benchmark's empty transactions topic, which
    /// the batch layer's completeness check reads).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// A partition's chunk is closed once its first record is this many minutes of
    /// ingest time old (and always at midnight, so each night finds the lake complete).
    /// The lake writer closes chunks after `lake.max_chunk_age_ms` (60 s): at this
    /// lake's rate that would make chunks of a few records.
    #[arg(long, default_value_t = 1440)]
    chunk_minutes: u64,
    /// Threads DuckDB may use (0: its default, one per CPU).
    #[arg(long, default_value_t = 0)]
    duckdb_threads: usize,
    /// Bound on each measured process (batch run, DuckDB, psql), in minutes.
    #[arg(long, default_value_t = 60)]
    timeout_minutes: u64,
    /// How long to wait, before each measured phase, for other work on the machine to
    /// end.
    #[arg(long, default_value_t = 60)]
    quiet_wait_seconds: u64,
    /// Seed of the generator (the lake is the same for the same seed, shifted so that
    /// the night's day is the day before the run).
    #[arg(long, default_value_t = 20_190_530)]
    seed: u64,
    /// The batch-layer binary (default: `batch-layer` next to this program).
    #[arg(long)]
    batch_bin: Option<PathBuf>,
    /// A Python that can `import duckdb` (default: `DUCKDB_PYTHON`, else the venv
    /// `deploy/dev up` makes in ~/.cache/fraud-platform).
    #[arg(long)]
    duckdb_python: Option<PathBuf>,
    /// Where to write the report (default: `target/bench/batch.md` under the workspace).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the lake, the CSV files and the databases (their names are printed) instead
    /// of removing them at the end.
    #[arg(long)]
    keep: bool,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// CPUs of other work during a measured process above which the report says so.
const OTHER_WORK_CORES: f64 = 0.3;

/// Targets of the issue.
const FULL_VS_DUCKDB_TARGET: f64 = 1.5;
const MEMORY_TARGET_BYTES: u64 = 2 * 1024 * 1024 * 1024;
const LOAD_VS_COPY_TARGET: f64 = 0.8;
const NIGHT_VS_FULL_TARGET: f64 = 0.1;

/// The tables the batch layer publishes, in the order the report lists them.
const TABLES: [&str; 4] = [
    "batch_hourly",
    "batch_daily",
    "batch_vendors",
    "batch_baselines",
];

pub(super) async fn batch_benchmark(args: BatchArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.customers == 0 || args.days == 0 || args.partitions <= 0 {
        bail!("--events, --customers, --days and --partitions must be positive");
    }
    for (name, percent) in [
        ("--late-percent", args.late_percent),
        ("--duplicate-percent", args.duplicate_percent),
        ("--burst-percent", args.burst_percent),
    ] {
        if !(0.0..=100.0).contains(&percent) {
            bail!("{name} must be between 0 and 100");
        }
    }
    if args.chunk_minutes == 0 {
        bail!("--chunk-minutes must be positive");
    }
    let settings = Settings::load(None).context("load the platform's configuration")?;
    let batch_bin = super::service_binary(args.batch_bin.as_deref(), "batch-layer", "--batch-bin")?;
    let python = args
        .duckdb_python
        .clone()
        .unwrap_or_else(fraud_testkit::duckdb_python);
    if !python.exists() {
        bail!(
            "no Python with DuckDB at {} (deploy/dev up --servers-only installs it, or pass \
             --duckdb-python)",
            python.display()
        );
    }
    let psql = Command::new("psql")
        .arg("--version")
        .output()
        .context("run psql (the PostgreSQL client; deploy/dev up installs it)")?;
    if !psql.status.success() {
        bail!("psql --version failed");
    }
    let report_path = args.report.clone().unwrap_or_else(|| {
        workspace_root()
            .join("target")
            .join("bench")
            .join("batch.md")
    });
    let plan = Plan::new(&args);

    let mut stack = BatchStack::create(&settings, &args).await?;
    let tools = Tools {
        batch_bin: batch_bin.clone(),
        python,
    };
    let measured = measure(&args, &settings, &stack, &tools, &plan).await;
    let cleanup = stack.remove(args.keep).await;
    let measured = measured?;
    for problem in &cleanup {
        progress(format!("clean-up: {problem}"));
    }
    let report = render_report(&args, &settings, &tools, &plan, &measured, &cleanup);
    write_report(&report, &report_path)?;
    let mismatches = measured.mismatches();
    if !mismatches.is_empty() {
        bail!(
            "the batch layer's tables differ from DuckDB's or from the generated events: {}",
            mismatches.join("; ")
        );
    }
    Ok(())
}

/// The programs the benchmark runs.
struct Tools {
    batch_bin: PathBuf,
    python: PathBuf,
}

/// The days of the run: `days` days from `first_day`, the full recompute at their end,
/// the night's at the end of the day after.
struct Plan {
    first_day: i64,
    full_watermark: i64,
    night_watermark: i64,
}

impl Plan {
    /// The night's watermark is the last midnight at least an hour ago (the batch layer
    /// refuses a watermark whose records may still be on their way to Kafka).
    fn new(args: &BatchArgs) -> Plan {
        let now = Utc::now().timestamp_millis();
        let night_watermark = day_floor(now - HOUR);
        let full_watermark = night_watermark - DAY;
        Plan {
            first_day: full_watermark - i64::from(args.days) * DAY,
            full_watermark,
            night_watermark,
        }
    }
}

fn day_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(DAY)
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

fn date(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|time| time.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| ms.to_string())
}

// ---------------------------------------------------------------------------------------
// The stack: a topic, a directory (lake, CSV files, logs) and databases of our own
// ---------------------------------------------------------------------------------------

struct BatchStack {
    kafka: KafkaConfig,
    topic: String,
    dir: PathBuf,
    lake_root: PathBuf,
    /// The batch layer's database.
    database: String,
    /// The `\copy` reference's database, once made.
    copy_database: std::sync::Mutex<Option<String>>,
    topic_created: bool,
    /// The configured database's URL, for server-wide commands (`CHECKPOINT`).
    admin_url: String,
}

impl BatchStack {
    async fn create(settings: &Settings, args: &BatchArgs) -> anyhow::Result<BatchStack> {
        let name = unique_name("bench-batch");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut stack = BatchStack {
            kafka: settings.kafka.clone(),
            topic: format!("{name}-transactions"),
            lake_root: dir.join("lake"),
            dir,
            database: String::new(),
            copy_database: std::sync::Mutex::new(None),
            topic_created: false,
            admin_url: settings.postgres.url.expose().clone(),
        };
        progress(format!(
            "creating the empty topic {} ({} partitions) for the completeness check",
            stack.topic, args.partitions
        ));
        let created = async {
            fraud_kafka::ensure_topic(&stack.kafka, &stack.topic, args.partitions, 1)
                .await
                .with_context(|| {
                    format!(
                        "create topic {} (is Kafka up? deploy/dev up --servers-only)",
                        stack.topic
                    )
                })?;
            wait_for_topic(&stack.kafka, &stack.topic, args.partitions).await
        }
        .await;
        stack.topic_created = true;
        if let Err(error) = created {
            for problem in stack.remove(false).await {
                progress(format!("clean-up: {problem}"));
            }
            return Err(error);
        }
        stack.database = fraud_testkit::postgres::create_database("bench_batch").await;
        progress(format!("database {}", database_name(&stack.database)));
        Ok(stack)
    }

    /// A fresh database for the `\copy` reference (dropped with the stack).
    async fn copy_database(&self) -> String {
        let url = fraud_testkit::postgres::create_database("bench_batch_copy").await;
        *self
            .copy_database
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(url.clone());
        url
    }

    /// Removes what the benchmark made (or, with `keep`, says where it is); returns the
    /// problems.
    async fn remove(&mut self, keep: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let copy_database = self
            .copy_database
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let databases: Vec<String> = [Some(self.database.clone()), copy_database]
            .into_iter()
            .flatten()
            .filter(|url| !url.is_empty())
            .collect();
        if keep {
            progress(format!(
                "kept (--keep): {}, databases {}",
                self.dir.display(),
                databases
                    .iter()
                    .map(|url| database_name(url))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else {
            for url in &databases {
                let name = database_name(url);
                let dropped = fraud_testkit::postgres::try_drop_database(url).await;
                if let Err(error) = dropped {
                    problems.push(format!(
                        "database {name} was not dropped ({error:#}); drop it by hand"
                    ));
                }
            }
            if let Err(error) = std::fs::remove_dir_all(&self.dir)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                problems.push(format!("remove {}: {error}", self.dir.display()));
            }
        }
        if self.topic_created {
            if let Err(error) = fraud_kafka::delete_topic(&self.kafka, &self.topic).await {
                problems.push(format!("delete topic {}: {error}", self.topic));
            }
            self.topic_created = false;
        }
        problems
    }

    /// The batch layer's command for `args`, configured only by what is set here (a
    /// developer's `FRAUD_` variables and `RUST_LOG` must not leak in); JSON logs, so the
    /// run's result line can be read back.
    fn batch_command(&self, settings: &Settings, batch_bin: &Path, database: &str) -> Command {
        let mut command = Command::new(batch_bin);
        for (variable, _) in std::env::vars() {
            if variable.starts_with("FRAUD_") || variable == "RUST_LOG" {
                command.env_remove(variable);
            }
        }
        command.envs([
            ("FRAUD_KAFKA__BROKERS", settings.kafka.brokers.clone()),
            ("FRAUD_KAFKA__TRANSACTIONS_TOPIC", self.topic.clone()),
            ("FRAUD_POSTGRES__URL", database.to_owned()),
            ("FRAUD_LAKE__ROOT", self.lake_root.display().to_string()),
            ("FRAUD_TELEMETRY__LOG_FORMAT", "json".to_owned()),
            ("FRAUD_TELEMETRY__LOG_FILTER", "info".to_owned()),
            (
                "FRAUD_INGEST__PRODUCE_TIMEOUT_MS",
                settings.ingest.produce_timeout_ms.to_string(),
            ),
        ]);
        command
    }
}

fn database_name(url: &str) -> &str {
    url.rsplit_once('/').map_or(url, |(_, name)| name)
}

// ---------------------------------------------------------------------------------------
// The lake
// ---------------------------------------------------------------------------------------

struct Customer {
    id: CustomerId,
    partition: usize,
    vendors: Vec<usize>,
    vendor_cdf: Vec<f64>,
}

/// Realistic, valid transactions, reproducible by seed: customers of Zipf popularity
/// with 16-digit card-like ids, each shopping at 1–5 vendors (weighted, drawn from
/// vendors of Zipf popularity), amounts with cents (log-normal around €25), times of
/// day following a daily curve (quiet at night), bursts, late arrivals, duplicates
/// and, for some terminals, event times on whole minutes.
struct LakeGenerator {
    rng: StdRng,
    customers: Vec<Customer>,
    customer_cdf: Vec<f64>,
    vendors: Vec<VendorId>,
    hour_cdf: Vec<f64>,
    first_day: i64,
    late_share: f64,
    duplicate_share: f64,
    burst_share: f64,
}

/// Relative activity per UTC hour of the day.
const HOURLY_ACTIVITY: [f64; 24] = [
    1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5, 5.0, 5.0, 5.0, 5.5, 6.0, 6.0,
    5.5, 5.0, 4.0, 3.0, 2.0,
];
/// Share of event times a terminal stamps on a whole minute.
const WHOLE_MINUTE_SHARE: f64 = 0.05;

/// One record as ingest published it.
struct Record {
    partition: usize,
    event: TransactionEvent,
}

/// What the generator made, for the report and the exactness checks.
#[derive(Clone, Copy, Default)]
struct Generated {
    /// Records in the lake (events and their duplicates).
    records: u64,
    /// Distinct events.
    events: u64,
    /// Their amounts' sum, in minor units.
    amount_sum: i128,
    duplicates: u64,
    /// Events ingested 1 min to 48 h after their event time.
    late: u64,
    /// Events ingested on a later UTC day than their event date (in files of an older
    /// date, written that later day).
    other_day: u64,
    chunks: u64,
}

impl Generated {
    fn add(&mut self, other: &Generated) {
        self.records += other.records;
        self.events += other.events;
        self.amount_sum += other.amount_sum;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.other_day += other.other_day;
        self.chunks += other.chunks;
    }
}

impl LakeGenerator {
    fn new(args: &BatchArgs, first_day: i64) -> anyhow::Result<LakeGenerator> {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let vendor_count = (args.customers / 5).max(10);
        let vendors = (0..vendor_count)
            .map(|_| {
                VendorId::parse(&format!(
                    "{:08x}-{:04x}-{:04x}",
                    rng.random::<u32>(),
                    rng.random::<u16>(),
                    rng.random::<u16>()
                ))
                .context("a generated vendor id")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let vendor_popularity = zipf_cdf(vendor_count, 0.9);
        let mut seen = std::collections::HashSet::new();
        let partitions = usize::try_from(args.partitions)?;
        let mut customers = Vec::with_capacity(args.customers);
        for _ in 0..args.customers {
            let id = loop {
                let candidate = rng.random_range(4_000_000_000_000_000_u64..5_000_000_000_000_000);
                if seen.insert(candidate) {
                    break candidate.to_string();
                }
            };
            let shops = rng.random_range(1..=5);
            customers.push(Customer {
                partition: (fnv1a(id.as_bytes()) % partitions as u64) as usize,
                id: CustomerId::parse(&id).context("a generated customer id")?,
                vendors: (0..shops)
                    .map(|_| pick(&vendor_popularity, &mut rng))
                    .collect(),
                vendor_cdf: zipf_cdf(shops, 1.0),
            });
        }
        let mut total = 0.0;
        let hour_cdf = HOURLY_ACTIVITY
            .iter()
            .map(|weight| {
                total += weight;
                total
            })
            .collect();
        Ok(LakeGenerator {
            rng,
            customer_cdf: zipf_cdf(customers.len(), args.customer_skew),
            customers,
            vendors,
            hour_cdf,
            first_day,
            late_share: args.late_percent / 100.0,
            duplicate_share: args.duplicate_percent / 100.0,
            burst_share: args.burst_percent / 100.0,
        })
    }

    /// The records ingest published on the UTC day starting at `day_start`: `events`
    /// distinct events (and their duplicates), in ingest-time order.
    fn day(&mut self, day_start: i64, events: usize, generated: &mut Generated) -> Vec<Record> {
        let day_end = day_start + DAY;
        let mut records = Vec::with_capacity(events + events / 50);
        let mut made = 0;
        while made < events {
            let customer = pick(&self.customer_cdf, &mut self.rng);
            let mut ingest = day_start + self.time_of_day();
            let burst = if self.rng.random_bool(self.burst_share) {
                self.rng.random_range(2..=6)
            } else {
                1
            };
            for index in 0..burst {
                if made == events {
                    break;
                }
                if index > 0 {
                    ingest += self.rng.random_range(5_000..600_000);
                    if ingest >= day_end {
                        break;
                    }
                }
                let event = self.event(customer, ingest, generated);
                made += 1;
                if self.rng.random_bool(self.duplicate_share) {
                    let again = (ingest + self.rng.random_range(1_000..60_000)).min(day_end - 1);
                    records.push(Record {
                        partition: self.customers[customer].partition,
                        event: TransactionEvent {
                            ingest_time: EventTime::from_millis(again).expect("a time"),
                            ..event.clone()
                        },
                    });
                    generated.duplicates += 1;
                }
                records.push(Record {
                    partition: self.customers[customer].partition,
                    event,
                });
            }
        }
        records.sort_by_key(|record| record.event.ingest_time.as_millis());
        generated.records += records.len() as u64;
        generated.events += made as u64;
        records
    }

    /// Milliseconds into the day, following the daily curve.
    fn time_of_day(&mut self) -> i64 {
        let hour = pick(&self.hour_cdf, &mut self.rng) as i64;
        hour * HOUR + self.rng.random_range(0..HOUR)
    }

    fn event(
        &mut self,
        customer: usize,
        ingest: i64,
        generated: &mut Generated,
    ) -> TransactionEvent {
        let rng = &mut self.rng;
        let late = rng.random_bool(self.late_share);
        let delay = if late {
            // Log-uniform from 1 minute to 48 hours.
            let low = (MINUTE as f64).ln();
            let high = ((48 * HOUR) as f64).ln();
            rng.random_range(low..high).exp() as i64
        } else {
            rng.random_range(20..3_000)
        };
        let mut ts = ingest - delay;
        if ts < self.first_day {
            // The lake starts on the first day: nothing before it.
            ts = ingest;
        } else if late {
            generated.late += 1;
        }
        if rng.random_bool(WHOLE_MINUTE_SHARE) {
            ts -= ts.rem_euclid(MINUTE);
        }
        if day_floor(ts) != day_floor(ingest) {
            generated.other_day += 1;
        }
        // Log-normal amount: median about €25, a long tail, at least one cent.
        let normal = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt()
            * (std::f64::consts::TAU * rng.random::<f64>()).cos();
        let amount = (((3.2 + 1.1 * normal).exp() * 100.0).round() as i64).clamp(1, 500_000);
        generated.amount_sum += i128::from(amount);
        let id = format!("{:032x}", rng.random::<u128>());
        let buyer = &self.customers[customer];
        let vendor = buyer.vendors[pick(&buyer.vendor_cdf, rng)];
        TransactionEvent {
            transaction_id: TransactionId::parse(&format!(
                "{}-{}-{}-{}-{}",
                &id[..8],
                &id[8..12],
                &id[12..16],
                &id[16..20],
                &id[20..]
            ))
            .expect("a UUID is a transaction id"),
            customer_id: buyer.id.clone(),
            vendor_id: self.vendors[vendor].clone(),
            amount: Money::from_minor(amount),
            currency: Currency::EUR,
            event_time: EventTime::from_millis(ts).expect("a time"),
            ingest_time: EventTime::from_millis(ingest).expect("a time"),
        }
    }
}

/// FNV-1a: the customer's partition, standing for Kafka's hash of the record key.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes records to the lake as the lake writer does: per partition, consecutive
/// offsets, chunks closed at `max_rows` records or `max_age` of ingest time, each
/// written with `Lake::write_chunk`.
struct ChunkWriter {
    lake: Lake,
    builders: Vec<ChunkBuilder>,
    /// Ingest time of each open chunk's first record.
    opened: Vec<Option<i64>>,
    next_offsets: Vec<i64>,
    max_rows: usize,
    max_age: i64,
    row_group_rows: usize,
    runtime: tokio::runtime::Handle,
}

impl ChunkWriter {
    fn new(
        lake: Lake,
        partitions: usize,
        settings: &Settings,
        chunk_minutes: u64,
        runtime: tokio::runtime::Handle,
    ) -> ChunkWriter {
        ChunkWriter {
            lake,
            builders: (0..partitions)
                .map(|partition| ChunkBuilder::new(partition as i32))
                .collect(),
            opened: vec![None; partitions],
            next_offsets: vec![0; partitions],
            max_rows: settings.lake.max_rows_per_file.max(1) as usize,
            max_age: i64::try_from(chunk_minutes)
                .unwrap_or(i64::MAX / MINUTE)
                .saturating_mul(MINUTE),
            row_group_rows: settings.lake.row_group_rows.max(1) as usize,
            runtime,
        }
    }

    fn push(&mut self, record: &Record, generated: &mut Generated) -> anyhow::Result<()> {
        let partition = record.partition;
        let ingest = record.event.ingest_time.as_millis();
        if self.opened[partition].is_some_and(|opened| ingest - opened >= self.max_age) {
            self.close(partition, generated)?;
        }
        let offset = self.next_offsets[partition];
        self.builders[partition].push(offset, &record.event)?;
        self.next_offsets[partition] += 1;
        self.opened[partition].get_or_insert(ingest);
        if self.builders[partition].rows() >= self.max_rows {
            self.close(partition, generated)?;
        }
        Ok(())
    }

    fn close(&mut self, partition: usize, generated: &mut Generated) -> anyhow::Result<()> {
        let builder = std::mem::replace(
            &mut self.builders[partition],
            ChunkBuilder::new(partition as i32),
        );
        self.opened[partition] = None;
        if let Some(chunk) = builder.finish()? {
            self.runtime
                .block_on(self.lake.write_chunk(&chunk, self.row_group_rows))
                .with_context(|| format!("write chunk {}", chunk.id()))?;
            generated.chunks += 1;
        }
        Ok(())
    }

    fn close_all(&mut self, generated: &mut Generated) -> anyhow::Result<()> {
        for partition in 0..self.builders.len() {
            self.close(partition, generated)?;
        }
        Ok(())
    }
}

/// The generator and the writer, kept from the full lake to the night.
struct LakeMaker {
    generator: LakeGenerator,
    writer: ChunkWriter,
}

impl LakeMaker {
    /// Writes the records ingested on days `from..to` (counted from the first day),
    /// `per_day(day)` events each; returns what it made.
    fn write_days(
        &mut self,
        first_day: i64,
        days: std::ops::Range<u32>,
        per_day: impl Fn(u32) -> usize,
    ) -> anyhow::Result<Generated> {
        let mut generated = Generated::default();
        for day in days {
            let start = first_day + i64::from(day) * DAY;
            let records = self.generator.day(start, per_day(day), &mut generated);
            for record in &records {
                self.writer.push(record, &mut generated)?;
            }
            // The lake is complete at every midnight: each night finds every chunk closed.
            self.writer.close_all(&mut generated)?;
        }
        Ok(generated)
    }
}

// ---------------------------------------------------------------------------------------
// Measured processes
// ---------------------------------------------------------------------------------------

/// A process run to its end.
struct Finished {
    wall: Duration,
    /// `ru_maxrss` of `wait4`: the process's peak resident set.
    max_rss_bytes: u64,
    /// User and system CPU time.
    cpu: Duration,
    /// Its exit code (`None`: killed by a signal).
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The machine while it ran.
    usage: CpuUsage,
    /// Cores the PostgreSQL server (every backend, for any client) used on average.
    postgres_cores: f64,
}

impl Finished {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Cores the process itself used on average.
    fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Cores everything else used on average: the machine's busy time without the
    /// process's and the PostgreSQL server's.
    fn other_cores(&self) -> f64 {
        (self.usage.other_cores
            + self.usage.bench_cores
            + self.usage.kafka_cores
            + self.usage.redis_cores
            - self.cores()
            - self.postgres_cores)
            .max(0.0)
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{what} exited with {}; its output ends with:\n{}\n{}",
            self.code
                .map_or("a signal".to_owned(), |code| format!("status {code}")),
            tail(&self.stdout, 20),
            tail(&self.stderr, 20)
        )
    }
}

/// Runs `command` to its end, its output in files under `dir` named after `name`;
/// measures the wall time from spawn to exit, the peak RSS and CPU time (`wait4`), and
/// the machine meanwhile. Killed after `timeout`.
async fn run_measured(
    name: &str,
    mut command: Command,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<Finished> {
    let stdout_path = dir.join(format!("{name}.stdout"));
    let stderr_path = dir.join(format!("{name}.stderr"));
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?);
    let pids = Pids::find(0, [ThreadMatch::None, ThreadMatch::None]);
    let before = CpuSnapshot::take(&pids);
    let postgres_before = postgres_ticks();
    let started = Instant::now();
    // The child is reaped by wait4 below, not by `Child` (dropping it neither waits nor
    // kills).
    let pid = command
        .spawn()
        .with_context(|| format!("start {name} ({:?})", command.get_program()))?
        .id();
    let pid = libc::pid_t::try_from(pid)?;
    let waited = tokio::task::spawn_blocking(move || wait4(pid));
    let waited = match tokio::time::timeout(timeout, waited).await {
        Ok(waited) => waited??,
        Err(_) => {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("{name} did not finish within {timeout:?}: killed");
        }
    };
    let wall = started.elapsed();
    let usage = before.usage_until(&CpuSnapshot::take(&pids));
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let postgres_cores = postgres_ticks().saturating_sub(postgres_before) as f64
        / ticks_per_second
        / wall.as_secs_f64().max(1e-9);
    let (status, rusage) = waited;
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let seconds = |time: libc::timeval| {
        Duration::from_secs(time.tv_sec.max(0) as u64)
            + Duration::from_micros(time.tv_usec.max(0) as u64)
    };
    Ok(Finished {
        wall,
        max_rss_bytes: (rusage.ru_maxrss.max(0) as u64) * 1024,
        cpu: seconds(rusage.ru_utime) + seconds(rusage.ru_stime),
        code,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        usage,
        postgres_cores,
    })
}

/// CPU time of the PostgreSQL server in jiffies: utime + stime of every `postgres`
/// process, plus cutime + cstime, where the postmaster keeps the time of the backends
/// it has reaped (a connection that ended during a phase still counts).
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == "postgres") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the command name: utime, stime, cutime, cstime are 11 to 14.
        let Some(rest) = stat.rfind(')').map(|end| &stat[end + 2..]) else {
            continue;
        };
        ticks += rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|field| field.parse::<i64>().ok())
            .map(|value| value.max(0) as u64)
            .sum::<u64>();
    }
    ticks
}

/// Waits for the child `pid` to end (blocking): its wait status and resource usage.
fn wait4(pid: libc::pid_t) -> anyhow::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4(2) with valid pointers to a status and a rusage we own.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if waited == pid {
            return Ok((status, usage));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error).context("wait4");
        }
    }
}

/// Runs psql (not measured) and returns what it printed; fails with its stderr.
async fn psql(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("psql")
        .arg("-X")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run psql")?;
    if !output.status.success() {
        bail!(
            "psql {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Writes out what earlier work left dirty before a measured process starts: the
/// server's buffers (`CHECKPOINT`, which needs the `pg_checkpoint` role; `deploy/dev`
/// grants it) and the kernel's dirty pages (`sync`). Otherwise a process is measured while
/// the one before it is still being written out (the `\copy` reference's 11 million rows,
/// the night's files) and through a checkpoint it did not cause. Returns what could not
/// be flushed, for the report; the benchmark goes on without it.
async fn flush_writes(admin_url: &str) -> Option<String> {
    let checkpoint = psql(admin_url, &["-qAt", "-c", "CHECKPOINT"]).await.err();
    let sync = match tokio::process::Command::new("sync").status().await {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("sync exited with {status}")),
        Err(error) => Some(format!("sync could not run: {error}")),
    };
    let problems: Vec<String> = checkpoint
        .map(|error| format!("{error:#}").trim().to_owned())
        .into_iter()
        .chain(sync)
        .collect();
    if problems.is_empty() {
        return None;
    }
    let problem = problems.join("; ");
    progress(format!(
        "could not flush before a measured process: {problem}"
    ));
    Some(problem)
}

// ---------------------------------------------------------------------------------------
// The batch layer's runs
// ---------------------------------------------------------------------------------------

/// What a batch run logged with its result ("batch run succeeded") and printed.
#[derive(Clone, Copy, Default)]
struct RunLog {
    rows: u64,
    input_files: u64,
    days: u64,
    read: Duration,
    compute: Duration,
    copy: Duration,
    commit: Duration,
}

impl RunLog {
    fn parse(stdout: &str) -> anyhow::Result<RunLog> {
        let result = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["message"] == "batch run succeeded")
            .context("the run did not log `batch run succeeded`")?;
        let number = |field: &str| -> anyhow::Result<u64> {
            result[field]
                .as_u64()
                .with_context(|| format!("`batch run succeeded` has no number {field}"))
        };
        let millis = |field: &str| number(field).map(Duration::from_millis);
        let days = stdout
            .lines()
            .find(|line| line.starts_with("batch run ") && line.contains(" published: "))
            .and_then(|line| {
                line.split(", ")
                    .find_map(|part| part.strip_suffix(" day(s) recomputed"))
            })
            .and_then(|days| days.parse().ok())
            .context("the run did not print how many days it recomputed")?;
        Ok(RunLog {
            rows: number("rows")?,
            input_files: number("input_files")?,
            days,
            read: millis("read_ms")?,
            compute: millis("compute_ms")?,
            copy: millis("copy_ms")?,
            commit: millis("commit_ms")?,
        })
    }

    /// Its time in Postgres: deleting, copying, merging, deriving, committing.
    fn load(&self) -> Duration {
        self.copy + self.commit
    }
}

/// One measured batch run.
struct BatchRun {
    process: Finished,
    log: RunLog,
    watermark: i64,
}

async fn batch_run(
    stack: &BatchStack,
    settings: &Settings,
    tools: &Tools,
    args: &BatchArgs,
    name: &str,
    watermark: i64,
    full: bool,
) -> anyhow::Result<BatchRun> {
    let mut command = stack.batch_command(settings, &tools.batch_bin, &stack.database);
    command.args(["run", "--as-of", &rfc3339(watermark)]);
    if full {
        command.arg("--full");
    }
    progress(format!(
        "{name}: batch-layer run --as-of {}{}",
        rfc3339(watermark),
        if full { " --full" } else { "" }
    ));
    let process = run_measured(
        name,
        command,
        &stack.dir,
        Duration::from_secs(args.timeout_minutes * 60),
    )
    .await?;
    if !process.ok() {
        return Err(process.failure("batch-layer run"));
    }
    let log = RunLog::parse(&process.stdout)?;
    progress(format!(
        "{name}: {:.1} s, peak RSS {}, {} rows written, {} day(s)",
        process.wall.as_secs_f64(),
        mib(process.max_rss_bytes),
        fmt_int(log.rows),
        log.days
    ));
    Ok(BatchRun {
        process,
        log,
        watermark,
    })
}

// ---------------------------------------------------------------------------------------
// DuckDB: the same tables from the same files
// ---------------------------------------------------------------------------------------

/// The batch layer's tables in DuckDB SQL (services/batch-layer/src/compute.rs,
/// store.rs and migrations/0002_batch_views.sql): events deduplicated by transaction id
/// (the first by partition and offset stands) and cut at `ts <= T_b`; hours and days
/// UTC; the day's peak is the largest sum over `(t - 30 min, t]` (a RANGE frame of
/// 1,799,999 ms before t), ties to the larger count, then the earliest t, for t at the
/// customer's events of the day; vendors with their first use; baselines over the 30
/// days ending with T_b's day: the mean and population standard deviation of the daily
/// sums (days without spending count as 0) rounded half up to 4 decimals (the square
/// root in integers, as the batch layer's tests model it), and the 95th percentile
/// (nearest rank, as Postgres's `percentile_disc`) and maximum of the daily peaks.
///
/// Prints JSON: the seconds of each step, and per table its row count, two sums and a
/// checksum (the sum of the first 60 bits of the md5 of each row's text), computed the
/// same way in Postgres.
const DUCKDB_SCRIPT: &str = r#"
import duckdb, json, sys, time
root, watermark, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET enable_progress_bar = false")
if threads > 0:
    con.execute(f"SET threads = {threads}")
steps = []
def step(name, sql):
    started = time.perf_counter()
    con.execute(sql)
    steps.append([name, time.perf_counter() - started])
step("read the files, deduplicate, cut at T_b", f"""
    CREATE TEMP TABLE kept AS
    SELECT customer_id, vendor_id, amount_minor, epoch_ms(event_time) AS ts
    FROM read_parquet('{root}/transactions/*/*.parquet', hive_partitioning = true)
    WHERE epoch_ms(event_time) <= {watermark}
    QUALIFY row_number() OVER (PARTITION BY transaction_id
                               ORDER BY kafka_partition, kafka_offset) = 1""")
step("hourly", """
    CREATE TEMP TABLE hourly AS
    SELECT customer_id, ts // 3600000 * 3600000 AS hour, sum(amount_minor)::BIGINT AS sum_minor,
           count(*) AS count, max(amount_minor) AS max_minor,
           count(DISTINCT vendor_id) AS distinct_vendors
    FROM kept GROUP BY ALL""")
step("daily, with the peak 30-minute window", """
    CREATE TEMP TABLE daily AS
    WITH windows AS (
        SELECT customer_id, ts,
               sum(amount_minor) OVER w AS window_sum, count(*) OVER w AS window_count
        FROM kept
        WINDOW w AS (PARTITION BY customer_id ORDER BY ts
                     RANGE BETWEEN 1799999 PRECEDING AND CURRENT ROW)),
    peaks AS (
        SELECT customer_id, ts // 86400000 AS day_number, window_sum, window_count, ts
        FROM windows
        QUALIFY row_number() OVER (PARTITION BY customer_id, ts // 86400000
                                   ORDER BY window_sum DESC, window_count DESC, ts) = 1),
    days AS (
        SELECT customer_id, ts // 86400000 AS day_number, sum(amount_minor) AS s,
               count(*) AS c, max(amount_minor) AS m, count(DISTINCT vendor_id) AS v
        FROM kept GROUP BY ALL)
    SELECT d.customer_id, d.day_number, epoch_ms(d.day_number * 86400000)::DATE AS day,
           d.s::BIGINT AS sum_minor, d.c AS count, d.m AS max_minor, d.v AS distinct_vendors,
           p.window_sum::BIGINT AS peak_sum, p.window_count AS peak_count, p.ts AS peak_end
    FROM days d JOIN peaks p USING (customer_id, day_number)""")
step("vendors", """
    CREATE TEMP TABLE vendors AS
    SELECT customer_id, vendor_id, min(ts) AS first_seen FROM kept GROUP BY ALL""")
step("baselines", f"""
    CREATE TEMP TABLE baselines AS
    WITH recent AS (
        SELECT customer_id, sum_minor::HUGEINT AS s, peak_sum FROM daily
        WHERE day_number > {watermark // 86400000} - 30
          AND day_number <= {watermark // 86400000}),
    sums AS (
        SELECT customer_id, count(*) AS active_days, sum(s) AS s1, sum(s * s) AS s2,
               list_sort(list(peak_sum)) AS peaks, max(peak_sum) AS max_peak
        FROM recent GROUP BY customer_id),
    squares AS (
        SELECT *, (30 * s2 - s1 * s1) * 100000000 AS m FROM sums),
    roots AS (
        SELECT *, CAST(floor(sqrt(CAST(m AS DOUBLE))) AS HUGEINT) AS r0 FROM squares)
    SELECT customer_id, {watermark} AS as_of, active_days,
           (s1 * 10000 + 15) // 30 AS mean4,
           (r0 - CASE WHEN r0 * r0 > m THEN 1 ELSE 0 END
               + CASE WHEN (r0 + 1) * (r0 + 1) <= m THEN 1 ELSE 0 END + 15) // 30 AS stddev4,
           peaks[CAST(ceil(0.95::DOUBLE * active_days) AS BIGINT)] AS p95, max_peak
    FROM roots""")
seconds = sum(s for _, s in steps)
def summary(table, text, a, b):
    row = con.execute(f"""
        SELECT count(*), coalesce(sum({a}), 0), coalesce(sum({b}), 0),
               coalesce(sum(('0x' || substr(md5(concat_ws('|', {text})), 1, 15))::BIGINT), 0)
        FROM {table}""").fetchone()
    return [str(v) for v in row]
tables = {
    "batch_hourly": summary("hourly",
        "customer_id, hour, strftime(epoch_ms(hour)::DATE, '%Y-%m-%d'), sum_minor, count, "
        "max_minor, distinct_vendors", "sum_minor", "count"),
    "batch_daily": summary("daily",
        "customer_id, strftime(day, '%Y-%m-%d'), sum_minor, count, max_minor, "
        "distinct_vendors, peak_sum, peak_count, peak_end", "sum_minor", "count"),
    "batch_vendors": summary("vendors", "customer_id, vendor_id, first_seen",
        "1", "first_seen"),
    "batch_baselines": summary("baselines",
        "customer_id, as_of, active_days, mean4, stddev4, p95, max_peak",
        "active_days", "max_peak"),
}
threads_used = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(json.dumps({"seconds": seconds, "steps": steps, "threads": int(threads_used),
                  "tables": tables}))
"#;

/// The same summaries of the batch layer's tables, in Postgres.
const POSTGRES_SUMMARY: &str = "
SELECT 'batch_hourly', count(*), coalesce(sum(sum_minor), 0), coalesce(sum(count), 0),
       coalesce(sum(('x' || substr(md5(concat_ws('|', customer_id,
           (extract(epoch FROM hour) * 1000)::bigint, to_char(event_date, 'YYYY-MM-DD'),
           sum_minor, count, max_minor, distinct_vendors)), 1, 15))::bit(60)::bigint), 0)
FROM batch_hourly
UNION ALL
SELECT 'batch_daily', count(*), coalesce(sum(sum_minor), 0), coalesce(sum(count), 0),
       coalesce(sum(('x' || substr(md5(concat_ws('|', customer_id,
           to_char(day, 'YYYY-MM-DD'), sum_minor, count, max_minor, distinct_vendors,
           peak_30m_sum_minor, peak_30m_count,
           (extract(epoch FROM peak_30m_end) * 1000)::bigint)), 1, 15))::bit(60)::bigint), 0)
FROM batch_daily
UNION ALL
SELECT 'batch_vendors', count(*), count(*),
       coalesce(sum((extract(epoch FROM first_seen) * 1000)::bigint), 0),
       coalesce(sum(('x' || substr(md5(concat_ws('|', customer_id, vendor_id,
           (extract(epoch FROM first_seen) * 1000)::bigint)), 1, 15))::bit(60)::bigint), 0)
FROM batch_vendors
UNION ALL
SELECT 'batch_baselines', count(*), coalesce(sum(active_days), 0),
       coalesce(sum(max_peak_30m_minor), 0),
       coalesce(sum(('x' || substr(md5(concat_ws('|', customer_id,
           (extract(epoch FROM as_of) * 1000)::bigint, active_days,
           (mean_daily_minor * 10000)::bigint, (stddev_daily_minor * 10000)::bigint,
           p95_peak_30m_minor, max_peak_30m_minor)), 1, 15))::bit(60)::bigint), 0)
FROM batch_baselines
";

/// What the summaries' two sums are, per table.
fn summary_sums(table: &str) -> (&'static str, &'static str) {
    match table {
        "batch_hourly" | "batch_daily" => ("sum of sum_minor", "sum of count"),
        "batch_vendors" => ("rows", "sum of first_seen (ms)"),
        _ => ("sum of active_days", "sum of max_peak_30m_minor"),
    }
}

/// A table's row count, two sums and checksum, as decimal text.
type Summary = [String; 4];

/// DuckDB's run over the lake.
struct DuckRun {
    process: Finished,
    /// The SQL's time, measured in the script (without starting Python and DuckDB).
    seconds: f64,
    steps: Vec<(String, f64)>,
    threads: u64,
    tables: BTreeMap<String, Summary>,
}

async fn duckdb_run(
    stack: &BatchStack,
    tools: &Tools,
    args: &BatchArgs,
    name: &str,
    watermark: i64,
) -> anyhow::Result<DuckRun> {
    let mut command = Command::new(&tools.python);
    command
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .arg(stack.lake_root.display().to_string())
        .arg(watermark.to_string())
        .arg(args.duckdb_threads.to_string());
    progress(format!(
        "{name}: DuckDB computes the tables as of {}",
        rfc3339(watermark)
    ));
    let process = run_measured(
        name,
        command,
        &stack.dir,
        Duration::from_secs(args.timeout_minutes * 60),
    )
    .await?;
    if !process.ok() {
        return Err(process.failure("DuckDB"));
    }
    // The answer is the last line (anything DuckDB may print comes before it).
    let answer = process
        .stdout
        .lines()
        .rfind(|line| !line.trim().is_empty())
        .unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(answer).with_context(|| {
        let start: String = answer.chars().take(300).collect();
        format!("DuckDB's answer is not JSON: {start}")
    })?;
    let seconds = value["seconds"].as_f64().context("no seconds")?;
    let steps = value["steps"]
        .as_array()
        .context("no steps")?
        .iter()
        .map(|step| {
            (
                step[0].as_str().unwrap_or_default().to_owned(),
                step[1].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    let mut tables = BTreeMap::new();
    for table in TABLES {
        let row = value["tables"][table]
            .as_array()
            .with_context(|| format!("no summary of {table}"))?;
        let text = |index: usize| {
            row.get(index)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        tables.insert(table.to_owned(), [text(0), text(1), text(2), text(3)]);
    }
    progress(format!(
        "{name}: {seconds:.1} s of SQL ({:.1} s with Python's start), peak RSS {}",
        process.wall.as_secs_f64(),
        mib(process.max_rss_bytes)
    ));
    Ok(DuckRun {
        process,
        seconds,
        steps,
        threads: value["threads"].as_u64().unwrap_or(0),
        tables,
    })
}

async fn postgres_summary(url: &str) -> anyhow::Result<BTreeMap<String, Summary>> {
    let output = psql(url, &["-qAt", "-F", "|", "-c", POSTGRES_SUMMARY]).await?;
    let mut tables = BTreeMap::new();
    for line in output.lines().filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split('|').collect();
        let [table, rows, a, b, checksum] = fields[..] else {
            bail!("unexpected summary line from Postgres: {line}");
        };
        tables.insert(
            table.to_owned(),
            [
                rows.to_owned(),
                a.to_owned(),
                b.to_owned(),
                checksum.to_owned(),
            ],
        );
    }
    Ok(tables)
}

/// The batch layer's tables against DuckDB's and against the generated events.
struct Comparison {
    label: &'static str,
    postgres: BTreeMap<String, Summary>,
    duckdb: BTreeMap<String, Summary>,
    /// Events and their amounts' sum with `ts <= T_b`, as generated.
    expected_events: u64,
    expected_amount: i128,
}

impl Comparison {
    fn mismatches(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for table in TABLES {
            if self.postgres.get(table) != self.duckdb.get(table) {
                problems.push(format!("{}: {table} differs from DuckDB's", self.label));
            }
        }
        let daily = self.postgres.get("batch_daily");
        let (amount, events) = daily
            .map(|summary| (summary[1].clone(), summary[2].clone()))
            .unwrap_or_default();
        if amount != self.expected_amount.to_string() || events != self.expected_events.to_string()
        {
            problems.push(format!(
                "{}: batch_daily holds {events} events summing to {amount}; the lake holds {} \
                 events summing to {}",
                self.label, self.expected_events, self.expected_amount
            ));
        }
        problems
    }
}

// ---------------------------------------------------------------------------------------
// psql \copy: the reference of the load
// ---------------------------------------------------------------------------------------

struct CopyRun {
    process: Finished,
    rows: BTreeMap<String, u64>,
    csv_bytes: u64,
}

impl CopyRun {
    fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }
}

/// Exports the batch layer's tables to CSV (not timed), makes a fresh database with the
/// same schema (`batch-layer migrate`), and times `psql \copy` loading every table in
/// one transaction, as the batch layer publishes, after creating the same day partitions.
async fn copy_reference(
    stack: &BatchStack,
    settings: &Settings,
    tools: &Tools,
    args: &BatchArgs,
    pids: &Pids,
    unflushed: &mut Vec<String>,
) -> anyhow::Result<CopyRun> {
    let csv_dir = stack.dir.join("csv");
    std::fs::create_dir_all(&csv_dir)?;
    let mut script = String::from("BEGIN;\n");
    let mut csv_bytes = 0;
    progress("copy: exporting the batch layer's tables to CSV");
    // The day partitions the batch layer made (`migrations/0007`), made the plain way,
    // with their indexes, before the rows are copied into their tables.
    let partitions = psql(
        &stack.database,
        &[
            "-qAt",
            "-c",
            "SELECT format('CREATE TABLE %I PARTITION OF %s %s;', c.relname, \
             i.inhparent::regclass, pg_get_expr(c.relpartbound, c.oid)) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent IN ('batch_hourly'::regclass, 'batch_daily'::regclass, \
                                   'batch_baselines'::regclass) \
             ORDER BY c.relname",
        ],
    )
    .await?;
    script.push_str(partitions.trim_end());
    script.push('\n');
    for table in TABLES {
        let file = csv_dir.join(format!("{table}.csv"));
        psql(
            &stack.database,
            &[
                "-q",
                "-c",
                &format!(
                    "\\copy (SELECT * FROM {table}) TO '{}' (FORMAT csv)",
                    file.display()
                ),
            ],
        )
        .await?;
        csv_bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        writeln!(
            script,
            "\\copy {table} FROM '{}' (FORMAT csv)",
            file.display()
        )?;
    }
    script.push_str("COMMIT;\n");
    let script_path = stack.dir.join("copy.sql");
    std::fs::write(&script_path, script)?;

    let url = stack.copy_database().await;
    let mut migrate = stack.batch_command(settings, &tools.batch_bin, &url);
    migrate.arg("migrate");
    let migrated = run_measured("migrate", migrate, &stack.dir, Duration::from_secs(300)).await?;
    if !migrated.ok() {
        return Err(migrated.failure("batch-layer migrate"));
    }

    unflushed.extend(flush_writes(&stack.admin_url).await);
    wait_for_quiet(pids, args.quiet_wait_seconds).await;
    progress(format!(
        "copy: psql \\copy loads {} of CSV into {}",
        mib(csv_bytes),
        database_name(&url)
    ));
    let mut command = Command::new("psql");
    command
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script_path)
        .arg(&url);
    let process = run_measured(
        "copy",
        command,
        &stack.dir,
        Duration::from_secs(args.timeout_minutes * 60),
    )
    .await?;
    if !process.ok() {
        return Err(process.failure("psql \\copy"));
    }
    let mut rows = BTreeMap::new();
    for table in TABLES {
        let count = psql(
            &url,
            &["-qAt", "-c", &format!("SELECT count(*) FROM {table}")],
        )
        .await?;
        rows.insert(
            table.to_owned(),
            count.trim().parse().context("a row count")?,
        );
    }
    progress(format!(
        "copy: {} rows in {:.1} s",
        fmt_int(rows.values().sum()),
        process.wall.as_secs_f64()
    ));
    Ok(CopyRun {
        process,
        rows,
        csv_bytes,
    })
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

struct Measured {
    lake: Generated,
    lake_files: (usize, u64),
    lake_seconds: f64,
    night: Generated,
    night_files: (usize, u64),
    full: BatchRun,
    duck: DuckRun,
    full_check: Comparison,
    copy: CopyRun,
    incremental: BatchRun,
    duck_night: DuckRun,
    night_check: Comparison,
    background: Vec<CpuUsage>,
    /// What could not be flushed before a measured process ([`flush_writes`]).
    unflushed: Vec<String>,
}

impl Measured {
    fn mismatches(&self) -> Vec<String> {
        let mut problems = self.full_check.mismatches();
        problems.extend(self.night_check.mismatches());
        if self.copy.total_rows() != self.full.log.rows {
            problems.push(format!(
                "\\copy loaded {} rows, the batch layer wrote {}",
                self.copy.total_rows(),
                self.full.log.rows
            ));
        }
        problems
    }
}

async fn measure(
    args: &BatchArgs,
    settings: &Settings,
    stack: &BatchStack,
    tools: &Tools,
    plan: &Plan,
) -> anyhow::Result<Measured> {
    let days = args.days;
    let events = args.events;
    let per_day = move |day: u32| -> usize {
        let day = day as usize;
        let days = days as usize;
        events * (day + 1) / days - events * day / days
    };
    progress(format!(
        "writing the lake: {} events over {} days from {} ({} customers) to {}",
        fmt_int(events as u64),
        days,
        date(plan.first_day),
        fmt_int(args.customers as u64),
        stack.lake_root.display()
    ));
    let started = Instant::now();
    let maker = {
        let lake = Lake::open(&LakeRoot::Local(stack.lake_root.clone()))?;
        let generator = LakeGenerator::new(args, plan.first_day)?;
        let writer = ChunkWriter::new(
            lake,
            usize::try_from(args.partitions)?,
            settings,
            args.chunk_minutes,
            tokio::runtime::Handle::current(),
        );
        LakeMaker { generator, writer }
    };
    let first_day = plan.first_day;
    let (mut maker, lake) = tokio::task::spawn_blocking(move || {
        let mut maker = maker;
        let generated = maker.write_days(first_day, 0..days, per_day)?;
        anyhow::Ok((maker, generated))
    })
    .await??;
    let lake_seconds = started.elapsed().as_secs_f64();
    let lake_files = parquet_files(&stack.lake_root);
    progress(format!(
        "lake: {} records in {} files ({}) in {lake_seconds:.0} s",
        fmt_int(lake.records),
        fmt_int(lake_files.0 as u64),
        mib(lake_files.1)
    ));

    let pids = Pids::find(0, [ThreadMatch::None, ThreadMatch::None]);
    let mut background = Vec::new();
    let mut unflushed = Vec::new();
    unflushed.extend(flush_writes(&stack.admin_url).await);
    background.push(wait_for_quiet(&pids, args.quiet_wait_seconds).await);
    let full = batch_run(
        stack,
        settings,
        tools,
        args,
        "full",
        plan.full_watermark,
        true,
    )
    .await?;
    unflushed.extend(flush_writes(&stack.admin_url).await);
    background.push(wait_for_quiet(&pids, args.quiet_wait_seconds).await);
    let duck = duckdb_run(stack, tools, args, "duckdb", plan.full_watermark).await?;
    let full_check = Comparison {
        label: "full recompute",
        postgres: postgres_summary(&stack.database).await?,
        duckdb: duck.tables.clone(),
        expected_events: lake.events,
        expected_amount: lake.amount_sum,
    };
    for problem in full_check.mismatches() {
        progress(format!("MISMATCH: {problem}"));
    }

    let copy = copy_reference(stack, settings, tools, args, &pids, &mut unflushed).await?;

    progress("writing the night's files: one more day");
    let night_day = days;
    let (night, night_files) = {
        let root = stack.lake_root.clone();
        tokio::task::spawn_blocking(move || {
            let night = maker.write_days(first_day, night_day..night_day + 1, |_| {
                events / days as usize
            })?;
            anyhow::Ok((night, parquet_files(&root)))
        })
        .await??
    };
    let mut cumulative = lake;
    cumulative.add(&night);
    unflushed.extend(flush_writes(&stack.admin_url).await);
    background.push(wait_for_quiet(&pids, args.quiet_wait_seconds).await);
    let incremental = batch_run(
        stack,
        settings,
        tools,
        args,
        "night",
        plan.night_watermark,
        false,
    )
    .await?;
    unflushed.extend(flush_writes(&stack.admin_url).await);
    background.push(wait_for_quiet(&pids, args.quiet_wait_seconds).await);
    let duck_night = duckdb_run(stack, tools, args, "duckdb-night", plan.night_watermark).await?;
    let night_check = Comparison {
        label: "incremental night",
        postgres: postgres_summary(&stack.database).await?,
        duckdb: duck_night.tables.clone(),
        expected_events: cumulative.events,
        expected_amount: cumulative.amount_sum,
    };
    for problem in night_check.mismatches() {
        progress(format!("MISMATCH: {problem}"));
    }
    Ok(Measured {
        lake,
        lake_files,
        lake_seconds,
        night,
        night_files: (
            night_files.0.saturating_sub(lake_files.0),
            night_files.1.saturating_sub(lake_files.1),
        ),
        full,
        duck,
        full_check,
        copy,
        incremental,
        duck_night,
        night_check,
        background,
        unflushed: {
            unflushed.dedup();
            unflushed
        },
    })
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn mib(bytes: u64) -> String {
    let mib = bytes as f64 / 1024.0 / 1024.0;
    if mib < 10.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{mib:.0} MiB")
    }
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn met(ok: bool) -> &'static str {
    if ok { "pass" } else { "**miss**" }
}

fn render_report(
    args: &BatchArgs,
    settings: &Settings,
    tools: &Tools,
    plan: &Plan,
    m: &Measured,
    cleanup: &[String],
) -> String {
    let machine = Machine::describe();
    let now = Utc::now();
    let mut r = String::new();
    let _ = writeln!(r, "# Batch layer benchmark\n");
    let _ = writeln!(
        r,
        "{}\n",
        run_line(
            &machine,
            now,
            "PostgreSQL (and Kafka, Redis, RabbitMQ) on the same machine as the batch layer, \
             DuckDB and this program",
            "fraud-bench batch"
        )
    );

    // The lake.
    let _ = writeln!(r, "## The lake\n");
    let _ = writeln!(r, "| | full recompute | the night adds |\n|---|---|---|");
    let _ = writeln!(
        r,
        "| event dates | {} to {} ({} days) | {} |",
        date(plan.first_day),
        date(plan.full_watermark - 1),
        args.days,
        date(plan.full_watermark)
    );
    let _ = writeln!(
        r,
        "| events (distinct transactions) | {} | {} |",
        fmt_int(m.lake.events),
        fmt_int(m.night.events)
    );
    let _ = writeln!(
        r,
        "| duplicate records (a transaction published twice) | {} | {} |",
        fmt_int(m.lake.duplicates),
        fmt_int(m.night.duplicates)
    );
    let _ = writeln!(
        r,
        "| late events (ingested 1 min to 48 h after their time) | {} | {} |",
        fmt_int(m.lake.late),
        fmt_int(m.night.late)
    );
    let _ = writeln!(
        r,
        "| events ingested on a later day than their date (files in older dates) | {} | {} |",
        fmt_int(m.lake.other_day),
        fmt_int(m.night.other_day)
    );
    let _ = writeln!(
        r,
        "| chunks / Parquet files / bytes | {} / {} / {} | {} / {} / {} |",
        fmt_int(m.lake.chunks),
        fmt_int(m.lake_files.0 as u64),
        mib(m.lake_files.1),
        fmt_int(m.night.chunks),
        fmt_int(m.night_files.0 as u64),
        mib(m.night_files.1)
    );
    let _ = writeln!(
        r,
        "\n{} customers (16-digit ids, Zipf popularity with exponent {}), each with 1–5 \
         vendors out of {}; amounts log-normal around €25 (cents, at most €5,000); times \
         of day following a daily curve; {}% of events start a burst of 1–5 more; {}% \
         arrive late; {}% are published twice; 5% stamped on a whole minute. Records are \
         keyed by customer into {} partitions in ingest-time order and written with \
         `fraud-lake` as the lake writer writes them: a chunk per partition closes at {} \
         records (`lake.max_rows_per_file`), after {} min of ingest time, and at every \
         midnight; row groups of {} rows. Seed {}; written in {:.0} s (not timed). The \
         batch layer's completeness check reads an empty topic of {} partitions of the \
         benchmark's own.\n",
        fmt_int(args.customers as u64),
        args.customer_skew,
        fmt_int((args.customers / 5).max(10) as u64),
        args.burst_percent,
        args.late_percent,
        args.duplicate_percent,
        args.partitions,
        fmt_int(settings.lake.max_rows_per_file as u64),
        args.chunk_minutes,
        fmt_int(settings.lake.row_group_rows as u64),
        args.seed,
        m.lake_seconds,
        args.partitions
    );

    // The figures and the targets.
    let full_wall = m.full.process.wall.as_secs_f64();
    let duck_seconds = m.duck.seconds;
    let full_ratio = full_wall / duck_seconds.max(1e-9);
    let load = m.full.log.load().as_secs_f64();
    let load_rate = m.full.log.rows as f64 / load.max(1e-9);
    let copy_seconds = m.copy.process.wall.as_secs_f64();
    let copy_rate = m.copy.total_rows() as f64 / copy_seconds.max(1e-9);
    let load_ratio = load_rate / copy_rate.max(1e-9);
    let night_wall = m.incremental.process.wall.as_secs_f64();
    let night_ratio = night_wall / full_wall.max(1e-9);
    let exact = m.mismatches().is_empty();
    let _ = writeln!(r, "## Figures and targets\n");
    let _ = writeln!(
        r,
        "| figure | batch layer | reference | ratio | target | result |\n|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        r,
        "| full recompute: wall time (`run --full`, spawn to exit) | {} | DuckDB, same tables from the same files: {:.1} s | {:.2}× | ≤ {}× | {} |",
        secs(m.full.process.wall),
        duck_seconds,
        full_ratio,
        FULL_VS_DUCKDB_TARGET,
        met(full_ratio <= FULL_VS_DUCKDB_TARGET && exact)
    );
    let _ = writeln!(
        r,
        "| full recompute: peak memory (RSS) | {} | DuckDB's: {} | — | ≤ {:.0} GiB | {} |",
        mib(m.full.process.max_rss_bytes),
        mib(m.duck.process.max_rss_bytes),
        MEMORY_TARGET_BYTES as f64 / GIB,
        met(m.full.process.max_rss_bytes <= MEMORY_TARGET_BYTES)
    );
    let _ = writeln!(
        r,
        "| Postgres load: rows written ÷ time in Postgres | {} rows/s ({} rows in {:.1} s) | `psql \\copy` of the same rows: {} rows/s ({:.1} s) | {:.0}% | ≥ {:.0}% | {} |",
        fmt_rate(load_rate),
        fmt_int(m.full.log.rows),
        load,
        fmt_rate(copy_rate),
        copy_seconds,
        load_ratio * 100.0,
        LOAD_VS_COPY_TARGET * 100.0,
        met(load_ratio >= LOAD_VS_COPY_TARGET)
    );
    let _ = writeln!(
        r,
        "| incremental night: wall time (`run`, one more day) | {} ({} day(s) recomputed) | the full recompute: {:.1} s | {:.1}% | ≤ {:.0}% | {} |",
        secs(m.incremental.process.wall),
        m.incremental.log.days,
        full_wall,
        night_ratio * 100.0,
        NIGHT_VS_FULL_TARGET * 100.0,
        met(night_ratio <= NIGHT_VS_FULL_TARGET && exact)
    );
    let _ = writeln!(
        r,
        "| incremental night: peak memory (RSS) | {} | — | — | ≤ {:.0} GiB | {} |",
        mib(m.incremental.process.max_rss_bytes),
        MEMORY_TARGET_BYTES as f64 / GIB,
        met(m.incremental.process.max_rss_bytes <= MEMORY_TARGET_BYTES)
    );
    let _ = writeln!(
        r,
        "\nWall time runs from spawning the process to its exit (start-up, migrations, \
         listing the lake and the completeness check included). Peak memory is \
         `ru_maxrss` of the exited process from `wait4(2)`. DuckDB {} ({} thread(s)) \
         runs its SQL in a Python of its own; its figure is the SQL's time measured \
         inside the script, {:.1} s of the process's {:.1} s (starting Python and \
         importing DuckDB are left out). The tables are equal only when DuckDB's and the \
         batch layer's match (below), so the comparison is like for like. Before each \
         measured process the benchmark writes out what earlier work left dirty \
         (`CHECKPOINT`, `sync`), so that none is measured through the writes of the one \
         before it{}.\n",
        duckdb_version(&tools.python),
        m.duck.threads,
        m.duck.seconds,
        m.duck.process.wall.as_secs_f64(),
        if m.unflushed.is_empty() {
            String::new()
        } else {
            format!(
                " (**not done**, the figures may include such writes: {})",
                m.unflushed.join("; ")
            )
        }
    );

    // Where the batch layer's time went.
    let _ = writeln!(r, "## Where the batch layer's time went\n");
    let _ = writeln!(
        r,
        "From the run's log (`batch run succeeded`: `read_ms`, `compute_ms`, `copy_ms`, \
         `commit_ms`), summed over the days it recomputed.\n"
    );
    let _ = writeln!(
        r,
        "| phase | full recompute | incremental night |\n|---|---|---|"
    );
    let phases = [
        (
            "read: the days' files (and the day before each run of days), deduplicate",
            m.full.log.read,
            m.incremental.log.read,
        ),
        (
            "compute: hours, days, peaks, vendors",
            m.full.log.compute,
            m.incremental.log.compute,
        ),
        (
            "copy: delete the replaced rows (a night: only those that changed), binary `COPY` into Postgres",
            m.full.log.copy,
            m.incremental.log.copy,
        ),
        (
            "commit: merge the vendors, derive the baselines, run log, `COMMIT`",
            m.full.log.commit,
            m.incremental.log.commit,
        ),
    ];
    for (label, full, night) in phases {
        let _ = writeln!(r, "| {label} | {} | {} |", secs(full), secs(night));
    }
    let overhead = |run: &BatchRun| {
        run.process
            .wall
            .saturating_sub(run.log.read + run.log.compute + run.log.copy + run.log.commit)
    };
    let _ = writeln!(
        r,
        "| the rest: start-up, migrations, listing the lake, completeness check, exit | {} | {} |",
        secs(overhead(&m.full)),
        secs(overhead(&m.incremental))
    );
    let _ = writeln!(
        r,
        "| wall time | {} | {} |",
        secs(m.full.process.wall),
        secs(m.incremental.process.wall)
    );
    let _ = writeln!(
        r,
        "| CPU time of the process (user + system) | {} ({:.2} cores) | {} ({:.2} cores) |",
        secs(m.full.process.cpu),
        m.full.process.cores(),
        secs(m.incremental.process.cpu),
        m.incremental.process.cores()
    );
    let _ = writeln!(
        r,
        "| lake files read / rows written | {} / {} | {} / {} |",
        fmt_int(m.full.log.input_files),
        fmt_int(m.full.log.rows),
        fmt_int(m.incremental.log.input_files),
        fmt_int(m.incremental.log.rows)
    );
    let read_compute = m.full.log.read + m.full.log.compute;
    let _ = writeln!(
        r,
        "\nWithout Postgres, the full recompute's read and compute took {:.1} s: {:.2}× \
         DuckDB's {:.1} s for the same tables.\n",
        read_compute.as_secs_f64(),
        read_compute.as_secs_f64() / duck_seconds.max(1e-9),
        duck_seconds
    );

    // DuckDB's steps.
    let _ = writeln!(r, "## DuckDB's steps\n");
    let _ = writeln!(r, "| step | as of T_b | as of T_b + 1 day |\n|---|---|---|");
    for (index, (step, seconds)) in m.duck.steps.iter().enumerate() {
        let night = m
            .duck_night
            .steps
            .get(index)
            .map_or(String::new(), |(_, seconds)| format!("{seconds:.1} s"));
        let _ = writeln!(r, "| {step} | {seconds:.1} s | {night} |");
    }
    let _ = writeln!(
        r,
        "| all (the reference) | {:.1} s | {:.1} s |",
        m.duck.seconds, m.duck_night.seconds
    );
    let _ = writeln!(
        r,
        "| peak memory (RSS) of the Python process | {} | {} |",
        mib(m.duck.process.max_rss_bytes),
        mib(m.duck_night.process.max_rss_bytes)
    );

    // The load against \copy.
    let _ = writeln!(r, "\n## The load against `psql \\copy`\n");
    let _ = writeln!(
        r,
        "The rows the full recompute wrote, exported with `\\copy … TO` ({} of CSV), \
         loaded by `psql \\copy … FROM` into the empty tables of a fresh database made \
         by `batch-layer migrate` (the same primary keys and indexes), all four in one \
         transaction. The batch layer's time in Postgres is its `copy` and `commit` \
         phases: it deletes the rows it replaces, copies each day's hourly and daily rows \
         (binary `COPY`), then at the commit copies the vendors (merged in Rust, one row \
         per customer and vendor) and derives the baselines (Postgres streams the month's \
         daily sums and peaks out, Rust groups them, Postgres applies the formulas to one \
         row per customer).\n",
        mib(m.copy.csv_bytes),
    );
    let _ = writeln!(r, "| table | rows |\n|---|---|");
    for table in TABLES {
        let _ = writeln!(
            r,
            "| `{table}` | {} |",
            fmt_int(m.copy.rows.get(table).copied().unwrap_or(0))
        );
    }
    let _ = writeln!(
        r,
        "| all: `\\copy` / the batch layer's `rows` | {} / {} |",
        fmt_int(m.copy.total_rows()),
        fmt_int(m.full.log.rows)
    );
    // The copy phase alone: the hourly and daily rows it sends through COPY over its time.
    let copied = m.copy.rows.get("batch_hourly").copied().unwrap_or(0)
        + m.copy.rows.get("batch_daily").copied().unwrap_or(0);
    let copy_phase = m.full.log.copy.as_secs_f64();
    let _ = writeln!(
        r,
        "\nThe batch layer's `copy` phase alone sent {} rows through `COPY` (hourly and daily \
         rows) in {:.1} s: {} rows/s, {:.0}% of `\\copy`'s rate; its `commit` phase (the \
         vendors, the baselines, the commit) took {:.1} s more.",
        fmt_int(copied),
        copy_phase,
        fmt_rate(copied as f64 / copy_phase.max(1e-9)),
        copied as f64 / copy_phase.max(1e-9) / copy_rate.max(1e-9) * 100.0,
        m.full.log.commit.as_secs_f64()
    );

    // Exactness.
    let _ = writeln!(
        r,
        "\n## Exactness: the batch layer's tables against DuckDB's\n"
    );
    let _ = writeln!(
        r,
        "Per table: rows, two sums, and a checksum of every row (the sum of the first 60 \
         bits of the md5 of the row's text, times in epoch ms, money in minor units, the \
         baselines' mean and deviation × 10⁴), computed in Postgres over the batch \
         layer's table and in DuckDB over its own. The events and amounts of `batch_daily` \
         must also be what was generated.\n"
    );
    let _ = writeln!(
        r,
        "| run | table | rows | sums | checksum | equal |\n|---|---|---|---|---|---|"
    );
    for check in [&m.full_check, &m.night_check] {
        for table in TABLES {
            let ours = check.postgres.get(table);
            let theirs = check.duckdb.get(table);
            let (a, b) = summary_sums(table);
            let show = |summary: Option<&Summary>, index: usize| {
                summary.map_or("—".to_owned(), |s| s[index].clone())
            };
            let equal = ours.is_some() && ours == theirs;
            let _ = writeln!(
                r,
                "| {} | `{table}` | {} | {a} {}, {b} {} | {} | {} |",
                check.label,
                show(ours, 0),
                show(ours, 1),
                show(ours, 2),
                show(ours, 3),
                if equal {
                    "yes".to_owned()
                } else {
                    format!(
                        "**NO**: DuckDB {} / {} / {} / {}",
                        show(theirs, 0),
                        show(theirs, 1),
                        show(theirs, 2),
                        show(theirs, 3)
                    )
                }
            );
        }
        let _ = writeln!(
            r,
            "| {} | generated | {} events | amounts {} | | |",
            check.label,
            fmt_int(check.expected_events),
            check.expected_amount
        );
    }
    let mismatches = m.mismatches();
    if mismatches.is_empty() {
        let _ = writeln!(
            r,
            "\nEvery table equals DuckDB's, after the full recompute and after the night."
        );
    } else {
        let _ = writeln!(r, "\n**Mismatches** (the benchmark fails):\n");
        for problem in &mismatches {
            let _ = writeln!(r, "- {problem}");
        }
    }

    // CPU.
    let _ = writeln!(r, "\n## The machine during each measured process\n");
    let _ = writeln!(
        r,
        "`process` is the CPU time of the measured process itself (from `wait4`) over its \
         wall time; `PostgreSQL` the server's (all its backends, for any client); \
         `everything else` the rest of the machine's busy time (Kafka, Redis, this \
         program, other work), out of {} CPUs.\n",
        machine.cpus
    );
    let _ = writeln!(
        r,
        "| process | wall | process | PostgreSQL | everything else | machine busy |\n\
         |---|---|---|---|---|---|"
    );
    let phases: [(&str, &Finished); 5] = [
        ("batch-layer run --full", &m.full.process),
        ("DuckDB as of T_b", &m.duck.process),
        ("psql \\copy", &m.copy.process),
        ("batch-layer run (the night)", &m.incremental.process),
        ("DuckDB as of T_b + 1 day", &m.duck_night.process),
    ];
    let mut disturbed = Vec::new();
    for (name, process) in phases {
        let _ = writeln!(
            r,
            "| {name} | {} | {:.2} cores | {:.2} cores | {:.2} cores | {:.0}% |",
            secs(process.wall),
            process.cores(),
            process.postgres_cores,
            process.other_cores(),
            process.usage.machine_busy_percent
        );
        if process.other_cores() > OTHER_WORK_CORES {
            disturbed.push(format!("{name} ({:.2} cores)", process.other_cores()));
        }
    }
    if !disturbed.is_empty() {
        let _ = writeln!(
            r,
            "\n**Other work ran** during {}: those figures are lower than on a quiet \
             machine.",
            disturbed.join(", ")
        );
    }
    let busiest = m
        .background
        .iter()
        .map(|usage| usage.machine_busy_percent)
        .fold(0.0, f64::max);
    if busiest > BUSY_BACKGROUND_PERCENT {
        let _ = writeln!(
            r,
            "\n**Warning**: the machine was up to {busiest:.0}% busy with other work before a \
             measured phase (waited up to {} s for it to quieten); the figures are low.",
            args.quiet_wait_seconds
        );
    }

    let _ = writeln!(
        r,
        "\nBinaries: `{}`, DuckDB from `{}`. Watermarks: T_b = {} (the full recompute), \
         T_b + 1 day = {} (the night). Report of `fraud-bench batch --events {} --days {} \
         --customers {}`.",
        tools.batch_bin.display(),
        tools.python.display(),
        rfc3339(m.full.watermark),
        rfc3339(m.incremental.watermark),
        args.events,
        args.days,
        args.customers
    );
    if !cleanup.is_empty() {
        let _ = writeln!(r, "\nClean-up problems: {}.", cleanup.join("; "));
    }
    r
}

/// DuckDB's version in `python`, or "?".
fn duckdb_version(python: &Path) -> String {
    Command::new(python)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".to_owned())
}
