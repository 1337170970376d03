//! `warrenctl`: the operator's command line for Warren, over the management HTTP API.
//!
//! It speaks RabbitMQ's management paths and JSON (as `rabbitmqadmin` does), so it works
//! against Warren and against RabbitMQ alike. The library holds everything but the process
//! exit: [`run`] takes parsed arguments and returns the text to print, which is what the tests
//! drive.
//!
//! Commands:
//! `list queues|exchanges|bindings|connections|consumers|vhosts|users|permissions`,
//! `declare queue|exchange|binding`, `delete queue|exchange|binding`, `purge queue`,
//! `export definitions FILE`, `import definitions FILE`, `close connection NAME`,
//! `cluster_status`, `forget_cluster_node`, and for quorum queues' members (as `rabbitmq-queues`): `add_member`,
//! `delete_member`, `grow`, `shrink`.

use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "warrenctl", version, about = "Manage a Warren (or RabbitMQ) broker over its management HTTP API")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Management API host.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: String,
    /// Management API port.
    #[arg(long, global = true, default_value_t = 15672)]
    pub port: u16,
    /// The management listener's URL, e.g. https://broker.example:15671 (instead of --host and
    /// --port; https for a listener configured with management.ssl.*).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// PEM file of the CA certificates that an https server's certificate must chain to (by
    /// default, the web's public roots).
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// User name for HTTP basic auth.
    #[arg(long, short = 'u', global = true, default_value = "guest")]
    pub user: String,
    /// Password for HTTP basic auth.
    #[arg(long, short = 'p', global = true, default_value = "guest")]
    pub password: String,
    /// Virtual host to act in (default "/"). `list` shows every vhost unless this is given.
    #[arg(long, global = true)]
    pub vhost: Option<String>,
    /// Output format.
    #[arg(long, short = 'f', global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl Global {
    fn vhost(&self) -> &str {
        self.vhost.as_deref().unwrap_or("/")
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns with a header line.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List objects.
    List {
        #[arg(value_enum)]
        what: Listable,
    },
    /// Declare (create) an object.
    Declare {
        #[command(subcommand)]
        what: Declare,
    },
    /// Delete an object.
    Delete {
        #[command(subcommand)]
        what: Delete,
    },
    /// Purge a queue.
    Purge {
        #[command(subcommand)]
        what: Purge,
    },
    /// Export the broker's definitions to a file ("-" for standard output).
    Export {
        #[command(subcommand)]
        what: Definitions,
    },
    /// Import definitions from a file ("-" for standard input).
    Import {
        #[command(subcommand)]
        what: Definitions,
    },
    /// Close a client connection.
    Close {
        #[command(subcommand)]
        what: Close,
    },
    /// The cluster's name, its nodes and which are running (as `rabbitmqctl cluster_status`).
    #[command(name = "cluster_status", alias = "cluster-status")]
    ClusterStatus,
    /// Take NODE, stopped, out of the cluster (as `rabbitmqctl forget_cluster_node`): its
    /// classic queues are deleted and quorum queues drop their members on it; the other
    /// nodes refuse it from then on (delete its data directory before it joins again).
    #[command(name = "forget_cluster_node", alias = "forget-cluster-node")]
    ForgetClusterNode { node: String },
    /// Add a member on NODE to quorum queue QUEUE (in --vhost), as `rabbitmq-queues add_member`.
    #[command(name = "add_member", alias = "add-member")]
    AddMember { queue: String, node: String },
    /// Take quorum queue QUEUE's member on NODE out, as `rabbitmq-queues delete_member`.
    #[command(name = "delete_member", alias = "delete-member")]
    DeleteMember { queue: String, node: String },
    /// Add a member on NODE to every quorum queue that has none there (`all`) or to those with
    /// an even number of members (`even`), as `rabbitmq-queues grow`.
    Grow {
        node: String,
        #[arg(value_parser = ["all", "even"])]
        strategy: String,
        /// Only vhosts matching this regular expression.
        #[arg(long, default_value = ".*")]
        vhost_pattern: String,
        /// Only queues matching this regular expression.
        #[arg(long, default_value = ".*")]
        queue_pattern: String,
    },
    /// Take every quorum queue's member on NODE out (a queue's last stays), as
    /// `rabbitmq-queues shrink`.
    Shrink { node: String },
    /// Fail (exit code 1) when stopping the target node would cost a quorum queue its majority,
    /// as `rabbitmq-queues check_if_node_is_quorum_critical`.
    #[command(name = "check_if_node_is_quorum_critical", alias = "check-if-node-is-quorum-critical")]
    CheckIfNodeIsQuorumCritical,
    /// Wait until no quorum queue would lose its quorum if the target node stopped (each has
    /// a majority plus one member running), as `rabbitmq-upgrade await_online_quorum_plus_one`;
    /// fail once TIMEOUT seconds have passed.
    #[command(name = "await_online_quorum_plus_one", alias = "await-online-quorum-plus-one")]
    AwaitOnlineQuorumPlusOne {
        #[arg(long, short = 't', default_value_t = 120)]
        timeout: u64,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listable {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Consumers,
    Vhosts,
    Users,
    Permissions,
}

#[derive(Subcommand, Debug)]
pub enum Declare {
    /// Declare a queue.
    Queue {
        name: String,
        /// Survive a broker restart.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        /// Delete when its last consumer goes.
        #[arg(long)]
        auto_delete: bool,
        /// Queue arguments as a JSON object, e.g. '{"x-max-length": 10}'.
        #[arg(long)]
        arguments: Option<String>,
    },
    /// Declare an exchange.
    Exchange {
        name: String,
        /// direct, fanout, topic, headers or a plugin type.
        #[arg(long = "type", default_value = "direct")]
        kind: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// Clients cannot publish to it directly.
        #[arg(long)]
        internal: bool,
        #[arg(long)]
        arguments: Option<String>,
    },
    /// Bind a queue (or an exchange) to an exchange.
    Binding(BindingArgs),
}

#[derive(Args, Debug)]
pub struct BindingArgs {
    /// The exchange messages come from.
    #[arg(long)]
    pub source: String,
    /// The queue or exchange they go to.
    #[arg(long)]
    pub destination: String,
    #[arg(long, value_enum, default_value_t = DestinationType::Queue)]
    pub destination_type: DestinationType,
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// Binding arguments as a JSON object (headers exchanges match on these).
    #[arg(long)]
    pub arguments: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationType {
    Queue,
    Exchange,
}

impl DestinationType {
    /// The path letter RabbitMQ's binding URLs use.
    fn letter(self) -> &'static str {
        match self {
            DestinationType::Queue => "q",
            DestinationType::Exchange => "e",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Delete {
    /// Delete a queue.
    Queue {
        name: String,
        /// Only if it holds no messages.
        #[arg(long)]
        if_empty: bool,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
    },
    /// Delete an exchange.
    Exchange {
        name: String,
        /// Only if nothing is bound to it.
        #[arg(long)]
        if_unused: bool,
    },
    /// Remove a binding (found by source, destination, routing key and arguments).
    Binding(BindingArgs),
}

#[derive(Subcommand, Debug)]
pub enum Purge {
    /// Remove every ready message of a queue.
    Queue { name: String },
}

#[derive(Subcommand, Debug)]
pub enum Definitions {
    /// Users, vhosts, permissions, queues, exchanges, bindings, policies, parameters.
    Definitions { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum Close {
    /// Close a client connection by its name (as `list connections` shows it).
    Connection {
        name: String,
        /// Told to the client in connection.close.
        #[arg(long, default_value = "Closed via warrenctl")]
        reason: String,
    },
}

/// A failed command: what to tell the operator.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Percent-encodes one path segment: everything but RFC 3986's unreserved characters, so
/// that the default vhost "/" becomes "%2F" as the management API expects.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A management API client: basic auth, JSON in and out, errors with the API's reason.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    /// A client for the listener that `--url` (or `--host` and `--port`) names; fails on an
    /// unreadable `--cacert` or a URL that is neither http nor https.
    pub fn new(g: &Global) -> Result<Client, Error> {
        let base = match &g.url {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                format!("{}/api", url.trim_end_matches('/'))
            }
            Some(url) => return Err(Error(format!("--url {url}: expected http://HOST:PORT or https://HOST:PORT"))),
            None => format!("http://{}:{}/api", g.host, g.port),
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &g.cacert {
            let pem = std::fs::read(path).map_err(|e| Error(format!("--cacert {}: {e}", path.display())))?;
            let mut roots = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item.map_err(|e| Error(format!("--cacert {}: {e}", path.display())))? {
                    ureq::tls::PemItem::Certificate(c) => roots.push(c),
                    _ => continue,
                }
            }
            if roots.is_empty() {
                return Err(Error(format!("--cacert {}: no PEM certificate in it", path.display())));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(tls.build())
            .build()
            .into();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", g.user, g.password));
        Ok(Client { agent, base, auth: format!("Basic {token}") })
    }

    /// Sends one request; `Ok(None)` for an empty answer (201/204), the JSON otherwise.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Option<Value>, Error> {
        let url = format!("{}{path}", self.base);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &self.auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &self.auth).call(),
            (m, body) => {
                let text = body.map(Value::to_string).unwrap_or_default();
                let req = if m == "POST" { self.agent.post(&url) } else { self.agent.put(&url) };
                req.header("Authorization", &self.auth).content_type("application/json").send(text.as_str())
            }
        };
        let mut response = sent.map_err(|e| Error(format!("{method} {url}: {e}")))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| Error(format!("{method} {url}: reading the answer: {e}")))?;
        if !status.is_success() {
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| text.trim().to_string());
            return Err(Error(format!("{method} {path}: {status}: {reason}")));
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error(format!("{method} {path}: the answer is not JSON: {e}")))
    }

    /// GET of a health check: its status code and JSON answer, whatever the code.
    pub fn check(&self, path: &str) -> Result<(u16, Value), Error> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .map_err(|e| Error(format!("GET {url}: {e}")))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| Error(format!("GET {url}: {e}")))?;
        let body =
            serde_json::from_str(&text).map_err(|e| Error(format!("GET {path}: the answer is not JSON: {e}")))?;
        Ok((status, body))
    }

    pub fn get(&self, path: &str) -> Result<Value, Error> {
        Ok(self.request("GET", path, None)?.unwrap_or(Value::Null))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<(), Error> {
        self.request("PUT", path, Some(body)).map(|_| ())
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<(), Error> {
        self.request("POST", path, Some(body)).map(|_| ())
    }

    /// POST, returning the answer's JSON (null when it has none).
    pub fn post_for(&self, path: &str, body: &Value) -> Result<Value, Error> {
        Ok(self.request("POST", path, Some(body))?.unwrap_or(Value::Null))
    }

    /// DELETE, returning the answer's JSON (null when it has none).
    pub fn delete_for(&self, path: &str) -> Result<Value, Error> {
        Ok(self.request("DELETE", path, None)?.unwrap_or(Value::Null))
    }

    pub fn delete(&self, path: &str) -> Result<(), Error> {
        self.request("DELETE", path, None).map(|_| ())
    }

    fn delete_with_reason(&self, path: &str, reason: &str) -> Result<(), Error> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .delete(&url)
            .header("Authorization", &self.auth)
            .header("X-Reason", reason)
            .call()
            .map_err(|e| Error(format!("DELETE {url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let reason = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(text);
        Err(Error(format!("DELETE {path}: {status}: {reason}")))
    }
}

/// The columns `list` shows for each kind of object, as (header, JSON path) pairs.
fn columns(what: Listable) -> &'static [(&'static str, &'static str)] {
    match what {
        Listable::Queues => &[
            ("vhost", "vhost"),
            ("name", "name"),
            ("type", "type"),
            ("durable", "durable"),
            ("auto_delete", "auto_delete"),
            ("messages", "messages"),
            ("ready", "messages_ready"),
            ("unacked", "messages_unacknowledged"),
            ("consumers", "consumers"),
            ("policy", "policy"),
        ],
        Listable::Exchanges => &[
            ("vhost", "vhost"),
            ("name", "name"),
            ("type", "type"),
            ("durable", "durable"),
            ("auto_delete", "auto_delete"),
            ("internal", "internal"),
        ],
        Listable::Bindings => &[
            ("vhost", "vhost"),
            ("source", "source"),
            ("destination", "destination"),
            ("destination_type", "destination_type"),
            ("routing_key", "routing_key"),
            ("arguments", "arguments"),
        ],
        Listable::Connections => &[
            ("name", "name"),
            ("user", "user"),
            ("vhost", "vhost"),
            ("peer", "peer_host"),
            ("port", "peer_port"),
            ("channels", "channels"),
            ("state", "state"),
        ],
        Listable::Consumers => &[
            ("vhost", "queue.vhost"),
            ("queue", "queue.name"),
            ("consumer_tag", "consumer_tag"),
            ("connection", "channel_details.connection_name"),
            ("channel", "channel_details.number"),
            ("ack_required", "ack_required"),
            ("prefetch", "prefetch_count"),
        ],
        Listable::Vhosts => &[("name", "name"), ("messages", "messages"), ("tracing", "tracing")],
        Listable::Users => &[("name", "name"), ("tags", "tags")],
        Listable::Permissions => {
            &[("user", "user"), ("vhost", "vhost"), ("configure", "configure"), ("write", "write"), ("read", "read")]
        }
    }
}

/// The API path that lists `what`, in one vhost when given.
fn list_path(what: Listable, vhost: Option<&str>) -> String {
    let base = match what {
        Listable::Queues => "/queues",
        Listable::Exchanges => "/exchanges",
        Listable::Bindings => "/bindings",
        Listable::Connections => "/connections",
        Listable::Consumers => "/consumers",
        Listable::Vhosts => "/vhosts",
        Listable::Users => "/users",
        Listable::Permissions => "/permissions",
    };
    match (what, vhost) {
        (Listable::Queues | Listable::Exchanges | Listable::Bindings | Listable::Consumers, Some(v)) => {
            format!("{base}/{}", encode_segment(v))
        }
        (Listable::Connections, Some(v)) => format!("/vhosts/{}/connections", encode_segment(v)),
        (Listable::Permissions, Some(v)) => format!("/vhosts/{}/permissions", encode_segment(v)),
        _ => base.to_string(),
    }
}

/// Follows a dotted path into a JSON object.
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// How a value reads in a table cell: strings bare, nothing for null, JSON otherwise.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
        }
        Some(other) => other.to_string(),
    }
}

/// Renders rows as aligned columns under a header line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            let pad = widths[i].saturating_sub(c.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn list(client: &Client, g: &Global, what: Listable) -> Result<String, Error> {
    let items = client.get(&list_path(what, g.vhost.as_deref()))?;
    if g.format == Format::Json {
        return Ok(pretty(&items));
    }
    let Value::Array(items) = items else { return Err(Error(format!("expected a list, got {items}"))) };
    let cols = columns(what);
    let headers: Vec<&str> = cols.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> =
        items.iter().map(|item| cols.iter().map(|(_, path)| cell(lookup(item, path))).collect()).collect();
    Ok(table(&headers, &rows))
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// Parses an `--arguments` JSON object (absent means none).
fn arguments(text: Option<&str>) -> Result<Value, Error> {
    match text {
        None => Ok(Value::Object(Map::new())),
        Some(t) => match serde_json::from_str(t) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(Error("--arguments must be a JSON object".into())),
            Err(e) => Err(Error(format!("--arguments is not JSON: {e}"))),
        },
    }
}

fn binding_path(vhost: &str, b: &BindingArgs) -> String {
    format!(
        "/bindings/{}/e/{}/{}/{}",
        encode_segment(vhost),
        encode_segment(&b.source),
        b.destination_type.letter(),
        encode_segment(&b.destination)
    )
}

/// `cluster_status` from the answers to GET /api/overview and GET /api/nodes: the cluster's
/// name, its disk nodes (every node but RAM ones, which Warren has none of) and the running
/// ones, each sorted by name.
pub fn cluster_status(overview: &Value, nodes: &Value, format: Format) -> Result<String, Error> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let Value::Array(nodes) = nodes else { return Err(Error(format!("expected a list of nodes, got {nodes}"))) };
    let mut listed: Vec<(String, bool, bool)> = nodes
        .iter()
        .filter_map(|n| {
            let name = text(n, "name")?;
            let running = n.get("running").and_then(Value::as_bool).unwrap_or(false);
            let ram = n.get("type").and_then(Value::as_str) == Some("ram");
            Some((name, running, ram))
        })
        .collect();
    listed.sort();
    let node = text(overview, "node").unwrap_or_default();
    let cluster_name = text(overview, "cluster_name").unwrap_or_else(|| node.clone());
    let disk: Vec<&str> = listed.iter().filter(|(_, _, ram)| !ram).map(|(n, _, _)| n.as_str()).collect();
    let ram: Vec<&str> = listed.iter().filter(|(_, _, ram)| *ram).map(|(n, _, _)| n.as_str()).collect();
    let running: Vec<&str> = listed.iter().filter(|(_, up, _)| *up).map(|(n, _, _)| n.as_str()).collect();
    if format == Format::Json {
        let mut doc = json!({"node": node, "cluster_name": cluster_name, "disk_nodes": disk, "running_nodes": running});
        if !ram.is_empty() {
            doc["ram_nodes"] = json!(ram);
        }
        return Ok(pretty(&doc));
    }
    let mut out = format!("Cluster status of node {node} ...\nBasics\n\nCluster name: {cluster_name}\n");
    let mut section = |title: &str, names: &[&str]| {
        let _ = write!(out, "\n{title}\n\n");
        for name in names {
            let _ = writeln!(out, "{name}");
        }
    };
    section("Disk Nodes", &disk);
    if !ram.is_empty() {
        section("RAM Nodes", &ram);
    }
    section("Running Nodes", &running);
    Ok(out)
}

/// Runs one command and returns what to print.
pub fn run(cli: &Cli) -> Result<String, Error> {
    let g = &cli.global;
    let client = Client::new(g)?;
    let vhost = encode_segment(g.vhost());
    match &cli.command {
        Command::List { what } => list(&client, g, *what),
        Command::Declare { what: Declare::Queue { name, durable, auto_delete, arguments: args } } => {
            let body =
                json!({"durable": durable, "auto_delete": auto_delete, "arguments": arguments(args.as_deref())?});
            client.put(&format!("/queues/{vhost}/{}", encode_segment(name)), &body)?;
            Ok(format!("queue declared: {name}\n"))
        }
        Command::Declare {
            what: Declare::Exchange { name, kind, durable, auto_delete, internal, arguments: args },
        } => {
            let body = json!({
                "type": kind,
                "durable": durable,
                "auto_delete": auto_delete,
                "internal": internal,
                "arguments": arguments(args.as_deref())?,
            });
            client.put(&format!("/exchanges/{vhost}/{}", encode_segment(name)), &body)?;
            Ok(format!("exchange declared: {name}\n"))
        }
        Command::Declare { what: Declare::Binding(b) } => {
            let body = json!({"routing_key": b.routing_key, "arguments": arguments(b.arguments.as_deref())?});
            client.post(&binding_path(g.vhost(), b), &body)?;
            Ok(format!("binding declared: {} -> {} ({})\n", b.source, b.destination, b.routing_key))
        }
        Command::Delete { what: Delete::Queue { name, if_empty, if_unused } } => {
            let mut query = Vec::new();
            if *if_empty {
                query.push("if-empty=true");
            }
            if *if_unused {
                query.push("if-unused=true");
            }
            let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
            client.delete(&format!("/queues/{vhost}/{}{query}", encode_segment(name)))?;
            Ok(format!("queue deleted: {name}\n"))
        }
        Command::Delete { what: Delete::Exchange { name, if_unused } } => {
            let query = if *if_unused { "?if-unused=true" } else { "" };
            client.delete(&format!("/exchanges/{vhost}/{}{query}", encode_segment(name)))?;
            Ok(format!("exchange deleted: {name}\n"))
        }
        Command::Delete { what: Delete::Binding(b) } => {
            // A binding's URL ends in its "properties key", which the server derives from the
            // routing key and arguments: find it among the bindings between the two.
            let path = binding_path(g.vhost(), b);
            let wanted_args = arguments(b.arguments.as_deref())?;
            let listed = client.get(&path)?;
            let no_args = |a: Option<&Value>| a.is_none_or(|a| a.as_object().is_some_and(Map::is_empty));
            let key = listed
                .as_array()
                .into_iter()
                .flatten()
                .filter(|x| x.get("routing_key").and_then(Value::as_str) == Some(b.routing_key.as_str()))
                .find(|x| match &b.arguments {
                    None => no_args(x.get("arguments")),
                    Some(_) => x.get("arguments") == Some(&wanted_args),
                })
                .and_then(|x| x.get("properties_key").and_then(Value::as_str))
                .ok_or_else(|| {
                    Error(format!(
                        "no binding from '{}' to {} '{}' with routing key '{}'",
                        b.source,
                        match b.destination_type {
                            DestinationType::Queue => "queue",
                            DestinationType::Exchange => "exchange",
                        },
                        b.destination,
                        b.routing_key
                    ))
                })?;
            client.delete(&format!("{path}/{}", encode_segment(key)))?;
            Ok(format!("binding deleted: {} -> {} ({})\n", b.source, b.destination, b.routing_key))
        }
        Command::Purge { what: Purge::Queue { name } } => {
            client.delete(&format!("/queues/{vhost}/{}/contents", encode_segment(name)))?;
            Ok(format!("queue purged: {name}\n"))
        }
        Command::Export { what: Definitions::Definitions { file } } => {
            let defs = client.get("/definitions")?;
            let text = pretty(&defs);
            if file.as_os_str() == "-" {
                return Ok(text);
            }
            std::fs::write(file, text).map_err(|e| Error(format!("cannot write {}: {e}", file.display())))?;
            Ok(format!("definitions exported to {}\n", file.display()))
        }
        Command::Import { what: Definitions::Definitions { file } } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| Error(format!("cannot read stdin: {e}")))?
            } else {
                std::fs::read_to_string(file).map_err(|e| Error(format!("cannot read {}: {e}", file.display())))?
            };
            let defs: Value =
                serde_json::from_str(&text).map_err(|e| Error(format!("{} is not JSON: {e}", file.display())))?;
            client.post("/definitions", &defs)?;
            Ok(format!("definitions imported from {}\n", file.display()))
        }
        Command::Close { what: Close::Connection { name, reason } } => {
            client.delete_with_reason(&format!("/connections/{}", encode_segment(name)), reason)?;
            Ok(format!("connection closed: {name}\n"))
        }
        Command::ClusterStatus => cluster_status(&client.get("/overview")?, &client.get("/nodes")?, g.format),
        Command::ForgetClusterNode { node } => {
            client.delete(&format!("/nodes/{}", encode_segment(node)))?;
            Ok(format!("Removing node {node} from the cluster\n"))
        }
        Command::AddMember { queue, node } => {
            let path = format!("/queues/quorum/{vhost}/{}/replicas/add", encode_segment(queue));
            client.post(&path, &json!({ "node": node }))?;
            Ok(format!("member added: quorum queue {queue} on {node}\n"))
        }
        Command::DeleteMember { queue, node } => {
            let path = format!("/queues/quorum/{vhost}/{}/replicas/delete", encode_segment(queue));
            client.post(&path, &json!({ "node": node }))?;
            Ok(format!("member deleted: quorum queue {queue} on {node}\n"))
        }
        Command::Grow { node, strategy, vhost_pattern, queue_pattern } => {
            let path = format!("/queues/quorum/replicas/on/{}/grow", encode_segment(node));
            let body = json!({"strategy": strategy, "vhost_pattern": vhost_pattern, "queue_pattern": queue_pattern});
            members_outcome(&client.post_for(&path, &body)?, g.format)
        }
        Command::Shrink { node } => {
            let path = format!("/queues/quorum/replicas/on/{}/shrink", encode_segment(node));
            members_outcome(&client.delete_for(&path)?, g.format)
        }
        Command::AwaitOnlineQuorumPlusOne { timeout } => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(*timeout);
            loop {
                let (status, body) = client.check("/health/checks/node-is-quorum-critical")?;
                if status == 200 {
                    return Ok(if body.get("reason").and_then(Value::as_str) == Some("single node cluster") {
                        "the target node is the only one in a single node cluster: the command does not apply\n"
                            .to_string()
                    } else {
                        "every quorum queue has a majority plus one of its members online\n".to_string()
                    });
                }
                if std::time::Instant::now() >= deadline {
                    return Err(Error(
                        "time is up, no quorum + 1 online replicas came online for at least some quorum queues"
                            .to_string(),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        Command::CheckIfNodeIsQuorumCritical => {
            let node = client.get("/overview")?.get("node").and_then(Value::as_str).unwrap_or("the node").to_string();
            let (status, body) = client.check("/health/checks/node-is-quorum-critical")?;
            quorum_critical(status, &body, &node, g.format)
        }
    }
}

/// The outcome of `check_if_node_is_quorum_critical` from the health check's answer: what to
/// print when no queue is critical, an error naming each critical queue otherwise.
pub fn quorum_critical(status: u16, body: &Value, node: &str, format: Format) -> Result<String, Error> {
    if status == 200 {
        return Ok(match format {
            Format::Json => pretty(body),
            Format::Table => format!("no quorum queue would lose its quorum if node {node} is stopped\n"),
        });
    }
    let queues = body.get("queues").and_then(Value::as_array).ok_or_else(|| {
        Error(format!("the node-is-quorum-critical check failed ({status}) and named no queues: {body}"))
    })?;
    let lines: Vec<String> = queues
        .iter()
        .map(|q| {
            let name = q.get("readable_name").and_then(Value::as_str).unwrap_or("a queue");
            format!("{name} would lose quorum if node {node} is stopped")
        })
        .collect();
    Err(Error(lines.join("\n")))
}

/// What `grow` or `shrink` did, queue by queue: vhost, name, its member count after, and the
/// result (`ok`, or `error` with why).
pub fn members_outcome(done: &Value, format: Format) -> Result<String, Error> {
    let rows = done.as_array().ok_or_else(|| Error(format!("expected a list of queues, got {done}")))?;
    if format == Format::Json {
        return Ok(pretty(done));
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            ["vhost", "name", "size", "result", "reason"].iter().map(|k| cell(lookup(r, k))).collect::<Vec<String>>()
        })
        .collect();
    Ok(table(&["vhost", "name", "size", "result", "reason"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["warrenctl", "list", "queues", "--vhost", "v", "--format", "json"])
            .expect("list queues parses");
        assert_eq!(cli.global.vhost.as_deref(), Some("v"));
        assert_eq!(cli.global.format, Format::Json);
        assert_eq!((cli.global.host.as_str(), cli.global.port), ("127.0.0.1", 15672));
        assert_eq!((cli.global.user.as_str(), cli.global.password.as_str()), ("guest", "guest"));
    }

    #[test]
    fn the_quorum_critical_check_names_each_critical_queue() {
        let ok = quorum_critical(200, &json!({"status": "ok"}), "w1@h", Format::Table).expect("ok");
        assert_eq!(ok, "no quorum queue would lose its quorum if node w1@h is stopped\n");
        let failed = json!({"status": "failed", "reason": "...", "queues": [
            {"readable_name": "queue 'a' in vhost '/'", "name": "a", "virtual_host": "/", "type": "quorum"},
            {"readable_name": "queue 'b' in vhost 'v'", "name": "b", "virtual_host": "v", "type": "quorum"}]});
        let err = quorum_critical(503, &failed, "w1@h", Format::Table).expect_err("critical");
        assert_eq!(
            err.0,
            "queue 'a' in vhost '/' would lose quorum if node w1@h is stopped\n\
             queue 'b' in vhost 'v' would lose quorum if node w1@h is stopped"
        );
        assert!(quorum_critical(500, &json!({"error": "x"}), "w1@h", Format::Table).is_err());
        let cli = Cli::try_parse_from(["warrenctl", "check_if_node_is_quorum_critical"]).expect("parses");
        assert!(matches!(cli.command, Command::CheckIfNodeIsQuorumCritical));
        let cli = Cli::try_parse_from(["warrenctl", "await_online_quorum_plus_one", "-t", "5"]).expect("parses");
        assert!(matches!(cli.command, Command::AwaitOnlineQuorumPlusOne { timeout: 5 }));
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("/"), "%2F");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("q-1.x_y~"), "q-1.x_y~");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["name", "n"], &[vec!["a".into(), "10".into()], vec!["long-name".into(), "2".into()]]);
        assert_eq!(t, "name       n\na          10\nlong-name  2\n");
    }

    #[test]
    fn cells_show_strings_bare() {
        let v = json!({"a": "x", "b": null, "c": 3, "d": {"e": true}, "t": ["admin", "monitoring"]});
        assert_eq!(cell(lookup(&v, "a")), "x");
        assert_eq!(cell(lookup(&v, "b")), "");
        assert_eq!(cell(lookup(&v, "missing")), "");
        assert_eq!(cell(lookup(&v, "c")), "3");
        assert_eq!(cell(lookup(&v, "d.e")), "true");
        assert_eq!(cell(lookup(&v, "t")), "admin,monitoring");
    }

    #[test]
    fn cluster_status_lists_disk_and_running_nodes_by_name() {
        let cli = Cli::try_parse_from(["warrenctl", "cluster_status"]).expect("cluster_status parses");
        assert!(matches!(cli.command, Command::ClusterStatus));
        let overview = json!({"node": "w1@h", "cluster_name": "prod"});
        let nodes = json!([
            {"name": "w3@h", "type": "disc", "running": false},
            {"name": "w1@h", "type": "disc", "running": true, "uptime": 5},
            {"name": "w2@h", "type": "disc", "running": true},
        ]);
        let text = cluster_status(&overview, &nodes, Format::Table).expect("rendered");
        assert_eq!(
            text,
            "Cluster status of node w1@h ...\nBasics\n\nCluster name: prod\n\nDisk Nodes\n\nw1@h\nw2@h\nw3@h\n\n\
             Running Nodes\n\nw1@h\nw2@h\n"
        );
        let doc: Value =
            serde_json::from_str(&cluster_status(&overview, &nodes, Format::Json).expect("json")).expect("JSON");
        assert_eq!(doc["disk_nodes"], json!(["w1@h", "w2@h", "w3@h"]));
        assert_eq!(doc["running_nodes"], json!(["w1@h", "w2@h"]));
        assert_eq!(doc["cluster_name"], "prod");
        assert!(cluster_status(&overview, &json!({}), Format::Table).is_err());
    }

    #[test]
    fn list_paths_follow_rabbitmq() {
        assert_eq!(list_path(Listable::Queues, None), "/queues");
        assert_eq!(list_path(Listable::Queues, Some("/")), "/queues/%2F");
        assert_eq!(list_path(Listable::Connections, Some("v")), "/vhosts/v/connections");
        assert_eq!(list_path(Listable::Users, Some("v")), "/users");
    }
}
