//! Shared harness for Warren's black-box integration tests.
//!
//! Every test starts its own broker with [`Broker::start`] (a fresh `warren`
//! process with an empty data directory on ephemeral ports). When the
//! environment variable `WARREN_TEST_AMQP_URL` is set, the tests talk to that
//! external broker instead; this is how the suite is validated against a real
//! RabbitMQ, whose behaviour is the reference.
//!
//! Each test binary uses only part of this module, hence the `dead_code`
//! allowance.
#![allow(dead_code)]

pub mod amqprs_client;
pub mod cluster;
pub mod lapin_client;
pub mod raw;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bound for anything the broker is expected to do (a reply, a
/// delivery, a close). A hang fails the test instead of blocking it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long to watch for something that must *not* happen (a delivery to a
/// consumer that is over its prefetch limit, for example). There is no event
/// to await in that case, so a short bounded wait is the only way to show the
/// absence; it is long enough for a misbehaving broker on loopback to reveal
/// itself.
pub const QUIET: Duration = Duration::from_millis(300);

/// Environment variable naming an external broker to test instead of
/// spawning `warren`.
pub const EXTERNAL_URL_VAR: &str = "WARREN_TEST_AMQP_URL";

/// Set (to anything) together with [`EXTERNAL_URL_VAR`] when the external
/// broker was started with the configuration the config-dependent tests ask
/// for (e.g. `consumer_timeout = 2000`), so that those tests run against it
/// too instead of being skipped.
///
/// For RabbitMQ that can be done at run time, shortening the channel tick
/// (60 s by default) at which consumer timeouts are checked as well:
/// `rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, 2000).'`
/// and `rabbitmqctl eval 'application:set_env(rabbit, channel_tick_interval, 1000).'`
pub const EXTERNAL_CONFIGURED_VAR: &str = "WARREN_TEST_EXTERNAL_CONFIGURED";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker under test: either a spawned `warren` process (killed on drop)
/// or an external broker named by `WARREN_TEST_AMQP_URL`.
pub struct Broker {
    host: String,
    port: u16,
    user: String,
    password: String,
    vhost: String,
    /// The management HTTP port of a spawned broker.
    http_port: Option<u16>,
    /// The AMQPS port of a spawned broker configured with `listeners.ssl.default`.
    amqps_port: Option<u16>,
    /// The management HTTPS port of a spawned broker configured with `management.ssl.port`.
    https_port: Option<u16>,
    process: Option<Spawned>,
}

struct Spawned {
    child: Child,
    data_dir: PathBuf,
    /// Whether the data directory outlives the broker (see [`Broker::start_in`]).
    keep_dir: bool,
}

impl Broker {
    /// Starts a broker with the default configuration.
    pub fn start() -> Broker {
        match std::env::var(EXTERNAL_URL_VAR) {
            Ok(url) => Broker::external(&url),
            Err(_) => Broker::spawn(None),
        }
    }

    /// Starts a broker with the given `rabbitmq.conf`-style configuration.
    ///
    /// Returns `None` (after printing a note) when testing an external broker
    /// whose configuration cannot be controlled from here; the caller then
    /// skips the test.
    pub fn start_with_config(conf: &str) -> Option<Broker> {
        match std::env::var(EXTERNAL_URL_VAR) {
            Ok(url) if std::env::var_os(EXTERNAL_CONFIGURED_VAR).is_some() => Some(Broker::external(&url)),
            Ok(_) => {
                eprintln!(
                    "note: skipped, this test needs a broker configured with {conf:?}; \
                     set {EXTERNAL_CONFIGURED_VAR}=1 if the external broker has that configuration"
                );
                None
            }
            Err(_) => Some(Broker::spawn(Some(conf))),
        }
    }

    /// Starts a `warren` process on the data directory `data_dir` (created if
    /// missing), for tests that restart a broker on the same data: the
    /// directory is kept when this broker is killed or dropped, and the
    /// broker's stderr is appended to `data_dir/broker.stderr`. Always spawns,
    /// even when `WARREN_TEST_AMQP_URL` is set (callers check
    /// [`Broker::is_external`] first).
    pub fn start_in(data_dir: &Path) -> Broker {
        std::fs::create_dir_all(data_dir).expect("create broker data dir");
        Broker::spawn_in(data_dir.to_path_buf(), None, true, &[])
    }

    /// Kills a spawned broker with SIGKILL (`Child::kill` on unix) and waits
    /// for the process to be gone. A directory given to
    /// [`Broker::start_in`] is kept; any other is removed as on drop.
    pub fn kill9(mut self) {
        if let Some(mut spawned) = self.process.take() {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
            if !spawned.keep_dir {
                let _ = std::fs::remove_dir_all(&spawned.data_dir);
            }
        }
    }

    /// The AMQPS port of a spawned broker configured with a TLS listener.
    pub fn amqps_port(&self) -> Option<u16> {
        self.amqps_port
    }

    /// The management HTTPS port of a spawned broker configured with `management.ssl.port`.
    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }

    /// The process id of a spawned broker (`None` for an external one).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// The management HTTP address of a spawned broker (`None` for an external one).
    pub fn http_addr(&self) -> Option<String> {
        self.http_port.map(|p| format!("127.0.0.1:{p}"))
    }

    /// Starts a broker on `data_dir` with a config file, kept like [`Broker::start_in`].
    pub fn start_in_with_config(data_dir: &Path, conf: &str) -> Broker {
        std::fs::create_dir_all(data_dir).expect("create broker data dir");
        Broker::spawn_in(data_dir.to_path_buf(), Some(conf), true, &[])
    }

    /// Like [`Broker::start_in_with_config`] (without a config file for `None`), with these
    /// environment variables set for the process (`WARREN_NODENAME`, say).
    pub fn start_in_with_env(data_dir: &Path, conf: Option<&str>, env: &[(&str, &str)]) -> Broker {
        std::fs::create_dir_all(data_dir).expect("create broker data dir");
        Broker::spawn_in(data_dir.to_path_buf(), conf, true, env)
    }

    /// The data directory of a spawned broker (`None` for an external one).
    pub fn data_dir(&self) -> Option<&Path> {
        self.process.as_ref().map(|spawned| spawned.data_dir.as_path())
    }

    pub fn is_external() -> bool {
        std::env::var_os(EXTERNAL_URL_VAR).is_some()
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` for the default user and vhost.
    pub fn amqp_url(&self) -> String {
        self.amqp_url_with(&self.user, &self.password, &self.vhost)
    }

    /// An AMQP URL for other credentials or another virtual host.
    pub fn amqp_url_with(&self, user: &str, password: &str, vhost: &str) -> String {
        format!("amqp://{user}:{password}@{}:{}/{}", self.host, self.port, percent_encode(vhost))
    }

    fn external(url: &str) -> Broker {
        let rest = url
            .strip_prefix("amqp://")
            .unwrap_or_else(|| panic!("{EXTERNAL_URL_VAR} must be an amqp:// URL, got {url:?}"));
        let (credentials, address) = rest.split_once('@').unwrap_or(("guest:guest", rest));
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let (host_port, vhost) = address.split_once('/').unwrap_or((address, "%2f"));
        let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5672"));
        Broker {
            host: host.to_string(),
            port: port.parse().unwrap_or_else(|_| panic!("bad port in {EXTERNAL_URL_VAR}: {url:?}")),
            user: user.to_string(),
            password: password.to_string(),
            vhost: percent_decode(if vhost.is_empty() { "%2f" } else { vhost }),
            http_port: None,
            amqps_port: None,
            https_port: None,
            process: None,
        }
    }

    fn spawn(conf: Option<&str>) -> Broker {
        let data_dir = std::env::temp_dir().join(unique("warren-test"));
        std::fs::create_dir_all(&data_dir).expect("create broker data dir");
        Broker::spawn_in(data_dir, conf, false, &[])
    }

    /// Spawns `warren` on an existing `data_dir`. A kept directory (`keep_dir`)
    /// gets the broker's stderr appended to its log; otherwise the log is
    /// created afresh and the directory is removed with the broker.
    fn spawn_in(data_dir: PathBuf, conf: Option<&str>, keep_dir: bool, env: &[(&str, &str)]) -> Broker {
        let stderr_path = data_dir.join("broker.stderr");
        let stderr = if keep_dir {
            std::fs::OpenOptions::new().create(true).append(true).open(&stderr_path)
        } else {
            std::fs::File::create(&stderr_path)
        }
        .expect("create broker stderr file");

        let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
        command.args(["--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]).arg("--data-dir").arg(&data_dir);
        command.envs(env.iter().copied());
        if let Some(conf) = conf {
            let conf_path = data_dir.join("rabbitmq.conf");
            std::fs::write(&conf_path, conf).expect("write broker config");
            command.arg("--config").arg(conf_path);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn the warren binary");

        // Read stdout on a thread so that startup can be bounded by a
        // timeout; the thread keeps draining stdout for the broker's lifetime.
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The receiver is gone once startup is over; keep draining.
                let _ = lines_tx.send(line);
            }
        });

        let mut spawned = Spawned { child, data_dir, keep_dir };
        let port = match wait_for_amqp_port(&lines_rx) {
            Ok(port) => port,
            Err(why) => {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("warren did not start: {why}\n--- broker stderr ---\n{log}");
            }
        };
        // The HTTP line follows the AMQP one.
        let http_port = lines_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .ok()
            .and_then(|l| l.trim().strip_prefix("listening http ").and_then(|a| a.rsplit_once(':')?.1.parse().ok()));
        // The AMQPS and HTTPS listeners, when configured, are announced after it, in this order.
        let wants = |key: &str| conf.is_some_and(|c| c.contains(key));
        let (mut amqps_port, mut https_port) = (None, None);
        for _ in 0..usize::from(wants("listeners.ssl.default")) + usize::from(wants("management.ssl.port")) {
            let Ok(line) = lines_rx.recv_timeout(STARTUP_TIMEOUT) else { break };
            let port = |prefix: &str| line.trim().strip_prefix(prefix).and_then(|a| a.rsplit_once(':')?.1.parse().ok());
            amqps_port = amqps_port.or(port("listening amqps "));
            https_port = https_port.or(port("listening https "));
        }
        Broker {
            host: "127.0.0.1".to_string(),
            port,
            user: "guest".to_string(),
            password: "guest".to_string(),
            vhost: "/".to_string(),
            http_port,
            amqps_port,
            https_port,
            process: Some(spawned),
        }
    }
}

fn wait_for_amqp_port(lines: &mpsc::Receiver<String>) -> Result<u16, String> {
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(address) = line.trim().strip_prefix("listening amqp ") {
                    let port = address
                        .rsplit_once(':')
                        .and_then(|(_, port)| port.parse().ok())
                        .ok_or_else(|| format!("unparsable listening line {line:?}"))?;
                    return Ok(port);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("no `listening amqp` line on stdout within {STARTUP_TIMEOUT:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("stdout closed before the `listening amqp` line".to_string())
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(spawned) = &mut self.process {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
            if !spawned.keep_dir {
                let _ = std::fs::remove_dir_all(&spawned.data_dir);
            }
        }
    }
}

/// True when the tests run against an external broker (`WARREN_TEST_AMQP_URL`
/// set) rather than a spawned `warren`: for the few assertions that only hold
/// for the behaviour Warren implements (RabbitMQ 4.x) and not for an older
/// RabbitMQ used as the reference.
pub fn is_external() -> bool {
    Broker::is_external()
}

/// A name no other test (in this process or another one sharing the broker)
/// uses: `prefix` plus process id, time and a counter.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// Awaits `future`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// Polls `check` until it returns true, failing after [`TIMEOUT`].
///
/// Only for state changes the broker performs asynchronously and announces
/// with no event a client can await (e.g. an exclusive queue being deleted
/// after its owner's connection is gone).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02x}"),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// AMQP reply codes used in assertions.
pub mod code {
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const NOT_ALLOWED: u16 = 530;
}

/// Sets (`+i`) or clears (`-i`) the immutable attribute of `path` (a file or a directory; even
/// root cannot write to it then: the error a failing disk gives); whether it worked (it needs
/// root and a filesystem with attributes).
pub fn chattr(flag: &str, path: &std::path::Path) -> bool {
    std::process::Command::new("chattr").arg(flag).arg(path).status().is_ok_and(|s| s.success())
}

/// Clears the immutable attribute of its path when dropped, whatever the test's outcome.
pub struct Immutable(pub std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}
