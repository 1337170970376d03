//! The `warren` processes: configuration, data directories, start, SIGKILL, SIGSTOP/SIGCONT,
//! restart on the same data directory, readiness.

use crate::mgmt::Api;
use crate::net::{Namespaces, Net};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AMQP_PORT: u16 = 5672;
const HTTP_PORT: u16 = 15672;
const DIST_PORT: u16 = 25672;
const SETPRIV: &str = "/usr/bin/setpriv";

/// One node's fixed facts.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub amqp: SocketAddr,
    pub http: SocketAddr,
    pub dist: SocketAddr,
    pub dir: PathBuf,
    pub netns: Option<String>,
}

impl Spec {
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f?heartbeat=10", self.amqp)
    }

    pub fn http(&self) -> String {
        self.http.to_string()
    }
}

pub struct Node {
    pub spec: Spec,
    child: Option<Child>,
    pub paused: bool,
    /// Its replicated data's file system is full (a disk fault in place).
    pub disk_full: bool,
    /// Killed and taken out of the cluster (a replace fault in place): started again on an
    /// emptied data directory.
    pub replaced: bool,
}

impl Node {
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Cluster {
    warren: PathBuf,
    pub nodes: Vec<Node>,
    pub net: Net,
    api: Api,
    /// Each node's replicated data (`<data dir>/cluster`) is on a tmpfs of its own, for disk
    /// faults.
    disks: bool,
}

/// The size of each node's replicated-data file system under disk faults.
const DISK_SIZE: &str = "256m";

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// 20 random uppercase letters.
fn cookie() -> String {
    let mut rng = fastrand::Rng::new();
    (0..20).map(|_| rng.uppercase()).collect()
}

fn write_cookie(dir: &Path, cookie: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(".cookie");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, cookie).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl Cluster {
    /// Lays out `n` nodes under `run_dir` (data directory, configuration, cookie), started by
    /// [`Cluster::start`].
    pub fn new(warren: &Path, n: usize, run_dir: &Path, net: Net) -> Result<Cluster, String> {
        let mut specs = Vec::new();
        for i in 0..n {
            let dir = run_dir.join(format!("node{}", i + 1));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let spec = match &net {
                Net::Namespaces(ns) => {
                    let a = ns.node_ip(i);
                    let at = |port| SocketAddr::V4(SocketAddrV4::new(a, port));
                    Spec {
                        name: format!("warren{}@{a}", i + 1),
                        amqp: at(AMQP_PORT),
                        http: at(HTTP_PORT),
                        dist: at(DIST_PORT),
                        dir,
                        netns: Some(ns.node_ns(i)),
                    }
                }
                Net::Loopback => {
                    let at = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
                    Spec {
                        name: format!("warren{}@127.0.0.1", i + 1),
                        amqp: at(free_port()?),
                        http: at(free_port()?),
                        dist: at(free_port()?),
                        dir,
                        netns: None,
                    }
                }
            };
            specs.push(spec);
        }
        let cookie = cookie();
        for spec in &specs {
            let mut conf = String::from("# written by warren-chaos\nloopback_users = none\n");
            if n > 1 {
                conf.push_str("cluster_name = chaos\ncluster_formation.peer_discovery_backend = classic_config\n");
                for (j, other) in specs.iter().enumerate() {
                    conf.push_str(&format!(
                        "cluster_formation.classic_config.nodes.{} = {}:{}\n",
                        j + 1,
                        other.name,
                        other.dist.port()
                    ));
                }
                conf.push_str(&format!("distribution.listener.interface = {}\n", spec.dist.ip()));
                write_cookie(&spec.dir, &cookie)?;
            }
            let path = spec.dir.join("rabbitmq.conf");
            std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(Cluster {
            warren: warren.to_path_buf(),
            nodes: specs
                .into_iter()
                .map(|spec| Node { spec, child: None, paused: false, disk_full: false, replaced: false })
                .collect(),
            net,
            api: Api::new(),
            disks: false,
        })
    }

    pub fn specs(&self) -> Vec<Spec> {
        self.nodes.iter().map(|n| n.spec.clone()).collect()
    }

    pub fn namespaces(&self) -> Option<&Namespaces> {
        match &self.net {
            Net::Namespaces(ns) => Some(ns),
            Net::Loopback => None,
        }
    }

    /// Puts each node's replicated data (`<data dir>/cluster`) on a tmpfs of its own (needs
    /// root), so that a disk fault can fill it; before the nodes start.
    pub fn own_disks(&mut self) -> Result<(), String> {
        for node in &self.nodes {
            let dir = node.spec.dir.join("cluster");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let dir = dir.to_string_lossy().into_owned();
            run("mount", &["-t", "tmpfs", "-o", &format!("size={DISK_SIZE}"), "tmpfs", &dir])?;
            self.disks = true;
        }
        Ok(())
    }

    /// Fills node `i`'s replicated-data file system: its next writes there fail (no space).
    pub fn fill_disk(&mut self, i: usize) -> Result<(), String> {
        if !self.disks {
            return Err("disk faults need the nodes' own file systems (root)".into());
        }
        let filler = self.nodes[i].spec.dir.join("cluster").join("filler");
        let filler = filler.to_string_lossy().into_owned();
        // As much as it takes: fallocate fills what is free in one go; dd, should it not be
        // supported, writes until the file system is full (and fails then, as it should).
        if run("fallocate", &["-l", DISK_SIZE, &filler]).is_err() {
            let _ = run("dd", &["if=/dev/zero", &format!("of={filler}"), "bs=1M"]);
        }
        self.nodes[i].disk_full = true;
        Ok(())
    }

    /// Frees node `i`'s replicated-data file system again.
    pub fn free_disk(&mut self, i: usize) -> Result<(), String> {
        let filler = self.nodes[i].spec.dir.join("cluster").join("filler");
        std::fs::remove_file(&filler).map_err(|e| format!("{}: {e}", filler.display()))?;
        self.nodes[i].disk_full = false;
        Ok(())
    }

    /// Starts node `i` on its data directory (its output appended to `node.log` there).
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let spec = &node.spec;
        let log_path = spec.dir.join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        // `ip netns exec` and `setpriv` exec what follows: the child's pid is warren's. With
        // setpriv the node is killed when the harness dies, whatever killed it.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &spec.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(Into::into));
        }
        if Path::new(SETPRIV).is_file() {
            argv.extend([SETPRIV, "--pdeathsig", "KILL", "--"].map(Into::into));
        }
        argv.push(self.warren.clone().into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("--amqp-listen")
            .arg(spec.amqp.to_string())
            .arg("--http-listen")
            .arg(spec.http.to_string())
            .arg("--data-dir")
            .arg(&spec.dir)
            .arg("--config")
            .arg(spec.dir.join("rabbitmq.conf"))
            .env("WARREN_NODENAME", &spec.name)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", self.warren.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Empties node `i`'s data directory but its cookie and configuration (a node reset, as a
    /// new machine under the old name). The node must not run.
    pub fn wipe(&mut self, i: usize) -> Result<(), String> {
        let dir = &self.nodes[i].spec.dir;
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == ".cookie" || name == "rabbitmq.conf" || name == "node.log" {
                continue;
            }
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[i].paused = false;
    }

    fn signal(&self, i: usize, sig: &str) -> Result<(), String> {
        let pid = self.nodes[i].pid().ok_or_else(|| format!("node {} is not running", i + 1))?;
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map_err(|e| format!("kill {sig} {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill {sig} {pid}: {status}"))
        }
    }

    pub fn pause(&mut self, i: usize) -> Result<(), String> {
        self.signal(i, "-STOP")?;
        self.nodes[i].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<(), String> {
        self.signal(i, "-CONT")?;
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Waits until node `i` answers `/api/overview` and accepts AMQP connections.
    pub async fn wait_ready(&mut self, i: usize, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let http = self.nodes[i].spec.http();
        let amqp = self.nodes[i].spec.amqp;
        loop {
            if !self.nodes[i].running() {
                return Err(format!(
                    "node {} exited; its log ends:\n{}",
                    i + 1,
                    tail(&self.nodes[i].spec.dir.join("node.log"), 20)
                ));
            }
            let up = matches!(self.api.get(&http, "/api/overview").await, Some((200, _)))
                && tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(amqp))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if up {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(format!("node {} not ready within {within:?}", i + 1));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `i`'s write-ahead log takes writes again: its log says so once for each
    /// time it said the WAL stopped (a node that wrote nothing while its disk was full never
    /// stopped).
    pub async fn wait_wal_recovered(&mut self, i: usize, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let path = self.nodes[i].spec.dir.join("node.log");
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let stopped = text.matches("the cluster's write-ahead log stopped:").count();
            let back = text.matches("the cluster's write-ahead log takes writes again").count();
            if back >= stopped {
                return Ok(started.elapsed());
            }
            if !self.nodes[i].running() {
                return Err(format!("node {} exited; its log ends:\n{}", i + 1, tail(&path, 20)));
            }
            if started.elapsed() > within {
                return Err(format!(
                    "node {}'s write-ahead log did not recover within {within:?}; its log ends:\n{}",
                    i + 1,
                    tail(&path, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node lists every node as running.
    pub async fn wait_converged(&mut self, within: Duration) -> Result<(), String> {
        let started = Instant::now();
        let names: Vec<String> = self.nodes.iter().map(|n| n.spec.name.clone()).collect();
        loop {
            let mut last = String::new();
            let mut all = true;
            for node in &self.nodes {
                let view = self.api.nodes(&node.spec.http()).await;
                let ok = view
                    .as_ref()
                    .is_some_and(|v| names.iter().all(|name| v.iter().any(|(n, running)| n == name && *running)));
                if !ok {
                    all = false;
                    last = format!("node {} sees {view:?}", node.spec.name);
                }
            }
            if all {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(format!("the nodes did not all see each other running within {within:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills every node (continuing paused ones is not needed: SIGKILL ends a stopped process).
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Kills every node, unmounts their own file systems and removes the namespaces.
    pub fn teardown(&mut self) {
        self.stop_all();
        if self.disks {
            for node in &self.nodes {
                let _ = run("umount", &[&node.spec.dir.join("cluster").to_string_lossy()]);
            }
            self.disks = false;
        }
        if let Net::Namespaces(ns) = &mut self.net {
            ns.remove();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
