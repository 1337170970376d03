//! Storage faults in the definitions and around the queue logs: recovery never deletes what it
//! cannot account for.
//!
//! A small data directory (durable queues holding persistent messages, some in the snapshot,
//! some in the journal, a priority queue, an exchange and a binding, a deleted queue) is
//! damaged in every way a byte can be: each byte of the journal and of the snapshot flipped,
//! each file cut at every length, files deleted. For every case the broker either opens or
//! refuses with an error naming the file; no queue directory is removed; every queue whose
//! record is intact comes back with all its messages, and one whose record was lost is moved
//! under `quarantine/` with its files and reported with its message count.

mod common;

use common::Harness;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warren_amqp::{BasicProperties, FieldTable, FieldValue, Method};
use warren_core::broker::recovery::{ACCEPT_LOSS, QUARANTINE};
use warren_core::{Broker, Caller, Config, RecoveryReport};
use warren_store::{Backend, MemBackend};

const DIR: &str = "/data";

fn data() -> PathBuf {
    PathBuf::from(DIR)
}

fn journal_path() -> PathBuf {
    data().join("definitions.journal")
}

fn snapshot_path() -> PathBuf {
    data().join("definitions")
}

/// The directory of a durable queue in vhost "/" (as the broker names it).
fn queue_dir(name: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(b"/");
    h.update([0u8]);
    h.update(name.as_bytes());
    let hex: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
    data().join("queues").join(hex)
}

fn open(mem: &MemBackend) -> Result<(Broker, RecoveryReport), String> {
    Broker::open(Config::default(), Arc::new(mem.clone()), data())
}

/// The data directory, and how many messages each live queue holds.
struct Fixture {
    mem: MemBackend,
    counts: BTreeMap<&'static str, u32>,
}

fn declare(h: &mut Harness, name: &str, arguments: FieldTable) {
    let m = Method::QueueDeclare {
        queue: name.into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments,
    };
    h.send(1, 1, m);
}

fn publish(h: &mut Harness, queue: &str, n: u32, priority: Option<u8>) {
    let props = BasicProperties { delivery_mode: Some(2), priority, ..Default::default() };
    for _ in 0..n {
        h.publish_props(1, 1, "", queue, props.clone(), "persistent");
    }
}

fn sync(h: &mut Harness) {
    let job = h.broker.begin_sync(h.now_ms, true);
    for handle in &job.handles {
        handle.sync().expect("sync");
    }
    h.broker.end_sync(job.epoch, Vec::new(), h.now_ms, &mut h.out);
}

/// Queues s1, s2 end up in the snapshot (and in the previous journal); j1, j2, j3 (priority),
/// exchange x, binding x -> j1, and j4 (declared then deleted) are in the journal.
fn fixture() -> Fixture {
    let mem = MemBackend::new();
    let (broker, _) = open(&mem).expect("opens");
    let mut h = Harness { broker, out: Vec::new(), now_ms: 1_000 };
    h.connect(1, true);
    h.open(1, 1);
    declare(&mut h, "s1", FieldTable::new());
    declare(&mut h, "s2", FieldTable::new());
    publish(&mut h, "s1", 2, None);
    publish(&mut h, "s2", 1, None);
    // A change outside the topology rewrites the snapshot: s1 and s2 move into it.
    h.broker.add_vhost("v").expect("vhost");
    declare(&mut h, "j1", FieldTable::new());
    declare(&mut h, "j2", FieldTable::new());
    let mut prio = FieldTable::new();
    prio.insert("x-max-priority", FieldValue::I64(5));
    declare(&mut h, "j3", prio);
    publish(&mut h, "j1", 3, None);
    publish(&mut h, "j3", 1, None);
    publish(&mut h, "j3", 1, Some(3));
    let mut out = Vec::new();
    h.broker
        .declare_exchange(Caller::Broker, "/", "x", "direct", true, false, false, FieldTable::new(), 0, &mut out)
        .expect("x");
    h.broker
        .set_binding(Caller::Broker, true, "/", "x", "j1", true, "k", FieldTable::new(), 0, &mut out)
        .expect("bind");
    declare(&mut h, "j4", FieldTable::new());
    h.broker.delete_queue_checked(Caller::Broker, "/", "j4", false, false, 0, &mut out).expect("delete j4");
    sync(&mut h);
    drop(h);
    let counts = BTreeMap::from([("s1", 2), ("s2", 1), ("j1", 3), ("j2", 0), ("j3", 2)]);
    let fixture = Fixture { mem, counts };
    // The fixture is what a clean restart sees.
    let (b, report) = open(&fixture.mem.snapshot()).expect("reopens");
    assert!(report.corrupt.is_empty() && report.quarantined.is_empty(), "{report:?}");
    assert_eq!(ready(&b), fixture.counts);
    fixture
}

fn ready(b: &Broker) -> BTreeMap<&'static str, u32> {
    let names = ["s1", "s2", "j1", "j2", "j3", "j4"];
    b.queues()
        .into_iter()
        .filter_map(|q| names.iter().find(|n| **n == q.name).map(|n| (*n, q.messages_ready)))
        .collect()
}

/// Every file under queues/ in `before`, with its bytes.
fn queue_files(mem: &MemBackend) -> Vec<(PathBuf, Vec<u8>)> {
    let queues = data().join("queues");
    mem.paths()
        .into_iter()
        .filter(|p| p.starts_with(&queues))
        .map(|p| (p.clone(), mem.read(&p).expect("read")))
        .collect()
}

/// Byte ranges of the journal records (after the 16-byte header), with their payload.
fn journal_records(bytes: &[u8]) -> Vec<(std::ops::Range<usize>, Vec<u8>)> {
    let mut at = 16;
    let mut records = Vec::new();
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        records.push((at..at + 8 + len, bytes[at + 8..at + 8 + len].to_vec()));
        at += 8 + len;
    }
    assert_eq!(at, bytes.len(), "the fixture's journal parses");
    records
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks one damaged data directory: `lost` are the queues whose declaration was damaged.
fn check(case: &str, fixture: &Fixture, mem: &MemBackend, lost: &[&str]) -> RecoveryReport {
    let files = queue_files(mem);
    let (b, report) = open(mem).unwrap_or_else(|e| panic!("{case}: refused: {e}"));
    let got = ready(&b);
    for (&name, &count) in &fixture.counts {
        if lost.contains(&name) {
            assert!(!got.contains_key(name), "{case}: {name} recovered without its declaration");
            let q = report.quarantined.iter().find(|q| q.from == queue_dir(name));
            if count == 0 {
                // A queue that never held a message has no log on disk: nothing to set aside.
                assert!(q.is_none(), "{case}: {name} never wrote a log, yet one was set aside: {report:?}");
                let dirs = mem.list_dirs(&data().join("queues")).expect("list");
                assert!(!dirs.iter().any(|d| queue_dir(name).ends_with(d)), "{case}: {name} has a log directory");
                continue;
            }
            let q = q.unwrap_or_else(|| panic!("{case}: {name} was not quarantined: {report:?}"));
            assert_eq!(q.messages, u64::from(count), "{case}: messages counted in quarantined {name}");
        } else {
            assert_eq!(got.get(name), Some(&count), "{case}: {name} and its messages: {report:?}");
        }
    }
    // No file of any queue log is gone: each is where it was or under quarantine/, unchanged.
    let aside = data().join(QUARANTINE);
    for (path, bytes) in files {
        let moved = aside.join(path.strip_prefix(DIR).expect("under the data dir"));
        let kept = mem.read(&path).ok().or_else(|| mem.read(&moved).ok());
        assert_eq!(kept.as_ref(), Some(&bytes), "{case}: {} lost or changed", path.display());
    }
    drop(b);
    // What recovery wrote is a sound starting point: the next start finds everything again.
    let (b, again) = open(mem).unwrap_or_else(|e| panic!("{case}: second start refused: {e}"));
    assert!(again.corrupt.is_empty() && again.quarantined.is_empty(), "{case}: second start: {again:?}");
    let expected: BTreeMap<_, _> =
        fixture.counts.iter().filter(|(n, _)| !lost.contains(n)).map(|(n, c)| (*n, *c)).collect();
    let mut after = ready(&b);
    // A deletion whose record was damaged brings the (empty) queue back.
    after.remove("j4");
    assert_eq!(after, expected, "{case}: second start");
    report
}

/// The copy recovery keeps of a damaged file, if any.
fn damaged_copy(mem: &MemBackend, name: &str) -> Option<Vec<u8>> {
    let prefix = format!("{name}.damaged-");
    let path = mem.paths().into_iter().find(|p| {
        p.parent() == Some(Path::new(DIR))
            && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix))
    })?;
    mem.read(&path).ok()
}

#[test]
fn every_flipped_journal_byte_costs_at_most_the_record_it_hits() {
    let fixture = fixture();
    let journal = fixture.mem.read(&journal_path()).expect("journal");
    let records = journal_records(&journal);
    assert!(records.len() >= 7, "the journal holds the fixture's changes: {}", records.len());
    let last = records.last().expect("records").0.clone();
    let mut quarantines = 0;
    for at in 0..journal.len() {
        let mem = fixture.mem.snapshot();
        mem.corrupt(&journal_path(), at as u64);
        let hit = records.iter().find(|(range, _)| range.contains(&at));
        let lost: Vec<&str> = match hit {
            Some((_, payload)) if contains(payload, b"put-queue") => {
                fixture.counts.keys().copied().filter(|n| contains(payload, n.as_bytes())).collect()
            }
            _ => Vec::new(),
        };
        let case = format!("journal byte {at} flipped");
        let report = check(&case, &fixture, &mem, &lost);
        quarantines += report.quarantined.len();
        let flipped = {
            let mut j = journal.clone();
            j[at] ^= 0xff;
            j
        };
        if at < last.start {
            // Damage before the last record is not a torn write: reported, and the file kept.
            assert!(report.corrupt.iter().any(|l| l.contains("definitions.journal")), "{case}: {report:?}");
            assert_eq!(damaged_copy(&mem, "definitions.journal"), Some(flipped), "{case}: the damaged journal kept");
        }
    }
    // The flips that hit a declaration (j1, j2, j3: their records' bytes) set their logs aside.
    assert!(quarantines > 100, "{quarantines} quarantined logs");
}

#[test]
fn a_journal_cut_at_any_length_keeps_every_whole_record() {
    let fixture = fixture();
    let journal = fixture.mem.read(&journal_path()).expect("journal");
    let records = journal_records(&journal);
    for len in 0..journal.len() {
        let mem = fixture.mem.snapshot();
        mem.truncate(&journal_path(), len as u64).expect("cut");
        let lost: Vec<&str> = records
            .iter()
            .filter(|(range, payload)| range.end > len && contains(payload, b"put-queue"))
            .flat_map(|(_, payload)| fixture.counts.keys().copied().filter(|n| contains(payload, n.as_bytes())))
            .collect();
        check(&format!("journal cut to {len} bytes"), &fixture, &mem, &lost);
    }
}

#[test]
fn a_damaged_snapshot_falls_back_to_the_previous_one_and_both_journals() {
    let fixture = fixture();
    let snapshot = fixture.mem.read(&snapshot_path()).expect("snapshot");
    for at in 0..snapshot.len() {
        let mem = fixture.mem.snapshot();
        mem.corrupt(&snapshot_path(), at as u64);
        let case = format!("snapshot byte {at} flipped");
        let report = check(&case, &fixture, &mem, &[]);
        assert!(report.corrupt.iter().any(|l| l.contains("definitions.previous")), "{case}: {report:?}");
        let mut flipped = snapshot.clone();
        flipped[at] ^= 0xff;
        assert_eq!(damaged_copy(&mem, "definitions"), Some(flipped), "{case}: the damaged snapshot kept");
    }
    for len in 0..snapshot.len() {
        let mem = fixture.mem.snapshot();
        mem.truncate(&snapshot_path(), len as u64).expect("cut");
        check(&format!("snapshot cut to {len} bytes"), &fixture, &mem, &[]);
    }
    let mem = fixture.mem.snapshot();
    mem.remove_file(&snapshot_path()).expect("delete");
    check("snapshot deleted", &fixture, &mem, &[]);
}

#[test]
fn without_a_snapshot_to_fall_back_on_the_broker_refuses_unless_told_to_accept_the_loss() {
    let fixture = fixture();
    let mem = fixture.mem.snapshot();
    mem.remove_file(&snapshot_path()).expect("delete");
    mem.remove_file(&data().join("definitions.previous")).expect("delete");
    let files = queue_files(&mem);
    let err = open(&mem).err().expect("refused");
    assert!(err.contains("/data/definitions") && err.contains(ACCEPT_LOSS), "{err}");
    assert_eq!(queue_files(&mem), files, "a refused start changes no log");
    // The operator accepts the loss: what the journals hold comes back (here, everything).
    mem.replace_durably(&data().join(ACCEPT_LOSS), b"").expect("marker");
    check("started accepting the loss", &fixture, &mem, &[]);
    assert_eq!(mem.file_len(&data().join(ACCEPT_LOSS)), None, "the marker is used once");

    // Without the previous journal either, s1 and s2 (declared in it) are quarantined.
    let mem = fixture.mem.snapshot();
    for name in ["definitions", "definitions.previous", "definitions.journal.previous"] {
        mem.remove_file(&data().join(name)).expect("delete");
    }
    assert!(open(&mem).is_err());
    mem.replace_durably(&data().join(ACCEPT_LOSS), b"").expect("marker");
    check("started accepting the loss of s1 and s2", &fixture, &mem, &["s1", "s2"]);
}

#[test]
fn a_snapshot_of_the_format_without_a_checksum_still_opens() {
    let fixture = fixture();
    let mem = fixture.mem.snapshot();
    let snapshot = mem.read(&snapshot_path()).expect("snapshot");
    assert_eq!(&snapshot[..8], b"WRNDEF02");
    // The old format is the same field table without the 16-byte header.
    mem.replace_durably(&snapshot_path(), &snapshot[16..]).expect("old format");
    let report = check("old snapshot format", &fixture, &mem, &[]);
    assert!(report.corrupt.is_empty(), "{report:?}");
    assert_eq!(&mem.read(&snapshot_path()).expect("snapshot")[..8], b"WRNDEF02", "rewritten in the new format");
}

#[test]
fn an_unknown_queue_directory_is_quarantined_with_its_messages_counted() {
    let fixture = fixture();
    let mem = fixture.mem.snapshot();
    // A copy of j3's log (with its priority lane) under a name no definition has, twice over.
    let stranger = data().join("queues").join("00112233445566778899aabbccddeeff");
    for round in 1..=2 {
        for (path, bytes) in queue_files(&mem) {
            if let Ok(rest) = path.strip_prefix(queue_dir("j3")) {
                let to = stranger.join(rest);
                mem.create_dir_all(to.parent().expect("parent")).expect("dir");
                mem.replace_durably(&to, &bytes).expect("copy");
            }
        }
        let report = check(&format!("unknown directory, round {round}"), &fixture, &mem, &[]);
        let name = if round == 1 { "00112233445566778899aabbccddeeff" } else { "00112233445566778899aabbccddeeff.2" };
        let to = data().join(QUARANTINE).join("queues").join(name);
        assert_eq!(report.quarantined.len(), 1, "{report:?}");
        let q = &report.quarantined[0];
        assert_eq!((&q.from, &q.to, q.messages, &q.owner), (&stranger, &to, 2, &None));
        assert!(mem.paths().iter().any(|p| p.starts_with(to.join("p3"))), "the priority lane moved with it");
        assert!(!mem.paths().iter().any(|p| p.starts_with(&stranger)));
    }
}
