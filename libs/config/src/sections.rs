//! The sections of the configuration and their fields.
//!
//! Each section is declared once with [`section!`], which writes the struct, extracts
//! every field on its own (so one bad field does not hide the next) and lists the
//! fields with their documentation. Checks that look at values, not just shapes, live
//! in [`Settings::validate`].

use std::collections::BTreeSet;
use std::net::SocketAddr;

use figment::Figment;
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

use crate::problems::{ConfigError, Problems};
use crate::secret::Secret;

/// One documented configuration field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDoc {
    /// The section, e.g. `kafka`.
    pub section: &'static str,
    /// The field, e.g. `brokers`.
    pub name: &'static str,
    /// What the field means (its doc comment).
    pub doc: &'static str,
}

impl FieldDoc {
    /// The dotted key used in files: `kafka.brokers`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// The environment variable that overrides it: `FRAUD_KAFKA__BROKERS`.
    pub fn env_var(&self) -> String {
        format!(
            "{}{}__{}",
            crate::ENV_PREFIX,
            self.section.to_ascii_uppercase(),
            self.name.to_ascii_uppercase()
        )
    }
}

macro_rules! section {
    (
        $(#[doc = $section_doc:literal])*
        pub struct $name:ident in $key:literal {
            $( $(#[doc = $doc:literal])+ pub $field:ident : $ty:ty, )+
        }
    ) => {
        $(#[doc = $section_doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl $name {
            /// The section's name in files and environment variables.
            pub const SECTION: &'static str = $key;

            /// The section's fields with their documentation.
            pub const FIELDS: &'static [FieldDoc] = &[
                $( FieldDoc {
                    section: $key,
                    name: stringify!($field),
                    doc: concat!($($doc),+),
                }, )+
            ];

            fn extract(problems: &mut Problems<'_>) -> Option<Self> {
                // Every field is extracted before any `?`, so all problems are recorded.
                $( let $field = problems.field::<$ty>($key, stringify!($field)); )+
                let section = Self { $( $field: $field?, )+ };
                section.check(problems);
                Some(section)
            }
        }
    };
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Post transactions.
    Ingest,
    /// Read risk, daily figures and alerts.
    Read,
    /// Change rules and other administration.
    Admin,
}

/// One API key, stored as the SHA-256 of the key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and metrics, e.g. the client's name.
    pub name: String,
    /// Lowercase hex SHA-256 of the key's bytes.
    pub sha256: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
}

/// How serious an alert is; part of its routing key `alert.<severity>.<rule>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The name used in routing keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What a fraud rule looks at. "Over" is strictly greater than. Money is in minor
/// units.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleCondition {
    /// The 30-minute window's sum is over `limit_minor`.
    WindowSumOver { limit_minor: i64 },
    /// The 30-minute window's count is over `limit`.
    WindowCountOver { limit: i64 },
    /// The 30-minute window's sum is over `multiple_percent` % of the customer's
    /// baseline peak (the 95th percentile of daily 30-minute peaks) and over
    /// `min_sum_minor`. Never fires for a customer without a baseline.
    WindowSumOverBaselinePeak {
        multiple_percent: i64,
        min_sum_minor: i64,
    },
    /// An event's amount is over `limit_minor` at a vendor the customer had not used
    /// before it (neither in the batch layer's vendors nor earlier in the speed layer's
    /// retention). Judged for every event a window update lists.
    NewVendorAmountOver { limit_minor: i64 },
}

/// One fraud rule: data, not code (`serving.rules`, `PUT /v1/rules`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDefinition {
    /// A stable id: 1 to 64 of `a-z`, `0-9`, `-`; part of routing keys and alert ids.
    pub id: String,
    pub severity: Severity,
    /// A disabled rule is kept but never fires.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub condition: RuleCondition,
}

fn enabled_by_default() -> bool {
    true
}

/// Every problem of a rule set, as (JSON pointer into the list, reason); empty when it
/// is valid. Shared by the configuration check and `PUT /v1/rules`.
pub fn rule_problems(rules: &[RuleDefinition]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, rule) in rules.iter().enumerate() {
        let at = |field: &str| format!("/{index}/{field}");
        let id_ok = (1..=64).contains(&rule.id.len())
            && rule
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            problems.push((
                at("id"),
                "must be 1 to 64 characters of a-z, 0-9 and -".to_owned(),
            ));
        } else if !seen.insert(rule.id.as_str()) {
            problems.push((at("id"), format!("`{}` is used by another rule", rule.id)));
        }
        let positive = |problems: &mut Vec<(String, String)>, field: &str, value: i64| {
            if value <= 0 {
                problems.push((
                    at(&format!("condition/{field}")),
                    "must be positive".to_owned(),
                ));
            }
        };
        match &rule.condition {
            RuleCondition::WindowSumOver { limit_minor } => {
                positive(&mut problems, "limit_minor", *limit_minor)
            }
            RuleCondition::WindowCountOver { limit } => positive(&mut problems, "limit", *limit),
            RuleCondition::WindowSumOverBaselinePeak {
                multiple_percent,
                min_sum_minor,
            } => {
                positive(&mut problems, "multiple_percent", *multiple_percent);
                if *multiple_percent > 1_000_000 {
                    problems.push((
                        at("condition/multiple_percent"),
                        "must be at most 1000000".to_owned(),
                    ));
                }
                if *min_sum_minor < 0 {
                    problems.push((
                        at("condition/min_sum_minor"),
                        "must not be negative".to_owned(),
                    ));
                }
            }
            RuleCondition::NewVendorAmountOver { limit_minor } => {
                positive(&mut problems, "limit_minor", *limit_minor)
            }
        }
    }
    problems
}

section! {
    /// Logs, traces and metrics. Traces are exported over OTLP when the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set.
    pub struct TelemetryConfig in "telemetry" {
        /// Log format: `pretty` or `json`.
        pub log_format: LogFormat,
        /// Log filter in `RUST_LOG` syntax (`RUST_LOG` itself wins when set).
        pub log_filter: String,
    }
}

section! {
    /// Behaviour shared by every service process.
    pub struct ServiceConfig in "service" {
        /// How long shutdown waits for in-flight work before giving up, in milliseconds.
        pub shutdown_grace_ms: u64,
        /// How long one readiness probe of a server may take, in milliseconds.
        pub probe_timeout_ms: u64,
    }
}

section! {
    /// The Kafka cluster.
    pub struct KafkaConfig in "kafka" {
        /// Bootstrap brokers, comma-separated `host:port`.
        pub brokers: String,
        /// The topic of accepted transactions, keyed by customer.
        pub transactions_topic: String,
        /// The topic of the speed layer's window updates, keyed by customer.
        pub window_updates_topic: String,
        /// The codec every producer of the platform compresses its batches with: `lz4`, `zstd`, `snappy`, `gzip` or `none`.
        pub compression: String,
        /// A consumer's fetch returns once this many bytes are ready (or after `fetch_max_wait_ms`): fewer, fuller fetches for the broker (1 to 100,000,000).
        pub fetch_min_bytes: u32,
        /// The longest a consumer's fetch waits for `fetch_min_bytes`, in ms: at most this much delay a hop when traffic is light (1 to 60,000).
        pub fetch_max_wait_ms: u32,
    }
}

section! {
    /// PostgreSQL, home of the batch views, baselines, run log and alerts.
    pub struct PostgresConfig in "postgres" {
        /// Connection URL, `postgres://user:password@host:port/database`.
        pub url: Secret<String>,
        /// Most connections one service process opens.
        pub max_connections: u32,
    }
}

section! {
    /// Redis, home of the speed layer's windows and ingest's idempotency keys.
    pub struct RedisConfig in "redis" {
        /// Connection URL, `redis://host:port` (or `rediss://` for TLS).
        pub url: Secret<String>,
        /// Prefix of every key the platform writes, to share one Redis safely.
        pub key_prefix: String,
    }
}

section! {
    /// RabbitMQ, where alerts are published.
    pub struct RabbitMqConfig in "rabbitmq" {
        /// Connection URL, `amqp://user:password@host:port/vhost` (or `amqps://`).
        pub url: Secret<String>,
        /// The durable topic exchange alerts are published to.
        pub alerts_exchange: String,
    }
}

section! {
    /// API keys.
    pub struct AuthConfig in "auth" {
        /// Keys as `{ name, sha256, scopes }`; scopes are `ingest`, `read`, `admin`.
        pub keys: Vec<ApiKeyConfig>,
    }
}

section! {
    /// The Parquet lake and its writer (which runs inside ingest).
    pub struct LakeConfig in "lake" {
        /// Root of the lake: a directory, or `s3://bucket/prefix` for an object store.
        pub root: String,
        /// Consumer group of the lake writer.
        pub writer_group: String,
        /// A file is closed after this many records of one partition.
        pub max_rows_per_file: u32,
        /// Rows per Parquet row group.
        pub row_group_rows: u32,
        /// A partition with no new records flushes what it holds after this long, in ms.
        pub idle_flush_ms: u64,
        /// A partition's open file is closed once its first record has waited this long,
        /// in ms, even while records keep arriving: the lake is never more than this behind.
        pub max_chunk_age_ms: u64,
        /// For an `s3://` root: the endpoint of an S3-compatible store, such as
        /// `http://127.0.0.1:9000` (plain HTTP only when it says `http://`). Empty: AWS
        /// S3 itself, or `AWS_ENDPOINT`.
        pub s3_endpoint: String,
        /// For an `s3://` root: the bucket's region. Empty: `AWS_REGION`, else us-east-1.
        pub s3_region: String,
        /// For an `s3://` root: the access key id. Empty: the standard AWS credential
        /// sources (`AWS_ACCESS_KEY_ID`, web identity, instance metadata).
        pub s3_access_key_id: String,
        /// The secret of `lake.s3_access_key_id`; set both or neither.
        pub s3_secret_access_key: Secret<String>,
    }
}

section! {
    /// The ingest service.
    pub struct IngestConfig in "ingest" {
        /// Address the HTTP API (and health, readiness, metrics) listens on.
        pub listen: SocketAddr,
        /// Largest request body accepted, in bytes (larger: 413).
        pub max_body_bytes: u32,
        /// Most transactions in one request (more: 413).
        pub max_batch_items: u32,
        /// How far in the future an event's `ts` may be, in ms (further: 422).
        pub max_future_skew_ms: u64,
        /// Largest `transactionSum` accepted, in minor units (larger: 422).
        pub max_amount_minor: i64,
        /// The platform's currency; a `currency` field must equal it.
        pub currency: String,
        /// How long a `transactionId` is remembered for idempotent replays, in ms.
        pub idempotency_horizon_ms: u64,
        /// Requests per second each API key may make (more: 429).
        pub rate_limit_per_second: u32,
        /// Requests an API key may make at once before the rate applies.
        pub rate_limit_burst: u32,
        /// Records each of the two producers (batches, single events) may hold
        /// unacknowledged before answering 503.
        pub producer_queue_max: u32,
        /// How long to wait for the brokers' acknowledgement before answering 503, in ms.
        pub produce_timeout_ms: u64,
        /// How long the producer waits to fill a batch before sending records of
        /// requests with several events, in ms (Kafka's `linger.ms`).
        pub linger_ms: u32,
        /// The same for requests of one event, which go through a producer of their own
        /// so they do not wait for a batch to fill; 0 sends at once.
        pub single_event_linger_ms: u32,
        /// Requests the instance works on at once, over every key; one more is refused
        /// at once (503 with `Retry-After`) instead of waiting in a growing queue.
        pub max_in_flight_requests: u32,
    }
}

section! {
    /// The serving API.
    pub struct ServingConfig in "serving" {
        /// Address the HTTP API (and health, readiness, metrics) listens on.
        pub listen: SocketAddr,
        /// Consumer group of the serving instances reading the window updates.
        pub group: String,
        /// The default fraud rules, used until `PUT /v1/rules` stores a set: a list of
        /// `{ id, severity, enabled, condition = { kind, ... } }`.
        pub rules: Vec<RuleDefinition>,
        /// Most customers whose batch rows of the run in force `/risk` keeps in memory
        /// (0: none; every request then reads Postgres). Each takes about 240 bytes plus
        /// 24 per hour with spending in the 24 hours up to T_b (at most about 820).
        pub batch_cache_entries: u64,
    }
}

section! {
    /// The speed layer.
    pub struct SpeedConfig in "speed" {
        /// Address of the health, readiness and metrics endpoints.
        pub listen: SocketAddr,
        /// Consumer group of the speed layer's instances.
        pub group: String,
        /// How far behind a customer's latest event time an event may be and still be
        /// applied, beyond the 30-minute window, in ms; at least `ingest.max_future_skew_ms`.
        pub allowed_lateness_ms: u64,
        /// How long a customer's hourly increments are kept after its last event when no
        /// batch run covers them, in ms.
        pub increments_ttl_ms: u64,
        /// Most records applied in one batch (one Redis pipeline).
        pub max_batch_records: u32,
        /// How long a batch waits for more records before it is applied, in ms.
        pub max_batch_wait_ms: u64,
        /// How often the batch watermark T_b is read from Postgres, in ms.
        pub watermark_refresh_ms: u64,
        /// The codec of the window updates it publishes (one of [`COMPRESSION_CODECS`]);
        /// `kafka.compression` applies to every other producer.
        pub updates_compression: String,
        /// Most customers whose state an instance keeps a copy of, so that a batch
        /// reads from Redis only the states of customers it has not seen lately (0:
        /// none; every batch then reads every customer's state). A copy of a customer
        /// with 20 events in its window takes about 1 KB (40 bytes an event, plus the
        /// key and the bookkeeping), and is dropped once unused for the retention.
        pub cached_customers: u64,
    }
}

section! {
    /// The batch layer.
    pub struct BatchConfig in "batch" {
        /// Address of the health, readiness and metrics endpoints (in `schedule` mode).
        pub listen: SocketAddr,
        /// When `schedule` runs the job: a cron expression with seconds, in UTC.
        pub schedule: String,
    }
}

/// The whole platform's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub telemetry: TelemetryConfig,
    pub service: ServiceConfig,
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub rabbitmq: RabbitMqConfig,
    pub auth: AuthConfig,
    pub lake: LakeConfig,
    pub ingest: IngestConfig,
    pub serving: ServingConfig,
    pub speed: SpeedConfig,
    pub batch: BatchConfig,
}

impl Settings {
    /// Every field of every section, in order, with its documentation.
    pub fn documentation() -> Vec<FieldDoc> {
        [
            TelemetryConfig::FIELDS,
            ServiceConfig::FIELDS,
            KafkaConfig::FIELDS,
            PostgresConfig::FIELDS,
            RedisConfig::FIELDS,
            RabbitMqConfig::FIELDS,
            AuthConfig::FIELDS,
            LakeConfig::FIELDS,
            IngestConfig::FIELDS,
            ServingConfig::FIELDS,
            SpeedConfig::FIELDS,
            BatchConfig::FIELDS,
        ]
        .concat()
    }

    pub(crate) fn extract(figment: &Figment) -> Result<Settings, ConfigError> {
        let mut problems = Problems::new(figment);
        report_unknown_keys(figment, &mut problems);
        let telemetry = TelemetryConfig::extract(&mut problems);
        let service = ServiceConfig::extract(&mut problems);
        let kafka = KafkaConfig::extract(&mut problems);
        let postgres = PostgresConfig::extract(&mut problems);
        let redis = RedisConfig::extract(&mut problems);
        let rabbitmq = RabbitMqConfig::extract(&mut problems);
        let auth = AuthConfig::extract(&mut problems);
        let lake = LakeConfig::extract(&mut problems);
        let ingest = IngestConfig::extract(&mut problems);
        let serving = ServingConfig::extract(&mut problems);
        let speed = SpeedConfig::extract(&mut problems);
        let batch = BatchConfig::extract(&mut problems);
        let settings = match (
            telemetry, service, kafka, postgres, redis, rabbitmq, auth, lake, ingest, serving,
            speed, batch,
        ) {
            (
                Some(telemetry),
                Some(service),
                Some(kafka),
                Some(postgres),
                Some(redis),
                Some(rabbitmq),
                Some(auth),
                Some(lake),
                Some(ingest),
                Some(serving),
                Some(speed),
                Some(batch),
            ) => Some(Settings {
                telemetry,
                service,
                kafka,
                postgres,
                redis,
                rabbitmq,
                auth,
                lake,
                ingest,
                serving,
                speed,
                batch,
            }),
            _ => None,
        };
        problems.into_result(settings)
    }
}

// Checks on values (ranges, URL schemes, key formats), run on each section whose
// fields all have the right shape.

impl TelemetryConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        if self.log_filter.trim().is_empty() {
            problems.add("telemetry.log_filter", "must not be empty");
        }
    }
}

impl ServiceConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        at_least_one(
            problems,
            "service.shutdown_grace_ms",
            self.shutdown_grace_ms,
        );
        at_least_one(problems, "service.probe_timeout_ms", self.probe_timeout_ms);
    }
}

/// The values of `kafka.compression`: librdkafka's `compression.type` codecs.
pub const COMPRESSION_CODECS: [&str; 5] = ["lz4", "zstd", "snappy", "gzip", "none"];

impl KafkaConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        let malformed = self.brokers.split(',').any(|broker| {
            let broker = broker.trim();
            broker.is_empty() || !broker.contains(':')
        });
        if malformed {
            problems.add(
                "kafka.brokers",
                format!(
                    "`{}` is not a comma-separated list of host:port",
                    self.brokers
                ),
            );
        }
        if self.transactions_topic.trim().is_empty() {
            problems.add("kafka.transactions_topic", "must not be empty");
        }
        if self.window_updates_topic.trim().is_empty() {
            problems.add("kafka.window_updates_topic", "must not be empty");
        }
        if !(1..=100_000_000).contains(&self.fetch_min_bytes) {
            problems.add("kafka.fetch_min_bytes", "must be from 1 to 100,000,000");
        }
        if !(1..=60_000).contains(&self.fetch_max_wait_ms) {
            problems.add("kafka.fetch_max_wait_ms", "must be from 1 to 60,000");
        }
        check_codec(problems, "kafka.compression", &self.compression);
    }
}

fn check_codec(problems: &mut Problems<'_>, key: &str, codec: &str) {
    if !COMPRESSION_CODECS.contains(&codec) {
        problems.add(
            key,
            format!("`{codec}` is not one of {}", COMPRESSION_CODECS.join(", ")),
        );
    }
}

impl PostgresConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        check_url_scheme(
            problems,
            "postgres.url",
            self.url.expose(),
            &["postgres", "postgresql"],
        );
        at_least_one(
            problems,
            "postgres.max_connections",
            self.max_connections.into(),
        );
    }
}

impl RedisConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        check_url_scheme(
            problems,
            "redis.url",
            self.url.expose(),
            &["redis", "rediss"],
        );
    }
}

impl RabbitMqConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        check_url_scheme(
            problems,
            "rabbitmq.url",
            self.url.expose(),
            &["amqp", "amqps"],
        );
        if self.alerts_exchange.trim().is_empty() {
            problems.add("rabbitmq.alerts_exchange", "must not be empty");
        }
    }
}

impl AuthConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        let mut names = BTreeSet::new();
        for (index, key) in self.keys.iter().enumerate() {
            let at = format!("auth.keys[{index}]");
            if key.name.trim().is_empty() {
                problems.add(&at, "name must not be empty");
            } else if !names.insert(key.name.as_str()) {
                problems.add(&at, format!("name `{}` is used twice", key.name));
            }
            let is_sha256 = key.sha256.len() == 64
                && key
                    .sha256
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
            if !is_sha256 {
                problems.add(&at, "sha256 must be 64 lowercase hex digits");
            }
            if key.scopes.is_empty() {
                problems.add(&at, "scopes must name at least one of ingest, read, admin");
            }
        }
    }
}

impl LakeConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        if self.root.trim().is_empty() {
            problems.add("lake.root", "must not be empty");
        }
        if self.writer_group.trim().is_empty() {
            problems.add("lake.writer_group", "must not be empty");
        }
        at_least_one(
            problems,
            "lake.max_rows_per_file",
            self.max_rows_per_file.into(),
        );
        at_least_one(problems, "lake.row_group_rows", self.row_group_rows.into());
        at_least_one(problems, "lake.idle_flush_ms", self.idle_flush_ms);
        at_least_one(problems, "lake.max_chunk_age_ms", self.max_chunk_age_ms);
        let endpoint = self.s3_endpoint.trim();
        let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !is_url {
            problems.add(
                "lake.s3_endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL"),
            );
        }
        let key_id = !self.s3_access_key_id.trim().is_empty();
        let secret = !self.s3_secret_access_key.expose().is_empty();
        if key_id != secret {
            problems.add(
                if key_id {
                    "lake.s3_secret_access_key"
                } else {
                    "lake.s3_access_key_id"
                },
                "set both lake.s3_access_key_id and lake.s3_secret_access_key, or neither",
            );
        }
    }
}

impl IngestConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        at_least_one(
            problems,
            "ingest.max_body_bytes",
            self.max_body_bytes.into(),
        );
        at_least_one(
            problems,
            "ingest.max_batch_items",
            self.max_batch_items.into(),
        );
        if self.max_amount_minor < 1 {
            problems.add("ingest.max_amount_minor", "must be at least 1");
        }
        let is_currency_code =
            self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase());
        if !is_currency_code {
            problems.add(
                "ingest.currency",
                format!(
                    "`{}` is not a three-letter ISO 4217 code like EUR",
                    self.currency
                ),
            );
        }
        at_least_one(
            problems,
            "ingest.idempotency_horizon_ms",
            self.idempotency_horizon_ms,
        );
        at_least_one(
            problems,
            "ingest.rate_limit_per_second",
            self.rate_limit_per_second.into(),
        );
        at_least_one(
            problems,
            "ingest.rate_limit_burst",
            self.rate_limit_burst.into(),
        );
        at_least_one(
            problems,
            "ingest.producer_queue_max",
            self.producer_queue_max.into(),
        );
        at_least_one(
            problems,
            "ingest.produce_timeout_ms",
            self.produce_timeout_ms,
        );
        at_least_one(
            problems,
            "ingest.max_in_flight_requests",
            self.max_in_flight_requests.into(),
        );
    }
}

fn at_least_one(problems: &mut Problems<'_>, key: &str, value: u64) {
    if value == 0 {
        problems.add(key, "must be at least 1");
    }
}

/// The largest `serving.batch_cache_entries`.
const MAX_BATCH_CACHE_ENTRIES: u64 = 10_000_000;

impl ServingConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        if self.group.trim().is_empty() {
            problems.add("serving.group", "must not be empty");
        }
        for (pointer, reason) in rule_problems(&self.rules) {
            problems.add("serving.rules", format!("{pointer}: {reason}"));
        }
        if self.batch_cache_entries > MAX_BATCH_CACHE_ENTRIES {
            problems.add(
                "serving.batch_cache_entries",
                format!(
                    "must be at most {MAX_BATCH_CACHE_ENTRIES} (8 GB at about 820 bytes an \
                     entry)"
                ),
            );
        }
    }
}

impl SpeedConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        if self.group.trim().is_empty() {
            problems.add("speed.group", "must not be empty");
        }
        at_least_one(problems, "speed.increments_ttl_ms", self.increments_ttl_ms);
        at_least_one(
            problems,
            "speed.max_batch_records",
            self.max_batch_records.into(),
        );
        at_least_one(
            problems,
            "speed.watermark_refresh_ms",
            self.watermark_refresh_ms,
        );
        check_codec(
            problems,
            "speed.updates_compression",
            &self.updates_compression,
        );
    }

    /// The window plus the allowed lateness, in ms.
    pub fn retention_ms(&self) -> i64 {
        30 * 60 * 1000 + i64::try_from(self.allowed_lateness_ms).unwrap_or(i64::MAX / 2)
    }
}

impl BatchConfig {
    fn check(&self, problems: &mut Problems<'_>) {
        if self.schedule.split_whitespace().count() != 6 {
            problems.add(
                "batch.schedule",
                format!(
                    "`{}` is not a cron expression with six fields (sec min hour day month weekday)",
                    self.schedule
                ),
            );
        }
    }
}

fn check_url_scheme(problems: &mut Problems<'_>, key: &str, url: &str, schemes: &[&str]) {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|scheme| schemes.contains(&scheme)) {
        // The URL may hold a password: name the expected schemes, never echo the value.
        problems.add(
            key,
            format!("must be a URL starting with {}://", schemes.join("://, ")),
        );
    }
}

/// Keys nobody reads are mistakes (a typo in a variable name silently does nothing
/// otherwise), so they are problems too.
fn report_unknown_keys(figment: &Figment, problems: &mut Problems<'_>) {
    let Ok(root) = figment.extract::<Dict>() else {
        return;
    };
    let known = Settings::documentation();
    for (section, value) in &root {
        let fields: Vec<&FieldDoc> = known.iter().filter(|f| f.section == section).collect();
        if fields.is_empty() {
            problems.add(section, "unknown section");
            continue;
        }
        let Value::Dict(_, entries) = value else {
            problems.add(section, "must be a table of keys");
            continue;
        };
        for key in entries.keys() {
            if !fields.iter().any(|field| field.name == key) {
                let names: Vec<&str> = fields.iter().map(|field| field.name).collect();
                problems.add(
                    &format!("{section}.{key}"),
                    format!("unknown key; `{section}` has {}", names.join(", ")),
                );
            }
        }
    }
}
