//! Redis for the platform: a shared, self-healing connection and the readiness probe.
//!
//! [`RedisHandle`] connects on first use (so a service starts while Redis is down) and
//! then keeps one multiplexed connection that reconnects by itself. Every key the
//! platform writes starts with the configured prefix ([`RedisHandle::key`]), so tests
//! and several deployments can share one Redis.

use std::time::Duration;

use fraud_config::RedisConfig;
use fraud_service::{Probe, ProbeFuture};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// Redis failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis.url is not a valid Redis URL: {0}")]
    InvalidUrl(redis::RedisError),
    #[error("failed to connect to Redis: {0}")]
    Connect(redis::RedisError),
}

/// A lazily connected, shared Redis connection.
pub struct RedisHandle {
    client: redis::Client,
    prefix: String,
    connect_timeout: Duration,
    manager: OnceCell<ConnectionManager>,
}

impl RedisHandle {
    /// A handle for `config`; nothing connects until first use.
    pub fn new(config: &RedisConfig, connect_timeout: Duration) -> Result<Self, Error> {
        let client =
            redis::Client::open(config.url.expose().as_str()).map_err(Error::InvalidUrl)?;
        Ok(Self {
            client,
            prefix: config.key_prefix.clone(),
            connect_timeout,
            manager: OnceCell::new(),
        })
    }

    /// The shared connection (cheap to clone), connecting on first use.
    pub async fn connection(&self) -> Result<ConnectionManager, Error> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.connect_timeout));
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(Error::Connect)
            })
            .await?;
        Ok(manager.clone())
    }

    /// `suffix` under the configured key prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

/// Ready when `PING` answers `PONG`.
pub struct RedisProbe {
    handle: std::sync::Arc<RedisHandle>,
}

impl RedisProbe {
    pub fn new(handle: std::sync::Arc<RedisHandle>) -> Self {
        Self { handle }
    }
}

impl Probe for RedisProbe {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            let mut connection = self.handle.connection().await.map_err(|e| e.to_string())?;
            let pong: String = redis::cmd("PING")
                .query_async(&mut connection)
                .await
                .map_err(|error| error.to_string())?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(format!("PING answered `{pong}`"))
            }
        })
    }
}
