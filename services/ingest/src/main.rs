//! The ingest service: POST /v1/transactions into Kafka, and the lake writer.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fraud_service::startup::main::<ingest::App>().await
}
