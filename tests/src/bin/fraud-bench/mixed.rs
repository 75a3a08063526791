//! `fraud-bench mixed`: the sustained mixed run (`deploy/dev bench mixed`, and the last
//! part of a plain `deploy/dev bench`): the whole platform under realistic load, every
//! part at once, sampled every second.
//!
//! The four release binaries run as the platform tests run them ([`Platform`], with
//! `PLATFORM_BIN_DIR` set to the release directory): their own topics, groups, Redis
//! prefix, database, alerts exchange and lake, removed at the end. For `--seconds`:
//! - **ingest** takes the load generator's traffic ([`platform_tests::load`]: Zipf-skewed
//!   customers, a few vendors each, a daily cycle, late and duplicate deliveries,
//!   labelled fraud episodes), its event-time span compressed into the run, posted at
//!   `--rate` deliveries/s by `--clients` lanes through the shared posting loop
//!   ([`platform_tests::post`]);
//! - the **speed layer** applies it and the **serving API** evaluates every window
//!   update; its alerts arrive on a queue of our own bound with `alert.#`;
//! - `--readers` clients `GET /v1/customers/{id}/risk` without pause, for customers
//!   drawn by the traffic's own popularity;
//! - at half time, `batch-layer run --as-of T` recomputes the lake written so far (T: two
//!   hours of event time before what is being posted).
//!
//! Every second a sampler reads the transactions topic's high watermarks (events
//! acknowledged), the lag of the speed layer's, the lake writer's and the serving API's
//! groups, and the risk readers' requests and latency of that second.
//!
//! The reference figures come from the same run: once everything has caught up, the
//! same readers run alone for `--reference-seconds` against the same state, so the
//! report can say what the mixed load costs a risk read. The offered rate is the
//! reference of ingest's: the run says whether the platform took it.
//!
//! The report (Markdown) goes to stdout and `--report` (default
//! `target/bench/mixed.md`), with the samples as CSV and two PNG plots beside it
//! (`mixed-throughput.png`, `mixed-latency.png`) drawn by matplotlib in the tests'
//! Python (`--python`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Args;
use platform_tests::load::{self, Load, LoadConfig};
use platform_tests::platform::Platform;
use platform_tests::{post, reference};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{
    Machine, fmt_int, fmt_rate, lock, progress, run_line, sample_lag, workspace_root, write_report,
};

#[derive(Args, Clone)]
pub(super) struct MixedArgs {
    /// Deliveries posted per second (duplicates included).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Length of the mixed run, in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Concurrent posting clients (each customer always through the same one).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Most transactions in one POST.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Concurrent risk readers.
    #[arg(long, default_value_t = 16)]
    readers: usize,
    /// Distinct customers of the traffic.
    #[arg(long, default_value_t = 20_000)]
    customers: usize,
    /// Labelled fraud episodes in the traffic.
    #[arg(long, default_value_t = 40)]
    episodes: usize,
    /// Event time the run covers, in hours (compressed into `--seconds`).
    #[arg(long, default_value_t = 48)]
    span_hours: i64,
    /// Length of the readers-alone reference, in seconds.
    #[arg(long, default_value_t = 15)]
    reference_seconds: u64,
    /// How long to wait after the last POST for everything to catch up, in seconds.
    #[arg(long, default_value_t = 180)]
    drain_seconds: u64,
    /// Seed of the load generator.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The directory of the release service binaries (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The Python with matplotlib that draws the plots (none: no plots).
    #[arg(long, env = "DUCKDB_PYTHON")]
    python: Option<PathBuf>,
    /// Where to write the report (default: `target/bench/mixed.md` under the workspace).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One second of the run.
#[derive(Debug, Clone, Default)]
struct Second {
    /// Seconds since the mixed run started.
    at: f64,
    /// Records in the transactions topic (every acknowledged event, duplicates included).
    transactions: i64,
    speed_lag: i64,
    lake_lag: i64,
    updates_lag: i64,
    /// Risk answers completed in this second, and their latency (µs) percentiles.
    risk_requests: usize,
    risk_p50: u64,
    risk_p99: u64,
    /// Alerts delivered on the queue in this second.
    alerts: usize,
}

pub(super) async fn mixed_benchmark(args: MixedArgs) -> anyhow::Result<()> {
    if args.rate <= 0.0 || args.seconds < 10 || args.clients == 0 || args.readers == 0 {
        bail!("--rate must be positive, --seconds at least 10, --clients and --readers at least 1");
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .to_path_buf(),
    };
    for name in ["ingest", "speed-layer", "serving-api", "batch-layer"] {
        if !bin_dir.join(name).is_file() {
            bail!(
                "no {name} in {} (build it: cargo build --release -p {name}, or pass --bin-dir)",
                bin_dir.display()
            );
        }
    }
    // SAFETY: set before any other thread of this program reads the environment.
    unsafe { std::env::set_var("PLATFORM_BIN_DIR", &bin_dir) };

    // The traffic, generated before anything is timed.
    let mut config = LoadConfig {
        seed: args.seed,
        customers: args.customers,
        span_ms: args.span_hours * reference::HOUR_MS,
        fraud_episodes: args.episodes,
        ..LoadConfig::default()
    };
    config.events =
        (args.rate * args.seconds as f64 / (1.0 + config.duplicate_fraction)).floor() as usize;
    let now = Utc::now().timestamp_millis();
    // The schedule starts half a minute from now (generating the traffic and starting the
    // platform take that long at most); no event may be posted before its own time.
    let planned_start_ms = now + 30_000;
    let pace = load::pace(&config, args.rate, planned_start_ms)?;
    config.start_ms = pace.start_ms;
    progress(format!(
        "mixed: generating {} events of {} customers",
        fmt_int(config.events as u64),
        fmt_int(config.customers as u64)
    ));
    let load = load::generate(&config)?;
    let rules = fraud_testkit::local_settings().serving.rules;
    let events = load.reference_events();
    let expected = load::expected_episodes(&load::firings(&events, &rules));
    let lanes = load::lanes(&load, args.clients, pace.speedup);

    progress("mixed: starting the platform (release binaries)");
    let platform = Platform::start("bench-mixed").await;
    let outcome = run(
        &args,
        &platform,
        &load,
        &lanes,
        pace,
        planned_start_ms,
        &expected,
    )
    .await;
    platform.stop().await;
    let measured = outcome?;

    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/bench/mixed.md"));
    let dir = report_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("mixed.csv");
    std::fs::write(&csv, samples_csv(&measured.seconds))
        .with_context(|| format!("write {}", csv.display()))?;
    let plots = match &args.python {
        Some(python) => draw_plots(python, &csv, &dir),
        None => Err("no --python given".to_owned()),
    };
    let report = render(&args, &load, &expected, &measured, &plots);
    write_report(&report, &report_path)
}

/// What the run measured.
struct Measured {
    seconds: Vec<Second>,
    posting: post::Counts,
    posting_time: Duration,
    mixed_risk: Latencies,
    alone_risk: Latencies,
    risk_failures: usize,
    first_risk_failure: Option<String>,
    batch: Option<BatchOutcome>,
    /// Per expected episode: its delivery delay (None: not delivered).
    alert_delays: Vec<Option<Duration>>,
    alerts_delivered: usize,
    duplicate_deliveries: usize,
    /// Alerts of no expected episode, per rule (a baseline rule, for one, can fire once
    /// the half-time batch run has published baselines; the expected set leaves it out).
    unexpected_alerts: BTreeMap<String, usize>,
    caught_up_after: Option<Duration>,
    /// RabbitMQ closed the queue's connection during the run: the alert figures are
    /// incomplete.
    alert_queue_lost: bool,
    max_lag: (i64, i64, i64),
}

struct BatchOutcome {
    as_of: i64,
    wall: Duration,
    status: Option<i32>,
    message: String,
}

/// Latencies (µs) of a phase, and its length.
#[derive(Default)]
struct Latencies {
    micros: Vec<u64>,
    window: Duration,
}

impl Latencies {
    fn per_second(&self) -> f64 {
        self.micros.len() as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn quantile(&self, q: f64) -> u64 {
        quantile(&self.micros, q)
    }
}

/// The `q` quantile (nearest rank) of `values`, sorted or not.
fn quantile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A risk answer: when it completed (since the run's start), its latency, its status.
type Answer = (Duration, u64, Result<u16, String>);

async fn run(
    args: &MixedArgs,
    platform: &Platform,
    load: &Load,
    lanes: &[Vec<post::Item>],
    pace: load::Pace,
    planned_start_ms: i64,
    expected: &[load::ExpectedEpisode],
) -> anyhow::Result<Measured> {
    let alerts = Arc::new(Mutex::new(Vec::<(Instant, serde_json::Value)>::new()));
    let stop_alerts = Arc::new(AtomicBool::new(false));
    let alert_task = {
        let mut subscriber = platform.subscribe("alert.#").await;
        let alerts = Arc::clone(&alerts);
        let stop = Arc::clone(&stop_alerts);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // The subscriber's own deadline (30 s) never runs out inside this one.
                if let Ok(delivery) =
                    tokio::time::timeout(Duration::from_millis(500), subscriber.next()).await
                {
                    let body = serde_json::from_slice(&delivery.data).unwrap_or_default();
                    lock(&alerts).push((Instant::now(), body));
                }
            }
        })
    };

    let wait_ms = (planned_start_ms - Utc::now().timestamp_millis()).max(0);
    let started = Instant::now() + Duration::from_millis(wait_ms as u64);
    let sampler = Sampler::start(platform, started);
    let stop_readers = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(platform, load, args.readers, started, &stop_readers);

    progress(format!(
        "mixed: {} deliveries at {}/s by {} clients, {} risk readers, for {} s",
        fmt_int(load.deliveries.len() as u64),
        fmt_rate(args.rate),
        args.clients,
        args.readers,
        args.seconds
    ));
    let target = post::Target {
        url: platform.ingest.base.clone(),
        key: platform.ingest_key.clone(),
    };
    let options = post::Options {
        batch: args.batch,
        ..post::Options::default()
    };
    let body = |index: usize| load::delivery_json(load, index);
    let posting = post::post_lanes(&target, lanes, started, &options, &body);
    let batch = batch_at_half_time(platform, load, pace, started, args.seconds);
    let (posted, batch) = tokio::join!(posting, batch);
    let (_, counts) = posted?;
    let posting_time = started.elapsed();
    progress(format!(
        "mixed: posted in {:.1} s; waiting for everything to catch up",
        posting_time.as_secs_f64()
    ));

    let drained = Instant::now();
    let caught_up = tokio::time::timeout(Duration::from_secs(args.drain_seconds), async {
        platform
            .caught_up(Duration::from_secs(args.drain_seconds))
            .await;
        platform
            .lake_complete(Duration::from_secs(args.drain_seconds))
            .await;
    })
    .await
    .is_ok();
    let caught_up_after = caught_up.then(|| drained.elapsed());
    let expected_ids: HashMap<(String, String, i64), usize> = expected
        .iter()
        .enumerate()
        .map(|(index, e)| ((e.customer.clone(), e.rule.clone(), e.first), index))
        .collect();
    // The alerts of the last events may still be on their way from the outbox.
    let alert_deadline = Instant::now() + Duration::from_secs(30);
    while distinct_expected(&lock(&alerts), &expected_ids) < expected.len()
        && Instant::now() < alert_deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_readers.store(true, Ordering::Relaxed);
    let mixed_answers = join_readers(readers).await;
    let samples = sampler.stop();

    progress(format!(
        "mixed: reference: the readers alone for {} s",
        args.reference_seconds
    ));
    let alone_start = Instant::now();
    let stop_alone = Arc::new(AtomicBool::new(false));
    let alone = spawn_readers(platform, load, args.readers, alone_start, &stop_alone);
    tokio::time::sleep(Duration::from_secs(args.reference_seconds)).await;
    stop_alone.store(true, Ordering::Relaxed);
    let alone_answers = join_readers(alone).await;
    stop_alerts.store(true, Ordering::Relaxed);
    // The subscriber fails its task when RabbitMQ closes the connection (a restart).
    let alert_queue_lost = alert_task.await.is_err();

    let alerts = std::mem::take(&mut *lock(&alerts));
    let (alert_delays, duplicate_deliveries, unexpected_alerts) =
        alert_delays(load, lanes, started, expected, &expected_ids, &alerts);
    let mixed_window = samples
        .last()
        .map_or(Duration::ZERO, |s| Duration::from_secs_f64(s.at));
    let (risk_failures, first_risk_failure) = failures(&mixed_answers);
    let seconds = per_second(samples, &mixed_answers, &alerts, started);
    let max_lag = seconds.iter().fold((0, 0, 0), |(a, b, c), s| {
        (a.max(s.speed_lag), b.max(s.lake_lag), c.max(s.updates_lag))
    });
    Ok(Measured {
        max_lag,
        posting: counts,
        posting_time,
        mixed_risk: Latencies {
            micros: mixed_answers.iter().map(|a| a.1).collect(),
            window: mixed_window,
        },
        alone_risk: Latencies {
            micros: alone_answers.iter().map(|a| a.1).collect(),
            window: alone_start.elapsed(),
        },
        risk_failures,
        first_risk_failure,
        batch,
        alerts_delivered: alerts.len(),
        alert_delays,
        duplicate_deliveries,
        unexpected_alerts,
        caught_up_after,
        alert_queue_lost,
        seconds,
    })
}

/// Distinct expected episodes among the alerts received.
fn distinct_expected(
    alerts: &[(Instant, serde_json::Value)],
    expected: &HashMap<(String, String, i64), usize>,
) -> usize {
    let mut seen = std::collections::HashSet::new();
    for (_, body) in alerts {
        if let Some(index) = episode_of(body, expected) {
            seen.insert(index);
        }
    }
    seen.len()
}

fn episode_of(
    body: &serde_json::Value,
    expected: &HashMap<(String, String, i64), usize>,
) -> Option<usize> {
    let customer = body["customerId"].as_str()?.to_owned();
    let rule = body["rule"].as_str()?.to_owned();
    let start = reference::millis(body["episodeStart"].as_str()?);
    expected.get(&(customer, rule, start)).copied()
}

/// Each expected episode's delay: its first delivery on the queue minus the moment the
/// delivery of the event that first makes the rule hold was due to be posted (the
/// posting loop sends an item at its moment or, when behind, as soon as it can: the
/// delay includes any lateness of the client). Also the deliveries of an alert id seen
/// before, and alerts of no expected episode.
fn alert_delays(
    load: &Load,
    lanes: &[Vec<post::Item>],
    started: Instant,
    expected: &[load::ExpectedEpisode],
    expected_ids: &HashMap<(String, String, i64), usize>,
    alerts: &[(Instant, serde_json::Value)],
) -> (Vec<Option<Duration>>, usize, BTreeMap<String, usize>) {
    let due: HashMap<usize, Duration> = lanes
        .iter()
        .flatten()
        .map(|&(due, index)| (index, due))
        .collect();
    // The first delivery of each (customer, ts) among the episodes' first instants.
    let mut first_delivery: HashMap<(&str, i64), Duration> = HashMap::new();
    for (index, delivery) in load.deliveries.iter().enumerate() {
        let event = &load.events[delivery.event];
        if delivery.duplicate {
            continue;
        }
        if let Some(&at) = due.get(&index) {
            let entry = first_delivery
                .entry((event.customer.as_str(), event.ts))
                .or_insert(at);
            *entry = (*entry).max(at);
        }
    }
    let mut delays = vec![None; expected.len()];
    let mut seen_ids = std::collections::HashSet::new();
    let mut duplicates = 0;
    let mut unexpected: BTreeMap<String, usize> = BTreeMap::new();
    for (arrived, body) in alerts {
        let id = body["alertId"].as_str().unwrap_or_default().to_owned();
        if !seen_ids.insert(id) {
            duplicates += 1;
            continue;
        }
        let Some(index) = episode_of(body, expected_ids) else {
            let rule = body["rule"].as_str().unwrap_or("?").to_owned();
            *unexpected.entry(rule).or_default() += 1;
            continue;
        };
        let episode = &expected[index];
        if let Some(due) = first_delivery.get(&(episode.customer.as_str(), episode.first)) {
            let sent = started + *due;
            delays[index] = Some(arrived.saturating_duration_since(sent));
        }
    }
    (delays, duplicates, unexpected)
}

/// `count` readers GET the risk of customers drawn from the traffic's events (so by
/// its popularity) until `stop`; each answer is recorded against `origin`.
fn spawn_readers(
    platform: &Platform,
    load: &Load,
    count: usize,
    origin: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Answer>>> {
    let customers: Arc<Vec<String>> =
        Arc::new(load.events.iter().map(|e| e.customer.clone()).collect());
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    (0..count)
        .map(|reader| {
            let client = client.clone();
            let customers = Arc::clone(&customers);
            let stop = Arc::clone(stop);
            let base = platform.serving.base.clone();
            let authorization = format!("Bearer {}", platform.read_key);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(reader as u64);
                let mut answers = Vec::new();
                tokio::time::sleep_until(origin.into()).await;
                while !stop.load(Ordering::Relaxed) {
                    let customer = &customers[rng.random_range(0..customers.len())];
                    let sent = Instant::now();
                    let status = match client
                        .get(format!("{base}/v1/customers/{customer}/risk"))
                        .header("authorization", &authorization)
                        .send()
                        .await
                    {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            Ok(status)
                        }
                        Err(error) => Err(error.to_string()),
                    };
                    let done = Instant::now();
                    let micros = done.duration_since(sent).as_micros() as u64;
                    answers.push((
                        done.saturating_duration_since(origin),
                        micros.max(1),
                        status,
                    ));
                }
                answers
            })
        })
        .collect()
}

async fn join_readers(readers: Vec<tokio::task::JoinHandle<Vec<Answer>>>) -> Vec<Answer> {
    let mut all = Vec::new();
    for reader in readers {
        if let Ok(answers) = reader.await {
            all.extend(answers);
        }
    }
    all
}

fn failures(answers: &[Answer]) -> (usize, Option<String>) {
    let mut count = 0;
    let mut first = None;
    for (_, _, status) in answers {
        let failure = match status {
            Ok(200) => continue,
            Ok(status) => format!("status {status}"),
            Err(error) => error.clone(),
        };
        count += 1;
        first.get_or_insert(failure);
    }
    (count, first)
}

/// At half time, runs the batch layer over what the lake holds: T_b two hours of event
/// time before what is being posted then (the generator's late deliveries are at most
/// minutes late in event time).
async fn batch_at_half_time(
    platform: &Platform,
    load: &Load,
    pace: load::Pace,
    started: Instant,
    seconds: u64,
) -> Option<BatchOutcome> {
    let half = started + Duration::from_secs(seconds / 2);
    tokio::time::sleep_until(half.into()).await;
    let posted_ms =
        load.config.start_ms + (started.elapsed().as_secs_f64() * 1000.0 * pace.speedup) as i64;
    let as_of = (posted_ms / reference::HOUR_MS - 2) * reference::HOUR_MS;
    if as_of <= load.config.start_ms {
        return None;
    }
    progress(format!(
        "mixed: batch-layer run --as-of {}",
        reference::instant(as_of)
    ));
    let began = Instant::now();
    let run = platform.run_batch(as_of).await;
    let message = run
        .stderr
        .lines()
        .chain(run.stdout.lines())
        .rfind(|line| line.contains("batch run") || line.contains("rror"))
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Some(BatchOutcome {
        as_of,
        wall: began.elapsed(),
        status: run.status,
        message,
    })
}

/// Reads the topic's records and the groups' lag every second on a thread of its own.
struct Sampler {
    samples: Arc<Mutex<Vec<Second>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(platform: &Platform, origin: Instant) -> Sampler {
        let settings = platform.settings.clone();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let samples = Arc::clone(&samples);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let kafka = &settings.kafka;
                let consumer = |group: &str| -> BaseConsumer {
                    fraud_kafka::client_config(kafka)
                        .set("group.id", group)
                        .set("enable.auto.commit", "false")
                        .create()
                        .expect("a consumer that reads committed offsets")
                };
                let (speed, lake, serving) = (
                    consumer(&settings.speed.group),
                    consumer(&settings.lake.writer_group),
                    consumer(&settings.serving.group),
                );
                let transactions = &kafka.transactions_topic;
                let updates = &kafka.window_updates_topic;
                let (tx_partitions, update_partitions) = (
                    partitions(&speed, transactions),
                    partitions(&speed, updates),
                );
                let mut next = origin;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(100)));
                        continue;
                    }
                    next += Duration::from_secs(1);
                    let lag = |consumer: &BaseConsumer, topic: &str, partitions: i32| {
                        sample_lag(consumer, topic, partitions).map_or(-1, |s| s.lag)
                    };
                    let second = Second {
                        at: origin.elapsed().as_secs_f64(),
                        transactions: records(&speed, transactions, tx_partitions),
                        speed_lag: lag(&speed, transactions, tx_partitions),
                        lake_lag: lag(&lake, transactions, tx_partitions),
                        updates_lag: lag(&serving, updates, update_partitions),
                        ..Second::default()
                    };
                    lock(&samples).push(second);
                }
            })
        };
        Sampler {
            samples,
            stop,
            thread,
        }
    }

    fn stop(self) -> Vec<Second> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *lock(&self.samples))
    }
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> i32 {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()
        .and_then(|metadata| {
            metadata
                .topics()
                .first()
                .map(|topic| topic.partitions().len() as i32)
        })
        .unwrap_or(1)
}

/// The sum of `topic`'s high watermarks (-1 when Kafka did not answer).
fn records(consumer: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    super::high_watermark_sum(consumer, topic, partitions, Duration::from_secs(5)).unwrap_or(-1)
}

/// The samples with each second's risk answers and alert deliveries added.
fn per_second(
    mut samples: Vec<Second>,
    answers: &[Answer],
    alerts: &[(Instant, serde_json::Value)],
    origin: Instant,
) -> Vec<Second> {
    let mut latencies: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (at, micros, status) in answers {
        if matches!(status, Ok(200)) {
            latencies
                .entry(at.as_secs() as usize)
                .or_default()
                .push(*micros);
        }
    }
    let mut delivered: BTreeMap<usize, usize> = BTreeMap::new();
    for (at, _) in alerts {
        *delivered
            .entry(at.saturating_duration_since(origin).as_secs() as usize)
            .or_default() += 1;
    }
    for sample in &mut samples {
        // The sample at t covers the second before it (the first one, at 0, none).
        let Some(second) = (sample.at.round() as usize).checked_sub(1) else {
            continue;
        };
        if let Some(values) = latencies.get(&second) {
            sample.risk_requests = values.len();
            sample.risk_p50 = quantile(values, 0.50);
            sample.risk_p99 = quantile(values, 0.99);
        }
        sample.alerts = delivered.get(&second).copied().unwrap_or(0);
    }
    samples
}

fn samples_csv(samples: &[Second]) -> String {
    let mut csv = String::from(
        "second,transactions,accepted_per_second,speed_lag,lake_lag,updates_lag,risk_per_second,risk_p50_ms,risk_p99_ms,alerts\n",
    );
    let mut previous: Option<&Second> = None;
    for sample in samples {
        let accepted = match previous {
            Some(before) if before.transactions >= 0 && sample.transactions >= 0 => {
                (sample.transactions - before.transactions) as f64
                    / (sample.at - before.at).max(1e-3)
            }
            _ => 0.0,
        };
        let _ = writeln!(
            csv,
            "{:.1},{},{:.0},{},{},{},{},{:.2},{:.2},{}",
            sample.at,
            sample.transactions,
            accepted,
            sample.speed_lag,
            sample.lake_lag,
            sample.updates_lag,
            sample.risk_requests,
            sample.risk_p50 as f64 / 1000.0,
            sample.risk_p99 as f64 / 1000.0,
            sample.alerts
        );
        previous = Some(sample);
    }
    csv
}

const PLOT: &str = r#"
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
t = [float(r["second"]) for r in rows]
col = lambda name: [float(r[name]) for r in rows]
fig, ax = plt.subplots(figsize=(10, 4.5))
ax.plot(t, col("accepted_per_second"), label="events acknowledged by ingest /s")
ax.plot(t, col("risk_per_second"), label="risk answers /s")
ax.set_xlabel("seconds"); ax.set_ylabel("per second"); ax.grid(alpha=0.3)
ax2 = ax.twinx()
ax2.plot(t, col("speed_lag"), "r:", label="speed-layer lag (records)")
ax2.plot(t, col("lake_lag"), "m:", label="lake-writer lag (records)")
ax2.set_ylabel("lag (records)")
lines = ax.get_legend_handles_labels(); lines2 = ax2.get_legend_handles_labels()
ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
ax.set_title("Mixed run: throughput and lag")
fig.tight_layout(); fig.savefig(sys.argv[2] + "/mixed-throughput.png", dpi=110)
fig, ax = plt.subplots(figsize=(10, 4.5))
ax.plot(t, col("risk_p50_ms"), label="risk p50 (ms)")
ax.plot(t, col("risk_p99_ms"), label="risk p99 (ms)")
ax.set_xlabel("seconds"); ax.set_ylabel("ms"); ax.grid(alpha=0.3)
ax.legend(loc="upper left", fontsize=8)
ax.set_title("Mixed run: GET /risk latency per second")
fig.tight_layout(); fig.savefig(sys.argv[2] + "/mixed-latency.png", dpi=110)
"#;

/// Draws the two plots; the files' names, or why there are none.
fn draw_plots(python: &Path, csv: &Path, dir: &Path) -> Result<Vec<String>, String> {
    let output = std::process::Command::new(python)
        .args(["-c", PLOT])
        .arg(csv)
        .arg(dir)
        .output()
        .map_err(|error| format!("run {}: {error}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "matplotlib failed: {}",
            super::tail(&String::from_utf8_lossy(&output.stderr), 5)
        ));
    }
    Ok(vec![
        "mixed-throughput.png".to_owned(),
        "mixed-latency.png".to_owned(),
    ])
}

fn ms(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

fn render(
    args: &MixedArgs,
    load: &Load,
    expected: &[load::ExpectedEpisode],
    measured: &Measured,
    plots: &Result<Vec<String>, String>,
) -> String {
    let machine = Machine::describe();
    let mut out = String::new();
    let _ = writeln!(out, "# Mixed run: the whole platform at once\n");
    let _ = writeln!(
        out,
        "{}\n",
        run_line(
            &machine,
            Utc::now(),
            "PostgreSQL, Kafka, Redis, RabbitMQ and the four release services on the same machine",
            &format!(
                "fraud-bench mixed --rate {} --seconds {} --clients {} --readers {}",
                args.rate, args.seconds, args.clients, args.readers
            )
        )
    );
    let deliveries = load.deliveries.len() as u64;
    let acknowledged = (measured.posting.accepted + measured.posting.replayed) as f64
        / measured.posting_time.as_secs_f64().max(1e-9);
    let duplicates = load.deliveries.iter().filter(|d| d.duplicate).count() as u64;
    let late = load
        .deliveries
        .iter()
        .filter(|d| d.at > load.events[d.event].ts)
        .count() as u64;
    let _ = writeln!(
        out,
        "Traffic: {} transactions of {} customers (Zipf {}), {} deliveries ({} duplicates, {} \
         late), {} labelled fraud episodes; {} h of event time compressed into {} s.\n",
        fmt_int(load.events.len() as u64),
        fmt_int(load.config.customers as u64),
        load.config.zipf_exponent,
        fmt_int(deliveries),
        fmt_int(duplicates),
        fmt_int(late),
        load.episodes.len(),
        args.span_hours,
        args.seconds
    );
    let delays: Vec<u64> = measured
        .alert_delays
        .iter()
        .flatten()
        .map(|d| d.as_micros() as u64)
        .collect();
    let missed = measured.alert_delays.iter().filter(|d| d.is_none()).count();
    let (speed_lag, lake_lag, updates_lag) = measured.max_lag;
    let _ = writeln!(out, "| figure | mixed run | reference (same run) |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| ingest | {} deliveries/s acknowledged over {:.1} s ({} accepted, {} replays, {} retried requests) | offered: {} deliveries/s |",
        fmt_rate(acknowledged),
        measured.posting_time.as_secs_f64(),
        fmt_int(measured.posting.accepted as u64),
        fmt_int(measured.posting.replayed as u64),
        fmt_int(measured.posting.retries as u64),
        fmt_rate(args.rate)
    );
    let _ = writeln!(
        out,
        "| GET /risk | {} req/s, p50 {}, p99 {} ({} readers) | alone on the same state: {} req/s, p50 {}, p99 {} |",
        fmt_rate(measured.mixed_risk.per_second()),
        ms(measured.mixed_risk.quantile(0.50)),
        ms(measured.mixed_risk.quantile(0.99)),
        args.readers,
        fmt_rate(measured.alone_risk.per_second()),
        ms(measured.alone_risk.quantile(0.50)),
        ms(measured.alone_risk.quantile(0.99))
    );
    let ratio = measured.mixed_risk.per_second() / measured.alone_risk.per_second().max(1e-9);
    let _ = writeln!(
        out,
        "| risk throughput under the mixed load | {:.0}% of the readers alone | |",
        ratio * 100.0
    );
    let _ = writeln!(
        out,
        "| risk answers not 200 | {}{} | |",
        fmt_int(measured.risk_failures as u64),
        measured
            .first_risk_failure
            .as_ref()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "| largest lag | speed layer {} records, lake writer {} records, serving API {} window updates | |",
        fmt_int(speed_lag.max(0) as u64),
        fmt_int(lake_lag.max(0) as u64),
        fmt_int(updates_lag.max(0) as u64)
    );
    let _ =
        writeln!(
            out,
            "| caught up after the last POST | {} | |",
            measured.caught_up_after.map_or(
                "**not within the drain time**".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64())
            )
        );
    let _ = writeln!(
        out,
        "| alerts | {} deliveries: {} of {} expected episodes ({} missed), {} redeliveries of an id, {} of no expected episode{} | |",
        measured.alerts_delivered,
        delays.len(),
        expected.len(),
        missed,
        measured.duplicate_deliveries,
        measured.unexpected_alerts.values().sum::<usize>(),
        if measured.unexpected_alerts.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                measured
                    .unexpected_alerts
                    .iter()
                    .map(|(rule, count)| format!("{rule}: {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if measured.alert_queue_lost {
        let _ = writeln!(
            out,
            "| **the alert queue's connection was closed by RabbitMQ during the run** | the alert figures are incomplete | |"
        );
    }
    let _ = writeln!(
        out,
        "| alert delay, POST due → delivery on the queue | p50 {}, p99 {}, max {} | |",
        ms(quantile(&delays, 0.50)),
        ms(quantile(&delays, 0.99)),
        ms(quantile(&delays, 1.0))
    );
    match &measured.batch {
        Some(batch) => {
            let _ = writeln!(
                out,
                "| batch run at half time (`--as-of {}`) | {:.1} s, exit {} {} | |",
                reference::instant(batch.as_of),
                batch.wall.as_secs_f64(),
                batch
                    .status
                    .map_or("by a signal".to_owned(), |code| code.to_string()),
                batch.message.replace('|', "/")
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| batch run at half time | not run: the run was too short | |"
            );
        }
    }
    let _ = writeln!(out);
    match plots {
        Ok(files) => {
            for file in files {
                let _ = writeln!(out, "![{file}]({file})");
            }
        }
        Err(why) => {
            let _ = writeln!(out, "No plots: {why}.");
        }
    }
    let _ = writeln!(
        out,
        "\nThe samples, one a second, are in `mixed.csv` beside this report."
    );
    out
}
