//! [`FileLog`]: a Raft log that survives its process, one append-only file per group.
//!
//! The first durable log (docs/clustering.md, "The durable log"): every change is a record
//! appended to the group's file, and the file is synced before openraft hears that appended
//! entries or a vote are stored, so a member that restarts comes back with its vote and every
//! entry it acknowledged. Opening the file replays its records into the same in-memory form
//! [`MemLog`](crate::MemLog) keeps.
//!
//! Record: length of what follows the checksum (u32), CRC-32 of it (u32), kind (u8), payload.
//! Kinds: 1 an entry (`codec::encode_entry`), 2 the vote, 3 the committed log id (or none),
//! 4 a truncation from an index on, 5 a purge up to a log id. Replay stops at the first record
//! that is cut short or fails its checksum (a write torn by a crash: nothing after it was ever
//! acknowledged, since every acknowledged write was synced after all before it), and the file is
//! cut back to the last whole record so that new records follow it.
//!
//! What it does not do, [`Wal`](crate::Wal) does (the log the cluster uses): one log shared by
//! every group of a node with group commit across them, reclaiming space (here purged entries
//! stay in the file), and I/O off the async worker (here a sync blocks the thread that appends).

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
};
use parking_lot::Mutex;

use crate::codec;
use crate::log::{DurableLog, LogEntries};
use crate::types::{Entry, LogId, Types, Vote};
use crate::Machine;

const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const TRUNCATE: u8 = 4;
const PURGE: u8 = 5;
/// Length and checksum before each record's kind and payload.
const HEADER_BYTES: usize = 8;
/// Longer records than this are taken for damage: a record holds one entry, and the broker's
/// messages are at most 16 MiB.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// A durable Raft log for a group replicating `M`, kept in one file; clones share it.
pub struct FileLog<M: Machine> {
    inner: Arc<Mutex<Inner<M>>>,
}

struct Inner<M: Machine> {
    file: File,
    log: LogEntries<M>,
}

impl<M: Machine> Clone for FileLog<M> {
    fn clone(&self) -> Self {
        FileLog { inner: Arc::clone(&self.inner) }
    }
}

fn record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(1 + payload.len());
    body.push(kind);
    body.extend_from_slice(payload);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<M: Machine> FileLog<M> {
    /// Opens the log in `path`, creating it if it does not exist, and replays what it holds.
    /// A torn record at the end is cut off; a whole record that does not decode is an error
    /// (another version wrote it, or the file is not a log).
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        let mut inner = Inner { file, log: LogEntries::new() };
        let mut at = 0;
        while bytes.len() - at >= HEADER_BYTES {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().map_err(|_| bad("header".into()))?) as usize;
            let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().map_err(|_| bad("header".into()))?);
            let start = at + HEADER_BYTES;
            if len == 0 || len > MAX_RECORD_BYTES || bytes.len() - start < len {
                break;
            }
            let body = &bytes[start..start + len];
            if crc32fast::hash(body) != crc {
                break;
            }
            inner
                .replay(body[0], &body[1..])
                .map_err(|e| bad(format!("{}: record at byte {at}: {e}", path.display())))?;
            at = start + len;
        }
        if at < bytes.len() {
            // A torn tail: what follows the last whole record was never acknowledged.
            inner.file.set_len(at as u64)?;
            inner.file.sync_all()?;
        }
        Ok(FileLog { inner: Arc::new(Mutex::new(inner)) })
    }
}

impl<M: Machine> Inner<M> {
    fn replay(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        match kind {
            ENTRY => {
                let entry = codec::decode_entry::<M>(payload)?;
                self.log.entries.insert(entry.log_id.index, entry);
            }
            VOTE => self.log.vote = Some(codec::decode_vote(payload)?),
            COMMITTED => {
                self.log.committed = match payload.split_first() {
                    Some((0, [])) => None,
                    Some((1, id)) => Some(codec::decode_log_id(id)?),
                    _ => return Err(bad("a committed record that is not one".into())),
                }
            }
            TRUNCATE => {
                let index = u64::from_be_bytes(payload.try_into().map_err(|_| bad("a truncation".into()))?);
                self.log.truncate(index);
            }
            PURGE => {
                self.log.purge(codec::decode_log_id(payload)?);
            }
            other => return Err(bad(format!("unknown record kind {other}"))),
        }
        Ok(())
    }

    /// Appends records and, when `sync`, makes them durable before returning.
    fn write(&mut self, records: &[u8], sync: bool) -> io::Result<()> {
        self.file.write_all(records)?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &io::Error) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

impl<M: Machine> RaftLogReader<Types<M>> for FileLog<M> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<M>>, StorageError<u64>> {
        Ok(self.inner.lock().log.read(range))
    }
}

impl<M: Machine> RaftLogStorage<Types<M>> for FileLog<M> {
    type LogReader = FileLog<M>;

    async fn get_log_state(&mut self) -> Result<LogState<Types<M>>, StorageError<u64>> {
        Ok(self.inner.lock().log.log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        let mut payload = Vec::new();
        codec::encode_vote(vote, &mut payload);
        let mut records = Vec::new();
        record(VOTE, &payload, &mut records);
        let mut inner = self.inner.lock();
        inner.write(&records, true).map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        inner.log.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        Ok(crate::types::startup_vote(self.inner.lock().log.vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        let mut payload = Vec::new();
        match &committed {
            Some(id) => {
                payload.push(1);
                codec::encode_log_id(id, &mut payload);
            }
            None => payload.push(0),
        }
        let mut records = Vec::new();
        record(COMMITTED, &payload, &mut records);
        let mut inner = self.inner.lock();
        // Not synced: a committed index lost in a crash is learnt again from the leader.
        inner.write(&records, false).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        inner.log.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.inner.lock().log.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Types<M>>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<M>> = entries.into_iter().collect();
        let mut records = Vec::new();
        let mut payload = Vec::new();
        for entry in &entries {
            payload.clear();
            codec::encode_entry(entry, &mut payload);
            record(ENTRY, &payload, &mut records);
        }
        let mut inner = self.inner.lock();
        if let Err(e) = inner.write(&records, true) {
            let error = io_error(ErrorSubject::Logs, ErrorVerb::Write, &e);
            callback.log_io_completed(Err(io::Error::other(e.to_string())));
            return Err(error);
        }
        inner.log.extend(entries);
        drop(inner);
        // On disk: only now may the leader count this member as holding them.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let mut records = Vec::new();
        record(TRUNCATE, &log_id.index.to_be_bytes(), &mut records);
        let mut inner = self.inner.lock();
        inner.write(&records, true).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        inner.log.truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock();
        match inner.log.purge_asked(log_id) {
            Some(upto) => inner.write_purge(upto).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e)),
            None => Ok(()),
        }
    }
}

impl<M: Machine> Inner<M> {
    /// Records a purge up to `upto`. Not synced: purged entries that come back after a crash
    /// are purged again.
    fn write_purge(&mut self, upto: LogId) -> io::Result<()> {
        let mut payload = Vec::new();
        codec::encode_log_id(&upto, &mut payload);
        let mut records = Vec::new();
        record(PURGE, &payload, &mut records);
        self.write(&records, false)
    }
}

impl<M: Machine> DurableLog for FileLog<M> {
    fn snapshot_durable(&self, last: Option<LogId>) {
        let mut inner = self.inner.lock();
        if let Some(upto) = inner.log.snapshot_durable(last) {
            // Purged in memory; should the record not be written, the entries come back
            // after a restart and are purged again.
            let _ = inner.write_purge(upto);
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::test_machine::Nop;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry<Nop> {
        openraft::Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(index * 10) }
    }

    /// Everything a log holds, as openraft reads it.
    async fn contents(log: &mut FileLog<Nop>) -> (LogState<Types<Nop>>, Option<Vote>, Option<LogId>, Vec<(u64, u64)>) {
        let state = log.get_log_state().await.expect("state");
        let vote = log.read_vote().await.expect("vote");
        let committed = log.read_committed().await.expect("committed");
        let entries = log.try_get_log_entries(..).await.expect("entries");
        let entries = entries
            .iter()
            .map(|e| match e.payload {
                EntryPayload::Normal(v) => (e.log_id.index, v),
                _ => (e.log_id.index, 0),
            })
            .collect();
        (state, vote, committed, entries)
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-raft-filelog-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[tokio::test]
    async fn what_was_written_is_there_after_reopening() {
        let dir = temp("reopen");
        let path = dir.join("group.log");
        let mut log = FileLog::<Nop>::open(&path).expect("open");
        log.save_vote(&Vote::new(2, 1)).await.expect("vote");
        log.blocking_append((1..=6).map(|i| entry(1, i))).await.expect("append");
        log.truncate(log_id(1, 5)).await.expect("truncate");
        log.blocking_append([entry(2, 5)]).await.expect("append");
        log.save_committed(Some(log_id(2, 5))).await.expect("committed");
        log.purge(log_id(1, 2)).await.expect("purge");
        let before = contents(&mut log).await;
        assert_eq!(before.3, vec![(3, 30), (4, 40), (5, 50)]);
        drop(log);
        let mut again = FileLog::<Nop>::open(&path).expect("reopen");
        assert_eq!(contents(&mut again).await, before);
        // It goes on where it was.
        again.blocking_append([entry(2, 6)]).await.expect("append");
        drop(again);
        let mut third = FileLog::<Nop>::open(&path).expect("reopen");
        assert_eq!(contents(&mut third).await.3, vec![(3, 30), (4, 40), (5, 50), (6, 60)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
        let dir = temp("torn");
        let path = dir.join("group.log");
        let mut log = FileLog::<Nop>::open(&path).expect("open");
        log.blocking_append((1..=3).map(|i| entry(1, i))).await.expect("append");
        drop(log);
        let whole = std::fs::metadata(&path).expect("meta").len();
        // A crash part way through a fourth record: its header and some of its bytes.
        let mut torn = Vec::new();
        let mut payload = Vec::new();
        codec::encode_entry(&entry(1, 4), &mut payload);
        record(ENTRY, &payload, &mut torn);
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&torn[..torn.len() - 3]).expect("write");
        drop(file);
        let mut log = FileLog::<Nop>::open(&path).expect("reopen");
        assert_eq!(contents(&mut log).await.3, vec![(1, 10), (2, 20), (3, 30)]);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), whole, "cut back to the last whole record");
        log.blocking_append([entry(1, 4)]).await.expect("append");
        drop(log);
        // A flipped byte in the last record fails its checksum: it is cut off too.
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let mut log = FileLog::<Nop>::open(&path).expect("reopen");
        assert_eq!(contents(&mut log).await.3, vec![(1, 10), (2, 20), (3, 30)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_whole_record_that_does_not_decode_is_an_error() {
        let dir = temp("alien");
        let path = dir.join("group.log");
        let mut bytes = Vec::new();
        record(99, b"?", &mut bytes);
        std::fs::write(&path, &bytes).expect("write");
        let err = FileLog::<Nop>::open(&path).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("unknown record kind 99"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
