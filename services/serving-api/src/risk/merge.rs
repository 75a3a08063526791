//! The lambda seam, pure: the figures of an answer from what was read of the speed view
//! (one customer's [`CustomerState`]) and of the batch view (the rows of one Postgres
//! snapshot), with no I/O, so every boundary is unit-tested here.
//!
//! For a range `[from, until]` that reaches past the batch watermark T_b, an additive
//! figure is `batch([from, until] ∩ (−∞, T_b]) ⊕ speed([from, until] ∩ (T_b, until])`:
//! - the batch part is the stored rows up to T_b. The batch layer cuts its events at
//!   `ts <= T_b` and T_b is hour-aligned, so the `batch_hourly` row of hour T_b holds
//!   exactly the events with `ts == T_b`, and no row is later; a day row of T_b's day
//!   holds that day's events up to T_b;
//! - the speed part is [`CustomerState::total_between`]`(T_b, from, until)`: the hourly
//!   increments of the hours from T_b on, minus the edge of hour T_b (`ts == T_b`, the
//!   batch's), minus the held events after `until` in `until`'s hour.
//!
//! So an event at `ts == T_b` is counted once (by the batch) and every other event once
//! by the side of T_b it falls on.

use std::collections::BTreeMap;

use fraud_speed_view::meta::Progress;
use fraud_speed_view::{CustomerState, HOUR_MS, WindowAggregates, WindowEvent};

/// One UTC day in ms.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// A sum and a count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sum: i64,
    pub count: i64,
}

impl Totals {
    pub fn plus(self, other: Totals) -> Totals {
        Totals {
            sum: self.sum.saturating_add(other.sum),
            count: self.count.saturating_add(other.count),
        }
    }
}

/// The start of the UTC hour holding `ms`.
pub fn hour_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

/// The start of the UTC day holding `ms`.
pub fn day_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(DAY_MS)
}

/// The ranges `/risk` answers for, at `now`:
/// - today: `[UTC day start, now]`;
/// - last 24 h: `[floor_hour(now) − 23 h, now]`: whole UTC hours, the current one
///   included. The views keep hourly figures, so this is the one "last 24 hours" they
///   can answer exactly (it spans between 23 h and 24 h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    pub now: i64,
    pub today_from: i64,
    pub last24h_from: i64,
}

impl Ranges {
    pub fn at(now: i64) -> Ranges {
        let ranges = Ranges {
            now,
            today_from: day_floor(now),
            last24h_from: hour_floor(now) - 23 * HOUR_MS,
        };
        // Today's start is a whole hour at most 23 h before floor_hour(now).
        debug_assert!(ranges.last24h_from <= ranges.today_from);
        ranges
    }
}

/// The speed part of `[from, until]`: the applied events with `T_b < ts` (any `ts`
/// when no batch run is known) and `from <= ts <= until`. `from` is hour-aligned.
pub fn speed_part(
    state: Option<&CustomerState>,
    watermark: Option<i64>,
    from: i64,
    until: i64,
) -> Totals {
    debug_assert_eq!(from, hour_floor(from), "ranges start on whole hours");
    let Some(state) = state else {
        return Totals::default();
    };
    if until < from {
        return Totals::default();
    }
    let (sum, count) = state.total_between(watermark, from, until);
    Totals { sum, count }
}

/// `W(c, now)`: the events with `now − 30 min < ts <= now` (zeros without a state).
pub fn window(state: Option<&CustomerState>, now: i64) -> WindowAggregates {
    state.map_or_else(WindowAggregates::default, |state| state.window_at(now))
}

/// `sum / count` rounded half away from zero to the minor unit; `None` for no events.
pub fn average(sum: i64, count: i64) -> Option<i64> {
    if count <= 0 {
        return None;
    }
    let (sum, count) = (i128::from(sum), i128::from(count));
    let quotient = sum / count;
    let remainder = sum % count;
    let rounded = if 2 * remainder.abs() >= count {
        quotient + sum.signum()
    } else {
        quotient
    };
    Some(i64::try_from(rounded).expect("an average lies between the amounts"))
}

/// How far behind now the speed view may be, from the progress each partition last
/// reported in the meta key (about every second): a partition with nothing left to
/// apply (`behind == 0`) is current as of its report's time; one that is behind, as of
/// the ingest timestamp of the last record it applied. The lag is `now` minus the
/// earliest of these, at least 0. Partitions that have not reported (a partition the
/// speed layer has never had a position in, such as one without records) or that are
/// behind without having applied anything cannot be told and are left out; `None`
/// when no partition can be told.
pub fn speed_lag_ms(progress: &BTreeMap<i32, Progress>, now: i64) -> Option<i64> {
    let earliest = progress
        .values()
        .filter_map(|report| {
            if report.behind == 0 {
                Some(report.written_at)
            } else {
                report.last_record_ts
            }
        })
        .min()?;
    Some(now.saturating_sub(earliest).max(0))
}

/// A day of the batch view (`batch_daily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDay {
    /// The day's start, UTC ms.
    pub day: i64,
    pub sum: i64,
    pub count: i64,
    pub max: i64,
    pub distinct_vendors: i64,
    pub peak_sum: i64,
    pub peak_count: i64,
    pub peak_end: i64,
}

/// Which views a day's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The day ended at or before T_b: the batch alone.
    Batch,
    /// The day started after T_b (or no batch run is known): the speed layer alone.
    Speed,
    /// T_b falls inside the day: the batch up to T_b, the speed layer after it.
    Both,
}

/// The peak 30-minute window of a closed day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    pub sum: i64,
    pub count: i64,
    pub end: i64,
}

/// One day of `/daily`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergedDay {
    pub day: i64,
    pub source: Source,
    pub totals: Totals,
    /// Only when exact (see [`merge_day`]).
    pub max: Option<i64>,
    pub distinct_vendors: Option<i64>,
    /// Only for days the batch has closed.
    pub peak: Option<Peak>,
}

/// Day `day` (its start) merged as of `now`: the batch's row (`batch`, cut at T_b) ⊕
/// the speed part of `[day, min(day end, now)]`. `None` for a day with nothing in it (or
/// that has not started).
///
/// `max` and `distinctVendors` are exact only where the events are known one by one:
/// from the batch's row when the speed part is empty; from the events the speed state
/// still holds when every event of the speed part is held (their count equals the
/// increments'), and then `max` merges with the batch's too, while distinct vendors do
/// not (the batch keeps no per-day vendor list to unite with). Otherwise they are
/// `None`. The peak is given for closed days only (day end <= T_b): before that the
/// batch has not seen the whole day and the speed layer keeps no peaks.
pub fn merge_day(
    day: i64,
    now: i64,
    watermark: Option<i64>,
    batch: Option<&BatchDay>,
    state: Option<&CustomerState>,
) -> Option<MergedDay> {
    let day_end = day + DAY_MS;
    if day > now {
        return None;
    }
    let until = now.min(day_end - 1);
    let source = match watermark {
        Some(tb) if day_end <= tb => Source::Batch,
        Some(tb) if day <= tb => Source::Both,
        _ => Source::Speed,
    };
    // Rows of days the batch has not reached are not read (none should exist).
    let batch = batch.filter(|_| source != Source::Speed);
    let batch_totals = batch.map_or(Totals::default(), |row| Totals {
        sum: row.sum,
        count: row.count,
    });
    let speed = if source == Source::Batch {
        Totals::default()
    } else {
        speed_part(state, watermark, day, until)
    };
    let totals = batch_totals.plus(speed);
    if totals.count == 0 {
        return None;
    }
    // The speed part's events, if the state still holds every one of them.
    let held: Option<Vec<&WindowEvent>> = state.and_then(|state| {
        let events: Vec<_> = state
            .events
            .iter()
            .filter(|event| {
                watermark.is_none_or(|tb| event.ts > tb) && day <= event.ts && event.ts <= until
            })
            .collect();
        (events.len() as i64 == speed.count).then_some(events)
    });
    let (max, distinct_vendors) = if speed.count == 0 {
        (
            batch.map(|row| row.max),
            batch.map(|row| row.distinct_vendors),
        )
    } else {
        match held {
            Some(events) => {
                let held_max = events.iter().map(|event| event.amount).max();
                let max = held_max.map(|m| batch.map_or(m, |row| row.max.max(m)));
                let distinct = if batch.is_none_or(|row| row.count == 0) {
                    let mut vendors: Vec<[u8; 8]> = events.iter().map(|e| e.vendor).collect();
                    vendors.sort_unstable();
                    vendors.dedup();
                    Some(vendors.len() as i64)
                } else {
                    None
                };
                (max, distinct)
            }
            None => (None, None),
        }
    };
    let peak = match (source, batch) {
        (Source::Batch, Some(row)) => Some(Peak {
            sum: row.peak_sum,
            count: row.peak_count,
            end: row.peak_end,
        }),
        _ => None,
    };
    Some(MergedDay {
        day,
        source,
        totals,
        max,
        distinct_vendors,
        peak,
    })
}

#[cfg(test)]
mod tests {
    use fraud_speed_view::{Generation, HourIncrement};

    use super::*;

    const MINUTE: i64 = 60_000;
    /// 2026-11-25T00:00:00Z.
    const DAY: i64 = 1_795_564_800_000;

    fn event(ts: i64, amount: i64, vendor: u8) -> WindowEvent {
        WindowEvent {
            ts,
            amount,
            vendor: [vendor; 8],
            transaction: (ts as u64).to_le_bytes(),
            vendor_seen_before: Some(false),
        }
    }

    /// A state as the speed layer's writer leaves it after applying `events` (none trimmed).
    fn state(events: Vec<WindowEvent>) -> CustomerState {
        let mut hours: Vec<HourIncrement> = Vec::new();
        for e in &events {
            let hour = hour_floor(e.ts);
            let index = match hours.iter().position(|h| h.hour == hour) {
                Some(index) => index,
                None => {
                    hours.push(HourIncrement {
                        hour,
                        sum: 0,
                        count: 0,
                        edge_sum: 0,
                        edge_count: 0,
                    });
                    hours.len() - 1
                }
            };
            let entry = &mut hours[index];
            entry.sum += e.amount;
            entry.count += 1;
            if e.ts == hour {
                entry.edge_sum += e.amount;
                entry.edge_count += 1;
            }
        }
        hours.sort_by_key(|h| h.hour);
        CustomerState {
            generation: Generation::from_bytes([1; 8]),
            last_offset: 0,
            clock: events.iter().map(|e| e.ts).max(),
            events,
            hours,
        }
    }

    #[test]
    fn ranges_are_whole_hours_and_the_day() {
        let now = DAY + 5 * HOUR_MS + 17 * MINUTE + 3;
        let ranges = Ranges::at(now);
        assert_eq!(ranges.today_from, DAY);
        assert_eq!(ranges.last24h_from, DAY + 5 * HOUR_MS - 23 * HOUR_MS);
        let at_midnight = Ranges::at(DAY);
        assert_eq!(at_midnight.today_from, DAY);
        assert_eq!(at_midnight.last24h_from, DAY - 23 * HOUR_MS);
    }

    #[test]
    fn averages_round_half_away_from_zero() {
        assert_eq!(average(0, 0), None);
        assert_eq!(average(10, 4), Some(3)); // 2.5
        assert_eq!(average(9, 4), Some(2)); // 2.25
        assert_eq!(average(11, 4), Some(3)); // 2.75
        assert_eq!(average(-10, 4), Some(-3));
        assert_eq!(average(-9, 4), Some(-2));
        assert_eq!(average(7, 1), Some(7));
        assert_eq!(average(i64::MAX, 2), Some(i64::MAX / 2 + 1));
    }

    #[test]
    fn the_seam_counts_an_event_at_the_watermark_once() {
        let tb = DAY + 3 * HOUR_MS;
        // The batch has everything up to and including tb; the speed layer has applied
        // everything (its hours from before tb are ignored).
        let events = vec![
            event(tb - 1, 1, 1),
            event(tb, 10, 1),
            event(tb, 100, 2),
            event(tb + 1, 1_000, 1),
            event(tb + HOUR_MS, 10_000, 3),
            event(tb + HOUR_MS + 5 * MINUTE, 100_000, 3),
        ];
        let speed = state(events);
        let now = tb + HOUR_MS + MINUTE;
        let part = speed_part(Some(&speed), Some(tb), DAY, now);
        // After tb and up to now: tb + 1 and tb + 1 h; not the one after now.
        assert_eq!(
            part,
            Totals {
                sum: 11_000,
                count: 2
            }
        );
        // Without a batch run the speed layer answers for all it has.
        assert_eq!(
            speed_part(Some(&speed), None, DAY, now),
            Totals {
                sum: 11_111,
                count: 5
            }
        );
        assert_eq!(speed_part(None, Some(tb), DAY, now), Totals::default());
    }

    #[test]
    fn lag_is_the_oldest_partition_that_can_be_told() {
        let mut progress = BTreeMap::new();
        let report = |written_at, behind, last| Progress {
            written_at,
            behind,
            last_record_ts: last,
        };
        assert_eq!(speed_lag_ms(&progress, 10_000), None);
        progress.insert(0, report(9_000, 0, Some(1)));
        assert_eq!(speed_lag_ms(&progress, 10_000), Some(1_000));
        progress.insert(1, report(9_500, 3, Some(7_000)));
        assert_eq!(speed_lag_ms(&progress, 10_000), Some(3_000));
        progress.insert(1, report(9_500, 3, None));
        assert_eq!(speed_lag_ms(&progress, 10_000), Some(1_000));
        progress.insert(1, report(9_500, 0, None));
        assert_eq!(speed_lag_ms(&progress, 10_000), Some(1_000));
        // Reports from a clock ahead of ours are no lag.
        assert_eq!(speed_lag_ms(&progress, 8_000), Some(0));
    }

    fn batch_day(day: i64, sum: i64, count: i64, max: i64, vendors: i64) -> BatchDay {
        BatchDay {
            day,
            sum,
            count,
            max,
            distinct_vendors: vendors,
            peak_sum: sum,
            peak_count: count,
            peak_end: day + HOUR_MS,
        }
    }

    #[test]
    fn a_closed_day_is_the_batch_alone_with_its_peak() {
        let tb = DAY + 2 * HOUR_MS;
        let yesterday = DAY - DAY_MS;
        let row = batch_day(yesterday, 500, 2, 400, 2);
        // The speed state still holds yesterday's hours: they are the batch's.
        let speed = state(vec![event(yesterday + 5, 100, 1), event(DAY + 1, 7, 1)]);
        let merged = merge_day(yesterday, tb + 1, Some(tb), Some(&row), Some(&speed)).unwrap();
        assert_eq!(merged.source, Source::Batch);
        assert_eq!(merged.totals, Totals { sum: 500, count: 2 });
        assert_eq!(merged.max, Some(400));
        assert_eq!(merged.distinct_vendors, Some(2));
        assert_eq!(merged.peak.unwrap().sum, 500);
        // A day closed exactly at tb (tb at midnight) is closed.
        let at_midnight = merge_day(yesterday, DAY + 1, Some(DAY), Some(&row), None).unwrap();
        assert_eq!(at_midnight.source, Source::Batch);
    }

    #[test]
    fn the_seam_day_merges_and_gives_max_only_when_exact() {
        let tb = DAY + 2 * HOUR_MS;
        let now = tb + 10 * MINUTE;
        let row = batch_day(DAY, 300, 2, 200, 2);
        let speed = state(vec![
            event(DAY + 5, 100, 1),
            event(tb - 1, 200, 2),
            event(tb, 5, 3),
            event(tb + 1, 250, 3),
            event(tb + 11 * MINUTE, 1, 4),
        ]);
        let merged = merge_day(DAY, now, Some(tb), Some(&row), Some(&speed)).unwrap();
        assert_eq!(merged.source, Source::Both);
        assert_eq!(merged.totals, Totals { sum: 550, count: 3 });
        // Every speed event is held: max merges; vendors cannot be united.
        assert_eq!(merged.max, Some(250));
        assert_eq!(merged.distinct_vendors, None);
        assert_eq!(merged.peak, None);

        // Nothing after tb: the batch's row is exact.
        let quiet = state(vec![event(tb, 5, 3)]);
        let merged = merge_day(DAY, now, Some(tb), Some(&row), Some(&quiet)).unwrap();
        assert_eq!(merged.totals.count, 2);
        assert_eq!(merged.max, Some(200));
        assert_eq!(merged.distinct_vendors, Some(2));

        // An event trimmed from the held ones: nothing is exact but the totals.
        let mut trimmed = speed.clone();
        trimmed.events.retain(|e| e.ts != tb + 1);
        let merged = merge_day(DAY, now, Some(tb), Some(&row), Some(&trimmed)).unwrap();
        assert_eq!(merged.totals.sum, 550);
        assert_eq!(merged.max, None);
        assert_eq!(merged.distinct_vendors, None);
    }

    #[test]
    fn a_day_after_the_watermark_is_the_speed_layers() {
        let tb = DAY - 2 * HOUR_MS;
        let now = DAY + 30 * MINUTE;
        let speed = state(vec![
            event(tb + 1, 1, 1),
            event(DAY, 20, 1),
            event(DAY + MINUTE, 30, 2),
            event(DAY + 31 * MINUTE, 40, 2),
        ]);
        let merged = merge_day(DAY, now, Some(tb), None, Some(&speed)).unwrap();
        assert_eq!(merged.source, Source::Speed);
        assert_eq!(merged.totals, Totals { sum: 50, count: 2 });
        assert_eq!(merged.max, Some(30));
        assert_eq!(merged.distinct_vendors, Some(2));
        // Yesterday holds the seam.
        let yesterday = merge_day(DAY - DAY_MS, now, Some(tb), None, Some(&speed)).unwrap();
        assert_eq!(yesterday.source, Source::Both);
        assert_eq!(yesterday.totals, Totals { sum: 1, count: 1 });
        // Nothing at all, or a day not begun: omitted.
        assert_eq!(merge_day(DAY - 3 * DAY_MS, now, Some(tb), None, None), None);
        assert_eq!(
            merge_day(DAY + DAY_MS, now, Some(tb), None, Some(&speed)),
            None
        );
    }
}
