//! The metadata group on one node: proposes the changes to the definitions made here (by
//! clients, the management API, or the broker itself), applies those made elsewhere to this
//! node's broker, and undoes here what the cluster did not commit (docs/clustering.md, "The
//! metadata group").

use crate::meta::{MetaCommand, MetaOutput, Metadata};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use warren_core::definitions::DefOp;
use warren_core::{ConnId, Out};
use warren_raft::{Applied, AppliedRx, Group, ProposeError};
use warren_server::{Replicator, Shared};

/// How long a client's declaration of a quorum queue waits for the queue's group to be
/// started here ([`MetaHost::replicate`]).
const SERVED_WITHIN: Duration = Duration::from_secs(3);

/// How long a change may take to commit before its client is told it was not.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many outputs of this node's own proposals are kept for proposers still to collect them.
const KEPT_OUTPUTS: usize = 4096;

/// How often the host looks for changes the broker made on its own (a queue expired, an
/// auto-delete queue's last consumer gone, definitions loaded at boot) to propose them.
const UNOWNED_EVERY: Duration = Duration::from_millis(100);

/// How often the metadata group's leader looks for nodes to add to or take out of the group.
const MEMBERSHIP_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one change of the metadata group's membership may take.
const MEMBERSHIP_STEP: Duration = Duration::from_secs(10);

/// A proposal that did not reach the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeFailure {
    /// Nobody this node can reach leads the group (no majority here, or an election).
    NoLeader,
    /// The leader did not take it, or could not be reached.
    Failed(String),
}

/// Hands a command to the group's leader wherever it is: the log index it was written at once
/// committed.
pub type Forward =
    Arc<dyn Fn(u64, MetaCommand) -> Pin<Box<dyn Future<Output = Result<u64, ProposeFailure>> + Send>> + Send + Sync>;

/// How a host starts.
#[derive(Debug, Clone, Copy)]
pub struct HostOptions {
    /// The group's log was empty at start (see [`MetaHost::start`]).
    pub fresh: bool,
    /// How long a change may take to commit ([`COMMIT_TIMEOUT`] by default).
    pub commit_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions { fresh: false, commit_timeout: COMMIT_TIMEOUT }
    }
}

/// The metadata group's member on this node, with what its host needs.
pub struct MetaHost {
    me: u64,
    /// This node's member (another after [`MetaHost::restart`]).
    group: parking_lot::RwLock<Group<Metadata>>,
    shared: Arc<Shared>,
    forward: Forward,
    commit_timeout: Duration,
    /// Outputs of this node's own commands, by log index, until their proposer collects them.
    own: parking_lot::Mutex<BTreeMap<u64, MetaOutput>>,
    /// The last index the host handled (applied to the broker).
    handled: watch::Sender<u64>,
    /// Restarted, the group replays the log it had: those changes reached the broker before
    /// (or never did, if they were not committed), and applying them again one by one could
    /// replay a deletion the broker has gone past (a queue deleted, declared again and
    /// filled). Until this node's own barrier comes back through the log, nothing is applied;
    /// then the broker is made to match the group's state as a whole.
    catching_up: std::sync::atomic::AtomicBool,
    /// Turns true when catching up ends (at once on a fresh node).
    caught_up: watch::Sender<bool>,
    /// This run's barrier (a new one at each restart of the member).
    nonce: std::sync::atomic::AtomicU64,
    /// Told when the queues may have changed ([`MetaHost::on_queues_changed`]).
    listeners: parking_lot::Mutex<Vec<Arc<dyn Fn() + Send + Sync>>>,
    /// False on a node's first start in the cluster until what it held before is committed
    /// (see `join`): changes made here meanwhile wait, so that none is proposed before the
    /// vhost, user or exchange it needs.
    joined: watch::Sender<bool>,
    /// The runtime the host runs on: a change handed over is committed (or undone) there to
    /// the end, even if whoever waits for it goes away (an HTTP client hanging up).
    runtime: tokio::runtime::Handle,
    /// The group's applied stream ended (it stopped): the host's loops idle until a restart.
    stopped: std::sync::atomic::AtomicBool,
    /// Counts restarts: an applied stream of an earlier member that ends says nothing of the
    /// current one.
    generation: std::sync::atomic::AtomicU64,
}

impl MetaHost {
    /// Hosts `group` (this node's member, `applied` its stream) for the broker in `shared`, and
    /// makes it the broker's replicator. `fresh` says the group's log was empty at start (a
    /// new cluster, or a node new to it): what the broker held before is then proposed to the
    /// cluster, so that no durable exchange, queue or binding is dropped by joining.
    pub fn start(
        group: Group<Metadata>,
        applied: AppliedRx<MetaOutput>,
        shared: Arc<Shared>,
        forward: Forward,
        options: HostOptions,
    ) -> Arc<MetaHost> {
        let fresh = options.fresh;
        let host = Arc::new(MetaHost {
            me: group.id(),
            group: parking_lot::RwLock::new(group),
            shared: shared.clone(),
            forward,
            commit_timeout: options.commit_timeout,
            own: parking_lot::Mutex::new(BTreeMap::new()),
            handled: watch::Sender::new(0),
            catching_up: std::sync::atomic::AtomicBool::new(!fresh),
            caught_up: watch::Sender::new(fresh),
            listeners: parking_lot::Mutex::new(Vec::new()),
            joined: watch::Sender::new(!fresh),
            runtime: tokio::runtime::Handle::current(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(0),
            nonce: std::sync::atomic::AtomicU64::new(new_nonce()),
        });
        tokio::spawn(host.clone().apply_loop(applied, 0));
        shared.set_replicator(Arc::new(Replicate(host.clone())));
        if fresh {
            tokio::spawn(host.clone().join());
        } else {
            tokio::spawn(host.clone().catch_up());
        }
        tokio::spawn(host.clone().unowned_loop());
        tokio::spawn(host.clone().keep_membership());
        host
    }

    /// Takes node `node` (stopped) out of the cluster, as an operator asked through this
    /// node (RabbitMQ's `forget_cluster_node`): done once this node has applied it.
    pub async fn forget(&self, node: u64) -> Result<(), String> {
        self.commit_for_operator(MetaCommand::Forget { origin: self.me, node }).await.map(|_| ())
    }

    /// Node `node`, named `name`, reached at `addr`, joins the cluster (see `membership`):
    /// done once this node has applied it; the group's leader then adds it to the group.
    pub async fn add_node(&self, node: u64, name: &str, addr: &str) -> Result<(), String> {
        let command = MetaCommand::AddNode { origin: self.me, node, name: name.to_owned(), addr: addr.to_owned() };
        self.commit_for_operator(command).await.map(|_| ())
    }

    /// On the group's leader: makes the group's voters follow the cluster's nodes. A node that
    /// joined comes in as a learner and becomes a voter once it holds the log up to its
    /// joining; a forgotten node is taken out (a voter through a joint configuration, which
    /// the nodes left commit).
    async fn keep_membership(self: Arc<Self>) {
        let mut tick = tokio::time::interval(MEMBERSHIP_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_stopped() {
                continue;
            }
            let group = self.group();
            if !group.is_leader() {
                continue;
            }
            let (forgotten, joined) = group.with_machine(|m: &Metadata| (m.forgotten().clone(), m.joined().clone()));
            if forgotten.is_empty() && joined.is_empty() {
                continue;
            }
            let status = group.status();
            let coming: Vec<(u64, String)> = joined
                .iter()
                .filter(|(id, _)| !forgotten.contains(id) && !status.voters.contains(id))
                .map(|(id, j)| (*id, j.addr.clone()))
                .collect();
            if let Some((node, addr)) = coming.into_iter().next() {
                match self.bring_in(&group, node, addr).await {
                    Ok(()) => tracing::info!("metadata: node {node:016x} joined the group as a voter"),
                    Err(e) => tracing::warn!("metadata: adding node {node:016x} to the group: {e} (tried again)"),
                }
                continue;
            }
            let voters: std::collections::BTreeSet<u64> = status.voters.difference(&forgotten).copied().collect();
            let learners: std::collections::BTreeSet<u64> = status.learners.intersection(&forgotten).copied().collect();
            let change = if voters.len() < status.voters.len() && !voters.is_empty() {
                tokio::time::timeout(MEMBERSHIP_STEP, group.change_membership(voters.clone())).await
            } else if !learners.is_empty() {
                tokio::time::timeout(MEMBERSHIP_STEP, group.remove_learners(learners.clone())).await
            } else {
                continue;
            };
            match change {
                Ok(Ok(_)) => {
                    tracing::info!("metadata: the group's members are now {voters:x?} (forgotten: {forgotten:x?})")
                }
                Ok(Err(e)) => tracing::warn!("metadata: taking forgotten nodes out of the group: {e:?} (tried again)"),
                Err(_) => tracing::warn!("metadata: taking forgotten nodes out of the group timed out (tried again)"),
            }
        }
    }

    /// Calls `f` on the host's task whenever the group's queues may have changed (a queue
    /// declared or deleted, a snapshot, the end of catching up), after the broker was told:
    /// how quorum queues' groups follow the metadata. `f` reads the state through
    /// [`MetaHost::group`] (`with_machine`) and must not block.
    pub fn on_queues_changed(&self, f: Arc<dyn Fn() + Send + Sync>) {
        self.listeners.lock().push(f.clone());
        f();
    }

    fn queues_changed(&self) {
        let listeners = self.listeners.lock().clone();
        for f in listeners {
            f();
        }
    }

    /// Returns once what this node held before its first start in the cluster is committed
    /// (at once on a node that was in the cluster before).
    pub async fn until_joined(&self) {
        let mut joined = self.joined.subscribe();
        let _ = joined.wait_for(|j| *j).await;
    }

    /// Whether the host is still replaying the log it had at start (see `catching_up`).
    pub fn is_catching_up(&self) -> bool {
        self.catching_up.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once the host has caught up with the cluster (see `catching_up`): never while
    /// no majority of the nodes answers.
    pub async fn until_caught_up(&self) {
        let mut caught_up = self.caught_up.subscribe();
        let _ = caught_up.wait_for(|c| *c).await;
    }

    /// Starts the host again on `group`, this node's member started again from its log (after
    /// the node's write-ahead log stopped and recovered): the member replays what it had, so
    /// the host catches up as at a restart of the node (nothing applied until its new barrier
    /// comes back, then the broker made to match the group's state).
    pub fn restart(self: &Arc<Self>, group: Group<Metadata>, applied: AppliedRx<MetaOutput>) {
        use std::sync::atomic::Ordering;
        *self.group.write() = group;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.nonce.store(new_nonce(), Ordering::Release);
        self.catching_up.store(true, Ordering::Release);
        self.stopped.store(false, Ordering::Release);
        tokio::spawn(self.clone().apply_loop(applied, generation));
        tokio::spawn(self.clone().catch_up());
    }

    /// Whether this node's member stopped (its applied stream ended).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Proposes this run's barrier until it is in the log.
    async fn catch_up(self: Arc<Self>) {
        let nonce = self.nonce.load(std::sync::atomic::Ordering::Acquire);
        let barrier = MetaCommand::Barrier { origin: self.me, nonce };
        loop {
            match self.propose_index(barrier.clone(), self.commit_timeout).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::info!("metadata: waiting for a majority to catch up with ({e:?})");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// This node's member of the group.
    pub fn group(&self) -> Group<Metadata> {
        self.group.read().clone()
    }

    /// Proposes `command`, following the leader, until it is in the log or `timeout` passed;
    /// returns its index.
    async fn propose_index(&self, command: MetaCommand, timeout: Duration) -> Result<u64, ProposeFailure> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = ProposeFailure::NoLeader;
        loop {
            let attempt = async {
                match self.group().propose(command.clone()).await {
                    Ok((index, _)) => Ok(index),
                    Err(ProposeError::NotLeader { leader: Some(leader) }) if leader != self.me => {
                        (self.forward)(leader, command.clone()).await
                    }
                    Err(ProposeError::NotLeader { .. }) => Err(ProposeFailure::NoLeader),
                    Err(ProposeError::Stopped(_)) => Err(ProposeFailure::Failed("the metadata group stopped".into())),
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(index)) => return Ok(index),
                Ok(Err(e)) => last = e,
                Err(_) => return Err(last),
            }
            // Wait for a leader to be known (or the deadline) before trying again.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let pause = left.min(Duration::from_millis(50));
            if pause.is_zero() {
                return Err(last);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Proposes `ops` made on this node and returns what the cluster did with them, once this
    /// node's broker is up to date with them.
    pub async fn commit(&self, ops: Vec<DefOp>, timeout: Duration) -> Result<MetaOutput, ProposeFailure> {
        self.commit_command(MetaCommand::Topology { origin: self.me, ops }, timeout).await
    }

    /// Makes `members` the members of quorum queue `name` in `vhost` (its group `group`), as
    /// an operator asked through this node; done once this node has applied the change (the
    /// group's leader then changes the group to match).
    pub async fn set_members(&self, vhost: &str, name: &str, group: u64, members: Vec<u64>) -> Result<(), String> {
        let command =
            MetaCommand::Members { origin: self.me, vhost: vhost.to_owned(), name: name.to_owned(), group, members };
        let output = self.commit_for_operator(command).await?;
        output.members.unwrap_or_else(|| Err("no outcome for the member change".into()))
    }

    /// Commits `command` (an operator's, or a node's joining) within the commit timeout; why
    /// not, in words for the operator.
    async fn commit_for_operator(&self, command: MetaCommand) -> Result<MetaOutput, String> {
        self.commit_command(command, self.commit_timeout).await.map_err(|e| match e {
            ProposeFailure::NoLeader => format!(
                "no leader of the metadata group within {} ms (is a majority of nodes reachable?)",
                self.commit_timeout.as_millis()
            ),
            ProposeFailure::Failed(why) => why,
        })
    }

    async fn commit_command(&self, command: MetaCommand, timeout: Duration) -> Result<MetaOutput, ProposeFailure> {
        let index = self.propose_index(command, timeout).await?;
        let mut handled = self.handled.subscribe();
        // The index is committed: this node applies it as soon as it hears so.
        let wait = handled.wait_for(|h| *h >= index);
        if tokio::time::timeout(timeout, wait).await.is_err() {
            return Err(ProposeFailure::Failed(format!("entry {index} committed but not applied here in time")));
        }
        self.own.lock().remove(&index).ok_or_else(|| ProposeFailure::Failed(format!("no output for entry {index}")))
    }

    async fn apply_loop(self: Arc<Self>, mut applied: AppliedRx<MetaOutput>, generation: u64) {
        while let Some(event) = applied.recv().await {
            match event {
                Applied::Command { index, output } => {
                    if self.is_catching_up() {
                        let nonce = self.nonce.load(std::sync::atomic::Ordering::Acquire);
                        if output.origin == self.me && output.barrier == Some(nonce) {
                            self.reconcile(None);
                            self.catching_up.store(false, std::sync::atomic::Ordering::Release);
                            self.caught_up.send_replace(true);
                            tracing::info!("metadata: caught up with the cluster at entry {index}");
                            self.queues_changed();
                        }
                    } else if !output.applied.is_empty() {
                        // Every node's changes, this one's too: in log order they end where
                        // the group's state is, whatever this broker did meanwhile.
                        self.apply_here(&output.applied);
                        let queues = |op: &DefOp| {
                            matches!(op, DefOp::PutQueue(_) | DefOp::DelQueue { .. } | DefOp::DelVhost { .. })
                        };
                        if output.applied.iter().any(queues) || output.forgot.is_some() || output.added.is_some() {
                            self.queues_changed();
                        }
                    } else if output.members == Some(Ok(())) || output.forgot.is_some() || output.added.is_some() {
                        self.queues_changed();
                    }
                    if output.origin == self.me {
                        let mut own = self.own.lock();
                        own.insert(index, output);
                        while own.len() > KEPT_OUTPUTS {
                            own.pop_first();
                        }
                    }
                    self.handled.send_replace(index);
                }
                Applied::Restored { index } => {
                    // The commands up to `index` were not seen one by one (a snapshot, or the
                    // log replayed at start): make the broker match the group's state as a
                    // whole; while catching up, the barrier's coming back does that.
                    if !self.is_catching_up() {
                        self.reconcile(None);
                        self.queues_changed();
                    }
                    self.handled.send_replace(index);
                }
            }
        }
        // The group stopped (unless this was an earlier member's stream).
        if self.generation.load(std::sync::atomic::Ordering::Acquire) == generation {
            self.stopped.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Applies changes committed by other nodes to this node's broker.
    fn apply_here(&self, ops: &[DefOp]) {
        let now = self.shared.now_ms();
        let mut out: Vec<(ConnId, Out)> = Vec::new();
        let mut core = self.shared.broker();
        for op in ops {
            if let Err(e) = core.apply_replicated(op, now, &mut out) {
                tracing::error!("metadata: {e}");
            }
        }
        // A classic queue declared through another node lives there: reached through it.
        let declared = declared_queues(ops);
        if !declared.is_empty() {
            self.group()
                .with_machine(|m: &Metadata| crate::forward::mark_homes(&mut core, m, self.me, Some(&declared)));
        }
        core.deliver(&mut out);
    }

    /// Makes the broker's definitions match the group's state, for what `ops` touch
    /// ([`Metadata::changes_to`]), or everywhere when `ops` is None.
    fn reconcile(&self, ops: Option<&[DefOp]>) {
        let target = self.group().with_machine(Metadata::clone);
        let mut core = self.shared.broker();
        let here = Metadata::from_definitions(&core.replicated_definitions());
        let fixes = here.changes_to(&target, ops);
        if fixes.is_empty() {
            if ops.is_none() {
                crate::forward::mark_homes(&mut core, &target, self.me, None);
            }
            return;
        }
        let now = self.shared.now_ms();
        let mut out: Vec<(ConnId, Out)> = Vec::new();
        for op in &fixes {
            if let Err(e) = core.apply_replicated(op, now, &mut out) {
                tracing::error!("metadata: while undoing an uncommitted change: {e}");
            }
        }
        // Classic queues that live on other nodes are reached through them.
        let declared = declared_queues(&fixes);
        match ops {
            None => crate::forward::mark_homes(&mut core, &target, self.me, None),
            Some(_) => crate::forward::mark_homes(&mut core, &target, self.me, Some(&declared)),
        }
        core.deliver(&mut out);
    }

    /// Proposes what the broker held before this node's first start in the cluster: its
    /// vhosts, users, permissions, policies, limits and durable topology (a
    /// [`MetaCommand::Join`]: where the cluster has something else already, the cluster's is
    /// kept and made this node's).
    async fn join(self: Arc<Self>) {
        let ops = {
            let mut core = self.shared.broker();
            // Changes the broker made before (definitions loaded at boot) are in its state.
            let _ = core.take_replication(None);
            Metadata::join_ops(&core.replicated_definitions())
        };
        let command = MetaCommand::Join { origin: self.me, ops };
        loop {
            match self.commit_command(command.clone(), self.commit_timeout).await {
                Ok(output) => {
                    if !output.refused.is_empty() {
                        let refused: Vec<DefOp> = output.refused.iter().map(|(op, _)| op.clone()).collect();
                        for (op, why) in &output.refused {
                            let what = warren_core::broker::describe_op(op);
                            // A user's password differs on every fresh node (it is salted).
                            if op.is_topology() {
                                tracing::warn!("metadata: this node's {what} gives way to the cluster's: {why}");
                            } else {
                                tracing::info!("metadata: this node's {what} gives way to the cluster's: {why}");
                            }
                        }
                        self.reconcile(Some(&refused));
                    }
                    tracing::info!("metadata: this node's definitions are the cluster's");
                    self.joined.send_replace(true);
                    return;
                }
                Err(e) => {
                    tracing::info!("metadata: waiting for the cluster to take this node's topology ({e:?})");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Adds `node` to `group` (led here) as a learner, waits until it holds the log up to
    /// then, and makes it a voter.
    async fn bring_in(&self, group: &Group<Metadata>, node: u64, addr: String) -> Result<(), String> {
        let status = group.status();
        let mut since = status.last_log_index.unwrap_or(0);
        if !status.learners.contains(&node) {
            since = tokio::time::timeout(MEMBERSHIP_STEP, group.add_learner(node, addr))
                .await
                .map_err(|_| "adding it as a learner timed out".to_owned())?
                .map_err(|e| format!("adding it as a learner: {e:?}"))?;
        }
        group
            .wait_until(MEMBERSHIP_STEP, "the new member caught up", move |s| {
                s.matched.get(&node).copied().flatten().is_some_and(|m| m >= since)
            })
            .await
            .map_err(|e| format!("it did not catch up: {e:?}"))?;
        let mut voters = group.status().voters;
        voters.insert(node);
        tokio::time::timeout(MEMBERSHIP_STEP, group.change_membership(voters))
            .await
            .map_err(|_| "making it a voter timed out".to_owned())?
            .map_err(|e| format!("making it a voter: {e:?}"))?;
        Ok(())
    }
}

/// The host as the server's replicator.
struct Replicate(Arc<MetaHost>);

impl Replicator for Replicate {
    fn replicate(&self, ops: Vec<DefOp>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> {
        let host = self.0.clone();
        // On the host's runtime, to the end: a change given up half way would be neither
        // committed nor undone.
        let task = self.0.runtime.spawn(async move { host.replicate(ops).await });
        Box::pin(async move { task.await.unwrap_or_else(|e| Err(format!("the metadata host failed: {e}"))) })
    }
}

impl MetaHost {
    /// Commits `ops`, made here by a client or the management API; undoes here what was not
    /// committed, and says why.
    /// Waits (a bounded while) until the quorum queues `ops` declare are served by their
    /// groups here, so that a client told its declaration is done can publish to it at once
    /// (until then this node refuses publishes to it). A node that is not a member of the
    /// group never serves it; it waits the bound out.
    async fn until_quorum_queues_served(&self, ops: &[DefOp]) {
        let deadline = tokio::time::Instant::now() + SERVED_WITHIN;
        for op in ops {
            let DefOp::PutQueue(q) = op else { continue };
            if !crate::meta::is_quorum(q) {
                continue;
            }
            while self.shared.broker().replica_group(&q.vhost, &q.name).is_none() {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    pub async fn replicate(&self, ops: Vec<DefOp>) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        // On a node's first start, nothing goes before what it held already (which waits
        // for a majority as any change does).
        let mut joined = self.joined.subscribe();
        let joined = match tokio::time::timeout(self.commit_timeout, joined.wait_for(|j| *j)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ProposeFailure::Failed("the metadata host stopped".into())),
            Err(_) => Err(ProposeFailure::NoLeader),
        };
        let committed = match joined {
            Ok(()) => self.commit(ops.clone(), self.commit_timeout.saturating_sub(started.elapsed())).await,
            Err(e) => Err(e),
        };
        let (undo, why): (Vec<DefOp>, String) = match committed {
            Ok(output) if output.refused.is_empty() => {
                self.until_quorum_queues_served(&ops).await;
                return Ok(());
            }
            Ok(output) => {
                let why = output.refused.iter().map(|(_, why)| why.as_str()).collect::<Vec<_>>().join("; ");
                (output.refused.into_iter().map(|(op, _)| op).collect(), why)
            }
            Err(ProposeFailure::NoLeader) => (
                ops,
                format!(
                    "no leader of the metadata group within {} ms (is a majority of nodes reachable?)",
                    self.commit_timeout.as_millis()
                ),
            ),
            Err(ProposeFailure::Failed(why)) => (ops, why),
        };
        self.reconcile(Some(&undo));
        Err(why)
    }

    /// Proposes the changes the broker made on its own (a queue expired, an auto-delete
    /// queue's last consumer gone, definitions loaded at boot), once this node is caught up
    /// with the cluster (before, its broker is made to match the group's state, and then they
    /// are proposed again).
    async fn unowned_loop(self: Arc<Self>) {
        let mut joined = self.joined.subscribe();
        if joined.wait_for(|j| *j).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(UNOWNED_EVERY).await;
            if self.is_stopped() || self.is_catching_up() {
                continue;
            }
            let ops = {
                let mut core = self.shared.broker();
                if !core.has_unowned_replication() {
                    continue;
                }
                core.take_replication(None)
            };
            let Some(ops) = ops else { continue };
            let what: Vec<String> = ops.iter().map(warren_core::broker::describe_op).collect();
            if let Err(why) = self.replicate(ops).await {
                tracing::warn!("metadata: the cluster did not commit this node's {}: {why}", what.join(", "));
            }
        }
    }
}

/// A barrier's nonce, new for each run of the member.
fn new_nonce() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The queues `ops` declare.
fn declared_queues(ops: &[DefOp]) -> Vec<crate::meta::Key> {
    ops.iter()
        .filter_map(|op| match op {
            DefOp::PutQueue(q) => Some((q.vhost.clone(), q.name.clone())),
            _ => None,
        })
        .collect()
}
