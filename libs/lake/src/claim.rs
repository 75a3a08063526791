//! Claims: the fence between two writers of one partition.
//!
//! ```text
//! <root>/_claims/transactions/<partition>/<firstOffset, 20 digits>
//! ```
//!
//! Before it writes a chunk's files, a writer *claims* the chunk: it creates the claim
//! object of the chunk's partition and first offset, holding the chunk's last offset, its
//! row count and the writer's identity, with a create-if-absent PUT (`PutMode::Create`:
//! a hard link on a local directory, `If-None-Match: *` on S3). Exactly one writer
//! creates it; whatever range it names is the only range that may ever exist in the
//! lake from that first offset.
//!
//! [`Lake::write_claimed_chunk`] is the whole protocol:
//! 1. claim the chunk. A claim already there naming a *different* range fences the
//!    writer off: it writes nothing (its partition's position is no longer its own);
//!    one naming the *same* range (same last offset, same row count) is the same chunk,
//!    whose files are the same rows under the same names, so it goes on;
//! 2. list the partition's claims: a claim further on means the writer is behind the
//!    partition (it holds a chunk its group gave away long ago, whose claim has since
//!    been collected, step 4); it is fenced off too;
//! 3. write each file with a create-if-absent PUT. A file already there was written
//!    whole (files appear whole, under their final name) by the other holder of the same
//!    claim: the same rows, so it is kept, never overwritten. Nothing in the lake ever
//!    changes once written; completeness is counted in rows, never compared in bytes;
//! 4. collect old claims: every claim before this chunk's is of a complete chunk
//!    (a writer claims a chunk only after the previous one is whole), so all but the
//!    newest [`CLAIMS_KEPT`] are deleted. Step 2 keeps a writer that is further behind
//!    than that from writing.
//!
//! Claims chain: a writer claims a partition's next chunk at the offset after the last
//! one it claimed or completed, or where recovery put it, which follows the newest claim
//! (module [`crate::recovery`]). So no two claims of a partition overlap, and a zombie
//! writer (one that lost its partitions without noticing) meets the new owner's claim at
//! the first offset of the chunk it holds, whatever wall-clock points cut the chunks.
//!
//! The directory is outside the table's directory, so readers of
//! `transactions/event_date=*/` (DuckDB, Spark, DataFusion, the batch layer) never see
//! it; its leading underscore also hides it from Hive and Spark partition discovery.

use std::collections::BTreeMap;
use std::fmt;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::Error;
use crate::chunk::Chunk;
use crate::layout::{ChunkId, LakeFile, TABLE_DIR};
use crate::store::{Lake, store_error};

/// The directory of every claim, under the lake root.
pub const CLAIMS_DIR: &str = "_claims";

/// How many claims of a partition are kept after each chunk (the newest ones).
pub const CLAIMS_KEPT: usize = 4;

/// Digits of a claim's name: the first offset, zero-padded so names sort as offsets.
const OFFSET_DIGITS: usize = 20;

/// A chunk's claim: the range it is the only one allowed to cover, its row count, and
/// who claimed it (for people; decisions look at the range only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    chunk: ChunkId,
    rows: u64,
    writer: String,
}

impl Claim {
    /// The claim of `chunk`, holding `rows` records, by `writer`.
    pub fn new(chunk: ChunkId, rows: u64, writer: &str) -> Self {
        Self {
            chunk,
            rows,
            writer: writer.replace('\n', " "),
        }
    }

    /// The claim of a closed chunk.
    pub fn of(chunk: &Chunk, writer: &str) -> Self {
        Self::new(chunk.id(), chunk.rows() as u64, writer)
    }

    /// The chunk claimed.
    pub fn chunk(&self) -> ChunkId {
        self.chunk
    }

    /// How many records the chunk holds.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Who claimed it.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Whether `other` names the same chunk: the same range with the same row count.
    pub fn same_chunk(&self, other: &Claim) -> bool {
        self.chunk == other.chunk && self.rows == other.rows
    }

    /// Its object's path relative to the lake root.
    pub fn path(&self) -> Path {
        claim_path(self.chunk.partition(), self.chunk.first_offset())
    }

    fn encode(&self) -> String {
        format!(
            "chunk {}\nrows {}\nwriter {}\n",
            self.chunk, self.rows, self.writer
        )
    }

    fn decode(path: &Path, text: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidClaim {
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        let mut chunk = None;
        let mut rows = None;
        let mut writer = String::new();
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "chunk" => chunk = ChunkId::parse_file_name(&format!("{value}.parquet")),
                "rows" => rows = value.parse::<u64>().ok(),
                "writer" => value.clone_into(&mut writer),
                _ => {}
            }
        }
        let chunk = chunk.ok_or_else(|| invalid("no valid `chunk` line"))?;
        let rows = rows.ok_or_else(|| invalid("no valid `rows` line"))?;
        if parse_claim_path(path) != Some((chunk.partition(), chunk.first_offset())) {
            return Err(invalid(&format!("it names chunk {chunk}")));
        }
        let offsets = chunk.last_offset() - chunk.first_offset() + 1;
        if rows == 0 || rows > offsets.unsigned_abs() {
            return Err(invalid(&format!("{rows} rows for {offsets} offsets")));
        }
        Ok(Self {
            chunk,
            rows,
            writer,
        })
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} ({} rows, by {})",
            self.chunk, self.rows, self.writer
        )
    }
}

/// What became of an attempt to claim a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This call created the claim.
    Won,
    /// The chunk was claimed already, with the same range and row count.
    Same(Claim),
    /// Another range was claimed at the same first offset.
    Lost(Claim),
    /// A claim was there but gone when read: an old one, collected; the claimant is
    /// behind its partition.
    Vanished,
}

/// Why a writer was kept from writing a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// Another range is claimed at the chunk's first offset.
    Lost(Claim),
    /// The partition has claims further on (or had one here, since collected): the
    /// writer is behind it.
    Behind {
        /// The first offset of the partition's newest claim, when one was seen.
        newest_first_offset: Option<i64>,
    },
}

impl fmt::Display for Fence {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost(claim) => write!(formatter, "chunk {} is claimed", claim),
            Self::Behind {
                newest_first_offset: Some(first),
            } => write!(formatter, "the partition is claimed on from offset {first}"),
            Self::Behind {
                newest_first_offset: None,
            } => write!(formatter, "its claim was collected"),
        }
    }
}

/// What [`Lake::write_claimed_chunk`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkWrite {
    /// Every file of the chunk is in the lake.
    Written {
        /// Every file of the chunk.
        files: Vec<LakeFile>,
        /// How many of them this call created (the others were there already).
        created: usize,
        /// Old claims deleted.
        collected: usize,
    },
    /// Nothing was written: the chunk is not this writer's to write.
    Fenced(Fence),
}

/// The directory of `partition`'s claims.
pub fn claims_dir(partition: i32) -> Path {
    Path::from(CLAIMS_DIR)
        .join(TABLE_DIR)
        .join(partition.to_string().as_str())
}

/// The claim object of the chunk of `partition` starting at `first_offset`.
pub fn claim_path(partition: i32, first_offset: i64) -> Path {
    claims_dir(partition).join(format!("{first_offset:0OFFSET_DIGITS$}").as_str())
}

/// Reads a claim's path (relative to the lake root) back into its partition and first
/// offset; `None` for anything else (a local store's staged `<name>#<n>` included).
pub fn parse_claim_path(path: &Path) -> Option<(i32, i64)> {
    let parts: Vec<_> = path.parts().collect();
    let [claims, table, partition, offset] = &parts[..] else {
        return None;
    };
    if claims.as_ref() != CLAIMS_DIR || table.as_ref() != TABLE_DIR {
        return None;
    }
    let offset = offset.as_ref();
    if offset.len() != OFFSET_DIGITS || !offset.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let partition_text = partition.as_ref();
    let number: i32 = partition_text.parse().ok()?;
    let canonical = number >= 0 && number.to_string() == partition_text;
    canonical.then_some((number, offset.parse().ok()?))
}

impl Lake {
    /// Claims `claim`'s chunk: creates its claim object unless one exists, and says what
    /// was there. Needs create-if-absent PUTs: an S3 store with conditional put
    /// (`AWS_CONDITIONAL_PUT=etag`, object_store's default) fails here otherwise.
    pub async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, Error> {
        let path = claim.path();
        let options = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(&path, PutPayload::from(claim.encode()), options)
            .await
        {
            Ok(_) => Ok(ClaimOutcome::Won),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let chunk = claim.chunk();
                match self
                    .read_claim(chunk.partition(), chunk.first_offset())
                    .await?
                {
                    None => Ok(ClaimOutcome::Vanished),
                    Some(existing) if existing.same_chunk(claim) => {
                        Ok(ClaimOutcome::Same(existing))
                    }
                    Some(existing) => Ok(ClaimOutcome::Lost(existing)),
                }
            }
            Err(source) => Err(store_error("create the claim", &path, source)),
        }
    }

    /// The claim of `partition` at `first_offset`, if there is one.
    pub async fn read_claim(
        &self,
        partition: i32,
        first_offset: i64,
    ) -> Result<Option<Claim>, Error> {
        let path = claim_path(partition, first_offset);
        let bytes = match self.store.get(&path).await {
            Ok(result) => result.bytes().await,
            Err(error) => Err(error),
        };
        match bytes {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                Claim::decode(&path, &text).map(Some)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(store_error("read the claim", &path, source)),
        }
    }

    /// The first offsets of `partition`'s claims, in order.
    pub async fn claim_offsets(&self, partition: i32) -> Result<Vec<i64>, Error> {
        let listed = self.list_claims(&claims_dir(partition)).await?;
        Ok(listed.into_values().next().unwrap_or_default())
    }

    /// The first offsets of every partition's claims, in order.
    pub async fn all_claim_offsets(&self) -> Result<BTreeMap<i32, Vec<i64>>, Error> {
        self.list_claims(&Path::from(CLAIMS_DIR).join(TABLE_DIR))
            .await
    }

    async fn list_claims(&self, prefix: &Path) -> Result<BTreeMap<i32, Vec<i64>>, Error> {
        let objects: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|source| store_error("list", prefix, source))?;
        let mut claims: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for object in objects {
            if let Some((partition, first_offset)) = parse_claim_path(&object.location) {
                claims.entry(partition).or_default().push(first_offset);
            }
        }
        for offsets in claims.values_mut() {
            offsets.sort_unstable();
        }
        Ok(claims)
    }

    /// Writes `chunk` as `writer` under its claim (the module's protocol): every file of
    /// it ends in the lake, or nothing is written because the chunk is not the
    /// writer's. Call it from a thread of its own (Parquet encoding is CPU work).
    pub async fn write_claimed_chunk(
        &self,
        chunk: &Chunk,
        writer: &str,
        row_group_rows: usize,
    ) -> Result<ChunkWrite, Error> {
        let claim = Claim::of(chunk, writer);
        let id = chunk.id();
        match self.claim(&claim).await? {
            ClaimOutcome::Won | ClaimOutcome::Same(_) => {}
            ClaimOutcome::Lost(existing) => return Ok(ChunkWrite::Fenced(Fence::Lost(existing))),
            ClaimOutcome::Vanished => {
                return Ok(ChunkWrite::Fenced(Fence::Behind {
                    newest_first_offset: None,
                }));
            }
        }
        let offsets = self.claim_offsets(id.partition()).await?;
        if let Some(&newest) = offsets.last()
            && newest > id.first_offset()
        {
            return Ok(ChunkWrite::Fenced(Fence::Behind {
                newest_first_offset: Some(newest),
            }));
        }
        let mut files = Vec::with_capacity(chunk.files().len());
        let mut created = 0;
        for file in chunk.files() {
            let bytes = file.encode(chunk.rows(), row_group_rows)?;
            let path = file.file().path();
            let options = PutOptions::from(PutMode::Create);
            match self
                .store
                .put_opts(&path, PutPayload::from(bytes), options)
                .await
            {
                Ok(_) => created += 1,
                // Written whole by the other holder of this claim: the same rows.
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(source) => return Err(store_error("write", &path, source)),
            }
            files.push(file.file());
        }
        let collected = self.collect_claims(id, &offsets).await;
        Ok(ChunkWrite::Written {
            files,
            created,
            collected,
        })
    }

    /// Deletes `chunk`'s partition's claims before the newest [`CLAIMS_KEPT`] (`offsets`
    /// as listed, `chunk`'s own included), now that `chunk` is complete. A failure only
    /// leaves a claim for the next time; returns how many were deleted.
    async fn collect_claims(&self, chunk: ChunkId, offsets: &[i64]) -> usize {
        let older: Vec<i64> = offsets
            .iter()
            .copied()
            .filter(|offset| *offset < chunk.first_offset())
            .collect();
        let excess = (older.len() + 1).saturating_sub(CLAIMS_KEPT);
        let mut collected = 0;
        for first_offset in &older[..excess] {
            let path = claim_path(chunk.partition(), *first_offset);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => collected += 1,
                Err(error) => {
                    tracing::warn!(path = %path, %error, "failed to delete an old claim");
                }
            }
        }
        collected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_paths_sort_as_offsets_and_parse_back() {
        let path = claim_path(3, 100);
        assert_eq!(path.as_ref(), "_claims/transactions/3/00000000000000000100");
        assert_eq!(parse_claim_path(&path), Some((3, 100)));
        let max = claim_path(i32::MAX, i64::MAX);
        assert_eq!(parse_claim_path(&max), Some((i32::MAX, i64::MAX)));
        assert!(claim_path(0, 99).as_ref() < claim_path(0, 100).as_ref());
        for other in [
            "_claims/transactions/3/100",
            "_claims/transactions/03/00000000000000000100",
            "_claims/transactions/-3/00000000000000000100",
            "_claims/transactions/3/00000000000000000100#1",
            "_claims/other/3/00000000000000000100",
            "transactions/3/00000000000000000100",
            "_claims/transactions/3/00000000000000000100/x",
        ] {
            assert_eq!(parse_claim_path(&Path::from(other)), None, "{other}");
        }
    }

    #[test]
    fn claims_round_trip_and_bad_ones_are_refused() {
        let claim = Claim::new(ChunkId::new(2, 10, 19).unwrap(), 9, "host:42:7");
        let decoded = Claim::decode(&claim.path(), &claim.encode()).unwrap();
        assert_eq!(decoded, claim);
        assert!(claim.same_chunk(&Claim::new(claim.chunk(), 9, "other")));
        assert!(!claim.same_chunk(&Claim::new(claim.chunk(), 8, "other")));
        let path = claim.path();
        for bad in [
            "",
            "chunk 2-10-19\n",
            "rows 9\n",
            "chunk 2-10-19\nrows 0\n",
            "chunk 2-10-19\nrows 11\n",
            "chunk 2-11-19\nrows 9\n",
            "chunk 1-10-19\nrows 9\n",
        ] {
            assert!(Claim::decode(&path, bad).is_err(), "{bad:?}");
        }
    }
}
