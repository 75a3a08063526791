//! What every service process shares: how it stops, and how it tells operators that it
//! is alive, ready and busy.
//!
//! - [`shutdown`]: the coordinator that turns SIGINT/SIGTERM into a cancellation,
//!   tracks named tasks, reports a task that dies, and drains within a grace period.
//! - [`readiness`]: probes of the servers a service depends on (Kafka, Postgres, Redis,
//!   RabbitMQ), each bounded by a timeout.
//! - [`ops`]: the `/healthz`, `/readyz` and `/metrics` routes, merged into each service's
//!   own router, and [`ops::serve`] to run a router until shutdown.
//! - [`auth`], [`rate_limit`], [`problem`]: API keys with scopes, per-key rate limits,
//!   and RFC 9457 problem responses, shared by both HTTP APIs.
//! - [`observe`]: a span and request metrics for every HTTP route.
//! - [`startup`]: what every `main` shares ([`startup::run`]) and [`HttpService`], a
//!   bound listener that exposes its real port before it runs.

pub mod auth;
pub mod observe;
pub mod ops;
pub mod problem;
pub mod rate_limit;
pub mod readiness;
pub mod shutdown;
pub mod startup;

pub use readiness::{Probe, ProbeFuture, Readiness};
pub use shutdown::Shutdown;
pub use startup::HttpService;
