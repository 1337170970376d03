//! Real `warren` processes formed into a cluster, for the cluster tests: data directories,
//! cookies, ports, configuration and the management API's view of the nodes.

use super::{eventually, unique, Broker};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a process that must fail at start is given before it counts as started.
pub const START_FAILURE_WITHIN: Duration = Duration::from_secs(10);

/// Data directories removed at the end of the test, whatever its outcome.
pub struct Dirs(pub Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&dir).expect("create a data dir");
    dir
}

/// A port free now, for a node to listen on later (the listener is closed at once). It is
/// taken below the kernel's ephemeral range (32768 and up here), so no listener bound to port
/// 0 and no outgoing connection in the meantime can take it first; each call in this process
/// gives a different one, and a process starts at its own place in the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// Writes `cookie` as `dir/.cookie`, readable by its owner only.
pub fn write_cookie(dir: &Path, cookie: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(".cookie");
    // A 0400 file cannot be opened for writing; replace it.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, cookie).expect("write the cookie");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod 0400");
}

pub fn random_cookie() -> String {
    unique("cookie").to_uppercase().replace('-', "")
}

/// GET `path` on the management API at `addr` as guest; the status and the JSON.
pub async fn get(addr: &str, path: &str) -> (u16, Value) {
    send(addr, "GET", path, None).await
}

/// `method` `path` on the management API at `addr` as guest, with `body` as JSON if given;
/// the status and the JSON answered (null when none).
pub async fn send(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request =
        reqwest::Client::new().request(method, format!("http://{addr}{path}")).basic_auth("guest", Some("guest"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("HTTP body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Runs warrenctl with `args` against the management API at `addr`: what it printed, or its
/// error.
pub async fn warrenctl(addr: &str, args: &[&str]) -> Result<String, String> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut argv: Vec<String> = ["warrenctl", "--host", host, "--port", port].map(String::from).to_vec();
    argv.extend(args.iter().map(|a| a.to_string()));
    let cli = <warrenctl::Cli as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || warrenctl::run(&cli).map_err(|e| e.to_string())).await.expect("warrenctl ran")
}

/// `/api/nodes` at `addr`: each node's name and whether it is running, in the order listed.
pub async fn nodes(addr: &str) -> Vec<(String, bool)> {
    let (status, list) = get(addr, "/api/nodes").await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("a list of nodes")
        .iter()
        .map(|n| (n["name"].as_str().expect("a name").to_owned(), n["running"].as_bool().expect("running")))
        .collect()
}

/// Waits until `/api/nodes` at `addr` lists exactly `expected` (name, running), in that order.
pub async fn wait_nodes(addr: &str, what: &str, expected: &[(String, bool)]) {
    eventually(&format!("{what} (node at {addr})"), || async { nodes(addr).await == expected }).await;
}

/// `warrenctl cluster_status` against the management API at `addr`.
pub fn cluster_status(addr: &str, json: bool) -> String {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut argv = vec!["warrenctl", "--host", host, "--port", port, "cluster_status"];
    if json {
        argv.extend(["--format", "json"]);
    }
    let cli = <warrenctl::Cli as clap::Parser>::try_parse_from(argv).expect("cluster_status parses");
    warrenctl::run(&cli).unwrap_or_else(|e| panic!("warrenctl cluster_status failed: {e}"))
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub broker: Option<Broker>,
}

impl Node {
    pub fn start(&mut self, conf: &str) {
        let env = [("WARREN_NODENAME", self.name.as_str())];
        self.broker = Some(Broker::start_in_with_env(&self.dir, Some(conf), &env));
    }

    pub fn http(&self) -> String {
        self.broker.as_ref().expect("running").http_addr().expect("an HTTP listener")
    }

    pub fn kill(&mut self) {
        self.broker.take().expect("running").kill9();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.stderr")).unwrap_or_default()
    }
}

impl Node {
    pub fn amqp_url(&self) -> String {
        self.broker.as_ref().expect("running").amqp_url()
    }
}

/// `n` nodes configured as one cluster on 127.0.0.1 (names `warrenI@127.0.0.1`, each entry
/// with its inter-node port), sharing a cookie, each in its own data directory.
pub struct Cluster {
    pub conf: String,
    /// What each node's configuration has beyond `conf`.
    extras: Vec<String>,
    pub names: Vec<String>,
    pub nodes: Vec<Node>,
    _dirs: Dirs,
}

impl Cluster {
    /// Starts every node.
    pub fn start(n: usize, tag: &str) -> Cluster {
        Cluster::start_with(n, tag, |_| String::new())
    }

    /// Starts every node, node `i` (0-based) with `extra(i)` added to its configuration.
    pub fn start_with(n: usize, tag: &str, extra: impl Fn(usize) -> String) -> Cluster {
        Cluster::start_on((0..n).map(|_| temp_dir(tag)).collect(), tag, extra)
    }

    /// Starts a node in each of `dirs` (removed at the end), node `i` (0-based) with
    /// `extra(i)` added to its configuration.
    pub fn start_on(dirs: Vec<PathBuf>, tag: &str, extra: impl Fn(usize) -> String) -> Cluster {
        let n = dirs.len();
        let cookie = random_cookie();
        let names: Vec<String> = (1..=n).map(|i| format!("warren{i}@127.0.0.1")).collect();
        let mut conf = format!(
            "cluster_name = {tag}\ncluster_formation.peer_discovery_backend = classic_config\n\
             distribution.listener.interface = 127.0.0.1\n"
        );
        for (i, name) in names.iter().enumerate() {
            conf.push_str(&format!("cluster_formation.classic_config.nodes.{} = {name}:{}\n", i + 1, free_port()));
        }
        let dirs = Dirs(dirs);
        let mut nodes: Vec<Node> = names
            .iter()
            .zip(&dirs.0)
            .map(|(name, dir)| Node { name: name.clone(), dir: dir.clone(), broker: None })
            .collect();
        let extras: Vec<String> = (0..n).map(extra).collect();
        for (node, extra) in nodes.iter_mut().zip(&extras) {
            write_cookie(&node.dir, &cookie);
            node.start(&format!("{conf}{extra}"));
        }
        Cluster { conf, extras, names, nodes, _dirs: dirs }
    }

    /// Starts node `i` (0-based) again, on its data directory.
    pub fn restart(&mut self, i: usize) {
        let conf = format!("{}{}", self.conf, self.extras[i]);
        self.nodes[i].start(&conf);
    }
}

impl Drop for Cluster {
    /// A failed test shows what each node logged (Raft's own chatter left out).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for node in &self.nodes {
            let log = node.log();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("openraft")).collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!("==== {} ({})\n{}", node.name, node.dir.display(), tail.join("\n"));
        }
    }
}
