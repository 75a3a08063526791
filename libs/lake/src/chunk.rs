//! Chunks: runs of consecutive records of one partition, buffered column by column and
//! split by event date into one Parquet file per date.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int32Array, Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray,
    StringBuilder, TimestampMillisecondArray, TimestampMillisecondBuilder,
};
use chrono::NaiveDate;
use fraud_events::TransactionEvent;
use parquet::arrow::ArrowWriter;

use crate::Error;
use crate::layout::{ChunkId, LakeFile};
use crate::schema::{TIME_ZONE, column, schema, writer_properties};

/// Collects the records of one partition, in offset order, until the chunk is closed.
///
/// Rows are held in Arrow column builders (one set per event date), so a buffered
/// record costs about its encoded size, not a struct of heap strings.
#[derive(Debug)]
pub struct ChunkBuilder {
    partition: i32,
    first_offset: Option<i64>,
    last_offset: i64,
    rows: usize,
    dates: BTreeMap<NaiveDate, Columns>,
}

impl ChunkBuilder {
    /// An empty chunk of `partition`.
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            first_offset: None,
            last_offset: -1,
            rows: 0,
            dates: BTreeMap::new(),
        }
    }

    /// The partition whose records it holds.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// How many records it holds.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The offset of its first record, if any.
    pub fn first_offset(&self) -> Option<i64> {
        self.first_offset
    }

    /// Adds the record at `offset`, which must follow every record already added.
    pub fn push(&mut self, offset: i64, event: &TransactionEvent) -> Result<(), Error> {
        if offset < 0 || (self.first_offset.is_some() && offset <= self.last_offset) {
            return Err(Error::OffsetOutOfOrder {
                partition: self.partition,
                previous: self.last_offset,
                offset,
            });
        }
        let date = event.event_time.utc_date();
        self.dates
            .entry(date)
            .or_default()
            .push(self.partition, offset, event);
        self.first_offset.get_or_insert(offset);
        self.last_offset = offset;
        self.rows += 1;
        Ok(())
    }

    /// Closes the chunk: its id and one Arrow batch per date (`None` when empty).
    pub fn finish(self) -> Result<Option<Chunk>, Error> {
        let Some(first_offset) = self.first_offset else {
            return Ok(None);
        };
        let id = ChunkId::new(self.partition, first_offset, self.last_offset)?;
        let mut files = Vec::with_capacity(self.dates.len());
        for (date, columns) in self.dates {
            files.push(ChunkFile {
                file: LakeFile::new(id, date),
                batch: columns.finish()?,
            });
        }
        debug_assert_eq!(
            files.iter().map(ChunkFile::rows).sum::<usize>(),
            self.rows,
            "every buffered row is in one file"
        );
        Ok(Some(Chunk {
            id,
            rows: self.rows,
            files,
        }))
    }
}

/// A closed chunk, ready to be encoded and written.
#[derive(Debug)]
pub struct Chunk {
    id: ChunkId,
    rows: usize,
    files: Vec<ChunkFile>,
}

impl Chunk {
    /// Its id (the name of each of its files).
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// How many records it holds, over all its files.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Its files, one per event date, in date order.
    pub fn files(&self) -> &[ChunkFile] {
        &self.files
    }
}

/// The rows of a chunk dated one day.
#[derive(Debug)]
pub struct ChunkFile {
    file: LakeFile,
    batch: RecordBatch,
}

impl ChunkFile {
    /// Where it goes.
    pub fn file(&self) -> LakeFile {
        self.file
    }

    /// How many rows it holds.
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Its rows.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// The Parquet file: zstd, row groups of at most `row_group_rows` rows, and
    /// `chunk_rows` (the row count of the whole chunk) in the key-value metadata.
    /// This is CPU work: call it from a blocking thread, not an async runtime's.
    pub fn encode(&self, chunk_rows: usize, row_group_rows: usize) -> Result<Vec<u8>, Error> {
        let properties = writer_properties(row_group_rows, chunk_rows);
        let mut writer = ArrowWriter::try_new(Vec::new(), schema(), Some(properties))?;
        writer.write(&self.batch)?;
        Ok(writer.into_inner()?)
    }
}

/// One set of column builders, in schema order.
#[derive(Debug)]
struct Columns {
    transaction_id: StringBuilder,
    customer_id: StringBuilder,
    vendor_id: StringBuilder,
    amount_minor: Int64Builder,
    currency: StringBuilder,
    event_time: TimestampMillisecondBuilder,
    ingest_time: TimestampMillisecondBuilder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            transaction_id: StringBuilder::new(),
            customer_id: StringBuilder::new(),
            vendor_id: StringBuilder::new(),
            amount_minor: Int64Builder::new(),
            currency: StringBuilder::new(),
            event_time: TimestampMillisecondBuilder::new().with_timezone(TIME_ZONE),
            ingest_time: TimestampMillisecondBuilder::new().with_timezone(TIME_ZONE),
            kafka_partition: Int32Builder::new(),
            kafka_offset: Int64Builder::new(),
        }
    }
}

impl Columns {
    fn push(&mut self, partition: i32, offset: i64, event: &TransactionEvent) {
        self.transaction_id
            .append_value(event.transaction_id.as_str());
        self.customer_id.append_value(event.customer_id.as_str());
        self.vendor_id.append_value(event.vendor_id.as_str());
        self.amount_minor.append_value(event.amount.minor());
        self.currency.append_value(event.currency.as_str());
        self.event_time.append_value(event.event_time.as_millis());
        self.ingest_time.append_value(event.ingest_time.as_millis());
        self.kafka_partition.append_value(partition);
        self.kafka_offset.append_value(offset);
    }

    fn finish(mut self) -> Result<RecordBatch, Error> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.transaction_id.finish()),
            Arc::new(self.customer_id.finish()),
            Arc::new(self.vendor_id.finish()),
            Arc::new(self.amount_minor.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.ingest_time.finish()),
            Arc::new(self.kafka_partition.finish()),
            Arc::new(self.kafka_offset.finish()),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

/// One row of the table, as read back from the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeRow {
    pub transaction_id: String,
    pub customer_id: String,
    pub vendor_id: String,
    /// Integer minor units.
    pub amount_minor: i64,
    pub currency: String,
    /// UTC milliseconds since the epoch.
    pub event_time_millis: i64,
    /// UTC milliseconds since the epoch.
    pub ingest_time_millis: i64,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// The columns of an event the batch layer aggregates, and the record's place in Kafka
/// (its deduplication keeps the first record of a transaction id).
pub const EVENT_COLUMNS: [&str; 7] = [
    column::TRANSACTION_ID,
    column::CUSTOMER_ID,
    column::VENDOR_ID,
    column::AMOUNT_MINOR,
    column::EVENT_TIME,
    column::KAFKA_PARTITION,
    column::KAFKA_OFFSET,
];

/// The [`EVENT_COLUMNS`] of a batch read with them ([`crate::Lake::fetch_columns`]),
/// borrowed: a row's fields are read in place, `&str` for the strings.
pub struct EventColumns<'a> {
    pub transaction_id: &'a StringArray,
    pub customer_id: &'a StringArray,
    pub vendor_id: &'a StringArray,
    pub amount_minor: &'a Int64Array,
    pub event_time: &'a TimestampMillisecondArray,
    pub kafka_partition: &'a Int32Array,
    pub kafka_offset: &'a Int64Array,
}

impl<'a> EventColumns<'a> {
    /// The columns of `batch`; an error when one is missing, of another type, or holds
    /// nulls.
    pub fn of(batch: &'a RecordBatch) -> Result<Self, Error> {
        Ok(Self {
            transaction_id: typed(batch, column::TRANSACTION_ID)?,
            customer_id: typed(batch, column::CUSTOMER_ID)?,
            vendor_id: typed(batch, column::VENDOR_ID)?,
            amount_minor: typed(batch, column::AMOUNT_MINOR)?,
            event_time: typed(batch, column::EVENT_TIME)?,
            kafka_partition: typed(batch, column::KAFKA_PARTITION)?,
            kafka_offset: typed(batch, column::KAFKA_OFFSET)?,
        })
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.transaction_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rows of a batch read from the lake (it must have the table's columns).
pub fn rows_of(batch: &RecordBatch) -> Result<Vec<LakeRow>, Error> {
    let event = EventColumns::of(batch)?;
    let currency = typed::<StringArray>(batch, column::CURRENCY)?;
    let ingest_time = typed::<TimestampMillisecondArray>(batch, column::INGEST_TIME)?;
    Ok((0..batch.num_rows())
        .map(|row| LakeRow {
            transaction_id: event.transaction_id.value(row).to_owned(),
            customer_id: event.customer_id.value(row).to_owned(),
            vendor_id: event.vendor_id.value(row).to_owned(),
            amount_minor: event.amount_minor.value(row),
            currency: currency.value(row).to_owned(),
            event_time_millis: event.event_time.value(row),
            ingest_time_millis: ingest_time.value(row),
            kafka_partition: event.kafka_partition.value(row),
            kafka_offset: event.kafka_offset.value(row),
        })
        .collect())
}

fn typed<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, Error> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| Error::UnexpectedSchema(format!("no column `{name}`")))?;
    if array.null_count() > 0 {
        return Err(Error::UnexpectedSchema(format!(
            "column `{name}` holds nulls"
        )));
    }
    array.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::UnexpectedSchema(format!("column `{name}` has type {}", array.data_type()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};

    const DAY: i64 = 86_400_000;
    // 2019-05-30T00:00:00Z
    const MAY_30: i64 = 1_559_174_400_000;

    pub(crate) fn event(number: i64, event_millis: i64) -> TransactionEvent {
        TransactionEvent {
            transaction_id: TransactionId::parse(&format!("tx-{number}")).unwrap(),
            customer_id: CustomerId::parse("4929878788898271234").unwrap(),
            vendor_id: VendorId::parse("vendor").unwrap(),
            amount: Money::from_minor(i64::MAX - number),
            currency: Currency::EUR,
            event_time: EventTime::from_millis(event_millis).unwrap(),
            ingest_time: EventTime::from_millis(event_millis + 7).unwrap(),
        }
    }

    fn date(millis: i64) -> NaiveDate {
        EventTime::from_millis(millis).unwrap().utc_date()
    }

    #[test]
    fn a_chunk_is_split_by_utc_date_into_files_named_by_the_whole_chunk() {
        let mut builder = ChunkBuilder::new(4);
        // Offsets 100..=105; dates jump back and forth across two midnights.
        let times = [
            MAY_30 - 1,
            MAY_30,
            MAY_30 + DAY - 1,
            MAY_30 - 1,
            MAY_30 + DAY,
            MAY_30 + 5,
        ];
        for (index, millis) in times.iter().enumerate() {
            builder
                .push(100 + index as i64, &event(index as i64, *millis))
                .unwrap();
        }
        assert_eq!(builder.rows(), 6);
        let chunk = builder.finish().unwrap().unwrap();
        assert_eq!(chunk.id(), ChunkId::new(4, 100, 105).unwrap());
        assert_eq!(chunk.rows(), 6);
        let by_date: Vec<(NaiveDate, Vec<i64>)> = chunk
            .files()
            .iter()
            .map(|file| {
                assert_eq!(file.file().chunk(), chunk.id());
                let offsets = rows_of(file.batch())
                    .unwrap()
                    .iter()
                    .map(|row| {
                        assert_eq!(date(row.event_time_millis), file.file().date());
                        assert_eq!(row.kafka_partition, 4);
                        row.kafka_offset
                    })
                    .collect();
                (file.file().date(), offsets)
            })
            .collect();
        assert_eq!(
            by_date,
            vec![
                (date(MAY_30 - 1), vec![100, 103]),
                (date(MAY_30), vec![101, 102, 105]),
                (date(MAY_30 + DAY), vec![104]),
            ]
        );
    }

    #[test]
    fn rows_keep_every_field_exactly() {
        let mut builder = ChunkBuilder::new(0);
        let original = event(1, MAY_30 + 123);
        builder.push(0, &original).unwrap();
        let chunk = builder.finish().unwrap().unwrap();
        let rows = rows_of(chunk.files()[0].batch()).unwrap();
        assert_eq!(
            rows,
            vec![LakeRow {
                transaction_id: "tx-1".into(),
                customer_id: "4929878788898271234".into(),
                vendor_id: "vendor".into(),
                amount_minor: i64::MAX - 1,
                currency: "EUR".into(),
                event_time_millis: MAY_30 + 123,
                ingest_time_millis: MAY_30 + 130,
                kafka_partition: 0,
                kafka_offset: 0,
            }]
        );
    }

    #[test]
    fn offsets_must_increase() {
        let mut builder = ChunkBuilder::new(1);
        builder.push(5, &event(1, MAY_30)).unwrap();
        assert!(matches!(
            builder.push(5, &event(2, MAY_30)),
            Err(Error::OffsetOutOfOrder { offset: 5, .. })
        ));
        assert!(builder.push(4, &event(2, MAY_30)).is_err());
        builder.push(9, &event(2, MAY_30)).unwrap();
        assert_eq!(builder.first_offset(), Some(5));
        assert_eq!(
            builder.finish().unwrap().unwrap().id(),
            ChunkId::new(1, 5, 9).unwrap()
        );
        assert!(ChunkBuilder::new(1).finish().unwrap().is_none());
    }

    #[test]
    fn encoded_files_are_zstd_with_bounded_row_groups_and_the_chunk_row_count() {
        use parquet::file::reader::{FileReader, SerializedFileReader};

        let mut builder = ChunkBuilder::new(2);
        for offset in 0..25 {
            builder.push(offset, &event(offset, MAY_30)).unwrap();
        }
        let chunk = builder.finish().unwrap().unwrap();
        let bytes = chunk.files()[0].encode(chunk.rows(), 10).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.file_metadata().num_rows(), 25);
        let row_groups: Vec<i64> = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(row_groups, vec![10, 10, 5]);
        for group in metadata.row_groups() {
            for column in group.columns() {
                assert!(matches!(
                    column.compression(),
                    parquet::basic::Compression::ZSTD(_)
                ));
            }
        }
        let chunk_rows = metadata
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .find(|pair| pair.key == crate::CHUNK_ROWS_KEY)
            .and_then(|pair| pair.value.clone());
        assert_eq!(chunk_rows.as_deref(), Some("25"));
    }

    #[test]
    fn the_same_rows_encode_to_the_same_bytes() {
        // Not relied upon (a file is never overwritten, completeness counts rows), but
        // two writers of one claimed chunk do produce identical files.
        let build = || {
            let mut builder = ChunkBuilder::new(1);
            for offset in 0..40 {
                builder
                    .push(offset, &event(offset, MAY_30 + offset * 999_999))
                    .unwrap();
            }
            builder.finish().unwrap().unwrap()
        };
        let (first, second) = (build(), build());
        for (one, other) in first.files().iter().zip(second.files()) {
            assert_eq!(one.encode(40, 16).unwrap(), other.encode(40, 16).unwrap());
        }
    }
}
