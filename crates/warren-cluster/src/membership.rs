//! A node new to a running cluster joins it (docs/clustering.md, "A node joins").
//!
//! RabbitMQ's `classic_config` peer discovery, at a node's first start, joins the cluster of
//! the first listed node that runs one, and forms a new cluster only when none does. Warren does
//! the same: a node whose metadata log is empty asks each other listed node, over the
//! inter-node connection (the [`MEMBERSHIP_SERVICE`]), whether it has formed a cluster. A node
//! that has answers that the asker is a member already (one of the nodes the cluster formed
//! with), or records the asker as joining (`MetaCommand::AddNode`, committed by the metadata
//! group) and answers so; the group's leader then adds it to the group. Only when no listed
//! node answers that it has a cluster does the node form one with the listed nodes, as before.

use crate::host::MetaHost;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use warren_raft::{Group, Peer, RpcError, Service, ServiceAnswer, TcpNode};

/// The id the service is reached under (next to the forwarding of classic queues).
pub const MEMBERSHIP_SERVICE: u64 = u64::MAX - 1;

/// A call's kind: "node (id, name, address) asks to be in your cluster".
const ASK_JOIN: u8 = 1;

/// Answers.
const NOT_FORMED: u8 = 0;
const MEMBER: u8 = 1;
const JOINED: u8 = 2;

/// How long one node's answer may take (a join waits for the metadata group's commit).
const ASK_TIMEOUT: Duration = Duration::from_secs(8);

/// How long to wait before asking again while a node has a cluster that cannot take the
/// asker now (no leader).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// What asking the other nodes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No node answered that it has a cluster: form one with the listed nodes.
    NoCluster,
    /// This node is in the running cluster (named node answered): do not form another.
    /// `joined`: it was not a member and the cluster took it now (a new node, or one
    /// forgotten and reset), rather than one of the nodes the cluster formed with.
    InCluster { through: u64, joined: bool },
}

/// Answers other nodes' questions about this node's cluster.
pub struct MembershipService {
    /// This node's member of the metadata group as started (before the host takes it).
    group: Group<crate::meta::Metadata>,
    /// The host, once started: it commits joinings.
    meta: OnceLock<Arc<MetaHost>>,
}

impl MembershipService {
    /// Serves on `node` for the metadata group member `group`; [`set_host`](Self::set_host)
    /// once the host runs.
    pub fn serve(node: &TcpNode, group: Group<crate::meta::Metadata>) -> Result<Arc<Self>, String> {
        let service = Arc::new(MembershipService { group, meta: OnceLock::new() });
        node.serve(MEMBERSHIP_SERVICE, service.clone()).map_err(|e| format!("cannot answer joining nodes: {e}"))?;
        Ok(service)
    }

    pub fn set_host(&self, meta: Arc<MetaHost>) {
        let _ = self.meta.set(meta);
    }
}

impl Service for MembershipService {
    fn call(&self, body: &[u8]) -> ServiceAnswer {
        let asked = parse_ask(body);
        let group = self.meta.get().map_or_else(|| self.group.clone(), |m| m.group());
        let meta = self.meta.get().cloned();
        Box::pin(async move {
            let (node, name, addr) = asked?;
            let status = group.status();
            if status.voters.is_empty() && status.learners.is_empty() {
                return Ok(vec![NOT_FORMED]);
            }
            // A forgotten node (reset) joins again even if the group still counts it (it could
            // not take it out without a leader): it must not vote as the member it was.
            let forgotten = group.with_machine(|m: &crate::meta::Metadata| m.forgotten().contains(&node));
            if !forgotten && (status.voters.contains(&node) || status.learners.contains(&node)) {
                return Ok(vec![MEMBER]);
            }
            let meta = meta.ok_or("this node is starting")?;
            meta.add_node(node, &name, &addr).await?;
            tracing::info!("node {name} ({addr}) joins the cluster");
            Ok(vec![JOINED])
        })
    }
}

fn parse_ask(body: &[u8]) -> Result<(u64, String, String), String> {
    let bad = || "a malformed question about the cluster".to_owned();
    let (&kind, mut at) = body.split_first().ok_or_else(bad)?;
    if kind != ASK_JOIN {
        return Err(format!("an unknown question {kind} about the cluster"));
    }
    let id = u64::from_be_bytes(at.get(..8).ok_or_else(bad)?.try_into().expect("8 bytes"));
    at = &at[8..];
    let mut text = || -> Result<String, String> {
        let n = u16::from_be_bytes(at.get(..2).ok_or_else(bad)?.try_into().expect("2 bytes")) as usize;
        let s = at.get(2..2 + n).ok_or_else(bad)?;
        let s = String::from_utf8(s.to_vec()).map_err(|_| bad())?;
        at = &at[2 + n..];
        Ok(s)
    };
    let (name, addr) = (text()?, text()?);
    if !at.is_empty() {
        return Err(bad());
    }
    Ok((id, name, addr))
}

fn ask(id: u64, name: &str, addr: &str) -> Vec<u8> {
    let mut out = vec![ASK_JOIN];
    out.extend_from_slice(&id.to_be_bytes());
    for s in [name, addr] {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// Asks every node of `peers` (by id, with its address; this node left out) whether it has a
/// cluster, as node `name` reached at `addr`: [`Found::InCluster`] at the first that has one
/// and took this node (asking again, every second, while a node that has one cannot take it
/// yet), [`Found::NoCluster`] when each answered that it has none or could not be reached.
pub async fn find_cluster(node: &TcpNode, peers: &BTreeMap<u64, String>, name: &str, addr: &str) -> Found {
    let question = ask(node.id(), name, addr);
    loop {
        let mut busy = None;
        for (&id, peer_addr) in peers.iter().filter(|(id, _)| **id != node.id()) {
            let peer = Peer { id, addr: peer_addr.clone() };
            match node.call(&peer, MEMBERSHIP_SERVICE, &question, ASK_TIMEOUT).await {
                Ok(answer) if answer == [MEMBER] => return Found::InCluster { through: id, joined: false },
                Ok(answer) if answer == [JOINED] => return Found::InCluster { through: id, joined: true },
                Ok(answer) if answer == [NOT_FORMED] => {}
                Ok(answer) => busy = Some(format!("node {id:016x} answered {answer:?}")),
                // It has a cluster that cannot take this node now (no leader, say), or did not
                // answer in time: ask again rather than form another cluster.
                Err(e @ (RpcError::Network { .. } | RpcError::Timeout { .. })) => busy = Some(e.to_string()),
                // Down, or starting (no service yet).
                Err(RpcError::Unreachable { .. }) => {}
            }
        }
        match busy {
            None => return Found::NoCluster,
            Some(why) => {
                tracing::info!("a node of the cluster cannot take this node yet ({why}): asking again");
                tokio::time::sleep(ASK_AGAIN_AFTER).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_reads_back_and_damage_is_refused() {
        let q = ask(7, "warren4@host", "host:25672");
        assert_eq!(parse_ask(&q), Ok((7, "warren4@host".into(), "host:25672".into())));
        for cut in 0..q.len() {
            assert!(parse_ask(&q[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = q.clone();
        longer.push(0);
        assert!(parse_ask(&longer).is_err());
        let mut other = q;
        other[0] = 9;
        assert!(parse_ask(&other).is_err());
    }
}
