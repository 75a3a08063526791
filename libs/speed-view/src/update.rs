//! Window updates: what the speed layer publishes, per touched customer, after each
//! applied batch (topic `speed.updates_topic`, keyed by customer), so that rules are
//! evaluated on every change.

use serde::{Deserialize, Serialize};

use crate::digest;
use crate::state::{CustomerState, WindowAggregates};

/// The encoding version of [`WindowUpdate`], sent as the `schema-version` header.
pub const UPDATE_SCHEMA_VERSION: &str = "1";

/// A customer's window after a batch: the aggregates of `W(c, asOf)` with `asOf` the
/// customer's clock, money in minor units.
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
    /// The customer's last applied record (its vendor id, amount and whether the vendor
    /// was seen before it), for rules about the event that caused the update; `None`
    /// when the batch applied nothing new for the customer (a replay).
    pub last_event: Option<LastEvent>,
    /// Where the update comes from: the transactions partition and the customer's last
    /// applied offset there (later updates of a customer have larger offsets).
    pub source_partition: i32,
    pub source_offset: i64,
    /// The speed layer's generation (hex).
    pub generation: String,
}

/// The record that caused an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastEvent {
    pub transaction_id: String,
    pub vendor_id: String,
    pub amount_minor: i64,
    pub ts: i64,
    /// Whether the speed state held, inside the retention, another transaction of the
    /// customer at the same vendor when this update was computed (see
    /// [`vendor_seen_before`]). Records written before the field existed read as false.
    #[serde(default)]
    pub vendor_seen_before: bool,
}

/// Whether `state` holds, inside the retention (`ts > clock - retention_ms`), an event
/// at `vendor_id` of another transaction than `transaction_id`: the customer used the
/// vendor earlier in the speed view. Only the state is consulted, so the answer is the
/// same whenever the same state is read; vendors older than the retention are the batch
/// layer's (`batch_vendors`).
pub fn vendor_seen_before(
    state: &CustomerState,
    vendor_id: &str,
    transaction_id: &str,
    retention_ms: i64,
) -> bool {
    let Some(clock) = state.clock else {
        return false;
    };
    let vendor = digest(vendor_id);
    let transaction = digest(transaction_id);
    state.events.iter().any(|event| {
        event.vendor == vendor
            && event.transaction != transaction
            && event.ts > clock.saturating_sub(retention_ms)
    })
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
    use crate::meta::Generation;
    use crate::state::WindowEvent;

    const RETENTION: i64 = 35 * 60 * 1000;

    fn event(ts: i64, vendor: &str, transaction: &str) -> WindowEvent {
        WindowEvent {
            ts,
            amount: 100,
            vendor: digest(vendor),
            transaction: digest(transaction),
        }
    }

    fn state(clock: i64, events: Vec<WindowEvent>) -> CustomerState {
        CustomerState {
            generation: Generation::from_bytes([1; 8]),
            last_offset: 0,
            clock: Some(clock),
            events,
            hours: Vec::new(),
        }
    }

    #[test]
    fn a_vendor_is_seen_before_only_through_another_transaction_inside_the_retention() {
        let now = 10 * RETENTION;
        let alone = state(now, vec![event(now, "v1", "t2")]);
        assert!(!vendor_seen_before(&alone, "v1", "t2", RETENTION));

        let earlier = state(
            now,
            vec![event(now - 1000, "v1", "t1"), event(now, "v1", "t2")],
        );
        assert!(vendor_seen_before(&earlier, "v1", "t2", RETENTION));

        let other_vendor = state(
            now,
            vec![event(now - 1000, "v9", "t1"), event(now, "v1", "t2")],
        );
        assert!(!vendor_seen_before(&other_vendor, "v1", "t2", RETENTION));

        // Held but past the retention (not trimmed yet): not counted.
        let at_edge = state(
            now,
            vec![event(now - RETENTION, "v1", "t1"), event(now, "v1", "t2")],
        );
        assert!(!vendor_seen_before(&at_edge, "v1", "t2", RETENTION));
        let inside = state(
            now,
            vec![
                event(now - RETENTION + 1, "v1", "t1"),
                event(now, "v1", "t2"),
            ],
        );
        assert!(vendor_seen_before(&inside, "v1", "t2", RETENTION));
    }

    #[test]
    fn records_without_the_field_decode_as_not_seen() {
        let old = r#"{"transactionId":"t","vendorId":"v","amountMinor":5,"ts":1}"#;
        let last: LastEvent = serde_json::from_str(old).unwrap();
        assert!(!last.vendor_seen_before);
        let new = serde_json::to_value(LastEvent {
            vendor_seen_before: true,
            ..last
        })
        .unwrap();
        assert_eq!(new["vendorSeenBefore"], true);
    }
}
