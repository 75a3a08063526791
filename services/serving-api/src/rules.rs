//! Fraud rules: the rule set in force (data, not code), and evaluating it against what
//! is known of a customer.
//!
//! The set in force is the highest version in `rule_sets`, or the configured defaults
//! (`serving.rules`, version 0) before any `PUT /v1/rules`. Every instance re-reads it
//! every [`REFRESH`], so a change reaches every instance without a restart.
//! `verdict` is the one place a rule is applied: to window updates (alerts) and to
//! risk requests (score, level, reasons) alike. On a window update a rule of
//! [`Scope::Window`] judges the window at every event the update applied (that event's
//! own window) and at `asOf`, and one of [`Scope::Event`] judges each event the update
//! applied, one at a time ([`verdicts_in`], `crate::evaluate`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use fraud_config::{RuleCondition, RuleDefinition, Severity};
use fraud_domain::Money;
use fraud_speed_view::WindowAggregates;
use serde::Serialize;
use sqlx::PgPool;

/// How often every instance re-reads the rule set in force.
pub const REFRESH: Duration = Duration::from_secs(1);

/// A versioned rule set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    /// 0 for the configured defaults; each stored change adds one.
    pub version: i64,
    pub rules: Vec<RuleDefinition>,
}

/// What the rules look at for one customer at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// `W(c, t)` at the instant judged: `asOf`, or an event's `ts` on a window update.
    pub window: WindowAggregates,
    /// The batch layer's baseline peak: the 95th percentile of the customer's daily
    /// 30-minute peaks, in minor units; `None` without a baseline.
    pub baseline_peak_minor: Option<i64>,
    /// The one event judged, for rules of [`Scope::Event`]; `None` for the window.
    pub event: Option<ObservedEvent>,
}

/// An event a window update applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedEvent {
    pub transaction_id: String,
    pub vendor_id: String,
    pub amount_minor: i64,
    /// Whether the customer had used the vendor before this event.
    pub known_vendor: bool,
}

/// A value a rule compares: money (a decimal string in JSON) or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Money(i64),
    Count(i64),
}

impl Quantity {
    fn raw(self) -> i64 {
        match self {
            Quantity::Money(minor) | Quantity::Count(minor) => minor,
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Quantity::Money(minor) => serializer.collect_str(&Money::from_minor(*minor)),
            Quantity::Count(count) => serializer.serialize_i64(*count),
        }
    }
}

/// A rule's verdict: what it observed against its threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub rule: String,
    pub severity: Severity,
    pub kind: &'static str,
    pub observed: Quantity,
    pub threshold: Quantity,
    /// Whether the rule fires: observed strictly over the threshold.
    #[serde(skip)]
    pub fires: bool,
}

impl Verdict {
    /// observed ÷ threshold (thresholds are positive).
    pub fn ratio(&self) -> f64 {
        self.observed.raw() as f64 / self.threshold.raw().max(1) as f64
    }
}

/// Risk level of an assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
}

/// The rules' judgement of an observation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// 0 to 1: half the largest observed ÷ threshold over the enabled rules, at most 1;
    /// at least 0.5 exactly when a rule fires.
    pub score: f64,
    /// The highest severity among the rules that fire (`critical` counts as `high`);
    /// `low` when none fires.
    pub level: Level,
    /// Every rule that fires.
    pub reasons: Vec<Verdict>,
}

/// What a rule judges on a window update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The window, at every event the update applied and at its `asOf`.
    Window,
    /// Each event the update applied, one at a time (the observation's `event`).
    Event,
}

impl Scope {
    pub fn of(condition: &RuleCondition) -> Scope {
        match condition {
            RuleCondition::WindowSumOver { .. }
            | RuleCondition::WindowCountOver { .. }
            | RuleCondition::WindowSumOverBaselinePeak { .. } => Scope::Window,
            RuleCondition::NewVendorAmountOver { .. } => Scope::Event,
        }
    }
}

/// Every enabled rule's verdict on `observation` (rules that cannot apply, such as a
/// baseline rule without a baseline or an event rule without an event, give none).
pub fn verdicts(rules: &RuleSet, observation: &Observation) -> Vec<Verdict> {
    rules
        .rules
        .iter()
        .filter(|rule| rule.enabled)
        .filter_map(|rule| verdict(rule, observation))
        .collect()
}

/// The verdicts of the enabled rules of `scope` on `observation`.
pub fn verdicts_in(rules: &RuleSet, scope: Scope, observation: &Observation) -> Vec<Verdict> {
    rules
        .rules
        .iter()
        .filter(|rule| rule.enabled && Scope::of(&rule.condition) == scope)
        .filter_map(|rule| verdict(rule, observation))
        .collect()
}

fn verdict(rule: &RuleDefinition, observation: &Observation) -> Option<Verdict> {
    let window = &observation.window;
    let (kind, observed, threshold) = match &rule.condition {
        RuleCondition::WindowSumOver { limit_minor } => (
            "window_sum_over",
            Quantity::Money(window.sum),
            Quantity::Money(*limit_minor),
        ),
        RuleCondition::WindowCountOver { limit } => (
            "window_count_over",
            Quantity::Count(window.count),
            Quantity::Count(*limit),
        ),
        RuleCondition::WindowSumOverBaselinePeak {
            multiple_percent,
            min_sum_minor,
        } => {
            let peak = observation.baseline_peak_minor?;
            // multiple × peak, rounded down to the minor unit: "over" it is exact in
            // integers (sum > floor(m × p) ⇔ sum > m × p for an integer sum).
            let scaled = i128::from(peak) * i128::from(*multiple_percent) / 100;
            let limit = i64::try_from(scaled)
                .unwrap_or(i64::MAX)
                .max(*min_sum_minor);
            (
                "window_sum_over_baseline_peak",
                Quantity::Money(window.sum),
                Quantity::Money(limit),
            )
        }
        RuleCondition::NewVendorAmountOver { limit_minor } => {
            let event = observation.event.as_ref()?;
            if event.known_vendor {
                return None;
            }
            (
                "new_vendor_amount_over",
                Quantity::Money(event.amount_minor),
                Quantity::Money(*limit_minor),
            )
        }
    };
    Some(Verdict {
        rule: rule.id.clone(),
        severity: rule.severity,
        kind,
        observed,
        threshold,
        fires: observed.raw() > threshold.raw(),
    })
}

/// The score, level and reasons of `observation` under `rules`.
pub fn assess(rules: &RuleSet, observation: &Observation) -> Assessment {
    let verdicts = verdicts(rules, observation);
    let largest = verdicts.iter().map(Verdict::ratio).fold(0.0_f64, f64::max);
    let reasons: Vec<Verdict> = verdicts.into_iter().filter(|v| v.fires).collect();
    let level = match reasons.iter().map(|reason| reason.severity).max() {
        None => Level::Low,
        Some(Severity::Low) => Level::Low,
        Some(Severity::Medium) => Level::Medium,
        Some(Severity::High | Severity::Critical) => Level::High,
    };
    let mut score = (largest / 2.0).clamp(0.0, 1.0);
    if !reasons.is_empty() {
        score = score.max(0.5);
    } else {
        // Just under a threshold stays under 0.5, however the division rounds.
        score = score.min(0.499_999);
    }
    Assessment {
        score: (score * 1_000_000.0).round() / 1_000_000.0,
        level,
        reasons,
    }
}

/// The rule set in force, kept fresh from Postgres.
pub struct RuleStore {
    pool: PgPool,
    defaults: Vec<RuleDefinition>,
    current: RwLock<Arc<RuleSet>>,
}

/// `PUT /v1/rules` was based on another version than the one in force.
#[derive(Debug, thiserror::Error)]
#[error("the rule set in force is version {current}, not {expected}")]
pub struct VersionConflict {
    pub expected: i64,
    pub current: i64,
}

/// Storing a rule set failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Conflict(#[from] VersionConflict),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

impl RuleStore {
    /// Starts with the defaults (version 0) until [`RuleStore::refresh`] reads Postgres.
    pub fn new(pool: PgPool, defaults: Vec<RuleDefinition>) -> Self {
        let current = RwLock::new(Arc::new(RuleSet {
            version: 0,
            rules: defaults.clone(),
        }));
        Self {
            pool,
            defaults,
            current,
        }
    }

    /// The set in force, as last read.
    pub fn current(&self) -> Arc<RuleSet> {
        Arc::clone(&self.current.read().expect("rule set lock"))
    }

    /// Reads the set in force from Postgres.
    pub async fn refresh(&self) -> Result<Arc<RuleSet>, sqlx::Error> {
        let row: Option<(i64, sqlx::types::Json<Vec<RuleDefinition>>)> =
            sqlx::query_as("SELECT version, rules FROM rule_sets ORDER BY version DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        let set = Arc::new(match row {
            Some((version, rules)) => RuleSet {
                version,
                rules: rules.0,
            },
            None => RuleSet {
                version: 0,
                rules: self.defaults.clone(),
            },
        });
        *self.current.write().expect("rule set lock") = Arc::clone(&set);
        Ok(set)
    }

    /// Stores `rules` (validated by the caller) as version `expected + 1`, if `expected`
    /// is the version in force.
    pub async fn replace(
        &self,
        expected: i64,
        rules: &[RuleDefinition],
        created_by: &str,
    ) -> Result<Arc<RuleSet>, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO rule_sets (version, rules, created_by) \
             SELECT $1 + 1, $2, $3 \
             WHERE COALESCE((SELECT max(version) FROM rule_sets), 0) = $1",
        )
        .bind(expected)
        .bind(sqlx::types::Json(rules))
        .bind(created_by)
        .execute(&self.pool)
        .await;
        let stored = match inserted {
            Ok(result) => result.rows_affected() == 1,
            // A concurrent writer of the same version won.
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => false,
            Err(error) => return Err(error.into()),
        };
        let set = self.refresh().await?;
        if !stored {
            return Err(VersionConflict {
                expected,
                current: set.version,
            }
            .into());
        }
        Ok(set)
    }

    /// Re-reads the set every [`REFRESH`] until `shutdown`.
    pub async fn keep_fresh(
        self: Arc<Self>,
        shutdown: fraud_service::Shutdown,
    ) -> anyhow::Result<()> {
        let token = shutdown.token();
        loop {
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "could not re-read the rule set; keeping the last one");
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = token.cancelled() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        RuleSet {
            version: 0,
            rules: fraud_config::Settings::load(None)
                .expect("defaults")
                .serving
                .rules,
        }
    }

    fn window(sum: i64, count: i64) -> WindowAggregates {
        WindowAggregates {
            sum,
            count,
            max: sum,
            distinct_vendors: 1,
        }
    }

    fn fired(assessment: &Assessment) -> Vec<&str> {
        assessment.reasons.iter().map(|r| r.rule.as_str()).collect()
    }

    #[test]
    fn each_default_rule_fires_just_over_its_threshold_and_not_at_it() {
        let rules = rules();
        let at = |sum, count, peak, event| Observation {
            window: window(sum, count),
            baseline_peak_minor: peak,
            event,
        };
        let quiet = assess(&rules, &at(500_000, 20, None, None));
        assert_eq!(fired(&quiet), Vec::<&str>::new());
        assert_eq!(quiet.level, Level::Low);
        assert!(quiet.score < 0.5, "{}", quiet.score);

        let over = assess(&rules, &at(500_001, 21, None, None));
        assert_eq!(
            fired(&over),
            vec!["sum-30m-over-limit", "count-30m-over-limit"]
        );
        assert_eq!(over.level, Level::High);
        assert!(over.score >= 0.5);
        let reason = serde_json::to_value(&over.reasons[0]).unwrap();
        assert_eq!(reason["observed"], "5000.01");
        assert_eq!(reason["threshold"], "5000.00");
        assert_eq!(reason["severity"], "high");

        // Baseline: 300 % of 100,000 is 300,000.
        let baseline = |sum| assess(&rules, &at(sum, 1, Some(100_000), None));
        assert_eq!(fired(&baseline(300_000)), Vec::<&str>::new());
        assert_eq!(
            fired(&baseline(300_001)),
            vec!["sum-30m-over-baseline-peak"]
        );
        assert_eq!(baseline(300_001).level, Level::Medium);
        // ... and never under its floor of 500.00, whatever the baseline.
        let small = |sum| assess(&rules, &at(sum, 1, Some(10), None));
        assert_eq!(fired(&small(50_000)), Vec::<&str>::new());
        assert_eq!(fired(&small(50_001)), vec!["sum-30m-over-baseline-peak"]);

        let event = |amount, known_vendor| ObservedEvent {
            transaction_id: "t".into(),
            vendor_id: "v".into(),
            amount_minor: amount,
            known_vendor,
        };
        let vendor =
            |amount, known| assess(&rules, &at(amount, 1, None, Some(event(amount, known))));
        assert_eq!(fired(&vendor(100_000, false)), Vec::<&str>::new());
        assert_eq!(
            fired(&vendor(100_001, false)),
            vec!["new-vendor-large-amount"]
        );
        assert_eq!(fired(&vendor(100_001, true)), Vec::<&str>::new());
    }

    #[test]
    fn window_rules_judge_the_window_and_event_rules_each_event() {
        let rules = rules();
        let big = ObservedEvent {
            transaction_id: "t".into(),
            vendor_id: "v".into(),
            amount_minor: 100_001,
            known_vendor: false,
        };
        let observation = Observation {
            window: window(500_001, 21),
            baseline_peak_minor: None,
            event: Some(big),
        };
        let fired = |scope| -> Vec<String> {
            verdicts_in(&rules, scope, &observation)
                .into_iter()
                .filter(|verdict| verdict.fires)
                .map(|verdict| verdict.rule)
                .collect()
        };
        assert_eq!(
            fired(Scope::Window),
            vec!["sum-30m-over-limit", "count-30m-over-limit"]
        );
        assert_eq!(fired(Scope::Event), vec!["new-vendor-large-amount"]);
        // Without an event, no event rule has a verdict.
        let window_only = Observation {
            event: None,
            ..observation.clone()
        };
        assert!(verdicts_in(&rules, Scope::Event, &window_only).is_empty());
    }

    #[test]
    fn disabled_rules_never_fire() {
        let mut rules = rules();
        for rule in &mut rules.rules {
            rule.enabled = false;
        }
        let assessment = assess(
            &rules,
            &Observation {
                window: window(i64::MAX / 4, 1000),
                ..Observation::default()
            },
        );
        assert!(assessment.reasons.is_empty());
        assert_eq!(assessment.score, 0.0);
    }
}
