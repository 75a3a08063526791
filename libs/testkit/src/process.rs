//! Real processes for tests: service binaries and private servers, stopped by signals.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`), or
/// `None` when it cannot be read (the process is gone).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A child process that is killed when dropped, with its output kept in a file.
pub struct ChildProcess {
    name: String,
    child: Child,
    log: std::path::PathBuf,
}

impl ChildProcess {
    /// Starts `command`, sending stdout and stderr to a temporary log file.
    pub fn spawn(name: &str, mut command: Command) -> ChildProcess {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name(name)));
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {name}: {error}"));
        ChildProcess {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we own; it has no memory-safety preconditions.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "failed to signal {}", self.name);
    }

    /// Waits for the process to exit, at most `deadline`; panics (with its output) if it
    /// does not.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "{} did not exit within {deadline:?}; output:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A private, throw-away `redis-server` on its own port, for tests that take a server
/// down and bring it back.
pub struct PrivateRedis {
    port: u16,
    process: Option<ChildProcess>,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    /// A server that will listen on a free port once [`PrivateRedis::start`]ed.
    pub fn new() -> PrivateRedis {
        let dir = std::env::temp_dir().join(crate::unique_name("private-redis"));
        std::fs::create_dir_all(&dir).expect("create the redis dir");
        PrivateRedis {
            port: crate::free_port(),
            process: None,
            dir,
        }
    }

    /// Its port (fixed across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "already running");
        let mut command = Command::new(redis_server());
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &self.dir.to_string_lossy(),
        ]);
        let mut process = ChildProcess::spawn("private-redis", command);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                process.is_running(),
                "redis-server exited: {}",
                process.output()
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen: {}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
    }

    /// Kills the server (SIGKILL: an abrupt loss, as in a crash).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal(libc::SIGKILL);
            process.wait_for_exit(Duration::from_secs(10));
        }
    }
}

impl Default for PrivateRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_server() -> &'static str {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|candidate| Path::new(candidate).exists())
        .unwrap_or("redis-server")
}
