//! The speed view against real Redis: the state writer and the Rust reading of its
//! state checked against a naive model over random streams, and the documented edges
//! (window boundary, watermark and its edge, generations, expiry, the meta key).

mod support;

use fraud_speed_view::meta::{Progress, meta_key};
use fraud_speed_view::{
    CustomerState, Generation, HOUR_MS, HourIncrement, PartitionStatus, Record, RecordOutcome,
    SpeedMeta, StateWriter, WINDOW_MS, WindowAggregates, WindowEvent, customer_key,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use support::*;

// ---------------------------------------------------------------------------------------
// The writer against the naive model.
// ---------------------------------------------------------------------------------------

/// How a record's event time is drawn.
#[derive(Debug, Clone)]
enum Shape {
    /// The customer's base plus the jitter.
    Jittered,
    /// The start of the hour holding the jittered time: exactly on a boundary.
    OnHour,
    /// Exactly 30 minutes after the customer's previous record.
    HalfHourAfterPrevious,
    /// Exactly 30 minutes before the customer's previous record.
    HalfHourBeforePrevious,
    /// The same time as the previous record (another transaction).
    SameAsPrevious,
    /// Exactly the retention after the customer's previous record: if that was the
    /// clock, the previous record ends up exactly at `clock - retention`.
    RetentionAfterPrevious,
    /// An exact copy (transaction, time, amount, vendor) of one of the customer's recent
    /// records, at a new offset.
    Duplicate(Index),
}

#[derive(Debug, Clone)]
struct RawRecord {
    customer: Index,
    offset_gap: i64,
    /// How far the customer's base time rises before this record.
    advance: i64,
    jitter: i64,
    shape: Shape,
    amount: i64,
    vendor: u8,
}

#[derive(Debug, Clone)]
struct Scenario {
    customers: usize,
    start: i64,
    first_offset: i64,
    raw: Vec<RawRecord>,
    /// Drives the batch splits, replays, watermarks and query points.
    seed: u64,
}

impl Scenario {
    /// Each customer's records, in offset order.
    fn streams(&self) -> Vec<Vec<Record>> {
        let mut streams: Vec<Vec<Record>> = vec![Vec::new(); self.customers];
        let mut bases = vec![self.start; self.customers];
        let mut offset = self.first_offset;
        for (i, raw) in self.raw.iter().enumerate() {
            let c = raw.customer.index(self.customers);
            offset += raw.offset_gap;
            bases[c] += raw.advance;
            let jittered = bases[c] + raw.jitter;
            let stream = &mut streams[c];
            let previous = stream.last().map(|record| record.ts);
            let fresh = |ts: i64| record(offset, ts, raw.amount, raw.vendor, &format!("txn-{i}"));
            let next = match &raw.shape {
                Shape::Jittered => fresh(jittered),
                Shape::OnHour => fresh(hour_of(jittered)),
                Shape::HalfHourAfterPrevious => fresh(previous.map_or(jittered, |p| p + WINDOW_MS)),
                Shape::HalfHourBeforePrevious => {
                    fresh(previous.map_or(jittered, |p| p - WINDOW_MS))
                }
                Shape::SameAsPrevious => fresh(previous.unwrap_or(jittered)),
                Shape::RetentionAfterPrevious => {
                    fresh(previous.map_or(jittered, |p| p + TUNING.retention_ms))
                }
                Shape::Duplicate(pick) if !stream.is_empty() => {
                    let recent = stream.len().saturating_sub(12);
                    let original = stream[recent + pick.index(stream.len() - recent)];
                    Record { offset, ..original }
                }
                Shape::Duplicate(_) => fresh(jittered),
            };
            stream.push(next);
        }
        streams
    }
}

fn raw_record() -> impl Strategy<Value = RawRecord> {
    let advance = prop_oneof![
        30 => 0..=4 * MINUTE_MS,
        8 => 0..=20 * MINUTE_MS,
        1 => HOUR_MS..=3 * DAY_MS,
    ];
    let jitter = prop_oneof![
        3 => -5 * MINUTE_MS..=5 * MINUTE_MS,
        1 => -45 * MINUTE_MS..=45 * MINUTE_MS,
    ];
    let shape = prop_oneof![
        10 => Just(Shape::Jittered),
        2 => Just(Shape::OnHour),
        2 => Just(Shape::HalfHourAfterPrevious),
        1 => Just(Shape::HalfHourBeforePrevious),
        1 => Just(Shape::SameAsPrevious),
        1 => Just(Shape::RetentionAfterPrevious),
        3 => any::<Index>().prop_map(Shape::Duplicate),
    ];
    let amount = prop_oneof![1 => 1..=100i64, 3 => 1..=1_000_000_000i64];
    (
        any::<Index>(),
        1..=3i64,
        advance,
        jitter,
        shape,
        amount,
        0..4u8,
    )
        .prop_map(
            |(customer, offset_gap, advance, jitter, shape, amount, vendor)| RawRecord {
                customer,
                offset_gap,
                advance,
                jitter,
                shape,
                amount,
                vendor,
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1..=3usize,
        0..DAY_MS,
        0..1000i64,
        prop::collection::vec(raw_record(), 0..=200),
        any::<u64>(),
    )
        .prop_map(|(customers, start, first_offset, raw, seed)| Scenario {
            customers,
            start: JAN_1_2025 + start,
            first_offset,
            raw,
            seed,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_writer_agrees_with_the_naive_model(scenario in scenario()) {
        runtime().block_on(check_scenario(scenario))?;
    }
}

async fn check_scenario(scenario: Scenario) -> Result<(), TestCaseError> {
    let mut connection = shared_connection().await;
    let prefix = TestPrefix::new("speed-view-model");
    let result = drive(&mut connection, &prefix, &scenario).await;
    delete_prefix(&mut connection, &prefix).await;
    result
}

fn sorted_events(events: impl IntoIterator<Item = WindowEvent>) -> Vec<WindowEvent> {
    let mut events: Vec<WindowEvent> = events.into_iter().collect();
    events.sort_by_key(|event| (event.ts, event.transaction, event.amount, event.vendor));
    events
}

/// The stored state is exactly the model's: offset, clock, the events inside the
/// retention, the hours from the watermark on.
fn check_state(
    state: &CustomerState,
    model: &Model,
    generation: Generation,
    watermark: Option<i64>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(state.generation, generation);
    prop_assert_eq!(state.last_offset, model.last_offset.unwrap_or(-1));
    prop_assert_eq!(state.clock, model.clock);
    // Every event inside the retention, and past it at most applied events not trimmed
    // yet (the writer trims in bulk, a quarter of the retention late at the most).
    let floor = model
        .clock
        .map_or(i64::MIN, |clock| clock - model.retention);
    let (inside, past): (Vec<WindowEvent>, Vec<WindowEvent>) =
        state.events.iter().partition(|event| event.ts > floor);
    prop_assert_eq!(
        sorted_events(inside),
        sorted_events(model.kept_events()),
        "kept events"
    );
    for event in past {
        prop_assert!(
            event.ts > floor - model.retention / 4,
            "an event past the retention by more than the trim slack: {:?}",
            event
        );
        prop_assert!(
            model.applied_events().any(|applied| applied == event),
            "a held event that was never applied: {:?}",
            event
        );
    }
    prop_assert_eq!(&state.hours, &model.hours(watermark), "hourly increments");
    Ok(())
}

/// Windows and totals read from the state equal the model's wherever they are exact.
/// `watermark` is the one the state was last written with.
fn check_queries(
    state: &CustomerState,
    model: &Model,
    watermark: Option<i64>,
    rng: &mut SplitMix,
    at_every_event: bool,
) -> Result<(), TestCaseError> {
    let Some(clock) = model.clock else {
        prop_assert_eq!(state.window_at(0), WindowAggregates::default());
        return Ok(());
    };
    let retention = model.retention;
    // The window is exact from here on.
    let exact_window = clock - (retention - WINDOW_MS);
    let mut times = vec![
        clock,
        clock - 1,
        clock + 1,
        clock + WINDOW_MS - 1,
        clock + WINDOW_MS,
        exact_window,
    ];
    for _ in 0..4 {
        times.push(rng.between(exact_window, clock + 2 * HOUR_MS));
    }
    if at_every_event {
        for event in &model.applied {
            for t in [
                event.ts,
                event.ts - 1,
                event.ts + WINDOW_MS - 1,
                event.ts + WINDOW_MS,
            ] {
                if t >= exact_window {
                    times.push(t);
                }
            }
        }
    }
    for t in times {
        prop_assert_eq!(
            state.window_at(t),
            model.window_at(t),
            "window at {} (clock {})",
            t,
            clock
        );
    }

    // Totals are exact for `until >= clock - retention`; hours before the watermark the
    // state was written with are gone (the batch has them).
    let mut untils = vec![
        clock,
        clock + 1 + rng.between(0, 2 * HOUR_MS),
        clock - retention,
        rng.between(clock - retention, clock + 2 * HOUR_MS),
    ];
    if at_every_event {
        for event in model.kept() {
            for until in [event.ts, event.ts - 1] {
                if until >= clock - retention {
                    untils.push(until);
                }
            }
        }
    }
    let first_applied = model
        .applied
        .iter()
        .map(|event| event.ts)
        .min()
        .unwrap_or(clock);
    let back = rng.between(0, 6) * HOUR_MS;
    let froms = [
        day_of(clock),
        hour_of(clock),
        hour_of(clock) - back,
        hour_of(clock - retention),
        day_of(first_applied),
        hour_of(first_applied),
    ];
    let mut afters = vec![
        None,
        Some(hour_of(clock)),
        Some(hour_of(clock) - rng.between(1, 4) * HOUR_MS),
        Some(hour_of(clock - retention)),
    ];
    if watermark.is_some() {
        afters.push(watermark);
    }
    for &until in &untils {
        for &from in &froms {
            for &after in &afters {
                let present_from = watermark.map_or(from, |watermark| from.max(watermark));
                prop_assert_eq!(
                    state.total_between(after, from, until),
                    model.total(after, present_from, until),
                    "total_between(after {:?}, from {}, until {}), clock {}, watermark {:?}",
                    after,
                    from,
                    until,
                    clock,
                    watermark
                );
            }
        }
    }
    Ok(())
}

async fn drive(
    connection: &mut ConnectionManager,
    prefix: &str,
    scenario: &Scenario,
) -> Result<(), TestCaseError> {
    // Half the scenarios with a writer that keeps copies of the states it wrote, and
    // now and then a batch written by another writer (as a zombie or a partition's new
    // owner would), which leaves those copies stale.
    let writer = if scenario.seed.is_multiple_of(2) {
        StateWriter::new().with_copies(1_000, std::time::Duration::from_secs(3_600))
    } else {
        StateWriter::new()
    };
    let other = StateWriter::new();
    let generation = Generation::random();
    let streams = scenario.streams();
    let n = scenario.customers;
    let keys: Vec<String> = (0..n)
        .map(|c| customer_key(prefix, &format!("customer-{c}")))
        .collect();
    let mut models = vec![Model::new(TUNING.retention_ms); n];
    let mut last_state: Vec<Option<CustomerState>> = vec![None; n];
    let mut written_with: Vec<Option<i64>> = vec![None; n];
    let mut sent = vec![0usize; n];
    let mut rng = SplitMix(scenario.seed);
    let mut watermark: Option<i64> = None;

    while (0..n).any(|c| sent[c] < streams[c].len()) {
        // Now and then a batch run moves the watermark (never back).
        if rng.below(4) == 0
            && let Some(reference) = models.iter().filter_map(|model| model.clock).max()
        {
            let candidate = hour_of(reference) - rng.between(0, 4) * HOUR_MS;
            watermark = Some(watermark.map_or(candidate, |w| w.max(candidate)));
        }
        let mut runs: Vec<(String, Vec<Record>)> = Vec::new();
        let mut owners = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let c = rng.below(n);
            let stream = &streams[c];
            let choice = rng.below(10);
            let run = if sent[c] > 0 && (choice < 2 || sent[c] == stream.len()) {
                // A replay of an earlier slice.
                let from = rng.below(sent[c]);
                let until = from + 1 + rng.below(sent[c] - from);
                stream[from..until].to_vec()
            } else if sent[c] > 0 && choice < 3 {
                // A replay running on into new records (a restart from an older commit).
                let from = rng.below(sent[c]);
                let until = (sent[c] + 1 + rng.below(6)).min(stream.len());
                sent[c] = until;
                stream[from..until].to_vec()
            } else if sent[c] < stream.len() {
                // Now and then a long run, as a hot customer's batch: the writer
                // indexes the held events for runs of 32 records or more.
                let length = if rng.below(4) == 0 {
                    32 + rng.below(24)
                } else {
                    1 + rng.below(8)
                };
                let until = (sent[c] + length).min(stream.len());
                let run = stream[sent[c]..until].to_vec();
                sent[c] = until;
                run
            } else {
                continue;
            };
            runs.push((keys[c].clone(), run));
            owners.push(c);
        }
        let this = if rng.below(5) == 0 { &other } else { &writer };
        let outcomes = this
            .apply(connection, generation, watermark, TUNING, &runs)
            .await
            .map_err(|error| TestCaseError::fail(format!("apply failed: {error}")))?;
        prop_assert_eq!(outcomes.len(), runs.len());
        for ((c, (_, run)), outcome) in owners.into_iter().zip(&runs).zip(outcomes) {
            let model = &mut models[c];
            let verdicts: Vec<RecordOutcome> =
                run.iter().map(|record| model.apply(record)).collect();
            prop_assert_eq!(
                &outcome.records,
                &verdicts,
                "each record's outcome in customer {}'s run {:?}",
                c,
                run
            );
            prop_assert_eq!(
                (
                    outcome.applied,
                    outcome.late,
                    outcome.duplicates,
                    outcome.replayed
                ),
                counts(&verdicts),
                "(applied, late, duplicates, replayed) of customer {}'s run {:?}: {:?}",
                c,
                run,
                verdicts
            );
            check_state(&outcome.state, model, generation, watermark)?;
            check_queries(&outcome.state, model, watermark, &mut rng, false)?;
            written_with[c] = watermark;
            last_state[c] = Some(outcome.state);
        }
    }

    // Replays of earlier slices, with the same watermark: counted, and change nothing.
    let mut runs = Vec::new();
    let mut owners = Vec::new();
    for c in 0..n {
        if streams[c].is_empty() {
            continue;
        }
        let from = rng.below(streams[c].len());
        let until = from + 1 + rng.below(streams[c].len() - from);
        runs.push((keys[c].clone(), streams[c][from..until].to_vec()));
        owners.push(c);
    }
    let outcomes = writer
        .apply(connection, generation, watermark, TUNING, &runs)
        .await
        .map_err(|error| TestCaseError::fail(format!("replay failed: {error}")))?;
    for ((c, (_, run)), outcome) in owners.into_iter().zip(&runs).zip(outcomes) {
        prop_assert_eq!(
            (
                outcome.applied,
                outcome.late,
                outcome.duplicates,
                outcome.replayed
            ),
            (0, 0, 0, run.len() as u64),
            "a replay of customer {}",
            c
        );
        let verdicts: Vec<RecordOutcome> =
            run.iter().map(|record| models[c].apply(record)).collect();
        prop_assert_eq!(
            &outcome.records,
            &verdicts,
            "each record's outcome in customer {}'s replay {:?}",
            c,
            run
        );
        let previous = last_state[c].as_ref().expect("written before");
        let expected_hours: Vec<HourIncrement> = previous
            .hours
            .iter()
            .copied()
            .filter(|hour| watermark.is_none_or(|w| hour.hour >= w))
            .collect();
        prop_assert_eq!(outcome.state.last_offset, previous.last_offset);
        prop_assert_eq!(outcome.state.clock, previous.clock);
        prop_assert_eq!(&outcome.state.events, &previous.events);
        prop_assert_eq!(&outcome.state.hours, &expected_hours);
        written_with[c] = watermark;
        last_state[c] = Some(outcome.state);
    }

    // What is stored is what the writer returned, and it expires by itself.
    for c in 0..n {
        let stored: Option<Vec<u8>> = connection.get(&keys[c]).await.map_err(fail)?;
        let Some(stored) = stored else {
            prop_assert!(last_state[c].is_none(), "customer {}'s key is missing", c);
            continue;
        };
        let state = CustomerState::decode(&stored).map_err(fail)?;
        prop_assert_eq!(Some(&state), last_state[c].as_ref());
        prop_assert_eq!(encode(&state, false), stored, "the documented layout");
        check_state(&state, &models[c], generation, written_with[c])?;
        check_queries(&state, &models[c], written_with[c], &mut rng, true)?;
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&keys[c])
            .query_async(connection)
            .await
            .map_err(fail)?;
        let limit = if state.hours.is_empty() {
            TUNING.idle_ttl_ms
        } else {
            TUNING.increments_ttl_ms
        };
        prop_assert!(0 < ttl && ttl <= limit, "PTTL {} (limit {})", ttl, limit);
    }
    Ok(())
}

fn fail(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

// ---------------------------------------------------------------------------------------
// Focused cases.
// ---------------------------------------------------------------------------------------

/// 2025-01-01T02:00:00Z.
const T0: i64 = JAN_1_2025 + 2 * HOUR_MS;

async fn apply(
    connection: &mut ConnectionManager,
    generation: Generation,
    watermark: Option<i64>,
    key: &str,
    records: Vec<Record>,
) -> fraud_speed_view::ApplyOutcome {
    apply_by(
        &StateWriter::new(),
        connection,
        generation,
        watermark,
        key,
        records,
    )
    .await
}

/// [`apply`] by `writer`.
async fn apply_by(
    writer: &StateWriter,
    connection: &mut ConnectionManager,
    generation: Generation,
    watermark: Option<i64>,
    key: &str,
    records: Vec<Record>,
) -> fraud_speed_view::ApplyOutcome {
    let mut outcomes = writer
        .apply(
            connection,
            generation,
            watermark,
            TUNING,
            &[(key.to_owned(), records)],
        )
        .await
        .expect("apply");
    assert_eq!(outcomes.len(), 1);
    outcomes.pop().expect("one outcome")
}

async fn pttl(connection: &mut ConnectionManager, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(connection)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn the_window_excludes_its_start_and_includes_its_end() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-window");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let t = T0 + 10 * MINUTE_MS;
    let outcome = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![
            record(1, t - WINDOW_MS, 1, 0, "at-start"),
            record(2, t - WINDOW_MS + 1, 10, 1, "just-after-start"),
            record(3, t, 100, 0, "at-end"),
            record(4, t + 1, 1000, 2, "after-end"),
        ],
    )
    .await;
    assert_eq!((outcome.applied, outcome.late), (4, 0));
    let state = outcome.state;
    assert_eq!(state.events.len(), 4, "all inside the retention");
    assert_eq!(
        state.window_at(t),
        WindowAggregates {
            sum: 110,
            count: 2,
            max: 100,
            distinct_vendors: 2
        },
        "t - 30 min is out, t - 30 min + 1 and t are in"
    );
    assert_eq!(
        state.window_at(t - 1),
        WindowAggregates {
            sum: 11,
            count: 2,
            max: 10,
            distinct_vendors: 2
        }
    );
    assert_eq!(
        state.window_at(t + 1),
        WindowAggregates {
            sum: 1100,
            count: 2,
            max: 1000,
            distinct_vendors: 2
        }
    );
    assert_eq!(
        state.window_at(t + WINDOW_MS),
        WindowAggregates {
            sum: 1000,
            count: 1,
            max: 1000,
            distinct_vendors: 1
        }
    );
    assert_eq!(
        state.window_at(t + WINDOW_MS + 1),
        WindowAggregates::default()
    );
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[tokio::test]
async fn late_and_duplicate_records_are_skipped_and_counted() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-skip");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let clock = T0 + 40 * MINUTE_MS;
    let first = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![
            record(1, clock, 5, 0, "a"),
            // clock - retention: late.
            record(2, clock - TUNING.retention_ms, 7, 0, "late"),
            // One ms later: applied (not in the window at the clock, but kept).
            record(3, clock - TUNING.retention_ms + 1, 11, 0, "b"),
            record(4, clock, 5, 0, "a"),
        ],
    )
    .await;
    assert_eq!(
        (first.applied, first.late, first.duplicates, first.replayed),
        (2, 1, 1, 0)
    );
    assert_eq!(
        first.state.last_offset, 4,
        "skipped records advance the offset"
    );
    // In a later call the duplicate is still recognised.
    let second = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![record(9, clock - TUNING.retention_ms + 1, 11, 0, "b")],
    )
    .await;
    assert_eq!(
        (
            second.applied,
            second.late,
            second.duplicates,
            second.replayed
        ),
        (0, 0, 1, 0)
    );
    assert_eq!(second.state.last_offset, 9);
    assert_eq!(second.state.events, first.state.events);
    assert_eq!(second.state.hours, first.state.hours);

    // One ms more on the clock puts "b" exactly at clock - retention: it is no longer
    // kept, and a copy of it is late.
    let third = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![
            record(10, clock + 1, 13, 1, "c"),
            record(11, clock - TUNING.retention_ms + 1, 11, 0, "b"),
        ],
    )
    .await;
    assert_eq!(
        (third.applied, third.late, third.duplicates, third.replayed),
        (1, 1, 0, 0)
    );
    assert_eq!(third.state.clock, Some(clock + 1));
    assert_eq!(
        third
            .state
            .total_between(None, hour_of(clock - TUNING.retention_ms), clock + 1),
        (29, 3),
        "the hours count \"b\", held or not"
    );

    // Trimmed in bulk: "b" goes once the clock is a quarter of the retention past it.
    let slack = TUNING.retention_ms / 4;
    let b = clock - TUNING.retention_ms + 1;
    let held = |outcome: &fraud_speed_view::ApplyOutcome| {
        let mut held: Vec<i64> = outcome.state.events.iter().map(|event| event.ts).collect();
        held.sort();
        held
    };
    let fourth = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![record(12, b + TUNING.retention_ms + slack - 1, 1, 1, "d")],
    )
    .await;
    assert!(held(&fourth).contains(&b), "not trimmed within the slack");
    let fifth = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![record(13, b + TUNING.retention_ms + slack, 1, 1, "e")],
    )
    .await;
    let fifth_clock = b + TUNING.retention_ms + slack;
    assert_eq!(
        held(&fifth),
        vec![clock, clock + 1, fifth_clock - 1, fifth_clock],
        "everything at or before the clock - retention trimmed at once"
    );
    assert_eq!(fifth.state.clock, Some(fifth_clock));
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[tokio::test]
async fn the_watermark_drops_earlier_hours_and_its_edge_belongs_to_the_batch() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-watermark");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let (h0, h1) = (T0, T0 + HOUR_MS);
    let first = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![
            record(1, h0 + 50 * MINUTE_MS, 1, 0, "a"),
            record(2, h1, 10, 0, "edge"),
            record(3, h1 + 1, 100, 0, "just-after-edge"),
            record(4, h1 + 10 * MINUTE_MS, 1000, 0, "d"),
        ],
    )
    .await;
    assert_eq!(first.applied, 4);
    assert_eq!(
        first.state.hours,
        vec![
            HourIncrement {
                hour: h0,
                sum: 1,
                count: 1,
                edge_sum: 0,
                edge_count: 0
            },
            HourIncrement {
                hour: h1,
                sum: 1110,
                count: 3,
                edge_sum: 10,
                edge_count: 1
            },
        ]
    );
    let clock = h1 + 10 * MINUTE_MS;
    assert_eq!(first.state.total_between(None, h0, clock), (1111, 4));

    // A batch run covered everything up to h1: the hours before it go.
    let second = apply(
        &mut connection,
        generation,
        Some(h1),
        &key,
        vec![record(5, h1 + 20 * MINUTE_MS, 10_000, 0, "e")],
    )
    .await;
    assert_eq!(second.applied, 1);
    assert_eq!(
        second.state.hours,
        vec![HourIncrement {
            hour: h1,
            sum: 11_110,
            count: 4,
            edge_sum: 10,
            edge_count: 1
        }]
    );
    let clock = h1 + 20 * MINUTE_MS;
    let state = second.state;
    // ts == T_b is the batch's; T_b + 1 is the speed layer's.
    assert_eq!(
        state.total_between(Some(h1), day_of(h1), clock),
        (11_100, 3)
    );
    assert_eq!(state.total_between(Some(h1), h1, h1), (0, 0));
    assert_eq!(state.total_between(Some(h1), h1, h1 + 1), (100, 1));
    // Without a watermark, the edge counts; h0 is gone either way.
    assert_eq!(state.total_between(None, h0, clock), (11_110, 4));
    assert_eq!(state.total_between(None, h1, h1), (10, 1));
    // `until` inside the hour: the held events after it are taken back out.
    assert_eq!(
        state.total_between(Some(h1), h1, h1 + 15 * MINUTE_MS),
        (1100, 2)
    );
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[tokio::test]
async fn another_generation_starts_from_empty() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-generation");
    let key = customer_key(&prefix, "c");
    let (old, new) = (Generation::random(), Generation::random());
    assert_ne!(old, new);
    let before = apply(
        &mut connection,
        old,
        None,
        &key,
        vec![
            record(10, T0 + 3 * HOUR_MS, 7, 0, "a"),
            record(11, T0 + 3 * HOUR_MS + MINUTE_MS, 8, 1, "b"),
        ],
    )
    .await;
    assert_eq!(before.applied, 2);
    assert_eq!(before.state.generation, old);

    // The same offsets and a time long before the old clock: the old state is absent,
    // so nothing is replayed, late or a duplicate.
    let after = apply(
        &mut connection,
        new,
        None,
        &key,
        vec![
            record(10, T0, 7, 0, "a"),
            record(11, T0 + MINUTE_MS, 8, 1, "b"),
        ],
    )
    .await;
    assert_eq!(
        (after.applied, after.late, after.duplicates, after.replayed),
        (2, 0, 0, 0)
    );
    let state = after.state;
    assert_eq!(state.generation, new);
    assert_eq!(state.last_offset, 11);
    assert_eq!(state.clock, Some(T0 + MINUTE_MS));
    assert_eq!(
        state.events.iter().map(|e| e.ts).collect::<Vec<_>>(),
        vec![T0, T0 + MINUTE_MS]
    );
    assert_eq!(
        state.hours,
        vec![HourIncrement {
            hour: T0,
            sum: 15,
            count: 2,
            edge_sum: 7,
            edge_count: 1
        }]
    );
    let stored: Vec<u8> = connection.get(&key).await.expect("GET");
    assert_eq!(CustomerState::decode(&stored).expect("decode"), state);

    // A writer still on the old generation (a zombie) does not see the new state either.
    let zombie = apply(
        &mut connection,
        old,
        None,
        &key,
        vec![record(5, T0 + 10 * HOUR_MS, 1, 0, "z")],
    )
    .await;
    assert_eq!((zombie.applied, zombie.replayed), (1, 0));
    assert_eq!(zombie.state.generation, old);
    assert_eq!(zombie.state.events.len(), 1);
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[tokio::test]
async fn the_key_expires_sooner_once_no_hours_are_left() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-ttl");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let with_hours = apply(
        &mut connection,
        generation,
        Some(T0),
        &key,
        vec![record(1, T0 + 5 * MINUTE_MS, 3, 0, "a")],
    )
    .await;
    assert_eq!(with_hours.state.hours.len(), 1);
    let ttl = pttl(&mut connection, &key).await;
    assert!(
        TUNING.idle_ttl_ms < ttl && ttl <= TUNING.increments_ttl_ms,
        "PTTL {ttl} with hours held"
    );

    // The batch covers that hour: nothing left that outlives the retention.
    let without_hours = apply(
        &mut connection,
        generation,
        Some(T0 + HOUR_MS),
        &key,
        vec![record(2, T0 + 6 * MINUTE_MS, 4, 0, "b")],
    )
    .await;
    assert_eq!(without_hours.applied, 1);
    assert!(without_hours.state.hours.is_empty());
    assert_eq!(without_hours.state.events.len(), 2, "the events stay");
    let ttl = pttl(&mut connection, &key).await;
    assert!(
        0 < ttl && ttl <= TUNING.idle_ttl_ms,
        "PTTL {ttl} with no hours"
    );

    // An empty run rewrites the state as it is (and refreshes the expiry).
    let empty = apply(
        &mut connection,
        generation,
        Some(T0 + HOUR_MS),
        &key,
        Vec::new(),
    )
    .await;
    assert_eq!(empty.state, without_hours.state);

    // An empty run on a new key: a state with nothing applied yet, no clock.
    let fresh_key = customer_key(&prefix, "fresh");
    let fresh = apply(&mut connection, generation, None, &fresh_key, Vec::new()).await;
    assert_eq!(
        fresh.state,
        CustomerState {
            generation,
            last_offset: -1,
            clock: None,
            events: Vec::new(),
            hours: Vec::new(),
        }
    );
    let ttl = pttl(&mut connection, &fresh_key).await;
    assert!(0 < ttl && ttl <= TUNING.idle_ttl_ms, "PTTL {ttl}");
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 2);
}

#[tokio::test]
async fn sums_beyond_2_pow_53_fail_and_change_nothing() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-exact");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let half = 1i64 << 52;
    let first = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![record(1, T0 + MINUTE_MS, half, 0, "a")],
    )
    .await;
    assert_eq!(first.state.hours[0].sum, half);
    let before: Vec<u8> = connection.get(&key).await.expect("GET");

    let result = StateWriter::new()
        .apply(
            &mut connection,
            generation,
            None,
            TUNING,
            &[(
                key.clone(),
                vec![record(2, T0 + 2 * MINUTE_MS, half, 0, "b")],
            )],
        )
        .await;
    let error = result.expect_err("2^53 minor units in one hour cannot be exact");
    assert!(error.to_string().contains("2^53"), "{error}");
    let after: Vec<u8> = connection.get(&key).await.expect("GET");
    assert_eq!(after, before, "a failed run writes nothing");
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[tokio::test]
async fn the_write_script_is_loaded_when_redis_does_not_have_it() {
    // A private server: flushing scripts must not disturb anyone else.
    let mut server = fraud_testkit::PrivateRedis::new();
    server.start();
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client
        .get_connection_manager()
        .await
        .expect("connect to the private redis");
    let script = StateWriter::new();
    let generation = Generation::random();
    let key = customer_key("noscript:", "c");
    for (offset, flush) in [(1, false), (2, true)] {
        if flush {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut connection)
                .await
                .expect("SCRIPT FLUSH");
        }
        let outcomes = script
            .apply(
                &mut connection,
                generation,
                None,
                TUNING,
                &[(
                    key.clone(),
                    vec![record(offset, T0 + offset, 1, 0, &format!("t{offset}"))],
                )],
            )
            .await
            .expect("apply loads the script");
        assert_eq!(outcomes[0].applied, 1);
        assert_eq!(outcomes[0].state.last_offset, offset);
    }
}

/// A state in the layout `state` documents: `W3`, or with `legacy` the layout `W2`
/// of speed layers before it (no vendor byte).
fn encode(state: &CustomerState, legacy: bool) -> Vec<u8> {
    let mut out = if legacy {
        b"W2".to_vec()
    } else {
        b"W3".to_vec()
    };
    out.extend_from_slice(state.generation.as_bytes());
    out.extend_from_slice(&state.last_offset.to_le_bytes());
    out.extend_from_slice(&state.clock.unwrap_or(0).to_le_bytes());
    out.push(u8::from(state.clock.is_some()));
    let oldest = state.events.iter().map(|event| event.ts).min();
    out.extend_from_slice(&oldest.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(state.events.len() as u32).to_le_bytes());
    out.extend_from_slice(&(state.hours.len() as u32).to_le_bytes());
    for hour in &state.hours {
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
    for event in &state.events {
        out.extend_from_slice(&event.ts.to_le_bytes());
        out.extend_from_slice(&event.amount.to_le_bytes());
        out.extend_from_slice(&event.vendor);
        out.extend_from_slice(&event.transaction);
        if !legacy {
            out.push(match event.vendor_seen_before {
                Some(true) => b's',
                Some(false) => b'n',
                None => b'?',
            });
        }
    }
    out
}

#[test]
fn decode_reads_the_layout_and_rejects_anything_else() {
    let state = CustomerState {
        generation: Generation::from_bytes(*b"gen-0001"),
        last_offset: 77,
        clock: Some(T0 + 5),
        events: vec![WindowEvent {
            ts: T0 + 5,
            amount: 12,
            vendor: vendor(1),
            transaction: fraud_speed_view::digest("t"),
            vendor_seen_before: Some(true),
        }],
        hours: vec![HourIncrement {
            hour: T0,
            sum: 30,
            count: 2,
            edge_sum: 18,
            edge_count: 1,
        }],
    };
    let bytes = encode(&state, false);
    assert_eq!(bytes.len(), 43 + 40 + 33);
    assert_eq!(CustomerState::decode(&bytes), Ok(state.clone()));
    for (byte, seen) in [(b'n', Some(false)), (b'?', None)] {
        let mut other = bytes.clone();
        *other.last_mut().unwrap() = byte;
        let decoded = CustomerState::decode(&other).expect("a vendor byte it knows");
        assert_eq!(decoded.events[0].vendor_seen_before, seen);
    }
    let mut unknown_byte = bytes.clone();
    *unknown_byte.last_mut().unwrap() = b'x';
    assert!(
        CustomerState::decode(&unknown_byte).is_err(),
        "a vendor byte it does not know"
    );
    // The layout before the vendor byte is still read, the byte unknown.
    let legacy = encode(&state, true);
    assert_eq!(legacy.len(), 43 + 40 + 32);
    let read = CustomerState::decode(&legacy).expect("a W2 state");
    assert_eq!(read.events[0].vendor_seen_before, None);
    assert_eq!(read.events[0].ts, state.events[0].ts);
    assert_eq!(
        (read.last_offset, read.clock),
        (state.last_offset, state.clock)
    );
    let mut legacy_longer = legacy.clone();
    legacy_longer.push(b's');
    assert!(
        CustomerState::decode(&legacy_longer).is_err(),
        "a W2 state with W3's event size"
    );

    let mut longer = bytes.clone();
    longer.push(0);
    assert!(CustomerState::decode(&longer).is_err(), "a byte too many");
    assert!(
        CustomerState::decode(&bytes[..bytes.len() - 1]).is_err(),
        "a byte short"
    );
    assert!(
        CustomerState::decode(&bytes[..20]).is_err(),
        "a header short"
    );
    let mut magic = bytes.clone();
    magic[1] = b'1';
    assert!(CustomerState::decode(&magic).is_err(), "another encoding");
    let mut oldest = bytes.clone();
    oldest[27] ^= 1;
    assert!(
        CustomerState::decode(&oldest).is_err(),
        "an oldest event time that is not the events'"
    );
    let mut more_hours = bytes.clone();
    more_hours[39] = 2;
    assert!(
        CustomerState::decode(&more_hours).is_err(),
        "counts too large"
    );

    let no_clock = CustomerState {
        clock: None,
        events: Vec::new(),
        hours: Vec::new(),
        ..state
    };
    assert_eq!(
        CustomerState::decode(&encode(&no_clock, false)),
        Ok(no_clock)
    );
}

/// A state a speed layer before the vendor byte wrote (`W2`) is applied to as before and
/// rewritten as `W3`: its events keep their place and count as uses of their vendors,
/// their byte unknown, so a replay of one of them is not told an answer it never had.
#[tokio::test]
async fn a_state_of_the_layout_before_the_vendor_byte_is_upgraded() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-upgrade");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let old = record(1, T0, 100, 0, "old");
    let legacy = CustomerState {
        generation,
        last_offset: 1,
        clock: Some(T0),
        events: vec![as_event(&old, None)],
        hours: vec![HourIncrement {
            hour: T0,
            sum: 100,
            count: 1,
            edge_sum: 100,
            edge_count: 1,
        }],
    };
    let _: () = connection
        .set(&key, encode(&legacy, true))
        .await
        .expect("SET");
    let new = record(2, T0 + MINUTE_MS, 50, 0, "new");
    let outcome = apply(&mut connection, generation, None, &key, vec![old, new]).await;
    assert_eq!(
        outcome.records,
        vec![
            RecordOutcome::Replayed,
            RecordOutcome::Applied {
                vendor_seen_before: true
            },
        ],
        "the old event is held but its answer unknown; it is a use of vendor 0"
    );
    let stored: Vec<u8> = connection.get(&key).await.expect("GET");
    assert_eq!(&stored[..2], b"W3");
    let state = CustomerState::decode(&stored).expect("decode");
    assert_eq!(
        state.events,
        vec![as_event(&old, None), as_event(&new, Some(true))]
    );
    assert_eq!(state.hours[0].sum, 150);
    assert_eq!(stored, encode(&state, false));
    let again = apply(&mut connection, generation, None, &key, vec![old, new]).await;
    assert_eq!(
        again.records,
        vec![
            RecordOutcome::Replayed,
            RecordOutcome::ReplayedHeld {
                vendor_seen_before: true
            },
        ]
    );
    assert_eq!(again.state, state);
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[tokio::test]
async fn a_state_in_an_unknown_encoding_is_an_error_and_left_alone() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-encoding");
    let key = customer_key(&prefix, "c");
    let mut garbage = b"W9".to_vec();
    garbage.resize(43, 0);
    let _: () = connection.set(&key, &garbage).await.expect("SET");
    let result = StateWriter::new()
        .apply(
            &mut connection,
            Generation::random(),
            None,
            TUNING,
            &[(key.clone(), vec![record(1, T0, 1, 0, "a")])],
        )
        .await;
    let error = result.expect_err("an unknown encoding is not overwritten");
    assert!(error.to_string().contains("unknown encoding"), "{error}");
    let stored: Vec<u8> = connection.get(&key).await.expect("GET");
    assert_eq!(stored, garbage);
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

// ---------------------------------------------------------------------------------------
// The meta key.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn ensure_generation_creates_once() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-meta-create");
    let key = meta_key(&prefix);

    let missing = SpeedMeta::read(&mut connection, &key).await.expect("read");
    assert_eq!(missing, SpeedMeta::default());
    assert!(missing.degraded().is_some(), "no generation: degraded");

    let (generation, created) = SpeedMeta::ensure_generation(&mut connection, &key)
        .await
        .expect("ensure");
    assert!(created);
    let (again, created_again) = SpeedMeta::ensure_generation(&mut connection, &key)
        .await
        .expect("ensure");
    assert_eq!((again, created_again), (generation, false));
    let meta = SpeedMeta::read(&mut connection, &key).await.expect("read");
    assert_eq!(meta.generation, Some(generation));
    assert!(
        meta.degraded().is_some(),
        "no partition is ready yet: degraded"
    );

    // An unreadable generation is replaced by a new one.
    let _: () = connection
        .hset(&key, "generation", "not hex")
        .await
        .expect("HSET");
    let (replaced, created) = SpeedMeta::ensure_generation(&mut connection, &key)
        .await
        .expect("ensure");
    assert!(created);
    assert_ne!(replaced, generation);
    let meta = SpeedMeta::read(&mut connection, &key).await.expect("read");
    assert_eq!(meta.generation, Some(replaced));
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[tokio::test]
async fn meta_writes_need_the_current_generation() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-meta-set");
    let key = meta_key(&prefix);
    let (generation, _) = SpeedMeta::ensure_generation(&mut connection, &key)
        .await
        .expect("ensure");

    let progress = Progress {
        written_at: 1_735_700_000_000,
        behind: 42,
        last_record_ts: Some(1_735_699_999_000),
    };
    let no_record_yet = Progress {
        written_at: 1_735_700_000_001,
        behind: 0,
        last_record_ts: None,
    };
    let written = SpeedMeta::set_if_current(
        &mut connection,
        &key,
        generation,
        &[
            ("partitions".to_owned(), "3".to_owned()),
            SpeedMeta::status_field(0, PartitionStatus::Ready),
            SpeedMeta::status_field(1, PartitionStatus::Rebuilding { until: 1234 }),
            SpeedMeta::progress_field(0, progress),
            SpeedMeta::progress_field(1, no_record_yet),
        ],
    )
    .await
    .expect("set");
    assert!(written);
    let meta = SpeedMeta::read(&mut connection, &key).await.expect("read");
    assert_eq!(meta.generation, Some(generation));
    assert_eq!(meta.partitions, Some(3));
    assert_eq!(
        meta.statuses.into_iter().collect::<Vec<_>>(),
        vec![
            (0, PartitionStatus::Ready),
            (1, PartitionStatus::Rebuilding { until: 1234 })
        ]
    );
    assert_eq!(
        meta.progress.into_iter().collect::<Vec<_>>(),
        vec![(0, progress), (1, no_record_yet)]
    );

    // A writer holding a stale generation changes nothing.
    let stale = Generation::random();
    let refused = SpeedMeta::set_if_current(
        &mut connection,
        &key,
        stale,
        &[
            SpeedMeta::status_field(1, PartitionStatus::Ready),
            SpeedMeta::status_field(2, PartitionStatus::Ready),
        ],
    )
    .await
    .expect("set");
    assert!(!refused);
    let meta = SpeedMeta::read(&mut connection, &key).await.expect("read");
    assert_eq!(
        meta.statuses.get(&1),
        Some(&PartitionStatus::Rebuilding { until: 1234 })
    );
    assert_eq!(meta.statuses.get(&2), None);
    assert!(meta.degraded().is_some(), "1 of 3 partitions ready");

    // Two of three is still degraded; all three is not.
    for (partition, expect_degraded) in [(1, true), (2, false)] {
        assert!(
            SpeedMeta::set_if_current(
                &mut connection,
                &key,
                generation,
                &[SpeedMeta::status_field(partition, PartitionStatus::Ready)],
            )
            .await
            .expect("set")
        );
        let meta = SpeedMeta::read(&mut connection, &key).await.expect("read");
        assert_eq!(
            meta.degraded().is_some(),
            expect_degraded,
            "partitions 0..={partition} ready: {:?}",
            meta.degraded()
        );
    }

    // Redis lost the meta key: a late writer cannot resurrect it.
    let _: () = connection.del(&key).await.expect("DEL");
    let resurrected = SpeedMeta::set_if_current(
        &mut connection,
        &key,
        generation,
        &[SpeedMeta::status_field(0, PartitionStatus::Ready)],
    )
    .await
    .expect("set");
    assert!(!resurrected);
    let exists: bool = connection.exists(&key).await.expect("EXISTS");
    assert!(!exists);
    let meta = SpeedMeta::read(&mut connection, &key).await.expect("read");
    assert!(meta.degraded().is_some());
    let (next, created) = SpeedMeta::ensure_generation(&mut connection, &key)
        .await
        .expect("ensure");
    assert!(created);
    assert_ne!(next, generation);
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

#[test]
fn degraded_counts_ready_partitions() {
    let generation = Generation::random();
    let meta = |partitions: Option<u32>, statuses: &[(i32, PartitionStatus)]| SpeedMeta {
        generation: Some(generation),
        partitions,
        statuses: statuses.iter().copied().collect(),
        progress: Default::default(),
    };
    let ready = PartitionStatus::Ready;
    let rebuilding = PartitionStatus::Rebuilding { until: 7 };
    assert!(SpeedMeta::default().degraded().is_some());
    assert!(
        SpeedMeta {
            generation: None,
            ..meta(Some(1), &[(0, ready)])
        }
        .degraded()
        .is_some(),
        "no generation"
    );
    assert!(meta(None, &[]).degraded().is_some(), "nothing ready");
    assert!(meta(Some(2), &[(0, ready)]).degraded().is_some());
    assert!(
        meta(Some(2), &[(0, ready), (1, rebuilding)])
            .degraded()
            .is_some()
    );
    assert!(
        meta(Some(2), &[(0, ready), (1, ready)])
            .degraded()
            .is_none()
    );
    assert!(meta(None, &[(0, ready), (1, ready)]).degraded().is_none());
}

/// A transaction id that comes back after its first event left the retention is applied
/// again, however the records are batched: decisions depend only on the records.
#[tokio::test]
async fn a_trimmed_duplicate_is_decided_the_same_in_one_call_or_two() {
    let mut connection = connect().await;
    let t = T0 + 10 * MINUTE_MS;
    let records = [
        record(1, t, 100, 0, "X"),
        record(2, t + 2 * 3_600_000, 100, 0, "Y"),
        record(3, t + 2 * 3_600_000, 100, 0, "X"),
    ];
    let mut outcomes = Vec::new();
    for split in [3, 2] {
        let prefix = TestPrefix::new("speed-view-trim-dup");
        let key = customer_key(&prefix, "c");
        let generation = Generation::random();
        let (mut applied, mut duplicates) = (0, 0);
        for part in [&records[..split], &records[split..]] {
            if part.is_empty() {
                continue;
            }
            let outcome = apply(&mut connection, generation, None, &key, part.to_vec()).await;
            applied += outcome.applied;
            duplicates += outcome.duplicates;
        }
        outcomes.push((applied, duplicates));
    }
    assert_eq!(outcomes[0], outcomes[1], "one call vs two calls");
    assert_eq!(outcomes[0], (3, 0));
}

/// Each record's outcome comes back in the run's order, and an applied record says
/// whether the customer used its vendor before it: an event applied earlier (in an
/// earlier call or earlier in the run) inside the retention of the clock before the
/// record. Skipped records never count as a use.
#[tokio::test]
async fn each_record_s_outcome_says_whether_its_vendor_was_used_before() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-vendor-seen");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let retention = TUNING.retention_ms;
    let applied = |vendor_seen_before| RecordOutcome::Applied { vendor_seen_before };
    let t = T0 + 40 * MINUTE_MS;

    let first = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![record(1, t - 10 * MINUTE_MS, 5, 0, "a")],
    )
    .await;
    assert_eq!(
        first.records,
        vec![applied(false)],
        "a customer's first event"
    );

    let second = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![
            // Vendor 1: new.
            record(2, t - 5 * MINUTE_MS, 7, 1, "b"),
            // Vendor 0: "a", applied in the earlier call.
            record(3, t - 4 * MINUTE_MS, 7, 0, "c"),
            // A duplicate of "b": skipped.
            record(4, t - 5 * MINUTE_MS, 7, 1, "b"),
            // Vendor 1: "b", applied earlier in this run.
            record(5, t, 7, 1, "d"),
            // Late (exactly the clock minus the retention), at vendor 2.
            record(6, t - retention, 7, 2, "late"),
            // Vendor 2: the late record was not applied, so it is new.
            record(7, t - MINUTE_MS, 7, 2, "e"),
            // A replay of "a": held, so told again with its first answer.
            record(1, t - 10 * MINUTE_MS, 5, 0, "a"),
        ],
    )
    .await;
    let held = |vendor_seen_before| RecordOutcome::ReplayedHeld { vendor_seen_before };
    assert_eq!(
        second.records,
        vec![
            applied(false),
            applied(true),
            RecordOutcome::Duplicate,
            applied(true),
            RecordOutcome::Late,
            applied(false),
            held(false),
        ]
    );
    assert_eq!(
        (
            second.applied,
            second.late,
            second.duplicates,
            second.replayed
        ),
        (4, 1, 1, 1)
    );

    // The retention's edge: "a" (vendor 0, at t - 10 min) is held but exactly at the
    // clock minus the retention once the clock is t - 10 min + retention; one ms less
    // and it is inside.
    let edge = t - 10 * MINUTE_MS + retention;
    let third = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![
            record(8, edge - 1, 1, 3, "f"),
            record(9, edge - 1, 1, 0, "g"),
            record(10, edge, 1, 3, "h"),
            // The clock is now `edge`: "a" is not inside any more, "g" is.
            record(11, edge, 1, 0, "i"),
        ],
    )
    .await;
    assert!(
        third
            .state
            .events
            .iter()
            .any(|event| event.transaction == fraud_speed_view::digest("a")),
        "\"a\" is still held (not trimmed within the slack)"
    );
    assert_eq!(
        third.records,
        vec![applied(false), applied(true), applied(true), applied(true)]
    );
    // "e" (vendor 2, at t - 1 min) exactly at the clock minus the retention: not a use.
    let e_edge = t - MINUTE_MS + retention;
    let fourth = apply(
        &mut connection,
        generation,
        None,
        &key,
        vec![
            record(12, e_edge, 1, 3, "k"),
            record(13, e_edge + MINUTE_MS, 1, 2, "j"),
        ],
    )
    .await;
    assert_eq!(fourth.records, vec![applied(true), applied(false)]);
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

/// The state after a run cannot tell what the run decided: here the run applies two
/// events and trims both (with the event that made the first one's vendor known), yet
/// the outcomes say each was applied and whether its vendor was known, the same in one
/// call as in two.
#[tokio::test]
async fn a_run_that_trims_what_it_applied_still_reports_it() {
    let mut connection = connect().await;
    let slack = TUNING.retention_ms / 4;
    let t = T0 + 10 * MINUTE_MS;
    let records = [
        record(1, t, 100, 0, "X"),
        // Vendor 0 again, five minutes later: known.
        record(2, t + 5 * MINUTE_MS, 100, 0, "Y"),
        // The clock jumps past both by the retention and the slack: both are trimmed.
        record(
            3,
            t + TUNING.retention_ms + slack + 5 * MINUTE_MS,
            100,
            1,
            "Z",
        ),
    ];
    let applied = |vendor_seen_before| RecordOutcome::Applied { vendor_seen_before };
    for split in [1, 3] {
        let prefix = TestPrefix::new("speed-view-trimmed-run");
        let key = customer_key(&prefix, "c");
        let generation = Generation::random();
        let mut outcomes = Vec::new();
        let mut last = None;
        for part in [&records[..split], &records[split..]] {
            if part.is_empty() {
                continue;
            }
            let outcome = apply(&mut connection, generation, None, &key, part.to_vec()).await;
            outcomes.extend(outcome.records.iter().copied());
            last = Some(outcome.state);
        }
        assert_eq!(
            outcomes,
            vec![applied(false), applied(true), applied(false)],
            "split after {split}"
        );
        let held: Vec<i64> = last.unwrap().events.iter().map(|event| event.ts).collect();
        assert_eq!(held, vec![records[2].ts], "split after {split}");
    }
}

// ---------------------------------------------------------------------------------------
// Many customers in one call.
// ---------------------------------------------------------------------------------------

/// Two customers of one partition: offsets interleaved, the same transaction ids and
/// vendors in both, and B's clock two hours ahead of A's, so that a record late for B
/// would be applied for A. Each one's decisions must depend on its own records only.
fn two_customers() -> (
    Vec<Record>,
    Vec<Record>,
    Vec<RecordOutcome>,
    Vec<RecordOutcome>,
) {
    let t = T0 + 10 * MINUTE_MS;
    let b = t + 2 * HOUR_MS;
    let customer_a = vec![
        record(1, t, 100, 0, "shared-1"),
        record(3, t + MINUTE_MS, 200, 1, "shared-2"),
        // A's own duplicate.
        record(5, t + MINUTE_MS, 200, 1, "shared-2"),
        // Inside A's retention, at a vendor A used.
        record(7, t - 20 * MINUTE_MS, 300, 0, "a-1"),
        // Past A's retention: late.
        record(9, t - 40 * MINUTE_MS, 400, 2, "a-2"),
        // Vendor 2 only came with the late record: new.
        record(11, t + 2 * MINUTE_MS, 500, 2, "a-3"),
    ];
    let customer_b = vec![
        // A's transaction id and A's vendor: neither a duplicate nor a known vendor.
        record(2, b, 1_000, 1, "shared-1"),
        // A time A would apply: late for B.
        record(4, t + MINUTE_MS, 2_000, 0, "b-1"),
        record(6, b + MINUTE_MS, 3_000, 1, "shared-2"),
        // B's own duplicate, out of order.
        record(8, b - 10 * MINUTE_MS, 1_000, 1, "shared-1"),
        record(10, b + MINUTE_MS, 4_000, 3, "b-2"),
    ];
    let applied = |vendor_seen_before| RecordOutcome::Applied { vendor_seen_before };
    let expected_a = vec![
        applied(false),
        applied(false),
        RecordOutcome::Duplicate,
        applied(true),
        RecordOutcome::Late,
        applied(false),
    ];
    let expected_b = vec![
        applied(false),
        RecordOutcome::Late,
        applied(true),
        RecordOutcome::Duplicate,
        applied(false),
    ];
    (customer_a, customer_b, expected_a, expected_b)
}

/// Every way of putting the two customers' runs into calls (both whole in one call;
/// each split in two, with each key twice in one call; one run per call; calls cut in
/// the middle of that) decides every record as the naive model does, leaves each
/// customer the model's state, and writes that state; a replay of both in one call
/// changes nothing.
#[tokio::test]
async fn one_call_keeps_its_customers_apart() {
    let mut connection = connect().await;
    let (customer_a, customer_b, expected_a, expected_b) = two_customers();
    let whole: Vec<(usize, Vec<Record>)> = vec![(0, customer_a.clone()), (1, customer_b.clone())];
    // In offset order within each customer, customers interleaved: A, B, A, B.
    let split: Vec<(usize, Vec<Record>)> = vec![
        (0, customer_a[..3].to_vec()),
        (1, customer_b[..3].to_vec()),
        (0, customer_a[3..].to_vec()),
        (1, customer_b[3..].to_vec()),
    ];
    for (runs, runs_per_call) in [
        (&whole, 500),
        (&split, 500),
        (&split, 1),
        (&split, 3),
        (&whole, 1),
    ] {
        let script = StateWriter::with_runs_per_call(runs_per_call);
        let prefix = TestPrefix::new("speed-view-two-customers");
        let keys = [customer_key(&prefix, "a"), customer_key(&prefix, "b")];
        let generation = Generation::random();
        let mut models = [
            Model::new(TUNING.retention_ms),
            Model::new(TUNING.retention_ms),
        ];
        let keyed: Vec<(String, Vec<Record>)> = runs
            .iter()
            .map(|(c, run)| (keys[*c].clone(), run.clone()))
            .collect();
        let outcomes = script
            .apply(&mut connection, generation, None, TUNING, &keyed)
            .await
            .expect("apply");
        assert_eq!(outcomes.len(), runs.len());
        let mut decided = [Vec::new(), Vec::new()];
        let mut last = [None, None];
        for ((c, run), outcome) in runs.iter().zip(outcomes) {
            let model = &mut models[*c];
            let verdicts: Vec<RecordOutcome> =
                run.iter().map(|record| model.apply(record)).collect();
            assert_eq!(
                outcome.records, verdicts,
                "customer {c}'s run {run:?}, {runs_per_call} runs per call"
            );
            assert_eq!(
                (
                    outcome.applied,
                    outcome.late,
                    outcome.duplicates,
                    outcome.replayed
                ),
                counts(&verdicts)
            );
            check_state(&outcome.state, model, generation, None)
                .unwrap_or_else(|error| panic!("customer {c}, {runs_per_call} per call: {error}"));
            decided[*c].extend(verdicts);
            last[*c] = Some(outcome.state);
        }
        // The data does exercise every decision, for each customer.
        assert_eq!(decided, [expected_a.clone(), expected_b.clone()]);
        for c in 0..2 {
            let stored: Vec<u8> = connection.get(&keys[c]).await.expect("GET");
            assert_eq!(
                Some(CustomerState::decode(&stored).expect("decode")),
                last[c],
                "customer {c}'s stored state, {runs_per_call} runs per call"
            );
        }

        // Both replayed whole, in one call, B first: nothing changes, and each record
        // whose very event is held gets its first answer again: A's own duplicate
        // (an exact copy) the answer of the event it copies, B's (another time) none.
        let held = |vendor_seen_before| RecordOutcome::ReplayedHeld { vendor_seen_before };
        let replayed_a = vec![
            held(false),
            held(false),
            held(false),
            held(true),
            RecordOutcome::Replayed,
            held(false),
        ];
        let replayed_b = vec![
            held(false),
            RecordOutcome::Replayed,
            held(true),
            RecordOutcome::Replayed,
            held(false),
        ];
        let replay = vec![
            (keys[1].clone(), customer_b.clone()),
            (keys[0].clone(), customer_a.clone()),
        ];
        let replayed = script
            .apply(&mut connection, generation, None, TUNING, &replay)
            .await
            .expect("replay");
        for ((outcome, c), expected) in replayed.iter().zip([1, 0]).zip([&replayed_b, &replayed_a])
        {
            assert_eq!(&outcome.records, expected, "customer {c}'s replay");
            assert_eq!(outcome.replayed, expected.len() as u64);
            assert_eq!(Some(&outcome.state), last[c].as_ref());
        }
        assert_eq!(delete_prefix(&mut connection, &prefix).await, 2);
    }
}

/// A batch that fails for one of its customers writes nothing, for any of them: every
/// state is computed before one is written.
#[tokio::test]
async fn a_failed_call_writes_no_customer() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-failed-call");
    let fine = customer_key(&prefix, "fine");
    let overflowing = customer_key(&prefix, "overflowing");
    let generation = Generation::random();
    let half = 1i64 << 52;
    apply(
        &mut connection,
        generation,
        None,
        &overflowing,
        vec![record(1, T0 + MINUTE_MS, half, 0, "a")],
    )
    .await;
    let before: Vec<u8> = connection.get(&overflowing).await.expect("GET");
    let result = StateWriter::new()
        .apply(
            &mut connection,
            generation,
            None,
            TUNING,
            &[
                (fine.clone(), vec![record(2, T0 + MINUTE_MS, 1, 0, "f")]),
                (
                    overflowing.clone(),
                    vec![record(3, T0 + 2 * MINUTE_MS, half, 0, "b")],
                ),
            ],
        )
        .await;
    let error = result.expect_err("2^53 minor units in one hour cannot be exact");
    assert!(error.to_string().contains("2^53"), "{error}");
    let fine_stored: Option<Vec<u8>> = connection.get(&fine).await.expect("GET");
    assert_eq!(
        fine_stored, None,
        "the customer before it is not written either"
    );
    let after: Vec<u8> = connection.get(&overflowing).await.expect("GET");
    assert_eq!(after, before);
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}

/// A writer's copy that another writer made stale (a zombie that lost the partition, or
/// its new owner) is never written over: the write finds the key changed, reads it
/// again, and the records the other writer applied meanwhile are replays. Likewise when
/// the key is gone (expired, or Redis lost it).
#[tokio::test]
async fn a_stale_copy_is_read_again_before_it_is_written_over() {
    let mut connection = connect().await;
    let prefix = TestPrefix::new("speed-view-stale-copy");
    let key = customer_key(&prefix, "c");
    let generation = Generation::random();
    let owner = StateWriter::new().with_copies(10, std::time::Duration::from_secs(3_600));
    let other = StateWriter::new();
    let records: Vec<Record> = (1..=6)
        .map(|n| {
            record(
                n,
                T0 + n * MINUTE_MS,
                100 * n,
                n as u8 % 2,
                &format!("t{n}"),
            )
        })
        .collect();
    let first = apply_by(
        &owner,
        &mut connection,
        generation,
        None,
        &key,
        records[..3].to_vec(),
    )
    .await;
    assert_eq!(first.applied, 3);
    // Another writer applies records 4 and 5: the owner's copy still ends at 3.
    let theirs = apply_by(
        &other,
        &mut connection,
        generation,
        None,
        &key,
        records[3..5].to_vec(),
    )
    .await;
    assert_eq!(theirs.applied, 2);
    // The owner, from its copy, would take 4 and 5 for new and write them over, or
    // take 6 alone and lose them; it reads the key again instead.
    let ours = apply_by(
        &owner,
        &mut connection,
        generation,
        None,
        &key,
        records[3..].to_vec(),
    )
    .await;
    assert_eq!(
        ours.records,
        vec![
            RecordOutcome::ReplayedHeld {
                vendor_seen_before: true
            },
            RecordOutcome::ReplayedHeld {
                vendor_seen_before: true
            },
            RecordOutcome::Applied {
                vendor_seen_before: true
            },
        ]
    );
    let stored: Vec<u8> = connection.get(&key).await.expect("GET");
    let state = CustomerState::decode(&stored).expect("decode");
    assert_eq!(state, ours.state);
    assert_eq!(state.last_offset, 6);
    assert_eq!(state.events.len(), 6, "every event held once: {state:?}");
    assert_eq!(
        state.events.iter().map(|event| event.amount).sum::<i64>(),
        2_100
    );

    // The key is gone: the owner's copy says offset 6, Redis holds nothing.
    let _: () = connection.del(&key).await.expect("DEL");
    let again = apply_by(
        &owner,
        &mut connection,
        generation,
        None,
        &key,
        vec![record(7, T0 + 7 * MINUTE_MS, 700, 0, "t7")],
    )
    .await;
    let stored: Vec<u8> = connection.get(&key).await.expect("GET");
    let state = CustomerState::decode(&stored).expect("decode");
    assert_eq!(state, again.state);
    assert_eq!(
        state
            .events
            .iter()
            .map(|event| event.amount)
            .collect::<Vec<_>>(),
        vec![700],
        "the state starts over from what Redis holds"
    );
    assert_eq!(delete_prefix(&mut connection, &prefix).await, 1);
}
