//! The plan: which buffer each layer writes, how much scratch a batch needs; and `infer`, which
//! walks the graph in caller-provided memory without allocating.

use crate::linear::{self, Io};
use crate::ops;
use crate::{Error, Isa};
use smk_format::{Input, Layer, Mask, Model, Op, Shape, Tensor};

/// The most layers a plan holds (its tables are fixed-size, so planning allocates nothing).
pub const MAX_LAYERS: usize = 1024;
/// The most activations a graph may keep alive at once (each one scratch buffer).
pub const MAX_LIVE: usize = 16;

/// How to run one model for one batch size and task: made once, then [`Plan::infer`] many times.
#[derive(Clone, Debug)]
pub struct Plan<'a> {
    model: Model<'a>,
    batch: usize,
    set: Option<u32>,
    isa: Isa,
    layers: usize,
    slot_of: [u8; MAX_LAYERS],
    slots: usize,
    slot_len: usize,
    work_len: usize,
    input_len: usize,
    output_len: usize,
}

/// The f32 view of caller scratch of at least `need` bytes (`need` includes 64 bytes of slack):
/// starting on a 64-byte boundary, `(need − 64) / 4` values long.
pub(crate) fn scratch_floats(scratch: &mut [u8], need: usize) -> Result<&mut [f32], Error> {
    if scratch.len() < need {
        return Err(Error::ScratchTooSmall {
            need,
            got: scratch.len(),
        });
    }
    let floats = (need - 64) / 4;
    let start = scratch.as_ptr().align_offset(64).min(64);
    bytemuck::try_cast_slice_mut(&mut scratch[start..start + floats * 4])
        .map_err(|_| Error::ScratchTooSmall { need, got: 0 })
}

/// Where a layer reads from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Src {
    Graph,
    Slot(usize),
}

impl<'a> Plan<'a> {
    /// Plans `model` for `batch` inputs at a time with mask set `task` (`None`: the only set,
    /// or no masks). Uses the fastest instruction set the CPU has.
    pub fn new(model: &Model<'a>, batch: usize, task: Option<u32>) -> Result<Self, Error> {
        let tasks = model.mask_set_count();
        let set = match (task, tasks) {
            (Some(t), n) if t < n => Some(t),
            (Some(t), n) => return Err(Error::NoSuchTask { task: t, tasks: n }),
            (None, 0) => None,
            (None, 1) => Some(0),
            (None, n) => return Err(Error::TaskRequired { tasks: n }),
        };
        if batch == 0 {
            return Err(Error::BadBatch { batch });
        }
        let layers = model.layer_count() as usize;
        if layers > MAX_LAYERS {
            return Err(Error::TooManyLayers {
                layers: layers as u32,
                max: MAX_LAYERS as u32,
            });
        }
        let get = |i: usize| model.layer(i as u32).ok_or(Error::Inconsistent { layer: i as u32 });

        // How long each activation lives: until its last reader (the output: to the end).
        let mut last_use = [0u32; MAX_LAYERS];
        for j in 0..layers {
            last_use[j] = j as u32;
            let l = get(j)?;
            for input in [Some(l.input), l.second_input].into_iter().flatten() {
                if let Input::Layer(i) = input {
                    if i as usize >= j {
                        return Err(Error::Inconsistent { layer: j as u32 });
                    }
                    last_use[i as usize] = j as u32;
                }
            }
        }
        if layers > 0 {
            last_use[layers - 1] = u32::MAX;
        }
        // Each layer writes the first buffer whose activation nobody reads any more.
        let mut busy_until = [None::<u32>; MAX_LIVE];
        let mut slot_of = [0u8; MAX_LAYERS];
        let (mut slots, mut max_numel, mut work_len) = (0usize, 0usize, 0usize);
        for i in 0..layers {
            let s = busy_until
                .iter()
                .position(|u| u.is_none_or(|u| (u as usize) < i))
                .ok_or(Error::TooManyLive {
                    layer: i as u32,
                    max: MAX_LIVE as u32,
                })?;
            busy_until[s] = Some(last_use[i]);
            slot_of[i] = s as u8;
            slots = slots.max(s + 1);
            let l = get(i)?;
            max_numel = max_numel.max(l.output_shape.numel() as usize);
            let too_big = Error::BadBatch { batch };
            work_len = work_len.max(layer_work(model, &l, set, batch).ok_or(too_big)?);
        }
        let slot_len = max_numel
            .checked_mul(batch)
            .and_then(|n| n.checked_next_multiple_of(16))
            .ok_or(Error::BadBatch { batch })?;
        slots
            .checked_mul(slot_len)
            .and_then(|n| n.checked_add(work_len))
            .and_then(|n| n.checked_mul(4))
            .ok_or(Error::BadBatch { batch })?;
        Ok(Self {
            model: *model,
            batch,
            set,
            isa: Isa::detect(),
            layers,
            slot_of,
            slots,
            slot_len,
            work_len,
            input_len: model.input_shape().numel() as usize,
            output_len: model.output_shape().numel() as usize,
        })
    }

    /// The same plan on instruction set `isa`, if this CPU has it.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self, Error> {
        self.isa = isa.checked().ok_or(Error::IsaUnavailable(isa))?;
        Ok(self)
    }

    /// The instruction set the kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Inputs per call.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The mask set (task) applied, if any.
    pub fn task(&self) -> Option<u32> {
        self.set
    }

    /// The model planned.
    pub fn model(&self) -> &Model<'a> {
        &self.model
    }

    /// f32 values in one input (the model's input shape).
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// f32 values in one output.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Bytes of scratch [`Plan::infer`] needs (any alignment: 64 bytes of it are slack).
    pub fn scratch_bytes(&self) -> usize {
        (self.slots * self.slot_len + self.work_len) * 4 + 64
    }

    /// Bytes of weights and masks one call reads: stored weights (of kept tiles only, for
    /// tile-major weights under a block mask) and mask words; seeded weights read nothing but
    /// their masks. What memory bandwidth figures divide by.
    pub fn bytes_read(&self) -> u64 {
        self.model
            .tensors()
            .map(|t| {
                let mask = self.mask(t.index);
                let stored = t.data.len() as u64;
                let weights = match (t.storage, t.layout, mask) {
                    (smk_format::Storage::Seeded(_), _, _) => 0,
                    (_, smk_format::Layout::TileMajor { .. }, Some(m)) => (stored as f64 * m.density()) as u64,
                    _ => stored,
                };
                weights + mask.map_or(0, |m| m.data.len() as u64)
            })
            .sum()
    }

    /// What kernel runs layer `layer` (for `inspect` and benchmarks), e.g. `block 16x16`.
    pub fn kernel(&self, layer: u32) -> &'static str {
        let Some(l) = self.model.layer(layer) else {
            return "none";
        };
        match l.op {
            Op::Linear { weight, .. } | Op::Conv2d { weight, .. } => match self.model.tensor(weight) {
                Some(t) => linear::kernel_name(&t, self.mask(weight).as_ref()),
                None => "none",
            },
            _ => "plain",
        }
    }

    fn mask(&self, tensor: u32) -> Option<Mask<'a>> {
        self.set.and_then(|s| self.model.mask(s, tensor))
    }

    /// Runs the model on `batch` inputs laid end to end in `input`, writing `batch` outputs to
    /// `output`. Allocates nothing: all intermediate values live in `scratch`.
    pub fn infer(&self, scratch: &mut [u8], input: &[f32], output: &mut [f32]) -> Result<(), Error> {
        let (expected, out_expected) = (self.batch * self.input_len, self.batch * self.output_len);
        if input.len() != expected {
            return Err(Error::InputLength {
                expected,
                got: input.len(),
            });
        }
        if output.len() != out_expected {
            return Err(Error::OutputLength {
                expected: out_expected,
                got: output.len(),
            });
        }
        let scratch = scratch_floats(scratch, self.scratch_bytes())?;
        let (slots, work) = scratch.split_at_mut(self.slots * self.slot_len);
        for i in 0..self.layers {
            let bad = Error::Inconsistent { layer: i as u32 };
            let l = self.model.layer(i as u32).ok_or(bad.clone())?;
            let src = |inp: Input| match inp {
                Input::Graph => (Src::Graph, self.model.input_shape()),
                Input::Layer(j) => (
                    Src::Slot(self.slot_of[j as usize] as usize),
                    self.model.layer(j).map_or(self.model.input_shape(), |l| l.output_shape),
                ),
            };
            let (a, a_shape) = src(l.input);
            let b = l.second_input.map(src);
            let (xa, xb, y) =
                views(slots, self.slot_len, input, a, b.map(|b| b.0), self.slot_of[i] as usize).ok_or(bad)?;
            let in_len = self.batch * a_shape.numel() as usize;
            let out_len = self.batch * l.output_shape.numel() as usize;
            let bad = Error::Inconsistent { layer: i as u32 };
            let (xa, y) = (
                xa.get(..in_len).ok_or(bad.clone())?,
                y.get_mut(..out_len).ok_or(bad.clone())?,
            );
            let xb = match xb {
                Some(x) => Some(x.get(..in_len).ok_or(bad)?),
                None => None,
            };
            self.run(&l, a_shape, xa, xb, y, work)?;
        }
        let last = self.slot_of[self.layers.saturating_sub(1)] as usize * self.slot_len;
        output.copy_from_slice(&slots[last..last + out_expected]);
        Ok(())
    }

    fn tensor(&self, t: u32, layer: u32) -> Result<Tensor<'a>, Error> {
        self.model.tensor(t).ok_or(Error::Inconsistent { layer })
    }

    fn run(
        &self,
        l: &Layer<'a>,
        in_shape: Shape,
        x: &[f32],
        x2: Option<&[f32]>,
        y: &mut [f32],
        work: &mut [f32],
    ) -> Result<(), Error> {
        let bad = Error::Inconsistent { layer: l.index };
        let (in_numel, out_numel) = (in_shape.numel() as usize, l.output_shape.numel() as usize);
        let opt =
            |t: Option<u32>| -> Result<Option<Tensor<'a>>, Error> { t.map(|t| self.tensor(t, l.index)).transpose() };
        match l.op {
            Op::Linear { weight, bias } => {
                let t = self.tensor(weight, l.index)?;
                let io = Io {
                    batch: self.batch,
                    x_stride: in_numel,
                    y_batch: out_numel,
                    y_row: 1,
                };
                linear::matvec(self.isa, &t, self.mask(weight).as_ref(), x, y, io, work, l.index)?;
                if let Some(bias) = opt(bias)? {
                    for yb in y.chunks_exact_mut(out_numel) {
                        for (o, v) in yb.iter_mut().enumerate() {
                            *v += bias.value(0, o as u64);
                        }
                    }
                }
            }
            Op::Conv2d { weight, bias, window } => {
                let t = self.tensor(weight, l.index)?;
                let (c, h, w) = ops::chw(in_shape);
                let (o_n, ho, wo) = ops::chw(l.output_shape);
                let (p, k) = (ho * wo, t.matrix().1 as usize);
                if k != c * (window.kernel[0] * window.kernel[1]) as usize {
                    return Err(bad);
                }
                let mask = self.mask(weight);
                for (xb, yb) in x.chunks_exact(in_numel).zip(y.chunks_exact_mut(out_numel)) {
                    let (patches, rest) = work.split_at_mut(p * k);
                    ops::im2col(xb, (c, h, w), (ho, wo), &window, patches, k);
                    let io = Io {
                        batch: p,
                        x_stride: k,
                        y_batch: 1,
                        y_row: p,
                    };
                    linear::matvec(self.isa, &t, mask.as_ref(), patches, yb, io, rest, l.index)?;
                    if let Some(bias) = opt(bias)? {
                        for (o, plane) in yb.chunks_exact_mut(p).enumerate().take(o_n) {
                            let b = bias.value(0, o as u64);
                            plane.iter_mut().for_each(|v| *v += b);
                        }
                    }
                }
            }
            Op::Relu => y.iter_mut().zip(x).for_each(|(o, v)| *o = v.max(0.0)),
            Op::MaxPool(window) | Op::AvgPool { window, .. } => {
                let (c, h, w) = ops::chw(in_shape);
                let (_, ho, wo) = ops::chw(l.output_shape);
                for (xb, yb) in x.chunks_exact(in_numel).zip(y.chunks_exact_mut(out_numel)) {
                    match l.op {
                        Op::AvgPool { count_include_pad, .. } => {
                            ops::avg_pool(xb, (c, h, w), (ho, wo), &window, count_include_pad, yb)
                        }
                        _ => ops::max_pool(xb, (c, h, w), (ho, wo), &window, yb),
                    }
                }
            }
            Op::Flatten => y.copy_from_slice(x),
            Op::BatchNorm {
                mean,
                var,
                gamma,
                beta,
                eps,
            } => {
                let (mean, var) = (self.tensor(mean, l.index)?, self.tensor(var, l.index)?);
                let (gamma, beta) = (opt(gamma)?, opt(beta)?);
                let channels = in_shape.dims()[0] as usize;
                for (xb, yb) in x.chunks_exact(in_numel).zip(y.chunks_exact_mut(out_numel)) {
                    ops::batch_norm(
                        xb,
                        channels,
                        &mean,
                        &var,
                        gamma.as_ref(),
                        beta.as_ref(),
                        eps,
                        self.set,
                        yb,
                    );
                }
            }
            Op::LayerNorm { gamma, beta, eps } => {
                let (gamma, beta) = (opt(gamma)?, opt(beta)?);
                ops::layer_norm(x, in_shape.last() as usize, gamma.as_ref(), beta.as_ref(), eps, y);
            }
            Op::Add => {
                let x2 = x2.ok_or(bad)?;
                y.iter_mut().zip(x.iter().zip(x2)).for_each(|(o, (a, b))| *o = a + b);
            }
            Op::Softmax => ops::softmax(x, in_shape.last() as usize, y),
        }
        Ok(())
    }
}

/// f32 of work space one layer needs beyond its input and output buffers.
fn layer_work(model: &Model<'_>, l: &Layer<'_>, set: Option<u32>, batch: usize) -> Option<usize> {
    let mask = |w: u32| set.and_then(|s| model.mask(s, w));
    match l.op {
        Op::Linear { weight, .. } => linear::work_len(&model.tensor(weight)?, mask(weight).as_ref(), batch),
        Op::Conv2d { weight, .. } => {
            let t = model.tensor(weight)?;
            let (_, ho, wo) = ops::chw(l.output_shape);
            let patches = (ho * wo).checked_mul(t.matrix().1 as usize)?.next_multiple_of(16);
            patches.checked_add(linear::work_len(&t, mask(weight).as_ref(), ho * wo)?)
        }
        _ => Some(0),
    }
}

/// The inputs and the output of one layer: distinct buffers (the plan never gives a layer the
/// buffer of an activation it reads), or `None` if the plan is broken.
type Views<'s> = (&'s [f32], Option<&'s [f32]>, &'s mut [f32]);

fn views<'s>(
    slots: &'s mut [f32],
    slot_len: usize,
    input: &'s [f32],
    a: Src,
    b: Option<Src>,
    out: usize,
) -> Option<Views<'s>> {
    let (mut ra, mut rb, mut ry) = (None, None, None);
    if a == Src::Graph {
        ra = Some(input);
    }
    if b == Some(Src::Graph) {
        rb = Some(input);
    }
    for (k, chunk) in slots.chunks_mut(slot_len).enumerate() {
        if k == out {
            ry = Some(chunk);
            continue;
        }
        let c: &'s [f32] = chunk;
        if a == Src::Slot(k) {
            ra = Some(c);
        }
        if b == Some(Src::Slot(k)) {
            rb = Some(c);
        }
    }
    if a == Src::Slot(out) || b == Some(Src::Slot(out)) || (b.is_some() && rb.is_none()) {
        return None;
    }
    Some((ra?, rb, ry?))
}
