//! The harness shared by ingest's API tests: an in-process ingest on its own topic,
//! Redis prefix and keys, and helpers to post and to read the topic back.
#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use fraud_config::{ApiKeyConfig, Scope, Settings};
use fraud_events::TransactionEvent;
use fraud_service::Shutdown;
use fraud_service::auth::key_sha256;
use fraud_service::startup::Service;
use fraud_testkit::kafka::{Record, read_all};
use fraud_testkit::{local_settings, unique_name};
use serde_json::{Value, json};

pub const WRITER: &str = "writer-secret";
pub const READER: &str = "reader-secret";

pub struct Harness {
    pub base: String,
    pub settings: Settings,
    /// Whether [`Harness::stop`] removes the topic, Redis keys and lake directory.
    owns_namespace: bool,
    shutdown: Shutdown,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

impl Harness {
    /// An ingest on its own topic and Redis prefix, tuned by `tune`.
    pub async fn start(tune: impl FnOnce(&mut Settings)) -> Harness {
        let mut settings = local_settings();
        let name = unique_name("ingest-api");
        settings.kafka.transactions_topic = name.clone();
        settings.redis.key_prefix = format!("{name}:");
        settings.ingest.listen = "127.0.0.1:0".parse().unwrap();
        settings.lake.root = std::env::temp_dir()
            .join(&name)
            .to_string_lossy()
            .into_owned();
        settings.lake.writer_group = format!("{name}-lake");
        settings.auth.keys = vec![
            ApiKeyConfig {
                name: "writer".into(),
                sha256: key_sha256(WRITER),
                scopes: vec![Scope::Ingest],
            },
            ApiKeyConfig {
                name: "reader".into(),
                sha256: key_sha256(READER),
                scopes: vec![Scope::Read],
            },
        ];
        tune(&mut settings);
        fraud_kafka::ensure_topic(&settings.kafka, &name, 3, 1)
            .await
            .expect("create the topic");
        Self::taking_over(settings).await
    }

    /// Another ingest on the same topic and Redis prefix as `settings`, whose owner
    /// removes them.
    pub async fn on(settings: Settings) -> Harness {
        Harness {
            owns_namespace: false,
            ..Self::taking_over(settings).await
        }
    }

    /// An ingest on the topic and Redis prefix of `settings`, which it removes when it
    /// stops: after [`Harness::stop_keeping_namespace`].
    pub async fn taking_over(settings: Settings) -> Harness {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let app = ingest::App::build(&settings, shutdown.clone())
            .await
            .expect("ingest starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let running = tokio::spawn(app.run_until_stopped());
        Harness {
            base,
            settings,
            owns_namespace: true,
            shutdown,
            running,
            client: reqwest::Client::new(),
        }
    }

    pub async fn post(
        &self,
        key: Option<&str>,
        content_type: &str,
        body: impl Into<String>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .client
            .post(format!("{}/v1/transactions", self.base))
            .header("content-type", content_type)
            .body(body.into());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("a response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    pub async fn post_json(&self, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        self.post(Some(WRITER), "application/json", body.to_string())
            .await
    }

    pub async fn records(&self) -> Vec<Record> {
        let kafka = self.settings.kafka.clone();
        let topic = self.settings.kafka.transactions_topic.clone();
        tokio::task::spawn_blocking(move || read_all(&kafka, &topic))
            .await
            .expect("read the topic")
    }

    /// Stops the ingest; its owner also deletes the topic, the Redis keys and the lake
    /// directory, so test runs leave nothing behind.
    pub async fn stop(self) {
        let owns_namespace = self.owns_namespace;
        let settings = self.stop_keeping_namespace().await;
        assert!(
            !settings.redis.key_prefix.is_empty(),
            "a test's Redis keys have a prefix of their own"
        );
        if owns_namespace {
            fraud_kafka::delete_topic(&settings.kafka, &settings.kafka.transactions_topic)
                .await
                .expect("delete the test topic");
            fraud_testkit::redis_keys::delete_prefix(
                settings.redis.url.expose(),
                &settings.redis.key_prefix,
            )
            .await
            .expect("delete the test's Redis keys");
            let _ = std::fs::remove_dir_all(&settings.lake.root);
        }
    }

    /// Stops the ingest and leaves its topic, keys and lake for the next one
    /// ([`Harness::taking_over`]); returns its settings.
    pub async fn stop_keeping_namespace(self) -> Settings {
        self.shutdown.trigger();
        self.running.await.expect("task").expect("clean stop");
        self.settings
    }
}

pub fn events(records: &[Record]) -> Vec<TransactionEvent> {
    records
        .iter()
        .map(|record| {
            fraud_events::decode(record.header("schema-version"), &record.value)
                .expect("a version-1 record")
        })
        .collect()
}

pub fn transaction(id: &str, customer: Value, amount: Value) -> Value {
    json!({
        "transactionId": id,
        "customerId": customer,
        "vendorId": "04ec092a-421a-4481",
        "transactionSum": amount,
        "ts": "2019-05-30T09:20:50.100+02:00",
        "currency": "EUR"
    })
}
