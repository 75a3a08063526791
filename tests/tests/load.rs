//! `fraud-load` (what `deploy/dev load` runs) through the real ingest binary: every
//! generated event is accepted once, duplicates are idempotent replays, and the topic
//! holds exactly the distinct transactions; the labels file names the episodes.

use std::collections::BTreeSet;
use std::time::Duration;

use platform_tests::platform::Platform;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_load_posts_every_generated_event_once_with_its_duplicates_replayed() {
    let platform = Platform::start("load").await;
    let labels = std::env::temp_dir().join(fraud_testkit::unique_name("load-labels") + ".json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fraud-load"))
        .args([
            "--url",
            &platform.ingest.base,
            "--key",
            &platform.ingest_key,
        ])
        .args(["--events", "3000", "--customers", "300", "--episodes", "3"])
        .args(["--rate", "0", "--clients", "3", "--batch", "100"])
        .args(["--duplicates", "0.05", "--seed", "42"])
        .arg("--labels")
        .arg(&labels)
        .output()
        .await
        .expect("run fraud-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fraud-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    let deliveries = summary["deliveries"].as_u64().expect("deliveries");
    let duplicates = summary["duplicates"].as_u64().expect("duplicates");
    assert_eq!(summary["events"], 3000, "{summary}");
    assert_eq!(deliveries, 3000 + duplicates, "{summary}");
    assert!(duplicates > 0, "{summary}");
    assert_eq!(summary["acknowledged"], deliveries, "{summary}");
    assert_eq!(summary["accepted"], 3000, "{summary}");
    assert_eq!(summary["replayed"], duplicates, "{summary}");

    let episodes: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&labels).expect("the labels file"))
            .expect("labels as JSON");
    std::fs::remove_file(&labels).expect("remove the labels file");
    assert_eq!(episodes.len(), 3);
    let rules: BTreeSet<&str> = episodes
        .iter()
        .map(|episode| episode["rules"][0].as_str().expect("a rule"))
        .collect();
    assert_eq!(
        rules,
        BTreeSet::from([
            "count-30m-over-limit",
            "new-vendor-large-amount",
            "sum-30m-over-limit"
        ])
    );

    fraud_testkit::wait_until(
        Duration::from_secs(30),
        "3,000 records in Kafka",
        || async { platform.transactions_in_kafka().await >= 3000 },
    )
    .await;
    assert_eq!(platform.transactions_in_kafka().await, 3000);
    platform.stop().await;
}
