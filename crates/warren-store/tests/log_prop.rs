//! Property test: random sequences of append / settle / settle_range / read / mark_delivered /
//! reopen against a plain `BTreeMap` model of the unsettled records.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{assert_matches, read_all, sync_log, Model};
use proptest::prelude::*;
use warren_store::{Backend, LogConfig, MemBackend, SegmentLog};

#[derive(Debug, Clone)]
enum Op {
    Append { len: usize, persistent: bool },
    Settle(u64),
    SettleRange(u64, u64),
    Read { from: u64, max_records: usize, max_bytes: usize },
    MarkDelivered(u64),
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..60, proptest::bool::weighted(0.8)).prop_map(|(len, persistent)| Op::Append { len, persistent }),
        3 => (0u64..80).prop_map(Op::Settle),
        1 => (0u64..80, 0u64..20).prop_map(|(a, n)| Op::SettleRange(a, a + n)),
        3 => (0u64..80, 1usize..10, 0usize..200)
            .prop_map(|(from, max_records, max_bytes)| Op::Read { from, max_records, max_bytes }),
        1 => (0u64..80).prop_map(Op::MarkDelivered),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

fn open(backend: &MemBackend, segment_bytes: u64) -> (SegmentLog, warren_store::Recovered) {
    SegmentLog::open(Arc::new(backend.clone()), &PathBuf::from("/q"), LogConfig { segment_bytes }).expect("open")
}

fn run(ops: Vec<Op>, segment_bytes: u64) {
    let backend = MemBackend::new();
    let (mut log, _) = open(&backend, segment_bytes);
    let mut model = Model::new();
    let mut next_seq = 0u64;
    let mut delivered: Option<u64> = None;
    for op in ops {
        match op {
            Op::Append { len, persistent } => {
                let body: Vec<u8> = (0..len).map(|i| (next_seq as usize * 31 + i) as u8).collect();
                let seq = log.append(&body, persistent).expect("append");
                assert_eq!(seq, next_seq);
                next_seq += 1;
                model.insert(seq, (persistent, body));
            }
            Op::Settle(seq) => {
                log.settle(seq).expect("settle");
                model.remove(&seq);
            }
            Op::SettleRange(from, to) => {
                log.settle_range(from, to).expect("settle_range");
                model.retain(|s, _| !(from..to).contains(s));
            }
            Op::Read { from, max_records, max_bytes } => {
                let got = log.read(from, max_records, max_bytes).expect("read");
                let mut want = Vec::new();
                let mut bytes = 0;
                for (&seq, (p, body)) in model.range(from..) {
                    if want.len() == max_records || (!want.is_empty() && bytes >= max_bytes) {
                        break;
                    }
                    bytes += body.len();
                    want.push((seq, *p, body.clone()));
                }
                let got: Vec<_> = got.into_iter().map(|r| (r.seq, r.persistent, r.payload.to_vec())).collect();
                assert_eq!(got, want);
            }
            Op::MarkDelivered(seq) => {
                if next_seq > 0 {
                    let seq = seq.min(next_seq - 1);
                    delivered = delivered.max(Some(seq));
                }
                log.mark_delivered(seq);
            }
            Op::Sync => sync_log(&mut log),
            Op::Reopen => {
                sync_log(&mut log);
                drop(log);
                let (l, rec) = open(&backend, segment_bytes);
                log = l;
                model.retain(|_, (p, _)| *p);
                assert!(rec.corrupt.is_empty());
                assert_eq!(rec.unsettled, model.len() as u64);
                assert_eq!(log.next_seq(), next_seq);
                if model.keys().next().is_some_and(|&first| Some(first) <= delivered) {
                    // Redelivery flags matter only while a record at or below the mark is left.
                    assert_eq!(rec.delivered_through, delivered);
                }
            }
        }
        assert_eq!(log.unsettled(), model.len() as u64);
        // Only the segment being written may be fully settled.
        let files = backend.list(&PathBuf::from("/q")).expect("list");
        assert_eq!(files.iter().filter(|n| n.ends_with(".seg")).count(), log.segment_count());
        if model.is_empty() {
            assert!(log.segment_count() <= 1, "{} segments hold nothing", log.segment_count());
        }
    }
    assert_matches(&read_all(&mut log, 3), &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model_prop(ops in proptest::collection::vec(op(), 1..80), segment_bytes in 40u64..400) {
        run(ops, segment_bytes);
    }
}
