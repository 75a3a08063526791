//! The writer's buffers: one open chunk per assigned partition, and when to close it.
//!
//! Pure bookkeeping, no I/O: the worker feeds it records and rebalances and asks which
//! chunks are due.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use fraud_events::TransactionEvent;
use fraud_lake::{ChunkBuilder, Claim, ResumeAt};

/// Where a partition continues: the next offset, and the claimed chunk it must
/// complete first, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub next_offset: i64,
    /// A chunk claimed but not complete, starting at `next_offset`: the next chunk must
    /// be exactly this one (end at its last offset, with its row count).
    pub claim: Option<Claim>,
}

impl Position {
    /// The position recovery gives; `low` is the partition's first offset in Kafka.
    pub fn resume(resume_at: ResumeAt, low: i64) -> Self {
        match resume_at {
            ResumeAt::Beginning => Self {
                next_offset: low,
                claim: None,
            },
            ResumeAt::Offset(next_offset) => Self {
                next_offset,
                claim: None,
            },
            ResumeAt::Claimed(claim) => Self {
                next_offset: claim.chunk().first_offset(),
                claim: Some(claim),
            },
        }
    }
}

/// When a chunk is closed.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// A chunk is closed when it holds this many records: deterministic, by count.
    pub max_rows: usize,
    /// A chunk is closed when its partition has had no new record for this long, so the
    /// tail of a partition that goes quiet reaches the lake within a bounded time.
    pub idle: Duration,
    /// A chunk is closed when its first record has waited this long, so a partition that
    /// trickles (never idle, never full) still reaches the lake within a bounded time.
    pub max_age: Duration,
}

/// A record that does not continue its partition where the writer expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "partition {partition}: expected offset {expected} next but got {found}; the writer \
     only accepts consecutive offsets (was the topic recreated, or a record deleted by \
     retention before the lake had it?)"
)]
pub(crate) struct Discontinuity {
    pub partition: i32,
    pub expected: i64,
    pub found: i64,
}

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered; `full` when its chunk has reached the row limit and must be written.
    Buffered { full: bool },
    /// Its partition is not assigned to this writer (any more): ignored.
    NotAssigned,
}

#[derive(Debug)]
struct Buffer {
    chunk: ChunkBuilder,
    /// The offset the next record must have.
    next_offset: i64,
    last_record_at: Instant,
    /// When the open chunk's first record arrived; `None` while it is empty.
    opened_at: Option<Instant>,
    /// The claimed chunk the open chunk must be exactly (see [`Position::claim`]).
    claim: Option<Claim>,
}

impl Buffer {
    /// Whether the open chunk must be written now by count: it holds `max_rows`
    /// records, or it is a claimed chunk that has reached its last offset. A claimed
    /// chunk closes there and nowhere else.
    fn is_full(&self, max_rows: usize) -> bool {
        match &self.claim {
            Some(claim) => self.next_offset > claim.chunk().last_offset(),
            None => self.chunk.rows() >= max_rows,
        }
    }
}

/// One open chunk per assigned partition.
#[derive(Debug)]
pub(crate) struct Partitions {
    policy: FlushPolicy,
    buffers: BTreeMap<i32, Buffer>,
    buffered: usize,
}

impl Partitions {
    pub fn new(policy: FlushPolicy) -> Self {
        debug_assert!(policy.max_rows > 0, "a chunk holds at least one record");
        Self {
            policy,
            buffers: BTreeMap::new(),
            buffered: 0,
        }
    }

    /// `partition` is now ours, continuing at `position` (the lake's). A buffer it
    /// still had is dropped; returns how many records that was.
    pub fn assign(&mut self, partition: i32, position: Position, now: Instant) -> usize {
        let dropped = self.revoke(partition);
        self.buffers.insert(
            partition,
            Buffer {
                chunk: ChunkBuilder::new(partition),
                next_offset: position.next_offset,
                last_record_at: now,
                opened_at: None,
                claim: position.claim,
            },
        );
        dropped
    }

    /// `partition` is no longer ours: its unwritten records are dropped (its next owner
    /// rewrites them from the lake's position). Returns how many records that was.
    pub fn revoke(&mut self, partition: i32) -> usize {
        let dropped = self
            .buffers
            .remove(&partition)
            .map_or(0, |buffer| buffer.chunk.rows());
        self.buffered -= dropped;
        dropped
    }

    /// Buffers the record at `offset` of `partition`.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        event: &TransactionEvent,
        now: Instant,
    ) -> Result<Pushed, anyhow::Error> {
        let Some(buffer) = self.buffers.get_mut(&partition) else {
            return Ok(Pushed::NotAssigned);
        };
        if offset != buffer.next_offset {
            return Err(Discontinuity {
                partition,
                expected: buffer.next_offset,
                found: offset,
            }
            .into());
        }
        if let Some(claim) = &buffer.claim
            && offset > claim.chunk().last_offset()
        {
            return Err(anyhow!(
                "partition {partition}: offset {offset} is past the end of the claimed chunk \
                 {claim} the writer must complete (its last offset is not in the topic)"
            ));
        }
        buffer.chunk.push(offset, event)?;
        buffer.next_offset = offset + 1;
        buffer.last_record_at = now;
        buffer.opened_at.get_or_insert(now);
        self.buffered += 1;
        if let Some(claim) = &buffer.claim
            && offset == claim.chunk().last_offset()
            && buffer.chunk.rows() as u64 != claim.rows()
        {
            return Err(anyhow!(
                "partition {partition}: the claimed chunk {claim} holds {} records in the \
                 topic, not its claimed row count",
                buffer.chunk.rows()
            ));
        }
        Ok(Pushed::Buffered {
            full: buffer.is_full(self.policy.max_rows),
        })
    }

    /// The partitions whose chunk must be written now: full, idle for the policy's idle
    /// time, or open for its maximum age. A claimed chunk is due only once it has
    /// reached its claimed last offset, whatever the time.
    pub fn due(&self, now: Instant) -> Vec<i32> {
        let waited =
            |since: Instant, limit: Duration| now.saturating_duration_since(since) >= limit;
        self.buffers
            .iter()
            .filter(|(_, buffer)| {
                if buffer.claim.is_some() {
                    return buffer.is_full(self.policy.max_rows);
                }
                let rows = buffer.chunk.rows();
                rows >= self.policy.max_rows
                    || (rows > 0 && waited(buffer.last_record_at, self.policy.idle))
                    || buffer
                        .opened_at
                        .is_some_and(|opened| waited(opened, self.policy.max_age))
            })
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// The partitions holding buffered records.
    pub fn non_empty(&self) -> Vec<i32> {
        self.buffers
            .iter()
            .filter(|(_, buffer)| !buffer.chunk.is_empty())
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// Takes `partition`'s open chunk to be written, leaving an empty one that continues
    /// at the next offset. `None` when it is not assigned, holds nothing, or is a claimed
    /// chunk short of its claimed last offset (written any earlier, it would be another
    /// range than the claimed one).
    pub fn take_chunk(&mut self, partition: i32) -> Option<ChunkBuilder> {
        let max_rows = self.policy.max_rows;
        let buffer = self.buffers.get_mut(&partition)?;
        if buffer.chunk.is_empty() || (buffer.claim.is_some() && !buffer.is_full(max_rows)) {
            return None;
        }
        let chunk = std::mem::replace(&mut buffer.chunk, ChunkBuilder::new(partition));
        buffer.opened_at = None;
        buffer.claim = None;
        self.buffered -= chunk.rows();
        Some(chunk)
    }

    /// Records buffered over every partition.
    pub fn buffered(&self) -> usize {
        self.buffered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};

    fn event(number: i64) -> TransactionEvent {
        TransactionEvent {
            transaction_id: TransactionId::parse(&format!("tx-{number}")).unwrap(),
            customer_id: CustomerId::parse("c").unwrap(),
            vendor_id: VendorId::parse("v").unwrap(),
            amount: Money::from_minor(100),
            currency: Currency::EUR,
            event_time: EventTime::from_millis(1_700_000_000_000).unwrap(),
            ingest_time: EventTime::from_millis(1_700_000_000_001).unwrap(),
        }
    }

    fn at(next_offset: i64) -> Position {
        Position {
            next_offset,
            claim: None,
        }
    }

    fn partitions(max_rows: usize) -> Partitions {
        Partitions::new(FlushPolicy {
            max_rows,
            idle: Duration::from_secs(10),
            max_age: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_chunk_is_full_at_exactly_the_row_limit() {
        let now = Instant::now();
        let mut partitions = partitions(3);
        partitions.assign(0, at(40), now);
        for offset in 40..42 {
            assert_eq!(
                partitions.push(0, offset, &event(offset), now).unwrap(),
                Pushed::Buffered { full: false }
            );
        }
        assert!(partitions.due(now).is_empty());
        assert_eq!(
            partitions.push(0, 42, &event(42), now).unwrap(),
            Pushed::Buffered { full: true }
        );
        assert_eq!(partitions.due(now), vec![0]);
        let chunk = partitions.take_chunk(0).unwrap().finish().unwrap().unwrap();
        assert_eq!(
            chunk.id(),
            fraud_lake::ChunkId::new(0, 40, 42).unwrap(),
            "named by its first and last offset"
        );
        assert_eq!(partitions.buffered(), 0);
        // The next chunk continues at the next offset.
        assert_eq!(
            partitions.push(0, 43, &event(43), now).unwrap(),
            Pushed::Buffered { full: false }
        );
        assert!(partitions.push(0, 43, &event(43), now).is_err());
    }

    #[test]
    fn an_idle_partition_is_due_after_the_idle_time_and_not_before() {
        let start = Instant::now();
        let mut partitions = partitions(1000);
        partitions.assign(1, at(0), start);
        partitions.assign(2, at(0), start);
        assert!(
            partitions.due(start + Duration::from_secs(60)).is_empty(),
            "an empty partition is never due"
        );
        partitions.push(1, 0, &event(0), start).unwrap();
        partitions
            .push(2, 0, &event(0), start + Duration::from_secs(5))
            .unwrap();
        assert!(
            partitions
                .due(start + Duration::from_millis(9_999))
                .is_empty()
        );
        assert_eq!(partitions.due(start + Duration::from_secs(10)), vec![1]);
        assert_eq!(partitions.due(start + Duration::from_secs(15)), vec![1, 2]);
        assert_eq!(partitions.non_empty(), vec![1, 2]);
    }

    #[test]
    fn a_trickling_partition_is_due_at_the_maximum_age_and_starts_a_new_clock() {
        let start = Instant::now();
        let mut partitions = partitions(1000);
        partitions.assign(0, at(0), start);
        let second = Duration::from_secs(1);
        // A record every 5 s: never idle for 10 s, never full.
        for offset in 0..12 {
            let at = start + 5 * second * offset as u32;
            partitions.push(0, offset, &event(offset), at).unwrap();
            assert!(partitions.due(at).is_empty(), "not due at {offset}");
        }
        assert!(partitions.due(start + 59 * second).is_empty());
        assert_eq!(partitions.due(start + 60 * second), vec![0]);
        let chunk = partitions.take_chunk(0).unwrap().finish().unwrap().unwrap();
        assert_eq!(chunk.rows(), 12);
        // The next chunk's age counts from its own first record.
        assert!(
            partitions.due(start + 200 * second).is_empty(),
            "empty is never due"
        );
        for offset in 12..24 {
            let at = start + 61 * second + 5 * second * (offset - 12) as u32;
            partitions.push(0, offset, &event(offset), at).unwrap();
        }
        assert!(partitions.due(start + 120 * second).is_empty());
        assert_eq!(partitions.due(start + 121 * second), vec![0]);
    }

    #[test]
    fn a_record_must_continue_its_partition_exactly() {
        let now = Instant::now();
        let mut partitions = partitions(10);
        partitions.assign(0, at(100), now);
        let gap = partitions.push(0, 101, &event(1), now).unwrap_err();
        assert_eq!(
            gap.downcast_ref::<Discontinuity>(),
            Some(&Discontinuity {
                partition: 0,
                expected: 100,
                found: 101
            })
        );
        assert!(partitions.push(0, 99, &event(1), now).is_err());
        assert_eq!(partitions.buffered(), 0);
    }

    #[test]
    fn revoking_drops_the_unwritten_records_and_ignores_later_ones() {
        let now = Instant::now();
        let mut partitions = partitions(10);
        partitions.assign(0, at(0), now);
        partitions.assign(1, at(0), now);
        for offset in 0..4 {
            partitions.push(0, offset, &event(offset), now).unwrap();
        }
        partitions.push(1, 0, &event(0), now).unwrap();
        assert_eq!(partitions.buffered(), 5);
        assert_eq!(partitions.revoke(0), 4);
        assert_eq!(partitions.buffered(), 1);
        assert_eq!(
            partitions.push(0, 4, &event(4), now).unwrap(),
            Pushed::NotAssigned
        );
        assert!(partitions.take_chunk(0).is_none());
        // Assigned again, it starts over from the lake's position.
        partitions.assign(0, at(0), now);
        assert_eq!(
            partitions.push(0, 0, &event(0), now).unwrap(),
            Pushed::Buffered { full: false }
        );
        assert_eq!(
            partitions.assign(1, at(1), now),
            1,
            "reassigning drops the buffer"
        );
        assert_eq!(partitions.buffered(), 1);
    }

    #[test]
    fn a_claimed_chunk_closes_exactly_at_its_claimed_last_offset() {
        let start = Instant::now();
        let mut partitions = partitions(3);
        let claim = Claim::new(fraud_lake::ChunkId::new(0, 10, 14).unwrap(), 5, "other");
        partitions.assign(
            0,
            Position {
                next_offset: 10,
                claim: Some(claim),
            },
            start,
        );
        let later = start + Duration::from_secs(3600);
        for offset in 10..14 {
            // Past the row limit, the idle time and the maximum age: still not due.
            assert_eq!(
                partitions.push(0, offset, &event(offset), start).unwrap(),
                Pushed::Buffered { full: false }
            );
            assert!(partitions.due(later).is_empty());
        }
        assert!(
            partitions.take_chunk(0).is_none(),
            "not written short of its end"
        );
        assert_eq!(partitions.non_empty(), vec![0]);
        assert_eq!(
            partitions.push(0, 14, &event(14), start).unwrap(),
            Pushed::Buffered { full: true }
        );
        assert_eq!(partitions.due(start), vec![0]);
        let chunk = partitions.take_chunk(0).unwrap().finish().unwrap().unwrap();
        assert_eq!(chunk.id(), fraud_lake::ChunkId::new(0, 10, 14).unwrap());
        // Then the usual rules again.
        for offset in 15..18 {
            partitions.push(0, offset, &event(offset), start).unwrap();
        }
        assert_eq!(partitions.due(start), vec![0]);
    }

    #[test]
    fn a_claimed_chunk_the_topic_does_not_match_is_an_error() {
        let now = Instant::now();
        let mut partitions = partitions(100);
        let claimed = |rows| Position {
            next_offset: 0,
            claim: Some(Claim::new(
                fraud_lake::ChunkId::new(0, 0, 4).unwrap(),
                rows,
                "x",
            )),
        };
        // The topic skips the claimed last offset.
        partitions.assign(0, claimed(4), now);
        for offset in 0..4 {
            partitions.push(0, offset, &event(offset), now).unwrap();
        }
        assert!(partitions.push(0, 5, &event(5), now).is_err());
        // The claim counts fewer rows than the topic holds in its range.
        partitions.assign(0, claimed(4), now);
        for offset in 0..4 {
            partitions.push(0, offset, &event(offset), now).unwrap();
        }
        assert!(partitions.push(0, 4, &event(4), now).is_err());
    }
}
