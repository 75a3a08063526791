//! The aggregates of one UTC day, computed from its deduplicated events: pure, no I/O.
//!
//! Definitions (DESIGN section 3; the same as the speed layer's):
//! - an hour is `[h, h + 1 h)`, a day `[d, d + 24 h)`, both UTC;
//! - `W(c, t)` is every event of c with `t - 30 min < ts <= t`;
//! - the day's peak is the largest `W(c, t).sum` over the times t of the customer's
//!   events of that day (a window reaches into the previous day when t is early); among
//!   equal sums, the largest count, then the earliest t.

use std::collections::{BTreeMap, HashSet};

/// 30 minutes in ms.
pub const WINDOW_MS: i64 = 30 * 60 * 1000;
/// One hour in ms.
pub const HOUR_MS: i64 = 60 * 60 * 1000;
/// One day in ms.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// One deduplicated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub customer: String,
    pub vendor: String,
    pub amount: i64,
    pub ts: i64,
}

/// Aggregates of a customer's hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    pub customer: String,
    pub hour: i64,
    pub sum: i64,
    pub count: i64,
    pub max: i64,
    pub distinct_vendors: i64,
}

/// Aggregates of a customer's day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRow {
    pub customer: String,
    /// The day's start, UTC ms.
    pub day: i64,
    pub sum: i64,
    pub count: i64,
    pub max: i64,
    pub distinct_vendors: i64,
    pub peak_sum: i64,
    pub peak_count: i64,
    /// The t of the peak window.
    pub peak_end: i64,
}

/// A vendor a customer used that day, first at `first_seen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorRow {
    pub customer: String,
    pub vendor: String,
    pub first_seen: i64,
}

/// Everything computed for one day.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DayAggregates {
    pub hours: Vec<HourRow>,
    pub days: Vec<DayRow>,
    pub vendors: Vec<VendorRow>,
}

/// Sums that do not fit in `i64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sums of customer {0} overflow 64-bit minor units")]
pub struct Overflow(pub String);

/// Computes day `day` (its start, UTC ms) from `events` (the day's events) and `tail`
/// (the previous day's events in its last 30 minutes, for the peak windows). Both must
/// be deduplicated and cut at the watermark already.
pub fn compute_day(
    day: i64,
    mut events: Vec<Event>,
    mut tail: Vec<Event>,
) -> Result<DayAggregates, Overflow> {
    let order = |a: &Event, b: &Event| {
        (&a.customer, a.ts, a.amount, &a.vendor).cmp(&(&b.customer, b.ts, b.amount, &b.vendor))
    };
    events.sort_by(order);
    tail.sort_by(order);
    let mut tails: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in &tail {
        tails.entry(&event.customer).or_default().push(event);
    }
    let mut out = DayAggregates::default();
    for customer_events in events.chunk_by(|a, b| a.customer == b.customer) {
        let customer = &customer_events[0].customer;
        let overflow = || Overflow(customer.clone());
        // Hours.
        for hour_events in customer_events.chunk_by(|a, b| hour_of(a.ts) == hour_of(b.ts)) {
            out.hours.push(HourRow {
                customer: customer.clone(),
                hour: hour_of(hour_events[0].ts),
                sum: checked_sum(hour_events).ok_or_else(overflow)?,
                count: hour_events.len() as i64,
                max: hour_events.iter().map(|e| e.amount).max().unwrap_or(0),
                distinct_vendors: distinct_vendors(hour_events),
            });
        }
        // Vendors, first use.
        let mut seen = Vendors::default();
        for event in customer_events {
            if seen.insert(event.vendor.as_str()) {
                out.vendors.push(VendorRow {
                    customer: customer.clone(),
                    vendor: event.vendor.clone(),
                    first_seen: event.ts,
                });
            }
        }
        // The day, and its peak window.
        let before = tails.get(customer.as_str()).map_or(&[][..], Vec::as_slice);
        let (peak_sum, peak_count, peak_end) =
            peak(before, customer_events).ok_or_else(overflow)?;
        out.days.push(DayRow {
            customer: customer.clone(),
            day,
            sum: checked_sum(customer_events).ok_or_else(overflow)?,
            count: customer_events.len() as i64,
            max: customer_events.iter().map(|e| e.amount).max().unwrap_or(0),
            distinct_vendors: distinct_vendors(customer_events),
            peak_sum,
            peak_count,
            peak_end,
        });
    }
    Ok(out)
}

/// The start of the hour holding `ts`.
pub fn hour_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(HOUR_MS)
}

/// The start of the day holding `ts`.
pub fn day_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(DAY_MS)
}

fn checked_sum(events: &[Event]) -> Option<i64> {
    events
        .iter()
        .try_fold(0_i64, |sum, event| sum.checked_add(event.amount))
}

fn distinct_vendors(events: &[Event]) -> i64 {
    events
        .iter()
        .map(|event| event.vendor.as_str())
        .collect::<Vendors>()
        .len() as i64
}

/// A set of vendor ids. A set per customer and hour: hashed with foldhash, not SipHash,
/// which took a tenth of a day's computation.
type Vendors<'a> = HashSet<&'a str, foldhash::fast::RandomState>;

/// The peak window over the times of `day` events (sorted by ts), with `before` (the
/// previous day's tail, sorted) in reach: (sum, count, t).
fn peak(before: &[&Event], day: &[Event]) -> Option<(i64, i64, i64)> {
    let all: Vec<&Event> = before.iter().copied().chain(day.iter()).collect();
    let (mut left, mut right) = (0, 0);
    let (mut sum, mut count) = (0_i64, 0_i64);
    let mut best: Option<(i64, i64, i64)> = None;
    for event in day {
        let t = event.ts;
        while right < all.len() && all[right].ts <= t {
            sum = sum.checked_add(all[right].amount)?;
            count += 1;
            right += 1;
        }
        while left < right && all[left].ts <= t - WINDOW_MS {
            sum -= all[left].amount;
            count -= 1;
            left += 1;
        }
        let better = match best {
            None => true,
            Some((best_sum, best_count, _)) => (sum, count) > (best_sum, best_count),
        };
        if better {
            best = Some((sum, count, t));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(customer: &str, vendor: &str, amount: i64, ts: i64) -> Event {
        Event {
            customer: customer.into(),
            vendor: vendor.into(),
            amount,
            ts,
        }
    }

    const D: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn the_window_boundary_is_exclusive_at_its_start() {
        // Events exactly 30 minutes apart never share a window.
        let events = vec![
            event("c", "v1", 100, D + HOUR_MS),
            event("c", "v2", 50, D + HOUR_MS + WINDOW_MS),
            event("c", "v2", 20, D + HOUR_MS + WINDOW_MS + 1),
        ];
        let out = compute_day(D, events, vec![]).unwrap();
        let day = &out.days[0];
        assert_eq!(
            (day.sum, day.count, day.max, day.distinct_vendors),
            (170, 3, 100, 2)
        );
        assert_eq!(
            (day.peak_sum, day.peak_count),
            (100, 1),
            "100 alone beats 50 + 20"
        );
        assert_eq!(out.hours.len(), 1, "all three in the hour from 01:00");
    }

    #[test]
    fn the_previous_day_s_tail_counts_in_early_windows() {
        let tail = vec![event("c", "v1", 500, D - 10 * 60_000)];
        let events = vec![event("c", "v2", 100, D + 5 * 60_000)];
        let out = compute_day(D, events, tail).unwrap();
        assert_eq!((out.days[0].peak_sum, out.days[0].peak_count), (600, 2));
        assert_eq!(
            out.days[0].sum, 100,
            "the day's own sum has only its events"
        );
    }

    /// A naive model: every window at every event time, by brute force.
    fn naive_peak(all: &[Event], day_events: &[Event]) -> (i64, i64) {
        day_events
            .iter()
            .map(|e| {
                let inside: Vec<&Event> = all
                    .iter()
                    .filter(|o| e.ts - WINDOW_MS < o.ts && o.ts <= e.ts)
                    .collect();
                (
                    inside.iter().map(|o| o.amount).sum::<i64>(),
                    inside.len() as i64,
                )
            })
            .max()
            .unwrap()
    }

    proptest! {
        #[test]
        fn aggregates_agree_with_brute_force(
            raw in prop::collection::vec((0..3_u8, 0..4_u8, 1..1_000_000_i64, -40..1500_i64), 1..120)
        ) {
            // Minutes from D - 40 min: some in the previous day's tail, many on exact
            // 30-minute and hour boundaries.
            let all: Vec<Event> = raw
                .iter()
                .map(|&(c, v, amount, minute)| {
                    event(&format!("c{c}"), &format!("v{v}"), amount, D + minute * 60_000)
                })
                .collect();
            let (tail, events): (Vec<Event>, Vec<Event>) =
                all.iter().cloned().partition(|e| e.ts < D);
            let out = compute_day(D, events.clone(), tail).unwrap();
            for row in &out.days {
                let mine: Vec<Event> =
                    events.iter().filter(|e| e.customer == row.customer).cloned().collect();
                let reach: Vec<Event> =
                    all.iter().filter(|e| e.customer == row.customer).cloned().collect();
                prop_assert_eq!(row.sum, mine.iter().map(|e| e.amount).sum::<i64>());
                prop_assert_eq!(row.count, mine.len() as i64);
                prop_assert_eq!((row.peak_sum, row.peak_count), naive_peak(&reach, &mine));
            }
            let hour_total: i64 = out.hours.iter().map(|h| h.sum).sum();
            prop_assert_eq!(hour_total, events.iter().map(|e| e.amount).sum::<i64>());
            for row in &out.hours {
                let inside: Vec<&Event> = events
                    .iter()
                    .filter(|e| e.customer == row.customer && hour_of(e.ts) == row.hour)
                    .collect();
                prop_assert_eq!(row.count, inside.len() as i64);
                prop_assert_eq!(row.max, inside.iter().map(|e| e.amount).max().unwrap());
            }
        }
    }
}
