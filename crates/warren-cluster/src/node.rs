//! A node's identity in a cluster: its name (`name@host`, as RabbitMQ's `rabbit@host`), the
//! numeric id its Raft groups know it by, the shared secret (the `.cookie` file) and the
//! cluster's settings as rabbitmq.conf gives them (`cluster_name`,
//! `cluster_formation.classic_config.nodes.N`, `distribution.listener.*`).
//!
//! Warren has no epmd: a node listed as `name@host:port` is reached on that port, one listed
//! as `name@host` on the local `distribution.listener.port_range.min` (25672 by default, as
//! RabbitMQ's distribution port).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The node name when none is given (RabbitMQ's is `rabbit@<hostname>`; Warren's has always
/// reported this one).
pub const DEFAULT_NODE_NAME: &str = "warren@localhost";

/// The inter-node port when none is configured: RabbitMQ's distribution port (the AMQP port
/// plus 20000).
pub const DEFAULT_DISTRIBUTION_PORT: u16 = 25672;

/// The shared secret's file, in the node's data directory.
pub const COOKIE_FILE: &str = ".cookie";

/// Letters in a cookie Warren creates (Erlang's are 20 uppercase letters too).
const COOKIE_LETTERS: usize = 20;

/// A node's name: `name@host`, and for a node listed in the configuration the port its
/// inter-node listener is on, when given (`name@host:port`; an IPv6 host takes brackets then:
/// `name@[::1]:25672`). Two names are the same node when `name` and `host` are equal, whatever
/// the port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName {
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
}

impl NodeName {
    /// `name@host`, without the port: what the node is called everywhere (the management API,
    /// metrics) and what its id is derived from.
    pub fn node(&self) -> String {
        format!("{}@{}", self.name, self.host)
    }

    /// The node's id in Raft groups: see [`node_id`].
    pub fn id(&self) -> u64 {
        node_id(&self.node())
    }

    /// Whether `other` names the same node (the port aside).
    pub fn same_node(&self, other: &NodeName) -> bool {
        self.name == other.name && self.host == other.host
    }

    /// The address to dial this node on: its port, or `default_port` when it has none.
    pub fn dial_addr(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }

    /// This node's own name as `WARREN_NODENAME` or `--nodename` give it: `name@host`, or a
    /// bare `name` to which the machine's short host name is added (as RabbitMQ does with
    /// `RABBITMQ_NODENAME=rabbit`). A port is refused: the node's inter-node port comes from
    /// its entry in the nodes list or from `distribution.listener.port_range.min`.
    pub fn own(text: &str) -> Result<NodeName, String> {
        let text = text.trim();
        let full = if text.contains('@') { text.to_owned() } else { format!("{text}@{}", short_hostname()) };
        let node: NodeName = full.parse()?;
        if node.port.is_some() {
            return Err(format!(
                "node name '{text}' has a port: the node's own name is name@host; its inter-node port is \
                 given by its entry in cluster_formation.classic_config.nodes or by \
                 distribution.listener.port_range.min"
            ));
        }
        Ok(node)
    }
}

impl FromStr for NodeName {
    type Err = String;

    /// `name@host` or `name@host:port`. The name takes letters, digits, `_`, `-` and `.`; the
    /// host is a host name or an IP address (IPv6 in brackets when a port follows).
    fn from_str(text: &str) -> Result<NodeName, String> {
        let text = text.trim();
        let Some((name, rest)) = text.split_once('@') else {
            return Err(format!("'{text}' is not a node name: expected name@host or name@host:port"));
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(format!(
                "'{text}': the name before '@' must be letters, digits, '_', '-' or '.', and not empty"
            ));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(format!("'{text}': '[' without ']' in the host"));
            };
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("'{text}': expected ':port' after ']'")),
                },
            }
        } else {
            match rest.split_once(':') {
                // One colon: host and port. None, or several (an IPv6 address), a host alone.
                Some((host, port)) if !port.contains(':') => (host, Some(port)),
                _ => (rest, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '/')) {
            return Err(format!("'{text}': the host after '@' must be a host name or an IP address"));
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => Some(port),
                _ => return Err(format!("'{text}': '{p}' is not a port (1 to 65535)")),
            },
        };
        Ok(NodeName { name: name.to_owned(), host: host.to_owned(), port })
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            None => write!(f, "{}@{}", self.name, self.host),
            Some(port) if self.host.contains(':') => write!(f, "{}@[{}]:{port}", self.name, self.host),
            Some(port) => write!(f, "{}@{}:{port}", self.name, self.host),
        }
    }
}

/// The id a node's Raft groups know it by, derived from its name (`name@host`): the first
/// eight bytes, big-endian, of the name's SHA-256. Every node computes every other's id from
/// the same configuration, so ids need no agreement; the derivation must never change, since
/// ids are kept in the Raft logs.
pub fn node_id(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The machine's host name up to its first dot (what RabbitMQ adds to a bare node name, unless
/// told to use long names); `localhost` if it has none.
pub fn short_hostname() -> String {
    let uname = rustix::system::uname();
    let full = uname.nodename().to_string_lossy();
    match full.split('.').next() {
        Some(short) if !short.is_empty() => short.to_owned(),
        _ => "localhost".to_owned(),
    }
}

/// The cluster's shared secret, from `data_dir/.cookie`: read (surrounding whitespace trimmed)
/// if the file exists, else created with 20 random uppercase letters, readable by its owner
/// only (mode 0400). As Erlang does, a cookie file that is empty, or that its group or others
/// may read or write, is refused. Only clustered nodes call this.
pub fn load_or_create_cookie(data_dir: &Path) -> Result<Vec<u8>, String> {
    let path = data_dir.join(COOKIE_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => read_cookie(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_cookie(&path) {
            Ok(cookie) => Ok(cookie),
            // Created by someone else meanwhile: that one holds.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_cookie(&path),
            Err(e) => Err(format!("cannot create the cookie file {}: {e}", path.display())),
        },
        Err(e) => Err(format!("cannot read the cookie file {}: {e}", path.display())),
    }
}

fn read_cookie(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the cookie file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the cookie file {shown} is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the cookie file {shown} must be accessible by its owner only (mode 0400 or 0600), \
                 but has mode {mode:04o}"
            ));
        }
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the cookie file {shown}: {e}"))?;
    let cookie = bytes.trim_ascii();
    if cookie.is_empty() {
        return Err(format!("the cookie file {shown} is empty"));
    }
    Ok(cookie.to_vec())
}

fn create_cookie(path: &Path) -> std::io::Result<Vec<u8>> {
    let cookie = random_letters(COOKIE_LETTERS)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o400);
    }
    let mut file = options.open(path)?;
    file.write_all(&cookie)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        // The directory entry too, so that a crash cannot leave the cluster with a new secret
        // this node forgot.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(cookie)
}

/// `n` uppercase letters drawn uniformly from the operating system's random source.
fn random_letters(n: usize) -> std::io::Result<Vec<u8>> {
    // 234 = 9 * 26: bytes at or above it are drawn again, so that every letter is as likely.
    const LIMIT: u8 = 234;
    let mut letters = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    while letters.len() < n {
        getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(format!("no random bytes for the cookie: {e}")))?;
        letters.extend(buf.iter().filter(|b| **b < LIMIT).map(|b| b'A' + b % 26).take(n - letters.len()));
    }
    Ok(letters)
}

/// The inter-node listener's ports (`distribution.listener.port_range.min` / `.max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange { min: DEFAULT_DISTRIBUTION_PORT, max: DEFAULT_DISTRIBUTION_PORT }
    }
}

/// A node's cluster configuration, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `cluster_name`; the node's own name (`name@host`) unless configured, as in RabbitMQ.
    pub cluster_name: String,
    /// This node, without a port.
    pub me: NodeName,
    /// Every node of the cluster as listed (with their ports where given), this node included;
    /// empty for a node on its own (no nodes listed).
    pub nodes: Vec<NodeName>,
    /// Where the inter-node listener binds: `distribution.listener.interface` and this node's
    /// port (its entry's, else the range's first).
    pub listen: SocketAddr,
    pub port_range: PortRange,
}

impl ClusterSettings {
    /// The settings of node `me` given the configured cluster name, the `classic_config` nodes
    /// in the order listed, and the listener's interface and port range.
    ///
    /// A node listed twice with different ports is an error. When nodes are listed but `me` is
    /// not among them, it is added (RabbitMQ tolerates a node missing from its own list too); it
    /// then listens on the range's first port, and the others know it only if they list it.
    pub fn new(
        me: NodeName,
        cluster_name: Option<String>,
        listed: Vec<NodeName>,
        interface: IpAddr,
        port_range: PortRange,
    ) -> Result<ClusterSettings, String> {
        if port_range.min == 0 {
            return Err("distribution.listener.port_range.min must be a port (1 to 65535)".to_owned());
        }
        if port_range.min > port_range.max {
            return Err(format!(
                "distribution.listener.port_range.min ({}) is above distribution.listener.port_range.max ({})",
                port_range.min, port_range.max
            ));
        }
        let me = NodeName { port: None, ..me };
        let mut nodes: Vec<NodeName> = Vec::new();
        for node in listed {
            match nodes.iter().find(|n| n.same_node(&node)) {
                Some(earlier) if earlier.port != node.port => {
                    return Err(format!("node {} is listed twice, as {earlier} and as {node}", node.node()));
                }
                Some(_) => {}
                None => nodes.push(node),
            }
        }
        if !nodes.is_empty() && !nodes.iter().any(|n| n.same_node(&me)) {
            nodes.push(me.clone());
        }
        let mut ids: BTreeMap<u64, &NodeName> = BTreeMap::new();
        for node in &nodes {
            if let Some(other) = ids.insert(node.id(), node) {
                return Err(format!("nodes {} and {} have the same id; rename one", other.node(), node.node()));
            }
        }
        let own_port = nodes.iter().find(|n| n.same_node(&me)).and_then(|n| n.port).unwrap_or(port_range.min);
        let cluster_name = match cluster_name {
            Some(name) if !name.trim().is_empty() => name.trim().to_owned(),
            Some(_) => return Err("cluster_name must not be empty".to_owned()),
            None => me.node(),
        };
        Ok(ClusterSettings { cluster_name, listen: SocketAddr::new(interface, own_port), me, nodes, port_range })
    }

    /// A node on its own: no nodes listed, named `me`.
    pub fn single(me: NodeName, cluster_name: Option<String>) -> Result<ClusterSettings, String> {
        ClusterSettings::new(me, cluster_name, Vec::new(), IpAddr::from([0, 0, 0, 0]), PortRange::default())
    }

    /// Whether this node is part of a cluster (nodes are listed): only then does it read the
    /// cookie and listen for other nodes.
    pub fn is_clustered(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The ports the inter-node listener may take, in order: this node's entry's port if it
    /// has one, else the configured range.
    pub fn listen_ports(&self) -> RangeInclusive<u16> {
        match self.nodes.iter().find(|n| n.same_node(&self.me)).and_then(|n| n.port) {
            Some(port) => port..=port,
            None => self.port_range.min..=self.port_range.max,
        }
    }

    /// The other nodes, by id, with the address to dial each on.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.nodes
            .iter()
            .filter(|n| !n.same_node(&self.me))
            .map(|n| (n.id(), n.dial_addr(self.port_range.min)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn name(text: &str) -> NodeName {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn node_names_parse_and_print_back() {
        assert_eq!(name("warren@localhost"), NodeName { name: "warren".into(), host: "localhost".into(), port: None });
        assert_eq!(name("w-1.a_b@10.0.0.1:25673").port, Some(25673));
        assert_eq!(name("w@[::1]:25672"), NodeName { name: "w".into(), host: "::1".into(), port: Some(25672) });
        assert_eq!(name("w@[fe80::1]"), NodeName { name: "w".into(), host: "fe80::1".into(), port: None });
        assert_eq!(name("w@::1").host, "::1");
        for text in ["warren@localhost", "w@h.example.com:1", "w@[::1]:25672", "w@::1"] {
            assert_eq!(name(text).to_string(), text);
        }
        assert_eq!(name("w@[::1]").to_string(), "w@::1");
        assert_eq!(name("w@h:7").node(), "w@h");
    }

    #[test]
    fn malformed_node_names_say_what_is_wrong() {
        for (text, says) in [
            ("warren", "name@host"),
            ("@host", "before '@'"),
            ("w x@host", "before '@'"),
            ("w@", "host after '@'"),
            ("w@a b", "host after '@'"),
            ("w@host:0", "not a port"),
            ("w@host:99999", "not a port"),
            ("w@host:x", "not a port"),
            ("w@[::1", "without ']'"),
            ("w@[::1]25672", "':port'"),
        ] {
            let err = text.parse::<NodeName>().expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn an_own_name_without_host_takes_the_machines() {
        let me = NodeName::own("rabbit").expect("a bare name");
        assert_eq!(me.name, "rabbit");
        assert_eq!(me.host, short_hostname());
        assert!(!me.host.is_empty() && !me.host.contains('.'));
        assert_eq!(NodeName::own("warren1@127.0.0.1").expect("full").node(), "warren1@127.0.0.1");
        let err = NodeName::own("w@h:25672").expect_err("a port");
        assert!(err.contains("port"), "{err}");
        assert!(NodeName::own("w@").is_err());
    }

    #[test]
    fn node_ids_come_from_the_name_alone() {
        // Fixed forever: ids are stored in Raft logs (first 8 bytes of SHA-256("warren@localhost")).
        assert_eq!(node_id("warren@localhost"), 0x5f5d_91e3_1efa_4d9c);
        assert_eq!(name("warren@localhost:25673").id(), node_id("warren@localhost"));
        assert_ne!(node_id("warren1@127.0.0.1"), node_id("warren2@127.0.0.1"));
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let dir = std::env::temp_dir().join(format!("warren-node-{tag}-{}-{nanos:x}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    #[cfg(unix)]
    fn a_cookie_is_created_owner_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("cookie");
        let cookie = load_or_create_cookie(&dir.0).expect("created");
        assert_eq!(cookie.len(), 20);
        assert!(cookie.iter().all(u8::is_ascii_uppercase), "{cookie:?}");
        let path = dir.0.join(COOKIE_FILE);
        assert_eq!(std::fs::metadata(&path).expect("file").permissions().mode() & 0o777, 0o400);
        assert_eq!(load_or_create_cookie(&dir.0).expect("read"), cookie);
        // Another directory, another secret.
        let other = TempDir::new("cookie-other");
        assert_ne!(load_or_create_cookie(&other.0).expect("created"), cookie);
    }

    #[test]
    #[cfg(unix)]
    fn a_cookie_file_is_trimmed_and_refused_when_empty_or_open_to_others() {
        let dir = TempDir::new("cookie-checks");
        let path = dir.0.join(COOKIE_FILE);
        std::fs::write(&path, "  SECRETCOOKIE\n").expect("write");
        set_mode(&path, 0o600);
        assert_eq!(load_or_create_cookie(&dir.0).expect("read"), b"SECRETCOOKIE");
        for mode in [0o640, 0o604, 0o620, 0o644] {
            set_mode(&path, mode);
            let err = load_or_create_cookie(&dir.0).expect_err("too open");
            assert!(err.contains("owner only") && err.contains(&format!("{mode:04o}")), "{err}");
        }
        set_mode(&path, 0o600);
        std::fs::write(&path, " \n").expect("write");
        let err = load_or_create_cookie(&dir.0).expect_err("empty");
        assert!(err.contains("empty"), "{err}");
        std::fs::remove_file(&path).expect("remove");
        std::fs::create_dir(&path).expect("a directory in its place");
        let err = load_or_create_cookie(&dir.0).expect_err("a directory");
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn cookies_are_uniform_letters() {
        let letters = random_letters(26 * 400).expect("random");
        let mut counts = [0usize; 26];
        for b in &letters {
            counts[usize::from(b - b'A')] += 1;
        }
        // 400 expected each; a biased draw would be far off.
        assert!(counts.iter().all(|c| (250..550).contains(c)), "{counts:?}");
    }

    fn any() -> IpAddr {
        IpAddr::from([0, 0, 0, 0])
    }

    #[test]
    fn a_node_on_its_own_is_not_clustered() {
        let s = ClusterSettings::single(name("warren@localhost"), None).expect("single");
        assert!(!s.is_clustered());
        assert_eq!(s.cluster_name, "warren@localhost");
        assert!(s.peers().is_empty());
        let s = ClusterSettings::single(name("warren@localhost"), Some("prod".into())).expect("named");
        assert_eq!(s.cluster_name, "prod");
    }

    #[test]
    fn cluster_settings_resolve_ports_and_peers() {
        let listed = vec![name("a@h1:30001"), name("b@h2"), name("c@[::1]:30003"), name("b@h2")];
        let range = PortRange { min: 26000, max: 26000 };
        let s = ClusterSettings::new(name("a@h1"), None, listed.clone(), any(), range).expect("valid");
        assert!(s.is_clustered());
        assert_eq!(s.nodes.len(), 3, "the duplicate is dropped");
        assert_eq!(s.listen, SocketAddr::from(([0, 0, 0, 0], 30001)));
        assert_eq!(s.listen_ports(), 30001..=30001);
        assert_eq!(s.cluster_name, "a@h1");
        let peers = s.peers();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&node_id("b@h2")], "h2:26000", "no port: the local range's first");
        assert_eq!(peers[&node_id("c@::1")], "[::1]:30003");

        // A node missing from the list is added, on the range.
        let range = PortRange { min: 26000, max: 26005 };
        let s = ClusterSettings::new(name("d@h4"), Some("c1".into()), listed, any(), range).expect("valid");
        assert_eq!(s.nodes.len(), 4);
        assert!(s.nodes.contains(&name("d@h4")));
        assert_eq!(s.listen_ports(), 26000..=26005);
        assert_eq!(s.listen.port(), 26000);
        assert_eq!(s.peers().len(), 3);
        assert_eq!(s.cluster_name, "c1");
    }

    #[test]
    fn bad_cluster_settings_are_refused() {
        let twice = vec![name("a@h1:1"), name("a@h1:2")];
        let err = ClusterSettings::new(name("a@h1"), None, twice, any(), PortRange::default()).expect_err("twice");
        assert!(err.contains("listed twice"), "{err}");
        let range = PortRange { min: 26001, max: 26000 };
        let err = ClusterSettings::new(name("a@h1"), None, vec![], any(), range).expect_err("range");
        assert!(err.contains("port_range.min (26001)"), "{err}");
        let err = ClusterSettings::single(name("a@h1"), Some(" ".into())).expect_err("empty name");
        assert!(err.contains("cluster_name"), "{err}");
    }
}
