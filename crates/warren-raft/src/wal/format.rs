//! The WAL's bytes: segment files, records, what each record kind holds, and how replaying a
//! record changes a group's log.
//!
//! A segment starts with [`MAGIC`] and then holds records back to back. A record is the length
//! of its body (u32), the CRC-32 of its body (u32), and the body: the group id (u64), the kind
//! (u8) and the payload. Integers are big-endian; log ids and votes are in the wire codec's
//! encoding, entries are `codec::encode_entry` bytes (the conventions of `FileLog`, with the
//! group id added).
//!
//! | kind | payload |
//! |---|---|
//! | 1 entry | `codec::encode_entry` (its first 24 bytes are its log id, so its index is read without the machine type) |
//! | 2 vote | `codec::encode_vote` |
//! | 3 committed | 0, or 1 and a log id |
//! | 4 truncate | index u64: entries from it on are dropped |
//! | 5 purge | log id: entries up to it are dropped and it is remembered |
//! | 6 forget | nothing: the group and all it held are gone |
//! | 7 checkpoint | vote option, committed option, purged option (tag 0 or 1 each), next index u64: the group's whole state but its entries, written at the start of every segment |

use std::collections::BTreeMap;
use std::io;

use crate::codec;
use crate::types::{LogId, Vote};

/// The first bytes of every segment.
pub(super) const MAGIC: &[u8; 8] = b"WRNWAL01";
/// Length and checksum before each record's body.
pub(super) const HEADER_BYTES: usize = 8;
/// Group id and kind: the smallest body.
const MIN_BODY_BYTES: usize = 9;
/// Longer records than this are taken for damage: a record holds one entry, and the broker's
/// messages are at most 16 MiB. An entry whose record would be longer is refused when appended.
pub(super) const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// The encoding of a log id, at the start of an entry's.
const LOG_ID_BYTES: usize = 24;

pub(super) const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const TRUNCATE: u8 = 4;
const PURGE: u8 = 5;
const FORGET: u8 = 6;
const CHECKPOINT: u8 = 7;

/// A group's state but its entries, as the writer tracks it and a checkpoint records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) vote: Option<Vote>,
    pub(super) committed: Option<LogId>,
    pub(super) purged: Option<LogId>,
    /// The index after the group's last entry (or after its purge point when it has none).
    pub(super) next: u64,
}

impl Meta {
    /// Follows one record of the group (a forget is the caller's: the group is dropped).
    pub(super) fn apply(&mut self, op: &Op) {
        match op {
            Op::Entry(index) => self.next = index + 1,
            Op::Vote(vote) => self.vote = Some(*vote),
            Op::Committed(committed) => self.committed = *committed,
            Op::Truncate(index) => self.next = self.next.min(*index),
            Op::Purge(log_id) => {
                self.purged = Some(*log_id);
                self.next = self.next.max(log_id.index + 1);
            }
            Op::Checkpoint(meta) => *self = meta.clone(),
            Op::Forget => *self = Meta::default(),
        }
    }
}

/// What one record does to its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// An entry at this index (its bytes are the record's payload).
    Entry(u64),
    Vote(Vote),
    Committed(Option<LogId>),
    /// Entries from this index on are dropped.
    Truncate(u64),
    /// Entries up to this log id are dropped and it is remembered.
    Purge(LogId),
    /// The group is gone.
    Forget,
    /// The group's state but its entries; entries from `next` on and up to `purged` are dropped.
    Checkpoint(Meta),
}

impl Op {
    /// Whether a writer must sync the record before its writer is answered (all but the
    /// committed id, which a member learns again from its leader).
    pub(super) fn durable(&self) -> bool {
        !matches!(self, Op::Committed(_))
    }
}

/// Appends one record of `group` to `out`.
pub(super) fn record(group: u64, kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = MIN_BODY_BYTES + payload.len();
    out.reserve(HEADER_BYTES + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_at = out.len();
    out.extend_from_slice(&group.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[body_at..]);
    out[crc_at..body_at].copy_from_slice(&crc.to_be_bytes());
}

/// Appends one record of `group` to `out` whose payload `write` appends in place (no copy of
/// it is made); returns the payload's length.
pub(super) fn record_with(group: u64, kind: u8, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let body_at = out.len();
    out.extend_from_slice(&group.to_be_bytes());
    out.push(kind);
    write(out);
    let len = out.len() - body_at;
    let crc = crc32fast::hash(&out[body_at..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    out[start + 4..body_at].copy_from_slice(&crc.to_be_bytes());
    len - MIN_BODY_BYTES
}

fn put_log_id_option(log_id: Option<&LogId>, out: &mut Vec<u8>) {
    match log_id {
        Some(id) => {
            out.push(1);
            codec::encode_log_id(id, out);
        }
        None => out.push(0),
    }
}

/// Appends the record of every op but an entry (whose record carries the entry's bytes).
pub(super) fn op_record(group: u64, op: &Op, out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    let kind = match op {
        Op::Entry(_) => unreachable!("an entry's record is made from its bytes"),
        Op::Vote(vote) => {
            codec::encode_vote(vote, &mut payload);
            VOTE
        }
        Op::Committed(committed) => {
            put_log_id_option(committed.as_ref(), &mut payload);
            COMMITTED
        }
        Op::Truncate(index) => {
            payload.extend_from_slice(&index.to_be_bytes());
            TRUNCATE
        }
        Op::Purge(log_id) => {
            codec::encode_log_id(log_id, &mut payload);
            PURGE
        }
        Op::Forget => FORGET,
        Op::Checkpoint(meta) => {
            match &meta.vote {
                Some(vote) => {
                    payload.push(1);
                    codec::encode_vote(vote, &mut payload);
                }
                None => payload.push(0),
            }
            put_log_id_option(meta.committed.as_ref(), &mut payload);
            put_log_id_option(meta.purged.as_ref(), &mut payload);
            payload.extend_from_slice(&meta.next.to_be_bytes());
            CHECKPOINT
        }
    };
    record(group, kind, &payload, out);
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Splits `bytes` into an optional value (tag 0 or 1, then `len` bytes) and the rest.
fn take_option<'a>(bytes: &'a [u8], len: usize, what: &str) -> io::Result<(Option<&'a [u8]>, usize)> {
    match bytes.first() {
        Some(0) => Ok((None, 1)),
        Some(1) if bytes.len() > len => Ok((Some(&bytes[1..1 + len]), 1 + len)),
        _ => Err(bad(format!("a {what} that is not one"))),
    }
}

fn u64_of(bytes: &[u8], what: &str) -> io::Result<u64> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| bad(format!("a {what} that is not 8 bytes")))?))
}

/// What a record of `kind` with `payload` does.
pub(super) fn decode(kind: u8, payload: &[u8]) -> io::Result<Op> {
    Ok(match kind {
        ENTRY => {
            let id = payload.get(..LOG_ID_BYTES).ok_or_else(|| bad("an entry shorter than a log id"))?;
            Op::Entry(codec::decode_log_id(id)?.index)
        }
        VOTE => Op::Vote(codec::decode_vote(payload)?),
        COMMITTED => match take_option(payload, LOG_ID_BYTES, "committed record")? {
            (id, used) if used == payload.len() => Op::Committed(id.map(codec::decode_log_id).transpose()?),
            _ => return Err(bad("a committed record with trailing bytes")),
        },
        TRUNCATE => Op::Truncate(u64_of(payload, "truncation")?),
        PURGE => Op::Purge(codec::decode_log_id(payload)?),
        FORGET if payload.is_empty() => Op::Forget,
        CHECKPOINT => {
            let (vote, a) = take_option(payload, 17, "checkpoint's vote")?;
            let (committed, b) = take_option(&payload[a..], LOG_ID_BYTES, "checkpoint's committed id")?;
            let (purged, c) = take_option(&payload[a + b..], LOG_ID_BYTES, "checkpoint's purge point")?;
            let next = u64_of(&payload[a + b + c..], "checkpoint's next index")?;
            Op::Checkpoint(Meta {
                vote: vote.map(codec::decode_vote).transpose()?,
                committed: committed.map(codec::decode_log_id).transpose()?,
                purged: purged.map(codec::decode_log_id).transpose()?,
                next,
            })
        }
        other => return Err(bad(format!("unknown record kind {other}"))),
    })
}

/// Where reading a segment stopped short of its end, and why.
#[derive(Debug)]
pub(super) struct Damage {
    pub(super) at: usize,
    pub(super) why: &'static str,
}

/// Reads the records of one segment in order, handing each whole one (its offset, group, kind
/// and payload) to `each`. Stops at the first record that is cut short or fails its checksum
/// and says where (`Ok(Some(damage))`); an error of `each` is returned with the record's offset.
pub(super) fn scan(
    bytes: &[u8],
    mut each: impl FnMut(u64, u8, &[u8]) -> io::Result<()>,
) -> Result<Option<Damage>, (usize, io::Error)> {
    if bytes.is_empty() {
        // Created and never written: a crash right after the file was made.
        return Ok(None);
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Ok(Some(Damage { at: 0, why: "not a WAL segment header" }));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        if bytes.len() - at < HEADER_BYTES {
            return Ok(Some(Damage { at, why: "a record header cut short" }));
        }
        let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + HEADER_BYTES;
        if !(MIN_BODY_BYTES..=MAX_RECORD_BYTES).contains(&len) {
            return Ok(Some(Damage { at, why: "a record length out of range" }));
        }
        if bytes.len() - start < len {
            return Ok(Some(Damage { at, why: "a record cut short" }));
        }
        let body = &bytes[start..start + len];
        if crc32fast::hash(body) != crc {
            return Ok(Some(Damage { at, why: "a record failing its checksum" }));
        }
        let group = u64::from_be_bytes(body[..8].try_into().map_err(|_| (at, bad("header")))?);
        each(group, body[8], &body[9..]).map_err(|e| (at, e))?;
        at = start + len;
    }
    Ok(None)
}

/// A group's log as replayed from the WAL, its entries still in their encoded form (the
/// machine type is known only when the group's log is taken).
#[derive(Debug, Default)]
pub(super) struct RawGroup {
    pub(super) vote: Option<Vote>,
    pub(super) committed: Option<LogId>,
    pub(super) purged: Option<LogId>,
    pub(super) entries: BTreeMap<u64, Vec<u8>>,
}

impl RawGroup {
    fn purge(&mut self, log_id: LogId) {
        self.purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
    }

    /// Replays one record (a forget is the caller's: the group is dropped).
    pub(super) fn apply(&mut self, op: &Op, payload: &[u8]) {
        match op {
            Op::Entry(index) => {
                // An entry is appended at the end of the log: anything at or after its index had
                // been truncated before it was written.
                if self.entries.last_key_value().is_some_and(|(last, _)| last >= index) {
                    self.entries.split_off(index);
                }
                self.entries.insert(*index, payload.to_vec());
            }
            Op::Vote(vote) => self.vote = Some(*vote),
            Op::Committed(committed) => self.committed = *committed,
            Op::Truncate(index) => {
                self.entries.split_off(index);
            }
            Op::Purge(log_id) => self.purge(*log_id),
            Op::Checkpoint(meta) => {
                self.vote = meta.vote;
                self.committed = meta.committed;
                match meta.purged {
                    Some(log_id) => self.purge(log_id),
                    None => self.purged = None,
                }
                self.entries.split_off(&meta.next);
            }
            Op::Forget => *self = RawGroup::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 2), index)
    }

    #[test]
    fn every_op_reads_back() {
        let ops = [
            Op::Vote(Vote::new(3, 2)),
            Op::Committed(None),
            Op::Committed(Some(log_id(3, 9))),
            Op::Truncate(7),
            Op::Purge(log_id(2, 4)),
            Op::Forget,
            Op::Checkpoint(Meta::default()),
            Op::Checkpoint(Meta {
                vote: Some(Vote::new_committed(5, 1)),
                committed: Some(log_id(5, 10)),
                purged: Some(log_id(4, 6)),
                next: 11,
            }),
        ];
        let mut bytes = MAGIC.to_vec();
        for (group, op) in ops.iter().enumerate() {
            op_record(group as u64 + 100, op, &mut bytes);
        }
        let mut back = Vec::new();
        let damage = scan(&bytes, |group, kind, payload| {
            back.push((group, decode(kind, payload)?));
            Ok(())
        })
        .expect("scan");
        assert!(damage.is_none());
        let expected: Vec<(u64, Op)> = ops.iter().cloned().enumerate().map(|(g, op)| (g as u64 + 100, op)).collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn a_cut_or_flipped_record_is_damage_and_a_bad_payload_an_error() {
        let mut bytes = MAGIC.to_vec();
        op_record(1, &Op::Truncate(3), &mut bytes);
        let whole = bytes.len();
        op_record(1, &Op::Truncate(4), &mut bytes);
        for cut in whole + 1..bytes.len() {
            let damage = scan(&bytes[..cut], |_, _, _| Ok(())).expect("scan").expect("damage");
            assert_eq!(damage.at, whole);
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(scan(&flipped, |_, _, _| Ok(())).expect("scan").expect("damage").at, whole);
        assert_eq!(scan(&bytes[..5], |_, _, _| Ok(())).expect("scan").expect("damage").at, 0);
        let mut alien = MAGIC.to_vec();
        record(1, 99, b"?", &mut alien);
        let (at, err) = scan(&alien, |_, kind, payload| decode(kind, payload).map(drop)).expect_err("refused");
        assert_eq!(at, MAGIC.len());
        assert!(err.to_string().contains("unknown record kind 99"), "{err}");
    }
}
