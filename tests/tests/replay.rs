//! Real, third-party data through the real binaries: `fraud-replay` posts the Sparkov
//! sample (`tests/data/sparkov-fraudtest-head.csv`, 5,116 transactions, 18 labelled
//! frauds) through ingest, as fast as possible, its times shifted so the last event
//! lands at now. Every figure the platform reports then equals DuckDB's independent
//! reading of the same file: the lake (every row once, exact amounts), `batch_daily`
//! after a batch run, and the window, today, last 24 hours and `/daily` of a sample of
//! customers at each answer's `asOf`. Last, the alerts the default rules raised are
//! matched with the labelled frauds: the precision and recall the README reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use platform_tests::platform::Platform;
use platform_tests::reference::{self, Event, LakeRow, WINDOW_MS, instant};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);

/// The sample file: part of the product's test data (`tests/data`, with its provenance).
fn sample_file() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sparkov-fraudtest-head.csv");
    assert!(
        path.is_file(),
        "the Sparkov sample is missing at {}: it is part of the repository's test data",
        path.display()
    );
    path
}

/// DuckDB's reading of the file: `(id, customer, vendor, amount minor, ts ms, fraud)`,
/// the card number as text and the amount as a decimal, never through a float.
fn file_rows(path: &std::path::Path) -> Vec<(String, String, String, i64, i64, bool)> {
    const SCRIPT: &str = r#"
import duckdb, json, sys
rows = duckdb.connect().execute(f"""
    SELECT trans_num, cc_num, merchant, CAST(amt * 100 AS BIGINT),
           epoch_ms(trans_date_trans_time), is_fraud = 1
    FROM read_csv('{sys.argv[1]}', header = true, types = {{'trans_num': 'VARCHAR',
                  'cc_num': 'VARCHAR', 'merchant': 'VARCHAR', 'amt': 'DECIMAL(18,2)',
                  'trans_date_trans_time': 'TIMESTAMP', 'is_fraud': 'INTEGER'}})""").fetchall()
print(json.dumps(rows))
"#;
    let rows = fraud_testkit::duckdb_json(SCRIPT, &[&path.to_string_lossy()]);
    serde_json::from_value(rows).expect("rows of six columns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_sparkov_sample_leaves_every_figure_equal_to_the_file() {
    let started = Instant::now();
    let path = sample_file();
    let rows = file_rows(&path);
    assert_eq!(rows.len(), 5116);
    let platform = Platform::start("replay").await;

    // Replay: the last event lands at `now`.
    let now = reference::millis(&instant(chrono::Utc::now().timestamp_millis()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fraud-replay"))
        .arg(&path)
        .args([
            "--url",
            &platform.ingest.base,
            "--key",
            &platform.ingest_key,
        ])
        .args([
            "--shift-to",
            &instant(now),
            "--speedup",
            "0",
            "--batch",
            "1000",
        ])
        .output()
        .await
        .expect("run fraud-replay");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fraud-replay failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    let last = rows.iter().map(|row| row.4).max().expect("rows");
    let shift = now - last;
    assert_eq!(summary["rows"], 5116, "{summary}");
    assert_eq!(summary["accepted"], 5116, "{summary}");
    assert_eq!(summary["replayed"], 0, "{summary}");
    assert_eq!(summary["labelledFrauds"], 18, "{summary}");
    assert_eq!(summary["shiftMs"], shift, "{summary}");
    let replayed_in = started.elapsed();

    let events: Vec<Event> = rows
        .iter()
        .map(|(id, customer, vendor, amount, ts, _)| Event {
            id: id.clone(),
            customer: customer.clone(),
            vendor: vendor.clone(),
            amount: *amount,
            ts: ts + shift,
        })
        .collect();
    let frauds: Vec<&Event> = rows
        .iter()
        .zip(&events)
        .filter(|(row, _)| row.5)
        .map(|(_, event)| event)
        .collect();
    assert_eq!(frauds.len(), 18);

    // The lake: every row once, exactly as in the file.
    platform.caught_up(DEADLINE).await;
    platform.lake_complete(DEADLINE).await;
    let lake: BTreeSet<LakeRow> = platform.lake_rows().into_iter().collect();
    let expected: BTreeSet<LakeRow> = events.iter().map(Event::lake_row).collect();
    assert_eq!(lake.len(), 5116);
    assert_eq!(lake, expected);

    // The batch tables after a run at the last full hour.
    let watermark = reference::hour_of(now);
    let run = platform.run_batch(watermark).await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(
        reference::batch_daily(&platform.pool).await,
        reference::daily_all(&events, watermark)
    );

    // Risk and /daily of a sample: every customer with something in the last window,
    // and every 10th of the others.
    let customers: BTreeSet<&str> = events.iter().map(|e| e.customer.as_str()).collect();
    let recent: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.ts > now - WINDOW_MS)
        .map(|e| e.customer.as_str())
        .collect();
    let sample: Vec<&str> = customers
        .iter()
        .enumerate()
        .filter(|(index, customer)| recent.contains(*customer) || index % 10 == 0)
        .map(|(_, customer)| *customer)
        .collect();
    let from = reference::date(reference::day_of(
        events.iter().map(|e| e.ts).min().unwrap(),
    ));
    let to = reference::date(reference::day_of(now));
    for customer in &sample {
        platform
            .check_customer(customer, &events, Some(watermark), (&from, &to))
            .await;
    }

    // The default rules against the labels, judged per transaction, which does not
    // depend on how the speed layer batches the replay (its alerts, one per episode,
    // do: at full speed one window update carries hours of a card's events, and the
    // firings of one update make one episode). A transaction *fires* a rule when the
    // rule holds at it: over 1,000.00 at a vendor its card has not used (within the
    // speed layer's retention: no batch run knows older vendors yet), or the
    // card's window at its time over 5,000.00 or 20 events (none on this file; the
    // baseline rule needs a batch run, and the replay starts cold). A labelled fraud is
    // *caught* when it, or a transaction of its card at most 30 minutes before it, fires
    // a rule: the card is under alert when the fraud happens.
    let defaults = fraud_testkit::local_settings().serving.rules;
    let mut order: Vec<&Event> = events.iter().collect();
    order.sort_by_key(|event| event.ts);
    // The card's events so far, for "a vendor it has not used before": as the platform
    // knows it without a batch run, one of its events within the speed layer's retention
    // (window plus allowed lateness) before the card's latest time.
    let retention = WINDOW_MS + fraud_testkit::local_settings().speed.allowed_lateness_ms as i64;
    let mut seen: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut firing: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in order {
        let window = reference::window(&events, &event.customer, event.ts);
        if window.sum > 500_000 {
            firing.entry("sum-30m-over-limit").or_default().push(event);
        }
        if window.count > 20 {
            firing
                .entry("count-30m-over-limit")
                .or_default()
                .push(event);
        }
        let before = seen.entry(&event.customer).or_default();
        let clock = before.iter().map(|earlier| earlier.ts).max();
        let known = clock.is_some_and(|clock| {
            before
                .iter()
                .any(|earlier| earlier.vendor == event.vendor && earlier.ts > clock - retention)
        });
        if event.amount > 100_000 && !known {
            firing
                .entry("new-vendor-large-amount")
                .or_default()
                .push(event);
        }
        before.push(event);
    }
    let fraud_ids: BTreeSet<&str> = frauds.iter().map(|fraud| fraud.id.as_str()).collect();
    let caught_by = |fired: &[&Event]| -> BTreeSet<&str> {
        frauds
            .iter()
            .filter(|fraud| {
                fired.iter().any(|event| {
                    event.customer == fraud.customer
                        && event.ts <= fraud.ts
                        && fraud.ts - event.ts <= WINDOW_MS
                })
            })
            .map(|fraud| fraud.id.as_str())
            .collect()
    };
    let ratio = |part: usize, whole: usize| {
        if whole == 0 {
            "–".to_owned()
        } else {
            format!("{:.1} %", 100.0 * part as f64 / whole as f64)
        }
    };
    // The table of the README (its "Replaying real data"), which must show these
    // figures: every default rule in the configuration's order, then any rule.
    let mut report = String::from(
        "| rule | transactions firing | of them frauds | false positives | frauds caught (of 18) | precision | recall |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut all: Vec<&Event> = Vec::new();
    let mut by_rule: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut row = |name: String, fired: &[&Event]| {
        let frauds_firing = fired
            .iter()
            .filter(|event| fraud_ids.contains(event.id.as_str()))
            .count();
        let caught = caught_by(fired).len();
        report.push_str(&format!(
            "| {name} | {} | {frauds_firing} | {} | {caught} | {} | {} |\n",
            fired.len(),
            fired.len() - frauds_firing,
            ratio(frauds_firing, fired.len()),
            ratio(caught, 18)
        ));
    };
    for rule in &defaults {
        let fired = firing.remove(rule.id.as_str()).unwrap_or_default();
        row(format!("`{}`", rule.id), &fired);
        by_rule.insert(
            &rule.id,
            fired.iter().map(|event| event.id.as_str()).collect(),
        );
        all.extend(fired);
    }
    assert!(firing.is_empty(), "firings of rules that are not defaults");
    all.sort_by_key(|event| (event.ts, event.id.clone()));
    all.dedup_by_key(|event| event.id.clone());
    row("any rule".to_owned(), &all);

    // The platform's alerts agree: each names a transaction that fires its rule, and
    // each firing transaction is in an episode of its card's alert on that rule that
    // started at or before it.
    let history = platform.alert_history().await;
    for alert in &history {
        let rule = alert["rule"].as_str().expect("a rule");
        let named = alert["event"]["transactionId"].as_str().expect("an event");
        assert!(
            by_rule.get(rule).is_some_and(|fired| fired.contains(named)),
            "an alert on a transaction that does not fire its rule: {alert}"
        );
    }
    for event in &all {
        let alerted = history.iter().any(|alert| {
            alert["customerId"] == event.customer.as_str()
                && reference::millis(alert["event"]["ts"].as_str().unwrap()) <= event.ts
        });
        assert!(
            alerted,
            "no alert of {} at or before {}",
            event.customer, event.id
        );
    }
    let cards = all
        .iter()
        .map(|e| e.customer.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    assert!(
        (cards..=all.len()).contains(&history.len()),
        "{} alerts for {} firing transactions of {cards} cards",
        history.len(),
        all.len()
    );
    eprintln!(
        "replayed in {replayed_in:?}, checked {} customers, {} alerts, done in {:?}\n{report}",
        sample.len(),
        history.len(),
        started.elapsed()
    );

    platform.stop().await;
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    assert!(
        readme.contains(&report),
        "README's table of the rules against the labelled frauds is not what the replay \
         measured; it should be:\n{report}"
    );
}
