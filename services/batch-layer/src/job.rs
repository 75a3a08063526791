//! One batch run: lock, choose T_b, check the lake, choose the days, compute, publish.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use fraud_config::Settings;
use fraud_lake::{Lake, LakeRoot};
use tokio::sync::oneshot;

use crate::completeness::{Behind, KafkaTopic};
use crate::compute::{DAY_MS, Event, HOUR_MS, WINDOW_MS, compute_day};
use crate::lake::{LakeView, date_of, day_start};
use crate::scope::{self, Scope, SharedId};
use crate::store::{self, Publication};

/// The Postgres connections a run holds at once (see [`run`]).
const RUN_CONNECTIONS: u32 = 3;

/// How far back the default watermark is looked for.
const DEFAULT_SEARCH_HOURS: i64 = 7 * 24;

/// What a run is asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// The watermark T_b (UTC ms; floored to the hour); default: the last full hour the
    /// lake is complete for.
    pub as_of: Option<i64>,
    /// Recompute every day, not only the changed ones.
    pub full: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub run_id: i64,
    pub watermark: i64,
    pub days: Vec<NaiveDate>,
    /// The days recomputed for some customers only (see [`crate::scope`]), with how
    /// many; the other days of `days` were recomputed whole.
    pub partial: BTreeMap<NaiveDate, usize>,
    pub input_files: usize,
    pub rows: u64,
    /// Where the publication's time went.
    pub times: RunTimes,
}

/// The wall time of a run's phases, summed over its days (the benchmark compares the
/// load with `psql \copy`; the run logs them with its result). A day is read and
/// computed while the day before it is copied, so the phases overlap: their sum is
/// more than the run's wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTimes {
    /// Reading the days' lake files (and a day before, for the windows that reach into
    /// it) and deduplicating their events.
    pub read: Duration,
    /// Computing the days' aggregates.
    pub compute: Duration,
    /// In Postgres before the commit: deleting the replaced rows and copying the days'
    /// rows in (encoding them included; an incremental run also reads the stored rows of
    /// the days it recomputes, to write only those that changed).
    pub copy: Duration,
    /// In Postgres at the end: merging the vendors, deriving the baselines, the run log
    /// and the commit.
    pub commit: Duration,
}

/// The lake is not complete up to the watermark asked for.
#[derive(Debug, thiserror::Error)]
#[error("{}", explain(watermark, behind))]
pub struct Incomplete {
    pub watermark: String,
    pub behind: Vec<Behind>,
}

fn explain(watermark: &str, behind: &[Behind]) -> String {
    if behind.is_empty() {
        return format!(
            "the watermark {watermark} is too recent: records stamped up to it may still be \
             on their way to Kafka"
        );
    }
    format!(
        "the lake is not complete up to {watermark}: the lake writer is behind in {} \
         partition(s) ({}); run again when it has caught up, or pass an earlier --as-of",
        behind.len(),
        describe(behind)
    )
}

fn describe(behind: &[Behind]) -> String {
    behind
        .iter()
        .take(5)
        .map(|b| {
            format!(
                "partition {} holds offsets below {}, needs below {}",
                b.partition, b.lake_next, b.needed
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The watermark asked for is older than the published one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the watermark {asked} is before the published watermark {published}; the speed layer \
     has already dropped what lies between, so publishing it would leave a gap"
)]
pub struct Backwards {
    pub asked: String,
    pub published: String,
}

/// Runs the job once against `settings`' lake, Kafka and Postgres.
pub async fn run(settings: &Settings, options: RunOptions) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    anyhow::ensure!(
        settings.postgres.max_connections >= RUN_CONNECTIONS,
        "postgres.max_connections is {}, but a batch run needs {RUN_CONNECTIONS} connections: \
         its lock, its transaction, and one reading the stored rows ahead, then keeping the \
         baselines' windows",
        settings.postgres.max_connections
    );
    // Connecting to Kafka and looking the topic up take a few round trips: meanwhile the
    // run takes its lock and lists the lake.
    let kafka = settings.kafka.clone();
    let topic = tokio::task::spawn_blocking(move || KafkaTopic::open(&kafka));
    let pool = fraud_postgres::lazy_pool(&settings.postgres, settings.service.probe_timeout())?;
    fraud_postgres::migrate(&pool).await?;
    let mut lock = store::lock(&pool).await?;
    let previous = store::previous(&mut lock).await?;
    let dropped = crate::baselines::drop_emptied(&mut lock).await?;
    if dropped > 0 {
        tracing::info!(partitions = dropped, "dropped emptied baselines partitions");
    }

    let root = LakeRoot::configured(&settings.lake).context("lake.root is not usable")?;
    let lake = Lake::open(&root).context("failed to open the lake")?;
    let view = LakeView::read(&lake)
        .await
        .context("failed to list the lake")?;

    let topic = topic.await??;
    let next_offsets = view.next_offsets.clone();
    let as_of = options.as_of;
    let slack = append_slack_ms(settings);
    let watermark = tokio::task::spawn_blocking(move || {
        choose_watermark(&topic, &next_offsets, as_of, now_millis(), slack)
    })
    .await??;
    if let Some(published) = previous.watermark
        && watermark < published
    {
        return Err(Backwards {
            asked: rfc3339(watermark),
            published: rfc3339(published),
        }
        .into());
    }

    let plans = scope::plan_days(&view, &previous, date_of(watermark), options.full);
    let mut scopes = scope::scopes(&lake, &plans)
        .await
        .context("failed to read the customers of the days' new files")?;
    let days: Vec<NaiveDate> = plans.keys().copied().collect();
    let run_id = store::start_run(&mut lock, watermark).await?;
    tracing::info!(
        run_id,
        watermark = %rfc3339(watermark),
        full = options.full,
        days = days.len(),
        partial_days = scopes.iter().filter(|(_, s)| s.customers().is_some()).count(),
        "batch run started"
    );

    let mode = Mode {
        full: options.full,
        published: previous.run_id,
    };
    let mut outcome = publish(&pool, &lake, &view, &scopes, watermark, run_id, mode).await;
    if let Err(error) = &outcome
        && let Some(shared) = error.downcast_ref::<SharedId>()
    {
        tracing::warn!(error = %shared, "the run recomputes its days whole");
        for (_, scope) in &mut scopes {
            *scope = Scope::Whole;
        }
        outcome = publish(&pool, &lake, &view, &scopes, watermark, run_id, mode).await;
    }
    match outcome {
        Ok((rows, input_files, times)) => {
            metrics::counter!("batch_runs_total", "status" => "succeeded").increment(1);
            tracing::info!(
                run_id,
                rows,
                input_files,
                elapsed_ms = started.elapsed().as_millis() as u64,
                read_ms = times.read.as_millis() as u64,
                compute_ms = times.compute.as_millis() as u64,
                copy_ms = times.copy.as_millis() as u64,
                commit_ms = times.commit.as_millis() as u64,
                "batch run succeeded"
            );
            Ok(RunReport {
                run_id,
                watermark,
                days,
                partial: scopes
                    .iter()
                    .filter_map(|(date, scope)| Some((*date, scope.customers()?.len())))
                    .collect(),
                input_files,
                rows,
                times,
            })
        }
        Err(error) => {
            metrics::counter!("batch_runs_total", "status" => "failed").increment(1);
            let message = format!("{error:#}");
            if let Err(log_error) = store::fail_run(&mut lock, run_id, &message).await {
                tracing::error!(error = %log_error, "could not log the failed run");
            }
            Err(error)
        }
    }
}

/// How a run publishes.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Every day recomputed, every row replaced.
    full: bool,
    /// The last succeeded run.
    published: Option<i64>,
}

/// Days read and computed ahead of the one being copied into Postgres.
const DAYS_AHEAD: usize = 2;

/// Computes `days` in order and publishes them in one transaction; returns (rows, input
/// files, the phases' times). Up to [`DAYS_AHEAD`] days are read and computed on tasks of
/// their own while a day is copied into Postgres, so reading, computing and copying
/// overlap; memory holds the events of at most that many days plus the one copied, and
/// one day's rows per day in flight. A day's windows reach into the day before it: a
/// day's task hands the next day's its last 30 minutes as soon as it has read them, so
/// the next day is read meanwhile and computed right after; the first day of a run of
/// consecutive days reads the day before itself. A day is computed for the customers its
/// scope holds ([`crate::scope`]). Each day's rows go into that day's partitions
/// ([`crate::partitions`]).
async fn publish(
    pool: &sqlx::PgPool,
    lake: &Lake,
    view: &LakeView,
    days: &[(NaiveDate, Scope)],
    watermark: i64,
    run_id: i64,
    mode: Mode,
) -> anyhow::Result<(u64, usize, RunTimes)> {
    let mut times = RunTimes::default();
    let mut phase = Instant::now();
    let mut publication =
        Publication::begin(pool, mode.full, days, mode.published, (run_id, watermark)).await?;
    times.copy += phase.elapsed();
    let mut fingerprints = BTreeMap::new();
    let mut input_files = 0;
    let files_of = |date: NaiveDate| {
        view.days
            .get(&date)
            .map(|day| day.files.clone())
            .unwrap_or_default()
    };
    // Each day's tail: handed over by the day before's task when that day is in the run,
    // else read with the day.
    let mut tails: Vec<Tail> = Vec::with_capacity(days.len());
    let mut senders: Vec<Option<HandOn>> = Vec::with_capacity(days.len());
    for (index, (date, scope)) in days.iter().enumerate() {
        let yesterday = date.pred_opt();
        if index > 0 && yesterday == Some(days[index - 1].0) {
            let (sender, receiver) = oneshot::channel();
            senders.push(None);
            senders[index - 1] = Some(HandOn {
                sender,
                scope: scope.clone(),
            });
            tails.push(Tail::Handed(receiver));
        } else {
            senders.push(None);
            tails.push(match yesterday {
                Some(yesterday) => Tail::Read(yesterday, files_of(yesterday)),
                None => Tail::Known(Vec::new()),
            });
        }
    }
    let mut unstarted = VecDeque::with_capacity(days.len());
    for (((date, scope), tail), hand_on) in days.iter().zip(tails).zip(senders) {
        let day = prepare_day(
            lake.clone(),
            files_of(*date),
            (*date, scope.clone()),
            watermark,
            tail,
            hand_on,
        );
        unstarted.push_back((scope.customers().is_none(), day));
    }
    let mut in_flight = VecDeque::new();
    start_days(&mut unstarted, &mut in_flight);
    for &(date, _) in days {
        let (_, day) = in_flight.pop_front().expect("a day is being prepared");
        let prepared = day.await.context("computing a day panicked")??;
        start_days(&mut unstarted, &mut in_flight);
        times.read += prepared.read;
        times.compute += prepared.compute;
        phase = Instant::now();
        let customers = prepared.aggregates.days.len();
        publication.add_day(date, prepared.aggregates).await?;
        times.copy += phase.elapsed();
        let lake_day = &view.days[&date];
        input_files += lake_day.files.len();
        fingerprints.insert(
            date,
            (lake_day.fingerprint.clone(), lake_day.listing.clone()),
        );
        tracing::debug!(%date, customers, "day computed");
    }
    phase = Instant::now();
    let rows = publication.commit(&fingerprints, input_files).await?;
    times.commit += phase.elapsed();
    Ok((rows, input_files, times))
}

/// Starts days of `unstarted` (each with whether it is computed whole) in order, as
/// long as `in_flight` holds fewer than [`DAYS_AHEAD`] whole days (a day's task waits
/// for the tail of the day before's, so none is started before the day before it). A
/// day computed for some customers keeps few events: up to twice as many days in all.
fn start_days<F>(
    unstarted: &mut VecDeque<(bool, F)>,
    in_flight: &mut VecDeque<(bool, tokio::task::JoinHandle<F::Output>)>,
) where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    while let Some((whole, _)) = unstarted.front() {
        let wholes = in_flight.iter().filter(|(whole, _)| *whole).count();
        if in_flight.len() >= 2 * DAYS_AHEAD || (*whole && wholes >= DAYS_AHEAD) {
            return;
        }
        let (whole, day) = unstarted.pop_front().expect("a day not started");
        in_flight.push_back((whole, tokio::spawn(day)));
    }
}

/// One day read and computed.
struct PreparedDay {
    aggregates: crate::compute::DayAggregates,
    read: Duration,
    compute: Duration,
}

/// Where a day's windows find the previous day's last 30 minutes.
enum Tail {
    Known(Vec<Event>),
    /// Read from these files of that day.
    Read(NaiveDate, Vec<fraud_lake::ListedFile>),
    /// Handed over by that day's task.
    Handed(oneshot::Receiver<Vec<Event>>),
}

/// Where a day's task hands its tail on: the next day's task, which computes the
/// customers of `scope`.
struct HandOn {
    sender: oneshot::Sender<Vec<Event>>,
    scope: Scope,
}

/// Reads `date`'s `files`, hands its tail on to the next day's task (`hand_on`), and
/// computes the day's aggregates for the customers of `scope` with `tail`.
async fn prepare_day(
    lake: Lake,
    files: Vec<fraud_lake::ListedFile>,
    (date, scope): (NaiveDate, Scope),
    watermark: i64,
    tail: Tail,
    hand_on: Option<HandOn>,
) -> anyhow::Result<PreparedDay> {
    let started = Instant::now();
    // The tail at hand, or where it will come from.
    let tail = match tail {
        Tail::Read(yesterday, files) => {
            // Only the tail's events are kept (and copied out of the files).
            let from = day_start(yesterday) + DAY_MS - WINDOW_MS;
            let scope = scope.clone();
            let keep =
                move |customer: &str, ts| from < ts && ts <= watermark && scope.holds(customer);
            Ok(crate::lake::files_events(lake.clone(), files, keep, |read| read.events).await?)
        }
        Tail::Known(tail) => Ok(tail),
        Tail::Handed(receiver) => Err(receiver),
    };
    // The events of the customers computed here, and those in the tail of the next
    // day's.
    let tail_from = day_start(date) + DAY_MS - WINDOW_MS;
    let (mine, next) = (scope.clone(), hand_on.as_ref().map(|h| h.scope.clone()));
    let keep = move |customer: &str, ts| {
        ts <= watermark
            && (mine.holds(customer)
                || (ts > tail_from && next.as_ref().is_some_and(|n| n.holds(customer))))
    };
    // The day is computed right after it is read, by the same piece of work, when the
    // tail is at hand (the day before was read first); else once it comes.
    let read = crate::lake::files_events(lake, files, keep, move |read| {
        if let (Some(id), Scope::Customers(_)) = (read.shared_id, &scope) {
            return Err(anyhow::Error::from(SharedId { date, id }));
        }
        let mut events = read.events;
        if let Some(hand_on) = hand_on {
            // The next day's task is gone only when the run already failed.
            let _ = hand_on.sender.send(tail_of(&events, date));
        }
        if scope.customers().is_some() {
            events.retain(|event| scope.holds(&event.customer));
        }
        let read = started.elapsed();
        let at_hand = tail.or_else(|mut receiver| match receiver.try_recv() {
            Ok(tail) => Ok(tail),
            Err(_) => Err(receiver),
        });
        Ok(match at_hand {
            Ok(at_hand) => {
                let started = Instant::now();
                let aggregates = compute_day(day_start(date), events, at_hand)?;
                Read::Computed(PreparedDay {
                    aggregates,
                    read,
                    compute: started.elapsed(),
                })
            }
            Err(receiver) => Read::Waiting(events, receiver, read),
        })
    });
    match read.await?? {
        Read::Computed(prepared) => Ok(prepared),
        Read::Waiting(events, receiver, read) => {
            let tail = receiver.await.context("the day before could not be read")?;
            let started = Instant::now();
            let aggregates =
                crate::background::ahead(move || compute_day(day_start(date), events, tail))
                    .await??;
            Ok(PreparedDay {
                aggregates,
                read,
                compute: started.elapsed(),
            })
        }
    }
}

/// A day read: computed, or its events waiting for the day before's tail.
enum Read {
    Computed(PreparedDay),
    Waiting(Vec<Event>, oneshot::Receiver<Vec<Event>>, Duration),
}

/// The events of `date` the next day's 30-minute windows can reach.
fn tail_of(events: &[Event], date: NaiveDate) -> Vec<Event> {
    let from = day_start(date) + DAY_MS - WINDOW_MS;
    events
        .iter()
        .filter(|event| event.ts > from)
        .cloned()
        .collect()
}

/// How long after its timestamp (the ingest time, taken when the request arrives) a
/// record can still be appended to the topic: a request reserves its ids for
/// `produce_timeout + 5 s` (services/ingest), plus a margin. Records are not appended in
/// timestamp order, so "every record stamped up to T is in the lake" needs the lake to
/// reach the records stamped up to T + this.
fn append_slack_ms(settings: &Settings) -> i64 {
    i64::try_from(settings.ingest.produce_timeout_ms)
        .unwrap_or(i64::MAX / 4)
        .saturating_add(10_000)
}

/// T_b: `as_of` floored to the hour, if the lake is complete up to it; else the latest
/// hour the lake is complete for. Either way at least `slack` in the past: records
/// stamped up to T_b may still be on their way until then.
fn choose_watermark(
    topic: &KafkaTopic,
    next_offsets: &BTreeMap<i32, i64>,
    as_of: Option<i64>,
    now: i64,
    slack: i64,
) -> anyhow::Result<i64> {
    if let Some(as_of) = as_of {
        let watermark = as_of - as_of.rem_euclid(HOUR_MS);
        if watermark > now - slack {
            return Err(Incomplete {
                watermark: rfc3339(watermark),
                behind: Vec::new(),
            }
            .into());
        }
        let behind = topic.behind(next_offsets, watermark + slack)?;
        if !behind.is_empty() {
            return Err(Incomplete {
                watermark: rfc3339(watermark),
                behind,
            }
            .into());
        }
        return Ok(watermark);
    }
    let latest = (now - slack) - (now - slack).rem_euclid(HOUR_MS);
    let mut first_behind = None;
    for back in 0..DEFAULT_SEARCH_HOURS {
        let candidate = latest - back * HOUR_MS;
        let behind = topic.behind(next_offsets, candidate + slack)?;
        if behind.is_empty() {
            return Ok(candidate);
        }
        first_behind.get_or_insert((candidate, behind));
    }
    let (candidate, behind) = first_behind.expect("searched at least one hour");
    Err(Incomplete {
        watermark: rfc3339(candidate),
        behind,
    }
    .into())
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| millis.to_string())
}
