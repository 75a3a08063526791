//! Exactness: the batch layer's tables hold exactly what the definitions say for the
//! events in the lake, checked row by row against a brute-force model in Rust and
//! against DuckDB computing the same views over the same Parquet files.

mod common;

use std::collections::BTreeSet;

use chrono::NaiveDate;
use common::{
    BatchTest, DAY, HOUR, MINUTE, Rng, Tables, WINDOW, assert_tables_eq, date_of, day_floor, event,
    hour_floor, lake_days, model, now_ms, replay,
};
use fraud_events::TransactionEvent;
use fraud_testkit::unique_name;

/// Builds the events of the exactness test, each with a fresh transaction id.
struct Events {
    run: String,
    next: u64,
    events: Vec<TransactionEvent>,
    /// The latest event or ingest time allowed (a little before now).
    end: i64,
}

impl Events {
    fn new(end: i64) -> Events {
        Events {
            run: unique_name("tx"),
            next: 0,
            events: Vec::new(),
            end,
        }
    }

    /// An event at `ts` ingested `delay` ms later (never after `end`); none when `ts`
    /// is after `end`.
    fn add(&mut self, customer: &str, vendor: &str, amount: i64, ts: i64, delay: i64) {
        if ts > self.end {
            return;
        }
        self.next += 1;
        let id = format!("{}-{}", self.run, self.next);
        let ingest = (ts + delay).min(self.end);
        self.events
            .push(event(&id, customer, vendor, amount, ts, ingest));
    }
}

const ODD_CUSTOMERS: [&str; 4] = [
    "cust,\"quoted\"",
    "ünïcødé Ω kunde",
    "back\\slash",
    "4929878788898212345",
];
const ODD_VENDORS: [&str; 4] = ["\\N", "a,b", "\"q\"", "café-münchen"];

/// Random events over the last ~3 days (minute-aligned and not, bursts, late arrivals,
/// large amounts, awkward ids), hand-made cases on every boundary the definitions have,
/// and replays of some of them.
fn exactness_events(rng: &mut Rng, watermark: i64, end: i64) -> Vec<TransactionEvent> {
    let first_day = day_floor(watermark) - 3 * DAY;
    let mut out = Events::new(end);
    let mut customers: Vec<String> = (0..30).map(|i| format!("customer-{i:02}")).collect();
    customers.extend(ODD_CUSTOMERS.iter().map(|c| c.to_string()));
    let mut vendors: Vec<String> = (0..12).map(|i| format!("vendor-{i:02}")).collect();
    vendors.extend(ODD_VENDORS.iter().map(|v| v.to_string()));
    let amount = |rng: &mut Rng| match rng.range(0, 100) {
        0..85 => rng.range(1, 100_000),
        85..95 => rng.range(100_000, 5_000_000),
        _ => rng.range(5_000_000, 100_000_001),
    };
    let delay = |rng: &mut Rng| {
        if rng.chance(6) {
            rng.range(HOUR, 6 * HOUR) // a late arrival
        } else {
            rng.range(0, 5_000)
        }
    };

    // Spread out, up to the end (after the watermark too).
    for _ in 0..2_400 {
        let customer = rng.pick(&customers).clone();
        let vendor = rng.pick(&vendors).clone();
        let ts = if rng.chance(70) {
            first_day + rng.range(0, (end - first_day) / MINUTE) * MINUTE
        } else {
            rng.range(first_day, end)
        };
        let (amount, delay) = (amount(rng), delay(rng));
        out.add(&customer, &vendor, amount, ts, delay);
    }
    // Bursts: several events of one customer within 40 minutes.
    for _ in 0..60 {
        let customer = rng.pick(&customers).clone();
        let start = first_day + rng.range(0, (end - first_day) / MINUTE) * MINUTE;
        for _ in 0..rng.range(3, 9) {
            let vendor = rng.pick(&vendors).clone();
            let ts = start + rng.range(0, 40) * MINUTE;
            let (amount, delay) = (amount(rng), delay(rng));
            out.add(&customer, &vendor, amount, ts, delay);
        }
    }

    // Around midnight: the early windows of a day reach into the previous day, and an
    // event at exactly midnight belongs to the day it starts.
    for day in 1..=3 {
        let midnight = first_day + day * DAY;
        out.add("night-owl", "vendor-00", 700, midnight - 20 * MINUTE, 100);
        out.add("night-owl", "vendor-01", 300, midnight - 1, 100);
        out.add("night-owl", "vendor-02", 200, midnight, 100);
        out.add("night-owl", "vendor-00", 100, midnight + 10 * MINUTE, 100);
    }
    // Exactly 30 minutes apart never share a window; 30 minutes less 1 ms apart do.
    let day1 = first_day + DAY;
    out.add("thirty", "vendor-00", 100, day1 + 2 * HOUR, 10);
    out.add("thirty", "vendor-01", 50, day1 + 2 * HOUR + WINDOW, 10);
    out.add("thirty", "vendor-01", 20, day1 + 2 * HOUR + WINDOW + 1, 10);
    let day2 = first_day + 2 * DAY;
    out.add("thirty", "vendor-02", 40, day2 + 6 * HOUR, 10);
    out.add("thirty", "vendor-03", 75, day2 + 6 * HOUR + WINDOW - 1, 10);
    // Equal sums: the larger count wins, then the earliest end.
    out.add("ties", "vendor-00", 100, day2 + 3 * HOUR, 10);
    out.add("ties", "vendor-01", 60, day2 + 4 * HOUR + 50 * MINUTE, 10);
    out.add("ties", "vendor-02", 40, day2 + 5 * HOUR, 10);
    out.add("ties", "vendor-03", 50, day2 + 7 * HOUR, 10);
    out.add("ties", "vendor-04", 50, day2 + 7 * HOUR + 10 * MINUTE, 10);
    // Events at the same millisecond all belong to each other's windows.
    let same = day1 + 12 * HOUR + 34 * MINUTE + 56_789;
    for (amount, vendor) in [(10, "vendor-00"), (20, "vendor-01"), (30, "vendor-00")] {
        out.add("peers", vendor, amount, same, 10);
    }
    out.add("peers", "vendor-02", 5, same + 1, 10);
    // Hour boundaries.
    let hour = day1 + 15 * HOUR;
    for (ts, amount) in [
        (hour - 1, 1),
        (hour, 2),
        (hour + HOUR - 1, 4),
        (hour + HOUR, 8),
    ] {
        out.add("hours", "vendor-05", amount, ts, 10);
    }
    // The watermark: at it is in, a millisecond after is out; a late arrival (ingested
    // after the watermark, but in the lake) is in.
    out.add("at-watermark", "vendor-00", 11, watermark - 1, 10);
    out.add("at-watermark", "vendor-01", 13, watermark, 10);
    out.add("at-watermark", "vendor-02", 17, watermark + 1, 10);
    out.add("at-watermark", "vendor-03", 19, watermark + WINDOW, 10);
    out.add(
        "at-watermark",
        "vendor-04",
        23,
        watermark - 10 * MINUTE,
        50 * MINUTE,
    );

    // Replays: the same transaction accepted twice, mostly moments later, some hours.
    let originals: Vec<TransactionEvent> = out.events.clone();
    let mut events = out.events;
    for original in &originals {
        if rng.chance(3) || original.customer_id.as_str() == "ties" {
            let later = if rng.chance(33) {
                rng.range(HOUR, 6 * HOUR)
            } else {
                rng.range(1_000, 120_000)
            };
            let ingest = (original.ingest_time.as_millis() + later).min(end);
            events.push(replay(original, ingest));
        }
    }
    // As ingest would have produced them: in ingest-time order.
    events.sort_by_key(|e| e.ingest_time.as_millis());
    events
}

fn daily<'a>(tables: &'a Tables, customer: &str, day: NaiveDate) -> &'a common::Daily {
    tables
        .daily
        .iter()
        .find(|r| r.customer == customer && r.day == day)
        .unwrap_or_else(|| panic!("no batch_daily row for {customer} on {day}"))
}

#[tokio::test]
async fn every_row_matches_a_brute_force_model_and_duckdb() {
    let mut rng = Rng::from_env("exactness");
    let now = now_ms();
    // The last full hour but one: there is an hour of events after it.
    let watermark = hour_floor(now) - HOUR;
    let end = now - MINUTE;
    let mut test = BatchTest::create("batch-exact", 3).await;
    let events = exactness_events(&mut rng, watermark, end);
    test.produce(events).await;
    test.fill_lake().await;

    let report = test.run(watermark, false).await;
    assert_eq!(report.watermark, watermark);
    let lake_days = lake_days(&test.lake()).await;
    let expected_days: Vec<NaiveDate> = lake_days
        .iter()
        .copied()
        .filter(|d| *d <= date_of(watermark))
        .collect();
    assert_eq!(
        report.days, expected_days,
        "a first run computes every day up to the watermark's"
    );

    let got = common::read_tables(&test.database.url).await;
    let want = model(&test.produced, watermark);
    assert!(want.hourly.len() > 1_000 && want.daily.len() > 100);

    // The hand-made cases, spelled out (the model could share a misreading).
    let first_day = day_floor(watermark) - 3 * DAY;
    let day1 = date_of(first_day + DAY);
    let day2 = date_of(first_day + 2 * DAY);
    for day in [day1, day2] {
        let row = daily(&got, "night-owl", day);
        assert_eq!(
            (
                row.sum,
                row.count,
                row.peak_sum,
                row.peak_count,
                row.peak_end
            ),
            (1300, 4, 1200, 3, common::day_start(day)),
            "night-owl on {day}: the window at midnight holds the previous day's last 30 \
             minutes"
        );
    }
    let row = daily(&got, "thirty", day1);
    assert_eq!(
        (row.peak_sum, row.peak_count, row.peak_end),
        (100, 1, first_day + DAY + 2 * HOUR),
        "an event exactly 30 minutes earlier is outside the window"
    );
    let row = daily(&got, "thirty", day2);
    assert_eq!(
        (row.peak_sum, row.peak_count),
        (115, 2),
        "an event 30 minutes less 1 ms earlier is inside the window"
    );
    let row = daily(&got, "ties", day2);
    assert_eq!(
        (
            row.sum,
            row.count,
            row.peak_sum,
            row.peak_count,
            row.peak_end
        ),
        (300, 5, 100, 2, first_day + 2 * DAY + 5 * HOUR),
        "replays count once; equal sums go to the larger count, then the earliest end"
    );
    let row = daily(&got, "peers", day1);
    assert_eq!((row.peak_sum, row.peak_count), (65, 4));
    let hours: Vec<(i64, i64, i64)> = got
        .hourly
        .iter()
        .filter(|r| r.customer == "hours")
        .map(|r| (r.hour, r.sum, r.count))
        .collect();
    let hour = first_day + DAY + 15 * HOUR;
    assert_eq!(
        hours,
        vec![(hour - HOUR, 1, 1), (hour, 6, 2), (hour + HOUR, 8, 1)]
    );
    let at_watermark = daily(&got, "at-watermark", date_of(watermark));
    let mut expected_sum = 13;
    for (ts, amount) in [(watermark - 1, 11), (watermark - 10 * MINUTE, 23)] {
        if day_floor(ts) == day_floor(watermark) {
            expected_sum += amount;
        }
    }
    assert_eq!(
        at_watermark.sum, expected_sum,
        "ts <= T_b is in, later is out"
    );
    assert!(
        got.hourly.iter().all(|r| r.hour <= watermark)
            && got.daily.iter().all(|r| r.day <= date_of(watermark))
            && got.vendors.iter().all(|r| r.first_seen <= watermark),
        "nothing after the watermark"
    );
    let kept: BTreeSet<&str> = test
        .produced
        .iter()
        .filter(|p| p.event.event_time.as_millis() <= watermark)
        .map(|p| p.event.transaction_id.as_str())
        .collect();
    assert_eq!(
        got.daily.iter().map(|r| r.count).sum::<i64>(),
        kept.len() as i64,
        "every transaction up to the watermark counts exactly once"
    );
    for odd in ODD_CUSTOMERS {
        assert!(
            got.daily.iter().any(|r| r.customer == odd),
            "{odd} is stored as it is"
        );
    }

    // Every row of every table, against the model.
    assert_tables_eq("the batch layer vs the model", &got, &want);
    // And hourly, daily (with the peaks) and vendors against DuckDB over the same files.
    let duck = test.duckdb(watermark);
    let without_baselines = Tables {
        baselines: Vec::new(),
        ..got.clone()
    };
    assert_tables_eq("the batch layer vs DuckDB", &without_baselines, &duck);
}

/// The baselines' mean and standard deviation are the exact values rounded to 4
/// decimals, also for customers spending a large, nearly constant amount every day
/// (where `E[x²] − E[x]²` cancels catastrophically), and p95 is the nearest rank.
#[tokio::test]
async fn baselines_are_exact_for_steady_large_daily_sums() {
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let last_day = day_floor(watermark);
    let mut test = BatchTest::create("batch-baselines", 2).await;
    let run = unique_name("tx");
    let mut events = Vec::new();
    let mut add = |customer: &str, amount: i64, ts: i64| {
        let id = format!("{run}-{}", events.len());
        // Late arrivals: ingested recently (Kafka keeps a week), before the watermark.
        events.push(event(
            &id,
            customer,
            "vendor",
            amount,
            ts,
            ts.max(watermark - 5 * MINUTE),
        ));
    };
    // 31 days: the first is outside the 30-day baseline. Every event at midnight.
    for back in 0..=30 {
        let day = last_day - back * DAY;
        // 300,000.00 a day, one cent more on one day: stddev sqrt(29)/30 = 0.1795.
        add("steady-large", 30_000_000 + i64::from(back == 7), day);
        // 1,000,000.00 a day, a few cents either way.
        add("steady-huge", 100_000_000 - (back % 3), day);
        // 50,000.00 a day, no variation at all.
        add("steady", 5_000_000, day);
        // Small, varying.
        add("small", 1_000 + back * 37, day);
        if back < 20 {
            // 20 active days with distinct peaks: p95 is the 19th smallest.
            add("twenty", 10_000 + back * 1_000, day);
        }
    }
    test.produce(events).await;
    test.fill_lake().await;
    test.run(watermark, false).await;

    let got = common::read_tables(&test.database.url).await;
    let want = model(&test.produced, watermark);
    let twenty = want
        .baselines
        .iter()
        .find(|b| b.customer == "twenty")
        .unwrap();
    assert_eq!((twenty.active_days, twenty.p95_peak), (20, 28_000));
    let large = want
        .baselines
        .iter()
        .find(|b| b.customer == "steady-large")
        .unwrap();
    assert_eq!(
        (large.mean.as_str(), large.stddev.as_str()),
        ("30000000.0333", "0.1795")
    );
    assert_tables_eq("baselines vs the model", &got, &want);
}
