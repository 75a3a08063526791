//! Window updates: what the speed layer publishes, per touched customer, after each
//! applied batch (topic `speed.updates_topic`, keyed by customer), so that rules are
//! evaluated on every change.

use serde::{Deserialize, Serialize};

use crate::state::WindowAggregates;

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
    /// The vendor digest (hex) and amount of the customer's last applied record, for
    /// rules about the event that caused the update.
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
