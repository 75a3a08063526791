use std::process::ExitCode;

use clap::Parser;
use fraud_service::startup::{self, ConfigArgs};

/// The ingest service: POST /v1/transactions into Kafka, and the lake writer.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    startup::run(
        "ingest",
        cli.config.config.as_deref(),
        |settings, shutdown| async move {
            ingest::App::build(&settings, shutdown)
                .await?
                .run_until_stopped()
                .await
        },
    )
    .await
}
