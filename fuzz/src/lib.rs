//! Fuzz harnesses for warren-amqp. They live in `harness.rs` so that
//! `crates/warren-amqp/tests/fuzz_smoke.rs` can run the same code on stable, without libFuzzer.

mod harness;

pub use harness::*;
