//! The real `ingest` binary's lake writer, killed with SIGKILL at several points of a
//! stream of 120,000 events and restarted each time: the lake ends holding every offset
//! of every partition exactly once, with the rows as produced.

mod lake_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fraud_testkit::service::Binary;
use fraud_testkit::{ChildProcess, poll_for, wait_until};
use lake_support::{
    Produced, TestLake, assert_lake_holds_exactly, event, lake_is_complete, last_offsets, produce,
    rows_named,
};

const EVENTS: u64 = 120_000;
const PARTITIONS: i32 = 6;
/// Produced in batches every 100 ms, so the stream lasts about a minute and every kill
/// lands while it is still flowing.
const BATCH: u64 = 200;
/// The writer is killed when the lake holds these shares of the stream.
const KILL_POINTS: [f64; 5] = [0.10, 0.25, 0.45, 0.65, 0.85];
/// After a kill point is reached, how long to watch for a file being written (so the
/// kill lands mid-write) before killing anyway.
const MID_WRITE_WATCH: Duration = Duration::from_millis(1500);
const DEADLINE: Duration = Duration::from_secs(90);

fn ingest() -> Binary<'static> {
    Binary {
        path: env!("CARGO_BIN_EXE_ingest"),
        args: &[],
        section: "ingest",
    }
}

/// Starts the real binary on the test's topic, group and lake.
fn start_ingest(test: &TestLake) -> ChildProcess {
    let toml = format!(
        "[kafka]\ntransactions_topic = \"{topic}\"\n\
         [lake]\nroot = \"{root}\"\nwriter_group = \"{group}\"\n\
         max_rows_per_file = 2000\nrow_group_rows = 500\nidle_flush_ms = 300\n",
        topic = test.topic(),
        root = test.dir().display(),
        group = test.settings.lake.writer_group,
    );
    let (process, _base) = ingest().start(&toml, &[]);
    process
}

/// Whether a file is being written: a local lake stages it as `<name>#<n>` until it is
/// complete and renamed into place.
fn staged_file_exists(root: &Path) -> bool {
    let Ok(dates) = std::fs::read_dir(root.join("transactions")) else {
        return false;
    };
    dates.flatten().any(|date| {
        std::fs::read_dir(date.path()).is_ok_and(|files| {
            files
                .flatten()
                .any(|file| file.file_name().to_string_lossy().contains(".parquet#"))
        })
    })
}

/// Watches for a staged file for at most `watch`; true when one was seen.
async fn wait_for_a_write(root: PathBuf, watch: Duration) -> bool {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        while started.elapsed() < watch {
            if staged_file_exists(&root) {
                return true;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        false
    })
    .await
    .expect("the watcher")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_is_exact_after_sigkills_at_several_points_of_a_stream() {
    let started = Instant::now();
    let test = TestLake::create("lake-crash", PARTITIONS).await;
    let run = fraud_testkit::unique_name("tx");

    let stream = {
        let kafka = test.settings.kafka.clone();
        let topic = test.topic().to_owned();
        tokio::spawn(async move {
            let producer = fraud_kafka::durable_producer(&kafka).unwrap();
            let mut produced = Produced::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for batch_start in (0..EVENTS).step_by(BATCH as usize) {
                tick.tick().await;
                let batch = (batch_start..batch_start + BATCH)
                    .map(|number| event(&run, number))
                    .collect();
                produced.extend(produce(&producer, &topic, batch).await);
            }
            produced
        })
    };

    let mut process = start_ingest(&test);
    let mut kills = Vec::new();
    let mut restarts_output = Vec::new();
    let mut rows_at_last_kill = 0;
    for share in KILL_POINTS {
        let target = (EVENTS as f64 * share) as u64;
        let rows = poll_for(DEADLINE, &format!("the lake to hold {target} rows"), || {
            let lake = &test.lake;
            let running = process.is_running();
            async move {
                assert!(running, "ingest exited on its own");
                let rows = rows_named(lake).await;
                // Only kill a writer that has written since it was started.
                (rows >= target && rows > rows_at_last_kill).then_some(rows)
            }
        })
        .await;
        let mid_write = wait_for_a_write(test.dir().to_owned(), MID_WRITE_WATCH).await;
        process.signal(libc::SIGKILL);
        let status = process.wait_for_exit(Duration::from_secs(10));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "ingest was killed, not stopped"
        );
        rows_at_last_kill = rows_named(&test.lake).await;
        kills.push((share, rows, mid_write, started.elapsed()));
        restarts_output.push(process.output());
        process = start_ingest(&test);
    }

    let produced = stream.await.expect("the producer task");
    assert_eq!(produced.len() as u64, EVENTS);
    let last = last_offsets(&produced);
    assert_eq!(
        last.len(),
        PARTITIONS as usize,
        "every partition has records"
    );
    wait_until(DEADLINE, "the lake to hold every produced offset", || {
        lake_is_complete(&test.lake, &last)
    })
    .await;
    process.signal(libc::SIGTERM);
    let status = process.wait_for_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "ingest did not stop cleanly: {status}\n{}",
        process.output()
    );
    restarts_output.push(process.output());

    assert_lake_holds_exactly(&test.lake, &produced).await;
    let summary = lake_support::duckdb_summary(test.dir());
    assert_eq!(summary["count"], EVENTS, "{summary}");
    assert_eq!(summary["distinct_positions"], EVENTS, "{summary}");
    assert_eq!(summary["distinct_transactions"], EVENTS, "{summary}");

    let recovered: usize = restarts_output
        .iter()
        .map(|output| output.matches("removed an incomplete chunk").count())
        .sum();
    let completed: usize = restarts_output
        .iter()
        .map(|output| output.matches("completing exactly that chunk").count())
        .sum();
    let staged: usize = restarts_output
        .iter()
        .map(|output| output.matches("removed staged files").count())
        .sum();
    let per_partition: BTreeMap<i32, i64> = last.iter().map(|(p, o)| (*p, o + 1)).collect();
    eprintln!(
        "lake crash test: {EVENTS} events over {PARTITIONS} partitions ({per_partition:?}), \
         killed at (share, rows in the lake, mid-write, elapsed) {kills:?}; recoveries \
         removed {recovered} incomplete unclaimed chunks, completed {completed} claimed \
         ones and removed staged files {staged} times; total {:?}",
        started.elapsed()
    );
    test.remove().await;
}
