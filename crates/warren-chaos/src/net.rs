//! Where the nodes run: each in a network namespace of its own, joined by a bridge, with an
//! nftables table per node to make partitions (when running as root with `ip` and `nft`), or
//! all on 127.0.0.1 with distinct ports (process faults only).
//!
//! Namespaces layout for a run of process `P` on subnet `10.213.S.0/24` (a subnet no interface
//! of this machine uses, chosen at start):
//!
//! ```text
//!   root namespace: wcPh 10.213.S.254 (the harness's clients)
//!        | veth
//!   wchaos-P-sw: bridge br0 (its own namespace, so no host firewall sees the bridged traffic)
//!        | veth n1      | veth n2      | veth n3
//!   wchaos-P-n1        wchaos-P-n2        wchaos-P-n3
//!   eth0 10.213.S.1    eth0 10.213.S.2    eth0 10.213.S.3
//!   table inet wchaos { chain input { ... ip saddr <peer> drop } }
//! ```
//!
//! Traffic between the namespaces never leaves the machine. A partition drops packets from a
//! peer's address at a node's input hook (as RabbitMQ's Jepsen tests do with iptables), so a
//! one-way cut is one rule; the harness's own address is never dropped, so clients reach every
//! node whatever the partition. Leftovers of a run whose process is gone are removed at start.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

const PREFIX: &str = "wchaos-";

/// Runs a command; its stdout, or an error naming it with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

/// Whether this process runs as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Whether process `pid` is a live harness (not gone, not a zombie, not another program that
/// took the number since).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) state ...": the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    state != Some("Z") && state != Some("X") && comm.trim() == "warren-chaos"
}

/// Removes namespaces (and the processes in them) left by runs whose process is gone.
pub fn remove_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid_alive(pid) {
            continue;
        }
        eprintln!("warren-chaos: removing {name}, left by run {pid} which is gone");
        kill_namespace_processes(name);
        let _ = ip(&["netns", "del", name]);
    }
}

fn kill_namespace_processes(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-KILL", pid]);
        }
    }
}

/// Why namespaces cannot be used here, if they cannot.
pub fn probe() -> Result<(), String> {
    if !is_root() {
        return Err("not running as root".into());
    }
    ip(&["-V"]).map_err(|e| format!("no usable `ip`: {e}"))?;
    run("nft", &["--version"]).map_err(|e| format!("no usable `nft`: {e}"))?;
    let ns = format!("{PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &ns]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let result = run("ip", &["netns", "exec", &ns, "nft", "add", "table", "inet", "wchaos"])
        .map_err(|e| format!("nftables does not work in a namespace: {e}"));
    let _ = ip(&["netns", "del", &ns]);
    result.map(|_| ())
}

/// The network of a run in namespaces. Removed on drop.
pub struct Namespaces {
    tag: String,
    subnet: u8,
    nodes: usize,
    removed: bool,
}

impl Namespaces {
    /// Creates the switch, the host's link and one namespace per node.
    pub fn create(nodes: usize) -> Result<Namespaces, String> {
        let pid = std::process::id();
        let subnet = free_subnet()?;
        let mut ns = Namespaces { tag: format!("{PREFIX}{pid}"), subnet, nodes, removed: false };
        ns.build().inspect_err(|_| ns.remove())?;
        Ok(ns)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.tag)
    }

    fn host_if(&self) -> String {
        format!("wc{}h", std::process::id())
    }

    /// The namespace node `i` runs in.
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{}", self.tag, i + 1)
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, (i + 1) as u8)
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 254)
    }

    fn build(&mut self) -> Result<(), String> {
        let sw = self.switch();
        let host_if = self.host_if();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "host", "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "host", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.host_ip()), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        for i in 0..self.nodes {
            let ns = self.node_ns(i);
            let port = format!("n{}", i + 1);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.node_ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            self.nft(i, &["add", "table", "inet", "wchaos"])?;
            self.nft(
                i,
                &["add", "chain", "inet", "wchaos", "input", "{ type filter hook input priority 0; policy accept; }"],
            )?;
        }
        Ok(())
    }

    fn nft(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let ns = self.node_ns(node);
        let mut all = vec!["netns", "exec", ns.as_str(), "nft"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Drops every packet from node `from` arriving at node `to`.
    pub fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        let src = self.node_ip(from).to_string();
        self.nft(to, &["add", "rule", "inet", "wchaos", "input", "ip", "saddr", &src, "drop"]).map(|_| ())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        let mut result = Ok(());
        for i in 0..self.nodes {
            if let Err(e) = self.nft(i, &["flush", "chain", "inet", "wchaos", "input"]) {
                result = Err(e);
            }
        }
        result
    }

    /// Kills whatever still runs in the namespaces and deletes them (the host's link goes with
    /// the switch's namespace, which holds its peer).
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        for i in 0..self.nodes {
            let ns = self.node_ns(i);
            kill_namespace_processes(&ns);
            let _ = ip(&["netns", "del", &ns]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
        let _ = ip(&["link", "del", &self.host_if()]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A /24 in 10.213.0.0/16 that no interface here has an address in.
fn free_subnet() -> Result<u8, String> {
    let addrs = ip(&["-o", "-4", "addr", "show"])?;
    let routes = ip(&["-4", "route", "show"]).unwrap_or_default();
    (1..=250u8)
        .find(|s| {
            let needle = format!("10.213.{s}.");
            !addrs.contains(&needle) && !routes.contains(&needle)
        })
        .ok_or_else(|| "no free subnet in 10.213.0.0/16".to_string())
}

/// The network a run uses.
pub enum Net {
    Loopback,
    Namespaces(Namespaces),
}

impl Net {
    pub fn describe(&self) -> String {
        match self {
            Net::Loopback => "loopback (127.0.0.1, distinct ports): process faults only".into(),
            Net::Namespaces(ns) => format!(
                "network namespaces {}-n1..n{} on 10.213.{}.0/24, partitions with nftables",
                ns.tag, ns.nodes, ns.subnet
            ),
        }
    }

    pub fn partitions(&self) -> bool {
        matches!(self, Net::Namespaces(_))
    }
}
