//! [`Lake`]: the lake on an object store, a local directory or S3.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use fraud_config::{LakeConfig, Secret};
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReader};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::Error;
use crate::chunk::{Chunk, LakeRow, rows_of};
use crate::layout::{LakeFile, table_dir};

const S3_SCHEME: &str = "s3://";

/// Where the lake lives, as configured (`lake.root`, and the `lake.s3_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeRoot {
    /// A directory (created when missing).
    Local(PathBuf),
    /// `s3://bucket/prefix`, and how to reach the store.
    S3 {
        bucket: String,
        prefix: String,
        connection: S3Connection,
    },
}

/// How to reach an S3 store, over what the standard `AWS_*` environment variables say:
/// each field set here wins over its variable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Connection {
    /// An S3-compatible store's endpoint (MinIO, s3proxy, R2); plain HTTP only when it
    /// starts with `http://`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Access key id and secret.
    pub credentials: Option<(String, Secret<String>)>,
}

impl fmt::Debug for S3Connection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("S3Connection")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|(id, _)| id),
            )
            .finish_non_exhaustive()
    }
}

impl S3Connection {
    /// From the `lake.s3_*` configuration keys: an empty one is not set.
    pub fn configured(config: &LakeConfig) -> Self {
        let given = |value: &str| Some(value.trim().to_owned()).filter(|value| !value.is_empty());
        let secret = config.s3_secret_access_key.expose();
        Self {
            endpoint: given(&config.s3_endpoint),
            region: given(&config.s3_region),
            credentials: given(&config.s3_access_key_id)
                .filter(|_| !secret.is_empty())
                .map(|id| (id, Secret::new(secret.clone()))),
        }
    }
}

impl LakeRoot {
    /// Reads `lake.root`: `s3://bucket[/prefix]`, or else a directory. Performs no I/O.
    pub fn parse(root: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidRoot {
            root: root.to_owned(),
            reason: reason.to_owned(),
        };
        let root = root.trim();
        if root.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some(rest) = root.strip_prefix(S3_SCHEME) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("an s3:// root needs a bucket: s3://bucket/prefix"));
            }
            let prefix = prefix.trim_matches('/');
            Path::parse(prefix).map_err(|error| invalid(&error.to_string()))?;
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                connection: S3Connection::default(),
            });
        }
        if root.contains("://") {
            return Err(invalid(
                "only a directory or s3://bucket/prefix is supported",
            ));
        }
        Ok(Self::Local(PathBuf::from(root)))
    }

    /// The configured lake: `lake.root`, and for an `s3://` root the `lake.s3_*` keys.
    /// Performs no I/O.
    pub fn configured(config: &LakeConfig) -> Result<Self, Error> {
        Ok(match Self::parse(&config.root)? {
            Self::S3 { bucket, prefix, .. } => Self::S3 {
                bucket,
                prefix,
                connection: S3Connection::configured(config),
            },
            local => local,
        })
    }
}

impl fmt::Display for LakeRoot {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(formatter, "{}", path.display()),
            Self::S3 { bucket, prefix, .. } if prefix.is_empty() => {
                write!(formatter, "{S3_SCHEME}{bucket}")
            }
            Self::S3 { bucket, prefix, .. } => {
                write!(formatter, "{S3_SCHEME}{bucket}/{prefix}")
            }
        }
    }
}

/// A data file found in the lake, with its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedFile {
    pub file: LakeFile,
    pub size: u64,
}

/// The lake: its root and the object store holding it. Paths are relative to the root.
#[derive(Debug, Clone)]
pub struct Lake {
    root: LakeRoot,
    /// The local directory, canonical, when the lake is local.
    local_dir: Option<PathBuf>,
    pub(crate) store: Arc<dyn ObjectStore>,
}

impl Lake {
    /// Opens the lake at `root`: for a directory, creates it when missing; for S3,
    /// configures the client from the root's connection over the standard `AWS_*`
    /// environment variables (no request is made until the lake is used).
    pub fn open(root: &LakeRoot) -> Result<Self, Error> {
        let open_error = |reason: String| Error::Open {
            root: root.to_string(),
            reason,
        };
        match root {
            LakeRoot::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    operation: "create the lake directory",
                    path: dir.display().to_string(),
                    source,
                })?;
                let local_dir = std::fs::canonicalize(dir).map_err(|source| Error::Io {
                    operation: "resolve the lake directory",
                    path: dir.display().to_string(),
                    source,
                })?;
                // fsync: a file (and its directory entry) is on disk before it counts.
                let store = LocalFileSystem::new_with_prefix(&local_dir)
                    .map_err(|error| open_error(error.to_string()))?
                    .with_fsync(true);
                Ok(Self {
                    root: root.clone(),
                    local_dir: Some(local_dir),
                    store: Arc::new(store),
                })
            }
            LakeRoot::S3 {
                bucket,
                prefix,
                connection,
            } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = &connection.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &connection.region {
                    builder = builder.with_region(region);
                }
                if let Some((key_id, secret)) = &connection.credentials {
                    builder = builder
                        .with_access_key_id(key_id)
                        .with_secret_access_key(secret.expose());
                }
                let s3 = builder
                    .build()
                    .map_err(|error| open_error(error.to_string()))?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                };
                Ok(Self {
                    root: root.clone(),
                    local_dir: None,
                    store,
                })
            }
        }
    }

    /// Where the lake lives.
    pub fn root(&self) -> &LakeRoot {
        &self.root
    }

    /// The local directory of a local lake (canonical), `None` for an object store.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_dir.as_deref()
    }

    /// The object store, rooted at the lake (for readers such as the batch layer).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// Every data file of the table, in path order. Anything else under the table's
    /// directory (including a local lake's staged files) is left out.
    pub async fn list(&self) -> Result<Vec<ListedFile>, Error> {
        let prefix = table_dir();
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| store_error("list", &prefix, source))?;
        let mut files: Vec<ListedFile> = objects
            .into_iter()
            .filter_map(|object| {
                let file = LakeFile::parse(&object.location);
                if file.is_none() {
                    tracing::debug!(path = %object.location, "not a lake data file; ignored");
                }
                Some(ListedFile {
                    file: file?,
                    size: object.size,
                })
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Encodes and writes every file of `chunk` (row groups of at most `row_group_rows`
    /// rows), each appearing whole under its final name. Returns the files written.
    ///
    /// No claim, no fence: for tools and tests that build a lake with a single writer.
    /// The lake writer uses [`Lake::write_claimed_chunk`]; a partition without claims is
    /// recovered from its files alone, as lakes were before claims.
    ///
    /// Encoding is CPU work done inline: call this from a thread of its own (as the
    /// lake writer does), not from a shared async runtime.
    pub async fn write_chunk(
        &self,
        chunk: &Chunk,
        row_group_rows: usize,
    ) -> Result<Vec<LakeFile>, Error> {
        let mut written = Vec::with_capacity(chunk.files().len());
        for file in chunk.files() {
            let bytes = file.encode(chunk.rows(), row_group_rows)?;
            let path = file.file().path();
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|source| store_error("write", &path, source))?;
            written.push(file.file());
        }
        Ok(written)
    }

    /// Deletes one data file (a file already gone is not an error).
    pub async fn delete(&self, file: &LakeFile) -> Result<(), Error> {
        let path = file.path();
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(store_error("delete", &path, source)),
        }
    }

    /// The Parquet metadata (footer) of a file, read with ranged reads.
    pub async fn metadata(&self, listed: &ListedFile) -> Result<Arc<ParquetMetaData>, Error> {
        let mut reader = self.reader(listed);
        Ok(reader.get_metadata(None).await?)
    }

    /// A file's row groups with only `columns` (names from [`crate::schema::column`])
    /// fetched, not yet decoded: for readers that need a few columns of many rows (the
    /// batch layer). Fetching waits on the store; [`Fetched::decode`] is CPU work, to be
    /// done where it holds up no other task (a blocking thread).
    pub async fn fetch_columns(
        &self,
        listed: &ListedFile,
        columns: &[&str],
    ) -> Result<Fetched, Error> {
        let builder = ParquetRecordBatchStreamBuilder::new(self.reader(listed)).await?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        let mut stream = builder.with_projection(mask).build()?;
        let mut row_groups = Vec::new();
        while let Some(row_group) = stream.next_row_group().await? {
            row_groups.push(row_group);
        }
        Ok(Fetched { row_groups })
    }

    /// Every row of a file, in file order.
    pub async fn read_file(&self, listed: &ListedFile) -> Result<Vec<LakeRow>, Error> {
        let stream = ParquetRecordBatchStreamBuilder::new(self.reader(listed))
            .await?
            .build()?;
        let batches: Vec<_> = stream.try_collect().await?;
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(rows_of(batch)?);
        }
        Ok(rows)
    }

    fn reader(&self, listed: &ListedFile) -> FileReader {
        FileReader {
            store: self.store(),
            path: listed.file.path(),
            size: listed.size,
        }
    }
}

/// A file's row groups as [`Lake::fetch_columns`] fetched them: the column chunks in
/// memory, not decoded.
pub struct Fetched {
    row_groups: Vec<ParquetRecordBatchReader>,
}

impl Fetched {
    /// The record batches, in file order, without a heap string per field.
    pub fn decode(self) -> Result<Vec<RecordBatch>, Error> {
        let mut batches = Vec::new();
        for row_group in self.row_groups {
            for batch in row_group {
                batches.push(batch?);
            }
        }
        Ok(batches)
    }
}

/// Reads one Parquet file of the lake with ranged reads: the footer first, then only
/// the column chunks a reader asks for.
struct FileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl AsyncFileReader for FileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|error| ParquetError::External(Box::new(error)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|error| ParquetError::External(Box::new(error)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

pub(crate) fn store_error(
    operation: &'static str,
    path: &Path,
    source: object_store::Error,
) -> Error {
    Error::Store {
        operation,
        path: path.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_a_directory_or_an_s3_bucket_with_a_prefix() {
        assert_eq!(
            LakeRoot::parse(".dev/lake").unwrap(),
            LakeRoot::Local(".dev/lake".into())
        );
        assert_eq!(
            LakeRoot::parse("s3://fraud-lake").unwrap(),
            LakeRoot::S3 {
                bucket: "fraud-lake".into(),
                prefix: String::new(),
                connection: S3Connection::default(),
            }
        );
        let nested = LakeRoot::parse("s3://fraud-lake/prod/v1/").unwrap();
        assert_eq!(
            nested,
            LakeRoot::S3 {
                bucket: "fraud-lake".into(),
                prefix: "prod/v1".into(),
                connection: S3Connection::default(),
            }
        );
        assert_eq!(nested.to_string(), "s3://fraud-lake/prod/v1");
        for bad in ["", "  ", "s3://", "s3:///prefix", "gs://bucket/x"] {
            assert!(LakeRoot::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_s3_root_takes_its_connection_from_the_configuration_and_hides_the_secret() {
        let mut config = fraud_config::Settings::load(None).unwrap().lake;
        assert_eq!(
            LakeRoot::configured(&config).unwrap(),
            LakeRoot::parse(&config.root).unwrap(),
            "a directory has no connection"
        );
        config.root = "s3://fraud-lake/prod".into();
        let LakeRoot::S3 { connection, .. } = LakeRoot::configured(&config).unwrap() else {
            panic!("not an S3 root");
        };
        assert_eq!(connection, S3Connection::default(), "empty keys are unset");

        config.s3_endpoint = " http://127.0.0.1:9000 ".into();
        config.s3_region = "eu-central-1".into();
        config.s3_access_key_id = "key-id".into();
        config.s3_secret_access_key = Secret::new("very-secret".into());
        let root = LakeRoot::configured(&config).unwrap();
        let LakeRoot::S3 { connection, .. } = &root else {
            panic!("not an S3 root");
        };
        assert_eq!(
            connection.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(connection.region.as_deref(), Some("eu-central-1"));
        assert_eq!(
            connection.credentials,
            Some(("key-id".into(), Secret::new("very-secret".into())))
        );
        let shown = format!("{root:?} {root}");
        assert!(
            shown.contains("key-id") && !shown.contains("very-secret"),
            "{shown}"
        );
    }
}
