//! What the lake writer's tests share: their own topic and lake, events to produce, and
//! the checks that the lake holds exactly what was produced, read back with the parquet
//! crate and with DuckDB (from PyPI) as an independent reader.
#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fraud_config::Settings;
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_lake::{Chunk, ChunkBuilder, ChunkId, Lake, LakeRoot};
use futures::future::join_all;
use object_store::{ObjectStoreExt, PutPayload};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A Kafka position.
pub type Position = (i32, i64);

/// What a test produced, by where it landed.
pub type Produced = BTreeMap<Position, TransactionEvent>;

const DAY_MILLIS: i64 = 86_400_000;
/// 2024-06-01T00:00:00Z.
const JUNE_1: i64 = 1_717_200_000_000;
/// Event times spread over this many UTC dates.
pub const DATES: i64 = 4;

/// A topic, consumer group and lake (a directory, or a prefix in the local S3 store) of
/// the test's own.
pub struct TestLake {
    pub settings: Settings,
    /// The lake's directory; `None` on S3.
    local: Option<PathBuf>,
    pub lake: Lake,
}

impl TestLake {
    /// A new topic with `partitions` partitions, a new group and an empty lake directory.
    pub async fn create(name: &str, partitions: i32) -> TestLake {
        let root = std::env::temp_dir().join(fraud_testkit::unique_name(&format!("{name}-lake")));
        Self::create_at(name, partitions, |lake| {
            lake.root = root.display().to_string();
            Some(root.clone())
        })
        .await
    }

    /// The same, with the lake under a new prefix in the local S3 store.
    pub async fn create_s3(name: &str, partitions: i32) -> TestLake {
        Self::create_at(name, partitions, |lake| {
            fraud_testkit::s3::use_s3_lake(lake, &format!("{name}-lake"));
            None
        })
        .await
    }

    async fn create_at(
        name: &str,
        partitions: i32,
        place: impl FnOnce(&mut fraud_config::LakeConfig) -> Option<PathBuf>,
    ) -> TestLake {
        let mut settings = fraud_testkit::local_settings();
        settings.kafka.transactions_topic = fraud_testkit::unique_name(name);
        settings.lake.writer_group = fraud_testkit::unique_name(&format!("{name}-writer"));
        let local = place(&mut settings.lake);
        fraud_kafka::ensure_topic(
            &settings.kafka,
            &settings.kafka.transactions_topic,
            partitions,
            1,
        )
        .await
        .expect("create the test topic");
        let root = LakeRoot::configured(&settings.lake).expect("the test lake's root");
        let lake = Lake::open(&root).expect("open the test lake");
        TestLake {
            settings,
            local,
            lake,
        }
    }

    pub fn topic(&self) -> &str {
        &self.settings.kafka.transactions_topic
    }

    /// The lake's directory (a local lake's only).
    pub fn dir(&self) -> &Path {
        self.local.as_deref().expect("a local lake")
    }

    /// Deletes the topic and the lake.
    pub async fn remove(self) {
        fraud_kafka::delete_topic(&self.settings.kafka, self.topic())
            .await
            .expect("delete the test topic");
        match &self.local {
            Some(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            None => fraud_testkit::s3::delete_everything(&*self.lake.store()).await,
        }
    }
}

/// The `number`th test event: event times over [`DATES`] UTC dates (some a millisecond
/// either side of midnight), amounts from one cent to near `i64::MAX`, ids that are long
/// digit strings or non-ASCII text.
pub fn event(run: &str, number: u64) -> TransactionEvent {
    let index = number as i64;
    let event_millis = match number % 50 {
        0 => JUNE_1 + (index % DATES) * DAY_MILLIS - 1,
        1 => JUNE_1 + (index % DATES) * DAY_MILLIS,
        _ => JUNE_1 + (index.wrapping_mul(7_919_017)).rem_euclid(DATES * DAY_MILLIS),
    };
    let amount = match number % 10 {
        0 => i64::MAX - index,
        1 => 1,
        _ => 1 + index.wrapping_mul(104_729).rem_euclid(1_000_000_000),
    };
    let customer = if number.is_multiple_of(3) {
        format!("49298787888982{:05}", number % 977)
    } else {
        format!("customer-{}", number % 211)
    };
    let vendor = match number % 4 {
        0 => "fraud_Kirlin and Sons".to_owned(),
        1 => "café-münchen-Ω".to_owned(),
        _ => format!("04ec092a-421a-{}", number % 17),
    };
    TransactionEvent {
        transaction_id: TransactionId::parse(&format!("{run}-{number}")).unwrap(),
        customer_id: CustomerId::parse(&customer).unwrap(),
        vendor_id: VendorId::parse(&vendor).unwrap(),
        amount: Money::from_minor(amount),
        currency: Currency::EUR,
        event_time: EventTime::from_millis(event_millis).unwrap(),
        ingest_time: EventTime::from_millis(event_millis + 250 + index % 1000).unwrap(),
    }
}

/// The record headers ingest writes.
pub fn headers() -> OwnedHeaders {
    ingest::publish::record_headers(&[])
}

/// Produces `events` as ingest does (keyed by customer, encoded, with the version
/// header), all in flight at once; returns where each landed.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    events: Vec<TransactionEvent>,
) -> Produced {
    let sends = events.iter().map(|event| {
        let payload = fraud_events::encode(event);
        let key = event.customer_id.as_str().to_owned();
        async move {
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .headers(headers());
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)
                .expect("the broker acknowledges the record")
        }
    });
    let deliveries = join_all(sends).await;
    deliveries
        .into_iter()
        .zip(events)
        .map(|(delivery, event)| ((delivery.partition, delivery.offset), event))
        .collect()
}

/// The last produced offset of each partition.
pub fn last_offsets(produced: &Produced) -> BTreeMap<i32, i64> {
    let mut last = BTreeMap::new();
    for &(partition, offset) in produced.keys() {
        let entry = last.entry(partition).or_insert(offset);
        *entry = (*entry).max(offset);
    }
    last
}

/// Leaves partition 0 of the lake as a writer that stopped mid-chunk would: a complete
/// chunk of the produced offsets `complete`, then only the first file (of several dates)
/// of the chunk of `interrupted`. Returns that chunk and its first file's bytes.
pub async fn write_interrupted(
    lake: &Lake,
    produced: &Produced,
    complete: RangeInclusive<i64>,
    interrupted: RangeInclusive<i64>,
) -> (Chunk, Vec<u8>) {
    let mut whole = ChunkBuilder::new(0);
    let mut cut = ChunkBuilder::new(0);
    for (&(partition, offset), event) in produced {
        if partition != 0 {
            continue;
        }
        if complete.contains(&offset) {
            whole.push(offset, event).unwrap();
        } else if interrupted.contains(&offset) {
            cut.push(offset, event).unwrap();
        }
    }
    lake.write_chunk(&whole.finish().unwrap().unwrap(), 1000)
        .await
        .unwrap();
    let cut = cut.finish().unwrap().unwrap();
    assert!(cut.files().len() > 1, "the chunk spans several dates");
    let first_file = &cut.files()[0];
    let bytes = first_file.encode(cut.rows(), 1000).unwrap();
    lake.store()
        .put(&first_file.file().path(), PutPayload::from(bytes.clone()))
        .await
        .unwrap();
    (cut, bytes)
}

/// Whether the lake holds complete chunks through `last` of every partition.
pub async fn lake_is_complete(lake: &Lake, last: &BTreeMap<i32, i64>) -> bool {
    let Ok(states) = lake.partition_states().await else {
        return false;
    };
    last.iter().all(|(partition, offset)| {
        states.get(partition).is_some_and(|state| {
            state.incomplete.is_none() && state.complete_through() == Some(*offset)
        })
    })
}

/// Rows the lake's file names account for (complete chunks or not); cheap: a listing.
pub async fn rows_named(lake: &Lake) -> u64 {
    let Ok(listing) = lake.list().await else {
        return 0;
    };
    let chunks: BTreeSet<ChunkId> = listing.iter().map(|listed| listed.file.chunk()).collect();
    chunks
        .iter()
        .map(|chunk| (chunk.last_offset() - chunk.first_offset() + 1) as u64)
        .sum()
}

/// Reads the whole lake with the parquet crate and checks it holds every produced event
/// exactly once, every column equal to what was produced, every file in the directory
/// of its rows' date and named after the chunk its rows belong to.
pub async fn assert_lake_holds_exactly(lake: &Lake, produced: &Produced) {
    let listing = lake.list().await.expect("list the lake");
    assert!(!listing.is_empty(), "the lake is empty");
    let mut seen: BTreeSet<Position> = BTreeSet::new();
    let mut chunk_offsets: BTreeMap<ChunkId, Vec<i64>> = BTreeMap::new();
    for listed in &listing {
        let file = listed.file;
        let chunk = file.chunk();
        let footer = lake.footer(listed).await.expect("read a footer");
        let chunk_rows = footer
            .chunk_rows
            .unwrap_or_else(|| panic!("{file} does not record its chunk's rows"));
        let rows = lake.read_file(listed).await.expect("read a lake file");
        assert_eq!(rows.len() as u64, footer.rows, "{file}");
        let offsets = chunk_offsets.entry(chunk).or_default();
        for row in rows {
            let position = (row.kafka_partition, row.kafka_offset);
            assert!(seen.insert(position), "{position:?} is in the lake twice");
            let expected = produced
                .get(&position)
                .unwrap_or_else(|| panic!("{file} holds {position:?}, which was never produced"));
            assert_eq!(row.kafka_partition, chunk.partition(), "{file}");
            assert!(
                chunk.contains(row.kafka_offset),
                "{file} holds offset {}",
                row.kafka_offset
            );
            assert_eq!(expected.event_time.utc_date(), file.date(), "{file}");
            assert_eq!(row.transaction_id, expected.transaction_id.as_str());
            assert_eq!(row.customer_id, expected.customer_id.as_str());
            assert_eq!(row.vendor_id, expected.vendor_id.as_str());
            assert_eq!(row.amount_minor, expected.amount.minor());
            assert_eq!(row.currency, expected.currency.as_str());
            assert_eq!(row.event_time_millis, expected.event_time.as_millis());
            assert_eq!(row.ingest_time_millis, expected.ingest_time.as_millis());
            offsets.push(row.kafka_offset);
        }
        assert!(
            chunk_rows as usize >= offsets.len(),
            "{file}: chunk rows {chunk_rows}"
        );
    }
    // Every chunk's files together hold exactly its offset range.
    for (chunk, offsets) in &mut chunk_offsets {
        offsets.sort_unstable();
        let range: Vec<i64> = (chunk.first_offset()..=chunk.last_offset()).collect();
        assert_eq!(
            *offsets, range,
            "chunk {chunk} does not hold exactly its range"
        );
    }
    let missing: Vec<&Position> = produced.keys().filter(|p| !seen.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{} produced events are missing from the lake, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(seen.len(), produced.len());
}

const DUCKDB_QUERY: &str = r#"
import duckdb, json, sys
root = sys.argv[1]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
lake = f"read_parquet('{root}/transactions/*/*.parquet', hive_partitioning = true)"
row = con.execute(f"""
    SELECT count(*),
           sum(amount_minor)::VARCHAR,
           count(DISTINCT transaction_id),
           count(DISTINCT (kafka_partition, kafka_offset)),
           epoch_ms(min(event_time)),
           epoch_ms(max(event_time)),
           count(*) FILTER (WHERE event_date <> CAST(event_time AS DATE)),
           typeof(any_value(event_date)),
           typeof(any_value(event_time)),
           typeof(any_value(amount_minor))
    FROM {lake}""").fetchone()
per_date = con.execute(f"""
    SELECT CAST(event_date AS VARCHAR), count(*) FROM {lake} GROUP BY 1 ORDER BY 1
""").fetchall()
print(json.dumps({
    "count": row[0], "sum_amount_minor": row[1], "distinct_transactions": row[2],
    "distinct_positions": row[3], "min_event_time": row[4], "max_event_time": row[5],
    "date_mismatches": row[6], "event_date_type": row[7], "event_time_type": row[8],
    "amount_type": row[9], "per_date": {date: count for date, count in per_date},
}))
"#;

/// What DuckDB reads from the lake at `root` (as `read_parquet` with hive partitioning).
pub fn duckdb_summary(root: &Path) -> serde_json::Value {
    fraud_testkit::duckdb_json(DUCKDB_QUERY, &[&root.to_string_lossy()])
}

/// Checks DuckDB's reading of the lake against the test's own computation.
pub fn assert_duckdb_agrees(root: &Path, produced: &Produced) {
    let summary = duckdb_summary(root);
    let events: Vec<&TransactionEvent> = produced.values().collect();
    let sum: i128 = events
        .iter()
        .map(|event| i128::from(event.amount.minor()))
        .sum();
    let distinct: BTreeSet<&str> = events
        .iter()
        .map(|event| event.transaction_id.as_str())
        .collect();
    let min_time = events
        .iter()
        .map(|event| event.event_time.as_millis())
        .min();
    let max_time = events
        .iter()
        .map(|event| event.event_time.as_millis())
        .max();
    let mut per_date: BTreeMap<String, u64> = BTreeMap::new();
    for event in &events {
        *per_date
            .entry(event.event_time.utc_date().to_string())
            .or_default() += 1;
    }
    assert_eq!(summary["count"], events.len(), "{summary}");
    assert_eq!(summary["sum_amount_minor"], sum.to_string(), "{summary}");
    assert_eq!(
        summary["distinct_transactions"],
        distinct.len(),
        "{summary}"
    );
    assert_eq!(summary["distinct_positions"], events.len(), "{summary}");
    assert_eq!(summary["min_event_time"], min_time.unwrap(), "{summary}");
    assert_eq!(summary["max_event_time"], max_time.unwrap(), "{summary}");
    assert_eq!(summary["date_mismatches"], 0, "{summary}");
    assert_eq!(summary["event_date_type"], "DATE", "{summary}");
    assert_eq!(
        summary["event_time_type"], "TIMESTAMP WITH TIME ZONE",
        "{summary}"
    );
    assert_eq!(summary["amount_type"], "BIGINT", "{summary}");
    assert_eq!(
        summary["per_date"],
        serde_json::to_value(&per_date).unwrap(),
        "{summary}"
    );
}
