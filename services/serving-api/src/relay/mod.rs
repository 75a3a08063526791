//! The alert outbox relay: publishes every `alert_outbox` row to the alerts exchange and
//! deletes it only after the broker's publisher confirm.
//!
//! Each message goes to the durable topic exchange `rabbitmq.alerts_exchange` (declared
//! by the relay) with the row's routing key (`alert.<severity>.<rule>`), persistent
//! delivery, `mandatory`, `message_id` = the alert id, content type `application/json`,
//! the alert's body as payload, and as headers the W3C `traceparent` and `tracestate` of
//! the alert's publication (when the alert has a trace context) and `alert-seq` (the
//! alert's `seq`, for subscribers that want the commit order).
//!
//! **Tracing.** Each message is published in a span `publish alert` (with its outcome),
//! a child of the alert's stored trace context (its evaluation's span), and its headers
//! carry that span's context: the alert's trace runs from the POST to the message.
//! Untraced (no OTLP export) the stored context is sent as it is.
//!
//! **Claiming.** Rows are claimed in `alerts.seq` order with `FOR UPDATE SKIP LOCKED` in
//! a transaction that stays open while the batch is published and confirmed, and that
//! deletes the confirmed rows and sets `alerts.published_at` before it commits. Several
//! serving instances run the relay at once: a row locked by one is skipped by the
//! others, and once committed it is gone; no two relays publish the same row at the same
//! time.
//!
//! **At least once.** A relay that dies after the confirm but before its commit (SIGKILL,
//! a lost Postgres connection) leaves the rows in place, and they are published again,
//! with the same `message_id`: subscribers deduplicate on it. Nothing is ever lost: a row
//! leaves the outbox only in the transaction that follows its confirm.
//!
//! **RabbitMQ down.** The claimed rows stay, their `attempts` counted and `last_error`
//! set; the relay retries with a backoff from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`]
//! and the rows flow as soon as the broker is back. A row the broker refuses (nack), or
//! one that cannot be sent as written (a routing key longer than AMQP's 255 bytes), is
//! tried again after its own capped backoff (`next_attempt_at`, at most [`RETRY_MAX`]),
//! so it never holds up the rows behind it; it stays in the outbox, with its error,
//! for an operator to see.
//!
//! **Unroutable alerts.** When no queue is bound for a routing key, the broker returns
//! the `mandatory` message and then confirms it. That means "nobody subscribes to this
//! alert", not a failure to retry: subscribers bind their own queues, and a queue bound
//! later would not receive older messages anyway. The row leaves the outbox like any
//! published one, `alerts.routed` is set to false (true when a queue took it), the alert
//! stays in `GET /v1/alerts` and the stream, and it is counted in
//! `serving_relay_published_total{outcome="unroutable"}` and logged. Retrying instead
//! would fill the outbox for as long as a severity has no subscriber.
//!
//! **Waking.** On every committed alert ([`signal`]: `LISTEN fraud_alerts` plus a poll
//! every second) and every second in any case (rows whose retry time came).
//!
//! **Metrics.** `serving_relay_published_total{outcome="routed"|"unroutable"}`,
//! `serving_relay_failed_attempts_total{reason="broker_unavailable"|"nacked"|"invalid"|"unconfirmed"}`
//! (per row and attempt), `serving_relay_delay_seconds` (from `raised_at` to the
//! confirm), and the gauges `serving_relay_outbox_depth` and
//! `serving_relay_outbox_oldest_seconds` (age of the oldest row), refreshed every second.

pub mod signal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fraud_amqp::{ConfirmedPublisher, OutgoingMessage, Routed};
use fraud_service::Shutdown;
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use signal::AlertSignal;

use crate::AppState;

/// Most rows claimed, published and confirmed together.
pub const BATCH: i64 = 100;
/// The first wait after RabbitMQ (or Postgres) failed; it doubles on each failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two tries while RabbitMQ (or Postgres) is down.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The longest a nacked row waits before it is tried again.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// The longest a connection (and channel) to RabbitMQ may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a batch may wait for its confirms; beyond it the channel is given up.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// Starts the alert signal and the relay (`alert-relay`) under `shutdown`; the signal is
/// shared with the alert stream.
pub fn spawn(state: Arc<AppState>, shutdown: &Shutdown) -> anyhow::Result<AlertSignal> {
    let signal = AlertSignal::spawn(state.pool.clone(), shutdown);
    let relay = Relay {
        wake: signal.subscribe(),
        exchange: state.settings.rabbitmq.alerts_exchange.clone(),
        instance: instance_name(),
        state,
        publisher: None,
    };
    shutdown.spawn("alert-relay", relay.run(shutdown.token()));
    Ok(signal)
}

/// This relay's name in `alerts.published_by`: host, process and a random part (two
/// relays of one process, as in tests, differ too).
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    let random = Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &random[..8])
}

struct Relay {
    state: Arc<AppState>,
    wake: watch::Receiver<i64>,
    exchange: String,
    instance: String,
    /// The channel in confirm mode, kept while it works.
    publisher: Option<ConfirmedPublisher>,
}

/// An outbox row with its alert.
#[derive(sqlx::FromRow)]
struct Claimed {
    alert_id: Uuid,
    seq: i64,
    routing_key: String,
    body: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
    raised_at: DateTime<Utc>,
}

/// Why a round stopped early; the relay backs off before the next.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("RabbitMQ is unavailable: {0}")]
    Broker(String),
    #[error("Postgres failed: {0}")]
    Database(#[from] sqlx::Error),
}

impl Relay {
    async fn run(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(exchange = %self.exchange, instance = %self.instance, "alert relay started");
        let mut backoff = BACKOFF_MIN;
        let mut poll = tokio::time::interval(signal::POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges_at: Option<Instant> = None;
        loop {
            // Seen before draining: an alert committed from here on wakes the wait below.
            self.wake.borrow_and_update();
            let drained = self.drain().await;
            // Also (above all) while the broker is down: the outbox grows then.
            if gauges_at.is_none_or(|at| at.elapsed() >= GAUGE_EVERY) {
                self.refresh_gauges().await;
                gauges_at = Some(Instant::now());
            }
            match drained {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(failure) => {
                    tracing::warn!(error = %failure, retry_in_ms = backoff.as_millis() as u64, "alert relay round failed; alerts wait in the outbox");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = poll.tick() => {}
            }
        }
    }

    /// Publishes batches until no row is due.
    async fn drain(&mut self) -> Result<(), Failure> {
        loop {
            let claimed = self.relay_batch().await?;
            if claimed < BATCH as usize {
                return Ok(());
            }
        }
    }

    /// Claims, publishes and settles one batch; returns how many rows it claimed.
    async fn relay_batch(&mut self) -> Result<usize, Failure> {
        let mut transaction = self.state.pool.begin().await?;
        let rows: Vec<Claimed> = sqlx::query_as(
            "SELECT a.alert_id, a.seq, o.routing_key, a.body::text AS body, \
                    a.trace_context->>'traceparent' AS traceparent, \
                    a.trace_context->>'tracestate' AS tracestate, a.raised_at \
             FROM alerts a JOIN alert_outbox o ON o.alert_id = a.alert_id \
             WHERE a.published_at IS NULL AND o.next_attempt_at <= now() \
             ORDER BY a.seq \
             LIMIT $1 \
             FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *transaction)
        .await?;
        if rows.is_empty() {
            transaction.rollback().await?;
            return Ok(0);
        }
        debug_assert!(rows.windows(2).all(|pair| pair[0].seq < pair[1].seq));
        let all: Vec<Uuid> = rows.iter().map(|row| row.alert_id).collect();

        let publisher = match open_publisher(&mut self.publisher, &self.state, &self.exchange).await
        {
            Ok(publisher) => publisher,
            Err(error) => {
                failed_attempts(&mut transaction, &all, &error, None).await?;
                transaction.commit().await?;
                metrics::counter!("serving_relay_failed_attempts_total", "reason" => "broker_unavailable")
                    .increment(all.len() as u64);
                return Err(Failure::Broker(error));
            }
        };
        let ids: Vec<String> = rows.iter().map(|row| row.alert_id.to_string()).collect();
        let seqs: Vec<String> = rows.iter().map(|row| row.seq.to_string()).collect();
        // One span per alert published, a child of its evaluation (the alert's stored
        // trace context); the message's headers carry the span's context.
        let spans: Vec<tracing::Span> = rows
            .iter()
            .map(|row| {
                tracing::info_span!(
                    parent: None,
                    "publish alert",
                    otel.kind = "producer",
                    alert_id = %row.alert_id,
                    routing_key = %row.routing_key,
                    outcome = tracing::field::Empty,
                )
            })
            .collect();
        let messages: Vec<OutgoingMessage<'_>> = rows
            .iter()
            .zip(ids.iter().zip(&seqs))
            .zip(&spans)
            .map(|((row, (id, seq)), span)| {
                let received: Vec<(&str, &str)> = [
                    ("traceparent", &row.traceparent),
                    ("tracestate", &row.tracestate),
                ]
                .into_iter()
                .filter_map(|(name, value)| Some((name, value.as_deref()?)))
                .collect();
                fraud_telemetry::propagation::follow(span, &received);
                let mut headers = vec![("alert-seq".to_owned(), seq.clone())];
                headers.extend(fraud_telemetry::propagation::headers_for(span, &received));
                OutgoingMessage {
                    exchange: &self.exchange,
                    routing_key: &row.routing_key,
                    message_id: id,
                    content_type: "application/json",
                    payload: row.body.as_bytes(),
                    headers,
                }
            })
            .collect();
        let outcomes =
            match tokio::time::timeout(CONFIRM_TIMEOUT, publisher.publish_all(&messages)).await {
                Ok(outcomes) => outcomes,
                Err(_) => (0..messages.len())
                    .map(|_| Err(fraud_amqp::Error::NotSent))
                    .collect(),
            };
        drop(messages);

        let mut routed = Vec::new();
        let mut unroutable = Vec::new();
        let mut nacked = Vec::new();
        let mut invalid = Vec::new();
        let mut unconfirmed = Vec::new();
        let mut first_error: Option<String> = None;
        let confirmed_at = Utc::now();
        for ((row, outcome), span) in rows.iter().zip(outcomes).zip(&spans) {
            span.record(
                "outcome",
                match &outcome {
                    Ok(Routed::ToQueues) => "routed",
                    Ok(_) => "unroutable",
                    Err(fraud_amqp::Error::Nacked { .. }) => "nacked",
                    Err(fraud_amqp::Error::Invalid { .. }) => "invalid",
                    Err(_) => "unconfirmed",
                },
            );
            match outcome {
                Ok(routing) => {
                    if routing == Routed::ToQueues {
                        routed.push(row.alert_id);
                    } else {
                        tracing::warn!(alert_id = %row.alert_id, routing_key = %row.routing_key, "no queue is bound for the alert; published to nobody");
                        unroutable.push(row.alert_id);
                    }
                    let delay = (confirmed_at - row.raised_at).to_std().unwrap_or_default();
                    metrics::histogram!("serving_relay_delay_seconds").record(delay.as_secs_f64());
                }
                Err(fraud_amqp::Error::Nacked { .. }) => nacked.push(row.alert_id),
                Err(error @ fraud_amqp::Error::Invalid { .. }) => {
                    tracing::error!(alert_id = %row.alert_id, error = %error, "an alert cannot be published as written; it waits in the outbox");
                    invalid.push((row.alert_id, error.to_string()));
                }
                Err(error) => {
                    first_error.get_or_insert_with(|| error.to_string());
                    unconfirmed.push(row.alert_id);
                }
            }
        }
        let published: Vec<Uuid> = routed.iter().chain(&unroutable).copied().collect();
        if !published.is_empty() {
            sqlx::query("DELETE FROM alert_outbox WHERE alert_id = ANY($1)")
                .bind(&published)
                .execute(&mut *transaction)
                .await?;
            sqlx::query(
                "UPDATE alerts SET published_at = clock_timestamp(), \
                        routed = NOT (alert_id = ANY($2)), published_by = $3 \
                 WHERE alert_id = ANY($1)",
            )
            .bind(&published)
            .bind(&unroutable)
            .bind(&self.instance)
            .execute(&mut *transaction)
            .await?;
        }
        if !nacked.is_empty() {
            failed_attempts(
                &mut transaction,
                &nacked,
                "the broker refused (nacked) the message",
                Some(RETRY_MAX),
            )
            .await?;
        }
        for (alert_id, error) in &invalid {
            failed_attempts(&mut transaction, &[*alert_id], error, Some(RETRY_MAX)).await?;
        }
        if let Some(error) = &first_error {
            failed_attempts(&mut transaction, &unconfirmed, error, None).await?;
        }
        transaction.commit().await?;

        metrics::counter!("serving_relay_published_total", "outcome" => "routed")
            .increment(routed.len() as u64);
        metrics::counter!("serving_relay_published_total", "outcome" => "unroutable")
            .increment(unroutable.len() as u64);
        metrics::counter!("serving_relay_failed_attempts_total", "reason" => "nacked")
            .increment(nacked.len() as u64);
        metrics::counter!("serving_relay_failed_attempts_total", "reason" => "invalid")
            .increment(invalid.len() as u64);
        metrics::counter!("serving_relay_failed_attempts_total", "reason" => "unconfirmed")
            .increment(unconfirmed.len() as u64);
        if let Some(error) = first_error {
            // The channel (or its connection) failed: open a new one next time.
            self.publisher = None;
            return Err(Failure::Broker(error));
        }
        Ok(rows.len())
    }

    async fn refresh_gauges(&self) {
        let depth: Result<(i64, f64), sqlx::Error> = sqlx::query_as(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(enqueued_at)), 0)::float8 \
             FROM alert_outbox",
        )
        .fetch_one(&self.state.pool)
        .await;
        if let Ok((depth, oldest)) = depth {
            metrics::gauge!("serving_relay_outbox_depth").set(depth as f64);
            metrics::gauge!("serving_relay_outbox_oldest_seconds").set(oldest);
        }
    }
}

/// The open publisher in `slot`, or a new one on a fresh channel with the exchange
/// declared.
async fn open_publisher<'slot>(
    slot: &'slot mut Option<ConfirmedPublisher>,
    state: &AppState,
    exchange: &str,
) -> Result<&'slot ConfirmedPublisher, String> {
    if slot
        .as_ref()
        .is_some_and(|publisher| !publisher.is_usable())
    {
        *slot = None;
    }
    if slot.is_some() {
        return Ok(slot.as_ref().expect("checked above"));
    }
    let opening = async {
        let publisher = ConfirmedPublisher::open(&state.amqp).await?;
        fraud_amqp::declare_topic_exchange(publisher.channel(), exchange).await?;
        Ok::<_, fraud_amqp::Error>(publisher)
    };
    let publisher = match tokio::time::timeout(CONNECT_TIMEOUT, opening).await {
        Ok(Ok(publisher)) => publisher,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => {
            return Err(format!(
                "no connection to RabbitMQ within {} s",
                CONNECT_TIMEOUT.as_secs()
            ));
        }
    };
    tracing::info!(exchange, "alert relay connected to RabbitMQ");
    Ok(slot.insert(publisher))
}

/// Counts a failed attempt on `ids` with `error`; with `retry_max`, each row also waits
/// `100 ms · 2^attempts` (at most `retry_max`) before it is due again. Without it the
/// rows stay due and the relay's own backoff paces the retries (the broker, not the row,
/// is at fault).
async fn failed_attempts(
    transaction: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    error: &str,
    retry_max: Option<Duration>,
) -> Result<(), sqlx::Error> {
    let retry_max_seconds = retry_max.map(|max| max.as_secs_f64());
    sqlx::query(
        "UPDATE alert_outbox SET attempts = attempts + 1, last_error = $2, \
                next_attempt_at = CASE WHEN $3::float8 IS NULL THEN next_attempt_at \
                    ELSE now() + make_interval(secs => least($3::float8, 0.1 * power(2, least(attempts, 30)))) END \
         WHERE alert_id = ANY($1)",
    )
    .bind(ids)
    .bind(error)
    .bind(retry_max_seconds)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
