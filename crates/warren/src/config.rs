//! The configuration file, in RabbitMQ's rabbitmq.conf format: `key = value` lines, `#`
//! comments. Keys are RabbitMQ's where one exists; an unknown key or a bad value is an error
//! naming its line, so a typo never passes silently.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use warren_cluster::{ClusterSettings, NodeName, PortRange};
use warren_core::auth::{CertLoginFrom, Mechanism, SanType};
use warren_core::Config as CoreConfig;

/// Everything the binary can be told, after defaults, file and flags are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub amqp_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_level: String,
    /// A definitions file (RabbitMQ's JSON) applied at boot (`load_definitions`).
    pub load_definitions: Option<PathBuf>,
    /// The AMQPS listener (`listeners.ssl.default`), if any.
    pub amqps_listen: Option<SocketAddr>,
    /// Certificates and client verification (`ssl_options.*`).
    pub tls: warren_server::tls::TlsSettings,
    /// The management listener over HTTPS (`management.ssl.port`, `management.ssl.ip`), if any.
    pub https_listen: Option<SocketAddr>,
    /// Its certificates and client verification (`management.ssl.*`).
    pub management_tls: warren_server::tls::TlsSettings,
    /// The memory alarm's threshold (`vm_memory_high_watermark.relative` / `.absolute`).
    pub memory_high_watermark: Limit,
    /// The disk alarm's threshold (`disk_free_limit.absolute` / `.relative`).
    pub disk_free_limit: Limit,
    /// The management listener's limits (`management.http.max_body_size`).
    pub management_http: warren_http::HttpConfig,
    /// `cluster_name`, when set (the node's name otherwise, as in RabbitMQ).
    pub cluster_name: Option<String>,
    /// `cluster_formation.classic_config.nodes.N`, in the order of N: clustering is on when
    /// there are any.
    pub cluster_nodes: Vec<NodeName>,
    /// The inter-node listener's ports (`distribution.listener.port_range.min` / `.max`).
    pub distribution_ports: PortRange,
    /// The inter-node listener's interface (`distribution.listener.interface`).
    pub distribution_interface: IpAddr,
    /// TLS between nodes (`distribution.ssl_options.*`, Warren's keys: RabbitMQ configures it
    /// in an Erlang file of its own), on when `certfile` is set.
    pub distribution_tls: warren_server::tls::TlsSettings,
    /// `queue_leader_locator = balanced`: a quorum queue's first leader is the member leading
    /// the fewest (`client-local`, the default: the declaring node).
    pub balanced_leaders: bool,
    pub core: CoreConfig,
}

/// A resource threshold: bytes, or a fraction of the machine's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Absolute(u64),
    Relative(f64),
}

impl Limit {
    /// The threshold in bytes, given the machine's memory.
    pub fn bytes(self, total_memory: u64) -> u64 {
        match self {
            Limit::Absolute(b) => b,
            Limit::Relative(f) => (total_memory as f64 * f) as u64,
        }
    }
}

fn parse_fraction(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(format!("'{v}' is not a non-negative number")),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            amqp_listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 15672)),
            data_dir: PathBuf::from("warren-data"),
            log_level: "info".into(),
            load_definitions: None,
            amqps_listen: None,
            tls: Default::default(),
            https_listen: None,
            management_tls: Default::default(),
            // RabbitMQ 3.10's defaults.
            memory_high_watermark: Limit::Relative(0.4),
            disk_free_limit: Limit::Absolute(50_000_000),
            management_http: warren_http::HttpConfig::default(),
            cluster_name: None,
            cluster_nodes: Vec::new(),
            distribution_ports: PortRange::default(),
            distribution_interface: IpAddr::from([0, 0, 0, 0]),
            distribution_tls: Default::default(),
            balanced_leaders: false,
            core: CoreConfig::default(),
        }
    }
}

/// A listener value: a port alone (on 127.0.0.1... RabbitMQ binds all interfaces for a bare
/// port; we keep that meaning) or `ip:port`.
fn parse_listener(v: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = v.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    v.parse::<SocketAddr>().map_err(|_| format!("'{v}' is neither a port nor an ip:port address"))
}

/// An inter-node port: 1 to 65535.
fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("'{v}' is not a port (1 to 65535)")),
    }
}

/// Sorts `(N, value)` pairs of `key.N = value` lines by N, numerically where N is a number
/// (`.10` after `.9`).
fn sort_by_label<T>(items: &mut [(String, T)]) {
    items.sort_by(|(a, _), (b, _)| (a.parse::<u64>().ok(), a).cmp(&(b.parse::<u64>().ok(), b)));
}

fn parse_num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse::<T>().map_err(|_| format!("'{v}' is not a valid number here"))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("'{v}' is not true or false")),
    }
}

/// RabbitMQ's `verify` values: whether client certificates are asked for and checked.
fn parse_verify(v: &str) -> Result<bool, String> {
    match v {
        "verify_peer" => Ok(true),
        "verify_none" => Ok(false),
        _ => Err(format!("'{v}' is neither verify_peer nor verify_none")),
    }
}

/// A size such as `16777216`, `16MB`, `512MiB`, `1GB`.
fn parse_size(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = parse_num(num)?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "kB" | "KB" => 1000,
        "KiB" | "kiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        u => return Err(format!("unknown size unit '{u}'")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("'{v}' is too large"))
}

impl Settings {
    /// Applies a rabbitmq.conf-style file's text; `origin` names it in errors.
    pub fn apply_file(&mut self, text: &str, origin: &str) -> Result<(), String> {
        let mut mgmt_ip: Option<std::net::IpAddr> = None;
        let mut mgmt_port: Option<u16> = None;
        let mut mgmt_ssl_ip: Option<std::net::IpAddr> = None;
        let mut mgmt_ssl_listen: Option<SocketAddr> = None;
        // `auth_mechanisms.N = NAME` lines, by N: together they replace the default list.
        let mut mechanisms: Vec<(String, Mechanism)> = Vec::new();
        // `cluster_formation.classic_config.nodes.N = name@host[:port]` lines, by N.
        let mut nodes: Vec<(String, NodeName)> = Vec::new();
        let (mut dist_min, mut dist_max): (Option<u16>, Option<u16>) = (None, None);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |msg: String| format!("{origin}:{}: {msg}", i + 1);
            let Some((key, value)) = line.split_once('=') else {
                return Err(at(format!("expected 'key = value', got '{line}'")));
            };
            let (key, value) = (key.trim(), value.trim());
            let result: Result<(), String> = (|| {
                match key {
                    "listeners.tcp.default" => self.amqp_listen = parse_listener(value)?,
                    "listeners.ssl.default" => self.amqps_listen = Some(parse_listener(value)?),
                    "ssl_options.certfile" => self.tls.certfile = Some(PathBuf::from(value)),
                    "ssl_options.keyfile" => self.tls.keyfile = Some(PathBuf::from(value)),
                    "ssl_options.cacertfile" => self.tls.cacertfile = Some(PathBuf::from(value)),
                    "ssl_options.verify" => self.tls.verify_peer = parse_verify(value)?,
                    "ssl_options.fail_if_no_peer_cert" => self.tls.fail_if_no_peer_cert = parse_bool(value)?,
                    "management.ssl.port" => mgmt_ssl_listen = Some(parse_listener(value)?),
                    "management.ssl.ip" => {
                        mgmt_ssl_ip = Some(value.parse().map_err(|_| format!("'{value}' is not an IP address"))?)
                    }
                    "management.ssl.certfile" => self.management_tls.certfile = Some(PathBuf::from(value)),
                    "management.ssl.keyfile" => self.management_tls.keyfile = Some(PathBuf::from(value)),
                    "management.ssl.cacertfile" => self.management_tls.cacertfile = Some(PathBuf::from(value)),
                    "management.ssl.verify" => self.management_tls.verify_peer = parse_verify(value)?,
                    "management.ssl.fail_if_no_peer_cert" => {
                        self.management_tls.fail_if_no_peer_cert = parse_bool(value)?
                    }
                    "management.tcp.port" => mgmt_port = Some(parse_num(value)?),
                    "management.tcp.ip" => {
                        mgmt_ip = Some(value.parse().map_err(|_| format!("'{value}' is not an IP address"))?)
                    }
                    "management.listener.port" => mgmt_port = Some(parse_num(value)?),
                    // Bytes, a plain integer: RabbitMQ's schema takes no unit suffix here.
                    "management.http.max_body_size" => self.management_http.max_body_size_bytes = parse_num(value)?,
                    "data_dir" => self.data_dir = PathBuf::from(value),
                    "load_definitions" => self.load_definitions = Some(PathBuf::from(value)),
                    "heartbeat" => self.core.heartbeat_s = parse_num(value)?,
                    "frame_max" => {
                        let v: u32 = parse_num(value)?;
                        if v < 4096 {
                            return Err(format!("frame_max {v} is below the protocol minimum of 4096"));
                        }
                        self.core.frame_max = v;
                    }
                    "channel_max" => self.core.channel_max = parse_num(value)?,
                    "handshake_timeout" => self.core.handshake_timeout_ms = parse_num(value)?,
                    "tcp_listen_options.send_timeout" => {
                        let ms: u64 = parse_num(value)?;
                        if ms == 0 {
                            return Err("tcp_listen_options.send_timeout must be at least 1 (milliseconds)".into());
                        }
                        self.core.send_timeout_ms = ms;
                    }
                    "connection_max" => {
                        self.core.connection_max = if value == "infinity" { None } else { Some(parse_num(value)?) }
                    }
                    "consumer_max_per_channel" => {
                        self.core.consumer_max_per_channel =
                            if value == "infinity" { None } else { Some(parse_num(value)?) }
                    }
                    "unacked_max_per_channel" => {
                        self.core.unacked_max_per_channel =
                            if value == "infinity" { None } else { Some(parse_num(value)?) }
                    }
                    "auth_failure_delay" => self.core.auth_failure_delay_ms = parse_num(value)?,
                    "data_plane_parallelism" => self.core.data_plane_parallelism = parse_num(value)?,
                    k if k.starts_with("auth_mechanisms.") => {
                        let m = Mechanism::parse(value).ok_or_else(|| {
                            format!("'{value}' is not a mechanism Warren offers (PLAIN, AMQPLAIN, EXTERNAL)")
                        })?;
                        let index = &k["auth_mechanisms.".len()..];
                        mechanisms.retain(|(i, _)| i != index);
                        mechanisms.push((index.to_string(), m));
                    }
                    "ssl_cert_login_from" => {
                        self.core.ssl_cert_login_from = match value {
                            "distinguished_name" => CertLoginFrom::DistinguishedName,
                            "common_name" => CertLoginFrom::CommonName,
                            "subject_alternative_name" | "subject_alt_name" => CertLoginFrom::SubjectAlternativeName,
                            _ => {
                                return Err(format!(
                                    "'{value}': Warren reads the login from distinguished_name, common_name or \
                                     subject_alternative_name"
                                ))
                            }
                        }
                    }
                    "ssl_cert_login_san_type" => {
                        self.core.ssl_cert_login_san.kind = match value {
                            "dns" => SanType::Dns,
                            "ip" => SanType::Ip,
                            "email" => SanType::Email,
                            "uri" => SanType::Uri,
                            _ => return Err(format!("'{value}': Warren reads SANs of type dns, ip, email or uri")),
                        }
                    }
                    "ssl_cert_login_san_index" => self.core.ssl_cert_login_san.index = parse_num(value)?,
                    "queue_leader_locator" => {
                        self.balanced_leaders = match value {
                            "client-local" => false,
                            "balanced" => true,
                            other => {
                                return Err(format!(
                                    "queue_leader_locator must be client-local or balanced, not '{other}'"
                                ))
                            }
                        }
                    }
                    "consumer_timeout" => {
                        self.core.consumer_timeout_ms =
                            if value == "false" || value == "infinity" { None } else { Some(parse_num(value)?) }
                    }
                    "max_message_size" => {
                        let v = parse_size(value)?;
                        if v > 512 * 1024 * 1024 {
                            return Err("max_message_size may be at most 536870912 (512 MiB), as in RabbitMQ".into());
                        }
                        self.core.max_message_size = v;
                    }
                    "default_user" => self.core.default_user = value.into(),
                    "default_pass" => self.core.default_pass = value.into(),
                    "default_vhost" => self.core.default_vhost = value.into(),
                    "loopback_users" if value == "none" => self.core.loopback_users.clear(),
                    k if k.starts_with("loopback_users.") => {
                        let user = &k["loopback_users.".len()..];
                        self.core.loopback_users.retain(|u| u != user);
                        if parse_bool(value)? {
                            self.core.loopback_users.push(user.into());
                        }
                    }
                    "cluster_name" => {
                        if value.is_empty() {
                            return Err("cluster_name must not be empty".into());
                        }
                        self.cluster_name = Some(value.into());
                    }
                    "cluster_formation.peer_discovery_backend" => match value {
                        "classic_config" | "rabbit_peer_discovery_classic_config" => {}
                        _ => {
                            return Err(format!(
                                "peer discovery backend '{value}' is not supported: Warren supports classic_config \
                                 (rabbit_peer_discovery_classic_config), the nodes listed in \
                                 cluster_formation.classic_config.nodes.N"
                            ))
                        }
                    },
                    k if k.starts_with("cluster_formation.classic_config.nodes.") => {
                        let index = &k["cluster_formation.classic_config.nodes.".len()..];
                        if index.is_empty() {
                            return Err(format!("'{k}' needs a label after 'nodes.'"));
                        }
                        let node: NodeName = value.parse()?;
                        nodes.retain(|(i, _)| i != index);
                        nodes.push((index.to_string(), node));
                    }
                    "distribution.listener.port_range.min" => dist_min = Some(parse_port(value)?),
                    "distribution.listener.port_range.max" => dist_max = Some(parse_port(value)?),
                    "distribution.ssl_options.certfile" => self.distribution_tls.certfile = Some(PathBuf::from(value)),
                    "distribution.ssl_options.keyfile" => self.distribution_tls.keyfile = Some(PathBuf::from(value)),
                    "distribution.ssl_options.cacertfile" => {
                        self.distribution_tls.cacertfile = Some(PathBuf::from(value))
                    }
                    "distribution.listener.interface" => {
                        self.distribution_interface =
                            value.parse().map_err(|_| format!("'{value}' is not an IP address"))?
                    }
                    "log.console.level" | "log.level" => self.log_level = value.into(),
                    "vm_memory_high_watermark.relative" => {
                        self.memory_high_watermark = Limit::Relative(parse_fraction(value)?)
                    }
                    "vm_memory_high_watermark.absolute" => {
                        self.memory_high_watermark = Limit::Absolute(parse_size(value)?)
                    }
                    "disk_free_limit.absolute" => self.disk_free_limit = Limit::Absolute(parse_size(value)?),
                    "disk_free_limit.relative" => self.disk_free_limit = Limit::Relative(parse_fraction(value)?),
                    other => return Err(format!("unknown setting '{other}'")),
                }
                Ok(())
            })();
            result.map_err(at)?;
        }
        if mgmt_ip.is_some() || mgmt_port.is_some() {
            self.http_listen =
                SocketAddr::new(mgmt_ip.unwrap_or(self.http_listen.ip()), mgmt_port.unwrap_or(self.http_listen.port()));
        }
        if !nodes.is_empty() {
            sort_by_label(&mut nodes);
            self.cluster_nodes = nodes.into_iter().map(|(_, node)| node).collect();
        }
        // A minimum alone is the whole range (as Erlang's inet_dist_listen_max defaults to the
        // minimum); a maximum alone extends the default minimum.
        match (dist_min, dist_max) {
            (Some(min), None) => self.distribution_ports = PortRange { min, max: min },
            (min, Some(max)) => {
                self.distribution_ports = PortRange { min: min.unwrap_or(self.distribution_ports.min), max }
            }
            (None, None) => {}
        }
        let PortRange { min, max } = self.distribution_ports;
        if min > max {
            return Err(format!(
                "{origin}: distribution.listener.port_range.min ({min}) is above distribution.listener.port_range.max \
                 ({max})"
            ));
        }
        if !mechanisms.is_empty() {
            // By N, numerically where N is a number (auth_mechanisms.10 after .9).
            sort_by_label(&mut mechanisms);
            self.core.auth_mechanisms.clear();
            for (_, m) in mechanisms {
                if !self.core.auth_mechanisms.contains(&m) {
                    self.core.auth_mechanisms.push(m);
                }
            }
        }
        match (mgmt_ssl_listen, mgmt_ssl_ip) {
            (Some(addr), ip) => self.https_listen = Some(ip.map_or(addr, |ip| SocketAddr::new(ip, addr.port()))),
            (None, Some(_)) => return Err(format!("{origin}: management.ssl.ip needs management.ssl.port")),
            (None, None) => {}
        }
        Ok(())
    }

    /// The cluster settings of the node named `me`.
    pub fn cluster(&self, me: NodeName) -> Result<ClusterSettings, String> {
        ClusterSettings::new(
            me,
            self.cluster_name.clone(),
            self.cluster_nodes.clone(),
            self.distribution_interface,
            self.distribution_ports,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rabbitmq_keys() {
        let mut s = Settings::default();
        s.apply_file(
            "# comment\nlisteners.tcp.default = 127.0.0.1:5673\nmanagement.tcp.port = 15673\nconsumer_timeout = 2000\nheartbeat = 10\nmax_message_size = 1MiB\nloopback_users = none\n",
            "test.conf",
        )
        .expect("valid");
        assert_eq!(s.amqp_listen, "127.0.0.1:5673".parse().expect("addr"));
        assert_eq!(s.http_listen.port(), 15673);
        assert_eq!(s.core.consumer_timeout_ms, Some(2000));
        assert_eq!(s.core.heartbeat_s, 10);
        assert_eq!(s.core.max_message_size, 1024 * 1024);
        assert!(s.core.loopback_users.is_empty());
    }

    #[test]
    fn reads_resource_limits() {
        let mut s = Settings::default();
        assert_eq!(s.memory_high_watermark, Limit::Relative(0.4));
        s.apply_file("vm_memory_high_watermark.absolute = 512MiB\ndisk_free_limit.relative = 1.5\n", "t.conf")
            .expect("valid");
        assert_eq!(s.memory_high_watermark.bytes(1 << 30), 512 * 1024 * 1024);
        assert_eq!(s.disk_free_limit.bytes(1 << 30), 3 << 29);
        let err = Settings::default().apply_file("vm_memory_high_watermark.relative = much\n", "t.conf");
        assert!(err.expect_err("bad").starts_with("t.conf:1:"));
    }

    #[test]
    fn reads_management_ssl_keys() {
        let mut s = Settings::default();
        s.apply_file(
            "management.ssl.port = 15671\nmanagement.ssl.certfile = /c.pem\nmanagement.ssl.keyfile = /k.pem\nmanagement.ssl.cacertfile = /ca.pem\nmanagement.ssl.verify = verify_peer\nmanagement.ssl.fail_if_no_peer_cert = true\n",
            "t.conf",
        )
        .expect("valid");
        assert_eq!(s.https_listen, Some("0.0.0.0:15671".parse().expect("addr")));
        assert_eq!(s.management_tls.keyfile.as_deref(), Some(std::path::Path::new("/k.pem")));
        assert!(s.management_tls.verify_peer && s.management_tls.fail_if_no_peer_cert);
        // The AMQPS settings are apart.
        assert_eq!(s.tls, Default::default());
        let mut s = Settings::default();
        s.apply_file("management.ssl.port = 127.0.0.1:15671\n", "t.conf").expect("valid");
        assert_eq!(s.https_listen, Some("127.0.0.1:15671".parse().expect("addr")));
        let mut s = Settings::default();
        s.apply_file("management.ssl.ip = 127.0.0.2\nmanagement.ssl.port = 15671\n", "t.conf").expect("valid");
        assert_eq!(s.https_listen, Some("127.0.0.2:15671".parse().expect("addr")));
        let err = Settings::default().apply_file("management.ssl.ip = 127.0.0.2\n", "t.conf").expect_err("no port");
        assert!(err.contains("management.ssl.port"), "{err}");
        let err = Settings::default().apply_file("management.ssl.verify = maybe\n", "t.conf").expect_err("bad");
        assert!(err.starts_with("t.conf:1:"), "{err}");
    }

    #[test]
    fn reads_auth_mechanisms_in_order_and_ssl_cert_login_from() {
        let mut s = Settings::default();
        assert_eq!(s.core.auth_mechanisms, [Mechanism::Plain, Mechanism::Amqplain]);
        assert_eq!(s.core.ssl_cert_login_from, CertLoginFrom::DistinguishedName);
        s.apply_file(
            "auth_mechanisms.10 = AMQPLAIN\nauth_mechanisms.2 = EXTERNAL\nauth_mechanisms.1 = PLAIN\nssl_cert_login_from = common_name\n",
            "t.conf",
        )
        .expect("valid");
        assert_eq!(s.core.auth_mechanisms, [Mechanism::Plain, Mechanism::External, Mechanism::Amqplain]);
        assert_eq!(s.core.ssl_cert_login_from, CertLoginFrom::CommonName);
        let mut s = Settings::default();
        s.apply_file("auth_mechanisms.1 = EXTERNAL\n", "t.conf").expect("valid");
        assert_eq!(s.core.auth_mechanisms, [Mechanism::External]);
        let err = Settings::default().apply_file("auth_mechanisms.1 = CRAM-MD5\n", "t.conf").expect_err("unknown");
        assert!(err.starts_with("t.conf:1:") && err.contains("CRAM-MD5"), "{err}");
        let mut s = Settings::default();
        s.apply_file(
            "ssl_cert_login_san_index = 1\nssl_cert_login_from = subject_alt_name\nssl_cert_login_san_type = email\n",
            "t.conf",
        )
        .expect("valid");
        assert_eq!(s.core.ssl_cert_login_from, CertLoginFrom::SubjectAlternativeName);
        assert_eq!(s.core.ssl_cert_login_san, warren_core::auth::SanSelector { kind: SanType::Email, index: 1 });
        let err = Settings::default().apply_file("ssl_cert_login_san_type = other_name\n", "t.conf");
        assert!(err.expect_err("unsupported").contains("other_name"));
    }

    #[test]
    fn reads_management_http_max_body_size() {
        let mut s = Settings::default();
        assert_eq!(s.management_http.max_body_size_bytes, 64 * 1024 * 1024);
        s.apply_file("management.http.max_body_size = 20971520\n", "t.conf").expect("valid");
        assert_eq!(s.management_http.max_body_size_bytes, 20_971_520);
        // An integer of bytes, as in RabbitMQ: no unit, no sign.
        for bad in ["64MiB", "-1", "lots"] {
            let conf = format!("heartbeat = 5\nmanagement.http.max_body_size = {bad}\n");
            let err = Settings::default().apply_file(&conf, "t.conf").expect_err("bad size");
            assert!(err.starts_with("t.conf:2:") && err.contains(bad), "{err}");
        }
    }

    fn node(text: &str) -> NodeName {
        text.parse().expect("a node name")
    }

    #[test]
    fn reads_cluster_keys() {
        let mut s = Settings::default();
        let me = node("warren@localhost");
        let single = s.cluster(me.clone()).expect("defaults");
        assert!(!single.is_clustered());
        assert_eq!(single.cluster_name, "warren@localhost");
        assert_eq!(single.listen, "0.0.0.0:25672".parse().expect("addr"));
        s.apply_file(
            "cluster_name = prod\n\
             cluster_formation.peer_discovery_backend = rabbit_peer_discovery_classic_config\n\
             cluster_formation.classic_config.nodes.10 = w3@h3\n\
             cluster_formation.classic_config.nodes.2 = w2@h2:30002\n\
             cluster_formation.classic_config.nodes.1 = w1@h1:30001\n\
             distribution.listener.port_range.min = 26000\n\
             distribution.listener.port_range.max = 26010\n\
             distribution.listener.interface = 127.0.0.1\n",
            "t.conf",
        )
        .expect("valid");
        assert_eq!(s.cluster_nodes, [node("w1@h1:30001"), node("w2@h2:30002"), node("w3@h3")]);
        let c = s.cluster(node("w1@h1")).expect("clustered");
        assert!(c.is_clustered());
        assert_eq!(c.cluster_name, "prod");
        assert_eq!(c.listen, "127.0.0.1:30001".parse().expect("addr"));
        assert_eq!(c.peers()[&node("w3@h3").id()], "h3:26000");
        // A node not listed joins the list, on the range.
        let c = s.cluster(node("w4@h4")).expect("clustered");
        assert_eq!(c.nodes.len(), 4);
        assert_eq!(c.listen_ports(), 26000..=26010);

        let mut s = Settings::default();
        s.apply_file("cluster_formation.peer_discovery_backend = classic_config\n", "t.conf").expect("valid");
        s.apply_file("distribution.listener.port_range.min = 30000\n", "t.conf").expect("a minimum alone");
        assert_eq!(s.distribution_ports, PortRange { min: 30000, max: 30000 });
        assert_eq!(s.distribution_tls, Default::default(), "plain TCP unless configured");
        s.apply_file(
            "distribution.ssl_options.cacertfile = /ca.pem
distribution.ssl_options.certfile = /n.pem
             distribution.ssl_options.keyfile = /n.key
",
            "t.conf",
        )
        .expect("TLS between nodes");
        assert_eq!(s.distribution_tls.cacertfile, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.distribution_tls.certfile, Some(PathBuf::from("/n.pem")));
        assert_eq!(s.distribution_tls.keyfile, Some(PathBuf::from("/n.key")));
        assert!(!s.balanced_leaders, "client-local by default");
        s.apply_file("queue_leader_locator = balanced\n", "t.conf").expect("balanced");
        assert!(s.balanced_leaders);
        let bad = s.apply_file("queue_leader_locator = busiest\n", "t.conf").expect_err("refused");
        assert!(bad.contains("t.conf:1") && bad.contains("queue_leader_locator"), "{bad}");
    }

    #[test]
    fn bad_cluster_keys_name_their_line() {
        for (conf, says) in [
            ("cluster_formation.peer_discovery_backend = rabbit_peer_discovery_consul\n", "classic_config"),
            ("cluster_formation.classic_config.nodes.1 = warren\n", "name@host"),
            ("cluster_formation.classic_config.nodes.1 = w@h:port\n", "not a port"),
            ("distribution.listener.port_range.min = 0\n", "not a port"),
            ("distribution.listener.interface = anywhere\n", "not an IP address"),
            ("cluster_name =\n", "empty"),
        ] {
            let err = Settings::default().apply_file(&format!("heartbeat = 5\n{conf}"), "t.conf").expect_err(conf);
            assert!(err.starts_with("t.conf:2:") && err.contains(says), "{conf}: {err}");
        }
        let err = Settings::default()
            .apply_file(
                "distribution.listener.port_range.min = 26001\ndistribution.listener.port_range.max = 26000\n",
                "t.conf",
            )
            .expect_err("min above max");
        assert!(err.contains("min (26001) is above"), "{err}");
        let err = Settings::default()
            .apply_file("distribution.listener.port_range.max = 25000\n", "t.conf")
            .expect_err("max below the default min");
        assert!(err.contains("(25672)"), "{err}");
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = Settings::default().apply_file("heartbeat = 5\nheartbeet = 5\n", "w.conf").expect_err("typo");
        assert!(err.starts_with("w.conf:2:"), "{err}");
        assert!(err.contains("heartbeet"), "{err}");
    }

    #[test]
    fn bad_value_names_its_line() {
        let err = Settings::default().apply_file("frame_max = 100\n", "w.conf").expect_err("too small");
        assert!(err.starts_with("w.conf:1:"), "{err}");
        let err = Settings::default().apply_file("channel_max = lots\n", "w.conf").expect_err("nan");
        assert!(err.contains("lots"), "{err}");
    }
}
