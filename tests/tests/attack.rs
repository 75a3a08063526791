//! Attack and overload, against the real `ingest` and `serving-api` binaries, each in
//! namespaces of its own (database, topics, Redis prefix, groups, exchange, API keys):
//!
//! - schemathesis runs every check against both OpenAPI documents, with a key of every
//!   scope and with bad keys: no 5xx, every response as documented, every invalid
//!   request rejected (`tests/schemathesis.toml` lists the few rules a schema cannot
//!   express, and why);
//! - the scope matrix of both APIs in one table;
//! - ingest far beyond its rate: only 202, 429 or 503 (with `Retry-After`), its memory
//!   bounded, and every accepted transaction in Kafka exactly once.
//!
//! The binaries are the workspace's debug build next to this test (`cargo test
//! --workspace` builds them; alone: `cargo build -p ingest -p serving-api` first).
//! `ATTACK_EXAMPLES` sets schemathesis's examples per operation (default 25) and
//! `ATTACK_SECONDS` its time per run (default 30).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fraud_config::Settings;
use fraud_service::auth::key_sha256;
use fraud_testkit::service::Binary;
use fraud_testkit::{ChildProcess, get_json, local_settings, unique_name, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

/// One key per scope, one with every scope (the "local key" of `deploy/dev`), and keys
/// that are not valid.
const ALL_KEY: &str = "attack-key-all";
const INGEST_KEY: &str = "attack-key-ingest";
const READ_KEY: &str = "attack-key-read";
const ADMIN_KEY: &str = "attack-key-admin";
/// Not keys: an unknown one, and a prefix of a valid one.
const BAD_KEYS: [&str; 2] = ["not-a-key", "attack-key-al"];

const STARTUP: Duration = Duration::from_secs(60);

/// A binary of the workspace's build, next to this test's executable
/// (`target/debug/deps/attack-…` → `target/debug/NAME`).
fn workspace_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test's path");
    let path: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p {name}`)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn keys_toml(keys: &[(&str, &[&str])]) -> String {
    let entries: Vec<String> = keys
        .iter()
        .map(|(key, scopes)| {
            let scopes: Vec<String> = scopes.iter().map(|scope| format!("\"{scope}\"")).collect();
            format!(
                "{{ name = \"{key}\", sha256 = \"{}\", scopes = [{}] }}",
                key_sha256(key),
                scopes.join(", ")
            )
        })
        .collect();
    format!("[auth]\nkeys = [{}]\n", entries.join(", "))
}

fn scoped_keys() -> String {
    keys_toml(&[
        (ALL_KEY, &["ingest", "read", "admin"]),
        (INGEST_KEY, &["ingest"]),
        (READ_KEY, &["read"]),
        (ADMIN_KEY, &["admin"]),
    ])
}

/// The namespaces of one test on the local servers.
struct Namespaces {
    settings: Settings,
    own: String,
    /// Whether `settings.postgres.url` is a database of the test's own.
    database: bool,
}

impl Namespaces {
    /// Topics (and, with `database`, a migrated database) of the test's own.
    async fn create(name: &str, database: bool) -> Namespaces {
        let mut settings = local_settings();
        let own = unique_name(name);
        settings.kafka.transactions_topic = own.clone();
        settings.kafka.window_updates_topic = format!("{own}-updates");
        if database {
            let url = fraud_testkit::postgres::create_database(name).await;
            settings.postgres.url = fraud_config::Secret::new(url);
            let pool = fraud_postgres::lazy_pool(&settings.postgres, Duration::from_secs(5))
                .expect("a pool");
            fraud_postgres::migrate(&pool)
                .await
                .expect("migrate the test database");
            pool.close().await;
        }
        for topic in [
            &settings.kafka.transactions_topic,
            &settings.kafka.window_updates_topic,
        ] {
            fraud_kafka::ensure_topic(&settings.kafka, topic, 3, 1)
                .await
                .expect("create a topic");
        }
        Namespaces {
            settings,
            own,
            database,
        }
    }

    /// The `FRAUD_…` variables that point a binary at these namespaces.
    fn env(&self) -> Vec<(String, String)> {
        let own = &self.own;
        let kafka = &self.settings.kafka;
        let mut env = vec![
            (
                "FRAUD_KAFKA__TRANSACTIONS_TOPIC".to_owned(),
                kafka.transactions_topic.clone(),
            ),
            (
                "FRAUD_KAFKA__WINDOW_UPDATES_TOPIC".to_owned(),
                kafka.window_updates_topic.clone(),
            ),
            (
                "FRAUD_RABBITMQ__ALERTS_EXCHANGE".to_owned(),
                format!("{own}.alerts"),
            ),
        ];
        if self.database {
            let url = self.settings.postgres.url.expose().clone();
            env.push(("FRAUD_POSTGRES__URL".to_owned(), url));
        }
        env
    }

    /// Starts `binary` (section `section`) on these namespaces with `toml` and `env`;
    /// waits until it is ready.
    async fn start(
        &self,
        binary: &str,
        section: &str,
        toml: &str,
        env: &[(&str, &str)],
    ) -> (ChildProcess, String) {
        let path = workspace_binary(binary);
        let mut variables = self.env();
        variables.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let pairs: Vec<(&str, &str)> = variables
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (process, base) = Binary {
            path: &path,
            args: &[],
            section,
        }
        .start(toml, &pairs);
        wait_until(STARTUP, &format!("{binary} to be ready"), || {
            let url = format!("{base}/readyz");
            async move { matches!(get_json(&url).await, Some((200, _))) }
        })
        .await;
        (process, base)
    }

    async fn remove(self) {
        for topic in [
            &self.settings.kafka.transactions_topic,
            &self.settings.kafka.window_updates_topic,
        ] {
            let _ = fraud_kafka::delete_topic(&self.settings.kafka, topic).await;
        }
        if self.database {
            fraud_testkit::postgres::drop_database(self.settings.postgres.url.expose()).await;
        }
    }
}

/// Both APIs on namespaces of their own, with a key of each scope.
struct Apis {
    namespaces: Namespaces,
    ingest: ChildProcess,
    ingest_url: String,
    serving: ChildProcess,
    serving_url: String,
}

impl Apis {
    async fn start(name: &str) -> Apis {
        let namespaces = Namespaces::create(name, true).await;
        let group = format!("{}-serving", namespaces.own);
        let keys = scoped_keys();
        // Rate limits far above what schemathesis sends: 429 is checked under overload.
        let (ingest, ingest_url) = namespaces
            .start(
                "ingest",
                "ingest",
                &keys,
                &[
                    ("FRAUD_INGEST__RATE_LIMIT_PER_SECOND", "100000"),
                    ("FRAUD_INGEST__RATE_LIMIT_BURST", "100000"),
                ],
            )
            .await;
        let (serving, serving_url) = namespaces
            .start(
                "serving-api",
                "serving",
                &keys,
                &[("FRAUD_SERVING__GROUP", &group)],
            )
            .await;
        Apis {
            namespaces,
            ingest,
            ingest_url,
            serving,
            serving_url,
        }
    }

    /// Stops both binaries: each must still be running (nothing crashed it).
    async fn stop(mut self) {
        for (name, process) in [
            ("ingest", &mut self.ingest),
            ("serving-api", &mut self.serving),
        ] {
            assert!(
                process.is_running(),
                "{name} died under attack:\n{}",
                process.output()
            );
            assert!(
                !process.output().contains("panicked"),
                "{name} panicked:\n{}",
                process.output()
            );
            process.signal(libc::SIGTERM);
            process.wait_for_exit(Duration::from_secs(20));
        }
        self.namespaces.remove().await;
    }
}

// ---------------------------------------------------------------------------------------
// schemathesis
// ---------------------------------------------------------------------------------------

/// One schemathesis run: which API, with which key, and what may be skipped.
struct Run<'a> {
    api: &'a str,
    base: &'a str,
    key: &'a str,
    /// Checks not run: with a key that cannot do the operations, a schema-valid request
    /// is rightly refused (401/403), so `positive_data_acceptance` cannot hold.
    exclude_checks: &'a [&'a str],
    examples: u32,
    max_seconds: u32,
}

impl Run<'_> {
    /// Runs schemathesis; `Err` holds its list of failures.
    fn run(&self) -> Result<Duration, String> {
        let python = fraud_testkit::test_python_with("schemathesis");
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml");
        let reports = std::env::temp_dir().join(unique_name("schemathesis"));
        let mut command = Command::new(python);
        command
            .args(["-m", "schemathesis.cli", "--config-file", config, "run"])
            .arg(format!("{}/openapi.json", self.base))
            .args(["--url", self.base])
            .args(["--checks", "all"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", &self.examples.to_string()])
            .args(["--max-time", &self.max_seconds.to_string()])
            .args(["--seed", "20261125"])
            // One worker: hypothesis's source inspection is not thread-safe on every
            // Python ("AST constructor recursion depth mismatch").
            .args(["--workers", "1"])
            .args(["--request-timeout", "10"])
            .args(["--header", &format!("Authorization: Bearer {}", self.key)])
            .arg("--no-color")
            .arg("--report-dir")
            .arg(&reports)
            .current_dir(std::env::temp_dir());
        if !self.exclude_checks.is_empty() {
            command.args(["--exclude-checks", &self.exclude_checks.join(",")]);
        }
        let started = Instant::now();
        let output = command.output().expect("run schemathesis");
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!(
            "schemathesis on {} with key {:?}: {} in {elapsed:.1?}",
            self.api, self.key, output.status
        );
        if output.status.success() {
            return Ok(elapsed);
        }
        // The FAILURES section (to SUMMARY), else everything it printed.
        let failures = stdout
            .find("FAILURES")
            .map(|start| {
                let end = stdout[start..]
                    .find("SUMMARY")
                    .map_or(stdout.len(), |end| start + end);
                stdout[start..end].to_owned()
            })
            .unwrap_or_else(|| format!("{stdout}\n{stderr}"))
            .lines()
            .map(|line| match line.char_indices().nth(800) {
                Some((cut, _)) => format!("{} …", &line[..cut]),
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        Err(format!(
            "schemathesis on {} with key {:?} ({}):\n{failures}",
            self.api, self.key, output.status
        ))
    }
}

/// `name` from the environment as a positive number, else `default`.
fn setting(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_either_api_with_any_key() {
    let apis = Apis::start("attack-st").await;
    // Examples per operation, and seconds per run with a key that may do everything (a
    // third of that with the others, which only see refusals).
    let examples = setting("ATTACK_EXAMPLES", 25);
    let seconds = setting("ATTACK_SECONDS", 30);
    let refused: &[&str] = &["positive_data_acceptance"];
    let mut runs = Vec::new();
    for (api, base, wrong_scope) in [
        ("ingest", apis.ingest_url.as_str(), READ_KEY),
        ("serving-api", apis.serving_url.as_str(), INGEST_KEY),
    ] {
        runs.push(Run {
            api,
            base,
            key: ALL_KEY,
            exclude_checks: &[],
            examples,
            max_seconds: seconds,
        });
        for key in [wrong_scope].into_iter().chain(BAD_KEYS) {
            runs.push(Run {
                api,
                base,
                key,
                exclude_checks: refused,
                examples: examples / 5 + 1,
                max_seconds: seconds / 3 + 1,
            });
        }
    }
    // Blocking runs, one after another, on this worker while the other serves.
    let failures: Vec<String> =
        tokio::task::block_in_place(|| runs.iter().filter_map(|run| run.run().err()).collect());
    apis.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The scope matrix
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_opens_exactly_its_operations_across_both_apis() {
    let apis = Apis::start("attack-scopes").await;
    let client = reqwest::Client::new();
    let transaction = json!({
        "customerId": "scope-c", "vendorId": "v", "transactionSum": "1.00",
        "ts": "2026-01-01T00:00:00Z"
    });
    // Every operation of both APIs and the scope it needs.
    let (ingest, serving) = (apis.ingest_url.as_str(), apis.serving_url.as_str());
    let daily = "/v1/customers/scope-c/daily?from=2026-01-01&to=2026-01-02";
    let operations: [(Method, &str, &str, Option<Value>, &str); 7] = [
        (
            Method::POST,
            ingest,
            "/v1/transactions",
            Some(transaction),
            "ingest",
        ),
        (
            Method::GET,
            serving,
            "/v1/customers/scope-c/risk",
            None,
            "read",
        ),
        (Method::GET, serving, daily, None, "read"),
        (Method::GET, serving, "/v1/alerts", None, "read"),
        (
            Method::GET,
            serving,
            "/v1/alerts/stream?lastEventId=0",
            None,
            "read",
        ),
        (Method::GET, serving, "/v1/rules", None, "admin"),
        (
            Method::PUT,
            serving,
            "/v1/rules",
            Some(json!({ "rules": [] })),
            "admin",
        ),
    ];
    let keys: [(Option<&str>, &[&str]); 6] = [
        (None, &[]),
        (Some("not-a-key"), &[]),
        (Some(INGEST_KEY), &["ingest"]),
        (Some(READ_KEY), &["read"]),
        (Some(ADMIN_KEY), &["admin"]),
        (Some(ALL_KEY), &["ingest", "read", "admin"]),
    ];
    let mut wrong = Vec::new();
    for (key, scopes) in keys {
        for (method, base, path, body, scope) in &operations {
            let name = format!("{method} {path}");
            let mut request = client.request(method.clone(), format!("{base}{path}"));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            if *method == Method::PUT {
                // The ETag of the configured defaults: the first PUT that passes the
                // scope check stores version 1; later ones get 412, still past it.
                request = request.header("if-match", "\"0\"");
            }
            let response = request.send().await.expect("an answer");
            let status = response.status().as_u16();
            let expected: &[u16] = match (key, scopes.contains(scope)) {
                (None, _) => &[401],
                (Some(_), _) if scopes.is_empty() => &[401],
                (Some(_), false) => &[403],
                (Some(_), true) if *method == Method::PUT => &[200, 412],
                (Some(_), true) if *method == Method::POST => &[202],
                (Some(_), true) => &[200],
            };
            if !expected.contains(&status) {
                wrong.push(format!(
                    "{name} with {key:?}: {status}, expected {expected:?}"
                ));
            }
        }
    }
    apis.stop().await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Overload
// ---------------------------------------------------------------------------------------

/// What one request of the overload got.
#[derive(Default)]
struct Outcomes {
    accepted: HashSet<String>,
    /// Ids of requests answered 503: produced or not (a retry would be a replay).
    unavailable: HashSet<String>,
    rate_limited: HashSet<String>,
    statuses: HashMap<u16, u64>,
    wrong: Vec<String>,
}

/// The resident set of `pid` in KiB (0 when it cannot be read).
fn rss_kib(pid: u32) -> u64 {
    fraud_testkit::process::resident_bytes(pid).map_or(0, |bytes| bytes / 1024)
}

/// The rate each key may sustain (requests per second) and the producer's queue: small,
/// so that the load below is many times what ingest may take, and both refusals happen.
const RATE_PER_KEY: u32 = 40;
const KEYS: usize = 4;
const QUEUE_MAX: u32 = 20;
const CLIENTS: usize = 48;
const ITEMS: usize = 5;
const LOAD: Duration = Duration::from_secs(8);
/// Far above an idle ingest (about 40 MiB in a debug build): an unbounded queue of
/// refused work would cross it.
const RSS_LIMIT_KIB: u64 = 384 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_429_or_503_and_nothing_accepted_is_lost() {
    let namespaces = Namespaces::create("attack-overload", false).await;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("attack-overload-{i}")).collect();
    let key_refs: Vec<(&str, &[&str])> = keys
        .iter()
        .map(|key| (key.as_str(), &["ingest"][..]))
        .collect();
    let rate = RATE_PER_KEY.to_string();
    let queue = QUEUE_MAX.to_string();
    let (mut ingest, base) = namespaces
        .start(
            "ingest",
            "ingest",
            &keys_toml(&key_refs),
            &[
                ("FRAUD_INGEST__RATE_LIMIT_PER_SECOND", &rate),
                ("FRAUD_INGEST__RATE_LIMIT_BURST", &rate),
                ("FRAUD_INGEST__PRODUCER_QUEUE_MAX", &queue),
            ],
        )
        .await;

    let outcomes = Arc::new(std::sync::Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CLIENTS {
        let (client, base, key) = (client.clone(), base.clone(), keys[worker % KEYS].clone());
        let (outcomes, stop, sent) = (outcomes.clone(), stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let ids: Vec<String> = (0..ITEMS)
                    .map(|item| format!("ov-{worker}-{round}-{item}"))
                    .collect();
                let body: Vec<Value> = ids
                    .iter()
                    .map(|id| {
                        json!({"transactionId": id, "customerId": format!("c{worker}"),
                               "vendorId": "v", "transactionSum": "1.00",
                               "ts": "2026-01-01T00:00:00Z"})
                    })
                    .collect();
                sent.fetch_add(1, Ordering::Relaxed);
                let response = client
                    .post(format!("{base}/v1/transactions"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                let mut outcomes = outcomes.lock().unwrap();
                let response = match response {
                    Ok(response) => response,
                    Err(error) => {
                        outcomes.wrong.push(format!("no answer: {error}"));
                        continue;
                    }
                };
                let status = response.status().as_u16();
                *outcomes.statuses.entry(status).or_default() += 1;
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok());
                match status {
                    202 => outcomes.accepted.extend(ids),
                    429 | 503 if retry_after.is_some_and(|seconds| seconds >= 1) => {
                        let set = if status == 429 {
                            &mut outcomes.rate_limited
                        } else {
                            &mut outcomes.unavailable
                        };
                        set.extend(ids);
                    }
                    _ => outcomes.wrong.push(format!(
                        "{status} (Retry-After {retry_after:?}) for {}",
                        ids[0]
                    )),
                }
            }
        }));
    }
    let mut peak_rss = 0;
    while started.elapsed() < LOAD {
        peak_rss = peak_rss.max(rss_kib(ingest.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a client");
    }
    let elapsed = started.elapsed();
    peak_rss = peak_rss.max(rss_kib(ingest.pid()));
    assert!(ingest.is_running(), "ingest died:\n{}", ingest.output());

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let requests = sent.load(Ordering::Relaxed);
    let sustainable = f64::from(RATE_PER_KEY) * KEYS as f64 * elapsed.as_secs_f64();
    eprintln!(
        "overload: {requests} requests in {elapsed:.1?} (sustainable {sustainable:.0}), \
         statuses {:?}, peak RSS {} MiB",
        outcomes.statuses,
        peak_rss / 1024
    );
    assert!(
        outcomes.wrong.is_empty(),
        "answers other than 202, or 429/503 with Retry-After:\n{}",
        outcomes.wrong.join("\n")
    );
    assert!(
        requests as f64 >= 2.0 * sustainable,
        "the load ({requests} requests) was not twice the sustainable rate ({sustainable:.0})"
    );
    assert!(
        outcomes.statuses.get(&429).is_some_and(|count| *count > 0),
        "nothing was rate limited: {:?}",
        outcomes.statuses
    );
    assert!(!outcomes.accepted.is_empty(), "nothing was accepted");
    assert!(
        peak_rss < RSS_LIMIT_KIB,
        "ingest's RSS reached {} MiB (limit {} MiB)",
        peak_rss / 1024,
        RSS_LIMIT_KIB / 1024
    );

    // Every accepted transaction is in Kafka exactly once; nothing rate-limited is.
    let kafka = namespaces.settings.kafka.clone();
    let topic = namespaces.settings.kafka.transactions_topic.clone();
    let records =
        tokio::task::spawn_blocking(move || fraud_testkit::kafka::read_all(&kafka, &topic))
            .await
            .expect("read the topic");
    let mut produced: HashMap<String, u32> = HashMap::new();
    for record in &records {
        let event = fraud_events::decode(
            record.header(fraud_events::SCHEMA_VERSION_HEADER),
            &record.value,
        )
        .expect("a transaction record");
        *produced
            .entry(event.transaction_id.as_str().to_owned())
            .or_default() += 1;
    }
    let lost: Vec<&String> = outcomes
        .accepted
        .iter()
        .filter(|id| !produced.contains_key(*id))
        .collect();
    let twice: Vec<(&String, &u32)> = produced.iter().filter(|(_, count)| **count > 1).collect();
    let unexplained: Vec<&String> = produced
        .keys()
        .filter(|id| !outcomes.accepted.contains(*id) && !outcomes.unavailable.contains(*id))
        .collect();
    ingest.signal(libc::SIGTERM);
    ingest.wait_for_exit(Duration::from_secs(20));
    namespaces.remove().await;
    assert!(lost.is_empty(), "accepted but not in Kafka: {lost:?}");
    assert!(twice.is_empty(), "in Kafka more than once: {twice:?}");
    assert!(
        unexplained.is_empty(),
        "in Kafka though refused with 429 (or never sent): {unexplained:?}"
    );
}
