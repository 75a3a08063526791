//! The ingest benchmark's overload phase: single-event POSTs offered at a multiple
//! (`--overload-factor`, 2) of the rate the single-event phase sustained, open loop (each
//! request leaves at its due time, whether earlier ones were answered or not), for
//! `--overload-seconds`.
//!
//! What a production API must do under it: answer every request 202, 429 or 503 (with
//! `Retry-After`), quickly, with its memory bounded, and lose nothing it accepted. The
//! phase records every answer by status with its latency, ingest's resident memory
//! every 100 ms, the events the topic gained (which must equal the events answered 202:
//! every generated id is new, so none is a replay) and the time the lake writer, and a
//! real speed layer started on the topic for the phase, take to process all of them. The
//! speed layer sees a Redis prefix of its own with no state, which it treats as lost
//! data: it rebuilds from the topic first, and the phase starts once it is ready. Requests the client could not even send because
//! `--overload-max-connections` were already waiting are counted apart (a figure, not a
//! requirement: the load generator shares the machine's cores with ingest and Kafka).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use fraud_config::{KafkaConfig, Settings};
use fraud_testkit::process::resident_bytes;
use fraud_testkit::{ChildProcess, free_port};
use hdrhistogram::Histogram;
use rdkafka::consumer::BaseConsumer;

use super::{
    CpuSnapshot, CpuUsage, IngestArgs, JSON, LagSampler, LakeResult, Pids, RequestBody, Stack,
    Target, delete_group, failure_text, fmt_int, fmt_rate, high_watermark_sum, latency_histogram,
    lock, p50_p99_max, pass, progress, service_binary, stop_process, wait_for_lake, wait_for_topic,
    wait_ready,
};
use crate::speed::{SpeedPlace, speed_command};

/// ingest's resident memory (`VmRSS`) may not exceed this during the phase: the bound
/// the attack test holds ingest to under overload.
pub const RSS_BOUND_BYTES: u64 = 384 * 1024 * 1024;

/// What the overload phase saw.
pub struct OverloadResult {
    /// Requests per second offered.
    pub offered_rate: f64,
    /// Requests due in the phase (sent or not).
    pub due: u64,
    /// Requests not sent because every allowed connection was waiting for an answer.
    pub not_sent: u64,
    /// The pre-generated requests ran out before the phase's end.
    pub exhausted: bool,
    pub statuses: BTreeMap<u16, u64>,
    /// Answers of each status without a `Retry-After` header (429 and 503 need one).
    pub without_retry_after: u64,
    pub transport_errors: u64,
    pub first_failure: Option<String>,
    /// Latency of the 202 answers, in microseconds.
    pub accepted_latency: Histogram<u64>,
    /// Latency of the 429 and 503 answers, in microseconds.
    pub refused_latency: Histogram<u64>,
    /// From the first request due to the last answer.
    pub window: Duration,
    /// Most requests waiting for an answer at once.
    pub max_waiting: usize,
    pub rss_before: u64,
    pub rss_max: u64,
    pub rss_after: u64,
    /// Records the topic gained during the phase.
    pub topic_gained: i64,
    /// The lake writer's lag after the phase.
    pub lake: LakeResult,
    /// The speed layer's lag after the phase.
    pub speed: LakeResult,
    /// CPU from the first request due to the last answer.
    pub cpu: CpuUsage,
}

impl OverloadResult {
    fn accepted(&self) -> u64 {
        self.statuses.get(&202).copied().unwrap_or(0)
    }

    fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    fn other_answers(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| ![202, 429, 503].contains(*status))
            .map(|(_, count)| count)
            .sum()
    }

    /// Every requirement of the phase, each with whether it held.
    fn verdicts(&self) -> Vec<(String, bool)> {
        vec![
            (
                format!(
                    "every request sent was answered 202, 429 or 503 ({} other answers, {} without an answer)",
                    fmt_int(self.other_answers()),
                    fmt_int(self.transport_errors)
                ),
                self.other_answers() == 0 && self.transport_errors == 0,
            ),
            (
                format!(
                    "every 429 and 503 carried `Retry-After` ({} did not)",
                    fmt_int(self.without_retry_after)
                ),
                self.without_retry_after == 0,
            ),
            (
                format!(
                    "memory bounded: ingest's resident memory at most {} MiB (before {} MiB, largest {} MiB, after {} MiB)",
                    RSS_BOUND_BYTES >> 20,
                    self.rss_before >> 20,
                    self.rss_max >> 20,
                    self.rss_after >> 20
                ),
                self.rss_max > 0 && self.rss_max <= RSS_BOUND_BYTES,
            ),
            (
                format!(
                    "every accepted event in Kafka once: the topic gained {} records for {} events answered 202",
                    fmt_int(self.topic_gained.max(0) as u64),
                    fmt_int(self.accepted())
                ),
                self.topic_gained == self.accepted() as i64,
            ),
            (
                format!(
                    "every accepted event in the lake: {}",
                    self.lake.summary("the phase")
                ),
                self.lake.not_measurable.is_none() && self.lake.back_to_zero.is_some(),
            ),
            (
                format!(
                    "every accepted event applied by the speed layer (it commits after Redis holds the effect): {}",
                    self.speed.summary("the phase")
                ),
                self.speed.not_measurable.is_none() && self.speed.back_to_zero.is_some(),
            ),
        ]
    }
}

/// Runs the phase against `stack`'s ingest at `factor` times `sustained` requests/s.
pub async fn run(
    args: &IngestArgs,
    settings: &Settings,
    stack: &Stack,
    target: &Target,
    pids: &Pids,
    bodies: &[RequestBody],
    sustained: f64,
) -> anyhow::Result<OverloadResult> {
    let offered_rate = (sustained * args.overload_factor).max(1.0);
    progress(format!(
        "overload: {} requests/s offered for {} s ({:.1} × the sustained {} requests/s)",
        fmt_rate(offered_rate),
        args.overload_seconds,
        args.overload_factor,
        fmt_rate(sustained)
    ));
    let speed_bin = service_binary(args.speed_bin.as_deref(), "speed-layer", "--speed-bin")?;
    let speed = SpeedLayer::start(args, settings, stack, &speed_bin).await?;
    let phase = Phase {
        target,
        pids,
        bodies,
        sustained,
        speed: &speed,
    };
    let result = offer(args, settings, stack, &phase).await;
    for problem in speed.stop(settings).await {
        progress(format!("clean-up: {problem}"));
    }
    let result = result?;
    progress(format!(
        "overload: {} answered ({}), {} not sent; {}",
        fmt_int(result.answered()),
        statuses_text(&result.statuses),
        fmt_int(result.not_sent),
        if result.verdicts().iter().all(|(_, held)| *held) {
            "every requirement held"
        } else {
            "a requirement did NOT hold (see the report)"
        }
    ));
    Ok(result)
}

/// What the phase posts, where, and with what running.
struct Phase<'a> {
    target: &'a Target,
    pids: &'a Pids,
    bodies: &'a [RequestBody],
    /// The single-event phase's requests/s.
    sustained: f64,
    speed: &'a SpeedLayer,
}

/// The phase itself, with its speed layer running.
async fn offer(
    args: &IngestArgs,
    settings: &Settings,
    stack: &Stack,
    phase: &Phase<'_>,
) -> anyhow::Result<OverloadResult> {
    let Phase {
        target,
        pids,
        bodies,
        sustained,
        speed,
    } = *phase;
    let offered_rate = (sustained * args.overload_factor).max(1.0);
    let due = ((offered_rate * args.overload_seconds as f64) as u64).min(bodies.len() as u64);
    let exhausted = (bodies.len() as f64) < offered_rate * args.overload_seconds as f64;
    let kafka = settings.kafka.clone();
    let topic = stack.ingest_topic.clone();
    let records_before = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        let partitions = args.partitions;
        tokio::task::spawn_blocking(move || topic_records(&kafka, &topic, partitions)).await??
    };
    let sampler = LagSampler::start(
        settings.kafka.clone(),
        stack.ingest_topic.clone(),
        stack.writer_group.clone(),
        args.partitions,
        Duration::from_secs(1),
    );
    let speed_sampler = LagSampler::start(
        settings.kafka.clone(),
        stack.ingest_topic.clone(),
        speed.group.clone(),
        args.partitions,
        Duration::from_secs(1),
    );
    let pid = stack.ingest_pid();
    let rss_before = resident_bytes(pid).unwrap_or(0);
    let memory = MemorySampler::start(pid);

    // Its own client: as many connections as requests may wait, none reused from before.
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.overload_max_connections)
        .build()?;
    let waiting = Arc::new(tokio::sync::Semaphore::new(args.overload_max_connections));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let interval = Duration::from_secs_f64(1.0 / offered_rate);
    let cpu_before = CpuSnapshot::take(pids);
    let started = tokio::time::Instant::now();
    let mut not_sent = 0u64;
    let mut max_waiting = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, body) in bodies.iter().take(due as usize).enumerate() {
        tokio::time::sleep_until(started + interval.mul_f64(index as f64)).await;
        let Ok(permit) = Arc::clone(&waiting).try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        max_waiting = max_waiting.max(args.overload_max_connections - waiting.available_permits());
        let request = client
            .post(&target.url)
            .header("content-type", JSON)
            .header("authorization", &target.authorization)
            .body(body.bytes.clone());
        let tally = Arc::clone(&tally);
        tasks.spawn(async move {
            let sent = Instant::now();
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let text = response.text().await.unwrap_or_default();
                    Ok((status, retry_after, text))
                }
                Err(error) => Err(error.to_string()),
            };
            let micros = (sent.elapsed().as_micros() as u64).max(1);
            drop(permit);
            lock(&tally).record(outcome, micros);
        });
        // Reap what has finished so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let window = started.elapsed();
    let end = Instant::now();
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(pids));
    let rss_max = memory.stop().max(rss_before);
    let rss_after = resident_bytes(pid).unwrap_or(0);
    let records_after = {
        let partitions = args.partitions;
        tokio::task::spawn_blocking(move || topic_records(&kafka, &topic, partitions)).await??
    };

    progress("overload: waiting for the lake writer's and the speed layer's lag to return to 0");
    let lake = wait_for_lake(args, settings, stack, &sampler, end).await;
    sampler.stop();
    let speed_lag = wait_for_lake(args, settings, stack, &speed_sampler, end).await;
    speed_sampler.stop();

    let tally = std::mem::take(&mut *lock(&tally));
    let result = OverloadResult {
        offered_rate,
        due,
        not_sent,
        exhausted,
        statuses: tally.statuses,
        without_retry_after: tally.without_retry_after,
        transport_errors: tally.transport_errors,
        first_failure: tally.first_failure,
        accepted_latency: tally.accepted_latency,
        refused_latency: tally.refused_latency,
        window,
        max_waiting,
        rss_before,
        rss_max,
        rss_after,
        topic_gained: records_after - records_before,
        lake,
        speed: speed_lag,
        cpu,
    };
    Ok(result)
}

/// How long the phase's speed layer may take to rebuild from the topic (the batch and
/// single-event phases' events) and be ready.
const SPEED_READY_WITHIN: Duration = Duration::from_secs(300);

/// The speed layer of the phase: the real binary on ingest's topic, with a group, window
/// updates topic and Redis prefix of its own (under the stack's, so the stack's clean-up
/// removes its keys).
struct SpeedLayer {
    process: ChildProcess,
    group: String,
    updates_topic: String,
}

impl SpeedLayer {
    async fn start(
        args: &IngestArgs,
        settings: &Settings,
        stack: &Stack,
        speed_bin: &std::path::Path,
    ) -> anyhow::Result<SpeedLayer> {
        let group = format!("{}-speed", stack.ingest_topic);
        let updates_topic = format!("{}-updates", stack.ingest_topic);
        let prefix = format!("{}speed:", stack.redis_prefix);
        fraud_kafka::ensure_topic(&settings.kafka, &updates_topic, args.partitions, 1)
            .await
            .with_context(|| format!("create topic {updates_topic}"))?;
        wait_for_topic(&settings.kafka, &updates_topic, args.partitions).await?;
        let port = free_port();
        let command = speed_command(
            settings,
            speed_bin,
            &SpeedPlace {
                topic: &stack.ingest_topic,
                updates_topic: &updates_topic,
                redis_url: &stack.redis_url,
                prefix: &prefix,
                group: &group,
                port,
            },
        );
        progress(format!(
            "overload: starting {} (group {group}); it rebuilds from the topic before it is ready",
            speed_bin.display()
        ));
        let mut process = ChildProcess::spawn("bench-overload-speed-layer", command);
        let ready = wait_ready(
            &mut process,
            "the speed layer",
            &format!("http://127.0.0.1:{port}"),
            &[200],
            SPEED_READY_WITHIN,
        )
        .await;
        if let Err(error) = ready {
            let mut problems = Vec::new();
            stop_process(process, "the speed layer", &mut problems).await;
            return Err(error.context(format!("clean-up: {problems:?}")));
        }
        Ok(SpeedLayer {
            process,
            group,
            updates_topic,
        })
    }

    /// Stops it and removes its group and updates topic; what could not be done.
    async fn stop(self, settings: &Settings) -> Vec<String> {
        let mut problems = Vec::new();
        stop_process(self.process, "the speed layer", &mut problems).await;
        if let Err(error) = fraud_kafka::delete_topic(&settings.kafka, &self.updates_topic).await {
            problems.push(format!("delete topic {}: {error}", self.updates_topic));
        }
        if let Err(error) = delete_group(&settings.kafka, &self.group).await {
            problems.push(format!("delete group {}: {error}", self.group));
        }
        problems
    }
}

/// The answers of the phase as they come in.
struct Tally {
    statuses: BTreeMap<u16, u64>,
    without_retry_after: u64,
    transport_errors: u64,
    first_failure: Option<String>,
    accepted_latency: Histogram<u64>,
    refused_latency: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            statuses: BTreeMap::new(),
            without_retry_after: 0,
            transport_errors: 0,
            first_failure: None,
            accepted_latency: latency_histogram(),
            refused_latency: latency_histogram(),
        }
    }
}

impl Tally {
    fn record(&mut self, outcome: Result<(u16, bool, String), String>, micros: u64) {
        match outcome {
            Ok((status, retry_after, text)) => {
                *self.statuses.entry(status).or_default() += 1;
                match status {
                    202 => {
                        let _ = self.accepted_latency.record(micros);
                    }
                    429 | 503 => {
                        let _ = self.refused_latency.record(micros);
                        if !retry_after {
                            self.without_retry_after += 1;
                        }
                    }
                    _ => {
                        self.first_failure
                            .get_or_insert_with(|| failure_text(status, &text));
                    }
                }
            }
            Err(error) => {
                self.transport_errors += 1;
                self.first_failure
                    .get_or_insert_with(|| format!("no answer: {error}"));
            }
        }
    }
}

fn statuses_text(statuses: &BTreeMap<u16, u64>) -> String {
    statuses
        .iter()
        .map(|(status, count)| format!("{status}: {}", fmt_int(*count)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The records of `topic` (the sum of its partitions' high watermarks; nothing is ever
/// deleted from the benchmark's topic).
fn topic_records(kafka: &KafkaConfig, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = fraud_kafka::client_config(kafka)
        .create()
        .context("create a consumer to read watermarks")?;
    high_watermark_sum(&consumer, topic, partitions, Duration::from_secs(10))
        .with_context(|| format!("watermarks of {topic}"))
}

/// The largest resident memory of a process, sampled every 100 ms on a thread.
struct MemorySampler {
    largest: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl MemorySampler {
    fn start(pid: u32) -> MemorySampler {
        let largest = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (largest, stop) = (Arc::clone(&largest), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = resident_bytes(pid) {
                        let mut largest = lock(&largest);
                        *largest = (*largest).max(rss);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        MemorySampler {
            largest,
            stop,
            thread,
        }
    }

    /// Stops sampling; the largest resident memory seen.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        *lock(&self.largest)
    }
}

/// The report's section on the phase.
pub fn render(r: &mut String, args: &IngestArgs, settings: &Settings, o: &OverloadResult) {
    let _ = writeln!(r, "\n## Overload\n");
    let _ = writeln!(
        r,
        "Single-event POSTs offered open loop at {:.1} × the rate the single-event phase \
         sustained, {} requests/s, for {} s ({} requests due; at most {} waiting for an \
         answer at once, the most that did: {}); ingest's `max_in_flight_requests` is {}.\n",
        args.overload_factor,
        fmt_rate(o.offered_rate),
        args.overload_seconds,
        fmt_int(o.due),
        fmt_int(args.overload_max_connections as u64),
        fmt_int(o.max_waiting as u64),
        fmt_int(u64::from(settings.ingest.max_in_flight_requests))
    );
    let accepted = o.accepted();
    let refused =
        o.statuses.get(&429).copied().unwrap_or(0) + o.statuses.get(&503).copied().unwrap_or(0);
    let _ = writeln!(r, "| figure | value |\n|---|---|");
    let _ = writeln!(
        r,
        "| answers | {} ({}) over {:.1} s |",
        fmt_int(o.answered()),
        statuses_text(&o.statuses),
        o.window.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "| not sent ({} already waiting) | {} of {} due |",
        fmt_int(args.overload_max_connections as u64),
        fmt_int(o.not_sent),
        fmt_int(o.due)
    );
    let _ = writeln!(
        r,
        "| accepted | {} requests/s ({} of the answers) |",
        fmt_rate(accepted as f64 / o.window.as_secs_f64().max(1e-9)),
        percent(accepted, o.answered())
    );
    let _ = writeln!(
        r,
        "| 202 latency p50 / p99 / max | {} |",
        p50_p99_max(&o.accepted_latency)
    );
    let _ = writeln!(
        r,
        "| 429/503 latency p50 / p99 / max ({} answers) | {} |",
        fmt_int(refused),
        p50_p99_max(&o.refused_latency)
    );
    let _ = writeln!(r, "\n| requirement | held |\n|---|---|");
    for (requirement, held) in o.verdicts() {
        let _ = writeln!(r, "| {requirement} | {} |", pass(held));
    }
    if let Some(first) = &o.first_failure {
        let _ = writeln!(
            r,
            "\nFirst answer outside 202/429/503: `{}`",
            first.replace('|', "\\|").replace('\n', " ")
        );
    }
    if o.exhausted {
        let _ = writeln!(
            r,
            "\nThe pre-generated requests ran out before {} s: the phase was shorter.",
            args.overload_seconds
        );
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "—".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}
