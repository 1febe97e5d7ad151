//! Networks built from masked layers: the model zoo, the forward pass, and named tensors for
//! checkpoints.
//!
//! Frozen weights are plain `Tensor`s, never handed to the optimizer; scores (and weights, for
//! methods that train them) are `Var`s. A network is a small graph whose nodes map one to one
//! onto the layers of the exported .smk file.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use smk_format::seeded::{kaiming_std, kaiming_uniform_bound, SeededInit, RELU_GAIN};

use crate::config::{FitConfig, FrozenDtype, MethodKind, WeightInit};
use crate::error::{Error, Result};
use crate::mask::{expand_blocks, hard_mask, ste_mask, Binarize};
use crate::rng::{stream, Rng};

/// The models the trainer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelId {
    /// 784-300-100-10, bias-free.
    Lenet300100,
    /// 784-1024-1024-10, bias-free.
    Fc10241024,
    /// LeNet-5: two 5×5 convs (6, 16) with max pooling, then 120-84-10.
    Lenet5,
    /// Conv-2/4/6 of Ramanujan et al.: pairs of 3×3 convs (64, 128, 256) with pooling, then 256-256-10.
    Conv(usize),
    /// A small ResNet: a 3×3 stem, three basic blocks (16, 32, 64), global average pooling.
    Resnet8,
}

impl ModelId {
    /// Parses a `--model` id.
    pub fn parse(id: &str) -> Result<Self> {
        Ok(match id {
            "lenet-300-100" => Self::Lenet300100,
            "fc-1024-1024" => Self::Fc10241024,
            "lenet-5" => Self::Lenet5,
            "conv-2" => Self::Conv(2),
            "conv-4" => Self::Conv(4),
            "conv-6" => Self::Conv(6),
            "resnet-8" => Self::Resnet8,
            _ => {
                return Err(Error::Config(format!(
                    "unknown model '{id}' (lenet-300-100, fc-1024-1024, lenet-5, conv-2, conv-4, conv-6, resnet-8)"
                )))
            }
        })
    }
}

/// The usual per-channel input statistics: MNIST's for one channel, CIFAR-10's for three.
pub fn normalization(channels: usize) -> Vec<(f32, f32)> {
    match channels {
        1 => vec![(0.1307, 0.3081)],
        3 => vec![(0.4914, 0.2470), (0.4822, 0.2435), (0.4465, 0.2616)],
        c => vec![(0.5, 0.5); c],
    }
}

/// A linear or conv layer's weights, scores and mask settings.
#[derive(Debug)]
pub struct MaskedLayer {
    /// Name; tensors are `{name}.weight` and `{name}.scores`.
    pub name: String,
    /// Weight dims: `[out, in]` or `[out, in, kh, kw]`.
    pub dims: Vec<usize>,
    /// The weights (a plain tensor when frozen, then in the run's `--dtype`; f32 otherwise).
    pub weight: Tensor,
    /// The weights as a variable, when they train.
    pub weight_var: Option<Var>,
    /// How frozen weights were generated, so export can store only the seed.
    pub seeded: Option<SeededInit>,
    /// Scores (element `[dims]`, or block grid `[gr, gc]`), when the layer is masked.
    pub scores: Option<Var>,
    /// Block shape of a block mask.
    pub block: Option<[usize; 2]>,
    /// DNW: the mask ranks the weights themselves (no scores).
    pub rank_weights: bool,
    /// PackNet: which weights earlier tasks own, and which this task trains.
    pub pack: Option<Pack>,
    /// Learned binary weights: the magnitude of every weight (the latent weights' signs train).
    pub binary: Option<f32>,
}

/// A PackNet layer's ownership (0/1 tensors of the weight's shape, f32).
#[derive(Debug, Clone)]
pub struct Pack {
    /// 1 where an earlier task owns the weight.
    pub owned: Tensor,
    /// Earlier tasks' weights, `W ⊙ owned`, held apart from the trained variable so that
    /// nothing the optimizer does (weight decay, momentum) can move them.
    pub base: Tensor,
    /// 1 where this task's weights are: every free weight until the prune, then its share.
    pub claimed: Tensor,
}

impl Pack {
    /// The state of the task after the one whose `weight` and pack these are: what that task
    /// claimed joins what earlier tasks own, and the weights left free start again from zero.
    pub fn next(weight: &Tensor, done: &Pack) -> Result<(Tensor, Pack)> {
        let base = (&done.base + weight.broadcast_mul(&done.claimed)?)?;
        let owned = (&done.owned + &done.claimed)?;
        let claimed = owned.ones_like()?.sub(&owned)?;
        Ok((base.clone(), Pack { owned, base, claimed }))
    }

    /// The first task's: nothing owned, every weight free.
    pub fn first(weight: &Tensor) -> Result<Pack> {
        Ok(Pack {
            owned: weight.zeros_like()?,
            base: weight.zeros_like()?,
            claimed: weight.ones_like()?,
        })
    }

    /// The weights the task computes with: `base + W ⊙ claimed`.
    pub fn effective(&self, weight: &Tensor) -> Result<Tensor> {
        Ok((&self.base + weight.broadcast_mul(&self.claimed)?)?)
    }

    /// The task's mask: the weights it or an earlier task owns.
    pub fn mask(&self) -> Result<Tensor> {
        Ok((&self.owned + &self.claimed)?)
    }
}

impl MaskedLayer {
    /// `(rows, cols)` of the matrix view.
    pub fn matrix(&self) -> (usize, usize) {
        (self.dims[0], self.dims[1..].iter().product())
    }

    /// The weights as the forward pass reads them: in f32, whatever `--dtype` holds frozen
    /// ones in (the values are exactly those held; widening from bf16 or f16 is exact).
    pub fn weight_f32(&self) -> Result<Tensor> {
        let w = self.weight_var.as_ref().map_or(&self.weight, |v| v.as_tensor());
        Ok(w.to_dtype(DType::F32)?)
    }

    /// The weight the forward pass uses: `w ⊙ mask(scores)` with a straight-through mask.
    pub fn effective_weight(&self, rule: Binarize) -> Result<Tensor> {
        let latent = self.weight_f32()?;
        if let Some(p) = &self.pack {
            return p.effective(&latent);
        }
        // Forward: `±scale` by sign (0 counts as +); backward: the latent weights take the
        // gradient unchanged (they stay in [−scale, scale]: `Net::clip_binary`).
        let w = match self.binary {
            Some(scale) => {
                let signed = ((latent.ge(0f64)?.to_dtype(DType::F32)? * (2.0 * scale as f64))? - scale as f64)?;
                (&latent + (signed - &latent)?.detach())?
            }
            None => latent.clone(),
        };
        if self.rank_weights {
            // Forward: the top-k weights (by latent magnitude, for binary weights); backward:
            // every weight, as if unmasked.
            let hard = hard_mask(&latent.detach(), rule)?;
            let kept = w.broadcast_mul(&hard)?;
            return Ok((&w + (kept - &w)?.detach())?);
        }
        let Some(scores) = &self.scores else {
            return Ok(w);
        };
        let m = ste_mask(scores.as_tensor(), rule)?;
        let m = self.to_weight_shape(m)?;
        Ok(w.broadcast_mul(&m)?)
    }

    /// The values [`MaskedLayer::effective_weight`] computes with, without its straight-through
    /// terms: `W ⊙ mask`, learned binary weights as exactly `±scale` (then masked), PackNet's
    /// `base + W ⊙ claimed`. What a dense export stores; no gradient reaches anything.
    pub fn masked_weight(&self, rule: Binarize) -> Result<Tensor> {
        let latent = self.weight_f32()?.detach();
        if let Some(p) = &self.pack {
            return p.effective(&latent);
        }
        let w = match self.binary {
            // `2·scale − scale` and `0 − scale` are exact: the signs times the scale.
            Some(scale) => ((latent.ge(0f64)?.to_dtype(DType::F32)? * (2.0 * scale as f64))? - scale as f64)?,
            None => latent,
        };
        match self.hard_mask_grid(rule)? {
            Some(grid) => Ok(w.broadcast_mul(&self.to_weight_shape(grid)?)?),
            None => Ok(w),
        }
    }

    pub(crate) fn to_weight_shape(&self, m: Tensor) -> Result<Tensor> {
        let (rows, cols) = self.matrix();
        let m = match self.block {
            Some(b) => expand_blocks(&m, b, rows, cols)?,
            None => m,
        };
        Ok(m.reshape(self.dims.as_slice())?)
    }

    /// The hard mask in its own grid (element: the weight's matrix view; block: the block grid).
    pub fn hard_mask_grid(&self, rule: Binarize) -> Result<Option<Tensor>> {
        if let Some(p) = &self.pack {
            let (rows, cols) = self.matrix();
            return Ok(Some(p.mask()?.reshape((rows, cols))?));
        }
        if self.rank_weights {
            let (rows, cols) = self.matrix();
            return Ok(Some(hard_mask(&self.weight_f32()?, rule)?.reshape((rows, cols))?));
        }
        let Some(scores) = &self.scores else { return Ok(None) };
        let m = hard_mask(scores.as_tensor(), rule)?;
        let (rows, cols) = self.matrix();
        Ok(Some(match self.block {
            Some(_) => m,
            None => m.reshape((rows, cols))?,
        }))
    }

    /// Fraction of weights the mask keeps (1 for unmasked layers).
    pub fn density(&self, rule: Binarize) -> Result<f64> {
        let m = match (&self.scores, self.rank_weights, &self.pack) {
            (_, _, Some(p)) => p.mask()?,
            (_, true, None) => hard_mask(&self.weight_f32()?, rule)?,
            (Some(scores), false, None) => self.to_weight_shape(hard_mask(scores.as_tensor(), rule)?)?,
            (None, false, None) => return Ok(1.0),
        };
        Ok(m.sum_all()?.to_scalar::<f32>()? as f64 / m.elem_count() as f64)
    }
}

/// Batch norm, affine or not, with running statistics.
#[derive(Debug)]
pub struct Norm {
    /// Name; tensors are `{name}.running_mean`, `.running_var`, `.weight`, `.bias`.
    pub name: String,
    /// Channels.
    pub channels: usize,
    /// γ and β, when affine.
    pub affine: Option<(Var, Var)>,
    /// Running mean.
    pub running_mean: Tensor,
    /// Running (unbiased) variance.
    pub running_var: Tensor,
    /// Added to the variance.
    pub eps: f64,
}

const NORM_MOMENTUM: f64 = 0.1;

impl Norm {
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = self.channels;
        let shape: Vec<usize> = if x.rank() == 4 { vec![1, c, 1, 1] } else { vec![1, c] };
        let (mean, var) = if train {
            let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
            let n = x.elem_count() / c;
            let mean = x.mean_keepdim(reduce.as_slice())?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(reduce.as_slice())?;
            let unbiased = (var.detach() * (n as f64 / (n as f64 - 1.0).max(1.0)))?.reshape(c)?;
            self.running_mean =
                ((&self.running_mean * (1.0 - NORM_MOMENTUM))? + (mean.detach().reshape(c)? * NORM_MOMENTUM)?)?;
            self.running_var = ((&self.running_var * (1.0 - NORM_MOMENTUM))? + (unbiased * NORM_MOMENTUM)?)?;
            (mean, var)
        } else {
            (
                self.running_mean.reshape(shape.as_slice())?,
                self.running_var.reshape(shape.as_slice())?,
            )
        };
        let mut y = x.broadcast_sub(&mean)?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        if let Some((g, b)) = &self.affine {
            y = y
                .broadcast_mul(&g.as_tensor().reshape(shape.as_slice())?)?
                .broadcast_add(&b.as_tensor().reshape(shape.as_slice())?)?;
        }
        Ok(y)
    }
}

/// One node of the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// To `[N, features]`.
    Flatten,
    /// Linear layer `layers[i]`.
    Linear(usize),
    /// Conv layer `layers[layer]`.
    Conv {
        /// Index into `layers`.
        layer: usize,
        /// Stride.
        stride: usize,
        /// Zero padding.
        padding: usize,
    },
    /// ReLU.
    Relu,
    /// k×k max pooling, stride k.
    MaxPool(usize),
    /// k×k average pooling, stride k.
    AvgPool(usize),
    /// Batch norm `norms[i]`.
    Norm(usize),
    /// Sum of the outputs of nodes `a` and `b`.
    Add(usize, usize),
}

/// A network: nodes in order, each reading the previous node's output (or, for `Add`, two
/// earlier outputs).
#[derive(Debug)]
pub struct Net {
    /// Which model.
    pub id: ModelId,
    /// `[C, H, W]` of one input.
    pub input: [usize; 3],
    /// Per-channel `(mean, std)` applied to the input first (exported as a batch norm).
    pub normalize: Vec<(f32, f32)>,
    /// The graph.
    pub nodes: Vec<Node>,
    /// The node each node reads (`None`: the previous node, or the input for the first).
    pub inputs: Vec<Option<usize>>,
    /// Linear and conv layers.
    pub layers: Vec<MaskedLayer>,
    /// Batch norms.
    pub norms: Vec<Norm>,
}

/// What the builder needs to know to create a layer.
struct LayerPlan<'a> {
    cfg: &'a FitConfig,
    init: Option<&'a HashMap<String, Tensor>>,
    device: &'a Device,
}

impl LayerPlan<'_> {
    /// A frozen weight (f32, on the host) in the run's `--dtype`.
    fn frozen(&self, w: Tensor, name: &str) -> Result<Tensor> {
        let dtype = self.cfg.dtype;
        if dtype == FrozenDtype::F16 {
            // f16 tops out at 65504: larger loaded weights would silently become infinite.
            let top = w.abs()?.max_all()?.to_scalar::<f32>()?;
            if top > half::f16::MAX.to_f32() {
                return Err(Error::Config(format!(
                    "--dtype f16: '{name}.weight' holds {top}, beyond f16's ±65504: use --dtype bf16 or f32"
                )));
            }
        }
        Ok(w.to_dtype(dtype.dtype())?)
    }

    fn layer(&self, name: &str, dims: Vec<usize>, index: usize, is_head: bool) -> Result<MaskedLayer> {
        let cfg = self.cfg;
        let rows = dims[0];
        let cols: usize = dims[1..].iter().product();
        let head_trains = is_head && cfg.train_head;
        let trains = cfg.method.trains_weights() || head_trains;
        let (weight, seeded) = match self.init {
            Some(map) => {
                let key = format!("{name}.weight");
                let t = map
                    .get(&key)
                    .ok_or_else(|| Error::Config(format!("--init-from has no tensor '{key}'")))?;
                if t.dims() != dims.as_slice() {
                    return Err(Error::Config(format!(
                        "--init-from: '{key}' is {:?}, the model needs {dims:?}",
                        t.dims()
                    )));
                }
                // Dropping a bias would silently change what the loaded network computes.
                if map.contains_key(&format!("{name}.bias")) {
                    return Err(Error::Config(format!(
                        "--init-from has '{name}.bias', but smk's models are bias-free: train the source model with \
                         bias=False (or remove its biases knowingly)"
                    )));
                }
                (t.to_dtype(DType::F32)?, None)
            }
            None => {
                let fan = cols as f64 * if cfg.scale_fan { cfg.keep } else { 1.0 };
                let scale = match cfg.weights {
                    WeightInit::SignedConstant | WeightInit::KaimingNormal => kaiming_std(fan, RELU_GAIN),
                    WeightInit::KaimingUniform => kaiming_uniform_bound(fan, RELU_GAIN),
                };
                let init = SeededInit {
                    rule: cfg.weights.rule(),
                    seed: cfg.seed,
                    stream: index as u32,
                    scale,
                };
                let mut values = vec![0f32; rows * cols];
                init.fill(cols, &mut values);
                (
                    Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)?,
                    (!trains).then_some(init),
                )
            }
        };
        let (weight, pack) = self.pack(name, weight)?;
        // Narrowed on the host, so that only the narrow copy travels to the device.
        let (weight, weight_var) = if trains {
            let w = weight.to_device(self.device)?;
            (w.clone(), Some(Var::from_tensor(&w)?))
        } else {
            (self.frozen(weight, name)?.to_device(self.device)?, None)
        };
        let binary = cfg.method == MethodKind::Binary;
        let rank_weights = cfg.method == MethodKind::Dnw || (binary && cfg.keep < 1.0);
        let masked = cfg.method.masks() && !head_trains && !rank_weights && !binary && pack.is_none();
        let binary = binary.then(|| {
            let fan = cols as f64 * if cfg.scale_fan { cfg.keep } else { 1.0 };
            kaiming_std(fan, RELU_GAIN)
        });
        let block = (cfg.method == MethodKind::Block).then_some(cfg.block);
        let scores = if masked {
            let shape: Vec<usize> = match block {
                Some(b) => vec![rows.div_ceil(b[0]), cols.div_ceil(b[1])],
                None => dims.clone(),
            };
            let n: usize = shape.iter().product();
            let mut rng = Rng::new(cfg.seed, stream::SCORES + index as u64);
            let values: Vec<f32> = match cfg.method {
                // kaiming_uniform_(a=√5): bound 1/√fan_in, as edge-popup initialises scores.
                MethodKind::EdgePopup | MethodKind::Block | MethodKind::Supsup => {
                    let bound = 1.0 / (cols as f32).sqrt();
                    (0..n).map(|_| rng.symmetric(bound)).collect()
                }
                _ => vec![cfg.mask_init; n],
            };
            Some(Var::from_tensor(&Tensor::from_vec(
                values,
                shape.as_slice(),
                self.device,
            )?)?)
        } else {
            None
        };
        Ok(MaskedLayer {
            name: name.to_string(),
            dims,
            weight,
            weight_var,
            seeded,
            scores,
            block,
            rank_weights,
            pack,
            binary,
        })
    }

    /// PackNet's ownership for this task, and the weights it starts from: the previous task's
    /// state when `--init-from` holds one (`{name}.owned`, `.base`, `.claimed`), else the first
    /// task's. Other methods: the weights as they are.
    fn pack(&self, name: &str, weight: Tensor) -> Result<(Tensor, Option<Pack>)> {
        if self.cfg.method != MethodKind::Packnet {
            return Ok((weight, None));
        }
        let part = |suffix: &str| -> Result<Option<Tensor>> {
            let key = format!("{name}.{suffix}");
            match self.init.and_then(|m| m.get(&key)) {
                Some(t) if t.dims() != weight.dims() => Err(Error::Config(format!(
                    "--init-from: '{key}' is {:?}, the model needs {:?}",
                    t.dims(),
                    weight.dims()
                ))),
                Some(t) => Ok(Some(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)),
                None => Ok(None),
            }
        };
        let (weight, pack) = match (part("owned")?, part("base")?, part("claimed")?) {
            (Some(owned), Some(base), Some(claimed)) => Pack::next(&weight, &Pack { owned, base, claimed })?,
            _ => (weight.clone(), Pack::first(&weight)?),
        };
        let on = |t: &Tensor| t.to_device(self.device);
        let pack = Pack {
            owned: on(&pack.owned)?,
            base: on(&pack.base)?,
            claimed: on(&pack.claimed)?,
        };
        Ok((weight, Some(pack)))
    }
}

/// Builds a graph while tracking the activation shape.
struct Builder<'a> {
    plan: LayerPlan<'a>,
    shape: Vec<usize>,
    net: Net,
    /// Output shape of every node.
    shapes: Vec<Vec<usize>>,
    /// The input of the next node, when not the previous one.
    next_input: Option<usize>,
}

impl Builder<'_> {
    /// Makes the next node read node `i`'s output.
    fn from(&mut self, i: usize) {
        self.next_input = Some(i);
        self.shape = self.shapes[i].clone();
    }
    fn push(&mut self, node: Node, shape: Vec<usize>) -> usize {
        self.net.nodes.push(node);
        self.net.inputs.push(self.next_input.take());
        self.shapes.push(shape.clone());
        self.shape = shape;
        self.net.nodes.len() - 1
    }
    fn flatten(&mut self) -> usize {
        let n = self.shape.iter().product();
        self.push(Node::Flatten, vec![n])
    }
    fn linear(&mut self, name: &str, out: usize, is_head: bool) -> Result<usize> {
        let index = self.net.layers.len();
        let l = self.plan.layer(name, vec![out, self.shape[0]], index, is_head)?;
        self.net.layers.push(l);
        Ok(self.push(Node::Linear(index), vec![out]))
    }
    fn conv(&mut self, name: &str, out: usize, k: usize, stride: usize, padding: usize) -> Result<usize> {
        let [c, h, w] = [self.shape[0], self.shape[1], self.shape[2]];
        let index = self.net.layers.len();
        let l = self.plan.layer(name, vec![out, c, k, k], index, false)?;
        self.net.layers.push(l);
        let o = |n: usize| (n + 2 * padding).checked_sub(k).map(|span| span / stride + 1);
        let (Some(oh), Some(ow)) = (o(h), o(w)) else {
            return Err(Error::Config(format!(
                "{name}: a {k}×{k} kernel does not fit a {h}×{w} activation: the images are too small for this model"
            )));
        };
        Ok(self.push(
            Node::Conv {
                layer: index,
                stride,
                padding,
            },
            vec![out, oh, ow],
        ))
    }
    fn relu(&mut self) -> usize {
        let s = self.shape.clone();
        self.push(Node::Relu, s)
    }
    /// k×k pooling with stride k (`node` is `Node::MaxPool` or `Node::AvgPool`).
    fn pool(&mut self, node: fn(usize) -> Node, k: usize) -> Result<usize> {
        if self.shape[1] < k || self.shape[2] < k {
            return Err(Error::Config(format!(
                "{k}×{k} pooling does not fit a {}×{} activation: the images are too small",
                self.shape[1], self.shape[2]
            )));
        }
        let s = vec![self.shape[0], self.shape[1] / k, self.shape[2] / k];
        Ok(self.push(node(k), s))
    }
    fn norm(&mut self, name: &str) -> Result<usize> {
        let c = self.shape[0];
        let dev = self.plan.device;
        let init = self.plan.init;
        let loaded = |suffix: &str| -> Result<Option<Tensor>> {
            let key = format!("{name}.{suffix}");
            match init.and_then(|m| m.get(&key)) {
                Some(t) if t.dims() != [c] => Err(Error::Config(format!(
                    "--init-from: '{key}' is {:?}, the model needs [{c}]",
                    t.dims()
                ))),
                Some(t) => Ok(Some(t.to_dtype(DType::F32)?.to_device(dev)?)),
                None => Ok(None),
            }
        };
        let trains = self.plan.cfg.method.trains_weights();
        if !trains && init.is_some() && loaded("weight")?.is_some() {
            return Err(Error::Config(format!(
                "--init-from has an affine batch norm ('{name}.weight'), but {} keeps batch norms non-affine and would drop \
                 its scale and shift: start from a non-affine model, or use a method that trains weights",
                self.plan.cfg.method.id()
            )));
        }
        let affine = if trains {
            let g = loaded("weight")?.unwrap_or(Tensor::ones(c, DType::F32, dev)?);
            let b = loaded("bias")?.unwrap_or(Tensor::zeros(c, DType::F32, dev)?);
            Some((Var::from_tensor(&g)?, Var::from_tensor(&b)?))
        } else {
            None
        };
        self.net.norms.push(Norm {
            name: name.to_string(),
            channels: c,
            affine,
            running_mean: loaded("running_mean")?.unwrap_or(Tensor::zeros(c, DType::F32, dev)?),
            running_var: loaded("running_var")?.unwrap_or(Tensor::ones(c, DType::F32, dev)?),
            eps: 1e-5,
        });
        let s = self.shape.clone();
        Ok(self.push(Node::Norm(self.net.norms.len() - 1), s))
    }
    fn add(&mut self, a: usize, b: usize) -> usize {
        let s = self.shapes[a].clone();
        self.push(Node::Add(a, b), s)
    }
}

impl Net {
    /// Builds model `cfg.model` for `cfg.method` on inputs of shape `input`, loading weights from
    /// `init` when given (PyTorch-style names: `fc1.weight`, `conv1.weight`).
    pub fn build(
        cfg: &FitConfig,
        input: [usize; 3],
        classes: usize,
        init: Option<&HashMap<String, Tensor>>,
        device: &Device,
    ) -> Result<Self> {
        let id = ModelId::parse(&cfg.model)?;
        let mut b = Builder {
            plan: LayerPlan { cfg, init, device },
            shape: input.to_vec(),
            net: Net {
                id,
                input,
                normalize: normalization(input[0]),
                nodes: Vec::new(),
                inputs: Vec::new(),
                layers: Vec::new(),
                norms: Vec::new(),
            },
            shapes: Vec::new(),
            next_input: None,
        };
        match id {
            ModelId::Lenet300100 | ModelId::Fc10241024 => {
                let hidden: &[usize] = if id == ModelId::Lenet300100 {
                    &[300, 100]
                } else {
                    &[1024, 1024]
                };
                b.flatten();
                for (i, &h) in hidden.iter().enumerate() {
                    b.linear(&format!("fc{}", i + 1), h, false)?;
                    b.relu();
                }
                b.linear(&format!("fc{}", hidden.len() + 1), classes, true)?;
            }
            ModelId::Lenet5 => {
                b.conv("conv1", 6, 5, 1, 2)?;
                b.relu();
                b.pool(Node::MaxPool, 2)?;
                b.conv("conv2", 16, 5, 1, 0)?;
                b.relu();
                b.pool(Node::MaxPool, 2)?;
                b.flatten();
                b.linear("fc1", 120, false)?;
                b.relu();
                b.linear("fc2", 84, false)?;
                b.relu();
                b.linear("fc3", classes, true)?;
            }
            ModelId::Conv(depth) => {
                let mut k = 1;
                for width in [64usize, 128, 256].into_iter().take(depth / 2) {
                    for _ in 0..2 {
                        b.conv(&format!("conv{k}"), width, 3, 1, 1)?;
                        b.relu();
                        k += 1;
                    }
                    b.pool(Node::MaxPool, 2)?;
                }
                b.flatten();
                b.linear("fc1", 256, false)?;
                b.relu();
                b.linear("fc2", 256, false)?;
                b.relu();
                b.linear("fc3", classes, true)?;
            }
            ModelId::Resnet8 => {
                b.conv("conv1", 16, 3, 1, 1)?;
                b.norm("bn1")?;
                let mut x = b.relu();
                for (i, (width, stride)) in [(16usize, 1usize), (32, 2), (64, 2)].into_iter().enumerate() {
                    let p = format!("layer{}", i + 1);
                    let in_width = b.shape[0];
                    b.conv(&format!("{p}.conv1"), width, 3, stride, 1)?;
                    b.norm(&format!("{p}.bn1"))?;
                    b.relu();
                    b.conv(&format!("{p}.conv2"), width, 3, 1, 1)?;
                    let main = b.norm(&format!("{p}.bn2"))?;
                    let shortcut = if stride != 1 || in_width != width {
                        // The shortcut reads the block input, not the main path's output.
                        b.from(x);
                        b.conv(&format!("{p}.shortcut"), width, 1, stride, 0)?;
                        b.norm(&format!("{p}.shortcut_bn"))?
                    } else {
                        x
                    };
                    b.add(main, shortcut);
                    x = b.relu();
                }
                let k = b.shape[1];
                b.pool(Node::AvgPool, k)?;
                b.flatten();
                b.linear("fc", classes, true)?;
            }
        }
        Ok(b.net)
    }

    /// Logits for a batch `[N, C, H, W]`. `rule` binarises every masked layer; `train` switches
    /// batch norms to batch statistics (and updates their running statistics).
    pub fn forward(&mut self, x: &Tensor, rule: Binarize, train: bool) -> Result<Tensor> {
        self.forward_to(x, rule, train, self.nodes.len())
    }

    /// The features the last layer reads, `[N, F]`: the output of the node before the last
    /// linear layer, flattened (`train` as for [`Net::forward`]). What self-supervised networks
    /// are trained on and judged by.
    pub fn features(&mut self, x: &Tensor, rule: Binarize, train: bool) -> Result<Tensor> {
        let (_, last) = self.head()?;
        Ok(self.forward_to(x, rule, train, last)?.flatten_from(1)?)
    }

    /// Width of [`Net::features`]: the last linear layer's input.
    pub fn feature_width(&self) -> Result<usize> {
        let (layer, _) = self.head()?;
        Ok(self.layers[layer].matrix().1)
    }

    /// The last linear layer's index, and its node's.
    fn head(&self) -> Result<(usize, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, n)| match n {
                Node::Linear(l) => Some((*l, i)),
                _ => None,
            })
            .ok_or_else(|| Error::Config("the model has no linear layer".into()))
    }

    /// The output of node `end − 1` (the normalised input when `end` is 0).
    fn forward_to(&mut self, x: &Tensor, rule: Binarize, train: bool, end: usize) -> Result<Tensor> {
        let x = &self.normalized(x)?;
        if end == 0 {
            return Ok(x.clone());
        }
        let mut outs: Vec<Tensor> = Vec::with_capacity(end);
        for i in 0..end {
            let prev = match self.inputs[i] {
                Some(j) => &outs[j],
                None if i == 0 => x,
                None => &outs[i - 1],
            };
            let y = match self.nodes[i] {
                Node::Flatten => prev.flatten_from(1)?,
                Node::Linear(l) => prev.matmul(&self.layers[l].effective_weight(rule)?.t()?)?,
                Node::Conv { layer, stride, padding } => {
                    prev.conv2d(&self.layers[layer].effective_weight(rule)?, padding, stride, 1, 1)?
                }
                Node::Relu => prev.relu()?,
                Node::MaxPool(k) => prev.max_pool2d(k)?,
                Node::AvgPool(k) => prev.avg_pool2d(k)?,
                Node::Norm(n) => self.norms[n].forward(prev, train)?,
                Node::Add(a, b) => (&outs[a] + &outs[b])?,
            };
            outs.push(y);
        }
        outs.pop().ok_or_else(|| Error::Config("empty network".into()))
    }

    /// `(x − mean) / std` per channel.
    pub(crate) fn normalized(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.normalize.len();
        let dev = x.device();
        let mean = Tensor::from_vec(
            self.normalize.iter().map(|m| m.0).collect::<Vec<_>>(),
            (1, c, 1, 1),
            dev,
        )?;
        let std = Tensor::from_vec(
            self.normalize.iter().map(|m| m.1).collect::<Vec<_>>(),
            (1, c, 1, 1),
            dev,
        )?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// BinaryConnect's clip after each step: latent weights back into `[−scale, scale]`, so
    /// that a sign can always flip back within a few steps.
    pub fn clip_binary(&self) -> Result<()> {
        for l in &self.layers {
            if let (Some(scale), Some(v)) = (l.binary, &l.weight_var) {
                v.set(&v.as_tensor().clamp(-scale, scale)?)?;
            }
        }
        Ok(())
    }

    /// Every trainable variable, named.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for l in &self.layers {
            if let Some(v) = &l.weight_var {
                out.push((format!("{}.weight", l.name), v.clone()));
            }
            if let Some(s) = &l.scores {
                out.push((format!("{}.scores", l.name), s.clone()));
            }
        }
        for n in &self.norms {
            if let Some((g, b)) = &n.affine {
                out.push((format!("{}.weight", n.name), g.clone()));
                out.push((format!("{}.bias", n.name), b.clone()));
            }
        }
        out
    }

    /// Every tensor of the model, named (for checkpoints).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        for l in &self.layers {
            out.entry(format!("{}.weight", l.name))
                .or_insert_with(|| l.weight.clone());
        }
        for l in &self.layers {
            if let Some(p) = &l.pack {
                out.insert(format!("{}.owned", l.name), p.owned.clone());
                out.insert(format!("{}.base", l.name), p.base.clone());
                out.insert(format!("{}.claimed", l.name), p.claimed.clone());
            }
        }
        for n in &self.norms {
            out.insert(format!("{}.running_mean", n.name), n.running_mean.clone());
            out.insert(format!("{}.running_var", n.name), n.running_var.clone());
        }
        out
    }

    /// Restores tensors saved by [`Net::tensors`].
    pub fn load(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| Error::Config(format!("checkpoint has no tensor '{k}'")))
        };
        for l in &mut self.layers {
            let w = get(&format!("{}.weight", l.name))?;
            match &l.weight_var {
                Some(v) => v.set(w)?,
                // Checkpoints hold frozen weights as the run held them; the cast only guards
                // against a file that holds them otherwise.
                None => l.weight = w.to_dtype(l.weight.dtype())?,
            }
            if let Some(s) = &l.scores {
                s.set(get(&format!("{}.scores", l.name))?)?;
            }
            if let Some(p) = &mut l.pack {
                let dev = p.owned.device().clone();
                p.owned = get(&format!("{}.owned", l.name))?.to_device(&dev)?;
                p.base = get(&format!("{}.base", l.name))?.to_device(&dev)?;
                p.claimed = get(&format!("{}.claimed", l.name))?.to_device(&dev)?;
            }
        }
        for n in &mut self.norms {
            n.running_mean = get(&format!("{}.running_mean", n.name))?.clone();
            n.running_var = get(&format!("{}.running_var", n.name))?.clone();
            if let Some((g, b)) = &n.affine {
                g.set(get(&format!("{}.weight", n.name))?)?;
                b.set(get(&format!("{}.bias", n.name))?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_has_the_expected_shapes() {
        for (model, input, params) in [
            ("lenet-300-100", [1, 28, 28], 784 * 300 + 300 * 100 + 100 * 10),
            ("fc-1024-1024", [1, 28, 28], 784 * 1024 + 1024 * 1024 + 1024 * 10),
            (
                "lenet-5",
                [1, 28, 28],
                6 * 25 + 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10,
            ),
            (
                "conv-2",
                [3, 32, 32],
                64 * 27 + 64 * 64 * 9 + 16384 * 256 + 256 * 256 + 2560,
            ),
            (
                "conv-4",
                [1, 28, 28],
                64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9 + 128 * 49 * 256 + 256 * 256 + 2560,
            ),
            ("conv-6", [1, 28, 28], 0),
            ("resnet-8", [1, 28, 28], 0),
        ] {
            for method in [MethodKind::Dense, MethodKind::EdgePopup, MethodKind::Block] {
                let mut cfg = FitConfig::defaults(method);
                cfg.model = model.into();
                let mut net = Net::build(&cfg, input, 10, None, &Device::Cpu).unwrap();
                let n: usize = net.layers.iter().map(|l| l.dims.iter().product::<usize>()).sum();
                if params > 0 {
                    assert_eq!(n, params, "{model}");
                }
                let x = Tensor::zeros((2, input[0], input[1], input[2]), DType::F32, &Device::Cpu).unwrap();
                let y = net.forward(&x, Binarize::TopK { keep: 0.5, abs: true }, true).unwrap();
                assert_eq!(y.dims(), &[2, 10], "{model} {method:?}");
                assert!(!net.vars().is_empty());
                let trains_weights = net.vars().iter().any(|(k, _)| k.ends_with(".weight"));
                assert_eq!(trains_weights, method == MethodKind::Dense, "{model} {method:?}");
            }
        }
    }

    #[test]
    fn seeded_frozen_weights_are_the_generator_s() {
        let cfg = FitConfig::defaults(MethodKind::EdgePopup);
        let net = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
        let l = &net.layers[1];
        let init = l.seeded.unwrap();
        assert_eq!(init.stream, 1);
        let w = l.weight.to_vec2::<f32>().unwrap();
        let key = init.key();
        assert_eq!(w[7][33], init.value(key, 300, 7, 33));
        assert!(w.iter().flatten().all(|v| v.abs() == init.scale));
        assert!((init.scale - (2.0f32 / 300.0).sqrt()).abs() < 1e-7);
    }

    #[test]
    fn batch_norms_load_from_init_or_refuse_to_drop_them() {
        let dev = Device::Cpu;
        let mut cfg = FitConfig::defaults(MethodKind::Dense);
        cfg.model = "resnet-8".into();
        let fresh = Net::build(&cfg, [1, 28, 28], 10, None, &dev).unwrap();
        let mut init = fresh.tensors();
        init.insert("bn1.running_mean".into(), Tensor::new(&[0.5f32; 16], &dev).unwrap());
        init.insert("bn1.weight".into(), Tensor::new(&[2.0f32; 16], &dev).unwrap());
        let net = Net::build(&cfg, [1, 28, 28], 10, Some(&init), &dev).unwrap();
        assert_eq!(net.norms[0].running_mean.to_vec1::<f32>().unwrap(), [0.5; 16]);
        assert_eq!(
            net.norms[0]
                .affine
                .as_ref()
                .unwrap()
                .0
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap(),
            [2.0; 16]
        );
        let masked = FitConfig {
            method: MethodKind::EdgePopup,
            ..cfg.clone()
        };
        let e = Net::build(&masked, [1, 28, 28], 10, Some(&init), &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bn1.weight") && e.contains("non-affine"), "{e}");
        init.insert("bn1.running_var".into(), Tensor::new(&[1.0f32; 3], &dev).unwrap());
        let e = Net::build(&cfg, [1, 28, 28], 10, Some(&init), &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bn1.running_var"), "{e}");
    }

    #[test]
    fn inputs_too_small_for_a_model_are_refused() {
        let mut cfg = FitConfig::defaults(MethodKind::EdgePopup);
        cfg.model = "lenet-5".into();
        let e = Net::build(&cfg, [1, 8, 8], 10, None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small"), "{e}");
    }

    #[test]
    fn masked_weights_are_the_forward_pass_weights() {
        for method in [
            MethodKind::Dense,
            MethodKind::EdgePopup,
            MethodKind::Block,
            MethodKind::Piggyback,
            MethodKind::Dnw,
            MethodKind::Binary,
            MethodKind::Packnet,
        ] {
            for keep in [0.3, 1.0] {
                let cfg = FitConfig {
                    keep,
                    block: [4, 4],
                    ..FitConfig::defaults(method)
                };
                let net = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
                let rule = crate::train::rule_at(&cfg, 0, 0.0);
                for l in &net.layers {
                    let masked: Vec<f32> = l.masked_weight(rule).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                    let forward: Vec<f32> = l
                        .effective_weight(rule)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    for (a, b) in masked.iter().zip(&forward) {
                        // The straight-through sum `w + (±scale − w)` may round by an ulp.
                        assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-6), "{method:?} {keep}: {a} {b}");
                    }
                    if let Some(scale) = l.binary {
                        assert!(masked.iter().all(|&v| v == 0.0 || v.abs() == scale), "{method:?}");
                    } else {
                        assert_eq!(masked, forward, "{method:?} {keep}");
                    }
                }
            }
        }
    }

    #[test]
    fn binary_weights_are_signs_forward_and_straight_through_backward() {
        let cfg = FitConfig::defaults(MethodKind::Binary);
        let net = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
        let l = &net.layers[0];
        let scale = l.binary.unwrap();
        assert_eq!(scale, kaiming_std(784.0, RELU_GAIN));
        let rule = Binarize::TopK { keep: 1.0, abs: true };
        let w = l.effective_weight(rule).unwrap();
        let latent: Vec<f32> = l.weight_f32().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let eff: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in latent.iter().zip(&eff) {
            assert_eq!(*b, if *a >= 0.0 { scale } else { -scale });
        }
        // The gradient reaches the latent weights unchanged.
        let var = l.weight_var.as_ref().unwrap();
        let up = Tensor::rand(0f32, 1f32, w.shape(), &Device::Cpu).unwrap();
        let grads = (w * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, up.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // Kaiming-uniform latents reach past ±scale; the clip brings them back, signs kept.
        assert!(latent.iter().any(|v| v.abs() > scale));
        net.clip_binary().unwrap();
        let clipped: Vec<f32> = l.weight_f32().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in latent.iter().zip(&clipped) {
            assert!(b.abs() <= scale && (a >= &0.0) == (b >= &0.0));
        }
    }
}
