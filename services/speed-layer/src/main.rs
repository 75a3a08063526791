use std::process::ExitCode;

use clap::Parser;
use fraud_service::startup::{self, ConfigArgs};

/// The speed layer: exact 30-minute sliding windows per customer in Redis.
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
        "speed-layer",
        cli.config.config.as_deref(),
        |settings, shutdown| async move {
            speed_layer::App::build(&settings, shutdown)
                .await?
                .run_until_stopped()
                .await
        },
    )
    .await
}
