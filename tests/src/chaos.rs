//! The fault suite (`fraud-chaos`, `deploy/dev chaos`, `tests/tests/chaos.rs`): a
//! stream of generated traffic ([`crate::load`]) posted through the real services of a
//! [`Platform`] of its own while faults strike one after another, then a check that
//! nothing was lost, nothing counted twice and every alert delivered.
//!
//! # The faults
//! Spread evenly over the stream's planned duration, one at a time (the next waits
//! until the previous one has recovered):
//! - **SIGKILL** of `ingest`, `speed-layer` and `serving-api`, each
//!   [`ChaosConfig::kills`] times, each restarted at once on the same port;
//! - **Redis data loss** ([`RedisLoss`]): by default every key of the platform's own
//!   prefix is deleted (SCAN + DEL), which is exactly what the platform would see of a
//!   restart without persistence and leaves other users of the shared server alone;
//!   `Restart` restarts the server itself (`deploy/dev restart redis`: it runs without
//!   persistence, so every key of every user is gone);
//! - with [`ChaosConfig::restart_servers`], **restarts of Kafka, PostgreSQL and
//!   RabbitMQ** (`deploy/dev restart NAME`: the shared servers, so other tests running
//!   at the same time fail);
//! - after the stream, a **batch run killed** while it holds its lock, then run again.
//!
//! A fault's *ready* time runs from the fault to every affected service answering
//! `/readyz` with 200; its *caught-up* time to every affected consumer group (the lake
//! writer's, the speed layer's, the serving API's) having committed everything the
//! topics held once the services were ready again (the outage's backlog, while the
//! stream goes on), and, for PostgreSQL, RabbitMQ and the serving API, to an empty alert
//! outbox.
//!
//! # Time
//! The load's event time runs [`ChaosConfig::speedup`] (60) times faster than the wall
//! clock, so an outage of N seconds holds back N minutes of traffic, which the platform
//! then takes as a backlog. Faster compression makes short faults stand for long
//! outages: a speed batch then holds more of a customer's event time than the speed
//! layer retains (35 minutes), its events' own windows (`W(c, ts)`, computed over the
//! state after the batch) fall short, and window rules that held inside the batch are
//! missed (found with 5,000× compression: a burst caught up in one batch after a
//! SIGKILL raised no alert).
//!
//! # The client
//! Each customer's deliveries go through one of [`ChaosConfig::clients`] lanes
//! ([`crate::post`]): a 429/503, a connection error, a timeout or another 5xx is sent
//! again with the same transactionIds until a 202; a request that failed without a
//! clear answer marks its items *uncertain* (produced or not, nobody knows).
//!
//! # What is checked
//! - At each checkpoint (the stream paused, everything applied and evaluated): the
//!   30-minute window, today and the last 24 hours of a sample of customers (the fraud
//!   victims, the busiest, the most recent, some at random) equal
//!   [`crate::reference`] over every event delivered so far. Once Redis has lost its
//!   data, and with no batch run yet, the speed layer rebuilds only its retention
//!   (window plus lateness), so today and the last 24 hours are partial until the next
//!   batch run: then the window must be exact and the answer must say it is degraded.
//! - Kafka: every record decodes, is one of the generated events with exactly its
//!   content, and every event is there (all were acknowledged). An event may be there
//!   twice only where the design allows it: a request retried after an unclear failure
//!   (ingest killed between Kafka's acknowledgement and its answer), or a duplicate
//!   delivery after the idempotency keys were lost with Redis; any other copy fails.
//! - The lake (read by DuckDB): every Kafka record exactly once (by partition and
//!   offset) with the record's content, so every acknowledged event is in it.
//! - The batch tables after a run at the last full hour: `batch_daily` equals the
//!   reference (deduplicated by transactionId); `/risk` and `/daily` of the sample too.
//! - Alerts: the default rules evaluated over the events ([`crate::load::firings`],
//!   grouped into [`crate::load::expected_episodes`]) give the episodes that must be
//!   alerted, which by the generator's construction are exactly the labelled fraud
//!   episodes. Postgres must hold exactly one alert per expected episode (its
//!   `episodeStart` one of the episode's firing span) and no other, with unique
//!   `alertId`s; the bound durable queue must have received every one of them and no
//!   message with another id (a message received twice with the same id is
//!   at-least-once delivery, counted, not a failure). The report also counts alerts
//!   whose id is exactly the one derived from the reference's first firing.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use fraud_config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use crate::load::{self, Load, LoadConfig};
use crate::platform::Platform;
use crate::post;
use crate::reference::{self, Event};

/// How long a fault may take to recover before the run calls it a failure.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(300);
/// How long the platform may take to apply and evaluate everything at a checkpoint.
const SETTLE_DEADLINE: Duration = Duration::from_secs(900);

/// How Redis loses its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisLoss {
    /// No Redis fault.
    None,
    /// Every key of the platform's prefix deleted (the shared server's other users are
    /// left alone).
    Prefix,
    /// The server restarted without persistence (`deploy/dev restart redis`): every key
    /// of every user is gone.
    Restart,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The traffic (its `start_ms` is set from the pace).
    pub load: LoadConfig,
    /// Deliveries per second.
    pub rate: f64,
    /// Event-time ms per wall-clock ms (the load's span is the run's planned duration
    /// times this, at least 2 hours). An outage of N seconds then holds back N × speedup
    /// of event time: with 60, a 30 s outage is a 30-minute one.
    pub speedup: f64,
    pub clients: usize,
    pub batch: usize,
    /// SIGKILLs of each service.
    pub kills: usize,
    pub redis_loss: RedisLoss,
    /// Restart Kafka, PostgreSQL and RabbitMQ (the shared servers).
    pub restart_servers: bool,
    /// `deploy/dev`, which restarts servers.
    pub deploy_dev: PathBuf,
    /// Pauses of the stream where windows are checked.
    pub checkpoints: usize,
    /// Random customers checked at each checkpoint, besides the victims, the busiest
    /// and the most recent.
    pub sample: usize,
}

impl ChaosConfig {
    /// `events` events, with the defaults of `deploy/dev chaos`.
    pub fn new(events: usize) -> ChaosConfig {
        let customers = (events / 20).clamp(1_000, 50_000);
        ChaosConfig {
            load: LoadConfig {
                seed: 20261125,
                customers,
                events,
                fraud_episodes: (events / 20_000).clamp(6, 60),
                ..LoadConfig::default()
            },
            rate: 1000.0,
            speedup: 60.0,
            clients: 4,
            batch: 200,
            kills: 2,
            redis_loss: RedisLoss::Prefix,
            restart_servers: false,
            deploy_dev: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev"),
            checkpoints: 3,
            sample: 10,
        }
    }
}

/// A fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill(&'static str),
    RedisLoss(RedisLoss),
    Restart(&'static str),
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Fault::Kill(service) => format!("SIGKILL {service}"),
            Fault::RedisLoss(RedisLoss::Restart) => {
                "Redis restarted without persistence (data lost)".to_owned()
            }
            Fault::RedisLoss(_) => "Redis data lost (the platform's keys deleted)".to_owned(),
            Fault::Restart(server) => format!("restart {server}"),
        }
    }
}

/// What one fault did.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub name: String,
    /// From the start of the stream.
    pub at: Duration,
    pub ready: Option<Duration>,
    pub caught_up: Option<Duration>,
    /// Whether the fault happened as meant (a server restart that failed, or a Redis
    /// loss the speed layer never noticed, did not).
    pub struck: bool,
    pub note: String,
}

/// One check and its outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub passed: bool,
    pub markdown: String,
    pub faults: Vec<FaultRecord>,
    pub verdicts: Vec<Verdict>,
}

/// The faults in order: rounds of service kills with the server faults between them.
fn schedule(config: &ChaosConfig) -> Vec<Fault> {
    let mut special = Vec::new();
    if config.redis_loss != RedisLoss::None {
        special.push(Fault::RedisLoss(config.redis_loss));
    }
    if config.restart_servers {
        special.extend([
            Fault::Restart("kafka"),
            Fault::Restart("postgres"),
            Fault::Restart("rabbitmq"),
        ]);
    }
    let mut faults = Vec::new();
    let rounds = config.kills.max(1);
    let per_round = special.len().div_ceil(rounds);
    let mut special = special.into_iter();
    for round in 0..rounds {
        if round < config.kills {
            faults.extend([
                Fault::Kill("ingest"),
                Fault::Kill("speed-layer"),
                Fault::Kill("serving-api"),
            ]);
        }
        faults.extend(special.by_ref().take(per_round));
    }
    faults
}

/// Runs the suite; the report says what passed. An error means the run itself could
/// not go on (e.g. ingest never came back).
pub async fn run(config: &ChaosConfig) -> anyhow::Result<Report> {
    let began = Instant::now();
    let mut verdicts: Vec<Verdict> = Vec::new();
    let mut platform = Platform::start("chaos").await;
    let queue = AlertQueue::bind(&platform).await?;

    let now = chrono::Utc::now().timestamp_millis();
    let deliveries = config.load.events as f64 * (1.0 + config.load.duplicate_fraction);
    let planned_ms = deliveries / config.rate * 1000.0;
    let span_ms = ((planned_ms * config.speedup) as i64).max(2 * reference::HOUR_MS);
    let spanned = LoadConfig {
        span_ms,
        ..config.load.clone()
    };
    let pace = load::pace(&spanned, config.rate, now)?;
    let load_config = LoadConfig {
        start_ms: pace.start_ms,
        ..spanned
    };
    let load = load::generate(&load_config)?;
    let lanes = load::lanes(&load, config.clients, pace.speedup);
    let planned = lanes
        .iter()
        .filter_map(|lane| lane.last())
        .map(|item| item.0)
        .max()
        .unwrap_or_default();
    eprintln!(
        "fraud-chaos: {} events, {} deliveries, {} customers, {} fraud episodes; about {:?} \
         at {}/s",
        load.events.len(),
        load.deliveries.len(),
        load_config.customers,
        load.episodes.len(),
        planned,
        config.rate
    );

    // Faults at even moments of the planned stream; the stream in segments, each ending
    // at a checkpoint.
    let faults = schedule(config);
    let fault_times: Vec<Duration> = (0..faults.len())
        .map(|i| planned.mul_f64((i + 1) as f64 / (faults.len() + 1) as f64))
        .collect();
    let segments = config.checkpoints.max(1);
    let boundaries: Vec<Duration> = (1..=segments)
        .map(|j| {
            if j == segments {
                Duration::MAX
            } else {
                planned.mul_f64(j as f64 / segments as f64)
            }
        })
        .collect();
    let target = post::Target {
        url: platform.ingest.base.clone(),
        key: platform.ingest_key.clone(),
    };
    let options = post::Options {
        batch: config.batch,
        retry_failures: true,
        give_up_after: RECOVERY_DEADLINE,
    };
    let body = |index: usize| load::delivery_json(&load, index);
    let mut acks = vec![post::Ack::default(); load.deliveries.len()];
    let mut counts = post::Counts::default();
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut delivered = vec![false; load.events.len()];
    let started = Instant::now();
    let mut next_fault = 0;
    let mut from = Duration::ZERO;
    for (segment, &until) in boundaries.iter().enumerate() {
        let part: Vec<Vec<post::Item>> = lanes
            .iter()
            .map(|lane| {
                lane.iter()
                    .copied()
                    .filter(|(due, _)| *due >= from && *due < until)
                    .collect()
            })
            .collect();
        let first_fault = next_fault;
        while next_fault < faults.len() && fault_times[next_fault] < until {
            next_fault += 1;
        }
        let these: Vec<(Duration, Fault)> = fault_times[first_fault..next_fault]
            .iter()
            .copied()
            .zip(faults[first_fault..next_fault].iter().copied())
            .collect();
        let (posted, done) = tokio::join!(
            post::post_lanes(&target, &part, started, &options, &body),
            run_faults(&mut platform, config, &these, started),
        );
        records.extend(done);
        let (part_acks, part_counts) = posted.context("the stream failed")?;
        for (lane, lane_acks) in part.iter().zip(part_acks) {
            for (&(_, index), ack) in lane.iter().zip(lane_acks) {
                acks[index].acknowledged |= ack.acknowledged;
                acks[index].uncertain |= ack.uncertain;
                delivered[load.deliveries[index].event] = true;
            }
        }
        add_counts(&mut counts, &part_counts);
        from = until;
        eprintln!(
            "fraud-chaos: segment {} of {segments} posted at {:?}; checkpoint",
            segment + 1,
            started.elapsed()
        );
        let events: Vec<Event> = load
            .events
            .iter()
            .zip(&delivered)
            .filter(|(_, delivered)| **delivered)
            .map(|(event, _)| event.reference())
            .collect();
        let lost = records
            .iter()
            .any(|r| r.struck && r.name.starts_with("Redis"));
        verdicts.push(checkpoint(&platform, &load, &events, config, segment + 1, lost).await);
    }
    let streamed = started.elapsed();
    let events = load.reference_events();

    // Kafka and the lake.
    settle(&platform).await?;
    lake_complete(&platform).await?;
    let kafka = read_topic(
        &platform.settings.kafka,
        &platform.settings.kafka.transactions_topic,
    )
    .await?;
    let redis_lost = records
        .iter()
        .any(|r| r.struck && r.name.starts_with("Redis"));
    let (kafka_verdicts, kafka_figures) = check_kafka(&load, &acks, &kafka, redis_lost);
    verdicts.extend(kafka_verdicts);
    verdicts.push(check_lake(&platform, &kafka));

    // The batch layer: a run killed midway, then a run to the end.
    let last_ts = load.events.iter().map(|e| e.ts).max().unwrap_or(0);
    let watermark = reference::hour_of(last_ts);
    let (record, batch_verdict) = batch_fault(&platform, watermark, started).await;
    records.push(record);
    verdicts.push(batch_verdict);
    let batch = reference::batch_daily(&platform.pool).await;
    let expected_batch = reference::daily_all(&events, watermark);
    verdicts.push(Verdict {
        check: format!(
            "batch_daily after a run at {} equals the reference",
            reference::instant(watermark)
        ),
        passed: batch == expected_batch,
        detail: format!(
            "{} (customer, day) rows, {} expected{}",
            batch.len(),
            expected_batch.len(),
            first_difference(&batch, &expected_batch)
        ),
    });
    verdicts.push(final_figures(&platform, &load, &events, config, watermark).await);

    // Alerts.
    let rules = fraud_testkit::local_settings().serving.rules;
    let fired = load::firings(&events, &rules);
    let expected = load::expected_episodes(&fired);
    outbox_empty(&platform, SETTLE_DEADLINE).await?;
    let history = platform.alert_history().await;
    let received = queue.drain().await?;
    let (mut alert_verdicts, alert_figures) = check_alerts(&load, &expected, &history, &received);
    // A missed alert: what the window updates of its customer said, for the report.
    let missed: Vec<&load::ExpectedEpisode> = expected
        .iter()
        .filter(|episode| {
            !history.iter().any(|alert| {
                alert["customerId"] == episode.customer.as_str()
                    && alert["rule"] == episode.rule.as_str()
            })
        })
        .collect();
    if !missed.is_empty() {
        let mut firing_events: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for firing in &fired {
            firing_events
                .entry((firing.customer.clone(), firing.rule.clone()))
                .or_default()
                .insert(firing.event.clone());
        }
        let diagnosis = diagnose(&platform, &missed, &firing_events).await;
        if let Some(verdict) = alert_verdicts.iter_mut().find(|v| !v.passed) {
            verdict
                .detail
                .push_str(&format!(". What the updates said: {diagnosis}"));
        }
    }
    verdicts.extend(alert_verdicts);

    let passed = verdicts.iter().all(|v| v.passed)
        && records.iter().all(|r| r.struck && r.caught_up.is_some());
    let mut figures = vec![
        (
            "events (distinct transactions)".to_owned(),
            load.events.len().to_string(),
        ),
        (
            "deliveries (duplicates included)".to_owned(),
            load.deliveries.len().to_string(),
        ),
        (
            "duplicate deliveries".to_owned(),
            load.deliveries
                .iter()
                .filter(|d| d.duplicate)
                .count()
                .to_string(),
        ),
        (
            "late deliveries (out of order)".to_owned(),
            load.deliveries
                .iter()
                .filter(|d| !d.duplicate && d.at > load.events[d.event].ts)
                .count()
                .to_string(),
        ),
        (
            "deliveries acknowledged (202)".to_owned(),
            acks.iter().filter(|a| a.acknowledged).count().to_string(),
        ),
        (
            "deliveries uncertain (retried after a failure without an answer)".to_owned(),
            acks.iter().filter(|a| a.uncertain).count().to_string(),
        ),
        ("requests".to_owned(), counts.requests.to_string()),
        (
            "requests retried after 429/503".to_owned(),
            counts.retries.to_string(),
        ),
        (
            "requests retried after a connection error, timeout or 5xx".to_owned(),
            counts.failures.to_string(),
        ),
        (
            "stream duration".to_owned(),
            format!(
                "{:.1} s (planned {:.1} s)",
                streamed.as_secs_f64(),
                planned.as_secs_f64()
            ),
        ),
    ];
    figures.extend(kafka_figures);
    figures.extend(alert_figures);
    figures.push((
        "whole run".to_owned(),
        format!("{:.1} s", began.elapsed().as_secs_f64()),
    ));
    let markdown = markdown(config, &load_config, &records, &figures, &verdicts, passed);

    queue.delete(&platform).await;
    platform.stop().await;
    Ok(Report {
        passed,
        markdown,
        faults: records,
        verdicts,
    })
}

fn add_counts(total: &mut post::Counts, part: &post::Counts) {
    total.accepted += part.accepted;
    total.replayed += part.replayed;
    total.requests += part.requests;
    total.retries += part.retries;
    total.failures += part.failures;
}

/// Runs `faults` at their moments (from `started`), each after the previous recovered.
async fn run_faults(
    platform: &mut Platform,
    config: &ChaosConfig,
    faults: &[(Duration, Fault)],
    started: Instant,
) -> Vec<FaultRecord> {
    let mut records = Vec::new();
    for &(at, fault) in faults {
        let wait = at.saturating_sub(started.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let record = strike(platform, config, fault, started).await;
        eprintln!(
            "fraud-chaos: {} at {:.1} s: ready after {}, caught up after {}{}",
            record.name,
            record.at.as_secs_f64(),
            seconds(record.ready),
            seconds(record.caught_up),
            if record.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", record.note)
            }
        );
        records.push(record);
    }
    records
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or("—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// A consumer group and the topic it reads.
type Group = (String, String);

/// Strikes `fault` and measures its recovery.
async fn strike(
    platform: &mut Platform,
    config: &ChaosConfig,
    fault: Fault,
    started: Instant,
) -> FaultRecord {
    let settings = platform.settings.clone();
    let kafka = &settings.kafka;
    let lake = (
        settings.lake.writer_group.clone(),
        kafka.transactions_topic.clone(),
    );
    let speed = (
        settings.speed.group.clone(),
        kafka.transactions_topic.clone(),
    );
    let serving = (
        settings.serving.group.clone(),
        kafka.window_updates_topic.clone(),
    );
    let (services, groups, outbox): (Vec<&str>, Vec<Group>, bool) = match fault {
        Fault::Kill("ingest") => (vec!["ingest"], vec![lake], false),
        Fault::Kill("speed-layer") => (vec!["speed-layer"], vec![speed], false),
        Fault::Kill(_) => (vec!["serving-api"], vec![serving], true),
        Fault::RedisLoss(_) => (
            vec!["ingest", "speed-layer", "serving-api"],
            vec![speed, serving],
            false,
        ),
        Fault::Restart(server) => (
            vec!["ingest", "speed-layer", "serving-api"],
            vec![lake, speed, serving],
            matches!(server, "postgres" | "rabbitmq"),
        ),
    };
    let rebuilds_before = metric(&platform.speed.base, "speed_rebuilds_total").await;
    let at = started.elapsed();
    let fault_began = Instant::now();
    let mut note = String::new();
    let mut struck = true;
    match fault {
        Fault::Kill(service) => platform.kill_and_restart(service),
        Fault::RedisLoss(RedisLoss::Restart) => {
            if let Err(error) = deploy_dev(&config.deploy_dev, &["restart", "redis"]).await {
                note = format!("deploy/dev restart redis failed: {error:#}");
                struck = false;
            }
        }
        Fault::RedisLoss(_) => match fraud_testkit::redis_keys::delete_prefix(
            settings.redis.url.expose(),
            &settings.redis.key_prefix,
        )
        .await
        {
            Ok(count) => note = format!("{count} keys deleted"),
            Err(error) => {
                note = format!("could not delete the keys: {error:#}");
                struck = false;
            }
        },
        Fault::Restart(server) => {
            if let Err(error) = deploy_dev(&config.deploy_dev, &["restart", server]).await {
                note = format!("deploy/dev restart {server} failed: {error:#}");
                struck = false;
            }
        }
    }
    if let (Fault::RedisLoss(_), true) = (fault, struck) {
        // The speed layer notices the loss at its next batch and rebuilds.
        let noticed = wait_for(RECOVERY_DEADLINE, || async {
            metric(&platform.speed.base, "speed_rebuilds_total").await > rebuilds_before
        })
        .await;
        if noticed {
            note.push_str(&format!(
                "{}speed layer rebuilding after {:.1} s",
                if note.is_empty() { "" } else { "; " },
                fault_began.elapsed().as_secs_f64()
            ));
        } else {
            note.push_str("; the speed layer never rebuilt");
            struck = false;
        }
    }
    let bases: Vec<String> = services
        .iter()
        .map(|name| match *name {
            "ingest" => platform.ingest.base.clone(),
            "speed-layer" => platform.speed.base.clone(),
            _ => platform.serving.base.clone(),
        })
        .collect();
    let ready = wait_for(RECOVERY_DEADLINE, || async {
        for base in &bases {
            if !is_ready(base).await {
                return false;
            }
        }
        true
    })
    .await
    .then(|| fault_began.elapsed());
    // What the topics hold once the services are back (the backlog of the outage, and
    // for a service killed, everything its predecessor left): what the groups must
    // commit to have caught up.
    let mut marks = Vec::new();
    for (group, topic) in &groups {
        let highs = poll_value(RECOVERY_DEADLINE, || high_watermarks(kafka, topic)).await;
        match highs {
            Some(highs) => marks.push((group.clone(), topic.clone(), highs)),
            None => note.push_str(&format!("; no watermarks of {topic}")),
        }
    }
    let caught_up = wait_for(RECOVERY_DEADLINE, || async {
        for (group, topic, highs) in &marks {
            if !committed_past(kafka, group, topic, highs).await {
                return false;
            }
        }
        !outbox || outbox_depth(platform).await == Some(0)
    })
    .await
    .then(|| fault_began.elapsed());
    if ready.is_none() {
        note.push_str(&format!(
            "{}not ready within {RECOVERY_DEADLINE:?}",
            if note.is_empty() { "" } else { "; " }
        ));
    }
    FaultRecord {
        name: fault.name(),
        at,
        ready,
        caught_up,
        struck,
        note,
    }
}

/// Polls `attempt` every 100 ms until it succeeds, at most `deadline`.
async fn poll_value<T, F, Fut>(deadline: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    loop {
        if let Ok(value) = attempt().await {
            return Some(value);
        }
        if started.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `condition` every 100 ms until it holds (true) or `deadline` passes (false).
async fn wait_for<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return true;
        }
        if started.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client")
}

async fn is_ready(base: &str) -> bool {
    matches!(http().get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
}

/// The sum of a Prometheus metric's samples at `base/metrics` (0 when unreadable).
async fn metric(base: &str, name: &str) -> f64 {
    let Ok(response) = http().get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `deploy/dev ARGS` to its end.
async fn deploy_dev(path: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(path)
        .args(args)
        .output()
        .await
        .with_context(|| format!("run {}", path.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} {} exited with {}: {}",
        path.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Per partition of `topic`, its high watermark.
async fn high_watermarks(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .create()?;
        let timeout = Duration::from_secs(5);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut highs = BTreeMap::new();
        for partition in metadata.topics()[0].partitions() {
            let (_, high) = consumer.fetch_watermarks(&topic, partition.id(), timeout)?;
            highs.insert(partition.id(), high);
        }
        anyhow::ensure!(!highs.is_empty(), "no partitions of {topic}");
        Ok(highs)
    })
    .await?
}

/// Whether `group` has committed at least `highs` on every partition of `topic` that
/// had records (false when Kafka does not answer).
async fn committed_past(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    highs: &BTreeMap<i32, i64>,
) -> bool {
    let kafka = kafka.clone();
    let group = group.to_owned();
    let topic = topic.to_owned();
    let highs = highs.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut list = TopicPartitionList::new();
        for &partition in highs.keys() {
            list.add_partition(&topic, partition);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(5))?;
        Ok(highs.iter().all(|(&partition, &high)| {
            high == 0
                || committed
                    .find_partition(&topic, partition)
                    .and_then(|element| element.offset().to_raw())
                    .is_some_and(|offset| offset >= high)
        }))
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or(false)
}

/// Whether `group` has committed everything `topic` holds now.
async fn group_at_end(kafka: &KafkaConfig, group: &str, topic: &str) -> bool {
    match high_watermarks(kafka, topic).await {
        Ok(highs) => committed_past(kafka, group, topic, &highs).await,
        Err(_) => false,
    }
}

/// Waits until the speed layer has applied every transaction and the serving API
/// evaluated every update.
async fn settle(platform: &Platform) -> anyhow::Result<()> {
    let kafka = &platform.settings.kafka;
    for (group, topic) in [
        (&platform.settings.speed.group, &kafka.transactions_topic),
        (
            &platform.settings.serving.group,
            &kafka.window_updates_topic,
        ),
    ] {
        let done = wait_for(SETTLE_DEADLINE, || group_at_end(kafka, group, topic)).await;
        anyhow::ensure!(
            done,
            "{group} did not commit all of {topic} within {SETTLE_DEADLINE:?}"
        );
    }
    Ok(())
}

async fn lake_complete(platform: &Platform) -> anyhow::Result<()> {
    let kafka = &platform.settings.kafka;
    let group = &platform.settings.lake.writer_group;
    let done = wait_for(SETTLE_DEADLINE, || {
        group_at_end(kafka, group, &kafka.transactions_topic)
    })
    .await;
    anyhow::ensure!(
        done,
        "the lake writer did not write everything within {SETTLE_DEADLINE:?}"
    );
    Ok(())
}

/// Rows of the alert outbox (None when Postgres does not answer).
async fn outbox_depth(platform: &Platform) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM alert_outbox")
        .fetch_one(&platform.pool)
        .await
        .ok()
}

async fn outbox_empty(platform: &Platform, deadline: Duration) -> anyhow::Result<()> {
    let empty = wait_for(deadline, || async {
        outbox_depth(platform).await == Some(0)
    })
    .await;
    anyhow::ensure!(empty, "the alert outbox did not empty within {deadline:?}");
    Ok(())
}

/// One record of the transactions topic, decoded.
struct KafkaEvent {
    partition: i32,
    offset: i64,
    /// `None`: it did not decode.
    event: Option<Event>,
}

/// Every record of `topic`, decoded (a reader that keeps up with a million records,
/// unlike a scan of everything read so far per record).
async fn read_topic(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<KafkaEvent>> {
    let records = read_records(kafka, topic, |message| {
        let version = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == fraud_events::SCHEMA_VERSION_HEADER)
                .and_then(|header| header.value)
        });
        Some(
            fraud_events::decode(version, message.payload().unwrap_or_default())
                .ok()
                .map(|event| Event {
                    id: event.transaction_id.as_str().to_owned(),
                    customer: event.customer_id.as_str().to_owned(),
                    vendor: event.vendor_id.as_str().to_owned(),
                    amount: event.amount.minor(),
                    ts: event.event_time.as_millis(),
                }),
        )
    })
    .await?;
    Ok(records
        .into_iter()
        .map(|(partition, offset, event)| KafkaEvent {
            partition,
            offset,
            event,
        })
        .collect())
}

/// `(partition, offset, kept)` of every record of `topic` up to its end that `keep`
/// keeps, in partition and offset order.
async fn read_records<T, F>(
    kafka: &KafkaConfig,
    topic: &str,
    keep: F,
) -> anyhow::Result<Vec<(i32, i64, T)>>
where
    T: Send + 'static,
    F: Fn(&rdkafka::message::BorrowedMessage<'_>) -> Option<T> + Send + 'static,
{
    let highs = high_watermarks(kafka, topic).await?;
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("enable.auto.commit", "false")
            .set("group.id", fraud_testkit::unique_name("chaos-read"))
            .create()?;
        let timeout = Duration::from_secs(10);
        let mut assignment = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        for (&partition, &high) in &highs {
            let (low, _) = consumer.fetch_watermarks(&topic, partition, timeout)?;
            if high > low {
                assignment.add_partition_offset(&topic, partition, Offset::Offset(low))?;
                remaining.insert(partition, high);
            }
        }
        let mut records = Vec::new();
        if remaining.is_empty() {
            return Ok(records);
        }
        consumer.assign(&assignment)?;
        let started = Instant::now();
        while !remaining.is_empty() {
            anyhow::ensure!(
                started.elapsed() < SETTLE_DEADLINE,
                "could not read {topic} to its end"
            );
            let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = polled?;
            if let Some(kept) = keep(&message) {
                records.push((message.partition(), message.offset(), kept));
            }
            if remaining
                .get(&message.partition())
                .is_some_and(|&high| message.offset() >= high - 1)
            {
                remaining.remove(&message.partition());
            }
        }
        records.sort_by_key(|record| (record.0, record.1));
        Ok(records)
    })
    .await?
}

/// What the window updates said about the customers of `missed` episodes: per
/// episode, the updates of its customer that list one of its firing events or whose
/// `asOf` lies in its span, with the counts and sums they carried.
async fn diagnose(
    platform: &Platform,
    missed: &[&load::ExpectedEpisode],
    firing_events: &BTreeMap<(String, String), BTreeSet<String>>,
) -> String {
    let customers: BTreeSet<String> = missed.iter().map(|e| e.customer.clone()).collect();
    let kafka = &platform.settings.kafka;
    let updates = read_records(kafka, &kafka.window_updates_topic, move |message| {
        let update: Value = serde_json::from_slice(message.payload()?).ok()?;
        customers
            .contains(update["customerId"].as_str()?)
            .then_some(update)
    })
    .await;
    let Ok(updates) = updates else {
        return "the updates topic could not be read".to_owned();
    };
    let mut out = Vec::new();
    for episode in missed {
        let firing = firing_events
            .get(&(episode.customer.clone(), episode.rule.clone()))
            .cloned()
            .unwrap_or_default();
        let mut lines = Vec::new();
        let mut total = 0;
        for (partition, offset, update) in &updates {
            if update["customerId"] != episode.customer.as_str() {
                continue;
            }
            total += 1;
            let as_of = update["asOf"].as_i64().unwrap_or_default();
            let events = update["events"].as_array().cloned().unwrap_or_default();
            let listed: Vec<String> = events
                .iter()
                .filter(|e| {
                    e["transactionId"]
                        .as_str()
                        .is_some_and(|id| firing.contains(id))
                })
                .map(|e| format!("{}:{}", e["transactionId"], e["window"]))
                .collect();
            let in_span = (episode.first - reference::WINDOW_MS
                ..=episode.last + reference::WINDOW_MS)
                .contains(&as_of);
            if !listed.is_empty() || in_span {
                lines.push(format!(
                    "update {partition}/{offset} asOf {} count {} sum {} generation {} with {} \
                     events, firing ones listed: [{}]",
                    reference::instant(as_of),
                    update["count"],
                    update["sumMinor"],
                    update["generation"],
                    events.len(),
                    listed.join(", ")
                ));
            }
        }
        out.push(format!(
            "{} of {} ({} updates of the customer): {}",
            episode.rule,
            episode.customer,
            total,
            lines.join(" / ")
        ));
    }
    out.join(" // ")
}

/// Kafka against the generated events and what the stream acknowledged.
fn check_kafka(
    load: &Load,
    acks: &[post::Ack],
    kafka: &[KafkaEvent],
    redis_lost: bool,
) -> (Vec<Verdict>, Vec<(String, String)>) {
    let by_id: BTreeMap<&str, &load::LoadEvent> =
        load.events.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    let mut undecodable = 0;
    let mut unknown = Vec::new();
    let mut altered = Vec::new();
    for record in kafka {
        let Some(event) = &record.event else {
            undecodable += 1;
            continue;
        };
        match by_id.get(event.id.as_str()) {
            None => unknown.push(event.id.clone()),
            Some(generated) => {
                if generated.reference() != *event {
                    altered.push(event.id.clone());
                }
                *copies.entry(generated.id.as_str()).or_default() += 1;
            }
        }
    }
    // Per event: acknowledged, uncertain, delivered more than once.
    let mut acknowledged = vec![false; load.events.len()];
    let mut uncertain = vec![false; load.events.len()];
    let mut deliveries = vec![0usize; load.events.len()];
    for (delivery, ack) in load.deliveries.iter().zip(acks) {
        acknowledged[delivery.event] |= ack.acknowledged;
        uncertain[delivery.event] |= ack.uncertain;
        deliveries[delivery.event] += 1;
    }
    let missing: Vec<&str> = load
        .events
        .iter()
        .enumerate()
        .filter(|(i, e)| acknowledged[*i] && !copies.contains_key(e.id.as_str()))
        .map(|(_, e)| e.id.as_str())
        .collect();
    let index: BTreeMap<&str, usize> = load
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let mut explained = 0;
    let mut unexplained = Vec::new();
    for (&id, &count) in copies.iter().filter(|(_, count)| **count > 1) {
        let i = index[id];
        if uncertain[i] || (redis_lost && deliveries[i] > 1) {
            explained += count - 1;
        } else {
            unexplained.push(format!("{id} ×{count}"));
        }
    }
    let redundant: usize = copies.values().map(|count| count - 1).sum();
    let sample = |list: &[String]| list.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let verdicts = vec![
        Verdict {
            check: "every Kafka record decodes and is a generated event with its exact content"
                .to_owned(),
            passed: undecodable == 0 && unknown.is_empty() && altered.is_empty(),
            detail: format!(
                "{} records: {undecodable} undecodable, {} unknown ids ({}), {} altered ({})",
                kafka.len(),
                unknown.len(),
                sample(&unknown),
                altered.len(),
                sample(&altered)
            ),
        },
        Verdict {
            check: "every acknowledged event is in Kafka".to_owned(),
            passed: missing.is_empty() && acknowledged.iter().all(|a| *a),
            detail: format!(
                "{} of {} events acknowledged, {} acknowledged but missing ({})",
                acknowledged.iter().filter(|a| **a).count(),
                load.events.len(),
                missing.len(),
                missing
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        Verdict {
            check: "an event is in Kafka more than once only where the design allows it \
                    (an unclear failure retried, or idempotency keys lost with Redis)"
                .to_owned(),
            passed: unexplained.is_empty(),
            detail: format!(
                "{redundant} redundant records: {explained} explained, {} not ({})",
                unexplained.len(),
                sample(&unexplained)
            ),
        },
    ];
    let figures = vec![
        ("Kafka records".to_owned(), kafka.len().to_string()),
        (
            "distinct transactionIds in Kafka".to_owned(),
            copies.len().to_string(),
        ),
        (
            "redundant Kafka records (counted once downstream)".to_owned(),
            redundant.to_string(),
        ),
    ];
    (verdicts, figures)
}

/// The lake, read by DuckDB, against the Kafka records: each exactly once.
fn check_lake(platform: &Platform, kafka: &[KafkaEvent]) -> Verdict {
    const SCRIPT: &str = r#"
import duckdb, json, sys
rows = duckdb.connect().execute(f"""
    SELECT kafka_partition, kafka_offset, transaction_id, customer_id, vendor_id,
           amount_minor, epoch_ms(event_time)
    FROM read_parquet('{sys.argv[1]}/transactions/**/*.parquet', hive_partitioning = true)
    ORDER BY kafka_partition, kafka_offset""").fetchall()
print(json.dumps(rows))
"#;
    let rows = fraud_testkit::duckdb_json(SCRIPT, &[&platform.lake.to_string_lossy()]);
    let rows: Vec<(i32, i64, String, String, String, i64, i64)> =
        serde_json::from_value(rows).unwrap_or_default();
    let mut seen: BTreeMap<(i32, i64), Event> = BTreeMap::new();
    let mut twice = 0;
    for (partition, offset, id, customer, vendor, amount, ts) in rows.iter().cloned() {
        let event = Event {
            id,
            customer,
            vendor,
            amount,
            ts,
        };
        if seen.insert((partition, offset), event).is_some() {
            twice += 1;
        }
    }
    let mut missing = 0;
    let mut different = 0;
    for record in kafka {
        match seen.remove(&(record.partition, record.offset)) {
            None => missing += 1,
            Some(row) => different += usize::from(Some(&row) != record.event.as_ref()),
        }
    }
    let extra = seen.len();
    Verdict {
        check: "the lake holds every Kafka record exactly once, with its content".to_owned(),
        passed: twice == 0 && missing == 0 && different == 0 && extra == 0 && !rows.is_empty(),
        detail: format!(
            "{} lake rows for {} records: {twice} twice, {missing} missing, {different} \
             different, {extra} not in Kafka",
            rows.len(),
            kafka.len()
        ),
    }
}

/// A batch run killed while it holds its lock, then a run to the end.
async fn batch_fault(
    platform: &Platform,
    watermark: i64,
    started: Instant,
) -> (FaultRecord, Verdict) {
    let as_of = reference::instant(watermark);
    let mut command = platform.command("batch-layer");
    command.args(["run", "--as-of", &as_of]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut note;
    let at = started.elapsed();
    let mut fault_began = Instant::now();
    match command.spawn() {
        Err(error) => note = format!("could not start batch-layer: {error}"),
        Ok(mut child) => {
            // Kill it once it holds the advisory lock (it is computing then), or give
            // up waiting when it ends first.
            let waiting = Instant::now();
            let mut locked = false;
            while !locked
                && matches!(child.try_wait(), Ok(None))
                && waiting.elapsed() < Duration::from_secs(120)
            {
                let held: Option<i64> = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND database = (SELECT oid FROM pg_database \
                                     WHERE datname = current_database())",
                )
                .fetch_one(&platform.pool)
                .await
                .ok();
                locked = held.is_some_and(|n| n > 0);
                if !locked {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            fault_began = Instant::now();
            if matches!(child.try_wait(), Ok(Some(_))) {
                note = "the run ended before it could be killed".to_owned();
            } else if locked {
                let _ = child.kill(); // SIGKILL
                let _ = child.wait();
                note = "killed while holding its lock".to_owned();
            } else {
                let _ = child.kill();
                let _ = child.wait();
                note = "killed (its lock was never seen)".to_owned();
            }
        }
    }
    // The killed run's session ends with its connection; the next run takes the lock.
    let mut run = platform.run_batch(watermark).await;
    let mut attempts = 1;
    while run.status != Some(0)
        && run.stderr.contains("another batch run is in progress")
        && fault_began.elapsed() < RECOVERY_DEADLINE
    {
        attempts += 1;
        run = platform.run_batch(watermark).await;
    }
    let recovered = fault_began.elapsed();
    let published = run.status == Some(0)
        && run
            .stdout
            .contains(&format!("published: watermark {as_of}"));
    if attempts > 1 {
        note.push_str(&format!("; {attempts} runs until one took the lock"));
    }
    (
        FaultRecord {
            name: "SIGKILL batch-layer run (after the stream), then run again".to_owned(),
            at,
            ready: published.then_some(recovered),
            caught_up: published.then_some(recovered),
            struck: !note.starts_with("could not start"),
            note,
        },
        Verdict {
            check: format!("a batch run after a killed one publishes watermark {as_of}"),
            passed: published,
            detail: format!(
                "exit {:?}; {}",
                run.status,
                run.stdout
                    .lines()
                    .find(|line| line.contains("published"))
                    .unwrap_or("nothing published")
            ),
        },
    )
}

/// The customers a check reads: the victims, the busiest, the latest, and `random`
/// more (chosen from the seed).
fn sample_customers(load: &Load, events: &[Event], random: usize) -> Vec<String> {
    let mut chosen: BTreeSet<String> = load.episodes.iter().map(|e| e.customer.clone()).collect();
    let mut volume: BTreeMap<&str, usize> = BTreeMap::new();
    for event in events {
        *volume.entry(&event.customer).or_default() += 1;
    }
    let mut busiest: Vec<(&str, usize)> = volume.iter().map(|(c, n)| (*c, *n)).collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    chosen.extend(busiest.iter().take(5).map(|(c, _)| (*c).to_owned()));
    let mut latest: Vec<&Event> = events.iter().collect();
    latest.sort_by_key(|e| std::cmp::Reverse(e.ts));
    chosen.extend(
        latest
            .iter()
            .take(200)
            .map(|e| e.customer.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(10),
    );
    let customers: Vec<&str> = volume.keys().copied().collect();
    let mut state = load.config.seed.wrapping_add(events.len() as u64);
    for _ in 0..random.min(customers.len()) {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        chosen.insert(customers[(state >> 33) as usize % customers.len()].to_owned());
    }
    chosen.into_iter().collect()
}

/// A check of one answer against a customer's events (panics on a difference).
type Check = fn(&Value, &[Event], &str);

/// Runs `check` on each customer's events; the failures, with their messages.
async fn check_each(
    platform: &Platform,
    customers: &[String],
    events: &[Event],
    paths: &[&dyn Fn(&str) -> String],
    check: Check,
) -> Vec<String> {
    let mut mine: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for event in events {
        mine.entry(&event.customer).or_default().push(event.clone());
    }
    let mut failures = Vec::new();
    for customer in customers {
        let own = mine.get(customer.as_str()).cloned().unwrap_or_default();
        for path in paths {
            let path = path(customer);
            let (status, answer) = platform.read(&path).await;
            if status != 200 {
                failures.push(format!("{path}: {status} {answer}"));
                continue;
            }
            let outcome =
                std::panic::catch_unwind(AssertUnwindSafe(|| check(&answer, &own, customer)));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!(
                    "{path}: {}",
                    message.lines().next().unwrap_or_default()
                ));
            }
        }
    }
    failures
}

/// A checkpoint: everything applied and evaluated, then the windows of a sample.
async fn checkpoint(
    platform: &Platform,
    load: &Load,
    events: &[Event],
    config: &ChaosConfig,
    number: usize,
    redis_lost: bool,
) -> Verdict {
    if let Err(error) = settle(platform).await {
        return Verdict {
            check: format!("checkpoint {number}: the platform settles"),
            passed: false,
            detail: format!("{error:#}"),
        };
    }
    let customers = sample_customers(load, events, config.sample);
    let risk = |customer: &str| format!("/v1/customers/{customer}/risk");
    let (check, what): (Check, &str) = if redis_lost {
        (
            check_window_after_loss,
            "the window of sampled customers equals the reference, and today and the last \
             24 h say they are partial (degraded: no batch run, and the speed layer rebuilt \
             only its retention after losing Redis)",
        )
    } else {
        (
            reference::check_risk,
            "window, today and last 24 h of sampled customers equal the reference",
        )
    };
    let failures = check_each(platform, &customers, events, &[&risk], check).await;
    Verdict {
        check: format!(
            "checkpoint {number}: {what}, over the {} events delivered so far",
            events.len()
        ),
        passed: failures.is_empty(),
        detail: format!(
            "{} customers checked; {} failed{}",
            customers.len(),
            failures.len(),
            failures
                .first()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        ),
    }
}

/// The window of a `/risk` answer against `events` at its `asOf`, and the answer
/// flagged degraded (after a Redis loss with no batch run, the speed layer holds only
/// what it rebuilt: its retention).
fn check_window_after_loss(answer: &Value, events: &[Event], customer: &str) {
    let as_of = reference::millis(answer["asOf"].as_str().expect("asOf"));
    let window = reference::window(events, customer, as_of);
    let context = format!("risk of {customer}: {answer}");
    assert_eq!(
        answer["window30m"]["sum"],
        reference::money(window.sum),
        "{context}"
    );
    assert_eq!(answer["window30m"]["count"], window.count, "{context}");
    if window.count > 0 {
        assert_eq!(
            answer["window30m"]["max"],
            reference::money(window.max),
            "{context}"
        );
        assert_eq!(
            answer["window30m"]["distinctVendors"], window.vendors,
            "{context}"
        );
    }
    assert_eq!(answer["freshness"]["degraded"], true, "{context}");
}

/// After the batch run: risk and `/daily` of the sample, merged figures included.
async fn final_figures(
    platform: &Platform,
    load: &Load,
    events: &[Event],
    config: &ChaosConfig,
    watermark: i64,
) -> Verdict {
    let customers = sample_customers(load, events, config.sample);
    let from = reference::date(reference::day_of(load.config.start_ms));
    let to = reference::date(reference::day_of(chrono::Utc::now().timestamp_millis()));
    let risk = |customer: &str| format!("/v1/customers/{customer}/risk");
    let daily = |customer: &str| format!("/v1/customers/{customer}/daily?from={from}&to={to}");
    let mut failures = check_each(
        platform,
        &customers,
        events,
        &[&risk],
        reference::check_risk,
    )
    .await;
    failures.extend(
        check_each(
            platform,
            &customers,
            events,
            &[&daily],
            reference::check_daily,
        )
        .await,
    );
    // Each answer names the batch watermark.
    let (_, answer) = platform.read(&risk(&customers[0])).await;
    if answer["freshness"]["batchWatermark"] != reference::instant(watermark) {
        failures.push(format!(
            "risk names another watermark: {}",
            answer["freshness"]
        ));
    }
    Verdict {
        check: "after the batch run: window, today, last 24 h and /daily of sampled customers \
                equal the reference"
            .to_owned(),
        passed: failures.is_empty(),
        detail: format!(
            "{} customers checked; {} failed{}",
            customers.len(),
            failures.len(),
            failures
                .first()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        ),
    }
}

/// The alerts against the expected episodes.
fn check_alerts(
    load: &Load,
    expected: &[load::ExpectedEpisode],
    history: &[Value],
    received: &[(String, Value)],
) -> (Vec<Verdict>, Vec<(String, String)>) {
    let ids: Vec<&str> = history
        .iter()
        .filter_map(|a| a["alertId"].as_str())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    // Match each alert to the expected episode of its (customer, rule) whose span holds
    // its episode start.
    let mut matched: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    let mut exact = 0;
    for alert in history {
        let customer = alert["customerId"].as_str().unwrap_or_default();
        let rule = alert["rule"].as_str().unwrap_or_default();
        let id = alert["alertId"].as_str().unwrap_or_default();
        let start = alert["episodeStart"].as_str().map(reference::millis);
        let found = expected.iter().position(|e| {
            e.customer == customer
                && e.rule == rule
                && start.is_some_and(|s| (e.first..=e.last).contains(&s))
        });
        match found {
            Some(index) => {
                matched.entry(index).or_default().push(id);
                if id == alert_id(customer, rule, expected[index].first) {
                    exact += 1;
                }
            }
            None => unmatched.push(format!("{rule} of {customer} at {}", alert["episodeStart"])),
        }
    }
    let missed: Vec<String> = expected
        .iter()
        .enumerate()
        .filter(|(i, _)| !matched.contains_key(i))
        .map(|(_, e)| {
            format!(
                "{} of {} at {}",
                e.rule,
                e.customer,
                reference::instant(e.first)
            )
        })
        .collect();
    let split: Vec<String> = matched
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(i, ids)| {
            format!(
                "{} of {}: {}",
                expected[*i].rule,
                expected[*i].customer,
                ids.join(", ")
            )
        })
        .collect();
    let labelled: BTreeSet<(String, String)> = load
        .episodes
        .iter()
        .flat_map(|e| e.rules.iter().map(|r| (e.customer.clone(), r.clone())))
        .collect();
    let expected_pairs: BTreeSet<(String, String)> = expected
        .iter()
        .map(|e| (e.customer.clone(), e.rule.clone()))
        .collect();
    let delivered: BTreeSet<&str> = received.iter().map(|(id, _)| id.as_str()).collect();
    let foreign: Vec<&str> = delivered
        .iter()
        .copied()
        .filter(|id| !unique.contains(id))
        .collect();
    let undelivered: Vec<&str> = unique
        .iter()
        .copied()
        .filter(|id| !delivered.contains(id))
        .collect();
    let body_mismatch = received
        .iter()
        .filter(|(id, body)| body["alertId"].as_str() != Some(id.as_str()))
        .count();
    let list = |items: &[String]| items.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    let verdicts = vec![
        Verdict {
            check: "the episodes the default rules must alert on are exactly the labelled fraud \
                    episodes"
                .to_owned(),
            passed: expected_pairs == labelled && expected.len() == labelled.len(),
            detail: format!(
                "{} expected episodes, {} labelled",
                expected.len(),
                labelled.len()
            ),
        },
        Verdict {
            check: "every expected alert exists in Postgres, exactly once (no episode split \
                    into two ids), and no other alert"
                .to_owned(),
            passed: missed.is_empty() && split.is_empty() && unmatched.is_empty(),
            detail: format!(
                "{} alerts for {} expected episodes: {} missed ({}), {} split ({}), {} \
                 unexpected ({})",
                history.len(),
                expected.len(),
                missed.len(),
                list(&missed),
                split.len(),
                list(&split),
                unmatched.len(),
                list(&unmatched)
            ),
        },
        Verdict {
            check: "alert ids are unique in the history".to_owned(),
            passed: unique.len() == ids.len(),
            detail: format!("{} alerts, {} distinct ids", ids.len(), unique.len()),
        },
        Verdict {
            check: "every alert was delivered to the bound durable queue, and nothing else \
                    (message_id = alertId = the body's)"
                .to_owned(),
            passed: undelivered.is_empty() && foreign.is_empty() && body_mismatch == 0,
            detail: format!(
                "{} messages, {} distinct ids: {} alerts undelivered, {} messages with an id \
                 not in the history, {} whose body names another id",
                received.len(),
                delivered.len(),
                undelivered.len(),
                foreign.len(),
                body_mismatch
            ),
        },
    ];
    let figures = vec![
        (
            "alerts expected (labelled fraud episodes)".to_owned(),
            expected.len().to_string(),
        ),
        ("alerts in Postgres".to_owned(), history.len().to_string()),
        (
            "alert messages on the bound queue (distinct ids)".to_owned(),
            format!("{} ({})", received.len(), delivered.len()),
        ),
        (
            "alerts whose id is the one derived from the reference's first firing".to_owned(),
            format!("{exact} of {}", history.len()),
        ),
    ];
    (verdicts, figures)
}

/// The alert id DESIGN's episodes give: UUID v5 in the namespace
/// `uuid5(NAMESPACE_URL, "urn:fraud-platform:alert")` of `customer \0 rule \0 startMs`.
fn alert_id(customer: &str, rule: &str, start: i64) -> String {
    let namespace = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"urn:fraud-platform:alert");
    uuid::Uuid::new_v5(
        &namespace,
        format!("{customer}\0{rule}\0{start}").as_bytes(),
    )
    .to_string()
}

fn first_difference(
    got: &BTreeMap<(String, i64), (i64, i64)>,
    expected: &BTreeMap<(String, i64), (i64, i64)>,
) -> String {
    for (key, value) in expected {
        if got.get(key) != Some(value) {
            return format!(
                "; first difference: {} on {}: {:?}, expected {value:?}",
                key.0,
                reference::date(key.1),
                got.get(key)
            );
        }
    }
    match got.keys().find(|key| !expected.contains_key(*key)) {
        Some(key) => format!("; unexpected row {} on {}", key.0, reference::date(key.1)),
        None => String::new(),
    }
}

/// A durable queue of the run's own, bound to the platform's alerts exchange before the
/// stream: it survives a RabbitMQ restart and keeps every alert until the end.
struct AlertQueue {
    name: String,
}

impl AlertQueue {
    async fn bind(platform: &Platform) -> anyhow::Result<AlertQueue> {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        let name = fraud_testkit::unique_name("chaos-alerts");
        let (connection, channel) = amqp(platform).await?;
        let exchange = &platform.settings.rabbitmq.alerts_exchange;
        fraud_amqp::declare_topic_exchange(&channel, exchange).await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                name.as_str().into(),
                exchange.as_str().into(),
                "alert.#".into(),
                QueueBindOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await?;
        let _ = connection.close(200, "bound".into()).await;
        Ok(AlertQueue { name })
    }

    /// Every message in the queue: (message id, body).
    async fn drain(&self) -> anyhow::Result<Vec<(String, Value)>> {
        let url = fraud_testkit::local_settings()
            .rabbitmq
            .url
            .expose()
            .clone();
        let connection =
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.name.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            let delivery = message.delivery;
            let id = fraud_testkit::amqp::message_id(&delivery);
            let body = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
            messages.push((id, body));
        }
        let _ = connection.close(200, "drained".into()).await;
        Ok(messages)
    }

    async fn delete(&self, platform: &Platform) {
        if let Ok((connection, channel)) = amqp(platform).await {
            let _ = channel
                .queue_delete(
                    self.name.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

async fn amqp(platform: &Platform) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let connection = lapin::Connection::connect(
        platform.settings.rabbitmq.url.expose(),
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// The report.
fn markdown(
    config: &ChaosConfig,
    load: &LoadConfig,
    faults: &[FaultRecord],
    figures: &[(String, String)],
    verdicts: &[Verdict],
    passed: bool,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# Fault suite: {} events — {}\n\n",
        load.events,
        if passed { "**pass**" } else { "**FAIL**" }
    ));
    out.push_str(&format!(
        "Run at {}: {} customers (Zipf {}), {} fraud episodes, {}/s from {} clients in \
         batches of up to {}, event time spanning {:.1} h ({:.0} times the wall clock), {:.1} % late (≤ {} s), {:.1} % \
         duplicated; seed {}. Redis loss: {:?}; server restarts: {}.\n\n",
        reference::instant(chrono::Utc::now().timestamp_millis()),
        load.customers,
        load.zipf_exponent,
        load.fraud_episodes,
        config.rate,
        config.clients,
        config.batch,
        load.span_ms as f64 / reference::HOUR_MS as f64,
        config.speedup,
        load.out_of_order_fraction * 100.0,
        load.max_delay_ms / 1000,
        load.duplicate_fraction * 100.0,
        load.seed,
        config.redis_loss,
        if config.restart_servers {
            "Kafka, PostgreSQL, RabbitMQ"
        } else {
            "none"
        },
    ));
    out.push_str("## Faults and recovery\n\nReady: every affected service answers `/readyz` 200. Caught up: every affected consumer group has committed what the topics held once the services were ready again (the backlog of the outage) (and, for PostgreSQL, RabbitMQ and the serving API, the alert outbox is empty).\n\n| # | fault | at | ready after | caught up after | note |\n|---:|---|---:|---:|---:|---|\n");
    for (number, fault) in faults.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {} | {:.1} s | {} | {} | {} |\n",
            number + 1,
            if fault.struck {
                fault.name.clone()
            } else {
                format!("{} (**not struck**)", fault.name)
            },
            fault.at.as_secs_f64(),
            seconds(fault.ready),
            seconds(fault.caught_up),
            fault.note.replace('|', "\\|")
        ));
    }
    out.push_str("\n## Figures\n\n| what | value |\n|---|---:|\n");
    for (what, value) in figures {
        out.push_str(&format!("| {what} | {value} |\n"));
    }
    out.push_str("\n## Checks\n\n| check | verdict | detail |\n|---|---|---|\n");
    for verdict in verdicts {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            verdict.check,
            if verdict.passed { "pass" } else { "**FAIL**" },
            verdict.detail.replace('|', "\\|").replace('\n', " ")
        ));
    }
    out
}
