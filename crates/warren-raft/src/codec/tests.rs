//! Round trips of every encoded type, a property test over random entries, votes and requests,
//! and refusal of cut, extended and corrupted input.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use openraft::{BasicNode, EntryPayload};
use proptest::prelude::*;

use super::*;

/// A machine whose commands are arbitrary byte strings, so that commands of every length and
/// content cross the codec.
struct Blob;

impl Machine for Blob {
    type Command = Vec<u8>;
    type Output = ();

    fn apply(&mut self, _: u64, _: &Vec<u8>) {}

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn encode_command(command: &Vec<u8>, out: &mut Vec<u8>) {
        out.extend_from_slice(command);
    }

    fn decode_command(bytes: &[u8]) -> io::Result<Vec<u8>> {
        if bytes.first() == Some(&0xff) {
            // Lets tests check that a command the machine refuses fails the whole decode.
            return Err(io::Error::new(io::ErrorKind::InvalidData, "commands never start with 0xff"));
        }
        Ok(bytes.to_vec())
    }
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(LeaderId::new(term, node), index)
}

fn vote(term: u64, node: u64, committed: bool) -> Vote {
    let mut vote = Vote::new(term, node);
    if committed {
        vote.commit();
    }
    vote
}

fn membership(configs: Vec<Vec<u64>>, learners: &[u64]) -> Membership {
    let configs: Vec<BTreeSet<u64>> = configs.into_iter().map(|c| c.into_iter().collect()).collect();
    let nodes: BTreeMap<u64, BasicNode> = configs
        .iter()
        .flatten()
        .chain(learners)
        .map(|id| (*id, BasicNode { addr: format!("10.0.0.{id}:25672") }))
        .collect();
    Membership::new(configs, nodes)
}

fn sample_entries() -> Vec<Entry<Blob>> {
    vec![
        Entry::<Blob> { log_id: log_id(1, 1, 1), payload: EntryPayload::Blank },
        Entry::<Blob> { log_id: log_id(1, 1, 2), payload: EntryPayload::Normal(b"hello".to_vec()) },
        Entry::<Blob> { log_id: log_id(1, 1, 3), payload: EntryPayload::Normal(Vec::new()) },
        Entry::<Blob> {
            log_id: log_id(2, 3, 4),
            payload: EntryPayload::Membership(membership(vec![vec![1, 2, 3], vec![2, 3, 4]], &[9])),
        },
    ]
}

fn sample_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(4, 2, 99)),
        last_membership: StoredMembership::new(Some(log_id(3, 1, 50)), membership(vec![vec![1, 2, 3]], &[7])),
        snapshot_id: "4-2-99-1".to_owned(),
    }
}

fn sample_append() -> AppendRequest<Blob> {
    AppendRequest::<Blob> {
        vote: vote(2, 3, true),
        prev_log_id: Some(log_id(1, 1, 0)),
        entries: sample_entries(),
        leader_commit: Some(log_id(1, 1, 2)),
    }
}

fn encoded(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out);
    out
}

/// Every strict prefix of `bytes` and `bytes` with a byte appended must be refused as
/// `InvalidData`.
fn assert_cut_and_extended_refused<T: std::fmt::Debug>(bytes: &[u8], decode: impl Fn(&[u8]) -> io::Result<T>) {
    for len in 0..bytes.len() {
        match decode(&bytes[..len]) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "prefix of {len} bytes: {e}"),
            Ok(value) => panic!("a prefix of {len} of {} bytes decoded: {value:?}", bytes.len()),
        }
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    let err = decode(&longer).expect_err("a trailing byte is refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn votes_and_log_ids_round_trip() {
    for v in [vote(0, 0, false), vote(7, 3, true), vote(u64::MAX, u64::MAX, false)] {
        let bytes = encoded(|out| encode_vote(&v, out));
        assert_eq!(bytes.len(), 17);
        assert_eq!(decode_vote(&bytes).expect("decodes"), v);
        assert_cut_and_extended_refused(&bytes, decode_vote);
    }
    let id = log_id(5, 2, 1234);
    let bytes = encoded(|out| encode_log_id(&id, out));
    assert_eq!(bytes, [5u64.to_be_bytes(), 2u64.to_be_bytes(), 1234u64.to_be_bytes()].concat());
    assert_eq!(decode_log_id(&bytes).expect("decodes"), id);
    assert_cut_and_extended_refused(&bytes, decode_log_id);
}

#[test]
fn a_committed_flag_other_than_0_or_1_is_refused() {
    let mut bytes = encoded(|out| encode_vote(&vote(1, 1, true), out));
    bytes[16] = 2;
    assert_eq!(decode_vote(&bytes).expect_err("refused").kind(), io::ErrorKind::InvalidData);
}

#[test]
fn memberships_round_trip() {
    let cases = [
        membership(vec![], &[]),
        membership(vec![vec![1]], &[]),
        membership(vec![vec![1, 2, 3]], &[4, 5]),
        membership(vec![vec![1, 2, 3], vec![3, 4, 5]], &[]),
    ];
    for m in cases {
        let bytes = encoded(|out| encode_membership(&m, out));
        assert_eq!(decode_membership(&bytes).expect("decodes"), m);
        assert_cut_and_extended_refused(&bytes, decode_membership);

        let stored = StoredMembership::new(Some(log_id(2, 1, 8)), m.clone());
        let bytes = encoded(|out| encode_stored_membership(&stored, out));
        assert_eq!(decode_stored_membership(&bytes).expect("decodes"), stored);
        assert_cut_and_extended_refused(&bytes, decode_stored_membership);
    }
    let unlogged = StoredMembership::new(None, membership(vec![vec![1]], &[]));
    let bytes = encoded(|out| encode_stored_membership(&unlogged, out));
    assert_eq!(decode_stored_membership(&bytes).expect("decodes"), unlogged);
}

#[test]
fn a_membership_with_ids_out_of_order_or_a_voter_without_a_node_is_refused() {
    // One config with voters 2 then 1.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&2u32.to_be_bytes());
    bytes.extend_from_slice(&2u64.to_be_bytes());
    bytes.extend_from_slice(&1u64.to_be_bytes());
    bytes.extend_from_slice(&0u32.to_be_bytes());
    let err = decode_membership(&bytes).expect_err("out of order");
    assert!(err.to_string().contains("ascending"), "{err}");

    // Voter 1 and no nodes.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&1u64.to_be_bytes());
    bytes.extend_from_slice(&0u32.to_be_bytes());
    let err = decode_membership(&bytes).expect_err("voter without node");
    assert!(err.to_string().contains("no node"), "{err}");
}

#[test]
fn an_address_that_is_not_utf8_is_refused() {
    let m = membership(vec![vec![1]], &[]);
    let mut bytes = encoded(|out| encode_membership(&m, out));
    let last = bytes.len() - 1;
    bytes[last] = 0xff;
    let err = decode_membership(&bytes).expect_err("not UTF-8");
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

#[test]
fn snapshot_meta_round_trips() {
    let meta = sample_meta();
    let bytes = encoded(|out| encode_snapshot_meta(&meta, out));
    assert_eq!(decode_snapshot_meta(&bytes).expect("decodes"), meta);
    assert_cut_and_extended_refused(&bytes, decode_snapshot_meta);

    let empty = SnapshotMeta::default();
    let bytes = encoded(|out| encode_snapshot_meta(&empty, out));
    assert_eq!(decode_snapshot_meta(&bytes).expect("decodes"), empty);
}

#[test]
fn entries_of_every_payload_round_trip() {
    for entry in sample_entries() {
        let bytes = encoded(|out| encode_entry(&entry, out));
        assert_eq!(decode_entry::<Blob>(&bytes).expect("decodes"), entry);
        assert_cut_and_extended_refused(&bytes, decode_entry::<Blob>);
    }
}

#[test]
fn an_unknown_payload_tag_or_a_refused_command_fails_the_entry() {
    let entry = Entry::<Blob> { log_id: log_id(1, 1, 1), payload: EntryPayload::Blank };
    let mut bytes = encoded(|out| encode_entry(&entry, out));
    bytes[24] = 3;
    let err = decode_entry::<Blob>(&bytes).expect_err("unknown tag");
    assert!(err.to_string().contains("tag 3"), "{err}");

    let entry = Entry::<Blob> { log_id: log_id(1, 1, 1), payload: EntryPayload::Normal(vec![0xff, 1]) };
    let bytes = encoded(|out| encode_entry(&entry, out));
    let err = decode_entry::<Blob>(&bytes).expect_err("the machine refuses the command");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("0xff"), "{err}");
}

#[test]
fn append_requests_and_every_append_response_round_trip() {
    let request = sample_append();
    let bytes = encoded(|out| encode_append_request(&request, out));
    let back = decode_append_request::<Blob>(&bytes).expect("decodes");
    assert_eq!(format!("{back:?}"), format!("{request:?}"));
    assert_eq!(back.entries, request.entries);
    assert_eq!(encoded(|out| encode_append_request(&back, out)), bytes, "canonical");
    assert_cut_and_extended_refused(&bytes, decode_append_request::<Blob>);

    let heartbeat =
        AppendRequest::<Blob> { vote: vote(1, 1, true), prev_log_id: None, entries: Vec::new(), leader_commit: None };
    let bytes = encoded(|out| encode_append_request(&heartbeat, out));
    assert_eq!(bytes.len(), 17 + 1 + 1 + 4);
    assert!(decode_append_request::<Blob>(&bytes).expect("decodes").entries.is_empty());

    let responses = [
        AppendResponse::Success,
        AppendResponse::PartialSuccess(None),
        AppendResponse::PartialSuccess(Some(log_id(3, 2, 10))),
        AppendResponse::Conflict,
        AppendResponse::HigherVote(vote(9, 2, false)),
    ];
    for response in responses {
        let bytes = encoded(|out| encode_append_response(&response, out));
        assert_eq!(decode_append_response(&bytes).expect("decodes"), response);
        assert_cut_and_extended_refused(&bytes, decode_append_response);
    }
    assert!(decode_append_response(&[4]).is_err(), "unknown response tag");
}

#[test]
fn vote_requests_and_responses_round_trip() {
    for request in
        [VoteRequest::new(vote(3, 1, false), None), VoteRequest::new(vote(3, 1, false), Some(log_id(2, 2, 7)))]
    {
        let bytes = encoded(|out| encode_vote_request(&request, out));
        assert_eq!(decode_vote_request(&bytes).expect("decodes"), request);
        assert_cut_and_extended_refused(&bytes, decode_vote_request);
    }
    for response in [
        VoteResponse::new(vote(3, 1, false), None, true),
        VoteResponse::new(vote(4, 2, true), Some(log_id(2, 2, 7)), false),
    ] {
        let bytes = encoded(|out| encode_vote_response(&response, out));
        assert_eq!(decode_vote_response(&bytes).expect("decodes"), response);
        assert_cut_and_extended_refused(&bytes, decode_vote_response);
    }
}

#[test]
fn snapshot_requests_and_responses_round_trip() {
    let leader = vote(4, 2, true);
    let snapshot = Snapshot::<Blob> { meta: sample_meta(), snapshot: Box::new(b"the machine's bytes".to_vec()) };
    let bytes = encoded(|out| encode_snapshot_request(&leader, &snapshot, out));
    let (back_vote, back) = decode_snapshot_request::<Blob>(&bytes).expect("decodes");
    assert_eq!(back_vote, leader);
    assert_eq!(back.meta, snapshot.meta);
    assert_eq!(back.snapshot, snapshot.snapshot);
    assert_cut_and_extended_refused(&bytes, decode_snapshot_request::<Blob>);

    let response = SnapshotResponse::new(vote(5, 1, true));
    let bytes = encoded(|out| encode_snapshot_response(&response, out));
    assert_eq!(decode_snapshot_response(&bytes).expect("decodes"), response);
    assert_cut_and_extended_refused(&bytes, decode_snapshot_response);
}

#[test]
fn a_hostile_count_or_length_is_refused_before_anything_is_reserved() {
    // A heartbeat that claims u32::MAX entries with nothing behind them.
    let mut bytes = encoded(|out| {
        encode_vote(&vote(1, 1, true), out);
        out.extend_from_slice(&[0, 0]);
    });
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = decode_append_request::<Blob>(&bytes).expect_err("refused");
    assert!(err.to_string().contains("exceeds the input"), "{err}");

    // A snapshot claiming 4 GiB of data.
    let mut bytes = encoded(|out| {
        encode_vote(&vote(1, 1, true), out);
        encode_snapshot_meta(&SnapshotMeta::default(), out);
    });
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = decode_snapshot_request::<Blob>(&bytes).expect_err("refused");
    assert!(err.to_string().contains("truncated snapshot data"), "{err}");

    // A membership claiming u32::MAX configs, and one claiming u32::MAX voters.
    assert!(decode_membership(&u32::MAX.to_be_bytes()).is_err());
    let bytes = [1u32.to_be_bytes(), u32::MAX.to_be_bytes()].concat();
    assert!(decode_membership(&bytes).is_err());
}

#[test]
fn an_option_tag_other_than_0_or_1_is_refused() {
    let request = VoteRequest::new(vote(3, 1, false), None);
    let mut bytes = encoded(|out| encode_vote_request(&request, out));
    bytes[17] = 2;
    let err = decode_vote_request(&bytes).expect_err("refused");
    assert!(err.to_string().contains("option tag 2"), "{err}");
}

// ---- property tests ----

fn arb_vote() -> impl Strategy<Value = Vote> {
    (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(term, node, committed)| vote(term, node, committed))
}

fn arb_log_id() -> impl Strategy<Value = LogId> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, node, index)| log_id(term, node, index))
}

fn arb_membership() -> impl Strategy<Value = Membership> {
    let ids = || prop::collection::btree_set(0u64..16, 0..5);
    (prop::collection::vec(ids(), 0..3), prop::collection::btree_map(0u64..16, "[a-z0-9.:é]{0,12}", 0..4)).prop_map(
        |(configs, nodes)| {
            let nodes: BTreeMap<u64, BasicNode> =
                nodes.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
            Membership::new(configs, nodes)
        },
    )
}

fn arb_entry() -> impl Strategy<Value = Entry<Blob>> {
    let payload = prop_oneof![
        Just(EntryPayload::<crate::Types<Blob>>::Blank),
        // Commands never start with 0xff: Blob refuses those.
        prop::collection::vec(0u8..0xff, 0..64).prop_map(EntryPayload::Normal),
        arb_membership().prop_map(EntryPayload::Membership),
    ];
    (arb_log_id(), payload).prop_map(|(log_id, payload)| Entry::<Blob> { log_id, payload })
}

fn arb_append() -> impl Strategy<Value = AppendRequest<Blob>> {
    (
        arb_vote(),
        prop::option::of(arb_log_id()),
        prop::collection::vec(arb_entry(), 0..8),
        prop::option::of(arb_log_id()),
    )
        .prop_map(|(vote, prev_log_id, entries, leader_commit)| AppendRequest::<Blob> {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
}

proptest! {
    #[test]
    fn entries_round_trip_prop(entry in arb_entry()) {
        let bytes = encoded(|out| encode_entry(&entry, out));
        let back = decode_entry::<Blob>(&bytes).expect("decodes");
        prop_assert_eq!(&back, &entry);
        prop_assert_eq!(encoded(|out| encode_entry(&back, out)), bytes);
    }

    #[test]
    fn votes_and_vote_rpcs_round_trip_prop(
        v in arb_vote(),
        last in prop::option::of(arb_log_id()),
        granted in any::<bool>(),
    ) {
        let bytes = encoded(|out| encode_vote(&v, out));
        prop_assert_eq!(decode_vote(&bytes).expect("decodes"), v);
        let request = VoteRequest::new(v, last);
        let bytes = encoded(|out| encode_vote_request(&request, out));
        prop_assert_eq!(decode_vote_request(&bytes).expect("decodes"), request);
        let response = VoteResponse::new(v, last, granted);
        let bytes = encoded(|out| encode_vote_response(&response, out));
        prop_assert_eq!(decode_vote_response(&bytes).expect("decodes"), response);
    }

    #[test]
    fn append_requests_round_trip_prop(request in arb_append()) {
        let bytes = encoded(|out| encode_append_request(&request, out));
        let back = decode_append_request::<Blob>(&bytes).expect("decodes");
        prop_assert_eq!(back.vote, request.vote);
        prop_assert_eq!(back.prev_log_id, request.prev_log_id);
        prop_assert_eq!(back.leader_commit, request.leader_commit);
        prop_assert_eq!(&back.entries, &request.entries);
        prop_assert_eq!(encoded(|out| encode_append_request(&back, out)), bytes);
    }

    /// Any cut of a valid request is refused, and so is any request with one byte changed
    /// unless the change still spells a valid request (then it must re-encode to those bytes).
    #[test]
    fn cut_or_corrupted_requests_never_panic_prop(
        request in arb_append(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let bytes = encoded(|out| encode_append_request(&request, out));
        let cut = at.index(bytes.len());
        prop_assert!(decode_append_request::<Blob>(&bytes[..cut]).is_err());
        let mut corrupt = bytes.clone();
        corrupt[cut] ^= xor;
        if let Ok(back) = decode_append_request::<Blob>(&corrupt) {
            prop_assert_eq!(encoded(|out| encode_append_request(&back, out)), corrupt);
        }
    }

    /// Random bytes never panic any decoder.
    #[test]
    fn random_bytes_never_panic_prop(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_append_request::<Blob>(&bytes);
        let _ = decode_append_response(&bytes);
        let _ = decode_vote_request(&bytes);
        let _ = decode_vote_response(&bytes);
        let _ = decode_snapshot_request::<Blob>(&bytes);
        let _ = decode_snapshot_response(&bytes);
        let _ = decode_entry::<Blob>(&bytes);
        let _ = decode_membership(&bytes);
        let _ = decode_snapshot_meta(&bytes);
    }
}
