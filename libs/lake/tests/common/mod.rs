//! What the lake's tests share: events and chunks to write, and the scenarios every kind
//! of lake (a local directory, an S3 store) must pass, each given a fresh, empty lake.
#![allow(dead_code)] // each test file uses a different part

use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_lake::{ChunkBuilder, ChunkId, ChunkWrite, Claim, ClaimOutcome, Fence, Lake, ResumeAt};
use futures::future::join_all;
use object_store::{ObjectStoreExt, PutPayload};

/// Calls the macro `$on` with the name of every scenario below: each test file makes a
/// test of each on its kind of lake.
macro_rules! every_scenario {
    ($on:ident) => {
        $on!(
            an_empty_lake_has_no_partitions_and_resumes_at_the_beginning,
            written_chunks_are_listed_and_read_back_exactly,
            a_claimed_range_is_the_only_one_written_from_its_first_offset,
            of_writers_racing_for_one_first_offset_exactly_one_wins,
            a_claimed_chunk_its_writer_left_unfinished_is_completed_not_deleted,
            an_unfinished_unclaimed_newest_chunk_is_deleted_on_recovery,
            old_claims_are_collected_and_a_writer_behind_them_is_still_fenced,
            a_lake_without_claims_is_continued_from_its_files,
        );
    };
}

pub const DAY: i64 = 86_400_000;
// 2024-03-01T00:00:00Z
pub const MARCH_1: i64 = 1_709_251_200_000;

pub fn event(offset: i64, event_millis: i64) -> TransactionEvent {
    TransactionEvent {
        transaction_id: TransactionId::parse(&format!("tx-{offset}")).unwrap(),
        customer_id: CustomerId::parse(&format!("customer-{}", offset % 7)).unwrap(),
        vendor_id: VendorId::parse("vendor-1").unwrap(),
        amount: Money::from_minor(1 + offset * 1_000_000_007),
        currency: Currency::EUR,
        event_time: EventTime::from_millis(event_millis).unwrap(),
        ingest_time: EventTime::from_millis(event_millis + 1).unwrap(),
    }
}

/// A chunk of `partition` over `offsets`, with event times spread over `days` days.
pub fn chunk(
    partition: i32,
    offsets: std::ops::RangeInclusive<i64>,
    days: i64,
) -> fraud_lake::Chunk {
    let mut builder = ChunkBuilder::new(partition);
    for offset in offsets {
        builder
            .push(
                offset,
                &event(offset, MARCH_1 + (offset % days) * DAY + offset),
            )
            .unwrap();
    }
    builder.finish().unwrap().unwrap()
}

/// The offsets the lake's files hold, per partition, sorted (duplicates kept).
pub async fn offsets_in(lake: &Lake) -> Vec<(i32, i64)> {
    let mut offsets = Vec::new();
    for listed in lake.list().await.unwrap() {
        for row in lake.read_file(&listed).await.unwrap() {
            offsets.push((row.kafka_partition, row.kafka_offset));
        }
    }
    offsets.sort();
    offsets
}

pub fn written(outcome: ChunkWrite) -> (usize, usize) {
    match outcome {
        ChunkWrite::Written { files, created, .. } => (files.len(), created),
        ChunkWrite::Fenced(fence) => panic!("fenced: {fence}"),
    }
}

/// Puts `bytes` at `path` (relative to the lake's root) as a writer that stopped would
/// have left it, behind the lake's back.
pub async fn put_raw(lake: &Lake, path: &str, bytes: Vec<u8>) {
    lake.store()
        .put(&path.into(), PutPayload::from(bytes))
        .await
        .expect("put an object");
}

pub async fn an_empty_lake_has_no_partitions_and_resumes_at_the_beginning(lake: &Lake) {
    assert!(lake.list().await.unwrap().is_empty());
    assert!(lake.partition_states().await.unwrap().is_empty());
    let recoveries = lake.recover(&[0, 1]).await.unwrap();
    assert_eq!(recoveries.len(), 2);
    for recovery in recoveries {
        assert_eq!(recovery.state.resume_at(), ResumeAt::Beginning);
        assert!(recovery.removed_files.is_empty() && recovery.removed_staged.is_empty());
    }
}

pub async fn written_chunks_are_listed_and_read_back_exactly(lake: &Lake) {
    let first = chunk(0, 0..=99, 3);
    let second = chunk(0, 100..=149, 2);
    let other_partition = chunk(1, 0..=9, 1);
    for written in [&first, &second, &other_partition] {
        let files = lake.write_chunk(written, 16).await.unwrap();
        assert_eq!(files.len(), written.files().len());
    }
    let listing = lake.list().await.unwrap();
    assert_eq!(listing.len(), 3 + 2 + 1);
    let mut offsets = Vec::new();
    for listed in &listing {
        let footer = lake.footer(listed).await.unwrap();
        let chunk_rows = listed.file.chunk().last_offset() - listed.file.chunk().first_offset() + 1;
        assert_eq!(footer.chunk_rows, Some(chunk_rows as u64));
        let rows = lake.read_file(listed).await.unwrap();
        assert_eq!(rows.len() as u64, footer.rows);
        for row in rows {
            let expected = event(row.kafka_offset, row.event_time_millis);
            assert_eq!(row.transaction_id, expected.transaction_id.as_str());
            assert_eq!(row.amount_minor, expected.amount.minor());
            assert_eq!(row.kafka_partition, listed.file.chunk().partition());
            assert!(listed.file.chunk().contains(row.kafka_offset));
            assert_eq!(
                EventTime::from_millis(row.event_time_millis)
                    .unwrap()
                    .utc_date(),
                listed.file.date()
            );
            offsets.push((row.kafka_partition, row.kafka_offset));
        }
    }
    offsets.sort();
    let expected: Vec<(i32, i64)> = (0..150)
        .map(|offset| (0, offset))
        .chain((0..10).map(|offset| (1, offset)))
        .collect();
    assert_eq!(offsets, expected);

    // The files carry the table's Arrow schema (UTC millisecond timestamps included).
    let bytes = lake
        .store()
        .get(&listing[0].file.path())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    assert_eq!(reader.schema().fields(), fraud_lake::schema().fields());

    let states = lake.partition_states().await.unwrap();
    assert_eq!(states[&0].complete_through(), Some(149));
    assert_eq!(states[&0].complete_chunks, 2);
    assert_eq!(states[&1].resume_at(), ResumeAt::Offset(10));
}

pub async fn a_claimed_range_is_the_only_one_written_from_its_first_offset(lake: &Lake) {
    let owner = chunk(0, 0..=59, 3);
    assert_eq!(
        written(lake.write_claimed_chunk(&owner, "owner", 16).await.unwrap()),
        (3, 3)
    );

    // A zombie holding another range from the same first offset writes nothing.
    let zombie = chunk(0, 0..=99, 3);
    let outcome = lake
        .write_claimed_chunk(&zombie, "zombie", 16)
        .await
        .unwrap();
    let ChunkWrite::Fenced(Fence::Lost(claim)) = outcome else {
        panic!("not fenced: {outcome:?}");
    };
    assert_eq!(claim.chunk(), owner.id());
    assert_eq!(claim.rows(), 60);
    assert_eq!(claim.writer(), "owner");

    // The same range again (another holder of the same claim) keeps every file.
    assert_eq!(
        written(
            lake.write_claimed_chunk(&chunk(0, 0..=59, 3), "again", 7)
                .await
                .unwrap()
        ),
        (3, 0)
    );
    let expected: Vec<(i32, i64)> = (0..60).map(|offset| (0, offset)).collect();
    assert_eq!(offsets_in(lake).await, expected);

    // Claims stay out of the table: listing, states and recovery see the data only.
    assert_eq!(lake.read_claim(0, 0).await.unwrap(), Some(claim));
    assert_eq!(lake.list().await.unwrap().len(), 3);
    let recoveries = lake.recover(&[0]).await.unwrap();
    assert_eq!(recoveries[0].state.resume_at(), ResumeAt::Offset(60));
}

/// Writers racing for one first offset, each with a range of its own: exactly one
/// claim is won, every other writer is told whose it is, and only its rows are written.
pub async fn of_writers_racing_for_one_first_offset_exactly_one_wins(lake: &Lake) {
    let writers: Vec<(String, fraud_lake::Chunk)> = (0..8)
        .map(|number| (format!("writer-{number}"), chunk(4, 0..=(20 + number), 2)))
        .collect();
    let outcomes = join_all(
        writers
            .iter()
            .map(|(name, racing)| lake.write_claimed_chunk(racing, name, 100)),
    )
    .await;
    let mut winners = Vec::new();
    for ((name, racing), outcome) in writers.iter().zip(outcomes) {
        match outcome.unwrap() {
            ChunkWrite::Written { .. } => winners.push((name.clone(), racing.id())),
            ChunkWrite::Fenced(Fence::Lost(claim)) => assert_ne!(claim.writer(), name),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (winner, range) = &winners[0];
    let claim = lake.read_claim(4, 0).await.unwrap().expect("the claim");
    assert_eq!((claim.writer(), claim.chunk()), (winner.as_str(), *range));
    let expected: Vec<(i32, i64)> = (0..=range.last_offset())
        .map(|offset| (4, offset))
        .collect();
    assert_eq!(offsets_in(lake).await, expected);
}

pub async fn a_claimed_chunk_its_writer_left_unfinished_is_completed_not_deleted(lake: &Lake) {
    written(
        lake.write_claimed_chunk(&chunk(1, 0..=9, 1), "w1", 100)
            .await
            .unwrap(),
    );
    // A writer claimed 10..=39, wrote the first of its three files, and stopped.
    let interrupted = chunk(1, 10..=39, 3);
    let claim = Claim::of(&interrupted, "w1");
    assert_eq!(lake.claim(&claim).await.unwrap(), ClaimOutcome::Won);
    let first = &interrupted.files()[0];
    put_raw(
        lake,
        first.file().path().as_ref(),
        first.encode(interrupted.rows(), 100).unwrap().to_vec(),
    )
    .await;

    let states = lake.partition_states().await.unwrap();
    assert_eq!(
        states[&1].complete_through(),
        Some(9),
        "the batch layer's view"
    );
    let recoveries = lake.recover(&[1]).await.unwrap();
    let recovery = &recoveries[0];
    assert_eq!(recovery.state.resume_at(), ResumeAt::Claimed(claim.clone()));
    assert!(recovery.removed_files.is_empty(), "a claimed chunk is kept");
    assert_eq!(
        lake.list().await.unwrap().len(),
        2,
        "the file is still there"
    );

    // Its next owner writes exactly the claimed range; the file already there is kept.
    assert_eq!(
        written(
            lake.write_claimed_chunk(&chunk(1, 10..=39, 3), "w2", 100)
                .await
                .unwrap()
        ),
        (3, 2)
    );
    let recoveries = lake.recover(&[1]).await.unwrap();
    assert_eq!(recoveries[0].state.resume_at(), ResumeAt::Offset(40));
    let expected: Vec<(i32, i64)> = (0..40).map(|offset| (1, offset)).collect();
    assert_eq!(offsets_in(lake).await, expected);

    // A claim whose writer stopped before any file: resumed the same way.
    let nothing_yet = Claim::new(ChunkId::new(1, 40, 49).unwrap(), 10, "w2");
    lake.claim(&nothing_yet).await.unwrap();
    let recoveries = lake.recover(&[1]).await.unwrap();
    assert_eq!(
        recoveries[0].state.resume_at(),
        ResumeAt::Claimed(nothing_yet)
    );
    assert_eq!(recoveries[0].state.complete_through(), Some(39));
}

/// An unclaimed chunk (written without claims) whose writer stopped after its first
/// file: the batch layer's view stops before it, and recovery deletes it.
pub async fn an_unfinished_unclaimed_newest_chunk_is_deleted_on_recovery(lake: &Lake) {
    lake.write_chunk(&chunk(2, 0..=49, 2), 1000).await.unwrap();
    let interrupted = chunk(2, 50..=79, 3);
    let first = &interrupted.files()[0];
    put_raw(
        lake,
        first.file().path().as_ref(),
        first.encode(interrupted.rows(), 1000).unwrap().to_vec(),
    )
    .await;
    let states = lake.partition_states().await.unwrap();
    let incomplete = states[&2].incomplete.clone().expect("an incomplete chunk");
    assert_eq!(incomplete.id, interrupted.id());
    assert_eq!(states[&2].complete_through(), Some(49));

    let recoveries = lake.recover(&[2]).await.unwrap();
    assert_eq!(recoveries[0].state.resume_at(), ResumeAt::Offset(50));
    assert_eq!(recoveries[0].removed_files, vec![first.file()]);
    let expected: Vec<(i32, i64)> = (0..50).map(|offset| (2, offset)).collect();
    assert_eq!(offsets_in(lake).await, expected);
}

pub async fn old_claims_are_collected_and_a_writer_behind_them_is_still_fenced(lake: &Lake) {
    for start in (0..100).step_by(10) {
        written(
            lake.write_claimed_chunk(&chunk(2, start..=start + 9, 2), "owner", 100)
                .await
                .unwrap(),
        );
    }
    let offsets = lake.claim_offsets(2).await.unwrap();
    assert_eq!(
        offsets,
        vec![60, 70, 80, 90],
        "the newest {} kept",
        fraud_lake::claim::CLAIMS_KEPT
    );

    // A zombie still holding the chunk from 0 wins the collected claim's name, but the
    // newer claims show it is behind: it writes nothing.
    let outcome = lake
        .write_claimed_chunk(&chunk(2, 0..=14, 2), "zombie", 100)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ChunkWrite::Fenced(Fence::Behind {
            newest_first_offset: Some(90)
        })
    );
    let expected: Vec<(i32, i64)> = (0..100).map(|offset| (2, offset)).collect();
    assert_eq!(offsets_in(lake).await, expected);
    // Its stray claim is below the newest: recovery follows the newest, and the next
    // chunk's collection removes the stray one.
    let recoveries = lake.recover(&[2]).await.unwrap();
    assert_eq!(recoveries[0].state.resume_at(), ResumeAt::Offset(100));
    written(
        lake.write_claimed_chunk(&chunk(2, 100..=109, 2), "owner", 100)
            .await
            .unwrap(),
    );
    assert_eq!(lake.claim_offsets(2).await.unwrap(), vec![70, 80, 90, 100]);
}

pub async fn a_lake_without_claims_is_continued_from_its_files(lake: &Lake) {
    lake.write_chunk(&chunk(3, 0..=19, 2), 100).await.unwrap();
    let recoveries = lake.recover(&[3]).await.unwrap();
    assert_eq!(recoveries[0].state.resume_at(), ResumeAt::Offset(20));
    written(
        lake.write_claimed_chunk(&chunk(3, 20..=29, 2), "new", 100)
            .await
            .unwrap(),
    );
    let states = lake.partition_states().await.unwrap();
    assert_eq!(states[&3].complete_through(), Some(29));
    assert_eq!(states[&3].complete_chunks, 2);
}
