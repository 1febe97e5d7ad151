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
//! - [`TaskRule::BinarySearch`] (SupSup's binary variant, for many tasks): rounds of the
//!   one-shot rule over fewer and fewer tasks. Each round runs the mixture of the remaining
//!   tasks `S` only, `W ⊙ Σ_{k∈S} M_k / |S|`, and keeps the half (rounded up) with the lowest
//!   `∂H/∂α_k`; the last task left is the guess. A one-shot gradient over a thousand tasks is
//!   a small signal spread thin; halving lets the mixture sharpen towards the input's task.
//!   The first round's mixture is the one-shot rule's, built once; later ones change with
//!   every input and are rebuilt each round from a dense copy of the weights (also built once)
//!   and the remaining tasks' mask bits. About `log2 T` rounds, each a one-shot over the
//!   remaining tasks. The same models as the one-shot rule.
//! - [`TaskRule::MinEntropy`] (the baseline): the task whose own mask gives the lowest output
//!   entropy, one plain inference per task. Any model.
//!
//! Each guess comes with a confidence in `(1/T, 1]`: the softmax of the negated scores after
//! dividing them by their spread over tasks, so 1/T when every task scores alike and near 1
//! when one stands apart. The binary search's is that of its last round, which always has two
//! tasks: spread-scaled, two different scores always give `1/(1 + e⁻²)` ≈ 0.881 and a tie
//! 1/2, so for that rule (and for any rule on two tasks) it only tells a tie from a choice.

use crate::linear::{self, Io};
use crate::{ops, Error, Isa, Plan};
use core::cmp::Ordering;
use smk_format::{Input, Layout, Mask, Model, Op, Storage, Tensor};

/// The most tasks task inference considers (its per-task tables are fixed-size).
pub const MAX_TASKS: usize = 1024;

/// How the task is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRule {
    /// The argmin over tasks of `∂H/∂α_k` at the uniform mixture of every task's mask.
    OneShot,
    /// The task whose own mask gives the lowest output entropy.
    MinEntropy,
    /// Halving rounds of the one-shot rule: each keeps the half of the remaining tasks (rounded
    /// up; ties to the lower task) with the lowest `∂H/∂α_k` at the mixture of the remaining
    /// tasks only, until one is left.
    BinarySearch,
}

/// One input's inferred task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskGuess {
    /// The mask set.
    pub task: u32,
    /// In `(1/T, 1]`: how far the task stands apart from the others. For
    /// [`TaskRule::BinarySearch`], that of its last round of two tasks: 1/2 for a tie, else
    /// `1/(1 + e⁻²)` ≈ 0.881 whatever the margin (see the module documentation).
    pub confidence: f32,
    /// Its score (lower wins): `∂H/∂α_k`, or the entropy. For [`TaskRule::BinarySearch`],
    /// `∂H/∂α_k` in the last round, at the mixture of the last two tasks.
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
    /// f32 in every masked weight matrix, each spelled out densely as its mixture (and, for the
    /// binary search, twice more: the weights, and the mixture of the remaining tasks).
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
                    why: "the one-shot and binary-search rules need a chain of layers (no branches)",
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
                    // Each product at the batch it runs at: one input through each task's own
                    // mask (or the bare weights), then each round's tangents through the dense
                    // mixture (or the bare weights). The kernels' work is not monotonic in the
                    // batch (a single input may need tables a batch does not), so every batch
                    // counts.
                    let need = |t: &Tensor<'_>, m: Option<&Mask<'_>>, batch| {
                        linear::work_len(t, m, batch).ok_or(bad.clone())
                    };
                    for k in 0..tasks as u32 {
                        work_len = work_len.max(need(&t, model.mask(k, weight).as_ref(), 1)?);
                    }
                    // The mixture as the kernels will see it: f32, row-major, aligned (the
                    // kernel choice reads only that of the data, and this layer's bytes need not
                    // be whole aligned f32).
                    let no_values: &[f32] = &[];
                    let dense = Tensor {
                        storage: Storage::F32,
                        layout: Layout::RowMajor,
                        data: bytemuck::cast_slice(no_values),
                        ..t
                    };
                    let tangents = if masked != 0 { &dense } else { &t };
                    for batch in rounds(rule, tasks) {
                        work_len = work_len.max(need(tangents, None, batch)?);
                    }
                }
                // A norm with a row per task would make the mixture's forward pass depend on
                // the task it is looking for.
                Op::BatchNorm { mean, .. }
                    if model.tensor(mean).is_some_and(|t| t.shape.rank() == 2) =>
                {
                    return Err(Error::TaskInference {
                        why: "the one-shot and binary-search rules do not handle per-task batch norms; use the minimum-entropy rule",
                    })
                }
                Op::BatchNorm { .. } | Op::Flatten | Op::Relu => {}
                Op::Softmax if i + 1 == count => {}
                _ => {
                    return Err(Error::TaskInference {
                        why: "the one-shot and binary-search rules handle linear layers, ReLU, flatten, an input batch norm and a final softmax; use the minimum-entropy rule",
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
        // h, z; own products, tangents and their successors (T each).
        let bufs = 2 * self.width + 3 * self.tasks * self.width;
        match self.rule {
            // The tag, the mixtures; the buffers; work.
            TaskRule::OneShot => LINE + self.mix_len + bufs + self.work_len,
            // The tag, the mixtures of every task, the weights, the mixtures of the remaining
            // tasks; the buffers; work.
            TaskRule::BinarySearch => LINE + 3 * self.mix_len + bufs + self.work_len,
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
        // Every task, in order: the one-shot rule's set, and the binary search's first round.
        let mut set = [0u32; MAX_TASKS];
        for (k, s) in set.iter_mut().enumerate().take(self.tasks) {
            *s = k as u32;
        }
        let all = self.tasks;
        let bufs_len = 2 * self.width + 3 * self.tasks * self.width;
        match self.rule {
            TaskRule::OneShot => {
                let (tag, rest) = f.split_at_mut(LINE);
                let (mix, rest) = rest.split_at_mut(self.mix_len);
                let (bufs, work) = rest.split_at_mut(bufs_len);
                self.build_once(&set[..all], tag, mix, None)?;
                for (x, g) in inputs.chunks_exact(in_len).zip(guesses.iter_mut()) {
                    self.one_shot(x, bufs, mix, work, &set[..all], scores)?;
                    *g = guess(scores);
                }
            }
            TaskRule::BinarySearch => {
                let (tag, rest) = f.split_at_mut(LINE);
                let (mix, rest) = rest.split_at_mut(self.mix_len);
                let (weights, rest) = rest.split_at_mut(self.mix_len);
                let (subset_mix, rest) = rest.split_at_mut(self.mix_len);
                let (bufs, work) = rest.split_at_mut(bufs_len);
                self.build_once(&set[..all], tag, mix, Some(weights))?;
                for (x, g) in inputs.chunks_exact(in_len).zip(guesses.iter_mut()) {
                    let mut n = all;
                    loop {
                        let remaining = &set[..n];
                        // The first round's mixture is every task's, built once.
                        let round_mix = if n == all {
                            &*mix
                        } else {
                            self.subset_mixtures(remaining, weights, subset_mix)?;
                            &*subset_mix
                        };
                        self.one_shot(x, bufs, round_mix, work, remaining, &mut scores[..n])?;
                        // Halving from more than two leaves at least two: the last round has
                        // exactly two tasks (T ≥ 2), and the lower score wins as in `halve`.
                        if n == 2 {
                            let last = guess(&scores[..2]);
                            *g = TaskGuess {
                                task: set[last.task as usize],
                                ..last
                            };
                            break;
                        }
                        n = halve(&mut set[..n], &scores[..n]);
                    }
                    // The next input starts from every task again.
                    for (k, s) in set.iter_mut().enumerate().take(all) {
                        *s = k as u32;
                    }
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

    /// Builds what a scratch keeps between calls, unless `tag` says it already holds it for this
    /// plan's model and rule: every masked layer's mixture of `every` task (all of them, in
    /// order), and for the binary search (`weights`) its dense weights.
    fn build_once(
        &self,
        every: &[u32],
        tag: &mut [f32],
        mix: &mut [f32],
        weights: Option<&mut [f32]>,
    ) -> Result<(), Error> {
        let want = self.tag();
        let have = [tag[0].to_bits(), tag[1].to_bits(), tag[2].to_bits(), tag[3].to_bits()];
        if have != want {
            self.mixtures(every, mix, weights)?;
            for (t, w) in tag.iter_mut().zip(want) {
                *t = f32::from_bits(w);
            }
        }
        Ok(())
    }

    /// `∂H/∂α_k` for one input at the uniform mixture `mix` of the tasks in `set` (ascending),
    /// into `scores` (one per task of `set`, in its order); tasks outside `set` are absent.
    fn one_shot(
        &self,
        x: &[f32],
        bufs: &mut [f32],
        mix: &[f32],
        work: &mut [f32],
        set: &[u32],
        scores: &mut [f32],
    ) -> Result<(), Error> {
        let (w, t) = (self.width, set.len());
        if t == 0 || t > self.tasks || scores.len() != t {
            return Err(Error::TaskInference {
                why: "internal: the tasks to score do not fit the plan",
            });
        }
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
                        None,
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
                        for (j, &k) in set.iter().enumerate() {
                            let m = self.model.mask(k, weight);
                            let y = &mut own[j * w..j * w + rows];
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
                        tan[..t * w].copy_from_slice(&next[..t * w]);
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
    /// long, how they begin), the task count, and whether the weights are there too (the binary
    /// search's scratch; the one-shot rule's holds its buffers in their place).
    fn tag(&self) -> [u32; 4] {
        let bytes = self.model.bytes();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for &b in bytes.iter().take(256) {
            hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let at = bytes.as_ptr() as usize as u64;
        let weights = u32::from(self.rule == TaskRule::BinarySearch) << 31;
        [
            (hash >> 32) as u32,
            hash as u32,
            (at ^ (at >> 32)) as u32,
            (bytes.len() as u32) ^ ((self.tasks as u32) << 20) ^ weights,
        ]
    }

    /// Calls `f(layer, tensor, its place in the mixtures)` for every masked layer, in layer
    /// order, each place starting on a cache line.
    fn each_masked(
        &self,
        mut f: impl FnMut(u32, &Tensor<'a>, u32, core::ops::Range<usize>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut at = 0;
        for i in 0..self.model.layer_count() {
            let l = self.model.layer(i).ok_or(Error::Inconsistent { layer: i })?;
            if let Op::Linear { weight, .. } = l.op {
                if self.model.mask(0, weight).is_none() {
                    continue;
                }
                let t = self.model.tensor(weight).ok_or(Error::Inconsistent { layer: i })?;
                let n = (t.matrix().0 * t.matrix().1) as usize;
                f(i, &t, weight, at..at + n)?;
                at += n.next_multiple_of(LINE);
            }
        }
        Ok(())
    }

    /// Every masked layer's mixture of `every` task; and into `weights`, where given, its weights
    /// spelled out densely at the same places.
    fn mixtures(&self, every: &[u32], mix: &mut [f32], mut weights: Option<&mut [f32]>) -> Result<(), Error> {
        self.each_masked(|i, t, weight, place| {
            let bad = Error::Inconsistent { layer: i };
            let m = mix.get_mut(place.clone()).ok_or(bad.clone())?;
            match weights.as_deref_mut() {
                None => self.mixture(t, weight, every, None, m),
                Some(w) => {
                    let w = w.get_mut(place).ok_or(bad)?;
                    let cols = t.matrix().1;
                    // Once per scratch, and `value` regenerates seeded weights one by one: slow
                    // next to the kernels, but exact for every storage.
                    for (j, v) in w.iter_mut().enumerate() {
                        *v = t.value(j as u64 / cols, j as u64 % cols);
                    }
                    self.mixture(t, weight, every, Some(w), m)
                }
            }
        })
    }

    /// Every masked layer's mixture of the tasks in `set` only, from the dense `weights`: the
    /// binary search's rounds after the first, rebuilt for each. All but the first masked
    /// layer's: no tangent enters that one (its output is the mean of the tasks' own products),
    /// so its mixture is never read, and it is often the largest (784×300 of LeNet-300-100's
    /// 266,200 masked weights).
    fn subset_mixtures(&self, set: &[u32], weights: &[f32], mix: &mut [f32]) -> Result<(), Error> {
        let mut first = true;
        self.each_masked(|i, t, weight, place| {
            if core::mem::take(&mut first) {
                return Ok(());
            }
            let bad = Error::Inconsistent { layer: i };
            let w = weights.get(place.clone()).ok_or(bad.clone())?;
            let m = mix.get_mut(place).ok_or(bad)?;
            self.mixture(t, weight, set, Some(w), m)
        })
    }

    /// `W ⊙ (Σ_{k∈set} M_k) / |set|`, row-major, for one layer: `W` from `weights` (row-major),
    /// else from the tensor. The number of tasks keeping each weight is counted in `mix` first,
    /// from the mask words: exact (integers in f32); then `W · count · (1/|set|)` in that order,
    /// so the mixture of every task is the same to the bit from either source of weights.
    fn mixture(
        &self,
        t: &Tensor<'_>,
        weight: u32,
        set: &[u32],
        weights: Option<&[f32]>,
        mix: &mut [f32],
    ) -> Result<(), Error> {
        let (rows, cols) = t.matrix();
        let bad = Error::TaskInference {
            why: "a mask does not fit its weights",
        };
        mix.iter_mut().for_each(|v| *v = 0.0);
        for group in set.chunks(GROUP) {
            let mut masks = [None; GROUP];
            for (m, &k) in masks.iter_mut().zip(group) {
                *m = Some(self.model.mask(k, weight).ok_or(bad.clone())?);
            }
            if !count_kept(&masks[..group.len()], rows, cols, mix) {
                return Err(bad);
            }
        }
        let inv = 1.0 / set.len() as f32;
        match weights {
            Some(w) if w.len() == mix.len() => {
                for (v, &w) in mix.iter_mut().zip(w) {
                    // 0 where no task keeps the weight, without a branch (so it vectorises).
                    let kept = u32::from(*v != 0.0).wrapping_neg();
                    *v = f32::from_bits((w * *v * inv).to_bits() & kept);
                }
            }
            Some(_) => return Err(bad),
            None => {
                for (i, v) in mix.iter_mut().enumerate() {
                    let kept = *v;
                    let (r, c) = (i as u64 / cols, i as u64 % cols);
                    *v = if kept == 0.0 { 0.0 } else { t.value(r, c) * kept * inv };
                }
            }
        }
        Ok(())
    }
}

/// Tasks whose masks are counted in one sweep over a layer: each stretch of 64 weights gets all
/// their bits while it is in cache, rather than the whole layer once per task.
const GROUP: usize = 16;

/// Each 4-bit pattern as four counts of 0 or 1, bit `i` in place `i`.
const NIBBLES: [[f32; 4]; 16] = {
    let mut table = [[0.0; 4]; 16];
    let mut n = 0;
    while n < 16 {
        let mut i = 0;
        while i < 4 {
            table[n][i] = (n >> i & 1) as f32;
            i += 1;
        }
        n += 1;
    }
    table
};

/// Adds to `count[r·cols + c]` the number of `masks` that keep weight `(r, c)`: the same weights
/// as [`Mask::keeps`], found from the mask words rather than by asking each weight (the binary
/// search does this for every remaining task in every round). False where `count` is too short
/// for a kept weight.
fn count_kept(masks: &[Option<Mask<'_>>], rows: u64, cols: u64, count: &mut [f32]) -> bool {
    let element = |m: &Mask<'_>| m.block == [1, 1] && m.grid == (rows, cols);
    if masks.iter().flatten().all(element) {
        // Element masks: each word's 64 bits added to 64 counts without a branch, four at a
        // time from a table (adding 0 to a count leaves it exact).
        for r in 0..rows {
            let Some(row) = count.get_mut((r * cols) as usize..((r + 1) * cols) as usize) else {
                return false;
            };
            for (word, chunk) in (0..).zip(row.chunks_mut(64)) {
                for m in masks.iter().flatten() {
                    let bits = m.word(r * m.words_per_row + word);
                    if bits == 0 {
                        continue;
                    }
                    let whole = chunk.len() / 4 * 4;
                    let (quads, tail) = chunk.split_at_mut(whole);
                    for (q, quad) in (0..).zip(quads.chunks_exact_mut(4)) {
                        let add = &NIBBLES[(bits >> (4 * q)) as usize & 15];
                        if let [a, b, c, d] = quad {
                            *a += add[0];
                            *b += add[1];
                            *c += add[2];
                            *d += add[3];
                        }
                    }
                    for (j, v) in (whole..).zip(tail) {
                        *v += (bits >> j & 1) as u32 as f32;
                    }
                }
            }
        }
        return true;
    }
    // Block masks: each set bit's block of weights.
    for m in masks.iter().flatten() {
        let (br, bc) = (m.block[0] as u64, m.block[1] as u64);
        for gr in 0..m.grid.0 {
            for word in 0..m.words_per_row {
                let mut bits = m.word(gr * m.words_per_row + word);
                while bits != 0 {
                    let gc = word * 64 + bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    if gc >= m.grid.1 {
                        break;
                    }
                    let (c0, c1) = (gc * bc, ((gc + 1) * bc).min(cols));
                    for r in gr * br..((gr + 1) * br).min(rows) {
                        if c0 >= c1 {
                            break;
                        }
                        let Some(kept) = count.get_mut((r * cols + c0) as usize..(r * cols + c1) as usize) else {
                            return false;
                        };
                        kept.iter_mut().for_each(|v| *v += 1.0);
                    }
                }
            }
        }
    }
    true
}

/// The task counts of the rounds: `T` for the one-shot rule; `T, ⌈T/2⌉, …, 2` for the binary
/// search.
fn rounds(rule: TaskRule, tasks: usize) -> impl Iterator<Item = usize> {
    let halving = rule == TaskRule::BinarySearch;
    core::iter::successors(Some(tasks), move |&n| (halving && n > 2).then(|| n.div_ceil(2)))
}

/// Lower scores first, NaN last (as in [`guess`], where a NaN never wins).
fn by_score(a: f32, b: f32) -> Ordering {
    a.partial_cmp(&b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// Keeps the `⌈n/2⌉` tasks of `set` (`n` of them, ascending) with the lowest `scores` (one per
/// task of `set`; ties to the lower task), at the front of `set` and still ascending; returns
/// how many. Sorts positions on the stack: no allocation.
fn halve(set: &mut [u32], scores: &[f32]) -> usize {
    let n = set.len().min(scores.len()).min(MAX_TASKS);
    let keep = n.div_ceil(2);
    let mut order = [0u16; MAX_TASKS];
    let order = &mut order[..n];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u16;
    }
    order.sort_unstable_by(|&a, &b| by_score(scores[a as usize], scores[b as usize]).then(a.cmp(&b)));
    let kept = &mut order[..keep];
    kept.sort_unstable();
    // Positions ascend and each is at least its new place: nothing is read after it is moved.
    for (i, &p) in kept.iter().enumerate() {
        set[i] = set[p as usize];
    }
    keep
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

#[cfg(test)]
mod tests {
    use super::{count_kept, halve, rounds, TaskRule};
    use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
    use smk_format::{seeded::draw, Model, Op};

    /// Counted from the words, as [`smk_format::Mask::keeps`] says one weight at a time: element
    /// masks across a word boundary and a ragged tail, block masks over ragged edges.
    #[test]
    fn counts_from_mask_words_agree_with_keeps() {
        let bits = |seed: u64, n: usize| -> Vec<bool> { (0..n).map(|i| draw(seed, i as u64) >> 63 == 1).collect() };
        let mut b = ModelBuilder::new(&[130]).unwrap();
        let fc1 = b
            .linear("fc1", TensorSpec::f32("w1", &[5, 130], vec![1.0; 650]).unwrap(), None)
            .unwrap();
        let fc2 = b
            .linear("fc2", TensorSpec::f32("w2", &[7, 5], vec![1.0; 35]).unwrap(), None)
            .unwrap();
        let fc3 = b
            .linear("fc3", TensorSpec::f32("w3", &[3, 7], vec![1.0; 21]).unwrap(), None)
            .unwrap();
        for k in 0..5u64 {
            let s = b.mask_set(&format!("t{k}")).unwrap();
            b.set_mask(s, fc1, MaskSpec::element_bools(&bits(k, 650))).unwrap();
            b.set_mask(s, fc2, MaskSpec::block_bools([2, 3], &bits(10 + k, 4 * 2)))
                .unwrap();
            b.set_mask(s, fc3, MaskSpec::block_bools([2, 2], &bits(20 + k, 2 * 4)))
                .unwrap();
        }
        let bytes = b.to_bytes().unwrap();
        let model = Model::parse(&bytes).unwrap();
        for layer in 0..3 {
            let Op::Linear { weight, .. } = model.layer(layer).unwrap().op else {
                unreachable!()
            };
            let (rows, cols) = model.tensor(weight).unwrap().matrix();
            let masks: Vec<_> = (0..5).map(|k| model.mask(k, weight)).collect();
            let mut count = vec![0f32; (rows * cols) as usize];
            assert!(count_kept(&masks, rows, cols, &mut count));
            for r in 0..rows {
                for c in 0..cols {
                    let want = masks.iter().flatten().filter(|m| m.keeps(r, c)).count();
                    assert_eq!(count[(r * cols + c) as usize], want as f32, "layer {layer} ({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn halving_keeps_the_lower_half_ties_to_the_lower_task_nan_last() {
        let mut set = [2, 5, 7, 9, 11];
        // Tasks 2 and 7 tie: 2 stays. Task 9's NaN never wins.
        assert_eq!(halve(&mut set, &[1.0, 0.5, 1.0, f32::NAN, 0.5]), 3);
        assert_eq!(set[..3], [2, 5, 11]);
        let mut set = [3, 4];
        assert_eq!(halve(&mut set, &[f32::NAN, f32::NAN]), 1);
        assert_eq!(set[0], 3);
        let mut set = [0, 1, 2, 3];
        assert_eq!(halve(&mut set, &[-0.0, 4.0, 0.0, -1.0]), 2);
        assert_eq!(set[..2], [0, 3]);
    }

    #[test]
    fn rounds_halve_down_to_two() {
        assert_eq!(rounds(TaskRule::BinarySearch, 11).collect::<Vec<_>>(), [11, 6, 3, 2]);
        assert_eq!(rounds(TaskRule::BinarySearch, 2).count(), 1);
        assert_eq!(rounds(TaskRule::BinarySearch, 1024).count(), 10);
        assert_eq!(rounds(TaskRule::OneShot, 1024).count(), 1);
    }
}
