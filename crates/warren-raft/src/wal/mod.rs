//! [`Wal`]: one write-ahead log per node, shared by every Raft group on the node, with group
//! commit (docs/clustering.md, "The durable log"); [`WalLog`]: one group's log on it.
//!
//! Every group's votes, appended entries, truncations, purges, committed ids, and its removal
//! ([`Wal::forget`]) are records tagged with the group's id, appended to a sequence of segment
//! files (`00000001.wal`, ...) in the node's WAL directory (the format is in `format`). One
//! writer thread takes every record waiting from all the groups, writes them in one go, syncs
//! once, and only then fires each waiting `LogFlushed` callback and completes each waiting vote
//! or truncation, so a follower is counted as holding an entry only once it is on its disk, and
//! many groups appending at once share one sync.
//!
//! Each group keeps its entries since its purge point in memory, in the same form
//! [`MemLog`](crate::MemLog) keeps; [`Wal::open`] rebuilds them by replaying every segment.
//!
//! # Segments and space
//!
//! The writer starts a new segment once the current one has reached
//! [`WalConfig::segment_bytes`] (between batches, so a segment may run over by one batch), and
//! every segment starts with a checkpoint record per live group: its vote, committed id, purge
//! point and end of log. A segment is deleted once no group needs a record in it: every live
//! group has purged (after a snapshot) past its entries there, or been forgotten, and it holds
//! no forget that older segments' records of that group still need. The latest vote of each
//! group survives because the segment after any deleted one starts with it (votes are not kept
//! apart). See `writer::Tracker::reclaimable` for the argument.
//!
//! # Recovery
//!
//! [`Wal::open`] replays the segments in order, each record checked against its CRC. A record
//! cut short or failing its checksum in the last segment is a write torn by a crash (nothing
//! after it was acknowledged: every acknowledgement waits for a sync of everything before it),
//! so the segment is cut back to the last whole record. The same in an earlier segment, or a
//! whole record that does not decode anywhere, is an error naming the file and the offset: the
//! WAL refuses to open rather than drop acknowledged records. The WAL then goes on in a new
//! segment.
//!
//! # Faults
//!
//! A failed write or sync answers the waiting callbacks with the error (openraft then stops
//! those groups), is counted in [`WalStats::failures`] with [`WalStats::last_error`], and stops
//! the WAL: every later write fails the same way, nothing is deleted, and reopening the
//! directory replays what reached the disk.
//!
//! One process opens a directory once at a time ([`Wal::open`] refuses a second); the last
//! handle dropped, or [`Wal::close`], finishes the writes sent before and closes the files.

mod format;
mod writer;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::codec;
use crate::log::{DurableLog, LogEntries};
use crate::types::{Entry, LogId, Types, Vote};
use crate::Machine;

use format::{Op, RawGroup};
use writer::{Batch, Done, Msg, Tracker, Writer};

/// Default size past which the WAL starts a new segment: 64 MiB.
pub const DEFAULT_WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Configuration of a node's [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// A new segment is started once the current one holds this many bytes.
    pub segment_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig { segment_bytes: DEFAULT_WAL_SEGMENT_BYTES }
    }
}

/// What a [`Wal`] has done since it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// `append` calls from the groups (each any number of entries).
    pub appends: u64,
    /// Records written (entries, votes, checkpoints, ...).
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Writes to a segment: one per batch.
    pub writes: u64,
    /// Syncs of a segment file.
    pub fsyncs: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Segment files deleted because nothing in them was needed any more.
    pub segments_deleted: u64,
    /// Failed writes or syncs (the first stops the WAL).
    pub failures: u64,
    /// The last error: a failed write or sync, or a segment that could not be deleted.
    pub last_error: Option<String>,
    /// Bytes of torn records cut off the last segment when the WAL was opened.
    pub cut_bytes: u64,
}

/// The counters behind [`WalStats`], shared by the handles and the writer.
#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    segments: AtomicU64,
    segments_deleted: AtomicU64,
    failures: AtomicU64,
    cut_bytes: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Why the writer stopped, until the WAL recovers.
    failed: Mutex<Option<String>>,
    /// How many bytes of each segment the writer has synced: what a power cut would leave.
    synced: Mutex<BTreeMap<u64, u64>>,
    /// Tests make the writer's next writes fail.
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

impl Counters {
    fn note(&self, error: String) {
        *self.last_error.lock() = Some(error);
    }
}

/// The directories a WAL of this process has open.
static OPEN_DIRS: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

/// This process's claim on a WAL directory, released when dropped.
struct Claim(PathBuf);

impl Claim {
    fn take(dir: PathBuf) -> io::Result<Claim> {
        let mut open = OPEN_DIRS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !open.insert(dir.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the WAL in {} is already open in this process", dir.display()),
            ));
        }
        Ok(Claim(dir))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        OPEN_DIRS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.0);
    }
}

/// A node's write-ahead log, shared by every group on the node; clones share it.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    segment_bytes: u64,
    /// The writer's channel and thread (a new writer after [`Wal::recover`]).
    tx: Mutex<mpsc::Sender<Msg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// Each group's log: as replayed (until the group's log is first taken) or as taken.
    groups: Mutex<HashMap<u64, Slot>>,
}

enum Slot {
    Replayed(RawGroup),
    /// An `Arc<Mutex<LogEntries<M>>>` for the group's machine `M`.
    Taken(Box<dyn Any + Send + Sync>),
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.tx.get_mut().send(Msg::Close(None));
        if let Some(thread) = self.thread.get_mut().take() {
            let _ = thread.join();
        }
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The segment files in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        let id = path
            .extension()
            .filter(|ext| *ext == "wal")
            .and_then(|_| path.file_stem())
            .and_then(|stem| stem.to_str())
            .filter(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(id) = id {
            found.push((id, path));
        }
    }
    found.sort();
    Ok(found)
}

impl Wal {
    /// Opens the WAL in `dir` (created if missing), replays every segment, and starts its
    /// writer thread. Fails if a segment other than the last is damaged, if a record does not
    /// decode, or if this process has the directory open already. It reads every segment
    /// before it returns: call it at startup or from a blocking context.
    pub fn open(dir: &Path, config: WalConfig) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let claim = Claim::take(dir.clone())?;
        let counters = Arc::new(Counters::default());
        let (tracker, groups) = replay(&dir, &counters)?;
        let segment_bytes = config.segment_bytes.max(1);
        let (tx, thread) = start_writer(&dir, segment_bytes, tracker, &counters, claim)?;
        let groups = groups.into_iter().map(|(id, raw)| (id, Slot::Replayed(raw))).collect();
        Ok(Wal {
            shared: Arc::new(Shared {
                dir,
                segment_bytes,
                tx: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
                counters,
                groups: Mutex::new(groups),
            }),
        })
    }

    /// Why the WAL stopped (a failed write or sync), if it did: until [`Wal::recover`]
    /// succeeds, every write fails.
    pub fn failure(&self) -> Option<String> {
        self.shared.counters.failed.lock().clone()
    }

    /// Starts a WAL that stopped on a failed write or sync again, in this process: closes its
    /// writer, cuts the current segment back to what was synced (after a failed sync, what the
    /// kernel holds past that cannot be trusted), replays the segments as [`Wal::open`] does,
    /// and starts a new writer in a new segment. Every group's log is then what the disk holds:
    /// every group on the WAL must be stopped before, and takes its log again ([`Wal::log`])
    /// to start after. Fails if the disk still refuses (full, say): the WAL stays stopped, and
    /// this may be called again. Blocks on the disk: call it from a blocking context.
    pub fn recover(&self) -> io::Result<()> {
        let shared = &self.shared;
        let mut thread = shared.thread.lock();
        if let Some(running) = thread.take() {
            let _ = shared.tx.lock().send(Msg::Close(None));
            let _ = running.join();
        }
        let synced = shared.counters.synced.lock().clone();
        if let Some((id, path)) = segments(&shared.dir)?.pop() {
            let keep = synced.get(&id).copied().unwrap_or(0);
            if keep == 0 {
                // Nothing of it was synced (a segment whose first write failed).
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => writer::sync_dir(&shared.dir)?,
                }
            } else {
                let file = std::fs::OpenOptions::new().write(true).open(&path)?;
                if file.metadata()?.len() > keep {
                    file.set_len(keep)?;
                    file.sync_all()?;
                }
            }
        }
        let claim = Claim::take(shared.dir.clone())?;
        let (tracker, groups) = replay(&shared.dir, &shared.counters)?;
        let (tx, running) = start_writer(&shared.dir, shared.segment_bytes, tracker, &shared.counters, claim)?;
        *shared.tx.lock() = tx;
        *thread = Some(running);
        *shared.groups.lock() = groups.into_iter().map(|(id, raw)| (id, Slot::Replayed(raw))).collect();
        *shared.counters.failed.lock() = None;
        Ok(())
    }

    /// The directory the WAL is in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Group `group`'s log on this WAL, for [`Group::start_with_log`](crate::Group::start_with_log)
    /// or [`Group::start_durable`](crate::Group::start_durable): what the WAL replayed for it,
    /// or an empty log for a group it has not seen. Taking a group's log again (after its
    /// group was shut down, say) gives a handle on the same log.
    ///
    /// Fails if a replayed entry does not decode as `M`'s, if the replayed log has a hole, or if
    /// the group's log was taken for another machine type.
    pub fn log<M: Machine>(&self, group: u64) -> io::Result<WalLog<M>> {
        let mut groups = self.shared.groups.lock();
        let log = match groups.remove(&group) {
            Some(Slot::Taken(any)) => {
                let log = any.downcast_ref::<Arc<Mutex<LogEntries<M>>>>().cloned();
                groups.insert(group, Slot::Taken(any));
                log.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("group {group}'s log was taken for another machine type"),
                    )
                })?
            }
            Some(Slot::Replayed(raw)) => match restore::<M>(group, &raw) {
                Ok(log) => Arc::new(Mutex::new(log)),
                Err(e) => {
                    groups.insert(group, Slot::Replayed(raw));
                    return Err(e);
                }
            },
            None => Arc::new(Mutex::new(LogEntries::new())),
        };
        groups.insert(group, Slot::Taken(Box::new(Arc::clone(&log))));
        Ok(WalLog { group, wal: self.clone(), log })
    }

    /// The groups the WAL holds a log for (replayed or taken), so that a host can forget the
    /// ones it no longer has.
    pub fn groups(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.shared.groups.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Deletes group `group` (its queue was deleted): all it wrote is released, and the WAL
    /// holds no log for it once this returns (a later [`log`](Self::log) starts an empty one).
    /// Call it once the group is shut down on this node.
    pub async fn forget(&self, group: u64) -> io::Result<()> {
        self.shared.groups.lock().remove(&group);
        let mut bytes = Vec::new();
        format::op_record(group, &Op::Forget, &mut bytes);
        self.send(group, vec![Op::Forget], bytes, None);
        self.flush().await
    }

    /// Waits until everything sent to the WAL before is written and synced (committed ids and
    /// purges included), and the segments that freed are deleted. Fails if the WAL stopped or
    /// was closed.
    pub async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let done: Done = Box::new(move |result| {
            let _ = tx.send(result);
        });
        if let Err(mpsc::SendError(Msg::Flush(done))) = self.shared.tx.lock().send(Msg::Flush(done)) {
            done(Err(writer::closed()));
        }
        rx.await.unwrap_or_else(|_| Err(writer::closed()))
    }

    /// Each segment file with how much of it the writer has synced, as of now: what a power
    /// cut now would leave of it (for crash tests, which cut the files back to this once the
    /// WAL is closed). A segment not listed has nothing synced.
    pub fn synced_extents(&self) -> Vec<(PathBuf, u64)> {
        let synced = self.shared.counters.synced.lock();
        synced.iter().map(|(id, bytes)| (writer::segment_path(&self.shared.dir, *id), *bytes)).collect()
    }

    /// What the WAL has done since it was opened.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            appends: c.appends.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            last_error: c.last_error.lock().clone(),
            cut_bytes: c.cut_bytes.load(Ordering::Relaxed),
        }
    }

    /// Finishes the writes sent before, closes the files and stops the writer; every handle's
    /// later writes fail. The directory can then be opened again.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.lock().send(Msg::Close(Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }

    /// Hands records to the writer; `done` is answered once they are written (and synced, if
    /// any must be durable), or with the error that kept them from it.
    fn send(&self, group: u64, ops: Vec<Op>, bytes: Vec<u8>, done: Option<Done>) {
        let batch = Batch { group, ops, bytes, done };
        if let Err(mpsc::SendError(Msg::Write(batch))) = self.shared.tx.lock().send(Msg::Write(batch)) {
            if let Some(done) = batch.done {
                done(Err(writer::closed()));
            }
        }
    }

    async fn write_and_wait(&self, group: u64, ops: Vec<Op>, bytes: Vec<u8>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let done: Done = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.send(group, ops, bytes, Some(done));
        rx.await.unwrap_or_else(|_| Err(writer::closed()))
    }

    #[cfg(test)]
    fn fail_writes(&self, fail: bool) {
        self.shared.counters.fail_writes.store(fail, Ordering::Relaxed);
    }
}

/// Replays every segment in `dir`: what the writer tracks of them, and each group's log. A
/// torn record in the last segment is cut off (counted in `counters`); damage elsewhere is an
/// error.
fn replay(dir: &Path, counters: &Counters) -> io::Result<(Tracker, HashMap<u64, RawGroup>)> {
    let mut tracker = Tracker::default();
    let mut groups: HashMap<u64, RawGroup> = HashMap::new();
    let found = segments(dir)?;
    for (n, (id, path)) in found.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        let mut held = bytes.len();
        tracker.segments.entry(*id).or_default();
        let damage = format::scan(&bytes, |group, kind, payload| {
            let op = format::decode(kind, payload)?;
            if let Op::Forget = op {
                groups.remove(&group);
            } else {
                groups.entry(group).or_default().apply(&op, payload);
            }
            tracker.apply(*id, group, &op);
            Ok(())
        })
        .map_err(|(at, e)| bad(format!("{}: record at byte {at}: {e}", path.display())))?;
        if let Some(damage) = damage {
            if n + 1 < found.len() {
                return Err(bad(format!(
                    "{}: {} at byte {}, and it is not the last segment: refusing to open the WAL \
                     (acknowledged records may follow)",
                    path.display(),
                    damage.why,
                    damage.at
                )));
            }
            // A write torn by a crash: nothing after the last whole record was acknowledged.
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(damage.at as u64)?;
            file.sync_all()?;
            counters.cut_bytes.fetch_add((bytes.len() - damage.at) as u64, Ordering::Relaxed);
            held = damage.at;
        }
        if let Some(segment) = tracker.segments.get_mut(id) {
            segment.bytes = held as u64;
        }
    }
    Ok((tracker, groups))
}

/// Starts a writer thread on the replayed segments.
fn start_writer(
    dir: &Path,
    segment_bytes: u64,
    tracker: Tracker,
    counters: &Arc<Counters>,
    claim: Claim,
) -> io::Result<(mpsc::Sender<Msg>, JoinHandle<()>)> {
    let writer = Writer::start(dir.to_path_buf(), segment_bytes, tracker, Arc::clone(counters), claim)?;
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new().name("warren-wal".into()).spawn(move || writer.run(rx))?;
    Ok((tx, thread))
}

/// A group's log as replayed, decoded for its machine and checked for holes.
fn restore<M: Machine>(group: u64, raw: &RawGroup) -> io::Result<LogEntries<M>> {
    let mut log = LogEntries::new();
    log.vote = raw.vote;
    log.committed = raw.committed;
    log.last_purged = raw.purged;
    let mut expected = raw.purged.map(|p| p.index + 1);
    for (index, bytes) in &raw.entries {
        let entry = codec::decode_entry::<M>(bytes)
            .map_err(|e| bad(format!("group {group}: the entry at index {index} does not decode: {e}")))?;
        if expected.is_some_and(|expected| expected != *index) {
            return Err(bad(format!(
                "group {group}: the replayed log has a hole: index {index} where {expected:?} was expected"
            )));
        }
        expected = Some(index + 1);
        log.entries.insert(*index, entry);
    }
    Ok(log)
}

/// One group's durable log on a node's [`Wal`]; clones share it.
///
/// Appends, votes and truncations are acknowledged once synced; purges and committed ids are
/// written with the next batch without being waited for (a purge that is lost in a crash is
/// done again, and the committed id is learnt again from the leader), but no segment is
/// deleted on a purge's account before it is synced.
pub struct WalLog<M: Machine> {
    group: u64,
    wal: Wal,
    log: Arc<Mutex<LogEntries<M>>>,
}

impl<M: Machine> Clone for WalLog<M> {
    fn clone(&self) -> Self {
        WalLog { group: self.group, wal: self.wal.clone(), log: Arc::clone(&self.log) }
    }
}

impl<M: Machine> WalLog<M> {
    /// The last index openraft said is committed (saved with the log; none before the first).
    pub fn committed_index(&self) -> Option<u64> {
        self.log.lock().committed.map(|c| c.index)
    }

    /// The group's id.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The WAL the log is on.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Whether the group has never written anything here: no entry, no vote, nothing purged
    /// (a member new to its group, or a group new to the cluster).
    pub fn is_pristine(&self) -> bool {
        let log = self.log.lock();
        log.entries.is_empty() && log.vote.is_none() && log.last_purged.is_none()
    }
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &io::Error) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

impl<M: Machine> RaftLogReader<Types<M>> for WalLog<M> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<M>>, StorageError<u64>> {
        Ok(self.log.lock().read(range))
    }
}

impl<M: Machine> RaftLogStorage<Types<M>> for WalLog<M> {
    type LogReader = WalLog<M>;

    async fn get_log_state(&mut self) -> Result<LogState<Types<M>>, StorageError<u64>> {
        Ok(self.log.lock().log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        let op = Op::Vote(*vote);
        let mut bytes = Vec::new();
        format::op_record(self.group, &op, &mut bytes);
        self.wal
            .write_and_wait(self.group, vec![op], bytes)
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        self.log.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        Ok(crate::types::startup_vote(self.log.lock().vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        let op = Op::Committed(committed);
        let mut bytes = Vec::new();
        format::op_record(self.group, &op, &mut bytes);
        self.log.lock().committed = committed;
        // Not waited for: a committed id lost in a crash is learnt again from the leader.
        self.wal.send(self.group, vec![op], bytes, None);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.log.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Types<M>>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.wal.shared.counters.appends.fetch_add(1, Ordering::Relaxed);
        let entries: Vec<Entry<M>> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        let mut ops = Vec::with_capacity(entries.len());
        for entry in &entries {
            // Encoded in place in its record.
            let at = bytes.len();
            let len = format::record_with(self.group, format::ENTRY, &mut bytes, |out| codec::encode_entry(entry, out));
            if bytes.len() - at > format::MAX_RECORD_BYTES {
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("an entry of {len} bytes is over the WAL's record limit"),
                );
                let error = io_error(ErrorSubject::Logs, ErrorVerb::Write, &e);
                callback.log_io_completed(Err(e));
                return Err(error);
            }
            ops.push(Op::Entry(entry.log_id.index));
        }
        // Readable at once (the leader replicates while its own copy is being synced); the
        // callback fires only once the writer has synced them.
        self.log.lock().extend(entries);
        let done: Done = Box::new(move |result| callback.log_io_completed(result));
        self.wal.send(self.group, ops, bytes, Some(done));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let op = Op::Truncate(log_id.index);
        let mut bytes = Vec::new();
        format::op_record(self.group, &op, &mut bytes);
        self.wal
            .write_and_wait(self.group, vec![op], bytes)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        self.log.lock().truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let upto = {
            let mut log = self.log.lock();
            debug_assert!(log.last_purged <= Some(log_id), "purge must not go backwards");
            log.purge_asked(log_id)
        };
        if let Some(upto) = upto {
            self.record_purge(upto);
        }
        Ok(())
    }
}

impl<M: Machine> WalLog<M> {
    /// Records a purge up to `upto`. Not waited for: purged entries that come back after a crash
    /// are purged again. The writer deletes segments on its account only after syncing it.
    fn record_purge(&self, upto: LogId) {
        let op = Op::Purge(upto);
        let mut bytes = Vec::new();
        format::op_record(self.group, &op, &mut bytes);
        self.wal.send(self.group, vec![op], bytes, None);
    }
}

impl<M: Machine> DurableLog for WalLog<M> {
    fn snapshot_durable(&self, last: Option<LogId>) {
        let upto = self.log.lock().snapshot_durable(last);
        if let Some(upto) = upto {
            self.record_purge(upto);
        }
    }
}

#[cfg(test)]
mod tests;
