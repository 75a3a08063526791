//! Starting a service process: the part every `main` shares.
//!
//! [`run`] loads the configuration (printing every problem and exiting with status 2 when
//! it is invalid), installs telemetry, creates the shutdown coordinator, listens for
//! signals and runs the service; an error is logged with its whole cause chain and exits
//! with status 1. A long-running service implements [`Service`], and its whole `main` is
//! [`main`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use axum::Router;
use fraud_config::Settings;
use tokio::net::TcpListener;

use crate::Shutdown;

/// The command-line option every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// A TOML configuration file; `FRAUD_…` environment variables override it.
    #[arg(long, value_name = "FILE", env = fraud_config::CONFIG_FILE_ENV)]
    pub config: Option<std::path::PathBuf>,
}

/// Exit status for an invalid configuration or telemetry setup.
pub const EXIT_CONFIG: u8 = 2;

/// A long-running service: built from the configuration (binding its listener), then
/// run until shutdown.
pub trait Service: Sized {
    /// The program's name, in logs and traces.
    const NAME: &'static str;

    /// Connects (lazily) to its servers and binds its port.
    fn build(settings: &Settings, shutdown: Shutdown)
    -> impl Future<Output = anyhow::Result<Self>>;

    /// Runs until shutdown, then drains.
    fn run_until_stopped(self) -> impl Future<Output = anyhow::Result<()>>;
}

#[derive(clap::Parser)]
#[command(version)]
struct ServiceCli {
    #[command(flatten)]
    config: ConfigArgs,
}

/// The whole `main` of a [`Service`]: parses `--config`, then [`run`]s it.
pub async fn main<S: Service>() -> ExitCode {
    let cli = <ServiceCli as clap::Parser>::parse();
    run(
        S::NAME,
        cli.config.config.as_deref(),
        |settings, shutdown| async move {
            S::build(&settings, shutdown)
                .await?
                .run_until_stopped()
                .await
        },
    )
    .await
}

/// Runs `service` named `name` with the configuration from `config_file` (if any) and the
/// environment, until it stops.
pub async fn run<F, Fut>(name: &'static str, config_file: Option<&Path>, service: F) -> ExitCode
where
    F: FnOnce(Settings, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::load(config_file) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _telemetry = match fraud_telemetry::init(name, &settings.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let shutdown = Shutdown::new(settings.service.shutdown_grace());
    shutdown.listen_for_signals();
    tracing::info!(
        service = name,
        version = env!("CARGO_PKG_VERSION"),
        "starting"
    );
    match service(settings, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                service = name,
                error = format!("{error:#}"),
                "stopped with an error"
            );
            eprintln!("{name}: {error:#}");
            match error.downcast_ref::<ExitWith>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// An error that asks for its own exit status (a documented refusal, such as "another
/// run holds the lock"), rather than the generic 1.
#[derive(Debug)]
pub struct ExitWith {
    pub code: u8,
    pub error: anyhow::Error,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for ExitWith {}

/// An HTTP server bound to its address, to run until shutdown.
///
/// Binding happens in [`HttpService::bind`], so a caller (a test asking for port 0)
/// learns the real port before the service runs.
pub struct HttpService {
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
}

impl HttpService {
    /// Binds `address` for `router`.
    pub async fn bind(
        address: SocketAddr,
        router: Router,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| anyhow::anyhow!("failed to listen on {address}: {error}"))?;
        Ok(Self {
            listener,
            router: crate::observe::instrument(router),
            shutdown,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address; fall back to unspecified if the OS says otherwise.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until shutdown begins, then waits for every task of the process to drain.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let address = self.local_addr();
        tracing::info!(%address, "listening");
        let stop = self.shutdown.token();
        self.shutdown
            .spawn("http", crate::ops::serve(self.listener, self.router, stop));
        self.shutdown.wait().await?;
        Ok(())
    }
}
