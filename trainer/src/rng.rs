//! The trainer's only source of randomness: smk-format's counter-based generator.
//!
//! candle cannot seed its CPU generator, so weights, scores, shuffling and augmentation all draw
//! from here and are uploaded with `Tensor::from_vec`. A stream is `(seed, purpose)`; its state is
//! one counter, so a checkpoint restores it exactly.

use smk_format::seeded::{draw, mix64, normal_from_draw};

/// Purposes that separate the streams drawn from one run seed.
pub mod stream {
    /// Scores and other trainable initial values (per layer: add the layer index).
    pub const SCORES: u64 = 1 << 32;
    /// Dense (trainable) weight init (per layer: add the layer index).
    pub const WEIGHTS: u64 = 2 << 32;
    /// Epoch shuffles (add the epoch).
    pub const SHUFFLE: u64 = 3 << 32;
    /// Task construction (permutations; add the task index).
    pub const TASKS: u64 = 4 << 32;
    /// DINO's crops (add the step).
    pub const CROPS: u64 = 5 << 32;
    /// DINO's projection head.
    pub const HEAD: u64 = 6 << 32;
}

/// A seeded stream of random numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    key: u64,
    counter: u64,
}

impl Rng {
    /// The stream `purpose` of run seed `seed`.
    pub fn new(seed: u64, purpose: u64) -> Self {
        Self {
            key: mix64(seed ^ mix64(purpose.wrapping_add(0x736d_6b5f_7472_6169))),
            counter: 0,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let v = draw(self.key, self.counter);
        self.counter += 1;
        v
    }

    /// Uniform on [0, 1) with 24 bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }

    /// Uniform on (-bound, bound).
    pub fn symmetric(&mut self, bound: f32) -> f32 {
        smk_format::seeded::uniform_from_draw(self.next_u64(), bound)
    }

    /// Standard normal times `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        normal_from_draw(self.next_u64(), std)
    }

    /// Uniform integer below `n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1, 0);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1, 0);
                move |_| r.next_u64()
            })
            .collect();
        let c = Rng::new(1, 1).next_u64();
        let d = Rng::new(2, 0).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        assert_ne!(a[0], d);
    }

    #[test]
    fn below_and_shuffle_are_uniform_enough() {
        let mut r = Rng::new(3, 0);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        let p = r.permutation(100);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(p, sorted);
        let u: f32 = (0..10_000).map(|_| r.uniform()).sum::<f32>() / 10_000.0;
        assert!((u - 0.5).abs() < 0.02);
    }
}
