//! Posting transactions through the ingest API: the one loop that `fraud-replay`,
//! `fraud-load` and `fraud-chaos` share.
//!
//! The caller hands [`post_lanes`] one or more *lanes*, each a list of items in the
//! order they must reach ingest, each item with the moment it is due (from a common
//! start). Every lane is one client: it waits for its next item's moment, sends every
//! item due by then in one batch (at most [`Options::batch`]), and sends the next batch
//! only once the previous one is answered, so a lane's items reach ingest (and Kafka)
//! in its order. The lanes run concurrently; a load spreads its customers over lanes,
//! so each customer's events keep their order.
//!
//! A 429 or 503 is waited out (`Retry-After`) and the same batch sent again, which is
//! idempotent: the same `transactionId`s with the same content. With
//! [`Options::retry_failures`] a connection error, a timeout or another 5xx is retried
//! too (ingest restarting under a fault); a batch that met one of those, or a 503, may
//! have been produced before its answer was lost, so its items are marked
//! [`Ack::uncertain`]: a duplicate record in Kafka is possible for them, never a lost
//! one. An item is [`Ack::acknowledged`] once a 202 answered a request carrying it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Where to post.
#[derive(Debug, Clone)]
pub struct Target {
    /// Ingest's base URL.
    pub url: String,
    /// An API key with scope `ingest`.
    pub key: String,
}

/// How to post.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most transactions in one request.
    pub batch: usize,
    /// Retry connection errors, timeouts and 5xx other than 503 (else they fail the run).
    pub retry_failures: bool,
    /// How long one batch may keep failing before the run gives up.
    pub give_up_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 500,
            retry_failures: false,
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// What the requests did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Newly accepted transactions, and idempotent replays (an id already accepted).
    pub accepted: usize,
    pub replayed: usize,
    pub requests: usize,
    /// Requests answered 429/503 and sent again.
    pub retries: usize,
    /// Requests that failed without an answer (or with a 5xx other than 503) and were
    /// sent again.
    pub failures: usize,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.accepted += other.accepted;
        self.replayed += other.replayed;
        self.requests += other.requests;
        self.retries += other.retries;
        self.failures += other.failures;
    }
}

/// What became of one item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ack {
    /// A 202 answered a request carrying it: it is durable in Kafka.
    pub acknowledged: bool,
    /// A request carrying it was retried after an answer that leaves open whether it
    /// was produced (no answer, a 5xx): Kafka may hold it twice.
    pub uncertain: bool,
}

/// One item of a lane: when it is due (from the common start) and which of the
/// caller's events it is.
pub type Item = (Duration, usize);

/// Posts every lane (concurrently, each in its order and pace from `started`); `body`
/// gives an item's JSON object. Returns, per lane and item, what became of it, and the
/// counts of every lane together.
pub async fn post_lanes(
    target: &Target,
    lanes: &[Vec<Item>],
    started: Instant,
    options: &Options,
    body: &(dyn Fn(usize) -> Value + Sync),
) -> anyhow::Result<(Vec<Vec<Ack>>, Counts)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("{}/v1/transactions", target.url.trim_end_matches('/'));
    let runs = lanes
        .iter()
        .map(|lane| post_lane(&client, &url, &target.key, lane, started, options, body));
    let outcomes = futures::future::try_join_all(runs).await?;
    let mut counts = Counts::default();
    let mut acks = Vec::with_capacity(outcomes.len());
    for (lane_acks, lane_counts) in outcomes {
        counts.add(&lane_counts);
        acks.push(lane_acks);
    }
    Ok((acks, counts))
}

async fn post_lane(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    lane: &[Item],
    started: Instant,
    options: &Options,
    body: &(dyn Fn(usize) -> Value + Sync),
) -> anyhow::Result<(Vec<Ack>, Counts)> {
    let batch = options.batch.max(1);
    let mut acks = vec![Ack::default(); lane.len()];
    let mut counts = Counts::default();
    let mut next = 0;
    while next < lane.len() {
        // Wait for the next item's moment, then send every item due by now.
        let wait = lane[next].0.saturating_sub(started.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let elapsed = started.elapsed();
        let mut end = next + 1;
        while end < lane.len() && end - next < batch && lane[end].0 <= elapsed {
            end += 1;
        }
        let request = Value::Array(
            lane[next..end]
                .iter()
                .map(|(_, item)| body(*item))
                .collect(),
        );
        let (answer, uncertain) =
            post_one(client, url, key, &request, options, &mut counts).await?;
        counts.accepted += usize::try_from(answer["accepted"].as_u64().unwrap_or(0))?;
        counts.replayed += usize::try_from(answer["replayed"].as_u64().unwrap_or(0))?;
        for ack in &mut acks[next..end] {
            ack.acknowledged = true;
            ack.uncertain = uncertain;
        }
        next = end;
    }
    Ok((acks, counts))
}

/// Sends `body` until ingest answers 202; returns the answer and whether an earlier
/// attempt may have produced it (see [`Ack::uncertain`]).
async fn post_one(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    options: &Options,
    counts: &mut Counts,
) -> anyhow::Result<(Value, bool)> {
    let mut uncertain = false;
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        counts.requests += 1;
        let sent = client.post(url).bearer_auth(key).json(body).send().await;
        let failure = match sent {
            Err(error) => format!("POST {url}: {error}"),
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 429 || status == 503 {
                    let seconds = response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<u64>().ok())
                        .unwrap_or(1);
                    counts.retries += 1;
                    uncertain |= status == 503;
                    tokio::time::sleep(Duration::from_secs(seconds.clamp(1, 30))).await;
                    continue;
                }
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                if status == 202 {
                    return Ok((answer, uncertain));
                }
                if status < 500 {
                    bail!("POST {url} answered {status}: {answer}");
                }
                format!("POST {url} answered {status}: {answer}")
            }
        };
        if !options.retry_failures {
            bail!("{failure}");
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > options.give_up_after {
            return Err(anyhow::anyhow!("{failure}"))
                .with_context(|| format!("ingest kept failing for {:?}", options.give_up_after));
        }
        uncertain = true;
        counts.failures += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
