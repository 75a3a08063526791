//! `fraud-load`: posts generated traffic through the ingest API (`deploy/dev load`):
//! [`platform_tests::load`]'s skewed customers, vendors, daily cycle, late and
//! duplicate deliveries and labelled fraud episodes, at a target rate of deliveries per
//! second from N concurrent clients (each customer always through the same one), the
//! event-time span compressed into the run so its last events land at the run's end.
//! Prints a JSON summary; `--labels FILE` writes the fraud episodes (customer, kind,
//! rules it must trip, its transactions) as JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use platform_tests::load::{self, LoadConfig};
use platform_tests::{post, reference};
use serde_json::json;

#[derive(Parser)]
#[command(
    about = "Post generated, realistic traffic through the ingest API",
    args_override_self = true
)]
struct Args {
    /// Ingest's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    url: String,
    /// The API key (scope `ingest`); default: the file `--key-file`.
    #[arg(long, env = "LOAD_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A file holding the API key.
    #[arg(long, default_value = ".dev/api-key")]
    key_file: PathBuf,
    /// The generator's seed (the same seed, the same traffic).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct transactions (duplicates come on top).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// Deliveries per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Most transactions in one request.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// The event-time span, in hours; it ends at the end of the run.
    #[arg(long, default_value_t = 72)]
    span_hours: i64,
    /// Zipf's exponent of customer popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Fraction of events at a vendor new to the customer.
    #[arg(long, default_value_t = 0.005)]
    new_vendor: f64,
    /// Fraction of events delivered late, and the most they are late (seconds of event
    /// time).
    #[arg(long, default_value_t = 0.02)]
    out_of_order: f64,
    #[arg(long, default_value_t = 240)]
    max_delay_seconds: i64,
    /// Fraction of events delivered twice, and the most the second delivery comes after
    /// the first (seconds of event time).
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    #[arg(long, default_value_t = 600)]
    max_duplicate_delay_seconds: i64,
    /// Labelled fraud episodes.
    #[arg(long, default_value_t = 12)]
    episodes: usize,
    /// Write the fraud episodes to this file (JSON).
    #[arg(long)]
    labels: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = match args.key {
        Some(key) => key,
        None => std::fs::read_to_string(&args.key_file)
            .with_context(|| format!("read the API key from {}", args.key_file.display()))?
            .trim()
            .to_owned(),
    };
    let mut config = LoadConfig {
        seed: args.seed,
        customers: args.customers,
        events: args.events,
        span_ms: args.span_hours * reference::HOUR_MS,
        zipf_exponent: args.zipf,
        new_vendor_fraction: args.new_vendor,
        out_of_order_fraction: args.out_of_order,
        max_delay_ms: args.max_delay_seconds * 1000,
        duplicate_fraction: args.duplicates,
        max_duplicate_delay_ms: args.max_duplicate_delay_seconds * 1000,
        fraud_episodes: args.episodes,
        ..LoadConfig::default()
    };
    let now = chrono::Utc::now().timestamp_millis();
    let pace = load::pace(&config, args.rate, now)?;
    config.start_ms = pace.start_ms;
    let generated = Instant::now();
    let load = load::generate(&config)?;
    eprintln!(
        "fraud-load: {} events ({} deliveries) of {} customers generated in {:?}; posting to {}",
        load.events.len(),
        load.deliveries.len(),
        config.customers,
        generated.elapsed(),
        args.url
    );
    let episodes: Vec<serde_json::Value> = load
        .episodes
        .iter()
        .map(|episode| {
            json!({
                "customerId": episode.customer,
                "kind": format!("{:?}", episode.kind).to_lowercase(),
                "rules": episode.rules,
                "start": reference::instant(episode.start),
                "end": reference::instant(episode.end),
                "transactionIds": episode.events.iter().map(|&i| &load.events[i].id).collect::<Vec<_>>(),
            })
        })
        .collect();
    if let Some(path) = &args.labels {
        std::fs::write(path, serde_json::to_string_pretty(&episodes)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    let lanes = load::lanes(&load, args.clients, pace.speedup);
    let target = post::Target { url: args.url, key };
    let options = post::Options {
        batch: args.batch,
        retry_failures: true,
        ..post::Options::default()
    };
    let started = Instant::now();
    let body = |index: usize| load::delivery_json(&load, index);
    let (acks, counts) = post::post_lanes(&target, &lanes, started, &options, &body).await?;
    let elapsed = started.elapsed();
    let acknowledged = acks.iter().flatten().filter(|ack| ack.acknowledged).count();
    let summary = json!({
        "seed": config.seed,
        "events": load.events.len(),
        "deliveries": load.deliveries.len(),
        "duplicates": load.deliveries.iter().filter(|d| d.duplicate).count(),
        "late": load.deliveries.iter().filter(|d| !d.duplicate && d.at > load.events[d.event].ts).count(),
        "firstTs": reference::instant(load.events[0].ts),
        "lastTs": reference::instant(load.events[load.events.len() - 1].ts),
        "fraudEpisodes": episodes.len(),
        "acknowledged": acknowledged,
        "accepted": counts.accepted,
        "replayed": counts.replayed,
        "requests": counts.requests,
        "retries": counts.retries,
        "failures": counts.failures,
        "seconds": elapsed.as_secs_f64(),
        "deliveriesPerSecond": load.deliveries.len() as f64 / elapsed.as_secs_f64().max(1e-9),
    });
    println!("{summary}");
    Ok(())
}
