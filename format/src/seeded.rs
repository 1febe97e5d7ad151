//! Seeded weights: the counter-based generator and the init rules, defined once for trainer and
//! runtime so that regenerated weights are bit-identical everywhere.
//!
//! A seeded tensor is seen as a matrix (`rows = dims[0]`, `cols` = the product of the other dims; a
//! rank-1 tensor is one row). Its key is `key = mix64(seed + G·(((stream << 8) | rule) + 1))` and
//! its i-th draw is `draw(key, i) = mix64(key + G·(i + 1))`: SplitMix64's i-th output from state
//! `key`, so any draw is computed alone, and a SIMD lane can compute one draw each.
//!
//! - **signed-constant**: one draw gives the signs of 64 consecutive weights of one row: weight
//!   `(r, c)` is `+scale` when bit `c % 64` of `draw(key, r·ceil(cols/64) + c/64)` is 1, else
//!   `-scale`. Rows start on a fresh draw, like mask rows start on a fresh word, so sign words and
//!   mask words line up one to one.
//! - **uniform**: weight `(r, c)` uses `d = draw(key, r·cols + c)`: `k = d >> 40` (24 bits),
//!   `w = f32(scale · (2k + 1 − 2^24) / 2^24)`, evaluated in f64 (exact) and rounded once.
//! - **normal**: `d = draw(key, r·cols + c)`, `u1 = ((d >> 32) + ½)/2^32`, `u2 = ((d & 0xFFFFFFFF) +
//!   ½)/2^32`, `w = f32(scale · sqrt(−2 ln u1) · cos(2π u2))` in f64 with `libm`'s portable
//!   `log`, `cos` and `sqrt` (Box–Muller, one draw per weight).

use crate::spec::InitRule;

/// The SplitMix64 increment, 2^64 / φ.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The gain of Kaiming init for ReLU networks, √2.
pub const RELU_GAIN: f64 = core::f64::consts::SQRT_2;

/// SplitMix64's output function (Stafford's Mix13).
#[inline(always)]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `counter`-th draw of the stream with key `key`.
#[inline(always)]
pub const fn draw(key: u64, counter: u64) -> u64 {
    mix64(key.wrapping_add(GOLDEN.wrapping_mul(counter.wrapping_add(1))))
}

/// Everything needed to regenerate one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeededInit {
    /// The distribution.
    pub rule: InitRule,
    /// The run's seed.
    pub seed: u64,
    /// Separates tensors drawn from one seed (the writer uses the tensor's index).
    pub stream: u32,
    /// `±scale` for signed-constant, the bound for uniform, the standard deviation for normal.
    pub scale: f32,
}

impl SeededInit {
    /// The key of this tensor's stream.
    pub const fn key(&self) -> u64 {
        let tag = ((self.stream as u64) << 8) | self.rule as u64;
        mix64(self.seed.wrapping_add(GOLDEN.wrapping_mul(tag + 1)))
    }

    /// The 64 signs of row `row`, columns `64·word ..`: bit `j` set means `+scale` for column
    /// `64·word + j`. Only meaningful for signed-constant.
    #[inline(always)]
    pub fn sign_word(&self, key: u64, cols: u64, row: u64, word: u64) -> u64 {
        draw(key, row * cols.div_ceil(64) + word)
    }

    /// The weight at (`row`, `col`) of a `cols`-wide matrix view.
    pub fn value(&self, key: u64, cols: u64, row: u64, col: u64) -> f32 {
        match self.rule {
            InitRule::SignedConstant => {
                let word = self.sign_word(key, cols, row, col / 64);
                if word >> (col % 64) & 1 == 1 {
                    self.scale
                } else {
                    -self.scale
                }
            }
            InitRule::Uniform => uniform_from_draw(draw(key, row * cols + col), self.scale),
            InitRule::Normal => normal_from_draw(draw(key, row * cols + col), self.scale),
        }
    }

    /// Fills one row (`out.len()` = `cols`).
    pub fn fill_row(&self, key: u64, row: u64, out: &mut [f32]) {
        let cols = out.len() as u64;
        match self.rule {
            InitRule::SignedConstant => {
                for (w, chunk) in out.chunks_mut(64).enumerate() {
                    let bits = self.sign_word(key, cols, row, w as u64);
                    for (j, v) in chunk.iter_mut().enumerate() {
                        *v = if bits >> j & 1 == 1 { self.scale } else { -self.scale };
                    }
                }
            }
            _ => {
                for (c, v) in out.iter_mut().enumerate() {
                    *v = self.value(key, cols, row, c as u64);
                }
            }
        }
    }

    /// Fills a whole `rows × cols` matrix in row-major order (`out.len()` = rows·cols).
    pub fn fill(&self, cols: usize, out: &mut [f32]) {
        if cols == 0 {
            return;
        }
        let key = self.key();
        for (r, row) in out.chunks_mut(cols).enumerate() {
            self.fill_row(key, r as u64, row);
        }
    }
}

/// Uniform on (−scale, scale) from the top 24 bits of `d`.
#[inline]
pub fn uniform_from_draw(d: u64, scale: f32) -> f32 {
    let k = (d >> 40) as i64;
    let centred = (2 * k + 1 - (1 << 24)) as f64 / (1u64 << 24) as f64;
    (scale as f64 * centred) as f32
}

/// Normal with standard deviation `scale` from one draw (Box–Muller, cosine branch).
#[inline]
pub fn normal_from_draw(d: u64, scale: f32) -> f32 {
    let two32 = 4_294_967_296.0f64;
    let u1 = ((d >> 32) as f64 + 0.5) / two32;
    let u2 = ((d & 0xFFFF_FFFF) as f64 + 0.5) / two32;
    let radius = libm::sqrt(-2.0 * libm::log(u1));
    (scale as f64 * radius * libm::cos(core::f64::consts::TAU * u2)) as f32
}

/// Kaiming's standard deviation `gain / √fan`: the signed-constant scale of edge-popup (with
/// `gain` = [`RELU_GAIN`], `fan` = fan-in; its "scale fan" variant passes `fan_in · keep`) and the
/// normal rule's scale.
pub fn kaiming_std(fan: f64, gain: f64) -> f32 {
    (gain / libm::sqrt(fan)) as f32
}

/// Kaiming's uniform bound `gain · √(3 / fan)` (PyTorch's `kaiming_uniform_`).
pub fn kaiming_uniform_bound(fan: f64, gain: f64) -> f32 {
    (gain * libm::sqrt(3.0 / fan)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_outputs() {
        // SplitMix64 seeded with 0: the first outputs as published with Vigna's reference code.
        assert_eq!(draw(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(draw(0, 1), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(draw(0, 2), 0x06C4_5D18_8009_454F);
    }

    fn init(rule: InitRule) -> SeededInit {
        SeededInit {
            rule,
            seed: 42,
            stream: 7,
            scale: 0.5,
        }
    }

    #[test]
    fn fill_agrees_with_value_on_ragged_shapes() {
        for rule in [InitRule::SignedConstant, InitRule::Uniform, InitRule::Normal] {
            let s = init(rule);
            let key = s.key();
            for (rows, cols) in [(1, 1), (3, 63), (2, 64), (5, 65), (4, 130)] {
                let mut out = vec![0f32; rows * cols];
                s.fill(cols, &mut out);
                for r in 0..rows {
                    for c in 0..cols {
                        let v = s.value(key, cols as u64, r as u64, c as u64);
                        assert_eq!(out[r * cols + c].to_bits(), v.to_bits(), "{rule} {r},{c}");
                    }
                }
            }
        }
    }

    #[test]
    fn distributions_have_the_stated_moments() {
        let n = 1 << 16;
        for (rule, mean_abs, var) in [
            (InitRule::SignedConstant, 0.5, 0.25),
            (InitRule::Uniform, 0.25, 0.25 / 3.0),
            (InitRule::Normal, 0.5 * (2.0 / core::f64::consts::PI).sqrt(), 0.25),
        ] {
            let mut out = vec![0f32; n];
            init(rule).fill(256, &mut out);
            let m: f64 = out.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let a: f64 = out.iter().map(|&v| (v as f64).abs()).sum::<f64>() / n as f64;
            let v: f64 = out.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
            assert!(m.abs() < 0.01, "{rule} mean {m}");
            assert!((a - mean_abs).abs() < 0.01, "{rule} mean |w| {a}");
            assert!((v - var).abs() < 0.01, "{rule} var {v}");
            assert!(out.iter().all(|v| v.is_finite() && v.abs() <= 4.0 * 0.5 + 1.0));
        }
    }

    #[test]
    fn keys_separate_streams_seeds_and_rules() {
        let a = init(InitRule::SignedConstant);
        let b = SeededInit { stream: 8, ..a };
        let c = SeededInit { seed: 43, ..a };
        let d = SeededInit {
            rule: InitRule::Uniform,
            ..a
        };
        let keys = [a.key(), b.key(), c.key(), d.key()];
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(keys[i], keys[j]);
            }
        }
    }

    #[test]
    fn scales() {
        assert!((kaiming_std(2.0, RELU_GAIN) - 1.0).abs() < 1e-7);
        assert!((kaiming_uniform_bound(3.0, 1.0) - 1.0).abs() < 1e-7);
    }
}
