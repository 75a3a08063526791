//! Fault tolerance of the speed layer against the real Kafka and Redis: the real binary
//! killed with SIGKILL at random points of a stream and restarted, Redis losing its data
//! mid-stream, and partitions moving between two instances mid-stream. Each test ends
//! with every customer's state exactly what the independent `Model` computes.
//!
//! Every test has a Postgres database of its own, so the batch watermark T_b (which
//! decides how far back a rebuild reads and which hourly increments are kept) is what
//! the test says, not whatever other tests left in the shared `batch_runs`.
//!
//! Each test's random choices (the stream, how far each instance gets before a kill)
//! come from a seed it prints; `SPEED_FAULTS_SEED=<64 hex digits>` makes them again (the
//! timing, of course, differs).

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Model, Produced, SpeedTest, assert_exact, counter, event, start_in_process};
use fraud_config::{KafkaConfig, Secret};
use fraud_events::TransactionEvent;
use fraud_speed_view::{Generation, HOUR_MS, WINDOW_MS, WindowAggregates, WindowUpdate};
use fraud_testkit::service::Binary;
use fraud_testkit::{PrivateRedis, get_json, get_text, poll_for, wait_until};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Generous: the machine is small and other tests run at the same time.
const DEADLINE: Duration = Duration::from_secs(180);
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * HOUR_MS;

// ---------------------------------------------------------------------------------------
// 1. SIGKILL at random points.

/// At least this many events; the stream goes on until every kill is done.
const KILL_TEST_EVENTS: usize = 200_000;
/// Never more than this many (a stuck kill loop times out long before).
const KILL_TEST_MAX_EVENTS: usize = 300_000;
/// Six kills: the first two at any point (in practice during the rebuild each instance
/// starts with: the first instance has the whole topic to read, and one killed during
/// its rebuild leaves the next one to rebuild again), the others in steady state, except
/// the fourth, at any point again.
const KILL_IN_STEADY_STATE: [bool; 6] = [false, false, true, false, true, true];
/// The first instance starts once this many events are in the topic, so that its first
/// rebuild is long enough for the first kill to land in it.
const FIRST_START_AT: usize = 30_000;
/// The stream is produced fast (chunks of `KILL_TEST_FAST_CHUNK` every
/// `KILL_TEST_CHUNK_EVERY`, about 20,000 events/s) up to this many events, then slowly
/// (`KILL_TEST_SLOW_CHUNK`, about 500 events/s) until every kill is done, slow enough
/// for the speed layer to keep up so that the final catch-up stays short. (While records
/// trickle in, its throughput is capped: every second, the pipeline thread queries the
/// watermarks of each assigned partition, and each query waits behind the consumer's
/// long-polling fetch, up to 500 ms: seconds per batch with six partitions.)
const KILL_TEST_FAST_UNTIL: usize = 165_000;
const KILL_TEST_FAST_CHUNK: usize = 5_000;
const KILL_TEST_SLOW_CHUNK: usize = 125;
const KILL_TEST_CHUNK_EVERY: Duration = Duration::from_millis(250);
/// A kill waits for the instance to apply between 1 and this many records.
const KILL_AFTER_AT_MOST: u64 = 5_000;

/// The real binary, on the test's topics, key prefix, group and database (all through
/// environment variables, which override the config file `Binary::start` writes).
struct SpeedBinary {
    env: Vec<(&'static str, String)>,
}

impl SpeedBinary {
    fn new(test: &SpeedTest) -> SpeedBinary {
        let settings = &test.settings;
        SpeedBinary {
            env: vec![
                (
                    "FRAUD_KAFKA__TRANSACTIONS_TOPIC",
                    settings.kafka.transactions_topic.clone(),
                ),
                (
                    "FRAUD_KAFKA__WINDOW_UPDATES_TOPIC",
                    settings.kafka.window_updates_topic.clone(),
                ),
                ("FRAUD_REDIS__KEY_PREFIX", settings.redis.key_prefix.clone()),
                ("FRAUD_SPEED__GROUP", settings.speed.group.clone()),
                (
                    "FRAUD_POSTGRES__URL",
                    settings.postgres.url.expose().clone(),
                ),
            ],
        }
    }

    /// Starts it; returns the process and its base URL.
    fn start(&self) -> (fraud_testkit::ChildProcess, String) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        Binary {
            path: env!("CARGO_BIN_EXE_speed-layer"),
            args: &[],
            section: "speed",
        }
        .start("", &env)
    }
}

/// What one kill hit.
#[derive(Debug)]
#[allow(dead_code)] // printed
struct Kill {
    /// Records the instance had been through (any outcome) when the kill was decided.
    records_seen: u64,
    /// Of which replayed: already applied by an earlier instance.
    replayed: u64,
    /// Whether the view was degraded (a rebuild under way) at the kill.
    during_rebuild: bool,
    elapsed: Duration,
}

/// The real binary, killed with SIGKILL six times while a stream of 200,000 events is
/// produced (during rebuilds and in steady state, each time after it applied a random
/// number of records) and restarted at once: the state ends exact, with every record
/// read again after a kill recognised as a replay, one generation throughout, and the
/// window updates (published at least once) consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_leaves_the_state_exact() {
    let started = Instant::now();
    let (mut rng, seed) = seeded_rng();
    eprintln!("sigkill test seed: {seed}");
    let test = SpeedTest::create("speed-kill", 6).await;
    // No batch run in the test's database: T_b unknown, so a (re)build reads each
    // partition from its start and every hourly increment is kept.
    let retention = test.settings.speed.retention_ms();
    let binary = SpeedBinary::new(&test);

    // Event times over about two days (from three days ago), out of order by up to 50
    // minutes, with resent transactions; a few thousand customers, 50 of them hot.
    let run = fraud_testkit::unique_name("tx");
    let mut stream = Stream {
        rng: TestRng::from_seed(RngAlgorithm::ChaCha, &rng.random::<[u8; 32]>()),
        run,
        customers: 2_000,
        hot: 50,
        start: now_ms() - 3 * DAY_MS,
        step: 3 * DAY_MS / KILL_TEST_MAX_EVENTS as i64,
        disorder: 50 * MINUTE_MS,
        count: 0,
        recent: VecDeque::new(),
    };
    let produced_count = AtomicUsize::new(0);
    let kills_done = AtomicBool::new(false);

    let producing = async {
        let mut produced: Vec<Produced> = Vec::new();
        let mut tick = tokio::time::interval(KILL_TEST_CHUNK_EVERY);
        while produced.len() < KILL_TEST_MAX_EVENTS
            && (produced.len() < KILL_TEST_EVENTS || !kills_done.load(Ordering::SeqCst))
        {
            tick.tick().await;
            let chunk = if produced.len() < KILL_TEST_FAST_UNTIL {
                KILL_TEST_FAST_CHUNK
            } else {
                KILL_TEST_SLOW_CHUNK
            };
            produced.extend(test.produce(stream.chunk(chunk)).await);
            produced_count.store(produced.len(), Ordering::SeqCst);
        }
        produced
    };

    let killing = async {
        wait_until(DEADLINE, "the first events in the topic", || {
            let count = produced_count.load(Ordering::SeqCst);
            async move { count >= FIRST_START_AT }
        })
        .await;
        let (mut process, mut base) = binary.start();
        let mut kills = Vec::new();
        for steady in KILL_IN_STEADY_STATE {
            // A kill in steady state waits for the view to be complete (the instance
            // resumed, or finished its rebuild); any kill waits for this instance to
            // apply `threshold` more records, so it lands at a point of its work the
            // test does not choose.
            let mut from = 0;
            if steady {
                from = poll_for(DEADLINE, "the state to be complete", || {
                    steady_progress(&mut process, &base, &test)
                })
                .await;
            }
            let threshold = from + rng.random_range(1..=KILL_AFTER_AT_MOST);
            let metrics = poll_for(DEADLINE, "the speed layer to make progress", || {
                let progress = instance_metrics(&mut process, &base);
                async move {
                    let metrics = progress.await?;
                    (records_seen(&metrics) >= threshold).then_some(metrics)
                }
            })
            .await;
            let during_rebuild = test.meta().await.degraded().is_some();
            process.signal(SIGKILL);
            let status = process.wait_for_exit(Duration::from_secs(10));
            assert_eq!(
                status.signal(),
                Some(SIGKILL),
                "the speed layer was killed, not stopped:\n{}",
                process.output()
            );
            kills.push(Kill {
                records_seen: records_seen(&metrics),
                replayed: counter(&metrics, r#"speed_records_total{outcome="replayed"}"#),
                during_rebuild,
                elapsed: started.elapsed(),
            });
            (process, base) = binary.start();
        }
        kills_done.store(true, Ordering::SeqCst);
        (process, base, kills)
    };

    let (produced, (mut process, base, kills)) = tokio::join!(producing, killing);
    let produced_after = started.elapsed();
    // Both kinds of restart were exercised: resuming a complete state from the committed
    // offsets, and starting a rebuild over.
    assert!(
        kills.iter().any(|kill| kill.during_rebuild),
        "no kill landed during a rebuild: {kills:?}"
    );
    assert!(
        kills.iter().any(|kill| !kill.during_rebuild),
        "no kill landed in steady state: {kills:?}"
    );
    assert!(produced.len() >= KILL_TEST_EVENTS);
    let model = Model::of(&produced, retention);
    assert!(model.late > 0, "the stream exercises lateness");
    assert!(model.duplicates > 0, "the stream exercises duplicates");
    let customers = model.last_offsets.len();
    assert!(customers >= 1_500, "only {customers} customers");

    wait_until(DEADLINE, "every record to be applied", || {
        test.caught_up(&model)
    })
    .await;
    let caught_up_after = started.elapsed();
    assert_exact(&test, &model, retention).await;
    assert_whole_history(&test, &model).await;

    // The kills did make instances read again records an earlier one had applied (a
    // rebuild killed and started over, or a batch applied but not committed), and the
    // offset fence recognised them as replays. (The exact state alone would not show a
    // missing fence: a record read again is either still kept, and then caught by the
    // duplicate check on its transaction, or late by then. This count does show it.)
    let (_, final_metrics) = get_text(&format!("{base}/metrics"))
        .await
        .expect("/metrics answers");
    let replayed: u64 = kills.iter().map(|kill| kill.replayed).sum::<u64>()
        + counter(&final_metrics, r#"speed_records_total{outcome="replayed"}"#);
    assert!(
        replayed > 0,
        "no record was replayed: the kills did not test the offset fence ({kills:?})"
    );

    // No kill lost the state: one generation throughout, and the window updates
    // published (at least once) agree with each other and, last, with the model.
    let generation = test.meta().await.generation.expect("a generation");
    let updates = poll_for(DEADLINE, "the last window update of every customer", || {
        let kafka = test.settings.kafka.clone();
        let topic = test.settings.kafka.window_updates_topic.clone();
        let model = &model;
        async move {
            let updates = tokio::task::spawn_blocking(move || read_updates(&kafka, &topic))
                .await
                .expect("read the updates");
            let latest = latest_updates(&updates);
            model
                .last_offsets
                .iter()
                .all(|(customer, offset)| {
                    latest
                        .get(customer.as_str())
                        .is_some_and(|update| update.source_offset == *offset)
                })
                .then_some(updates)
        }
    })
    .await;
    assert_updates_agree(&updates, &model, generation);

    process.signal(SIGTERM);
    let status = process.wait_for_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "the speed layer did not stop cleanly after SIGTERM: {status}\n{}",
        process.output()
    );
    eprintln!(
        "sigkill test: {} events, {customers} customers ({} late, {} duplicates), kills \
         {kills:?}, {replayed} records replayed, {} window updates; produced by {produced_after:?}, \
         caught up after {caught_up_after:?}, total {:?}",
        produced.len(),
        model.late,
        model.duplicates,
        updates.len(),
        started.elapsed()
    );
    test.remove().await;
}

// ---------------------------------------------------------------------------------------
// 2. Redis loses its data.

const LOSS_TEST_BEFORE: usize = 100_000;
const LOSS_TEST_DURING: usize = 30_000;
const OLD_CUSTOMERS: usize = 200;

/// What the test saw while the state was rebuilt.
#[derive(Debug, Default)]
struct Observed {
    /// The meta key's reason, with a new generation and not every partition ready.
    meta_rebuilding: Option<String>,
    /// The `/readyz` error of the `state` check.
    readyz_state: Option<String>,
    polls: u32,
}

/// A private Redis loses everything (FLUSHALL) while records flow into a topic holding
/// 100,000 already: the speed layer starts a new generation, reads as degraded (meta key
/// and `/readyz`) while it rebuilds from Kafka by record timestamp, then not, and the
/// state ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_is_rebuilt_exactly_and_degraded_meanwhile() {
    let started = Instant::now();
    let (mut rng, seed) = seeded_rng();
    eprintln!("redis loss test seed: {seed}");
    let mut redis_server = PrivateRedis::new();
    redis_server.start();
    // A batch run covered everything up to an hour before the current hour, so a rebuild
    // reads by record timestamp, back to min(now - retention, T_b) - future skew - 60 s
    // (at most about two hours ago), not from the start of the topic.
    let now = now_ms();
    let watermark = now - now.rem_euclid(HOUR_MS) - HOUR_MS;
    let redis_url = redis_server.url();
    let test = SpeedTest::create_with("speed-redis-loss", 3, |settings| {
        settings.redis.url = Secret::new(redis_url.clone());
    })
    .await;
    test.publish_watermark(watermark).await;
    let retention = test.settings.speed.retention_ms();
    let run = fraud_testkit::unique_name("tx");

    // First in the topic: customers whose only events (and record timestamps) are three
    // hours old, before the rebuild's reach: a rebuild must not read them. (The first
    // start may or may not, depending on whether T_b was read by then.)
    let old: Vec<TransactionEvent> = (0..OLD_CUSTOMERS)
        .map(|n| {
            event(
                &format!("{run}-old-{n}"),
                &format!("old{n}"),
                "v1",
                100,
                now - 3 * HOUR_MS,
            )
        })
        .collect();
    test.produce(old).await;

    // Then the model's events. Their record timestamps are their event times (ingest
    // time = ts, as `common::event` makes them), from the last 30 minutes (a few moved
    // back to the start of their hour): all at or after T_b, so inside the rebuild's
    // reach, which is by record timestamp, and none of their hourly increments is dropped
    // as covered by the batch. That would hold as well with T_b unknown (a rebuild from
    // the start of the topic, every increment kept) or with any T_b from a batch run
    // over the past.
    let total = LOSS_TEST_BEFORE + LOSS_TEST_DURING;
    let mut stream = Stream {
        rng: TestRng::from_seed(RngAlgorithm::ChaCha, &rng.random::<[u8; 32]>()),
        run,
        customers: 1_000,
        hot: 0,
        start: now - 25 * MINUTE_MS,
        step: 20 * MINUTE_MS / total as i64,
        disorder: 5 * MINUTE_MS,
        count: 0,
        recent: VecDeque::new(),
    };
    let mut produced = Vec::with_capacity(total);
    while produced.len() < LOSS_TEST_BEFORE {
        produced.extend(test.produce(stream.chunk(5_000)).await);
    }
    let (shutdown, port) = start_in_process(&test.settings).await;
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let model = Model::of(&produced, retention);
    wait_until(DEADLINE, "the first events to be applied", || {
        test.caught_up(&model)
    })
    .await;
    wait_until(DEADLINE, "/readyz to answer 200", || {
        let url = readyz.clone();
        async move { matches!(get_json(&url).await, Some((200, _))) }
    })
    .await;
    let first_caught_up = started.elapsed();
    let before = test.meta().await.generation.expect("a generation");
    let rebuilds_before = counter(
        &get_text(&metrics).await.expect("/metrics").1,
        "speed_rebuilds_total",
    );

    // More events flow while Redis loses everything.
    let producing = async {
        let mut produced = Vec::with_capacity(LOSS_TEST_DURING);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while produced.len() < LOSS_TEST_DURING {
            tick.tick().await;
            produced.extend(test.produce(stream.chunk(1_000)).await);
        }
        produced
    };
    let observed = RefCell::new(Observed::default());
    let losing = async {
        let client = redis::Client::open(redis_server.url()).expect("a redis client");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private redis");
        let (): () = redis::cmd("FLUSHALL")
            .query_async(&mut connection)
            .await
            .expect("FLUSHALL");
        let flushed_at = Instant::now();
        poll_for(DEADLINE, "the state to be rebuilt", || {
            let observed = &observed;
            let test = &test;
            let readyz = readyz.clone();
            async move {
                let meta = test.meta().await;
                let ready = get_json(&readyz).await;
                let mut observed = observed.borrow_mut();
                observed.polls += 1;
                if let Some((503, body)) = &ready
                    && let Some(state) = body["checks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|check| check["name"] == "state" && check["ok"] == false)
                {
                    observed
                        .readyz_state
                        .get_or_insert_with(|| state["error"].to_string());
                }
                let generation = meta.generation.filter(|generation| *generation != before);
                match (generation, meta.degraded()) {
                    (Some(_), Some(reason)) => {
                        observed.meta_rebuilding.get_or_insert(reason);
                        None
                    }
                    (Some(generation), None) if matches!(ready, Some((200, _))) => Some(generation),
                    _ => None,
                }
            }
        })
        .await;
        flushed_at.elapsed()
    };
    let (during, rebuilt_in) = tokio::join!(producing, losing);
    let observed = observed.into_inner();
    let after = test.meta().await.generation.expect("a generation");
    assert_ne!(after, before, "a new generation after the loss");
    assert!(
        observed
            .meta_rebuilding
            .as_deref()
            .is_some_and(|reason| reason.contains("rebuilding")),
        "the meta key never read as rebuilding ({observed:?}, rebuilt in {rebuilt_in:?})"
    );
    assert!(
        observed
            .readyz_state
            .as_deref()
            .is_some_and(|error| error.contains("rebuilding")),
        "/readyz never failed its state check ({observed:?}, rebuilt in {rebuilt_in:?})"
    );
    let rebuilds_after = counter(
        &get_text(&metrics).await.expect("/metrics").1,
        "speed_rebuilds_total",
    );
    assert!(
        rebuilds_after > rebuilds_before,
        "speed_rebuilds_total did not increase"
    );

    produced.extend(during);
    let model = Model::of(&produced, retention);
    assert!(model.duplicates > 0, "the stream exercises duplicates");
    wait_until(DEADLINE, "every record to be applied", || {
        test.caught_up(&model)
    })
    .await;
    let caught_up = started.elapsed();
    assert_exact(&test, &model, retention).await;
    assert_whole_history(&test, &model).await;
    for n in 0..OLD_CUSTOMERS {
        assert!(
            test.state(&format!("old{n}")).await.is_none(),
            "old{n}: the rebuild read records from before its reach"
        );
    }
    assert_eq!(test.meta().await.generation, Some(after));

    shutdown.trigger();
    shutdown.wait().await.expect("a clean stop");
    eprintln!(
        "redis loss test: {} events; first caught up after {first_caught_up:?}, rebuilt in \
         {rebuilt_in:?} (observed {observed:?}), caught up after {caught_up:?}, total {:?}",
        produced.len(),
        started.elapsed()
    );
    test.remove().await;
    drop(redis_server);
}

// ---------------------------------------------------------------------------------------
// 3. Two instances, partitions moving both ways.

const REBALANCE_TEST_EVENTS: usize = 60_000;
/// Events that flow in each phase (one instance, two, one again).
const REBALANCE_PHASE_EVENTS: usize = 10_000;

/// Partitions move while records flow: three of six to a second instance, then all back
/// when the first one stops. Each move leaves the old owner a batch in hand that it may
/// still apply after the new owner started from the committed offset; the state must
/// end exact all the same, with nothing lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_a_rebalance_in_the_middle_are_exact() {
    let started = Instant::now();
    let (mut rng, seed) = seeded_rng();
    eprintln!("rebalance test seed: {seed}");
    let test = SpeedTest::create("speed-rebalance", 6).await;
    let retention = test.settings.speed.retention_ms();
    let mut stream = Stream {
        rng: TestRng::from_seed(RngAlgorithm::ChaCha, &rng.random::<[u8; 32]>()),
        run: fraud_testkit::unique_name("tx"),
        customers: 1_200,
        hot: 30,
        start: now_ms() - 2 * DAY_MS,
        step: DAY_MS / (2 * REBALANCE_TEST_EVENTS) as i64,
        disorder: 50 * MINUTE_MS,
        count: 0,
        recent: VecDeque::new(),
    };
    let mut initial = Vec::new();
    while initial.len() < REBALANCE_PHASE_EVENTS {
        initial.extend(test.produce(stream.chunk(2_000)).await);
    }
    let produced_count = AtomicUsize::new(initial.len());
    let phases_done = AtomicBool::new(false);
    let first = test.start().await;

    let producing = async {
        let mut produced = initial;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while produced.len() < REBALANCE_TEST_EVENTS || !phases_done.load(Ordering::SeqCst) {
            tick.tick().await;
            produced.extend(test.produce(stream.chunk(1_000)).await);
            produced_count.store(produced.len(), Ordering::SeqCst);
        }
        produced
    };
    let more_events = |what: &'static str| {
        let mark = produced_count.load(Ordering::SeqCst);
        let produced_count = &produced_count;
        async move {
            wait_until(DEADLINE, what, || {
                let count = produced_count.load(Ordering::SeqCst);
                async move { count >= mark + REBALANCE_PHASE_EVENTS }
            })
            .await;
        }
    };
    let group = test.settings.speed.group.clone();
    let assignment = |members: usize| {
        let kafka = test.settings.kafka.clone();
        let group = group.clone();
        let topic = test.topic().to_owned();
        poll_for(
            DEADLINE,
            "the partitions to be split between the members",
            move || {
                let (kafka, group, topic) = (kafka.clone(), group.clone(), topic.clone());
                async move {
                    let counts = tokio::task::spawn_blocking(move || {
                        group_assignment(&kafka, &group, &topic)
                    })
                    .await
                    .expect("describe the group")?;
                    (counts.len() == members
                        && counts.iter().all(|count| *count > 0)
                        && counts.iter().sum::<usize>() == 6)
                        .then_some(counts)
                }
            },
        )
    };
    let phases = async {
        wait_until(
            DEADLINE,
            "the first instance to rebuild every partition",
            || {
                let test = &test;
                async move { test.meta().await.degraded().is_none() }
            },
        )
        .await;
        more_events("events while one instance runs").await;
        let second = test.start().await;
        let split = assignment(2).await;
        more_events("events while two instances share the partitions").await;
        first.trigger();
        first
            .wait()
            .await
            .expect("the first instance stops cleanly");
        let back = assignment(1).await;
        more_events("events after the first instance left").await;
        phases_done.store(true, Ordering::SeqCst);
        (second, split, back)
    };
    let (produced, (second, split, back)) = tokio::join!(producing, phases);

    let model = Model::of(&produced, retention);
    assert!(model.late > 0, "the stream exercises lateness");
    assert!(model.duplicates > 0, "the stream exercises duplicates");
    wait_until(DEADLINE, "every record to be applied", || {
        test.caught_up(&model)
    })
    .await;
    assert_exact(&test, &model, retention).await;
    assert_whole_history(&test, &model).await;
    second.trigger();
    second.wait().await.expect("a clean stop");
    eprintln!(
        "rebalance test: {} events, {} customers, partitions per member {split:?} then \
         {back:?}, total {:?}",
        produced.len(),
        model.last_offsets.len(),
        started.elapsed()
    );
    test.remove().await;
}

// ---------------------------------------------------------------------------------------
// Support.

/// A random stream: event times rising by `step` from `start` with disorder of up to
/// `disorder`, some exactly on the hour and some exactly 30 minutes after the same
/// customer's previous event, and ~5% resent transactions (same id, same content) among
/// the last 3,000; a fifth of the events go to the first `hot` customers.
struct Stream {
    rng: TestRng,
    run: String,
    customers: usize,
    hot: usize,
    start: i64,
    step: i64,
    disorder: i64,
    count: usize,
    recent: VecDeque<TransactionEvent>,
}

impl Stream {
    fn chunk(&mut self, events: usize) -> Vec<TransactionEvent> {
        (0..events).map(|_| self.next_event()).collect()
    }

    fn next_event(&mut self) -> TransactionEvent {
        let rng = &mut self.rng;
        if !self.recent.is_empty() && rng.random_range(0..20) == 0 {
            return self.recent[rng.random_range(0..self.recent.len())].clone();
        }
        let number = self.count;
        self.count += 1;
        let base = self.start + self.step * number as i64;
        let mut customer = if self.hot > 0 && rng.random_range(0..5) == 0 {
            rng.random_range(0..self.hot)
        } else {
            rng.random_range(self.hot..self.customers)
        };
        let mut ts = base - rng.random_range(0..=self.disorder);
        match rng.random_range(0..10) {
            0 => ts -= ts.rem_euclid(HOUR_MS),
            1 => {
                if let Some(previous) = self.recent.back()
                    && previous.event_time.as_millis() + WINDOW_MS <= base
                {
                    customer = previous.customer_id.as_str()[1..].parse().unwrap();
                    ts = previous.event_time.as_millis() + WINDOW_MS;
                }
            }
            _ => {}
        }
        let created = event(
            &format!("{}-{number}", self.run),
            &format!("c{customer}"),
            &format!("v{}", rng.random_range(0..40)),
            rng.random_range(1..1_000_000),
            ts,
        );
        self.recent.push_back(created.clone());
        if self.recent.len() > 3_000 {
            self.recent.pop_front();
        }
        created
    }
}

/// A random generator and its seed (hex): `SPEED_FAULTS_SEED` if set, else fresh.
fn seeded_rng() -> (TestRng, String) {
    let mut seed = [0_u8; 32];
    match std::env::var("SPEED_FAULTS_SEED") {
        Ok(hex) => {
            for (index, byte) in seed.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16)
                    .expect("SPEED_FAULTS_SEED: 64 hex digits");
            }
        }
        Err(_) => {
            for chunk in seed.chunks_mut(8) {
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos(),
                );
                chunk.copy_from_slice(&hasher.finish().to_le_bytes());
            }
        }
    }
    let hex = seed.iter().map(|byte| format!("{byte:02x}")).collect();
    (TestRng::from_seed(RngAlgorithm::ChaCha, &seed), hex)
}

fn now_ms() -> i64 {
    fraud_domain::EventTime::now().as_millis()
}

/// Every customer's hourly increments add up to exactly the model's events: nothing
/// counted twice, nothing missed, over the whole history (no batch run drops any).
async fn assert_whole_history(test: &SpeedTest, model: &Model) {
    for customer in model.applied.keys() {
        let state = test.state(customer).await.expect("a state");
        let clock = model.clock(customer).expect("events");
        assert_eq!(
            state.total_between(None, 0, clock),
            model.total(customer, i64::MIN, clock),
            "{customer}: the whole history"
        );
    }
}

/// The metrics of the instance at `base`, `None` while it does not answer; panics if
/// the process exited on its own.
fn instance_metrics(
    process: &mut fraud_testkit::ChildProcess,
    base: &str,
) -> impl Future<Output = Option<String>> + use<> {
    let running = process.is_running();
    let output = if running {
        String::new()
    } else {
        process.output()
    };
    let url = format!("{base}/metrics");
    async move {
        assert!(running, "the speed layer exited on its own:\n{output}");
        match get_text(&url).await? {
            (200, text) => Some(text),
            _ => None,
        }
    }
}

/// The records the instance at `base` went through, once `test`'s view is complete (not
/// degraded); `None` before.
fn steady_progress<'a>(
    process: &mut fraud_testkit::ChildProcess,
    base: &str,
    test: &'a SpeedTest,
) -> impl Future<Output = Option<u64>> + use<'a> {
    let metrics = instance_metrics(process, base);
    async move {
        if test.meta().await.degraded().is_some() {
            return None;
        }
        Some(records_seen(&metrics.await?))
    }
}

/// Records the instance went through, whatever the outcome.
fn records_seen(metrics: &str) -> u64 {
    counter(metrics, "speed_records_total")
}

/// Every window update of `topic`, read to its current end. Blocking.
fn read_updates(kafka: &KafkaConfig, topic: &str) -> Vec<WindowUpdate> {
    fraud_testkit::kafka::read_all_within(kafka, topic, Duration::from_secs(120))
        .iter()
        .map(|record| serde_json::from_slice(&record.value).expect("a window update"))
        .collect()
}

/// Each customer's update with the largest source offset.
fn latest_updates(updates: &[WindowUpdate]) -> HashMap<&str, &WindowUpdate> {
    let mut latest: HashMap<&str, &WindowUpdate> = HashMap::new();
    for update in updates {
        let entry = latest.entry(update.customer_id.as_str()).or_insert(update);
        if update.source_offset > entry.source_offset {
            *entry = update;
        }
    }
    latest
}

/// Updates published more than once (a replay after a kill) say the same thing about
/// the same offset, all in `generation`, and each customer's last says what the model
/// says at its clock.
fn assert_updates_agree(updates: &[WindowUpdate], model: &Model, generation: Generation) {
    let mut by_offset: BTreeMap<(&str, i64), (i64, WindowAggregates)> = BTreeMap::new();
    for update in updates {
        assert_eq!(update.generation, generation.to_string(), "{update:?}");
        let says = (update.as_of, update.window());
        let first = *by_offset
            .entry((update.customer_id.as_str(), update.source_offset))
            .or_insert(says);
        assert_eq!(
            first, says,
            "{}: two updates at offset {} disagree",
            update.customer_id, update.source_offset
        );
    }
    let latest = latest_updates(updates);
    for customer in model.last_offsets.keys() {
        let update = latest[customer.as_str()];
        let clock = model.clock(customer).expect("events");
        let (sum, count, max, vendors) = model.window(customer, clock);
        assert_eq!(
            (
                update.as_of,
                update.sum_minor,
                update.count,
                update.max_minor,
                update.distinct_vendors
            ),
            (clock, sum, count, max, vendors),
            "{customer}: the last window update"
        );
    }
}

/// Partitions of `topic` each member of `group` owns, or `None` while it cannot tell.
/// Blocking.
fn group_assignment(kafka: &KafkaConfig, group: &str, topic: &str) -> Option<Vec<usize>> {
    let client: ClientConfig = fraud_kafka::client_config(kafka);
    let consumer: BaseConsumer = client.create().ok()?;
    let list = consumer
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .ok()?;
    let info = list.groups().first()?;
    if info.state() != "Stable" {
        return None;
    }
    info.members()
        .iter()
        .map(|member| partitions_in_assignment(member.assignment()?, topic))
        .collect()
}

/// The number of `topic`'s partitions in a consumer-protocol assignment: version (i16),
/// then an array (i32 length) of topics, each a name (i16 length) and an array of
/// partitions (i32 each), then user data.
fn partitions_in_assignment(bytes: &[u8], topic: &str) -> Option<usize> {
    fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> Option<[u8; N]> {
        let taken = bytes.get(*at..*at + N)?.try_into().ok()?;
        *at += N;
        Some(taken)
    }
    let mut at = 2;
    let topics = i32::from_be_bytes(take(bytes, &mut at)?);
    let mut count = 0;
    for _ in 0..topics.max(0) {
        let length = usize::try_from(i16::from_be_bytes(take(bytes, &mut at)?)).ok()?;
        let name = bytes.get(at..at + length)?;
        at += length;
        let partitions = usize::try_from(i32::from_be_bytes(take(bytes, &mut at)?)).ok()?;
        at += 4 * partitions;
        if name == topic.as_bytes() {
            count += partitions;
        }
    }
    Some(count)
}
