//! Corruption: bytes damaged after they were written. Open must succeed, report where (path and
//! offset of the damaged record), skip only the rest of the damaged segment, and never return a
//! record that was not appended.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{assert_matches, payload, read_all, sync_log, Model};
use warren_store::{Backend, LogConfig, MemBackend, SegmentLog};

/// Every record is 17 + 20 bytes, so offsets are easy to compute.
const PAYLOAD: usize = 20;
const RECORD: u64 = 17 + PAYLOAD as u64;
const HEADER: u64 = 16;
const SEGMENT_BYTES: u64 = HEADER + 10 * RECORD;

fn dir() -> PathBuf {
    PathBuf::from("/q")
}

fn open(backend: &MemBackend) -> (SegmentLog, warren_store::Recovered) {
    SegmentLog::open(Arc::new(backend.clone()), &dir(), LogConfig { segment_bytes: SEGMENT_BYTES }).expect("open")
}

/// 50 synced records in 5 segments of 10.
fn written_log() -> (MemBackend, Model) {
    let backend = MemBackend::new();
    let (mut log, _) = open(&backend);
    let mut model = Model::new();
    for seq in 0..50 {
        let p = payload(seq, PAYLOAD);
        log.append(&p, true).expect("append");
        model.insert(seq, (true, p));
    }
    sync_log(&mut log);
    (backend, model)
}

fn seg(base: u64) -> PathBuf {
    dir().join(format!("{base:020}.seg"))
}

#[test]
fn flipped_byte_mid_segment_is_reported_and_later_segments_are_read() {
    let (backend, mut model) = written_log();
    let path = seg(20);
    assert_eq!(backend.file_len(&path), Some(SEGMENT_BYTES));
    // A payload byte of the 5th record (seq 24) of the 3rd segment.
    let damaged = HEADER + 4 * RECORD;
    backend.corrupt(&path, damaged + 25);
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.corrupt.len(), 1, "{:?}", rec.corrupt);
    assert_eq!((&rec.corrupt[0].path, rec.corrupt[0].offset), (&path, damaged));
    assert!(rec.corrupt[0].reason.contains("checksum"), "{}", rec.corrupt[0].reason);
    // Records before the damage in that segment, and every other segment, are still there.
    model.retain(|s, _| !(24..30).contains(s));
    assert_eq!(rec.unsettled, model.len() as u64);
    assert_matches(&read_all(&mut log, 7), &model);
    // The log stays usable; the damaged file is not cut, so it is reported again on reopen.
    let seq = log.append(b"after", true).expect("append");
    assert_eq!(seq, 50);
    sync_log(&mut log);
    drop(log);
    assert_eq!(backend.file_len(&path), Some(SEGMENT_BYTES), "corrupt data is never truncated");
    let (_, rec) = open(&backend);
    assert_eq!(rec.corrupt.len(), 1);
    assert_eq!(rec.unsettled, model.len() as u64 + 1);
}

#[test]
fn damaged_length_field_is_corruption_not_a_torn_tail() {
    let (backend, model) = written_log();
    let path = seg(10);
    // The high byte of seq 12's length: the record now claims to run far past the end.
    backend.corrupt(&path, HEADER + 2 * RECORD + 7);
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.corrupt.len(), 1);
    assert_eq!(rec.corrupt[0].offset, HEADER + 2 * RECORD);
    let got = read_all(&mut log, 100);
    assert_eq!(got.len(), model.len() - 8);
    assert_eq!(backend.file_len(&path), Some(SEGMENT_BYTES));
}

#[test]
fn damaged_segment_header_skips_that_segment_only() {
    let (backend, model) = written_log();
    backend.corrupt(&seg(30), 3);
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.corrupt.len(), 1);
    assert_eq!((&rec.corrupt[0].path, rec.corrupt[0].offset), (&seg(30), 0));
    assert_eq!(read_all(&mut log, 100).len(), model.len() - 10);
    drop(log);
    let (_, rec) = open(&backend);
    assert_eq!(rec.corrupt.len(), 1, "a damaged segment is kept and reported at every open");
}

#[test]
fn settling_a_damaged_segment_keeps_it_for_inspection() {
    let (backend, _) = written_log();
    backend.corrupt(&seg(10), HEADER + 5 * RECORD + 20);
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.unsettled, 45);
    log.settle_range(0, 50).expect("settle_range");
    sync_log(&mut log);
    drop(log);
    assert!(backend.file_len(&seg(10)).is_some());
    let (_, rec) = open(&backend);
    assert_eq!((rec.unsettled, rec.corrupt.len()), (0, 1));
}

#[test]
fn damage_in_the_last_segment_starts_a_new_one() {
    let (backend, _) = written_log();
    backend.corrupt(&seg(40), HEADER + 2 * RECORD + 20);
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.corrupt.len(), 1);
    assert_eq!(rec.unsettled, 42);
    // Seqs of the skipped records are not reused.
    assert_eq!(log.append(b"x", true).expect("append"), 50);
    sync_log(&mut log);
    drop(log);
    let names = backend.list(&dir()).expect("list");
    assert!(names.contains(&"00000000000000000050.seg".to_string()), "{names:?}");
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.unsettled, 43);
    assert_eq!(read_all(&mut log, 100).last().map(|r| r.seq), Some(50));
}

#[test]
fn damaged_ack_entry_loses_only_that_settle() {
    let (backend, mut model) = written_log();
    let (mut log, _) = open(&backend);
    // Out-of-order settles, so each is its own ack entry.
    for seq in [13, 11, 17, 15] {
        log.settle(seq).expect("settle");
        model.remove(&seq);
    }
    sync_log(&mut log);
    drop(log);
    let ack = dir().join(format!("{:020}.ack", 10));
    backend.corrupt(&ack, HEADER + 24 + 10); // the entry settling seq 11
    let (mut log, rec) = open(&backend);
    assert_eq!(rec.corrupt.len(), 1);
    assert_eq!((&rec.corrupt[0].path, rec.corrupt[0].offset), (&ack, HEADER + 24));
    model.insert(11, (true, payload(11, PAYLOAD)));
    assert_matches(&read_all(&mut log, 100), &model);
}

#[test]
fn any_flipped_byte_opens_and_returns_only_appended_records() {
    let backend = MemBackend::new();
    let (mut log, _) = open(&backend);
    let mut appended = Model::new();
    for seq in 0..25 {
        let p = payload(seq, PAYLOAD);
        log.append(&p, seq % 7 != 3).expect("append");
        appended.insert(seq, (seq % 7 != 3, p));
    }
    for seq in [2, 5, 6, 7, 21] {
        log.settle(seq).expect("settle");
    }
    log.mark_delivered(9);
    sync_log(&mut log);
    drop(log);
    for path in backend.paths() {
        let len = backend.file_len(&path).expect("len");
        for offset in 0..len {
            let copy = backend.snapshot();
            copy.corrupt(&path, offset);
            let (mut log, rec) = open(&copy);
            let got = read_all(&mut log, 6);
            assert_eq!(got.len() as u64, rec.unsettled);
            for r in &got {
                let (persistent, body) = &appended[&r.seq];
                assert!(*persistent);
                assert_eq!(&r.payload[..], &body[..], "{} offset {offset}", path.display());
            }
        }
    }
}

#[test]
fn damage_after_open_is_a_read_error_not_garbage() {
    let (backend, _) = written_log();
    let (mut log, _) = open(&backend);
    backend.corrupt(&seg(0), HEADER + RECORD + 30);
    let err = log.read(0, 10, usize::MAX).expect_err("checksum");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("00000000000000000000.seg"), "{err}");
    // Reads elsewhere still work.
    assert_eq!(log.read(20, 2, usize::MAX).expect("read").len(), 2);
}

#[test]
fn an_empty_segment_before_others_is_reported_as_lost_records() {
    for cut in [0, 7, HEADER, HEADER + 5] {
        let (backend, mut model) = written_log();
        // The 2nd segment loses its records (cut to `cut` bytes), later ones are intact.
        backend.truncate(&seg(10), cut).expect("cut");
        let (mut log, rec) = open(&backend);
        assert_eq!(rec.lost.len(), 1, "cut at {cut}: {:?}", rec.lost);
        assert_eq!((&rec.lost[0].path, rec.lost[0].first_seq, rec.lost[0].end_seq), (&seg(10), 10, 20));
        assert!(rec.corrupt.is_empty(), "cut at {cut}: {:?}", rec.corrupt);
        model.retain(|s, _| !(10..20).contains(s));
        assert_matches(&read_all(&mut log, 7), &model);
        drop(log);
        // Reported once: the empty file is gone, and with it the evidence of what it held.
        assert_eq!(backend.file_len(&seg(10)), None);
        assert!(open(&backend).1.lost.is_empty());
    }
    // The last segment cut to nothing is a torn creation, not a loss anyone can tell.
    let (backend, _) = written_log();
    backend.truncate(&seg(40), HEADER).expect("cut");
    assert!(open(&backend).1.lost.is_empty());
}

#[test]
fn inspect_counts_what_open_would_recover_and_changes_nothing() {
    let (backend, mut model) = written_log();
    {
        let (mut log, _) = open(&backend);
        for seq in [3, 4, 31] {
            log.settle(seq).expect("settle");
            model.remove(&seq);
        }
        sync_log(&mut log);
    }
    // A torn tail (which open would cut) and damage (which open reports).
    let last = seg(40);
    let torn_at = backend.file_len(&last).expect("segment");
    let mut f = backend.open_append(&last).expect("append");
    f.append(b"half a record").expect("append");
    backend.corrupt(&seg(20), HEADER + 4 * RECORD + 25);
    let files: Vec<(PathBuf, Vec<u8>)> =
        backend.paths().into_iter().map(|p| (p.clone(), backend.read(&p).expect("read"))).collect();
    let seen = SegmentLog::inspect(&backend, &dir()).expect("inspect");
    let after: Vec<(PathBuf, Vec<u8>)> =
        backend.paths().into_iter().map(|p| (p.clone(), backend.read(&p).expect("read"))).collect();
    assert_eq!(files, after, "inspect changed files");
    let (_, recovered) = open(&backend);
    assert_eq!(seen, recovered);
    model.retain(|s, _| !(24..30).contains(s));
    assert_eq!(seen.unsettled, model.len() as u64);
    assert_eq!(backend.file_len(&last), Some(torn_at), "open cut the torn tail");
    // A directory that does not exist holds nothing, and inspecting it does not create it.
    assert_eq!(SegmentLog::inspect(&backend, &PathBuf::from("/none")).expect("inspect").unsettled, 0);
    assert!(backend.list_dirs(&PathBuf::from("/")).expect("list").iter().all(|d| d != "none"));
}
