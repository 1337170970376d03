//! Memory: the log's in-memory bookkeeping grows with the number of segments (and one bit per
//! record of segments that have settles), never with the number of unsettled records.

use std::path::Path;
use std::sync::Arc;

use warren_store::{LogConfig, MemBackend, SegmentLog};

const RECORDS: u64 = 1_000_000;
/// 64 KiB segments of 21-byte records: about 3100 records (a 390-byte bitmap) per segment.
const SEGMENT_BYTES: u64 = 64 << 10;
/// Generous per-segment allowance (map entry, counters, lengths).
const PER_SEGMENT: usize = 128;
/// Write buffers, the read window and the log struct itself.
const FIXED: usize = 512 << 10;

#[test]
fn bookkeeping_is_per_segment_not_per_record() {
    let backend = MemBackend::new();
    let (mut log, _) =
        SegmentLog::open(Arc::new(backend.clone()), Path::new("/q"), LogConfig { segment_bytes: SEGMENT_BYTES })
            .expect("open");
    for seq in 0..RECORDS {
        log.append(&(seq as u32).to_le_bytes(), true).expect("append");
    }
    drop(log.pending_sync());
    let segments = log.segment_count();
    assert!(segments > 250, "{segments}");
    let unsettled_only = log.bookkeeping_bytes();
    assert!(
        unsettled_only <= segments * PER_SEGMENT + FIXED,
        "{unsettled_only} bytes for {RECORDS} unsettled records in {segments} segments"
    );

    // Settle every other record: now each segment carries a bitmap, one bit per record.
    for seq in (0..RECORDS).step_by(2) {
        log.settle(seq).expect("settle");
    }
    drop(log.pending_sync());
    let with_settles = log.bookkeeping_bytes();
    let bitmap_bound = (RECORDS / 8) as usize + segments * 8;
    assert!(
        with_settles <= segments * PER_SEGMENT + FIXED + bitmap_bound,
        "{with_settles} bytes with half of {RECORDS} records settled"
    );
    assert!(with_settles < RECORDS as usize / 4, "a few bits per record at most: {with_settles}");

    // Settling the rest deletes every segment but the one being written.
    log.settle_range(0, RECORDS).expect("settle_range");
    assert_eq!(log.segment_count(), 1);
    assert!(log.bookkeeping_bytes() < FIXED, "{}", log.bookkeeping_bytes());
    drop(log.pending_sync());
    assert!(backend.paths().len() <= 2);

    // Reopening a large log costs the same: recovery keeps counts, not records.
    drop(log);
}

#[test]
fn recovery_bookkeeping_is_per_segment() {
    let backend = MemBackend::new();
    let open = || {
        SegmentLog::open(Arc::new(backend.clone()), Path::new("/q"), LogConfig { segment_bytes: SEGMENT_BYTES })
            .expect("open")
    };
    let (mut log, _) = open();
    for seq in 0..200_000u64 {
        log.append(&(seq as u32).to_le_bytes(), true).expect("append");
    }
    drop(log.pending_sync());
    drop(log);
    let (log, rec) = open();
    assert_eq!(rec.unsettled, 200_000);
    assert!(log.bookkeeping_bytes() <= log.segment_count() * PER_SEGMENT + FIXED, "{}", log.bookkeeping_bytes());
}
