//! The `transactions` table: its Arrow schema and how its Parquet files are encoded.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

/// Column names, in schema order.
pub mod column {
    pub const TRANSACTION_ID: &str = "transaction_id";
    pub const CUSTOMER_ID: &str = "customer_id";
    pub const VENDOR_ID: &str = "vendor_id";
    /// Money in integer minor units (cents).
    pub const AMOUNT_MINOR: &str = "amount_minor";
    pub const CURRENCY: &str = "currency";
    /// Event time, UTC milliseconds.
    pub const EVENT_TIME: &str = "event_time";
    /// When ingest accepted the event, UTC milliseconds.
    pub const INGEST_TIME: &str = "ingest_time";
    pub const KAFKA_PARTITION: &str = "kafka_partition";
    pub const KAFKA_OFFSET: &str = "kafka_offset";
}

/// The key, in each file's Parquet key-value metadata, of the row count of the whole
/// chunk the file belongs to (all its files together). Recovery compares it with the
/// rows it finds to tell a complete chunk from one whose writer stopped half-way.
pub const CHUNK_ROWS_KEY: &str = "fraud.chunk_rows";

/// The time zone of both timestamp columns.
pub const TIME_ZONE: &str = "UTC";

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let timestamp = DataType::Timestamp(TimeUnit::Millisecond, Some(TIME_ZONE.into()));
    Arc::new(Schema::new(vec![
        Field::new(column::TRANSACTION_ID, DataType::Utf8, false),
        Field::new(column::CUSTOMER_ID, DataType::Utf8, false),
        Field::new(column::VENDOR_ID, DataType::Utf8, false),
        Field::new(column::AMOUNT_MINOR, DataType::Int64, false),
        Field::new(column::CURRENCY, DataType::Utf8, false),
        Field::new(column::EVENT_TIME, timestamp.clone(), false),
        Field::new(column::INGEST_TIME, timestamp, false),
        Field::new(column::KAFKA_PARTITION, DataType::Int32, false),
        Field::new(column::KAFKA_OFFSET, DataType::Int64, false),
    ]))
});

/// The Arrow schema of the `transactions` table (every column non-null). The
/// `event_date` partition column is not in the files; readers take it from the
/// directory names.
pub fn schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}

/// How a file of a chunk of `chunk_rows` rows is encoded: zstd, row groups of at most
/// `row_group_rows` rows, and the chunk's row count in the key-value metadata.
pub(crate) fn writer_properties(row_group_rows: usize, chunk_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            CHUNK_ROWS_KEY.to_owned(),
            chunk_rows.to_string(),
        )]))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_exactly_its_columns_all_non_null() {
        let timestamp = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let expected = [
            ("transaction_id", DataType::Utf8),
            ("customer_id", DataType::Utf8),
            ("vendor_id", DataType::Utf8),
            ("amount_minor", DataType::Int64),
            ("currency", DataType::Utf8),
            ("event_time", timestamp.clone()),
            ("ingest_time", timestamp),
            ("kafka_partition", DataType::Int32),
            ("kafka_offset", DataType::Int64),
        ];
        let schema = schema();
        let actual: Vec<(&str, DataType)> = schema
            .fields()
            .iter()
            .map(|field| {
                assert!(!field.is_nullable(), "{} is nullable", field.name());
                (field.name().as_str(), field.data_type().clone())
            })
            .collect();
        assert_eq!(actual, expected);
    }
}
