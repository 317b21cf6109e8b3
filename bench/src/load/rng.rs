//! A small seeded pseudo-random generator (SplitMix64). The traffic must replay exactly from a seed
//! across builds and dependency upgrades; `rand`'s `SmallRng` makes no such promise, so the
//! algorithm is fixed here.

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, trivially seedable.
#[derive(Clone, Debug)]
pub struct Rng64 {
    state: u64,
}

impl Rng64 {
    pub fn new(seed: u64) -> Rng64 {
        Rng64 { state: seed }
    }

    /// A generator for an independent sub-stream (one per order, say), derived from this seed and
    /// a stream number, so that adding draws to one stream never shifts another.
    pub fn derive(seed: u64, stream: u64) -> Rng64 {
        let mut r = Rng64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-shift (the tiny bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    /// Uniform in `[0, 1)`, with 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An index drawn with the given weights (at least one positive).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut x = self.below(total.max(1));
        for (i, &w) in weights.iter().enumerate() {
            if x < u64::from(w) {
                return i;
            }
            x -= u64::from(w);
        }
        weights.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_ranges_hold() {
        let (mut a, mut b) = (Rng64::new(7), Rng64::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng64::derive(7, 3);
        let mut hits = [0u32; 3];
        for _ in 0..30_000 {
            let x = r.range_i64(-2, 4);
            assert!((-2..=4).contains(&x));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            hits[r.weighted(&[1, 0, 3])] += 1;
        }
        assert_eq!(hits[1], 0, "a zero weight is never drawn");
        let ratio = f64::from(hits[2]) / f64::from(hits[0]);
        assert!((2.7..3.3).contains(&ratio), "weights 1:3 drawn {hits:?}");
        assert_ne!(
            Rng64::derive(7, 1).next_u64(),
            Rng64::derive(7, 2).next_u64()
        );
    }
}
