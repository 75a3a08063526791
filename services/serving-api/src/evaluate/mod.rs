//! The window-update consumer: the rules in force on every update the speed layer
//! publishes, and an alert (with its outbox row) for each new episode of a rule that
//! fires.
//!
//! # The loop
//! A consumer of `kafka.window_updates_topic` in group `serving.group` (every serving
//! instance joins it, so the partitions, hence the customers, are shared out) polls a
//! batch of updates, evaluates it, and commits the batch's offsets only after the
//! batch's Postgres transaction has committed. A Postgres failure retries the same batch
//! with backoff (100 ms doubling to 5 s) until it succeeds or the service stops: nothing is skipped, and a crash
//! anywhere replays from the last commit, which is harmless (below). A record that does
//! not decode (or has another `schema-version` than
//! [`fraud_speed_view::update::UPDATE_SCHEMA_VERSION`]) is counted, logged and skipped:
//! no later update could be evaluated otherwise.
//!
//! It runs on a thread of its own ([`Shutdown::spawn_thread`]) with a polling
//! `BaseConsumer`, as the speed layer does: librdkafka's calls block, rebalance
//! callbacks then run on the polling thread between batches (so records of a partition
//! given up are dropped before anything is written for them), and leaving the group on
//! shutdown waits on that thread, never on a runtime thread. Postgres work runs on the
//! service's runtime through its handle, with the service's pool. While a batch is
//! retried the consumer is not polled; librdkafka keeps heartbeating, and an outage
//! longer than `max.poll.interval.ms` (5 min) gives the partitions to another instance,
//! which evaluates them again: harmless.
//!
//! # One evaluation
//! Each update is judged under the rule set in force ([`crate::rules::verdicts_in`]) at
//! every instant it tells about, in order of event time: at each event it lists (every
//! record the speed layer's batch applied for the customer), the rules of
//! [`Scope::Window`] on that event's own window `W(c, ts)`
//! ([`fraud_speed_view::AppliedEvent::window`]) with the customer's baseline peak
//! ([`store::Baselines`], cached per batch run) and the rules of [`Scope::Event`]
//! (`new_vendor_amount_over`) on the event; and at `asOf` the window rules on the
//! update's window, unless a listed event at `asOf` judged that window already. So a
//! window that crossed a limit at one event of a speed batch and fell back under it by
//! the batch's last event (older events leaving the window) is judged where it crossed,
//! and a large first purchase at a new vendor is judged even when later records of the
//! customer shared its batch: the verdicts do not depend on how the speed layer batched
//! the records (up to [`fraud_speed_view::AppliedEvent::window`]'s precise meaning for
//! out-of-order events). An event without its window (from a speed layer that predates
//! it) is judged by the event rules only, and the window at `asOf`. An event's vendor is
//! known when the speed layer saw the customer use it before that event inside the
//! retention (`vendorSeenBefore`) or the batch layer lists it in `batch_vendors` (asked
//! only when the new-vendor rule would fire otherwise). Every firing is a firing at its
//! instant (the event's `ts`, or `asOf`): [`episode::advance`] decides, per firing
//! (customer, rule) in that order, whether it extends the latest episode, starts a new
//! one (an alert with id [`episode::alert_id`]) or is a replay, so the firing instants
//! of one update, or of several, with no gap over the window make one episode, whose
//! alert describes its first firing instant.
//!
//! # Exactly one alert per episode
//! A batch's firings are judged in one transaction that first takes the advisory lock
//! [`store::ALERTS_LOCK`], reads the latest episodes under it, inserts each new alert
//! (`ON CONFLICT (alert_id) DO NOTHING`) with its `alert_outbox` row (routing key
//! `alert.<severity>.<rule>`), stores the episodes, and ends with one
//! `pg_notify('fraud_alerts', seq)` per inserted alert. The lock makes `alerts.seq`
//! commit order and makes two instances judging the same updates (a rebalance, a
//! zombie, a second group) take turns: the second sees the first's episode, and the
//! same episode always yields the same alert id, which Postgres stores once. A firing
//! instant older than the latest episode's start is history already judged and changes
//! nothing ([`episode::step`]), so a group replaying from the start beside a live one
//! never moves an episode back and splits it into two alerts.
//!
//! The alert's body (`alerts.body`, what subscribers receive) is [`AlertBody`]:
//! `alertId`, `customerId`, `rule`, `ruleVersion`, `severity`, `kind`, `observed` and
//! `threshold` (money as decimal strings, counts as integers), `episodeStart`,
//! `raisedAt` (RFC 3339 UTC); about the instant that fired: `asOf` (that instant),
//! `window` {`sum`, `count`, `max`, `distinctVendors`} (the window there), `event`
//! ({`transactionId`, `vendorId`, `amount`, `ts`, `knownVendor`}: the event judged
//! there, null for the update's window at `asOf`), `sourcePartition` and `sourceOffset`
//! (the transactions record: the event's, or the update's source offset at `asOf`). Its
//! `trace_context` is the W3C `traceparent` and `tracestate` of the update's evaluation
//! as a JSON object.
//!
//! # Tracing
//! Each update is evaluated in a span `evaluate window update`, a child of the trace
//! context in the update record's headers (the speed layer's span that published it);
//! the span lasts until the update's batch is committed, and an alert's
//! `trace_context` is that span's context, which the relay continues. Untraced (no
//! OTLP export) the record's headers are stored as they came.
//!
//! # Metrics
//! `serving_window_updates_total{outcome}` (`evaluated`, `undecodable`),
//! `serving_rules_fired_total{rule}`, `serving_alerts_raised_total{severity}`,
//! `serving_rule_firings_total{step}` (`starts`, `extends`, `replayed`) and
//! `serving_evaluation_retries_total`.

pub mod episode;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fraud_config::RuleCondition;
use fraud_domain::{EventTime, Money};
use fraud_kafka::rebalance::{self, RebalanceLog};
use fraud_service::Shutdown;
use fraud_speed_view::update::UPDATE_SCHEMA_VERSION;
use fraud_speed_view::{AppliedEvent, WindowAggregates, WindowUpdate};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::Serialize;
use tokio::runtime::Handle;

use crate::AppState;
use crate::rules::{Observation, ObservedEvent, RuleSet, Scope, Verdict, verdicts_in};
use episode::{Episode, Step};
use store::{Baselines, Judgement, NewAlert};

/// How long one poll waits when nothing is buffered: the latency of noticing shutdown.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Most updates evaluated in one transaction.
const MAX_BATCH: usize = 1000;
/// How long a member may go without a heartbeat before the group gives it up.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping consumer waits to leave its group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const SCHEMA_VERSION_HEADER: &str = fraud_events::SCHEMA_VERSION_HEADER;

/// Starts the consumer as the thread task `evaluate` of `shutdown`.
pub fn spawn(state: Arc<AppState>, shutdown: &Shutdown) -> anyhow::Result<()> {
    let topic = state.settings.kafka.window_updates_topic.clone();
    let context = UpdatesContext {
        topic: topic.clone(),
        log: RebalanceLog::default(),
    };
    let consumer = rebalance::cooperative_consumer(
        &state.settings.kafka,
        &state.settings.serving.group,
        context,
        SESSION_TIMEOUT,
    )?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("failed to subscribe to `{topic}`"))?;
    let runtime = Handle::current();
    shutdown.spawn_thread("evaluate", move |should_stop| {
        tracing::info!(
            topic = %topic,
            group = %state.settings.serving.group,
            "rule evaluation started"
        );
        let mut evaluator = Evaluator {
            state,
            baselines: Baselines::default(),
        };
        let outcome = run(&consumer, &runtime, &mut evaluator, should_stop);
        if !fraud_kafka::close_within(consumer, LEAVE_TIMEOUT) {
            tracing::warn!("the evaluation consumer did not leave its group in time");
        }
        outcome
    });
    Ok(())
}

/// Takes assignments as given (from the group's committed offsets) and logs the
/// partitions given up, so the loop drops their records.
struct UpdatesContext {
    topic: String,
    log: RebalanceLog<Vec<i32>>,
}

impl ClientContext for UpdatesContext {}

impl ConsumerContext for UpdatesContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        if rebalance::give_up(consumer, error, list, &self.topic, &self.log, |given_up| {
            given_up
        }) {
            return;
        }
        tracing::info!(partitions = ?rebalance::partitions(list, &self.topic), "partitions assigned");
        if let Err(error) = rebalance::assign(consumer, list) {
            self.log
                .fail(anyhow::anyhow!("failed to take the assignment: {error}"));
        }
    }
}

/// A decoded update, the span of its evaluation and that span's trace context.
#[derive(Debug, Clone)]
struct Incoming {
    update: WindowUpdate,
    trace_context: serde_json::Map<String, serde_json::Value>,
    span: tracing::Span,
}

/// A polled batch: its decoded updates in order and, per partition, the last offset.
#[derive(Debug, Default)]
struct Batch {
    updates: Vec<(i32, Incoming)>,
    ends: BTreeMap<i32, i64>,
}

impl Batch {
    fn push(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        self.ends.insert(partition, message.offset());
        match decode(message) {
            Ok(incoming) => self.updates.push((partition, incoming)),
            Err(reason) => {
                metrics::counter!("serving_window_updates_total", "outcome" => "undecodable")
                    .increment(1);
                tracing::error!(
                    topic = message.topic(),
                    partition,
                    offset = message.offset(),
                    %reason,
                    "undecodable window update skipped"
                );
            }
        }
    }

    /// Forgets the records of partitions given up: their new owner evaluates them.
    fn drop_partitions(&mut self, partitions: &[i32]) {
        self.updates
            .retain(|(partition, _)| !partitions.contains(partition));
        self.ends
            .retain(|partition, _| !partitions.contains(partition));
    }
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    })
}

fn decode(message: &BorrowedMessage<'_>) -> Result<Incoming, String> {
    let version = header(message, SCHEMA_VERSION_HEADER);
    if version != Some(UPDATE_SCHEMA_VERSION.as_bytes()) {
        return Err(format!(
            "schema-version {:?}, expected {UPDATE_SCHEMA_VERSION}",
            version.map(String::from_utf8_lossy)
        ));
    }
    let update: WindowUpdate = serde_json::from_slice(message.payload().unwrap_or_default())
        .map_err(|error| error.to_string())?;
    let span = tracing::info_span!(
        parent: None,
        "evaluate window update",
        otel.kind = "consumer",
        partition = message.partition(),
        offset = message.offset(),
        events = update.events.len(),
    );
    let received: Vec<(&str, &str)> = fraud_telemetry::propagation::TRACE_HEADERS
        .iter()
        .filter_map(|name| Some((*name, std::str::from_utf8(header(message, name)?).ok()?)))
        .collect();
    fraud_telemetry::propagation::follow(&span, &received);
    let trace_context = fraud_telemetry::propagation::headers_for(&span, &received)
        .into_iter()
        .map(|(name, value)| (name, serde_json::Value::from(value)))
        .collect();
    Ok(Incoming {
        update,
        trace_context,
        span,
    })
}

fn run(
    consumer: &BaseConsumer<UpdatesContext>,
    runtime: &Handle,
    evaluator: &mut Evaluator,
    should_stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    while !should_stop() {
        let batch = poll_batch(consumer)?;
        if batch.ends.is_empty() {
            continue;
        }
        let mut pause = RETRY_FIRST;
        loop {
            match runtime.block_on(evaluator.evaluate(&batch.updates)) {
                Ok(()) => break,
                Err(error) => {
                    metrics::counter!("serving_evaluation_retries_total").increment(1);
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = pause.as_millis() as u64,
                        "evaluating window updates failed; retrying the same updates"
                    );
                    if !wait(pause, should_stop) {
                        // Stopping: nothing of the batch is committed; it is evaluated
                        // again by whoever takes the partitions.
                        return Ok(());
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
        commit(consumer, &batch)?;
    }
    Ok(())
}

/// Sleeps `pause` in short steps; false when shutdown began meanwhile.
fn wait(pause: Duration, should_stop: &dyn Fn() -> bool) -> bool {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < pause {
        if should_stop() {
            return false;
        }
        std::thread::sleep(step);
        waited += step;
    }
    !should_stop()
}

/// Polls up to [`MAX_BATCH`] records: waits up to [`POLL_TIMEOUT`] for the first, then
/// takes what is already buffered.
fn poll_batch(consumer: &BaseConsumer<UpdatesContext>) -> anyhow::Result<Batch> {
    let mut batch = Batch::default();
    let mut timeout = POLL_TIMEOUT;
    for _ in 0..MAX_BATCH {
        let polled = consumer.poll(timeout);
        let context = consumer.context();
        if let Some(error) = context.log.take_failure() {
            return Err(error);
        }
        for given_up in context.log.take() {
            batch.drop_partitions(&given_up);
        }
        match polled {
            None => break,
            Some(Ok(message)) => batch.push(&message),
            Some(Err(error)) => {
                tracing::warn!(%error, "polling window updates failed");
                break;
            }
        }
        timeout = Duration::ZERO;
    }
    Ok(batch)
}

/// Commits, per partition, the offset after the batch's last record (asynchronously).
fn commit(consumer: &BaseConsumer<UpdatesContext>, batch: &Batch) -> anyhow::Result<()> {
    let topic = &consumer.context().topic;
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in &batch.ends {
        list.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
            .context("failed to list the offsets to commit")?;
    }
    // Asynchronously: the next batch need not wait for the broker's answer, and a
    // commit lost with a crash only replays updates already evaluated (harmless).
    if let Err(error) = consumer.commit(&list, CommitMode::Async) {
        // The batch's effects are in Postgres; evaluating it again is harmless.
        tracing::warn!(%error, "committing window-update offsets failed; they will be replayed");
    }
    Ok(())
}

/// Evaluates batches of updates; holds the baseline cache.
struct Evaluator {
    state: Arc<AppState>,
    baselines: Baselines,
}

/// A rule that fired on an update: a window rule on its window, or an event rule on
/// one of its events.
struct Firing<'a> {
    incoming: &'a Incoming,
    verdict: Verdict,
    /// The instant that fired (event time, UTC ms): the event's `ts`, or `asOf`.
    at: i64,
    /// The window at `at`.
    window: WindowAggregates,
    /// The event judged at `at`; `None` at `asOf`.
    event: Option<Described<'a>>,
}

/// An event of an update, as an alert describes it.
#[derive(Debug, Clone, Copy)]
struct Described<'a> {
    event: &'a AppliedEvent,
    /// Whether the customer had used the vendor before it (speed view, or the batch
    /// layer's vendors where they were asked).
    known_vendor: bool,
}

impl Evaluator {
    /// Evaluates `updates` (in order) under the rule set in force; writes every new
    /// episode's alert in one transaction.
    async fn evaluate(&mut self, updates: &[(i32, Incoming)]) -> anyhow::Result<()> {
        let rules = self.state.rules.current();
        let pool = &self.state.pool;
        let needs_baseline = rules.rules.iter().any(|rule| {
            rule.enabled
                && matches!(
                    rule.condition,
                    RuleCondition::WindowSumOverBaselinePeak { .. }
                )
        });
        let peaks = if needs_baseline {
            let customers: Vec<&str> = updates
                .iter()
                .map(|(_, incoming)| incoming.update.customer_id.as_str())
                .collect();
            self.baselines
                .peaks(pool, &customers)
                .await
                .context("failed to read baselines")?
        } else {
            HashMap::new()
        };
        // Every instant of every update the rules judge, in order of event time.
        let mut instants: Vec<Vec<Instant>> = updates
            .iter()
            .map(|(_, incoming)| instants(&incoming.update, &peaks))
            .collect();
        // The batch layer's vendors, only where they decide a firing.
        let unsure: Vec<(String, String)> = instants
            .iter()
            .zip(updates)
            .flat_map(|(judged, (_, incoming))| {
                judged
                    .iter()
                    .filter(|instant| {
                        verdicts_in(&rules, Scope::Event, &instant.observation)
                            .iter()
                            .any(|verdict| verdict.fires && verdict.kind == NEW_VENDOR)
                    })
                    .filter_map(|instant| {
                        let event = instant.observation.event.as_ref()?;
                        Some((incoming.update.customer_id.clone(), event.vendor_id.clone()))
                    })
            })
            .collect();
        let known = store::known_vendors(pool, &unsure)
            .await
            .context("failed to read known vendors")?;
        for (judged, (_, incoming)) in instants.iter_mut().zip(updates) {
            for event in judged
                .iter_mut()
                .filter_map(|instant| instant.observation.event.as_mut())
            {
                let pair = (incoming.update.customer_id.clone(), event.vendor_id.clone());
                event.known_vendor |= known.contains(&pair);
            }
        }

        let mut firings = Vec::new();
        for (judged, (_, incoming)) in instants.iter().zip(updates) {
            metrics::counter!("serving_window_updates_total", "outcome" => "evaluated")
                .increment(1);
            let update = &incoming.update;
            for instant in judged {
                let observation = &instant.observation;
                let event = instant.event.map(|index| Described {
                    event: &update.events[index],
                    known_vendor: observation
                        .event
                        .as_ref()
                        .is_some_and(|observed| observed.known_vendor),
                });
                for &scope in instant.scopes {
                    for verdict in verdicts_in(&rules, scope, observation) {
                        if verdict.fires {
                            metrics::counter!("serving_rules_fired_total", "rule" => verdict.rule.clone())
                                .increment(1);
                            firings.push(Firing {
                                incoming,
                                verdict,
                                at: instant.at,
                                window: observation.window,
                                event,
                            });
                        }
                    }
                }
            }
        }
        if firings.is_empty() {
            return Ok(());
        }
        judge(pool, &rules, &firings).await
    }
}

const NEW_VENDOR: &str = "new_vendor_amount_over";

/// An instant of an update that the rules judge.
#[derive(Debug, Clone)]
struct Instant {
    /// Event time (UTC ms): a listed event's `ts`, or the update's `asOf`.
    at: i64,
    /// The listed event judged at `at` (its index in `events`); `None` for `asOf`.
    event: Option<usize>,
    /// The scopes of the rules judged here.
    scopes: &'static [Scope],
    /// The window at `at`, the baseline, and the event with its vendor as known.
    observation: Observation,
}

/// The instants of `update` the rules judge, in order of event time (ties in offset
/// order, `asOf` last): every listed event's, with its own window `W(c, ts)` for the
/// window rules and the event for the event rules; and `asOf` with the update's window
/// for the window rules, unless a listed event already judged that window there (the
/// same state at the same instant). An event without its window (from a speed layer
/// that predates it) is judged by the event rules only.
fn instants(update: &WindowUpdate, peaks: &HashMap<String, Option<i64>>) -> Vec<Instant> {
    let baseline_peak_minor = peaks.get(&update.customer_id).copied().flatten();
    let mut instants: Vec<Instant> = update
        .events
        .iter()
        .enumerate()
        .map(|(index, event)| Instant {
            at: event.ts,
            event: Some(index),
            scopes: if event.window.is_some() {
                &[Scope::Window, Scope::Event]
            } else {
                &[Scope::Event]
            },
            observation: Observation {
                window: event.window.map_or_else(|| update.window(), Into::into),
                baseline_peak_minor,
                event: Some(ObservedEvent {
                    transaction_id: event.transaction_id.clone(),
                    vendor_id: event.vendor_id.clone(),
                    amount_minor: event.amount_minor,
                    known_vendor: event.vendor_seen_before,
                }),
            },
        })
        .collect();
    let judged_at_as_of = update
        .events
        .iter()
        .any(|event| event.window.is_some() && event.ts == update.as_of);
    if !judged_at_as_of {
        instants.push(Instant {
            at: update.as_of,
            event: None,
            scopes: &[Scope::Window],
            observation: Observation {
                window: update.window(),
                baseline_peak_minor,
                event: None,
            },
        });
    }
    instants.sort_by_key(|instant| instant.at);
    instants
}

/// Judges `firings` (in update order) in one transaction: episodes, alerts, outbox.
async fn judge(pool: &sqlx::PgPool, rules: &RuleSet, firings: &[Firing<'_>]) -> anyhow::Result<()> {
    let mut pairs: Vec<(String, String)> = firings
        .iter()
        .map(|firing| {
            (
                firing.incoming.update.customer_id.clone(),
                firing.verdict.rule.clone(),
            )
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    let mut judgement = Judgement::begin(pool)
        .await
        .context("failed to begin judging firings")?;
    let stored = judgement
        .episodes(&pairs)
        .await
        .context("failed to read rule episodes")?;
    let mut latest: HashMap<(String, String), Episode> = stored.clone();
    let raised_at = EventTime::now().as_millis();
    let mut severities = Vec::new();
    for firing in firings {
        let update = &firing.incoming.update;
        let key = (update.customer_id.clone(), firing.verdict.rule.clone());
        let (next, step) = episode::advance(
            latest.get(&key).copied(),
            &update.customer_id,
            &firing.verdict.rule,
            firing.at,
        );
        metrics::counter!("serving_rule_firings_total", "step" => step_name(step)).increment(1);
        let Some(next) = next else { continue };
        latest.insert(key, next);
        if step != Step::Starts {
            continue;
        }
        let alert = new_alert(rules, firing, next, raised_at);
        if judgement
            .raise(&alert)
            .await
            .context("failed to insert an alert")?
        {
            severities.push(alert.severity);
            tracing::info!(
                parent: &firing.incoming.span,
                alert_id = %alert.alert_id,
                customer = %alert.customer_id,
                rule = %alert.rule_id,
                as_of = update.as_of,
                "alert raised"
            );
        }
    }
    let changed: Vec<((String, String), Episode)> = latest
        .into_iter()
        .filter(|(key, episode)| stored.get(key) != Some(episode))
        .collect();
    judgement
        .store_episodes(&changed)
        .await
        .context("failed to store rule episodes")?;
    judgement
        .commit()
        .await
        .context("failed to commit the alerts")?;
    for severity in severities {
        metrics::counter!("serving_alerts_raised_total", "severity" => severity).increment(1);
    }
    Ok(())
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Starts => "starts",
        Step::Extends => "extends",
        Step::Replayed => "replayed",
    }
}

/// The JSON message of an alert, as stored in `alerts.body` and received by
/// subscribers. Money is a decimal string, times RFC 3339 UTC.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertBody<'a> {
    alert_id: uuid::Uuid,
    customer_id: &'a str,
    rule: &'a str,
    rule_version: i64,
    severity: fraud_config::Severity,
    kind: &'static str,
    observed: crate::rules::Quantity,
    threshold: crate::rules::Quantity,
    as_of: String,
    episode_start: String,
    raised_at: String,
    window: WindowBody,
    event: Option<EventBody<'a>>,
    source_partition: i32,
    source_offset: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WindowBody {
    sum: String,
    count: i64,
    max: String,
    distinct_vendors: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventBody<'a> {
    transaction_id: &'a str,
    vendor_id: &'a str,
    amount: String,
    ts: String,
    /// Whether the customer had used the vendor before (speed or batch view).
    known_vendor: bool,
}

fn new_alert(rules: &RuleSet, firing: &Firing<'_>, episode: Episode, raised_at: i64) -> NewAlert {
    let update = &firing.incoming.update;
    let verdict = &firing.verdict;
    let window = firing.window;
    let event = firing.event.map(|described| EventBody {
        transaction_id: &described.event.transaction_id,
        vendor_id: &described.event.vendor_id,
        amount: Money::from_minor(described.event.amount_minor).to_string(),
        ts: rfc3339(described.event.ts),
        known_vendor: described.known_vendor,
    });
    let body = AlertBody {
        alert_id: episode.alert_id,
        customer_id: &update.customer_id,
        rule: &verdict.rule,
        rule_version: rules.version,
        severity: verdict.severity,
        kind: verdict.kind,
        observed: verdict.observed,
        threshold: verdict.threshold,
        as_of: rfc3339(firing.at),
        episode_start: rfc3339(episode.started_at),
        raised_at: rfc3339(raised_at),
        window: WindowBody {
            sum: Money::from_minor(window.sum).to_string(),
            count: window.count,
            max: Money::from_minor(window.max).to_string(),
            distinct_vendors: window.distinct_vendors,
        },
        event,
        source_partition: update.source_partition,
        // The record of the event that fired; the update's at `asOf`.
        source_offset: firing
            .event
            .map_or(update.source_offset, |described| described.event.offset),
    };
    NewAlert {
        alert_id: episode.alert_id,
        customer_id: update.customer_id.clone(),
        rule_id: verdict.rule.clone(),
        rule_version: rules.version,
        severity: verdict.severity.as_str(),
        episode_start: episode.started_at,
        as_of: firing.at,
        raised_at,
        routing_key: routing_key(verdict),
        body: serde_json::to_value(&body).unwrap_or_default(),
        trace_context: serde_json::Value::Object(firing.incoming.trace_context.clone()),
    }
}

/// `alert.<severity>.<rule>`.
pub fn routing_key(verdict: &Verdict) -> String {
    format!("alert.{}.{}", verdict.severity.as_str(), verdict.rule)
}

/// UTC ms as RFC 3339 with milliseconds.
fn rfc3339(millis: i64) -> String {
    EventTime::from_millis(millis)
        .map(EventTime::to_rfc3339)
        .unwrap_or_else(|_| store::timestamp(millis).to_rfc3339())
}
