//! The serving API: customer risk merged from the batch and speed views, fraud rules
//! evaluated on every window update, and alerts published to RabbitMQ.
//!
//! - [`risk`]: `GET /v1/customers/{id}/risk` and `/daily` (scope `read`): batch ⊕ speed.
//! - [`rules`]: the rule set in force and the one evaluation of it; [`rules_api`]:
//!   `GET`/`PUT /v1/rules` (scope `admin`).
//! - [`evaluate`]: the window-update consumer (group `serving.group`): rules on every
//!   update, alerts with their outbox rows in one transaction.
//! - [`relay`]: the outbox to the `fraud.alerts` exchange, marked sent on the confirm.
//! - [`alerts_api`]: `GET /v1/alerts` and `GET /v1/alerts/stream` (scope `read`).
//! - [`openapi`]: the API's OpenAPI document, `GET /openapi.json`.
//!
//! Operational endpoints on the same port: `/healthz`, `/readyz` (Postgres, Redis,
//! RabbitMQ and the Kafka cluster) and `/metrics`. [`App::build`] binds the listener, so
//! callers learn the real port before [`App::run_until_stopped`].

pub mod alerts_api;
pub mod evaluate;
pub mod openapi;
pub mod relay;
pub mod risk;
pub mod rules;
pub mod rules_api;

use std::sync::Arc;

use fraud_amqp::{AmqpHandle, AmqpProbe};
use fraud_config::Settings;
use fraud_kafka::KafkaProbe;
use fraud_postgres::PostgresProbe;
use fraud_redis::{RedisHandle, RedisProbe};
use fraud_service::auth::ApiKeys;
use fraud_service::startup::Service;
use fraud_service::{HttpService, Readiness, Shutdown};
use sqlx::PgPool;

use crate::risk::cache::BatchCache;
use crate::rules::RuleStore;

/// What every part of the serving API shares.
pub struct AppState {
    pub settings: Settings,
    pub pool: PgPool,
    pub redis: Arc<RedisHandle>,
    pub amqp: Arc<AmqpHandle>,
    pub keys: ApiKeys,
    pub rules: Arc<RuleStore>,
    /// `/risk`'s batch rows of the run in force, per customer.
    pub batch_cache: Arc<BatchCache>,
    /// The speed view's meta key, as last read whole.
    pub speed_meta: crate::risk::read::MetaCache,
}

/// The serving API, bound and ready to run.
pub struct App {
    http: HttpService,
    batch_cache: Arc<BatchCache>,
}

impl App {
    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// `/risk`'s batch row cache, to look into (tests).
    pub fn batch_cache(&self) -> Arc<BatchCache> {
        Arc::clone(&self.batch_cache)
    }
}

impl Service for App {
    const NAME: &'static str = "serving-api";

    /// Connects lazily to its servers, starts the rule refresher, the batch run follower
    /// (for `/risk`'s cache), the window-update consumer and the outbox relay, and binds `settings.serving.listen`.
    async fn build(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<Self> {
        let timeout = settings.service.probe_timeout();
        let pool = fraud_postgres::lazy_pool(&settings.postgres, timeout)?;
        let redis = Arc::new(RedisHandle::new(&settings.redis, timeout)?);
        let amqp = Arc::new(AmqpHandle::new(&settings.rabbitmq, "serving-api"));
        let rules = Arc::new(RuleStore::new(pool.clone(), settings.serving.rules.clone()));
        let batch_cache = Arc::new(BatchCache::new(
            usize::try_from(settings.serving.batch_cache_entries).unwrap_or(usize::MAX),
        ));
        let state = Arc::new(AppState {
            settings: settings.clone(),
            pool: pool.clone(),
            redis: Arc::clone(&redis),
            amqp: Arc::clone(&amqp),
            keys: ApiKeys::from_config(&settings.auth),
            rules: Arc::clone(&rules),
            batch_cache: Arc::clone(&batch_cache),
            speed_meta: Default::default(),
        });
        shutdown.spawn("rules-refresh", rules.keep_fresh(shutdown.clone()));
        batch_cache.spawn_follower(pool.clone(), timeout, &shutdown);
        evaluate::spawn(Arc::clone(&state), &shutdown)?;
        let alert_signal = relay::spawn(Arc::clone(&state), &shutdown)?;

        let readiness = Readiness::new(timeout)
            .with_shutdown(shutdown.clone())
            .with(PostgresProbe::new(pool))
            .with(RedisProbe::new(redis))
            .with(AmqpProbe::new(amqp))
            .with(KafkaProbe::new(&settings.kafka, None, timeout)?);
        let router = fraud_service::ops::routes(readiness)
            .merge(openapi::routes())
            .merge(risk::routes(Arc::clone(&state)))
            .merge(rules_api::routes(Arc::clone(&state)))
            .merge(alerts_api::routes(Arc::clone(&state), alert_signal));
        let http = HttpService::bind(settings.serving.listen, router, shutdown).await?;
        Ok(Self { http, batch_cache })
    }

    /// Serves until shutdown, then drains.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.http.run_until_stopped().await
    }
}
