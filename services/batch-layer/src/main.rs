use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fraud_service::startup::{self, ConfigArgs, Service};

/// The batch layer: exact aggregates and baselines from the lake into Postgres.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the schema migrations to the configured database, then exit.
    Migrate,
    /// Stay up, serving health and metrics, and run the job on the configured schedule.
    Schedule,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    startup::run(
        "batch-layer",
        cli.config.config.as_deref(),
        |settings, shutdown| async move {
            match cli.command {
                Command::Migrate => batch_layer::migrate(&settings).await,
                Command::Schedule => {
                    batch_layer::App::build(&settings, shutdown)
                        .await?
                        .run_until_stopped()
                        .await
                }
            }
        },
    )
    .await
}
