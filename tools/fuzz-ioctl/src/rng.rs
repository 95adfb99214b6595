//! The deterministic randomness: every call draws from its own generator, seeded from
//! (run seed, thread, call index), so any one call can be generated again on its own
//! (`--only THREAD:INDEX`) whatever ran before it.

/// SplitMix64: tiny, fast, and every 64-bit seed gives a full-period, well-mixed stream.
pub struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(mix(seed))
    }

    /// The generator of call `index` of thread `thread` in the run seeded `seed`.
    pub fn for_call(seed: u64, thread: u32, index: u64) -> Self {
        Self(mix(seed ^ mix(((thread as u64) << 48) ^ index ^ 0x5eed)))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// An index into `weights`, each chosen in proportion to its weight.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w as u64 {
                return i;
            }
            x -= w as u64;
        }
        weights.len() - 1
    }

    /// A count for an array argument: small mostly, sometimes at or just past `max`, or wild.
    pub fn count(&mut self, max: u32) -> u32 {
        match self.below(16) {
            0..=5 => self.below(4) as u32,
            6..=10 => self.below(64) as u32,
            11 => max,
            12 => max.wrapping_add(1),
            13 => u32::MAX,
            14 => max.wrapping_sub(1),
            _ => self.next() as u32,
        }
    }

    /// An "interesting" 64-bit number: boundaries, page multiples, near-overflow values.
    pub fn wild_u64(&mut self) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => u64::MAX - self.below(4096),
            2 => 1 << self.below(64),
            3 => (1u64 << 47) - 4096 * self.below(3),
            4 => i64::MAX as u64 - self.below(4096),
            5 => self.below(1 << 20) * 4096,
            6 => self.next() & !0xfff,
            7 => 0xffff_8880_0000_0000 + (self.below(1 << 20) << 12),
            _ => self.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_stream_depends_only_on_seed_thread_and_index() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_call(7, 1, 42).next()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::for_call(7, 1, 42).next(),
            Rng::for_call(7, 1, 43).next()
        );
        assert_ne!(
            Rng::for_call(7, 1, 42).next(),
            Rng::for_call(7, 2, 42).next()
        );
        assert_ne!(
            Rng::for_call(7, 1, 42).next(),
            Rng::for_call(8, 1, 42).next()
        );
    }

    #[test]
    fn weighted_choice_follows_the_weights() {
        let mut r = Rng::new(1);
        let mut hits = [0u32; 3];
        for _ in 0..30_000 {
            hits[r.weighted(&[1, 0, 2])] += 1;
        }
        assert_eq!(hits[1], 0);
        assert!(hits[2] > hits[0] * 3 / 2, "{hits:?}");
    }
}
