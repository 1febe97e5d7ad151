//! Binarising scores into masks, with the straight-through estimator.

use candle_core::{DType, Result, Tensor};

/// How a layer's scores become its mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Binarize {
    /// Keep the `keep` fraction with the largest scores (of `|s|` when `abs`), exactly:
    /// `n − floor((1 − keep)·n)` entries, ties broken by lower index (on the host and, through
    /// [`topk_mask_device`], on other devices alike).
    TopK {
        /// Fraction kept.
        keep: f64,
        /// Rank by magnitude (edge-popup) rather than by signed value (movement).
        abs: bool,
    },
    /// Keep entries whose score exceeds the threshold (Piggyback).
    Threshold(f32),
    /// Keep entries whose sigmoid exceeds the threshold (soft movement pruning).
    Sigmoid(f32),
}

/// Number of entries kept out of `n` at fraction `keep`.
pub fn kept_count(n: usize, keep: f64) -> usize {
    let pruned = ((1.0 - keep.clamp(0.0, 1.0)) * n as f64).floor() as usize;
    n - pruned.min(n)
}

/// The 0/1 top-k mask of `values` (host side: exact, any size, any device).
///
/// The k-th largest key is found by selection over a copy of the keys themselves, then one pass
/// keeps everything above it and the ties at it in index order. Selecting indices by their
/// keys instead (one indirection per comparison) made this the largest cost of a training step.
pub fn topk_mask(values: &[f32], keep: f64, abs: bool) -> Vec<f32> {
    let n = values.len();
    let k = kept_count(n, keep);
    let mut out = vec![0f32; n];
    if k == 0 {
        return out;
    }
    if k == n {
        out.fill(1.0);
        return out;
    }
    let key = |v: f32| if abs { v.abs() } else { v };
    let mut keys: Vec<f32> = values.iter().map(|&v| key(v)).collect();
    let (_, kth, _) = keys.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    let mut left = k;
    for (o, &v) in out.iter_mut().zip(values) {
        if key(v).total_cmp(&kth).is_gt() {
            *o = 1.0;
            left -= 1;
        }
    }
    for (o, &v) in out.iter_mut().zip(values) {
        if left == 0 {
            break;
        }
        if key(v).total_cmp(&kth).is_eq() {
            *o = 1.0;
            left -= 1;
        }
    }
    out
}

/// Bisection steps of [`topk_mask_device`]. Each halves the bracket around the k-th largest key
/// `t`, which starts as the keys' range `R`. Once it is narrower than the f32 spacing at `t`
/// (about `|t|·2⁻²³`) the two ends are adjacent floats, the lower one is `t` itself, and further
/// steps change nothing (the midpoint rounds to an end). 64 steps narrow it to `R·2⁻⁶⁴ ≈ R·5e-20`:
/// exact whenever `|t| > R·1e-12`, which covers any scores training produces. Short of that
/// (`t` within `R·1e-12` of zero) the threshold ends at most `R·2⁻⁶⁴` below `t`, and only keys in
/// that sliver are kept besides. Each step is one pass over the scores, so more would cost time.
pub const TOPK_BISECTION_STEPS: usize = 64;

/// The top-k mask of `scores` computed on their own device, with tensor ops only: the k-th
/// largest key (`|s|` when `abs`, else `s`) is found by bisection on a threshold held in 0-d
/// tensors, so nothing is read back to the host (on CUDA, [`topk_mask`] would copy every
/// layer's scores to the host and its mask back, every step).
///
/// Ties at the threshold are broken by index, as [`topk_mask`] breaks them: of the keys equal
/// to the k-th largest, the first `k − count(key > t)` are kept, their index bound found by a
/// second bisection (about log₂ n steps). So the mask is [`topk_mask`]'s, on any device, except
/// that `−0.0` and `0.0` tie here where the host orders them.
pub fn topk_mask_device(scores: &Tensor, keep: f64, abs: bool) -> Result<Tensor> {
    topk_mask_bisect(scores, keep, abs, TOPK_BISECTION_STEPS)
}

fn topk_mask_bisect(scores: &Tensor, keep: f64, abs: bool, steps: usize) -> Result<Tensor> {
    let n = scores.elem_count();
    let k = kept_count(n, keep);
    if k == 0 {
        return scores.zeros_like();
    }
    if k == n {
        return scores.ones_like();
    }
    let scores = scores.detach();
    let key = if abs { scores.abs()? } else { scores.clone() }.flatten_all()?;
    // A u32 count: an f32 sum of ones stops being exact past 2²⁴ entries.
    let k = Tensor::new(k as u32, key.device())?;
    let enough = |x: &Tensor| -> Result<Tensor> { key.broadcast_ge(x)?.to_dtype(DType::U32)?.sum_all()?.ge(&k) };
    // Invariant: count(key ≥ lo) ≥ k > count(key ≥ hi), so lo ≤ t < hi. The largest key is held
    // by fewer than k entries, or it is t itself: then lo = hi = t and no step moves them.
    let mut hi = key.max_all()?;
    let mut lo = enough(&hi)?.where_cond(&hi, &key.min_all()?)?;
    for _ in 0..steps {
        // Halves first, so that scores near f32::MAX do not overflow to infinity.
        let mid = ((&lo * 0.5)? + (&hi * 0.5)?)?;
        let ok = enough(&mid)?;
        lo = ok.where_cond(&mid, &lo)?;
        hi = ok.where_cond(&hi, &mid)?;
    }
    // The first r ties in index order, r = k − count(key > t): the smallest index bound m with
    // count(key = t, index < m) ≥ r, by bisection on m (f64 counts: exact to 2⁵³).
    let f64s = |t: Tensor| t.to_dtype(DType::F64);
    let above = key.broadcast_gt(&lo)?;
    let ties = f64s(key.broadcast_eq(&lo)?)?;
    let r = (f64s(k.clone())? - f64s(above.clone())?.sum_all()?)?;
    let index = Tensor::arange(0u32, n as u32, key.device())?.to_dtype(DType::F64)?;
    let mut below = Tensor::new(0f64, key.device())?; // count(ties, index < below) < r
    let mut bound = Tensor::new(n as f64, key.device())?; // count(ties, index < bound) ≥ r
    for _ in 0..=usize::BITS - n.leading_zeros() {
        let mid = ((&below + &bound)? * 0.5)?.floor()?;
        let count = (&ties * index.broadcast_lt(&mid)?.to_dtype(DType::F64)?)?.sum_all()?;
        let ok = count.ge(&r)?;
        below = ok.where_cond(&below, &mid)?;
        bound = ok.where_cond(&mid, &bound)?;
    }
    let first_ties = (&ties * index.broadcast_lt(&bound)?.to_dtype(DType::F64)?)?;
    let mask = (f64s(above)? + first_ties)?;
    mask.to_dtype(scores.dtype())?.reshape(scores.shape())
}

/// The hard 0/1 mask of `scores` (no gradient).
pub fn hard_mask(scores: &Tensor, rule: Binarize) -> Result<Tensor> {
    match rule {
        // On the CPU exact selection costs less than the bisection's 64 passes; elsewhere it
        // would cost a round trip to the host per layer per step.
        Binarize::TopK { keep, abs } if !scores.device().is_cpu() => topk_mask_device(scores, keep, abs),
        Binarize::TopK { keep, abs } => {
            let values: Vec<f32> = scores.flatten_all()?.to_vec1()?;
            Tensor::from_vec(topk_mask(&values, keep, abs), scores.shape(), scores.device())
        }
        Binarize::Threshold(t) => scores.gt(t as f64)?.to_dtype(scores.dtype()),
        Binarize::Sigmoid(t) => {
            if t <= 0.0 {
                return scores.ones_like();
            }
            if t >= 1.0 {
                return scores.zeros_like();
            }
            // sigmoid(s) > t  ⇔  s > logit(t)
            let logit = (t as f64 / (1.0 - t as f64)).ln();
            scores.gt(logit)?.to_dtype(scores.dtype())
        }
    }
}

/// The mask with a straight-through gradient: the forward value is exactly the hard mask
/// (`b − b.detach()` is computed first and is exactly zero), the backward passes the gradient to
/// the ranked quantity `b` unchanged. For top-k by magnitude `b = |scores|`, so the scores
/// receive `g·sign(s)`: growing a score's magnitude is what keeps its weight, as in edge-popup
/// (which ranks `scores.abs()` before its straight-through op).
pub fn ste_mask(scores: &Tensor, rule: Binarize) -> Result<Tensor> {
    let basis = match rule {
        Binarize::TopK { abs: true, .. } => scores.abs()?,
        _ => scores.clone(),
    };
    let hard = hard_mask(&scores.detach(), rule)?;
    let pass = (&basis - basis.detach())?;
    hard + pass
}

/// Expands a `[gr, gc]` block mask to the `[rows, cols]` matrix it covers (ragged edges cut).
pub fn expand_blocks(mask: &Tensor, block: [usize; 2], rows: usize, cols: usize) -> Result<Tensor> {
    let (gr, gc) = mask.dims2()?;
    mask.reshape((gr, 1, gc, 1))?
        .broadcast_as((gr, block[0], gc, block[1]))?
        .reshape((gr * block[0], gc * block[1]))?
        .narrow(0, 0, rows)?
        .narrow(1, 0, cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    #[test]
    fn topk_density_is_exact_and_ties_break_by_index() {
        for n in [1usize, 7, 100, 1001] {
            let values: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            for keep in [0.0, 0.1, 0.5, 0.93, 1.0] {
                let m = topk_mask(&values, keep, true);
                assert_eq!(
                    m.iter().filter(|&&v| v == 1.0).count(),
                    kept_count(n, keep),
                    "n {n} keep {keep}"
                );
                // Every kept |value| ≥ every dropped one.
                let kept_min = (0..n)
                    .filter(|&i| m[i] == 1.0)
                    .map(|i| values[i].abs())
                    .fold(f32::INFINITY, f32::min);
                let drop_max = (0..n)
                    .filter(|&i| m[i] == 0.0)
                    .map(|i| values[i].abs())
                    .fold(f32::NEG_INFINITY, f32::max);
                assert!(kept_min >= drop_max);
            }
        }
        assert_eq!(topk_mask(&[0.0; 4], 0.5, false), [1.0, 1.0, 0.0, 0.0]);
        assert_eq!(topk_mask(&[-3.0, 1.0, 2.0], 1.0 / 3.0, false), [0.0, 0.0, 1.0]);
        assert_eq!(topk_mask(&[-3.0, 1.0, 2.0], 1.0 / 3.0, true), [1.0, 0.0, 0.0]);
        assert_eq!(kept_count(10, 0.5), 5);
        assert_eq!(kept_count(10, 0.05), 1);
    }

    /// Against the definition: sort indices by key (descending), ties by index, keep the first k.
    #[test]
    fn topk_matches_a_full_sort() {
        let mut state = 0x9E37_79B9u64;
        for n in [2usize, 3, 17, 64, 257, 1000] {
            for &keep in &[0.01, 0.1, 0.37, 0.5, 0.9, 0.999] {
                for abs in [false, true] {
                    // Few distinct values, so ties are common; both signs and both zeros.
                    let values: Vec<f32> = (0..n)
                        .map(|_| {
                            state = smk_format::seeded::draw(state, 1);
                            let v = (state % 9) as f32 - 4.0;
                            if v == 0.0 && state & 16 == 0 {
                                -0.0
                            } else {
                                v * 0.5
                            }
                        })
                        .collect();
                    let key = |i: usize| if abs { values[i].abs() } else { values[i] };
                    let mut idx: Vec<usize> = (0..n).collect();
                    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
                    let mut want = vec![0f32; n];
                    for &i in &idx[..kept_count(n, keep)] {
                        want[i] = 1.0;
                    }
                    assert_eq!(topk_mask(&values, keep, abs), want, "n {n} keep {keep} abs {abs}");
                }
            }
        }
    }

    /// What [`topk_mask_device`] promises: the keys at or above the k-th largest.
    fn threshold_reference(values: &[f32], keep: f64, abs: bool) -> Vec<f32> {
        let n = values.len();
        let k = kept_count(n, keep);
        let key = |v: f32| if abs { v.abs() } else { v };
        let mut keys: Vec<f32> = values.iter().map(|&v| key(v)).collect();
        keys.sort_by(|a, b| b.total_cmp(a));
        values
            .iter()
            .map(|&v| match k {
                0 => 0.0,
                k if k == n => 1.0,
                k => f32::from(key(v) >= keys[k - 1]),
            })
            .collect()
    }

    fn device_mask(values: &[f32], keep: f64, abs: bool, steps: usize) -> Vec<f32> {
        let t = Tensor::new(values, &Device::Cpu).unwrap();
        topk_mask_bisect(&t, keep, abs, steps).unwrap().to_vec1().unwrap()
    }

    /// Distinct magnitudes (distinct integer parts, a fraction below one half, random signs):
    /// no ties, by absolute or signed value.
    fn distinct_values(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
        let v: Vec<f32> = rng
            .permutation(n)
            .into_iter()
            .map(|p| {
                let v = (p as f32 + 0.5 * rng.uniform()) * (scale / n as f32);
                if rng.next_u64() & 1 == 0 {
                    -v
                } else {
                    v
                }
            })
            .collect();
        let mut m: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        m.sort_by(f32::total_cmp);
        assert!(m.windows(2).all(|w| w[0] < w[1]), "the premise: no ties");
        v
    }

    const SIZES: [usize; 5] = [1, 2, 7, 1000, 100_003];
    const KEEPS: [f64; 6] = [0.0, 0.01, 0.1, 0.5, 0.9, 1.0];
    const SCALES: [f32; 3] = [1e-3, 1.0, 1e3];

    #[test]
    fn device_topk_without_ties_is_the_exact_mask() {
        for seed in 0..3 {
            let mut rng = Rng::new(seed, 0);
            for n in SIZES {
                for scale in SCALES {
                    let values = distinct_values(&mut rng, n, scale);
                    for keep in KEEPS {
                        for abs in [false, true] {
                            assert!(
                                device_mask(&values, keep, abs, TOPK_BISECTION_STEPS) == topk_mask(&values, keep, abs),
                                "seed {seed} n {n} scale {scale} keep {keep} abs {abs}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn device_topk_breaks_ties_by_index_as_the_host() {
        let mut over = 0;
        for seed in 0..3 {
            let mut rng = Rng::new(seed, 1);
            for n in SIZES {
                for scale in SCALES {
                    // Five levels (both signs and zero): ties everywhere. Normal draws: the odd
                    // tie that 24-bit draws give at 100,003 values.
                    let levels: Vec<f32> = (0..n).map(|_| (rng.below(5) as f32 - 2.0) * scale).collect();
                    let normal: Vec<f32> = (0..n).map(|_| rng.normal(scale)).collect();
                    for values in [&levels, &normal] {
                        for keep in KEEPS {
                            for abs in [false, true] {
                                let what = format!("seed {seed} n {n} scale {scale} keep {keep} abs {abs}");
                                let got = device_mask(values, keep, abs, TOPK_BISECTION_STEPS);
                                assert!(got == topk_mask(values, keep, abs), "{what}: not the host's mask");
                                let threshold = threshold_reference(values, keep, abs);
                                let key = |i: usize| if abs { values[i].abs() } else { values[i] };
                                let kept = (0..n).filter(|&i| got[i] == 1.0);
                                let kept_min = kept.clone().map(key).fold(f32::INFINITY, f32::min);
                                let drop_max = (0..n)
                                    .filter(|&i| got[i] == 0.0)
                                    .map(key)
                                    .fold(f32::NEG_INFINITY, f32::max);
                                assert_eq!(kept.count(), kept_count(n, keep), "{what}");
                                assert!(kept_min >= drop_max, "{what}");
                                // Where keeping every tie would keep more, the index broke them.
                                over +=
                                    usize::from(threshold.iter().filter(|&&v| v == 1.0).count() > kept_count(n, keep));
                            }
                        }
                    }
                }
            }
        }
        assert!(over > 0, "ties at the threshold were exercised");
        // Every key equal: the first k, as on the host.
        assert_eq!(
            device_mask(&[0.25; 6], 0.5, true, TOPK_BISECTION_STEPS),
            [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            device_mask(&[0.0; 3], 0.34, false, TOPK_BISECTION_STEPS),
            [1.0, 1.0, 0.0]
        );
    }

    /// The comparisons above can fail: a bisection stopped early leaves its threshold below the
    /// k-th key and keeps too much.
    #[test]
    fn a_short_bisection_is_caught() {
        let values = distinct_values(&mut Rng::new(7, 2), 1000, 1.0);
        for abs in [false, true] {
            let short = device_mask(&values, 0.1, abs, 8);
            assert!(short != topk_mask(&values, 0.1, abs), "abs {abs}");
            assert!(short != threshold_reference(&values, 0.1, abs), "abs {abs}");
            assert!(short.iter().filter(|&&m| m == 1.0).count() > 100, "abs {abs}");
        }
    }

    #[test]
    fn device_topk_keeps_the_shape() {
        let mut rng = Rng::new(5, 3);
        for (r, c) in [(1usize, 1usize), (300, 7), (13, 77), (4, 250)] {
            let values = distinct_values(&mut rng, r * c, 1.0);
            let t = Tensor::from_vec(values.clone(), (r, c), &Device::Cpu).unwrap();
            for keep in [0.1, 0.5] {
                let m = topk_mask_device(&t, keep, true).unwrap();
                assert_eq!(m.dims(), [r, c]);
                assert_eq!(m.dtype(), DType::F32);
                let flat: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
                assert!(flat == topk_mask(&values, keep, true), "{r}x{c} keep {keep}");
                // The CPU dispatch takes the exact path, with the same result here.
                let host = hard_mask(&t, Binarize::TopK { keep, abs: true }).unwrap();
                assert_eq!(host.to_vec2::<f32>().unwrap(), m.to_vec2::<f32>().unwrap());
            }
        }
    }

    #[test]
    fn ste_forward_is_the_hard_mask_and_gradient_passes_through() {
        let dev = Device::Cpu;
        let s = Var::new(&[[0.3f32, -0.9, 0.01], [2.0, -0.2, 0.6]], &dev).unwrap();
        let w = Tensor::new(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev).unwrap();
        let x = Tensor::new(&[[1.0f32], [-1.0], [0.5]], &dev).unwrap();
        for rule in [
            Binarize::TopK { keep: 0.5, abs: true },
            Binarize::Threshold(0.005),
            Binarize::Sigmoid(0.55),
        ] {
            let m = ste_mask(s.as_tensor(), rule).unwrap();
            let hard = hard_mask(s.as_tensor(), rule).unwrap();
            assert_eq!(m.to_vec2::<f32>().unwrap(), hard.to_vec2::<f32>().unwrap(), "{rule:?}");
            // y = (w ⊙ m) x ; dL/ds_ij = dL/dy_i · w_ij · x_j with L = Σ y.
            let y = (&w * &m).unwrap().matmul(&x).unwrap().sum_all().unwrap();
            let g = y.backward().unwrap();
            let gs = g.get(s.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            let xs = [1.0f32, -1.0, 0.5];
            let ws = w.to_vec2::<f32>().unwrap();
            let ss = s.as_tensor().to_vec2::<f32>().unwrap();
            for i in 0..2 {
                for j in 0..3 {
                    // Ranking by |s| passes the gradient through |·|: times sign(s).
                    let sign = if matches!(rule, Binarize::TopK { abs: true, .. }) {
                        ss[i][j].signum()
                    } else {
                        1.0
                    };
                    assert!((gs[i][j] - ws[i][j] * xs[j] * sign).abs() < 1e-6, "{rule:?} {i},{j}");
                }
            }
        }
        let soft = hard_mask(s.as_tensor(), Binarize::Sigmoid(0.55))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(soft, [[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]);
    }

    #[test]
    fn block_expansion_covers_blocks_and_sums_gradients() {
        let dev = Device::Cpu;
        let s = Var::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let e = expand_blocks(s.as_tensor(), [2, 3], 3, 5).unwrap();
        assert_eq!(
            e.to_vec2::<f32>().unwrap(),
            [
                [1.0, 1.0, 1.0, 0.0, 0.0],
                [1.0, 1.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 1.0, 1.0]
            ]
        );
        let g = e.sum_all().unwrap().backward().unwrap();
        // Each block's gradient is the number of matrix entries it covers after the ragged cut.
        assert_eq!(
            g.get(s.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            [[6.0, 4.0], [3.0, 2.0]]
        );
    }
}
