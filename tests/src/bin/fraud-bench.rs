//! `fraud-bench`: the platform's benchmarks, run against the real servers that
//! `deploy/dev` starts and the release build of the services (`deploy/dev bench`).
//!
//! A benchmark is a measurement, not a test: it prints a Markdown report (and writes it
//! to `--report`) with each figure and the targets of its issue marked pass or fail, and
//! exits 0 whether or not a target is met. It exits non-zero only when it could not
//! measure (a server is down, the service did not start).
//!
//! `fraud-bench ingest` measures, in one run, on its own topics, Redis key prefix, lake
//! root, lake-writer group and API key:
//! - **reference**: a plain producer with ingest's settings sending the same events,
//!   pre-encoded, straight to Kafka (another topic of the same shape), every record
//!   acknowledged;
//! - **batches**: NDJSON batches of 1,000 events posted by a few concurrent clients (the
//!   concurrency is picked by a short sweep), every answer expected to be 202;
//! - **singles**: single-event POSTs at 50 concurrent clients, requests/s and latency;
//! - **lake writer**: its lag (high watermark minus the group's committed offset, summed
//!   over partitions) sampled every second during and after the batch phase.
//!
//! Every event is generated before any timing starts.
//!
//! `fraud-bench speed` (module `speed`) measures the speed layer the same way: the real
//! release binary against a pre-filled topic of its own, with a plain consumer that only
//! reads and decodes the same records as the reference.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use fraud_config::{KafkaConfig, Settings};
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_testkit::{ChildProcess, free_port, unique_name};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

// The crate root is this file, so a module file needs its path (a file beside it would
// be a binary of its own).
#[path = "fraud-bench/speed.rs"]
mod speed;

#[path = "fraud-bench/encoding.rs"]
mod encoding;

#[path = "fraud-bench/batch.rs"]
mod batch;

#[path = "fraud-bench/serving.rs"]
mod serving;

#[path = "fraud-bench/mixed.rs"]
mod mixed;

#[path = "fraud-bench/overload.rs"]
mod overload;

/// The platform's benchmarks (a measurement, not a test: exits 0 when a target is missed).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
    /// Ingest: batches and single events through the API against a plain producer, and
    /// the lake writer's lag.
    Ingest(IngestArgs),
    /// Speed layer: events/s applied to Redis from a pre-filled topic against a plain
    /// consumer, its lag, the delay to visibility at half that rate, and Redis memory.
    Speed(speed::SpeedArgs),
    /// The transaction record's encoding: JSON (the platform's) against a compact binary
    /// layout, encode and decode time and bytes per event.
    Encoding(encoding::EncodingArgs),
    /// Batch layer: a full recompute and an incremental night over a generated lake,
    /// wall time and peak memory, against DuckDB over the same files and `psql \copy`
    /// of the same rows.
    Batch(batch::BatchArgs),
    /// Serving API: risk reads against a fixed-body axum handler, and the delay from a
    /// POSTed transaction to its alert on a bound queue.
    Serving(serving::ServingArgs),
    /// The whole platform at once: generated traffic through ingest, the speed layer,
    /// risk readers, alerts and a batch run, sampled every second, with plots.
    Mixed(mixed::MixedArgs),
}

#[derive(Args, Clone)]
struct IngestArgs {
    /// Events of the sustained batch phase; the reference producer sends the same events.
    #[arg(long, default_value_t = 1_500_000)]
    events: usize,
    /// Upper bound on the sustained batch phase, in seconds (it stops early if reached).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Events per NDJSON batch.
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// Concurrent batch clients to try; the sustained phase uses the fastest.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 16])]
    batch_clients: Vec<usize>,
    /// Batches posted at each concurrency of the sweep.
    #[arg(long, default_value_t = 100)]
    sweep_batches: usize,
    /// Concurrent clients of the single-event phase.
    #[arg(long, default_value_t = 50)]
    singles_clients: usize,
    /// Length of the measured single-event phase, in seconds.
    #[arg(long, default_value_t = 30)]
    singles_seconds: u64,
    /// Warm-up before the single-event phase is measured, in seconds.
    #[arg(long, default_value_t = 2)]
    singles_warmup_seconds: u64,
    /// Length of the overload phase (single events offered open loop at
    /// `--overload-factor` times the single-event phase's rate), in seconds; 0 skips it.
    #[arg(long, default_value_t = 20)]
    overload_seconds: u64,
    /// The overload phase's offered rate, as a multiple of the single-event phase's.
    #[arg(long, default_value_t = 2.0)]
    overload_factor: f64,
    /// Most requests of the overload phase waiting for an answer at once; a request due
    /// while that many wait is not sent, and counted.
    #[arg(long, default_value_t = 4096)]
    overload_max_connections: usize,
    /// How long to wait after the batch phase for the lake writer's lag to return to 0.
    #[arg(long, default_value_t = 60)]
    lake_drain_seconds: u64,
    /// Partitions of the benchmark's topics (the platform's topic has 12).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Distinct customers in the generated events.
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// How long to wait, before measuring, for other work on the machine to end.
    #[arg(long, default_value_t = 60)]
    quiet_wait_seconds: u64,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 20_190_530)]
    seed: u64,
    /// The ingest binary (default: `ingest` next to this program).
    #[arg(long)]
    ingest_bin: Option<PathBuf>,
    /// The speed-layer binary of the overload phase (default: `speed-layer` next to this
    /// program).
    #[arg(long)]
    speed_bin: Option<PathBuf>,
    /// Where to write the report (default: `target/bench/ingest.md` under the workspace).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.benchmark {
        Benchmark::Ingest(args) => ingest_benchmark(args).await,
        Benchmark::Speed(args) => speed::speed_benchmark(args).await,
        Benchmark::Encoding(args) => encoding::encoding_benchmark(args),
        Benchmark::Batch(args) => batch::batch_benchmark(args).await,
        Benchmark::Serving(args) => serving::serving_benchmark(args).await,
        Benchmark::Mixed(args) => mixed::mixed_benchmark(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fraud-bench: could not measure: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(message: impl AsRef<str>) {
    eprintln!("fraud-bench: {}", message.as_ref());
}

// ---------------------------------------------------------------------------------------
// The ingest benchmark
// ---------------------------------------------------------------------------------------

async fn ingest_benchmark(args: IngestArgs) -> anyhow::Result<()> {
    if args.batch_clients.is_empty() || args.batch_clients.contains(&0) {
        bail!("--batch-clients needs at least one positive number");
    }
    if args.batch_size == 0 || args.events == 0 || args.singles_clients == 0 {
        bail!("--batch-size, --events and --singles-clients must be positive");
    }
    if !(args.overload_factor.is_finite() && args.overload_factor > 0.0)
        || args.overload_max_connections == 0
    {
        bail!("--overload-factor and --overload-max-connections must be positive");
    }
    let settings = Settings::load(None).context("load the platform's configuration")?;
    let ingest_bin = service_binary(args.ingest_bin.as_deref(), "ingest", "--ingest-bin")?;
    let report_path = args.report.clone().unwrap_or_else(|| {
        workspace_root()
            .join("target")
            .join("bench")
            .join("ingest.md")
    });

    progress("generating events");
    let generated_at = Instant::now();
    let workload = Workload::generate(&args)?;
    progress(format!(
        "generated {} events in {:.1}s",
        fmt_int(workload.total_events as u64),
        generated_at.elapsed().as_secs_f64()
    ));

    let mut stack = Stack::start(&settings, &args, &ingest_bin).await?;
    let measured = measure(&args, &settings, &stack, &workload).await;
    let cleanup = stack.stop().await;
    let measured = measured?;
    for problem in &cleanup {
        progress(format!("clean-up: {problem}"));
    }

    let report = render_report(&args, &settings, &stack, &ingest_bin, &workload, &measured);
    write_report(&report, &report_path)
}

/// Prints the report and writes it to `path`.
/// The service binary to benchmark: `given`, else `name` next to this program; it must
/// exist.
fn service_binary(given: Option<&Path>, name: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("locate this program")?
            .with_file_name(name),
    };
    if !path.is_file() {
        bail!(
            "no {name} binary at {} (build it: cargo build --release -p {name}, or pass {flag})",
            path.display()
        );
    }
    Ok(path)
}

fn write_report(report: &str, path: &Path) -> anyhow::Result<()> {
    println!("{report}");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, report).with_context(|| format!("write {}", path.display()))?;
    progress(format!("report written to {}", path.display()));
    Ok(())
}

/// The workspace this program was built from.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Everything measured in one run.
struct Measured {
    reference: ReferenceResult,
    sweep: Vec<(usize, LoadResult)>,
    batch_clients: usize,
    batches: LoadResult,
    lake: LakeResult,
    singles: LoadResult,
    /// The overload phase, unless `--overload-seconds 0`.
    overload: Option<overload::OverloadResult>,
    cpu: Vec<(&'static str, CpuUsage)>,
    /// The machine before the run, with nothing of ours running.
    background: CpuUsage,
}

async fn measure(
    args: &IngestArgs,
    settings: &Settings,
    stack: &Stack,
    workload: &Workload,
) -> anyhow::Result<Measured> {
    let pids = Pids::find(
        stack.ingest_pid(),
        [ThreadMatch::Named(LAKE_WRITER_THREAD), ThreadMatch::None],
    );
    let mut cpu = Vec::new();

    let background = wait_for_quiet(&pids, args.quiet_wait_seconds).await;

    progress(format!(
        "reference: {} pre-encoded records straight to Kafka",
        fmt_int(workload.reference.len() as u64)
    ));
    let before = CpuSnapshot::take(&pids);
    let reference = run_reference(settings, &stack.reference_topic, workload).await?;
    cpu.push(("reference", before.usage_until(&CpuSnapshot::take(&pids))));
    progress(format!(
        "reference: {:.0} records/s",
        reference.records_per_second()
    ));

    let client = http_client()?;
    let target = Target {
        url: format!("{}/v1/transactions", stack.base),
        authorization: format!("Bearer {}", stack.api_key),
    };

    // The lake writer's lag is sampled from the first batch on.
    let sampler = LagSampler::start(
        settings.kafka.clone(),
        stack.ingest_topic.clone(),
        stack.writer_group.clone(),
        args.partitions,
        Duration::from_secs(1),
    );

    progress("batches: warm-up");
    run_load(
        &client,
        &target,
        &workload.warmup_batches,
        NDJSON,
        2,
        None,
        None,
    )
    .await;
    let mut sweep = Vec::new();
    for (round, &clients) in args.batch_clients.iter().enumerate() {
        let bodies = &workload.sweep_batches[round];
        let result = run_load(&client, &target, bodies, NDJSON, clients, None, None).await;
        progress(format!(
            "batches: {clients} client(s): {:.0} events/s",
            result.events_per_second()
        ));
        sweep.push((clients, result));
    }
    let batch_clients = sweep
        .iter()
        .max_by(|a, b| a.1.events_per_second().total_cmp(&b.1.events_per_second()))
        .map(|(clients, _)| *clients)
        .unwrap_or(1);
    progress(format!(
        "batches: sustained, {} events at {batch_clients} client(s)",
        fmt_int(args.events as u64)
    ));
    let before = CpuSnapshot::take(&pids);
    let batches = run_load(
        &client,
        &target,
        &workload.batches,
        NDJSON,
        batch_clients,
        Some(Instant::now() + Duration::from_secs(args.seconds)),
        None,
    )
    .await;
    let batch_end = Instant::now();
    cpu.push(("batches", before.usage_until(&CpuSnapshot::take(&pids))));
    progress(format!(
        "batches: {:.0} events/s",
        batches.events_per_second()
    ));

    progress("lake writer: waiting for its lag to return to 0");
    let before = CpuSnapshot::take(&pids);
    let lake = wait_for_lake(args, settings, stack, &sampler, batch_end).await;
    sampler.stop();
    cpu.push(("lake drain", before.usage_until(&CpuSnapshot::take(&pids))));
    progress(format!("lake writer: {}", lake.summary("the batch phase")));

    progress(format!(
        "singles: {} clients for {}s (after {}s of warm-up)",
        args.singles_clients, args.singles_seconds, args.singles_warmup_seconds
    ));
    let singles_client = http_client()?;
    let started = Instant::now();
    let record_from = started + Duration::from_secs(args.singles_warmup_seconds);
    let stop_at = record_from + Duration::from_secs(args.singles_seconds);
    let (singles, singles_cpu) = {
        let load = run_load(
            &singles_client,
            &target,
            &workload.singles,
            JSON,
            args.singles_clients,
            Some(stop_at),
            Some(record_from),
        );
        // CPU is accounted over the measured window only.
        let cpu_window = async {
            tokio::time::sleep_until(record_from.into()).await;
            let before = CpuSnapshot::take(&pids);
            tokio::time::sleep_until(stop_at.into()).await;
            before.usage_until(&CpuSnapshot::take(&pids))
        };
        tokio::join!(load, cpu_window)
    };
    cpu.push(("singles", singles_cpu));
    progress(format!(
        "singles: {:.0} requests/s, p50 {} p99 {}",
        singles.requests_per_second(),
        fmt_micros(singles.latency.value_at_quantile(0.50)),
        fmt_micros(singles.latency.value_at_quantile(0.99))
    ));

    let overload = if args.overload_seconds == 0 {
        None
    } else {
        let result = overload::run(
            args,
            settings,
            stack,
            &target,
            &pids,
            &workload.overload,
            singles.requests_per_second(),
        )
        .await?;
        cpu.push(("overload", result.cpu));
        Some(result)
    };

    Ok(Measured {
        reference,
        sweep,
        batch_clients,
        batches,
        lake,
        singles,
        overload,
        cpu,
        background,
    })
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

const NDJSON: &str = "application/x-ndjson";
const JSON: &str = "application/json";

/// One request body and the number of events in it.
#[derive(Clone)]
struct RequestBody {
    bytes: Bytes,
    events: usize,
}

/// Every request and record of the run, generated before timing starts.
struct Workload {
    warmup_batches: Vec<RequestBody>,
    /// One list per concurrency of the sweep.
    sweep_batches: Vec<Vec<RequestBody>>,
    /// The sustained phase.
    batches: Vec<RequestBody>,
    /// The sustained phase's events as Kafka records: (key, value).
    reference: Vec<(String, Vec<u8>)>,
    singles: Vec<RequestBody>,
    /// The overload phase's requests (single events), room for `--overload-factor` times
    /// the most single-event requests per second the pool is sized for.
    overload: Vec<RequestBody>,
    total_events: usize,
    customers: usize,
    vendors: usize,
}

/// Most single-event requests per second the pool is sized for.
const SINGLES_POOL_PER_SECOND: u64 = 10_000;
/// Batches of the warm-up before the sweep.
const WARMUP_BATCHES: usize = 10;

impl Workload {
    fn generate(args: &IngestArgs) -> anyhow::Result<Workload> {
        let mut generator = EventGenerator::new(args.seed, args.customers);
        let batch = |generator: &mut EventGenerator, count: usize| -> Vec<RequestBody> {
            (0..count)
                .map(|_| ndjson_body(generator, args.batch_size))
                .collect()
        };
        let warmup_batches = batch(&mut generator, WARMUP_BATCHES);
        let sweep_batches = args
            .batch_clients
            .iter()
            .map(|_| batch(&mut generator, args.sweep_batches))
            .collect();

        let mut batches = Vec::new();
        let mut reference = Vec::with_capacity(args.events);
        let mut remaining = args.events;
        while remaining > 0 {
            let size = remaining.min(args.batch_size);
            let mut body = Vec::with_capacity(size * 200);
            for _ in 0..size {
                let event = generator.next_event();
                body.extend_from_slice(event.json.as_bytes());
                body.push(b'\n');
                let record = event.record()?;
                reference.push((
                    record.customer_id.as_str().to_owned(),
                    fraud_events::encode(&record),
                ));
            }
            batches.push(RequestBody {
                bytes: Bytes::from(body),
                events: size,
            });
            remaining -= size;
        }

        let singles_count =
            (args.singles_seconds + args.singles_warmup_seconds) * SINGLES_POOL_PER_SECOND;
        let mut single = || RequestBody {
            bytes: Bytes::from(generator.next_event().json),
            events: 1,
        };
        let singles = (0..singles_count).map(|_| single()).collect();
        let overload_count =
            (args.overload_seconds as f64 * SINGLES_POOL_PER_SECOND as f64 * args.overload_factor)
                .ceil() as usize;
        let overload = (0..overload_count).map(|_| single()).collect();
        Ok(Workload {
            warmup_batches,
            sweep_batches,
            batches,
            reference,
            singles,
            overload,
            total_events: generator.generated,
            customers: generator.customers.len(),
            vendors: generator.vendors.len(),
        })
    }
}

fn ndjson_body(generator: &mut EventGenerator, size: usize) -> RequestBody {
    let mut body = Vec::with_capacity(size * 200);
    for _ in 0..size {
        body.extend_from_slice(generator.next_event().json.as_bytes());
        body.push(b'\n');
    }
    RequestBody {
        bytes: Bytes::from(body),
        events: size,
    }
}

struct Customer {
    id: String,
    /// Sent as a JSON integer (card numbers arrive so), else as a string.
    as_integer: bool,
    vendors: Vec<usize>,
    vendor_cdf: Vec<f64>,
}

/// Realistic, valid transactions: unique ids, customers of skewed (Zipf) popularity who
/// each shop at a few vendors, amounts with cents (log-normal around €25), event times
/// within the last hour and never in the future.
struct EventGenerator {
    rng: StdRng,
    run: String,
    generated: usize,
    customers: Vec<Customer>,
    customer_cdf: Vec<f64>,
    vendors: Vec<String>,
    now_ms: i64,
    /// Event times fall within this many ms before `now_ms` (at least 1 s before).
    span_ms: i64,
    /// Whether to write each event's JSON (the API's form); the records need none.
    json: bool,
}

struct GeneratedEvent {
    json: String,
    transaction_id: String,
    customer_id: String,
    vendor_id: String,
    amount_minor: i64,
    event_ms: i64,
}

impl GeneratedEvent {
    /// The record ingest would produce for it.
    fn record(&self) -> anyhow::Result<TransactionEvent> {
        Ok(TransactionEvent {
            transaction_id: TransactionId::parse(&self.transaction_id)?,
            customer_id: CustomerId::parse(&self.customer_id)?,
            vendor_id: VendorId::parse(&self.vendor_id)?,
            amount: Money::from_minor(self.amount_minor),
            currency: Currency::EUR,
            event_time: EventTime::from_millis(self.event_ms)?,
            ingest_time: EventTime::now(),
        })
    }
}

/// Cumulative Zipf weights (exponent `s`) of `n` ranks.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    (1..=n)
        .map(|rank| {
            total += 1.0 / (rank as f64).powf(s);
            total
        })
        .collect()
}

fn pick(cdf: &[f64], rng: &mut StdRng) -> usize {
    let last = cdf.last().copied().unwrap_or(1.0);
    let u = rng.random::<f64>() * last;
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

impl EventGenerator {
    /// Zipf-popular customers (exponent 1), event times within the last hour, with JSON.
    fn new(seed: u64, customers: usize) -> EventGenerator {
        EventGenerator::with_shape(seed, customers, 1.0, 3_600_000, true)
    }

    /// Customers of Zipf popularity with exponent `customer_skew` (0: uniform), event
    /// times within `span_ms` before now, with or without each event's JSON.
    fn with_shape(
        seed: u64,
        customers: usize,
        customer_skew: f64,
        span_ms: i64,
        json: bool,
    ) -> EventGenerator {
        let mut rng = StdRng::seed_from_u64(seed);
        // Ids differ from run to run (the seed fixes the rest): a run never replays an
        // earlier run's transactions.
        let run = uuid_hex(&mut rand::rng())[..12].to_owned();
        let vendor_count = (customers / 5).max(10);
        let vendors: Vec<String> = (0..vendor_count)
            .map(|_| {
                format!(
                    "{:08x}-{:04x}-{:04x}",
                    rng.random::<u32>(),
                    rng.random::<u16>(),
                    rng.random::<u16>()
                )
            })
            .collect();
        let vendor_popularity = zipf_cdf(vendor_count, 0.9);
        let mut seen = std::collections::HashSet::new();
        let customers: Vec<Customer> = (0..customers.max(1))
            .map(|_| {
                let id = loop {
                    let candidate =
                        rng.random_range(4_000_000_000_000_000_u64..5_000_000_000_000_000);
                    if seen.insert(candidate) {
                        break candidate.to_string();
                    }
                };
                let shops = rng.random_range(1..=5);
                let vendors = (0..shops)
                    .map(|_| pick(&vendor_popularity, &mut rng))
                    .collect();
                Customer {
                    id,
                    as_integer: rng.random_bool(0.2),
                    vendors,
                    vendor_cdf: zipf_cdf(shops, 1.0),
                }
            })
            .collect();
        let customer_cdf = zipf_cdf(customers.len(), customer_skew);
        EventGenerator {
            rng,
            run,
            generated: 0,
            customers,
            customer_cdf,
            vendors,
            now_ms: Utc::now().timestamp_millis(),
            span_ms: span_ms.max(1_001),
            json,
        }
    }

    fn next_event(&mut self) -> GeneratedEvent {
        self.generated += 1;
        let rng = &mut self.rng;
        let transaction_id = format!("{}{:020x}", self.run, self.generated);
        let customer = &self.customers[pick(&self.customer_cdf, rng)];
        let vendor_id = self.vendors[customer.vendors[pick(&customer.vendor_cdf, rng)]].clone();
        // Log-normal amount: median about €25, a long tail, at least one cent.
        let normal = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt()
            * (std::f64::consts::TAU * rng.random::<f64>()).cos();
        let euros = (3.2 + 1.1 * normal).exp();
        let amount_minor = ((euros * 100.0).round() as i64).clamp(1, 500_000);
        let amount = format!("{}.{:02}", amount_minor / 100, amount_minor % 100);
        let event_ms = self.now_ms - rng.random_range(1_000..self.span_ms);
        if !self.json {
            return GeneratedEvent {
                json: String::new(),
                transaction_id,
                customer_id: customer.id.clone(),
                vendor_id,
                amount_minor,
                event_ms,
            };
        }
        let offset_seconds = [0, 0, 0, 3_600, 7_200, -18_000][rng.random_range(0..6)];
        let ts = DateTime::<Utc>::from_timestamp_millis(event_ms)
            .unwrap_or_default()
            .with_timezone(
                &FixedOffset::east_opt(offset_seconds)
                    .unwrap_or(FixedOffset::east_opt(0).expect("UTC")),
            )
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let customer_json = if customer.as_integer {
            customer.id.clone()
        } else {
            format!("\"{}\"", customer.id)
        };
        let amount_json = if rng.random_bool(0.1) {
            format!("\"{amount}\"")
        } else {
            amount
        };
        let currency = if rng.random_bool(0.5) {
            ",\"currency\":\"EUR\""
        } else {
            ""
        };
        let json = format!(
            "{{\"transactionId\":\"{transaction_id}\",\"customerId\":{customer_json},\"vendorId\":\"{vendor_id}\",\"transactionSum\":{amount_json},\"ts\":\"{ts}\"{currency}}}"
        );
        GeneratedEvent {
            json,
            transaction_id,
            customer_id: customer.id.clone(),
            vendor_id,
            amount_minor,
            event_ms,
        }
    }
}

fn uuid_hex(rng: &mut impl Rng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

// ---------------------------------------------------------------------------------------
// The stack under test: topics, the ingest process, its Redis prefix and lake root
// ---------------------------------------------------------------------------------------

struct Stack {
    kafka: KafkaConfig,
    redis_url: String,
    ingest_topic: String,
    reference_topic: String,
    redis_prefix: String,
    writer_group: String,
    dir: PathBuf,
    lake_root: PathBuf,
    api_key: String,
    base: String,
    ingest: Option<ChildProcess>,
    ingest_pid: u32,
    stopped_cleanly: Option<bool>,
}

impl Stack {
    async fn start(
        settings: &Settings,
        args: &IngestArgs,
        ingest_bin: &Path,
    ) -> anyhow::Result<Stack> {
        let name = unique_name("bench-ingest");
        let dir = std::env::temp_dir().join(&name);
        let lake_root = dir.join("lake");
        std::fs::create_dir_all(&lake_root)
            .with_context(|| format!("create {}", lake_root.display()))?;
        let mut stack = Stack {
            kafka: settings.kafka.clone(),
            redis_url: settings.redis.url.expose().clone(),
            ingest_topic: format!("{name}-transactions"),
            reference_topic: format!("{name}-reference"),
            redis_prefix: format!("{name}:"),
            writer_group: format!("{name}-lake-writer"),
            api_key: format!("bench_{}", uuid_hex(&mut rand::rng())),
            base: String::new(),
            lake_root,
            dir,
            ingest: None,
            ingest_pid: 0,
            stopped_cleanly: None,
        };
        if let Err(error) = stack.launch(args, ingest_bin).await {
            let problems = stack.stop().await;
            for problem in problems {
                progress(format!("clean-up: {problem}"));
            }
            return Err(error);
        }
        Ok(stack)
    }

    async fn launch(&mut self, args: &IngestArgs, ingest_bin: &Path) -> anyhow::Result<()> {
        progress(format!(
            "creating topics {} and {} ({} partitions)",
            self.ingest_topic, self.reference_topic, args.partitions
        ));
        for topic in [&self.ingest_topic, &self.reference_topic] {
            fraud_kafka::ensure_topic(&self.kafka, topic, args.partitions, 1)
                .await
                .with_context(|| {
                    format!("create topic {topic} (is Kafka up? deploy/dev up --servers-only)")
                })?;
            wait_for_topic(&self.kafka, topic, args.partitions).await?;
        }

        let port = free_port();
        self.base = format!("http://127.0.0.1:{port}");
        let config = self.dir.join("ingest.toml");
        let key_sha256 = hex::encode(Sha256::digest(self.api_key.as_bytes()));
        let toml = format!(
            r#"# written by fraud-bench
[kafka]
brokers = {brokers:?}
transactions_topic = {topic:?}

[redis]
url = {redis:?}
key_prefix = {prefix:?}

[auth]
keys = [{{ name = "bench", sha256 = "{key_sha256}", scopes = ["ingest"] }}]

[lake]
root = {lake:?}
writer_group = {group:?}

[ingest]
listen = "127.0.0.1:{port}"
# The per-key rate limit would cap the measurement: raised out of the way.
rate_limit_per_second = {rate}
rate_limit_burst = {rate}
"#,
            brokers = self.kafka.brokers,
            topic = self.ingest_topic,
            redis = self.redis_url,
            prefix = self.redis_prefix,
            lake = self.lake_root.to_string_lossy(),
            group = self.writer_group,
            rate = BENCH_RATE_LIMIT,
        );
        std::fs::write(&config, toml).with_context(|| format!("write {}", config.display()))?;

        let mut command = Command::new(ingest_bin);
        command.arg("--config").arg(&config);
        // Only the file counts: a developer's FRAUD_ variables must not leak in.
        for (variable, _) in std::env::vars() {
            if variable.starts_with("FRAUD_") {
                command.env_remove(variable);
            }
        }
        progress(format!(
            "starting {} on {}",
            ingest_bin.display(),
            self.base
        ));
        let mut process = ChildProcess::spawn("bench-ingest", command);
        self.ingest_pid = process.pid();
        let ready = wait_ready(
            &mut process,
            "ingest",
            &self.base,
            &[200],
            Duration::from_secs(60),
        )
        .await;
        // Kept even when it failed, so that `stop` ends it.
        self.ingest = Some(process);
        ready.map(|_| ())
    }

    fn ingest_pid(&self) -> u32 {
        self.ingest_pid
    }

    /// Stops ingest (SIGTERM, then SIGKILL after 30 s), deletes the topics, the writer
    /// group, the Redis keys and the lake; returns what could not be cleaned up.
    async fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(process) = self.ingest.take()
            && let Some(clean) = stop_process(process, "ingest", &mut problems).await
        {
            self.stopped_cleanly = Some(clean);
        }
        for topic in [&self.ingest_topic, &self.reference_topic] {
            if let Err(error) = fraud_kafka::delete_topic(&self.kafka, topic).await {
                problems.push(format!("delete topic {topic}: {error}"));
            }
        }
        if let Err(error) = delete_group(&self.kafka, &self.writer_group).await {
            problems.push(format!("delete group {}: {error}", self.writer_group));
        }
        match delete_redis_keys(&self.redis_url, &self.redis_prefix).await {
            Ok(deleted) => progress(format!(
                "deleted {} Redis keys {}*",
                fmt_int(deleted),
                self.redis_prefix
            )),
            Err(error) => {
                problems.push(format!("delete Redis keys {}*: {error}", self.redis_prefix))
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            problems.push(format!("remove {}: {error}", self.dir.display()));
        }
        problems
    }
}

/// The per-key rate limit of the benchmark's ingest (requests per second and burst).
const BENCH_RATE_LIMIT: u32 = 1_000_000;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn wait_for_topic(kafka: &KafkaConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let consumer: BaseConsumer = fraud_kafka::client_config(kafka)
        .create()
        .context("create a metadata client")?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            if let Ok(metadata) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))
                && let Some(found) = metadata.topics().iter().find(|t| t.name() == topic)
                && found.error().is_none()
                && found.partitions().len() == partitions as usize
            {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("topic {topic} did not show {partitions} partitions within 30s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

async fn delete_group(kafka: &KafkaConfig, group: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = fraud_kafka::client_config(kafka).create()?;
    let results = admin.delete_groups(&[group], &AdminOptions::new()).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((_, code)) => bail!("{code}"),
        }
    }
    Ok(())
}

/// Deletes the benchmark's Redis keys; how many.
async fn delete_redis_keys(url: &str, prefix: &str) -> anyhow::Result<u64> {
    Ok(fraud_testkit::redis_keys::delete_prefix(url, prefix).await?)
}

// ---------------------------------------------------------------------------------------
// The reference: a plain producer straight to Kafka
// ---------------------------------------------------------------------------------------

struct ReferenceResult {
    records: usize,
    failed: usize,
    elapsed: Duration,
    queue_full_waits: usize,
    queue_max: u32,
    timeout_ms: u64,
    linger_ms: u32,
    single_event_linger_ms: u32,
    /// Acknowledgement latency of one record at a time (with the single-event linger), in
    /// microseconds: the floor under a single-event POST.
    alone: Histogram<u64>,
}

impl ReferenceResult {
    fn records_per_second(&self) -> f64 {
        (self.records - self.failed) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Records sent before the timed reference, to connect and learn the partitions.
const REFERENCE_WARMUP: usize = 2_000;
/// Records sent one at a time after the timed reference, for the latency floor.
const REFERENCE_ALONE: usize = 300;

async fn run_reference(
    settings: &Settings,
    topic: &str,
    workload: &Workload,
) -> anyhow::Result<ReferenceResult> {
    // Exactly ingest's producers (services/ingest/src/publish.rs): the one of requests
    // with several events, and (for one record at a time) the one of single events.
    let queue_max = settings.ingest.producer_queue_max;
    let timeout_ms = settings.ingest.produce_timeout_ms;
    let ingest::publish::Producers {
        batches: producer,
        single_events: single_event_producer,
    } = ingest::publish::Producers::new(&settings.kafka, &settings.ingest)?;
    let warmup = &workload.reference[..REFERENCE_WARMUP.min(workload.reference.len())];
    let (_, warmup_failed, _) = produce_all(&producer, topic, warmup).await;
    if warmup_failed > 0 {
        bail!("the reference producer's warm-up failed: {warmup_failed} records not acknowledged");
    }
    let started = Instant::now();
    let (records, failed, queue_full_waits) =
        produce_all(&producer, topic, &workload.reference).await;
    let elapsed = started.elapsed();
    if failed == records {
        bail!("the reference producer had no record acknowledged");
    }
    // One record at a time, each acknowledged before the next is sent.
    let mut alone = latency_histogram();
    for record in workload.reference.iter().take(REFERENCE_ALONE) {
        let sent = Instant::now();
        let (_, failed, _) =
            produce_all(&single_event_producer, topic, std::slice::from_ref(record)).await;
        if failed == 0 {
            let _ = alone.record((sent.elapsed().as_micros() as u64).max(1));
        }
    }
    Ok(ReferenceResult {
        records,
        failed,
        elapsed,
        queue_full_waits,
        queue_max,
        timeout_ms,
        linger_ms: settings.ingest.linger_ms,
        single_event_linger_ms: settings.ingest.single_event_linger_ms,
        alone,
    })
}

/// Sends every record as ingest does (key, headers, value) and waits for every
/// acknowledgement; returns (records, failed, waits for a full queue).
async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> (usize, usize, usize) {
    let mut pending = VecDeque::new();
    let mut failed = 0;
    let mut queue_full_waits = 0;
    for (key, value) in records {
        loop {
            let headers = ingest::publish::record_headers(&[]);
            let record = FutureRecord::to(topic)
                .key(key.as_str())
                .payload(value.as_slice())
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    queue_full_waits += 1;
                    match pending.pop_front() {
                        Some(delivery) => {
                            if !matches!(delivery.await, Ok(Ok(_))) {
                                failed += 1;
                            }
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err(_) => {
                    failed += 1;
                    break;
                }
            }
        }
    }
    for delivery in pending {
        if !matches!(delivery.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    (records.len(), failed, queue_full_waits)
}

// ---------------------------------------------------------------------------------------
// HTTP load
// ---------------------------------------------------------------------------------------

struct Target {
    url: String,
    authorization: String,
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// What a load phase saw.
struct LoadResult {
    /// Requests answered (recorded ones only, when recording starts late).
    requests: u64,
    /// Events of the requests answered 202.
    accepted_events: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_failure: Option<String>,
    /// Latency of each recorded request, in microseconds.
    latency: Histogram<u64>,
    /// The measured window: from the start (or the end of the warm-up) to the last answer.
    window: Duration,
    /// The pool ran out before the deadline.
    exhausted: bool,
    /// The deadline ended the phase before the pool was used up.
    cut_short: bool,
}

impl LoadResult {
    fn events_per_second(&self) -> f64 {
        self.accepted_events as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn not_accepted(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| **status != 202)
            .map(|(_, count)| count)
            .sum::<u64>()
            + self.transport_errors
    }

    fn statuses_text(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {}", fmt_int(*count)))
            .collect();
        if self.transport_errors > 0 {
            parts.push(format!("no answer: {}", fmt_int(self.transport_errors)));
        }
        parts.join(", ")
    }
}

/// A failed request as a report names it: its status and the start of its answer.
fn failure_text(status: u16, text: &str) -> String {
    format!("{status}: {}", text.chars().take(300).collect::<String>())
}

/// "p50 / p99 / max" of a histogram of microseconds.
fn p50_p99_max(histogram: &Histogram<u64>) -> String {
    format!(
        "{} / {} / {}",
        fmt_micros(histogram.value_at_quantile(0.50)),
        fmt_micros(histogram.value_at_quantile(0.99)),
        fmt_micros(histogram.max())
    )
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Posts `bodies` from `clients` concurrent tasks sharing `client`, until the pool is
/// used up or `stop_at`; only requests started at or after `record_from` are counted.
async fn run_load(
    client: &reqwest::Client,
    target: &Target,
    bodies: &[RequestBody],
    content_type: &'static str,
    clients: usize,
    stop_at: Option<Instant>,
    record_from: Option<Instant>,
) -> LoadResult {
    let bodies: Arc<Vec<RequestBody>> = Arc::new(bodies.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let exhausted = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let record_from = record_from.unwrap_or(started);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let url = target.url.clone();
        let authorization = target.authorization.clone();
        let bodies = Arc::clone(&bodies);
        let next = Arc::clone(&next);
        let exhausted = Arc::clone(&exhausted);
        tasks.push(tokio::spawn(async move {
            let mut part = Part::default();
            loop {
                if stop_at.is_some_and(|stop| Instant::now() >= stop) {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(index) else {
                    exhausted.store(true, Ordering::Relaxed);
                    break;
                };
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", content_type)
                    .header("authorization", &authorization)
                    .body(body.bytes.clone())
                    .send()
                    .await;
                let outcome = match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // Read the whole answer so the connection is reused.
                        let text = response.text().await.unwrap_or_default();
                        Ok((status, text))
                    }
                    Err(error) => Err(error.to_string()),
                };
                let done = Instant::now();
                if sent < record_from {
                    continue;
                }
                part.last = Some(done);
                let micros = done.duration_since(sent).as_micros() as u64;
                let _ = part.latency.record(micros.max(1));
                match outcome {
                    Ok((status, text)) => {
                        part.requests += 1;
                        *part.statuses.entry(status).or_default() += 1;
                        if status == 202 {
                            part.accepted_events += body.events as u64;
                        } else {
                            part.first_failure
                                .get_or_insert_with(|| failure_text(status, &text));
                        }
                    }
                    Err(error) => {
                        part.transport_errors += 1;
                        part.first_failure
                            .get_or_insert_with(|| format!("no answer: {error}"));
                    }
                }
            }
            part
        }));
    }
    let mut parts = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(part) = task.await {
            parts.push(part);
        }
    }
    let mut result = LoadResult::merge(parts, record_from);
    result.exhausted = exhausted.load(Ordering::Relaxed);
    result.cut_short = !result.exhausted && next.load(Ordering::Relaxed) < bodies.len();
    result
}

impl LoadResult {
    /// The parts of a phase's tasks as one result; its window runs from `record_from` to
    /// the last answer.
    fn merge(parts: Vec<Part>, record_from: Instant) -> LoadResult {
        let mut result = LoadResult {
            requests: 0,
            accepted_events: 0,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            first_failure: None,
            latency: latency_histogram(),
            window: Duration::ZERO,
            exhausted: false,
            cut_short: false,
        };
        let mut last = record_from;
        for part in parts {
            result.requests += part.requests;
            result.accepted_events += part.accepted_events;
            result.transport_errors += part.transport_errors;
            for (status, count) in part.statuses {
                *result.statuses.entry(status).or_default() += count;
            }
            if result.first_failure.is_none() {
                result.first_failure = part.first_failure;
            }
            let _ = result.latency.add(&part.latency);
            if let Some(done) = part.last {
                last = last.max(done);
            }
        }
        result.window = last.saturating_duration_since(record_from);
        result
    }
}

struct Part {
    requests: u64,
    accepted_events: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_failure: Option<String>,
    latency: Histogram<u64>,
    last: Option<Instant>,
}

impl Default for Part {
    fn default() -> Self {
        Part {
            requests: 0,
            accepted_events: 0,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            first_failure: None,
            latency: latency_histogram(),
            last: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The lake writer's lag
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct LagSample {
    at: Instant,
    /// Sum over partitions of high watermark minus committed offset.
    lag: i64,
    /// Partitions for which the group has committed an offset.
    committed_partitions: usize,
}

/// Samples the lag of a consumer group at a fixed interval on its own thread.
struct LagSampler {
    samples: Arc<Mutex<Vec<LagSample>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LagSampler {
    fn start(
        kafka: KafkaConfig,
        topic: String,
        group: String,
        partitions: i32,
        interval: Duration,
    ) -> LagSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let samples = Arc::clone(&samples);
            let errors = Arc::clone(&errors);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // The writer's group id, only to read its committed offsets: this consumer
                // never subscribes, so it never joins the group.
                let consumer: BaseConsumer = match fraud_kafka::client_config(&kafka)
                    .set("group.id", &group)
                    .set("enable.auto.commit", "false")
                    .create()
                {
                    Ok(consumer) => consumer,
                    Err(error) => {
                        lock(&errors).push(format!("create the lag consumer: {error}"));
                        return;
                    }
                };
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    match sample_lag(&consumer, &topic, partitions) {
                        Ok(sample) => lock(&samples).push(sample),
                        Err(error) => lock(&errors).push(error.to_string()),
                    }
                    next += interval;
                    while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        LagSampler {
            samples,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    fn samples(&self) -> Vec<LagSample> {
        lock(&self.samples).clone()
    }

    fn errors(&self) -> Vec<String> {
        lock(&self.errors).clone()
    }

    fn stop(mut self) -> (Vec<LagSample>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (self.samples(), self.errors())
    }
}

impl Drop for LagSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sum of the high watermarks of `topic`'s partitions 0 to `partitions` − 1.
fn high_watermark_sum(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<i64> {
    (0..partitions)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, timeout)
                .map(|(_, high)| high)
        })
        .sum()
}

fn sample_lag(consumer: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<LagSample> {
    let timeout = Duration::from_secs(5);
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .context("committed offsets")?;
    let mut lag = 0;
    let mut committed_partitions = 0;
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .context("watermarks")?;
        let position = match committed
            .find_partition(topic, partition)
            .map(|element| element.offset())
        {
            Some(Offset::Offset(offset)) => {
                committed_partitions += 1;
                offset
            }
            _ => low,
        };
        lag += (high - position).max(0);
    }
    Ok(LagSample {
        at: Instant::now(),
        lag,
        committed_partitions,
    })
}

struct LakeResult {
    /// Why the lag could not be measured, if it could not.
    not_measurable: Option<String>,
    max_lag: i64,
    /// Lag at the end of the batch phase.
    lag_at_batch_end: i64,
    /// From the end of the batch phase to the first sample with lag 0.
    back_to_zero: Option<Duration>,
    bound: Duration,
    samples: usize,
    parquet_files: usize,
    parquet_bytes: u64,
    sampling_errors: Vec<String>,
}

impl LakeResult {
    /// The lag in a phrase; `phase` is what the wait started after.
    fn summary(&self, phase: &str) -> String {
        if let Some(reason) = &self.not_measurable {
            return format!("not measurable: {reason}");
        }
        match self.back_to_zero {
            Some(after) => format!(
                "max lag {} records; back to 0 {:.1}s after {phase}",
                fmt_int(self.max_lag as u64),
                after.as_secs_f64()
            ),
            None => format!(
                "max lag {} records; not back to 0 within {}s of {phase}",
                fmt_int(self.max_lag as u64),
                self.bound.as_secs()
            ),
        }
    }
}

async fn wait_for_lake(
    args: &IngestArgs,
    settings: &Settings,
    stack: &Stack,
    sampler: &LagSampler,
    batch_end: Instant,
) -> LakeResult {
    let bound = Duration::from_secs(args.lake_drain_seconds);
    // A writer that has committed nothing by the time its idle flush must have happened
    // (plus a margin) is not working: stop waiting for it.
    let give_up_without_commits =
        Duration::from_millis(settings.lake.idle_flush_ms) + Duration::from_secs(20);
    let mut back_to_zero = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let samples = sampler.samples();
        if let Some(zero) = samples.iter().find(|s| s.at >= batch_end && s.lag == 0) {
            back_to_zero = Some(zero.at.duration_since(batch_end));
            break;
        }
        let waited = batch_end.elapsed();
        let committed_any = samples.iter().any(|s| s.committed_partitions > 0);
        if waited >= bound || (!committed_any && waited >= give_up_without_commits.min(bound)) {
            break;
        }
    }
    let samples = sampler.samples();
    let (parquet_files, parquet_bytes) = parquet_files(&stack.lake_root);
    let committed_any = samples.iter().any(|s| s.committed_partitions > 0);
    let max_lag = samples.iter().map(|s| s.lag).max().unwrap_or(0);
    let lag_at_batch_end = samples
        .iter()
        .rev()
        .find(|s| s.at <= batch_end)
        .map(|s| s.lag)
        .unwrap_or(0);
    let sampling_errors = sampler.errors();
    let not_measurable = if samples.is_empty() {
        Some(format!(
            "no lag sample could be taken ({})",
            sampling_errors.first().cloned().unwrap_or_default()
        ))
    } else if !committed_any {
        Some(format!(
            "the lake writer (group `{}`) committed no offset and wrote {} Parquet file(s) \
             within {}s of the batch phase: it does not consume yet",
            stack.writer_group,
            parquet_files,
            batch_end.elapsed().as_secs()
        ))
    } else {
        None
    };
    LakeResult {
        not_measurable,
        max_lag,
        lag_at_batch_end,
        back_to_zero,
        bound,
        samples: samples.len(),
        parquet_files,
        parquet_bytes,
        sampling_errors,
    }
}

/// Parquet files under `root` (recursively) and their total size.
fn parquet_files(root: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "parquet") {
                files += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (files, bytes)
}

// ---------------------------------------------------------------------------------------
// CPU accounting (from /proc): the machine, the service under test (and some of its
// threads), this program, Kafka, Redis
// ---------------------------------------------------------------------------------------

/// Threads of the service accounted on their own (their time also counts in the service's).
#[derive(Clone, Copy)]
enum ThreadMatch {
    None,
    /// Threads with exactly this name.
    Named(&'static str),
    /// Threads whose name starts with this.
    Prefixed(&'static str),
}

struct Pids {
    /// The service under test (0 when it is not running yet).
    service: u32,
    threads: [ThreadMatch; 2],
    bench: u32,
    kafka: Vec<u32>,
    redis: Vec<u32>,
}

impl Pids {
    fn find(service: u32, threads: [ThreadMatch; 2]) -> Pids {
        let mut kafka = Vec::new();
        let mut redis = Vec::new();
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
                if cmdline.contains("kafka.Kafka") {
                    kafka.push(pid);
                } else if cmdline.starts_with("redis-server") || cmdline.contains("/redis-server") {
                    redis.push(pid);
                }
            }
        }
        Pids {
            service,
            threads,
            bench: std::process::id(),
            kafka,
            redis,
        }
    }
}

struct CpuSnapshot {
    at: Instant,
    busy: u64,
    total: u64,
    service: u64,
    threads: [u64; 2],
    bench: u64,
    kafka: u64,
    redis: u64,
}

#[derive(Clone, Copy)]
struct CpuUsage {
    seconds: f64,
    /// Share of the whole machine (every CPU) that was busy, 0–100.
    machine_busy_percent: f64,
    /// CPUs' worth of time each process used.
    service_cores: f64,
    /// The parts of `service_cores` on the threads of `Pids::threads`.
    thread_cores: [f64; 2],
    bench_cores: f64,
    kafka_cores: f64,
    redis_cores: f64,
    /// Everything else that ran (builds, other services).
    other_cores: f64,
}

impl CpuSnapshot {
    fn take(pids: &Pids) -> CpuSnapshot {
        let (busy, total) = machine_ticks();
        CpuSnapshot {
            at: Instant::now(),
            busy,
            total,
            service: process_ticks(pids.service),
            threads: pids
                .threads
                .map(|threads| thread_ticks(pids.service, threads)),
            bench: process_ticks(pids.bench),
            kafka: pids.kafka.iter().map(|pid| process_ticks(*pid)).sum(),
            redis: pids.redis.iter().map(|pid| process_ticks(*pid)).sum(),
        }
    }

    fn usage_until(&self, later: &CpuSnapshot) -> CpuUsage {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / ticks_per_second / seconds;
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let service_cores = cores(self.service, later.service);
        let bench_cores = cores(self.bench, later.bench);
        let kafka_cores = cores(self.kafka, later.kafka);
        let redis_cores = cores(self.redis, later.redis);
        let busy_cores = cores(self.busy, later.busy);
        CpuUsage {
            seconds,
            machine_busy_percent: later.busy.saturating_sub(self.busy) as f64 / total * 100.0,
            service_cores,
            thread_cores: [0, 1].map(|i| cores(self.threads[i], later.threads[i])),
            bench_cores,
            kafka_cores,
            redis_cores,
            other_cores: (busy_cores - service_cores - bench_cores - kafka_cores - redis_cores)
                .max(0.0),
        }
    }
}

/// Other work on the machine (a build, say) would lower every figure: waits up to
/// `seconds` for it to end, and says so when it does not. Returns the machine's use over
/// the last 3 s.
async fn wait_for_quiet(pids: &Pids, seconds: u64) -> CpuUsage {
    let waiting_since = Instant::now();
    loop {
        let before = CpuSnapshot::take(pids);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let background = before.usage_until(&CpuSnapshot::take(pids));
        if background.machine_busy_percent <= BUSY_BACKGROUND_PERCENT {
            return background;
        }
        if waiting_since.elapsed() >= Duration::from_secs(seconds) {
            progress(format!(
                "warning: the machine is {:.0}% busy before the run (other processes: {:.2} \
                 CPUs); the figures will be low",
                background.machine_busy_percent, background.other_cores
            ));
            return background;
        }
        progress(format!(
            "the machine is {:.0}% busy (other processes: {:.2} CPUs): waiting for it to quieten",
            background.machine_busy_percent, background.other_cores
        ));
    }
}

/// A Markdown table of CPU use per phase: `service` names the service's column and
/// `threads` the columns of its threads accounted on their own (at most two).
fn cpu_table(service: &str, threads: &[&str], rows: &[(&str, CpuUsage)]) -> String {
    let mut r = String::new();
    let _ = write!(r, "| phase | seconds | machine | {service} |");
    for thread in threads {
        let _ = write!(r, " {thread} |");
    }
    let _ = write!(
        r,
        " Kafka | Redis | fraud-bench | other |\n|---|---|---|---|"
    );
    for _ in threads {
        r.push_str("---|");
    }
    r.push_str("---|---|---|---|\n");
    for (phase, usage) in rows {
        let _ = write!(
            r,
            "| {phase} | {:.1} | {:.0}% | {:.2} |",
            usage.seconds, usage.machine_busy_percent, usage.service_cores
        );
        for cores in usage.thread_cores.iter().take(threads.len()) {
            let _ = write!(r, " {cores:.2} |");
        }
        let _ = writeln!(
            r,
            " {:.2} | {:.2} | {:.2} | {:.2} |",
            usage.kafka_cores, usage.redis_cores, usage.bench_cores, usage.other_cores
        );
    }
    r
}

/// (busy, total) jiffies of all CPUs, from the first line of /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, busy + idle)
}

/// The name of the lake writer's thread inside ingest.
const LAKE_WRITER_THREAD: &str = "lake-writer";

/// utime + stime of a process, in jiffies (0 when it is gone).
fn process_ticks(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// utime + stime of the threads of `pid` that `threads` matches, in jiffies.
fn thread_ticks(pid: u32, threads: ThreadMatch) -> u64 {
    if matches!(threads, ThreadMatch::None) || pid == 0 {
        return 0;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| {
                let comm = comm.trim_end();
                match threads {
                    ThreadMatch::None => false,
                    ThreadMatch::Named(name) => comm == name,
                    ThreadMatch::Prefixed(prefix) => comm.starts_with(prefix),
                }
            })
        })
        .map(|task| stat_ticks(&task.path().join("stat").to_string_lossy()))
        .sum()
}

/// utime + stime from a `stat` file of /proc.
fn stat_ticks(path: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is the first.
    let Some(rest) = stat.rfind(')').map(|end| &stat[end + 2..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (0-based 11, 12).
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

struct Machine {
    cpus: usize,
    model: String,
    memory_gib: f64,
    kernel: String,
}

impl Machine {
    fn describe() -> Machine {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map(|model| model.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpus,
            model,
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel,
        }
    }
}

/// The first line of a report: when, on what machine, what ran beside the service, and
/// which command (at which revision).
fn run_line(machine: &Machine, now: DateTime<Utc>, setup: &str, command: &str) -> String {
    format!(
        "{} · {} CPUs ({}), {:.1} GiB memory, Linux {} · {setup} · `{command}`{}",
        now.format("%Y-%m-%d %H:%M UTC"),
        machine.cpus,
        machine.model,
        machine.memory_gib,
        machine.kernel,
        git_revision(&workspace_root())
            .map(|revision| format!(" at {revision}"))
            .unwrap_or_default()
    )
}

fn git_revision(root: &Path) -> Option<String> {
    let run = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = run(&["status", "--porcelain"]).is_some_and(|status| !status.is_empty());
    Some(if dirty {
        format!("{commit} (with uncommitted changes)")
    } else {
        commit
    })
}

fn fmt_int(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn fmt_rate(value: f64) -> String {
    fmt_int(value.round().max(0.0) as u64)
}

fn fmt_micros(micros: u64) -> String {
    if micros >= 10_000 {
        format!("{:.0} ms", micros as f64 / 1000.0)
    } else {
        format!("{:.1} ms", micros as f64 / 1000.0)
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "**pass**" } else { "**FAIL**" }
}

/// Background load above which the report warns that the figures are low.
const BUSY_BACKGROUND_PERCENT: f64 = 25.0;

/// Batches must reach this share of the reference rate.
const BATCH_TARGET_RATIO: f64 = 0.5;
/// Single-event p99 must be at most this, in microseconds.
const SINGLES_P99_TARGET_MICROS: u64 = 10_000;

fn render_report(
    args: &IngestArgs,
    settings: &Settings,
    stack: &Stack,
    ingest_bin: &Path,
    workload: &Workload,
    m: &Measured,
) -> String {
    let machine = Machine::describe();
    let now = Utc::now();
    let reference = m.reference.records_per_second();
    let batch_rate = m.batches.events_per_second();
    let ratio = batch_rate / reference;
    let p50 = m.singles.latency.value_at_quantile(0.50);
    let p99 = m.singles.latency.value_at_quantile(0.99);
    let mut r = String::new();
    let _ = writeln!(r, "# Ingest benchmark\n");
    let _ = writeln!(
        r,
        "{}\n",
        run_line(
            &machine,
            now,
            "Kafka, Redis (and PostgreSQL, RabbitMQ) on the same machine as ingest and this \
             load generator",
            "fraud-bench ingest"
        )
    );

    let _ = writeln!(r, "| figure | value |\n|---|---|");
    let _ = writeln!(
        r,
        "| reference: plain producer straight to Kafka, {} pre-encoded records, all acknowledged | {} records/s |",
        fmt_int(m.reference.records as u64),
        fmt_rate(reference)
    );
    let _ = writeln!(
        r,
        "| reference: one record at a time, acknowledgement latency p50 / p99 | {} / {} |",
        fmt_micros(m.reference.alone.value_at_quantile(0.50)),
        fmt_micros(m.reference.alone.value_at_quantile(0.99))
    );
    let _ = writeln!(
        r,
        "| batches: NDJSON of {} events, {} concurrent client(s), {} events in {:.1} s | {} events/s |",
        fmt_int(args.batch_size as u64),
        m.batch_clients,
        fmt_int(m.batches.accepted_events),
        m.batches.window.as_secs_f64(),
        fmt_rate(batch_rate)
    );
    let _ = writeln!(r, "| ratio: batches ÷ reference | {:.0}% |", ratio * 100.0);
    let _ = writeln!(
        r,
        "| batches: latency per batch p50 / p99 | {} / {} |",
        fmt_micros(m.batches.latency.value_at_quantile(0.50)),
        fmt_micros(m.batches.latency.value_at_quantile(0.99))
    );
    let _ = writeln!(
        r,
        "| batches: answers other than 202 | {} of {} ({}) |",
        fmt_int(m.batches.not_accepted()),
        fmt_int(m.batches.requests + m.batches.transport_errors),
        m.batches.statuses_text()
    );
    let _ = writeln!(
        r,
        "| singles: {} concurrent clients, {} s | {} requests/s |",
        args.singles_clients,
        args.singles_seconds,
        fmt_rate(m.singles.requests_per_second())
    );
    let _ = writeln!(
        r,
        "| singles: latency p50 / p99 / p99.9 / max | {} / {} / {} / {} |",
        fmt_micros(p50),
        fmt_micros(p99),
        fmt_micros(m.singles.latency.value_at_quantile(0.999)),
        fmt_micros(m.singles.latency.max())
    );
    let _ = writeln!(
        r,
        "| singles: answers other than 202 | {} of {} ({}) |",
        fmt_int(m.singles.not_accepted()),
        fmt_int(m.singles.requests + m.singles.transport_errors),
        m.singles.statuses_text()
    );
    let lake = &m.lake;
    match &lake.not_measurable {
        Some(reason) => {
            let _ = writeln!(r, "| lake writer: lag | not measurable: {reason} |");
        }
        None => {
            let _ = writeln!(
                r,
                "| lake writer: max lag (records, summed over partitions) | {} |",
                fmt_int(lake.max_lag as u64)
            );
            let _ = writeln!(
                r,
                "| lake writer: lag at the end of the batch phase | {} |",
                fmt_int(lake.lag_at_batch_end as u64)
            );
            let _ = writeln!(
                r,
                "| lake writer: records it may buffer by design (max_rows_per_file × partitions) | {} |",
                fmt_int(u64::from(settings.lake.max_rows_per_file) * args.partitions as u64)
            );
            let _ = writeln!(
                r,
                "| lake writer: lag back to 0 after the batch phase | {} |",
                match lake.back_to_zero {
                    Some(after) => format!("{:.1} s", after.as_secs_f64()),
                    None => format!("not within {} s", lake.bound.as_secs()),
                }
            );
            let _ = writeln!(
                r,
                "| lake: Parquet files written | {} ({:.1} MiB) |",
                fmt_int(lake.parquet_files as u64),
                lake.parquet_bytes as f64 / 1024.0 / 1024.0
            );
        }
    }

    let _ = writeln!(r, "\n## Targets (issue 3)\n");
    let _ = writeln!(r, "| target | measured | result |\n|---|---|---|");
    let _ = writeln!(
        r,
        "| batches ≥ {:.0}% of the reference rate | {:.0}% | {} |",
        BATCH_TARGET_RATIO * 100.0,
        ratio * 100.0,
        pass(ratio >= BATCH_TARGET_RATIO)
    );
    let _ = writeln!(
        r,
        "| single-event p99 ≤ {} at {} clients | {} | {} |",
        fmt_micros(SINGLES_P99_TARGET_MICROS),
        args.singles_clients,
        fmt_micros(p99),
        pass(p99 <= SINGLES_P99_TARGET_MICROS)
    );
    match (&lake.not_measurable, lake.back_to_zero) {
        (Some(reason), _) => {
            let _ = writeln!(
                r,
                "| lake writer keeps up (lag back to 0 within {} s of the batch phase) | not measurable: {reason} | **not measured** |",
                lake.bound.as_secs()
            );
        }
        (None, zero) => {
            let _ = writeln!(
                r,
                "| lake writer keeps up (lag back to 0 within {} s of the batch phase) | {} | {} |",
                lake.bound.as_secs(),
                match zero {
                    Some(after) => format!(
                        "max {} records, 0 after {:.1} s",
                        fmt_int(lake.max_lag as u64),
                        after.as_secs_f64()
                    ),
                    None => format!(
                        "max {} records, not back to 0",
                        fmt_int(lake.max_lag as u64)
                    ),
                },
                pass(zero.is_some())
            );
        }
    }
    let _ = writeln!(
        r,
        "\nEvery answer is expected to be 202; answers other than 202 are counted above{}.",
        [&m.batches, &m.singles]
            .iter()
            .filter_map(|load| load.first_failure.as_ref())
            .next()
            .map(|first| format!(
                " (first: `{}`)",
                first.replace('|', "\\|").replace('\n', " ")
            ))
            .unwrap_or_default()
    );

    let _ = writeln!(r, "\n## Batch concurrency\n");
    let _ = writeln!(
        r,
        "{} batches of {} at each concurrency (after {} warm-up batches); the sustained phase used the fastest, {} client(s).\n",
        args.sweep_batches, args.batch_size, WARMUP_BATCHES, m.batch_clients
    );
    let _ = writeln!(
        r,
        "| clients | events/s | batch latency p50 / p99 | answers other than 202 |\n|---|---|---|---|"
    );
    for (clients, load) in &m.sweep {
        let _ = writeln!(
            r,
            "| {clients} | {} | {} / {} | {} |",
            fmt_rate(load.events_per_second()),
            fmt_micros(load.latency.value_at_quantile(0.50)),
            fmt_micros(load.latency.value_at_quantile(0.99)),
            fmt_int(load.not_accepted())
        );
    }
    if m.batches.cut_short {
        let _ = writeln!(
            r,
            "\nThe sustained phase reached its {} s bound before posting all {} events.",
            args.seconds,
            fmt_int(args.events as u64)
        );
    }
    if m.singles.exhausted {
        let _ = writeln!(
            r,
            "\nThe single-event phase used up its {} pre-generated events before {} s.",
            fmt_int(workload.singles.len() as u64),
            args.singles_seconds
        );
    }

    if let Some(overload) = &m.overload {
        overload::render(&mut r, args, settings, overload);
    }

    let _ = writeln!(r, "\n## CPU during each phase\n");
    let _ = writeln!(
        r,
        "CPUs' worth of time used (out of {}); `machine` is the share of every CPU that was busy; \
         `of which lake writer` is the lake writer's own thread inside ingest (its Kafka \
         consumer's librdkafka threads count under ingest); the reference producer runs \
         inside fraud-bench.\n",
        machine.cpus
    );
    let rows: Vec<(&str, CpuUsage)> = std::iter::once(("before the run (idle)", m.background))
        .chain(m.cpu.iter().copied())
        .collect();
    r.push_str(&cpu_table("ingest", &["of which lake writer"], &rows));
    if m.background.machine_busy_percent > BUSY_BACKGROUND_PERCENT {
        let _ = writeln!(
            r,
            "\n**The machine was {:.0}% busy before the run started** (other work: builds, \
             services): every figure above is lower than on a quiet machine.",
            m.background.machine_busy_percent
        );
    }

    let _ = writeln!(r, "\n## Settings\n");
    let ingest = &settings.ingest;
    let lake_config = &settings.lake;
    let settings_lines = [
        format!("ingest binary: `{}`", ingest_bin.display()),
        format!(
            "events: {} generated before timing ({} customers of Zipf popularity, {} vendors, 1–5 vendors per customer, log-normal amounts with cents, `ts` within the hour before the run, 20% of customer ids as JSON integers, 10% of amounts as strings), seed {}",
            fmt_int(workload.total_events as u64),
            fmt_int(workload.customers as u64),
            fmt_int(workload.vendors as u64),
            args.seed
        ),
        format!(
            "topics: `{}` (ingest's) and `{}` (the reference's), {} partitions each, replication 1, deleted at the end",
            stack.ingest_topic, stack.reference_topic, args.partitions
        ),
        format!(
            "producer (ingest and reference alike): `fraud_kafka::durable_producer_with` — idempotent, acks=all, zstd, linger.ms {} (one-event requests and the one-record-at-a-time reference: {}), queue.buffering.max.messages {}, message.timeout.ms {}; key customerId, headers `schema-version: 1` and `content-type`",
            m.reference.linger_ms,
            m.reference.single_event_linger_ms,
            m.reference.queue_max,
            m.reference.timeout_ms
        ),
        format!(
            "reference: {} records after a {}-record warm-up; {} waits for a full queue; {} not acknowledged",
            fmt_int(m.reference.records as u64),
            REFERENCE_WARMUP,
            fmt_int(m.reference.queue_full_waits as u64),
            fmt_int(m.reference.failed as u64)
        ),
        format!(
            "batches: {} events in batches of {}, bound {} s; sweep over {:?} clients",
            fmt_int(args.events as u64),
            args.batch_size,
            args.seconds,
            args.batch_clients
        ),
        format!(
            "singles: {} clients sharing one keep-alive HTTP/1.1 client, {} s measured after {} s of warm-up; latency from sending the request to reading the whole answer",
            args.singles_clients, args.singles_seconds, args.singles_warmup_seconds
        ),
        format!(
            "ingest: defaults except its topic, Redis key prefix `{}`, lake root (a temporary directory), lake-writer group `{}`, one API key, and the per-key rate limit raised from {}/s (burst {}) to {}/s so it does not cap the measurement; idempotency in Redis, horizon {} ms",
            stack.redis_prefix,
            stack.writer_group,
            fmt_int(u64::from(ingest.rate_limit_per_second)),
            fmt_int(u64::from(ingest.rate_limit_burst)),
            fmt_int(u64::from(BENCH_RATE_LIMIT)),
            fmt_int(ingest.idempotency_horizon_ms)
        ),
        format!(
            "lake writer: max_rows_per_file {}, row_group_rows {}, idle_flush_ms {}; lag sampled every second ({} samples), waiting at most {} s after the batch phase{}",
            fmt_int(u64::from(lake_config.max_rows_per_file)),
            fmt_int(u64::from(lake_config.row_group_rows)),
            fmt_int(lake_config.idle_flush_ms),
            lake.samples,
            args.lake_drain_seconds,
            if lake.sampling_errors.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} sampling errors (first: {})",
                    lake.sampling_errors.len(),
                    lake.sampling_errors[0]
                )
            }
        ),
        format!(
            "ingest stopped {}",
            match stack.stopped_cleanly {
                Some(true) => "cleanly on SIGTERM",
                Some(false) => "by SIGKILL after SIGTERM timed out",
                None => "(it had exited already)",
            }
        ),
    ];
    for line in settings_lines {
        let _ = writeln!(r, "- {line}");
    }
    r
}

/// Waits until `process` (`name`, serving on `base`) answers `/readyz` with one of
/// `statuses`, at most `bound`; how long that took. Fails, with the end of its output,
/// when it exits first or is not ready in time (it is left running).
async fn wait_ready(
    process: &mut ChildProcess,
    name: &str,
    base: &str,
    statuses: &[u16],
    bound: Duration,
) -> anyhow::Result<Duration> {
    let client = http_client()?;
    let url = format!("{base}/readyz");
    let started = Instant::now();
    loop {
        if !process.is_running() {
            bail!(
                "{name} exited during start-up; its output:\n{}",
                tail(&process.output(), 40)
            );
        }
        if let Ok(response) = client.get(&url).send().await
            && statuses.contains(&response.status().as_u16())
        {
            let took = started.elapsed();
            progress(format!(
                "{name} ready in {:.1}s (pid {})",
                took.as_secs_f64(),
                process.pid()
            ));
            return Ok(took);
        }
        if started.elapsed() > bound {
            bail!(
                "{name} was not ready after {}s; its output:\n{}",
                bound.as_secs(),
                tail(&process.output(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops a running service: SIGTERM, then SIGKILL after 30 s (noted in `problems`).
/// Whether it stopped cleanly, or `None` when it was not running any more.
async fn stop_process(
    mut process: ChildProcess,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<bool> {
    if !process.is_running() {
        return None;
    }
    progress(format!("stopping {name} (SIGTERM)"));
    process.signal(libc::SIGTERM);
    let started = Instant::now();
    while process.is_running() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let clean = !process.is_running();
    if !clean {
        problems.push(format!("{name} did not stop within 30s of SIGTERM: killed"));
    }
    Some(clean)
    // Dropping the process kills it if it is still running.
}
