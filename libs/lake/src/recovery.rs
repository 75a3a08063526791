//! The lake's position per partition, read from the lake itself.
//!
//! A partition's files group into chunks by name. Chunks are written one after another
//! in offset order, each only once the previous one is whole, so every chunk but the
//! newest is complete. What the newest chunk is depends on whether the partition has
//! claims (module [`crate::claim`]):
//! - with claims, the newest chunk is the newest claim's, whether any file of it exists
//!   or not; it is complete when the rows of its files add up to the claim's row count.
//!   A chunk claimed but not complete is *completed*, never deleted: the writer resumes
//!   at its first offset and must close the chunk exactly at the claim's last offset
//!   ([`ResumeAt::Claimed`]), so that the files it writes are the claimed ones (whatever
//!   of them exists already is kept). A file of another chunk at or after the newest
//!   claim was written without a claim: an error;
//! - without claims (a lake written before claims existed, or by tools that write
//!   without one), the newest chunk is the one with the highest offsets among the files;
//!   it is complete when its files' rows add up to the chunk row count each records.
//!
//! - The batch layer asks for [`Lake::partition_states`]: read-only; a partition is
//!   complete through [`PartitionState::complete_through`].
//! - The lake writer calls [`Lake::recover`] for the partitions it is assigned: it
//!   deletes an incomplete, unclaimed newest chunk (and, on a local lake, files staged
//!   but never renamed into place) and resumes at [`PartitionState::resume_at`].
//!
//! Files are listed before claims, so a claim made between the two listings looks
//! incomplete at worst, and is completed. The decisions are pure functions
//! ([`group_chunks`], [`assess`], [`assess_claimed`]); only the newest chunk's footers
//! and the newest claim are read, so recovery costs two listings and a few small reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::Error;
use crate::claim::Claim;
use crate::layout::{ChunkId, LakeFile, TABLE_DIR, parse_date_dir};
use crate::schema::CHUNK_ROWS_KEY;
use crate::store::{Lake, ListedFile};

/// What a file's footer says about its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFooter {
    /// Rows in this file.
    pub rows: u64,
    /// Rows in the whole chunk, as recorded in the file ([`CHUNK_ROWS_KEY`]).
    pub chunk_rows: Option<u64>,
}

/// The files of one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFiles {
    pub id: ChunkId,
    /// In date order.
    pub files: Vec<ListedFile>,
}

/// Where a writer resumes a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeAt {
    /// The lake holds nothing of the partition: from its first offset.
    Beginning,
    /// At this offset.
    Offset(i64),
    /// At the claim's first offset, with the claimed chunk to complete: the writer's
    /// next chunk must end exactly at the claim's last offset, with its row count.
    Claimed(Claim),
}

impl ResumeAt {
    /// The offset to resume at; `None` for [`ResumeAt::Beginning`].
    pub fn offset(&self) -> Option<i64> {
        match self {
            Self::Beginning => None,
            Self::Offset(offset) => Some(*offset),
            Self::Claimed(claim) => Some(claim.chunk().first_offset()),
        }
    }
}

/// A newest chunk whose files hold fewer rows than it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteChunk {
    pub id: ChunkId,
    pub files: Vec<LakeFile>,
    pub rows_found: u64,
    pub chunk_rows: u64,
    /// Its claim, when it has one: it is then completed, not deleted.
    pub claim: Option<Claim>,
}

/// The lake's state for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    /// How many complete chunks it holds.
    pub complete_chunks: usize,
    /// The newest complete chunk.
    pub newest_complete: Option<ChunkId>,
    /// The newest chunk, when it is incomplete.
    pub incomplete: Option<IncompleteChunk>,
}

impl PartitionState {
    /// The lake holds every record of the partition up to this offset (included), in
    /// complete chunks; `None` when it holds none.
    pub fn complete_through(&self) -> Option<i64> {
        self.newest_complete.map(|chunk| chunk.last_offset())
    }

    /// Where a writer resumes once the incomplete chunk, if any, is deleted.
    pub fn resume_at(&self) -> ResumeAt {
        match (&self.incomplete, self.newest_complete) {
            (Some(incomplete), _) => match &incomplete.claim {
                Some(claim) => ResumeAt::Claimed(claim.clone()),
                None => ResumeAt::Offset(incomplete.id.first_offset()),
            },
            (None, Some(complete)) => ResumeAt::Offset(complete.last_offset() + 1),
            (None, None) => ResumeAt::Beginning,
        }
    }
}

/// What [`Lake::recover`] did for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The state found; resume at its [`PartitionState::resume_at`].
    pub state: PartitionState,
    /// Files of the incomplete (unclaimed) chunk, now deleted.
    pub removed_files: Vec<LakeFile>,
    /// Staged files left by a writer that stopped mid-write, now deleted.
    pub removed_staged: Vec<PathBuf>,
}

/// Groups `partition`'s files into chunks, in offset order. Chunks that overlap mean
/// some offsets are in the lake twice: an error, never silently resolved.
pub fn group_chunks(partition: i32, files: &[ListedFile]) -> Result<Vec<ChunkFiles>, Error> {
    let mut by_chunk: BTreeMap<ChunkId, Vec<ListedFile>> = BTreeMap::new();
    for listed in files {
        if listed.file.chunk().partition() == partition {
            by_chunk
                .entry(listed.file.chunk())
                .or_default()
                .push(*listed);
        }
    }
    let chunks: Vec<ChunkFiles> = by_chunk
        .into_iter()
        .map(|(id, mut files)| {
            files.sort_by_key(|listed| listed.file.date());
            ChunkFiles { id, files }
        })
        .collect();
    for pair in chunks.windows(2) {
        let (earlier, later) = (pair[0].id, pair[1].id);
        if later.first_offset() <= earlier.last_offset() {
            return Err(Error::OverlappingChunks {
                partition,
                earlier,
                later,
            });
        }
    }
    Ok(chunks)
}

/// Decides a partition's state from its chunks (in offset order, from
/// [`group_chunks`]) and the footers of the newest chunk's files (in the same order as
/// its files).
pub fn assess(
    partition: i32,
    chunks: &[ChunkFiles],
    newest_footers: &[FileFooter],
) -> Result<PartitionState, Error> {
    let Some((newest, older)) = chunks.split_last() else {
        return Ok(PartitionState {
            partition,
            complete_chunks: 0,
            newest_complete: None,
            incomplete: None,
        });
    };
    let inconsistent = |reason: String| Error::InconsistentChunk {
        chunk: newest.id,
        reason,
    };
    if newest_footers.len() != newest.files.len() {
        return Err(inconsistent(format!(
            "{} footers for {} files",
            newest_footers.len(),
            newest.files.len()
        )));
    }
    let mut recorded = BTreeSet::new();
    for (listed, footer) in newest.files.iter().zip(newest_footers) {
        let chunk_rows = footer.chunk_rows.ok_or_else(|| {
            inconsistent(format!("{} does not record {CHUNK_ROWS_KEY}", listed.file))
        })?;
        recorded.insert(chunk_rows);
    }
    let recorded: Vec<u64> = recorded.into_iter().collect();
    let [chunk_rows] = recorded[..] else {
        return Err(inconsistent(format!(
            "its files record different chunk row counts: {recorded:?}"
        )));
    };
    let offsets = newest.id.last_offset() - newest.id.first_offset() + 1;
    if chunk_rows == 0 || chunk_rows > offsets.unsigned_abs() {
        return Err(inconsistent(format!(
            "it records {chunk_rows} rows for {offsets} offsets"
        )));
    }
    let rows_found: u64 = newest_footers.iter().map(|footer| footer.rows).sum();
    if rows_found > chunk_rows {
        return Err(inconsistent(format!(
            "its files hold {rows_found} rows but it records {chunk_rows}"
        )));
    }
    if rows_found == chunk_rows {
        return Ok(PartitionState {
            partition,
            complete_chunks: chunks.len(),
            newest_complete: Some(newest.id),
            incomplete: None,
        });
    }
    Ok(PartitionState {
        partition,
        complete_chunks: older.len(),
        newest_complete: older.last().map(|chunk| chunk.id),
        incomplete: Some(IncompleteChunk {
            id: newest.id,
            files: newest.files.iter().map(|listed| listed.file).collect(),
            rows_found,
            chunk_rows,
            claim: None,
        }),
    })
}

/// Decides the state of a partition with claims from its chunks (in offset order, from
/// [`group_chunks`]), its newest claim, and the footers of the claimed chunk's files (in
/// the same order as its files; none when it has none).
pub fn assess_claimed(
    partition: i32,
    chunks: &[ChunkFiles],
    claim: &Claim,
    claimed_footers: &[FileFooter],
) -> Result<PartitionState, Error> {
    let claimed = claim.chunk();
    let mut older = Vec::new();
    let mut claimed_files: &[ListedFile] = &[];
    for chunk in chunks {
        if chunk.id == claimed {
            claimed_files = &chunk.files;
        } else if chunk.id.last_offset() >= claimed.first_offset() {
            return Err(Error::UnclaimedChunk {
                partition,
                chunk: chunk.id,
                claim: claimed,
            });
        } else {
            older.push(chunk.id);
        }
    }
    let inconsistent = |reason: String| Error::InconsistentChunk {
        chunk: claimed,
        reason,
    };
    if claimed_footers.len() != claimed_files.len() {
        return Err(inconsistent(format!(
            "{} footers for {} files",
            claimed_footers.len(),
            claimed_files.len()
        )));
    }
    for (listed, footer) in claimed_files.iter().zip(claimed_footers) {
        if footer.chunk_rows != Some(claim.rows()) {
            return Err(inconsistent(format!(
                "{} records {:?} chunk rows, its claim {}",
                listed.file,
                footer.chunk_rows,
                claim.rows()
            )));
        }
    }
    let rows_found: u64 = claimed_footers.iter().map(|footer| footer.rows).sum();
    if rows_found > claim.rows() {
        return Err(inconsistent(format!(
            "its files hold {rows_found} rows but its claim {}",
            claim.rows()
        )));
    }
    if rows_found == claim.rows() {
        return Ok(PartitionState {
            partition,
            complete_chunks: older.len() + 1,
            newest_complete: Some(claimed),
            incomplete: None,
        });
    }
    Ok(PartitionState {
        partition,
        complete_chunks: older.len(),
        newest_complete: older.last().copied(),
        incomplete: Some(IncompleteChunk {
            id: claimed,
            files: claimed_files.iter().map(|listed| listed.file).collect(),
            rows_found,
            chunk_rows: claim.rows(),
            claim: Some(claim.clone()),
        }),
    })
}

impl Lake {
    /// The footer facts recovery needs from one file.
    pub async fn footer(&self, listed: &ListedFile) -> Result<FileFooter, Error> {
        let metadata = self.metadata(listed).await?;
        let file_metadata = metadata.file_metadata();
        let chunk_rows = file_metadata
            .key_value_metadata()
            .and_then(|pairs| pairs.iter().find(|pair| pair.key == CHUNK_ROWS_KEY))
            .and_then(|pair| pair.value.as_deref())
            .and_then(|value| value.parse().ok());
        Ok(FileFooter {
            rows: u64::try_from(file_metadata.num_rows()).unwrap_or(0),
            chunk_rows,
        })
    }

    /// The state of `partition` given a listing of the lake and the first offsets of the
    /// partition's claims (in order; listed after the files).
    pub async fn partition_state(
        &self,
        partition: i32,
        listing: &[ListedFile],
        claim_offsets: &[i64],
    ) -> Result<PartitionState, Error> {
        let chunks = group_chunks(partition, listing)?;
        // The newest claim; one collected meanwhile (a newer one exists then) is skipped.
        let mut newest_claim = None;
        for &first_offset in claim_offsets.iter().rev() {
            if let Some(claim) = self.read_claim(partition, first_offset).await? {
                newest_claim = Some(claim);
                break;
            }
        }
        if newest_claim.is_none() && !claim_offsets.is_empty() {
            // Every listed claim collected since: writers moved on while this ran.
            return Err(Error::InvalidClaim {
                path: crate::claim::claims_dir(partition).to_string(),
                reason: "every listed claim was deleted while the partition was read; the \
                         partition is being written by another writer"
                    .to_owned(),
            });
        }
        let mut footers = Vec::new();
        if let Some(claim) = newest_claim {
            if let Some(claimed) = chunks.iter().find(|chunk| chunk.id == claim.chunk()) {
                for listed in &claimed.files {
                    footers.push(self.footer(listed).await?);
                }
            }
            return assess_claimed(partition, &chunks, &claim, &footers);
        }
        if let Some(newest) = chunks.last() {
            for listed in &newest.files {
                footers.push(self.footer(listed).await?);
            }
        }
        assess(partition, &chunks, &footers)
    }

    /// The state of every partition the lake holds files or claims of. Read-only: an
    /// incomplete chunk is reported, not removed (its writer removes or completes it
    /// when it resumes).
    pub async fn partition_states(&self) -> Result<BTreeMap<i32, PartitionState>, Error> {
        let listing = self.list().await?;
        let claims = self.all_claim_offsets().await?;
        let partitions: BTreeSet<i32> = listing
            .iter()
            .map(|listed| listed.file.chunk().partition())
            .chain(claims.keys().copied())
            .collect();
        let mut states = BTreeMap::new();
        for partition in partitions {
            let offsets = claims.get(&partition).map_or(&[][..], Vec::as_slice);
            let state = self.partition_state(partition, &listing, offsets).await?;
            states.insert(partition, state);
        }
        Ok(states)
    }

    /// Makes the lake whole for `partitions` before a writer resumes them: deletes an
    /// incomplete newest chunk's files when it has no claim (a claimed one is completed
    /// by the writer instead) and the staged leftovers of a writer that stopped
    /// mid-write, and reports where to resume each partition. Only the partition's owner
    /// may call this (it deletes files).
    pub async fn recover(&self, partitions: &[i32]) -> Result<Vec<Recovery>, Error> {
        let listing = self.list().await?;
        let claims = self.all_claim_offsets().await?;
        let staged = self.staged_files(partitions)?;
        let mut recoveries = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let offsets = claims.get(&partition).map_or(&[][..], Vec::as_slice);
            let state = self.partition_state(partition, &listing, offsets).await?;
            let mut removed_files = Vec::new();
            if let Some(incomplete) = &state.incomplete
                && incomplete.claim.is_none()
            {
                for file in &incomplete.files {
                    self.delete(file).await?;
                    removed_files.push(*file);
                }
            }
            let mut removed_staged = Vec::new();
            for (chunk, path) in &staged {
                if chunk.partition() == partition {
                    remove_file(path)?;
                    removed_staged.push(path.clone());
                }
            }
            recoveries.push(Recovery {
                state,
                removed_files,
                removed_staged,
            });
        }
        Ok(recoveries)
    }

    /// A local lake's staged files (`<final name>#<n>`) of `partitions`: what a writer
    /// left when it stopped before renaming a file into place. The object store does not
    /// list them, so they are found on the file system. An object store has none: its
    /// PUT either stores the whole object or nothing.
    fn staged_files(&self, partitions: &[i32]) -> Result<Vec<(ChunkId, PathBuf)>, Error> {
        let Some(local_dir) = self.local_dir() else {
            return Ok(Vec::new());
        };
        let table = local_dir.join(TABLE_DIR);
        let mut staged = Vec::new();
        for date_dir in read_dir(&table)? {
            let is_date_dir = date_dir
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(parse_date_dir)
                .is_some();
            if !is_date_dir {
                continue;
            }
            for path in read_dir(&date_dir)? {
                let chunk = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .and_then(ChunkId::parse_staged_file_name);
                if let Some(chunk) = chunk
                    && partitions.contains(&chunk.partition())
                {
                    staged.push((chunk, path));
                }
            }
        }
        Ok(staged)
    }
}

/// The entries of `dir`; none when it does not exist (an empty lake).
fn read_dir(dir: &std::path::Path) -> Result<Vec<PathBuf>, Error> {
    let io_error = |source| Error::Io {
        operation: "list",
        path: dir.display().to_string(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(error)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(io_error)?.path());
    }
    paths.sort();
    Ok(paths)
}

fn remove_file(path: &std::path::Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            operation: "remove the staged file",
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn day(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 3, day).unwrap()
    }

    fn listed(partition: i32, first: i64, last: i64, date: u32) -> ListedFile {
        ListedFile {
            file: LakeFile::new(ChunkId::new(partition, first, last).unwrap(), day(date)),
            size: 1000,
        }
    }

    fn footer(rows: u64, chunk_rows: u64) -> FileFooter {
        FileFooter {
            rows,
            chunk_rows: Some(chunk_rows),
        }
    }

    fn chunk(partition: i32, first: i64, last: i64) -> ChunkId {
        ChunkId::new(partition, first, last).unwrap()
    }

    #[test]
    fn files_group_into_chunks_in_offset_order_per_partition() {
        let files = [
            listed(1, 100, 199, 2),
            listed(1, 0, 99, 3),
            listed(2, 0, 9, 1),
            listed(1, 100, 199, 1),
            listed(1, 0, 99, 1),
        ];
        let chunks = group_chunks(1, &files).unwrap();
        let ids: Vec<ChunkId> = chunks.iter().map(|chunk| chunk.id).collect();
        assert_eq!(ids, vec![chunk(1, 0, 99), chunk(1, 100, 199)]);
        let dates: Vec<NaiveDate> = chunks[1]
            .files
            .iter()
            .map(|listed| listed.file.date())
            .collect();
        assert_eq!(dates, vec![day(1), day(2)], "files in date order");
        assert!(group_chunks(7, &files).unwrap().is_empty());
    }

    #[test]
    fn overlapping_chunks_are_an_error() {
        let files = [listed(0, 0, 99, 1), listed(0, 50, 149, 1)];
        assert!(matches!(
            group_chunks(0, &files),
            Err(Error::OverlappingChunks { partition: 0, .. })
        ));
        let same_start = [listed(0, 0, 99, 1), listed(0, 0, 120, 2)];
        assert!(group_chunks(0, &same_start).is_err());
        // Gaps between chunks (offsets that hold no record) are fine.
        let gap = [listed(0, 0, 99, 1), listed(0, 105, 110, 1)];
        assert_eq!(group_chunks(0, &gap).unwrap().len(), 2);
    }

    #[test]
    fn an_empty_lake_resumes_at_the_beginning() {
        let state = assess(3, &[], &[]).unwrap();
        assert_eq!(state.resume_at(), ResumeAt::Beginning);
        assert_eq!(state.complete_through(), None);
        assert_eq!(state.complete_chunks, 0);
        assert!(state.incomplete.is_none());
    }

    #[test]
    fn a_complete_newest_chunk_resumes_after_its_last_offset() {
        let files = [
            listed(0, 0, 99, 1),
            listed(0, 100, 199, 1),
            listed(0, 100, 199, 2),
        ];
        let chunks = group_chunks(0, &files).unwrap();
        let state = assess(0, &chunks, &[footer(60, 100), footer(40, 100)]).unwrap();
        assert_eq!(state.resume_at(), ResumeAt::Offset(200));
        assert_eq!(state.complete_through(), Some(199));
        assert_eq!(state.complete_chunks, 2);
        assert!(state.incomplete.is_none());
    }

    #[test]
    fn an_incomplete_newest_chunk_is_rewritten_from_its_first_offset() {
        // The writer stopped after the first of the chunk's two files.
        let files = [listed(0, 0, 99, 1), listed(0, 100, 199, 1)];
        let chunks = group_chunks(0, &files).unwrap();
        let state = assess(0, &chunks, &[footer(60, 100)]).unwrap();
        assert_eq!(state.resume_at(), ResumeAt::Offset(100));
        assert_eq!(state.complete_through(), Some(99));
        assert_eq!(state.complete_chunks, 1);
        assert_eq!(
            state.incomplete,
            Some(IncompleteChunk {
                id: chunk(0, 100, 199),
                files: vec![files[1].file],
                rows_found: 60,
                chunk_rows: 100,
                claim: None,
            })
        );
    }

    #[test]
    fn an_incomplete_only_chunk_resumes_at_its_first_offset_not_the_beginning() {
        let files = [listed(5, 40, 49, 1)];
        let chunks = group_chunks(5, &files).unwrap();
        let state = assess(5, &chunks, &[footer(3, 10)]).unwrap();
        assert_eq!(state.resume_at(), ResumeAt::Offset(40));
        assert_eq!(state.complete_through(), None);
    }

    #[test]
    fn a_chunk_with_gaps_in_its_offsets_is_complete_by_its_recorded_count() {
        let files = [listed(0, 0, 9, 1)];
        let chunks = group_chunks(0, &files).unwrap();
        let state = assess(0, &chunks, &[footer(8, 8)]).unwrap();
        assert_eq!(state.resume_at(), ResumeAt::Offset(10));
    }

    #[test]
    fn inconsistent_footers_are_errors_not_guesses() {
        let files = [listed(0, 0, 9, 1), listed(0, 0, 9, 2)];
        let chunks = group_chunks(0, &files).unwrap();
        for footers in [
            vec![footer(5, 10), footer(6, 10)], // more rows than recorded
            vec![footer(5, 10), footer(4, 9)],  // files disagree
            vec![footer(5, 11), footer(6, 11)], // more rows than offsets
            vec![footer(5, 10)],                // a footer missing
            vec![
                footer(5, 10),
                FileFooter {
                    rows: 5,
                    chunk_rows: None,
                },
            ], // not written by the writer
        ] {
            assert!(
                matches!(
                    assess(0, &chunks, &footers),
                    Err(Error::InconsistentChunk { .. })
                ),
                "{footers:?}"
            );
        }
    }

    fn claim(partition: i32, first: i64, last: i64, rows: u64) -> Claim {
        Claim::new(chunk(partition, first, last), rows, "test")
    }

    #[test]
    fn a_claimed_chunk_without_files_is_completed_from_its_first_offset() {
        let files = [listed(0, 0, 99, 1)];
        let chunks = group_chunks(0, &files).unwrap();
        let claimed = claim(0, 100, 199, 100);
        let state = assess_claimed(0, &chunks, &claimed, &[]).unwrap();
        assert_eq!(state.resume_at(), ResumeAt::Claimed(claimed.clone()));
        assert_eq!(state.resume_at().offset(), Some(100));
        assert_eq!(state.complete_through(), Some(99));
        let incomplete = state.incomplete.unwrap();
        assert_eq!(incomplete.claim, Some(claimed));
        assert!(incomplete.files.is_empty());
    }

    #[test]
    fn a_claimed_chunk_is_complete_by_its_claimed_rows() {
        let files = [
            listed(0, 0, 99, 1),
            listed(0, 100, 199, 1),
            listed(0, 100, 199, 2),
        ];
        let chunks = group_chunks(0, &files).unwrap();
        let claimed = claim(0, 100, 199, 98);
        let partial =
            assess_claimed(0, &chunks, &claimed, &[footer(50, 98), footer(40, 98)]).unwrap();
        assert_eq!(partial.resume_at(), ResumeAt::Claimed(claimed.clone()));
        assert_eq!(partial.incomplete.unwrap().rows_found, 90);
        let whole =
            assess_claimed(0, &chunks, &claimed, &[footer(50, 98), footer(48, 98)]).unwrap();
        assert_eq!(whole.resume_at(), ResumeAt::Offset(200));
        assert_eq!(whole.complete_chunks, 2);
        for footers in [
            vec![footer(50, 98), footer(49, 98)],  // more rows than claimed
            vec![footer(50, 98), footer(48, 100)], // a file of another chunk
            vec![footer(50, 98)],                  // a footer missing
        ] {
            assert!(
                assess_claimed(0, &chunks, &claimed, &footers).is_err(),
                "{footers:?}"
            );
        }
    }

    #[test]
    fn files_overlapping_or_after_the_newest_claim_but_not_its_chunk_are_an_error() {
        let claimed = claim(0, 100, 199, 100);
        for files in [
            vec![listed(0, 100, 150, 1)],
            vec![listed(0, 50, 120, 1)],
            vec![listed(0, 200, 210, 1)],
        ] {
            let chunks = group_chunks(0, &files).unwrap();
            assert!(
                matches!(
                    assess_claimed(0, &chunks, &claimed, &[]),
                    Err(Error::UnclaimedChunk { .. })
                ),
                "{files:?}"
            );
        }
    }
}
