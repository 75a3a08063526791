//! Idempotency keys in Redis: a `transactionId` is accepted once per horizon.
//!
//! Each id has one key, `<prefix>ingest:txn:<transactionId>`, holding `p:<fingerprint>`
//! while a request is producing it (expiring by itself if that request dies) and
//! `d:<fingerprint>` once the brokers acknowledged it (expiring after the horizon).
//! The fingerprint is the content's digest, so a replay with the same content is told
//! apart from a different transaction reusing the id (409). One key per id keeps this
//! correct on a Redis Cluster.
//!
//! A crash between the brokers' acknowledgement and the `d:` write leaves a `p:` key
//! that expires; a retry then produces the event again, and the layers downstream
//! deduplicate by `transactionId`, so it is still counted once.

use std::sync::Arc;
use std::time::Duration;

use fraud_redis::RedisHandle;

/// Deletes the key only if it still holds the caller's reservation. Sent with EVAL:
/// errors of ignored pipeline commands are dropped, so EVALSHA's NOSCRIPT could be missed.
const RELEASE_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// What Redis knew about one id when a request tried to reserve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// New: this request reserved it and must produce it.
    Reserved,
    /// Already accepted with the same content: a replay.
    Replay,
    /// Another request is producing the same content right now.
    InFlight,
    /// Known with different content: the id is reused for another transaction.
    Conflict,
}

/// The idempotency store.
pub struct Idempotency {
    redis: Arc<RedisHandle>,
    reserve_for: Duration,
    remember_for: Duration,
}

/// Redis failed; the request cannot be answered safely.
#[derive(Debug, thiserror::Error)]
#[error("the idempotency store (Redis) is unavailable: {0}")]
pub struct Unavailable(String);

impl Idempotency {
    /// Reservations last `reserve_for` (longer than a produce may take); accepted ids are
    /// remembered for `remember_for`.
    pub fn new(redis: Arc<RedisHandle>, reserve_for: Duration, remember_for: Duration) -> Self {
        Self {
            redis,
            reserve_for,
            remember_for,
        }
    }

    fn key(&self, transaction_id: &str) -> String {
        self.redis.key(&format!("ingest:txn:{transaction_id}"))
    }

    /// Tries to reserve every `(transactionId, fingerprint)`; one answer per item.
    pub async fn reserve(&self, items: &[(&str, &str)]) -> Result<Vec<Reservation>, Unavailable> {
        let mut pipeline = redis::pipe();
        for (id, fingerprint) in items {
            pipeline
                .cmd("SET")
                .arg(self.key(id))
                .arg(format!("p:{fingerprint}"))
                .arg("NX")
                .arg("PX")
                .arg(millis(self.reserve_for));
        }
        let set: Vec<Option<String>> = self.run(&pipeline).await?;
        let taken: Vec<usize> = (0..items.len()).filter(|&i| set[i].is_none()).collect();
        let mut answers = vec![Reservation::Reserved; items.len()];
        if taken.is_empty() {
            return Ok(answers);
        }
        let mut lookup = redis::pipe();
        for &i in &taken {
            lookup.cmd("GET").arg(self.key(items[i].0));
        }
        let existing: Vec<Option<String>> = self.run(&lookup).await?;
        for (&i, value) in taken.iter().zip(existing) {
            let fingerprint = items[i].1;
            answers[i] = match value.as_deref().and_then(|v| v.split_once(':')) {
                Some(("d", known)) if known == fingerprint => Reservation::Replay,
                Some(("p", known)) if known == fingerprint => Reservation::InFlight,
                Some(_) => Reservation::Conflict,
                // Gone between our SET and GET (expired or released): ask the client to retry.
                None => Reservation::InFlight,
            };
        }
        Ok(answers)
    }

    /// Marks reserved ids as accepted, remembered for the horizon.
    pub async fn commit(&self, items: &[(&str, &str)]) -> Result<(), Unavailable> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (id, fingerprint) in items {
            pipeline
                .cmd("SET")
                .arg(self.key(id))
                .arg(format!("d:{fingerprint}"))
                .arg("PX")
                .arg(millis(self.remember_for));
        }
        self.run::<Vec<String>>(&pipeline).await.map(drop)
    }

    /// Gives reservations back (their events were not produced).
    pub async fn release(&self, items: &[(&str, &str)]) -> Result<(), Unavailable> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (id, fingerprint) in items {
            pipeline
                .cmd("EVAL")
                .arg(RELEASE_SCRIPT)
                .arg(1)
                .arg(self.key(id))
                .arg(format!("p:{fingerprint}"));
        }
        self.run::<Vec<i64>>(&pipeline).await.map(drop)
    }

    /// Sends `pipeline` on the shared connection; every command's reply is read, so an
    /// error in any of them fails the call.
    async fn run<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, Unavailable> {
        let mut connection = self
            .redis
            .connection()
            .await
            .map_err(|error| Unavailable(error.to_string()))?;
        pipeline
            .query_async(&mut connection)
            .await
            .map_err(|error| Unavailable(error.to_string()))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
