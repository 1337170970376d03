//! The `warren` binary: reads settings (defaults, then the config file, then flags), starts the
//! AMQP and HTTP listeners (and, in a cluster, the inter-node one), and runs until interrupted.

mod cluster;
mod config;

use clap::Parser;
use config::Settings;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;
use warren_cluster::{ClusterSettings, NodeName};

/// The environment variable naming the node (as RABBITMQ_NODENAME).
const NODENAME_VAR: &str = "WARREN_NODENAME";

/// How long a restarted node of a cluster waits to catch up with the cluster before it takes
/// AMQP clients anyway (RabbitMQ waits for its peers at boot for 30 s at a time).
const CLUSTER_WAIT_BEFORE_SERVING: Duration = Duration::from_secs(30);

/// How long, after that, a restarted node waits for its quorum queues' members to hear what
/// their groups committed while it was away (a group without a running majority never says).
const MEMBERS_IN_STEP_WAIT: Duration = Duration::from_secs(3);

#[derive(Parser, Debug)]
#[command(name = "warren", version, about = "Warren: an AMQP 0-9-1 message broker that speaks RabbitMQ's dialect")]
struct Args {
    /// AMQP listener address (default 127.0.0.1:5672).
    #[arg(long, value_name = "ADDR:PORT")]
    amqp_listen: Option<SocketAddr>,
    /// Management HTTP listener address (default 127.0.0.1:15672).
    #[arg(long, value_name = "ADDR:PORT")]
    http_listen: Option<SocketAddr>,
    /// Directory for the broker's data (default ./warren-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file in rabbitmq.conf format.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's name, name@host (a bare name takes the machine's host name); overrides
    /// WARREN_NODENAME. Default warren@localhost.
    #[arg(long, value_name = "NAME@HOST")]
    nodename: Option<String>,
}

/// The node's name: the flag, else the environment, else `warren@localhost`.
fn node_name(args: &Args) -> Result<NodeName, String> {
    if let Some(name) = &args.nodename {
        return NodeName::own(name).map_err(|e| format!("--nodename: {e}"));
    }
    match std::env::var(NODENAME_VAR) {
        Ok(name) if !name.trim().is_empty() => NodeName::own(&name).map_err(|e| format!("{NODENAME_VAR}: {e}")),
        Ok(_) | Err(std::env::VarError::NotPresent) => NodeName::own(warren_cluster::node::DEFAULT_NODE_NAME),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{NODENAME_VAR} is not valid UTF-8")),
    }
}

fn settings(args: &Args) -> Result<Settings, String> {
    let mut s = Settings::default();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        s.apply_file(&text, &path.display().to_string())?;
    }
    if let Some(a) = args.amqp_listen {
        s.amqp_listen = a;
    }
    if let Some(a) = args.http_listen {
        s.http_listen = a;
    }
    if let Some(d) = &args.data_dir {
        s.data_dir = d.clone();
    }
    Ok(s)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let resolved = settings(&args).and_then(|s| {
        let cluster = s.cluster(node_name(&args)?)?;
        Ok((s, cluster))
    });
    let (settings, cluster) = match resolved {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, cluster)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, cluster: ClusterSettings) -> Result<(), String> {
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", settings.data_dir.display()))?;
    let amqp = TcpListener::bind(settings.amqp_listen)
        .await
        .map_err(|e| format!("cannot listen for AMQP on {}: {e}", settings.amqp_listen))?;
    let http = TcpListener::bind(settings.http_listen)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {}: {e}", settings.http_listen))?;
    let amqp_addr = amqp.local_addr().map_err(|e| e.to_string())?;
    let http_addr = http.local_addr().map_err(|e| e.to_string())?;
    if settings.core.auth_mechanisms.contains(&warren_core::auth::Mechanism::External) && !settings.tls.verify_peer {
        // EXTERNAL is offered only to clients whose certificate the CA verified.
        tracing::warn!("auth_mechanisms has EXTERNAL but ssl_options.verify is not verify_peer: it is never offered");
    }
    // AMQPS and HTTPS when configured: a bad certificate or key stops the start with a clear error.
    let amqps = tls_listener("AMQPS", settings.amqps_listen, &settings.tls, "ssl_options").await?;
    let https = tls_listener("HTTPS", settings.https_listen, &settings.management_tls, "management.ssl").await?;
    // In a cluster: the cookie and the inter-node listener, kept connected to the other nodes.
    let inter_node_tls = match &settings.distribution_tls {
        t if t.certfile.is_none() && t.keyfile.is_none() && t.cacertfile.is_none() => None,
        t => {
            let (acceptor, connector) = warren_server::tls::inter_node(t, "distribution.ssl_options")?;
            Some(warren_raft::TcpTls { acceptor, connector })
        }
    };
    let endpoint = cluster::start(&cluster, &settings.data_dir, inter_node_tls).await?;

    let started = std::time::Instant::now();
    tracing::info!("recovering from {}", settings.data_dir.display());
    // The core's hash maps share one seed (so its output order is a function of its inputs);
    // a random one per process keeps client-chosen names from being crafted to collide.
    {
        use std::hash::BuildHasher;
        warren_core::hash::set_seed(std::collections::hash_map::RandomState::new().hash_one(std::process::id()));
    }
    let backend: std::sync::Arc<dyn warren_store::Backend> = std::sync::Arc::new(warren_store::FsBackend);
    let (broker, report) = warren_core::Broker::open(settings.core.clone(), backend, settings.data_dir.clone())?;
    for line in &report.progress {
        tracing::info!("{line}");
    }
    for line in &report.corrupt {
        tracing::error!("{line}");
    }
    for q in &report.quarantined {
        tracing::warn!("{q}");
    }
    tracing::info!(
        "recovered {} durable queues holding {} messages, {} exchanges and {} bindings in {} ms",
        report.queues,
        report.messages,
        report.exchanges,
        report.bindings,
        started.elapsed().as_millis()
    );
    let mut broker = broker;
    // In a cluster, definitions loaded at boot are changes for the metadata group too.
    broker.set_replicating(endpoint.is_some());
    if let Some(path) = &settings.load_definitions {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read definitions {}: {e}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("definitions {} are not JSON: {e}", path.display()))?;
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let n = warren_http::apply_definitions(&mut broker, &doc, now_ms)
            .map_err(|e| format!("definitions {}: {e}", path.display()))?;
        tracing::info!("applied {n} definitions (vhosts, users, permissions, policies) from {}", path.display());
        let mut out = Vec::new();
        let t = warren_http::apply_topology(&mut broker, &doc, now_ms, &mut out)
            .map_err(|e| format!("definitions {}: {e}", path.display()))?;
        tracing::info!("declared {t} exchanges, queues and bindings from {}", path.display());
    }
    let mut server = warren_server::Server::new(broker);
    let total_memory = warren_server::alarms::total_memory().unwrap_or(0);
    let limits = warren_server::alarms::ResourceLimits {
        memory_high_watermark: (total_memory > 0
            || matches!(settings.memory_high_watermark, config::Limit::Absolute(_)))
        .then(|| settings.memory_high_watermark.bytes(total_memory)),
        disk_free_limit: settings.disk_free_limit.bytes(total_memory),
        data_dir: settings.data_dir.clone(),
    };
    tracing::info!(
        "memory high watermark {} MiB, disk free limit {} MiB",
        limits.memory_high_watermark.map_or(0, |b| b / (1024 * 1024)),
        limits.disk_free_limit / (1024 * 1024)
    );
    server.set_resource_limits(limits);
    let shared = server.shared();
    let view = cluster::View::new(&cluster, endpoint.as_ref());
    shared.set_cluster_view(view.clone());
    // In a cluster: the write-ahead log and the metadata group, through which durable
    // declarations are committed before they are answered.
    let groups = match &endpoint {
        Some(endpoint) => Some(
            cluster::Groups::start(&cluster, endpoint, &settings.data_dir, shared.clone(), settings.balanced_leaders)
                .await?,
        ),
        None => None,
    };
    if let Some(groups) = &groups {
        view.set_groups(groups);
    }
    let listeners = warren_http::Listeners {
        amqp: Some(amqp_addr),
        amqps: amqps.as_ref().map(|(_, _, a)| *a),
        http: Some(http_addr),
        https: https.as_ref().map(|(_, _, a)| *a),
    };
    let https_addr = listeners.https;
    let https = https.map(|(listener, acceptor, _)| (listener, acceptor));
    let http_config = settings.management_http;
    // The management API runs on a runtime of its own: a request that works long (JSON for
    // 10,000 queues takes a quarter of a second) then holds one of its threads, never one
    // that serves AMQP clients.
    let http = http.into_std().map_err(|e| format!("cannot hand over the HTTP listener: {e}"))?;
    let https = match https {
        Some((listener, acceptor)) => {
            Some((listener.into_std().map_err(|e| format!("cannot hand over the HTTPS listener: {e}"))?, acceptor))
        }
        None => None,
    };
    let http_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("warren-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the management runtime: {e}"))?;
    std::thread::Builder::new()
        .name("warren-http".into())
        .spawn(move || {
            let served = http_runtime.block_on(async move {
                let http = TcpListener::from_std(http)?;
                let https = match https {
                    Some((listener, acceptor)) => Some((TcpListener::from_std(listener)?, acceptor)),
                    None => None,
                };
                warren_http::serve_listeners(http, https, shared, listeners, http_config).await
            });
            if let Err(e) = served {
                tracing::error!("management listener stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the management thread: {e}"))?;
    tracing::info!(
        "Warren {} started as {}: AMQP on {amqp_addr}, HTTP on {http_addr}, data in {}",
        env!("CARGO_PKG_VERSION"),
        cluster.me,
        settings.data_dir.display()
    );
    // Tests and scripts wait for these lines to learn the bound ports (port 0 picks a free one).
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening amqp {amqp_addr}");
        let _ = writeln!(stdout, "listening http {http_addr}");
        if let Some((_, _, addr)) = &amqps {
            let _ = writeln!(stdout, "listening amqps {addr}");
        }
        if let Some(addr) = https_addr {
            let _ = writeln!(stdout, "listening https {addr}");
        }
        if let Some(endpoint) = &endpoint {
            let _ = writeln!(stdout, "listening cluster {}", endpoint.local_addr());
        }
        let _ = stdout.flush();
    }

    let serve_tls = async {
        match amqps {
            Some((listener, acceptor, _)) => server.serve_tls(listener, acceptor).await,
            None => std::future::pending().await,
        }
    };
    // A restarted node of a cluster takes AMQP clients once it has caught up with the cluster
    // and runs its quorum queues' members (as RabbitMQ opens its listeners at the end of its
    // boot): before, a quorum queue here is only this node's recovered copy of its declaration.
    // Connections that come meanwhile wait in the listener's backlog. Without a majority for
    // that long, the node serves anyway (its quorum queues refuse publishes until their
    // members run).
    let serving = async {
        if let Some(groups) = &groups {
            let waited = std::time::Instant::now();
            if groups.until_serving(CLUSTER_WAIT_BEFORE_SERVING, MEMBERS_IN_STEP_WAIT).await {
                tracing::info!(
                    "caught up with the cluster and its quorum queues' members running after {} ms: \
                     taking AMQP clients",
                    waited.elapsed().as_millis()
                );
            } else {
                tracing::warn!(
                    "not caught up with the cluster within {} s (is a majority of its nodes running?): \
                     taking AMQP clients anyway",
                    CLUSTER_WAIT_BEFORE_SERVING.as_secs()
                );
            }
        }
    };
    tokio::select! {
        _ = async {
            serving.await;
            tokio::select! {
                _ = server.serve(amqp) => {}
                _ = serve_tls => {}
            }
        } => {}
        _ = shutdown_signal() => {
            tracing::info!("shutting down: closing client connections");
            server.shutdown();
            // Give connections a bounded moment to say connection.close and hear close-ok.
            let shared = server.shared();
            let deadline = tokio::time::Instant::now() + warren_server::CLOSE_OK_TIMEOUT;
            while shared.broker().overview().connections > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Nothing written is left unsynced, acknowledgements included.
            server.sync_all().await;
        }
    }
    if let Some(groups) = groups {
        groups.shutdown().await;
    }
    if let Some(endpoint) = endpoint {
        endpoint.shutdown().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A TLS listener bound to `addr` with its acceptor (certificates from the `prefix.*` settings)
/// and its local address, when `addr` is configured.
async fn tls_listener(
    what: &str,
    addr: Option<SocketAddr>,
    tls: &warren_server::tls::TlsSettings,
    prefix: &str,
) -> Result<Option<(TcpListener, warren_server::tls::TlsAcceptor, SocketAddr)>, String> {
    let Some(addr) = addr else { return Ok(None) };
    let acceptor = warren_server::tls::acceptor(tls, prefix)?;
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    Ok(Some((listener, acceptor, local)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(argv).expect("valid arguments")
    }

    #[test]
    fn the_nodename_flag_names_the_node() {
        // The flag wins whatever WARREN_NODENAME says (it is not read then).
        let me = node_name(&args(&["warren", "--nodename", "w1@10.0.0.1"])).expect("valid");
        assert_eq!(me.node(), "w1@10.0.0.1");
        let me = node_name(&args(&["warren", "--nodename", "w1"])).expect("a bare name");
        assert_eq!(me.node(), format!("w1@{}", warren_cluster::node::short_hostname()));
        let err = node_name(&args(&["warren", "--nodename", "w1@"])).expect_err("no host");
        assert!(err.starts_with("--nodename: ") && err.contains("w1@"), "{err}");
    }
}
