//! A load generator with realistic traffic, deterministic from a seed: [`generate`]
//! makes the transactions (in DESIGN's field names, [`LoadEvent::json`]), the order
//! and moments they are delivered in ([`Delivery`]), and labelled fraud episodes
//! ([`FraudEpisode`]) that say which default rules they must trip.
//!
//! - **Skewed popularity**: a customer's share of the traffic follows Zipf's law
//!   (rank r gets a weight of r^-s), but no card spends like a shop: *background*
//!   traffic never puts more than [`BACKGROUND_MAX_COUNT`] events or
//!   [`BACKGROUND_MAX_SUM`] into any customer's 30-minute window, so it trips no default
//!   rule, and every alert the platform raises belongs to a labelled episode.
//! - **Vendors**: each customer has a few vendors of their own (from a pool whose
//!   popularity is skewed too), used with decreasing preference, and rarely (a
//!   configured fraction) one they never used before; background amounts never exceed
//!   1,000.00, so a new vendor alone trips nothing.
//! - **Daily cycles** in event time: the density of events follows the UTC hour, low
//!   at 04:00 and four times higher at 16:00.
//! - **Out-of-order and duplicate deliveries**: a fraction of the events is delivered
//!   late by up to a bounded delay (in event time), and a fraction is delivered twice
//!   (the same `transactionId` with the same content).
//! - **Fraud episodes**, each on a customer of its own with no background traffic
//!   within 35 minutes of it, delivered in order: a *spree* (six purchases of nearly
//!   1,000.00 at known vendors within 12 minutes: `sum-30m-over-limit`), a *burst*
//!   (24 small purchases within 15 minutes: `count-30m-over-limit`) and a *takeover* (a
//!   1.00 probe then 2,500.00 at vendors the customer never used:
//!   `new-vendor-large-amount`).
//!
//! [`firings`] evaluates the default rules over a set of events exactly (at every
//! event's own window, as the serving API judges), and [`expected_episodes`] groups the
//! firings into the episodes the platform must alert on (one alert per run of firings
//! with no gap over 30 minutes).
//!
//! Money is integer minor units throughout; the generator draws amounts from integer
//! tables, never through a float.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::{bail, ensure};
use fraud_config::{RuleCondition, RuleDefinition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::reference::{self, HOUR_MS, WINDOW_MS};

/// Most events background traffic puts into one customer's 30-minute window.
pub const BACKGROUND_MAX_COUNT: usize = 14;
/// Most money (minor units) background traffic puts into one customer's window.
pub const BACKGROUND_MAX_SUM: i64 = 200_000;
/// Most one background transaction spends (minor units): 1,000.00.
pub const BACKGROUND_MAX_AMOUNT: i64 = 100_000;
/// How far around an episode its customer has no background traffic: the window plus
/// the speed layer's default lateness.
pub const EPISODE_QUIET_MS: i64 = WINDOW_MS + 5 * 60_000;

/// The rule each kind of episode must trip (ids of the default rules).
pub const SUM_RULE: &str = "sum-30m-over-limit";
pub const COUNT_RULE: &str = "count-30m-over-limit";
pub const NEW_VENDOR_RULE: &str = "new-vendor-large-amount";

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub seed: u64,
    pub customers: usize,
    /// Distinct transactions (episodes' included); duplicates come on top.
    pub events: usize,
    /// Event time of the span's start (UTC ms); events fall in `[start, start + span)`.
    pub start_ms: i64,
    pub span_ms: i64,
    /// Zipf's exponent s of customer popularity (0: uniform).
    pub zipf_exponent: f64,
    /// Fewest and most vendors of a customer's own.
    pub vendors_per_customer: (usize, usize),
    /// Fraction of background events at a vendor the customer never used before.
    pub new_vendor_fraction: f64,
    /// Fraction of background events delivered late, by 1 ms to `max_delay_ms`.
    pub out_of_order_fraction: f64,
    pub max_delay_ms: i64,
    /// Fraction of events delivered a second time, 1 ms to `max_duplicate_delay_ms`
    /// after the first delivery.
    pub duplicate_fraction: f64,
    pub max_duplicate_delay_ms: i64,
    /// Labelled fraud episodes (spree, burst and takeover in turn).
    pub fraud_episodes: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            seed: 1,
            customers: 10_000,
            events: 100_000,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            span_ms: 3 * 24 * HOUR_MS,
            zipf_exponent: 1.0,
            vendors_per_customer: (2, 6),
            new_vendor_fraction: 0.005,
            out_of_order_fraction: 0.02,
            max_delay_ms: 4 * 60_000,
            duplicate_fraction: 0.01,
            max_duplicate_delay_ms: 10 * 60_000,
            fraud_episodes: 12,
        }
    }
}

/// One transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadEvent {
    pub id: String,
    pub customer: String,
    pub vendor: String,
    /// Minor units.
    pub amount: i64,
    /// Event time, UTC ms.
    pub ts: i64,
    /// The index of the fraud episode it belongs to.
    pub episode: Option<usize>,
}

impl LoadEvent {
    /// The body ingest takes (DESIGN §2), money as a decimal string.
    pub fn json(&self) -> Value {
        json!({
            "transactionId": self.id,
            "customerId": self.customer,
            "vendorId": self.vendor,
            "transactionSum": reference::money(self.amount),
            "ts": reference::instant(self.ts),
        })
    }

    /// The event as the reference computation takes it.
    pub fn reference(&self) -> reference::Event {
        reference::Event {
            id: self.id.clone(),
            customer: self.customer.clone(),
            vendor: self.vendor.clone(),
            amount: self.amount,
            ts: self.ts,
        }
    }
}

/// One delivery of an event: at event-time instant `at` (`ts` plus any delay), in the
/// order of [`Load::deliveries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Index into [`Load::events`].
    pub event: usize,
    pub at: i64,
    /// A second delivery of an event delivered before.
    pub duplicate: bool,
}

/// What a fraud episode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeKind {
    Spree,
    Burst,
    Takeover,
}

/// A labelled fraud episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudEpisode {
    pub kind: EpisodeKind,
    pub customer: String,
    /// The default rules it must trip (its labels).
    pub rules: Vec<String>,
    /// Its events (indices into [`Load::events`]), in time order.
    pub events: Vec<usize>,
    pub start: i64,
    pub end: i64,
}

/// A generated load.
#[derive(Debug, Clone)]
pub struct Load {
    pub config: LoadConfig,
    /// Every distinct transaction, in time order.
    pub events: Vec<LoadEvent>,
    /// Every delivery (duplicates included), in delivery order.
    pub deliveries: Vec<Delivery>,
    pub episodes: Vec<FraudEpisode>,
}

impl Load {
    /// The last delivery instant.
    pub fn last_delivery(&self) -> i64 {
        self.deliveries.iter().map(|d| d.at).max().unwrap_or(0)
    }

    /// Every event as the reference computation takes it.
    pub fn reference_events(&self) -> Vec<reference::Event> {
        self.events.iter().map(LoadEvent::reference).collect()
    }
}

/// A customer's standing habits.
struct Profile {
    vendors: Vec<usize>,
    /// Typical amount, minor units.
    typical: i64,
}

/// Typical amounts (minor units) a customer may have.
const TYPICAL: [i64; 8] = [500, 800, 1_200, 2_000, 3_500, 5_000, 8_000, 12_000];
/// Per-mille factors on the typical amount (roughly log-normal).
const FACTOR: [i64; 12] = [
    250, 400, 600, 800, 900, 1_000, 1_000, 1_100, 1_300, 1_600, 2_200, 3_500,
];

/// A Zipf sampler over `0..n`: rank r has weight (r + 1)^-s.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, exponent: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|rank| {
                total += ((rank + 1) as f64).powf(-exponent);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let total = *self.cumulative.last().expect("at least one rank");
        let u = rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

/// The weight (out of 1000) of event time `ts` in the daily cycle: 250 at 04:00 UTC,
/// 1000 at 16:00 UTC, a cosine in between.
pub fn daily_weight(ts: i64) -> u32 {
    let hour = (ts.rem_euclid(24 * HOUR_MS)) as f64 / HOUR_MS as f64;
    let phase = (hour - 4.0) / 24.0 * std::f64::consts::TAU;
    (250.0 + 750.0 * (1.0 - phase.cos()) / 2.0).round() as u32
}

/// Per customer, the recent background events (ts, amount) still inside the window.
#[derive(Default)]
struct Recent {
    events: VecDeque<(i64, i64)>,
    sum: i64,
}

impl Recent {
    /// Whether one more event of `amount` at `ts` (not before any kept) stays under the
    /// background caps; drops what left the window.
    fn admits(&mut self, ts: i64, amount: i64) -> bool {
        while let Some(&(old, old_amount)) = self.events.front() {
            if old > ts - WINDOW_MS {
                break;
            }
            self.events.pop_front();
            self.sum -= old_amount;
        }
        self.events.len() < BACKGROUND_MAX_COUNT && self.sum + amount <= BACKGROUND_MAX_SUM
    }

    fn push(&mut self, ts: i64, amount: i64) {
        self.events.push_back((ts, amount));
        self.sum += amount;
    }
}

/// Generates the load `config` describes (the same config, the same load).
pub fn generate(config: &LoadConfig) -> anyhow::Result<Load> {
    ensure!(config.customers >= 1, "at least one customer");
    ensure!(
        config.span_ms >= 2 * HOUR_MS,
        "the event-time span must be at least 2 hours (episodes need room)"
    );
    ensure!(
        config.fraud_episodes <= config.customers / 2,
        "at most one fraud episode per two customers"
    );
    let (fewest, most) = config.vendors_per_customer;
    ensure!(
        1 <= fewest && fewest <= most,
        "vendors per customer: 1 ≤ fewest ≤ most"
    );
    for (name, fraction) in [
        ("new vendor", config.new_vendor_fraction),
        ("out of order", config.out_of_order_fraction),
        ("duplicate", config.duplicate_fraction),
    ] {
        ensure!(
            (0.0..=1.0).contains(&fraction),
            "the {name} fraction must be in [0, 1]"
        );
    }
    ensure!(
        config.max_delay_ms >= 1 && config.max_duplicate_delay_ms >= 1,
        "delays must be at least 1 ms"
    );
    let mut rng = StdRng::seed_from_u64(config.seed);
    let customer_id = |index: usize| format!("c{index:07}");
    let vendor_pool = (config.customers / 4).max(50);
    let vendor_zipf = Zipf::new(vendor_pool, 0.8);
    let profiles: Vec<Profile> = (0..config.customers)
        .map(|_| {
            let count = rng.random_range(fewest..=most);
            let mut vendors = Vec::with_capacity(count);
            while vendors.len() < count.min(vendor_pool) {
                let vendor = vendor_zipf.sample(&mut rng);
                if !vendors.contains(&vendor) {
                    vendors.push(vendor);
                }
            }
            Profile {
                vendors,
                typical: TYPICAL[rng.random_range(0..TYPICAL.len())],
            }
        })
        .collect();
    let vendor_id = |index: usize| format!("v{index:06}");
    let mut fresh_vendors = 0usize;
    let mut fresh_vendor = || {
        fresh_vendors += 1;
        format!("vn{fresh_vendors:06}")
    };

    // The episodes: distinct victims, starts spread over the span (away from its ends).
    let mut victims = BTreeSet::new();
    while victims.len() < config.fraud_episodes {
        victims.insert(rng.random_range(0..config.customers));
    }
    let victims: Vec<usize> = victims.into_iter().collect();
    let mut draft: Vec<(LoadEvent, bool)> = Vec::with_capacity(config.events);
    let mut episodes = Vec::new();
    let mut quiet: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
    for (number, &victim) in victims.iter().enumerate() {
        let kind = [
            EpisodeKind::Spree,
            EpisodeKind::Burst,
            EpisodeKind::Takeover,
        ][number % 3];
        let start = config.start_ms
            + rng.random_range(
                (config.span_ms / 10).max(EPISODE_QUIET_MS)
                    ..config.span_ms - EPISODE_QUIET_MS - 20 * 60_000,
            );
        let profile = &profiles[victim];
        let home = |i: usize| vendor_id(profile.vendors[i % profile.vendors.len()]);
        let mut moves: Vec<(i64, String, i64)> = Vec::new();
        let rule = match kind {
            EpisodeKind::Spree => {
                for (i, amount) in [95_000, 99_000, 88_000, 100_000, 92_000, 97_000]
                    .into_iter()
                    .enumerate()
                {
                    moves.push((start + i as i64 * 2 * 60_000, home(i), amount));
                }
                SUM_RULE
            }
            EpisodeKind::Burst => {
                for i in 0..24 {
                    let amount = rng.random_range(500..=3_000);
                    moves.push((start + i as i64 * 37_000, home(i), amount));
                }
                COUNT_RULE
            }
            EpisodeKind::Takeover => {
                moves.push((start, fresh_vendor(), 100));
                let target = fresh_vendor();
                moves.push((start + 3 * 60_000, target.clone(), 250_000));
                moves.push((start + 5 * 60_000, target, 150_000));
                TAKEOVER_RULE
            }
        };
        let end = moves.last().expect("moves").0;
        quiet.insert(victim, (start - EPISODE_QUIET_MS, end + EPISODE_QUIET_MS));
        for (ts, vendor, amount) in moves {
            draft.push((
                LoadEvent {
                    id: String::new(),
                    customer: customer_id(victim),
                    vendor,
                    amount,
                    ts,
                    episode: Some(number),
                },
                false,
            ));
        }
        episodes.push(FraudEpisode {
            kind,
            customer: customer_id(victim),
            rules: vec![rule.to_owned()],
            events: Vec::new(),
            start,
            end,
        });
    }
    ensure!(
        draft.len() <= config.events,
        "{} events cannot hold {} episodes",
        config.events,
        config.fraud_episodes
    );

    // Background times in the daily cycle (rejection sampling), then customers in time
    // order under the caps.
    let background = config.events - draft.len();
    let mut times: Vec<i64> = Vec::with_capacity(background);
    while times.len() < background {
        let ts = config.start_ms + rng.random_range(0..config.span_ms);
        if rng.random_range(0..1000) < daily_weight(ts) {
            times.push(ts);
        }
    }
    times.sort_unstable();
    let zipf = Zipf::new(config.customers, config.zipf_exponent);
    let mut recent: Vec<Recent> = (0..config.customers).map(|_| Recent::default()).collect();
    for ts in times {
        let mut placed = false;
        for attempt in 0..200 {
            let customer = if attempt < 20 {
                zipf.sample(&mut rng)
            } else {
                rng.random_range(0..config.customers)
            };
            if quiet
                .get(&customer)
                .is_some_and(|&(from, to)| (from..=to).contains(&ts))
            {
                continue;
            }
            let profile = &profiles[customer];
            let factor = FACTOR[rng.random_range(0..FACTOR.len())];
            let amount = (profile.typical * factor / 1000).clamp(100, BACKGROUND_MAX_AMOUNT);
            if !recent[customer].admits(ts, amount) {
                continue;
            }
            recent[customer].push(ts, amount);
            let vendor = if rng.random_bool(config.new_vendor_fraction) {
                fresh_vendor()
            } else {
                // Preference decreasing with the vendor's place in the customer's list.
                let places = profile.vendors.len();
                let place = rng.random_range(0..places).min(rng.random_range(0..places));
                vendor_id(profile.vendors[place])
            };
            draft.push((
                LoadEvent {
                    id: String::new(),
                    customer: customer_id(customer),
                    vendor,
                    amount,
                    ts,
                    episode: None,
                },
                true,
            ));
            placed = true;
            break;
        }
        if !placed {
            bail!(
                "no customer can take another event at {}: too many events for {} customers \
                 over the span (background traffic keeps every 30-minute window at most {} \
                 events and {})",
                reference::instant(ts),
                config.customers,
                BACKGROUND_MAX_COUNT,
                reference::money(BACKGROUND_MAX_SUM)
            );
        }
    }

    // Ids in time order.
    draft.sort_by(|a, b| (a.0.ts, &a.0.customer).cmp(&(b.0.ts, &b.0.customer)));
    let mut events = Vec::with_capacity(draft.len());
    let mut is_background = Vec::with_capacity(draft.len());
    for (index, (mut event, background)) in draft.into_iter().enumerate() {
        event.id = format!("t{:x}-{index:08}", config.seed);
        if let Some(episode) = event.episode {
            episodes[episode].events.push(index);
        }
        events.push(event);
        is_background.push(background);
    }

    // Deliveries: late ones (background only) and duplicates.
    let mut deliveries = Vec::with_capacity(events.len() + events.len() / 50);
    for (index, event) in events.iter().enumerate() {
        let late = is_background[index] && rng.random_bool(config.out_of_order_fraction);
        let at = if late {
            event.ts + rng.random_range(1..=config.max_delay_ms)
        } else {
            event.ts
        };
        deliveries.push(Delivery {
            event: index,
            at,
            duplicate: false,
        });
        if rng.random_bool(config.duplicate_fraction) {
            deliveries.push(Delivery {
                event: index,
                at: at + rng.random_range(1..=config.max_duplicate_delay_ms),
                duplicate: true,
            });
        }
    }
    deliveries.sort_by_key(|delivery| (delivery.at, delivery.event, delivery.duplicate));
    Ok(Load {
        config: config.clone(),
        events,
        deliveries,
        episodes,
    })
}

const TAKEOVER_RULE: &str = NEW_VENDOR_RULE;

/// How a load is posted in real time: at `rate` deliveries per second, the event-time
/// span compressed into the wall-clock time that takes.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Event-time ms per wall-clock ms (0: as fast as possible).
    pub speedup: f64,
    /// The event time of the span's start that puts the span's end at the planned end
    /// of the run: no event is ever posted before its own time.
    pub start_ms: i64,
}

/// The pace for `config` posted at `rate` deliveries per second (0: as fast as
/// possible) from `now_ms` on; fails when the span is shorter than the run (events would
/// lie in the future).
pub fn pace(config: &LoadConfig, rate: f64, now_ms: i64) -> anyhow::Result<Pace> {
    ensure!(
        rate >= 0.0 && rate.is_finite(),
        "the rate must be 0 or positive"
    );
    if rate == 0.0 {
        return Ok(Pace {
            speedup: 0.0,
            start_ms: now_ms - config.span_ms,
        });
    }
    let deliveries = config.events as f64 * (1.0 + config.duplicate_fraction);
    let planned_ms = (deliveries / rate * 1000.0).ceil() as i64;
    ensure!(
        planned_ms <= config.span_ms,
        "{deliveries:.0} deliveries at {rate}/s take longer than the event-time span: \
         lengthen the span or raise the rate"
    );
    Ok(Pace {
        speedup: config.span_ms as f64 / planned_ms.max(1) as f64,
        start_ms: now_ms + planned_ms - config.span_ms,
    })
}

/// The deliveries of `load` as `clients` lanes for [`crate::post::post_lanes`] (item:
/// the delivery's index), each customer in one lane so its deliveries keep their order,
/// each delivery due at its instant's distance from the span's start divided by the
/// speed-up (all at once when it is 0).
pub fn lanes(load: &Load, clients: usize, speedup: f64) -> Vec<Vec<crate::post::Item>> {
    let clients = clients.max(1);
    let mut lanes = vec![Vec::new(); clients];
    for (index, delivery) in load.deliveries.iter().enumerate() {
        let customer = &load.events[delivery.event].customer;
        let lane = (fnv1a(customer.as_bytes()) % clients as u64) as usize;
        let due = if speedup > 0.0 {
            let ms = (delivery.at - load.config.start_ms).max(0) as f64 / speedup;
            std::time::Duration::from_secs_f64(ms / 1000.0)
        } else {
            std::time::Duration::ZERO
        };
        lanes[lane].push((due, index));
    }
    lanes
}

/// FNV-1a, 64 bits: a stable hash (the standard library's is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The body of delivery `index` of `load`.
pub fn delivery_json(load: &Load, index: usize) -> Value {
    load.events[load.deliveries[index].event].json()
}

/// A rule holding at an event: its window there, or (new-vendor rules) the event itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Firing {
    pub customer: String,
    pub rule: String,
    pub ts: i64,
    pub event: String,
}

/// Every firing of the enabled `rules` over `events` (each counted once, in any
/// order): at every event, the window rules on `W(c, ts)` and the new-vendor rules on
/// the event (a vendor the customer used at no earlier instant). Baseline rules need a
/// batch run's baselines and are not evaluated (the loads here run none before the end).
pub fn firings(events: &[reference::Event], rules: &[RuleDefinition]) -> Vec<Firing> {
    let mut by_customer: BTreeMap<&str, Vec<&reference::Event>> = BTreeMap::new();
    for event in events {
        by_customer.entry(&event.customer).or_default().push(event);
    }
    let mut fired = Vec::new();
    for (customer, mut list) in by_customer {
        list.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        let mut window: VecDeque<&reference::Event> = VecDeque::new();
        let mut used: BTreeMap<&str, i64> = BTreeMap::new();
        let mut sum = 0i64;
        for (position, event) in list.iter().enumerate() {
            // The window at this event holds every event with ts in (ts - 30 min, ts],
            // later ones of equal ts included.
            while window
                .front()
                .is_some_and(|old| old.ts <= event.ts - WINDOW_MS)
            {
                sum -= window.pop_front().expect("front").amount;
            }
            window.push_back(event);
            sum += event.amount;
            let mut count = window.len() as i64;
            let mut at_instant = sum;
            for later in &list[position + 1..] {
                if later.ts != event.ts {
                    break;
                }
                count += 1;
                at_instant += later.amount;
            }
            let first_use = used
                .get(event.vendor.as_str())
                .is_none_or(|&first| first >= event.ts);
            for rule in rules.iter().filter(|rule| rule.enabled) {
                let holds = match &rule.condition {
                    RuleCondition::WindowSumOver { limit_minor } => at_instant > *limit_minor,
                    RuleCondition::WindowCountOver { limit } => count > *limit,
                    RuleCondition::NewVendorAmountOver { limit_minor } => {
                        first_use && event.amount > *limit_minor
                    }
                    RuleCondition::WindowSumOverBaselinePeak { .. } => false,
                };
                if holds {
                    fired.push(Firing {
                        customer: customer.to_owned(),
                        rule: rule.id.clone(),
                        ts: event.ts,
                        event: event.id.clone(),
                    });
                }
            }
            used.entry(&event.vendor).or_insert(event.ts);
        }
    }
    fired.sort();
    fired
}

/// An episode the platform must raise one alert for: a (customer, rule) and its run of
/// firing instants with no gap over the window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExpectedEpisode {
    pub customer: String,
    pub rule: String,
    pub first: i64,
    pub last: i64,
}

/// The episodes of `firings` (sorted as [`firings`] returns them).
pub fn expected_episodes(firings: &[Firing]) -> Vec<ExpectedEpisode> {
    let mut episodes: Vec<ExpectedEpisode> = Vec::new();
    for firing in firings {
        match episodes.last_mut() {
            Some(episode)
                if episode.customer == firing.customer
                    && episode.rule == firing.rule
                    && firing.ts - episode.last <= WINDOW_MS =>
            {
                episode.last = episode.last.max(firing.ts);
            }
            _ => episodes.push(ExpectedEpisode {
                customer: firing.customer.clone(),
                rule: firing.rule.clone(),
                first: firing.ts,
                last: firing.ts,
            }),
        }
    }
    episodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> LoadConfig {
        LoadConfig {
            seed: 7,
            customers: 2_000,
            events: 40_000,
            span_ms: 2 * 24 * HOUR_MS,
            out_of_order_fraction: 0.05,
            duplicate_fraction: 0.03,
            fraud_episodes: 9,
            ..LoadConfig::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_load_and_another_seed_another() {
        let config = LoadConfig {
            events: 5_000,
            customers: 500,
            ..small()
        };
        let one = generate(&config).unwrap();
        let again = generate(&config).unwrap();
        assert_eq!(one.events, again.events);
        assert_eq!(one.deliveries, again.deliveries);
        assert_eq!(one.episodes, again.episodes);
        let other = generate(&LoadConfig { seed: 8, ..config }).unwrap();
        assert_ne!(one.events, other.events);
    }

    #[test]
    fn popularity_is_skewed_and_every_window_stays_under_the_caps() {
        let load = generate(&small()).unwrap();
        assert_eq!(load.events.len(), 40_000);
        let mut per_customer: BTreeMap<&str, usize> = BTreeMap::new();
        for event in load.events.iter().filter(|e| e.episode.is_none()) {
            *per_customer.entry(&event.customer).or_default() += 1;
        }
        let mut counts: Vec<usize> = per_customer.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let total: usize = counts.iter().sum();
        let top_1_percent: usize = counts[..20].iter().sum();
        // Uniform popularity would give the top 1 % of 2,000 customers about 1 %.
        assert!(
            top_1_percent * 100 > total * 8,
            "top 1 %: {top_1_percent} of {total}"
        );
        let median = counts[counts.len() / 2];
        assert!(counts[0] > 10 * median, "{} vs median {median}", counts[0]);
        // The caps: no background window over 14 events or 2,000.00.
        let background: Vec<reference::Event> = load
            .events
            .iter()
            .filter(|e| e.episode.is_none())
            .map(LoadEvent::reference)
            .collect();
        for event in background.iter().step_by(7) {
            let window = reference::window(&background, &event.customer, event.ts);
            assert!(
                window.count <= BACKGROUND_MAX_COUNT as i64 && window.sum <= BACKGROUND_MAX_SUM,
                "{event:?}: {window:?}"
            );
        }
        // Amounts are positive and background ones at most 1,000.00.
        assert!(load.events.iter().all(|e| e.amount > 0));
        assert!(background.iter().all(|e| e.amount <= BACKGROUND_MAX_AMOUNT));
    }

    #[test]
    fn customers_keep_to_a_few_vendors_and_rarely_try_a_new_one() {
        let config = small();
        let load = generate(&config).unwrap();
        let mut vendors: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut new = 0;
        let mut background = 0;
        for event in load.events.iter().filter(|e| e.episode.is_none()) {
            background += 1;
            if event.vendor.starts_with("vn") {
                new += 1;
            } else {
                vendors
                    .entry(&event.customer)
                    .or_default()
                    .insert(&event.vendor);
            }
        }
        assert!(
            vendors
                .values()
                .all(|own| own.len() <= config.vendors_per_customer.1)
        );
        let expected = background as f64 * config.new_vendor_fraction;
        assert!(
            (new as f64) > expected * 0.5 && (new as f64) < expected * 1.5,
            "{new} new-vendor events, about {expected} expected"
        );
    }

    #[test]
    fn event_times_follow_the_daily_cycle() {
        let load = generate(&small()).unwrap();
        let hour = |e: &&LoadEvent| (e.ts.rem_euclid(24 * HOUR_MS) / HOUR_MS) as usize;
        let mut per_hour = [0usize; 24];
        for event in &load.events {
            per_hour[hour(&event)] += 1;
        }
        let night: usize = per_hour[1..7].iter().sum();
        let afternoon: usize = per_hour[13..19].iter().sum();
        assert!(afternoon > 2 * night, "{per_hour:?}");
        let span = load.config.start_ms..load.config.start_ms + load.config.span_ms;
        assert!(load.events.iter().all(|e| span.contains(&e.ts)));
    }

    #[test]
    fn duplicates_repeat_an_earlier_delivery_exactly_and_lateness_is_bounded() {
        let config = small();
        let load = generate(&config).unwrap();
        let mut first_body: BTreeMap<usize, Value> = BTreeMap::new();
        let mut duplicates = 0;
        // Per customer, the latest event time delivered so far (first deliveries).
        let mut clock: BTreeMap<&str, i64> = BTreeMap::new();
        let mut late = 0;
        for delivery in &load.deliveries {
            let event = &load.events[delivery.event];
            assert!(delivery.at >= event.ts, "delivered before it happened");
            let body = event.json();
            if delivery.duplicate {
                duplicates += 1;
                let first = first_body.get(&delivery.event).expect("delivered before");
                assert_eq!(first, &body, "a duplicate has the same id and content");
                assert_eq!(body["transactionId"], event.id.as_str());
                continue;
            }
            assert!(first_body.insert(delivery.event, body).is_none());
            let seen = clock.entry(&event.customer).or_insert(i64::MIN);
            if event.ts < *seen {
                late += 1;
                assert!(
                    *seen - event.ts <= config.max_delay_ms,
                    "{} behind its customer's clock by more than the bound",
                    event.id
                );
            }
            *seen = (*seen).max(event.ts);
        }
        assert_eq!(first_body.len(), load.events.len(), "every event delivered");
        let ids: BTreeSet<&str> = load.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), load.events.len(), "ids are unique");
        let expected = load.events.len() as f64 * config.duplicate_fraction;
        assert!(
            (duplicates as f64) > expected * 0.7 && (duplicates as f64) < expected * 1.3,
            "{duplicates} duplicates, about {expected} expected"
        );
        assert!(late > 0, "some deliveries are out of order");
        // Episodes' events come in order.
        for episode in &load.episodes {
            let order: Vec<usize> = load
                .deliveries
                .iter()
                .filter(|d| !d.duplicate && load.events[d.event].episode.is_some())
                .filter(|d| load.events[d.event].customer == episode.customer)
                .map(|d| d.event)
                .collect();
            assert_eq!(order, episode.events);
        }
    }

    #[test]
    fn the_labels_are_exactly_what_the_default_rules_catch() {
        let load = generate(&small()).unwrap();
        let rules = fraud_testkit::local_settings().serving.rules;
        let fired = firings(&load.reference_events(), &rules);
        assert!(!fired.is_empty());
        let episodes = expected_episodes(&fired);
        let labelled: BTreeSet<(String, String)> = load
            .episodes
            .iter()
            .flat_map(|e| {
                e.rules
                    .iter()
                    .map(|rule| (e.customer.clone(), rule.clone()))
            })
            .collect();
        let found: BTreeSet<(String, String)> = episodes
            .iter()
            .map(|e| (e.customer.clone(), e.rule.clone()))
            .collect();
        assert_eq!(found, labelled);
        assert_eq!(episodes.len(), labelled.len(), "one episode per label");
        for kind in [
            EpisodeKind::Spree,
            EpisodeKind::Burst,
            EpisodeKind::Takeover,
        ] {
            assert_eq!(
                load.episodes.iter().filter(|e| e.kind == kind).count(),
                3,
                "{kind:?}"
            );
        }
        // Every firing is one of the episode's own events, inside its span.
        for firing in &fired {
            let event = load.events.iter().find(|e| e.id == firing.event).unwrap();
            let episode = &load.episodes[event.episode.expect("an episode's event")];
            assert!((episode.start..=episode.end).contains(&firing.ts));
        }
    }

    #[test]
    fn lanes_keep_each_customer_in_one_lane_in_delivery_order_and_pace_in_event_time() {
        let config = LoadConfig {
            events: 3_000,
            customers: 300,
            ..small()
        };
        let now = config.start_ms + config.span_ms;
        let pace = pace(&config, 100.0, now).unwrap();
        let load = generate(&LoadConfig {
            start_ms: pace.start_ms,
            ..config
        })
        .unwrap();
        let lanes = lanes(&load, 4, pace.speedup);
        assert_eq!(
            lanes.iter().map(Vec::len).sum::<usize>(),
            load.deliveries.len()
        );
        let mut lane_of: BTreeMap<&str, usize> = BTreeMap::new();
        for (number, lane) in lanes.iter().enumerate() {
            assert!(
                lane.windows(2)
                    .all(|pair| pair[0].0 <= pair[1].0 && pair[0].1 < pair[1].1)
            );
            for &(due, index) in lane {
                let delivery = load.deliveries[index];
                let customer = &load.events[delivery.event].customer;
                assert_eq!(*lane_of.entry(customer).or_insert(number), number);
                // Never posted before its own time: the span ends at the run's end.
                let posted_at = now + due.as_millis() as i64;
                assert!(
                    load.events[delivery.event].ts <= posted_at + 1,
                    "{delivery:?}"
                );
            }
        }
        // 3,030 or so deliveries at 100/s: about 30 s.
        let last = lanes
            .iter()
            .filter_map(|lane| lane.last())
            .map(|item| item.0)
            .max()
            .unwrap();
        assert!((25.0..35.0).contains(&last.as_secs_f64()), "{last:?}");
        assert!(
            super::pace(&config, 0.001, now).is_err(),
            "a span shorter than the run"
        );
    }

    #[test]
    fn the_reference_rules_fire_where_a_window_crosses_its_limit() {
        let event = |id: &str, vendor: &str, amount: i64, ts: i64| reference::Event {
            id: id.into(),
            customer: "c".into(),
            vendor: vendor.into(),
            amount,
            ts,
        };
        let events = [
            event("1", "a", 300_000, 0),
            event("2", "a", 200_000, 60_000),
            event("3", "a", 1, 60_000 + 1),
            event("4", "b", 100_001, WINDOW_MS + 60_000),
        ];
        let rules = fraud_testkit::local_settings().serving.rules;
        let fired: Vec<(String, String)> = firings(&events, &rules)
            .into_iter()
            .map(|f| (f.rule, f.event))
            .collect();
        // 500,001 at event 3 (over 500,000); at event 4 events 1 and 2 have left.
        assert_eq!(
            fired,
            [
                (NEW_VENDOR_RULE.to_owned(), "1".to_owned()),
                (NEW_VENDOR_RULE.to_owned(), "4".to_owned()),
                (SUM_RULE.to_owned(), "3".to_owned()),
            ]
        );
    }
}
