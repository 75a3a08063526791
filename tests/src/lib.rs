//! Whole-platform tests. They live in `tests/tests/`, run against the real Kafka,
//! PostgreSQL, Redis and RabbitMQ that `deploy/dev` starts, and isolate themselves by
//! name (`fraud_testkit::unique_name`). The library holds what they share:
//! [`platform`] starts the real service binaries in namespaces of a test's own, and
//! [`reference`] computes the platform's figures independently.

pub mod platform;
pub mod reference;
