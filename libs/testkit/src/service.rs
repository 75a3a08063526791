//! Checks every service binary must pass, run against the real binary.
//!
//! Each service's `tests/binary.rs` calls these with its own binary
//! (`env!("CARGO_BIN_EXE_…")`), so the four services are held to one standard.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{ChildProcess, free_port, get_json, get_text, unique_name, wait_until};

const STARTUP: Duration = Duration::from_secs(30);

/// How to start one service binary.
pub struct Binary<'a> {
    /// The program, e.g. `env!("CARGO_BIN_EXE_ingest")`.
    pub path: &'a str,
    /// Arguments after `--config FILE`, e.g. `["schedule"]`.
    pub args: &'a [&'a str],
    /// The configuration section holding its `listen` address, e.g. `ingest`.
    pub section: &'a str,
}

impl Binary<'_> {
    fn command(&self, config_file: &Path) -> Command {
        let mut command = Command::new(self.path);
        command.arg("--config").arg(config_file).args(self.args);
        // Only what the test sets: a developer's own FRAUD_ variables must not leak in.
        for (name, _) in std::env::vars() {
            if name.starts_with("FRAUD_") {
                command.env_remove(name);
            }
        }
        command
    }

    /// Starts the binary with its listen address (and `extra` TOML) in a config file,
    /// and `env` variables; returns the process and its base URL.
    pub fn start(&self, extra_toml: &str, env: &[(&str, &str)]) -> (ChildProcess, String) {
        let port = free_port();
        let config = std::env::temp_dir().join(format!("{}.toml", unique_name(self.section)));
        // Its own lake and lake-writer group (ingest runs the writer; others ignore them),
        // so a test never writes into the checkout or joins the dev stack's group.
        let own = unique_name(self.section);
        let lake = std::env::temp_dir().join(&own);
        let lake_toml = if extra_toml.contains("[lake]") {
            String::new()
        } else {
            format!(
                "[lake]\nroot = \"{}\"\nwriter_group = \"{own}\"\n",
                lake.display()
            )
        };
        // Its own Redis key prefix and speed-layer group, for the same reason.
        let redis_toml = if extra_toml.contains("[redis]") {
            String::new()
        } else {
            format!("[redis]\nkey_prefix = \"{own}:\"\n")
        };
        let group = if self.section == "speed" {
            format!("group = \"{own}\"\n")
        } else {
            String::new()
        };
        let toml = format!(
            "[{}]\nlisten = \"127.0.0.1:{port}\"\n{group}{lake_toml}{redis_toml}{extra_toml}\n",
            self.section
        );
        std::fs::write(&config, toml).expect("write the config file");
        let mut command = self.command(&config);
        command.envs(env.iter().copied());
        let process = ChildProcess::spawn(self.section, command);
        (process, format!("http://127.0.0.1:{port}"))
    }
}

/// Started with the defaults (the local servers) and a config file: `/healthz`, `/readyz`
/// and `/metrics` answer 200; SIGTERM stops it cleanly within the grace period.
pub async fn check_serves_and_stops_cleanly(binary: Binary<'_>) {
    check_serves_and_stops_cleanly_with(binary, &[]).await;
}

/// [`check_serves_and_stops_cleanly`] with `env` variables (e.g. a topic of the test's
/// own).
pub async fn check_serves_and_stops_cleanly_with(binary: Binary<'_>, env: &[(&str, &str)]) {
    let (mut process, base) = binary.start("", env);
    wait_until(STARTUP, "/healthz to answer 200", || {
        let url = format!("{base}/healthz");
        async move { matches!(get_json(&url).await, Some((200, _))) }
    })
    .await;
    wait_until(STARTUP, "/readyz to answer 200 with every server up", || {
        let url = format!("{base}/readyz");
        async move { matches!(get_json(&url).await, Some((200, body)) if body["ready"] == true) }
    })
    .await;
    let (status, metrics) = get_text(&format!("{base}/metrics"))
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200, "/metrics: {metrics}");
    assert!(
        metrics.contains(r#"http_requests_total{method="GET",route="/healthz",status="200"}"#),
        "the requests so far are not counted:\n{metrics}"
    );

    process.signal(libc::SIGTERM);
    let status = process.wait_for_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "{} exited with {status} after SIGTERM; output:\n{}",
        binary.section,
        process.output()
    );
    assert!(
        process.output().contains("shutdown complete"),
        "no clean drain was logged:\n{}",
        process.output()
    );
}

/// With `env` pointing a dependency at a dead address, `/readyz` answers 503 and names
/// exactly the failing `probes`, while `/healthz` still answers 200.
pub async fn check_not_ready_without(binary: Binary<'_>, env: &[(&str, &str)], probes: &[&str]) {
    // The default probe timeout (2 s): a shorter one could time out a healthy probe on a
    // loaded machine and name the wrong server.
    let (_process, base) = binary.start("", env);
    wait_until(STARTUP, "/healthz to answer 200", || {
        let url = format!("{base}/healthz");
        async move { matches!(get_json(&url).await, Some((200, _))) }
    })
    .await;
    let (status, body) = get_json(&format!("{base}/readyz"))
        .await
        .expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    let checks = body["checks"].as_array().expect("a list of checks");
    let failing: Vec<&str> = checks
        .iter()
        .filter(|check| check["ok"] == false)
        .filter_map(|check| check["name"].as_str())
        .collect();
    assert_eq!(failing, probes, "{body}");
}

/// An invalid configuration (several problems at once) exits with status 2 and lists
/// every problem on stderr, before binding anything.
pub fn check_invalid_configuration_is_listed(binary: Binary<'_>) {
    let config = std::env::temp_dir().join(format!("{}.toml", unique_name("invalid")));
    std::fs::write(&config, "[kafka]\nbrokers = \"no-port-here\"\n").expect("write the file");
    let output = binary
        .command(&config)
        .env("FRAUD_SERVICE__PROBE_TIMEOUT_MS", "soon")
        .env("FRAUD_REDIS__URL", "http://not-redis")
        .env("FRAUD_NOT_A_SECTION__KEY", "1")
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    for expected in [
        "4 problems",
        "kafka.brokers",
        "service.probe_timeout_ms",
        "FRAUD_SERVICE__PROBE_TIMEOUT_MS",
        "redis.url",
        "not_a_section: unknown section",
    ] {
        assert!(
            stderr.contains(expected),
            "`{expected}` missing from:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("panicked"),
        "a bad configuration must not panic:\n{stderr}"
    );
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, request spans reach an OTLP collector under
/// the service's name; with `log_format = "json"`, every log line is a JSON object.
pub async fn check_exports_traces_and_json_logs(binary: Binary<'_>, service_name: &str) {
    let collector = crate::otlp::OtlpCollector::start().await;
    let (mut process, base) = binary.start(
        "[telemetry]\nlog_format = \"json\"\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    wait_until(STARTUP, "/healthz to answer 200", || {
        let url = format!("{base}/healthz");
        async move { matches!(get_json(&url).await, Some((200, _))) }
    })
    .await;
    // An HTTP span is named as HTTP's conventions say: method and route.
    wait_until(STARTUP, "the request span at the collector", || {
        let seen = collector
            .spans()
            .iter()
            .any(|span| span.service == service_name && span.name == "GET /healthz");
        async move { seen }
    })
    .await;
    process.signal(libc::SIGTERM);
    assert!(process.wait_for_exit(Duration::from_secs(15)).success());
    let output = process.output();
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
        assert!(parsed["level"].is_string(), "no level: {line}");
    }
}
