//! The plain f64 reference interpreter every kernel and whole model is tested against, and the
//! format crate's sample models.
#![allow(dead_code)]

#[path = "../../../format/tests/common/mod.rs"]
pub mod samples;

use smk_format::{Input, Mask, Model, Op, Tensor};

/// The effective weight (o, c) of `t` under `mask`, in f64.
fn weight(t: &Tensor<'_>, mask: Option<&Mask<'_>>, o: u64, c: u64) -> f64 {
    if mask.is_some_and(|m| !m.keeps(o, c)) {
        0.0
    } else {
        t.value(o, c) as f64
    }
}

/// One output of the reference: values, and for each the sum of the magnitudes of the terms
/// that made it (the scale a float error is judged against).
pub struct Reference {
    pub values: Vec<f64>,
    pub magnitude: Vec<f64>,
}

/// Runs one input through `model` with mask set `task`, in f64, by the spec's formulas.
pub fn reference(model: &Model<'_>, task: Option<u32>, input: &[f32]) -> Reference {
    // As the runtime: no task named means the only one, if there is one.
    let task = task.or((model.mask_set_count() == 1).then_some(0));
    let mask = |t: u32| task.and_then(|s| model.mask(s, t));
    let stored = |t: Option<u32>, i: usize, default: f64| {
        // Whole tensors as f32 (a seeded bias is generated, not zero).
        t.map_or(default, |t| model.tensor(t).unwrap().to_f32_vec().unwrap()[i] as f64)
    };
    let mut acts: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let graph_in: (Vec<f64>, Vec<f64>) = (
        input.iter().map(|&v| v as f64).collect(),
        input.iter().map(|v| v.abs() as f64).collect(),
    );
    for l in model.layers() {
        let get = |i: Input| match i {
            Input::Graph => graph_in.clone(),
            Input::Layer(j) => acts[j as usize].clone(),
        };
        let in_shape = match l.input {
            Input::Graph => model.input_shape(),
            Input::Layer(j) => model.layer(j).unwrap().output_shape,
        };
        let (x, xm) = get(l.input);
        let n_out = l.output_shape.numel() as usize;
        let mut y = vec![0f64; n_out];
        let mut ym = vec![0f64; n_out];
        let d = in_shape.dims();
        let od = l.output_shape.dims();
        match l.op {
            Op::Linear { weight: w, bias } => {
                let t = model.tensor(w).unwrap();
                let m = mask(w);
                for o in 0..n_out {
                    let (mut s, mut a) = (stored(bias, o, 0.0), stored(bias, o, 0.0).abs());
                    for c in 0..x.len() {
                        let wv = weight(&t, m.as_ref(), o as u64, c as u64);
                        s += wv * x[c];
                        a += (wv * xm[c]).abs();
                    }
                    y[o] = s;
                    ym[o] = a;
                }
            }
            Op::Conv2d {
                weight: w,
                bias,
                window,
            } => {
                let t = model.tensor(w).unwrap();
                let m = mask(w);
                let (c_n, h, wd) = (d[0] as usize, d[1] as usize, d[2] as usize);
                let (kh, kw) = (window.kernel[0] as usize, window.kernel[1] as usize);
                for o in 0..od[0] as usize {
                    for i in 0..od[1] as usize {
                        for j in 0..od[2] as usize {
                            let (mut s, mut a) = (stored(bias, o, 0.0), stored(bias, o, 0.0).abs());
                            for c in 0..c_n {
                                for u in 0..kh {
                                    for v in 0..kw {
                                        let p = (i * window.stride[0] as usize + u * window.dilation[0] as usize)
                                            as i64
                                            - window.padding[0] as i64;
                                        let q = (j * window.stride[1] as usize + v * window.dilation[1] as usize)
                                            as i64
                                            - window.padding[1] as i64;
                                        if p < 0 || q < 0 || p >= h as i64 || q >= wd as i64 {
                                            continue;
                                        }
                                        let xi = (c * h + p as usize) * wd + q as usize;
                                        let wv = weight(&t, m.as_ref(), o as u64, ((c * kh + u) * kw + v) as u64);
                                        s += wv * x[xi];
                                        a += (wv * xm[xi]).abs();
                                    }
                                }
                            }
                            let k = (o * od[1] as usize + i) * od[2] as usize + j;
                            y[k] = s;
                            ym[k] = a;
                        }
                    }
                }
            }
            Op::Relu => {
                for k in 0..n_out {
                    y[k] = x[k].max(0.0);
                    ym[k] = xm[k];
                }
            }
            Op::MaxPool(window) | Op::AvgPool { window, .. } => {
                let (h, wd) = (d[1] as usize, d[2] as usize);
                for c in 0..od[0] as usize {
                    for i in 0..od[1] as usize {
                        for j in 0..od[2] as usize {
                            let (mut mx, mut sum, mut mag, mut n) = (f64::NEG_INFINITY, 0.0, 0f64, 0);
                            for u in 0..window.kernel[0] as usize {
                                for v in 0..window.kernel[1] as usize {
                                    let p = (i * window.stride[0] as usize + u) as i64 - window.padding[0] as i64;
                                    let q = (j * window.stride[1] as usize + v) as i64 - window.padding[1] as i64;
                                    if p < 0 || q < 0 || p >= h as i64 || q >= wd as i64 {
                                        continue;
                                    }
                                    let xi = (c * h + p as usize) * wd + q as usize;
                                    mx = mx.max(x[xi]);
                                    sum += x[xi];
                                    mag = mag.max(xm[xi]);
                                    n += 1;
                                }
                            }
                            let k = (c * od[1] as usize + i) * od[2] as usize + j;
                            y[k] = match l.op {
                                Op::AvgPool {
                                    count_include_pad: true,
                                    ..
                                } => sum / (window.kernel[0] * window.kernel[1]) as f64,
                                Op::AvgPool { .. } => sum / n as f64,
                                _ => mx,
                            };
                            ym[k] = mag;
                        }
                    }
                }
            }
            Op::Flatten => {
                y = x.clone();
                ym = xm.clone();
            }
            Op::BatchNorm {
                mean,
                var,
                gamma,
                beta,
                eps,
            } => {
                let per = x.len() / d[0] as usize;
                // A [tasks, C] tensor holds a row per task: the plan's task's.
                let vec = |t: Option<u32>, ch: usize, default: f64| {
                    t.map_or(default, |t| {
                        let t = model.tensor(t).unwrap();
                        let row = if t.shape.rank() == 2 {
                            task.unwrap_or(0) as usize
                        } else {
                            0
                        };
                        t.to_f32_vec().unwrap()[row * d[0] as usize + ch] as f64
                    })
                };
                for k in 0..n_out {
                    let ch = k / per;
                    let inv = 1.0 / (vec(Some(var), ch, 0.0) + eps as f64).sqrt();
                    let g = vec(gamma, ch, 1.0);
                    y[k] = (x[k] - vec(Some(mean), ch, 0.0)) * inv * g + vec(beta, ch, 0.0);
                    ym[k] = (xm[k] + vec(Some(mean), ch, 0.0).abs()) * inv * g.abs() + vec(beta, ch, 0.0).abs();
                }
            }
            Op::LayerNorm { gamma, beta, eps } => {
                let len = *d.last().unwrap() as usize;
                for (start, _) in (0..n_out).step_by(len).enumerate().map(|(i, s)| (s, i)) {
                    let xs = &x[start..start + len];
                    let mean = xs.iter().sum::<f64>() / len as f64;
                    let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / len as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    for k in 0..len {
                        let g = stored(gamma, k, 1.0);
                        y[start + k] = (xs[k] - mean) * inv * g + stored(beta, k, 0.0);
                        // Normalised values are O(1); their error scales with the input's.
                        ym[start + k] = g.abs() * (1.0 + len as f64).sqrt() + stored(beta, k, 0.0).abs();
                    }
                }
            }
            Op::Add => {
                let (x2, xm2) = get(l.second_input.unwrap());
                for k in 0..n_out {
                    y[k] = x[k] + x2[k];
                    ym[k] = xm[k] + xm2[k];
                }
            }
            Op::Softmax => {
                let len = *d.last().unwrap() as usize;
                for start in (0..n_out).step_by(len) {
                    let xs = &x[start..start + len];
                    let mx = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = xs.iter().map(|v| (v - mx).exp()).sum();
                    for k in 0..len {
                        y[start + k] = (xs[k] - mx).exp() / sum;
                        ym[start + k] =
                            y[start + k] * (1.0 + xm[start..start + len].iter().cloned().fold(0.0, f64::max));
                    }
                }
            }
        }
        acts.push((y, ym));
    }
    let (values, magnitude) = acts.pop().unwrap();
    Reference { values, magnitude }
}

/// Deterministic inputs in [-1, 1).
pub fn inputs(seed: u64, n: usize) -> Vec<f32> {
    samples::values(seed, n)
}
