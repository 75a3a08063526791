//! The Parquet lake of transactions: the one format the lake writer (in `ingest`) writes
//! and the batch layer reads.
//!
//! ```text
//! <root>/transactions/event_date=YYYY-MM-DD/<partition>-<firstOffset>-<lastOffset>.parquet
//! <root>/_claims/transactions/<partition>/<firstOffset, 20 digits>
//! ```
//!
//! - [`mod@schema`]: the table's columns (money as `int64` minor units, times as UTC
//!   millisecond timestamps, the Kafka partition and offset of every row) and how files
//!   are encoded (zstd, bounded row groups, the chunk's row count in the metadata).
//! - [`layout`]: directory and file names. Hive-style `event_date=` directories, so
//!   DuckDB, Spark and DataFusion read the lake as it is.
//! - [`chunk`]: a *chunk* is a run of consecutive records of one partition. It is split
//!   by event date into one file per date, every file named by the chunk's first and
//!   last offset and carrying the chunk's total row count ([`CHUNK_ROWS_KEY`]).
//! - [`store`]: [`Lake`], the lake on an object store: a local directory
//!   (`LocalFileSystem`, fsynced) or `s3://bucket/prefix` (`AmazonS3`, configured from the
//!   `lake.s3_*` keys over the standard `AWS_*` environment variables; any S3-compatible
//!   store with conditional PUTs). A file appears under its final name only
//!   once complete: a local file is staged under a temporary name in its directory and
//!   renamed; an object store's single PUT is atomic.
//! - [`claim`]: the fence between two writers of a partition. A writer claims a chunk
//!   (partition, first offset) with a create-if-absent PUT before writing its files,
//!   and writes files only create-if-absent: one range per first offset, whichever
//!   writer got there first, and nothing written is ever replaced
//!   ([`Lake::write_claimed_chunk`]).
//! - [`recovery`]: the lake's position per partition, read from the lake itself. Chunks
//!   are written in offset order, so only a partition's newest chunk (its newest claim's,
//!   when it has claims) can be incomplete; [`Lake::partition_states`] reports it (the
//!   batch layer's view), [`Lake::recover`] deletes an unclaimed one and any staged
//!   leftovers, and tells the writer where to resume, or which claimed chunk to
//!   complete (the writer's view).

pub mod chunk;
pub mod claim;
pub mod layout;
pub mod recovery;
pub mod schema;
pub mod store;

pub use chunk::{Chunk, ChunkBuilder, ChunkFile, EVENT_COLUMNS, EventColumns, LakeRow, rows_of};
pub use claim::{CLAIMS_DIR, ChunkWrite, Claim, ClaimOutcome, Fence};
pub use layout::{ChunkId, LakeFile, LayoutError};
pub use recovery::{ChunkFiles, FileFooter, IncompleteChunk, PartitionState, Recovery, ResumeAt};
pub use schema::{CHUNK_ROWS_KEY, schema};
pub use store::{Fetched, Lake, LakeRoot, ListedFile, S3Connection};

/// What can go wrong with the lake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid lake root `{root}`: {reason}")]
    InvalidRoot { root: String, reason: String },
    #[error("failed to open the lake at {root}: {reason}")]
    Open { root: String, reason: String },
    #[error("failed to {operation} {path}: {source}")]
    Store {
        operation: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error("failed to {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("failed to read or write Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("failed to build Arrow data: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("partition {partition}: offset {offset} does not follow offset {previous}")]
    OffsetOutOfOrder {
        partition: i32,
        previous: i64,
        offset: i64,
    },
    #[error("the data does not have the lake's schema: {0}")]
    UnexpectedSchema(String),
    #[error(
        "partition {partition}: chunks {earlier} and {later} overlap; the lake would hold \
         some offsets twice (two writers owned the partition at once?)"
    )]
    OverlappingChunks {
        partition: i32,
        earlier: ChunkId,
        later: ChunkId,
    },
    #[error("the claim {path} is not valid: {reason}")]
    InvalidClaim { path: String, reason: String },
    #[error(
        "partition {partition}: chunk {chunk} lies at or after the newest claim, {claim}, \
         but is not that chunk (written without a claim, by a writer older than claims?)"
    )]
    UnclaimedChunk {
        partition: i32,
        chunk: ChunkId,
        claim: ChunkId,
    },
    #[error("chunk {chunk} is inconsistent: {reason}")]
    InconsistentChunk { chunk: ChunkId, reason: String },
}
