//! The read path against the real servers: `GET /v1/customers/{id}/risk` and `/daily`
//! merged from the real speed layer (Redis) and the real batch layer (Postgres, over a
//! lake written with the fraud-lake crate for exactly the produced records), checked
//! against an exact recomputation over the produced events; degraded answers; the auth
//! matrix and bad input; every answer validated against the served OpenAPI schemas.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use common::{ADMIN_KEY, ALL_KEY, INGEST_KEY, READ_KEY, ServingTest};
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_lake::{ChunkBuilder, Lake, LakeRoot};
use fraud_speed_view::meta::meta_key;
use fraud_speed_view::{CustomerState, SpeedMeta, customer_key};
use fraud_testkit::{poll_for, unique_name, wait_until};
use serde_json::{Value, json};
use serving_api::rules::{self, Observation, RuleSet};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const WINDOW: i64 = 30 * MINUTE;
const APPLY_DEADLINE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn hour_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR)
}

fn day_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(DAY)
}

fn date_of(ms: i64) -> NaiveDate {
    DateTime::from_timestamp_millis(day_floor(ms))
        .unwrap()
        .date_naive()
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(value: &Value) -> i64 {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

fn money(minor: i64) -> String {
    Money::from_minor(minor).to_string()
}

/// T_b for a test starting at `now`: the current hour when the batch layer accepts it
/// (it refuses a watermark less than `ingest.produce_timeout + 10 s` old; two minutes
/// keep a margin), else the previous hour.
fn watermark_for(now: i64) -> i64 {
    let hour = hour_floor(now);
    if now - hour >= 2 * MINUTE {
        hour
    } else {
        hour - HOUR
    }
}

/// A reproducible source of test data (SplitMix64), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("RISK_TEST_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(7) as u64);
        eprintln!("{test}: RISK_TEST_SEED={seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, low: i64, high: i64) -> i64 {
        assert!(low < high, "empty range {low}..{high}");
        low + (self.next() % (high - low) as u64) as i64
    }
}

/// One produced record.
#[derive(Debug, Clone)]
struct Produced {
    event: TransactionEvent,
    partition: i32,
    offset: i64,
}

/// A test's servers plus everything it produced, its lake and what the last batch run
/// saw.
struct Scenario {
    test: ServingTest,
    lake_root: PathBuf,
    run: String,
    next_id: u64,
    produced: Vec<Produced>,
    /// The last offset written to the lake per partition.
    lake_through: BTreeMap<i32, i64>,
    /// Transactions in the lake at the last batch run.
    in_batch: HashSet<String>,
    /// T_b of the last batch run.
    watermark: Option<i64>,
    /// The id of the last batch run.
    run_id: Option<i64>,
    redis: fraud_redis::RedisHandle,
}

impl Scenario {
    async fn create(name: &str) -> Scenario {
        let test = ServingTest::create_with(name, |settings| {
            // The speed layer learns T_b soon after a run, and trims what the batch has.
            settings.speed.watermark_refresh_ms = 300;
        })
        .await;
        let lake_root = std::env::temp_dir().join(format!("{}-lake", unique_name(name)));
        let redis = fraud_redis::RedisHandle::new(&test.settings.redis, Duration::from_secs(5))
            .expect("a redis handle");
        Scenario {
            test,
            lake_root,
            run: unique_name("tx"),
            next_id: 0,
            produced: Vec::new(),
            lake_through: BTreeMap::new(),
            in_batch: HashSet::new(),
            watermark: None,
            run_id: None,
            redis,
        }
    }

    /// A new transaction of `customer` at `ts`, ingested now.
    fn event(&mut self, customer: &str, vendor: &str, amount: i64, ts: i64) -> TransactionEvent {
        self.next_id += 1;
        TransactionEvent {
            transaction_id: TransactionId::parse(&format!("{}-{}", self.run, self.next_id))
                .unwrap(),
            customer_id: CustomerId::parse(customer).unwrap(),
            vendor_id: VendorId::parse(vendor).unwrap(),
            amount: Money::from_minor(amount),
            currency: Currency::EUR,
            event_time: EventTime::from_millis(ts).unwrap(),
            ingest_time: EventTime::from_millis(now_ms()).unwrap(),
        }
    }

    async fn produce(&mut self, events: Vec<TransactionEvent>) {
        let landed = self.test.produce(&events).await;
        for (event, (partition, offset)) in events.into_iter().zip(landed) {
            self.produced.push(Produced {
                event,
                partition,
                offset,
            });
        }
    }

    /// Waits until the speed layer has applied (or skipped) every produced record and
    /// its meta key says every partition is ready.
    async fn wait_applied(&self) {
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for p in &self.produced {
            let entry = last
                .entry(p.event.customer_id.as_str().to_owned())
                .or_insert(p.offset);
            *entry = (*entry).max(p.offset);
        }
        let prefix = self.test.settings.redis.key_prefix.clone();
        wait_until(
            APPLY_DEADLINE,
            "the speed layer to apply every record",
            || {
                let last = last.clone();
                let prefix = prefix.clone();
                async move {
                    let Ok(mut redis) = self.redis.connection().await else {
                        return false;
                    };
                    let Ok(meta) = SpeedMeta::read(&mut redis, &meta_key(&prefix)).await else {
                        return false;
                    };
                    if meta.degraded().is_some() {
                        return false;
                    }
                    for (customer, offset) in &last {
                        let bytes: Option<Vec<u8>> =
                            redis::AsyncCommands::get(&mut redis, customer_key(&prefix, customer))
                                .await
                                .unwrap_or(None);
                        let applied = bytes
                            .and_then(|bytes| CustomerState::decode(&bytes).ok())
                            .is_some_and(|state| {
                                Some(state.generation) == meta.generation
                                    && state.last_offset >= *offset
                            });
                        if !applied {
                            return false;
                        }
                    }
                    true
                }
            },
        )
        .await;
    }

    /// Writes the records not in the lake yet as one chunk per partition, as the lake
    /// writer would.
    async fn write_lake(&mut self) {
        let lake = Lake::open(&LakeRoot::Local(self.lake_root.clone())).expect("open the lake");
        let mut by_partition: BTreeMap<i32, Vec<&Produced>> = BTreeMap::new();
        for p in &self.produced {
            if self
                .lake_through
                .get(&p.partition)
                .is_none_or(|last| p.offset > *last)
            {
                by_partition.entry(p.partition).or_default().push(p);
            }
        }
        for (partition, mut records) in by_partition {
            records.sort_by_key(|p| p.offset);
            let mut chunk = ChunkBuilder::new(partition);
            for p in &records {
                chunk.push(p.offset, &p.event).expect("offsets in order");
            }
            let chunk = chunk.finish().expect("a chunk").expect("not empty");
            lake.write_chunk(&chunk, 1000)
                .await
                .expect("write the chunk");
            self.lake_through
                .insert(partition, records.last().expect("a record").offset);
        }
    }

    /// Writes the lake and runs the real batch layer with `as_of` = `watermark`.
    async fn run_batch(&mut self, watermark: i64) {
        self.write_lake().await;
        let mut settings = self.test.settings.clone();
        settings.lake.root = self.lake_root.display().to_string();
        let report = batch_layer::run(
            &settings,
            batch_layer::RunOptions {
                as_of: Some(watermark),
                full: false,
            },
        )
        .await
        .unwrap_or_else(|error| panic!("the batch run failed: {error:#}"));
        assert_eq!(report.watermark, watermark);
        self.watermark = Some(watermark);
        self.run_id = Some(report.run_id);
        self.in_batch = self
            .produced
            .iter()
            .map(|p| p.event.transaction_id.as_str().to_owned())
            .collect();
    }

    /// The produced events, once per transaction id (the first record stands).
    fn deduplicated(&self) -> Vec<&TransactionEvent> {
        let mut order: Vec<&Produced> = self.produced.iter().collect();
        order.sort_by_key(|p| (p.partition, p.offset));
        let mut seen = HashSet::new();
        order
            .into_iter()
            .filter(|p| seen.insert(p.event.transaction_id.as_str()))
            .map(|p| &p.event)
            .collect()
    }

    /// The events of `customer` the merge must count: up to T_b those the batch run
    /// read from the lake, after it those the speed layer applied (all of them: the
    /// test produces nothing it would skip after T_b).
    fn visible(&self, customer: &str) -> Vec<(i64, i64, String)> {
        self.deduplicated()
            .into_iter()
            .filter(|e| e.customer_id.as_str() == customer)
            .filter(|e| {
                let ts = e.event_time.as_millis();
                self.watermark.is_none_or(|tb| ts > tb)
                    || self.in_batch.contains(e.transaction_id.as_str())
            })
            .map(|e| {
                (
                    e.event_time.as_millis(),
                    e.amount.minor(),
                    e.vendor_id.as_str().to_owned(),
                )
            })
            .collect()
    }

    async fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.lake_root);
        self.test.remove().await;
    }
}

/// Sum and count of `events` with `from <= ts <= until`.
fn totals(events: &[(i64, i64, String)], from: i64, until: i64) -> (i64, i64) {
    events
        .iter()
        .filter(|(ts, _, _)| from <= *ts && *ts <= until)
        .fold((0, 0), |(sum, count), (_, amount, _)| {
            (sum + amount, count + 1)
        })
}

fn range_json(events: &[(i64, i64, String)], from: i64, until: i64) -> Value {
    let (sum, count) = totals(events, from, until);
    json!({ "from": rfc3339(from), "sum": money(sum), "count": count })
}

/// `W(c, t)` of `events`, as `/risk` gives it.
fn window_json(
    events: &[(i64, i64, String)],
    t: i64,
) -> (Value, fraud_speed_view::WindowAggregates) {
    let inside: Vec<_> = events
        .iter()
        .filter(|(ts, _, _)| t - WINDOW < *ts && *ts <= t)
        .collect();
    let sum: i64 = inside.iter().map(|(_, amount, _)| amount).sum();
    let count = inside.len() as i64;
    let max = inside
        .iter()
        .map(|(_, amount, _)| *amount)
        .max()
        .unwrap_or(0);
    let vendors = inside
        .iter()
        .map(|(_, _, v)| v)
        .collect::<HashSet<_>>()
        .len() as i64;
    // Half away from zero (amounts are positive).
    let avg = (count > 0).then(|| money((2 * sum + count) / (2 * count)));
    (
        json!({
            "sum": money(sum), "count": count, "avg": avg, "max": money(max),
            "distinctVendors": vendors,
        }),
        fraud_speed_view::WindowAggregates {
            sum,
            count,
            max,
            distinct_vendors: vendors,
        },
    )
}

/// A day's peak window by brute force: the largest `W(c, t).sum` over the times t of
/// the day's events; among equal sums the largest count, then the earliest t.
fn peak(events: &[(i64, i64, String)], day: i64) -> (i64, i64, i64) {
    let mut best: Option<(i64, i64, i64)> = None;
    for (t, _, _) in events
        .iter()
        .filter(|(ts, _, _)| day <= *ts && *ts < day + DAY)
    {
        let (sum, count) = totals(events, t - WINDOW + 1, *t);
        let better = match best {
            None => true,
            Some((s, c, end)) => (sum, count) > (s, c) || ((sum, count) == (s, c) && *t < end),
        };
        if better {
            best = Some((sum, count, *t));
        }
    }
    best.expect("a day with events")
}

/// A request's status, content type and JSON body.
async fn request(base: &str, path: &str, key: Option<&str>) -> (u16, String, Value) {
    let mut request = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("the serving API answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (
        status,
        content_type,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// The served document's schemas, to validate real answers with.
struct Schemas {
    components: Value,
}

impl Schemas {
    async fn fetch(base: &str) -> Schemas {
        let (status, _, document) = request(base, "/openapi.json", None).await;
        assert_eq!(status, 200);
        assert_eq!(document["openapi"], "3.1.0");
        for path in [
            "/v1/customers/{customerId}/risk",
            "/v1/customers/{customerId}/daily",
        ] {
            assert!(
                document["paths"][path]["get"].is_object(),
                "{path} is documented"
            );
        }
        // Every schema of this part is served, and a valid JSON Schema (2020-12, OpenAPI
        // 3.1's dialect).
        let fragment: Value =
            serde_json::from_str(include_str!("../openapi/risk.json")).expect("JSON");
        for name in fragment["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
        {
            let served = &document["components"]["schemas"][name];
            assert!(served.is_object(), "{name} is served");
            let mut schema = served.clone();
            schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
            assert!(
                jsonschema::meta::validate(&schema).is_ok(),
                "components/schemas/{name} is not a valid JSON Schema"
            );
        }
        Schemas {
            components: document["components"].clone(),
        }
    }

    /// Asserts `value` is valid against `#/components/schemas/{name}`.
    fn check(&self, name: &str, value: &Value) {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{name}"),
            "components": self.components,
        });
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}\nin {value:#}");
    }
}

/// Reads `/risk` of `customer` with the read key: 200, valid, and the body.
async fn risk(base: &str, schemas: &Schemas, customer: &str) -> Value {
    let (status, content_type, body) = request(
        base,
        &format!("/v1/customers/{customer}/risk"),
        Some(READ_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    schemas.check("CustomerRisk", &body);
    body
}

/// Reads `/risk` of `customer` until it answers with the scenario's last batch run: an
/// instance learns of a run from its notification, an instant after the run committed,
/// and answers with the previous run, whole, until then.
async fn risk_after_run(
    base: &str,
    schemas: &Schemas,
    scenario: &Scenario,
    customer: &str,
) -> Value {
    let run = json!(scenario.run_id.expect("a batch run"));
    poll_for(
        Duration::from_secs(10),
        "an answer with the last batch run",
        || async {
            let answer = risk(base, schemas, customer).await;
            (answer["freshness"]["batchRunId"] == run).then_some(answer)
        },
    )
    .await
}

/// Asserts `/risk`'s merged figures equal the recomputation over `scenario`'s events
/// at the answer's own `asOf`.
fn assert_exact(scenario: &Scenario, customer: &str, answer: &Value, moment: &str) {
    let as_of = parse_time(&answer["asOf"]);
    let events = scenario.visible(customer);
    let today_from = day_floor(as_of);
    let last24h_from = hour_floor(as_of) - 23 * HOUR;
    assert_eq!(
        answer["today"],
        range_json(&events, today_from, as_of),
        "today, {moment}"
    );
    assert_eq!(
        answer["last24h"],
        range_json(&events, last24h_from, as_of),
        "last24h, {moment}"
    );
    let (window, _) = window_json(&events, as_of);
    assert_eq!(answer["window30m"], window, "window30m, {moment}");
    assert_eq!(
        answer["freshness"]["batchWatermark"],
        json!(scenario.watermark.map(rfc3339)),
        "{moment}"
    );
    assert_eq!(
        answer["freshness"]["batchRunId"],
        json!(scenario.run_id),
        "{moment}"
    );
}

/// Reads `/daily` of `customer` over the days `first..=last` (day starts) and asserts
/// each day is exact: the days with events and only them, sums and counts of the
/// events the merge must count, the source by T_b, and for closed days max, distinct
/// vendors and the peak by brute force; for the others, max and distinct vendors only
/// when exact, and the vendors never when both views hold events of the day. Returns
/// the sources seen.
async fn check_daily(
    scenario: &Scenario,
    base: &str,
    schemas: &Schemas,
    customer: &str,
    first: i64,
    last: i64,
) -> HashSet<&'static str> {
    let (from, to) = (date_of(first), date_of(last));
    let tb = scenario.watermark.expect("a batch run");
    let (status, _, answer) = request(
        base,
        &format!("/v1/customers/{customer}/daily?from={from}&to={to}"),
        Some(READ_KEY),
    )
    .await;
    assert_eq!(status, 200, "{answer:#}");
    schemas.check("CustomerDaily", &answer);
    assert_eq!(answer["from"], from.to_string());
    assert_eq!(answer["to"], to.to_string());
    assert_eq!(answer["freshness"]["batchWatermark"], rfc3339(tb));
    let as_of = parse_time(&answer["asOf"]);
    let visible = scenario.visible(customer);

    let mut expected_dates = Vec::new();
    let mut day = first;
    while day <= last {
        let until = (day + DAY - 1).min(as_of);
        if day <= as_of && totals(&visible, day, until).1 > 0 {
            expected_dates.push(date_of(day).to_string());
        }
        day += DAY;
    }
    let days = answer["days"].as_array().expect("days");
    let dates: Vec<String> = days
        .iter()
        .map(|d| d["date"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dates, expected_dates, "the days with events, in order");
    let mut seen_sources = HashSet::new();
    for entry in days {
        let date = NaiveDate::parse_from_str(entry["date"].as_str().unwrap(), "%Y-%m-%d").unwrap();
        let day = date
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        let until = (day + DAY - 1).min(as_of);
        let of_day: Vec<_> = visible
            .iter()
            .filter(|e| day <= e.0 && e.0 <= until)
            .cloned()
            .collect();
        let (sum, count) = totals(&of_day, day, until);
        assert_eq!(entry["sum"], money(sum), "{date}");
        assert_eq!(entry["count"], count, "{date}");
        let exact_max = money(of_day.iter().map(|e| e.1).max().unwrap());
        let exact_vendors = of_day.iter().map(|e| &e.2).collect::<HashSet<_>>().len();
        let source = if day + DAY <= tb {
            "batch"
        } else if day <= tb {
            "both"
        } else {
            "speed"
        };
        assert_eq!(entry["source"], source, "{date}");
        seen_sources.insert(source);
        if source == "batch" {
            assert_eq!(entry["max"], exact_max, "{date}");
            assert_eq!(entry["distinctVendors"], exact_vendors, "{date}");
            let (peak_sum, peak_count, peak_end) = peak(&visible, day);
            assert_eq!(
                entry["peak30m"],
                json!({ "sum": money(peak_sum), "count": peak_count, "end": rfc3339(peak_end) }),
                "{date}"
            );
        } else {
            assert_eq!(entry["peak30m"], Value::Null, "{date}: not closed");
            // Given only when exact.
            if !entry["max"].is_null() {
                assert_eq!(entry["max"], exact_max, "{date}");
            }
            if !entry["distinctVendors"].is_null() {
                assert_eq!(entry["distinctVendors"], exact_vendors, "{date}");
            }
            let batch_part = totals(&visible, day, tb).1;
            let speed_part = totals(&visible, tb + 1, until).1;
            if batch_part > 0 && speed_part > 0 {
                assert_eq!(
                    entry["distinctVendors"],
                    Value::Null,
                    "{date}: cannot unite"
                );
            }
        }
    }
    seen_sources
}

#[tokio::test]
async fn merged_figures_are_exact_at_the_seam_also_for_late_events() {
    let mut scenario = Scenario::create("risk-seam").await;
    let speed = scenario.test.start_speed().await;
    let serving = scenario.test.start_serving().await;
    let schemas = Schemas::fetch(&serving.base).await;
    let mut rng = Rng::new("risk-seam");
    let customer = "seam-customer";

    let start = now_ms();
    let tb = watermark_for(start);
    let today = day_floor(start);
    if tb < today {
        // The test runs in the first two minutes of a UTC day: no watermark the batch
        // accepts lies inside today. today is then the speed layer's alone; last24h
        // still spans the seam, and every figure must still be exact.
        eprintln!("T_b {} is before today: today is all speed", rfc3339(tb));
    }
    let last24h_from = hour_floor(start) - 23 * HOUR;
    // Every boundary the definitions have, and random events over the last 25 hours.
    let mut times = vec![
        last24h_from - 1,
        last24h_from,
        last24h_from + 1,
        today - 1,
        today,
        today + 1,
        tb - 2 * HOUR,
        tb - HOUR,
        tb - HOUR + 1,
        tb - 1,
        tb,
        tb,
        tb + 1,
        tb + 1_000,
        start - 31 * MINUTE,
        start - WINDOW + 1_000,
        start - 10 * MINUTE,
        start - MINUTE,
        start - 1_000,
    ];
    for _ in 0..25 {
        times.push(rng.range(last24h_from - 2 * HOUR, start));
    }
    times.retain(|ts| *ts <= start);
    times.sort_unstable();
    let mut events: Vec<TransactionEvent> = times
        .iter()
        .map(|ts| {
            let vendor = format!("vendor-{}", rng.range(0, 6));
            let amount = rng.range(1, 20_000);
            scenario.event(customer, &vendor, amount, *ts)
        })
        .collect();
    // In the future (ingest allows some skew): no range up to now may count it.
    let future = scenario.event(customer, "vendor-9", 4_242, start + 3 * MINUTE);
    events.push(future);
    // Replays of the same transactions: counted once by both layers.
    let at_tb = events
        .iter()
        .find(|e| e.event_time.as_millis() == tb)
        .expect("an event at T_b")
        .clone();
    let oldest = events[1].clone();
    let recent = events
        .iter()
        .rev()
        .find(|e| e.event_time.as_millis() <= start - MINUTE)
        .expect("a recent event")
        .clone();
    for original in [at_tb, oldest, recent] {
        events.push(TransactionEvent {
            ingest_time: EventTime::from_millis(now_ms()).unwrap(),
            ..original
        });
    }
    scenario.produce(events).await;
    scenario.wait_applied().await;

    // The real batch layer with T_b inside today and the last 24 hours.
    scenario.run_batch(tb).await;
    let answer = risk_after_run(&serving.base, &schemas, &scenario, customer).await;
    assert_exact(&scenario, customer, &answer, "after the first run");
    assert_eq!(answer["known"], true);
    assert_eq!(answer["freshness"]["degraded"], false, "{answer:#}");
    // The lag, once the speed layer has reported its progress (about every second).
    let prefix = scenario.test.settings.redis.key_prefix.clone();
    wait_until(
        Duration::from_secs(15),
        "the speed layer's progress",
        || async {
            let mut redis = scenario.redis.connection().await.unwrap();
            let meta = SpeedMeta::read(&mut redis, &meta_key(&prefix))
                .await
                .unwrap();
            !meta.progress.is_empty()
        },
    )
    .await;
    let later = risk(&serving.base, &schemas, customer).await;
    let lag = later["freshness"]["speedLagMs"].as_i64().expect("a lag");
    assert!((0..60_000).contains(&lag), "{lag}");
    // Sanity of the recomputation itself: the seam is inside last24h, and both sides
    // hold events.
    let visible = scenario.visible(customer);
    let as_of = parse_time(&answer["asOf"]);
    assert!(totals(&visible, last24h_from, tb).1 > 3);
    assert!(totals(&visible, tb + 1, as_of).1 >= 2);

    // The baseline and the rules' verdict on the window and the baseline.
    let baseline = &answer["baseline"];
    assert_eq!(baseline["asOf"], rfc3339(tb));
    let (_, window) = window_json(&visible, as_of);
    let p95 = Money::parse(baseline["p95Peak30m"].as_str().unwrap())
        .unwrap()
        .minor();
    let batch_days: Vec<i64> = (0..30)
        .map(|back| day_floor(tb) - back * DAY)
        .filter(|day| totals(&visible, *day, (*day + DAY - 1).min(tb)).1 > 0)
        .collect();
    assert_eq!(baseline["activeDays"], batch_days.len());
    let peaks: Vec<i64> = batch_days
        .iter()
        .map(|day| {
            let upto: Vec<_> = visible.iter().filter(|e| e.0 <= tb).cloned().collect();
            peak(&upto, *day).0
        })
        .collect();
    assert_eq!(baseline["maxPeak30m"], money(*peaks.iter().max().unwrap()));
    let spend: i64 = batch_days
        .iter()
        .map(|day| totals(&visible, *day, (*day + DAY - 1).min(tb)).0)
        .sum();
    assert_eq!(baseline["meanDaily"], money((2 * spend + 30) / 60));
    let defaults = RuleSet {
        version: 0,
        rules: scenario.test.settings.serving.rules.clone(),
    };
    let assessment = rules::assess(
        &defaults,
        &Observation {
            window,
            baseline_peak_minor: Some(p95),
            event: None,
        },
    );
    assert_eq!(answer["score"], json!(assessment.score));
    assert_eq!(answer["level"], json!(assessment.level));
    assert_eq!(answer["reasons"], json!(assessment.reasons));

    // A late event (before T_b, produced after the run) and a new one after T_b: the
    // batch part is still the run's, so the late one is not counted yet; the new one
    // is, by the speed layer.
    let late_ts = (tb - 5 * MINUTE).min(now_ms() - 40 * MINUTE);
    let late = scenario.event(customer, "vendor-late", 777, late_ts);
    let late_id = late.transaction_id.as_str().to_owned();
    let fresh = scenario.event(customer, "vendor-new", 1_234, now_ms() - 1_000);
    scenario.produce(vec![late, fresh]).await;
    scenario.wait_applied().await;
    let answer = risk(&serving.base, &schemas, customer).await;
    assert!(!scenario.in_batch.contains(&late_id));
    assert_exact(
        &scenario,
        customer,
        &answer,
        "with a late event before the next run",
    );
    let days = (day_floor(tb) - 2 * DAY, day_floor(now_ms()));
    check_daily(&scenario, &serving.base, &schemas, customer, days.0, days.1).await;

    // A second run with the same T_b reads the late event from the lake: counted once.
    scenario.run_batch(tb).await;
    assert!(scenario.in_batch.contains(&late_id));
    let answer = risk_after_run(&serving.base, &schemas, &scenario, customer).await;
    assert_exact(&scenario, customer, &answer, "after the second run");
    check_daily(&scenario, &serving.base, &schemas, customer, days.0, days.1).await;
    let in_last24h = hour_floor(parse_time(&answer["asOf"])) - 23 * HOUR <= late_ts;
    assert!(in_last24h, "the late event lies in last24h");

    speed.trigger();
    serving.shutdown.trigger();
    scenario.remove().await;
}

#[tokio::test]
async fn a_run_publishing_meanwhile_is_seen_whole_or_not_at_all() {
    let mut scenario = Scenario::create("risk-publishing").await;
    let speed = scenario.test.start_speed().await;
    let serving = scenario.test.start_serving().await;
    let mut rng = Rng::new("risk-publishing");
    let customer = "published-customer";
    let start = now_ms();
    let top = watermark_for(start);
    let watermarks = [top - 2 * HOUR, top - HOUR, top];
    // Events on both sides of every watermark, some exactly on them.
    let mut times: Vec<i64> = watermarks
        .iter()
        .flat_map(|tb| [tb - 1, *tb, tb + 1])
        .collect();
    for _ in 0..30 {
        times.push(rng.range(top - 4 * HOUR, start));
    }
    times.retain(|ts| *ts <= start);
    times.sort_unstable();
    let events: Vec<TransactionEvent> = times
        .iter()
        .map(|ts| {
            let amount = rng.range(1, 10_000);
            scenario.event(customer, "vendor", amount, *ts)
        })
        .collect();
    scenario.produce(events).await;
    scenario.wait_applied().await;
    // Every event is in the lake and applied by the speed layer: whatever T_b an answer
    // uses, merged figures are the same; an answer mixing two runs would not be.
    let all: Vec<(i64, i64, String)> = scenario
        .deduplicated()
        .iter()
        .map(|e| (e.event_time.as_millis(), e.amount.minor(), String::new()))
        .collect();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        let base = serving.base.clone();
        let path = format!("/v1/customers/{customer}/risk");
        let last = json!(rfc3339(top));
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut stopping_since = None;
            loop {
                // After the last run committed, until an answer uses it: the instance
                // learns of a run an instant after its publication.
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let since = stopping_since.get_or_insert_with(Instant::now);
                    assert!(
                        since.elapsed() < Duration::from_secs(10),
                        "no answer used the last run 10 s after its publication"
                    );
                }
                let (status, _, body) = request(&base, &path, Some(READ_KEY)).await;
                assert_eq!(status, 200, "{body:#}");
                let done = stopping_since.is_some() && body["freshness"]["batchWatermark"] == last;
                answers.push(body);
                if done {
                    return answers;
                }
            }
        })
    };
    for tb in watermarks {
        scenario.run_batch(tb).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = reader.await.expect("the reader");
    let mut watermarks_seen = HashSet::new();
    for answer in &answers {
        let as_of = parse_time(&answer["asOf"]);
        let today_from = day_floor(as_of);
        let last24h_from = hour_floor(as_of) - 23 * HOUR;
        let used = answer["freshness"]["batchWatermark"].clone();
        assert_eq!(
            answer["today"],
            range_json(&all, today_from, as_of),
            "T_b {used}"
        );
        assert_eq!(
            answer["last24h"],
            range_json(&all, last24h_from, as_of),
            "T_b {used}"
        );
        watermarks_seen.insert(used.to_string());
    }
    eprintln!(
        "{} answers while publishing, with watermarks {watermarks_seen:?}",
        answers.len()
    );

    speed.trigger();
    serving.shutdown.trigger();
    scenario.remove().await;
}

#[tokio::test]
async fn daily_merges_closed_days_from_the_batch_and_today_from_both() {
    let mut scenario = Scenario::create("risk-daily").await;
    let speed = scenario.test.start_speed().await;
    let serving = scenario.test.start_serving().await;
    let schemas = Schemas::fetch(&serving.base).await;
    let mut rng = Rng::new("risk-daily");
    let customer = "daily-customer";

    let start = now_ms();
    let tb = watermark_for(start);
    let today = day_floor(start);
    // Three days back (the first has nothing), a peak window across a midnight, and
    // today on both sides of T_b.
    let mut times = vec![
        today - 2 * DAY + 5 * HOUR,
        today - DAY - 10 * MINUTE,
        today - DAY - 1,
        today - DAY,
        today - DAY + 10 * MINUTE,
        today - DAY + 12 * HOUR,
        today - 1,
        today,
        tb,
        tb + 1,
        start - 5 * MINUTE,
        start - 1_000,
    ];
    for _ in 0..20 {
        times.push(rng.range(today - 2 * DAY, start));
    }
    times.retain(|ts| *ts <= start);
    times.sort_unstable();
    let events: Vec<TransactionEvent> = times
        .iter()
        .map(|ts| {
            let vendor = format!("vendor-{}", rng.range(0, 4));
            let amount = rng.range(1, 50_000);
            scenario.event(customer, &vendor, amount, *ts)
        })
        .collect();
    let replay = TransactionEvent {
        ingest_time: EventTime::from_millis(now_ms()).unwrap(),
        ..events[events.len() - 1].clone()
    };
    let mut events = events;
    events.push(replay);
    scenario.produce(events).await;
    scenario.wait_applied().await;
    scenario.run_batch(tb).await;

    let seen_sources = check_daily(
        &scenario,
        &serving.base,
        &schemas,
        customer,
        today - 3 * DAY,
        today + DAY,
    )
    .await;
    assert!(seen_sources.contains("batch"), "closed days are listed");
    assert!(
        seen_sources.contains("both") || seen_sources.contains("speed"),
        "today is listed"
    );

    speed.trigger();
    serving.shutdown.trigger();
    scenario.remove().await;
}

#[tokio::test]
async fn missing_views_degrade_the_answer_never_fail_it() {
    let mut scenario = Scenario::create("risk-degraded").await;
    let speed = scenario.test.start_speed().await;
    let serving = scenario.test.start_serving().await;
    let schemas = Schemas::fetch(&serving.base).await;
    let customer = "degraded-customer";
    let start = now_ms();
    let events = vec![
        scenario.event(customer, "v1", 1_000, start - 5 * MINUTE),
        scenario.event(customer, "v2", 2_000, start - 2 * MINUTE),
        scenario.event(customer, "v1", 3_001, start - MINUTE),
    ];
    scenario.produce(events).await;
    scenario.wait_applied().await;
    let window = json!({
        "sum": "60.01", "count": 3, "avg": "20.00", "max": "30.01", "distinctVendors": 2
    });
    let reasons = |answer: &Value| -> String {
        answer["freshness"]["degradedReasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(" | ")
    };

    // No batch run yet: the speed layer's figures, degraded, no baseline.
    let answer = risk(&serving.base, &schemas, customer).await;
    assert_eq!(answer["known"], true);
    assert_eq!(answer["window30m"], window);
    let today_from = day_floor(parse_time(&answer["asOf"]));
    let in_today = [5, 2, 1]
        .iter()
        .filter(|minutes| start - **minutes * MINUTE >= today_from)
        .count();
    assert_eq!(answer["today"]["count"], in_today);
    assert_eq!(answer["last24h"]["count"], 3);
    assert_eq!(answer["baseline"], Value::Null);
    assert_eq!(answer["freshness"]["batchWatermark"], Value::Null);
    assert_eq!(answer["freshness"]["degraded"], true);
    assert!(
        reasons(&answer).contains("no batch run"),
        "{}",
        reasons(&answer)
    );

    // A customer neither view knows: 200, known false, zeros.
    let unknown = risk(&serving.base, &schemas, "never-seen-customer").await;
    assert_eq!(unknown["known"], false);
    assert_eq!(unknown["customerId"], "never-seen-customer");
    assert_eq!(
        unknown["window30m"],
        json!({ "sum": "0.00", "count": 0, "avg": null, "max": "0.00", "distinctVendors": 0 })
    );
    assert_eq!(unknown["today"]["sum"], "0.00");
    assert_eq!(unknown["today"]["count"], 0);
    assert_eq!(unknown["last24h"]["count"], 0);
    assert_eq!(unknown["baseline"], Value::Null);
    assert_eq!(unknown["level"], "low");
    assert_eq!(unknown["reasons"], json!([]));

    // The speed layer rebuilding a partition (it is stopped, so nothing resets it).
    speed.trigger();
    speed.wait().await.expect("the speed layer stops");
    let mut redis = scenario.redis.connection().await.unwrap();
    let meta = meta_key(&scenario.test.settings.redis.key_prefix);
    let _: () = redis::AsyncCommands::hset(&mut redis, &meta, "p:0", "rebuilding:1000000")
        .await
        .unwrap();
    scenario
        .test
        .publish_watermark(hour_floor(start) - 2 * HOUR)
        .await;
    // The serving API moves to the new run on its notification, within milliseconds.
    let published = json!(rfc3339(hour_floor(start) - 2 * HOUR));
    let answer =
        fraud_testkit::poll_for(Duration::from_secs(5), "an answer of the new run", || {
            let (base, schemas, published) = (&serving.base, &schemas, &published);
            async move {
                let answer = risk(base, schemas, customer).await;
                (answer["freshness"]["batchWatermark"] == *published).then_some(answer)
            }
        })
        .await;
    assert_eq!(answer["freshness"]["degraded"], true);
    assert!(
        reasons(&answer).contains("rebuilding"),
        "{}",
        reasons(&answer)
    );
    assert!(
        !reasons(&answer).contains("no batch run"),
        "{}",
        reasons(&answer)
    );
    assert_eq!(
        answer["freshness"]["batchWatermark"],
        rfc3339(hour_floor(start) - 2 * HOUR)
    );
    // What is there is still given.
    assert_eq!(answer["window30m"], window);
    let (status, _, daily) = request(
        &serving.base,
        &format!(
            "/v1/customers/{customer}/daily?from={}&to={}",
            date_of(start - DAY),
            date_of(start)
        ),
        Some(READ_KEY),
    )
    .await;
    assert_eq!(status, 200);
    schemas.check("CustomerDaily", &daily);
    assert_eq!(daily["freshness"]["degraded"], true);

    // Redis unreachable: an answer within the probe timeout, from Postgres alone.
    let mut no_redis = scenario.test.settings.clone();
    no_redis.redis.url = fraud_config::Secret::new("redis://127.0.0.1:1".to_owned());
    no_redis.service.probe_timeout_ms = 500;
    let without_redis = scenario.test.start_serving_with(&no_redis).await;
    let asked = Instant::now();
    let answer = risk(&without_redis.base, &schemas, customer).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(answer["freshness"]["degraded"], true);
    assert!(
        reasons(&answer).contains("could not be read from Redis"),
        "{}",
        reasons(&answer)
    );
    assert_eq!(answer["window30m"]["count"], 0);
    assert_eq!(answer["freshness"]["speedLagMs"], Value::Null);

    // Postgres unreachable: an answer within the probe timeout, from Redis alone.
    let mut no_postgres = scenario.test.settings.clone();
    no_postgres.postgres.url =
        fraud_config::Secret::new("postgres://fraud:fraud@127.0.0.1:1/fraud".to_owned());
    no_postgres.service.probe_timeout_ms = 500;
    let without_postgres = scenario.test.start_serving_with(&no_postgres).await;
    let asked = Instant::now();
    let answer = risk(&without_postgres.base, &schemas, customer).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(answer["freshness"]["degraded"], true);
    assert!(
        reasons(&answer).contains("could not be read from Postgres"),
        "{}",
        reasons(&answer)
    );
    assert_eq!(answer["window30m"], window);
    assert_eq!(answer["last24h"]["count"], 3);
    assert_eq!(answer["freshness"]["batchWatermark"], Value::Null);

    // State of another generation than the meta key's is not this view: absent.
    let _: () = redis::AsyncCommands::hset(&mut redis, &meta, "generation", "00000000000000aa")
        .await
        .unwrap();
    let answer = risk(&serving.base, &schemas, customer).await;
    assert_eq!(answer["window30m"]["count"], 0, "{answer:#}");
    assert_eq!(answer["last24h"]["count"], 0, "{answer:#}");

    without_redis.shutdown.trigger();
    without_postgres.shutdown.trigger();
    serving.shutdown.trigger();
    scenario.remove().await;
}

#[tokio::test]
async fn the_auth_matrix_and_bad_input() {
    let test = ServingTest::create("risk-auth").await;
    let serving = test.start_serving().await;
    let schemas = Schemas::fetch(&serving.base).await;
    let daily = "/v1/customers/someone/daily?from=2026-01-01&to=2026-01-31";
    for path in ["/v1/customers/someone/risk", daily] {
        for (key, expected) in [
            (None, 401),
            (Some("not-a-key"), 401),
            (Some(INGEST_KEY), 403),
            (Some(ADMIN_KEY), 403),
            (Some(READ_KEY), 200),
            (Some(ALL_KEY), 200),
        ] {
            let (status, content_type, body) = request(&serving.base, path, key).await;
            assert_eq!(status, expected, "{path} with {key:?}: {body:#}");
            if expected == 200 {
                let schema = if path == daily {
                    "CustomerDaily"
                } else {
                    "CustomerRisk"
                };
                schemas.check(schema, &body);
            } else {
                assert_eq!(content_type, "application/problem+json", "{path} {key:?}");
                schemas.check("Problem", &body);
                assert_eq!(body["status"], expected);
            }
        }
    }
    // Authentication comes before validation.
    let (status, _, _) = request(&serving.base, "/v1/customers/%01/risk", None).await;
    assert_eq!(status, 401);

    let long = "x".repeat(65);
    let bad_ids = ["%01", "%20%20", "a%0Ab", long.as_str()];
    for id in bad_ids {
        for path in [
            format!("/v1/customers/{id}/risk"),
            format!("/v1/customers/{id}/daily?from=2026-01-01&to=2026-01-02"),
        ] {
            let (status, content_type, body) = request(&serving.base, &path, Some(READ_KEY)).await;
            assert_eq!(status, 400, "{path}: {body:#}");
            assert_eq!(content_type, "application/problem+json");
            schemas.check("Problem", &body);
            assert_eq!(body["errors"][0]["pointer"], "/path/customerId", "{path}");
        }
    }
    // An id is normalised as ingest normalises it.
    let answer = risk(&serving.base, &schemas, "%20padded%20").await;
    assert_eq!(answer["customerId"], "padded");
    let answer = risk(&serving.base, &schemas, "Cafe%CC%81").await;
    assert_eq!(answer["customerId"], "Caf\u{e9}", "NFC");
    // A slash, percent-encoded, is part of the id, not of the path.
    let answer = risk(&serving.base, &schemas, "a%2Fb").await;
    assert_eq!(answer["customerId"], "a/b");

    for (query, pointer) in [
        ("", "/query/from"),
        ("?from=2026-01-01", "/query/to"),
        ("?to=2026-01-01", "/query/from"),
        ("?from=2026-1-01&to=2026-01-02", "/query/from"),
        ("?from=2026-02-30&to=2026-03-02", "/query/from"),
        ("?from=2026-01-01&to=yesterday", "/query/to"),
        ("?from=2026-01-02&to=2026-01-01", "/query/to"),
        ("?from=2025-01-01&to=2026-01-02", "/query/to"),
    ] {
        let path = format!("/v1/customers/someone/daily{query}");
        let (status, content_type, body) = request(&serving.base, &path, Some(READ_KEY)).await;
        assert_eq!(status, 400, "{path}: {body:#}");
        assert_eq!(content_type, "application/problem+json");
        schemas.check("Problem", &body);
        assert_eq!(body["errors"][0]["pointer"], pointer, "{path}: {body:#}");
    }
    // 366 days is the most.
    let (status, _, body) = request(
        &serving.base,
        "/v1/customers/someone/daily?from=2024-01-01&to=2024-12-31",
        Some(READ_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");

    serving.shutdown.trigger();
    test.remove().await;
}

/// Asserts `answer`'s merged figures equal the recomputation over `events` (what the
/// merge must count with the answer's run) at the answer's own `asOf`, and that its
/// baseline is of the same run as its watermark.
fn assert_exact_for(events: &[(i64, i64, String)], answer: &Value, moment: &str) {
    let as_of = parse_time(&answer["asOf"]);
    let today_from = day_floor(as_of);
    let last24h_from = hour_floor(as_of) - 23 * HOUR;
    assert_eq!(
        answer["today"],
        range_json(events, today_from, as_of),
        "today, {moment}: {answer:#}"
    );
    assert_eq!(
        answer["last24h"],
        range_json(events, last24h_from, as_of),
        "last24h, {moment}: {answer:#}"
    );
    assert_eq!(
        answer["window30m"],
        window_json(events, as_of).0,
        "window30m, {moment}"
    );
    assert_eq!(
        answer["baseline"]["asOf"], answer["freshness"]["batchWatermark"],
        "the baseline is of the answer's run, {moment}"
    );
}

/// The cache of batch rows follows the published run: after a new run (another T_b, and
/// figures that differ by events only it read from the lake), answers move to it
/// promptly, each answer is exactly one run's, and none goes back to the old run.
#[tokio::test]
async fn a_new_run_replaces_the_cached_one_promptly_and_never_mixes() {
    let mut scenario = Scenario::create("risk-cache-run").await;
    let speed = scenario.test.start_speed().await;
    let serving = scenario.test.start_serving().await;
    let schemas = Schemas::fetch(&serving.base).await;
    let mut rng = Rng::new("risk-cache-run");
    let customer = "cached-run-customer";
    let start = now_ms();
    let tb2 = watermark_for(start);
    let tb1 = tb2 - HOUR;
    let mut times = vec![tb1 - 1, tb1, tb1 + 1, tb2 - 1, tb2, tb2 + 1, start - 1_000];
    for _ in 0..25 {
        times.push(rng.range(hour_floor(start) - 25 * HOUR, start));
    }
    times.retain(|ts| *ts <= start);
    times.sort_unstable();
    let events: Vec<TransactionEvent> = times
        .iter()
        .map(|ts| {
            let vendor = format!("vendor-{}", rng.range(0, 5));
            let amount = rng.range(1, 30_000);
            scenario.event(customer, &vendor, amount, *ts)
        })
        .collect();
    scenario.produce(events).await;
    scenario.wait_applied().await;

    scenario.run_batch(tb1).await;
    let visible1 = scenario.visible(customer);
    for read in 0..3 {
        let answer = risk(&serving.base, &schemas, customer).await;
        assert_eq!(answer["freshness"]["batchWatermark"], rfc3339(tb1));
        assert_exact_for(&visible1, &answer, &format!("run 1, read {read}"));
    }
    // Events before T_b1 that the speed layer skips as late (more than the window and
    // the allowed lateness before the customer's latest): only the next run counts them,
    // so its figures differ from run 1's beyond the seam's move.
    let late: Vec<TransactionEvent> = [tb1 - 10 * MINUTE, tb1 - 3 * HOUR]
        .into_iter()
        .map(|ts| scenario.event(customer, "vendor-late", 50_000, ts))
        .collect();
    scenario.produce(late).await;
    scenario.wait_applied().await;
    let answer = risk(&serving.base, &schemas, customer).await;
    assert_exact_for(&visible1, &answer, "run 1, late events produced");

    let mut listener = sqlx::postgres::PgListener::connect_with(&scenario.test.pool)
        .await
        .expect("a listener");
    listener
        .listen(serving_api::risk::cache::CHANNEL)
        .await
        .expect("listen");
    scenario.run_batch(tb2).await;
    let published = Instant::now();
    let visible2 = scenario.visible(customer);
    assert_ne!(
        totals(&visible1, hour_floor(start) - 23 * HOUR, start),
        totals(&visible2, hour_floor(start) - 23 * HOUR, start),
        "the two runs' figures differ"
    );
    // The batch layer notifies in the publishing transaction, with the run id.
    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification of the run")
        .expect("the listener");
    let run_id: i64 =
        sqlx::query_scalar("SELECT max(run_id) FROM batch_runs WHERE status = 'succeeded'")
            .fetch_one(&scenario.test.pool)
            .await
            .unwrap();
    assert_eq!(notification.payload(), run_id.to_string());
    // Its connection is the pool's: closing the pool at the end waits for it.
    drop(listener);

    let mut moved_after = None;
    let mut reads = 0;
    let mut after_move = 0;
    while after_move < 20 {
        let answer = risk(&serving.base, &schemas, customer).await;
        reads += 1;
        let used = answer["freshness"]["batchWatermark"].clone();
        if used == json!(rfc3339(tb2)) {
            moved_after.get_or_insert(published.elapsed());
            assert_exact_for(&visible2, &answer, &format!("run 2, read {reads}"));
            after_move += 1;
        } else {
            assert_eq!(used, json!(rfc3339(tb1)), "{answer:#}");
            assert!(
                moved_after.is_none(),
                "back to run 1 after run 2: {answer:#}"
            );
            assert_exact_for(
                &visible1,
                &answer,
                &format!("run 1 after run 2, read {reads}"),
            );
            assert!(
                published.elapsed() < Duration::from_secs(3),
                "run 1 still answered {:?} after run 2 was published",
                published.elapsed()
            );
        }
    }
    eprintln!(
        "answers moved to run 2 {:?} after its publication ({reads} reads)",
        moved_after.unwrap()
    );

    speed.trigger();
    serving.shutdown.trigger();
    scenario.remove().await;
}

/// Once a customer's batch rows are cached, answers read Postgres no more (rows changed
/// behind the run's back are not seen), and stay exact as new events reach the speed
/// layer, duplicates included.
#[tokio::test]
async fn a_cached_customer_stays_exact_as_speed_events_arrive() {
    let mut scenario = Scenario::create("risk-cache-speed").await;
    let speed = scenario.test.start_speed().await;
    let serving = scenario.test.start_serving().await;
    let schemas = Schemas::fetch(&serving.base).await;
    let mut rng = Rng::new("risk-cache-speed");
    let customer = "cached-speed-customer";
    let start = now_ms();
    let tb = watermark_for(start);
    let mut times = vec![tb - 1, tb, tb + 1, start - 5 * MINUTE];
    for _ in 0..20 {
        times.push(rng.range(hour_floor(start) - 24 * HOUR, start));
    }
    times.retain(|ts| *ts <= start);
    times.sort_unstable();
    let events: Vec<TransactionEvent> = times
        .iter()
        .map(|ts| {
            let vendor = format!("vendor-{}", rng.range(0, 5));
            let amount = rng.range(1, 30_000);
            scenario.event(customer, &vendor, amount, *ts)
        })
        .collect();
    scenario.produce(events).await;
    scenario.wait_applied().await;
    scenario.run_batch(tb).await;
    let answer = risk_after_run(&serving.base, &schemas, &scenario, customer).await;
    assert_exact(&scenario, customer, &answer, "first read");
    // The instance fills its cache after it learns of the run (or keeps a read's rows
    // once it has): from then on its answers read no Postgres.
    wait_until(
        Duration::from_secs(10),
        "the customer's rows cached",
        || async { serving.batch_cache.holds(customer, scenario.run_id) },
    )
    .await;

    // The run's rows changed without a run: an answer from Postgres would show it.
    let changed = sqlx::query(
        "UPDATE batch_hourly SET sum_minor = sum_minor + 100000000 \
         WHERE customer_id = $1 AND hour >= to_timestamp($2 / 1000.0)",
    )
    .bind(customer)
    .bind((tb - 23 * HOUR) as f64)
    .execute(&scenario.test.pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(
        changed > 0,
        "the batch has hours of the last 24 h before T_b"
    );

    for step in 0..6 {
        // After T_b (an event before it would be the next run's), in the last 20 min.
        let now = now_ms();
        let ts = rng.range((tb + 1).max(now - 20 * MINUTE), now + 1);
        let mut fresh = vec![scenario.event(
            customer,
            &format!("vendor-{}", rng.range(0, 8)),
            rng.range(1, 30_000),
            ts,
        )];
        if step % 2 == 1 {
            // A replay of the same transaction: counted once.
            let again = TransactionEvent {
                ingest_time: EventTime::from_millis(now_ms()).unwrap(),
                ..fresh[0].clone()
            };
            fresh.push(again);
        }
        scenario.produce(fresh).await;
        scenario.wait_applied().await;
        let answer = risk(&serving.base, &schemas, customer).await;
        assert_exact(
            &scenario,
            customer,
            &answer,
            &format!("after new events, step {step}"),
        );
        assert_eq!(answer["freshness"]["degraded"], false, "{answer:#}");
    }

    speed.trigger();
    serving.shutdown.trigger();
    scenario.remove().await;
}
