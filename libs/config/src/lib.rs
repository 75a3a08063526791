//! Platform configuration, shared by every service.
//!
//! One [`Settings`] value describes the whole platform; each service reads the sections
//! it needs. Values come from three layers, later ones overriding earlier ones:
//!
//! 1. the embedded defaults in `defaults.toml` (they run the platform locally with no
//!    file at all, against the servers that `deploy/dev` starts);
//! 2. an optional TOML file (each service's `--config FILE`, or `FRAUD_CONFIG_FILE`);
//! 3. environment variables `FRAUD_<SECTION>__<KEY>`, e.g. `FRAUD_KAFKA__BROKERS`.
//!
//! Loading never stops at the first mistake: every field is extracted on its own and
//! then validated, and [`ConfigError`] lists every problem with the place the bad value
//! came from, so an operator fixes them all in one go. Unknown keys are problems too.
//!
//! Modules: [`sections`] declares the sections and their fields (with a doc comment on
//! each, which also feeds [`Settings::documentation`]); [`secret`] masks passwords in
//! logs; [`problems`] collects and formats what was wrong.

pub mod problems;
pub mod secret;
pub mod sections;

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

pub use problems::{ConfigError, Problem};
pub use secret::Secret;
pub use sections::*;

/// The embedded defaults: every key of every section, with a working local value.
pub const DEFAULTS_TOML: &str = include_str!("../defaults.toml");

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "FRAUD_";

/// The environment variable naming a configuration file (when `--config` is not given).
pub const CONFIG_FILE_ENV: &str = "FRAUD_CONFIG_FILE";

impl Settings {
    /// Loads the defaults, then `file` if given (it must exist), then the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let environment = Env::prefixed(ENV_PREFIX)
            .split("__")
            // Names the file, not a key; figment compares lowercased names without the prefix.
            .ignore(&[&CONFIG_FILE_ENV[ENV_PREFIX.len()..].to_ascii_lowercase()]);
        let figment = Self::base_figment(file)?.merge(environment);
        Self::extract(&figment)
    }

    fn base_figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::single(Problem::new(
                    "--config",
                    format!("configuration file {} does not exist", path.display()),
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment)
    }
}

impl ServiceConfig {
    /// How long shutdown may drain.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.shutdown_grace_ms)
    }

    /// How long one readiness probe may take.
    pub fn probe_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.probe_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads with exactly these `FRAUD_…` variables set (and no others), through the
    /// same code path as production.
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn load_with_env<'a>(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Settings, ConfigError> {
        let vars: Vec<(&str, &str)> = vars.into_iter().collect();
        let mut outcome = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (key, value) in &vars {
                jail.set_env(key, value);
            }
            outcome = Some(Settings::load(file));
            Ok(())
        });
        outcome.expect("the jail ran")
    }

    #[test]
    fn defaults_load_without_any_file_or_variable() {
        let settings = load_with_env(None, []).expect("defaults are valid");
        assert_eq!(settings.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(settings.ingest.listen.port(), 8081);
        assert_eq!(settings.serving.listen.port(), 8082);
        assert_eq!(settings.speed.listen.port(), 8083);
        assert_eq!(settings.batch.listen.port(), 8084);
        assert_eq!(settings.rabbitmq.alerts_exchange, "fraud.alerts");
    }

    #[test]
    fn every_documented_field_has_a_default_and_every_default_is_documented() {
        let defaults: toml::Table = toml::from_str(DEFAULTS_TOML).expect("defaults parse");
        let documented: Vec<String> = Settings::documentation()
            .iter()
            .map(|field| field.key())
            .collect();
        let mut in_defaults = Vec::new();
        for (section, table) in &defaults {
            let table = table.as_table().expect("sections are tables");
            for key in table.keys() {
                in_defaults.push(format!("{section}.{key}"));
            }
        }
        in_defaults.sort();
        let mut documented_sorted = documented.clone();
        documented_sorted.sort();
        assert_eq!(in_defaults, documented_sorted);
    }

    #[test]
    fn environment_overrides_defaults_and_numbers_become_text_where_text_is_expected() {
        let settings = load_with_env(
            None,
            [
                ("FRAUD_KAFKA__BROKERS", "broker-1:9092,broker-2:9092"),
                ("FRAUD_REDIS__KEY_PREFIX", "1234"),
                ("FRAUD_INGEST__LISTEN", "0.0.0.0:9000"),
                ("OTHER_VARIABLE", "ignored"),
            ],
        )
        .expect("valid overrides");
        assert_eq!(settings.kafka.brokers, "broker-1:9092,broker-2:9092");
        assert_eq!(settings.redis.key_prefix, "1234");
        assert_eq!(settings.ingest.listen.to_string(), "0.0.0.0:9000");
    }

    #[test]
    fn a_file_overrides_defaults_and_environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("fraud-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file-then-env.toml");
        std::fs::write(
            &file,
            "[kafka]\nbrokers = \"from-file:9092\"\ntransactions_topic = \"file-topic\"\n",
        )
        .unwrap();
        let settings = load_with_env(
            Some(&file),
            [("FRAUD_KAFKA__TRANSACTIONS_TOPIC", "env-topic")],
        )
        .expect("valid");
        assert_eq!(settings.kafka.brokers, "from-file:9092");
        assert_eq!(settings.kafka.transactions_topic, "env-topic");
    }

    #[test]
    fn the_default_rules_are_valid_and_a_bad_rule_set_lists_every_problem() {
        let settings = load_with_env(None, []).expect("defaults are valid");
        assert_eq!(settings.serving.rules.len(), 4);
        assert!(rule_problems(&settings.serving.rules).is_empty());

        let dir = std::env::temp_dir().join(format!("fraud-config-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rules.toml");
        std::fs::write(
            &file,
            "[serving]\nrules = [\n\
             { id = \"Bad Id\", severity = \"high\", condition = { kind = \"window_sum_over\", limit_minor = 0 } },\n\
             { id = \"same\", severity = \"low\", condition = { kind = \"window_count_over\", limit = 3 } },\n\
             { id = \"same\", severity = \"low\", enabled = false, condition = { kind = \"window_count_over\", limit = 3 } },\n\
             ]\n",
        )
        .unwrap();
        let error = load_with_env(Some(&file), []).expect_err("invalid rules");
        let text = error.to_string();
        assert!(text.contains("/0/id"), "{text}");
        assert!(
            text.contains("/0/condition/limit_minor: must be positive"),
            "{text}"
        );
        assert!(
            text.contains("/2/id: `same` is used by another rule"),
            "{text}"
        );
        assert_eq!(error.problems().len(), 3, "{text}");

        std::fs::write(
            &file,
            "[serving]\nrules = [{ id = \"x\", severity = \"high\", condition = { kind = \"no_such_kind\" } }]\n",
        )
        .unwrap();
        let error = load_with_env(Some(&file), []).expect_err("unknown kind");
        assert!(error.to_string().contains("serving.rules"), "{error}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_origin() {
        let error = load_with_env(
            None,
            [
                ("FRAUD_INGEST__LISTEN", "not-an-address"),
                ("FRAUD_POSTGRES__MAX_CONNECTIONS", "0"),
                ("FRAUD_REDIS__URL", "http://wrong-scheme"),
                ("FRAUD_KAFKA__BROKERZ", "typo"),
                ("FRAUD_TELEMETRY__LOG_FORMAT", "xml"),
                ("FRAUD_KAFKA__COMPRESSION", "brotli"),
                ("FRAUD_KAFKA__FETCH_MAX_WAIT_MS", "0"),
                ("FRAUD_SPEED__UPDATES_COMPRESSION", "lzma"),
            ],
        )
        .expect_err("invalid");
        let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "ingest.listen",
            "postgres.max_connections",
            "redis.url",
            "kafka.brokerz",
            "telemetry.log_format",
            "kafka.compression",
            "kafka.fetch_max_wait_ms",
            "speed.updates_compression",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        assert_eq!(error.problems().len(), 8, "{error}");
        let text = error.to_string();
        assert!(text.contains("8 problems"), "{text}");
        assert!(text.contains("`brotli` is not one of lz4, zstd"), "{text}");
        assert!(text.contains("`lzma` is not one of lz4, zstd"), "{text}");
        assert!(text.contains("unknown key"), "{text}");
        assert!(
            text.contains("(from environment variable FRAUD_INGEST__LISTEN)"),
            "{text}"
        );
    }

    #[test]
    fn the_lake_s3_keys_are_checked_and_the_secret_never_printed() {
        let error = load_with_env(
            None,
            [
                ("FRAUD_LAKE__S3_ENDPOINT", "127.0.0.1:9000"),
                ("FRAUD_LAKE__S3_ACCESS_KEY_ID", "key-id"),
            ],
        )
        .expect_err("invalid");
        let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["lake.s3_endpoint", "lake.s3_secret_access_key"],
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("not an http:// or https:// URL"), "{text}");
        assert!(text.contains("or neither"), "{text}");

        let settings = load_with_env(
            None,
            [
                ("FRAUD_LAKE__S3_ENDPOINT", "https://s3.example:9000"),
                ("FRAUD_LAKE__S3_ACCESS_KEY_ID", "key-id"),
                ("FRAUD_LAKE__S3_SECRET_ACCESS_KEY", "hunter2"),
            ],
        )
        .expect("valid");
        assert_eq!(settings.lake.s3_secret_access_key.expose(), "hunter2");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn the_variable_naming_the_config_file_is_not_taken_for_a_key() {
        let settings = load_with_env(None, [(CONFIG_FILE_ENV, "/etc/fraud.toml")]);
        assert!(settings.is_ok(), "{settings:?}");
    }

    #[test]
    fn a_missing_file_is_a_problem_not_a_silent_default() {
        let error = load_with_env(Some(Path::new("/nonexistent/fraud.toml")), [])
            .expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/fraud.toml"));
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let settings = load_with_env(
            None,
            [(
                "FRAUD_POSTGRES__URL",
                "postgres://user:hunter2@db.example:5432/fraud",
            )],
        )
        .expect("valid");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(
            settings.postgres.url.expose(),
            "postgres://user:hunter2@db.example:5432/fraud"
        );
    }

    #[test]
    fn api_keys_are_validated() {
        let unknown_scope = load_with_env(
            None,
            [(
                "FRAUD_AUTH__KEYS",
                r#"[{name="a", sha256="zz", scopes=["ingest","root"]}]"#,
            )],
        )
        .expect_err("unknown scope");
        assert!(
            unknown_scope.to_string().contains("`root`"),
            "{unknown_scope}"
        );

        let bad_hash_and_duplicate = load_with_env(
            None,
            [(
                "FRAUD_AUTH__KEYS",
                r#"[{name="a", sha256="zz", scopes=["ingest"]}, {name="a", sha256="zz", scopes=[]}]"#,
            )],
        )
        .expect_err("bad hash");
        let text = bad_hash_and_duplicate.to_string();
        assert!(text.contains("auth.keys[0]: sha256 must be 64"), "{text}");
        assert!(
            text.contains("auth.keys[1]: name `a` is used twice"),
            "{text}"
        );
        assert!(text.contains("auth.keys[1]: scopes must name"), "{text}");

        let good = load_with_env(
            None,
            [(
                "FRAUD_AUTH__KEYS",
                r#"[{name="local", sha256="2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", scopes=["ingest","read"]}]"#,
            )],
        )
        .expect("good key");
        assert_eq!(good.auth.keys[0].scopes, vec![Scope::Ingest, Scope::Read]);
    }
}
