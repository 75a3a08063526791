//! Episodes and alert ids: the pure part of raising alerts.
//!
//! An *episode* of a (customer, rule) is a run of firing instants with no gap longer
//! than [`EPISODE_GAP_MS`] of event time between consecutive ones. An instant is where
//! an update was judged: the event time of an event it lists, or its `asOf`. One
//! alert is raised per episode, with an id derived from (customer, rule, episode start)
//! only ([`alert_id`]), so whoever evaluates the same updates again (a restart, a
//! rebalance, a second instance, a new consumer group) derives the same id.

use uuid::Uuid;

/// The longest gap of event time between two firing instants of one episode: the window.
pub const EPISODE_GAP_MS: i64 = fraud_speed_view::WINDOW_MS;

/// The UUID v5 namespace of alert ids (itself `uuid5(NAMESPACE_URL,
/// "urn:fraud-platform:alert")`). Never change it: ids already published would no longer
/// match the ones derived again from the same episodes.
pub const ALERT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x2a51_04fc_8f9b_5076_baad_73c4_1596_2831);

/// The id of the alert of the episode of `rule` for `customer` that started at
/// `episode_start_ms`: UUID v5 in [`ALERT_ID_NAMESPACE`] of
/// `customerId \0 ruleId \0 episodeStartMs` (the start in decimal UTC ms). Customer and
/// rule ids never contain NUL, so distinct triples give distinct names.
pub fn alert_id(customer: &str, rule: &str, episode_start_ms: i64) -> Uuid {
    let name = format!("{customer}\0{rule}\0{episode_start_ms}");
    Uuid::new_v5(&ALERT_ID_NAMESPACE, name.as_bytes())
}

/// The latest episode of a (customer, rule), as `rule_episodes` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub started_at: i64,
    pub last_fired_at: i64,
    pub alert_id: Uuid,
}

/// What a firing instant `as_of` does to the latest episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It belongs to the latest episode: `last_fired_at` becomes the greater of the two.
    Extends,
    /// It starts a new episode at `as_of`, which raises an alert.
    Starts,
    /// It is older than the latest episode's start: a replay of history already judged
    /// (see [`step`]); nothing changes and nothing is raised.
    Replayed,
}

/// What a firing instant `as_of` does, given the latest episode.
///
/// Updates of a customer are evaluated in the order of the updates topic (one partition
/// per customer), where `asOf` does not decrease within a speed-layer generation, and
/// the instants of one update in order of event time. Every episode that started before
/// the latest one was therefore judged already, its alert written in the same
/// transaction as the episode; a firing older than the latest episode's start is a
/// replay (a restart, a rebalance, a second consumer group reading from the start, a
/// speed-layer rebuild re-publishing old instants) or an event that arrived out of order
/// (its `ts` behind the customer's clock, by less than the retention) and made an
/// earlier window fire: either way it is taken as history, neither raises an alert nor
/// moves the episode back, so a replay running beside live evaluation never splits a
/// live episode into two alerts.
pub fn step(latest: Option<&Episode>, as_of: i64) -> Step {
    match latest {
        None => Step::Starts,
        Some(episode) if as_of < episode.started_at => Step::Replayed,
        Some(episode) if as_of.saturating_sub(episode.last_fired_at) <= EPISODE_GAP_MS => {
            Step::Extends
        }
        Some(_) => Step::Starts,
    }
}

/// `latest` after a firing instant `as_of` of `customer` and `rule`: the new latest
/// episode (the same when nothing changes) and whether it is a new one.
pub fn advance(
    latest: Option<Episode>,
    customer: &str,
    rule: &str,
    as_of: i64,
) -> (Option<Episode>, Step) {
    let step = step(latest.as_ref(), as_of);
    let next = match (step, latest) {
        (Step::Extends, Some(episode)) => Some(Episode {
            last_fired_at: episode.last_fired_at.max(as_of),
            ..episode
        }),
        (Step::Starts, _) => Some(Episode {
            started_at: as_of,
            last_fired_at: as_of,
            alert_id: alert_id(customer, rule, as_of),
        }),
        (_, latest) => latest,
    };
    if let Some(episode) = &next {
        debug_assert!(episode.last_fired_at >= episode.started_at);
    }
    (next, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60 * 1000;

    #[test]
    fn alert_ids_depend_on_customer_rule_and_start_only() {
        let id = alert_id("c1", "r1", 1_000);
        assert_eq!(id, alert_id("c1", "r1", 1_000));
        assert_eq!(id.get_version_num(), 5);
        assert_ne!(id, alert_id("c1", "r1", 1_001));
        assert_ne!(id, alert_id("c1", "r2", 1_000));
        assert_ne!(id, alert_id("c2", "r1", 1_000));
        // The separator keeps ("c1", "0r1") and ("c10", "r1") apart.
        assert_ne!(alert_id("c1", "0r1", 5), alert_id("c10", "r1", 5));
    }

    #[test]
    fn the_namespace_is_the_documented_one() {
        let derived = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:fraud-platform:alert");
        assert_eq!(ALERT_ID_NAMESPACE, derived, "{derived:x}");
    }

    #[test]
    fn a_gap_of_at_most_the_window_extends_and_a_longer_one_starts_anew() {
        let (first, step1) = advance(None, "c", "r", 0);
        assert_eq!(step1, Step::Starts);
        let first = first.unwrap();
        assert_eq!(first.alert_id, alert_id("c", "r", 0));

        let (second, step2) = advance(Some(first), "c", "r", 30 * MIN);
        assert_eq!(step2, Step::Extends);
        let second = second.unwrap();
        assert_eq!((second.started_at, second.last_fired_at), (0, 30 * MIN));
        assert_eq!(second.alert_id, first.alert_id);

        // Exactly the window after the last firing still extends; one ms more does not.
        let (third, step3) = advance(Some(second), "c", "r", 60 * MIN);
        assert_eq!(step3, Step::Extends);
        let (fourth, step4) = advance(third, "c", "r", 90 * MIN + 1);
        assert_eq!(step4, Step::Starts);
        let fourth = fourth.unwrap();
        assert_eq!(fourth.started_at, 90 * MIN + 1);
        assert_ne!(fourth.alert_id, first.alert_id);
    }

    #[test]
    fn replays_change_nothing() {
        let latest = Episode {
            started_at: 100 * MIN,
            last_fired_at: 110 * MIN,
            alert_id: alert_id("c", "r", 100 * MIN),
        };
        // Older than the start: replayed history.
        assert_eq!(
            advance(Some(latest), "c", "r", 10 * MIN),
            (Some(latest), Step::Replayed)
        );
        // Inside the episode but before its last firing: extends without moving it.
        assert_eq!(
            advance(Some(latest), "c", "r", 105 * MIN),
            (Some(latest), Step::Extends)
        );
    }

    #[test]
    fn the_same_sequence_always_gives_the_same_ids() {
        let times = [0, 5 * MIN, 20 * MIN, 51 * MIN, 52 * MIN, 200 * MIN];
        let run = |times: &[i64]| {
            let mut latest = None;
            let mut raised = Vec::new();
            for &as_of in times {
                let (next, step) = advance(latest, "c", "r", as_of);
                if step == Step::Starts {
                    raised.push(next.unwrap().alert_id);
                }
                latest = next;
            }
            (raised, latest)
        };
        let (raised, latest) = run(&times);
        assert_eq!(
            raised,
            vec![
                alert_id("c", "r", 0),
                alert_id("c", "r", 51 * MIN),
                alert_id("c", "r", 200 * MIN)
            ]
        );
        // Replaying everything on top of the final state raises nothing more.
        let mut again = latest;
        for &as_of in &times {
            let (next, step) = advance(again, "c", "r", as_of);
            assert_ne!(step, Step::Starts, "{as_of}");
            again = next;
        }
        assert_eq!(again, latest);
    }
}
