//! The binary's part of the cluster: the inter-node endpoint (a `warren_raft::TcpNode` on the
//! `distribution.listener` address, authenticated by the `.cookie`), kept connected to every
//! other configured node so that liveness is known without any Raft group, and the view of the
//! cluster the management side shows (`/api/nodes`, `/api/overview`, metrics).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use warren_cluster::host::{Forward, HostOptions, MetaHost, ProposeFailure, COMMIT_TIMEOUT};
use warren_cluster::membership::{find_cluster, Found, MembershipService};
use warren_cluster::meta::Metadata;
use warren_cluster::node::{load_or_create_cookie, COOKIE_FILE};
use warren_cluster::queues::QueueHost;
use warren_cluster::ClusterSettings;
use warren_raft::{Forwarded, Group, GroupConfig, Peer, TcpConfig, TcpNode, Wal, WalConfig};
use warren_server::cluster::{ClusterView, MembersError, MembersFuture, MembersOutcome, NodeView};

/// Authentication failures are logged at most this often: a node with the wrong cookie is
/// redialed every 100 ms.
const AUTH_WARNING_EVERY: Duration = Duration::from_secs(30);

/// A clustered node's endpoint and the task that logs its peers coming and going.
pub struct Endpoint {
    node: TcpNode,
    reporter: JoinHandle<()>,
}

impl Endpoint {
    /// The endpoint itself, on which the node's Raft groups are to register.
    pub fn node(&self) -> &TcpNode {
        &self.node
    }

    /// The inter-node listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// Closes the listener and every connection to other nodes.
    pub async fn shutdown(self) {
        self.reporter.abort();
        self.node.shutdown().await;
    }
}

/// Starts the endpoint of a clustered node: reads (or creates) the cookie in `data_dir`, binds
/// the inter-node listener and keeps a connection to every other listed node. `None` for a
/// node on its own, which touches neither the cookie nor any port.
pub async fn start(
    settings: &ClusterSettings,
    data_dir: &Path,
    tls: Option<warren_raft::TcpTls>,
) -> Result<Option<Endpoint>, String> {
    if !settings.is_clustered() {
        return Ok(None);
    }
    let cookie = load_or_create_cookie(data_dir)?;
    let encrypted = tls.is_some();
    let node = bind(settings, cookie, tls).await?;
    let peers = settings.peers();
    let names: BTreeMap<u64, String> = settings.nodes.iter().map(|n| (n.id(), n.node())).collect();
    tracing::info!(
        "cluster {}: node {} (id {:016x}) listening for other nodes on {}{}; nodes: {}",
        settings.cluster_name,
        settings.me,
        node.id(),
        node.local_addr(),
        if encrypted { " (TLS)" } else { "" },
        settings.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
    );
    // A node with no cluster state says so from its first handshake on (see `Groups::start`).
    node.set_fresh(holds_no_cluster_state(data_dir));
    node.watch_peers(peers);
    let cookie_path = data_dir.join(COOKIE_FILE);
    let reporter = tokio::spawn(report(node.clone(), names, cookie_path.display().to_string(), encrypted));
    Ok(Some(Endpoint { node, reporter }))
}

/// Whether `data_dir` holds nothing of a cluster: no write-ahead log with anything in it
/// (a first start, or a node reset).
fn holds_no_cluster_state(data_dir: &Path) -> bool {
    match std::fs::read_dir(data_dir.join("cluster").join("wal")) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    }
}

/// Binds the listener on this node's port, or on the first free one of the configured range.
async fn bind(
    settings: &ClusterSettings,
    cookie: Vec<u8>,
    tls: Option<warren_raft::TcpTls>,
) -> Result<TcpNode, String> {
    let ip = settings.listen.ip();
    let ports = settings.listen_ports();
    let (first, last) = (*ports.start(), *ports.end());
    for port in ports {
        let addr = SocketAddr::new(ip, port);
        let config = TcpConfig { tls: tls.clone(), ..TcpConfig::new(settings.me.id(), cookie.clone()) };
        match TcpNode::bind(addr, config).await {
            Ok(node) => return Ok(node),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port < last => continue,
            Err(e) if first < last && e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "cannot listen for other nodes on {ip}: every port from {first} to {last} is in use \
                     (distribution.listener.port_range)"
                ))
            }
            Err(e) => return Err(format!("cannot listen for other nodes on {addr}: {e}")),
        }
    }
    Err(format!("cannot listen for other nodes on {ip}: no port from {first} to {last}"))
}

/// Logs other nodes coming up and going down, and peers failing to authenticate.
async fn report(node: TcpNode, names: BTreeMap<u64, String>, cookie_path: String, tls: bool) {
    let name = |id: &u64| names.get(id).cloned().unwrap_or_else(|| format!("node {id:016x}"));
    let mut connected = node.watch_connected();
    let mut stats = node.watch_stats();
    let mut up: BTreeSet<u64> = BTreeSet::new();
    let mut auth_failures = stats.borrow().auth_failures;
    let mut refusals = stats.borrow().refused_by_peers;
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut last_refusal_warning: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = connected.borrow_and_update().clone();
                for id in now.difference(&up) {
                    tracing::info!("node {} is up", name(id));
                }
                for id in up.difference(&now) {
                    tracing::warn!("node {} is down", name(id));
                }
                up = now;
            }
            changed = stats.changed() => {
                if changed.is_err() {
                    return;
                }
                let (failures, refused) = {
                    let now = stats.borrow_and_update();
                    (now.auth_failures, now.refused_by_peers)
                };
                let due = last_refusal_warning.is_none_or(|at| at.elapsed() >= AUTH_WARNING_EVERY);
                if refused > refusals && due {
                    tracing::error!(
                        "the cluster's nodes refuse this node: it was taken out of the cluster \
                         (forget_cluster_node), and reaches no node of it; to join it again, stop this node, \
                         empty its data directory but its .cookie, and start it"
                    );
                    last_refusal_warning = Some(tokio::time::Instant::now());
                }
                refusals = refused;
                let due = last_warning.is_none_or(|at| at.elapsed() >= AUTH_WARNING_EVERY);
                if failures > auth_failures && due {
                    let why = node.last_auth_failure().unwrap_or_default();
                    tracing::warn!(
                        "a node failed to authenticate ({failures} failures so far; the latest: {why}): every node \
                         of the cluster must have the same cookie as {cookie_path}{}",
                        if tls { ", and a certificate from the CA of distribution.ssl_options.cacertfile" } else { "" }
                    );
                    last_warning = Some(tokio::time::Instant::now());
                }
                auth_failures = failures;
            }
        }
    }
}

/// The cluster as the management side shows it: the configured nodes, this one running, the
/// others while this node holds a connection to them.
pub struct View {
    cluster_name: String,
    me: String,
    /// Every node, by name, with its id.
    nodes: Vec<(String, u64)>,
    endpoint: Option<TcpNode>,
    /// The quorum queues' groups, once started.
    queues: std::sync::OnceLock<std::sync::Weak<QueueHost>>,
}

impl View {
    pub fn new(settings: &ClusterSettings, endpoint: Option<&Endpoint>) -> Arc<View> {
        let mut nodes: Vec<(String, u64)> = settings.nodes.iter().map(|n| (n.node(), n.id())).collect();
        if nodes.is_empty() {
            nodes.push((settings.me.node(), settings.me.id()));
        }
        nodes.sort();
        Arc::new(View {
            cluster_name: settings.cluster_name.clone(),
            me: settings.me.node(),
            nodes,
            endpoint: endpoint.map(|e| e.node.clone()),
            queues: std::sync::OnceLock::new(),
        })
    }

    /// Shows the quorum queues' groups of `groups` from now on.
    pub fn set_groups(&self, groups: &Groups) {
        let _ = self.queues.set(Arc::downgrade(&groups.queues));
    }

    /// The nodes in the cluster, by name, with their ids: the configured ones and those that
    /// joined since, but those forgotten.
    fn in_cluster(&self) -> Vec<(String, u64)> {
        let Some(queues) = self.queues.get().and_then(|q| q.upgrade()) else { return self.nodes.clone() };
        let ids = queues.nodes();
        let mut nodes: Vec<(String, u64)> = self.nodes.iter().filter(|(_, id)| ids.contains_key(id)).cloned().collect();
        for (id, name) in queues.joined_names() {
            if !nodes.iter().any(|(_, n)| *n == id) {
                nodes.push((name, id));
            }
        }
        nodes.sort();
        nodes
    }

    /// The id of node `name`, if it is in the cluster.
    fn id_of(&self, name: &str) -> Option<u64> {
        self.in_cluster().into_iter().find(|(n, _)| n == name).map(|(_, id)| id)
    }

    fn name_of(&self, id: u64) -> String {
        let known = self.nodes.iter().find(|(_, n)| *n == id).map(|(name, _)| name.clone());
        let joined = || self.queues.get().and_then(|q| q.upgrade()).and_then(|q| q.joined_names().remove(&id));
        known.or_else(joined).unwrap_or_else(|| format!("node {id:016x}"))
    }
}

impl ClusterView for View {
    fn replica(&self, vhost: &str, name: &str) -> Option<warren_server::cluster::ReplicaView> {
        let queues = self.queues.get()?.upgrade()?;
        let (leader, members, online) = queues.replica_status(vhost, name)?;
        let names = |ids: Vec<u64>| {
            let mut names: Vec<String> = ids.into_iter().map(|id| self.name_of(id)).collect();
            names.sort();
            names
        };
        Some(warren_server::cluster::ReplicaView {
            leader: leader.map(|id| self.name_of(id)),
            members: names(members),
            online: names(online),
        })
    }

    fn home(&self, vhost: &str, name: &str) -> Option<String> {
        let queues = self.queues.get()?.upgrade()?;
        queues.home(vhost, name).map(|id| self.name_of(id))
    }

    fn raft_metrics(&self) -> Vec<warren_server::cluster::RaftMetrics> {
        self.queues.get().and_then(|q| q.upgrade()).map(|q| q.raft_metrics()).unwrap_or_default()
    }

    fn change_member(&self, vhost: &str, name: &str, node: &str, add: bool) -> MembersFuture<()> {
        let queues = self.queues.get().and_then(|q| q.upgrade());
        let id = self.id_of(node);
        let (vhost, name, node) = (vhost.to_owned(), name.to_owned(), node.to_owned());
        Box::pin(async move {
            let queues = queues.ok_or(MembersError::NotQuorum)?;
            let id = id.ok_or_else(|| MembersError::Refused(format!("node {node} is not in the cluster")))?;
            let (group, mut members) = queues.wanted_members(&vhost, &name).ok_or(MembersError::NotQuorum)?;
            let at = members.iter().position(|m| *m == id);
            match (add, at) {
                (true, Some(_)) => return Err(MembersError::Refused(format!("{node} is already a member"))),
                (true, None) => members.push(id),
                (false, None) => return Err(MembersError::Refused(format!("{node} is not a member"))),
                (false, Some(_)) if members.len() == 1 => {
                    return Err(MembersError::Refused(format!("{node} is the last member")))
                }
                (false, Some(i)) => {
                    members.remove(i);
                }
            }
            queues.set_members(&vhost, &name, group, members).await.map_err(MembersError::Unavailable)
        })
    }

    fn change_members_on(
        &self,
        node: &str,
        grow: bool,
        even_only: bool,
        select: warren_server::cluster::QueueSelector,
    ) -> MembersFuture<MembersOutcome> {
        let queues = self.queues.get().and_then(|q| q.upgrade());
        let id = self.id_of(node);
        let node = node.to_owned();
        Box::pin(async move {
            let id = id.ok_or_else(|| MembersError::Refused(format!("node {node} is not in the cluster")))?;
            let Some(queues) = queues else { return Ok(Vec::new()) };
            let mut outcome = Vec::new();
            for (vhost, name, group, mut members) in queues.all_wanted_members() {
                if !select(&vhost, &name) {
                    continue;
                }
                let has = members.contains(&id);
                if grow {
                    if has || (even_only && members.len() % 2 != 0) {
                        continue;
                    }
                    members.push(id);
                } else if !has {
                    continue;
                } else if members.len() == 1 {
                    outcome.push((vhost, name, Err(format!("{node} is the last member"))));
                    continue;
                } else {
                    members.retain(|m| *m != id);
                }
                let size = members.len();
                let done = queues.set_members(&vhost, &name, group, members).await.map(|()| size);
                outcome.push((vhost, name, done));
            }
            Ok(outcome)
        })
    }

    fn forget_node(&self, node: &str) -> MembersFuture<()> {
        let queues = self.queues.get().and_then(|q| q.upgrade());
        let id = self.id_of(node);
        let running = self.nodes().iter().any(|n| n.name == node && n.running);
        let is_self = node == self.me;
        let node = node.to_owned();
        Box::pin(async move {
            let queues = queues.ok_or_else(|| MembersError::Refused("this node is not in a cluster".into()))?;
            let id = id.ok_or_else(|| MembersError::Refused(format!("node {node} is not in the cluster")))?;
            if is_self {
                return Err(MembersError::Refused(format!(
                    "{node} is the node asked: stop it, then forget it through another node"
                )));
            }
            if running {
                return Err(MembersError::Refused(format!("node {node} is running: stop it first")));
            }
            queues.forget(id).await.map_err(MembersError::Unavailable)
        })
    }

    fn cluster_name(&self) -> String {
        self.cluster_name.clone()
    }

    fn node_name(&self) -> String {
        self.me.clone()
    }

    fn nodes(&self) -> Vec<NodeView> {
        let connected: BTreeSet<u64> = match &self.endpoint {
            Some(node) => node.peer_status().into_iter().filter(|(_, up)| *up).map(|(id, _)| id).collect(),
            None => BTreeSet::new(),
        };
        self.in_cluster()
            .iter()
            .map(|(name, id)| {
                let is_self = *name == self.me;
                NodeView { name: name.clone(), running: is_self || connected.contains(id), is_self }
            })
            .collect()
    }
}

/// The node's Raft side: its write-ahead log (shared by every group on the node) and the
/// metadata group's host.
pub struct Groups {
    wal: Wal,
    meta: Arc<MetaHost>,
    /// The quorum queues' groups on this node.
    queues: Arc<QueueHost>,
}

/// The metadata group's id on every node.
const METADATA_GROUP: u64 = 0;

/// Starts this node's member of the metadata group from its log on `wal` (and its snapshot in
/// `dir`) and registers it on the endpoint; whether it is new to the group (nothing in its log).
async fn start_metadata(
    node: &TcpNode,
    wal: &Wal,
    dir: &Path,
) -> Result<(Group<Metadata>, warren_raft::AppliedRx<warren_cluster::meta::MetaOutput>, bool), String> {
    let log = wal.log::<Metadata>(METADATA_GROUP).map_err(|e| format!("cannot read the metadata group's log: {e}"))?;
    let fresh = log.is_pristine();
    let (group, applied) = Group::start_durable(
        node.id(),
        &GroupConfig::default(),
        Metadata::default(),
        node.transport::<Metadata>(METADATA_GROUP),
        log,
        dir.join("metadata.snapshot"),
    )
    .await
    .map_err(|e| format!("cannot start the metadata group: {e:?}"))?;
    node.register(METADATA_GROUP, group.clone()).map_err(|e| format!("cannot register the metadata group: {e}"))?;
    Ok((group, applied, fresh))
}

/// Keeps the endpoint's peers the cluster's nodes as the metadata has them: a node that
/// joined is kept connected; a node forgotten (`forget_cluster_node`) is no longer dialed, and
/// its connections are refused from then on, so that, started again with what it held, it
/// reaches no node (RabbitMQ's forgotten node must be reset before it joins again).
fn follow_membership(
    meta: &Arc<MetaHost>,
    node: TcpNode,
    configured: BTreeMap<u64, String>,
    names: BTreeMap<u64, String>,
    addrs: Arc<std::sync::RwLock<BTreeMap<u64, String>>>,
) {
    let seen = std::sync::Mutex::new((BTreeSet::new(), BTreeMap::new()));
    let weak = Arc::downgrade(meta);
    meta.on_queues_changed(Arc::new(move || {
        let Some(meta) = weak.upgrade() else { return };
        let (forgotten, peers, joined) = meta.group().with_machine(|m: &Metadata| {
            let joined: BTreeMap<u64, String> = m.joined().iter().map(|(id, j)| (*id, j.name.clone())).collect();
            (m.forgotten().clone(), warren_cluster::queues::cluster_nodes(&configured, m), joined)
        });
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 == forgotten && seen.1 == peers {
            return;
        }
        for id in forgotten.difference(&seen.0) {
            let name = joined.get(id).or(names.get(id)).cloned().unwrap_or_else(|| format!("{id:016x}"));
            tracing::warn!(
                "node {name} was taken out of the cluster (forget_cluster_node): its connections are refused"
            );
        }
        for (id, name) in joined.iter().filter(|(id, _)| peers.contains_key(id) && !seen.1.contains_key(id)) {
            tracing::info!("node {name} (id {id:016x}) is in the cluster");
        }
        node.refuse(forgotten.clone());
        node.watch_peers(peers.clone());
        addrs.write().unwrap_or_else(|e| e.into_inner()).extend(peers.iter().map(|(id, a)| (*id, a.clone())));
        *seen = (forgotten, peers);
    }));
}

/// How often the node looks whether its write-ahead log stopped, and tries to recover it.
const WAL_CHECK_EVERY: Duration = Duration::from_secs(1);
const WAL_RECOVER_EVERY: Duration = Duration::from_secs(2);

/// Keeps the node's write-ahead log running: when a write or sync fails (a full or failing
/// disk), the WAL stops and so does every group on it at its next write. Then every member of
/// this node (the metadata group's and the quorum queues') is stopped, the WAL is recovered in
/// place once the disk takes writes again (`Wal::recover`: cut back to what was synced,
/// replayed), and the members start again from what it holds and catch up with their groups.
/// Meanwhile the other nodes go on, this node's clients get errors for what needs its
/// members, and nothing on the disk is deleted.
async fn keep_wal(wal: Wal, meta: Arc<MetaHost>, queues: Arc<QueueHost>, node: TcpNode, dir: std::path::PathBuf) {
    let mut tick = tokio::time::interval(WAL_CHECK_EVERY);
    loop {
        tick.tick().await;
        let Some(reason) = wal.failure() else { continue };
        tracing::error!(
            "the cluster's write-ahead log stopped: {reason}; this node's metadata member and quorum queue members stop until it takes writes again (the other nodes go on)"
        );
        queues.stop_for_storage().await;
        let _ = meta.group().shutdown().await;
        node.unregister(METADATA_GROUP);
        let mut tries = 0u64;
        loop {
            let recovering = wal.clone();
            match tokio::task::spawn_blocking(move || recovering.recover()).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) if tries.is_multiple_of(30) => {
                    tracing::warn!("the cluster's write-ahead log cannot start again yet: {e}; trying every 2 s")
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::error!("recovering the cluster's write-ahead log: {e}"),
            }
            tries += 1;
            tokio::time::sleep(WAL_RECOVER_EVERY).await;
        }
        loop {
            match start_metadata(&node, &wal, &dir).await {
                Ok((group, applied, _)) => {
                    meta.restart(group, applied);
                    break;
                }
                Err(e) => {
                    tracing::error!("after the write-ahead log recovered: {e}; trying again in 2 s");
                    node.unregister(METADATA_GROUP);
                    tokio::time::sleep(WAL_RECOVER_EVERY).await;
                }
            }
        }
        queues.storage_back();
        tracing::info!(
            "the cluster's write-ahead log takes writes again: this node's members start again from it and catch up with their groups"
        );
    }
}

impl Groups {
    /// Starts the node's write-ahead log under `<data>/cluster/wal` and its member of the
    /// metadata group, registered on the endpoint, hosted for the broker in `shared`. On the
    /// node's first start in the cluster every node founds the group with the same members
    /// (openraft allows that: identical initial memberships are one membership).
    pub async fn start(
        settings: &ClusterSettings,
        endpoint: &Endpoint,
        data_dir: &Path,
        shared: Arc<warren_server::Shared>,
        balanced_leaders: bool,
    ) -> Result<Groups, String> {
        let dir = data_dir.join("cluster");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let wal = Wal::open(&dir.join("wal"), WalConfig::default())
            .map_err(|e| format!("cannot open the cluster's write-ahead log in {}: {e}", dir.display()))?;
        let node = endpoint.node();
        let (group, applied, fresh) = start_metadata(node, &wal, &dir).await?;
        let service = MembershipService::serve(node, group.clone())?;
        let members: BTreeMap<u64, String> =
            settings.nodes.iter().map(|n| (n.id(), n.dial_addr(settings.port_range.min))).collect();
        if fresh {
            // Said in handshakes (from the first: see `start`) until this node's definitions
            // are the cluster's: a node reset after it was taken out of the cluster is let in
            // to join again.
            node.set_fresh(true);
            // At a first start, the cluster of a listed node that has one is joined (RabbitMQ's
            // classic_config peer discovery); with none, this node forms it with the others.
            let me_addr = members.get(&node.id()).cloned().unwrap_or_else(|| node.local_addr().to_string());
            match find_cluster(node, &members, &settings.me.node(), &me_addr).await {
                Found::InCluster { through, joined } => {
                    tracing::info!(
                        "metadata: node {} has a cluster, which this node {}: not forming another",
                        settings
                            .nodes
                            .iter()
                            .find(|n| n.id() == through)
                            .map_or_else(|| format!("{through:016x}"), |n| n.node()),
                        if joined { "joined" } else { "is in" }
                    );
                    // Joined (new, or reset after it was forgotten): its empty member of the
                    // metadata group votes only once the leader has sent it the log.
                    if joined {
                        group.set_votes_need_log(true);
                    }
                }
                Found::NoCluster => {
                    tracing::info!("metadata: founding the group with {} members", members.len());
                    if let Err(e) = group.initialize(members.clone()).await {
                        // Already founded (by a run that stopped before its log held anything).
                        tracing::info!("metadata: the group was founded already ({e:?})");
                    }
                }
            }
        }
        let transport = node.transport::<Metadata>(METADATA_GROUP);
        // Every node's address, joined ones too (kept by `follow_membership`).
        let addrs = Arc::new(std::sync::RwLock::new(members.clone()));
        let leader_addrs = addrs.clone();
        let forward: Forward = Arc::new(move |leader, command| {
            let transport = transport.clone();
            let addr = leader_addrs.read().unwrap_or_else(|e| e.into_inner()).get(&leader).cloned();
            Box::pin(async move {
                let addr = addr.ok_or_else(|| ProposeFailure::Failed(format!("node {leader:016x} is not a member")))?;
                let peer = Peer { id: leader, addr };
                match transport.propose(&peer, &command, COMMIT_TIMEOUT).await {
                    Ok(Forwarded::Committed { index, .. }) => Ok(index),
                    Ok(Forwarded::NotLeader(_)) => Err(ProposeFailure::NoLeader),
                    Err(e) => Err(ProposeFailure::Failed(format!("forwarding to the leader: {e}"))),
                }
            })
        });
        let nodes: BTreeMap<u64, String> =
            settings.nodes.iter().map(|n| (n.id(), n.dial_addr(settings.port_range.min))).collect();
        let nodes_for_peers = nodes.clone();
        let meta =
            MetaHost::start(group, applied, shared.clone(), forward, HostOptions { fresh, ..Default::default() });
        service.set_host(meta.clone());
        if fresh {
            let (meta, node) = (meta.clone(), node.clone());
            tokio::spawn(async move {
                meta.until_joined().await;
                node.set_fresh(false);
            });
        }
        let queues = QueueHost::start(
            node.clone(),
            wal.clone(),
            dir.join("queues"),
            shared,
            meta.clone(),
            nodes,
            settings.nodes.iter().map(|n| (n.id(), n.node())).collect(),
            balanced_leaders,
        );
        let names = settings.nodes.iter().map(|n| (n.id(), n.node())).collect();
        follow_membership(&meta, node.clone(), nodes_for_peers, names, addrs);
        tokio::spawn(keep_wal(wal.clone(), meta.clone(), queues.clone(), node.clone(), dir));
        Ok(Groups { wal, meta, queues })
    }

    /// Waits, at most `within`, until this node has caught up with the cluster's metadata and
    /// runs its member of every quorum queue's group, then at most `in_step` more until each
    /// member holds what its group committed before (a queue whose group has no majority
    /// running must not hold the node's clients back for long); false if the first wait ran
    /// out.
    pub async fn until_serving(&self, within: Duration, in_step: Duration) -> bool {
        if tokio::time::timeout(within, self.queues.until_members_run()).await.is_err() {
            return false;
        }
        if tokio::time::timeout(in_step, self.queues.until_members_in_step()).await.is_err() {
            tracing::warn!(
                "some quorum queues' members did not hear from their groups within {} ms \
                 (no majority of their members running?): taking AMQP clients",
                in_step.as_millis()
            );
        }
        true
    }

    /// Stops the groups and closes the write-ahead log (everything in it synced).
    pub async fn shutdown(self) {
        let _ = self.meta.group().shutdown().await;
        self.wal.close().await;
    }
}
