//! Idempotency keys in Redis: a `transactionId` is accepted once per horizon, with one
//! Redis command per event.
//!
//! # The protocol
//!
//! Each id has one key, `<prefix>ingest:txn:<transactionId>`. A request that accepts
//! events first **claims** every id with `SET key c:<deadline>:<token>:<fingerprint> NX
//! GET PX <horizon>`: one command that either takes the id or answers what is already
//! there. `token` names the request (unique per process and request) and `deadline` is the
//! claimant's wall-clock time (ms) after which its produce has certainly ended; the
//! fingerprint is the content's digest, so a replay with the same content is told apart
//! from a different transaction reusing the id (409). Once the brokers acknowledged the
//! request's events (and the claims of any that failed were deleted), the request
//! **confirms** all its claims at once with one command, `SET <prefix>ingest:ack:<token>
//! 1 PX <horizon>`, and only then answers. So a batch of 1,000 costs 1,001 commands, in
//! two round trips, where a claim and a separate confirmation per key cost 2,000.
//!
//! A claim found by another request is read with its token's confirmation:
//!
//! | claim found | same fingerprint | other fingerprint |
//! |---|---|---|
//! | confirmed | replay (202, not produced) | conflict (409) |
//! | unconfirmed, before its deadline | in flight (503, retry) | conflict (409) |
//! | unconfirmed, past its deadline | taken over: produced by this request | taken over |
//!
//! The takeover is a compare-and-set on the exact claim found, so of two requests only
//! one takes a stale claim over. This is what the former protocol did with a
//! reservation that expired after the same interval (`p:` below).
//!
//! # Crashes
//!
//! - Between the claim and the brokers' acknowledgement: nothing was answered; the claim
//!   stays unconfirmed, a retry is told to retry (503) until the claim's deadline, then
//!   takes it over and produces the event. Nothing is lost, and an event that never
//!   reached Kafka is produced once.
//! - Between the acknowledgement and the confirmation: the same, so a retry produces
//!   the event a second time; the layers downstream deduplicate by `transactionId`, so
//!   it is still counted once (as before this protocol).
//!
//! The deadline is `reserve_for` (the produce timeout plus 5 s) after the claim on the
//! claimant's clock and is judged on the reader's: ingest instances' clocks must agree
//! to within that margin. A clock far ahead takes over early, which can produce an event
//! twice (counted once downstream), never lose one.
//!
//! Keys of the former protocol are still read: `d:<fingerprint>` (accepted) and
//! `p:<fingerprint>` (being produced, expiring by itself). One key per id, and one per
//! token, keeps this correct on a Redis Cluster: no command touches two keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fraud_redis::RedisHandle;

/// Deletes the key only if it still holds the caller's claim. Sent with EVAL: errors of
/// ignored pipeline commands are dropped, so EVALSHA's NOSCRIPT could be missed.
const RELEASE_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Replaces a stale claim with the caller's, only if the key still holds exactly that
/// stale claim (or holds nothing any more).
const TAKEOVER_SCRIPT: &str = "local current = redis.call('GET', KEYS[1]) \
     if current == ARGV[1] or current == false then \
       redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end \
     return 0";

/// What Redis knew about one id when a request tried to claim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// New (or a stale claim taken over): this request claimed it and must produce it.
    Reserved,
    /// Already accepted with the same content: a replay.
    Replay,
    /// Another request is producing the same content right now.
    InFlight,
    /// Known with different content: the id is reused for another transaction.
    Conflict,
}

/// One request's claims: confirmed together, or released one by one.
#[derive(Debug, Clone)]
pub struct Claim {
    token: String,
    deadline_ms: u64,
}

impl Claim {
    fn value(&self, fingerprint: &str) -> String {
        format!("c:{}:{}:{fingerprint}", self.deadline_ms, self.token)
    }
}

/// The idempotency store.
pub struct Idempotency {
    redis: Arc<RedisHandle>,
    reserve_for: Duration,
    remember_for: Duration,
    /// This process's part of every token: random, so tokens of other processes and of
    /// earlier runs of this one differ.
    instance: String,
    requests: AtomicU64,
}

/// Redis failed; the request cannot be answered safely.
#[derive(Debug, thiserror::Error)]
#[error("the idempotency store (Redis) is unavailable: {0}")]
pub struct Unavailable(String);

/// A stored value, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Stored<'a> {
    /// The former protocol's accepted id.
    Accepted { fingerprint: &'a str },
    /// The former protocol's reservation (it expires by itself).
    Reserved { fingerprint: &'a str },
    /// A claim, confirmed when its token's confirmation exists.
    Claimed {
        deadline_ms: u64,
        token: &'a str,
        fingerprint: &'a str,
    },
    /// Nothing this service writes.
    Unknown,
}

fn parse(value: &str) -> Stored<'_> {
    match value.split_once(':') {
        Some(("d", fingerprint)) => Stored::Accepted { fingerprint },
        Some(("p", fingerprint)) => Stored::Reserved { fingerprint },
        Some(("c", rest)) => {
            let mut parts = rest.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(deadline), Some(token), Some(fingerprint)) => match deadline.parse() {
                    Ok(deadline_ms) => Stored::Claimed {
                        deadline_ms,
                        token,
                        fingerprint,
                    },
                    Err(_) => Stored::Unknown,
                },
                _ => Stored::Unknown,
            }
        }
        _ => Stored::Unknown,
    }
}

impl Idempotency {
    /// Claims last `reserve_for` (longer than a produce may take) unless confirmed;
    /// accepted ids are remembered for `remember_for`.
    pub fn new(redis: Arc<RedisHandle>, reserve_for: Duration, remember_for: Duration) -> Self {
        Self {
            redis,
            reserve_for,
            remember_for,
            instance: format!("{:016x}", random_u64()),
            requests: AtomicU64::new(0),
        }
    }

    fn key(&self, transaction_id: &str) -> String {
        self.redis.key(&format!("ingest:txn:{transaction_id}"))
    }

    fn ack_key(&self, token: &str) -> String {
        self.redis.key(&format!("ingest:ack:{token}"))
    }

    /// Tries to claim every `(transactionId, fingerprint)`; one answer per item, and the
    /// claim to confirm (or release) the items answered [`Reservation::Reserved`].
    pub async fn claim(
        &self,
        items: &[(&str, &str)],
    ) -> Result<(Claim, Vec<Reservation>), Unavailable> {
        let now = now_ms();
        let claim = Claim {
            token: format!(
                "{}{:x}",
                self.instance,
                self.requests.fetch_add(1, Ordering::Relaxed)
            ),
            deadline_ms: now.saturating_add(millis(self.reserve_for)),
        };
        let remember_ms = millis(self.remember_for);
        let mut pipeline = redis::pipe();
        for (id, fingerprint) in items {
            pipeline
                .cmd("SET")
                .arg(self.key(id))
                .arg(claim.value(fingerprint))
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(remember_ms);
        }
        let found: Vec<Option<String>> = self.run(&pipeline).await?;
        let mut answers = vec![Reservation::Reserved; items.len()];
        if found.iter().all(Option::is_none) {
            return Ok((claim, answers));
        }

        let stored: Vec<Option<Stored>> = found.iter().map(|v| v.as_deref().map(parse)).collect();
        let confirmed = self.confirmed_tokens(&stored).await?;
        let mut stale = Vec::new();
        for (index, entry) in stored.iter().enumerate() {
            let Some(entry) = entry else { continue };
            let fingerprint = items[index].1;
            let same = |known: &str| known == fingerprint;
            answers[index] = match *entry {
                Stored::Accepted { fingerprint: known } if same(known) => Reservation::Replay,
                Stored::Reserved { fingerprint: known } if same(known) => Reservation::InFlight,
                Stored::Accepted { .. } | Stored::Reserved { .. } | Stored::Unknown => {
                    Reservation::Conflict
                }
                Stored::Claimed {
                    token,
                    fingerprint: known,
                    ..
                } if confirmed.contains(&token) => {
                    if same(known) {
                        Reservation::Replay
                    } else {
                        Reservation::Conflict
                    }
                }
                Stored::Claimed {
                    deadline_ms,
                    fingerprint: known,
                    ..
                } if now <= deadline_ms => {
                    if same(known) {
                        Reservation::InFlight
                    } else {
                        Reservation::Conflict
                    }
                }
                Stored::Claimed { .. } => {
                    stale.push(index);
                    Reservation::InFlight
                }
            };
        }
        if !stale.is_empty() {
            let mut takeover = redis::pipe();
            for &index in &stale {
                let (id, fingerprint) = items[index];
                takeover
                    .cmd("EVAL")
                    .arg(TAKEOVER_SCRIPT)
                    .arg(1)
                    .arg(self.key(id))
                    .arg(found[index].as_deref().unwrap_or_default())
                    .arg(claim.value(fingerprint))
                    .arg(remember_ms);
            }
            let taken: Vec<i64> = self.run(&takeover).await?;
            for (&index, taken) in stale.iter().zip(taken) {
                if taken == 1 {
                    tracing::info!(
                        transaction_id = items[index].0,
                        "took over an unconfirmed claim past its deadline"
                    );
                    answers[index] = Reservation::Reserved;
                }
            }
        }
        Ok((claim, answers))
    }

    /// The tokens among `stored`'s claims that are confirmed.
    async fn confirmed_tokens<'a>(
        &self,
        stored: &[Option<Stored<'a>>],
    ) -> Result<Vec<&'a str>, Unavailable> {
        let mut tokens: Vec<&str> = stored
            .iter()
            .filter_map(|entry| match entry {
                Some(Stored::Claimed { token, .. }) => Some(*token),
                _ => None,
            })
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        if tokens.is_empty() {
            return Ok(tokens);
        }
        let mut lookup = redis::pipe();
        for token in &tokens {
            lookup.cmd("EXISTS").arg(self.ack_key(token));
        }
        let exists: Vec<bool> = self.run(&lookup).await?;
        Ok(tokens
            .into_iter()
            .zip(exists)
            .filter_map(|(token, exists)| exists.then_some(token))
            .collect())
    }

    /// Marks every item still held by `claim` as accepted, remembered for the horizon.
    /// Call it once every such item is durable in Kafka, and after releasing the others.
    pub async fn confirm(&self, claim: &Claim) -> Result<(), Unavailable> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(self.ack_key(&claim.token))
            .arg(1)
            .arg("PX")
            .arg(millis(self.remember_for));
        self.run::<Vec<String>>(&pipeline).await.map(drop)
    }

    /// Gives `claim`'s items back (their events were not produced).
    pub async fn release(&self, claim: &Claim, items: &[(&str, &str)]) -> Result<(), Unavailable> {
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
                .arg(claim.value(fingerprint));
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// 64 random bits from the standard library's per-process hash keys (seeded by the OS),
/// mixed with the time and the process id.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_of_both_protocols_parse() {
        assert_eq!(parse("d:abc"), Stored::Accepted { fingerprint: "abc" });
        assert_eq!(parse("p:abc"), Stored::Reserved { fingerprint: "abc" });
        assert_eq!(
            parse("c:1700000000000:00ff3:abc"),
            Stored::Claimed {
                deadline_ms: 1_700_000_000_000,
                token: "00ff3",
                fingerprint: "abc"
            }
        );
        assert_eq!(parse("c:soon:t:abc"), Stored::Unknown);
        assert_eq!(parse("c:1:t"), Stored::Unknown);
        assert_eq!(parse("x"), Stored::Unknown);
    }

    #[test]
    fn a_claim_value_parses_back() {
        let claim = Claim {
            token: "0123456789abcdef2a".to_owned(),
            deadline_ms: 42,
        };
        assert_eq!(
            parse(&claim.value("f1")),
            Stored::Claimed {
                deadline_ms: 42,
                token: "0123456789abcdef2a",
                fingerprint: "f1"
            }
        );
    }

    #[test]
    fn instances_get_different_tokens() {
        assert_ne!(random_u64(), random_u64());
    }
}
