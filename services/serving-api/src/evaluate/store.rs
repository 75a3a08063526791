//! What evaluation reads from and writes to Postgres: baselines (cached), the batch
//! layer's known vendors, and alerts with their outbox rows and episodes in one
//! transaction.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::episode::Episode;

/// The transaction-level advisory lock every alert-writing transaction takes first
/// (`"fraudal"` in ASCII): alerts are inserted one transaction at a time, so
/// `alerts.seq` order is commit order (migration 0003).
pub const ALERTS_LOCK: i64 = 0x0066_7261_7564_616c;

/// The channel notified, with an inserted alert's `seq` as text, when its transaction
/// commits; the relay and the alert stream listen on it.
pub const ALERTS_CHANNEL: &str = "fraud_alerts";

/// Most customers' baselines kept at once; beyond it the cache starts over.
const BASELINE_CACHE_MAX: usize = 200_000;

/// The customers' baseline peaks (`batch_baselines.p95_peak_30m_minor`), read once per
/// customer and batch run.
///
/// The baselines change only when a batch run publishes, and a run adds its row to
/// `batch_runs` in the transaction that replaces the views. So the cache is keyed by the
/// latest succeeded run (its id, which changes also when a rerun keeps the watermark),
/// checked at most every [`crate::rules::REFRESH`]; a new run empties it. A customer
/// without a baseline is cached as `None` the same way.
#[derive(Debug, Default)]
pub struct Baselines {
    run: Option<i64>,
    checked_at: Option<Instant>,
    peaks: HashMap<String, Option<i64>>,
}

impl Baselines {
    /// The baseline peak of each of `customers` (`None` without a baseline).
    pub async fn peaks(
        &mut self,
        pool: &PgPool,
        customers: &[&str],
    ) -> Result<HashMap<String, Option<i64>>, sqlx::Error> {
        let stale = self
            .checked_at
            .is_none_or(|at| at.elapsed() >= crate::rules::REFRESH);
        if stale {
            let run: Option<i64> =
                sqlx::query_scalar("SELECT max(run_id) FROM batch_runs WHERE status = 'succeeded'")
                    .fetch_one(pool)
                    .await?;
            if run != self.run || self.peaks.len() > BASELINE_CACHE_MAX {
                self.peaks.clear();
                self.run = run;
            }
            self.checked_at = Some(Instant::now());
        }
        let missing: Vec<String> = customers
            .iter()
            .filter(|customer| !self.peaks.contains_key(**customer))
            .map(|customer| (*customer).to_owned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT customer_id, p95_peak_30m_minor FROM batch_baselines \
                 WHERE customer_id = ANY($1)",
            )
            .bind(&missing)
            .fetch_all(pool)
            .await?;
            for customer in missing {
                self.peaks.insert(customer, None);
            }
            for (customer, peak) in rows {
                self.peaks.insert(customer, Some(peak));
            }
        }
        Ok(customers
            .iter()
            .map(|customer| {
                let peak = self.peaks.get(*customer).copied().flatten();
                ((*customer).to_owned(), peak)
            })
            .collect())
    }
}

/// Which of the (customer, vendor) pairs are in `batch_vendors`.
pub async fn known_vendors(
    pool: &PgPool,
    pairs: &[(String, String)],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    let (customers, vendors): (Vec<&str>, Vec<&str>) = pairs
        .iter()
        .map(|(customer, vendor)| (customer.as_str(), vendor.as_str()))
        .unzip();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT customer_id, vendor_id FROM batch_vendors \
         WHERE (customer_id, vendor_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
    )
    .bind(customers)
    .bind(vendors)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A `rule_episodes` row: customer, rule, started at, last fired at, alert id.
type EpisodeRow = (String, String, DateTime<Utc>, DateTime<Utc>, Uuid);

/// An alert to insert.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub alert_id: Uuid,
    pub customer_id: String,
    pub rule_id: String,
    pub rule_version: i64,
    pub severity: &'static str,
    pub episode_start: i64,
    pub as_of: i64,
    pub raised_at: i64,
    pub routing_key: String,
    pub body: serde_json::Value,
    pub trace_context: serde_json::Value,
}

/// The transaction in which one batch's firings are judged: it holds [`ALERTS_LOCK`]
/// from its first statement, so the episodes it reads cannot change under it.
pub struct Judgement {
    transaction: Transaction<'static, Postgres>,
    inserted: Vec<i64>,
}

impl Judgement {
    /// Begins the transaction and takes the lock.
    pub async fn begin(pool: &PgPool) -> Result<Judgement, sqlx::Error> {
        let mut transaction = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ALERTS_LOCK)
            .execute(&mut *transaction)
            .await?;
        Ok(Judgement {
            transaction,
            inserted: Vec::new(),
        })
    }

    /// The latest episode of each of the (customer, rule) pairs that has one.
    pub async fn episodes(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), Episode>, sqlx::Error> {
        let (customers, rules): (Vec<&str>, Vec<&str>) = pairs
            .iter()
            .map(|(customer, rule)| (customer.as_str(), rule.as_str()))
            .unzip();
        let rows: Vec<EpisodeRow> = sqlx::query_as(
            "SELECT customer_id, rule_id, started_at, last_fired_at, alert_id \
             FROM rule_episodes \
             WHERE (customer_id, rule_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(customers)
        .bind(rules)
        .fetch_all(&mut *self.transaction)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(customer, rule, started_at, last_fired_at, alert_id)| {
                let episode = Episode {
                    started_at: started_at.timestamp_millis(),
                    last_fired_at: last_fired_at.timestamp_millis(),
                    alert_id,
                };
                ((customer, rule), episode)
            })
            .collect())
    }

    /// Inserts `alert` and its outbox row unless an alert of that id exists (a replay);
    /// returns whether it was new.
    pub async fn raise(&mut self, alert: &NewAlert) -> Result<bool, sqlx::Error> {
        let seq: Option<i64> = sqlx::query_scalar(
            "INSERT INTO alerts (alert_id, customer_id, rule_id, rule_version, severity, \
                                 episode_start, as_of, raised_at, body, trace_context) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (alert_id) DO NOTHING RETURNING seq",
        )
        .bind(alert.alert_id)
        .bind(&alert.customer_id)
        .bind(&alert.rule_id)
        .bind(alert.rule_version)
        .bind(alert.severity)
        .bind(timestamp(alert.episode_start))
        .bind(timestamp(alert.as_of))
        .bind(timestamp(alert.raised_at))
        .bind(&alert.body)
        .bind(&alert.trace_context)
        .fetch_optional(&mut *self.transaction)
        .await?;
        let Some(seq) = seq else {
            return Ok(false);
        };
        sqlx::query("INSERT INTO alert_outbox (alert_id, routing_key) VALUES ($1, $2)")
            .bind(alert.alert_id)
            .bind(&alert.routing_key)
            .execute(&mut *self.transaction)
            .await?;
        self.inserted.push(seq);
        Ok(true)
    }

    /// Stores the latest episode of each (customer, rule) in `episodes`.
    pub async fn store_episodes(
        &mut self,
        episodes: &[((String, String), Episode)],
    ) -> Result<(), sqlx::Error> {
        if episodes.is_empty() {
            return Ok(());
        }
        let mut customers = Vec::with_capacity(episodes.len());
        let mut rules = Vec::with_capacity(episodes.len());
        let mut starts = Vec::with_capacity(episodes.len());
        let mut lasts = Vec::with_capacity(episodes.len());
        let mut ids = Vec::with_capacity(episodes.len());
        for ((customer, rule), episode) in episodes {
            customers.push(customer.as_str());
            rules.push(rule.as_str());
            starts.push(timestamp(episode.started_at));
            lasts.push(timestamp(episode.last_fired_at));
            ids.push(episode.alert_id);
        }
        sqlx::query(
            "INSERT INTO rule_episodes (customer_id, rule_id, started_at, last_fired_at, alert_id) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], \
                                  $4::timestamptz[], $5::uuid[]) \
             ON CONFLICT (customer_id, rule_id) DO UPDATE SET \
                 started_at = EXCLUDED.started_at, \
                 last_fired_at = EXCLUDED.last_fired_at, \
                 alert_id = EXCLUDED.alert_id",
        )
        .bind(customers)
        .bind(rules)
        .bind(starts)
        .bind(lasts)
        .bind(ids)
        .execute(&mut *self.transaction)
        .await?;
        Ok(())
    }

    /// Notifies [`ALERTS_CHANNEL`] once per inserted alert (its `seq`, in order) and
    /// commits; returns how many alerts were inserted.
    pub async fn commit(mut self) -> Result<usize, sqlx::Error> {
        for seq in &self.inserted {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(ALERTS_CHANNEL)
                .bind(seq.to_string())
                .execute(&mut *self.transaction)
                .await?;
        }
        self.transaction.commit().await?;
        Ok(self.inserted.len())
    }
}

/// UTC ms as a timestamp (the epoch for an instant chrono cannot hold, which window
/// updates never carry).
pub fn timestamp(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}
