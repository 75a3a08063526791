//! The platform's figures computed independently, over a plain list of events: the
//! 30-minute window, a range's sum and count, per-UTC-day totals. Tests compare what the
//! platform answers with these.

use std::collections::{BTreeMap, BTreeSet};

/// The width of the sliding window, in ms.
pub const WINDOW_MS: i64 = 30 * 60 * 1000;
/// One hour and one day, in ms.
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// One accepted transaction, counted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub customer: String,
    pub vendor: String,
    /// Minor units.
    pub amount: i64,
    /// Event time, UTC ms.
    pub ts: i64,
}

/// A row of the lake as a test compares it:
/// `(transactionId, customerId, vendorId, amount minor, event time ms)`.
pub type LakeRow = (String, String, String, i64, i64);

impl Event {
    /// The row the lake should hold for this event.
    pub fn lake_row(&self) -> LakeRow {
        (
            self.id.clone(),
            self.customer.clone(),
            self.vendor.clone(),
            self.amount,
            self.ts,
        )
    }
}

/// Sum, count, max and distinct vendors of some events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sum: i64,
    pub count: i64,
    pub max: i64,
    pub vendors: i64,
}

fn totals<'a>(events: impl Iterator<Item = &'a Event>) -> Totals {
    let mut totals = Totals::default();
    let mut vendors = BTreeSet::new();
    for event in events {
        totals.sum += event.amount;
        totals.count += 1;
        totals.max = totals.max.max(event.amount);
        vendors.insert(event.vendor.as_str());
    }
    totals.vendors = vendors.len() as i64;
    totals
}

/// W(customer, at): the events with `at − 30 min < ts ≤ at`.
pub fn window(events: &[Event], customer: &str, at: i64) -> Totals {
    range(events, customer, at - WINDOW_MS + 1, at)
}

/// The events of `customer` with `from ≤ ts ≤ to`.
pub fn range(events: &[Event], customer: &str, from: i64, to: i64) -> Totals {
    totals(
        events
            .iter()
            .filter(|event| event.customer == customer && (from..=to).contains(&event.ts)),
    )
}

/// Per UTC day (its start, ms) with events of `customer` at or before `until`: the
/// day's totals.
pub fn daily(events: &[Event], customer: &str, until: i64) -> BTreeMap<i64, Totals> {
    let mut days: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    for event in events
        .iter()
        .filter(|event| event.customer == customer && event.ts <= until)
    {
        days.entry(day_of(event.ts)).or_default().push(event);
    }
    days.into_iter()
        .map(|(day, events)| (day, totals(events.into_iter())))
        .collect()
}

/// Per (customer, UTC day start) of the events with `ts ≤ until`: sum and count.
pub fn daily_all(events: &[Event], until: i64) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut days: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for event in events.iter().filter(|event| event.ts <= until) {
        let entry = days
            .entry((event.customer.clone(), day_of(event.ts)))
            .or_default();
        entry.0 += event.amount;
        entry.1 += 1;
    }
    days
}

/// The start of the UTC day of `ts`.
pub fn day_of(ts: i64) -> i64 {
    ts.div_euclid(DAY_MS) * DAY_MS
}

/// The start of the UTC hour of `ts`.
pub fn hour_of(ts: i64) -> i64 {
    ts.div_euclid(HOUR_MS) * HOUR_MS
}

/// Minor units as the API writes money: `"1234.50"`.
pub fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.abs() / 100, minor.abs() % 100)
}

/// An RFC 3339 instant of the API (`2026-11-25T09:00:44.886Z`) as UTC ms.
pub fn millis(text: &str) -> i64 {
    fraud_domain::EventTime::parse_rfc3339(text)
        .unwrap_or_else(|error| panic!("not an instant ({error}): {text}"))
        .as_millis()
}

/// UTC ms as the API writes an instant.
pub fn instant(ms: i64) -> String {
    fraud_domain::EventTime::from_millis(ms)
        .expect("a valid instant")
        .to_rfc3339()
}

/// The UTC date (`2026-11-25`) of a day start.
pub fn date(day: i64) -> String {
    instant(day)[..10].to_owned()
}

/// Checks a `/risk` answer against `events` at its own `asOf`: the window, today and
/// the last 24 hours (sum and count; the window also max and distinct vendors).
pub fn check_risk(answer: &serde_json::Value, events: &[Event], customer: &str) {
    let as_of = millis(answer["asOf"].as_str().expect("asOf"));
    let window = window(events, customer, as_of);
    let context = format!("risk of {customer} at {}: {answer}", instant(as_of));
    assert_eq!(answer["window30m"]["sum"], money(window.sum), "{context}");
    assert_eq!(answer["window30m"]["count"], window.count, "{context}");
    if window.count > 0 {
        assert_eq!(answer["window30m"]["max"], money(window.max), "{context}");
        assert_eq!(
            answer["window30m"]["distinctVendors"], window.vendors,
            "{context}"
        );
    }
    let today_from = day_of(as_of);
    let last24h_from = hour_of(as_of) - 23 * HOUR_MS;
    for (field, from) in [("today", today_from), ("last24h", last24h_from)] {
        let expected = range(events, customer, from, as_of);
        assert_eq!(answer[field]["from"], instant(from), "{field}: {context}");
        assert_eq!(
            answer[field]["sum"],
            money(expected.sum),
            "{field}: {context}"
        );
        assert_eq!(answer[field]["count"], expected.count, "{field}: {context}");
    }
}

/// Checks a `/daily` answer against `events` at its own `asOf`: the days with events,
/// each day's sum and count, and max and distinct vendors where given.
pub fn check_daily(answer: &serde_json::Value, events: &[Event], customer: &str) {
    let as_of = millis(answer["asOf"].as_str().expect("asOf"));
    let expected = daily(events, customer, as_of);
    let context = format!("daily of {customer} at {}: {answer}", instant(as_of));
    let days = answer["days"].as_array().expect("days");
    let dates: Vec<&str> = days.iter().filter_map(|day| day["date"].as_str()).collect();
    let expected_dates: Vec<String> = expected.keys().map(|&day| date(day)).collect();
    assert_eq!(dates, expected_dates, "{context}");
    for (day, (&start, totals)) in days.iter().zip(&expected) {
        assert_eq!(day["sum"], money(totals.sum), "{} {context}", date(start));
        assert_eq!(day["count"], totals.count, "{} {context}", date(start));
        if !day["max"].is_null() {
            assert_eq!(day["max"], money(totals.max), "{} {context}", date(start));
        }
        if !day["distinctVendors"].is_null() {
            assert_eq!(
                day["distinctVendors"],
                totals.vendors,
                "{} {context}",
                date(start)
            );
        }
        if day["source"] == "batch" {
            assert!(
                !day["max"].is_null() && !day["distinctVendors"].is_null(),
                "a batch day is exact: {context}"
            );
        }
    }
}

/// Reads `batch_daily` of the database behind `pool`: per (customer, day start) the
/// sum and count.
pub async fn batch_daily(pool: &sqlx::PgPool) -> BTreeMap<(String, i64), (i64, i64)> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT customer_id, (extract(epoch FROM day::timestamp AT TIME ZONE 'UTC') * 1000)::bigint, \
                sum_minor, count FROM batch_daily",
    )
    .fetch_all(pool)
    .await
    .expect("read batch_daily");
    rows.into_iter()
        .map(|(customer, day, sum, count)| ((customer, day), (sum, count)))
        .collect()
}
