//! Throughput of one `SegmentLog` on real files: `cargo run --release -p warren-store --example
//! store_bench [records] [payload_bytes]`. Writes under the system temp dir and removes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use warren_store::{FsBackend, LogConfig, SegmentLog, SyncHandle};

fn sync(handles: Vec<Arc<dyn SyncHandle>>) {
    for h in handles {
        h.sync().expect("sync");
    }
}

fn rate(n: u64, secs: f64) -> String {
    format!("{:>12.0}/s", n as f64 / secs)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
    let payload_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let dir = std::env::temp_dir().join(format!("warren-store-bench-{}", std::process::id()));
    let payload = vec![0xabu8; payload_len];
    let open = |d: &PathBuf| SegmentLog::open(Arc::new(FsBackend), d, LogConfig::default()).expect("open");
    println!("{records} records of {payload_len} bytes, {} MiB segments", LogConfig::default().segment_bytes >> 20);

    // Appends, one sync at the end.
    let (mut log, _) = open(&dir.join("a"));
    let t = Instant::now();
    for _ in 0..records {
        log.append(&payload, true).expect("append");
    }
    let appended = t.elapsed().as_secs_f64();
    sync(log.pending_sync());
    let synced = t.elapsed().as_secs_f64();
    println!("append (no sync)          {}  ({appended:.2} s)", rate(records, appended));
    println!("append + one final fsync  {}  ({synced:.2} s)", rate(records, synced));

    // Sequential reads of the whole log (page cache warm).
    let t = Instant::now();
    let mut from = 0;
    let mut n = 0u64;
    loop {
        let got = log.read(from, 256, 1 << 20).expect("read");
        let Some(last) = got.last() else { break };
        from = last.seq + 1;
        n += got.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, records);
    println!("read, batches of 256      {}  ({secs:.2} s)", rate(n, secs));

    // In-order settles (acks), then the fsync that makes them durable.
    let t = Instant::now();
    for seq in 0..records {
        log.settle(seq).expect("settle");
    }
    sync(log.pending_sync());
    let secs = t.elapsed().as_secs_f64();
    println!("settle in order + fsync   {}  ({secs:.2} s), {} bytes left", rate(records, secs), log.disk_bytes());
    log.destroy().expect("destroy");

    // Group commit: fsync every 1000 appends, as a broker confirming batches would.
    let (mut log, _) = open(&dir.join("b"));
    let batches = (records / 10).max(1000) / 1000;
    let t = Instant::now();
    for _ in 0..batches {
        for _ in 0..1000 {
            log.append(&payload, true).expect("append");
        }
        sync(log.pending_sync());
    }
    let secs = t.elapsed().as_secs_f64();
    println!("append, fsync per 1000    {}  ({secs:.2} s, {batches} fsyncs)", rate(batches * 1000, secs));
    drop(log);

    // Recovery of the first log's size.
    let (mut log, _) = open(&dir.join("c"));
    for _ in 0..records {
        log.append(&payload, true).expect("append");
    }
    sync(log.pending_sync());
    drop(log);
    let t = Instant::now();
    let (log, rec) = open(&dir.join("c"));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "recovery (open)           {}  ({secs:.2} s, {} unsettled, {} bookkeeping bytes)",
        rate(rec.unsettled, secs),
        rec.unsettled,
        log.bookkeeping_bytes()
    );
    log.destroy().expect("destroy");
    let _ = std::fs::remove_dir_all(&dir);
}
