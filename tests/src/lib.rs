//! Whole-platform tests. They live in `tests/tests/`, run against the real Kafka,
//! PostgreSQL, Redis and RabbitMQ that `deploy/dev` starts, and isolate themselves by
//! name (`fraud_testkit::unique_name`). The library holds what they share:
//! [`platform`] starts the real service binaries in namespaces of a test's own,
//! [`reference`] computes the platform's figures independently, and [`replay`] posts a
//! CSV file of transactions through the ingest API (the `fraud-replay` tool),
//! [`load`] generates realistic traffic with labelled fraud episodes (`fraud-load`),
//! [`post`] is the one loop that posts transactions for all of them, and [`chaos`]
//! runs the fault suite (`fraud-chaos`).

pub mod chaos;
pub mod load;
pub mod platform;
pub mod post;
pub mod reference;
pub mod replay;
