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
    let scores = match how {
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
            Tensor::stack(&hs, 1)?
        }
    };
    let best: Vec<u32> = scores.argmin(D::Minus1)?.to_vec1()?;
    let rows: Vec<Vec<f32>> = scores.to_vec2()?;
    Ok(best
        .into_iter()
        .zip(rows)
        .map(|(k, r)| (k as usize, r[k as usize]))
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

/// Logits of the net with these product weights (inference: norms use running statistics).
fn forward(net: &Net, weights: &[Tensor], x: &Tensor) -> Result<Tensor> {
    Ok(forward_tangents(net, weights, &[], x)?.0)
}

/// Logits with the product weights `mix`, and their tangents along each of `dirs` (the
/// product weights of one task each): `Σ` over product layers of the tangent rule above.
fn forward_tangents(net: &Net, mix: &[Tensor], dirs: &[&[Tensor]], x: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
    let x = net.normalized(x)?;
    let mut outs: Vec<(Tensor, Option<Vec<Tensor>>)> = Vec::with_capacity(net.nodes.len());
    for i in 0..net.nodes.len() {
        let (h, dh) = match net.inputs[i] {
            Some(j) => (outs[j].0.clone(), outs[j].1.clone()),
            None if i == 0 => (x.clone(), None),
            None => (outs[i - 1].0.clone(), outs[i - 1].1.clone()),
        };
        let product = |w: &Tensor, v: &Tensor, node: &Node| -> Result<Tensor> {
            Ok(match *node {
                Node::Linear(_) => v.matmul(&w.t()?)?,
                Node::Conv { stride, padding, .. } => v.conv2d(w, padding, stride, 1, 1)?,
                _ => unreachable!("products only"),
            })
        };
        let node = &net.nodes[i];
        let out = match *node {
            Node::Flatten => (h.flatten_from(1)?, map(dh, |t| Ok(t.flatten_from(1)?))?),
            Node::Linear(l) | Node::Conv { layer: l, .. } => {
                let z = product(&mix[l], &h, node)?;
                let dz = if dirs.is_empty() {
                    None
                } else {
                    let mut ts = Vec::with_capacity(dirs.len());
                    for (k, d) in dirs.iter().enumerate() {
                        // Only masked layers move with α; an unmasked one has no `W ⊙ M_k` term.
                        let own = if net.layers[l].scores.is_some() || net.layers[l].pack.is_some() {
                            Some(product(&d[l], &h, node)?)
                        } else {
                            None
                        };
                        let carried = match &dh {
                            Some(v) => Some(product(&mix[l], &v[k], node)?),
                            None => None,
                        };
                        ts.push(match (own, carried) {
                            (Some(a), Some(b)) => (a + b)?,
                            (Some(a), None) | (None, Some(a)) => a,
                            (None, None) => z.zeros_like()?,
                        });
                    }
                    Some(ts)
                };
                (z, dz)
            }
            Node::Relu => {
                let gate = h.gt(0f64)?.to_dtype(h.dtype())?;
                (h.relu()?, map(dh, |t| Ok((t * &gate)?))?)
            }
            Node::AvgPool(k) => (h.avg_pool2d(k)?, map(dh, |t| Ok(t.avg_pool2d(k)?))?),
            Node::Add(a, b) => {
                let sum = (&outs[a].0 + &outs[b].0)?;
                let d = match (&outs[a].1, &outs[b].1) {
                    (Some(p), Some(q)) => Some(p.iter().zip(q).map(|(p, q)| Ok((p + q)?)).collect::<Result<_>>()?),
                    (Some(p), None) | (None, Some(p)) => Some(p.clone()),
                    (None, None) => None,
                };
                (sum, d)
            }
            Node::MaxPool(_) | Node::Norm(_) => {
                return Err(Error::Config(
                    "task inference handles linear, conv, ReLU, average-pool and add layers; this model has max pooling or norms".into(),
                ))
            }
        };
        outs.push(out);
    }
    let (z, dz) = outs.pop().ok_or_else(|| Error::Config("empty network".into()))?;
    let dz = match dz {
        Some(d) => d,
        None => dirs
            .iter()
            .map(|_| z.zeros_like())
            .collect::<candle_core::Result<_>>()?,
    };
    Ok((z, dz))
}

fn map(v: Option<Vec<Tensor>>, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Option<Vec<Tensor>>> {
    v.map(|ts| ts.iter().map(&f).collect()).transpose()
}

/// Entropy of softmax(z) per row.
fn entropy(z: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(z, D::Minus1)?;
    Ok((logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?)
}

/// `[N, T]`: `∂H/∂α_k` per image at `α = 1/T`.
fn entropy_gradients(nets: &[Net], rule: Binarize, x: &Tensor) -> Result<Tensor> {
    let per_task: Vec<Vec<Tensor>> = nets.iter().map(|n| masked_weights(n, rule)).collect::<Result<_>>()?;
    let all: Vec<&[Tensor]> = per_task.iter().map(Vec::as_slice).collect();
    subset_gradients(&nets[0], &all, x)
}

/// `[N, |S|]`: `∂H/∂α_k` per image for the tasks `S` whose product weights are given, at the
/// uniform mixture over `S` alone.
fn subset_gradients(net: &Net, per_task: &[&[Tensor]], x: &Tensor) -> Result<Tensor> {
    let t = per_task.len();
    let layers = per_task[0].len();
    let mut mix = Vec::with_capacity(layers);
    for l in 0..layers {
        let mut sum = per_task[0][l].clone();
        for w in &per_task[1..] {
            sum = (sum + &w[l])?;
        }
        mix.push((sum / t as f64)?);
    }
    let (z, dz) = forward_tangents(net, &mix, per_task, x)?;
    let logp = candle_nn::ops::log_softmax(&z, D::Minus1)?;
    let p = logp.exp()?;
    let h = (&p * &logp)?.sum_keepdim(D::Minus1)?.neg()?;
    // ∂H/∂z_j = −p_j (log p_j + H)
    let dh_dz = (p * logp.broadcast_add(&h)?)?.neg()?;
    let cols: Vec<Tensor> = dz
        .iter()
        .map(|d| Ok((&dh_dz * d)?.sum(D::Minus1)?))
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&cols, 1)?)
}

/// The binary search per image: images whose remaining tasks agree go through each round
/// together. Returns each image's task and its score in the last round.
fn binary_search(net: &Net, per_task: &[Vec<Tensor>], x: &Tensor) -> Result<Vec<(usize, f32)>> {
    let n = x.dim(0)?;
    let mut remaining: Vec<Vec<usize>> = vec![(0..per_task.len()).collect(); n];
    let mut last = vec![0f32; n];
    loop {
        let mut groups: std::collections::BTreeMap<Vec<usize>, Vec<u32>> = Default::default();
        for (i, s) in remaining.iter().enumerate() {
            if s.len() > 1 {
                groups.entry(s.clone()).or_default().push(i as u32);
            }
        }
        if groups.is_empty() {
            break;
        }
        for (set, images) in groups {
            let xs = x.index_select(&Tensor::new(images.as_slice(), x.device())?, 0)?;
            let dirs: Vec<&[Tensor]> = set.iter().map(|&k| per_task[k].as_slice()).collect();
            let g: Vec<Vec<f32>> = subset_gradients(net, &dirs, &xs)?.to_vec2()?;
            for (row, &image) in g.iter().zip(&images) {
                let mut order: Vec<usize> = (0..set.len()).collect();
                order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
                order.truncate(set.len().div_ceil(2));
                last[image as usize] = row[order[0]];
                order.sort_unstable();
                remaining[image as usize] = order.into_iter().map(|j| set[j]).collect();
            }
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
        let cfg = FitConfig {
            outputs: Some(10),
            ..FitConfig::defaults(MethodKind::Supsup)
        };
        let nets = (0..3)
            .map(|k| {
                let net = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
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
        let (nets, rule) = tasks(1);
        let x = images(4, 2);
        let g: Vec<Vec<f32>> = entropy_gradients(&nets, rule, &x).unwrap().to_vec2().unwrap();
        // Small enough that few ReLUs change sides, large enough for f32 entropies.
        let eps = 2e-3;
        for k in 0..3 {
            let mut up = vec![1.0 / 3.0; 3];
            let mut down = up.clone();
            up[k] += eps;
            down[k] -= eps;
            let (hu, hd) = (entropy_at(&nets, rule, &up, &x), entropy_at(&nets, rule, &down, &x));
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
