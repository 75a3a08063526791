//! Whole-platform tests. They live in `tests/tests/`, run against the real Kafka,
//! PostgreSQL, Redis and RabbitMQ that `deploy/dev` starts, and isolate themselves by
//! name (`fraud_testkit::unique_name`). This library is empty on purpose.
