//! Two writers of one partition against the real Kafka: the partition's new owner (the
//! real lake writer, in its group) and a *zombie*, a writer that lost the partition
//! without noticing (frozen past the session timeout) and still holds a chunk. The
//! zombie is driven through the writer's own buffers and chunk writes
//! ([`ingest::lake_writer::ChunkWriter`]), at exactly the moments that used to put
//! overlapping chunks in the lake. Whatever the order, the lake ends holding every
//! record exactly once.

mod lake_support;

use std::time::Duration;

use fraud_lake::{ChunkBuilder, ChunkId, Claim, ClaimOutcome, Fence};
use fraud_service::Shutdown;
use fraud_testkit::wait_until;
use ingest::lake_writer::{ChunkWriter, Position, Written};
use lake_support::{
    Produced, TestLake, assert_duckdb_agrees, assert_lake_holds_exactly, event, lake_is_complete,
    last_offsets, produce,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn start_writer(test: &TestLake) -> Shutdown {
    let shutdown = Shutdown::new(Duration::from_secs(20));
    ingest::lake_writer::LakeWriter::new(&test.settings)
        .expect("the writer's configuration is valid")
        .spawn(&shutdown);
    shutdown
}

/// Produces the events numbered `numbers` to the test's single partition, checking
/// they land at offsets equal to their numbers.
async fn produce_range(test: &TestLake, run: &str, numbers: std::ops::Range<u64>) -> Produced {
    let producer = fraud_kafka::durable_producer(&test.settings.kafka).unwrap();
    let mut produced = Produced::new();
    // One at a time, so that offsets follow the numbers.
    for number in numbers {
        let one = produce(&producer, test.topic(), vec![event(run, number)]).await;
        assert_eq!(one.keys().next(), Some(&(0, number as i64)));
        produced.extend(one);
    }
    produced
}

/// Feeds `zombie` the records at `offsets` of partition 0.
fn feed(zombie: &mut ChunkWriter, produced: &Produced, offsets: std::ops::RangeInclusive<i64>) {
    for offset in offsets {
        zombie
            .push(0, offset, &produced[&(0, offset)])
            .expect("the zombie buffers the record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_writing_its_chunk_after_the_new_owner_moved_on_writes_nothing() {
    let mut test = TestLake::create("lake-zombie-late", 1).await;
    let run = fraud_testkit::unique_name("tx");
    let produced = produce_range(&test, &run, 0..300).await;

    // The zombie, while it still owned the partition: it recovered it, wrote 0..=99,
    // and buffered 100..=199.
    let mut zombie = ChunkWriter::from_settings(&test.settings, "zombie").unwrap();
    let position = zombie.recover(&[0], 0).await.unwrap().remove(0);
    assert_eq!(position.next_offset, 0);
    zombie.assign(0, position);
    feed(&mut zombie, &produced, 0..=99);
    let first = zombie.write_chunk(0).await.unwrap();
    assert!(
        matches!(&first, Written::Chunk { id, .. } if *id == ChunkId::new(0, 0, 99).unwrap()),
        "{first:?}"
    );
    feed(&mut zombie, &produced, 100..=199);

    // It froze; the group gave the partition to the new owner, whose chunks are cut
    // elsewhere (by count here; by the wall clock just as well).
    test.settings.lake.max_rows_per_file = 60;
    test.settings.lake.idle_flush_ms = 200;
    let shutdown = start_writer(&test);
    let last = last_offsets(&produced);
    wait_until(
        DEADLINE,
        "the new owner to write the whole partition",
        || lake_is_complete(&test.lake, &last),
    )
    .await;

    // The zombie wakes up and writes the chunk it held, 100..=199.
    let late = zombie.write_chunk(0).await.unwrap();
    assert_lake_holds_exactly(&test.lake, &produced).await;
    assert_duckdb_agrees(test.dir(), &produced);
    let Written::Fenced {
        chunk,
        fence: Fence::Lost(claim),
        resume,
    } = late
    else {
        panic!("the zombie was not fenced off: {late:?}");
    };
    assert_eq!(chunk, ChunkId::new(0, 100, 199).unwrap());
    assert_eq!(claim.chunk(), ChunkId::new(0, 100, 159).unwrap());
    assert_ne!(claim.writer(), "zombie");
    assert_eq!(
        resume,
        Position {
            next_offset: 300,
            claim: None
        },
        "repositioned where the claims say"
    );
    shutdown.trigger();
    shutdown.wait().await.expect("the writer stops cleanly");
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_loses_the_claim_race_completes_the_claimed_chunk_and_goes_on() {
    let mut test = TestLake::create("lake-zombie-race", 1).await;
    // Only the row count closes the owner's chunks within the test.
    test.settings.lake.max_rows_per_file = 100;
    test.settings.lake.idle_flush_ms = 3_600_000;
    test.settings.lake.max_chunk_age_ms = 3_600_000;
    let run = fraud_testkit::unique_name("tx");
    let mut produced = produce_range(&test, &run, 0..100).await;
    let shutdown = start_writer(&test);
    let first_last = last_offsets(&produced);
    wait_until(DEADLINE, "the owner to write 0..=99", || {
        lake_is_complete(&test.lake, &first_last)
    })
    .await;

    // The owner now buffers from 100. A zombie claims 100..=149 first, writes the file
    // of one date, and dies.
    produced.extend(produce_range(&test, &run, 100..150).await);
    let mut zombie = ChunkBuilder::new(0);
    for offset in 100..=149 {
        zombie.push(offset, &produced[&(0, offset)]).unwrap();
    }
    let zombie = zombie.finish().unwrap().unwrap();
    assert!(zombie.files().len() > 1, "the chunk spans several dates");
    let claim = Claim::of(&zombie, "zombie");
    assert_eq!(test.lake.claim(&claim).await.unwrap(), ClaimOutcome::Won);
    let one_file = &zombie.files()[0];
    let local = test
        .lake
        .local_dir()
        .unwrap()
        .join(one_file.file().path().as_ref());
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::write(&local, one_file.encode(zombie.rows(), 1000).unwrap()).unwrap();

    // The owner's chunk 100..=199 fills up: its claim loses to the zombie's, so it
    // completes 100..=149 exactly and continues from 150.
    produced.extend(produce_range(&test, &run, 150..250).await);
    let last = last_offsets(&produced);
    wait_until(DEADLINE, "the lake to hold every produced offset", || {
        lake_is_complete(&test.lake, &last)
    })
    .await;
    assert_lake_holds_exactly(&test.lake, &produced).await;
    assert_duckdb_agrees(test.dir(), &produced);
    let chunks: std::collections::BTreeSet<ChunkId> = test
        .lake
        .list()
        .await
        .unwrap()
        .iter()
        .map(|listed| listed.file.chunk())
        .collect();
    let expected: std::collections::BTreeSet<ChunkId> = [(0, 99), (100, 149), (150, 249)]
        .into_iter()
        .map(|(first, last)| ChunkId::new(0, first, last).unwrap())
        .collect();
    assert_eq!(chunks, expected);
    shutdown.trigger();
    shutdown.wait().await.expect("the writer stops cleanly");
    test.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_completes_exactly_the_chunk_a_dead_writer_claimed() {
    let mut test = TestLake::create("lake-zombie-claimed", 1).await;
    let run = fraud_testkit::unique_name("tx");
    let produced = produce_range(&test, &run, 0..300).await;

    // The previous writer wrote 0..=99, claimed 100..=199 and died before any file.
    let mut previous = ChunkWriter::from_settings(&test.settings, "previous").unwrap();
    previous.assign(
        0,
        Position {
            next_offset: 0,
            claim: None,
        },
    );
    feed(&mut previous, &produced, 0..=99);
    previous.write_chunk(0).await.unwrap();
    let claimed = Claim::new(ChunkId::new(0, 100, 199).unwrap(), 100, "previous");
    assert_eq!(test.lake.claim(&claimed).await.unwrap(), ClaimOutcome::Won);

    // The new owner cuts its own chunks at 60 rows, but not this one.
    test.settings.lake.max_rows_per_file = 60;
    test.settings.lake.idle_flush_ms = 200;
    let shutdown = start_writer(&test);
    let last = last_offsets(&produced);
    wait_until(DEADLINE, "the lake to hold every produced offset", || {
        lake_is_complete(&test.lake, &last)
    })
    .await;
    assert_lake_holds_exactly(&test.lake, &produced).await;
    let chunks: std::collections::BTreeSet<ChunkId> = test
        .lake
        .list()
        .await
        .unwrap()
        .iter()
        .map(|listed| listed.file.chunk())
        .collect();
    assert!(
        chunks.contains(&ChunkId::new(0, 100, 199).unwrap()),
        "{chunks:?}"
    );
    assert!(
        chunks.contains(&ChunkId::new(0, 200, 259).unwrap()),
        "{chunks:?}"
    );
    shutdown.trigger();
    shutdown.wait().await.expect("the writer stops cleanly");
    test.remove().await;
}
