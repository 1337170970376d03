//! The wire encoding of everything a transport carries between nodes, and of log entries.
//!
//! Hand-written and without I/O: each `encode_*` appends to a `Vec<u8>`, each `decode_*` reads
//! one whole value from a byte slice. The entry encoding ([`encode_entry`], [`decode_entry`]) is
//! also the one a durable log stores, so it is public and must stay stable.
//!
//! # Layout
//!
//! Integers are big-endian. Every variable part is preceded by its length or count, a `u32`.
//! `Option<T>` is a tag byte (0 none, 1 some) and then `T`; a `bool` is one byte, 0 or 1.
//!
//! | value | bytes |
//! |---|---|
//! | leader id | term `u64`, node `u64` |
//! | vote | term `u64`, node `u64`, committed `bool` |
//! | log id | leader id, index `u64` |
//! | membership | config count `u32`, per config: voter count `u32`, ids `u64` ascending; node count `u32`, per node: id `u64` (ascending), address length `u32`, address UTF-8 |
//! | stored membership | log id option, membership |
//! | snapshot meta | last log id option, stored membership, snapshot id length `u32`, id UTF-8 |
//! | entry | log id, payload tag `u8`: 0 blank; 1 normal, command length `u32`, command bytes ([`Machine::encode_command`]); 2 membership, membership |
//! | append request | vote, prev log id option, leader commit option, entry count `u32`, entries |
//! | append response | tag `u8`: 0 success; 1 partial success, log id option; 2 conflict; 3 higher vote, vote |
//! | vote request | vote, last log id option |
//! | vote response | vote, granted `bool`, last log id option |
//! | snapshot request | vote, snapshot meta, data length `u32`, data |
//! | snapshot response | vote |
//!
//! # Invariants
//!
//! Decoding never panics and never allocates more than the input could hold: every length and
//! count is checked against the bytes that remain before anything is reserved. Truncated input,
//! trailing bytes, unknown tags, booleans other than 0 or 1, ids out of order and invalid UTF-8
//! are all `io::Error`s of kind `InvalidData`. The encoding is canonical: decoding and encoding
//! again gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use openraft::{BasicNode, EntryPayload};

use crate::types::{
    AppendRequest, AppendResponse, Entry, LeaderId, LogId, Membership, Snapshot, SnapshotMeta, SnapshotResponse,
    StoredMembership, Vote, VoteRequest, VoteResponse,
};
use crate::Machine;

#[cfg(test)]
mod tests;

/// Payload tags of an entry.
const ENTRY_BLANK: u8 = 0;
const ENTRY_NORMAL: u8 = 1;
const ENTRY_MEMBERSHIP: u8 = 2;

/// Variant tags of an append response.
const APPEND_SUCCESS: u8 = 0;
const APPEND_PARTIAL_SUCCESS: u8 = 1;
const APPEND_CONFLICT: u8 = 2;
const APPEND_HIGHER_VOTE: u8 = 3;

/// The error every malformed input gives.
fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("raft wire decode: {what}"))
}

/// A cursor over input that checks every read against what remains.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn take(&mut self, n: usize, what: &str) -> io::Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(invalid(&format!("truncated {what}")));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> io::Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> io::Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &str) -> io::Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(invalid(&format!("{what} is not 0 or 1"))),
        }
    }

    /// A `u32` length and that many bytes.
    fn bytes(&mut self, what: &str) -> io::Result<&'a [u8]> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| invalid(&format!("{what} too long")))?;
        self.take(len, what)
    }

    fn string(&mut self, what: &str) -> io::Result<String> {
        let bytes = self.bytes(what)?;
        let text = std::str::from_utf8(bytes).map_err(|_| invalid(&format!("{what} is not UTF-8")))?;
        Ok(text.to_owned())
    }

    /// A `u32` count of items each at least `min_size` bytes long, checked against the input
    /// left so that a hostile count cannot make the caller reserve more than the input holds.
    fn count(&mut self, min_size: usize, what: &str) -> io::Result<usize> {
        let count = usize::try_from(self.u32(what)?).map_err(|_| invalid(&format!("{what} too large")))?;
        if count.saturating_mul(min_size) > self.bytes.len() {
            return Err(invalid(&format!("{what} of {count} exceeds the input")));
        }
        Ok(count)
    }

    fn option<T>(&mut self, what: &str, read: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<Option<T>> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => read(self).map(Some),
            tag => Err(invalid(&format!("{what} has option tag {tag}"))),
        }
    }

    /// Ends a top-level decode: anything left over is an error.
    fn finish(self, what: &str) -> io::Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(invalid(&format!("{} trailing bytes after {what}", self.bytes.len())))
        }
    }
}

/// Decodes one whole value with `read`, refusing trailing bytes.
fn whole<T>(bytes: &[u8], what: &str, read: impl FnOnce(&mut Reader<'_>) -> io::Result<T>) -> io::Result<T> {
    let mut r = Reader::new(bytes);
    let value = read(&mut r)?;
    r.finish(what)?;
    Ok(value)
}

fn put_u32_len(out: &mut Vec<u8>, len: usize) {
    // Lengths beyond u32 cannot be framed at all (a frame's own length is a u32), so such a
    // value is a programmer error upstream, not something the network can cause.
    debug_assert!(u32::try_from(len).is_ok(), "length {len} does not fit the wire's u32");
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_option<T>(out: &mut Vec<u8>, value: Option<&T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            write(out, value);
        }
    }
}

// ---- votes and log ids ----

fn put_leader_id(out: &mut Vec<u8>, leader: &LeaderId) {
    put_u64(out, leader.term);
    put_u64(out, leader.node_id);
}

fn read_leader_id(r: &mut Reader<'_>) -> io::Result<LeaderId> {
    let term = r.u64("leader term")?;
    let node_id = r.u64("leader node")?;
    Ok(LeaderId::new(term, node_id))
}

fn put_vote(out: &mut Vec<u8>, vote: &Vote) {
    put_u64(out, vote.leader_id.term);
    put_u64(out, vote.leader_id.node_id);
    put_bool(out, vote.committed);
}

fn read_vote(r: &mut Reader<'_>) -> io::Result<Vote> {
    let term = r.u64("vote term")?;
    let node_id = r.u64("vote node")?;
    let committed = r.bool("vote committed")?;
    Ok(Vote { leader_id: openraft::LeaderId::new(term, node_id), committed })
}

fn put_log_id(out: &mut Vec<u8>, log_id: &LogId) {
    put_leader_id(out, &log_id.leader_id);
    put_u64(out, log_id.index);
}

fn read_log_id(r: &mut Reader<'_>) -> io::Result<LogId> {
    let leader_id = read_leader_id(r)?;
    let index = r.u64("log index")?;
    Ok(LogId::new(leader_id, index))
}

fn put_log_id_option(out: &mut Vec<u8>, log_id: Option<&LogId>) {
    put_option(out, log_id, put_log_id);
}

fn read_log_id_option(r: &mut Reader<'_>, what: &str) -> io::Result<Option<LogId>> {
    r.option(what, read_log_id)
}

/// Appends `vote`'s encoding to `out`.
pub fn encode_vote(vote: &Vote, out: &mut Vec<u8>) {
    put_vote(out, vote);
}

/// Decodes exactly one vote from `bytes`.
pub fn decode_vote(bytes: &[u8]) -> io::Result<Vote> {
    whole(bytes, "vote", read_vote)
}

/// Appends `log_id`'s encoding to `out`.
pub fn encode_log_id(log_id: &LogId, out: &mut Vec<u8>) {
    put_log_id(out, log_id);
}

/// Decodes exactly one log id from `bytes`.
pub fn decode_log_id(bytes: &[u8]) -> io::Result<LogId> {
    whole(bytes, "log id", read_log_id)
}

// ---- membership ----

/// Smallest encoding of one voter config: its count.
const MIN_CONFIG_BYTES: usize = 4;
/// Smallest encoding of one node: its id and an empty address's length.
const MIN_NODE_BYTES: usize = 8 + 4;

fn put_membership(out: &mut Vec<u8>, membership: &Membership) {
    let configs = membership.get_joint_config();
    put_u32_len(out, configs.len());
    for config in configs {
        put_u32_len(out, config.len());
        for id in config {
            put_u64(out, *id);
        }
    }
    let nodes: Vec<(&u64, &BasicNode)> = membership.nodes().collect();
    put_u32_len(out, nodes.len());
    for (id, node) in nodes {
        put_u64(out, *id);
        put_bytes(out, node.addr.as_bytes());
    }
}

/// Reads ids that must be strictly ascending (they come from ordered sets and maps, so anything
/// else is corruption, and accepting it would make the encoding ambiguous).
fn check_ascending(previous: &mut Option<u64>, id: u64, what: &str) -> io::Result<()> {
    if previous.is_some_and(|p| p >= id) {
        return Err(invalid(&format!("{what} ids are not strictly ascending")));
    }
    *previous = Some(id);
    Ok(())
}

fn read_membership(r: &mut Reader<'_>) -> io::Result<Membership> {
    let config_count = r.count(MIN_CONFIG_BYTES, "voter config count")?;
    let mut configs = Vec::with_capacity(config_count);
    for _ in 0..config_count {
        let voter_count = r.count(8, "voter count")?;
        let mut config = BTreeSet::new();
        let mut previous = None;
        for _ in 0..voter_count {
            let id = r.u64("voter id")?;
            check_ascending(&mut previous, id, "voter")?;
            config.insert(id);
        }
        configs.push(config);
    }
    let node_count = r.count(MIN_NODE_BYTES, "node count")?;
    let mut nodes = BTreeMap::new();
    let mut previous = None;
    for _ in 0..node_count {
        let id = r.u64("node id")?;
        check_ascending(&mut previous, id, "node")?;
        let addr = r.string("node address")?;
        nodes.insert(id, BasicNode { addr });
    }
    // openraft's memberships always hold a node for every voter; without this check a voter
    // would silently get an empty address.
    if let Some(voter) = configs.iter().flatten().find(|id| !nodes.contains_key(id)) {
        return Err(invalid(&format!("voter {voter} has no node")));
    }
    Ok(Membership::new(configs, nodes))
}

fn put_stored_membership(out: &mut Vec<u8>, stored: &StoredMembership) {
    put_log_id_option(out, stored.log_id().as_ref());
    put_membership(out, stored.membership());
}

fn read_stored_membership(r: &mut Reader<'_>) -> io::Result<StoredMembership> {
    let log_id = read_log_id_option(r, "membership log id")?;
    let membership = read_membership(r)?;
    Ok(StoredMembership::new(log_id, membership))
}

/// Appends `membership`'s encoding to `out`.
pub fn encode_membership(membership: &Membership, out: &mut Vec<u8>) {
    put_membership(out, membership);
}

/// Decodes exactly one membership from `bytes`.
pub fn decode_membership(bytes: &[u8]) -> io::Result<Membership> {
    whole(bytes, "membership", read_membership)
}

/// Appends `stored`'s encoding (the membership and the id of the entry holding it) to `out`.
pub fn encode_stored_membership(stored: &StoredMembership, out: &mut Vec<u8>) {
    put_stored_membership(out, stored);
}

/// Decodes exactly one stored membership from `bytes`.
pub fn decode_stored_membership(bytes: &[u8]) -> io::Result<StoredMembership> {
    whole(bytes, "stored membership", read_stored_membership)
}

// ---- snapshot meta ----

fn put_snapshot_meta(out: &mut Vec<u8>, meta: &SnapshotMeta) {
    put_log_id_option(out, meta.last_log_id.as_ref());
    put_stored_membership(out, &meta.last_membership);
    put_bytes(out, meta.snapshot_id.as_bytes());
}

fn read_snapshot_meta(r: &mut Reader<'_>) -> io::Result<SnapshotMeta> {
    let last_log_id = read_log_id_option(r, "snapshot last log id")?;
    let last_membership = read_stored_membership(r)?;
    let snapshot_id = r.string("snapshot id")?;
    Ok(SnapshotMeta { last_log_id, last_membership, snapshot_id })
}

/// Appends `meta`'s encoding to `out`.
pub fn encode_snapshot_meta(meta: &SnapshotMeta, out: &mut Vec<u8>) {
    put_snapshot_meta(out, meta);
}

/// Decodes exactly one snapshot meta from `bytes`.
pub fn decode_snapshot_meta(bytes: &[u8]) -> io::Result<SnapshotMeta> {
    whole(bytes, "snapshot meta", read_snapshot_meta)
}

// ---- entries ----

/// Smallest encoding of one entry: a log id and a payload tag.
const MIN_ENTRY_BYTES: usize = 8 + 8 + 8 + 1;

fn put_entry<M: Machine>(out: &mut Vec<u8>, entry: &Entry<M>) {
    put_log_id(out, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => out.push(ENTRY_BLANK),
        EntryPayload::Normal(command) => {
            out.reserve(1 + 4 + M::encoded_len_hint(command));
            out.push(ENTRY_NORMAL);
            // The length goes first and is patched once the machine has written the command.
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            M::encode_command(command, out);
            let len = out.len() - at - 4;
            debug_assert!(u32::try_from(len).is_ok(), "command of {len} bytes");
            out[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        }
        EntryPayload::Membership(membership) => {
            out.push(ENTRY_MEMBERSHIP);
            put_membership(out, membership);
        }
    }
}

fn read_entry<M: Machine>(r: &mut Reader<'_>) -> io::Result<Entry<M>> {
    let log_id = read_log_id(r)?;
    let payload = match r.u8("entry payload tag")? {
        ENTRY_BLANK => EntryPayload::Blank,
        ENTRY_NORMAL => {
            let bytes = r.bytes("command")?;
            let command = M::decode_command(bytes).map_err(|e| invalid(&format!("command: {e}")))?;
            EntryPayload::Normal(command)
        }
        ENTRY_MEMBERSHIP => EntryPayload::Membership(read_membership(r)?),
        tag => return Err(invalid(&format!("unknown entry payload tag {tag}"))),
    };
    Ok(Entry::<M> { log_id, payload })
}

/// Appends `entry`'s encoding to `out`: its log id and its payload, a command encoded by
/// [`Machine::encode_command`]. A durable log stores entries in this form.
pub fn encode_entry<M: Machine>(entry: &Entry<M>, out: &mut Vec<u8>) {
    put_entry(out, entry);
}

/// Decodes exactly one entry from `bytes`, its command by [`Machine::decode_command`].
pub fn decode_entry<M: Machine>(bytes: &[u8]) -> io::Result<Entry<M>> {
    whole(bytes, "entry", read_entry::<M>)
}

// ---- RPCs ----

/// Appends the encoding of a leader's append-entries request to `out`.
pub fn encode_append_request<M: Machine>(request: &AppendRequest<M>, out: &mut Vec<u8>) {
    put_vote(out, &request.vote);
    put_log_id_option(out, request.prev_log_id.as_ref());
    put_log_id_option(out, request.leader_commit.as_ref());
    put_u32_len(out, request.entries.len());
    let hint: usize = request
        .entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(command) => 32 + M::encoded_len_hint(command),
            _ => 64,
        })
        .sum();
    out.reserve(hint);
    for entry in &request.entries {
        put_entry(out, entry);
    }
}

/// Decodes exactly one append-entries request from `bytes`.
pub fn decode_append_request<M: Machine>(bytes: &[u8]) -> io::Result<AppendRequest<M>> {
    whole(bytes, "append request", |r| {
        let vote = read_vote(r)?;
        let prev_log_id = read_log_id_option(r, "prev log id")?;
        let leader_commit = read_log_id_option(r, "leader commit")?;
        let count = r.count(MIN_ENTRY_BYTES, "entry count")?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(read_entry::<M>(r)?);
        }
        Ok(AppendRequest::<M> { vote, prev_log_id, entries, leader_commit })
    })
}

/// Appends the encoding of an answer to an append-entries request to `out`.
pub fn encode_append_response(response: &AppendResponse, out: &mut Vec<u8>) {
    match response {
        AppendResponse::Success => out.push(APPEND_SUCCESS),
        AppendResponse::PartialSuccess(matched) => {
            out.push(APPEND_PARTIAL_SUCCESS);
            put_log_id_option(out, matched.as_ref());
        }
        AppendResponse::Conflict => out.push(APPEND_CONFLICT),
        AppendResponse::HigherVote(vote) => {
            out.push(APPEND_HIGHER_VOTE);
            put_vote(out, vote);
        }
    }
}

/// Decodes exactly one answer to an append-entries request from `bytes`.
pub fn decode_append_response(bytes: &[u8]) -> io::Result<AppendResponse> {
    whole(bytes, "append response", |r| match r.u8("append response tag")? {
        APPEND_SUCCESS => Ok(AppendResponse::Success),
        APPEND_PARTIAL_SUCCESS => Ok(AppendResponse::PartialSuccess(read_log_id_option(r, "matched log id")?)),
        APPEND_CONFLICT => Ok(AppendResponse::Conflict),
        APPEND_HIGHER_VOTE => Ok(AppendResponse::HigherVote(read_vote(r)?)),
        tag => Err(invalid(&format!("unknown append response tag {tag}"))),
    })
}

/// Appends the encoding of a candidate's vote request to `out`.
pub fn encode_vote_request(request: &VoteRequest, out: &mut Vec<u8>) {
    put_vote(out, &request.vote);
    put_log_id_option(out, request.last_log_id.as_ref());
}

/// Decodes exactly one vote request from `bytes`.
pub fn decode_vote_request(bytes: &[u8]) -> io::Result<VoteRequest> {
    whole(bytes, "vote request", |r| {
        let vote = read_vote(r)?;
        let last_log_id = read_log_id_option(r, "last log id")?;
        Ok(VoteRequest { vote, last_log_id })
    })
}

/// Appends the encoding of an answer to a vote request to `out`.
pub fn encode_vote_response(response: &VoteResponse, out: &mut Vec<u8>) {
    put_vote(out, &response.vote);
    put_bool(out, response.vote_granted);
    put_log_id_option(out, response.last_log_id.as_ref());
}

/// Decodes exactly one answer to a vote request from `bytes`.
pub fn decode_vote_response(bytes: &[u8]) -> io::Result<VoteResponse> {
    whole(bytes, "vote response", |r| {
        let vote = read_vote(r)?;
        let vote_granted = r.bool("vote granted")?;
        let last_log_id = read_log_id_option(r, "last log id")?;
        Ok(VoteResponse { vote, vote_granted, last_log_id })
    })
}

/// Appends the encoding of a whole snapshot sent by the leader whose vote is `vote` to `out`.
pub fn encode_snapshot_request<M: Machine>(vote: &Vote, snapshot: &Snapshot<M>, out: &mut Vec<u8>) {
    put_vote(out, vote);
    put_snapshot_meta(out, &snapshot.meta);
    put_bytes(out, &snapshot.snapshot);
}

/// Decodes exactly one snapshot request (the leader's vote and the snapshot) from `bytes`.
pub fn decode_snapshot_request<M: Machine>(bytes: &[u8]) -> io::Result<(Vote, Snapshot<M>)> {
    whole(bytes, "snapshot request", |r| {
        let vote = read_vote(r)?;
        let meta = read_snapshot_meta(r)?;
        let data = r.bytes("snapshot data")?.to_vec();
        Ok((vote, Snapshot::<M> { meta, snapshot: Box::new(data) }))
    })
}

/// Appends the encoding of the answer to an installed snapshot to `out`.
pub fn encode_snapshot_response(response: &SnapshotResponse, out: &mut Vec<u8>) {
    put_vote(out, &response.vote);
}

/// Decodes exactly one answer to a snapshot request from `bytes`.
pub fn decode_snapshot_response(bytes: &[u8]) -> io::Result<SnapshotResponse> {
    whole(bytes, "snapshot response", |r| Ok(SnapshotResponse::new(read_vote(r)?)))
}
