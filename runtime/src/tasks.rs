//! Which task an input belongs to, for files with one mask set per task over shared weights
//! (SupSup): the network answers it, without allocating, in scratch sized by [`TaskPlan`].
//!
//! - [`TaskRule::OneShot`] (SupSup's one-shot rule): run the mixture of every task's mask,
//!   `W ⊙ Σ_k α_k M_k` at `α_k = 1/T`, and pick the task whose `α_k` most lowers the output
//!   entropy, the argmin of `∂H/∂α_k`. The derivative needs no autograd. Each product layer is
//!   linear in its weights, so its output's tangent along `α_k` is `(W ⊙ M_k)·h + W_mix·ḣ_k`;
//!   a ReLU passes it where its input is positive; at the logits `∂H/∂z = −p ⊙ (log p + H)`.
//!   That costs one product per task per layer (the `(W ⊙ M_k)·h` terms, whose mean is also
//!   the mixture's own output) plus one product of the mixed weights, spelled out densely in
//!   the scratch, with the T tangents as a batch. Models: chains of linear layers with ReLU, a
//!   batch norm before the first product (the trainer's input normalisation), flatten, and a
//!   final softmax.
//! - [`TaskRule::MinEntropy`] (the baseline): the task whose own mask gives the lowest output
//!   entropy, one plain inference per task. Any model.
//!
//! Each guess comes with a confidence in `(1/T, 1]`: the softmax of the negated scores after
//! dividing them by their spread over tasks, so 1/T when every task scores alike and near 1
//! when one stands apart.

use crate::linear::{self, Io};
use crate::{ops, Error, Isa, Plan};
use smk_format::{Input, Layout, Model, Op, Storage, Tensor};

/// The most tasks task inference considers (its per-task tables are fixed-size).
pub const MAX_TASKS: usize = 1024;

/// How the task is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRule {
    /// The argmin over tasks of `∂H/∂α_k` at the uniform mixture of every task's mask.
    OneShot,
    /// The task whose own mask gives the lowest output entropy.
    MinEntropy,
}

/// One input's inferred task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskGuess {
    /// The mask set.
    pub task: u32,
    /// In `(1/T, 1]`: how far the task stands apart from the others.
    pub confidence: f32,
    /// Its score (lower wins): `∂H/∂α_k`, or the entropy.
    pub score: f32,
}

/// Task inference planned for one model: checked once, then [`TaskPlan::infer_tasks`] many
/// times.
#[derive(Clone, Debug)]
pub struct TaskPlan<'a> {
    model: Model<'a>,
    isa: Isa,
    tasks: usize,
    rule: TaskRule,
    /// f32 in the widest activation (input included), rounded up for alignment.
    width: usize,
    /// f32 in every masked weight matrix, each spelled out densely as its mixture.
    mix_len: usize,
    /// f32 of kernel work space.
    work_len: usize,
    /// Bytes of one task's inference plan (the minimum-entropy rule).
    plan_bytes: usize,
}

/// f32 per 64 bytes: buffers start on cache lines.
const LINE: usize = 16;

impl<'a> TaskPlan<'a> {
    /// Plans `rule` for `model`, which must have at least two mask sets.
    pub fn new(model: &Model<'a>, rule: TaskRule) -> Result<Self, Error> {
        let tasks = model.mask_set_count() as usize;
        if tasks < 2 {
            return Err(Error::TaskInference {
                why: "the model has fewer than two tasks (mask sets)",
            });
        }
        if tasks > MAX_TASKS {
            return Err(Error::TaskInference {
                why: "the model has more tasks than task inference handles (1024)",
            });
        }
        let isa = Isa::detect();
        let mut width = model.input_shape().numel() as usize;
        let (mut mix_len, mut work_len, mut plan_bytes) = (0usize, 0usize, 0usize);
        for k in 0..tasks as u32 {
            plan_bytes = plan_bytes.max(Plan::new(model, 1, Some(k))?.scratch_bytes());
        }
        let count = model.layer_count();
        for i in 0..count {
            let l = model.layer(i).ok_or(Error::Inconsistent { layer: i })?;
            width = width.max(l.output_shape.numel() as usize);
            if rule == TaskRule::MinEntropy {
                continue;
            }
            let expected = if i == 0 { Input::Graph } else { Input::Layer(i - 1) };
            if l.input != expected || l.second_input.is_some() {
                return Err(Error::TaskInference {
                    why: "the one-shot rule needs a chain of layers (no branches)",
                });
            }
            match l.op {
                Op::Linear { weight, .. } => {
                    let t = model.tensor(weight).ok_or(Error::Inconsistent { layer: i })?;
                    let (rows, cols) = t.matrix();
                    let masked = (0..tasks as u32).filter(|&k| model.mask(k, weight).is_some()).count();
                    if masked != 0 && masked != tasks {
                        return Err(Error::TaskInference {
                            why: "a layer is masked in some tasks and not in others",
                        });
                    }
                    let bad = Error::BadBatch { batch: tasks };
                    if masked != 0 {
                        let mix = rows.checked_mul(cols).ok_or(bad.clone())? as usize;
                        mix_len = mix_len.checked_add(mix.next_multiple_of(LINE)).ok_or(bad.clone())?;
                    }
                    for k in 0..tasks as u32 {
                        let m = model.mask(k, weight);
                        work_len = work_len.max(linear::work_len(&t, m.as_ref(), tasks).ok_or(bad.clone())?);
                    }
                    let dense = Tensor {
                        storage: Storage::F32,
                        layout: Layout::RowMajor,
                        ..t
                    };
                    work_len = work_len.max(linear::work_len(&dense, None, tasks).ok_or(bad)?);
                }
                Op::BatchNorm { .. } | Op::Flatten | Op::Relu => {}
                Op::Softmax if i + 1 == count => {}
                _ => {
                    return Err(Error::TaskInference {
                        why: "the one-shot rule handles linear layers, ReLU, flatten, an input batch norm and a final softmax; use the minimum-entropy rule",
                    })
                }
            }
        }
        Ok(Self {
            model: *model,
            isa,
            tasks,
            rule,
            width: width.next_multiple_of(LINE),
            mix_len: mix_len.next_multiple_of(LINE),
            work_len: work_len.next_multiple_of(LINE),
            plan_bytes,
        })
    }

    /// The same plan on instruction set `isa`, if this CPU has it.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self, Error> {
        self.isa = isa.checked().ok_or(Error::IsaUnavailable(isa))?;
        Ok(self)
    }

    /// Tasks considered.
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// The rule.
    pub fn rule(&self) -> TaskRule {
        self.rule
    }

    /// f32 values in one input.
    pub fn input_len(&self) -> usize {
        self.model.input_shape().numel() as usize
    }

    fn floats(&self) -> usize {
        match self.rule {
            // The tag, the mixtures; h, z; own products, tangents and their successors (T
            // each); work.
            TaskRule::OneShot => LINE + self.mix_len + 2 * self.width + 3 * self.tasks * self.width + self.work_len,
            // One task's output, after its plan's own scratch.
            TaskRule::MinEntropy => self.width + self.plan_bytes.div_ceil(4),
        }
    }

    /// Bytes of scratch [`TaskPlan::infer_tasks`] needs (any alignment: 64 bytes are slack).
    pub fn scratch_bytes(&self) -> usize {
        self.floats() * 4 + 64
    }

    /// The task of each input: `inputs` holds `guesses.len()` inputs end to end.
    pub fn infer_tasks(&self, scratch: &mut [u8], inputs: &[f32], guesses: &mut [TaskGuess]) -> Result<(), Error> {
        let n = guesses.len();
        let in_len = self.input_len();
        if inputs.len() != n * in_len {
            return Err(Error::InputLength {
                expected: n * in_len,
                got: inputs.len(),
            });
        }
        let f = crate::plan::scratch_floats(scratch, self.scratch_bytes())?;
        let mut scores = [0f32; MAX_TASKS];
        let scores = &mut scores[..self.tasks];
        match self.rule {
            TaskRule::OneShot => {
                let (tag, rest) = f.split_at_mut(LINE);
                let (mix, rest) = rest.split_at_mut(self.mix_len);
                let (bufs, work) = rest.split_at_mut(2 * self.width + 3 * self.tasks * self.width);
                // The mixtures are built once per scratch and model: the tag says for which.
                let want = self.tag();
                let have = [tag[0].to_bits(), tag[1].to_bits(), tag[2].to_bits(), tag[3].to_bits()];
                if have != want {
                    self.mixtures(mix)?;
                    for (t, w) in tag.iter_mut().zip(want) {
                        *t = f32::from_bits(w);
                    }
                }
                for (x, g) in inputs.chunks_exact(in_len).zip(guesses.iter_mut()) {
                    self.one_shot(x, bufs, mix, work, scores)?;
                    *g = guess(scores);
                }
            }
            TaskRule::MinEntropy => {
                let (out, plan_scratch) = f.split_at_mut(self.width);
                let plan_scratch: &mut [u8] = bytemuck::cast_slice_mut(plan_scratch);
                for (x, g) in inputs.chunks_exact(in_len).zip(guesses.iter_mut()) {
                    for (k, s) in scores.iter_mut().enumerate() {
                        let plan = Plan::new(&self.model, 1, Some(k as u32))?.with_isa(self.isa)?;
                        let y = &mut out[..plan.output_len()];
                        plan.infer(plan_scratch, x, y)?;
                        *s = entropy_of(y, self.ends_in_softmax());
                    }
                    *g = guess(scores);
                }
            }
        }
        Ok(())
    }

    fn ends_in_softmax(&self) -> bool {
        let last = self.model.layer_count().saturating_sub(1);
        self.model.layer(last).is_some_and(|l| l.op == Op::Softmax)
    }

    /// `∂H/∂α_k` for one input, into `scores`.
    fn one_shot(
        &self,
        x: &[f32],
        bufs: &mut [f32],
        mix: &[f32],
        work: &mut [f32],
        scores: &mut [f32],
    ) -> Result<(), Error> {
        let (w, t) = (self.width, self.tasks);
        let (h, rest) = bufs.split_at_mut(w);
        let (z, rest) = rest.split_at_mut(w);
        let (own, rest) = rest.split_at_mut(t * w);
        let (tan, next) = rest.split_at_mut(t * w);
        let mut len = x.len();
        h[..len].copy_from_slice(x);
        let mut moving = false; // whether the tangents are non-zero yet
        let mut mix_at = 0; // where the next masked layer's mixture starts
        let mut logits_len = len;
        let count = self.model.layer_count();
        for i in 0..count {
            let bad = Error::Inconsistent { layer: i };
            let l = self.model.layer(i).ok_or(bad.clone())?;
            let in_shape = match i {
                0 => self.model.input_shape(),
                _ => self.model.layer(i - 1).ok_or(bad.clone())?.output_shape,
            };
            match l.op {
                Op::Flatten => {}
                Op::Softmax => logits_len = len,
                Op::Relu => {
                    if moving {
                        for k in 0..t {
                            for (d, &v) in tan[k * w..k * w + len].iter_mut().zip(&h[..len]) {
                                if v <= 0.0 {
                                    *d = 0.0;
                                }
                            }
                        }
                    }
                    h[..len].iter_mut().for_each(|v| *v = v.max(0.0));
                }
                Op::BatchNorm {
                    mean,
                    var,
                    gamma,
                    beta,
                    eps,
                } => {
                    if moving {
                        return Err(Error::TaskInference {
                            why: "a batch norm after a masked layer (only an input normalisation is handled)",
                        });
                    }
                    let get = |t: u32| self.model.tensor(t).ok_or(bad.clone());
                    let (gamma, beta) = (gamma.map(get).transpose()?, beta.map(get).transpose()?);
                    let channels = in_shape.dims().first().copied().unwrap_or(1) as usize;
                    ops::batch_norm(
                        &h[..len],
                        channels,
                        &get(mean)?,
                        &get(var)?,
                        gamma.as_ref(),
                        beta.as_ref(),
                        eps,
                        &mut z[..len],
                    );
                    h[..len].copy_from_slice(&z[..len]);
                }
                Op::Linear { weight, bias } => {
                    let wt = self.model.tensor(weight).ok_or(bad.clone())?;
                    let (rows, cols) = wt.matrix();
                    let (rows, cols) = (rows as usize, cols as usize);
                    if cols != len || rows > w {
                        return Err(bad);
                    }
                    let one = Io {
                        batch: 1,
                        x_stride: cols,
                        y_batch: rows,
                        y_row: 1,
                    };
                    let batch = Io {
                        batch: t,
                        x_stride: w,
                        y_batch: w,
                        y_row: 1,
                    };
                    let masked = self.model.mask(0, weight).is_some();
                    if masked {
                        // Each task's own product; their mean is the mixture's output.
                        for k in 0..t {
                            let m = self.model.mask(k as u32, weight);
                            let y = &mut own[k * w..k * w + rows];
                            linear::matvec(self.isa, &wt, m.as_ref(), &h[..cols], y, one, work, i)?;
                        }
                        for (r, zr) in z[..rows].iter_mut().enumerate() {
                            *zr = (0..t).map(|k| own[k * w + r]).sum::<f32>() / t as f32;
                        }
                        let this_mix = mix.get(mix_at..mix_at + rows * cols).ok_or(bad.clone())?;
                        mix_at += (rows * cols).next_multiple_of(LINE);
                        if moving {
                            let dense = Tensor {
                                storage: Storage::F32,
                                layout: Layout::RowMajor,
                                data: bytemuck::cast_slice(this_mix),
                                ..wt
                            };
                            linear::matvec(self.isa, &dense, None, tan, next, batch, work, i)?;
                            for k in 0..t {
                                for r in 0..rows {
                                    next[k * w + r] += own[k * w + r];
                                }
                            }
                        } else {
                            for k in 0..t {
                                next[k * w..k * w + rows].copy_from_slice(&own[k * w..k * w + rows]);
                            }
                        }
                        moving = true;
                    } else {
                        linear::matvec(self.isa, &wt, None, &h[..cols], &mut z[..rows], one, work, i)?;
                        if moving {
                            linear::matvec(self.isa, &wt, None, tan, next, batch, work, i)?;
                        }
                    }
                    if let Some(b) = bias {
                        let b = self.model.tensor(b).ok_or(bad)?;
                        for (r, zr) in z[..rows].iter_mut().enumerate() {
                            *zr += b.stored(r as u64);
                        }
                    }
                    h[..rows].copy_from_slice(&z[..rows]);
                    if moving {
                        tan.copy_from_slice(next);
                    }
                    len = rows;
                    logits_len = rows;
                }
                _ => return Err(bad),
            }
        }
        // ∂H/∂α_k = Σ_j ∂H/∂z_j · ż_kj with ∂H/∂z_j = −p_j (log p_j + H).
        let z = &h[..logits_len];
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = z.iter().map(|&v| libm::expf(v - max)).sum();
        let log_total = libm::logf(total);
        let entropy: f32 = z
            .iter()
            .map(|&v| {
                let lp = v - max - log_total;
                -libm::expf(lp) * lp
            })
            .sum();
        for (k, s) in scores.iter_mut().enumerate() {
            *s = if moving {
                z.iter()
                    .zip(&tan[k * w..k * w + logits_len])
                    .map(|(&v, &d)| {
                        let lp = v - max - log_total;
                        -libm::expf(lp) * (lp + entropy) * d
                    })
                    .sum()
            } else {
                0.0
            };
        }
        Ok(())
    }

    /// What the scratch's mixtures were built for: this model's bytes (where they are, how
    /// long, how they begin) and the task count.
    fn tag(&self) -> [u32; 4] {
        let bytes = self.model.bytes();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for &b in bytes.iter().take(256) {
            hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let at = bytes.as_ptr() as usize as u64;
        [
            (hash >> 32) as u32,
            hash as u32,
            (at ^ (at >> 32)) as u32,
            (bytes.len() as u32) ^ ((self.tasks as u32) << 20),
        ]
    }

    /// Every masked layer's mixture, in layer order, each starting on a cache line.
    fn mixtures(&self, mix: &mut [f32]) -> Result<(), Error> {
        let mut at = 0;
        for i in 0..self.model.layer_count() {
            let l = self.model.layer(i).ok_or(Error::Inconsistent { layer: i })?;
            if let Op::Linear { weight, .. } = l.op {
                if self.model.mask(0, weight).is_none() {
                    continue;
                }
                let t = self.model.tensor(weight).ok_or(Error::Inconsistent { layer: i })?;
                let n = (t.matrix().0 * t.matrix().1) as usize;
                let m = mix.get_mut(at..at + n).ok_or(Error::Inconsistent { layer: i })?;
                self.mixture(&t, weight, m)?;
                at += n.next_multiple_of(LINE);
            }
        }
        Ok(())
    }

    /// `W ⊙ (Σ_k M_k) / T`, row-major, for one layer.
    fn mixture(&self, t: &Tensor<'_>, weight: u32, mix: &mut [f32]) -> Result<(), Error> {
        let (rows, cols) = t.matrix();
        let inv = 1.0 / self.tasks as f32;
        // Once per call, and `value` regenerates seeded weights one by one: slow next to the
        // kernels, but it keeps the mixture exact for every storage.
        for r in 0..rows {
            for c in 0..cols {
                let kept = (0..self.tasks as u32)
                    .filter(|&k| self.model.mask(k, weight).is_some_and(|m| m.keeps(r, c)))
                    .count();
                mix[(r * cols + c) as usize] = if kept == 0 {
                    0.0
                } else {
                    t.value(r, c) * kept as f32 * inv
                };
            }
        }
        Ok(())
    }
}

/// Entropy of an output: probabilities when the model ends in a softmax, else logits.
fn entropy_of(y: &[f32], probabilities: bool) -> f32 {
    if probabilities {
        return y.iter().filter(|&&p| p > 0.0).map(|&p| -p * libm::logf(p)).sum();
    }
    let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_total = libm::logf(y.iter().map(|&v| libm::expf(v - max)).sum());
    y.iter()
        .map(|&v| {
            let lp = v - max - log_total;
            -libm::expf(lp) * lp
        })
        .sum()
}

/// The lowest score, and its confidence.
fn guess(scores: &[f32]) -> TaskGuess {
    let (mut best, mut best_score) = (0usize, f32::INFINITY);
    for (k, &s) in scores.iter().enumerate() {
        if s < best_score {
            (best, best_score) = (k, s);
        }
    }
    let n = scores.len() as f32;
    let mean = scores.iter().sum::<f32>() / n;
    let spread = libm::sqrtf(scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f32>() / n);
    let confidence = if spread > 0.0 && spread.is_finite() {
        let total: f32 = scores.iter().map(|&s| libm::expf((best_score - s) / spread)).sum();
        1.0 / total
    } else {
        1.0 / n
    };
    TaskGuess {
        task: best as u32,
        confidence,
        score: best_score,
    }
}
