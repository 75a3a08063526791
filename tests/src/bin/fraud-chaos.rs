//! `fraud-chaos`: the fault suite (`deploy/dev chaos`). Starts a platform of its own
//! from the service binaries (their own topics, groups, Redis prefix, database, exchange
//! and lake on the local servers), posts a stream of generated traffic through it while
//! killing each service repeatedly and losing Redis's data (and, with
//! `--restart-servers`, restarting Kafka, PostgreSQL and RabbitMQ through `deploy/dev
//! restart`), then checks Kafka, the lake, the windows, the batch tables and the alerts
//! against an exact recomputation ([`platform_tests::chaos`] says what exactly). Prints
//! a Markdown report with the recovery time of each fault and writes it to `--output`;
//! exits 1 when a check failed.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use platform_tests::chaos::{self, ChaosConfig, RedisLoss};

#[derive(Clone, Copy, ValueEnum)]
enum Redis {
    /// No Redis fault.
    None,
    /// Delete every key of the platform's prefix (other users of the server keep theirs).
    Prefix,
    /// Restart the server (no persistence: every user's keys are lost).
    Restart,
}

#[derive(Parser)]
#[command(
    about = "Run the fault suite against a platform of its own",
    args_override_self = true
)]
struct Args {
    /// Distinct transactions in the stream.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Deliveries per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Event-time seconds per wall-clock second: the load's span is the run's duration
    /// times this (at least 2 h); an outage of N s holds back N × this of event time.
    #[arg(long, default_value_t = 60.0)]
    speedup: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// SIGKILLs of each service.
    #[arg(long, default_value_t = 2)]
    kills: usize,
    #[arg(long, value_enum, default_value = "prefix")]
    redis: Redis,
    /// Restart Kafka, PostgreSQL and RabbitMQ too (the shared servers: tests running
    /// meanwhile fail).
    #[arg(long)]
    restart_servers: bool,
    /// Pauses of the stream where windows are checked.
    #[arg(long, default_value_t = 3)]
    checkpoints: usize,
    #[arg(long, default_value_t = 20261125)]
    seed: u64,
    /// Where the report goes.
    #[arg(long, default_value = ".dev/chaos-report.md")]
    output: PathBuf,
    /// `deploy/dev` (it restarts the servers).
    #[arg(long, default_value = "deploy/dev")]
    deploy_dev: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ChaosConfig::new(args.events);
    config.rate = args.rate;
    config.speedup = args.speedup;
    config.clients = args.clients;
    config.kills = args.kills;
    config.redis_loss = match args.redis {
        Redis::None => RedisLoss::None,
        Redis::Prefix => RedisLoss::Prefix,
        Redis::Restart => RedisLoss::Restart,
    };
    config.restart_servers = args.restart_servers;
    config.checkpoints = args.checkpoints;
    config.load.seed = args.seed;
    config.deploy_dev = args.deploy_dev;
    let report = chaos::run(&config).await?;
    println!("{}", report.markdown);
    if let Some(dir) = args.output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.output, &report.markdown)?;
    eprintln!("fraud-chaos: report written to {}", args.output.display());
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}
