//! The WAL's writer thread: group commit, segments, and reclaiming them.
//!
//! Every group's records reach the writer through one channel. It takes whatever is waiting
//! (up to [`MAX_BATCH_BYTES`]), writes it to the current segment in one `write`, syncs the
//! file once, and only then answers every record's waiter, so one sync covers all the groups
//! that were waiting. While it syncs, new records queue up for the next batch.
//!
//! The [`Tracker`] follows what each segment holds; after a batch that purged, forgot, or
//! started a segment, the segments no group needs any more are deleted (see
//! [`Tracker::reclaimable`]).
//!
//! A failed write or sync answers that batch's waiters with the error and stops the WAL:
//! every later record is answered with the same error and nothing is deleted, since after a
//! failed sync what the kernel holds for the file cannot be trusted. Reopening the WAL, or
//! `Wal::recover` in the same process, replays what reached the disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::format::{self, Meta, Op};
use super::{Claim, Counters};

/// A batch takes what is waiting up to about this many bytes.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Answers a record's waiter: an openraft flush callback, or a reply to an awaited write.
pub(super) type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A request to the writer.
pub(super) enum Msg {
    /// Records of one group: their ops, their encoded bytes, and who waits for them.
    Write(Batch),
    /// Answer once everything sent before is written and synced, and the segments it freed
    /// deleted.
    Flush(Done),
    /// Finish what came before, then stop; the sender is told once the files are closed.
    Close(Option<oneshot::Sender<()>>),
}

/// Records of one group, already encoded.
pub(super) struct Batch {
    pub(super) group: u64,
    pub(super) ops: Vec<Op>,
    pub(super) bytes: Vec<u8>,
    pub(super) done: Option<Done>,
}

/// The name of segment `id` in `dir`.
pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:08}.wal"))
}

/// Makes the directory's entries (files created or removed) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What one segment holds that matters for deleting it.
#[derive(Debug, Default)]
pub(super) struct Segment {
    /// Per group, the highest index of an entry it wrote here that it has not released by a
    /// forget (a purge releases it by passing it; see [`Tracker::reclaimable`]).
    needs: HashMap<u64, u64>,
    /// The groups with any record here.
    present: HashSet<u64>,
    /// The groups forgotten here.
    forgets: HashSet<u64>,
    /// The segment's length.
    pub(super) bytes: u64,
}

/// The writer's view of the WAL: each live group's state but its entries, and each segment's.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    pub(super) segments: BTreeMap<u64, Segment>,
    pub(super) groups: BTreeMap<u64, Meta>,
}

impl Tracker {
    /// Follows a record of `group` written (or replayed) in segment `segment`.
    pub(super) fn apply(&mut self, segment: u64, group: u64, op: &Op) {
        if let Op::Forget = op {
            // Everything the group wrote is released, here and in every earlier segment; the
            // forget record itself must outlive the group's older records (see `reclaimable`).
            self.groups.remove(&group);
            for held in self.segments.values_mut() {
                held.needs.remove(&group);
            }
        } else {
            self.groups.entry(group).or_default().apply(op);
        }
        if let Op::Truncate(from) | Op::Checkpoint(Meta { next: from, .. }) = op {
            // Entries from `from` on are dead: no segment needs to be kept for them.
            for held in self.segments.values_mut() {
                if let Some(need) = held.needs.get_mut(&group) {
                    if *need >= *from {
                        match from.checked_sub(1) {
                            Some(below) => *need = below,
                            None => {
                                held.needs.remove(&group);
                            }
                        }
                    }
                }
            }
        }
        let held = self.segments.entry(segment).or_default();
        held.present.insert(group);
        match op {
            Op::Entry(index) => {
                let need = held.needs.entry(group).or_insert(*index);
                *need = (*need).max(*index);
            }
            Op::Forget => {
                held.forgets.insert(group);
            }
            _ => {}
        }
    }

    /// The segments, other than `current`, that replay no longer needs, oldest first.
    ///
    /// A segment is needed while a live group has an entry in it above the group's purge
    /// point, or while it holds the forget of a group that still has records in an earlier
    /// segment (the forget keeps them from coming back). Its votes, committed ids, purges and
    /// truncations are never needed by themselves: every segment starts with a checkpoint of
    /// each live group (vote, committed id, purge point, end of log), so the segments after a
    /// deleted one carry whatever it said. Segments are only deleted after everything written
    /// before (the checkpoints and the purges that free them included) was synced.
    ///
    /// Why replaying only the kept segments gives each group its log: an entry the group still
    /// holds (above its purge point) is in a kept segment, since the segment it was written in
    /// is needed for it, and nothing replayed after it drops it. An entry that comes back from
    /// a kept segment though a deleted one had truncated it is either at or below the purge
    /// point (dropped by the purge replayed later), or was rewritten in a kept segment after
    /// the truncation (replaying an entry drops everything from its index on), or lies past the
    /// end of log in the checkpoint at the start of the first kept segment after the truncation
    /// (which drops it). A forgotten group's older records are dropped by its forget record,
    /// which stays as long as any of them does.
    pub(super) fn reclaimable(&self, current: u64) -> Vec<u64> {
        let mut doomed = Vec::new();
        let mut kept: Vec<&Segment> = Vec::new();
        for (id, held) in &self.segments {
            if *id == current {
                break;
            }
            let needed = held.needs.iter().any(|(group, max)| match self.groups.get(group) {
                Some(meta) => meta.purged.is_none_or(|purged| purged.index < *max),
                None => true,
            });
            let pinned = held.forgets.iter().any(|group| kept.iter().any(|earlier| earlier.present.contains(group)));
            if needed || pinned {
                kept.push(held);
            } else {
                doomed.push(*id);
            }
        }
        doomed
    }

    /// The checkpoint records of every live group, as a new segment starts with them.
    fn checkpoint(&mut self, segment: u64, out: &mut Vec<u8>) -> u64 {
        let held = self.segments.entry(segment).or_default();
        let mut records = 0;
        for (group, meta) in &self.groups {
            format::op_record(*group, &Op::Checkpoint(meta.clone()), out);
            held.present.insert(*group);
            records += 1;
        }
        records
    }
}

/// The writer: the current segment and what it tracks. Lives on its own thread once started.
pub(super) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    current: u64,
    tracker: Tracker,
    counters: Arc<Counters>,
    /// Set by a failed write or sync: the WAL is stopped.
    failed: Option<String>,
    /// Records were written to the current segment since its last sync.
    unsynced: bool,
    /// This process's claim on the directory, released when the writer ends.
    claim: Claim,
}

fn new_segment(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new().append(true).create_new(true).open(segment_path(dir, id))?;
    sync_dir(dir)?;
    Ok(file)
}

impl Writer {
    /// Starts a new segment after the replayed ones, checkpoints every group in it, syncs it,
    /// and deletes the segments no longer needed.
    pub(super) fn start(
        dir: PathBuf,
        segment_bytes: u64,
        mut tracker: Tracker,
        counters: Arc<Counters>,
        claim: Claim,
    ) -> io::Result<Writer> {
        let current = tracker.segments.keys().next_back().map_or(1, |last| last + 1);
        {
            // What was replayed is taken as on disk.
            let mut synced = counters.synced.lock();
            for id in tracker.segments.keys() {
                if let Ok(m) = std::fs::metadata(segment_path(&dir, *id)) {
                    synced.insert(*id, m.len());
                }
            }
        }
        let file = new_segment(&dir, current)?;
        let mut bytes = format::MAGIC.to_vec();
        let records = tracker.checkpoint(current, &mut bytes);
        let mut writer =
            Writer { dir, segment_bytes, file, current, tracker, counters, failed: None, unsynced: false, claim };
        writer.write(&bytes, records, true)?;
        writer.reclaim();
        Ok(writer)
    }

    /// Takes requests until closed (or until every sender is gone), a batch at a time.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut close = None;
        while close.is_none() {
            let Ok(first) = rx.recv() else { break };
            let mut batch = Vec::new();
            let mut flushes = Vec::new();
            let mut size = 0;
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Msg::Write(write) => {
                        size += write.bytes.len();
                        batch.push(write);
                    }
                    Msg::Flush(done) => {
                        flushes.push(done);
                        break;
                    }
                    Msg::Close(ack) => {
                        close = Some(ack);
                        break;
                    }
                }
                if size >= MAX_BATCH_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.process(batch);
            }
            if !flushes.is_empty() {
                let result = self.sync_all_written();
                for done in flushes {
                    done(match &result {
                        Ok(()) => Ok(()),
                        Err(reason) => Err(stopped(reason)),
                    });
                }
            }
        }
        // Whatever was sent after the close is refused.
        let mut acks: Vec<oneshot::Sender<()>> = close.flatten().into_iter().collect();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Write(write) => answer(write.done, Err(closed())),
                Msg::Flush(done) => done(Err(closed())),
                Msg::Close(ack) => acks.extend(ack),
            }
        }
        drop(rx);
        let _ = self.sync_all_written();
        let Writer { file, claim, .. } = self;
        drop(file);
        drop(claim);
        for ack in acks {
            let _ = ack.send(());
        }
    }

    /// Syncs what was written without a sync (committed ids); the reason the WAL stopped, if
    /// it did.
    fn sync_all_written(&mut self) -> Result<(), String> {
        if self.failed.is_none() && self.unsynced {
            match self.file.sync_data() {
                Ok(()) => {
                    self.unsynced = false;
                    self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                    self.note_synced();
                }
                Err(e) => self.fail(&e),
            }
        }
        self.failed.clone().map_or(Ok(()), Err)
    }

    /// Writes one batch, syncs it if any of it must be durable, then answers its waiters.
    fn process(&mut self, batch: Vec<Batch>) {
        if let Some(reason) = &self.failed {
            let reason = reason.clone();
            for write in batch {
                answer(write.done, Err(stopped(&reason)));
            }
            return;
        }
        match self.write_batch(&batch) {
            Ok(reclaim) => {
                for write in batch {
                    answer(write.done, Ok(()));
                }
                if reclaim {
                    self.reclaim();
                }
            }
            Err(e) => {
                self.fail(&e);
                for write in batch {
                    answer(write.done, Err(io::Error::new(e.kind(), format!("WAL write failed: {e}"))));
                }
            }
        }
    }

    /// Returns whether segments may have become free.
    fn write_batch(&mut self, batch: &[Batch]) -> io::Result<bool> {
        let mut bytes = Vec::new();
        let mut records = 0;
        let mut durable = false;
        let mut reclaim = false;
        let held = self.tracker.segments.get(&self.current).map_or(0, |s| s.bytes);
        if held >= self.segment_bytes {
            // The segment is full: sync what it holds, and go on in a new one that starts with
            // every group's checkpoint.
            if self.unsynced {
                self.file.sync_data()?;
                self.unsynced = false;
                self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.note_synced();
            }
            let next = self.current + 1;
            self.file = new_segment(&self.dir, next)?;
            self.current = next;
            bytes.extend_from_slice(format::MAGIC);
            records += self.tracker.checkpoint(next, &mut bytes);
            self.counters.segments.store(self.tracker.segments.len() as u64, Ordering::Relaxed);
            durable = true;
            reclaim = true;
        }
        for write in batch {
            bytes.extend_from_slice(&write.bytes);
            // Whoever waits is told once everything before is on disk.
            durable |= write.done.is_some();
            for op in &write.ops {
                self.tracker.apply(self.current, write.group, op);
                durable |= op.durable();
                reclaim |= matches!(op, Op::Purge(_) | Op::Forget);
                records += 1;
            }
        }
        self.write(&bytes, records, durable)?;
        Ok(reclaim)
    }

    fn write(&mut self, bytes: &[u8], records: u64, sync: bool) -> io::Result<()> {
        #[cfg(test)]
        if self.counters.fail_writes.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected write failure"));
        }
        self.file.write_all(bytes)?;
        if let Some(held) = self.tracker.segments.get_mut(&self.current) {
            held.bytes += bytes.len() as u64;
        }
        self.unsynced = true;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.records.fetch_add(records, Ordering::Relaxed);
        self.counters.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if sync {
            self.file.sync_data()?;
            self.unsynced = false;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.note_synced();
        }
        Ok(())
    }

    /// Records that everything written to the current segment is on disk.
    fn note_synced(&self) {
        let held = self.tracker.segments.get(&self.current).map_or(0, |s| s.bytes);
        let mut synced = self.counters.synced.lock();
        synced.insert(self.current, held);
        // Deleted segments are dropped from the record.
        let live: Vec<u64> = synced.keys().copied().filter(|id| !self.tracker.segments.contains_key(id)).collect();
        for id in live {
            synced.remove(&id);
        }
    }

    /// Deletes the segments nothing needs; a failure to delete is reported, not fatal.
    fn reclaim(&mut self) {
        let doomed = self.tracker.reclaimable(self.current);
        let mut removed = false;
        for id in doomed {
            match std::fs::remove_file(segment_path(&self.dir, id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.counters.note(format!("cannot delete WAL segment {id}: {e}"));
                    continue;
                }
            }
            self.tracker.segments.remove(&id);
            self.counters.segments_deleted.fetch_add(1, Ordering::Relaxed);
            removed = true;
        }
        if removed {
            if let Err(e) = sync_dir(&self.dir) {
                self.counters.note(format!("cannot sync the WAL directory: {e}"));
            }
        }
        self.counters.segments.store(self.tracker.segments.len() as u64, Ordering::Relaxed);
    }

    fn fail(&mut self, e: &io::Error) {
        let reason = format!("{}: {e}", segment_path(&self.dir, self.current).display());
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        self.counters.note(reason.clone());
        *self.counters.failed.lock() = Some(reason.clone());
        self.failed = Some(reason);
    }
}

fn answer(done: Option<Done>, result: io::Result<()>) {
    if let Some(done) = done {
        done(result);
    }
}

/// The error of a request the writer refuses because the WAL was closed.
pub(super) fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the WAL is closed")
}

fn stopped(reason: &str) -> io::Error {
    io::Error::other(format!("the WAL stopped after an I/O error: {reason}"))
}

/// Groups written in some segment (for tests of the tracker).
#[cfg(test)]
pub(super) fn groups_in(tracker: &Tracker, segment: u64) -> std::collections::BTreeSet<u64> {
    tracker.segments.get(&segment).map(|s| s.present.iter().copied().collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::types::LogId;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    #[test]
    fn a_segment_is_kept_while_a_group_needs_an_entry_in_it() {
        let mut t = Tracker::default();
        t.apply(1, 7, &Op::Entry(1));
        t.apply(1, 7, &Op::Entry(2));
        t.apply(1, 8, &Op::Entry(1));
        t.apply(2, 7, &Op::Entry(3));
        t.apply(3, 8, &Op::Vote(crate::types::Vote::new(1, 1)));
        assert_eq!(t.reclaimable(3), Vec::<u64>::new());
        t.apply(3, 7, &Op::Purge(log_id(2)));
        // Group 8 still needs its entry 1 in segment 1; segment 2 holds only 7's entry 3.
        assert_eq!(t.reclaimable(3), Vec::<u64>::new());
        t.apply(3, 8, &Op::Purge(log_id(1)));
        assert_eq!(t.reclaimable(3), vec![1]);
        t.apply(3, 7, &Op::Purge(log_id(3)));
        assert_eq!(t.reclaimable(3), vec![1, 2]);
        // The current segment is never reclaimed.
        assert_eq!(t.reclaimable(2), vec![1]);
    }

    #[test]
    fn a_forget_is_kept_while_older_records_of_its_group_are() {
        let mut t = Tracker::default();
        t.apply(1, 7, &Op::Entry(1));
        t.apply(1, 8, &Op::Entry(1));
        t.apply(2, 7, &Op::Forget);
        // 7's entry is released, but segment 1 stays for 8, and with it 7's records: the forget
        // in segment 2 must stay too.
        assert_eq!(t.reclaimable(3), Vec::<u64>::new());
        assert_eq!(groups_in(&t, 2), std::collections::BTreeSet::from([7]));
        t.apply(3, 8, &Op::Forget);
        // Segment 1 is released; segment 3 (current) holds 8's forget.
        assert_eq!(t.reclaimable(3), vec![1, 2]);
        assert!(t.groups.is_empty());
    }
}
