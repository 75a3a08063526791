//! `docker-compose.yml` and `deploy/Dockerfile`, checked against the platform itself.
//!
//! Docker is not needed (nor used): these tests read the files. They catch drift between
//! the deployment and the code: a port that no longer matches the configuration's
//! default, a `FRAUD_…` variable that is not a configuration key (the service would
//! refuse to start), a service running the wrong program, a binary the image does not
//! contain, a `depends_on` condition that can never be met.
//!
//! The defaults come from `fraud_config::Settings::load(None)`, i.e.
//! `libs/config/defaults.toml`; every failure names the file and key to look at.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fraud_config::{
    BatchConfig, CONFIG_FILE_ENV, ENV_PREFIX, IngestConfig, ServingConfig, Settings, SpeedConfig,
};
use serde_yaml::Value;

/// The servers compose runs from their official images.
const SERVERS: [&str; 4] = ["kafka", "postgres", "redis", "rabbitmq"];

/// Partitions of the transactions topic (DESIGN.md section 6).
const TRANSACTIONS_PARTITIONS: &str = "12";

/// The image build every platform service uses, relative to the repository root.
const DOCKERFILE: &str = "deploy/Dockerfile";

/// A long-running platform service: its compose name, the command it must run, and the
/// configuration section holding its `listen` address.
struct PlatformService {
    name: &'static str,
    command: &'static [&'static str],
    section: &'static str,
    default_listen: fn(&Settings) -> SocketAddr,
}

const PLATFORM_SERVICES: [PlatformService; 4] = [
    PlatformService {
        name: "ingest",
        command: &["ingest"],
        section: IngestConfig::SECTION,
        default_listen: |settings| settings.ingest.listen,
    },
    PlatformService {
        name: "speed-layer",
        command: &["speed-layer"],
        section: SpeedConfig::SECTION,
        default_listen: |settings| settings.speed.listen,
    },
    PlatformService {
        name: "serving-api",
        command: &["serving-api"],
        section: ServingConfig::SECTION,
        default_listen: |settings| settings.serving.listen,
    },
    PlatformService {
        name: "batch-layer",
        command: &["batch-layer", "schedule"],
        section: BatchConfig::SECTION,
        default_listen: |settings| settings.batch.listen,
    },
];

/// One-shot services built from the platform image, with the command they must run.
const ONE_SHOT_SERVICES: [(&str, &[&str]); 1] = [("migrate", &["batch-layer", "migrate"])];

/// The directory holding `docker-compose.yml` and `deploy/` (the parent of `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// `docker-compose.yml`, parsed, with its `<<: *anchor` merge keys applied (serde_yaml
/// expands aliases but leaves merging to us).
fn compose() -> Value {
    let mut value: Value = serde_yaml::from_str(&read("docker-compose.yml"))
        .unwrap_or_else(|error| panic!("docker-compose.yml is not valid YAML: {error}"));
    value
        .apply_merge()
        .unwrap_or_else(|error| panic!("docker-compose.yml: a `<<` merge key is invalid: {error}"));
    value
}

fn services(compose: &Value) -> BTreeMap<String, &Value> {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has no `services:` mapping")
        .iter()
        .map(|(name, service)| {
            let name = name.as_str().expect("service names are strings");
            (name.to_owned(), service)
        })
        .collect()
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

/// A scalar as compose reads it: strings as they are, numbers and booleans as text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A service's `environment:`, in either of compose's forms (mapping or `KEY=value` list).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(mapping)) => mapping
            .iter()
            .map(|(key, value)| {
                let key = key.as_str().expect("environment names are strings");
                (key.to_owned(), scalar(value).unwrap_or_default())
            })
            .collect(),
        Some(Value::Sequence(list)) => list
            .iter()
            .map(|entry| {
                let entry = entry.as_str().expect("environment entries are strings");
                let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        Some(other) => panic!("`environment:` must be a mapping or a list, not {other:?}"),
    }
}

/// A `command:` or `entrypoint:` as its words (a string form is split on whitespace).
fn words(value: Option<&Value>) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(Value::String(line)) => line.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Sequence(words)) => words.iter().filter_map(scalar).collect(),
        Some(other) => panic!("a command must be a string or a list, not {other:?}"),
    }
}

/// A service's `command:` as its words.
fn command(service: &Value) -> Vec<String> {
    words(service.get("command"))
}

/// One published port: `published` on the host forwards to `target` in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    published: u16,
    target: u16,
}

/// The ports a service publishes on the host, from the short (`[IP:]HOST:CONTAINER`) or
/// the long (`target:`/`published:`) syntax. A bare container port publishes nothing
/// fixed and is left out.
fn published_ports(service_name: &str, service: &Value) -> Vec<Published> {
    let Some(ports) = service.get("ports") else {
        return Vec::new();
    };
    let ports = ports
        .as_sequence()
        .unwrap_or_else(|| panic!("`{service_name}`: `ports:` must be a list"));
    let port = |text: &str, entry: &Value| -> u16 {
        text.trim().parse().unwrap_or_else(|_| {
            panic!(
                "`{service_name}`: cannot read the port `{text}` in {entry:?} \
                 (ranges are not supported by this test)"
            )
        })
    };
    let mut found = Vec::new();
    for entry in ports {
        match entry {
            Value::Mapping(_) => {
                let target = entry.get("target").and_then(scalar);
                let published = entry.get("published").and_then(scalar);
                if let (Some(target), Some(published)) = (target, published) {
                    found.push(Published {
                        published: port(&published, entry),
                        target: port(&target, entry),
                    });
                }
            }
            _ => {
                let text = scalar(entry)
                    .unwrap_or_else(|| panic!("`{service_name}`: odd port entry {entry:?}"));
                let without_protocol = text.split('/').next().unwrap_or_default();
                // rsplitn keeps an IPv4 or bracketed IPv6 host address in one piece.
                let parts: Vec<&str> = without_protocol.rsplitn(3, ':').collect();
                if let [target, published, ..] = parts[..] {
                    found.push(Published {
                        published: port(published, entry),
                        target: port(target, entry),
                    });
                }
            }
        }
    }
    found
}

/// The port of a `scheme://[user:password@]host:port[/path]` URL or of a `host:port`
/// (the first one of a comma-separated list).
fn host_and_port(address: &str) -> (String, u16) {
    let without_scheme = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = without_scheme.split(['/', ',']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let (host, port) = host_port
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("`{host_port}` names no port explicitly"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("`{port}` in `{host_port}` is not a port number"));
    (host.to_owned(), port)
}

/// The configuration's built-in defaults. A `FRAUD_…` variable in the test's own
/// environment would change what they are compared with, so the ones that matter here
/// must be unset.
fn default_settings() -> Settings {
    let compared: Vec<String> = Settings::documentation()
        .iter()
        .filter(|field| {
            matches!(field.name, "listen" | "url")
                || matches!(
                    field.key().as_str(),
                    "kafka.brokers" | "kafka.transactions_topic"
                )
        })
        .map(|field| field.env_var())
        .filter(|var| std::env::var_os(var).is_some())
        .collect();
    assert!(
        compared.is_empty(),
        "these tests compare docker-compose.yml with the defaults in \
         libs/config/defaults.toml, but {compared:?} is set in this environment and \
         overrides them; unset it to run the compose tests"
    );
    Settings::load(None).expect("the default configuration is valid")
}

/// The environment variable of one configuration field, e.g. `FRAUD_INGEST__LISTEN`.
fn env_var(section: &str, name: &str) -> String {
    Settings::documentation()
        .into_iter()
        .find(|field| field.section == section && field.name == name)
        .unwrap_or_else(|| panic!("the configuration has no key {section}.{name}"))
        .env_var()
}

/// Fails with every problem at once, one per line, so a newcomer fixes them in one go.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

#[test]
fn every_server_and_platform_service_is_in_the_compose_file() {
    let compose = compose();
    let present = services(&compose);
    let missing: Vec<&str> = SERVERS
        .iter()
        .copied()
        .chain(PLATFORM_SERVICES.iter().map(|service| service.name))
        .chain(ONE_SHOT_SERVICES.iter().map(|(name, _)| *name))
        .filter(|name| !present.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml is missing the services {missing:?} (it has {:?}); \
         DESIGN.md section 5 says compose runs the whole platform",
        present.keys().collect::<Vec<_>>()
    );
}

#[test]
fn each_platform_service_listens_on_and_publishes_its_default_port() {
    let settings = default_settings();
    let compose = compose();
    let mut problems = Vec::new();
    for platform in &PLATFORM_SERVICES {
        let name = platform.name;
        let service = service(&compose, name);
        let default = (platform.default_listen)(&settings);
        let port = default.port();
        let var = env_var(platform.section, "listen");
        let key = format!("{}.listen", platform.section);

        match environment(service).get(&var) {
            None => problems.push(format!(
                "`{name}` does not set {var}: it would listen on its default {default}, \
                 the container's own loopback, where no published port reaches it; \
                 set {var}=0.0.0.0:{port}"
            )),
            Some(value) => match value.parse::<SocketAddr>() {
                Err(_) => problems.push(format!(
                    "`{name}`: {var}={value} is not an address `ip:port`"
                )),
                Ok(listen) => {
                    if !listen.ip().is_unspecified() {
                        problems.push(format!(
                            "`{name}`: {var}={value} must listen on 0.0.0.0 inside its \
                             container, or Docker's port publishing cannot reach it"
                        ));
                    }
                    if listen.port() != port {
                        problems.push(format!(
                            "`{name}`: {var}={value} uses port {}, but {key} defaults to \
                             {default} (libs/config/defaults.toml); use port {port} so \
                             compose and deploy/dev agree (DESIGN.md section 6)",
                            listen.port()
                        ));
                    }
                }
            },
        }

        let ports = published_ports(name, service);
        if !ports.contains(&Published {
            published: port,
            target: port,
        }) {
            problems.push(format!(
                "`{name}` must publish \"127.0.0.1:{port}:{port}\" ({key} defaults to \
                 {default} in libs/config/defaults.toml), but it publishes {ports:?}"
            ));
        }
    }
    assert_no_problems("docker-compose.yml: listen addresses and ports", &problems);
}

#[test]
fn each_server_publishes_the_port_of_its_default_url() {
    let settings = default_settings();
    let compose = compose();
    let defaults = [
        ("kafka", "kafka.brokers", settings.kafka.brokers.clone()),
        (
            "postgres",
            "postgres.url",
            settings.postgres.url.expose().clone(),
        ),
        ("redis", "redis.url", settings.redis.url.expose().clone()),
        (
            "rabbitmq",
            "rabbitmq.url",
            settings.rabbitmq.url.expose().clone(),
        ),
    ];
    let mut problems = Vec::new();
    for (name, key, address) in defaults {
        let (_, port) = host_and_port(&address);
        let ports = published_ports(name, service(&compose, name));
        if !ports.iter().any(|mapping| mapping.published == port) {
            problems.push(format!(
                "`{name}` does not publish host port {port}, the port of the default \
                 {key} (libs/config/defaults.toml), so tools and tests on the host would \
                 not reach it; it publishes {ports:?}"
            ));
        }
    }
    assert_no_problems("docker-compose.yml: server ports", &problems);
}

#[test]
fn every_fraud_variable_is_a_configuration_key() {
    let compose = compose();
    let known: Vec<String> = Settings::documentation()
        .iter()
        .map(|field| field.env_var())
        .chain([CONFIG_FILE_ENV.to_owned()])
        .collect();
    let mut problems = Vec::new();
    for (name, service) in services(&compose) {
        for var in environment(service).keys() {
            if var.starts_with(ENV_PREFIX) && !known.contains(var) {
                problems.push(format!(
                    "`{name}` sets {var}, which is no configuration key: the service \
                     would refuse to start (unknown keys are errors)"
                ));
            }
        }
    }
    if !problems.is_empty() {
        problems.push(format!(
            "the keys are in libs/config/src/sections.rs; their variables: {}",
            known.join(", ")
        ));
    }
    assert_no_problems("docker-compose.yml: FRAUD_ variables", &problems);
}

#[test]
fn platform_services_reach_the_servers_by_their_compose_names() {
    let compose = compose();
    let names = services(&compose);
    let server_vars = [
        ("kafka", "brokers"),
        ("postgres", "url"),
        ("redis", "url"),
        ("rabbitmq", "url"),
    ]
    .map(|(section, field)| env_var(section, field));
    let mut problems = Vec::new();
    let built = PLATFORM_SERVICES
        .iter()
        .map(|service| service.name)
        .chain(ONE_SHOT_SERVICES.iter().map(|(name, _)| *name));
    for name in built {
        let environment = environment(service(&compose, name));
        for var in &server_vars {
            let Some(value) = environment.get(var) else {
                continue;
            };
            let (host, _) = host_and_port(value);
            if !names.contains_key(&host) {
                problems.push(format!(
                    "`{name}`: {var} points at host `{host}`, which is no service of \
                     docker-compose.yml (inside a container, 127.0.0.1 is the container \
                     itself); use the server's service name"
                ));
            }
        }
    }
    assert_no_problems("docker-compose.yml: server addresses", &problems);
}

#[test]
fn ingest_and_the_batch_layer_share_the_lake_volume() {
    let compose = compose();
    let lake_var = env_var("lake", "root");
    // The named volume each service mounts at its FRAUD_LAKE__ROOT.
    let lake_volume = |name: &str| -> String {
        let service = service(&compose, name);
        let root = environment(service)
            .get(&lake_var)
            .cloned()
            .unwrap_or_else(|| panic!("`{name}` does not set {lake_var}"));
        let volumes = service.get("volumes").and_then(Value::as_sequence);
        volumes
            .into_iter()
            .flatten()
            .find_map(|volume| match volume {
                Value::String(short) => {
                    let mut parts = short.split(':');
                    let source = parts.next()?;
                    (parts.next()? == root).then(|| source.to_owned())
                }
                Value::Mapping(_) => {
                    let target = volume.get("target").and_then(Value::as_str)?;
                    let source = volume.get("source").and_then(Value::as_str)?;
                    (target == root).then(|| source.to_owned())
                }
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!(
                    "`{name}` mounts no volume at its {lake_var}={root}: the lake would \
                     live in the container and vanish with it"
                )
            })
    };
    let ingest = lake_volume("ingest");
    let batch = lake_volume("batch-layer");
    assert_eq!(
        ingest, batch,
        "ingest writes the lake into volume `{ingest}` but the batch layer reads volume \
         `{batch}`: they must mount the same named volume"
    );
    let declared = compose
        .get("volumes")
        .and_then(|volumes| volumes.get(ingest.as_str()))
        .is_some();
    assert!(
        declared,
        "the lake volume `{ingest}` is not declared under the top-level `volumes:`"
    );
}

#[test]
fn each_service_runs_its_own_program_from_the_platform_image() {
    let compose = compose();
    let expected = PLATFORM_SERVICES
        .iter()
        .map(|service| (service.name, service.command))
        .chain(ONE_SHOT_SERVICES);
    let mut problems = Vec::new();
    for (name, wanted) in expected {
        let service = service(&compose, name);
        let actual = command(service);
        if actual != wanted {
            problems.push(format!(
                "`{name}` runs {actual:?}, but it must run {wanted:?}"
            ));
        }
        let build = service.get("build");
        let context = build
            .and_then(|build| build.get("context"))
            .and_then(scalar);
        let dockerfile = build
            .and_then(|build| build.get("dockerfile"))
            .and_then(scalar);
        if context.as_deref() != Some(".") || dockerfile.as_deref() != Some(DOCKERFILE) {
            problems.push(format!(
                "`{name}` must be built with `build: {{context: ., dockerfile: {DOCKERFILE}}}` \
                 (the image with every binary), but has context {context:?} and dockerfile \
                 {dockerfile:?}"
            ));
        }
    }
    assert_no_problems("docker-compose.yml: commands and images", &problems);
}

#[test]
fn the_dockerfile_builds_every_binary_the_compose_file_runs() {
    let compose = compose();
    let dockerfile = read(DOCKERFILE);
    let mut problems = Vec::new();
    if !dockerfile.contains("cargo build --release --locked --bins") {
        problems.push(format!(
            "{DOCKERFILE} no longer runs `cargo build --release --locked --bins`"
        ));
    }
    for (name, service) in services(&compose) {
        if service.get("build").is_none() {
            continue;
        }
        let Some(binary) = command(service).into_iter().next() else {
            problems.push(format!(
                "`{name}` is built from {DOCKERFILE} but has no `command:`; the image runs \
                 no program by default"
            ));
            continue;
        };
        if !dockerfile.contains(&format!("target/release/{binary}")) {
            problems.push(format!(
                "`{name}` runs `{binary}`, but {DOCKERFILE} does not copy \
                 target/release/{binary} into the image"
            ));
        }
        let manifest = repo_root()
            .join("services")
            .join(&binary)
            .join("Cargo.toml");
        let is_crate = std::fs::read_to_string(&manifest)
            .is_ok_and(|text| text.contains(&format!("name = \"{binary}\"")));
        if !is_crate {
            problems.push(format!(
                "`{name}` runs `{binary}`, but no crate services/{binary} builds a binary \
                 of that name"
            ));
        }
    }
    assert_no_problems("deploy/Dockerfile and the compose commands", &problems);
}

#[test]
fn kafka_init_creates_the_transactions_and_window_updates_topics() {
    let settings = default_settings();
    let compose = compose();
    for (init_name, topic) in [
        ("kafka-init", &settings.kafka.transactions_topic),
        ("kafka-init-updates", &settings.kafka.window_updates_topic),
    ] {
        let init = service(&compose, init_name);
        // What the container runs: its entrypoint, then its command.
        let mut words = words(init.get("entrypoint"));
        words.extend(command(init));
        let after = |flag: &str| {
            words
                .iter()
                .position(|word| word == flag)
                .and_then(|at| words.get(at + 1))
                .cloned()
        };
        assert!(
            words.iter().any(|word| word.ends_with("kafka-topics.sh"))
                && words.iter().any(|word| word == "--create")
                && words.iter().any(|word| word == "--if-not-exists"),
            "`{init_name}` must run kafka-topics.sh --create --if-not-exists, but runs {words:?}"
        );
        assert_eq!(
            after("--topic").as_ref(),
            Some(topic),
            "`{init_name}` must create the topic the configuration names by default \
             (libs/config/defaults.toml); it runs {words:?}"
        );
        assert_eq!(
            after("--partitions").as_deref(),
            Some(TRANSACTIONS_PARTITIONS),
            "`{init_name}` must create {topic} with {TRANSACTIONS_PARTITIONS} partitions \
             (DESIGN.md section 6); it runs {words:?}"
        );
    }
}

#[test]
fn every_depends_on_condition_can_be_met() {
    let compose = compose();
    let all = services(&compose);
    let mut problems = Vec::new();
    for (name, service) in &all {
        let Some(depends_on) = service.get("depends_on") else {
            continue;
        };
        let dependencies: Vec<(String, String)> = match depends_on {
            Value::Sequence(list) => list
                .iter()
                .filter_map(scalar)
                .map(|target| (target, "service_started".to_owned()))
                .collect(),
            Value::Mapping(mapping) => mapping
                .iter()
                .map(|(target, spec)| {
                    let condition = spec
                        .get("condition")
                        .and_then(scalar)
                        .unwrap_or_else(|| "service_started".to_owned());
                    (scalar(target).unwrap_or_default(), condition)
                })
                .collect(),
            other => {
                problems.push(format!("`{name}`: odd depends_on {other:?}"));
                continue;
            }
        };
        for (target, condition) in dependencies {
            let Some(dependency) = all.get(&target) else {
                problems.push(format!(
                    "`{name}` depends on `{target}`, which does not exist"
                ));
                continue;
            };
            match condition.as_str() {
                "service_healthy" => {
                    // No `test:` (or `test: ["NONE"]`, or `disable: true`) means no check.
                    let healthcheck = dependency.get("healthcheck");
                    let test = words(healthcheck.and_then(|check| check.get("test")));
                    let disabled = healthcheck
                        .and_then(|check| check.get("disable"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    if test.is_empty() || test[0] == "NONE" || disabled {
                        problems.push(format!(
                            "`{name}` waits for `{target}` to be healthy, but `{target}` \
                             has no healthcheck `test:`; it would never become healthy"
                        ));
                    }
                }
                "service_completed_successfully" => {
                    let restart = dependency.get("restart").and_then(scalar);
                    if !matches!(restart.as_deref(), None | Some("no")) {
                        problems.push(format!(
                            "`{name}` waits for the one-shot `{target}` to complete, but \
                             `{target}` has restart: {restart:?}; a one-shot needs \
                             restart: \"no\""
                        ));
                    }
                }
                "service_started" => {}
                other => problems.push(format!(
                    "`{name}` depends on `{target}` with unknown condition `{other}`"
                )),
            }
        }
    }
    assert_no_problems("docker-compose.yml: depends_on", &problems);
}
