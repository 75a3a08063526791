//! A customer's state as stored, and the aggregates read from it.
//!
//! Layout `W3` (little-endian, written by [`CustomerState::encode`]):
//!
//! | part | fields |
//! |---|---|
//! | header (43 bytes) | magic `W3` (2), generation (8), last offset (i64), clock (i64), has clock (u8), oldest held event time (i64, 0 when none), events n (u32), hours m (u32) |
//! | m hours (40 bytes each, ascending) | hour start ms (i64), sum (i64), count (i64), edge sum (i64), edge count (i64) |
//! | n events (33 bytes each, in the order applied) | event time ms (i64), amount minor (i64), vendor digest (8), transaction digest (8), vendor used before (1: `s` yes, `n` no, `?` unknown) |
//!
//! The last byte of an event is the answer, when the event was applied, to
//! whether the customer had used its vendor before ([`crate::update::AppliedEvent`]),
//! kept so that a replay of the record after a crash is answered the same. Layout `W2`
//! (speed layers before it) is the same without that byte: it is still read, its events'
//! byte taken as unknown, and the writer rewrites a `W2` state as `W3` the first time it
//! writes it. Readers must be able to read `W3` before a speed layer writes it.
//!
//! The header comes first and says what the rest holds (offset, clock, counts), so a
//! writer checks with `GETRANGE` of the header alone that a key still holds the state it
//! computed from ([`crate::apply`]). The events hold every applied event with
//! `ts > clock - retention`, and may still hold older ones (up to a quarter of the
//! retention older) until the writer trims them in bulk: such an
//! event is outside every window a reader may ask for and never counts twice in a total
//! (see [`CustomerState::total_between`]).

use std::collections::{HashMap, VecDeque};

use crate::meta::Generation;
use crate::{HOUR_MS, WINDOW_MS};

const MAGIC: &[u8; 2] = b"W3";
const LEGACY_MAGIC: &[u8; 2] = b"W2";
/// The header's length: what a writer compares before it replaces a state.
pub(crate) const HEADER_LEN: usize = 43;
const EVENT_LEN: usize = 33;
const LEGACY_EVENT_LEN: usize = 32;
const HOUR_LEN: usize = 40;

/// An event inside the retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowEvent {
    pub ts: i64,
    pub amount: i64,
    pub vendor: [u8; 8],
    pub transaction: [u8; 8],
    /// Whether the customer had used the vendor before this event, as decided when it
    /// was applied; `None` for an event of a `W2` state, which did not record it.
    pub vendor_seen_before: Option<bool>,
}

/// The applied events of one UTC hour `[hour, hour + 1 h)`; the edge is the part with
/// `ts == hour` exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourIncrement {
    pub hour: i64,
    pub sum: i64,
    pub count: i64,
    pub edge_sum: i64,
    pub edge_count: i64,
}

/// A customer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerState {
    pub generation: Generation,
    /// Offset of the last record applied (or skipped) in the customer's partition.
    pub last_offset: i64,
    /// The largest event time applied.
    pub clock: Option<i64>,
    pub events: Vec<WindowEvent>,
    pub hours: Vec<HourIncrement>,
}

/// Aggregates over the events of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowAggregates {
    pub sum: i64,
    pub count: i64,
    /// The largest amount; 0 for an empty window.
    pub max: i64,
    pub distinct_vendors: i64,
}

/// The stored bytes are not a state this version can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("speed state is not readable: {0}")]
pub struct DecodeError(&'static str);

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError("too long"))?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError("truncated"))?;
        self.pos = end;
        Ok(slice)
    }
    fn bytes8(&mut self) -> Result<[u8; 8], DecodeError> {
        Ok(self.take(8)?.try_into().expect("8 bytes"))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.bytes8()?))
    }
    fn u32(&mut self) -> Result<usize, DecodeError> {
        let bytes: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
        Ok(u32::from_le_bytes(bytes) as usize)
    }
}

impl CustomerState {
    /// Decodes a stored state.
    pub fn decode(bytes: &[u8]) -> Result<CustomerState, DecodeError> {
        let mut reader = Reader { bytes, pos: 0 };
        let magic = reader.take(2)?;
        let event_len = if magic == MAGIC {
            EVENT_LEN
        } else if magic == LEGACY_MAGIC {
            LEGACY_EVENT_LEN
        } else {
            return Err(DecodeError("unknown encoding"));
        };
        let generation = Generation::from_bytes(reader.bytes8()?);
        let last_offset = reader.i64()?;
        let clock = reader.i64()?;
        let has_clock = reader.take(1)?[0] == 1;
        let oldest = reader.i64()?;
        let n_events = reader.u32()?;
        let n_hours = reader.u32()?;
        debug_assert_eq!(reader.pos, HEADER_LEN);
        if bytes.len() != HEADER_LEN + n_events * event_len + n_hours * HOUR_LEN {
            return Err(DecodeError("length does not match the counts"));
        }
        let mut hours = Vec::with_capacity(n_hours);
        for _ in 0..n_hours {
            hours.push(HourIncrement {
                hour: reader.i64()?,
                sum: reader.i64()?,
                count: reader.i64()?,
                edge_sum: reader.i64()?,
                edge_count: reader.i64()?,
            });
        }
        let mut events = Vec::with_capacity(n_events);
        for _ in 0..n_events {
            events.push(WindowEvent {
                ts: reader.i64()?,
                amount: reader.i64()?,
                vendor: reader.bytes8()?,
                transaction: reader.bytes8()?,
                vendor_seen_before: if event_len == EVENT_LEN {
                    match reader.take(1)?[0] {
                        b's' => Some(true),
                        b'n' => Some(false),
                        b'?' => None,
                        _ => return Err(DecodeError("an event's vendor byte is unknown")),
                    }
                } else {
                    None
                },
            });
        }
        if events.iter().map(|event| event.ts).min().unwrap_or(0) != oldest {
            return Err(DecodeError(
                "the oldest event time does not match the events",
            ));
        }
        Ok(CustomerState {
            generation,
            last_offset,
            clock: has_clock.then_some(clock),
            events,
            hours,
        })
    }

    /// The state in layout `W3`, as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + self.hours.len() * HOUR_LEN + self.events.len() * EVENT_LEN,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.generation.as_bytes());
        out.extend_from_slice(&self.last_offset.to_le_bytes());
        out.extend_from_slice(&self.clock.unwrap_or(0).to_le_bytes());
        out.push(u8::from(self.clock.is_some()));
        let oldest = self.events.iter().map(|event| event.ts).min();
        out.extend_from_slice(&oldest.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&(self.events.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.hours.len() as u32).to_le_bytes());
        for hour in &self.hours {
            for field in [
                hour.hour,
                hour.sum,
                hour.count,
                hour.edge_sum,
                hour.edge_count,
            ] {
                out.extend_from_slice(&field.to_le_bytes());
            }
        }
        for event in &self.events {
            out.extend_from_slice(&event.ts.to_le_bytes());
            out.extend_from_slice(&event.amount.to_le_bytes());
            out.extend_from_slice(&event.vendor);
            out.extend_from_slice(&event.transaction);
            out.push(match event.vendor_seen_before {
                Some(true) => b's',
                Some(false) => b'n',
                None => b'?',
            });
        }
        out
    }

    /// The aggregates of `W(c, t)`: the events with `t - 30 min < ts <= t`.
    pub fn window_at(&self, t: i64) -> WindowAggregates {
        let mut aggregates = WindowAggregates::default();
        let mut vendors: Vec<[u8; 8]> = Vec::new();
        for event in &self.events {
            if t - WINDOW_MS < event.ts && event.ts <= t {
                aggregates.sum += event.amount;
                aggregates.count += 1;
                aggregates.max = aggregates.max.max(event.amount);
                if !vendors.contains(&event.vendor) {
                    vendors.push(event.vendor);
                }
            }
        }
        aggregates.distinct_vendors = vendors.len() as i64;
        aggregates
    }

    /// [`CustomerState::window_at`] of every instant of `times`, in their order, computed
    /// in one sweep over the events sorted by time: a hot customer's update asks for the
    /// window at each of its many events, which one scan per instant made quadratic.
    pub fn windows_at(&self, times: &[i64]) -> Vec<WindowAggregates> {
        let mut events: Vec<&WindowEvent> = self.events.iter().collect();
        events.sort_unstable_by_key(|event| event.ts);
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_unstable_by_key(|&at| times[at]);

        let mut windows = vec![WindowAggregates::default(); times.len()];
        // The window is events[start..end]: its sum and count, its vendors with their
        // events' count, and the indexes of its events whose amount no later event in it
        // reaches, so the first is the maximum.
        let (mut start, mut end) = (0, 0);
        let (mut sum, mut count) = (0i64, 0i64);
        let mut vendors: HashMap<[u8; 8], usize> = HashMap::new();
        let mut largest: VecDeque<usize> = VecDeque::new();
        for at in order {
            let t = times[at];
            while end < events.len() && events[end].ts <= t {
                let event = events[end];
                sum += event.amount;
                count += 1;
                *vendors.entry(event.vendor).or_default() += 1;
                while largest
                    .back()
                    .is_some_and(|&back| events[back].amount <= event.amount)
                {
                    largest.pop_back();
                }
                largest.push_back(end);
                end += 1;
            }
            while start < end && events[start].ts <= t - WINDOW_MS {
                let event = events[start];
                sum -= event.amount;
                count -= 1;
                if let Some(left) = vendors.get_mut(&event.vendor) {
                    *left -= 1;
                    if *left == 0 {
                        vendors.remove(&event.vendor);
                    }
                }
                if largest.front() == Some(&start) {
                    largest.pop_front();
                }
                start += 1;
            }
            windows[at] = WindowAggregates {
                sum,
                count,
                max: largest
                    .front()
                    .map_or(0, |&front| events[front].amount.max(0)),
                distinct_vendors: vendors.len() as i64,
            };
        }
        windows
    }

    /// Sum and count of the applied events with `after < ts` and `from <= ts <= until`,
    /// where `after` is the batch watermark T_b (hour-aligned; `None` before any batch
    /// run) and `from` is hour-aligned (a UTC day or hour). Whole hours come from the
    /// increments; the hour holding `until` is corrected with the held events after
    /// `until`, which is exact while every such event is still held (`until >= clock -
    /// retention`, always true for `until` = now). Hours before the watermark the state
    /// was last written with are gone: the batch has them.
    pub fn total_between(&self, after: Option<i64>, from: i64, until: i64) -> (i64, i64) {
        let first_hour = from - from.rem_euclid(HOUR_MS);
        let last_hour = until - until.rem_euclid(HOUR_MS);
        let (mut sum, mut count) = (0, 0);
        for hour in &self.hours {
            if hour.hour < first_hour
                || hour.hour > last_hour
                || after.is_some_and(|watermark| hour.hour < watermark)
            {
                continue;
            }
            sum += hour.sum;
            count += hour.count;
            if after == Some(hour.hour) {
                // ts == T_b exactly belongs to the batch.
                sum -= hour.edge_sum;
                count -= hour.edge_count;
            }
            if hour.hour == last_hour {
                for event in &self.events {
                    if event.ts > until && event.ts < last_hour + HOUR_MS {
                        sum -= event.amount;
                        count -= 1;
                    }
                }
            }
        }
        (sum, count)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn state_of(events: Vec<WindowEvent>) -> CustomerState {
        CustomerState {
            generation: Generation::random(),
            last_offset: 0,
            clock: events.iter().map(|event| event.ts).max(),
            events,
            hours: Vec::new(),
        }
    }

    fn event() -> impl Strategy<Value = WindowEvent> {
        // Few distinct times, amounts and vendors: ties and exact window edges are common.
        (0..8i64, 0..4i64, 1..6i64, 0..5u8).prop_map(|(slot, nudge, amount, vendor)| WindowEvent {
            ts: slot * WINDOW_MS / 3 + nudge,
            amount,
            vendor: [vendor; 8],
            transaction: [0; 8],
            vendor_seen_before: None,
        })
    }

    proptest! {
        #[test]
        fn windows_at_many_instants_equal_each_window_alone(
            events in prop::collection::vec(event(), 0..60),
            picks in prop::collection::vec((0..60usize, 0..4usize), 0..40),
        ) {
            // Instants at, just before and just past the events' times and window edges.
            let times: Vec<i64> = picks
                .iter()
                .map(|&(pick, shift)| {
                    let ts = events.get(pick).map_or(pick as i64 * 1_000, |event| event.ts);
                    [ts, ts - 1, ts + WINDOW_MS, ts + WINDOW_MS - 1][shift]
                })
                .collect();
            let state = state_of(events);
            let alone: Vec<WindowAggregates> = times.iter().map(|&t| state.window_at(t)).collect();
            prop_assert_eq!(state.windows_at(&times), alone);
        }
    }
}
