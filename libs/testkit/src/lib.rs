//! Test support shared by every crate's tests. Never a dependency of production code.
//!
//! Tests talk to the real servers that `deploy/dev` starts and isolate themselves by
//! name ([`unique_name`]: their own topic, group, key prefix, database, queue). They poll
//! with a deadline ([`wait_until`]) instead of sleeping. [`process`] runs real programs
//! (a service binary, a private `redis-server`) and stops them with real signals;
//! [`service`] holds the checks every service binary must pass; [`s3`] points a lake at
//! the local S3 store.

pub mod amqp;
pub mod kafka;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod redis_keys;
pub mod s3;
pub mod service;
pub mod sse;

use std::future::Future;
use std::time::{Duration, Instant};

pub use process::{ChildProcess, PrivateRedis};

/// Runs the Python `script` with DuckDB (see [`duckdb_python`]) and `args`, and returns
/// what it printed as JSON; any failure fails the test with DuckDB's stderr.
pub fn duckdb_json(script: &str, args: &[&str]) -> serde_json::Value {
    let python = duckdb_python();
    assert!(
        python.exists(),
        "no Python with DuckDB at {}: run `deploy/dev up --servers-only` (it installs DuckDB \
         from PyPI into a venv), or set DUCKDB_PYTHON to a python that can `import duckdb`",
        python.display()
    );
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", python.display()));
    assert!(
        output.status.success(),
        "DuckDB failed with {} ({}):\n{}",
        python.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "DuckDB's answer is not JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The Python with DuckDB that `deploy/dev` installs, for tests that check the lake with
/// an independent reader: `DUCKDB_PYTHON` (set by `deploy/dev test`), else the venv in
/// the cache. Missing is a failure, not a skip.
pub fn duckdb_python() -> std::path::PathBuf {
    test_python()
}

/// The tests' Python, a venv in the cache that `deploy/dev up` fills from PyPI (DuckDB,
/// schemathesis): `DUCKDB_PYTHON` when set (`deploy/dev test` sets it), else
/// `~/.cache/fraud-platform/venv/bin/python`.
pub fn test_python() -> std::path::PathBuf {
    if let Some(python) = std::env::var_os("DUCKDB_PYTHON") {
        return std::path::PathBuf::from(python);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    cache.join("fraud-platform/venv/bin/python")
}

/// [`test_python`], checked to import `module` (e.g. `schemathesis`); a failure says how
/// to install it.
pub fn test_python_with(module: &str) -> std::path::PathBuf {
    let python = test_python();
    let imports = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        imports,
        "{} cannot `import {module}`: run `deploy/dev up --servers-only` (it installs the \
         tests' Python packages from PyPI into a venv)",
        python.display()
    );
    python
}

/// A name no other test (or earlier run) uses: `prefix-` and 12 random hex digits.
pub fn unique_name(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &random[..12])
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Polls `condition` every 50 ms until it holds; panics naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_for(deadline, what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Polls `attempt` every 50 ms until it yields a value; panics naming `what` after
/// `deadline`.
pub async fn poll_for<T, F, Fut>(deadline: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The platform's default configuration: the local servers `deploy/dev` starts.
pub fn local_settings() -> fraud_config::Settings {
    fraud_config::Settings::load(None).expect("the default configuration is valid")
}

/// `GET url`: the status and the body parsed as JSON (`Null` when it is not JSON), or
/// `None` when nothing answers.
pub async fn get_json(url: &str) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Some((status, body))
}

/// `GET url`: the status and the body as text, or `None` when nothing answers.
pub async fn get_text(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}
