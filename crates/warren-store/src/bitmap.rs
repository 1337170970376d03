//! A growable bitmap of settled records, one bit per record of a segment (bit i = seq base+i).
//!
//! This is the only per-record memory the log keeps, and only for segments that have at least one
//! settled record: a segment without settles holds no bitmap at all.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
}

impl Bitmap {
    pub fn get(&self, i: u64) -> bool {
        let w = (i / 64) as usize;
        self.words.get(w).is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; true if it was clear.
    #[cfg(test)]
    pub fn set(&mut self, i: u64) -> bool {
        self.set_range(i, i + 1) == 1
    }

    /// Sets bits `from..to`; returns how many were clear.
    pub fn set_range(&mut self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        let last_word = ((to - 1) / 64) as usize;
        if self.words.len() <= last_word {
            self.words.resize(last_word + 1, 0);
        }
        let mut newly = 0u64;
        let mut i = from;
        while i < to {
            let w = (i / 64) as usize;
            let lo = i % 64;
            let hi = (to - (w as u64) * 64).min(64);
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
            newly += u64::from((!self.words[w] & mask).count_ones());
            self.words[w] |= mask;
            i = (w as u64 + 1) * 64;
        }
        newly
    }

    /// The runs of set bits below `len`, as `(from, to)` (to exclusive), in order.
    pub fn runs(&self, len: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut start = None;
        for i in 0..len {
            match (self.get(i), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    runs.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push((s, len));
        }
        runs
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_range_counts_only_new_bits() {
        let mut b = Bitmap::default();
        assert!(b.set(3));
        assert!(!b.set(3));
        assert_eq!(b.set_range(0, 130), 129);
        assert_eq!(b.set_range(0, 130), 0);
        assert!(b.get(129) && !b.get(130) && !b.get(10_000));
        assert_eq!(b.set_range(64, 64), 0);
        assert_eq!(b.set_range(120, 200), 70);
        assert_eq!(b.heap_bytes(), 32);
        assert_eq!(b.runs(300), vec![(0, 200)]);
        assert_eq!(b.runs(150), vec![(0, 150)]);
        let mut gaps = Bitmap::default();
        gaps.set_range(2, 4);
        gaps.set_range(70, 71);
        assert_eq!(gaps.runs(100), vec![(2, 4), (70, 71)]);
    }
}
