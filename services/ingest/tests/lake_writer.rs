//! The lake writer in process against the real Kafka: every produced event lands in the
//! lake exactly once with every field as produced, readable by DuckDB as it is; the
//! position comes from the lake (not from the group's committed offsets); the same on an
//! S3 store; a chunk closes at its maximum age; a poison record stops the writer loudly.

mod lake_support;

use std::time::Duration;

use fraud_service::Shutdown;
use fraud_testkit::wait_until;
use lake_support::{
    TestLake, assert_duckdb_agrees, assert_lake_holds_exactly, event, headers, lake_is_complete,
    last_offsets, produce, write_interrupted,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const DEADLINE: Duration = Duration::from_secs(60);

fn start_writer(test: &TestLake) -> Shutdown {
    let shutdown = Shutdown::new(Duration::from_secs(20));
    ingest::lake_writer::LakeWriter::new(&test.settings)
        .expect("the writer's configuration is valid")
        .spawn(&shutdown);
    shutdown
}

#[tokio::test]
async fn every_event_lands_once_with_every_field_and_duckdb_reads_the_lake() {
    let mut test = TestLake::create("lake-all", 3).await;
    test.settings.lake.max_rows_per_file = 500;
    test.settings.lake.row_group_rows = 128;
    test.settings.lake.idle_flush_ms = 300;
    let run = fraud_testkit::unique_name("tx");
    let producer = fraud_kafka::durable_producer(&test.settings.kafka).unwrap();

    // Some events are in the topic before the writer starts, some arrive while it runs.
    let mut produced = produce(
        &producer,
        test.topic(),
        (0..1500).map(|number| event(&run, number)).collect(),
    )
    .await;
    let shutdown = start_writer(&test);
    produced.extend(
        produce(
            &producer,
            test.topic(),
            (1500..4000).map(|number| event(&run, number)).collect(),
        )
        .await,
    );
    let last = last_offsets(&produced);
    assert_eq!(last.len(), 3, "every partition has records");

    wait_until(DEADLINE, "the lake to hold every produced offset", || {
        lake_is_complete(&test.lake, &last)
    })
    .await;
    assert_lake_holds_exactly(&test.lake, &produced).await;
    assert_duckdb_agrees(test.dir(), &produced);

    // Row groups are bounded and chunks close at the row limit.
    for listed in test.lake.list().await.unwrap() {
        let metadata = test.lake.metadata(&listed).await.unwrap();
        for group in metadata.row_groups() {
            assert!(group.num_rows() <= 128, "{}", listed.file);
        }
        let chunk = listed.file.chunk();
        assert!(chunk.last_offset() - chunk.first_offset() < 500, "{chunk}");
    }

    shutdown.trigger();
    shutdown.wait().await.expect("the writer stops cleanly");
    test.remove().await;
}

#[tokio::test]
async fn the_writer_resumes_from_the_lake_not_from_committed_offsets() {
    let test = TestLake::create("lake-resume", 2).await;
    let run = fraud_testkit::unique_name("tx");
    let producer = fraud_kafka::durable_producer(&test.settings.kafka).unwrap();
    let produced = produce(
        &producer,
        test.topic(),
        (0..1200).map(|number| event(&run, number)).collect(),
    )
    .await;
    let last = last_offsets(&produced);

    // The lake already holds partition 0 up to offset 299 in a complete chunk, then an
    // incomplete chunk from 300 (only the file of its first date made it), and a staged
    // file of that chunk that never got renamed.
    let (interrupted, bytes) = write_interrupted(&test.lake, &produced, 0..=299, 300..=449).await;
    let local = test.lake.local_dir().unwrap().to_owned();
    let staged = local.join(format!(
        "{}#1",
        interrupted.files()[1].file().path().as_ref()
    ));
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, &bytes[..100]).unwrap();

    // The group's committed offsets say something else entirely; they must not matter.
    let committer: BaseConsumer =
        fraud_kafka::manual_commit_consumer(&test.settings.kafka, &test.settings.lake.writer_group)
            .unwrap();
    let mut misleading = TopicPartitionList::new();
    misleading
        .add_partition_offset(test.topic(), 0, Offset::Offset(900))
        .unwrap();
    misleading
        .add_partition_offset(test.topic(), 1, Offset::Offset(250))
        .unwrap();
    tokio::task::spawn_blocking(move || committer.commit(&misleading, CommitMode::Sync))
        .await
        .unwrap()
        .expect("commit misleading offsets");

    let shutdown = start_writer(&test);
    wait_until(DEADLINE, "the lake to hold every produced offset", || {
        lake_is_complete(&test.lake, &last)
    })
    .await;
    assert!(!staged.exists(), "the staged leftover is removed");
    assert_lake_holds_exactly(&test.lake, &produced).await;
    shutdown.trigger();
    shutdown.wait().await.expect("the writer stops cleanly");
    test.remove().await;
}

#[tokio::test]
async fn on_s3_every_event_lands_once_and_the_writer_resumes_from_the_lake() {
    let mut test = TestLake::create_s3("lake-s3", 3).await;
    test.settings.lake.max_rows_per_file = 400;
    test.settings.lake.row_group_rows = 128;
    test.settings.lake.idle_flush_ms = 300;
    let run = fraud_testkit::unique_name("tx");
    let producer = fraud_kafka::durable_producer(&test.settings.kafka).unwrap();
    let mut produced = produce(
        &producer,
        test.topic(),
        (0..1500).map(|number| event(&run, number)).collect(),
    )
    .await;

    // The lake already holds partition 0 up to offset 199 in a complete chunk, then the
    // first file of an unfinished chunk from 200 (a writer stopped mid-chunk).
    write_interrupted(&test.lake, &produced, 0..=199, 200..=349).await;

    // The writer resumes from the lake, takes events arriving while it runs, and, once
    // restarted, goes on from where the lake is.
    for (numbers, lake_holds) in [
        (1500..2500, "the S3 lake to hold every produced offset"),
        (
            2500..3000,
            "the S3 lake, after a restart, to hold the later offsets too",
        ),
    ] {
        let shutdown = start_writer(&test);
        produced.extend(
            produce(
                &producer,
                test.topic(),
                numbers.map(|number| event(&run, number)).collect(),
            )
            .await,
        );
        let last = last_offsets(&produced);
        wait_until(DEADLINE, lake_holds, || lake_is_complete(&test.lake, &last)).await;
        shutdown.trigger();
        shutdown.wait().await.expect("the writer stops cleanly");
    }
    assert_lake_holds_exactly(&test.lake, &produced).await;
    let claimed = test.lake.claim_offsets(1).await.unwrap();
    assert!(
        !claimed.is_empty(),
        "the writer claims its chunks on S3 too"
    );
    test.remove().await;
}

#[tokio::test]
async fn a_chunk_is_written_at_its_maximum_age_though_neither_full_nor_idle() {
    let mut test = TestLake::create("lake-age", 2).await;
    // Neither the row limit nor the idle time can close a chunk within the test.
    test.settings.lake.max_rows_per_file = 1_000_000;
    test.settings.lake.idle_flush_ms = 3_600_000;
    test.settings.lake.max_chunk_age_ms = 500;
    let run = fraud_testkit::unique_name("tx");
    let producer = fraud_kafka::durable_producer(&test.settings.kafka).unwrap();
    let shutdown = start_writer(&test);
    let produced = produce(
        &producer,
        test.topic(),
        (0..200).map(|number| event(&run, number)).collect(),
    )
    .await;
    let last = last_offsets(&produced);
    wait_until(DEADLINE, "the lake to hold every produced offset", || {
        lake_is_complete(&test.lake, &last)
    })
    .await;
    assert_lake_holds_exactly(&test.lake, &produced).await;
    shutdown.trigger();
    shutdown.wait().await.expect("the writer stops cleanly");
    test.remove().await;
}

#[tokio::test]
async fn a_record_that_does_not_decode_stops_the_writer_naming_it() {
    let mut test = TestLake::create("lake-poison", 1).await;
    test.settings.lake.idle_flush_ms = 100;
    let run = fraud_testkit::unique_name("tx");
    let producer = fraud_kafka::durable_producer(&test.settings.kafka).unwrap();
    let good = produce(
        &producer,
        test.topic(),
        (0..3).map(|number| event(&run, number)).collect(),
    )
    .await;
    assert_eq!(last_offsets(&good).get(&0), Some(&2));
    producer
        .send(
            FutureRecord::to(test.topic())
                .key("customer")
                .payload("{\"not\":\"an event\"}")
                .headers(headers()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("produce the poison record");

    let shutdown = start_writer(&test);
    let error = tokio::time::timeout(DEADLINE, shutdown.wait())
        .await
        .expect("the writer fails within the deadline")
        .expect_err("the writer task fails");
    let message = error.to_string();
    assert!(message.contains("lake-writer"), "{message}");
    assert!(message.contains("partition 0 offset 3"), "{message}");
    for listed in test.lake.list().await.unwrap() {
        assert!(
            listed.file.chunk().last_offset() < 3,
            "nothing at or after the poison record is written: {}",
            listed.file
        );
    }
    test.remove().await;
}
