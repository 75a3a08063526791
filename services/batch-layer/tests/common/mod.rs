//! The harness of the batch layer's integration tests: a Postgres database, Kafka topic,
//! lake directory and lake-writer group of the test's own; events produced as ingest
//! produces them and written to the lake by the real lake writer; the tables read back;
//! and two independent computations of what they must hold (a brute-force model in
//! Rust, and DuckDB over the lake files).
#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use fraud_config::{Secret, Settings};
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_lake::{Lake, LakeRoot};
use fraud_service::Shutdown;
use fraud_testkit::{unique_name, wait_until};
use rdkafka::producer::FutureProducer;
use sqlx::{Connection, PgConnection};

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;
/// The peak window: `(t - 30 min, t]`.
pub const WINDOW: i64 = 30 * MINUTE;
/// The run lock's key (private in `store.rs`: "fraudba").
pub const RUN_LOCK: i64 = 0x0066_7261_7564_6261;

const LAKE_DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Time.

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub fn hour_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR)
}

pub fn day_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(DAY)
}

pub fn date_of(ms: i64) -> NaiveDate {
    DateTime::from_timestamp_millis(day_floor(ms))
        .expect("a representable time")
        .date_naive()
}

pub fn day_start(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_millis()
}

/// RFC 3339 with seconds, as `--as-of` takes it.
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .expect("a representable time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

// ---------------------------------------------------------------------------------------
// Random data, reproducible by seed.

/// SplitMix64: small, fast and good enough for test data.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `BATCH_TEST_SEED` when set, else from the clock; the seed
    /// is printed so a failure can be replayed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("BATCH_TEST_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(7) as u64);
        eprintln!("{test}: BATCH_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        assert!(low < high, "empty range {low}..{high}");
        low + (self.next_u64() % (high - low) as u64) as i64
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as i64) as usize]
    }
}

// ---------------------------------------------------------------------------------------
// Events.

/// A transaction event as ingest produces it.
pub fn event(
    transaction: &str,
    customer: &str,
    vendor: &str,
    amount_minor: i64,
    ts: i64,
    ingest: i64,
) -> TransactionEvent {
    TransactionEvent {
        transaction_id: TransactionId::parse(transaction).expect("a transaction id"),
        customer_id: CustomerId::parse(customer).expect("a customer id"),
        vendor_id: VendorId::parse(vendor).expect("a vendor id"),
        amount: Money::from_minor(amount_minor),
        currency: Currency::EUR,
        event_time: EventTime::from_millis(ts).expect("an event time"),
        ingest_time: EventTime::from_millis(ingest).expect("an ingest time"),
    }
}

/// The same transaction accepted again (a client retry that ingest published twice):
/// the same content, a later ingest time.
pub fn replay(original: &TransactionEvent, ingest: i64) -> TransactionEvent {
    TransactionEvent {
        ingest_time: EventTime::from_millis(ingest).expect("an ingest time"),
        ..original.clone()
    }
}

/// An event as produced, with where it landed.
#[derive(Debug, Clone)]
pub struct Produced {
    pub event: TransactionEvent,
    pub partition: i32,
    pub offset: i64,
}

// ---------------------------------------------------------------------------------------
// The test's own database, topic and lake.

/// A Postgres database of the test's own (dropped with the test).
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    pub url: String,
}

impl Database {
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

/// A topic, lake directory, lake-writer group and database of the test's own; all of
/// them are removed when it is dropped (also when the test fails).
pub struct BatchTest {
    pub settings: Settings,
    pub lake_root: PathBuf,
    pub database: Database,
    /// The URLs of the test's databases, dropped with it.
    databases: Vec<String>,
    producer: FutureProducer,
    /// Everything produced so far, in production order.
    pub produced: Vec<Produced>,
}

impl BatchTest {
    pub async fn create(name: &str, partitions: i32) -> BatchTest {
        let mut settings = fraud_testkit::local_settings();
        let own = unique_name(name);
        settings.kafka.transactions_topic = own.clone();
        settings.lake.writer_group = format!("{own}-writer");
        let lake_root = std::env::temp_dir().join(format!("{own}-lake"));
        settings.lake.root = lake_root.display().to_string();
        settings.lake.idle_flush_ms = 100;
        settings.lake.max_rows_per_file = 700;
        settings.lake.row_group_rows = 256;
        fraud_kafka::ensure_topic(&settings.kafka, &own, partitions, 1)
            .await
            .expect("create the test topic");
        let producer = fraud_kafka::durable_producer_with(&settings.kafka, |client| {
            client.set("queue.buffering.max.messages", "1000000");
        })
        .expect("a producer");
        let mut test = BatchTest {
            settings,
            lake_root,
            database: Database {
                name: String::new(),
                url: String::new(),
            },
            databases: Vec::new(),
            producer,
            produced: Vec::new(),
        };
        test.database = test.new_database(name).await;
        test.settings.postgres.url = Secret::new(test.database.url.clone());
        test
    }

    pub fn topic(&self) -> &str {
        &self.settings.kafka.transactions_topic
    }

    /// Another empty database of the test's own (e.g. for a clean run to compare with).
    pub async fn new_database(&mut self, prefix: &str) -> Database {
        let url = fraud_testkit::postgres::create_database(&format!("batch_{prefix}")).await;
        self.databases.push(url.clone());
        let (_, name) = url.rsplit_once('/').expect("a URL with a database");
        Database {
            name: name.to_owned(),
            url,
        }
    }

    /// These settings, with `database` instead of the test's own.
    pub fn settings_for(&self, database: &Database) -> Settings {
        let mut settings = self.settings.clone();
        settings.postgres.url = Secret::new(database.url.clone());
        settings
    }

    /// Produces `events` in order, each keyed by customer with the record timestamp its
    /// ingest time and the schema-version header (as ingest does); remembers where each
    /// landed.
    pub async fn produce(&mut self, events: Vec<TransactionEvent>) -> Vec<Produced> {
        let landed =
            fraud_testkit::kafka::produce_transactions(&self.producer, self.topic(), &events).await;
        let produced: Vec<Produced> = events
            .into_iter()
            .zip(landed)
            .map(|(event, (partition, offset))| Produced {
                event,
                partition,
                offset,
            })
            .collect();
        self.produced.extend(produced.iter().cloned());
        produced
    }

    pub fn lake(&self) -> Lake {
        Lake::open(&LakeRoot::Local(self.lake_root.clone())).expect("open the test lake")
    }

    /// Runs the real lake writer (in this process) until the lake holds every offset
    /// produced so far in complete chunks, then stops it cleanly.
    pub async fn fill_lake(&self) {
        let last = self.last_offsets();
        let shutdown = Shutdown::new(Duration::from_secs(20));
        ingest::lake_writer::LakeWriter::new(&self.settings)
            .expect("the lake writer's configuration is valid")
            .spawn(&shutdown);
        let lake = self.lake();
        wait_until(
            LAKE_DEADLINE,
            "the lake to hold every produced offset",
            || lake_holds(&lake, &last),
        )
        .await;
        shutdown.trigger();
        shutdown
            .wait()
            .await
            .expect("the lake writer stops cleanly");
    }

    /// The last produced offset of each partition.
    pub fn last_offsets(&self) -> BTreeMap<i32, i64> {
        let mut last = BTreeMap::new();
        for produced in &self.produced {
            let entry = last.entry(produced.partition).or_insert(produced.offset);
            *entry = (*entry).max(produced.offset);
        }
        last
    }

    /// Runs the job in this process against the test's database.
    pub async fn run(&self, as_of: i64, full: bool) -> batch_layer::RunReport {
        self.run_on(&self.settings, as_of, full).await
    }

    pub async fn run_on(
        &self,
        settings: &Settings,
        as_of: i64,
        full: bool,
    ) -> batch_layer::RunReport {
        batch_layer::run(
            settings,
            batch_layer::RunOptions {
                as_of: Some(as_of),
                full,
            },
        )
        .await
        .unwrap_or_else(|error| panic!("the batch run failed: {error:#}"))
    }

    /// A configuration file for the binary with `settings`' database, topic and lake.
    pub fn config_file(&self, settings: &Settings) -> PathBuf {
        let path = std::env::temp_dir().join(format!("{}.toml", unique_name("batch-config")));
        let toml = format!(
            "[telemetry]\nlog_filter = \"info\"\n\n[kafka]\ntransactions_topic = \"{}\"\n\n\
             [postgres]\nurl = \"{}\"\n\n[lake]\nroot = \"{}\"\nwriter_group = \"{}\"\n",
            settings.kafka.transactions_topic,
            settings.postgres.url.expose(),
            settings.lake.root,
            settings.lake.writer_group,
        );
        std::fs::write(&path, toml).expect("write the config file");
        path
    }

    /// Runs the real binary with `args` after `--config FILE` to completion.
    pub async fn binary(&self, settings: &Settings, args: &[&str]) -> BinaryOutput {
        let config = self.config_file(settings);
        let output = binary_command(&config, args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run the batch-layer binary");
        let _ = std::fs::remove_file(&config);
        BinaryOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs DuckDB over the test's lake: see [`duckdb_views`].
    pub fn duckdb(&self, watermark: i64) -> Tables {
        duckdb_views(&self.lake_root, watermark)
    }
}

impl Drop for BatchTest {
    fn drop(&mut self) {
        let databases = std::mem::take(&mut self.databases);
        let kafka = self.settings.kafka.clone();
        let root = self.lake_root.clone();
        // Drop may run on a runtime's thread (or while unwinding): clean up on a thread
        // with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                for url in databases {
                    fraud_testkit::postgres::drop_database(&url).await;
                }
                let _ = fraud_kafka::delete_topic(&kafka, &kafka.transactions_topic).await;
            });
            let _ = std::fs::remove_dir_all(root);
        });
        let _ = cleanup.join();
    }
}

/// The command running the binary with `config`; none of the developer's `FRAUD_`
/// variables leak in.
pub fn binary_command(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_batch-layer"));
    command.arg("--config").arg(config).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("FRAUD_") {
            command.env_remove(name);
        }
    }
    command.env("NO_COLOR", "1");
    command
}

/// What a finished binary said.
#[derive(Debug)]
pub struct BinaryOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Whether the lake holds complete chunks through exactly `last` in every partition.
pub async fn lake_holds(lake: &Lake, last: &BTreeMap<i32, i64>) -> bool {
    let Ok(states) = lake.partition_states().await else {
        return false;
    };
    last.iter().all(|(partition, offset)| {
        states.get(partition).is_some_and(|state| {
            state.incomplete.is_none() && state.complete_through() == Some(*offset)
        })
    })
}

// ---------------------------------------------------------------------------------------
// The tables.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hourly {
    pub customer: String,
    pub hour: i64,
    pub date: NaiveDate,
    pub sum: i64,
    pub count: i64,
    pub max: i64,
    pub vendors: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Daily {
    pub customer: String,
    pub day: NaiveDate,
    pub sum: i64,
    pub count: i64,
    pub max: i64,
    pub vendors: i64,
    pub peak_sum: i64,
    pub peak_count: i64,
    pub peak_end: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vendor {
    pub customer: String,
    pub vendor: String,
    pub first_seen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Baseline {
    pub customer: String,
    pub as_of: i64,
    pub active_days: i64,
    /// `NUMERIC` as Postgres prints it.
    pub mean: String,
    pub stddev: String,
    pub p95_peak: i64,
    pub max_peak: i64,
}

/// The batch layer's views, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub hourly: Vec<Hourly>,
    pub daily: Vec<Daily>,
    pub vendors: Vec<Vendor>,
    pub baselines: Vec<Baseline>,
}

impl Tables {
    fn sort(mut self) -> Tables {
        self.hourly.sort();
        self.daily.sort();
        self.vendors.sort();
        self.baselines.sort();
        self
    }

    /// The keys of the rows that differ between `self` and `other` (changed, added or
    /// removed), as `table customer key` strings.
    pub fn changed_keys(&self, other: &Tables) -> BTreeSet<String> {
        fn changed<T: Ord + Clone>(a: &[T], b: &[T], key: impl Fn(&T) -> String) -> Vec<String> {
            let a: BTreeSet<&T> = a.iter().collect();
            let b: BTreeSet<&T> = b.iter().collect();
            a.symmetric_difference(&b).map(|row| key(row)).collect()
        }
        let mut keys = BTreeSet::new();
        keys.extend(changed(&self.hourly, &other.hourly, |r| {
            format!("hourly {} {}", r.customer, rfc3339(r.hour))
        }));
        keys.extend(changed(&self.daily, &other.daily, |r| {
            format!("daily {} {}", r.customer, r.day)
        }));
        keys.extend(changed(&self.vendors, &other.vendors, |r| {
            format!("vendors {} {}", r.customer, r.vendor)
        }));
        keys.extend(changed(&self.baselines, &other.baselines, |r| {
            format!("baselines {}", r.customer)
        }));
        keys
    }

    /// Only the rows of days `days` (hourly and daily).
    pub fn of_days(&self, days: &[NaiveDate]) -> (Vec<Hourly>, Vec<Daily>) {
        (
            self.hourly
                .iter()
                .filter(|r| days.contains(&r.date))
                .cloned()
                .collect(),
            self.daily
                .iter()
                .filter(|r| days.contains(&r.day))
                .cloned()
                .collect(),
        )
    }

    /// The days with rows.
    pub fn days(&self) -> BTreeSet<NaiveDate> {
        self.daily.iter().map(|r| r.day).collect()
    }
}

/// Every row of the batch layer's views in the database at `url` (empty tables when the
/// schema is not there yet).
pub async fn read_tables(url: &str) -> Tables {
    let mut db = PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('batch_daily') IS NOT NULL")
        .fetch_one(&mut db)
        .await
        .expect("look the schema up");
    if !exists {
        return Tables::default();
    }
    // One snapshot for all four tables.
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .expect("repeatable read");
    type HourRow = (String, DateTime<Utc>, NaiveDate, i64, i64, i64, i32);
    let hourly: Vec<HourRow> = sqlx::query_as(
        "SELECT customer_id, hour, event_date, sum_minor, count, max_minor, distinct_vendors \
         FROM batch_hourly",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("read batch_hourly");
    type DayRow = (
        String,
        NaiveDate,
        i64,
        i64,
        i64,
        i32,
        i64,
        i64,
        DateTime<Utc>,
    );
    let daily: Vec<DayRow> = sqlx::query_as(
        "SELECT customer_id, day, sum_minor, count, max_minor, distinct_vendors, \
         peak_30m_sum_minor, peak_30m_count, peak_30m_end FROM batch_daily",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("read batch_daily");
    let vendors: Vec<(String, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT customer_id, vendor_id, first_seen FROM batch_vendors")
            .fetch_all(&mut *tx)
            .await
            .expect("read batch_vendors");
    type BaselineRow = (String, DateTime<Utc>, i32, String, String, i64, i64);
    let baselines: Vec<BaselineRow> = sqlx::query_as(
        "SELECT customer_id, as_of, active_days, mean_daily_minor::text, \
         stddev_daily_minor::text, p95_peak_30m_minor, max_peak_30m_minor FROM batch_baselines",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("read batch_baselines");
    tx.commit().await.expect("commit");
    Tables {
        hourly: hourly
            .into_iter()
            .map(|(customer, hour, date, sum, count, max, vendors)| Hourly {
                customer,
                hour: millis(hour),
                date,
                sum,
                count,
                max,
                vendors: vendors.into(),
            })
            .collect(),
        daily: daily
            .into_iter()
            .map(
                |(customer, day, sum, count, max, vendors, peak_sum, peak_count, peak_end)| Daily {
                    customer,
                    day,
                    sum,
                    count,
                    max,
                    vendors: vendors.into(),
                    peak_sum,
                    peak_count,
                    peak_end: millis(peak_end),
                },
            )
            .collect(),
        vendors: vendors
            .into_iter()
            .map(|(customer, vendor, first_seen)| Vendor {
                customer,
                vendor,
                first_seen: millis(first_seen),
            })
            .collect(),
        baselines: baselines
            .into_iter()
            .map(
                |(customer, as_of, active_days, mean, stddev, p95_peak, max_peak)| Baseline {
                    customer,
                    as_of: millis(as_of),
                    active_days: active_days.into(),
                    mean,
                    stddev,
                    p95_peak,
                    max_peak,
                },
            )
            .collect(),
    }
    .sort()
}

/// One row of the run log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub run_id: i64,
    pub watermark: i64,
    pub status: String,
    pub error: Option<String>,
    pub finished: bool,
}

pub async fn read_runs(url: &str) -> Vec<RunRow> {
    let mut db = PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('batch_runs') IS NOT NULL")
        .fetch_one(&mut db)
        .await
        .expect("look the schema up");
    if !exists {
        return Vec::new();
    }
    type Row = (i64, DateTime<Utc>, String, Option<String>, bool);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT run_id, watermark, status, error, finished_at IS NOT NULL FROM batch_runs \
         ORDER BY run_id",
    )
    .fetch_all(&mut db)
    .await
    .expect("read batch_runs");
    rows.into_iter()
        .map(|(run_id, watermark, status, error, finished)| RunRow {
            run_id,
            watermark: millis(watermark),
            status,
            error,
            finished,
        })
        .collect()
}

/// Panics listing the rows that differ, table by table, when `got` is not `want`.
#[track_caller]
pub fn assert_tables_eq(what: &str, got: &Tables, want: &Tables) {
    let mut problems = Vec::new();
    problems.extend(diff("batch_hourly", &got.hourly, &want.hourly));
    problems.extend(diff("batch_daily", &got.daily, &want.daily));
    problems.extend(diff("batch_vendors", &got.vendors, &want.vendors));
    problems.extend(diff("batch_baselines", &got.baselines, &want.baselines));
    assert!(
        problems.is_empty(),
        "{what}: the tables differ from what was expected:\n{}",
        problems.join("\n")
    );
}

/// The rows only in `got` and only in `want`, at most 8 of each, or `None`.
pub fn diff<T: Ord + Debug>(table: &str, got: &[T], want: &[T]) -> Option<String> {
    let got_set: BTreeSet<&T> = got.iter().collect();
    let want_set: BTreeSet<&T> = want.iter().collect();
    let unexpected: Vec<&&T> = got_set.difference(&want_set).collect();
    let missing: Vec<&&T> = want_set.difference(&got_set).collect();
    if unexpected.is_empty() && missing.is_empty() && got.len() == want.len() {
        return None;
    }
    let mut text = format!(
        "{table}: {} row(s), expected {}; {} unexpected, {} missing",
        got.len(),
        want.len(),
        unexpected.len(),
        missing.len()
    );
    for row in unexpected.iter().take(8) {
        text.push_str(&format!("\n  got      {row:?}"));
    }
    for row in missing.iter().take(8) {
        text.push_str(&format!("\n  expected {row:?}"));
    }
    Some(text)
}

// ---------------------------------------------------------------------------------------
// The model: brute force, straight from the definitions.

struct ModelEvent<'a> {
    customer: &'a str,
    vendor: &'a str,
    amount: i64,
    ts: i64,
}

/// What the views must hold as of `watermark` for `produced`: events deduplicated by
/// transaction id (the first by partition and offset stands), cut at `ts <= watermark`;
/// hours `[h, h + 1 h)` and days `[d, d + 24 h)` UTC; the day's peak is the largest
/// sum over `(t - 30 min, t]` for t at the customer's event times of that day (a window
/// reaches into the previous day), ties to the larger count, then the earliest t;
/// baselines over the 30 UTC days ending with the watermark's day.
pub fn model(produced: &[Produced], watermark: i64) -> Tables {
    let mut order: Vec<&Produced> = produced.iter().collect();
    order.sort_by_key(|p| (p.partition, p.offset));
    let mut seen = HashSet::new();
    let mut by_customer: BTreeMap<&str, Vec<ModelEvent>> = BTreeMap::new();
    for p in order {
        if !seen.insert(p.event.transaction_id.as_str()) {
            continue;
        }
        let ts = p.event.event_time.as_millis();
        if ts > watermark {
            continue;
        }
        by_customer
            .entry(p.event.customer_id.as_str())
            .or_default()
            .push(ModelEvent {
                customer: p.event.customer_id.as_str(),
                vendor: p.event.vendor_id.as_str(),
                amount: p.event.amount.minor(),
                ts,
            });
    }
    let mut tables = Tables::default();
    for (customer, events) in &by_customer {
        let mut hours: BTreeMap<i64, Vec<&ModelEvent>> = BTreeMap::new();
        let mut days: BTreeMap<i64, Vec<&ModelEvent>> = BTreeMap::new();
        let mut vendors: BTreeMap<&str, i64> = BTreeMap::new();
        for event in events {
            assert_eq!(event.customer, *customer);
            hours.entry(hour_floor(event.ts)).or_default().push(event);
            days.entry(day_floor(event.ts)).or_default().push(event);
            let first = vendors.entry(event.vendor).or_insert(event.ts);
            *first = (*first).min(event.ts);
        }
        for (hour, inside) in hours {
            tables.hourly.push(Hourly {
                customer: customer.to_string(),
                hour,
                date: date_of(hour),
                sum: inside.iter().map(|e| e.amount).sum(),
                count: inside.len() as i64,
                max: inside.iter().map(|e| e.amount).max().unwrap(),
                vendors: inside
                    .iter()
                    .map(|e| e.vendor)
                    .collect::<HashSet<_>>()
                    .len() as i64,
            });
        }
        for (day, inside) in days {
            // (sum, count, t): the best window so far.
            let mut best: Option<(i64, i64, i64)> = None;
            for at in &inside {
                let t = at.ts;
                let window = events.iter().filter(|e| t - WINDOW < e.ts && e.ts <= t);
                let (sum, count) = window.fold((0, 0), |(s, c), e| (s + e.amount, c + 1));
                let better = match best {
                    None => true,
                    Some((best_sum, best_count, best_t)) => {
                        (sum, count) > (best_sum, best_count)
                            || ((sum, count) == (best_sum, best_count) && t < best_t)
                    }
                };
                if better {
                    best = Some((sum, count, t));
                }
            }
            let (peak_sum, peak_count, peak_end) = best.unwrap();
            tables.daily.push(Daily {
                customer: customer.to_string(),
                day: date_of(day),
                sum: inside.iter().map(|e| e.amount).sum(),
                count: inside.len() as i64,
                max: inside.iter().map(|e| e.amount).max().unwrap(),
                vendors: inside
                    .iter()
                    .map(|e| e.vendor)
                    .collect::<HashSet<_>>()
                    .len() as i64,
                peak_sum,
                peak_count,
                peak_end,
            });
        }
        for (vendor, first_seen) in vendors {
            tables.vendors.push(Vendor {
                customer: customer.to_string(),
                vendor: vendor.to_owned(),
                first_seen,
            });
        }
    }
    tables.baselines = model_baselines(&tables.daily, watermark);
    tables.sort()
}

/// Baselines as of `watermark` from the daily rows: the 30 UTC days ending with the
/// watermark's day (days without spending count as 0); mean and population standard
/// deviation of the daily sums, exactly, rounded half up to 4 decimals; the 95th
/// percentile (nearest rank, `percentile_disc`) and maximum of the active days' peaks.
pub fn model_baselines(daily: &[Daily], watermark: i64) -> Vec<Baseline> {
    let last = date_of(watermark);
    let first = last - chrono::Days::new(29);
    let mut by_customer: BTreeMap<&str, Vec<&Daily>> = BTreeMap::new();
    for row in daily {
        if row.day >= first && row.day <= last {
            by_customer.entry(&row.customer).or_default().push(row);
        }
    }
    by_customer
        .into_iter()
        .map(|(customer, rows)| {
            let s1: i128 = rows.iter().map(|r| i128::from(r.sum)).sum();
            let s2: i128 = rows.iter().map(|r| i128::from(r.sum).pow(2)).sum();
            // mean = s1 / 30; round half up at 4 decimals.
            let mean = (s1 * 10_000 + 15) / 30;
            // stddev = sqrt(s2 / 30 - (s1 / 30)^2) = sqrt(30 s2 - s1^2) / 30; at 4
            // decimals: floor((sqrt(N * 10^8) + 15) / 30), and flooring the square root
            // first changes nothing (an integer divisor).
            let n = u128::try_from(30 * s2 - s1 * s1).expect("a variance is not negative");
            let stddev = ((n * 100_000_000).isqrt() + 15) / 30;
            let mut peaks: Vec<i64> = rows.iter().map(|r| r.peak_sum).collect();
            peaks.sort_unstable();
            // percentile_disc: the first value whose cumulative share reaches 0.95
            // (Postgres computes the rank in float8 as ceil(0.95 * n)).
            let rank = ((0.95_f64 * peaks.len() as f64).ceil() as usize).max(1);
            Baseline {
                customer: customer.to_owned(),
                as_of: watermark,
                active_days: rows.len() as i64,
                mean: decimal4(mean),
                stddev: decimal4(stddev as i128),
                p95_peak: peaks[rank - 1],
                max_peak: *peaks.last().unwrap(),
            }
        })
        .collect()
}

fn decimal4(units: i128) -> String {
    format!("{}.{:04}", units / 10_000, units % 10_000)
}

// ---------------------------------------------------------------------------------------
// DuckDB: an independent reader and computation over the same lake files.

/// Hourly, daily (with the peak, through a RANGE window frame) and vendors, in SQL.
const DUCKDB_VIEWS: &str = r#"
import duckdb, json, sys
root, watermark = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f"""
    CREATE TEMP TABLE kept AS
    SELECT customer_id, vendor_id, amount_minor, ts FROM (
        SELECT customer_id, vendor_id, amount_minor, epoch_ms(event_time) AS ts,
               row_number() OVER (PARTITION BY transaction_id
                                  ORDER BY kafka_partition, kafka_offset) AS copy
        FROM read_parquet('{root}/transactions/*/*.parquet', hive_partitioning = true))
    WHERE copy = 1 AND ts <= {watermark}""")
hourly = con.execute("""
    SELECT customer_id, ts // 3600000 * 3600000 AS hour, sum(amount_minor)::BIGINT,
           count(*), max(amount_minor), count(DISTINCT vendor_id)
    FROM kept GROUP BY ALL ORDER BY ALL""").fetchall()
daily = con.execute("""
    WITH windows AS (
        SELECT customer_id, ts,
               sum(amount_minor) OVER w AS window_sum, count(*) OVER w AS window_count
        FROM kept
        WINDOW w AS (PARTITION BY customer_id ORDER BY ts
                     RANGE BETWEEN 1799999 PRECEDING AND CURRENT ROW)),
    peaks AS (
        SELECT customer_id, ts // 86400000 * 86400000 AS day, window_sum, window_count, ts
        FROM windows
        QUALIFY row_number() OVER (PARTITION BY customer_id, ts // 86400000
                                   ORDER BY window_sum DESC, window_count DESC, ts) = 1),
    days AS (
        SELECT customer_id, ts // 86400000 * 86400000 AS day, sum(amount_minor) AS s,
               count(*) AS c, max(amount_minor) AS m, count(DISTINCT vendor_id) AS v
        FROM kept GROUP BY ALL)
    SELECT d.customer_id, d.day, d.s::BIGINT, d.c, d.m, d.v,
           p.window_sum::BIGINT, p.window_count, p.ts
    FROM days d JOIN peaks p USING (customer_id, day) ORDER BY ALL""").fetchall()
vendors = con.execute("""
    SELECT customer_id, vendor_id, min(ts) FROM kept GROUP BY ALL ORDER BY ALL""").fetchall()
print(json.dumps({"hourly": hourly, "daily": daily, "vendors": vendors}))
"#;

/// DuckDB's computation of hourly, daily and vendors over the lake at `root` as of
/// `watermark` (baselines left empty).
pub fn duckdb_views(root: &Path, watermark: i64) -> Tables {
    let value = fraud_testkit::duckdb_json(
        DUCKDB_VIEWS,
        &[&root.to_string_lossy(), &watermark.to_string()],
    );
    let rows = |name: &str| -> Vec<Vec<serde_json::Value>> {
        serde_json::from_value(value[name].clone()).expect("rows")
    };
    let int = |v: &serde_json::Value| v.as_i64().expect("an integer");
    let text = |v: &serde_json::Value| v.as_str().expect("a string").to_owned();
    Tables {
        hourly: rows("hourly")
            .iter()
            .map(|r| Hourly {
                customer: text(&r[0]),
                hour: int(&r[1]),
                date: date_of(int(&r[1])),
                sum: int(&r[2]),
                count: int(&r[3]),
                max: int(&r[4]),
                vendors: int(&r[5]),
            })
            .collect(),
        daily: rows("daily")
            .iter()
            .map(|r| Daily {
                customer: text(&r[0]),
                day: date_of(int(&r[1])),
                sum: int(&r[2]),
                count: int(&r[3]),
                max: int(&r[4]),
                vendors: int(&r[5]),
                peak_sum: int(&r[6]),
                peak_count: int(&r[7]),
                peak_end: int(&r[8]),
            })
            .collect(),
        vendors: rows("vendors")
            .iter()
            .map(|r| Vendor {
                customer: text(&r[0]),
                vendor: text(&r[1]),
                first_seen: int(&r[2]),
            })
            .collect(),
        baselines: Vec::new(),
    }
    .sort()
}

/// The lake's days (dates of `event_date=` directories with data files).
pub async fn lake_days(lake: &Lake) -> BTreeSet<NaiveDate> {
    lake.list()
        .await
        .expect("list the lake")
        .iter()
        .map(|listed| listed.file.date())
        .collect()
}

/// `count` events of `customers` customers (`customer-NNN`) and 20 vendors at times in
/// `[from, to)` (half of them on whole minutes), amounts up to 1,000.00 with some up to
/// 1,000,000.00; `ingest` gives each event's ingest time from its event time.
pub fn spread_events(
    rng: &mut Rng,
    run: &str,
    count: usize,
    customers: usize,
    (from, to): (i64, i64),
    mut ingest: impl FnMut(&mut Rng, i64) -> i64,
) -> Vec<TransactionEvent> {
    (0..count)
        .map(|number| {
            let customer = format!("customer-{:03}", rng.range(0, customers as i64));
            let vendor = format!("vendor-{:02}", rng.range(0, 20));
            let ts = if rng.chance(50) {
                from + rng.range(0, (to - from) / MINUTE) * MINUTE
            } else {
                rng.range(from, to)
            };
            let amount = if rng.chance(95) {
                rng.range(1, 100_000)
            } else {
                rng.range(100_000, 100_000_001)
            };
            let ingest = ingest(rng, ts);
            event(
                &format!("{run}-{number}"),
                &customer,
                &vendor,
                amount,
                ts,
                ingest,
            )
        })
        .collect()
}

/// The rows of `batch_days`: (date, run id).
pub async fn read_batch_days(url: &str) -> BTreeMap<NaiveDate, i64> {
    let mut db = PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    let rows: Vec<(NaiveDate, i64)> = sqlx::query_as("SELECT event_date, run_id FROM batch_days")
        .fetch_all(&mut db)
        .await
        .expect("read batch_days");
    rows.into_iter().collect()
}
