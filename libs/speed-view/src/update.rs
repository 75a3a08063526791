//! Window updates: what the speed layer publishes, per touched customer, after each
//! applied batch (topic `speed.updates_topic`, keyed by customer), so that rules are
//! evaluated on every change.
//!
//! # Encoding
//! JSON, with the header `schema-version` = [`UPDATE_SCHEMA_VERSION`]; a reader skips
//! versions it does not know. Version 2 (money in minor units, times in UTC ms):
//!
//! ```json
//! {"customerId":"42","asOf":1780000060000,"sumMinor":151000,"count":2,"maxMinor":150000,
//!  "distinctVendors":2,
//!  "events":[
//!   {"offset":17,"transactionId":"t-1","vendorId":"v-9","amountMinor":150000,
//!    "ts":1780000000000,"vendorSeenBefore":false,
//!    "window":{"sumMinor":150000,"count":1,"maxMinor":150000,"distinctVendors":1}},
//!   {"offset":19,"transactionId":"t-2","vendorId":"v-1","amountMinor":1000,
//!    "ts":1780000060000,"vendorSeenBefore":true,
//!    "window":{"sumMinor":151000,"count":2,"maxMinor":150000,"distinctVendors":2}}],
//!  "sourcePartition":3,"sourceOffset":19,"generation":"00000000000000aa"}
//! ```
//!
//! `events` lists every record of the customer's run in the batch that the writer
//! applied, in offset order, and every replayed record whose event an earlier delivery
//! applied and the state still holds inside the retention
//! ([`crate::RecordOutcome::ReplayedHeld`]), with the answers of that first delivery:
//! so a batch replayed after a crash that came between Redis and its updates lists its
//! events again. Records skipped as late or duplicate are not listed, nor replayed
//! records the state no longer holds, so a replay of records long past gives an update
//! with no events. Each listed event carries `window`, the aggregates of
//! `W(c, ts)` at its own instant ([`AppliedEvent::window`]), so that a window that
//! crossed a limit at one event of the batch and fell back by its last is still seen.
//! `window` was added to version 2 without a new version: readers ignore fields they do
//! not know, and a reader meets updates of earlier speed layers without it (then only
//! the update's own window, at `asOf`, is known). Version 1 had `lastEvent` (the run's
//! last record only) in place of `events`.
//!
//! A run that lists more events than one Kafka message holds (a hot customer: thousands
//! of records in one batch) is published as several updates, each listing a consecutive
//! part of `events` (at most [`MAX_EVENTS_PER_UPDATE`]) in offset order, all with the
//! same `sourceOffset` ([`WindowUpdate::into_parts`]).
//! The last part has the run's `asOf` and window; every other part is at the latest
//! event time listed so far, with the window there (an event's own `window` when that
//! event is in the part), so a reader that judges a part's `asOf` judges no instant the
//! listed events do not tell.

use serde::{Deserialize, Serialize};

use crate::state::WindowAggregates;

/// The encoding version of [`WindowUpdate`], sent as the `schema-version` header.
pub const UPDATE_SCHEMA_VERSION: &str = "2";

/// Most events one published update lists. An event is about 250 bytes of JSON, at most
/// about 700 (two ids of 64 four-byte characters): under Kafka's default limit of 1 MB
/// a message either way.
pub const MAX_EVENTS_PER_UPDATE: usize = 1_000;

/// A customer's window after a batch: the aggregates of `W(c, asOf)` with `asOf` the
/// customer's clock, money in minor units, and the events the batch applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowUpdate {
    pub customer_id: String,
    /// Event time (UTC ms) the aggregates are at: the largest event time applied.
    pub as_of: i64,
    pub sum_minor: i64,
    pub count: i64,
    pub max_minor: i64,
    pub distinct_vendors: i64,
    /// Every record of the customer's run that the batch applied or found applied by an
    /// earlier delivery and still held, in offset order, for rules about single events;
    /// empty when there is none (only late and duplicate records, or a replay of records
    /// no longer held).
    pub events: Vec<AppliedEvent>,
    /// Where the update comes from: the transactions partition and the customer's last
    /// applied (or skipped) offset there (later updates of a customer have larger
    /// offsets).
    pub source_partition: i32,
    pub source_offset: i64,
    /// The speed layer's generation (hex).
    pub generation: String,
}

impl WindowUpdate {
    /// The updates this one is published as (see the module's documentation): itself
    /// when it lists at most `max_events` events (at least 1), else consecutive parts of
    /// its events, each but the last at the latest event time listed so far with the
    /// window there, the last with this update's `asOf` and window.
    pub fn into_parts(mut self, max_events: usize) -> Vec<WindowUpdate> {
        let max_events = max_events.max(1);
        let whole = EventWindow {
            sum_minor: self.sum_minor,
            count: self.count,
            max_minor: self.max_minor,
            distinct_vendors: self.distinct_vendors,
        };
        let mut parts = Vec::with_capacity(self.events.len().div_ceil(max_events).max(1));
        let mut latest: Option<(i64, EventWindow)> = None;
        while self.events.len() > max_events {
            let rest = self.events.split_off(max_events);
            let events = std::mem::replace(&mut self.events, rest);
            for event in &events {
                if latest.is_none_or(|(ts, _)| event.ts > ts) {
                    latest = Some((event.ts, event.window.unwrap_or(whole)));
                }
            }
            let (as_of, window) = latest.unwrap_or((self.as_of, whole));
            parts.push(WindowUpdate {
                customer_id: self.customer_id.clone(),
                as_of,
                sum_minor: window.sum_minor,
                count: window.count,
                max_minor: window.max_minor,
                distinct_vendors: window.distinct_vendors,
                events,
                source_partition: self.source_partition,
                source_offset: self.source_offset,
                generation: self.generation.clone(),
            });
        }
        parts.push(self);
        parts
    }
}

/// A record a batch applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedEvent {
    /// The record's offset in `sourcePartition`.
    pub offset: i64,
    pub transaction_id: String,
    pub vendor_id: String,
    pub amount_minor: i64,
    /// Event time, UTC ms.
    pub ts: i64,
    /// Whether the customer had used this vendor before this event, inside the
    /// retention R (window plus allowed lateness). Precisely, with C the customer's
    /// clock (largest event time applied) just before this record: some event applied
    /// before this one — in an earlier batch, or earlier in the same run — has
    /// `ts > C - R` and the same vendor digest ([`crate::digest`]) as this one. Those are
    /// exactly the events the duplicate check consults, so that event is of another
    /// transaction (else this record would have been a duplicate, not applied); late,
    /// duplicate and replayed records were never applied and never count. The answer
    /// is stored with the event, and a replayed record listed again carries the answer
    /// of its first delivery. Before the
    /// customer's first applied event (no clock) it is false. The answer depends only
    /// on the customer's records in offset order: not on how they were batched, nor on
    /// when the writer trimmed old events. Vendors used before the retention are the
    /// batch layer's (`batch_vendors`).
    pub vendor_seen_before: bool,
    /// The aggregates of `W(c, ts)` (`ts - 30 min < e.ts <= ts`) at this event's instant,
    /// as the speed layer knows them after the batch: over the state the writer
    /// returned ([`crate::CustomerState::window_at`]), that is over every event applied
    /// to the customer up to the end of the batch, this one included. When events arrive
    /// out of order, that includes records later in the batch (larger offsets) whose
    /// `ts` is at or before this one's, which an update of a batch ending at this record
    /// would not have counted yet; records of later batches are never counted. With C
    /// the customer's clock after the batch and R the retention, the state holds every
    /// event with `ts > C - R`, so the window is exact for `ts >= C - lateness`, which
    /// holds for every event of a batch spanning at most the allowed lateness of the
    /// customer's event time; further behind C (a batch spanning more, as when catching
    /// up) it counts only the events still held and may fall short of the true window.
    /// Absent only in updates of speed layers that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<EventWindow>,
}

/// The aggregates of a window, money in minor units: an [`AppliedEvent`]'s window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventWindow {
    pub sum_minor: i64,
    pub count: i64,
    /// The largest amount; 0 for an empty window.
    pub max_minor: i64,
    pub distinct_vendors: i64,
}

impl From<WindowAggregates> for EventWindow {
    fn from(window: WindowAggregates) -> Self {
        EventWindow {
            sum_minor: window.sum,
            count: window.count,
            max_minor: window.max,
            distinct_vendors: window.distinct_vendors,
        }
    }
}

impl From<EventWindow> for WindowAggregates {
    fn from(window: EventWindow) -> Self {
        WindowAggregates {
            sum: window.sum_minor,
            count: window.count,
            max: window.max_minor,
            distinct_vendors: window.distinct_vendors,
        }
    }
}

impl WindowUpdate {
    pub fn window(&self) -> WindowAggregates {
        WindowAggregates {
            sum: self.sum_minor,
            count: self.count,
            max: self.max_minor,
            distinct_vendors: self.distinct_vendors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_the_documented_one() {
        let update = WindowUpdate {
            customer_id: "42".into(),
            as_of: 1_780_000_060_000,
            sum_minor: 151_000,
            count: 2,
            max_minor: 150_000,
            distinct_vendors: 2,
            events: vec![
                AppliedEvent {
                    offset: 17,
                    transaction_id: "t-1".into(),
                    vendor_id: "v-9".into(),
                    amount_minor: 150_000,
                    ts: 1_780_000_000_000,
                    vendor_seen_before: false,
                    window: Some(EventWindow {
                        sum_minor: 150_000,
                        count: 1,
                        max_minor: 150_000,
                        distinct_vendors: 1,
                    }),
                },
                AppliedEvent {
                    offset: 19,
                    transaction_id: "t-2".into(),
                    vendor_id: "v-1".into(),
                    amount_minor: 1_000,
                    ts: 1_780_000_060_000,
                    vendor_seen_before: true,
                    window: Some(EventWindow {
                        sum_minor: 151_000,
                        count: 2,
                        max_minor: 150_000,
                        distinct_vendors: 2,
                    }),
                },
            ],
            source_partition: 3,
            source_offset: 19,
            generation: "00000000000000aa".into(),
        };
        let documented: String = include_str!("update.rs")
            .lines()
            .skip_while(|line| *line != "//! ```json")
            .skip(1)
            .take_while(|line| *line != "//! ```")
            .map(|line| line.trim_start_matches("//!").trim())
            .collect();
        assert_eq!(serde_json::to_string(&update).unwrap(), documented);
        assert_eq!(
            serde_json::from_str::<WindowUpdate>(&documented).unwrap(),
            update
        );
        // An event of an earlier version-2 speed layer, without its window, still reads.
        let earlier = documented.replace(
            r#","window":{"sumMinor":151000,"count":2,"maxMinor":150000,"distinctVendors":2}"#,
            "",
        );
        let read = serde_json::from_str::<WindowUpdate>(&earlier).unwrap();
        assert_eq!(read.events[1].window, None);
        assert_eq!(read.events[0], update.events[0]);
        // Version 1 does not read as version 2.
        let v1 = r#"{"customerId":"42","asOf":1,"sumMinor":1,"count":1,"maxMinor":1,
            "distinctVendors":1,"lastEvent":null,"sourcePartition":0,"sourceOffset":0,
            "generation":"00"}"#;
        assert!(serde_json::from_str::<WindowUpdate>(v1).is_err());
    }

    #[test]
    fn a_long_update_is_split_into_parts_at_their_latest_event() {
        let window = |sum| EventWindow {
            sum_minor: sum,
            count: 1,
            max_minor: sum,
            distinct_vendors: 1,
        };
        // Event times out of order: part 1 ends at ts 10, part 2's latest is still 10.
        let times = [5, 10, 3, 7, 9];
        let events: Vec<AppliedEvent> = times
            .iter()
            .enumerate()
            .map(|(at, &ts)| AppliedEvent {
                offset: at as i64,
                transaction_id: format!("t-{at}"),
                vendor_id: "v".into(),
                amount_minor: 1,
                ts,
                vendor_seen_before: false,
                window: Some(window(ts * 100)),
            })
            .collect();
        let update = WindowUpdate {
            customer_id: "c".into(),
            as_of: 12,
            sum_minor: 1_200,
            count: 5,
            max_minor: 1,
            distinct_vendors: 1,
            events: events.clone(),
            source_partition: 0,
            source_offset: 4,
            generation: "00".into(),
        };
        assert_eq!(update.clone().into_parts(5), vec![update.clone()]);
        let parts = update.clone().into_parts(2);
        let shape: Vec<(usize, i64, i64)> = parts
            .iter()
            .map(|part| (part.events.len(), part.as_of, part.sum_minor))
            .collect();
        assert_eq!(shape, [(2, 10, 1_000), (2, 10, 1_000), (1, 12, 1_200)]);
        let listed: Vec<AppliedEvent> = parts.iter().flat_map(|part| part.events.clone()).collect();
        assert_eq!(listed, events);
        assert!(parts.iter().all(|part| part.source_offset == 4));
    }
}
