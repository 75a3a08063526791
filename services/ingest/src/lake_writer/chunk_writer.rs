//! The writer apart from Kafka: the open chunk of every assigned partition, and the
//! fenced write of a closed one ([`fraud_lake::Lake::write_claimed_chunk`]).
//!
//! The worker feeds it from its consumer. Tests drive it directly too, as a second
//! writer that lost its partitions without noticing (a zombie): it holds a chunk and
//! writes it after the partition's new owner has moved on.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use fraud_config::Settings;
use fraud_events::TransactionEvent;
use fraud_lake::{ChunkId, ChunkWrite, Fence, Lake, LakeFile};

use super::Config;
use super::partitions::{FlushPolicy, Partitions, Position, Pushed};

/// What [`ChunkWriter::write_chunk`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The partition held nothing to write (or a claimed chunk short of its end).
    Nothing,
    /// Every file of the chunk is in the lake.
    Chunk {
        id: ChunkId,
        rows: usize,
        files: Vec<LakeFile>,
        /// How many of the files this writer created (the others were there already,
        /// written by another holder of the same claim).
        created: usize,
    },
    /// The chunk was not this writer's to write: nothing written, its records dropped,
    /// and the partition repositioned at `resume`, the position the claims give.
    Fenced {
        chunk: ChunkId,
        fence: Fence,
        resume: Position,
    },
}

/// The buffers of the assigned partitions, and where their chunks go.
#[derive(Debug)]
pub struct ChunkWriter {
    lake: Arc<Lake>,
    partitions: Partitions,
    row_group_rows: usize,
    /// Written into every claim: who claimed it.
    identity: String,
}

impl ChunkWriter {
    pub(super) fn new(lake: Arc<Lake>, config: &Config, identity: String) -> Self {
        Self {
            lake,
            partitions: Partitions::new(FlushPolicy {
                max_rows: config.max_rows_per_file,
                idle: config.idle_flush,
                max_age: config.max_chunk_age,
            }),
            row_group_rows: config.row_group_rows,
            identity,
        }
    }

    /// A writer configured from `settings` (as the service's) that signs its claims
    /// `identity`, with the lake opened.
    pub fn from_settings(settings: &Settings, identity: &str) -> anyhow::Result<Self> {
        let config = Config::new(settings)?;
        let lake = Lake::open(&config.root).context("failed to open the lake")?;
        Ok(Self::new(Arc::new(lake), &config, identity.to_owned()))
    }

    /// Who this writer says it is in its claims.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The lake's position for `partitions`, after recovering them: what the rebalance
    /// callback computes (`low` stands for each partition's first offset in Kafka).
    pub async fn recover(&self, partitions: &[i32], low: i64) -> anyhow::Result<Vec<Position>> {
        let recoveries = self.lake.recover(partitions).await?;
        Ok(recoveries
            .into_iter()
            .map(|recovery| Position::resume(recovery.state.resume_at(), low))
            .collect())
    }

    /// `partition` is now this writer's, from `position`; returns the records of a
    /// buffer it still had, dropped.
    pub fn assign(&mut self, partition: i32, position: Position) -> usize {
        self.partitions.assign(partition, position, Instant::now())
    }

    /// `partition` is no longer this writer's; returns its records dropped.
    pub fn revoke(&mut self, partition: i32) -> usize {
        self.partitions.revoke(partition)
    }

    /// Buffers the record at `offset` of `partition` (see `Partitions::push`).
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        event: &TransactionEvent,
    ) -> anyhow::Result<Pushed> {
        self.partitions
            .push(partition, offset, event, Instant::now())
    }

    /// The partitions whose chunk must be written now.
    pub fn due(&self) -> Vec<i32> {
        self.partitions.due(Instant::now())
    }

    /// The partitions holding buffered records.
    pub fn non_empty(&self) -> Vec<i32> {
        self.partitions.non_empty()
    }

    /// Records buffered over every partition.
    pub fn buffered(&self) -> usize {
        self.partitions.buffered()
    }

    /// Drops `partition`'s open chunk unwritten (its next owner writes it); the buffer
    /// continues after it. Returns how many records that was.
    pub fn discard(&mut self, partition: i32) -> usize {
        self.partitions
            .take_chunk(partition)
            .map_or(0, |chunk| chunk.rows())
    }

    /// Writes `partition`'s open chunk under its claim. When the claims fence it off,
    /// nothing is written and the partition is repositioned where the claims say (the
    /// caller moves its consumer there).
    ///
    /// Parquet encoding is CPU work: call this from a thread of its own.
    pub async fn write_chunk(&mut self, partition: i32) -> anyhow::Result<Written> {
        let Some(builder) = self.partitions.take_chunk(partition) else {
            return Ok(Written::Nothing);
        };
        let Some(chunk) = builder.finish()? else {
            return Ok(Written::Nothing);
        };
        let id = chunk.id();
        let outcome = self
            .lake
            .write_claimed_chunk(&chunk, &self.identity, self.row_group_rows)
            .await
            .with_context(|| format!("failed to write chunk {id}"))?;
        match outcome {
            ChunkWrite::Written { files, created, .. } => Ok(Written::Chunk {
                id,
                rows: chunk.rows(),
                files,
                created,
            }),
            ChunkWrite::Fenced(fence) => {
                let resume = self.position_from_claims(partition).await?;
                self.partitions
                    .assign(partition, resume.clone(), Instant::now());
                Ok(Written::Fenced {
                    chunk: id,
                    fence,
                    resume,
                })
            }
        }
    }

    /// Where the lake's claims put `partition`, read-only (the partition has claims:
    /// one just fenced this writer off).
    async fn position_from_claims(&self, partition: i32) -> anyhow::Result<Position> {
        let listing = self.lake.list().await?;
        let claims = self.lake.claim_offsets(partition).await?;
        let state = self
            .lake
            .partition_state(partition, &listing, &claims)
            .await
            .with_context(|| format!("failed to read the claims of partition {partition}"))?;
        let resume_at = state.resume_at();
        if resume_at.offset().is_none() {
            return Err(anyhow!(
                "partition {partition}: fenced off by a claim, but the lake holds no claim \
                 of it any more"
            ));
        }
        Ok(Position::resume(resume_at, 0))
    }
}
