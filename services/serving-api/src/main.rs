//! The serving API: customer risk, fraud rules and alerts.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fraud_service::startup::main::<serving_api::App>().await
}
