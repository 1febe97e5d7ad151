//! SupSup (Wortsman et al., 2020): one frozen seeded network, one learned mask per task, and
//! the network telling which task an input belongs to.
//!
//! A SupSup run directory holds the family's `config.toml`, a `metrics.jsonl` line per finished
//! task, and one ordinary run per task (`task-K/`, same seed, so the same frozen weights), each
//! with its own checkpoint: tasks train one after another, and an interrupted run resumes at
//! the task and epoch it reached.
//!
//! Task inference evaluates the mixture of every task's mask, `W ⊙ Σ_k α_k M_k` at `α_k = 1/T`.
//! The one-shot rule picks the task whose `α_k` most lowers the output entropy, the argmin of
//! `∂H/∂α_k`. That derivative is computed directly, by forward-mode differentiation: each
//! layer's output is linear in its weights, so the tangent of a product layer along `α_k` is
//! `(W ⊙ M_k)·h + W_mix·ḣ_k`, ReLU passes it where its input is positive, and at the logits
//! `∂H/∂z = −p ⊙ (log p + H)`. One forward pass per task, batched over images, each image's
//! answer its own.

use std::path::Path;

use candle_core::{Device, Tensor, D};

use crate::config::{FitConfig, MethodKind};
use crate::data::{Split, TaskFamily};
use crate::error::{Error, Result};
use crate::mask::{hard_mask, Binarize};
use crate::model::{Net, Node};
use crate::train::{self, load_split, EpochMetrics, FitOptions, Run};

/// The sub-run of task `k`.
pub fn task_dir(dir: &Path, k: usize) -> std::path::PathBuf {
    dir.join(format!("task-{k}"))
}

/// The family of a SupSup configuration.
pub fn family(cfg: &FitConfig) -> Result<TaskFamily> {
    cfg.task
        .as_deref()
        .ok_or_else(|| Error::Config("supsup needs --task".into()))?
        .parse()
        .map_err(Error::Config)
}

/// Task `k`'s own configuration: its data, and the epochs that make `batches_per_task` steps.
/// A PackNet task starts from the previous task's network, and needs two epochs at least (one
/// to train, one to retrain after its prune).
fn task_config(cfg: &FitConfig, dir: &Path, k: usize) -> Result<FitConfig> {
    let mut sub = FitConfig {
        task_index: k,
        ..cfg.clone()
    };
    let n = load_split(&sub, Split::Train)?.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size).max(1);
    let least = if cfg.method == MethodKind::Packnet { 2 } else { 1 };
    sub.epochs = ((cfg.batches_per_task as f64 / steps_per_epoch as f64).round() as usize).max(least);
    if cfg.method == MethodKind::Packnet && k > 0 {
        sub.init_from = Some(task_dir(dir, k - 1));
    }
    Ok(sub)
}

/// Trains every task of the family in turn (or continues), one metrics line per task.
pub fn fit_tasks(dir: &Path, cfg: FitConfig, opts: FitOptions) -> Result<Vec<EpochMetrics>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let config_path = dir.join("config.toml");
    let cfg = if opts.resume {
        Run::open(dir)?.cfg
    } else {
        if config_path.exists() {
            return Err(Error::Config(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                dir.display()
            )));
        }
        cfg
    };
    cfg.validate()?;
    // Each SupSup task keeps its own (non-affine) norm statistics, exported as a row per task.
    // PackNet's tasks would share one set of affine norms that every task retrains: refused
    // rather than exported wrong.
    let probe = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu);
    if cfg.method == MethodKind::Packnet && probe.is_ok_and(|n| !n.norms.is_empty()) {
        return Err(Error::Config(format!(
            "packnet does not support {} yet: its batch norms would be shared and retrained by every task; use lenet-300-100 or fc-1024-1024",
            cfg.model
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let text = toml::to_string(&cfg).map_err(|e| Error::Config(e.to_string()))?;
    smk_format::writer::write_atomic(&config_path, text.as_bytes()).map_err(io(&config_path))?;
    let tasks = family(&cfg)?.count();
    let mut lines = Vec::with_capacity(tasks);
    for k in 0..tasks {
        if opts.stop_after.is_some_and(|s| k >= s) {
            break;
        }
        let sub = task_config(&cfg, dir, k)?;
        let sub_dir = task_dir(dir, k);
        let done = sub_dir.join("config.toml").exists() && Run::open(&sub_dir)?.metrics()?.len() >= sub.epochs;
        let history = if done {
            Run::open(&sub_dir)?.metrics()?
        } else {
            let resume = sub_dir.join("checkpoint.safetensors").exists();
            let sub_opts = FitOptions {
                resume,
                stop_after: None,
                ..opts
            };
            train::fit_one(&sub_dir, sub, sub_opts)?
        };
        let last = history
            .last()
            .cloned()
            .ok_or_else(|| Error::data(&sub_dir, "a finished task without metrics"))?;
        if !opts.quiet {
            eprintln!(
                "task {}/{tasks}: test accuracy {:.2}% (task given), mask keeps {:.3}",
                k + 1,
                100.0 * last.test_accuracy,
                last.overall_density
            );
        }
        lines.push(EpochMetrics { epoch: k + 1, ..last });
    }
    let text: String = lines
        .iter()
        .map(|m| serde_json::to_string(m).unwrap_or_default() + "\n")
        .collect();
    let metrics = dir.join("metrics.jsonl");
    smk_format::writer::write_atomic(&metrics, text.as_bytes()).map_err(io(&metrics))?;
    Ok(lines)
}

/// Every finished task's network (the same frozen weights, each with its own scores), on
/// `device`, with the rule its masks were trained under. Stops at the first task that has not
/// finished its epochs: a PackNet task stopped before its prune still holds every free weight.
pub fn load_tasks(dir: &Path, device: &Device) -> Result<(Vec<Net>, Binarize)> {
    let run = Run::open(dir)?;
    let tasks = family(&run.cfg)?.count();
    let mut nets = Vec::with_capacity(tasks);
    let mut rule = train::rule_at(&run.cfg, 0, 0.0);
    for k in 0..tasks {
        let sub = task_dir(dir, k);
        if !sub.join("checkpoint.safetensors").exists() {
            break;
        }
        let task = Run::open(&sub)?;
        if task.metrics()?.len() < task.cfg.epochs {
            break;
        }
        let (net, _, r) = task.load_net(device)?;
        rule = r;
        nets.push(net);
    }
    if nets.is_empty() {
        return Err(Error::data(dir, "no task has finished training yet"));
    }
    Ok((nets, rule))
}

/// How task inference chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inference {
    /// The argmin of `∂H/∂α_k` at `α = 1/T`, from one image.
    OneShot,
    /// The task whose mask alone gives the lowest output entropy (the baseline).
    MinEntropy,
    /// SupSup's variant for many tasks: rounds of the one-shot rule, each over the mixture of
    /// the tasks still in the running, keeping the better half (`ceil(|S|/2)`) until one is left.
    BinarySearch,
}

/// Per image of `x` (`[N, C, H, W]`, pixels in [0, 1]): the inferred task and its score (lower
/// is more confident: the entropy gradient (of the last round, for the binary search), or the
/// entropy).
pub fn infer_tasks(nets: &[Net], rule: Binarize, x: &Tensor, how: Inference) -> Result<Vec<(usize, f32)>> {
    let rows: Vec<Vec<f32>> = match how {
        Inference::BinarySearch => {
            let per_task: Vec<Vec<Tensor>> = nets.iter().map(|n| masked_weights(n, rule)).collect::<Result<_>>()?;
            return binary_search(&nets[0], &per_task, x);
        }
        Inference::OneShot => entropy_gradients(nets, rule, x)?,
        Inference::MinEntropy => {
            let hs: Vec<Tensor> = nets
                .iter()
                .map(|n| entropy(&forward(n, &masked_weights(n, rule)?, x)?))
                .collect::<Result<_>>()?;
            Tensor::stack(&hs, 1)?.to_vec2()?
        }
    };
    // The lowest score; ties to the lower task.
    Ok(rows
        .into_iter()
        .map(|r| {
            let k = (0..r.len()).fold(0, |best, k| if r[k] < r[best] { k } else { best });
            (k, r[k])
        })
        .collect())
}

/// The weights each product layer uses under the task's mask, `W ⊙ M`, in layer order.
fn masked_weights(net: &Net, rule: Binarize) -> Result<Vec<Tensor>> {
    net.layers
        .iter()
        .map(|l| {
            let w = l.weight_f32()?;
            match (&l.scores, &l.pack) {
                (_, Some(p)) => p.effective(&w),
                (Some(s), None) => Ok(w.broadcast_mul(&l.to_weight_shape(hard_mask(s.as_tensor(), rule)?)?)?),
                (None, None) => Ok(w),
            }
        })
        .collect()
}

/// The input of node `i`: the node it reads, or the (normalised) input for the first.
fn source<'t>(net: &Net, outs: &'t [Tensor], x: &'t Tensor, i: usize) -> &'t Tensor {
    match input_node(net, i) {
        Some(j) => &outs[j],
        None => x,
    }
}

/// The node whose output node `i` reads (`None`: the graph's input).
fn input_node(net: &Net, i: usize) -> Option<usize> {
    net.inputs[i].or(i.checked_sub(1))
}

fn unsupported() -> Error {
    Error::Config(
        "task inference through a mixture of masks handles linear, conv, ReLU, average-pool and add layers; this model has \
         max pooling or norms"
            .into(),
    )
}

/// A product layer's output for input `h` with weights `w`.
fn product(node: Node, w: &Tensor, h: &Tensor) -> Result<Tensor> {
    Ok(match node {
        Node::Linear(_) => h.matmul(&w.t()?)?,
        Node::Conv { stride, padding, .. } => h.conv2d(w, padding, stride, 1, 1)?,
        _ => return Err(Error::Config(format!("{node:?} is not a product layer"))),
    })
}

/// The gradient with respect to a product layer's input (`input_dims`), from `g`, the gradient
/// with respect to its output, for weights `w`: the transposed product.
fn product_back(node: Node, w: &Tensor, g: &Tensor, input_dims: &[usize]) -> Result<Tensor> {
    let back = match node {
        Node::Linear(_) => g.matmul(w)?,
        Node::Conv { stride, padding, .. } => {
            // The rows a strided convolution skipped at the bottom come back as output padding.
            let covered = (g.dim(2)? - 1) * stride + w.dim(2)?;
            let output_padding = (input_dims[2] + 2 * padding).saturating_sub(covered);
            g.conv_transpose2d(w, padding, output_padding, stride, 1)?
        }
        _ => return Err(Error::Config(format!("{node:?} is not a product layer"))),
    };
    if back.dims() != input_dims {
        return Err(Error::Config(format!(
            "task inference: {node:?} maps {:?} back to {:?}, not its input {input_dims:?}",
            g.dims(),
            back.dims()
        )));
    }
    Ok(back)
}

/// A node that is not a product layer, on its input `h` (`outs`: earlier nodes' outputs).
fn pass(node: Node, h: &Tensor, outs: &[Tensor]) -> Result<Tensor> {
    Ok(match node {
        Node::Flatten => h.flatten_from(1)?,
        Node::Relu => h.relu()?,
        Node::AvgPool(k) => h.avg_pool2d(k)?,
        Node::Add(a, b) => (&outs[a] + &outs[b])?,
        Node::MaxPool(_) | Node::Norm(_) => return Err(unsupported()),
        Node::Linear(_) | Node::Conv { .. } => return Err(Error::Config(format!("{node:?} is a product layer"))),
    })
}

/// Logits of the net with these product weights.
fn forward(net: &Net, weights: &[Tensor], x: &Tensor) -> Result<Tensor> {
    let x = net.normalized(x)?;
    let mut outs: Vec<Tensor> = Vec::with_capacity(net.nodes.len());
    for (i, &node) in net.nodes.iter().enumerate() {
        let h = source(net, &outs, &x, i);
        let y = match node {
            Node::Linear(l) | Node::Conv { layer: l, .. } => product(node, &weights[l], h)?,
            _ => pass(node, h, &outs)?,
        };
        outs.push(y);
    }
    outs.pop().ok_or_else(|| Error::Config("empty network".into()))
}

/// Entropy of softmax(z) per row.
fn entropy(z: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(z, D::Minus1)?;
    Ok((logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?)
}

/// `values` as a column `[len, 1, …]` of rank `rank`, to scale the rows of a batch.
fn column(values: &[f32], rank: usize, device: &Device) -> Result<Tensor> {
    let mut dims = vec![1usize; rank];
    dims[0] = values.len();
    Ok(Tensor::from_slice(values, dims.as_slice(), device)?)
}

/// `grads[j] += g`.
fn accumulate(grads: &mut [Option<Tensor>], j: usize, g: Tensor) -> Result<()> {
    grads[j] = Some(match grads[j].take() {
        Some(sum) => (sum + g)?,
        None => g,
    });
    Ok(())
}

/// One task's images in a batch: which rows hold it in their set, and its weight (`1/|S_i|`)
/// in each of those rows' mixtures.
struct Members {
    task: usize,
    rows: Vec<u32>,
    index: Tensor,
    weights: Vec<f32>,
}

/// Per image `i` of `x`, `∂H_i/∂α_k` for every task (`[N][T]`; only the tasks of `sets[i]`
/// are meaningful), at the mixture of masks that weighs image i's tasks `sets[i]` equally and
/// the others not at all. `per_task[k]` holds task k's product weights `W ⊙ M_k`.
///
/// Reverse mode, with every image in one pass however the sets differ: each masked layer runs
/// each task's weights on the rows whose set holds it and sums them weighted into the mixture's
/// output; the backward pass returns through the same products, and `∂H/∂α_k` is the sum over
/// masked layers of the output gradient dotted with task k's product.
fn set_gradients(net: &Net, per_task: &[Vec<Tensor>], sets: &[Vec<usize>], x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let dev = x.device();
    let (n, t) = (x.dim(0)?, per_task.len());
    let mut rows: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); t];
    for (i, set) in sets.iter().enumerate() {
        for &k in set {
            rows[k].0.push(i as u32);
            rows[k].1.push(1.0 / set.len() as f32);
        }
    }
    let members: Vec<Members> = rows
        .into_iter()
        .enumerate()
        .filter(|(_, (r, _))| !r.is_empty())
        .map(|(task, (rows, weights))| {
            Ok(Members {
                task,
                index: Tensor::new(rows.as_slice(), dev)?,
                rows,
                weights,
            })
        })
        .collect::<Result<_>>()?;
    let moves = |node: Node| match node {
        Node::Linear(l) | Node::Conv { layer: l, .. } => net.layers[l].scores.is_some() || net.layers[l].pack.is_some(),
        _ => false,
    };
    let nodes = &net.nodes;
    let x = net.normalized(x)?;

    // Forward, keeping each masked layer's per-task products for the backward pass.
    let mut outs: Vec<Tensor> = Vec::with_capacity(nodes.len());
    let mut products: Vec<Vec<Tensor>> = vec![Vec::new(); nodes.len()];
    for (i, &node) in nodes.iter().enumerate() {
        let h = source(net, &outs, &x, i);
        let y = match node {
            Node::Linear(l) | Node::Conv { layer: l, .. } if moves(node) => {
                let mut z: Option<Tensor> = None;
                for m in &members {
                    let p = product(node, &per_task[m.task][l], &h.index_select(&m.index, 0)?)?;
                    let share = p.broadcast_mul(&column(&m.weights, p.rank(), dev)?)?;
                    let sum = match z.take() {
                        Some(z) => z,
                        None => {
                            let mut dims = p.dims().to_vec();
                            dims[0] = n;
                            Tensor::zeros(dims.as_slice(), p.dtype(), dev)?
                        }
                    };
                    z = Some(sum.index_add(&m.index, &share, 0)?);
                    products[i].push(p);
                }
                z.ok_or_else(|| Error::Config("task inference needs a task per image".into()))?
            }
            Node::Linear(l) | Node::Conv { layer: l, .. } => product(node, &per_task[0][l], h)?,
            _ => pass(node, h, &outs)?,
        };
        outs.push(y);
    }

    // ∂H/∂z = −p (log p + H) at the logits, then backward.
    let z = outs.last().ok_or_else(|| Error::Config("empty network".into()))?;
    let logp = candle_nn::ops::log_softmax(z, D::Minus1)?;
    let p = logp.exp()?;
    let h = (&p * &logp)?.sum_keepdim(D::Minus1)?.neg()?;
    let mut grads: Vec<Option<Tensor>> = vec![None; nodes.len()];
    grads[nodes.len() - 1] = Some((p * logp.broadcast_add(&h)?)?.neg()?);
    // Nothing before the first masked layer depends on α: the backward pass stops there.
    let first = nodes.iter().position(|&nd| moves(nd)).unwrap_or(nodes.len());
    let mut out = vec![vec![0f32; t]; n];
    for i in (first..nodes.len()).rev() {
        let Some(g) = grads[i].take() else { continue };
        let h = source(net, &outs, &x, i);
        let onward = input_node(net, i).filter(|&j| j >= first);
        let back = match nodes[i] {
            node @ (Node::Linear(l) | Node::Conv { layer: l, .. }) if moves(node) => {
                let mut back: Option<Tensor> = None;
                for (m, p) in members.iter().zip(&products[i]) {
                    let gm = g.index_select(&m.index, 0)?;
                    let direct: Vec<f32> = (&gm * p)?.flatten_from(1)?.sum(1)?.to_vec1()?;
                    for (&r, d) in m.rows.iter().zip(direct) {
                        out[r as usize][m.task] += d;
                    }
                    if onward.is_some() {
                        let mut rows_dims = h.dims().to_vec();
                        rows_dims[0] = m.rows.len();
                        let gh = product_back(node, &per_task[m.task][l], &gm, &rows_dims)?;
                        let gh = gh.broadcast_mul(&column(&m.weights, gh.rank(), dev)?)?;
                        back = Some(match back.take() {
                            Some(b) => b.index_add(&m.index, &gh, 0)?,
                            None => h.zeros_like()?.index_add(&m.index, &gh, 0)?,
                        });
                    }
                }
                back
            }
            node @ (Node::Linear(l) | Node::Conv { layer: l, .. }) => match onward {
                Some(_) => Some(product_back(node, &per_task[0][l], &g, h.dims())?),
                None => None,
            },
            Node::Flatten => Some(g.reshape(h.dims())?),
            Node::Relu => Some((g * h.gt(0f64)?.to_dtype(h.dtype())?)?),
            Node::AvgPool(k) => {
                let (ho, wo) = (g.dim(2)?, g.dim(3)?);
                let up = (g.upsample_nearest2d(ho * k, wo * k)? / (k * k) as f64)?;
                // Rows and columns the pooling dropped get no gradient.
                let up = up.pad_with_zeros(2, 0, h.dim(2)? - ho * k)?;
                Some(up.pad_with_zeros(3, 0, h.dim(3)? - wo * k)?)
            }
            Node::Add(a, b) => {
                for j in [a, b].into_iter().filter(|&j| j >= first) {
                    accumulate(&mut grads, j, g.clone())?;
                }
                None
            }
            Node::MaxPool(_) | Node::Norm(_) => return Err(unsupported()),
        };
        if let (Some(j), Some(back)) = (onward, back) {
            accumulate(&mut grads, j, back)?;
        }
    }
    Ok(out)
}

/// `[N][T]`: `∂H/∂α_k` per image at `α = 1/T`.
fn entropy_gradients(nets: &[Net], rule: Binarize, x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let per_task: Vec<Vec<Tensor>> = nets.iter().map(|n| masked_weights(n, rule)).collect::<Result<_>>()?;
    let all: Vec<usize> = (0..nets.len()).collect();
    set_gradients(&nets[0], &per_task, &vec![all; x.dim(0)?], x)
}

/// The binary search per image, every image in each round together. Returns each image's task
/// and its score in the last round.
fn binary_search(net: &Net, per_task: &[Vec<Tensor>], x: &Tensor) -> Result<Vec<(usize, f32)>> {
    let n = x.dim(0)?;
    let mut remaining: Vec<Vec<usize>> = vec![(0..per_task.len()).collect(); n];
    let mut last = vec![0f32; n];
    loop {
        let open: Vec<u32> = (0..n as u32).filter(|&i| remaining[i as usize].len() > 1).collect();
        if open.is_empty() {
            break;
        }
        let xs = x.index_select(&Tensor::new(open.as_slice(), x.device())?, 0)?;
        let sets: Vec<Vec<usize>> = open.iter().map(|&i| remaining[i as usize].clone()).collect();
        let g = set_gradients(net, per_task, &sets, &xs)?;
        for ((row, set), &image) in g.iter().zip(sets).zip(&open) {
            let mut order: Vec<usize> = (0..set.len()).collect();
            order.sort_by(|&a, &b| row[set[a]].total_cmp(&row[set[b]]).then(a.cmp(&b)));
            order.truncate(set.len().div_ceil(2));
            last[image as usize] = row[set[order[0]]];
            order.sort_unstable();
            remaining[image as usize] = order.into_iter().map(|j| set[j]).collect();
        }
    }
    Ok(remaining
        .into_iter()
        .zip(last)
        .map(|(s, score)| (s[0], score))
        .collect())
}

/// Task-given and task-inferred results on every task's test split.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// Tasks evaluated.
    pub tasks: usize,
    /// Mean test accuracy with each image's own task's mask.
    pub task_given_accuracy: f64,
    /// Fraction of test images whose task the one-shot rule names (absent for models it does
    /// not handle: norms, max pooling).
    pub one_shot_task_accuracy: Option<f64>,
    /// Test accuracy with the mask of the one-shot rule's task.
    pub one_shot_accuracy: Option<f64>,
    /// The same two for the minimum-entropy baseline.
    pub min_entropy_task_accuracy: f64,
    /// Test accuracy with the minimum-entropy task's mask.
    pub min_entropy_accuracy: f64,
    /// The same two for the binary search.
    pub binary_search_task_accuracy: Option<f64>,
    /// Test accuracy with the binary search's task's mask.
    pub binary_search_accuracy: Option<f64>,
    /// Per task: (task given, one-shot task right, one-shot accuracy); the last two 0 where
    /// the one-shot rule does not apply.
    pub per_task: Vec<(f64, f64, f64)>,
}

/// Evaluates a SupSup run: each task's test split with its own mask, and with the tasks the
/// one-shot rule and the minimum-entropy rule infer from each image alone. `limit` caps the
/// images per task.
pub fn evaluate(dir: &Path, limit: Option<usize>, device: &Device) -> Result<Report> {
    let run = Run::open(dir)?;
    let (mut nets, rule) = load_tasks(dir, device)?;
    let t = nets.len();
    // The gradient rules run every task's mask through one forward pass: chains of products,
    // ReLU and average pooling (no norms, whose statistics are per task, and no max pooling).
    let gradients = nets[0]
        .nodes
        .iter()
        .all(|n| !matches!(n, Node::MaxPool(_) | Node::Norm(_)));
    let weights: Vec<Vec<Tensor>> = nets.iter().map(|n| masked_weights(n, rule)).collect::<Result<_>>()?;
    let (mut given, mut shot_task, mut shot_acc, mut ent_task, mut ent_acc, mut images) = (0.0, 0.0, 0.0, 0.0, 0.0, 0);
    let (mut bin_task, mut bin_acc) = (0.0, 0.0);
    let mut per_task = Vec::with_capacity(t);
    for k in 0..t {
        let test = load_split(
            &FitConfig {
                task_index: k,
                ..run.cfg.clone()
            },
            Split::Test,
        )?;
        let n = limit.unwrap_or(usize::MAX).min(test.len());
        let (mut g, mut st, mut sa) = (0usize, 0usize, 0usize);
        for start in (0..n).step_by(500) {
            let idx: Vec<usize> = (start..(start + 500).min(n)).collect();
            let (x, y) = train::batch(&test, &idx, device)?;
            let labels: Vec<u32> = y.to_vec1()?;
            // Every task's own network (its mask, and its norms' statistics): predictions
            // [T][N], and the output entropies the minimum-entropy rule compares.
            let mut preds: Vec<Vec<u32>> = Vec::with_capacity(t);
            let mut entropies: Vec<Tensor> = Vec::with_capacity(t);
            for net in nets.iter_mut() {
                let z = net.forward(&x, rule, false)?;
                preds.push(z.argmax(D::Minus1)?.to_vec1()?);
                entropies.push(entropy(&z)?);
            }
            let ent: Vec<u32> = Tensor::stack(&entropies, 1)?.argmin(D::Minus1)?.to_vec1()?;
            let (shot, bin) = if gradients {
                (
                    Some(infer_tasks(&nets, rule, &x, Inference::OneShot)?),
                    Some(binary_search(&nets[0], &weights, &x)?),
                )
            } else {
                (None, None)
            };
            for (b, &label) in labels.iter().enumerate() {
                g += (preds[k][b] == label) as usize;
                let e = ent[b] as usize;
                ent_task += (e == k) as usize as f64;
                ent_acc += (preds[e][b] == label) as usize as f64;
                if let (Some(shot), Some(bin)) = (&shot, &bin) {
                    st += (shot[b].0 == k) as usize;
                    sa += (preds[shot[b].0][b] == label) as usize;
                    bin_task += (bin[b].0 == k) as usize as f64;
                    bin_acc += (preds[bin[b].0][b] == label) as usize as f64;
                }
            }
        }
        images += n;
        given += g as f64 / n as f64;
        shot_task += st as f64;
        shot_acc += sa as f64;
        per_task.push((g as f64 / n as f64, st as f64 / n as f64, sa as f64 / n as f64));
    }
    let images = images.max(1) as f64;
    let rate = |v: f64| gradients.then_some(v / images);
    Ok(Report {
        tasks: t,
        task_given_accuracy: given / t as f64,
        one_shot_task_accuracy: rate(shot_task),
        one_shot_accuracy: rate(shot_acc),
        min_entropy_task_accuracy: ent_task / images,
        min_entropy_accuracy: ent_acc / images,
        binary_search_task_accuracy: rate(bin_task),
        binary_search_accuracy: rate(bin_acc),
        per_task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MethodKind;
    use crate::model::Net;
    use crate::rng::Rng;

    /// Three "tasks" over one seeded LeNet-300-100: the same frozen weights, random scores.
    fn tasks(seed: u64) -> (Vec<Net>, Binarize) {
        tasks_of("lenet-300-100", seed)
    }

    /// Three "tasks" over `model`, seeded, with random scores each; norms become ReLUs (the
    /// gradient rules take no norms), so that a ResNet-8 gives strided and 1×1 convolutions,
    /// average pooling and residual sums.
    fn tasks_of(model: &str, seed: u64) -> (Vec<Net>, Binarize) {
        let cfg = FitConfig {
            model: model.into(),
            outputs: Some(10),
            ..FitConfig::defaults(MethodKind::Supsup)
        };
        let nets = (0..3)
            .map(|k| {
                let mut net = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
                for node in net.nodes.iter_mut() {
                    if matches!(node, Node::Norm(_)) {
                        *node = Node::Relu;
                    }
                }
                let mut rng = Rng::new(seed + k, 9);
                for l in &net.layers {
                    let s = l.scores.as_ref().unwrap();
                    let v: Vec<f32> = (0..s.elem_count()).map(|_| rng.symmetric(1.0)).collect();
                    s.set(&Tensor::from_vec(v, s.shape(), &Device::Cpu).unwrap()).unwrap();
                }
                net
            })
            .collect();
        (nets, Binarize::Threshold(0.0))
    }

    fn images(n: usize, seed: u64) -> Tensor {
        let mut rng = Rng::new(seed, 3);
        let v: Vec<f32> = (0..n * 784).map(|_| rng.symmetric(0.5) + 0.5).collect();
        Tensor::from_vec(v, (n, 1, 28, 28), &Device::Cpu).unwrap()
    }

    /// H at mixture weights `alpha`, per image.
    fn entropy_at(nets: &[Net], rule: Binarize, alpha: &[f64], x: &Tensor) -> Vec<f64> {
        let per: Vec<Vec<Tensor>> = nets.iter().map(|n| masked_weights(n, rule).unwrap()).collect();
        let mix: Vec<Tensor> = (0..per[0].len())
            .map(|l| {
                let mut s = (&per[0][l] * alpha[0]).unwrap();
                for (k, w) in per.iter().enumerate().skip(1) {
                    s = (s + (&w[l] * alpha[k]).unwrap()).unwrap();
                }
                s
            })
            .collect();
        let h = entropy(&forward(&nets[0], &mix, x).unwrap()).unwrap();
        h.to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_one_shot_gradient_is_the_derivative_of_the_entropy() {
        for (nets, rule) in [tasks(1), tasks_of("resnet-8", 1)] {
            one_shot_gradients_match_central_differences(&nets, rule);
        }
    }

    fn one_shot_gradients_match_central_differences(nets: &[Net], rule: Binarize) {
        let x = images(4, 2);
        let g: Vec<Vec<f32>> = entropy_gradients(nets, rule, &x).unwrap();
        // Small enough that few ReLUs change sides, large enough for f32 entropies.
        let eps = 2e-3;
        for k in 0..3 {
            let mut up = vec![1.0 / 3.0; 3];
            let mut down = up.clone();
            up[k] += eps;
            down[k] -= eps;
            let (hu, hd) = (entropy_at(nets, rule, &up, &x), entropy_at(nets, rule, &down, &x));
            for b in 0..4 {
                let numeric = (hu[b] - hd[b]) / (2.0 * eps);
                let analytic = g[b][k] as f64;
                assert!(
                    (numeric - analytic).abs() <= 1e-2 * numeric.abs().max(1e-2),
                    "image {b} task {k}: forward mode {analytic}, central difference {numeric}"
                );
            }
        }
    }

    /// The binary search against rounds spelled out by hand: per image, central differences of
    /// the entropy at the uniform mixture over the tasks left, the better half kept.
    #[test]
    fn binary_search_halves_by_the_subset_gradient() {
        let (mut nets, rule) = tasks(11);
        nets.extend(tasks(21).0);
        nets.truncate(5);
        let x = images(6, 8);
        let got = infer_tasks(&nets, rule, &x, Inference::BinarySearch).unwrap();
        let eps = 2e-3;
        let mut checked = 0;
        for (b, &(task, _)) in got.iter().enumerate() {
            let xb = x.narrow(0, b, 1).unwrap();
            let mut left: Vec<usize> = (0..5).collect();
            let mut clear = true;
            while left.len() > 1 {
                let mut g: Vec<(f64, usize)> = left
                    .iter()
                    .map(|&k| {
                        let mut up = vec![0.0; 5];
                        for &j in &left {
                            up[j] = 1.0 / left.len() as f64;
                        }
                        let mut down = up.clone();
                        up[k] += eps;
                        down[k] -= eps;
                        let d = entropy_at(&nets, rule, &up, &xb)[0] - entropy_at(&nets, rule, &down, &xb)[0];
                        (d / (2.0 * eps), k)
                    })
                    .collect();
                g.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let keep = left.len().div_ceil(2);
                // Skip images where the halving is a near tie: f32 forward mode and f64-free
                // differences may order them either way.
                if (g[keep].0 - g[keep - 1].0).abs() < 1e-2 * g[keep].0.abs().max(1e-3) {
                    clear = false;
                    break;
                }
                left = g[..keep].iter().map(|p| p.1).collect();
                left.sort_unstable();
            }
            if clear {
                assert_eq!(task, left[0], "image {b}");
                checked += 1;
            }
        }
        assert!(checked >= 4, "only {checked} of 6 images had clear rounds");
        // Two tasks: one round over the full set, which is the one-shot rule.
        let two = &nets[..2];
        let a = infer_tasks(two, rule, &x, Inference::BinarySearch).unwrap();
        let o = infer_tasks(two, rule, &x, Inference::OneShot).unwrap();
        assert_eq!(a, o);
    }

    #[test]
    fn inference_is_per_image_and_min_entropy_is_the_minimum() {
        let (nets, rule) = tasks(5);
        let x = images(6, 7);
        let all = infer_tasks(&nets, rule, &x, Inference::OneShot).unwrap();
        for (b, batched) in all.iter().enumerate() {
            let one = infer_tasks(&nets, rule, &x.narrow(0, b, 1).unwrap(), Inference::OneShot).unwrap();
            assert_eq!(one[0].0, batched.0, "image {b}: alone and in a batch");
        }
        let ent = infer_tasks(&nets, rule, &x, Inference::MinEntropy).unwrap();
        for (b, &(k, h)) in ent.iter().enumerate() {
            let hs: Vec<f64> = (0..3)
                .map(|t| {
                    let mut a = vec![0.0; 3];
                    a[t] = 1.0;
                    entropy_at(&nets, rule, &a, &x)[b]
                })
                .collect();
            let min = hs.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(
                (hs[k] - min).abs() < 1e-6 && (h as f64 - min).abs() < 1e-4,
                "image {b}: {hs:?} vs {k}"
            );
        }
    }
}
