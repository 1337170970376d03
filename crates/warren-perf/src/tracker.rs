//! Loss and duplicate accounting: one bitmap over sequence numbers per (queue, producer) pair
//! whose messages must reach that queue, set by the consumers of the queue.
//!
//! A bit is set with one atomic `fetch_or`, so consumers on different threads share a bitmap
//! without a lock; the previous value of the bit says whether the message is a duplicate.
//! Memory is one bit per message per pair, allocated up front and bounded by
//! [`TRACKING_BYTES_MAX`].
//!
//! A message counts as lost when its producer published it (and, in confirm mode, the broker
//! confirmed it) and no consumer of a queue it was routed to received it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The most memory the bitmaps of one run may take (1 bit per message per queue it reaches);
/// past it the run goes without loss and duplicate counts rather than exhaust the machine.
pub const TRACKING_BYTES_MAX: u64 = 512 << 20;

/// One bit per sequence number in `0..len`.
#[derive(Debug)]
pub struct SeqBitmap {
    words: Box<[AtomicU64]>,
    len: u64,
}

impl SeqBitmap {
    pub fn new(len: u64) -> SeqBitmap {
        let words = len.div_ceil(64) as usize;
        SeqBitmap { words: (0..words).map(|_| AtomicU64::new(0)).collect(), len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets bit `seq`; true when it was not set before. `seq` must be below `len`.
    pub fn set(&self, seq: u64) -> bool {
        debug_assert!(seq < self.len);
        let bit = 1u64 << (seq % 64);
        self.words[(seq / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    pub fn get(&self, seq: u64) -> bool {
        seq < self.len && self.words[(seq / 64) as usize].load(Ordering::Relaxed) & (1 << (seq % 64)) != 0
    }

    /// How many bits are set in `0..end`.
    pub fn count_below(&self, end: u64) -> u64 {
        let end = end.min(self.len);
        let full = (end / 64) as usize;
        let mut n: u64 = self.words[..full].iter().map(|w| w.load(Ordering::Relaxed).count_ones() as u64).sum();
        let rest = end % 64;
        if rest > 0 {
            n += (self.words[full].load(Ordering::Relaxed) & ((1u64 << rest) - 1)).count_ones() as u64;
        }
        n
    }
}

/// What a received message was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    First,
    Duplicate,
    /// Not a message of this run's producers for this queue (a leftover in a named queue, a
    /// sequence number past `-C`, a body too short for a stamp).
    Foreign,
}

/// The memory the bitmaps of a run take (see [`Tracker::new`] for the arguments).
pub fn bitmap_bytes(routes: &[Vec<usize>], consumed: &[bool], per_producer: u64) -> u64 {
    let pairs = routes.iter().flatten().filter(|&&q| consumed.get(q).copied().unwrap_or(false)).count() as u64;
    pairs.saturating_mul(per_producer.div_ceil(64) * 8)
}

/// The bitmaps of a run.
#[derive(Debug)]
pub struct Tracker {
    producers: usize,
    /// `queue * producers + producer`; `None` where no message of that producer is due.
    maps: Vec<Option<SeqBitmap>>,
}

impl Tracker {
    /// `routes[p]` lists the queues producer `p`'s messages reach; `consumed[q]` says whether
    /// queue `q` has consumers. Each producer publishes sequence numbers `0..per_producer`.
    /// `None` when the bitmaps would take more than [`TRACKING_BYTES_MAX`].
    pub fn new(queues: usize, routes: &[Vec<usize>], consumed: &[bool], per_producer: u64) -> Option<Tracker> {
        debug_assert_eq!(consumed.len(), queues);
        let producers = routes.len();
        if bitmap_bytes(routes, consumed, per_producer) > TRACKING_BYTES_MAX {
            return None;
        }
        let mut maps: Vec<Option<SeqBitmap>> = (0..queues * producers).map(|_| None).collect();
        for (p, route) in routes.iter().enumerate() {
            for &q in route {
                if q < queues && consumed[q] {
                    maps[q * producers + p] = Some(SeqBitmap::new(per_producer));
                }
            }
        }
        Some(Tracker { producers, maps })
    }

    fn map(&self, queue: usize, producer: u32) -> Option<&SeqBitmap> {
        let producer = producer as usize;
        if producer >= self.producers {
            return None;
        }
        self.maps.get(queue * self.producers + producer)?.as_ref()
    }

    /// Records that a consumer of `queue` received `(producer, seq)`.
    pub fn mark(&self, queue: usize, producer: u32, seq: u32) -> Mark {
        match self.map(queue, producer) {
            Some(m) if (seq as u64) < m.len() => {
                if m.set(seq as u64) {
                    Mark::First
                } else {
                    Mark::Duplicate
                }
            }
            _ => Mark::Foreign,
        }
    }

    /// Messages due and never received. `published[p]` is how many producer `p` published
    /// (sequence numbers `0..published[p]`); `excluded[p]` lists those of its sequence numbers
    /// that are not due (nacked, or never confirmed in confirm mode).
    pub fn lost(&self, published: &[u64], excluded: &[Vec<u64>]) -> u64 {
        let mut lost = 0;
        for (i, m) in self.maps.iter().enumerate() {
            let Some(m) = m else { continue };
            let p = i % self.producers;
            let end = published.get(p).copied().unwrap_or(0).min(m.len());
            let skip = excluded.get(p).map_or(&[][..], |v| &v[..]);
            let skipped_in_range = skip.iter().filter(|&&s| s < end).count() as u64;
            let seen = m.count_below(end) - skip.iter().filter(|&&s| s < end && m.get(s)).count() as u64;
            lost += end - skipped_in_range - seen;
        }
        lost
    }

    /// How many distinct messages are due in total when every producer publishes `published`.
    pub fn due(&self, published: &[u64]) -> u64 {
        self.maps
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                m.as_ref().map(|m| published.get(i % self.producers).copied().unwrap_or(0).min(m.len()))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_word_boundaries() {
        let b = SeqBitmap::new(130);
        for s in [0, 63, 64, 65, 127, 128, 129] {
            assert!(!b.get(s));
            assert!(b.set(s), "{s} is new");
            assert!(!b.set(s), "{s} is now a duplicate");
            assert!(b.get(s));
        }
        assert_eq!(b.count_below(130), 7);
        assert_eq!(b.count_below(64), 2);
        assert_eq!(b.count_below(65), 3);
        assert_eq!(b.count_below(0), 0);
        assert_eq!(b.count_below(1000), 7);
        assert!(!b.get(130));
    }

    #[test]
    fn first_duplicate_and_foreign() {
        // Two producers to queue 0 only.
        let t = Tracker::new(2, &[vec![0], vec![0]], &[true, true], 10).expect("small");
        assert_eq!(t.mark(0, 0, 3), Mark::First);
        assert_eq!(t.mark(0, 0, 3), Mark::Duplicate);
        assert_eq!(t.mark(0, 1, 3), Mark::First, "same seq from another producer is another message");
        assert_eq!(t.mark(0, 0, 10), Mark::Foreign, "past -C");
        assert_eq!(t.mark(0, 2, 0), Mark::Foreign, "no such producer");
        assert_eq!(t.mark(1, 0, 0), Mark::Foreign, "not routed to queue 1");
    }

    #[test]
    fn loss_counts_due_messages_never_seen() {
        // Producer 0 fans out to queues 0 and 1; producer 1 goes to queue 1 only.
        let t = Tracker::new(2, &[vec![0, 1], vec![1]], &[true, true], 100).expect("small");
        assert_eq!(t.due(&[100, 50]), 250);
        for s in 0..100 {
            t.mark(0, 0, s);
            if s != 7 {
                t.mark(1, 0, s);
            }
        }
        for s in 0..50 {
            if s != 20 && s != 21 {
                t.mark(1, 1, s);
            }
        }
        assert_eq!(t.lost(&[100, 50], &[vec![], vec![]]), 3);
        // Producer 1's seq 20 was nacked, so it is not due.
        assert_eq!(t.lost(&[100, 50], &[vec![], vec![20]]), 2);
        // Excluded but received anyway (0) does not make a negative count; 7 is no longer due.
        assert_eq!(t.lost(&[100, 50], &[vec![0, 7], vec![]]), 2);
        // Only what was published is due.
        assert_eq!(t.lost(&[7, 20], &[vec![], vec![]]), 0);
    }

    #[test]
    fn queues_without_consumers_are_not_tracked() {
        let t = Tracker::new(2, &[vec![0, 1]], &[true, false], 10).expect("small");
        assert_eq!(t.due(&[10]), 10);
        assert_eq!(t.mark(1, 0, 0), Mark::Foreign);
    }

    #[test]
    fn tracking_memory_is_bounded() {
        let per_producer = TRACKING_BYTES_MAX * 8;
        assert_eq!(bitmap_bytes(&[vec![0]], &[true], per_producer), TRACKING_BYTES_MAX, "at the limit");
        assert_eq!(bitmap_bytes(&[vec![0, 1]], &[true, false], per_producer), TRACKING_BYTES_MAX, "idle queue");
        assert!(Tracker::new(1, &[vec![0]], &[true], per_producer + 1).is_none(), "one word past it");
        assert!(Tracker::new(2, &[vec![0, 1]], &[true, true], per_producer / 2 + 64).is_none(), "two queues");
    }
}
