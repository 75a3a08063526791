//! The speed layer: exact 30-minute sliding windows per customer in Redis.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fraud_service::startup::main::<speed_layer::App>().await
}
