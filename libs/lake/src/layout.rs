//! Where things live in the lake: the names of its directories and files.
//!
//! ```text
//! <root>/transactions/event_date=YYYY-MM-DD/<partition>-<firstOffset>-<lastOffset>.parquet
//! ```
//!
//! `event_date` is the UTC date of the rows' `event_time` (a hive-style partition
//! directory, so DuckDB, Spark and DataFusion read it as a column). The file name is the
//! [`ChunkId`]: the Kafka partition and the first and last offset of the chunk the file
//! belongs to. One chunk is a run of consecutive records of one partition; its rows are
//! split by date, so a chunk has one file per date it touches, all with the same name.
//!
//! Names are canonical (no sign, no leading zeros, zero-padded dates), so every file has
//! exactly one name and parsing a name back gives the same value.

use std::fmt;

use chrono::NaiveDate;
use object_store::path::Path;

/// The table's directory under the lake root.
pub const TABLE_DIR: &str = "transactions";
/// The hive partition key of the date directories.
pub const DATE_KEY: &str = "event_date";
/// The extension of every data file.
pub const EXTENSION: &str = ".parquet";

const DATE_FORMAT: &str = "%Y-%m-%d";

/// Why a chunk id is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("partition {0} is negative")]
    NegativePartition(i32),
    #[error("offsets {first}..={last} are not a non-empty range of non-negative offsets")]
    BadOffsets { first: i64, last: i64 },
}

/// One chunk: a run of consecutive records of one Kafka partition, from `first_offset`
/// to `last_offset` (both included). It names every file the chunk is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId {
    // Field order gives the order chunks are written in: by partition, then by offset.
    partition: i32,
    first_offset: i64,
    last_offset: i64,
}

impl ChunkId {
    /// The chunk of `partition` from `first_offset` to `last_offset`, both included.
    pub fn new(partition: i32, first_offset: i64, last_offset: i64) -> Result<Self, LayoutError> {
        if partition < 0 {
            return Err(LayoutError::NegativePartition(partition));
        }
        if first_offset < 0 || last_offset < first_offset {
            return Err(LayoutError::BadOffsets {
                first: first_offset,
                last: last_offset,
            });
        }
        Ok(Self {
            partition,
            first_offset,
            last_offset,
        })
    }

    /// The Kafka partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset of the chunk's first record.
    pub fn first_offset(&self) -> i64 {
        self.first_offset
    }

    /// The offset of the chunk's last record.
    pub fn last_offset(&self) -> i64 {
        self.last_offset
    }

    /// Whether `offset` lies in the chunk's range.
    pub fn contains(&self, offset: i64) -> bool {
        (self.first_offset..=self.last_offset).contains(&offset)
    }

    /// The file name every file of the chunk has: `<partition>-<first>-<last>.parquet`.
    pub fn file_name(&self) -> String {
        format!("{self}{EXTENSION}")
    }

    /// Reads a file name written by [`ChunkId::file_name`]; `None` for any other name.
    pub fn parse_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(EXTENSION)?;
        let mut parts = stem.split('-');
        let partition = parse_canonical(parts.next()?)?;
        let first_offset = parse_canonical(parts.next()?)?;
        let last_offset = parse_canonical(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Self::new(i32::try_from(partition).ok()?, first_offset, last_offset).ok()
    }

    /// Reads the name of a file that a local lake was still writing when its writer
    /// stopped: the object store stages a file as `<final name>#<n>` and renames it into
    /// place once complete. `None` for any other name.
    pub fn parse_staged_file_name(name: &str) -> Option<Self> {
        let (final_name, suffix) = name.rsplit_once('#')?;
        if suffix.is_empty() || !suffix.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        Self::parse_file_name(final_name)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}-{}-{}",
            self.partition, self.first_offset, self.last_offset
        )
    }
}

/// A non-negative decimal without sign or leading zeros.
fn parse_canonical(digits: &str) -> Option<i64> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

/// One data file: the rows of one chunk whose event time falls on one UTC date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LakeFile {
    chunk: ChunkId,
    date: NaiveDate,
}

impl LakeFile {
    /// The file of `chunk` holding its rows dated `date`.
    pub fn new(chunk: ChunkId, date: NaiveDate) -> Self {
        Self { chunk, date }
    }

    /// The chunk the file belongs to (which names it).
    pub fn chunk(&self) -> ChunkId {
        self.chunk
    }

    /// The UTC date of every row's `event_time`.
    pub fn date(&self) -> NaiveDate {
        self.date
    }

    /// Its path relative to the lake root.
    pub fn path(&self) -> Path {
        date_dir(self.date).join(self.chunk.file_name().as_str())
    }

    /// Reads a path relative to the lake root; `None` for anything that is not a data
    /// file of the table in canonical form.
    pub fn parse(path: &Path) -> Option<Self> {
        let mut parts = path.parts();
        if parts.next()?.as_ref() != TABLE_DIR {
            return None;
        }
        let date = parse_date_dir(parts.next()?.as_ref())?;
        let chunk = ChunkId::parse_file_name(parts.next()?.as_ref())?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self::new(chunk, date))
    }
}

impl fmt::Display for LakeFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.path())
    }
}

/// The table's directory, relative to the lake root.
pub fn table_dir() -> Path {
    Path::from(TABLE_DIR)
}

/// The directory of one date: `transactions/event_date=YYYY-MM-DD`.
pub fn date_dir(date: NaiveDate) -> Path {
    table_dir().join(date_dir_name(date).as_str())
}

/// `event_date=YYYY-MM-DD`.
pub fn date_dir_name(date: NaiveDate) -> String {
    format!("{DATE_KEY}={}", date.format(DATE_FORMAT))
}

/// Reads `event_date=YYYY-MM-DD` (canonical form only).
pub fn parse_date_dir(name: &str) -> Option<NaiveDate> {
    let text = name.strip_prefix(DATE_KEY)?.strip_prefix('=')?;
    let date = NaiveDate::parse_from_str(text, DATE_FORMAT).ok()?;
    (date.format(DATE_FORMAT).to_string() == text).then_some(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, DATE_FORMAT).unwrap()
    }

    #[test]
    fn a_file_path_is_the_date_directory_and_the_chunk_name() {
        let file = LakeFile::new(ChunkId::new(3, 1000, 2999).unwrap(), date("2019-05-30"));
        assert_eq!(
            file.path().as_ref(),
            "transactions/event_date=2019-05-30/3-1000-2999.parquet"
        );
        assert_eq!(LakeFile::parse(&file.path()), Some(file));
    }

    #[test]
    fn names_round_trip_at_the_extremes() {
        for chunk in [
            ChunkId::new(0, 0, 0).unwrap(),
            ChunkId::new(i32::MAX, i64::MAX, i64::MAX).unwrap(),
            ChunkId::new(11, 7, 123_456_789_012).unwrap(),
        ] {
            assert_eq!(ChunkId::parse_file_name(&chunk.file_name()), Some(chunk));
        }
        for day in ["0000-01-01", "0999-12-31", "9999-12-31", "2024-02-29"] {
            let file = LakeFile::new(ChunkId::new(1, 2, 3).unwrap(), date(day));
            assert_eq!(LakeFile::parse(&file.path()), Some(file), "{day}");
        }
    }

    #[test]
    fn other_names_are_not_data_files() {
        for name in [
            "3-1000-2999.parquet.tmp",
            "3-1000-2999",
            "3-1000.parquet",
            "3-1000-2999-1.parquet",
            "-3-1000-2999.parquet",
            "+3-1000-2999.parquet",
            "03-1000-2999.parquet",
            "3-01000-2999.parquet",
            "3-2999-1000.parquet",
            "3-1000-99999999999999999999.parquet",
            "2147483648-0-1.parquet",
            "a-1-2.parquet",
            ".3-1000-2999.parquet",
            "3-1000-2999.parquet#1",
            "",
        ] {
            assert_eq!(ChunkId::parse_file_name(name), None, "{name}");
        }
        for path in [
            "transactions/event_date=2019-5-30/3-1-2.parquet",
            "transactions/event_date=2019-02-30/3-1-2.parquet",
            "transactions/date=2019-05-30/3-1-2.parquet",
            "transactions/3-1-2.parquet",
            "other/event_date=2019-05-30/3-1-2.parquet",
            "transactions/event_date=2019-05-30/x/3-1-2.parquet",
            "transactions/event_date=2019-05-30/3-1-2.parquet#1",
        ] {
            assert_eq!(LakeFile::parse(&Path::from(path)), None, "{path}");
        }
    }

    #[test]
    fn staged_files_are_recognised_by_their_final_name() {
        let chunk = ChunkId::new(2, 10, 19).unwrap();
        assert_eq!(
            ChunkId::parse_staged_file_name("2-10-19.parquet#1"),
            Some(chunk)
        );
        assert_eq!(
            ChunkId::parse_staged_file_name("2-10-19.parquet#42"),
            Some(chunk)
        );
        for name in [
            "2-10-19.parquet",
            "2-10-19.parquet#",
            "2-10-19.parquet#x",
            "2-10-19#1",
        ] {
            assert_eq!(ChunkId::parse_staged_file_name(name), None, "{name}");
        }
    }

    #[test]
    fn invalid_chunks_are_refused() {
        assert_eq!(
            ChunkId::new(-1, 0, 0),
            Err(LayoutError::NegativePartition(-1))
        );
        assert!(ChunkId::new(0, -1, 0).is_err());
        assert!(ChunkId::new(0, 5, 4).is_err());
        assert!(ChunkId::new(0, 5, 5).unwrap().contains(5));
    }
}
