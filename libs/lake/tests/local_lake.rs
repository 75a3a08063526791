//! A lake in a local directory: chunks written, listed, read back, and recovered after
//! a writer stopped half-way through a chunk.

use std::path::PathBuf;

use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_lake::{ChunkBuilder, ChunkId, Lake, LakeRoot, ResumeAt};

const DAY: i64 = 86_400_000;
// 2024-03-01T00:00:00Z
const MARCH_1: i64 = 1_709_251_200_000;

/// A lake in a fresh temporary directory, removed when dropped.
struct TempLake {
    dir: PathBuf,
    lake: Lake,
}

impl TempLake {
    fn new() -> Self {
        let dir = std::env::temp_dir()
            .join(fraud_testkit::unique_name("lake-test"))
            .join("nested");
        let lake = Lake::open(&LakeRoot::Local(dir.clone())).expect("open the lake");
        assert!(dir.is_dir(), "a missing directory is created");
        Self { dir, lake }
    }
}

impl Drop for TempLake {
    fn drop(&mut self) {
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

fn event(offset: i64, event_millis: i64) -> TransactionEvent {
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
fn chunk(partition: i32, offsets: std::ops::RangeInclusive<i64>, days: i64) -> fraud_lake::Chunk {
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

#[tokio::test]
async fn an_empty_lake_has_no_partitions_and_resumes_at_the_beginning() {
    let temp = TempLake::new();
    assert!(temp.lake.list().await.unwrap().is_empty());
    assert!(temp.lake.partition_states().await.unwrap().is_empty());
    let recoveries = temp.lake.recover(&[0, 1]).await.unwrap();
    assert_eq!(recoveries.len(), 2);
    for recovery in recoveries {
        assert_eq!(recovery.state.resume_at(), ResumeAt::Beginning);
        assert!(recovery.removed_files.is_empty() && recovery.removed_staged.is_empty());
    }
}

#[tokio::test]
async fn written_chunks_are_listed_and_read_back_exactly() {
    let temp = TempLake::new();
    let first = chunk(0, 0..=99, 3);
    let second = chunk(0, 100..=149, 2);
    let other_partition = chunk(1, 0..=9, 1);
    for written in [&first, &second, &other_partition] {
        let files = temp.lake.write_chunk(written, 16).await.unwrap();
        assert_eq!(files.len(), written.files().len());
    }
    let listing = temp.lake.list().await.unwrap();
    assert_eq!(listing.len(), 3 + 2 + 1);
    let mut offsets = Vec::new();
    for listed in &listing {
        let footer = temp.lake.footer(listed).await.unwrap();
        let chunk_rows = listed.file.chunk().last_offset() - listed.file.chunk().first_offset() + 1;
        assert_eq!(footer.chunk_rows, Some(chunk_rows as u64));
        let rows = temp.lake.read_file(listed).await.unwrap();
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
    let local = temp
        .lake
        .local_dir()
        .unwrap()
        .join(listing[0].file.path().as_ref());
    let bytes = bytes::Bytes::from(std::fs::read(local).unwrap());
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    assert_eq!(reader.schema().fields(), fraud_lake::schema().fields());

    let states = temp.lake.partition_states().await.unwrap();
    assert_eq!(states[&0].complete_through(), Some(149));
    assert_eq!(states[&0].complete_chunks, 2);
    assert_eq!(states[&1].resume_at(), ResumeAt::Offset(10));
}

#[tokio::test]
async fn recovery_removes_an_incomplete_newest_chunk_and_staged_leftovers() {
    let temp = TempLake::new();
    let complete = chunk(2, 0..=49, 2);
    temp.lake.write_chunk(&complete, 1000).await.unwrap();
    // The writer stopped after the first of three files of the next chunk, while the
    // second was still staged under its temporary name.
    let interrupted = chunk(2, 50..=79, 3);
    assert_eq!(interrupted.files().len(), 3);
    let written = &interrupted.files()[0];
    let bytes = written.encode(interrupted.rows(), 1000).unwrap();
    let local = temp.lake.local_dir().unwrap().to_owned();
    let final_path = local.join(written.file().path().as_ref());
    std::fs::write(&final_path, &bytes).unwrap();
    let staged_file = interrupted.files()[1].file();
    let staged_path = local.join(format!("{}#1", staged_file.path().as_ref()));
    std::fs::create_dir_all(staged_path.parent().unwrap()).unwrap();
    std::fs::write(&staged_path, &bytes[..bytes.len() / 2]).unwrap();
    // Another partition's staged file belongs to its own writer: left alone.
    let foreign_staged = local.join(format!(
        "{}#1",
        fraud_lake::LakeFile::new(ChunkId::new(3, 0, 9).unwrap(), staged_file.date())
            .path()
            .as_ref()
    ));
    std::fs::write(&foreign_staged, b"partial").unwrap();

    // A reader sees the state without changing anything.
    let states = temp.lake.partition_states().await.unwrap();
    let incomplete = states[&2].incomplete.clone().expect("an incomplete chunk");
    assert_eq!(incomplete.id, interrupted.id());
    assert_eq!(incomplete.chunk_rows, 30);
    assert_eq!(incomplete.rows_found, written.rows() as u64);
    assert_eq!(states[&2].complete_through(), Some(49));
    assert!(final_path.exists() && staged_path.exists());

    // The writer recovers: both leftovers are gone, and it resumes at offset 50.
    let recoveries = temp.lake.recover(&[2]).await.unwrap();
    assert_eq!(recoveries.len(), 1);
    let recovery = &recoveries[0];
    assert_eq!(recovery.state.resume_at(), ResumeAt::Offset(50));
    assert_eq!(recovery.removed_files, vec![written.file()]);
    assert_eq!(recovery.removed_staged, vec![staged_path.clone()]);
    assert!(!final_path.exists() && !staged_path.exists());
    assert!(foreign_staged.exists());

    // Rewritten (with other boundaries), the lake is whole again.
    temp.lake
        .write_chunk(&chunk(2, 50..=99, 3), 1000)
        .await
        .unwrap();
    let recoveries = temp.lake.recover(&[2]).await.unwrap();
    assert_eq!(recoveries[0].state.resume_at(), ResumeAt::Offset(100));
    assert_eq!(recoveries[0].state.complete_chunks, 2);
    assert!(recoveries[0].removed_files.is_empty());
}
