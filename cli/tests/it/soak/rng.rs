//! The soak's deterministic generator (SplitMix64): every random choice of a run comes
//! from its seed, so a failing run can be replayed with `HAVEN_SOAK_SEED`.

/// A small seeded generator; not for cryptography.
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.bits() % bound
    }

    /// A generator for a named part of the run, independent of the others.
    pub fn fork(seed: u64, part: &str) -> Self {
        let mut rng = Self::new(seed);
        for byte in part.bytes() {
            rng.0 ^= u64::from(byte);
            rng.bits();
        }
        Self::new(rng.bits())
    }
}
