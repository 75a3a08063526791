//! How runs follow each other: incremental runs recompute exactly the days that need it
//! and agree with a full recomputation; reruns change nothing; a second run is refused
//! while one holds the lock; an incomplete lake, a future or an earlier watermark is
//! refused, also when the missing record sits behind one stamped after the watermark.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use common::{
    BatchTest, DAY, HOUR, MINUTE, RUN_LOCK, Rng, assert_tables_eq, date_of, day_floor, event,
    hour_floor, lake_days, model, now_ms, read_batch_days, read_runs, read_tables, rfc3339,
    spread_events,
};
use fraud_testkit::unique_name;
use sqlx::{Connection, PgConnection};

/// A time as the binary prints it.
fn printed(ms: i64) -> String {
    fraud_domain::EventTime::from_millis(ms)
        .unwrap()
        .to_rfc3339()
}

/// A small delay, now and then a late arrival of a few hours; never after `end`.
fn ingest_soon(end: i64) -> impl FnMut(&mut Rng, i64) -> i64 {
    move |rng, ts| {
        let delay = if rng.chance(5) {
            rng.range(HOUR, 5 * HOUR)
        } else {
            rng.range(0, 3_000)
        };
        (ts + delay).min(end)
    }
}

/// What a reader sees of the views: the watermark in force, the rows and money of
/// `batch_hourly` and `batch_daily`, and the count and latest `as_of` of the baselines.
async fn snapshot_view(
    db: &mut PgConnection,
) -> (Option<i64>, i64, i64, i64, i64, i64, Option<i64>) {
    sqlx::query_as(
        "SELECT (SELECT (extract(epoch FROM max(watermark)) * 1000)::bigint FROM batch_runs \
                 WHERE status = 'succeeded'), \
                (SELECT count(*) FROM batch_hourly), \
                (SELECT coalesce(sum(sum_minor), 0)::bigint FROM batch_hourly), \
                (SELECT count(*) FROM batch_daily), \
                (SELECT coalesce(sum(sum_minor), 0)::bigint FROM batch_daily), \
                (SELECT count(*) FROM batch_baselines), \
                (SELECT (extract(epoch FROM max(as_of)) * 1000)::bigint FROM batch_baselines)",
    )
    // Planned afresh each time: a prepared statement's plan may keep the partitions it
    // was planned with, and the read must see those the run attached.
    .persistent(false)
    .fetch_one(db)
    .await
    .expect("read the views")
}

/// The names of `parent`'s partitions.
async fn partitions(url: &str, parent: &str) -> BTreeSet<String> {
    let mut db = PgConnection::connect(url).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = $1::regclass",
    )
    .bind(parent)
    .fetch_all(&mut db)
    .await
    .unwrap();
    names.into_iter().collect()
}

/// Every day with rows in `batch_hourly` and `batch_daily` has a partition of its own in
/// each (`migrations/0007`), and those rows are in it.
async fn assert_each_day_in_its_partition(url: &str) {
    let mut db = PgConnection::connect(url).await.unwrap();
    for (parent, day) in [("batch_hourly", "event_date"), ("batch_daily", "day")] {
        let holding: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT tableoid::regclass::text, \
                    '{parent}_' || to_char({day}, 'YYYYMMDD') FROM {parent}"
        )))
        .fetch_all(&mut db)
        .await
        .unwrap();
        assert!(!holding.is_empty());
        for (partition, named_for_day) in &holding {
            assert_eq!(
                partition, named_for_day,
                "{parent}'s rows of a day are in its partition"
            );
        }
        let days: BTreeSet<String> = holding.into_iter().map(|(p, _)| p).collect();
        let all = partitions(url, parent).await;
        assert!(all.is_superset(&days), "{parent}: {all:?} ⊉ {days:?}");
    }
}

#[tokio::test]
async fn incremental_runs_recompute_the_changed_days_and_agree_with_a_full_run() {
    let mut rng = Rng::from_env("incremental");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let end = now - MINUTE;
    let first_day = day_floor(watermark) - 3 * DAY;
    let mut test = BatchTest::create("batch-incremental", 3).await;
    let run = unique_name("tx");
    let mut events = spread_events(
        &mut rng,
        &run,
        1_500,
        25,
        (first_day, end),
        ingest_soon(end),
    );
    // A customer whose day D1 + 1 starts with an event the late arrival will share a
    // window with.
    let d1 = first_day + DAY;
    events.push(event(
        &format!("{run}-late-a"),
        "late-c",
        "vendor-00",
        10,
        d1 + 5 * HOUR,
        d1 + 5 * HOUR + 100,
    ));
    events.push(event(
        &format!("{run}-late-b"),
        "late-c",
        "vendor-00",
        1_000,
        d1 + DAY + 10 * MINUTE,
        d1 + DAY + 10 * MINUTE + 100,
    ));
    events.sort_by_key(|e| e.ingest_time.as_millis());
    test.produce(events).await;
    test.fill_lake().await;
    let days = lake_days(&test.lake()).await;
    let up_to = |last: i64| -> Vec<NaiveDate> {
        days.iter()
            .copied()
            .filter(|d| *d <= date_of(last))
            .collect()
    };

    // A first run at an earlier watermark, then the watermark moves on.
    let earlier = watermark - 25 * HOUR;
    let report = test.run(earlier, false).await;
    assert_eq!(report.days, up_to(earlier));
    let times = report.times;
    assert!(
        [times.read, times.compute, times.copy, times.commit]
            .iter()
            .all(|phase| !phase.is_zero()),
        "every phase of the run is timed: {times:?}"
    );
    let first = read_tables(&test.database.url).await;
    assert_tables_eq(
        "the run at the earlier watermark",
        &first,
        &model(&test.produced, earlier),
    );
    assert_each_day_in_its_partition(&test.database.url).await;
    // A reader whose snapshot is older than the next run, which makes new days'
    // partitions.
    let mut reader = test.database.connect().await;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut reader)
        .await
        .unwrap();
    let seen_before = snapshot_view(&mut reader).await;
    assert_eq!(
        (seen_before.0, seen_before.6),
        (Some(earlier), Some(earlier))
    );
    let partitions_before = partitions(&test.database.url, "batch_hourly").await;

    let report = test.run(watermark, false).await;
    let partitions_after = partitions(&test.database.url, "batch_hourly").await;
    assert!(
        partitions_after.is_superset(&partitions_before)
            && partitions_after.len() > partitions_before.len(),
        "the run made a partition for a new day: {partitions_before:?} → {partitions_after:?}"
    );
    assert_eq!(
        snapshot_view(&mut reader).await,
        seen_before,
        "a snapshot older than the run still sees the previous run whole, new partitions \
         included"
    );
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    let seen_after = snapshot_view(&mut reader).await;
    assert_eq!(
        (seen_after.0, seen_after.6),
        (Some(watermark), Some(watermark))
    );
    assert_eq!(
        seen_after.5, seen_before.5,
        "the same customers have baselines"
    );
    assert_each_day_in_its_partition(&test.database.url).await;
    let moved_over: Vec<NaiveDate> = up_to(watermark)
        .into_iter()
        .filter(|d| *d >= date_of(earlier))
        .collect();
    assert_eq!(
        report.days, moved_over,
        "the days from the published watermark's on are recomputed, no others"
    );
    assert!(report.partial.is_empty(), "moved over: whole days");
    let second = read_tables(&test.database.url).await;
    assert_tables_eq(
        "after the watermark moved",
        &second,
        &model(&test.produced, watermark),
    );
    let untouched: Vec<NaiveDate> = up_to(earlier)
        .into_iter()
        .filter(|d| *d < date_of(earlier))
        .collect();
    assert!(!untouched.is_empty());
    assert_eq!(first.of_days(&untouched), second.of_days(&untouched));

    // A late arrival into an old day: 10 minutes before D1 + 1 starts, from a vendor
    // late-c never used.
    let late = event(
        &format!("{run}-late-c"),
        "late-c",
        "late-vendor",
        5_000,
        d1 + DAY - 10 * MINUTE,
        end,
    );
    test.produce(vec![late]).await;
    test.fill_lake().await;
    let report = test.run(watermark, false).await;
    let expected_days: BTreeSet<NaiveDate> =
        [date_of(d1), date_of(d1 + DAY), date_of(watermark)].into();
    assert_eq!(
        report.days.iter().copied().collect::<BTreeSet<_>>(),
        expected_days,
        "the late arrival's day, the next day (its first windows reach back) and the \
         watermark's day are recomputed"
    );
    assert_eq!(
        report.partial,
        BTreeMap::from([(date_of(d1), 1), (date_of(d1 + DAY), 1)]),
        "the late arrival's day and the next are recomputed for its customer only; the \
         watermark's day whole"
    );
    let third = read_tables(&test.database.url).await;
    assert_tables_eq(
        "after the late arrival",
        &third,
        &model(&test.produced, watermark),
    );
    let changed = second.changed_keys(&third);
    let expected: BTreeSet<String> = [
        format!("hourly late-c {}", rfc3339(d1 + DAY - HOUR)),
        format!("daily late-c {}", date_of(d1)),
        format!("daily late-c {}", date_of(d1 + DAY)),
        "vendors late-c late-vendor".to_owned(),
        "baselines late-c".to_owned(),
    ]
    .into();
    assert_eq!(changed, expected, "exactly the late arrival's rows change");
    let next_day = third
        .daily
        .iter()
        .find(|r| r.customer == "late-c" && r.day == date_of(d1 + DAY))
        .unwrap();
    assert_eq!(
        (next_day.sum, next_day.peak_sum, next_day.peak_count),
        (1_000, 6_000, 2),
        "the next day's first window holds the late arrival"
    );

    // A full run from scratch, in a database of its own, says the same.
    let clean = test.new_database("incremental_full").await;
    let clean_settings = test.settings_for(&clean);
    let report = test.run_on(&clean_settings, watermark, true).await;
    assert_eq!(report.days, up_to(watermark));
    assert_tables_eq(
        "a full run from scratch vs the incremental runs",
        &read_tables(&clean.url).await,
        &third,
    );
    // And so does a full run over the incremental runs' tables.
    let report = test.run(watermark, true).await;
    assert_eq!(report.days, up_to(watermark));
    assert_tables_eq(
        "a full run over the incremental runs' tables",
        &read_tables(&test.database.url).await,
        &third,
    );
    assert_each_day_in_its_partition(&test.database.url).await;
    assert_each_day_in_its_partition(&clean.url).await;
    assert_eq!(
        partitions(&test.database.url, "batch_baselines")
            .await
            .len(),
        2,
        "a run's baselines partition, and the one it emptied; the older ones dropped"
    );
    let runs = read_runs(&test.database.url).await;
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|r| r.status == "succeeded" && r.finished));
}

#[tokio::test]
async fn a_late_record_with_another_customer_s_transaction_id_makes_its_day_recomputed_whole() {
    let mut rng = Rng::from_env("shared-id");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let end = now - MINUTE;
    let d1 = day_floor(watermark) - 2 * DAY;
    let mut test = BatchTest::create("batch-shared-id", 3).await;
    let run = unique_name("tx");
    let mut events = spread_events(&mut rng, &run, 300, 10, (d1, end), ingest_soon(end));
    // Pairs of customers: an owner's record of D1, and later (in new files of D1) a
    // record of another customer with the same transaction id. Deduplication keeps the
    // record with the smallest (partition, offset): where the other customer's partition
    // is the smaller, the owner loses the event, though no new file holds the owner.
    const PAIRS: i64 = 30;
    let id = |i: i64| format!("{run}-shared-{i}");
    for i in 0..PAIRS {
        let ts = d1 + 5 * HOUR + i * MINUTE;
        events.push(event(
            &id(i),
            &format!("owner-{i}"),
            "vendor-00",
            100 + i,
            ts,
            ts + 100,
        ));
    }
    events.sort_by_key(|e| e.ingest_time.as_millis());
    test.produce(events).await;
    test.fill_lake().await;
    test.run(watermark, false).await;

    let late: Vec<_> = (0..PAIRS)
        .map(|i| {
            event(
                &id(i),
                &format!("other-{i}"),
                "vendor-01",
                5_000,
                d1 + 6 * HOUR,
                end,
            )
        })
        .collect();
    let landed = test.produce(late).await;
    // The owners' records a late record takes the place of.
    let stolen: Vec<common::Produced> = test
        .produced
        .iter()
        .filter(|owner| {
            landed.iter().any(|other| {
                owner.event.transaction_id == other.event.transaction_id
                    && owner.partition > other.partition
            })
        })
        .cloned()
        .collect();
    assert!(
        !stolen.is_empty(),
        "some late record stands in its owner's place"
    );
    test.fill_lake().await;
    let report = test.run(watermark, false).await;
    assert!(report.days.contains(&date_of(d1)));
    assert!(
        report.partial.is_empty(),
        "days holding an id of two customers are recomputed whole: {:?}",
        report.partial
    );
    // An incremental run only adds vendors (and moves first uses earlier): an owner
    // whose only event was taken keeps its vendor, which a full run would not list.
    let mut expected = model(&test.produced, watermark);
    expected
        .vendors
        .extend(stolen.iter().map(|owner| common::Vendor {
            customer: owner.event.customer_id.as_str().to_owned(),
            vendor: owner.event.vendor_id.as_str().to_owned(),
            first_seen: owner.event.event_time.as_millis(),
        }));
    assert_tables_eq(
        "after late records sharing ids with other customers'",
        &read_tables(&test.database.url).await,
        &expected,
    );
}

/// A run derives the baselines from the days the stored baselines keep
/// (`batch_baseline_windows`), not from the stored daily rows; without them, or when they
/// are not the last succeeded run's, from the daily rows.
#[tokio::test]
async fn baselines_come_from_the_days_they_keep_or_else_from_the_daily_rows() {
    let mut rng = Rng::from_env("windows");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let end = now - MINUTE;
    let mut test = BatchTest::create("batch-windows", 2).await;
    let first_day = day_floor(watermark) - 3 * DAY;
    let events = spread_events(
        &mut rng,
        &unique_name("tx"),
        400,
        12,
        (first_day, end),
        ingest_soon(end),
    );
    test.produce(events).await;
    test.fill_lake().await;
    test.run(watermark, false).await;
    let expected = model(&test.produced, watermark);
    assert_tables_eq(
        "the first run",
        &read_tables(&test.database.url).await,
        &expected,
    );

    // The first day's daily rows changed behind the batch layer's back: a rerun
    // recomputes only the watermark's day and takes the others from the baselines.
    let mut db = test.database.connect().await;
    let edited = sqlx::query("UPDATE batch_daily SET sum_minor = sum_minor + 1 WHERE day = $1")
        .bind(date_of(first_day))
        .execute(&mut db)
        .await
        .unwrap()
        .rows_affected();
    assert!(edited > 0);
    let edited_daily = read_tables(&test.database.url).await.daily;
    let from_edited = common::model_baselines(&edited_daily, watermark);
    assert_ne!(from_edited, expected.baselines);
    let report = test.run(watermark, false).await;
    assert_eq!(report.days, vec![date_of(watermark)]);
    assert_eq!(
        read_tables(&test.database.url).await.baselines,
        expected.baselines,
        "the baselines' own days, not the edited daily rows"
    );

    // Without their days (the table is unlogged: empty after a crash), the baselines
    // are derived from the daily rows, edit included.
    sqlx::query("TRUNCATE batch_baseline_windows")
        .execute(&mut db)
        .await
        .unwrap();
    test.run(watermark, false).await;
    assert_eq!(
        read_tables(&test.database.url).await.baselines,
        from_edited,
        "the daily rows, read when the baselines do not keep their days"
    );

    // Days kept by a run that is not the last succeeded one (it failed, or stopped
    // between its publishing commit and the windows' own) are not used either.
    sqlx::query("UPDATE batch_daily SET sum_minor = sum_minor + 1 WHERE day = $1")
        .bind(date_of(first_day))
        .execute(&mut db)
        .await
        .unwrap();
    let edited_twice =
        common::model_baselines(&read_tables(&test.database.url).await.daily, watermark);
    assert_ne!(edited_twice, from_edited);
    let kept = sqlx::query("UPDATE batch_baseline_windows SET run_id = run_id + 1")
        .execute(&mut db)
        .await
        .unwrap()
        .rows_affected();
    assert!(kept > 0, "the last run kept its days");
    test.run(watermark, false).await;
    assert_eq!(
        read_tables(&test.database.url).await.baselines,
        edited_twice,
        "the daily rows, read when the kept days are another run's"
    );
}

/// A known vendor's first use moves earlier when a late event of an earlier day uses it.
#[tokio::test]
async fn a_late_event_moves_a_known_vendor_s_first_use_earlier() {
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let end = now - MINUTE;
    let d1 = day_floor(watermark) - 2 * DAY;
    let mut test = BatchTest::create("batch-first-use", 2).await;
    let run = unique_name("tx");
    let later = d1 + DAY + 12 * HOUR;
    test.produce(vec![
        event(
            &format!("{run}-a"),
            "first-use",
            "vendor-v",
            100,
            later,
            later + 100,
        ),
        event(
            &format!("{run}-b"),
            "other",
            "vendor-w",
            100,
            d1 + HOUR,
            d1 + HOUR + 100,
        ),
    ])
    .await;
    test.fill_lake().await;
    test.run(watermark, false).await;
    let first_use = |tables: &common::Tables| {
        tables
            .vendors
            .iter()
            .find(|v| v.customer == "first-use" && v.vendor == "vendor-v")
            .map(|v| v.first_seen)
    };
    assert_eq!(
        first_use(&read_tables(&test.database.url).await),
        Some(later)
    );

    let earlier = d1 + 10 * HOUR;
    test.produce(vec![event(
        &format!("{run}-c"),
        "first-use",
        "vendor-v",
        50,
        earlier,
        end,
    )])
    .await;
    test.fill_lake().await;
    let report = test.run(watermark, false).await;
    assert_eq!(
        report.partial.get(&date_of(d1)),
        Some(&1),
        "the late event's day, for its customer"
    );
    let tables = read_tables(&test.database.url).await;
    assert_eq!(first_use(&tables), Some(earlier));
    assert_tables_eq(
        "after the late event",
        &tables,
        &model(&test.produced, watermark),
    );
}

#[tokio::test]
async fn a_rerun_at_the_same_watermark_recomputes_only_its_day_and_changes_nothing() {
    let mut rng = Rng::from_env("rerun");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let end = now - MINUTE;
    let mut test = BatchTest::create("batch-rerun", 2).await;
    let events = spread_events(
        &mut rng,
        &unique_name("tx"),
        600,
        15,
        (day_floor(watermark) - 3 * DAY, end),
        ingest_soon(end),
    );
    test.produce(events).await;
    test.fill_lake().await;
    // Partitions made beforehand the plain way (`batch_day_partitions`, for rows written
    // by hand) for the first two days: the run copies into them; the later days get
    // partitions the run makes.
    batch_layer::migrate(&test.settings).await.unwrap();
    let first_day = date_of(day_floor(watermark) - 3 * DAY);
    let mut db = test.database.connect().await;
    sqlx::query("SELECT batch_day_partitions($1, $2)")
        .bind(first_day)
        .bind(first_day.succ_opt().unwrap())
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(
        partitions(&test.database.url, "batch_hourly").await.len(),
        2
    );

    let first = test.run(watermark, false).await;
    let before = read_tables(&test.database.url).await;
    assert_tables_eq("the first run", &before, &model(&test.produced, watermark));
    assert_each_day_in_its_partition(&test.database.url).await;
    // A partition a day with rows, besides the two made beforehand: a recomputed day
    // with no rows gets none (the watermark's own day when T_b is midnight holds only
    // events at exactly 00:00).
    let mut with_partition: BTreeSet<NaiveDate> =
        before.hourly.iter().map(|row| row.date).collect();
    with_partition.extend([first_day, first_day.succ_opt().unwrap()]);
    assert!(with_partition.len() <= first.days.len());
    assert_eq!(
        partitions(&test.database.url, "batch_hourly").await.len(),
        with_partition.len(),
        "one partition a day with rows"
    );
    let second = test.run(watermark, false).await;
    assert_eq!(
        second.days,
        vec![date_of(watermark)],
        "nothing changed: only the watermark's own day is recomputed"
    );
    assert_tables_eq("the rerun", &read_tables(&test.database.url).await, &before);
    assert_eq!(
        second.rows,
        before.baselines.len() as u64,
        "the recomputed day's rows are all unchanged, so only the baselines are written"
    );
    let days = read_batch_days(&test.database.url).await;
    for (date, run_id) in &days {
        let expected = if *date == date_of(watermark) {
            second.run_id
        } else {
            first.run_id
        };
        assert_eq!(*run_id, expected, "batch_days of {date}");
    }

    // The binary, once more at the same watermark: --as-of is floored to the hour and
    // may have any offset.
    let as_of = chrono::DateTime::from_timestamp_millis(watermark + 17 * MINUTE + 23_456)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339();
    assert!(as_of.ends_with("+02:00"), "{as_of}");
    let output = test
        .binary(&test.settings, &["run", "--as-of", &as_of])
        .await;
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(
        output.stdout.contains(&format!(
            "published: watermark {}, 1 day(s) recomputed",
            printed(watermark)
        )),
        "{output:?}"
    );
    // The phases' times are logged with the result (`deploy/dev bench batch` reads them).
    for field in ["read_ms", "compute_ms", "copy_ms", "commit_ms"] {
        assert!(output.stdout.contains(field), "{field} logged: {output:?}");
    }
    assert_tables_eq(
        "the rerun by the binary",
        &read_tables(&test.database.url).await,
        &before,
    );
    let runs = read_runs(&test.database.url).await;
    assert_eq!(runs.len(), 3);
    assert!(
        runs.iter()
            .all(|r| r.status == "succeeded" && r.watermark == watermark)
    );
}

#[tokio::test]
async fn a_second_run_is_refused_while_another_holds_the_lock() {
    let mut rng = Rng::from_env("lock");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let end = now - MINUTE;
    let mut test = BatchTest::create("batch-lock", 2).await;
    let events = spread_events(
        &mut rng,
        &unique_name("tx"),
        300,
        10,
        (day_floor(watermark) - 2 * DAY, end),
        ingest_soon(end),
    );
    test.produce(events).await;
    test.fill_lake().await;
    test.run(watermark - HOUR, false).await;
    let tables = read_tables(&test.database.url).await;
    let runs = read_runs(&test.database.url).await;

    // Another run holds the lock (this connection stands for it).
    let mut holder = test.database.connect().await;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RUN_LOCK)
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert!(taken);
    let output = test
        .binary(&test.settings, &["run", "--as-of", &rfc3339(watermark)])
        .await;
    assert_eq!(output.code, Some(3), "{output:?}");
    assert!(
        output
            .stderr
            .contains("another batch run is in progress (it holds the advisory lock)"),
        "{output:?}"
    );
    let error = batch_layer::run(
        &test.settings,
        batch_layer::RunOptions {
            as_of: Some(watermark),
            full: true,
        },
    )
    .await
    .expect_err("the lock is held");
    assert!(error.is::<batch_layer::Locked>(), "{error:#}");
    assert_eq!(
        read_runs(&test.database.url).await,
        runs,
        "a refused run logs nothing"
    );
    assert_tables_eq(
        "while the lock is held",
        &read_tables(&test.database.url).await,
        &tables,
    );

    // Once it is released, the next run goes ahead.
    let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(RUN_LOCK)
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert!(released);
    let output = test
        .binary(&test.settings, &["run", "--as-of", &rfc3339(watermark)])
        .await;
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_tables_eq(
        "after the lock was released",
        &read_tables(&test.database.url).await,
        &model(&test.produced, watermark),
    );
}

#[tokio::test]
async fn an_incomplete_lake_a_future_or_an_earlier_watermark_is_refused() {
    let mut rng = Rng::from_env("incomplete");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let mut test = BatchTest::create("batch-incomplete", 2).await;
    let run = unique_name("tx");
    // In the lake: ingested up to 2 hours before the watermark.
    let in_lake = spread_events(
        &mut rng,
        &format!("{run}-a"),
        400,
        12,
        (day_floor(watermark) - 2 * DAY, watermark - 3 * HOUR),
        |rng, ts| (ts + rng.range(0, 3_000)).min(watermark - 2 * HOUR),
    );
    test.produce(in_lake).await;
    test.fill_lake().await;
    let lake_part = test.produced.clone();
    test.run(watermark - 2 * HOUR, false).await;
    let tables = read_tables(&test.database.url).await;
    let runs = read_runs(&test.database.url).await;

    // Then more, ingested in the half hour up to the watermark; the lake writer is not
    // running.
    let missing = spread_events(
        &mut rng,
        &format!("{run}-b"),
        100,
        12,
        (watermark - 2 * HOUR, watermark - 30 * MINUTE),
        |rng, _| watermark - rng.range(0, 30 * MINUTE),
    );
    test.produce(missing).await;

    let unchanged = |what: &'static str| {
        let (url, tables, runs) = (test.database.url.clone(), tables.clone(), runs.clone());
        async move {
            assert_tables_eq(what, &read_tables(&url).await, &tables);
            assert_eq!(read_runs(&url).await, runs, "{what}: the run log");
        }
    };
    let output = test
        .binary(&test.settings, &["run", "--as-of", &rfc3339(watermark)])
        .await;
    assert_eq!(output.code, Some(4), "{output:?}");
    assert!(
        output.stderr.contains(&format!(
            "the lake is not complete up to {}: the lake writer is behind in",
            rfc3339(watermark)
        )),
        "{output:?}"
    );
    unchanged("refused: the lake is behind").await;

    let future = hour_floor(now_ms()) + 2 * HOUR;
    let output = test
        .binary(&test.settings, &["run", "--as-of", &rfc3339(future)])
        .await;
    assert_eq!(output.code, Some(4), "{output:?}");
    assert!(
        output
            .stderr
            .contains(&format!("the watermark {} is too recent", rfc3339(future))),
        "{output:?}"
    );
    unchanged("refused: a future watermark").await;

    // Without --as-of: the last hour the lake is complete for, the one before the
    // missing records' ingest times.
    let output = test.binary(&test.settings, &["run"]).await;
    assert_eq!(output.code, Some(0), "{output:?}");
    let default = watermark - HOUR;
    assert!(
        output
            .stdout
            .contains(&format!("published: watermark {}", printed(default))),
        "{output:?}"
    );
    assert_tables_eq(
        "the default watermark",
        &read_tables(&test.database.url).await,
        &model(&lake_part, default),
    );

    // Once the lake writer has caught up, the watermark is accepted.
    test.fill_lake().await;
    let output = test
        .binary(&test.settings, &["run", "--as-of", &rfc3339(watermark)])
        .await;
    assert_eq!(output.code, Some(0), "{output:?}");
    let published = read_tables(&test.database.url).await;
    assert_tables_eq(
        "once the lake is complete",
        &published,
        &model(&test.produced, watermark),
    );

    // A watermark before the published one would leave a gap.
    let runs = read_runs(&test.database.url).await;
    let output = test
        .binary(
            &test.settings,
            &["run", "--as-of", &rfc3339(watermark - 3 * HOUR)],
        )
        .await;
    assert_eq!(output.code, Some(4), "{output:?}");
    assert!(
        output.stderr.contains(&format!(
            "the watermark {} is before the published watermark {}",
            rfc3339(watermark - 3 * HOUR),
            rfc3339(watermark)
        )),
        "{output:?}"
    );
    assert_tables_eq(
        "refused: an earlier watermark",
        &read_tables(&test.database.url).await,
        &published,
    );
    assert_eq!(read_runs(&test.database.url).await, runs);
}

/// Record timestamps (ingest times) are not monotonic within a partition: ingest stamps
/// a request when it arrives and produces it after validating and storing the ids, so a
/// request stamped earlier can land after one stamped later. A record stamped at or
/// before the watermark that sits behind a record stamped after it must still be in the
/// lake before the watermark is published: otherwise its event (ts <= T_b) is in
/// neither the batch view nor the speed layer's (which keeps only ts > T_b).
#[tokio::test]
async fn a_record_stamped_before_the_watermark_behind_a_later_one_is_waited_for() {
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let mut test = BatchTest::create("batch-inversion", 1).await;
    let run = unique_name("tx");
    let early = watermark - 2 * HOUR;
    test.produce(vec![
        event(&format!("{run}-0"), "c1", "v", 100, early, early + 10),
        // Stamped a second after the watermark.
        event(
            &format!("{run}-1"),
            "c2",
            "v",
            200,
            watermark + 500,
            watermark + 1_000,
        ),
    ])
    .await;
    test.fill_lake().await;
    // Stamped a second before the watermark, produced after the one above; the lake
    // writer has not written it yet.
    test.produce(vec![event(
        &format!("{run}-2"),
        "c3",
        "v",
        300,
        watermark - 2_000,
        watermark - 1_000,
    )])
    .await;
    assert!(test.produced[2].offset > test.produced[1].offset);

    let output = test
        .binary(&test.settings, &["run", "--as-of", &rfc3339(watermark)])
        .await;
    let published = read_tables(&test.database.url).await;
    assert_eq!(
        output.code,
        Some(4),
        "the lake lacks a record stamped before the watermark, yet the run was not \
         refused; published without it: {:?}\n{output:?}",
        published.daily
    );
}

/// A customer whose last day leaves the 30-day window loses its baseline; the others'
/// baselines are rewritten as of the new watermark, and a new customer gets one.
#[tokio::test]
async fn a_customer_whose_days_leave_the_window_loses_its_baseline() {
    let now = now_ms();
    let later = hour_floor(now) - HOUR;
    let earlier = later - DAY;
    let ingest = now - 10 * MINUTE;
    let test = {
        let mut test = BatchTest::create("batch-window", 2).await;
        let run = unique_name("tx");
        // "gone": its only day is the first day of the earlier watermark's window.
        let gone_day = day_floor(earlier) - 29 * DAY;
        let events = vec![
            event(
                &format!("{run}-1"),
                "gone",
                "v1",
                700,
                gone_day + 12 * HOUR,
                ingest,
            ),
            event(
                &format!("{run}-2"),
                "stays",
                "v1",
                300,
                gone_day + 13 * HOUR,
                ingest,
            ),
            event(
                &format!("{run}-3"),
                "stays",
                "v2",
                500,
                earlier - 2 * HOUR,
                ingest,
            ),
            event(
                &format!("{run}-4"),
                "new",
                "v3",
                900,
                later - HOUR,
                ingest + 1,
            ),
        ];
        test.produce(events).await;
        test.fill_lake().await;
        test
    };

    test.run(earlier, false).await;
    let first = read_tables(&test.database.url).await;
    assert_tables_eq(
        "as of the earlier watermark",
        &first,
        &model(&test.produced, earlier),
    );
    let customers = |tables: &common::Tables| -> Vec<String> {
        tables
            .baselines
            .iter()
            .map(|b| b.customer.clone())
            .collect()
    };
    assert_eq!(customers(&first), ["gone", "stays"]);

    test.run(later, false).await;
    let second = read_tables(&test.database.url).await;
    assert_tables_eq("a day later", &second, &model(&test.produced, later));
    assert_eq!(customers(&second), ["new", "stays"]);
}
