//! Real, third-party data through the real binaries: `fraud-replay` posts the Sparkov
//! sample (`../shared/data/sparkov-fraudtest-head.csv`, 5,116 transactions, 18 labelled
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
use platform_tests::reference::{
    self, Event, LakeRow, WINDOW_MS, check_daily, check_risk, instant,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);

/// The sample file: part of the product's test data, next to the checkout.
fn sample_file() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/sparkov-fraudtest-head.csv");
    assert!(
        path.is_file(),
        "the Sparkov sample is missing at {} (../shared/data from the workspace root): \
         it is part of the product's test data",
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
        let (status, risk) = platform
            .read(&format!("/v1/customers/{customer}/risk"))
            .await;
        assert_eq!(status, 200, "{risk}");
        assert_eq!(risk["freshness"]["batchWatermark"], instant(watermark));
        check_risk(&risk, &events, customer);
        let (status, daily) = platform
            .read(&format!(
                "/v1/customers/{customer}/daily?from={from}&to={to}"
            ))
            .await;
        assert_eq!(status, 200, "{daily}");
        check_daily(&daily, &events, customer);
    }

    // The window rules never fire on this file, whatever the speed layer's batches: it
    // judges a customer's window once per applied batch, at the customer's latest event,
    // and at full speed a batch holds hours of this file, but no window at any event's
    // time is over 5,000.00 or 20 events. So the alerts below are the event rule's
    // (judged on every event), the same in every run.
    let (largest_sum, largest_count) = events
        .iter()
        .map(|e| {
            let window = reference::window(&events, &e.customer, e.ts);
            (window.sum, window.count)
        })
        .fold((0, 0), |(s, c), (ws, wc)| (s.max(ws), c.max(wc)));
    assert!(
        largest_sum <= 500_000 && largest_count <= 20,
        "a window of {largest_sum} minor units, {largest_count} events: the window rules \
         may fire, and what they raise depends on the speed layer's batches"
    );

    // The default rules against the labels. An alert covers a fraud of its customer
    // whose time is in a window the alert's episode fired on: after the episode's start
    // minus 30 minutes, at or before its last firing.
    let history = platform.alert_history().await;
    let last_fired: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT alert_id::text, (extract(epoch FROM last_fired_at) * 1000)::bigint \
         FROM rule_episodes",
    )
    .fetch_all(&platform.pool)
    .await
    .expect("read the episodes")
    .into_iter()
    .collect();
    let mut table: BTreeMap<String, (usize, usize, BTreeSet<String>)> = BTreeMap::new();
    let mut caught_by_any = BTreeSet::new();
    let mut true_alerts = 0;
    for alert in &history {
        let rule = alert["rule"].as_str().expect("a rule").to_owned();
        let customer = alert["customerId"].as_str().expect("a customer");
        let start = reference::millis(alert["episodeStart"].as_str().expect("a start"));
        let id = alert["alertId"].as_str().expect("an id");
        let end = last_fired.get(id).copied().unwrap_or(start).max(start);
        let covered: Vec<&str> = frauds
            .iter()
            .filter(|fraud| {
                fraud.customer == customer && fraud.ts > start - WINDOW_MS && fraud.ts <= end
            })
            .map(|fraud| fraud.id.as_str())
            .collect();
        let entry = table.entry(rule).or_default();
        entry.0 += 1;
        if !covered.is_empty() {
            entry.1 += 1;
            true_alerts += 1;
        }
        for id in covered {
            entry.2.insert(id.to_owned());
            caught_by_any.insert(id.to_owned());
        }
    }
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
        "| rule | alerts | covering a fraud | false positives | frauds caught (of 18) | precision | recall |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let defaults = fraud_testkit::local_settings().serving.rules;
    for rule in &defaults {
        let (alerts, true_ones, caught) = table.remove(&rule.id).unwrap_or_default();
        report.push_str(&format!(
            "| `{}` | {alerts} | {true_ones} | {} | {} | {} | {} |\n",
            rule.id,
            alerts - true_ones,
            caught.len(),
            ratio(true_ones, alerts),
            ratio(caught.len(), 18)
        ));
    }
    assert!(
        table.is_empty(),
        "alerts of rules that are not defaults: {table:?}"
    );
    report.push_str(&format!(
        "| any rule | {} | {true_alerts} | {} | {} | {} | {} |\n",
        history.len(),
        history.len() - true_alerts,
        caught_by_any.len(),
        ratio(true_alerts, history.len()),
        ratio(caught_by_any.len(), 18)
    ));
    eprintln!(
        "replayed in {replayed_in:?}, checked {} customers, done in {:?}\n{report}",
        sample.len(),
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
