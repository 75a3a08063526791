use std::process::ExitCode;

use clap::Parser;
use fraud_service::startup::{self, ConfigArgs};

/// The serving API: customer risk, fraud rules and alerts.
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
        "serving-api",
        cli.config.config.as_deref(),
        |settings, shutdown| async move {
            serving_api::App::build(&settings, shutdown)
                .await?
                .run_until_stopped()
                .await
        },
    )
    .await
}
