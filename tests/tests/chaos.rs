//! The fault suite, small (`cargo test -p platform-tests --features chaos`): 50,000
//! events (`CHAOS_EVENTS` for another number) through a platform of the test's own
//! while each service is SIGKILLed twice and Redis loses the platform's keys, then
//! every check of [`platform_tests::chaos`] (Kafka, the lake, windows, batch tables,
//! alerts). `CHAOS_RESTART_SERVERS=1` also restarts Kafka, PostgreSQL and RabbitMQ and
//! the Redis server itself through `deploy/dev restart`: those are the shared servers,
//! so only on a machine where nobody else is testing. The report goes to stderr and to
//! a file in the system's temporary directory.

use platform_tests::chaos::{self, ChaosConfig, RedisLoss};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_loses_nothing_and_counts_nothing_twice_under_faults() {
    let events = std::env::var("CHAOS_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50_000);
    let mut config = ChaosConfig::new(events);
    config.rate = 400.0;
    if std::env::var("CHAOS_RESTART_SERVERS").is_ok_and(|value| value == "1") {
        config.restart_servers = true;
        config.redis_loss = RedisLoss::Restart;
    }
    let report = chaos::run(&config).await.expect("the fault suite ran");
    let path = std::env::temp_dir().join(fraud_testkit::unique_name("chaos-report") + ".md");
    std::fs::write(&path, &report.markdown).expect("write the report");
    eprintln!("{}\n(report: {})", report.markdown, path.display());
    let failed: Vec<String> = report
        .verdicts
        .iter()
        .filter(|verdict| !verdict.passed)
        .map(|verdict| format!("{}: {}", verdict.check, verdict.detail))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let unrecovered: Vec<&str> = report
        .faults
        .iter()
        .filter(|fault| !fault.struck || fault.caught_up.is_none())
        .map(|fault| fault.name.as_str())
        .collect();
    assert!(
        unrecovered.is_empty(),
        "not struck, or not recovered: {unrecovered:?}"
    );
    assert!(report.passed);
}
