//! The speed layer's view in Redis: what the speed layer writes and the serving API
//! reads, in one place so the two never disagree.
//!
//! # One key per customer
//! `<prefix>speed:c:{<customerId>}` holds the customer's whole state as one binary
//! string ([`state`] documents the layout): the generation it belongs to, the offset of
//! the last record applied, the customer's clock (the largest event time applied), every
//! event still inside the retention (event time, amount, vendor digest, transaction
//! digest) and the hourly increments (sum, count) of the hours from the batch watermark
//! T_b on. The braces are a Redis Cluster hash tag: everything about a customer lives
//! in one slot.
//!
//! # Applied in the writer, written with a compare-and-set
//! [`run`] holds the rules: a customer's run of records applied to its state, in
//! memory. [`apply::StateWriter`] reads the states it has no copy of, applies the runs
//! and writes each new state only if its key still holds the state it was applied to
//! (`store.lua`, many customers a call, the calls of a batch in one pipeline), so Redis
//! no longer decodes, searches or rebuilds states: for a customer it runs a `GETRANGE`
//! of the header and a `SET`.
//!
//! # Invariants
//! - **Exactly once in effect.** A customer's records all come from one Kafka partition,
//!   in offset order. A record is applied only if its offset is greater than the stored
//!   last offset, and the state that says so is replaced only if it is still the one
//!   stored (a compare-and-set), so replays (after a crash, a rebalance, or from a
//!   zombie instance that lost the partition) change nothing.
//!   A second record of the same `transactionId` is applied once: every event that can
//!   still be in a window is kept with its transaction digest, and an older duplicate is
//!   late anyway. (Adding partitions to the topic moves customers between partitions and
//!   breaks the offset fence: like Kafka Streams, the speed layer needs a fixed partition
//!   count.)
//! - **Exact windows.** The *retention* R is the window (30 min) plus the allowed
//!   lateness, which is at least ingest's future skew. With C the customer's clock, a
//!   record with `ts <= C - R` is late: skipped and counted, never applied (the batch
//!   layer has it at its next run). Events with `ts > C - R` are all kept, so the window
//!   `W(c, t) = { e : t - 30 min < e.ts <= t }` is exact for every `t >= C - lateness`,
//!   which includes now: C is at most the future skew ahead of the wall clock. Decisions
//!   depend only on the records of the customer in offset order, so a replay decides the
//!   same.
//! - **Hourly increments.** Every applied event adds its amount to the UTC hour
//!   `[h, h + 1 h)` holding its `ts`, and, when `ts == h` exactly, to that hour's *edge*.
//!   The batch layer is exact for `ts <= T_b` (T_b hour-aligned), so the speed part of a
//!   merge is the hours from T_b on minus the edge of hour T_b: no event counted twice,
//!   none missed at the seam.
//! - **Generations.** The meta key `<prefix>speed:meta` ([`meta`]) names the current
//!   generation. When Redis loses its data the meta key is gone with it; the speed layer
//!   starts a new generation and rebuilds from Kafka. State of any other generation is
//!   treated as absent by writer and reader alike, so keys written around the loss never
//!   mix with the rebuilt ones. The meta key also says, per partition, whether the
//!   rebuild is done; until then the view is degraded.
//! - **Expiry.** A key expires by itself: [`apply::Tuning::idle_ttl`] after its last
//!   write when it holds no hourly increments (nothing in it can matter after the
//!   retention), [`apply::Tuning::increments_ttl`] when it does (until a batch run covers
//!   those hours).
//!
//! Money is integer minor units; a sum that reaches 2^53 minor units (beyond what a
//! double, and so a JSON reader, holds exactly) fails the batch rather than round.

pub mod apply;
pub mod meta;
pub mod run;
pub mod state;
pub mod update;

pub use apply::{ApplyOutcome, Record, RecordOutcome, StateWriter, Tuning};
pub use meta::{Generation, PartitionStatus, SpeedMeta};
pub use state::{CustomerState, HourIncrement, WindowAggregates, WindowEvent};
pub use update::{AppliedEvent, EventWindow, WindowUpdate};

/// The window: 30 minutes, in ms.
pub const WINDOW_MS: i64 = 30 * 60 * 1000;

/// One hour in ms: the granularity of the increments.
pub const HOUR_MS: i64 = 60 * 60 * 1000;

/// The key of `customer`'s state under `prefix`.
pub fn customer_key(prefix: &str, customer: &str) -> String {
    format!("{prefix}speed:c:{{{customer}}}")
}

/// A stable 8-byte digest of an id (vendor or transaction), as stored in the state.
pub fn digest(id: &str) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(id.as_bytes());
    let mut out = [0; 8];
    out.copy_from_slice(&hash[..8]);
    out
}
