//! The speed layer: exact 30-minute sliding windows per customer in Redis.

/// Every batch makes and frees thousands of customer states, their encodings and the
/// window updates; glibc's allocator spent a good part of the pipeline's CPU on them
/// (`perf`: `_int_malloc`, `unlink_chunk`, `malloc_consolidate`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fraud_service::startup::main::<speed_layer::App>().await
}
