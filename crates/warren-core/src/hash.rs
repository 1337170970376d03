//! The core's hash maps and sets: foldhash, with one seed for the whole process instead of a
//! random one per map.
//!
//! Iteration order of a hash map is visible wherever the core walks one to produce output
//! (queues expiring on a tick, confirms ending a sync round, connections unblocked by an
//! alarm). With a random seed per map, the same inputs could give the same outputs in another
//! order; with one seed, the same sequence of commands always gives the same order, which is
//! what a seeded simulation (and a replicated log) needs. The seed is an input like time: the
//! server sets a random one at startup ([`set_seed`], before it builds a broker) so that names
//! chosen by clients cannot be crafted to collide; tests leave the fixed default.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

static SEED: AtomicU64 = AtomicU64::new(0);

/// Sets the seed of every map made from now on. Call once, before the first broker is built:
/// maps made before keep the old seed.
pub fn set_seed(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
}

/// foldhash with the process's seed.
#[derive(Debug, Clone)]
pub struct SeededState(foldhash::fast::FixedState);

impl Default for SeededState {
    fn default() -> Self {
        SeededState(foldhash::fast::FixedState::with_seed(SEED.load(Ordering::Relaxed)))
    }
}

impl BuildHasher for SeededState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A hash map whose iteration order depends only on what was done to it.
pub type HashMap<K, V> = std::collections::HashMap<K, V, SeededState>;
/// A hash set whose iteration order depends only on what was done to it.
pub type HashSet<T> = std::collections::HashSet<T, SeededState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_inserts_iterate_in_the_same_order() {
        let order = || {
            let mut map: HashMap<String, u32> = HashMap::default();
            for i in 0..200 {
                map.insert(format!("queue-{i}"), i);
            }
            map.remove("queue-7");
            map.into_keys().collect::<Vec<_>>()
        };
        assert_eq!(order(), order());
    }
}
