//! A run killed (SIGKILL) part-way publishes nothing: readers keep seeing the previous
//! run's results throughout; the next run marks the killed one failed and publishes
//! exactly what a clean run publishes.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    BatchTest, DAY, HOUR, MINUTE, RUN_LOCK, Rng, assert_tables_eq, binary_command, day_floor,
    hour_floor, model, now_ms, read_runs, read_tables, rfc3339, spread_events,
};
use fraud_config::Settings;
use fraud_testkit::{unique_name, wait_until};
use sqlx::{Connection, PgConnection};

const STARTED: &str = "batch run started";

/// The binary running in the background, its output going to a file.
struct Running {
    child: tokio::process::Child,
    log: PathBuf,
    config: PathBuf,
}

impl Running {
    fn start(test: &BatchTest, settings: &Settings, args: &[&str]) -> Running {
        let config = test.config_file(settings);
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("batch-run")));
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = binary_command(&config, args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start the batch-layer binary");
        Running { child, log, config }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the run has logged that it started (its run-log row is written).
    async fn wait_started(&mut self) -> Instant {
        let deadline = Duration::from_secs(60);
        let begun = Instant::now();
        loop {
            if self.output().contains(STARTED) {
                return Instant::now();
            }
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!(
                    "the run exited ({status}) before it started:\n{}",
                    self.output()
                );
            }
            assert!(
                begun.elapsed() < deadline,
                "the run did not start:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// What a reader sees, in one statement (one snapshot).
async fn visible(db: &mut PgConnection) -> (i64, i64, i64, i64, Option<i64>) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM batch_hourly), (SELECT count(*) FROM batch_daily), \
                (SELECT count(*) FROM batch_vendors), (SELECT count(*) FROM batch_baselines), \
                (SELECT (extract(epoch FROM max(watermark)) * 1000)::bigint \
                 FROM batch_runs WHERE status = 'succeeded')",
    )
    .fetch_one(db)
    .await
    .expect("read the tables")
}

#[tokio::test]
async fn a_killed_run_publishes_nothing_and_the_next_run_recovers() {
    let test_started = Instant::now();
    let mut rng = Rng::from_env("kill");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let mut test = BatchTest::create("batch-kill", 4).await;
    test.settings.lake.max_rows_per_file = 25_000;
    test.settings.lake.row_group_rows = 10_000;
    // 200,000 events over 30 days, ingested (recently: Kafka keeps a week) up to 40
    // minutes before the watermark.
    let events = spread_events(
        &mut rng,
        &unique_name("tx"),
        200_000,
        2_000,
        (day_floor(watermark) - 29 * DAY, watermark),
        |rng, ts| ts.max(watermark - 40 * MINUTE + rng.range(0, 10 * MINUTE)),
    );
    test.produce(events).await;
    test.fill_lake().await;
    eprintln!("lake written after {:?}", test_started.elapsed());

    // A clean run, in a database of its own: what the killed run's successor must
    // publish, and how long a run takes.
    let clean = test.new_database("kill_clean").await;
    let clean_settings = test.settings_for(&clean);
    let args = ["run", "--as-of", &rfc3339(watermark), "--full"];
    let mut run = Running::start(&test, &clean_settings, &args);
    let started = run.wait_started().await;
    let status = run.child.wait().await.expect("wait for the clean run");
    let duration = started.elapsed();
    assert!(status.success(), "the clean run failed:\n{}", run.output());
    eprintln!("a clean run takes {duration:?} after it starts");
    let expected = read_tables(&clean.url).await;
    assert_tables_eq(
        "the clean run vs the model",
        &expected,
        &model(&test.produced, watermark),
    );

    // The previous run: a day earlier.
    let previous_watermark = watermark - DAY;
    test.run(previous_watermark, false).await;
    let previous = read_tables(&test.database.url).await;
    let runs_before = read_runs(&test.database.url).await;
    let mut reader = test.database.connect().await;
    let seen_before = visible(&mut reader).await;
    assert_eq!(seen_before.4, Some(previous_watermark));
    assert!(seen_before.1 > 0);

    // A full run, killed part-way; a reader watches all along.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut reads = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let seen = visible(&mut reader).await;
                assert_eq!(
                    seen, seen_before,
                    "a reader saw something other than the previous run's results"
                );
                reads += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            reads
        }
    });
    let mut run = Running::start(&test, &test.settings, &args);
    run.wait_started().await;
    let fraction = rng.range(5, 50) as u32;
    let delay = duration * fraction / 100;
    eprintln!("killing the run {delay:?} after it started ({fraction}% of a clean run)");
    tokio::time::sleep(delay).await;
    run.child.start_kill().expect("SIGKILL the run");
    let status = run.child.wait().await.expect("wait for the killed run");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the run was still running when it was killed ({status}):\n{}",
        run.output()
    );
    stop.store(true, Ordering::Relaxed);
    let reads = watcher.await.expect("the reader saw only the previous run");
    assert!(reads > 0);
    assert_tables_eq(
        "after the kill",
        &read_tables(&test.database.url).await,
        &previous,
    );
    let runs = read_runs(&test.database.url).await;
    assert_eq!(runs.len(), runs_before.len() + 1);
    let killed = runs.last().unwrap().clone();
    assert_eq!(
        (killed.status.as_str(), killed.finished, killed.watermark),
        ("running", false, watermark),
        "the killed run's row is left as it was"
    );

    // Its connections close with the process, and the lock with them.
    let url = test.database.url.clone();
    wait_until(
        Duration::from_secs(30),
        "the killed run's lock to be released",
        || {
            let url = url.clone();
            async move {
                let mut probe = PgConnection::connect(&url).await.unwrap();
                let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(RUN_LOCK)
                    .fetch_one(&mut probe)
                    .await
                    .unwrap();
                probe.close().await.ok(); // (and the lock with it)
                taken
            }
        },
    )
    .await;

    // The next run: the killed one is marked failed, the tables are the clean run's.
    let output = test
        .binary(&test.settings, &["run", "--as-of", &rfc3339(watermark)])
        .await;
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_tables_eq(
        "the run after the kill vs a clean run",
        &read_tables(&test.database.url).await,
        &expected,
    );
    let runs = read_runs(&test.database.url).await;
    let marked = runs.iter().find(|r| r.run_id == killed.run_id).unwrap();
    assert_eq!(marked.status, "failed");
    assert!(marked.finished);
    assert_eq!(
        marked.error.as_deref(),
        Some("interrupted: the run stopped before it finished")
    );
    let last = runs.last().unwrap();
    assert_eq!(
        (last.status.as_str(), last.watermark),
        ("succeeded", watermark)
    );
    eprintln!("done after {:?}", test_started.elapsed());
}
