//! Shared by the speed view's tests: the Redis connection, key clean-up, record
//! builders and the naive model the writer is checked against.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use fraud_speed_view::{
    HOUR_MS, HourIncrement, Record, RecordOutcome, Tuning, WINDOW_MS, WindowAggregates, WindowEvent,
};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

pub const MINUTE_MS: i64 = 60 * 1000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The window plus 5 minutes of lateness.
pub const TUNING: Tuning = Tuning {
    retention_ms: WINDOW_MS + 5 * MINUTE_MS,
    idle_ttl_ms: 3_600_000,
    increments_ttl_ms: 172_800_000,
};

/// 2025-01-01T00:00:00Z.
pub const JAN_1_2025: i64 = 1_735_689_600_000;

/// A connection to the local Redis that `deploy/dev up --servers-only` starts.
pub async fn connect() -> ConnectionManager {
    let settings = fraud_testkit::local_settings();
    let handle = fraud_redis::RedisHandle::new(&settings.redis, Duration::from_secs(5))
        .expect("the local Redis URL is valid");
    handle
        .connection()
        .await
        .expect("Redis is up (run `deploy/dev up --servers-only`)")
}

/// One runtime for the proptest cases, which are synchronous functions.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// One connection shared by the proptest cases (they all run on [`runtime`]).
pub async fn shared_connection() -> ConnectionManager {
    static CONNECTION: tokio::sync::OnceCell<ConnectionManager> =
        tokio::sync::OnceCell::const_new();
    CONNECTION.get_or_init(connect).await.clone()
}

/// A key prefix no other test (or earlier run) uses; its keys are deleted when it is
/// dropped, also when the test panics.
pub struct TestPrefix {
    prefix: String,
}

impl TestPrefix {
    pub fn new(name: &str) -> TestPrefix {
        TestPrefix {
            prefix: format!("{}:", fraud_testkit::unique_name(name)),
        }
    }
}

impl std::ops::Deref for TestPrefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.prefix
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        use redis::Commands;
        let settings = fraud_testkit::local_settings();
        let Ok(client) = redis::Client::open(settings.redis.url.expose().as_str()) else {
            return;
        };
        let Ok(mut connection) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = match connection.scan_options(scan_prefix(&self.prefix)) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        if !keys.is_empty() {
            let _: Result<(), _> = connection.del(&keys);
        }
    }
}

/// A `SCAN` of the keys under `prefix`. The Redis the tests share may hold millions of
/// other keys (benchmarks, load tests): 10,000 a round trip keeps a scan to a few
/// hundred round trips instead of SCAN's default of 10 keys a round trip.
fn scan_prefix(prefix: &str) -> redis::ScanOptions {
    redis::ScanOptions::default()
        .with_pattern(format!("{prefix}*"))
        .with_count(10_000)
}

/// Deletes every key under `prefix`; how many there were.
pub async fn delete_prefix(connection: &mut ConnectionManager, prefix: &str) -> usize {
    let keys: Vec<String> = {
        let mut iter = connection
            .scan_options::<String>(scan_prefix(prefix))
            .await
            .expect("SCAN");
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key.expect("a key name"));
        }
        keys
    };
    if !keys.is_empty() {
        let _: () = connection.del(&keys).await.expect("DEL");
    }
    keys.len()
}

/// The start of the UTC hour holding `ts`.
pub fn hour_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(HOUR_MS)
}

/// The start of the UTC day holding `ts`.
pub fn day_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(DAY_MS)
}

pub fn vendor(n: u8) -> [u8; 8] {
    fraud_speed_view::digest(&format!("vendor-{n}"))
}

/// A record of transaction `txn` from vendor `vendor_n`.
pub fn record(offset: i64, ts: i64, amount: i64, vendor_n: u8, txn: &str) -> Record {
    Record {
        offset,
        ts,
        amount,
        vendor: vendor(vendor_n),
        transaction: fraud_speed_view::digest(txn),
    }
}

/// `record` as a held event, with `vendor_seen_before`.
pub fn as_event(record: &Record, vendor_seen_before: Option<bool>) -> WindowEvent {
    WindowEvent {
        ts: record.ts,
        amount: record.amount,
        vendor: record.vendor,
        transaction: record.transaction,
        vendor_seen_before,
    }
}

/// Counts as an `ApplyOutcome` reports them: (applied, late, duplicates, replayed).
pub fn counts(verdicts: &[RecordOutcome]) -> (u64, u64, u64, u64) {
    let count = |wanted: fn(&RecordOutcome) -> bool| {
        verdicts.iter().filter(|verdict| wanted(verdict)).count() as u64
    };
    (
        count(|v| matches!(v, RecordOutcome::Applied { .. })),
        count(|v| *v == RecordOutcome::Late),
        count(|v| *v == RecordOutcome::Duplicate),
        count(|v| {
            matches!(
                v,
                RecordOutcome::Replayed | RecordOutcome::ReplayedHeld { .. }
            )
        }),
    )
}

/// The naive model of one customer: every applied event in a `Vec`, never trimmed, no
/// buckets; the rules applied record by record.
#[derive(Debug, Clone)]
pub struct Model {
    pub retention: i64,
    pub last_offset: Option<i64>,
    /// The largest event time applied.
    pub clock: Option<i64>,
    pub applied: Vec<Record>,
    /// `vendor_seen_before` of each applied event, as the outcome said.
    pub seen: Vec<bool>,
}

impl Model {
    pub fn new(retention: i64) -> Model {
        Model {
            retention,
            last_offset: None,
            clock: None,
            applied: Vec::new(),
            seen: Vec::new(),
        }
    }

    pub fn apply(&mut self, record: &Record) -> RecordOutcome {
        if self.last_offset.is_some_and(|last| record.offset <= last) {
            // Delivered before: told again when the same event was applied and is kept.
            return self
                .kept_events()
                .find(|event| *event == as_event(record, event.vendor_seen_before))
                .and_then(|event| event.vendor_seen_before)
                .map_or(RecordOutcome::Replayed, |vendor_seen_before| {
                    RecordOutcome::ReplayedHeld { vendor_seen_before }
                });
        }
        self.last_offset = Some(record.offset);
        if self
            .clock
            .is_some_and(|clock| record.ts <= clock - self.retention)
        {
            return RecordOutcome::Late;
        }
        if self
            .kept()
            .any(|event| event.transaction == record.transaction)
        {
            return RecordOutcome::Duplicate;
        }
        // The documented definition: an event applied before this one, inside the
        // retention of the clock before it, at the same vendor, of another transaction.
        let vendor_seen_before = self
            .kept()
            .any(|event| event.vendor == record.vendor && event.transaction != record.transaction);
        self.applied.push(*record);
        self.seen.push(vendor_seen_before);
        self.clock = Some(self.clock.map_or(record.ts, |clock| clock.max(record.ts)));
        RecordOutcome::Applied { vendor_seen_before }
    }

    /// Every applied event as the state holds it.
    pub fn applied_events(&self) -> impl Iterator<Item = WindowEvent> + '_ {
        self.applied
            .iter()
            .zip(&self.seen)
            .map(|(record, seen)| as_event(record, Some(*seen)))
    }

    /// The applied events with `ts > clock - retention`, as the state holds them.
    pub fn kept_events(&self) -> impl Iterator<Item = WindowEvent> + '_ {
        let horizon = self.clock.map_or(i64::MIN, |clock| clock - self.retention);
        self.applied_events()
            .filter(move |event| event.ts > horizon)
    }

    /// The applied events with `ts > clock - retention`.
    pub fn kept(&self) -> impl Iterator<Item = &Record> {
        let horizon = self.clock.map_or(i64::MIN, |clock| clock - self.retention);
        self.applied.iter().filter(move |event| event.ts > horizon)
    }

    /// `W(t)` over every applied event.
    pub fn window_at(&self, t: i64) -> WindowAggregates {
        let inside: Vec<&Record> = self
            .applied
            .iter()
            .filter(|event| t - WINDOW_MS < event.ts && event.ts <= t)
            .collect();
        let mut vendors: Vec<[u8; 8]> = inside.iter().map(|event| event.vendor).collect();
        vendors.sort();
        vendors.dedup();
        WindowAggregates {
            sum: inside.iter().map(|event| event.amount).sum(),
            count: inside.len() as i64,
            max: inside.iter().map(|event| event.amount).max().unwrap_or(0),
            distinct_vendors: vendors.len() as i64,
        }
    }

    /// Sum and count of the applied events with `ts > after` and `from <= ts <= until`.
    pub fn total(&self, after: Option<i64>, from: i64, until: i64) -> (i64, i64) {
        self.applied
            .iter()
            .filter(|event| after.is_none_or(|after| event.ts > after))
            .filter(|event| from <= event.ts && event.ts <= until)
            .fold((0, 0), |(sum, count), event| {
                (sum + event.amount, count + 1)
            })
    }

    /// The hourly increments of the hours from `watermark` on.
    pub fn hours(&self, watermark: Option<i64>) -> Vec<HourIncrement> {
        let mut hours: BTreeMap<i64, HourIncrement> = BTreeMap::new();
        for event in &self.applied {
            let hour = hour_of(event.ts);
            let bucket = hours.entry(hour).or_insert(HourIncrement {
                hour,
                sum: 0,
                count: 0,
                edge_sum: 0,
                edge_count: 0,
            });
            bucket.sum += event.amount;
            bucket.count += 1;
            if event.ts == hour {
                bucket.edge_sum += event.amount;
                bucket.edge_count += 1;
            }
        }
        hours
            .into_values()
            .filter(|bucket| watermark.is_none_or(|watermark| bucket.hour >= watermark))
            .collect()
    }
}

/// SplitMix64: the batch splits and query points of a case, from one seed.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next_u64() % (high - low + 1) as u64) as i64
    }
}
