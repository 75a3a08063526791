//! The whole platform of one test, from the real service binaries: [`Platform::start`]
//! gives the test its own database (migrated), topics, Redis key prefix, consumer
//! groups, alerts exchange, lake directory and API keys, and starts `ingest`,
//! `speed-layer` and `serving-api` as child processes configured through `FRAUD_…`
//! variables only; [`Platform::run_batch`] runs `batch-layer run --as-of T` on demand.
//!
//! The binaries are the workspace's debug build next to the test (`target/debug/`):
//! `cargo test --workspace` builds every binary first. A test run alone
//! (`cargo test -p platform-tests`) needs them built once:
//! `cargo build -p ingest -p speed-layer -p serving-api -p batch-layer`.
//! `PLATFORM_BIN_DIR` points elsewhere (e.g. `target/release`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fraud_config::Settings;

use crate::reference::{self, Event, LakeRow};
use fraud_testkit::amqp::Subscriber;
use fraud_testkit::sse::SseClient;
use fraud_testkit::{ChildProcess, free_port, local_settings, poll_for, unique_name, wait_until};
use serde_json::Value;

/// How long a service may take to answer `/readyz` with 200 (debug builds, 2 shared
/// cores).
const STARTUP: Duration = Duration::from_secs(90);

/// One running service.
pub struct Service {
    pub name: &'static str,
    pub base: String,
    pub process: ChildProcess,
}

/// What one `batch-layer run` did.
#[derive(Debug)]
pub struct BatchRun {
    /// The exit status (`Some(0)` published).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A platform of the test's own: namespaces on the local servers and the three
/// long-running services.
pub struct Platform {
    /// The namespaces (what every service is configured with).
    pub settings: Settings,
    /// The test's database.
    pub pool: sqlx::PgPool,
    pub ingest: Service,
    pub speed: Service,
    pub serving: Service,
    /// The lake's root (a directory of the test's own).
    pub lake: PathBuf,
    /// A key with scope `ingest` only, one with `read` only, one with `admin` only.
    pub ingest_key: String,
    pub read_key: String,
    pub admin_key: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// Whether [`Platform::stop`] removed everything (else dropping it does, e.g. when
    /// the test fails).
    removed: bool,
}

impl Platform {
    /// Creates the namespaces of `name` (made unique) and starts the services; returns
    /// once each answers `/readyz` with 200.
    pub async fn start(name: &str) -> Platform {
        Self::start_with(name, &[]).await
    }

    /// [`Platform::start`], with the variables `extra` set for every service too (e.g.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub async fn start_with(name: &str, extra: &[(&str, &str)]) -> Platform {
        let own = unique_name(name);
        let dir = std::env::temp_dir().join(&own);
        let lake = dir.join("lake");
        std::fs::create_dir_all(&lake).expect("create the lake directory");
        let mut settings = local_settings();
        settings.postgres.url =
            fraud_config::Secret::new(fraud_testkit::postgres::create_database(name).await);
        settings.kafka.transactions_topic = format!("{own}-transactions");
        settings.kafka.window_updates_topic = format!("{own}-updates");
        settings.redis.key_prefix = format!("{own}:");
        settings.lake.writer_group = format!("{own}-lake-writer");
        settings.speed.group = format!("{own}-speed");
        settings.serving.group = format!("{own}-serving");
        settings.rabbitmq.alerts_exchange = format!("{own}.alerts");
        let pool =
            fraud_postgres::lazy_pool(&settings.postgres, Duration::from_secs(10)).expect("a pool");
        fraud_postgres::migrate(&pool)
            .await
            .expect("migrate the test database");
        fraud_kafka::ensure_topic(&settings.kafka, &settings.kafka.transactions_topic, 4, 1)
            .await
            .expect("create the transactions topic");
        fraud_kafka::ensure_topic(&settings.kafka, &settings.kafka.window_updates_topic, 2, 1)
            .await
            .expect("create the updates topic");

        let ingest_key = format!("{own}-ingest");
        let read_key = format!("{own}-read");
        let admin_key = format!("{own}-admin");
        let keys = [
            (&ingest_key, "ingest"),
            (&read_key, "read"),
            (&admin_key, "admin"),
        ]
        .iter()
        .map(|(key, scope)| {
            format!(
                "{{name=\"{scope}\", sha256=\"{}\", scopes=[\"{scope}\"]}}",
                fraud_service::auth::key_sha256(key)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
        let env: Vec<(String, String)> = [
            ("FRAUD_KAFKA__BROKERS", settings.kafka.brokers.clone()),
            (
                "FRAUD_KAFKA__TRANSACTIONS_TOPIC",
                settings.kafka.transactions_topic.clone(),
            ),
            (
                "FRAUD_KAFKA__WINDOW_UPDATES_TOPIC",
                settings.kafka.window_updates_topic.clone(),
            ),
            (
                "FRAUD_POSTGRES__URL",
                settings.postgres.url.expose().clone(),
            ),
            ("FRAUD_POSTGRES__MAX_CONNECTIONS", "4".to_owned()),
            ("FRAUD_REDIS__URL", settings.redis.url.expose().clone()),
            ("FRAUD_REDIS__KEY_PREFIX", settings.redis.key_prefix.clone()),
            (
                "FRAUD_RABBITMQ__URL",
                settings.rabbitmq.url.expose().clone(),
            ),
            (
                "FRAUD_RABBITMQ__ALERTS_EXCHANGE",
                settings.rabbitmq.alerts_exchange.clone(),
            ),
            ("FRAUD_AUTH__KEYS", format!("[{keys}]")),
            ("FRAUD_LAKE__ROOT", lake.display().to_string()),
            (
                "FRAUD_LAKE__WRITER_GROUP",
                settings.lake.writer_group.clone(),
            ),
            // A test waits for the lake: idle partitions flush within a second.
            ("FRAUD_LAKE__IDLE_FLUSH_MS", "500".to_owned()),
            ("FRAUD_LAKE__MAX_CHUNK_AGE_MS", "2000".to_owned()),
            ("FRAUD_SPEED__GROUP", settings.speed.group.clone()),
            ("FRAUD_SPEED__WATERMARK_REFRESH_MS", "1000".to_owned()),
            ("FRAUD_SERVING__GROUP", settings.serving.group.clone()),
            // Replays post thousands of events at once.
            ("FRAUD_INGEST__RATE_LIMIT_PER_SECOND", "100000".to_owned()),
            ("FRAUD_INGEST__RATE_LIMIT_BURST", "100000".to_owned()),
            ("FRAUD_TELEMETRY__LOG_FILTER", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .chain(
            extra
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
        .collect();

        let ingest = start_service("ingest", "FRAUD_INGEST__LISTEN", &env).await;
        let speed = start_service("speed-layer", "FRAUD_SPEED__LISTEN", &env).await;
        let serving = start_service("serving-api", "FRAUD_SERVING__LISTEN", &env).await;
        Platform {
            settings,
            pool,
            ingest,
            speed,
            serving,
            lake,
            ingest_key,
            read_key,
            admin_key,
            dir,
            env,
            removed: false,
        }
    }

    /// `POST /v1/transactions` of `body` (an object or an array) with the ingest key:
    /// the status and the JSON answer.
    pub async fn post_transactions(&self, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/transactions", self.ingest.base))
            .bearer_auth(&self.ingest_key)
            .json(body)
            .send()
            .await
            .expect("ingest answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` of the serving API with the read key: the status and the JSON answer.
    pub async fn read(&self, path: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.serving.base))
            .bearer_auth(&self.read_key)
            .send()
            .await
            .expect("the serving API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Reads `/risk` and `/daily?from=&to=` (UTC dates) of `customer` and checks them
    /// against `events` at each answer's `asOf` ([`crate::reference::check_risk`],
    /// [`crate::reference::check_daily`]), and that both name the batch watermark
    /// `watermark` (`None`: no batch run yet); returns the risk answer.
    pub async fn check_customer(
        &self,
        customer: &str,
        events: &[Event],
        watermark: Option<i64>,
        (from, to): (&str, &str),
    ) -> Value {
        let watermark = watermark.map_or(Value::Null, |ms| Value::from(reference::instant(ms)));
        // The serving API learns of a batch run an instant after it is published, and
        // answers with the previous run, whole, until then.
        let path = format!("/v1/customers/{customer}/risk");
        let risk = poll_for(
            Duration::from_secs(10),
            &format!("{customer}'s risk with the batch watermark {watermark}"),
            || async {
                let (status, risk) = self.read(&path).await;
                assert_eq!(status, 200, "{risk}");
                (risk["freshness"]["batchWatermark"] == watermark).then_some(risk)
            },
        )
        .await;
        reference::check_risk(&risk, events, customer);
        let (status, daily) = self
            .read(&format!(
                "/v1/customers/{customer}/daily?from={from}&to={to}"
            ))
            .await;
        assert_eq!(status, 200, "{daily}");
        assert_eq!(daily["freshness"]["batchWatermark"], watermark, "{daily}");
        reference::check_daily(&daily, events, customer);
        risk
    }

    /// Every alert of the history (`GET /v1/alerts`, every page), oldest first.
    pub async fn alert_history(&self) -> Vec<Value> {
        let mut alerts = Vec::new();
        let mut path = "/v1/alerts?limit=500".to_owned();
        loop {
            let (status, page) = self.read(&path).await;
            assert_eq!(status, 200, "{page}");
            alerts.extend(page["alerts"].as_array().expect("alerts").iter().cloned());
            match page["nextCursor"].as_str() {
                Some(cursor) => path = format!("/v1/alerts?limit=500&cursor={cursor}"),
                None => return alerts,
            }
        }
    }

    /// A queue of the test's own bound to the platform's alerts exchange with `pattern`.
    pub async fn subscribe(&self, pattern: &str) -> Subscriber {
        Subscriber::bind(&self.settings.rabbitmq.alerts_exchange, pattern).await
    }

    /// The serving API's alert stream with the read key and `query`.
    pub async fn alert_stream(&self, query: &str) -> SseClient {
        SseClient::connect(&self.serving.base, &self.read_key, query, None).await
    }

    /// Runs `batch-layer run --as-of as_of` (UTC ms) against the platform's namespaces.
    pub async fn run_batch(&self, as_of: i64) -> BatchRun {
        let as_of = fraud_domain::EventTime::from_millis(as_of)
            .expect("a valid instant")
            .to_rfc3339();
        let mut command = self.command("batch-layer");
        command.args(["run", "--as-of", &as_of]);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the batch run's thread")
            .expect("run batch-layer");
        BatchRun {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Records in the transactions topic (its high watermarks' sum).
    pub async fn transactions_in_kafka(&self) -> i64 {
        topic_records(&self.settings, &self.settings.kafka.transactions_topic).await
    }

    /// Waits until the speed layer has committed every transaction and the serving API
    /// every window update published meanwhile: every figure and alert of what was
    /// posted so far is in place.
    pub async fn caught_up(&self, deadline: Duration) {
        let kafka = &self.settings.kafka;
        for (group, topic, what) in [
            (
                &self.settings.speed.group,
                &kafka.transactions_topic,
                "the speed layer applied every transaction",
            ),
            (
                &self.settings.serving.group,
                &kafka.window_updates_topic,
                "the serving API evaluated every window update",
            ),
        ] {
            wait_until(deadline, what, || {
                fraud_testkit::kafka::group_caught_up(kafka, group, topic)
            })
            .await;
        }
    }

    /// Waits until the lake writer has committed every record of the topic: it commits
    /// a partition's offsets only once its files are written (for lag monitoring; it
    /// recovers its position from the lake itself).
    pub async fn lake_complete(&self, deadline: Duration) {
        let kafka = &self.settings.kafka;
        wait_until(deadline, "the lake writer to write every record", || {
            fraud_testkit::kafka::group_caught_up(
                kafka,
                &self.settings.lake.writer_group,
                &kafka.transactions_topic,
            )
        })
        .await;
    }

    /// Every row of the lake, read by DuckDB (an independent reader).
    pub fn lake_rows(&self) -> Vec<LakeRow> {
        const SCRIPT: &str = r#"
import duckdb, json, sys
rows = duckdb.connect().execute(f"""
    SELECT transaction_id, customer_id, vendor_id, amount_minor, epoch_ms(event_time)
    FROM read_parquet('{sys.argv[1]}/transactions/**/*.parquet', hive_partitioning = true)
    ORDER BY ALL""").fetchall()
print(json.dumps(rows))
"#;
        let rows = fraud_testkit::duckdb_json(SCRIPT, &[&self.lake.to_string_lossy()]);
        serde_json::from_value(rows).expect("rows of five columns")
    }

    /// Stops the services (SIGTERM; each must exit cleanly) and removes every
    /// namespace: topics, groups, Redis keys, exchange, database and directory.
    pub async fn stop(mut self) {
        let mut unclean = Vec::new();
        for service in [&mut self.serving, &mut self.speed, &mut self.ingest] {
            service.process.signal(libc::SIGTERM);
            let status = service.process.wait_for_exit(Duration::from_secs(40));
            if !status.success() {
                unclean.push(format!(
                    "{} exited with {status}:\n{}",
                    service.name,
                    service.process.output()
                ));
            }
        }
        self.pool.close().await;
        remove_everything(&self.settings, &self.dir).await;
        self.removed = true;
        assert!(unclean.is_empty(), "{}", unclean.join("\n"));
    }

    /// A command running the binary `name` with the platform's variables (e.g.
    /// `batch-layer run` that a test kills midway).
    pub fn command(&self, name: &str) -> Command {
        service_command(name, &self.env)
    }

    /// Kills the service `name` (`ingest`, `speed-layer` or `serving-api`) with SIGKILL
    /// and starts it again on the same port with the same variables; returns once it is
    /// started, not ready (a fault test measures how long that takes).
    pub fn kill_and_restart(&mut self, name: &str) {
        let variable = match name {
            "ingest" => "FRAUD_INGEST__LISTEN",
            "speed-layer" => "FRAUD_SPEED__LISTEN",
            "serving-api" => "FRAUD_SERVING__LISTEN",
            other => panic!("no service {other}"),
        };
        let mut command = self.command(name);
        let service = match name {
            "ingest" => &mut self.ingest,
            "speed-layer" => &mut self.speed,
            _ => &mut self.serving,
        };
        command.env(variable, service.base.trim_start_matches("http://"));
        service.process.signal(libc::SIGKILL);
        service.process.wait_for_exit(Duration::from_secs(10));
        service.process = ChildProcess::spawn(service.name, command);
    }
}

impl Drop for Platform {
    /// A platform not stopped (a failed test): its services are killed and its
    /// namespaces removed all the same, on a thread of its own (this may run inside the
    /// test's runtime, which cannot block).
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        for service in [&mut self.serving, &mut self.speed, &mut self.ingest] {
            if service.process.is_running() {
                service.process.signal(libc::SIGKILL);
                service.process.wait_for_exit(Duration::from_secs(10));
            }
        }
        let settings = self.settings.clone();
        let dir = self.dir.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove_everything(&settings, &dir));
            }
        })
        .join();
    }
}

/// Deletes the topics, groups, Redis keys, exchange and database of `settings`, and
/// the directory `dir`.
async fn remove_everything(settings: &Settings, dir: &std::path::Path) {
    remove_namespaces(settings).await;
    fraud_testkit::postgres::drop_database(settings.postgres.url.expose()).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Deletes the topics, groups, Redis keys and exchange of `settings`.
async fn remove_namespaces(settings: &Settings) {
    for topic in [
        &settings.kafka.transactions_topic,
        &settings.kafka.window_updates_topic,
    ] {
        let _ = fraud_kafka::delete_topic(&settings.kafka, topic).await;
    }
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        fraud_kafka::client_config(&settings.kafka)
            .create()
            .expect("an admin client");
    let groups = [
        settings.lake.writer_group.as_str(),
        settings.speed.group.as_str(),
        settings.serving.group.as_str(),
    ];
    let _ = admin
        .delete_groups(&groups, &rdkafka::admin::AdminOptions::new())
        .await;
    let _ = fraud_testkit::redis_keys::delete_prefix(
        settings.redis.url.expose(),
        &settings.redis.key_prefix,
    )
    .await;
    if let Ok(connection) = lapin::Connection::connect(
        settings.rabbitmq.url.expose(),
        lapin::ConnectionProperties::default(),
    )
    .await
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = channel
            .exchange_delete(
                settings.rabbitmq.alerts_exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Starts the service binary `name` listening on a free port (through
/// `listen_variable`) and waits for its `/readyz` to answer 200.
async fn start_service(
    name: &'static str,
    listen_variable: &str,
    env: &[(String, String)],
) -> Service {
    let port = free_port();
    let mut command = service_command(name, env);
    command.env(listen_variable, format!("127.0.0.1:{port}"));
    let mut process = ChildProcess::spawn(name, command);
    let base = format!("http://127.0.0.1:{port}");
    let ready = format!("{base}/readyz");
    let started = std::time::Instant::now();
    loop {
        assert!(
            process.is_running(),
            "{name} exited during start-up:\n{}",
            process.output()
        );
        if matches!(fraud_testkit::get_json(&ready).await, Some((200, _))) {
            break;
        }
        assert!(
            started.elapsed() < STARTUP,
            "{name} was not ready within {STARTUP:?}:\n{}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Service {
        name,
        base,
        process,
    }
}

/// The binary `name` with exactly `env` as its `FRAUD_…` variables (a developer's own
/// are removed, so only what the test sets counts).
fn service_command(name: &str, env: &[(String, String)]) -> Command {
    let mut command = Command::new(service_binary(name));
    for (variable, _) in std::env::vars() {
        if variable.starts_with("FRAUD_") || variable == "RUST_LOG" {
            command.env_remove(variable);
        }
    }
    command.envs(env.iter().map(|(name, value)| (name, value)));
    command
}

/// The service binary `name`: in `PLATFORM_BIN_DIR`, else in the build directory of
/// this test (`target/debug/`, the parent of the test's `deps/`). Missing fails the test
/// with the command that builds it.
pub fn service_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("PLATFORM_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("locate the test binary");
            let dir = exe.parent().expect("a directory").to_path_buf();
            if dir.ends_with("deps") {
                dir.parent().expect("the build directory").to_path_buf()
            } else {
                dir
            }
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "no {name} binary at {}: build the services first (`cargo build -p ingest -p \
         speed-layer -p serving-api -p batch-layer`; `cargo test --workspace` builds them), \
         or set PLATFORM_BIN_DIR",
        path.display()
    );
    path
}

/// The sum of `topic`'s high watermarks.
async fn topic_records(settings: &Settings, topic: &str) -> i64 {
    let kafka = settings.kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .create()
            .expect("a consumer");
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .expect("the topic's metadata");
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|partition| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition.id(), timeout)
                    .expect("watermarks");
                high - low
            })
            .sum()
    })
    .await
    .expect("read the watermarks")
}
