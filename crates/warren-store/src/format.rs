//! The on-disk byte layout of segment and ack files, and the pure (no I/O) code that writes and
//! validates it. docs/store-format.md is the long form; the constants below are the truth.
//!
//! Invariants: every function here is total over arbitrary bytes (it never panics and never
//! allocates more than the input it is given), so recovery survives any file content.
//!
//! All integers are little-endian.
//!
//! ```text
//! File header, 16 bytes, first in every .seg and .ack file:
//!   0..8    magic       b"WRNSEG01" (segment) or b"WRNACK01" (ack file)
//!   8..10   version     u16, FORMAT_VERSION
//!   10..12  reserved    u16, zero
//!   12..16  crc32       u32, CRC-32 (IEEE) of bytes 0..12
//!
//! Segment record, 17 + len bytes, packed back to back after the header:
//!   0..4    crc32       u32, CRC-32 of bytes 4..17+len (len, seq, flags and payload)
//!   4..8    len         u32, payload length in bytes, at most MAX_PAYLOAD_BYTES
//!   8..16   seq         u64, the record's sequence number; a segment holds seqs base, base+1, ...
//!   16      flags       u8, bit 0 = persistent; other bits must be zero
//!   17..    payload     len bytes, opaque
//!
//! Ack entry, 24 bytes, packed back to back after the header:
//!   0..4    crc32       u32, CRC-32 of bytes 4..24
//!   4       kind        u8, ACK_SETTLE | ACK_SETTLE_RANGE | ACK_DELIVERED
//!   5..8    reserved    zero
//!   8..16   a           u64, settle: seq; settle range: first seq; delivered: seq
//!   16..24  b           u64, settle range: end seq (exclusive); zero otherwise
//! ```

use std::ops::Range;

/// Magic of a segment file.
pub const SEG_MAGIC: [u8; 8] = *b"WRNSEG01";
/// Magic of an ack file.
pub const ACK_MAGIC: [u8; 8] = *b"WRNACK01";
/// Version written into every file header; files with another version are refused, not guessed at.
pub const FORMAT_VERSION: u16 = 1;

/// Length of the header at the start of every file.
pub const FILE_HEADER_LEN: usize = 16;
const HDR_MAGIC: Range<usize> = 0..8;
const HDR_VERSION: Range<usize> = 8..10;
const HDR_CRC: Range<usize> = 12..16;
/// The header checksum covers the magic, version and reserved bytes.
const HDR_CRC_COVERS: Range<usize> = 0..12;

/// Length of a record's fixed part (everything but the payload).
pub const REC_HEADER_LEN: usize = 17;
const REC_CRC: Range<usize> = 0..4;
const REC_LEN: Range<usize> = 4..8;
const REC_SEQ: Range<usize> = 8..16;
const REC_FLAGS: usize = 16;
/// The record checksum covers everything after the checksum itself.
const REC_CRC_FROM: usize = 4;
/// Record flag: the message survives a restart.
pub const FLAG_PERSISTENT: u8 = 0b1;
/// Largest payload a record may hold. Why: it bounds what one length field can make recovery or a
/// read allocate, and sits far above the broker's 16 MiB message limit plus properties.
pub const MAX_PAYLOAD_BYTES: usize = 128 << 20;

/// Length of one ack entry.
pub const ACK_ENTRY_LEN: usize = 24;
const ACK_CRC: Range<usize> = 0..4;
const ACK_KIND: usize = 4;
const ACK_A: Range<usize> = 8..16;
const ACK_B: Range<usize> = 16..24;
const ACK_CRC_FROM: usize = 4;
/// Ack kind: one seq settled.
pub const ACK_SETTLE: u8 = 1;
/// Ack kind: every seq in a..b settled.
pub const ACK_SETTLE_RANGE: u8 = 2;
/// Ack kind: every seq <= a has been delivered at least once.
pub const ACK_DELIVERED: u8 = 3;

fn le_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Which of the two file kinds a header belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Segment,
    Ack,
}

impl FileKind {
    fn magic(self) -> [u8; 8] {
        match self {
            FileKind::Segment => SEG_MAGIC,
            FileKind::Ack => ACK_MAGIC,
        }
    }
}

/// Appends a file header of `kind` to `out`.
pub fn encode_header(kind: FileKind, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&kind.magic());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    let crc = crc32fast::hash(&out[start + HDR_CRC_COVERS.start..start + HDR_CRC_COVERS.end]);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, FILE_HEADER_LEN);
}

/// What the first bytes of a file say about its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCheck {
    Ok,
    /// Shorter than a header: the file was cut while being created.
    Short,
    /// Wrong magic or checksum.
    Bad,
    /// A well-formed header of a version this code does not know.
    UnknownVersion(u16),
}

pub fn check_header(kind: FileKind, bytes: &[u8]) -> HeaderCheck {
    if bytes.len() < FILE_HEADER_LEN {
        return HeaderCheck::Short;
    }
    let crc = crc32fast::hash(&bytes[HDR_CRC_COVERS]);
    if bytes[HDR_MAGIC] != kind.magic() || le_u32(&bytes[HDR_CRC]) != crc {
        return HeaderCheck::Bad;
    }
    match le_u16(&bytes[HDR_VERSION]) {
        FORMAT_VERSION => HeaderCheck::Ok,
        v => HeaderCheck::UnknownVersion(v),
    }
}

/// Appends one record to `out`. The caller has checked `payload.len() <= MAX_PAYLOAD_BYTES`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, persistent: bool, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_BYTES);
    let start = out.len();
    out.reserve(REC_HEADER_LEN + payload.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(if persistent { FLAG_PERSISTENT } else { 0 });
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + REC_CRC_FROM..]);
    out[start + REC_CRC.start..start + REC_CRC.end].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed part of a record, read without looking at the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub len: u32,
    pub seq: u64,
    pub flags: u8,
}

impl RecordHeader {
    /// Bytes the whole record occupies.
    pub fn total_len(&self) -> u64 {
        REC_HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Reads the fixed part of the record at the start of `bytes`, if `bytes` is long enough.
pub fn record_header(bytes: &[u8]) -> Option<RecordHeader> {
    if bytes.len() < REC_HEADER_LEN {
        return None;
    }
    Some(RecordHeader {
        crc: le_u32(&bytes[REC_CRC]),
        len: le_u32(&bytes[REC_LEN]),
        seq: le_u64(&bytes[REC_SEQ]),
        flags: bytes[REC_FLAGS],
    })
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes left than a record header.
    ShortHeader,
    /// The length field exceeds MAX_PAYLOAD_BYTES.
    TooLong(u32),
    /// The record would extend past the end of the file.
    PastEnd(u32),
    BadChecksum,
    UnknownFlags(u8),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::ShortHeader => write!(f, "truncated record header"),
            RecordError::TooLong(len) => write!(f, "record length {len} exceeds the maximum {MAX_PAYLOAD_BYTES}"),
            RecordError::PastEnd(len) => write!(f, "record of payload length {len} extends past the end of the file"),
            RecordError::BadChecksum => write!(f, "record checksum mismatch"),
            RecordError::UnknownFlags(flags) => write!(f, "unknown record flags {flags:#04x}"),
        }
    }
}

/// Validates the record at the start of `bytes` (which run to the end of the file) and returns its
/// header; the payload is `bytes[REC_HEADER_LEN..total_len]`.
pub fn check_record(bytes: &[u8]) -> Result<RecordHeader, RecordError> {
    let h = record_header(bytes).ok_or(RecordError::ShortHeader)?;
    if h.len as usize > MAX_PAYLOAD_BYTES {
        return Err(RecordError::TooLong(h.len));
    }
    let total = REC_HEADER_LEN + h.len as usize;
    if total > bytes.len() {
        return Err(RecordError::PastEnd(h.len));
    }
    if crc32fast::hash(&bytes[REC_CRC_FROM..total]) != h.crc {
        return Err(RecordError::BadChecksum);
    }
    if h.flags & !FLAG_PERSISTENT != 0 {
        return Err(RecordError::UnknownFlags(h.flags));
    }
    Ok(h)
}

/// One decoded ack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEntry {
    Settle(u64),
    /// Seqs `from..to` settled.
    SettleRange(u64, u64),
    Delivered(u64),
}

impl AckEntry {
    /// Appends the entry to `out`.
    pub fn encode(self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + ACK_ENTRY_LEN, 0);
        self.encode_into(&mut out[start..]);
    }

    /// Writes the entry over `slot`, which is ACK_ENTRY_LEN bytes.
    pub fn encode_into(self, slot: &mut [u8]) {
        let (kind, a, b) = match self {
            AckEntry::Settle(seq) => (ACK_SETTLE, seq, 0),
            AckEntry::SettleRange(from, to) => (ACK_SETTLE_RANGE, from, to),
            AckEntry::Delivered(seq) => (ACK_DELIVERED, seq, 0),
        };
        slot[..ACK_ENTRY_LEN].fill(0);
        slot[ACK_KIND] = kind;
        slot[ACK_A].copy_from_slice(&a.to_le_bytes());
        slot[ACK_B].copy_from_slice(&b.to_le_bytes());
        let crc = crc32fast::hash(&slot[ACK_CRC_FROM..ACK_ENTRY_LEN]);
        slot[ACK_CRC].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes an entry from `slot` (at least ACK_ENTRY_LEN bytes); `None` if it is not valid.
    pub fn decode(slot: &[u8]) -> Option<AckEntry> {
        if slot.len() < ACK_ENTRY_LEN || crc32fast::hash(&slot[ACK_CRC_FROM..ACK_ENTRY_LEN]) != le_u32(&slot[ACK_CRC]) {
            return None;
        }
        if slot[5..8] != [0, 0, 0] {
            return None;
        }
        let (a, b) = (le_u64(&slot[ACK_A]), le_u64(&slot[ACK_B]));
        match slot[ACK_KIND] {
            ACK_SETTLE if b == 0 => Some(AckEntry::Settle(a)),
            ACK_SETTLE_RANGE if a < b => Some(AckEntry::SettleRange(a, b)),
            ACK_DELIVERED if b == 0 => Some(AckEntry::Delivered(a)),
            _ => None,
        }
    }

    /// The highest seq this entry refers to: recovery never hands out a seq at or below it again,
    /// so an ack that outlived its (unsynced, lost) record cannot settle a new record.
    pub fn max_seq(self) -> u64 {
        match self {
            AckEntry::Settle(seq) | AckEntry::Delivered(seq) => seq,
            AckEntry::SettleRange(_, to) => to - 1,
        }
    }
}

/// What recovery learned from one segment file's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Valid records from the start (seqs base..base+records).
    pub records: u64,
    /// Offsets (relative to `base`) of the non-persistent records among them.
    pub transient: Vec<u64>,
    /// Bytes to keep: the end of the last valid record (0 if even the header is torn).
    pub valid_len: u64,
    /// True if the file holds bytes past `valid_len` that are a torn write to cut off.
    pub torn: bool,
    /// Offset and reason of the first invalid record when valid data follows it (corruption: the
    /// rest of the segment is skipped, never cut off).
    pub corruption: Option<(u64, String)>,
    /// Highest seq of a valid record seen anywhere in the file, including the skipped part.
    pub max_seq: Option<u64>,
}

/// Error of a scan: the file is of a format version this code does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownVersion(pub u16);

/// Validates a whole segment file named by `base`. Total over arbitrary bytes.
///
/// Torn versus corrupt: an invalid record (or header) is a torn tail if no valid record with a
/// plausible seq follows it anywhere in the file; then everything from it on is cut. If one does
/// follow, the file was damaged after it was written: that is corruption, reported, not cut.
/// A record with a valid checksum but an unexpected seq is always corruption.
pub fn scan_segment(bytes: &[u8], base: u64) -> Result<SegmentScan, UnknownVersion> {
    let mut scan = SegmentScan::default();
    match check_header(FileKind::Segment, bytes) {
        HeaderCheck::Ok => {}
        HeaderCheck::UnknownVersion(v) => return Err(UnknownVersion(v)),
        HeaderCheck::Short => {
            scan.torn = !bytes.is_empty();
            return Ok(scan);
        }
        HeaderCheck::Bad => {
            match find_valid_record(bytes, FILE_HEADER_LEN, base) {
                Some(at) => {
                    scan.corruption = Some((0, "bad segment header (magic or checksum)".to_string()));
                    scan.max_seq = last_valid_seq(bytes, at);
                    scan.valid_len = bytes.len() as u64;
                }
                None => scan.torn = true,
            }
            return Ok(scan);
        }
    }
    let mut off = FILE_HEADER_LEN;
    let mut expect = base;
    loop {
        if off == bytes.len() {
            break;
        }
        match check_record(&bytes[off..]) {
            Ok(h) if h.seq == expect => {
                if h.flags & FLAG_PERSISTENT == 0 {
                    scan.transient.push(scan.records);
                }
                scan.records += 1;
                scan.max_seq = Some(h.seq);
                expect = expect.saturating_add(1);
                off += h.total_len() as usize;
            }
            Ok(h) => {
                scan.corruption = Some((off as u64, format!("expected seq {expect}, found seq {}", h.seq)));
                scan.max_seq = scan.max_seq.max(last_valid_seq(bytes, off));
                break;
            }
            Err(e) => match find_valid_record(bytes, off + 1, expect) {
                Some(at) => {
                    scan.corruption = Some((off as u64, e.to_string()));
                    scan.max_seq = scan.max_seq.max(last_valid_seq(bytes, at));
                    break;
                }
                None => {
                    scan.torn = true;
                    break;
                }
            },
        }
    }
    scan.valid_len = if scan.corruption.is_some() { bytes.len() as u64 } else { off as u64 };
    Ok(scan)
}

/// The first offset at or after `from` holding a valid record whose seq is one that could follow
/// `expect` in this file. Cheap filters run before the checksum, so this is linear in the bytes.
fn find_valid_record(bytes: &[u8], from: usize, expect: u64) -> Option<usize> {
    let max_records_left = (bytes.len().saturating_sub(from) / REC_HEADER_LEN) as u64 + 1;
    let max_seq = expect.saturating_add(max_records_left);
    (from..bytes.len().saturating_sub(REC_HEADER_LEN - 1)).find(|&at| {
        let Some(h) = record_header(&bytes[at..]) else { return false };
        h.seq >= expect
            && h.seq <= max_seq
            && (h.len as usize) <= bytes.len() - at - REC_HEADER_LEN
            && check_record(&bytes[at..]).is_ok()
    })
}

/// Walks valid records from `at` and returns the highest seq among them.
fn last_valid_seq(bytes: &[u8], mut at: usize) -> Option<u64> {
    let mut max = None;
    while at < bytes.len() {
        match check_record(&bytes[at..]) {
            Ok(h) => {
                max = max.max(Some(h.seq));
                at += h.total_len() as usize;
            }
            Err(_) => break,
        }
    }
    max
}

/// What recovery learned from one ack file's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AckScan {
    /// Bytes to keep: everything up to the end of the last valid entry (or the header).
    pub valid_len: u64,
    pub torn: bool,
    /// Offset and reason of damage followed by valid data (the damaged entries are skipped).
    pub corruption: Option<(u64, String)>,
}

/// Validates a whole ack file, calling `apply` for each valid entry in order. Entries have a
/// fixed size, so a damaged entry in the middle costs only that entry.
pub fn scan_acks(bytes: &[u8], mut apply: impl FnMut(AckEntry)) -> Result<AckScan, UnknownVersion> {
    let mut scan = AckScan::default();
    let mut bad_header = false;
    match check_header(FileKind::Ack, bytes) {
        HeaderCheck::Ok => {}
        HeaderCheck::UnknownVersion(v) => return Err(UnknownVersion(v)),
        HeaderCheck::Short => {
            scan.torn = !bytes.is_empty();
            return Ok(scan);
        }
        HeaderCheck::Bad => bad_header = true,
    }
    let mut valid_end = FILE_HEADER_LEN;
    let mut first_bad: Option<usize> = None;
    let mut bad = 0u64;
    let mut off = FILE_HEADER_LEN;
    while off + ACK_ENTRY_LEN <= bytes.len() {
        match AckEntry::decode(&bytes[off..off + ACK_ENTRY_LEN]) {
            Some(entry) => {
                apply(entry);
                valid_end = off + ACK_ENTRY_LEN;
            }
            None => {
                first_bad.get_or_insert(off);
                bad += 1;
            }
        }
        off += ACK_ENTRY_LEN;
    }
    // Invalid entries after the last valid one are the torn tail; those before it are damage.
    let bad_before_end = match first_bad {
        Some(at) if at < valid_end => {
            let trailing = (off - valid_end) / ACK_ENTRY_LEN;
            Some((at, bad - trailing as u64))
        }
        _ => None,
    };
    if bad_header {
        if valid_end == FILE_HEADER_LEN {
            // Nothing valid anywhere: a header torn while the file was created.
            scan.torn = true;
            return Ok(scan);
        }
        scan.corruption = Some((0, "bad ack file header (magic or checksum)".to_string()));
    } else if let Some((at, n)) = bad_before_end {
        scan.corruption = Some((at as u64, format!("{n} invalid ack entries, the first here")));
    }
    scan.valid_len = valid_end as u64;
    scan.torn = valid_end < bytes.len();
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, bool, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(FileKind::Segment, &mut out);
        for &(seq, p, payload) in records {
            encode_record(&mut out, seq, p, payload);
        }
        out
    }

    #[test]
    fn record_round_trips() {
        let bytes = segment(&[(7, true, b"hello"), (8, false, b"")]);
        let scan = scan_segment(&bytes, 7).expect("version");
        assert_eq!(scan.records, 2);
        assert_eq!(scan.transient, vec![1]);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert!(!scan.torn);
        assert_eq!(scan.corruption, None);
        assert_eq!(scan.max_seq, Some(8));
    }

    #[test]
    fn every_truncation_is_a_torn_tail() {
        let bytes = segment(&[(0, true, b"abc"), (1, true, b"defgh"), (2, true, b"")]);
        let ends = [0, FILE_HEADER_LEN, FILE_HEADER_LEN + 20, FILE_HEADER_LEN + 20 + 22, bytes.len()];
        for cut in 0..=bytes.len() {
            let scan = scan_segment(&bytes[..cut], 0).expect("version");
            assert_eq!(scan.corruption, None, "cut {cut}");
            let keep = ends.iter().copied().filter(|&e| e <= cut).max().unwrap_or(0);
            let keep = if keep < FILE_HEADER_LEN { 0 } else { keep };
            assert_eq!(scan.valid_len, keep as u64, "cut {cut}");
            assert_eq!(scan.torn, keep != cut, "cut {cut}");
        }
    }

    #[test]
    fn flipped_byte_before_valid_data_is_corruption() {
        let bytes = segment(&[(0, true, b"abc"), (1, true, b"defgh"), (2, true, b"xyz")]);
        let mut bad = bytes.clone();
        bad[FILE_HEADER_LEN + 20 + 18] ^= 0xff; // payload of seq 1
        let scan = scan_segment(&bad, 0).expect("version");
        assert_eq!(scan.records, 1);
        assert_eq!(scan.corruption.as_ref().map(|c| c.0), Some((FILE_HEADER_LEN + 20) as u64));
        assert!(!scan.torn);
        assert_eq!(scan.max_seq, Some(2));
    }

    #[test]
    fn flipped_byte_anywhere_never_panics_and_never_invents_records() {
        let bytes = segment(&[(5, true, b"abc"), (6, false, b"defgh"), (7, true, b"xyz")]);
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x5a;
            let scan = scan_segment(&bad, 5).expect("version");
            assert!(scan.records <= 3);
            assert!(scan.valid_len <= bad.len() as u64);
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SEG_MAGIC);
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(scan_segment(&bytes, 0), Err(UnknownVersion(2)));
    }

    #[test]
    fn ack_entries_round_trip_and_torn_tail_is_cut() {
        let mut bytes = Vec::new();
        encode_header(FileKind::Ack, &mut bytes);
        let entries = [AckEntry::Settle(3), AckEntry::SettleRange(4, 9), AckEntry::Delivered(8)];
        for e in entries {
            e.encode(&mut bytes);
        }
        let mut seen = Vec::new();
        let scan = scan_acks(&bytes, |e| seen.push(e)).expect("version");
        assert_eq!(seen, entries);
        assert!(!scan.torn);
        for cut in 0..bytes.len() {
            let mut n = 0;
            let scan = scan_acks(&bytes[..cut], |_| n += 1).expect("version");
            assert_eq!(scan.corruption, None);
            assert_eq!(n, cut.saturating_sub(FILE_HEADER_LEN) / ACK_ENTRY_LEN);
            let at_boundary =
                cut == 0 || (cut >= FILE_HEADER_LEN && (cut - FILE_HEADER_LEN).is_multiple_of(ACK_ENTRY_LEN));
            assert_eq!(scan.torn, !at_boundary, "cut {cut}");
        }
        let mut bad = bytes.clone();
        bad[FILE_HEADER_LEN + 9] ^= 1;
        let mut n = 0;
        let scan = scan_acks(&bad, |_| n += 1).expect("version");
        assert_eq!(n, 2);
        assert_eq!(scan.corruption.map(|c| c.0), Some(FILE_HEADER_LEN as u64));
    }

    #[test]
    fn payload_limit_is_enforced_on_read() {
        let mut bytes = vec![0u8; REC_HEADER_LEN];
        bytes[4..8].copy_from_slice(&(MAX_PAYLOAD_BYTES as u32 + 1).to_le_bytes());
        assert_eq!(check_record(&bytes), Err(RecordError::TooLong(MAX_PAYLOAD_BYTES as u32 + 1)));
        bytes[4..8].copy_from_slice(&(MAX_PAYLOAD_BYTES as u32).to_le_bytes());
        assert_eq!(check_record(&bytes), Err(RecordError::PastEnd(MAX_PAYLOAD_BYTES as u32)));
    }
}
