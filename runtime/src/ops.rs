//! The layers other than the weight products: element-wise, pooling, normalisation, softmax,
//! and the patch gathering (im2col) that turns a convolution into a product.
//!
//! All work on one batch item at a time, in caller-provided slices whose lengths the plan sized.

use smk_format::{Shape, Tensor, Window2d};

/// `[C, H, W]` of a rank-3 shape (rank 1 and 2 read as `[C, 1, W]`-like; only rank 3 reaches
/// the pooling and convolution code).
pub(crate) fn chw(s: Shape) -> (usize, usize, usize) {
    let d = s.dims();
    match d.len() {
        3 => (d[0] as usize, d[1] as usize, d[2] as usize),
        _ => (d[0] as usize, 1, s.numel() as usize / d[0] as usize),
    }
}

/// The input row of output position `o` and kernel offset `u` along one axis, if inside.
#[inline]
fn source(o: usize, u: usize, w: &Window2d, axis: usize, n: usize) -> Option<usize> {
    let p = (o * w.stride[axis] as usize + u * w.dilation[axis] as usize).checked_sub(w.padding[axis] as usize)?;
    (p < n).then_some(p)
}

/// Gathers the patches of one image: row `p = i·W' + j` holds, at `c·kh·kw + u·kw + v`, the
/// input under kernel position `(c, u, v)` for output `(i, j)` (0 outside), then zeros up to
/// `stride`.
pub(crate) fn im2col(
    x: &[f32],
    input: (usize, usize, usize),
    out_hw: (usize, usize),
    w: &Window2d,
    patches: &mut [f32],
    stride: usize,
) {
    let (c_n, h, wd) = input;
    let (kh, kw) = (w.kernel[0] as usize, w.kernel[1] as usize);
    for i in 0..out_hw.0 {
        for j in 0..out_hw.1 {
            let row = &mut patches[(i * out_hw.1 + j) * stride..(i * out_hw.1 + j + 1) * stride];
            let mut k = 0;
            for c in 0..c_n {
                for u in 0..kh {
                    let src = source(i, u, w, 0, h);
                    for v in 0..kw {
                        row[k] = match (src, source(j, v, w, 1, wd)) {
                            (Some(a), Some(b)) => x[(c * h + a) * wd + b],
                            _ => 0.0,
                        };
                        k += 1;
                    }
                }
            }
            row[k..].fill(0.0);
        }
    }
}

/// Max pooling of one image; positions outside count as −∞.
pub(crate) fn max_pool(x: &[f32], input: (usize, usize, usize), out_hw: (usize, usize), w: &Window2d, y: &mut [f32]) {
    let (c_n, h, wd) = input;
    for c in 0..c_n {
        for i in 0..out_hw.0 {
            for j in 0..out_hw.1 {
                let mut m = f32::NEG_INFINITY;
                for u in 0..w.kernel[0] as usize {
                    let Some(a) = source(i, u, w, 0, h) else { continue };
                    for v in 0..w.kernel[1] as usize {
                        if let Some(b) = source(j, v, w, 1, wd) {
                            m = m.max(x[(c * h + a) * wd + b]);
                        }
                    }
                }
                y[(c * out_hw.0 + i) * out_hw.1 + j] = m;
            }
        }
    }
}

/// Average pooling of one image.
pub(crate) fn avg_pool(
    x: &[f32],
    input: (usize, usize, usize),
    out_hw: (usize, usize),
    w: &Window2d,
    count_include_pad: bool,
    y: &mut [f32],
) {
    let (c_n, h, wd) = input;
    let area = (w.kernel[0] * w.kernel[1]) as f32;
    for c in 0..c_n {
        for i in 0..out_hw.0 {
            for j in 0..out_hw.1 {
                let (mut s, mut n) = (0f32, 0u32);
                for u in 0..w.kernel[0] as usize {
                    let Some(a) = source(i, u, w, 0, h) else { continue };
                    for v in 0..w.kernel[1] as usize {
                        if let Some(b) = source(j, v, w, 1, wd) {
                            s += x[(c * h + a) * wd + b];
                            n += 1;
                        }
                    }
                }
                let d = if count_include_pad { area } else { n.max(1) as f32 };
                y[(c * out_hw.0 + i) * out_hw.1 + j] = s / d;
            }
        }
    }
}

/// Inference batch norm of one item, per channel `dims[0]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm(
    x: &[f32],
    channels: usize,
    mean: &Tensor<'_>,
    var: &Tensor<'_>,
    gamma: Option<&Tensor<'_>>,
    beta: Option<&Tensor<'_>>,
    eps: f32,
    set: Option<u32>,
    y: &mut [f32],
) {
    let per = x.len() / channels.max(1);
    for ch in 0..channels {
        let i = ch as u64;
        // Any storage (a seeded vector too), and per-task rows (`[tasks, C]`).
        let scale = gamma.map_or(1.0, |g| g.channel(set, i)) / libm::sqrtf(var.channel(set, i) + eps);
        let shift = beta.map_or(0.0, |b| b.channel(set, i)) - mean.channel(set, i) * scale;
        for (o, v) in y[ch * per..(ch + 1) * per].iter_mut().zip(&x[ch * per..(ch + 1) * per]) {
            *o = v * scale + shift;
        }
    }
}

/// Layer norm of one item over its last dimension `len`.
pub(crate) fn layer_norm(
    x: &[f32],
    len: usize,
    gamma: Option<&Tensor<'_>>,
    beta: Option<&Tensor<'_>>,
    eps: f32,
    y: &mut [f32],
) {
    for (xs, ys) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
        let mean = xs.iter().sum::<f32>() / len as f32;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / len as f32;
        let inv = 1.0 / libm::sqrtf(var + eps);
        for (k, (o, v)) in ys.iter_mut().zip(xs).enumerate() {
            *o = (v - mean) * inv * gamma.map_or(1.0, |g| g.value(0, k as u64))
                + beta.map_or(0.0, |b| b.value(0, k as u64));
        }
    }
}

/// Softmax over the last dimension `len`.
pub(crate) fn softmax(x: &[f32], len: usize, y: &mut [f32]) {
    for (xs, ys) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (o, v) in ys.iter_mut().zip(xs) {
            *o = libm::expf(v - max);
            sum += *o;
        }
        for o in ys.iter_mut() {
            *o /= sum;
        }
    }
}
