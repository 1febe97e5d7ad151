//! A `.smk` model on one GPU: its sections are copied to device memory once ([`GpuModel::load`]),
//! then [`GpuModel::infer`] runs batches through the kernels of `kernels.cu`.
//!
//! Covered: chains of linear layers (every weight storage, element masks, packed and tile-major
//! block masks, seeded signed-constant weights with element or block masks, seeded uniform and
//! normal weights), ReLU, flatten and a final softmax: the MLPs. Convolutions, pooling, norms and
//! residual adds are refused with [`GpuError::Unsupported`] until their kernels exist.

use std::fmt;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchArgs, LaunchConfig, PushKernelArg,
};
use smk_format::{InitRule, Input, Layout, Mask, MaskKind, Model, Op, Storage, Tensor};

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
        GpuError::Driver(format!("{e:?}"))
    }
}

/// How one linear layer's product runs.
enum Product {
    /// Stored rows (`kind` 0 f32, 1 f16, 2 bf16), optional element mask.
    Rows {
        kind: usize,
        data: CudaSlice<u8>,
        mask: Option<CudaSlice<u64>>,
        words: i32,
    },
    /// Stored tiles: packed (`index` = row_ptr, col_idx) or tile-major (`bmask`).
    Blocks {
        kind: usize,
        data: CudaSlice<u8>,
        index: Option<(CudaSlice<u32>, CudaSlice<u32>)>,
        bmask: Option<CudaSlice<u64>>,
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

enum Step {
    Linear {
        product: Box<Product>,
        rows: usize,
        cols: usize,
        bias: Option<CudaSlice<f32>>,
        relu: bool,
    },
    Relu {
        n: usize,
    },
    Softmax {
        n: usize,
    },
}

/// A model resident on one GPU, for one mask set.
pub struct GpuModel {
    stream: Arc<CudaStream>,
    functions: Vec<(&'static str, CudaFunction)>,
    steps: Vec<Step>,
    input_len: usize,
    output_len: usize,
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
        Storage::Seeded(_) => None,
    }
}

impl GpuModel {
    /// Compiles the kernels for `arch` (e.g. `"sm_90"`), opens GPU `ordinal` and copies the model's
    /// weights, masks (of mask set `task`: `None` for the only one) and biases to it.
    pub fn load(model: &Model<'_>, task: Option<u32>, ordinal: usize, arch: &'static str) -> Result<Self, GpuError> {
        let set = match (task, model.mask_set_count()) {
            (Some(t), n) if t < n => Some(t),
            (Some(t), n) => return Err(GpuError::Task(format!("no task {t}: the model has {n}"))),
            (None, 0) => None,
            (None, 1) => Some(0),
            (None, n) => return Err(GpuError::Task(format!("the model has {n} tasks: choose one"))),
        };
        let ptx = compile_ptx(SOURCE, arch).map_err(GpuError::Compile)?;
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
        let mut functions = Vec::new();
        for name in crate::KERNELS {
            functions.push((name, module.load_function(name)?));
        }
        let mut steps = Vec::new();
        let count = model.layer_count();
        for i in 0..count {
            let layer = model
                .layer(i)
                .ok_or_else(|| GpuError::Task(format!("layer {i} is missing")))?;
            let expected = if i == 0 { Input::Graph } else { Input::Layer(i - 1) };
            let unsupported = |what: &str| GpuError::Unsupported {
                layer: i,
                what: what.into(),
            };
            if layer.input != expected || layer.second_input.is_some() {
                return Err(unsupported("a graph that is not a chain"));
            }
            let n = layer.output_shape.numel() as usize;
            match layer.op {
                Op::Linear { weight, bias } => {
                    let w = model.tensor(weight).ok_or_else(|| unsupported("a missing weight"))?;
                    let (rows, cols) = w.matrix();
                    let mask = set.and_then(|s| model.mask(s, weight));
                    let product = Self::product(&stream, &w, mask.as_ref(), i)?;
                    let bias = match bias {
                        Some(b) => {
                            let t = model.tensor(b).ok_or_else(|| unsupported("a missing bias"))?;
                            if t.storage != Storage::F32 {
                                return Err(unsupported("a bias not stored as f32"));
                            }
                            let v: Vec<f32> = t
                                .data
                                .chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect();
                            Some(stream.clone_htod(&v)?)
                        }
                        None => None,
                    };
                    steps.push(Step::Linear {
                        product: Box::new(product),
                        rows: rows as usize,
                        cols: cols as usize,
                        bias,
                        relu: false,
                    });
                }
                Op::Relu => match steps.last_mut() {
                    // Folded into the product before it, as one pass over the outputs.
                    Some(Step::Linear { relu, .. }) if !*relu => *relu = true,
                    _ => steps.push(Step::Relu { n }),
                },
                Op::Flatten => {}
                Op::Softmax => steps.push(Step::Softmax {
                    n: layer.output_shape.dims().last().copied().unwrap_or(1) as usize,
                }),
                Op::Conv2d { .. } => return Err(unsupported("a convolution")),
                Op::MaxPool(_) | Op::AvgPool { .. } => return Err(unsupported("pooling")),
                Op::BatchNorm { .. } | Op::LayerNorm { .. } => return Err(unsupported("a norm")),
                Op::Add => return Err(unsupported("a residual add")),
            }
        }
        Ok(GpuModel {
            stream,
            functions,
            steps,
            input_len: model.input_shape().numel() as usize,
            output_len: model.output_shape().numel() as usize,
        })
    }

    fn product(
        stream: &Arc<CudaStream>,
        w: &Tensor<'_>,
        mask: Option<&Mask<'_>>,
        layer: u32,
    ) -> Result<Product, GpuError> {
        let unsupported = |what: &str| GpuError::Unsupported {
            layer,
            what: what.into(),
        };
        let (_, cols) = w.matrix();
        let words = cols.div_ceil(64) as i32;
        let element = |m: Option<&Mask<'_>>| -> Result<Option<CudaSlice<u64>>, GpuError> {
            match m {
                Some(m) if m.kind == MaskKind::Element => Ok(Some(stream.clone_htod(&words_of(m))?)),
                Some(_) => Err(unsupported("this block mask with this layout")),
                None => Ok(None),
            }
        };
        Ok(match (&w.storage, &w.layout, mask) {
            (Storage::Seeded(init), _, Some(m))
                if m.kind == MaskKind::Block && init.rule == InitRule::SignedConstant =>
            {
                Product::SignedBlocks {
                    key: init.key(),
                    scale: init.scale,
                    bmask: stream.clone_htod(&words_of(m))?,
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
            (s, Layout::RowMajor, m) => Product::Rows {
                kind: storage_kind(s).ok_or_else(|| unsupported("this storage"))?,
                data: stream.clone_htod(w.data)?,
                mask: element(m)?,
                words,
            },
            (s, Layout::TileMajor { block }, m) => {
                let (bmask, mask_words) = match m {
                    Some(m) if m.kind == MaskKind::Block => {
                        (Some(stream.clone_htod(&words_of(m))?), m.words_per_row as i32)
                    }
                    Some(_) => return Err(unsupported("an element mask over tiles")),
                    // No mask: every tile, through an all-ones block mask.
                    None => {
                        let grid_cols = cols.div_ceil(block[1] as u64) as usize;
                        let grid_rows = w.matrix().0.div_ceil(block[0] as u64) as usize;
                        let per_row = grid_cols.div_ceil(64);
                        let mut all = vec![0u64; grid_rows * per_row];
                        for r in 0..grid_rows {
                            for c in 0..grid_cols {
                                all[r * per_row + c / 64] |= 1 << (c % 64);
                            }
                        }
                        (Some(stream.clone_htod(&all)?), per_row as i32)
                    }
                };
                Product::Blocks {
                    kind: storage_kind(s).ok_or_else(|| unsupported("this storage"))?,
                    data: stream.clone_htod(w.data)?,
                    index: None,
                    bmask,
                    mask_words,
                    block: [block[0] as i32, block[1] as i32],
                }
            }
            (s, Layout::Packed { block, index }, _) => Product::Blocks {
                kind: storage_kind(s).ok_or_else(|| unsupported("this storage"))?,
                data: stream.clone_htod(w.data)?,
                index: Some((
                    stream.clone_htod(&u32s(index.row_ptr_bytes()))?,
                    stream.clone_htod(&u32s(index.col_bytes()))?,
                )),
                bmask: None,
                mask_words: 0,
                block: [block[0] as i32, block[1] as i32],
            },
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
        let s = &self.stream;
        let null = 0u64;
        let mut x: CudaSlice<f32> = s.clone_htod(input)?;
        let mut width = self.input_len;
        for step in &self.steps {
            match step {
                Step::Linear {
                    product,
                    rows,
                    cols,
                    bias,
                    relu,
                } => {
                    let (rows_i, cols_i) = (*rows as i32, *cols as i32);
                    let (x_stride, y_batch, y_row) = (width as i32, rows_i, 1i32);
                    let mut y = s.alloc_zeros::<f32>(batch * rows)?;
                    // One warp per (row, input).
                    let warps = LaunchConfig {
                        grid_dim: ((*rows as u32 * 32).div_ceil(256), batch as u32, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    let tiles = |r: i32, threads_x: u32| LaunchConfig {
                        grid_dim: ((*rows as u32).div_ceil(r as u32), batch as u32, 1),
                        block_dim: (threads_x, if threads_x == 32 { (r as u32).min(32) } else { 1 }, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: each kernel's parameters match its declaration in kernels.cu, in
                    // order and type; every buffer holds what the kernel reads (the format
                    // checked the sizes of weights, masks and indices against the shapes).
                    unsafe {
                        match product.as_ref() {
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
                                l.arg(&rows_i).arg(&cols_i).arg(words).arg(&x).arg(&x_stride);
                                l.arg(&mut y).arg(&y_batch).arg(&y_row).launch(warps)?;
                            }
                            Product::Blocks {
                                kind,
                                data,
                                index,
                                bmask,
                                mask_words,
                                block,
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
                                l.arg(&x)
                                    .arg(&x_stride)
                                    .arg(&mut y)
                                    .arg(&y_batch)
                                    .arg(&y_row)
                                    .launch(tiles(block[0], 32))?;
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
                                l.arg(&rows_i).arg(&cols_i).arg(words).arg(&x).arg(&x_stride);
                                l.arg(&mut y).arg(&y_batch).arg(&y_row).launch(warps)?;
                            }
                            Product::SignedBlocks {
                                key,
                                scale,
                                bmask,
                                mask_words,
                                block,
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
                                    .arg(&x)
                                    .arg(&x_stride)
                                    .arg(&mut y)
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
                                l.arg(&rows_i).arg(&cols_i).arg(words).arg(&x).arg(&x_stride);
                                l.arg(&mut y).arg(&y_batch).arg(&y_row).launch(warps)?;
                            }
                        }
                        if bias.is_some() || *relu {
                            let (batch_i, relu_i) = (batch as i32, *relu as i32);
                            let mut l = s.launch_builder(self.function("smk_bias_relu"));
                            l.arg(&mut y);
                            optional(&mut l, bias.as_ref(), &null);
                            l.arg(&rows_i).arg(&batch_i).arg(&y_batch).arg(&y_row).arg(&relu_i);
                            l.launch(LaunchConfig::for_num_elems((batch * rows) as u32))?;
                        }
                    }
                    x = y;
                    width = *rows;
                }
                Step::Relu { n } => {
                    let (n_i, batch_i, one) = (*n as i32, batch as i32, 1i32);
                    // SAFETY: as above; `x` holds batch × n values.
                    unsafe {
                        let mut l = s.launch_builder(self.function("smk_bias_relu"));
                        l.arg(&mut x)
                            .arg(&null)
                            .arg(&n_i)
                            .arg(&batch_i)
                            .arg(&n_i)
                            .arg(&one)
                            .arg(&one);
                        l.launch(LaunchConfig::for_num_elems((batch * n) as u32))?;
                    }
                }
                Step::Softmax { n } => {
                    let (n_i, rows) = (*n as i32, (batch * width / n) as i32);
                    // SAFETY: as above; one warp per row of n values.
                    unsafe {
                        let mut l = s.launch_builder(self.function("smk_softmax"));
                        l.arg(&mut x).arg(&n_i).arg(&rows);
                        l.launch(LaunchConfig {
                            grid_dim: ((rows as u32 * 32).div_ceil(256), 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        })?;
                    }
                }
            }
        }
        let out = s.clone_dtoh(&x)?;
        debug_assert_eq!(out.len(), batch * self.output_len);
        Ok(out)
    }
}
