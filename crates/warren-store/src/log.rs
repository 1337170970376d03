//! [`SegmentLog`]: one queue's messages, as segment files plus one ack file per segment.
//!
//! Responsibilities: append records with contiguous seqs, stream them back in seq order skipping
//! settled ones, record settles, delete a segment once every record in it is settled, and rebuild
//! exactly the unsettled persistent set at [`SegmentLog::open`]. The byte layout lives in
//! `format.rs` and docs/store-format.md.
//!
//! Invariants:
//! - Segment `base` (its file name) holds exactly seqs `base..base + records`; bases increase
//!   with the file names; seqs of different segments never overlap.
//! - In memory there is no per-record state for unsettled records: per segment two counters and,
//!   only once something in it is settled, a bitmap of one bit per record.
//! - Recovery never hands out a seq that any surviving file mentions, so an ack entry that outlived
//!   its (unsynced, lost) record cannot settle a later record that reuses the seq.
//! - Writes are buffered in the log (no syscall per record); `pending_sync` flushes every buffer
//!   before handing out sync handles, so syncing them covers every call made before it.
//! - A failed write (ENOSPC, EIO) never poisons the log: an append is refused whole, buffered
//!   bytes stay buffered and are written again later (the backend's appends are all or nothing),
//!   settles that could not be written are owed and written again from the settled bitmap, and
//!   file removals are retried. A round of `pending_sync` that could not write (or whose
//!   segment's previous sync failed) hands out one failing handle, so nothing it covers is
//!   confirmed. A segment whose sync failed takes no more appends: its unsynced bytes may be
//!   lost, and later records must not sit behind the hole. [`SegmentLog::trouble`] says why the
//!   log is degraded until a round writes everything again.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{AppendFile, Backend, SyncHandle};
use crate::bitmap::Bitmap;
use crate::format::{
    check_record, encode_header, encode_record, record_header, scan_acks, scan_segment, AckEntry, FileKind,
    UnknownVersion, ACK_ENTRY_LEN, FILE_HEADER_LEN, MAX_PAYLOAD_BYTES, REC_HEADER_LEN,
};

/// Appended bytes are flushed to the backend once a file's buffer reaches this. Why: one write
/// syscall per this many bytes instead of one per record, while bounding the memory per log.
pub const WRITE_BUF_BYTES: usize = 64 << 10;
/// Reads fetch segments in chunks of this many bytes (more only for a larger record). Why: a
/// sequential reader costs one read call per chunk, and a reader holds at most this much.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// At most this many ack files are kept open for writing; the least recently used is flushed and
/// closed beyond it. Why: settles cluster in the oldest segments, and a queue with thousands of
/// segments must not hold thousands of file descriptors.
pub const ACK_WRITERS_OPEN: usize = 4;

const SEG_SUFFIX: &str = ".seg";
const ACK_SUFFIX: &str = ".ack";
/// Segment and ack files are named by their base seq in this many zero-padded decimal digits, so
/// that sorting names sorts bases (u64::MAX has 20 digits).
const NAME_DIGITS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is closed (and a new one started at the next append) once it holds this many
    /// bytes. Bigger segments mean fewer files; smaller ones give space back sooner.
    pub segment_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { segment_bytes: 8 << 20 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub persistent: bool,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Unsettled persistent records found (what the queue holds after restart).
    pub unsettled: u64,
    /// Highest seq ever marked delivered (mark_delivered) and persisted, if any: recovered records
    /// with seq <= this are to be redelivered with redelivered=true.
    pub delivered_through: Option<u64>,
    pub corrupt: Vec<Corruption>,
    /// Segments that lost their records (see [`Lost`]).
    pub lost: Vec<Lost>,
}

/// A segment file that holds no record although later segments exist (empty, cut to its header,
/// or cut inside its first record): a segment file is created with its first record and a later
/// one only once it is full, so its records were lost. They may never have been confirmed (a
/// crash in a sync round that made a later segment durable first); the store cannot tell.
/// Recovery deletes the empty file, so it is reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub path: PathBuf,
    /// The seqs `first_seq..end_seq` are missing: at most `end_seq - first_seq` messages.
    pub first_seq: u64,
    pub end_seq: u64,
}

/// Per-segment bookkeeping: a few dozen bytes, plus one bit per record once anything is settled.
#[derive(Debug, Default)]
struct Segment {
    records: u64,
    settled: u64,
    settled_bits: Option<Bitmap>,
    /// Logical length of the segment file, including bytes still in the write buffer.
    seg_len: u64,
    /// Logical length of the ack file; 0 if there is none.
    ack_len: u64,
    /// Part of the file could not be read at recovery; never appended to again, never deleted.
    corrupt: bool,
    /// Settles of this segment could not be written or synced: the next `pending_sync` writes
    /// the whole settled state again (entries are idempotent).
    ack_owed: bool,
}

impl Segment {
    /// Settles seqs `from..to` (clamped to this segment); returns how many were unsettled.
    fn settle_span(&mut self, base: u64, from: u64, to: u64) -> u64 {
        let end = base + self.records;
        let (from, to) = (from.max(base), to.min(end));
        if from >= to {
            return 0;
        }
        let newly = self.settled_bits.get_or_insert_with(Bitmap::default).set_range(from - base, to - base);
        self.settled += newly;
        debug_assert!(self.settled <= self.records);
        newly
    }

    fn is_settled(&self, base: u64, seq: u64) -> bool {
        self.settled_bits.as_ref().is_some_and(|b| b.get(seq - base))
    }

    fn fully_settled(&self) -> bool {
        self.settled == self.records
    }

    /// Everything settled and nothing to keep: a corrupt segment stays (quarantined, reported at
    /// every open) until an operator removes it or the log is destroyed.
    fn deletable(&self) -> bool {
        self.fully_settled() && !self.corrupt
    }
}

/// A file being appended to, with the log's write buffer in front of it.
#[derive(Debug)]
struct Writer {
    base: u64,
    file: Box<dyn AppendFile>,
    buf: Vec<u8>,
    /// Written since the last `pending_sync` (its sync handle is in `pending`).
    dirty: bool,
    /// The last ack entry still in `buf` and where it starts: a following settle that continues
    /// it is merged into it, so in-order acks cost one entry per flush, not one per record.
    last_ack: Option<(usize, AckEntry)>,
}

impl Writer {
    fn new(base: u64, file: Box<dyn AppendFile>) -> Self {
        Writer { base, file, buf: Vec::new(), dirty: false, last_ack: None }
    }

    /// Hands the buffer to the file. On error the buffer is kept whole (and the file is as it
    /// was), to be written again by a later flush.
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.append(&self.buf)?;
            self.buf.clear();
            self.last_ack = None;
        }
        Ok(())
    }

    /// Buffers an ack entry; returns the bytes it added to the file (0 when merged).
    fn push_ack(&mut self, entry: AckEntry) -> u64 {
        if let (Some((at, last)), Some((from, to))) = (self.last_ack, settle_span(entry)) {
            if let Some((a, b)) = settle_span(last) {
                if b == from {
                    let merged = AckEntry::SettleRange(a, to);
                    merged.encode_into(&mut self.buf[at..at + ACK_ENTRY_LEN]);
                    self.last_ack = Some((at, merged));
                    return 0;
                }
            }
        }
        self.last_ack = Some((self.buf.len(), entry));
        entry.encode(&mut self.buf);
        ACK_ENTRY_LEN as u64
    }
}

fn settle_span(entry: AckEntry) -> Option<(u64, u64)> {
    match entry {
        AckEntry::Settle(seq) => Some((seq, seq + 1)),
        AckEntry::SettleRange(from, to) => Some((from, to)),
        AckEntry::Delivered(_) => None,
    }
}

/// Where the last read ended: the record at `offset` of segment `base` has seq `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    base: u64,
    offset: u64,
    seq: u64,
}

/// A window of one segment's bytes: `data` is the file from offset `start`.
#[derive(Debug, Default)]
struct ReadBuf {
    base: Option<u64>,
    start: u64,
    data: Vec<u8>,
}

impl ReadBuf {
    /// Makes `need` bytes at `offset` available, reading a chunk (never past `file_len`, the
    /// segment's known length) if the window does not hold them.
    fn fill(
        &mut self,
        backend: &dyn Backend,
        path: &Path,
        (base, file_len): (u64, u64),
        offset: u64,
        need: u64,
    ) -> io::Result<()> {
        if self.base == Some(base) && offset >= self.start && offset + need <= self.start + self.data.len() as u64 {
            return Ok(());
        }
        self.base = None;
        let chunk = file_len.saturating_sub(offset).min(READ_CHUNK_BYTES as u64);
        let size = usize::try_from(need.max(chunk)).unwrap_or(usize::MAX);
        self.data.clear();
        self.data.resize(size, 0);
        let n = backend.read_at(path, offset, &mut self.data)?;
        self.data.truncate(n);
        if (n as u64) < need {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: record at offset {offset} is cut short", path.display()),
            ));
        }
        self.base = Some(base);
        self.start = offset;
        Ok(())
    }

    fn slice(&self, offset: u64, len: u64) -> &[u8] {
        let s = (offset - self.start) as usize;
        &self.data[s..s + len as usize]
    }
}

/// The sync handle handed out for a round that could not write its files: syncing it reports
/// the failure, so nothing the caller waits on is confirmed.
#[derive(Debug)]
struct FailedSync {
    kind: io::ErrorKind,
    message: String,
}

impl SyncHandle for FailedSync {
    fn sync(&self) -> io::Result<()> {
        Err(io::Error::new(self.kind, self.message.clone()))
    }
}

/// Which file a sync handle covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Seg(u64),
    Ack(u64),
    Dir,
    /// The entries of the directories the log's directory was created in.
    Parents,
}

/// Files whose sync failed, noted by the handles (on the syncing thread) for the log to act on
/// at its next `pending_sync`.
type SyncFailures = Arc<std::sync::Mutex<Vec<Tag>>>;

/// A backend sync handle that tells the log when its sync failed.
#[derive(Debug)]
struct TrackedSync {
    inner: Arc<dyn SyncHandle>,
    tag: Tag,
    failures: SyncFailures,
}

impl SyncHandle for TrackedSync {
    fn sync(&self) -> io::Result<()> {
        let r = self.inner.sync();
        if r.is_err() {
            self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(self.tag);
        }
        r
    }
}

#[derive(Debug)]
pub struct SegmentLog {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<u64, Segment>,
    /// The segment appends go to; `None` means the next append starts a new one at `next_seq`.
    active: Option<u64>,
    seg_writer: Option<Writer>,
    /// Open ack files, least recently used first; at most ACK_WRITERS_OPEN.
    ack_writers: Vec<Writer>,
    /// Sync handles of the files written since the last `pending_sync`.
    pending: Vec<(Tag, Arc<dyn SyncHandle>)>,
    /// Files were removed since the last `pending_sync`: the directory needs a sync too.
    removed_files: bool,
    /// The directory exists (it is made at the first write, so a log that is opened and
    /// destroyed without a write never touches the disk).
    dir_made: bool,
    /// Directories whose entries changed when the log's directory was made, to sync with the
    /// first writes; and those handed to the last round, synced again if that failed.
    parents_unsynced: Vec<PathBuf>,
    parents_in_flight: Vec<PathBuf>,
    next_seq: u64,
    unsettled: u64,
    delivered: Option<u64>,
    /// Segment whose ack file holds the newest delivered entry written.
    delivered_in: Option<u64>,
    /// `delivered` is newer than what the files say.
    delivered_dirty: bool,
    cursor: Option<Cursor>,
    rbuf: ReadBuf,
    /// Why the log is degraded (the first failure since it was last healthy), if it is.
    trouble: Option<String>,
    sync_failures: SyncFailures,
    /// Segments dropped from the bookkeeping whose files could not be removed yet.
    doomed: Vec<u64>,
    destroyed: bool,
}

fn parse_name(name: &str) -> Option<(u64, FileKind)> {
    let (digits, kind) = if let Some(d) = name.strip_suffix(SEG_SUFFIX) {
        (d, FileKind::Segment)
    } else {
        (name.strip_suffix(ACK_SUFFIX)?, FileKind::Ack)
    };
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, kind))
}

fn unknown_version(path: &Path, UnknownVersion(v): UnknownVersion) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: unsupported store format version {v}", path.display()))
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Refuses payloads the format cannot hold.
pub fn check_payload_len(len: usize) -> io::Result<()> {
    if len > MAX_PAYLOAD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("payload of {len} bytes exceeds the store limit of {MAX_PAYLOAD_BYTES}"),
        ));
    }
    Ok(())
}

/// What a read-only pass over a log directory found; [`SegmentLog::open`] then applies the
/// repairs it lists (cutting torn tails, removing orphaned ack files), `inspect` does not.
#[derive(Debug, Default)]
struct DirScan {
    segments: BTreeMap<u64, Segment>,
    /// One past every seq any file mentions (before the last segment is considered).
    next_seq: u64,
    delivered: Option<u64>,
    delivered_in: Option<u64>,
    corrupt: Vec<Corruption>,
    lost: Vec<Lost>,
    /// Files with a torn tail, and the length to cut them to.
    torn: Vec<(PathBuf, u64)>,
    /// Ack files whose segment no longer exists: their settles are moot.
    orphan_acks: Vec<PathBuf>,
}

fn seg_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0NAME_DIGITS$}{SEG_SUFFIX}"))
}

fn ack_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0NAME_DIGITS$}{ACK_SUFFIX}"))
}

/// Reads and validates every segment and ack file of `dir` (recovery steps 2 to 4 of
/// docs/store-format.md), changing nothing.
fn scan_dir(backend: &dyn Backend, dir: &Path) -> io::Result<DirScan> {
    let mut seg_bases = Vec::new();
    let mut ack_bases = Vec::new();
    for name in backend.list(dir)? {
        match parse_name(&name) {
            Some((base, FileKind::Segment)) => seg_bases.push(base),
            Some((base, FileKind::Ack)) => ack_bases.push(base),
            None => {}
        }
    }
    seg_bases.sort_unstable();
    ack_bases.sort_unstable();
    let mut out = DirScan::default();
    for base in seg_bases {
        scan_segment_file(backend, dir, base, &mut out)?;
    }
    note_lost_segments(dir, &mut out);
    for base in ack_bases {
        scan_ack_file(backend, dir, base, &mut out)?;
    }
    Ok(out)
}

fn scan_segment_file(backend: &dyn Backend, dir: &Path, base: u64, out: &mut DirScan) -> io::Result<()> {
    let path = seg_file(dir, base);
    let bytes = backend.read(&path)?;
    let scan = scan_segment(&bytes, base).map_err(|v| unknown_version(&path, v))?;
    drop(bytes);
    let mut seg = Segment {
        records: scan.records,
        seg_len: scan.valid_len,
        corrupt: scan.corruption.is_some(),
        ..Segment::default()
    };
    if let Some((offset, reason)) = scan.corruption {
        out.corrupt.push(Corruption { path: path.clone(), offset, reason });
    }
    if scan.torn {
        out.torn.push((path, scan.valid_len));
    }
    for t in scan.transient {
        seg.settle_span(base, base + t, base + t + 1);
    }
    // Never reuse a seq any surviving file mentions (see the module invariants).
    out.next_seq = out.next_seq.max(base.saturating_add(seg.records));
    if let Some(max) = scan.max_seq {
        out.next_seq = out.next_seq.max(max.saturating_add(1));
    }
    out.segments.insert(base, seg);
    Ok(())
}

/// A segment file is created with its first record and a later one only once it is full, so
/// an undamaged segment without a single record that is not the last one lost its records.
fn note_lost_segments(dir: &Path, out: &mut DirScan) {
    let bases: Vec<u64> = out.segments.keys().copied().collect();
    for pair in bases.windows(2) {
        let (base, next) = (pair[0], pair[1]);
        if out.segments.get(&base).is_some_and(|s| s.records == 0 && !s.corrupt) {
            out.lost.push(Lost { path: seg_file(dir, base), first_seq: base, end_seq: next });
        }
    }
}

fn scan_ack_file(backend: &dyn Backend, dir: &Path, base: u64, out: &mut DirScan) -> io::Result<()> {
    let path = ack_file(dir, base);
    let bytes = backend.read(&path)?;
    let mut seg = out.segments.get_mut(&base);
    let mut max_ref: Option<u64> = None;
    let mut delivered: Option<u64> = None;
    let scan = scan_acks(&bytes, |entry| {
        max_ref = max_ref.max(Some(entry.max_seq()));
        match entry {
            AckEntry::Settle(seq) => {
                if let Some(seg) = seg.as_deref_mut() {
                    seg.settle_span(base, seq, seq + 1);
                }
            }
            AckEntry::SettleRange(from, to) => {
                if let Some(seg) = seg.as_deref_mut() {
                    seg.settle_span(base, from, to);
                }
            }
            AckEntry::Delivered(seq) => delivered = delivered.max(Some(seq)),
        }
    })
    .map_err(|v| unknown_version(&path, v))?;
    drop(bytes);
    if let Some(max) = max_ref {
        out.next_seq = out.next_seq.max(max.saturating_add(1));
    }
    if delivered.is_some() && delivered > out.delivered {
        out.delivered = delivered;
        out.delivered_in = Some(base);
    }
    match seg {
        None => out.orphan_acks.push(path),
        Some(seg) => {
            if scan.torn {
                out.torn.push((path.clone(), scan.valid_len));
            }
            seg.ack_len = scan.valid_len;
            if let Some((offset, reason)) = scan.corruption {
                out.corrupt.push(Corruption { path, offset, reason });
            }
        }
    }
    Ok(())
}

impl SegmentLog {
    /// Opens (creating if absent) the log in `dir` and recovers it: validates every record's
    /// checksum; a torn or truncated tail of a segment is cut off (truncate); a corrupt record is
    /// reported in `corrupt` (path + byte offset + reason) and the rest of THAT segment after it
    /// is skipped, later segments are still read; records flagged non-persistent are treated as
    /// settled (transient messages do not survive a restart); settled records (from the ack
    /// files) are skipped. Never panics on any file content. Fails on I/O errors and on files of
    /// an unknown format version.
    pub fn open(backend: Arc<dyn Backend>, dir: &Path, config: LogConfig) -> io::Result<(SegmentLog, Recovered)> {
        let mut log = SegmentLog {
            backend,
            dir: dir.to_path_buf(),
            config,
            segments: BTreeMap::new(),
            active: None,
            seg_writer: None,
            ack_writers: Vec::new(),
            pending: Vec::new(),
            removed_files: false,
            dir_made: false,
            parents_unsynced: Vec::new(),
            parents_in_flight: Vec::new(),
            next_seq: 0,
            unsettled: 0,
            delivered: None,
            delivered_in: None,
            delivered_dirty: false,
            cursor: None,
            rbuf: ReadBuf::default(),
            trouble: None,
            sync_failures: SyncFailures::default(),
            doomed: Vec::new(),
            destroyed: false,
        };
        let recovered = log.recover()?;
        Ok((log, recovered))
    }

    fn recover(&mut self) -> io::Result<Recovered> {
        let scan = scan_dir(&*self.backend, &self.dir)?;
        for (path, len) in &scan.torn {
            self.backend.truncate(path, *len)?;
        }
        for path in &scan.orphan_acks {
            ignore_not_found(self.backend.remove_file(path))?;
        }
        self.segments = scan.segments;
        self.delivered = scan.delivered;
        self.delivered_in = scan.delivered_in;
        let mut next_seq = scan.next_seq;
        // Appends continue in the last segment only if it is healthy and ends exactly at next_seq;
        // otherwise the next append starts a new segment, named past the last one.
        if let Some((&last, seg)) = self.segments.last_key_value() {
            if !seg.corrupt && last + seg.records == next_seq {
                self.active = Some(last);
            } else {
                next_seq = next_seq.max(last.saturating_add(1));
            }
        }
        self.next_seq = next_seq;
        self.unsettled = self.segments.values().map(|s| s.records - s.settled).sum();
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(&base, seg)| seg.deletable() && Some(base) != self.active)
            .map(|(&base, _)| base)
            .collect();
        for base in done {
            self.delete_segment(base)?;
        }
        if self.delivered_in.is_some_and(|b| !self.segments.contains_key(&b)) {
            self.delivered_in = None;
            self.delivered_dirty = true;
        }
        Ok(Recovered {
            unsettled: self.unsettled,
            delivered_through: self.delivered,
            corrupt: scan.corrupt,
            lost: scan.lost,
        })
    }

    /// What the log in `dir` holds, found by the same validation as [`SegmentLog::open`] but
    /// without changing any file: nothing is truncated, removed or created. For a directory that
    /// recovery sets aside (its `unsettled` says how many messages it still holds).
    pub fn inspect(backend: &dyn Backend, dir: &Path) -> io::Result<Recovered> {
        let scan = scan_dir(backend, dir)?;
        Ok(Recovered {
            unsettled: scan.segments.values().map(|s| s.records - s.settled).sum(),
            delivered_through: scan.delivered,
            corrupt: scan.corrupt,
            lost: scan.lost,
        })
    }

    /// Appends a record; returns its seq (seqs are contiguous, starting at 0 for a new log,
    /// continuing after the highest seq seen on recovery). Rolls to a new segment file when the
    /// current one reaches segment_bytes. Not durable until a sync handle from `pending_sync` has
    /// been synced. Payloads over MAX_PAYLOAD_BYTES are refused with `InvalidInput`.
    ///
    /// A write that fails (ENOSPC, EIO) refuses this record whole and changes nothing: the
    /// caller may append again later.
    pub fn append(&mut self, payload: &[u8], persistent: bool) -> io::Result<u64> {
        check_payload_len(payload.len())?;
        let r = self.append_inner(payload, persistent);
        r.map_err(|e| self.note(e))
    }

    fn append_inner(&mut self, payload: &[u8], persistent: bool) -> io::Result<u64> {
        let full = match self.active.and_then(|b| self.segments.get(&b)) {
            None => true,
            Some(seg) => seg.records > 0 && seg.seg_len >= self.config.segment_bytes,
        };
        if full {
            self.roll()?;
        }
        let base = self.open_seg_writer()?;
        let seq = self.next_seq;
        let (Some(w), Some(seg)) = (self.seg_writer.as_mut(), self.segments.get_mut(&base)) else {
            return Err(io::Error::other("segment writer missing after open"));
        };
        debug_assert_eq!(base + seg.records, seq);
        // A full buffer goes to the file before this record joins it: if that write fails, this
        // record is refused whole and the buffer is kept for a later try.
        if w.buf.len() >= WRITE_BUF_BYTES {
            w.flush()?;
        }
        let before = w.buf.len();
        encode_record(&mut w.buf, seq, persistent, payload);
        seg.seg_len += (w.buf.len() - before) as u64;
        seg.records += 1;
        mark_dirty(&mut self.pending, w, Tag::Seg(base));
        self.next_seq += 1;
        self.unsettled += 1;
        Ok(seq)
    }

    /// Closes the active segment (deleting it if everything in it is settled) and starts a new
    /// one at `next_seq`.
    fn roll(&mut self) -> io::Result<()> {
        if let Some(w) = self.seg_writer.as_mut() {
            w.flush()?;
        }
        self.seg_writer = None;
        if let Some(old) = self.active.take() {
            if self.segments.get(&old).is_some_and(Segment::fully_settled) {
                self.delete_segment(old)?;
            }
        }
        debug_assert!(self.segments.keys().next_back().is_none_or(|&b| b < self.next_seq));
        self.segments.insert(self.next_seq, Segment::default());
        self.active = Some(self.next_seq);
        Ok(())
    }

    /// Makes the log's directory before its first file: the new entries become durable with
    /// the first round's syncs ([`Backend::create_dir_all_deferred`]), not here.
    fn make_dir(&mut self) -> io::Result<()> {
        if !self.dir_made {
            let changed = self.backend.create_dir_all_deferred(&self.dir)?;
            self.parents_unsynced.extend(changed);
            self.dir_made = true;
        }
        Ok(())
    }

    /// Makes sure `seg_writer` writes the active segment; returns its base.
    fn open_seg_writer(&mut self) -> io::Result<u64> {
        let Some(base) = self.active else {
            return Err(io::Error::other("no active segment"));
        };
        if self.seg_writer.as_ref().is_some_and(|w| w.base == base) {
            return Ok(base);
        }
        if let Some(w) = self.seg_writer.as_mut() {
            w.flush()?;
        }
        self.seg_writer = None;
        self.make_dir()?;
        let file = self.backend.open_append(&self.seg_path(base))?;
        let Some(seg) = self.segments.get_mut(&base) else {
            return Err(io::Error::other("active segment missing"));
        };
        if file.len() != seg.seg_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {base}: file is {} bytes, expected {}", file.len(), seg.seg_len),
            ));
        }
        let mut w = Writer::new(base, file);
        if seg.seg_len == 0 {
            encode_header(FileKind::Segment, &mut w.buf);
            seg.seg_len = FILE_HEADER_LEN as u64;
            mark_dirty(&mut self.pending, &mut w, Tag::Seg(base));
        }
        self.seg_writer = Some(w);
        Ok(base)
    }

    /// Up to max_records records (and stopping once max_bytes of payload is reached, but always
    /// at least one if any) with seq >= from_seq, unsettled only, in seq order. A read that
    /// continues where the last one ended resumes from a cursor; one starting elsewhere scans its
    /// segment from the start. A record failing its checksum now (damage since open) is an
    /// `InvalidData` error naming the file and offset.
    pub fn read(&mut self, from_seq: u64, max_records: usize, max_bytes: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        if max_records == 0 || from_seq >= self.next_seq {
            return Ok(out);
        }
        let Some(mut cur) = self.start_position(from_seq) else {
            return Ok(out);
        };
        let mut bytes = 0usize;
        let mut at_end = false;
        let mut path: Option<(u64, PathBuf)> = None;
        loop {
            let Some(seg) = self.segments.get(&cur.base) else {
                at_end = true;
                break;
            };
            if cur.seq >= cur.base + seg.records {
                match self.segments.range(cur.base + 1..).next() {
                    Some((&next, _)) => {
                        cur = Cursor { base: next, offset: FILE_HEADER_LEN as u64, seq: next };
                        continue;
                    }
                    None => {
                        at_end = true;
                        break;
                    }
                }
            }
            if let Some(w) = self.seg_writer.as_mut().filter(|w| w.base == cur.base && !w.buf.is_empty()) {
                let r = w.flush();
                r.map_err(|e| self.note(e))?;
            }
            let Some(seg) = self.segments.get(&cur.base) else { continue };
            if path.as_ref().is_none_or(|(b, _)| *b != cur.base) {
                path = Some((cur.base, self.seg_path(cur.base)));
            }
            let Some((_, path)) = path.as_ref() else { continue };
            self.rbuf.fill(&*self.backend, path, (cur.base, seg.seg_len), cur.offset, REC_HEADER_LEN as u64)?;
            let h = record_header(self.rbuf.slice(cur.offset, REC_HEADER_LEN as u64))
                .ok_or_else(|| io::Error::other("short record header"))?;
            if h.seq != cur.seq {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: offset {}: expected seq {}, found {}", path.display(), cur.offset, cur.seq, h.seq),
                ));
            }
            let total = h.total_len();
            let wanted = cur.seq >= from_seq && !seg.is_settled(cur.base, cur.seq);
            if wanted {
                self.rbuf.fill(&*self.backend, path, (cur.base, seg.seg_len), cur.offset, total)?;
                let raw = self.rbuf.slice(cur.offset, total);
                let h = check_record(raw).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: offset {}: {e}", path.display(), cur.offset),
                    )
                })?;
                out.push(Record {
                    seq: h.seq,
                    persistent: h.flags & crate::format::FLAG_PERSISTENT != 0,
                    payload: Bytes::copy_from_slice(&raw[REC_HEADER_LEN..]),
                });
                bytes = bytes.saturating_add(h.len as usize);
            }
            cur.offset += total;
            cur.seq += 1;
            if wanted && (out.len() >= max_records || bytes >= max_bytes) {
                break;
            }
        }
        self.cursor = Some(cur);
        if at_end || self.rbuf.data.capacity() > 4 * READ_CHUNK_BYTES {
            // A reader that caught up (or just read a huge record) holds no buffer.
            self.rbuf = ReadBuf::default();
        }
        Ok(out)
    }

    /// Where a read of `from_seq` starts: the cursor if it is in the right segment at or before
    /// `from_seq`, else the start of the segment holding (or first following) `from_seq`.
    fn start_position(&self, from_seq: u64) -> Option<Cursor> {
        let target = match self.segments.range(..=from_seq).next_back() {
            Some((&base, seg)) if from_seq < base + seg.records => base,
            _ => *self.segments.range(from_seq + 1..).next()?.0,
        };
        match self.cursor {
            Some(c) if c.base == target && c.seq <= from_seq => Some(c),
            _ => Some(Cursor { base: target, offset: FILE_HEADER_LEN as u64, seq: target }),
        }
    }

    /// Marks a record settled (acked / dropped); idempotent; records it in the segment's ack file
    /// (no fsync). When every record of a segment other than the one being written is settled,
    /// the segment and its ack file are deleted (unless recovery found it damaged: see
    /// docs/store-format.md). Seqs that do not exist are ignored.
    ///
    /// A settle that cannot be written now is owed, not lost: the next `pending_sync` writes the
    /// segment's settled state again.
    pub fn settle(&mut self, seq: u64) -> io::Result<()> {
        self.settle_span(seq, seq.saturating_add(1))
    }

    /// Settles every unsettled record with from <= seq < to (purge of a range), writing one range
    /// entry per segment touched, none per record.
    pub fn settle_range(&mut self, from: u64, to: u64) -> io::Result<()> {
        self.settle_span(from, to)
    }

    fn settle_span(&mut self, from: u64, to: u64) -> io::Result<()> {
        if from >= to {
            return Ok(());
        }
        // The segment holding `from`, then every later one starting before `to`.
        let mut next = self.segments.range(..=from).next_back().map_or(from, |(&b, _)| b);
        while let Some((&base, _)) = self.segments.range(next..to).next() {
            next = base + 1;
            let Some(seg) = self.segments.get_mut(&base) else { continue };
            let (lo, hi) = (from.max(base), to.min(base + seg.records));
            let newly = seg.settle_span(base, lo, hi);
            if newly == 0 {
                continue;
            }
            self.unsettled -= newly;
            let (deletable, owed) = (seg.deletable(), seg.ack_owed);
            if deletable && Some(base) != self.active {
                self.delete_segment(base)?;
            } else if owed {
                // The whole settled state is written again at the next pending_sync.
            } else {
                let entry = if hi - lo == 1 { AckEntry::Settle(lo) } else { AckEntry::SettleRange(lo, hi) };
                if let Err(e) = self.write_ack(base, entry) {
                    self.owe_acks(base, e);
                }
            }
        }
        Ok(())
    }

    /// Settles of segment `base` could not be written: drop its ack writer (what it buffered
    /// is written again with the rest) and owe the whole settled state.
    fn owe_acks(&mut self, base: u64, e: io::Error) {
        self.note(e);
        self.ack_writers.retain(|w| w.base != base);
        self.pending.retain(|(t, _)| *t != Tag::Ack(base));
        if let Some(seg) = self.segments.get_mut(&base) {
            seg.ack_owed = true;
        }
        if self.delivered_in == Some(base) {
            self.delivered_in = None;
            self.delivered_dirty = self.delivered.is_some();
        }
    }

    /// Writes the ack file of every segment that owes it afresh: cut to nothing (after a failed
    /// write or sync its bytes cannot be trusted), then the header and the settled state as
    /// range entries. A crash before the next sync may bring those records back (at-least-once).
    fn write_owed_acks(&mut self) {
        let owed: Vec<u64> = self.segments.iter().filter(|(_, s)| s.ack_owed).map(|(&b, _)| b).collect();
        for base in owed {
            let Some(seg) = self.segments.get(&base) else { continue };
            if seg.deletable() && Some(base) != self.active {
                let _ = self.delete_segment(base);
                continue;
            }
            if seg.ack_len > 0 {
                if let Err(e) = ignore_not_found(self.backend.truncate(&self.ack_path(base), 0)) {
                    self.note(e);
                    continue;
                }
            }
            let Some(seg) = self.segments.get_mut(&base) else { continue };
            seg.ack_owed = false;
            seg.ack_len = 0;
            let runs = seg.settled_bits.as_ref().map(|b| b.runs(seg.records)).unwrap_or_default();
            for (from, to) in runs {
                let entry = if to - from == 1 {
                    AckEntry::Settle(base + from)
                } else {
                    AckEntry::SettleRange(base + from, base + to)
                };
                if let Err(e) = self.write_ack(base, entry) {
                    self.owe_acks(base, e);
                    break;
                }
            }
        }
    }

    /// Notes that records up to and including `seq` have been delivered at least once. Persisted
    /// as one ack entry, written by the next `pending_sync` and only if the value grew.
    pub fn mark_delivered(&mut self, seq: u64) {
        let Some(last) = self.next_seq.checked_sub(1) else { return };
        let seq = seq.min(last);
        if self.delivered.is_some_and(|d| d >= seq) {
            return;
        }
        self.delivered = Some(seq);
        self.delivered_dirty = true;
    }

    /// Records appended and not settled.
    pub fn unsettled(&self) -> u64 {
        self.unsettled
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sync handles of every file written since the last call (segment and ack files), plus one
    /// for the directory if files were deleted, or empty if nothing was written. Syncing them all
    /// makes every append and settle made before this call durable. If the segment cannot be
    /// written now, or its previous sync failed, the one handle returned fails (and the same
    /// bytes are tried again at the next call).
    pub fn pending_sync(&mut self) -> Vec<Arc<dyn SyncHandle>> {
        self.take_pending(true)
    }

    /// As [`SegmentLog::pending_sync`], but the ack files' handles stay pending (their bytes are
    /// still handed to the file system): a sync of the returned handles makes every append
    /// durable, and the settles are made durable by a later [`SegmentLog::pending_sync`]. Until
    /// then a crash may bring settled records back, never lose an appended one.
    pub fn pending_sync_appends(&mut self) -> Vec<Arc<dyn SyncHandle>> {
        self.take_pending(false)
    }

    /// True when some file was written and not yet handed out for a sync.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.removed_files || self.delivered_dirty || !self.parents_unsynced.is_empty()
    }

    fn take_pending(&mut self, acks: bool) -> Vec<Arc<dyn SyncHandle>> {
        let mut failure = self.absorb_sync_failures();
        self.retry_removals();
        self.write_owed_acks();
        if let Err(e) = self.flush_all() {
            failure.get_or_insert(e);
        }
        if let Some(e) = failure {
            let e = self.note(e);
            return vec![Arc::new(FailedSync { kind: e.kind(), message: e.to_string() })];
        }
        for w in self.seg_writer.iter_mut().chain(self.ack_writers.iter_mut()) {
            w.dirty = false;
            // Idle logs hold no buffer; a busy one re-grows it within a few appends.
            w.buf = Vec::new();
        }
        let mut handles: Vec<Arc<dyn SyncHandle>> = Vec::with_capacity(self.pending.len());
        let failures = &self.sync_failures;
        self.pending.retain(|(tag, h)| {
            let take = acks || matches!(tag, Tag::Seg(_));
            if take {
                handles.push(Arc::new(TrackedSync { inner: h.clone(), tag: *tag, failures: failures.clone() }));
            }
            !take
        });
        for dir in &self.parents_unsynced {
            // The log's directory itself, made since the last round: its files are durable only
            // once its entry is.
            let inner = self.backend.dir_sync_handle(dir);
            handles.push(Arc::new(TrackedSync { inner, tag: Tag::Parents, failures: failures.clone() }));
        }
        self.parents_in_flight = std::mem::take(&mut self.parents_unsynced);
        if std::mem::take(&mut self.removed_files) {
            // A settle that deleted a segment is durable only once the removal is.
            let inner = self.backend.dir_sync_handle(&self.dir);
            handles.push(Arc::new(TrackedSync { inner, tag: Tag::Dir, failures: failures.clone() }));
        }
        if self.trouble.is_some() && self.doomed.is_empty() && !self.segments.values().any(|s| s.ack_owed) {
            // Everything owed is written again; the syncs of this round say the rest.
            self.trouble = None;
        }
        handles
    }

    /// Acts on the syncs that failed since the last round. A segment's unsynced bytes may be
    /// gone (the OS may drop dirty pages after a failed fsync and report it once): it takes no
    /// more appends, and this round fails too, since what it wrote to that file since sits
    /// behind the possible hole. Settles are owed again; removals are synced again.
    fn absorb_sync_failures(&mut self) -> Option<io::Error> {
        let failed = std::mem::take(&mut *self.sync_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut failure = None;
        let mut parents_failed = false;
        for tag in failed {
            match tag {
                Tag::Seg(base) => {
                    if self.active == Some(base) {
                        if let Err(e) = self.seal_active() {
                            // Not sealed yet: every round fails until it is.
                            self.sync_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tag);
                            failure.get_or_insert(e);
                        }
                    }
                    failure.get_or_insert_with(|| {
                        io::Error::other(format!("a sync of {} failed", self.seg_path(base).display()))
                    });
                }
                Tag::Ack(base) => {
                    self.owe_acks(base, io::Error::other(format!("a sync of {} failed", self.ack_path(base).display())))
                }
                Tag::Dir => self.removed_files = true,
                Tag::Parents => {
                    parents_failed = true;
                    failure.get_or_insert_with(|| {
                        io::Error::other(format!("a sync of the directories holding {} failed", self.dir.display()))
                    });
                }
            }
        }
        let in_flight = std::mem::take(&mut self.parents_in_flight);
        if parents_failed {
            self.parents_unsynced.splice(0..0, in_flight);
        }
        failure
    }

    /// Writes out the active segment and closes it: the next append starts a new segment.
    fn seal_active(&mut self) -> io::Result<()> {
        if let Some(w) = self.seg_writer.as_mut() {
            w.flush()?;
        }
        self.seg_writer = None;
        self.active = None;
        Ok(())
    }

    /// Removes the files of segments whose removal failed before.
    fn retry_removals(&mut self) {
        for base in std::mem::take(&mut self.doomed) {
            self.remove_segment_files(base);
        }
    }

    /// Hands every buffer to the files. Only a segment's failure is an error (appends wait on
    /// it); an ack file's is owed and written again later.
    fn flush_all(&mut self) -> io::Result<()> {
        if self.delivered_dirty {
            if let (Some(d), Some(base)) =
                (self.delivered, self.active.or(self.segments.last_key_value().map(|e| *e.0)))
            {
                match self.write_ack(base, AckEntry::Delivered(d)) {
                    Ok(()) => {
                        self.delivered_in = Some(base);
                        self.delivered_dirty = false;
                    }
                    Err(e) => self.owe_acks(base, e),
                }
            }
        }
        let mut failed_acks = Vec::new();
        for w in self.ack_writers.iter_mut() {
            if let Err(e) = w.flush() {
                failed_acks.push((w.base, e));
            }
        }
        for (base, e) in failed_acks {
            self.owe_acks(base, e);
        }
        if let Some(w) = self.seg_writer.as_mut() {
            w.flush()?;
        }
        Ok(())
    }

    /// Why the log is degraded, if it is: the first write or sync failure since it was last
    /// healthy. It is healthy again once a `pending_sync` has written everything it owed.
    pub fn trouble(&self) -> Option<&str> {
        self.trouble.as_deref()
    }

    /// Bytes on disk (segments + ack files), counting bytes still buffered for writing.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.seg_len + s.ack_len).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Heap and inline bytes of the log's in-memory state: per-segment bookkeeping, settle
    /// bitmaps and I/O buffers. It grows with segments and settled-but-undeleted records (one bit
    /// each), never with unsettled records.
    pub fn bookkeeping_bytes(&self) -> usize {
        let per_segment = std::mem::size_of::<(u64, Segment)>();
        let bitmaps: usize =
            self.segments.values().filter_map(|s| s.settled_bits.as_ref()).map(Bitmap::heap_bytes).sum();
        let buffers: usize =
            self.seg_writer.iter().chain(self.ack_writers.iter()).map(|w| w.buf.capacity()).sum::<usize>()
                + self.rbuf.data.capacity();
        std::mem::size_of::<Self>()
            + self.segments.len() * per_segment
            + bitmaps
            + buffers
            + self.pending.capacity() * std::mem::size_of::<(Tag, Arc<dyn SyncHandle>)>()
    }

    /// Deletes the log's directory (queue deleted).
    pub fn destroy(mut self) -> io::Result<()> {
        self.destroyed = true;
        self.seg_writer = None;
        self.ack_writers.clear();
        self.backend.remove_dir_all(&self.dir)
    }

    /// Buffers an ack entry for segment `base`, opening its ack file if needed.
    fn write_ack(&mut self, base: u64, entry: AckEntry) -> io::Result<()> {
        let i = self.ack_writer(base)?;
        let w = &mut self.ack_writers[i];
        let added = w.push_ack(entry);
        if let Some(seg) = self.segments.get_mut(&base) {
            seg.ack_len += added;
        }
        mark_dirty(&mut self.pending, w, Tag::Ack(base));
        if w.buf.len() >= WRITE_BUF_BYTES {
            w.flush()?;
        }
        Ok(())
    }

    /// Index in `ack_writers` of the (now most recently used) writer of segment `base`.
    fn ack_writer(&mut self, base: u64) -> io::Result<usize> {
        if let Some(i) = self.ack_writers.iter().position(|w| w.base == base) {
            let w = self.ack_writers.remove(i);
            self.ack_writers.push(w);
            return Ok(self.ack_writers.len() - 1);
        }
        if self.ack_writers.len() >= ACK_WRITERS_OPEN {
            // Its sync handle, if it was written, is already in `pending`.
            let mut oldest = self.ack_writers.remove(0);
            if let Err(e) = oldest.flush() {
                self.owe_acks(oldest.base, e);
            }
        }
        self.make_dir()?;
        let file = self.backend.open_append(&self.ack_path(base))?;
        let Some(seg) = self.segments.get_mut(&base) else {
            return Err(io::Error::other("ack for a segment that does not exist"));
        };
        let mut w = Writer::new(base, file);
        if seg.ack_len == 0 {
            encode_header(FileKind::Ack, &mut w.buf);
            seg.ack_len = FILE_HEADER_LEN as u64;
            mark_dirty(&mut self.pending, &mut w, Tag::Ack(base));
        }
        self.ack_writers.push(w);
        Ok(self.ack_writers.len() - 1)
    }

    /// Removes a segment and its ack file; the next `pending_sync` adds a directory sync that
    /// makes the removal durable. The segment file goes first: if a crash keeps only the first
    /// removal, the orphaned ack file is dropped at recovery.
    fn delete_segment(&mut self, base: u64) -> io::Result<()> {
        if self.segments.remove(&base).is_none() {
            return Ok(());
        }
        self.ack_writers.retain(|w| w.base != base);
        if self.seg_writer.as_ref().is_some_and(|w| w.base == base) {
            self.seg_writer = None;
        }
        if self.cursor.is_some_and(|c| c.base == base) {
            self.cursor = None;
        }
        if self.rbuf.base == Some(base) {
            self.rbuf = ReadBuf::default();
        }
        if self.delivered_in == Some(base) {
            // The newest delivered entry goes with this file; write it again elsewhere.
            self.delivered_in = None;
            self.delivered_dirty = self.delivered.is_some();
        }
        self.removed_files = true;
        self.remove_segment_files(base);
        Ok(())
    }

    /// Removes a deleted segment's files; one that cannot be removed now is retried at the next
    /// `pending_sync` (until then a crash brings its records back: at-least-once).
    fn remove_segment_files(&mut self, base: u64) {
        let r = ignore_not_found(self.backend.remove_file(&self.seg_path(base)))
            .and_then(|()| ignore_not_found(self.backend.remove_file(&self.ack_path(base))));
        if let Err(e) = r {
            self.note(e);
            self.doomed.push(base);
        }
    }

    fn seg_path(&self, base: u64) -> PathBuf {
        seg_file(&self.dir, base)
    }

    fn ack_path(&self, base: u64) -> PathBuf {
        ack_file(&self.dir, base)
    }

    /// Records a failure as the reason the log is degraded (the first one counts).
    fn note(&mut self, e: io::Error) -> io::Error {
        self.trouble.get_or_insert_with(|| format!("{}: {e}", self.dir.display()));
        e
    }
}

fn mark_dirty(pending: &mut Vec<(Tag, Arc<dyn SyncHandle>)>, w: &mut Writer, tag: Tag) {
    if !w.dirty {
        w.dirty = true;
        if !pending.iter().any(|(t, _)| *t == tag) {
            pending.push((tag, w.file.sync_handle()));
        }
    }
}

impl Drop for SegmentLog {
    /// Hands buffered bytes to the backend (not a sync): a clean shutdown then loses nothing the
    /// OS would keep. Errors are ignored; nothing unsynced was promised.
    fn drop(&mut self) {
        if !self.destroyed {
            let _ = self.flush_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_only_in_the_exact_form() {
        assert_eq!(parse_name("00000000000000000042.seg"), Some((42, FileKind::Segment)));
        assert_eq!(parse_name("00000000000000000042.ack"), Some((42, FileKind::Ack)));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_name("99999999999999999999.seg"), None);
        assert_eq!(parse_name("00000000000000000042.seg.tmp"), None);
    }

    #[test]
    fn payload_limit_at_and_one_past() {
        assert!(check_payload_len(MAX_PAYLOAD_BYTES).is_ok());
        assert_eq!(check_payload_len(MAX_PAYLOAD_BYTES + 1).map_err(|e| e.kind()), Err(io::ErrorKind::InvalidInput));
    }

    #[test]
    fn in_order_settles_merge_into_one_ack_entry() {
        let file = crate::backend::MemBackend::new();
        file.create_dir_all(Path::new("/a")).expect("dir");
        let mut w = Writer::new(0, file.open_append(Path::new("/a/x")).expect("open"));
        assert_eq!(w.push_ack(AckEntry::Settle(3)), ACK_ENTRY_LEN as u64);
        assert_eq!(w.push_ack(AckEntry::Settle(4)), 0);
        assert_eq!(w.push_ack(AckEntry::SettleRange(5, 9)), 0);
        assert_eq!(w.push_ack(AckEntry::Settle(11)), ACK_ENTRY_LEN as u64);
        assert_eq!(AckEntry::decode(&w.buf[..ACK_ENTRY_LEN]), Some(AckEntry::SettleRange(3, 9)));
    }
}
