//! [`LocalNet`]: an in-process network for tests, with faults on demand.
//!
//! Every node's group is registered in one shared table; a node's [`LocalTransport`] delivers an
//! RPC by calling the target group directly, in the sender's task. Faults are checked on the way
//! there and on the way back: an RPC whose request path is cut never reaches the target, and one
//! whose reply path is cut reaches it (and takes effect) but the sender sees it fail, as with a
//! real one-way partition. Every failure is [`RpcError::Unreachable`].
//!
//! Message faults ([`LocalNet::set_message_faults`]) lose requests and replies at random and hold
//! each back a random delay, so that RPCs in flight at once may arrive in another order; the
//! draws come from a seeded generator, in the order RPCs pass (which openraft's timing decides).
//!
//! Invariant: the table's lock is held only to read faults or clone a group handle, never across
//! a delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::network::{Peer, RpcError, Transport};
use crate::types::{AppendRequest, AppendResponse, Snapshot, SnapshotResponse, Vote, VoteRequest, VoteResponse};
use crate::{AppliedRx, Group, GroupConfig, Machine, StartError, Stopped};

/// An in-process network of groups replicating `M`; clones share the same network.
pub struct LocalNet<M: Machine> {
    inner: Arc<Mutex<NetState<M>>>,
}

struct NetState<M: Machine> {
    nodes: BTreeMap<u64, Group<M>>,
    /// Each registered node's registration: a reply from a node that has gone off the network
    /// since it took the request (crashed, or crashed and started again) is lost, as a dead
    /// process's would be.
    registrations: BTreeMap<u64, u64>,
    next_registration: u64,
    isolated: BTreeSet<u64>,
    /// `(from, to)`: messages from `from` to `to` are lost.
    cut: BTreeSet<(u64, u64)>,
    faults: Option<MessageFaults>,
}

/// Random loss and delay of every message, from a seeded generator.
struct MessageFaults {
    rng: fastrand::Rng,
    /// Chance in a million that a message is lost.
    loss_ppm: u32,
    /// The longest a message is held back, in microseconds.
    max_delay_us: u64,
}

impl<M: Machine> NetState<M> {
    fn passes(&self, from: u64, to: u64) -> bool {
        !self.isolated.contains(&from) && !self.isolated.contains(&to) && !self.cut.contains(&(from, to))
    }

    /// One message's fate under the message faults: lost (`None`) or delivered after a delay.
    fn draw(&mut self) -> Option<Duration> {
        let Some(f) = self.faults.as_mut() else { return Some(Duration::ZERO) };
        if f.rng.u32(0..1_000_000) < f.loss_ppm {
            return None;
        }
        Some(Duration::from_micros(f.rng.u64(0..=f.max_delay_us)))
    }
}

impl<M: Machine> Clone for LocalNet<M> {
    fn clone(&self) -> Self {
        LocalNet { inner: Arc::clone(&self.inner) }
    }
}

impl<M: Machine> Default for LocalNet<M> {
    fn default() -> Self {
        LocalNet::new()
    }
}

impl<M: Machine> LocalNet<M> {
    /// An empty network without faults.
    pub fn new() -> Self {
        LocalNet {
            inner: Arc::new(Mutex::new(NetState {
                nodes: BTreeMap::new(),
                registrations: BTreeMap::new(),
                next_registration: 0,
                isolated: BTreeSet::new(),
                cut: BTreeSet::new(),
                faults: None,
            })),
        }
    }

    /// The transport node `from` sends through.
    pub fn transport(&self, from: u64) -> LocalTransport<M> {
        LocalTransport { from, net: self.clone() }
    }

    /// Makes `group` reachable as its node id, replacing any group registered under that id.
    pub fn register(&self, group: Group<M>) {
        let mut state = self.inner.lock();
        state.next_registration += 1;
        let registration = state.next_registration;
        state.registrations.insert(group.id(), registration);
        state.nodes.insert(group.id(), group);
    }

    /// Removes node `id` from the network; RPCs to it then fail. Returns its group.
    pub fn unregister(&self, id: u64) -> Option<Group<M>> {
        let mut state = self.inner.lock();
        state.registrations.remove(&id);
        state.nodes.remove(&id)
    }

    /// Starts node `id` on this network and registers it.
    pub async fn start(
        &self,
        id: u64,
        config: &GroupConfig,
        machine: M,
    ) -> Result<(Group<M>, AppliedRx<M::Output>), StartError> {
        let (group, applied) = Group::start(id, config, machine, self.transport(id)).await?;
        self.register(group.clone());
        Ok((group, applied))
    }

    /// The group registered as node `id`.
    pub fn group(&self, id: u64) -> Option<Group<M>> {
        self.inner.lock().nodes.get(&id).cloned()
    }

    /// Cuts node `id` off: every RPC it sends or is sent fails, both ways, until [`heal`](Self::heal).
    pub fn isolate(&self, id: u64) {
        self.inner.lock().isolated.insert(id);
    }

    /// Loses every message from node `from` to node `to` (requests and replies alike), until
    /// [`heal`](Self::heal); the other direction is untouched.
    pub fn cut(&self, from: u64, to: u64) {
        self.inner.lock().cut.insert((from, to));
    }

    /// Whether messages from `from` to `to` are lost now (either is isolated, or that
    /// direction is cut): for a host's own traffic over this network, such as forwarding a
    /// proposal to the leader.
    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        !self.inner.lock().passes(from, to)
    }

    /// From now on every request and every reply is lost with probability `loss` (0 to 1)
    /// and otherwise held back a delay drawn up to `max_delay`, from a generator seeded with
    /// `seed`, until [`clear_message_faults`](Self::clear_message_faults).
    pub fn set_message_faults(&self, seed: u64, loss: f64, max_delay: Duration) {
        let loss_ppm = (loss.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        let max_delay_us = u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX);
        self.inner.lock().faults = Some(MessageFaults { rng: fastrand::Rng::with_seed(seed), loss_ppm, max_delay_us });
    }

    /// Ends the message faults ([`heal`](Self::heal) leaves them).
    pub fn clear_message_faults(&self) {
        self.inner.lock().faults = None;
    }

    /// Removes every partition (isolations and cuts).
    pub fn heal(&self) {
        let mut state = self.inner.lock();
        state.isolated.clear();
        state.cut.clear();
    }

    /// The target's group if the path there is open and the request is not lost, after the
    /// request's delay.
    /// Also the target's registration, for [`LocalNet::reply`].
    async fn route(&self, from: u64, to: u64) -> Result<(Group<M>, u64), RpcError> {
        let (group, registration, delay) = {
            let mut state = self.inner.lock();
            if !state.passes(from, to) {
                return Err(unreachable(format!("path {from} -> {to} is cut")));
            }
            let group =
                state.nodes.get(&to).cloned().ok_or_else(|| unreachable(format!("node {to} is not on the network")))?;
            let registration = state.registrations.get(&to).copied().unwrap_or(0);
            let delay = state.draw().ok_or_else(|| unreachable(format!("a request {from} -> {to} was lost")))?;
            (group, registration, delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok((group, registration))
    }

    /// Checks the reply path of an RPC the target has already handled, and delays or loses the
    /// reply as the message faults say.
    async fn reply<R>(&self, from: u64, to: u64, registration: u64, reply: Result<R, Stopped>) -> Result<R, RpcError> {
        let delay = {
            let mut state = self.inner.lock();
            if state.registrations.get(&to) != Some(&registration) {
                return Err(unreachable(format!("node {to} went off the network before replying")));
            }
            if !state.passes(to, from) {
                return Err(unreachable(format!("reply path {to} -> {from} is cut")));
            }
            state.draw().ok_or_else(|| unreachable(format!("a reply {to} -> {from} was lost")))?
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        reply.map_err(|stopped| unreachable(format!("node {to}: {stopped}")))
    }
}

fn unreachable(reason: String) -> RpcError {
    RpcError::Unreachable { reason }
}

/// One node's way onto a [`LocalNet`].
pub struct LocalTransport<M: Machine> {
    from: u64,
    net: LocalNet<M>,
}

// Delivery is a direct call in the sender's task, so the timeout needs no handling here: openraft
// drops the call when its own bound passes.
impl<M: Machine> Transport<M> for LocalTransport<M> {
    async fn append(
        &self,
        target: &Peer,
        request: AppendRequest<M>,
        _timeout: Duration,
    ) -> Result<AppendResponse, RpcError> {
        let (group, registration) = self.net.route(self.from, target.id).await?;
        let reply = group.handle_append(request).await;
        self.net.reply(self.from, target.id, registration, reply).await
    }

    async fn vote(&self, target: &Peer, request: VoteRequest, _timeout: Duration) -> Result<VoteResponse, RpcError> {
        let (group, registration) = self.net.route(self.from, target.id).await?;
        let reply = group.handle_vote(request).await;
        self.net.reply(self.from, target.id, registration, reply).await
    }

    async fn snapshot(
        &self,
        target: &Peer,
        vote: Vote,
        snapshot: Snapshot<M>,
        timeout: Duration,
    ) -> Result<SnapshotResponse, RpcError> {
        let (group, registration) = self.net.route(self.from, target.id).await?;
        let reply = tokio::time::timeout(timeout, group.handle_snapshot(vote, snapshot))
            .await
            .map_err(|_| RpcError::Timeout { after: timeout })?;
        self.net.reply(self.from, target.id, registration, reply).await
    }
}
