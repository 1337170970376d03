//! The fuzz harnesses of `fuzz/` run on a fixed, bounded set of inputs, so that every
//! `cargo test` (on stable, without libFuzzer) checks them: the harnesses' own seeds, then
//! pseudo-random inputs and mutations of the seeds from a fixed xorshift seed.
//!
//! This is a smoke test, not fuzzing: `fuzz/README.md` says how to run the real thing.

#[path = "../../../fuzz/src/harness.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Inputs per harness beyond its seeds.
const INPUTS: usize = 100_000;

/// xorshift64*: small, fixed, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

/// Bytes that sit at the edges of the format: lengths, sign bits, the frame end, type tags.
const INTERESTING_BYTES: [u8; 12] = [0, 1, 2, 0x7F, 0x80, 0xFF, 0xCE, b'F', b'A', b'S', b'x', b'V'];
const INTERESTING_U32: [u32; 7] = [0, 1, 7, 0x7F, 0xFFFF, 0x7FFF_FFFF, u32::MAX];

fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len());
        match rng.below(9) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => v[at] = rng.byte(),
            2 if !v.is_empty() => v[at] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())],
            3 => v.insert(at.min(v.len()), rng.byte()),
            4 if !v.is_empty() => {
                v.remove(at);
            }
            5 => v.truncate(at),
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1);
                v.extend_from_slice(&other[from..from + len]);
            }
            7 if v.len() >= 4 => {
                let at = rng.below(v.len() - 3);
                let n = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                v[at..at + 4].copy_from_slice(&n.to_be_bytes());
            }
            8 if !v.is_empty() => {
                let from = rng.below(v.len());
                let len = rng.below(v.len() - from + 1).min(64);
                let chunk = v[from..from + len].to_vec();
                let to = rng.below(v.len() + 1);
                v.splice(to..to, chunk);
            }
            _ => {}
        }
    }
    v
}

/// Runs `harness` on its seeds, then on `INPUTS` inputs: one in four random bytes, the others
/// seeds with a few mutations. A failure names the input.
fn smoke(name: &str, harness: fn(&[u8]), seeds: Vec<Vec<u8>>, rng_seed: u64) {
    assert!(!seeds.is_empty());
    let check = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| harness(input))).is_err() {
            panic!("{name} failed on input {input:02x?}");
        }
    };
    for seed in &seeds {
        check(seed);
    }
    let mut rng = Rng(rng_seed);
    for i in 0..INPUTS {
        let input = if i % 4 == 0 {
            let len = rng.below(48);
            (0..len).map(|_| rng.byte()).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed, &seeds)
        };
        check(&input);
    }
}

#[test]
fn frame_decode_smoke() {
    smoke("frame_decode", harness::frame_decode, harness::frame_decode_seeds(), 0x9E37_79B9_7F4A_7C15);
}

#[test]
fn method_decode_smoke() {
    smoke("method_decode", harness::method_decode, harness::method_decode_seeds(), 0x94D0_49BB_1331_11EB);
}

#[test]
fn content_assembler_smoke() {
    smoke("content_assembler", harness::content_assembler, harness::content_assembler_seeds(), 0xD1B5_4A32_D192_ED03);
}

#[test]
fn field_table_smoke() {
    smoke("field_table", harness::field_table, harness::field_table_seeds(), 0x8CB9_2BA7_2F3D_8DD7);
}

/// The seeds are what they say: every one is accepted whole, so mutations start from valid input.
#[test]
fn seeds_are_valid() {
    use bytes::{Bytes, BytesMut};
    use warren_amqp::codec::Reader;
    use warren_amqp::{FieldTable, FrameParser};

    for seed in harness::frame_decode_seeds() {
        let parser = FrameParser::new(harness::frame_max_for(seed[0]));
        let mut buf = BytesMut::from(&seed[1..]);
        while !buf.is_empty() {
            parser.parse(&mut buf).expect("a valid frame").expect("a whole frame");
        }
    }
    for seed in harness::field_table_seeds() {
        let mut r = Reader::new(Bytes::from(seed));
        FieldTable::decode(&mut r).expect("a valid table");
        assert_eq!(r.remaining(), 0);
    }
    assert!(!harness::content_assembler_seeds().is_empty());
}
