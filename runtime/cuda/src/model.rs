//! A `.smk` model on one GPU: its sections are copied to device memory once ([`GpuModel::load`]),
//! then [`GpuModel::infer`] runs batches through the kernels of `kernels.cu`.
//!
//! Every layer of the format runs: linear and convolution products over every weight storage
//! and mask (element masks, packed and tile-major block masks, seeded signed-constant, uniform
//! and normal weights), ReLU, max and average pooling, batch and layer norm, residual adds,
//! flatten and softmax, in any graph the format allows. A product over fewer than
//! [`TILED_MIN`] inputs gives each input its own pass over the weights (batch 1 is a read of
//! the weights); from there on, one tiled kernel reads each weight tile once for 64 inputs.

use std::fmt;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, DriverError, LaunchArgs, LaunchConfig, PushKernelArg,
};
use smk_format::{InitRule, Input, Layout, Mask, MaskKind, Model, Op, Shape, Storage, Tensor, Window2d};

use crate::{compile_ptx, CompileError, SOURCE};

/// Why a model cannot run on the GPU.
#[derive(Debug)]
pub enum GpuError {
    /// The kernels did not compile.
    Compile(CompileError),
    /// The CUDA driver refused a call (no device, out of memory, a failed launch).
    Driver(String),
    /// The model holds something the GPU path does not run yet.
    Unsupported {
        /// The layer.
        layer: u32,
        /// What it is.
        what: String,
    },
    /// The model has several mask sets and none was chosen, or the one chosen is not there.
    Task(String),
    /// An input of the wrong length.
    InputLength {
        /// Values given.
        got: usize,
        /// Values wanted (batch × input size).
        want: usize,
    },
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::Compile(e) => write!(f, "{e}"),
            GpuError::Driver(e) => write!(f, "CUDA driver: {e}"),
            GpuError::Unsupported { layer, what } => write!(f, "layer {layer}: {what} does not run on the GPU yet"),
            GpuError::Task(why) => f.write_str(why),
            GpuError::InputLength { got, want } => write!(f, "input has {got} values, the batch needs {want}"),
        }
    }
}

impl std::error::Error for GpuError {}

impl From<DriverError> for GpuError {
    fn from(e: DriverError) -> Self {
        let code = format!("{:?}", e.0);
        GpuError::Driver(match code.as_str() {
            "CUDA_ERROR_NO_DEVICE" => "no GPU answers (CUDA_ERROR_NO_DEVICE)".into(),
            "CUDA_ERROR_INVALID_DEVICE" => "no GPU of that number (CUDA_ERROR_INVALID_DEVICE)".into(),
            _ => match e.error_string() {
                Ok(why) => format!("{code}: {}", why.to_string_lossy()),
                Err(_) => code,
            },
        })
    }
}

/// Products over at least this many inputs run tiled (one read of each weight tile per 64
/// inputs); fewer give each input its own pass over the weights, which at batch 1 is a plain
/// streaming read. Untuned: a GPU run should set it.
pub const TILED_MIN: usize = 8;

/// How one linear or convolution layer's product runs.
enum Product {
    /// Stored rows (`kind` 0 f32, 1 f16, 2 bf16), optional element mask.
    Rows {
        kind: usize,
        data: CudaSlice<u8>,
        mask: Option<CudaSlice<u64>>,
        words: i32,
    },
    /// Stored tiles: packed (`index` = row_ptr, col_idx) or tile-major (`bmask`); `slot` is the
    /// block mask spelled out per tile for the tiled kernel.
    Blocks {
        kind: usize,
        data: CudaSlice<u8>,
        index: Option<(CudaSlice<u32>, CudaSlice<u32>)>,
        bmask: Option<CudaSlice<u64>>,
        slot: CudaSlice<i32>,
        mask_words: i32,
        block: [i32; 2],
    },
    /// Seeded signed-constant weights, optional element mask.
    Signed {
        key: u64,
        scale: f32,
        mask: Option<CudaSlice<u64>>,
        words: i32,
    },
    /// Seeded signed-constant weights under a block mask.
    SignedBlocks {
        key: u64,
        scale: f32,
        bmask: CudaSlice<u64>,
        slot: CudaSlice<i32>,
        mask_words: i32,
        block: [i32; 2],
    },
    /// Seeded uniform (1) or normal (2) weights, optional element mask.
    Generated {
        key: u64,
        rule: i32,
        scale: f32,
        mask: Option<CudaSlice<u64>>,
        words: i32,
    },
}

/// Where a layer's input lives: the model's input, or the output buffer of an earlier step.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Src {
    Input,
    Step(usize),
}

/// `[C, H, W]` and a window as the kernels take them.
#[derive(Clone, Copy)]
struct Geometry {
    chw: [i32; 3],
    out_hw: [i32; 2],
    /// kh, kw, sh, sw, ph, pw, dh, dw.
    window: [i32; 8],
}

enum Step {
    Linear {
        src: Src,
        product: Box<Product>,
        rows: usize,
        cols: usize,
        bias: Option<CudaSlice<f32>>,
        relu: bool,
    },
    Conv {
        src: Src,
        product: Box<Product>,
        /// Output channels, patch length (C·kh·kw).
        rows: usize,
        cols: usize,
        geometry: Geometry,
        bias: Option<CudaSlice<f32>>,
        relu: bool,
    },
    Relu {
        src: Src,
    },
    Pool {
        src: Src,
        geometry: Geometry,
        /// 0 max, 1 average over the window, 2 average over its part inside the image.
        mode: i32,
    },
    /// Batch norm: `x·scale + shift` per channel.
    Affine {
        src: Src,
        scale: CudaSlice<f32>,
        shift: CudaSlice<f32>,
        channels: usize,
    },
    LayerNorm {
        src: Src,
        gamma: Option<CudaSlice<f32>>,
        beta: Option<CudaSlice<f32>>,
        len: usize,
        eps: f32,
    },
    Add {
        a: Src,
        b: Src,
    },
    Softmax {
        src: Src,
        n: usize,
    },
}

/// A model resident on one GPU, for one mask set.
pub struct GpuModel {
    stream: Arc<CudaStream>,
    functions: Vec<(&'static str, CudaFunction)>,
    /// Each step with the number of values per batch item it writes.
    steps: Vec<(Step, usize)>,
    output: Src,
    input_len: usize,
    output_len: usize,
}

impl fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuModel")
            .field("steps", &self.steps.len())
            .field("input_len", &self.input_len)
            .field("output_len", &self.output_len)
            .finish()
    }
}

fn words_of(m: &Mask<'_>) -> Vec<u64> {
    m.data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

/// A block mask spelled out per element: rows of `ceil(cols/64)` words.
fn per_element(m: &Mask<'_>, (rows, cols): (u64, u64)) -> Vec<u64> {
    let grid = words_of(m);
    let (words, [br, bc]) = (cols.div_ceil(64) as usize, [m.block[0] as u64, m.block[1] as u64]);
    let mut out = vec![0u64; rows as usize * words];
    for r in 0..rows {
        for c in 0..cols {
            let (gr, gc) = (r / br, c / bc);
            let word = grid
                .get((gr * m.words_per_row + gc / 64) as usize)
                .copied()
                .unwrap_or(0);
            if word >> (gc % 64) & 1 == 1 {
                out[r as usize * words + c as usize / 64] |= 1 << (c % 64);
            }
        }
    }
    out
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
        .collect()
}

/// Pushes `slice`, or a null device pointer where there is none (the kernels test for null).
fn optional<'a, T>(l: &mut LaunchArgs<'a>, slice: Option<&'a CudaSlice<T>>, null: &'a u64) {
    match slice {
        Some(s) => l.arg(s),
        None => l.arg(null),
    };
}

fn storage_kind(s: &Storage) -> Option<usize> {
    match s {
        Storage::F32 => Some(0),
        Storage::F16 => Some(1),
        Storage::Bf16 => Some(2),
        Storage::Seeded(_) | Storage::Signs { .. } => None,
    }
}

/// The NVRTC architecture of compute capability `major.minor` (`sm_90` for H100 and H200).
fn arch_of((major, minor): (i32, i32)) -> &'static str {
    match (major, minor) {
        (7, 0) => "sm_70",
        (7, 5) => "sm_75",
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        // Newer than this list: the newest it knows runs there as PTX, compiled by the driver.
        _ => "sm_90",
    }
}

/// Host values of a tensor as f32, whatever its storage.
fn host_f32(t: &Tensor<'_>) -> Vec<f32> {
    // `value`, not `stored`: a seeded vector is generated, not read as zeros.
    let cols = t.matrix().1.max(1);
    (0..t.shape.numel()).map(|i| t.value(i / cols, i % cols)).collect()
}

fn geometry(input: Shape, output: Shape, w: &Window2d) -> Geometry {
    let (c, h, wd) = chw(input);
    let (_, ho, wo) = chw(output);
    Geometry {
        chw: [c as i32, h as i32, wd as i32],
        out_hw: [ho as i32, wo as i32],
        window: [
            w.kernel[0] as i32,
            w.kernel[1] as i32,
            w.stride[0] as i32,
            w.stride[1] as i32,
            w.padding[0] as i32,
            w.padding[1] as i32,
            w.dilation[0] as i32,
            w.dilation[1] as i32,
        ],
    }
}

/// `[C, H, W]` of a rank-3 shape; other ranks as `[d0, 1, rest]`, as the CPU runtime reads them.
fn chw(s: Shape) -> (usize, usize, usize) {
    let d = s.dims();
    match d.len() {
        3 => (d[0] as usize, d[1] as usize, d[2] as usize),
        _ => (d[0] as usize, 1, s.numel() as usize / d[0].max(1) as usize),
    }
}

/// A launch of `blocks` × 256 threads, for the grid-stride element-wise kernels.
fn elementwise(total: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (total.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row of `rows`.
fn warp_rows(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows * 32).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl GpuModel {
    /// Opens GPU `ordinal`, compiles the kernels for `arch` (e.g. `"sm_90"`; `None`: the GPU's
    /// own), and copies the model's weights, masks (of mask set `task`: `None` for the only
    /// one) and parameters to it.
    pub fn load(
        model: &Model<'_>,
        task: Option<u32>,
        ordinal: usize,
        arch: Option<&'static str>,
    ) -> Result<Self, GpuError> {
        let set = match (task, model.mask_set_count()) {
            (Some(t), n) if t < n => Some(t),
            (Some(t), n) => return Err(GpuError::Task(format!("no task {t}: the model has {n}"))),
            (None, 0) => None,
            (None, 1) => Some(0),
            (None, n) => return Err(GpuError::Task(format!("the model has {n} tasks: choose one"))),
        };
        // cudarc loads libcuda on first use and panics where there is none: an error instead.
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| GpuError::Driver("libcuda (the NVIDIA driver) could not be loaded".into()))??;
        let arch = match arch {
            Some(a) => a,
            None => arch_of(ctx.compute_capability()?),
        };
        let ptx = compile_ptx(SOURCE, arch).map_err(GpuError::Compile)?;
        let stream = ctx.default_stream();
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
        let mut functions = Vec::new();
        for name in crate::KERNELS {
            functions.push((name, module.load_function(name)?));
        }
        let count = model.layer_count();
        // How many layers read each layer's output: a ReLU folds into the product before it
        // only where nothing else reads the product's output.
        let mut readers = vec![0usize; count as usize];
        for i in 0..count {
            let layer = model
                .layer(i)
                .ok_or_else(|| GpuError::Task(format!("layer {i} is missing")))?;
            for input in [Some(layer.input), layer.second_input].into_iter().flatten() {
                if let Input::Layer(j) = input {
                    if let Some(r) = readers.get_mut(j as usize) {
                        *r += 1;
                    }
                }
            }
        }
        // Where each layer's output lives (flatten and a folded ReLU add no step of their own).
        let mut home: Vec<Src> = Vec::new();
        let mut steps: Vec<(Step, usize)> = Vec::new();
        // The layer each step computes.
        let mut owner: Vec<u32> = Vec::new();
        for i in 0..count {
            let layer = model
                .layer(i)
                .ok_or_else(|| GpuError::Task(format!("layer {i} is missing")))?;
            let unsupported = |what: &str| GpuError::Unsupported {
                layer: i,
                what: what.into(),
            };
            let resolve = |input: Input| -> Result<(Src, Shape), GpuError> {
                match input {
                    Input::Graph => Ok((Src::Input, model.input_shape())),
                    Input::Layer(j) if j < i => {
                        let shape = model
                            .layer(j)
                            .ok_or_else(|| unsupported("a missing input"))?
                            .output_shape;
                        Ok((home[j as usize], shape))
                    }
                    Input::Layer(_) => Err(unsupported("an input from a later layer")),
                }
            };
            let (src, in_shape) = resolve(layer.input)?;
            let n = layer.output_shape.numel() as usize;
            let tensor = |t: u32| model.tensor(t).ok_or_else(|| unsupported("a missing tensor"));
            let upload = |t: Option<u32>| -> Result<Option<CudaSlice<f32>>, GpuError> {
                match t {
                    Some(t) => Ok(Some(stream.clone_htod(&host_f32(&tensor(t)?))?)),
                    None => Ok(None),
                }
            };
            // The step before, when this layer's ReLU can fold into it: that step is the
            // previous layer's own (not one a flatten passes on) and nothing else reads it.
            let foldable = matches!(layer.input, Input::Layer(j)
                if readers[j as usize] == 1 && src == Src::Step(steps.len().wrapping_sub(1)) && owner.last() == Some(&j));
            let step = match layer.op {
                Op::Linear { weight, bias } => {
                    let w = tensor(weight)?;
                    let (rows, cols) = w.matrix();
                    let mask = set.and_then(|s| model.mask(s, weight));
                    Some(Step::Linear {
                        src,
                        product: Box::new(Self::build_product(&stream, &w, mask.as_ref(), i)?),
                        rows: rows as usize,
                        cols: cols as usize,
                        bias: upload(bias)?,
                        relu: false,
                    })
                }
                Op::Conv2d { weight, bias, window } => {
                    let w = tensor(weight)?;
                    let (rows, cols) = w.matrix();
                    let mask = set.and_then(|s| model.mask(s, weight));
                    Some(Step::Conv {
                        src,
                        product: Box::new(Self::build_product(&stream, &w, mask.as_ref(), i)?),
                        rows: rows as usize,
                        cols: cols as usize,
                        geometry: geometry(in_shape, layer.output_shape, &window),
                        bias: upload(bias)?,
                        relu: false,
                    })
                }
                Op::Relu if foldable => match steps.last_mut() {
                    Some((Step::Linear { relu, .. }, _)) | Some((Step::Conv { relu, .. }, _)) if !*relu => {
                        *relu = true;
                        None
                    }
                    _ => Some(Step::Relu { src }),
                },
                Op::Relu => Some(Step::Relu { src }),
                Op::Flatten => None,
                Op::MaxPool(window) => Some(Step::Pool {
                    src,
                    geometry: geometry(in_shape, layer.output_shape, &window),
                    mode: 0,
                }),
                Op::AvgPool {
                    window,
                    count_include_pad,
                } => Some(Step::Pool {
                    src,
                    geometry: geometry(in_shape, layer.output_shape, &window),
                    mode: if count_include_pad { 1 } else { 2 },
                }),
                Op::BatchNorm {
                    mean,
                    var,
                    gamma,
                    beta,
                    eps,
                } => {
                    // Folded on the host exactly as the CPU runtime folds them.
                    let channels = in_shape.dims().first().copied().unwrap_or(1) as usize;
                    let (mean, var) = (tensor(mean)?, tensor(var)?);
                    let (gamma, beta) = (gamma.map(&tensor).transpose()?, beta.map(&tensor).transpose()?);
                    let mut scale = Vec::with_capacity(channels);
                    let mut shift = Vec::with_capacity(channels);
                    for ch in 0..channels as u64 {
                        let s =
                            gamma.as_ref().map_or(1.0, |g| g.channel(set, ch)) / (var.channel(set, ch) + eps).sqrt();
                        scale.push(s);
                        shift.push(beta.as_ref().map_or(0.0, |b| b.channel(set, ch)) - mean.channel(set, ch) * s);
                    }
                    Some(Step::Affine {
                        src,
                        scale: stream.clone_htod(&scale)?,
                        shift: stream.clone_htod(&shift)?,
                        channels,
                    })
                }
                Op::LayerNorm { gamma, beta, eps } => Some(Step::LayerNorm {
                    src,
                    gamma: upload(gamma)?,
                    beta: upload(beta)?,
                    len: in_shape.dims().last().copied().unwrap_or(1) as usize,
                    eps,
                }),
                Op::Add => {
                    let second = layer.second_input.ok_or_else(|| unsupported("an add with one input"))?;
                    Some(Step::Add {
                        a: src,
                        b: resolve(second)?.0,
                    })
                }
                Op::Softmax => Some(Step::Softmax {
                    src,
                    n: layer.output_shape.dims().last().copied().unwrap_or(1) as usize,
                }),
            };
            match step {
                Some(step) => {
                    steps.push((step, n));
                    owner.push(i);
                    home.push(Src::Step(steps.len() - 1));
                }
                // Flatten: the same values; a folded ReLU: the product's buffer, now rectified.
                None => home.push(if matches!(layer.op, Op::Flatten) {
                    src
                } else {
                    Src::Step(steps.len() - 1)
                }),
            }
        }
        Ok(GpuModel {
            stream,
            functions,
            steps,
            output: home.last().copied().unwrap_or(Src::Input),
            input_len: model.input_shape().numel() as usize,
            output_len: model.output_shape().numel() as usize,
        })
    }

    /// The stream every kernel runs on (to synchronise when timing [`GpuModel::infer_resident`]).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Values per input.
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Values per output.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    fn build_product(
        stream: &Arc<CudaStream>,
        w: &Tensor<'_>,
        mask: Option<&Mask<'_>>,
        layer: u32,
    ) -> Result<Product, GpuError> {
        let unsupported = |what: &str| GpuError::Unsupported {
            layer,
            what: what.into(),
        };
        let (rows, cols) = w.matrix();
        let words = cols.div_ceil(64) as i32;
        let element = |m: Option<&Mask<'_>>| -> Result<Option<CudaSlice<u64>>, GpuError> {
            match m {
                Some(m) if m.kind == MaskKind::Element => Ok(Some(stream.clone_htod(&words_of(m))?)),
                Some(_) => Err(unsupported("this block mask with this layout")),
                None => Ok(None),
            }
        };
        // The tile number of each kept block (gr, gc), −1 where masked out.
        let slots = |block: [u16; 2], kept: &dyn Fn(usize, usize) -> Option<i32>| -> Vec<i32> {
            let grid_rows = rows.div_ceil(block[0] as u64) as usize;
            let grid_cols = cols.div_ceil(block[1] as u64) as usize;
            let mut out = vec![-1i32; grid_rows * grid_cols];
            for gr in 0..grid_rows {
                for gc in 0..grid_cols {
                    out[gr * grid_cols + gc] = kept(gr, gc).unwrap_or(-1);
                }
            }
            out
        };
        let mask_slots = |m: &Mask<'_>, tile_of: &dyn Fn(usize, usize) -> i32| -> Vec<i32> {
            let words = words_of(m);
            slots(m.block, &|gr, gc| {
                let kept = words
                    .get(gr * m.words_per_row as usize + gc / 64)
                    .is_some_and(|w| w >> (gc % 64) & 1 == 1);
                kept.then(|| tile_of(gr, gc))
            })
        };
        Ok(match (&w.storage, &w.layout, mask) {
            (Storage::Seeded(init), _, Some(m))
                if m.kind == MaskKind::Block && init.rule == InitRule::SignedConstant =>
            {
                Product::SignedBlocks {
                    key: init.key(),
                    scale: init.scale,
                    bmask: stream.clone_htod(&words_of(m))?,
                    slot: stream.clone_htod(&mask_slots(m, &|_, _| 0))?,
                    mask_words: m.words_per_row as i32,
                    block: [m.block[0] as i32, m.block[1] as i32],
                }
            }
            (Storage::Seeded(init), _, m) if init.rule == InitRule::SignedConstant => Product::Signed {
                key: init.key(),
                scale: init.scale,
                mask: element(m)?,
                words,
            },
            (Storage::Seeded(init), _, m) => Product::Generated {
                key: init.key(),
                rule: if init.rule == InitRule::Uniform { 1 } else { 2 },
                scale: init.scale,
                mask: match m {
                    // Each weight is generated on its own anyway: a block mask is spelled out
                    // per element once, here.
                    Some(m) if m.kind == MaskKind::Block => Some(stream.clone_htod(&per_element(m, w.matrix()))?),
                    m => element(m)?,
                },
                words,
            },
            // Learned binary weights: widened to f32 on the host, one time, and run as stored
            // f32 rows (a kernel that reads the sign words in place is not written yet).
            (Storage::Signs { .. }, Layout::RowMajor, m) => {
                let dense = w
                    .to_f32_vec()
                    .ok_or_else(|| unsupported("signs too large to widen in memory"))?;
                let mut bytes = Vec::new();
                bytes
                    .try_reserve_exact(dense.len() * 4)
                    .map_err(|_| unsupported("signs too large to widen in memory"))?;
                for v in &dense {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                Product::Rows {
                    kind: 0,
                    data: stream.clone_htod(&bytes)?,
                    mask: element(m)?,
                    words,
                }
            }
            (s, Layout::RowMajor, m) => Product::Rows {
                kind: storage_kind(s).ok_or_else(|| unsupported("this storage"))?,
                data: stream.clone_htod(w.data)?,
                mask: element(m)?,
                words,
            },
            (s, Layout::TileMajor { block }, m) => {
                let grid_cols = cols.div_ceil(block[1] as u64) as usize;
                let tile = |gr: usize, gc: usize| (gr * grid_cols + gc) as i32;
                let (bmask, mask_words, slot) = match m {
                    Some(m) if m.kind == MaskKind::Block => (
                        Some(stream.clone_htod(&words_of(m))?),
                        m.words_per_row as i32,
                        mask_slots(m, &tile),
                    ),
                    Some(_) => return Err(unsupported("an element mask over tiles")),
                    // No mask: every tile, through an all-ones block mask.
                    None => {
                        let grid_rows = rows.div_ceil(block[0] as u64) as usize;
                        let per_row = grid_cols.div_ceil(64);
                        let mut all = vec![0u64; grid_rows * per_row];
                        for r in 0..grid_rows {
                            for c in 0..grid_cols {
                                all[r * per_row + c / 64] |= 1 << (c % 64);
                            }
                        }
                        (
                            Some(stream.clone_htod(&all)?),
                            per_row as i32,
                            slots(*block, &|gr, gc| Some(tile(gr, gc))),
                        )
                    }
                };
                Product::Blocks {
                    kind: storage_kind(s).ok_or_else(|| unsupported("this storage"))?,
                    data: stream.clone_htod(w.data)?,
                    index: None,
                    bmask,
                    slot: stream.clone_htod(&slot)?,
                    mask_words,
                    block: [block[0] as i32, block[1] as i32],
                }
            }
            (s, Layout::Packed { block, index }, _) => {
                let (row_ptr, col_idx) = (u32s(index.row_ptr_bytes()), u32s(index.col_bytes()));
                let grid_cols = cols.div_ceil(block[1] as u64) as usize;
                let mut slot = slots(*block, &|_, _| None);
                for gr in 0..row_ptr.len().saturating_sub(1) {
                    for k in row_ptr[gr]..row_ptr[gr + 1] {
                        let gc = col_idx.get(k as usize).copied().unwrap_or(u32::MAX) as usize;
                        if let Some(s) = slot.get_mut(gr * grid_cols + gc).filter(|_| gc < grid_cols) {
                            *s = k as i32;
                        }
                    }
                }
                Product::Blocks {
                    kind: storage_kind(s).ok_or_else(|| unsupported("this storage"))?,
                    data: stream.clone_htod(w.data)?,
                    index: Some((stream.clone_htod(&row_ptr)?, stream.clone_htod(&col_idx)?)),
                    bmask: None,
                    slot: stream.clone_htod(&slot)?,
                    mask_words: 0,
                    block: [block[0] as i32, block[1] as i32],
                }
            }
        })
    }

    fn function(&self, name: &str) -> &CudaFunction {
        // Every name in KERNELS was loaded in `load`, and only those are asked for.
        &self
            .functions
            .iter()
            .find(|(n, _)| *n == name)
            .expect("kernel loaded in GpuModel::load")
            .1
    }

    /// Runs `batch` inputs (`batch × input size` values, row after row) and returns the outputs.
    pub fn infer(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, GpuError> {
        let want = batch * self.input_len;
        if input.len() != want || batch == 0 {
            return Err(GpuError::InputLength { got: input.len(), want });
        }
        let x: CudaSlice<f32> = self.stream.clone_htod(input)?;
        let y = self.infer_resident(&x, batch)?;
        let out = self.stream.clone_dtoh(&y)?;
        debug_assert_eq!(out.len(), batch * self.output_len);
        Ok(out)
    }

    /// Runs `batch` inputs already on the GPU and returns the outputs there, without waiting
    /// for the kernels to finish.
    pub fn infer_resident(&self, x: &CudaSlice<f32>, batch: usize) -> Result<CudaSlice<f32>, GpuError> {
        let want = batch * self.input_len;
        if x.len() != want || batch == 0 {
            return Err(GpuError::InputLength { got: x.len(), want });
        }
        let mut outs: Vec<CudaSlice<f32>> = Vec::with_capacity(self.steps.len());
        for (step, n) in &self.steps {
            let y = self.run_step(step, *n, x, &outs, batch)?;
            outs.push(y);
        }
        Ok(match self.output {
            Src::Input => self.stream.clone_dtod(x)?,
            Src::Step(k) => outs.swap_remove(k),
        })
    }

    /// One step's output, `batch × n` values.
    fn run_step(
        &self,
        step: &Step,
        n: usize,
        input: &CudaSlice<f32>,
        outs: &[CudaSlice<f32>],
        batch: usize,
    ) -> Result<CudaSlice<f32>, GpuError> {
        let s = &self.stream;
        let buf = |src: Src| match src {
            Src::Input => input,
            Src::Step(k) => &outs[k],
        };
        let null = 0u64;
        let total = batch * n;
        let mut y = s.alloc_zeros::<f32>(total)?;
        let (batch_i, total_u) = (batch as i32, total as u64);
        match step {
            Step::Linear {
                src,
                product,
                rows,
                cols,
                bias,
                relu,
            } => {
                self.product(
                    product,
                    (*rows, *cols),
                    &buf(*src).slice(..),
                    *cols,
                    batch,
                    &mut y,
                    *rows,
                    1,
                )?;
                if bias.is_some() || *relu {
                    let (rows_i, relu_i, y_batch) = (*rows as i32, *relu as i32, *rows as i32);
                    // SAFETY: smk_bias_relu(float*, const float*, int, int, int, int, int), as
                    // declared in kernels.cu; `y` holds batch × rows values, `bias` rows.
                    unsafe {
                        let mut l = s.launch_builder(self.function("smk_bias_relu"));
                        l.arg(&mut y);
                        optional(&mut l, bias.as_ref(), &null);
                        l.arg(&rows_i).arg(&batch_i).arg(&y_batch).arg(&1i32).arg(&relu_i);
                        l.launch(elementwise(total))?;
                    }
                }
            }
            Step::Conv {
                src,
                product,
                rows,
                cols,
                geometry: g,
                bias,
                relu,
            } => {
                let p = (g.out_hw[0] * g.out_hw[1]) as usize;
                let mut patches = s.alloc_zeros::<f32>(batch * p * cols)?;
                let [c, h, w] = g.chw;
                let [kh, kw, sh, sw, ph, pw, dh, dw] = g.window;
                // SAFETY: smk_im2col's parameters in order and type; `patches` holds batch·P·K
                // values, the input batch·C·H·W.
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_im2col"));
                    l.arg(buf(*src)).arg(&batch_i).arg(&c).arg(&h).arg(&w);
                    l.arg(&g.out_hw[0])
                        .arg(&g.out_hw[1])
                        .arg(&kh)
                        .arg(&kw)
                        .arg(&sh)
                        .arg(&sw);
                    l.arg(&ph).arg(&pw).arg(&dh).arg(&dw).arg(&mut patches);
                    l.launch(elementwise(batch * p * cols))?;
                }
                let mut t = s.alloc_zeros::<f32>(batch * p * rows)?;
                self.product(
                    product,
                    (*rows, *cols),
                    &patches.slice(..),
                    *cols,
                    batch * p,
                    &mut t,
                    *rows,
                    1,
                )?;
                let (o, p_i, relu_i) = (*rows as i32, p as i32, *relu as i32);
                // SAFETY: smk_conv_out's parameters in order and type; `t` holds batch·P·O
                // values, `y` as many, `bias` O.
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_conv_out"));
                    l.arg(&t);
                    optional(&mut l, bias.as_ref(), &null);
                    l.arg(&o).arg(&p_i).arg(&batch_i).arg(&relu_i).arg(&mut y);
                    l.launch(elementwise(total))?;
                }
            }
            Step::Relu { src } => {
                let n_i = n as i32;
                s.memcpy_dtod(buf(*src), &mut y)?;
                // SAFETY: smk_bias_relu with no bias over batch rows of n values of `y`.
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_bias_relu"));
                    l.arg(&mut y)
                        .arg(&null)
                        .arg(&n_i)
                        .arg(&batch_i)
                        .arg(&n_i)
                        .arg(&1i32)
                        .arg(&1i32);
                    l.launch(elementwise(total))?;
                }
            }
            Step::Pool { src, geometry: g, mode } => {
                let [c, h, w] = g.chw;
                let [kh, kw, sh, sw, ph, pw, ..] = g.window;
                // SAFETY: smk_pool's parameters in order and type; the input holds batch·C·H·W
                // values, `y` batch·C·ho·wo.
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_pool"));
                    l.arg(buf(*src)).arg(&batch_i).arg(&c).arg(&h).arg(&w);
                    l.arg(&g.out_hw[0])
                        .arg(&g.out_hw[1])
                        .arg(&kh)
                        .arg(&kw)
                        .arg(&sh)
                        .arg(&sw);
                    l.arg(&ph).arg(&pw).arg(mode).arg(&mut y);
                    l.launch(elementwise(total))?;
                }
            }
            Step::Affine {
                src,
                scale,
                shift,
                channels,
            } => {
                let (ch, per) = (*channels as i32, (n / (*channels).max(1)) as i32);
                // SAFETY: smk_channel_affine's parameters in order and type; `scale` and
                // `shift` hold `channels` values, the input and `y` batch × n.
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_channel_affine"));
                    l.arg(buf(*src))
                        .arg(scale)
                        .arg(shift)
                        .arg(&ch)
                        .arg(&per)
                        .arg(&total_u)
                        .arg(&mut y);
                    l.launch(elementwise(total))?;
                }
            }
            Step::LayerNorm {
                src,
                gamma,
                beta,
                len,
                eps,
            } => {
                let (len_i, count) = (*len as i32, (total / (*len).max(1)) as i32);
                // SAFETY: smk_layer_norm's parameters in order and type; gamma and beta hold
                // `len` values or are null.
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_layer_norm"));
                    l.arg(buf(*src));
                    optional(&mut l, gamma.as_ref(), &null);
                    optional(&mut l, beta.as_ref(), &null);
                    l.arg(&len_i).arg(&count).arg(eps).arg(&mut y);
                    l.launch(warp_rows(count as usize))?;
                }
            }
            Step::Add { a, b } => {
                // SAFETY: smk_add(const float*, const float*, size_t, float*); both inputs
                // have the output's shape (the format checked it).
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_add"));
                    l.arg(buf(*a)).arg(buf(*b)).arg(&total_u).arg(&mut y);
                    l.launch(elementwise(total))?;
                }
            }
            Step::Softmax { src, n: len } => {
                s.memcpy_dtod(buf(*src), &mut y)?;
                let (len_i, rows) = (*len as i32, (total / (*len).max(1)) as i32);
                // SAFETY: smk_softmax over `rows` rows of `len` values of `y`.
                unsafe {
                    let mut l = s.launch_builder(self.function("smk_softmax"));
                    l.arg(&mut y).arg(&len_i).arg(&rows);
                    l.launch(warp_rows(rows as usize))?;
                }
            }
        }
        Ok(y)
    }

    /// `y(b, o) = Σ_c W(o, c)·x(b, c)` for `n` inputs: input b at `x[b·x_stride..]`, output
    /// (b, o) at `y[b·y_batch + o·y_row]`.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        product: &Product,
        (rows, cols): (usize, usize),
        x: &CudaView<'_, f32>,
        x_stride: usize,
        n: usize,
        y: &mut CudaSlice<f32>,
        y_batch: usize,
        y_row: usize,
    ) -> Result<(), GpuError> {
        if n >= TILED_MIN {
            return self.tiled(product, (rows, cols), x, x_stride, n, y, y_batch, y_row);
        }
        let s = &self.stream;
        let null = 0u64;
        let (rows_i, cols_i) = (rows as i32, cols as i32);
        let (x_stride, y_batch, y_row) = (x_stride as i32, y_batch as i32, y_row as i32);
        // One warp per (row, input).
        let warps = LaunchConfig {
            grid_dim: ((rows as u32 * 32).div_ceil(256), n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let tiles = |r: i32, threads_x: u32| LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(r as u32), n as u32, 1),
            block_dim: (threads_x, if threads_x == 32 { (r as u32).min(32) } else { 1 }, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: each kernel's parameters match its declaration in kernels.cu, in order and
        // type; every buffer holds what the kernel reads (the format checked the sizes of
        // weights, masks and indices against the shapes; `x` and `y` were sized by the caller).
        unsafe {
            match product {
                Product::Rows {
                    kind,
                    data,
                    mask,
                    words,
                } => {
                    let f = self.function(["smk_rows_f32", "smk_rows_f16", "smk_rows_bf16"][*kind]);
                    let mut l = s.launch_builder(f);
                    l.arg(data);
                    optional(&mut l, mask.as_ref(), &null);
                    l.arg(&rows_i).arg(&cols_i).arg(words).arg(x).arg(&x_stride);
                    l.arg(y).arg(&y_batch).arg(&y_row).launch(warps)?;
                }
                Product::Blocks {
                    kind,
                    data,
                    index,
                    bmask,
                    mask_words,
                    block,
                    ..
                } => {
                    let f = self.function(["smk_blocks_f32", "smk_blocks_f16", "smk_blocks_bf16"][*kind]);
                    let mut l = s.launch_builder(f);
                    l.arg(data);
                    match index {
                        Some((rp, ci)) => l.arg(rp).arg(ci),
                        None => l.arg(&null).arg(&null),
                    };
                    optional(&mut l, bmask.as_ref(), &null);
                    l.arg(mask_words)
                        .arg(&block[0])
                        .arg(&block[1])
                        .arg(&rows_i)
                        .arg(&cols_i);
                    l.arg(x).arg(&x_stride).arg(y).arg(&y_batch).arg(&y_row);
                    l.launch(tiles(block[0], 32))?;
                }
                Product::Signed {
                    key,
                    scale,
                    mask,
                    words,
                } => {
                    let mut l = s.launch_builder(self.function("smk_signed_rows"));
                    l.arg(key).arg(scale);
                    optional(&mut l, mask.as_ref(), &null);
                    l.arg(&rows_i).arg(&cols_i).arg(words).arg(x).arg(&x_stride);
                    l.arg(y).arg(&y_batch).arg(&y_row).launch(warps)?;
                }
                Product::SignedBlocks {
                    key,
                    scale,
                    bmask,
                    mask_words,
                    block,
                    ..
                } => {
                    let mut l = s.launch_builder(self.function("smk_signed_blocks"));
                    l.arg(key)
                        .arg(scale)
                        .arg(bmask)
                        .arg(mask_words)
                        .arg(&block[0])
                        .arg(&block[1]);
                    l.arg(&rows_i)
                        .arg(&cols_i)
                        .arg(x)
                        .arg(&x_stride)
                        .arg(y)
                        .arg(&y_batch)
                        .arg(&y_row);
                    l.launch(tiles(block[0], (block[0] as u32).next_multiple_of(32)))?;
                }
                Product::Generated {
                    key,
                    rule,
                    scale,
                    mask,
                    words,
                } => {
                    let mut l = s.launch_builder(self.function("smk_generated_rows"));
                    l.arg(key).arg(rule).arg(scale);
                    optional(&mut l, mask.as_ref(), &null);
                    l.arg(&rows_i).arg(&cols_i).arg(words).arg(x).arg(&x_stride);
                    l.arg(y).arg(&y_batch).arg(&y_row).launch(warps)?;
                }
            }
        }
        Ok(())
    }

    /// The product through `smk_tiled`, in launches of at most 65535 × 64 inputs (the grid's
    /// y limit).
    #[allow(clippy::too_many_arguments)]
    fn tiled(
        &self,
        product: &Product,
        (rows, cols): (usize, usize),
        x: &CudaView<'_, f32>,
        x_stride: usize,
        n: usize,
        y: &mut CudaSlice<f32>,
        y_batch: usize,
        y_row: usize,
    ) -> Result<(), GpuError> {
        let null = 0u64;
        let words = cols.div_ceil(64) as i32;
        let no_blocks = [1i32, 1];
        // (data, element mask, slot, key, scale, kind, words, block)
        let (data, emask, slot, key, scale, kind, block) = match product {
            Product::Rows { kind, data, mask, .. } => {
                (Some(data), mask.as_ref(), None, 0u64, 0f32, *kind as i32, &no_blocks)
            }
            Product::Blocks {
                kind,
                data,
                slot,
                block,
                ..
            } => (Some(data), None, Some(slot), 0, 0.0, *kind as i32, block),
            Product::Signed { key, scale, mask, .. } => (None, mask.as_ref(), None, *key, *scale, 3, &no_blocks),
            Product::SignedBlocks {
                key,
                scale,
                slot,
                block,
                ..
            } => (None, None, Some(slot), *key, *scale, 3, block),
            Product::Generated {
                key, rule, scale, mask, ..
            } => (None, mask.as_ref(), None, *key, *scale, 3 + *rule, &no_blocks),
        };
        let grid_cols = cols.div_ceil(block[1] as usize) as i32;
        let (rows_i, cols_i, x_stride_i) = (rows as i32, cols as i32, x_stride as i32);
        let (y_batch_i, y_row_i) = (y_batch as i32, y_row as i32);
        let per_launch = 65535 * 64;
        let mut start = 0;
        while start < n {
            let m = per_launch.min(n - start);
            let xs = x.slice(start * x_stride..);
            let mut ys = y.slice_mut(start * y_batch..);
            let m_i = m as i32;
            let cfg = LaunchConfig {
                grid_dim: (rows.div_ceil(32) as u32, m.div_ceil(64) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: smk_tiled's 18 parameters in order and type (pointers as device
            // pointers or null); `xs` holds m inputs of x_stride values, `ys` their outputs,
            // and the weights, masks and slots match `rows` × `cols` (checked by the format).
            unsafe {
                let mut l = self.stream.launch_builder(self.function("smk_tiled"));
                optional(&mut l, data, &null);
                optional(&mut l, emask, &null);
                optional(&mut l, slot, &null);
                l.arg(&key).arg(&scale).arg(&kind).arg(&rows_i).arg(&cols_i).arg(&words);
                l.arg(&block[0]).arg(&block[1]).arg(&grid_cols);
                l.arg(&xs)
                    .arg(&x_stride_i)
                    .arg(&m_i)
                    .arg(&mut ys)
                    .arg(&y_batch_i)
                    .arg(&y_row_i);
                l.launch(cfg)?;
            }
            start += m;
        }
        Ok(())
    }
}
