//! The rules: one customer's run of records applied to its state, in memory.
//!
//! Everything the speed layer decides about a record is decided here, from the state the
//! record finds and the records before it in offset order, never from batching or from
//! when trimming ran, so a replay decides the same. [`crate::apply`] reads the state,
//! calls [`apply_run`] and writes the result back only if the key still holds what was
//! read.
//!
//! - A record at or before the last applied offset was delivered before: skipped
//!   ([`RecordOutcome::Replayed`]); when the very same event (time, amount, vendor,
//!   transaction) is held with `ts > C - retention`, it was applied then, and its answer
//!   of that time is told again ([`RecordOutcome::ReplayedHeld`]).
//! - With C the customer's clock (the largest event time applied) before the record, a
//!   record with `ts <= C - retention` is late: skipped.
//! - A record whose transaction digest is held by an event with `ts > C - retention`
//!   (applied before it, in an earlier run or earlier in this one) is a duplicate:
//!   skipped. An older duplicate is late anyway.
//! - Otherwise it is applied: its event is appended, with whether an event with
//!   `ts > C - retention` holds its vendor digest (the customer used the vendor before),
//!   and its amount is added to the UTC hour holding `ts` (and to the hour's edge when
//!   `ts` is the hour's start).
//! - After the run: once the oldest held event is a quarter of the retention past
//!   `C - retention`, every event at or past it is trimmed, in bulk; hours before the
//!   batch watermark T_b are dropped. A state of another generation counts as absent.

use std::collections::HashMap;

use crate::HOUR_MS;
use crate::apply::{Record, RecordOutcome, Tuning};
use crate::meta::Generation;
use crate::state::{CustomerState, HourIncrement, WindowEvent};

/// A sum that reaches 2^53 minor units: the state cannot hold it exactly for every
/// reader (JSON numbers, doubles), so the run fails rather than round.
const EXACT: i64 = 1 << 53;

/// From this many records a run indexes the transactions and vendors of the events it
/// consults, instead of scanning them for each record: a hot customer (a bot, a card
/// under test) may hold thousands of events and bring thousands of records in one batch.
const INDEX_RUN: usize = 32;

/// A run could not be applied; nothing of it may be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sum of the speed state reached 2^53 minor units")]
pub struct Overflow;

/// What applying a run gives: the new state, the TTL to store it with, one outcome per
/// record.
pub(crate) struct Applied {
    pub state: CustomerState,
    pub ttl_ms: i64,
    pub records: Vec<RecordOutcome>,
}

/// Digest → the newest event time holding it: "is it held with `ts > floor`" for many
/// lookups.
#[derive(Default)]
struct Index(HashMap<[u8; 8], i64, foldhash::fast::RandomState>);

impl Index {
    fn note(&mut self, digest: [u8; 8], ts: i64) {
        let newest = self.0.entry(digest).or_insert(ts);
        *newest = (*newest).max(ts);
    }

    fn holds(&self, digest: &[u8; 8], floor: i64) -> bool {
        self.0.get(digest).is_some_and(|&newest| newest > floor)
    }
}

/// Applies `records` (in offset order) to `stored`, the customer's state as read (or
/// `None`): the rules of the module header.
pub(crate) fn apply_run(
    stored: Option<CustomerState>,
    generation: Generation,
    watermark: Option<i64>,
    tuning: Tuning,
    records: &[Record],
) -> Result<Applied, Overflow> {
    let retention = tuning.retention_ms;
    let mut state = match stored {
        Some(stored) if stored.generation == generation => stored,
        _ => CustomerState {
            generation,
            last_offset: -1,
            clock: None,
            events: Vec::new(),
            hours: Vec::new(),
        },
    };
    state.events.reserve(records.len());
    // The events the state held before the run: where a replayed record is looked for.
    let held = state.events.len();
    let mut indexes = (records.len() >= INDEX_RUN).then(|| {
        let (mut transactions, mut vendors) = (Index::default(), Index::default());
        for event in &state.events {
            transactions.note(event.transaction, event.ts);
            vendors.note(event.vendor, event.ts);
        }
        (transactions, vendors)
    });
    let mut outcomes = Vec::with_capacity(records.len());
    for record in records {
        let outcome = if record.offset <= state.last_offset {
            replayed(&state, held, record, retention)
        } else if let Some(clock) = state.clock
            && record.ts <= clock - retention
        {
            state.last_offset = record.offset;
            RecordOutcome::Late
        } else {
            state.last_offset = record.offset;
            // Only events inside the retention count, whether or not older ones are
            // still held, so trimming never changes a decision.
            let floor = state.clock.map(|clock| clock - retention);
            let seen =
                |digest: &[u8; 8], index: Option<&Index>, of: fn(&WindowEvent) -> [u8; 8]| {
                    floor.is_some_and(|floor| match index {
                        Some(index) => index.holds(digest, floor),
                        None => state
                            .events
                            .iter()
                            .any(|event| event.ts > floor && of(event) == *digest),
                    })
                };
            if seen(
                &record.transaction,
                indexes.as_ref().map(|(transactions, _)| transactions),
                |event| event.transaction,
            ) {
                RecordOutcome::Duplicate
            } else {
                let vendor_seen_before = seen(
                    &record.vendor,
                    indexes.as_ref().map(|(_, vendors)| vendors),
                    |event| event.vendor,
                );
                if let Some((transactions, vendors)) = indexes.as_mut() {
                    transactions.note(record.transaction, record.ts);
                    vendors.note(record.vendor, record.ts);
                }
                state.events.push(WindowEvent {
                    ts: record.ts,
                    amount: record.amount,
                    vendor: record.vendor,
                    transaction: record.transaction,
                    vendor_seen_before: Some(vendor_seen_before),
                });
                state.clock = Some(state.clock.map_or(record.ts, |clock| clock.max(record.ts)));
                add_to_hour(&mut state.hours, record)?;
                RecordOutcome::Applied { vendor_seen_before }
            }
        };
        outcomes.push(outcome);
    }

    if let Some(clock) = state.clock {
        let oldest = state.events.iter().map(|event| event.ts).min();
        if oldest.is_some_and(|oldest| oldest <= clock - retention - retention / 4) {
            state.events.retain(|event| event.ts > clock - retention);
        }
    }
    if let Some(watermark) = watermark {
        state.hours.retain(|hour| hour.hour >= watermark);
    }
    let ttl_ms = if state.hours.is_empty() {
        tuning.idle_ttl_ms
    } else {
        tuning.increments_ttl_ms
    };
    Ok(Applied {
        state,
        ttl_ms,
        records: outcomes,
    })
}

/// A record at or before the last applied offset: its first answer when its event is
/// still held inside the retention (among the events held before the run), else none.
fn replayed(state: &CustomerState, held: usize, record: &Record, retention: i64) -> RecordOutcome {
    let inside = state
        .clock
        .is_some_and(|clock| record.ts > clock - retention);
    let first = inside
        .then(|| {
            state.events[..held].iter().find(|event| {
                event.ts == record.ts
                    && event.amount == record.amount
                    && event.vendor == record.vendor
                    && event.transaction == record.transaction
            })
        })
        .flatten();
    match first.and_then(|event| event.vendor_seen_before) {
        Some(vendor_seen_before) => RecordOutcome::ReplayedHeld { vendor_seen_before },
        None => RecordOutcome::Replayed,
    }
}

/// Adds the record's amount to its UTC hour (and the hour's edge when `ts` is the hour's
/// start), keeping the hours ascending.
fn add_to_hour(hours: &mut Vec<HourIncrement>, record: &Record) -> Result<(), Overflow> {
    let hour = record.ts - record.ts.rem_euclid(HOUR_MS);
    // Usually the last hour, or one after it.
    let at = hours
        .iter()
        .rposition(|held| held.hour <= hour)
        .map_or(0, |at| at + 1);
    let at = if at > 0 && hours[at - 1].hour == hour {
        at - 1
    } else {
        hours.insert(
            at,
            HourIncrement {
                hour,
                sum: 0,
                count: 0,
                edge_sum: 0,
                edge_count: 0,
            },
        );
        at
    };
    let increment = &mut hours[at];
    increment.sum = exact(increment.sum, record.amount)?;
    increment.count += 1;
    if record.ts == hour {
        increment.edge_sum = exact(increment.edge_sum, record.amount)?;
        increment.edge_count += 1;
    }
    Ok(())
}

fn exact(sum: i64, amount: i64) -> Result<i64, Overflow> {
    sum.checked_add(amount)
        .filter(|&total| total < EXACT)
        .ok_or(Overflow)
}
