//! Training, evaluation and checkpoints.
//!
//! A run directory holds `config.toml` (the resolved configuration), `checkpoint.safetensors`
//! (model, optimizer state and progress, replaced atomically after every epoch, so an
//! interruption at any moment leaves the last finished epoch usable) and `metrics.jsonl` (one
//! JSON object per epoch).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use serde::Serialize;

use crate::config::{FitConfig, MethodKind, Objective, Schedule};
use crate::data::{self, Dataset, Split, TaskFamily};
use crate::dino::Dino;
use crate::error::{Error, Result};
use crate::mask::Binarize;
use crate::model::Net;
use crate::optim::{cosine_lr, Hyper, Optimizer};
use crate::parallel::{self, Reducer};
use crate::rng::{stream, Rng};

/// Version of the JSON written to `metrics.jsonl` and by `eval --json`.
pub const SCHEMA: u32 = 1;
const CHECKPOINT: &str = "checkpoint.safetensors";
const CONFIG: &str = "config.toml";
const METRICS: &str = "metrics.jsonl";
/// Steps between reads of the running training loss and accuracy. Each read waits for the
/// device to finish every queued step (a sync on CUDA), so reading every step kept the GPU
/// idle while the host queued the next one. Every 50 steps a diverged loss still stops the run
/// within 50 steps, and the progress bar still moves about once a second or more often.
const READ_EVERY: usize = 50;

/// The device named by `spec`: `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse)
                .map_err(|_| Error::Config(format!("bad device '{s}'")))?;
            cuda_device(ordinal)
        }
        _ => Err(Error::Config(format!("unknown device '{spec}' (cpu, cuda or cuda:N)"))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    // candle's error carries a backtrace; one line that says what is missing serves better.
    Device::new_cuda(ordinal).map_err(|e| {
        let why = e.to_string();
        // The stub driver has no error strings: drop cudarc's note that it could not get one.
        let why = why
            .lines()
            .next()
            .unwrap_or_default()
            .replace(", \"<Failure when calling cuGetErrorString()>\"", "");
        let hint = if why.contains("NO_DEVICE") {
            "no GPU answers: is the NVIDIA driver loaded, and the stub libcuda of scripts/cuda-toolkit.sh off LD_LIBRARY_PATH?"
        } else {
            "the CUDA driver refused it"
        };
        Error::Config(format!("cannot open CUDA device {ordinal}: {hint} ({why})"))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_: usize) -> Result<Device> {
    Err(Error::Config(
        "this trainer was built without CUDA: rebuild with `cargo build --release -p smk-trainer --features cuda`"
            .into(),
    ))
}

/// The data split a configuration trains or tests on (its task applied).
pub fn load_split(cfg: &FitConfig, split: Split) -> Result<Dataset> {
    let ds = data::load(cfg.data_kind, &cfg.data, split)?;
    let ds = match &cfg.task {
        Some(t) => t
            .parse::<TaskFamily>()
            .map_err(Error::Config)?
            .task(&ds, cfg.task_index, cfg.seed)?,
        None => ds,
    };
    if ds.is_empty() {
        let which = if split == Split::Train { "training" } else { "test" };
        return Err(Error::data(
            &cfg.data,
            format!("the {which} split holds no examples (for this task)"),
        ));
    }
    Ok(ds)
}
/// Output units of a model for `ds`: at least 10, so that models for the tasks of a split
/// (whose labels are renumbered from 0) share one head shape and transfer between tasks.
pub fn outputs(cfg: &FitConfig, ds: &Dataset) -> usize {
    ds.classes.max(10).max(cfg.outputs.unwrap_or(0))
}

/// Loads `--init-from`: a safetensors file, or a run directory's checkpoint.
pub fn load_init(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = if path.is_dir() {
        path.join(CHECKPOINT)
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        return Err(Error::data(&file, "not found"));
    }
    candle_core::safetensors::load(&file, &Device::Cpu)
        .map_err(|e| Error::data(&file, format!("cannot read safetensors: {e}")))
}

/// Stacks examples `idx` into `([B, C, H, W] f32, [B] u32)`.
pub fn batch(ds: &Dataset, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(idx.len() * ds.image_len());
    for &i in idx {
        x.extend_from_slice(ds.image(i));
    }
    let [c, h, w] = ds.shape;
    let x = Tensor::from_vec(x, (idx.len(), c, h, w), device)?;
    let y = Tensor::from_vec(
        idx.iter().map(|&i| ds.labels[i]).collect::<Vec<u32>>(),
        idx.len(),
        device,
    )?;
    Ok((x, y))
}

/// How the method binarises scores at a point of training.
pub fn rule_at(cfg: &FitConfig, epoch: usize, progress: f64) -> Binarize {
    match cfg.method {
        // PackNet's masks are its layers' ownership, not a rule over scores.
        MethodKind::Dense | MethodKind::Packnet => Binarize::TopK { keep: 1.0, abs: true },
        MethodKind::Piggyback => Binarize::Threshold(cfg.threshold),
        MethodKind::EdgePopup | MethodKind::Block | MethodKind::Dnw | MethodKind::Binary => Binarize::TopK {
            keep: cfg.keep,
            abs: true,
        },
        MethodKind::MovementHard => Binarize::TopK {
            keep: cfg.keep_at(epoch, progress),
            abs: false,
        },
        MethodKind::MovementSoft => Binarize::Sigmoid(cfg.threshold_at(epoch, progress)),
        MethodKind::Supsup if cfg.keep >= 1.0 => Binarize::Threshold(0.0),
        MethodKind::Supsup => Binarize::TopK {
            keep: cfg.keep,
            abs: true,
        },
    }
}

/// Accuracy and loss over a data set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Examples.
    pub examples: usize,
    /// Per class: `(correct, total)`.
    pub per_class: Vec<(usize, usize)>,
}

/// Evaluates `net` on `ds` with `rule`.
pub fn evaluate(net: &mut Net, ds: &Dataset, rule: Binarize, device: &Device) -> Result<Evaluation> {
    let mut loss = 0.0;
    let mut per_class = vec![(0usize, 0usize); ds.classes];
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(1000) {
        let (x, y) = batch(ds, chunk, device)?;
        let logits = net.forward(&x, rule, false)?;
        loss += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        for (&i, p) in chunk.iter().zip(pred) {
            let l = ds.labels[i] as usize;
            per_class[l].1 += 1;
            per_class[l].0 += (p as usize == l) as usize;
        }
    }
    let correct: usize = per_class.iter().map(|c| c.0).sum();
    let n = ds.len().max(1);
    Ok(Evaluation {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        examples: ds.len(),
        per_class,
    })
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// Schema version.
    pub schema: u32,
    /// Epoch, from 1.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (masks as they were at each step).
    pub train_accuracy: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy, a fraction.
    pub test_accuracy: f64,
    /// Fraction of weights kept, per layer, after the epoch.
    pub density: Vec<(String, f64)>,
    /// Fraction kept over all masked weights.
    pub overall_density: f64,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
}

/// Per-layer and overall density under `rule`.
pub fn densities(net: &Net, rule: Binarize) -> Result<(Vec<(String, f64)>, f64)> {
    let mut per = Vec::new();
    let (mut kept, mut total) = (0.0, 0.0);
    for l in &net.layers {
        let d = l.density(rule)?;
        let n = l.dims.iter().product::<usize>() as f64;
        kept += d * n;
        total += n;
        per.push((l.name.clone(), d));
    }
    Ok((per, kept / total.max(1.0)))
}

/// A run directory.
#[derive(Debug)]
pub struct Run {
    /// Where it lives.
    pub dir: PathBuf,
    /// Its configuration.
    pub cfg: FitConfig,
}

impl Run {
    /// Opens an existing run.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let cfg = toml::from_str(&text).map_err(|e| Error::data(&path, e.to_string()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
        })
    }

    /// Rebuilds the network from the checkpoint, with the test split and the rule the network
    /// had when the checkpoint was taken (a stopped movement run is not at its final density).
    pub fn load_net(&self, device: &Device) -> Result<(Net, Dataset, Binarize)> {
        let test = load_split(&self.cfg, Split::Test)?;
        let file = self.dir.join(CHECKPOINT);
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| Error::data(&file, format!("cannot read checkpoint: {e}")))?;
        let mut net = Net::build(&self.cfg, test.shape, outputs(&self.cfg, &test), Some(&tensors), device)?;
        net.load(&tensors)?;
        restore_seeded(&mut net, &self.cfg, test.shape, outputs(&self.cfg, &test))?;
        let epochs = checkpoint_epoch(&tensors, &file)?;
        Ok((net, test, rule_at(&self.cfg, epochs, 0.0)))
    }

    /// Every metrics line so far.
    pub fn metrics(&self) -> Result<Vec<EpochMetrics>> {
        let path = self.dir.join(METRICS);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str(l) {
                Ok(m) => out.push(m),
                // A line cut short by a crash mid-append: its epoch is recomputed on resume.
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => return Err(Error::data(&path, format!("line {}: {e}", i + 1))),
            }
        }
        Ok(out)
    }
}

/// Epochs a checkpoint holds.
fn checkpoint_epoch(tensors: &HashMap<String, Tensor>, file: &Path) -> Result<usize> {
    let t = tensors
        .get("state.epoch")
        .ok_or_else(|| Error::data(file, "checkpoint has no state.epoch"))?;
    let v: Vec<u32> = t.flatten_all()?.to_vec1()?;
    v.first()
        .map(|&e| e as usize)
        .ok_or_else(|| Error::data(file, "checkpoint's state.epoch is empty"))
}

/// Loading a checkpoint through `init` marks weights as loaded; frozen seeded weights keep their
/// generator description so export can still store only the seed.
fn restore_seeded(net: &mut Net, cfg: &FitConfig, input: [usize; 3], classes: usize) -> Result<()> {
    if cfg.init_from.is_some() {
        return Ok(());
    }
    let fresh = Net::build(cfg, input, classes, None, &Device::Cpu)?;
    for (l, f) in net.layers.iter_mut().zip(fresh.layers) {
        l.seeded = f.seeded;
    }
    Ok(())
}

fn atomic_save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| Error::Io { path, source }
    };
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| Error::data(&tmp, e.to_string()))?;
    // On disk before the rename, so a power cut leaves the old checkpoint or the new, whole.
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Options of a `fit` call that are not part of the run's configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct FitOptions {
    /// Continue the run in `dir` from its checkpoint.
    pub resume: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Stop after this many epochs of this call (for tests of resume).
    pub stop_after: Option<usize>,
    /// Print where each epoch's time went.
    pub profile: bool,
}

/// Seconds an epoch spent in each phase (`trainer fit --profile`). On the CPU every candle op
/// finishes before it returns, so wall-clock time per phase is exact.
#[derive(Clone, Copy, Debug, Default)]
struct Profile {
    data: f64,
    forward: f64,
    backward: f64,
    step: f64,
    host: f64,
    eval: f64,
    checkpoint: f64,
}

impl Profile {
    fn report(&self, epoch: usize, total: f64) -> String {
        let parts = [
            ("data", self.data),
            ("forward (with masks)", self.forward),
            ("backward", self.backward),
            ("optimizer step", self.step),
            ("host reads (loss, accuracy)", self.host),
            ("evaluation", self.eval),
            ("checkpoint", self.checkpoint),
        ];
        let other = total - parts.iter().map(|p| p.1).sum::<f64>();
        let mut s = format!("profile epoch {epoch}: {total:.3} s");
        for (name, t) in parts.into_iter().chain([("other", other)]) {
            s += &format!("\n  {name:<28} {t:>8.3} s  {:>5.1}%", 100.0 * t / total.max(1e-9));
        }
        s
    }
}

/// One data-parallel replica: its net, optimizer and teacher on its device.
struct Replica {
    net: Net,
    opt: Optimizer,
    teacher: Option<(Net, Binarize)>,
    /// DINO's teacher and centre (`--objective dino`).
    dino: Option<Dino>,
    /// The net's variables, in the same order on every replica.
    vars: Vec<Var>,
    device: Device,
}

/// Trains a run in `dir` (or continues it), returning every epoch's metrics (for SupSup and
/// PackNet, one line per task: [`crate::supsup`]).
pub fn fit(dir: &Path, cfg: FitConfig, opts: FitOptions) -> Result<Vec<EpochMetrics>> {
    let sequence = if opts.resume {
        Run::open(dir).is_ok_and(|r| r.cfg.method.is_sequence())
    } else {
        cfg.method.is_sequence()
    };
    if sequence {
        crate::supsup::fit_tasks(dir, cfg, opts)
    } else {
        fit_one(dir, cfg, opts)
    }
}

/// Trains one run (one task) in `dir`, or continues it.
pub fn fit_one(dir: &Path, cfg: FitConfig, opts: FitOptions) -> Result<Vec<EpochMetrics>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ckpt_path = dir.join(CHECKPOINT);
    let cfg = if opts.resume {
        let saved = Run::open(dir)?.cfg;
        if !ckpt_path.exists() {
            return Err(Error::data(&ckpt_path, "no checkpoint to resume from"));
        }
        let epochs = cfg.epochs.max(saved.epochs);
        let scheduled = saved.schedule == Schedule::Cosine
            || matches!(saved.method, MethodKind::MovementHard | MethodKind::MovementSoft);
        if epochs != saved.epochs && scheduled {
            return Err(Error::Config(format!(
                "--epochs {epochs} would change this run's schedule (planned over {} epochs) midway: \
                 start a new run instead",
                saved.epochs
            )));
        }
        FitConfig { epochs, ..saved }
    } else {
        if ckpt_path.exists() {
            return Err(Error::Config(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                dir.display()
            )));
        }
        cfg
    };
    cfg.validate()?;
    smk_format::writer::write_atomic(
        dir.join(CONFIG),
        toml::to_string(&cfg)
            .map_err(|e| Error::Config(e.to_string()))?
            .as_bytes(),
    )
    .map_err(io(&dir.join(CONFIG)))?;

    // One replica per device (`--devices`), else one on `--device`; the first is the one that
    // evaluates, checkpoints and reports.
    let devices: Vec<Device> = if cfg.devices.is_empty() {
        vec![device(&cfg.device)?]
    } else {
        cfg.devices.iter().map(|d| device(d)).collect::<Result<_>>()?
    };
    let device = devices[0].clone();
    let reducer = Reducer::new(&devices, !cfg.devices.is_empty())?;
    let train = load_split(&cfg, Split::Train)?;
    let test = load_split(&cfg, Split::Test)?;
    let init = cfg.init_from.as_deref().map(load_init).transpose()?;
    let hyper = Hyper {
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        ..Hyper::default()
    };
    let mut start = 0;
    let mut replicas = Vec::with_capacity(devices.len());
    for dev in &devices {
        // Built from the same seed (or file) on every device: the same initial replica.
        let mut net = Net::build(&cfg, train.shape, outputs(&cfg, &train), init.as_ref(), dev)?;
        let mut dino = if cfg.objective == Objective::Dino {
            let teacher = Net::build(&cfg, train.shape, outputs(&cfg, &train), init.as_ref(), dev)?;
            Some(Dino::new(&net, teacher, cfg.seed, dev)?)
        } else {
            None
        };
        let mut trained = net.vars();
        trained.extend(dino.iter().flat_map(Dino::vars));
        let mut opt = Optimizer::new(cfg.optimizer, hyper, trained);
        if opts.resume {
            let saved =
                candle_core::safetensors::load(&ckpt_path, dev).map_err(|e| Error::data(&ckpt_path, e.to_string()))?;
            net.load(&saved)?;
            opt.load_state(&saved)?;
            if let Some(d) = &mut dino {
                d.load(&saved)?;
            }
            start = checkpoint_epoch(&saved, &ckpt_path)?;
        }
        let teacher = match &cfg.teacher {
            Some(t) => {
                let (net, _, rule) = Run::open(t)?.load_net(dev)?;
                Some((net, rule))
            }
            None => None,
        };
        let mut vars: Vec<Var> = net.vars().into_iter().map(|(_, v)| v).collect();
        vars.extend(dino.iter().flat_map(Dino::vars).map(|(_, v)| v));
        replicas.push(Replica {
            net,
            opt,
            dino,
            teacher,
            vars,
            device: dev.clone(),
        });
    }
    let ranks = replicas.len();

    // Keep only the metrics of finished, checkpointed epochs.
    let metrics_path = dir.join(METRICS);
    let mut history: Vec<EpochMetrics> = Run {
        dir: dir.to_path_buf(),
        cfg: cfg.clone(),
    }
    .metrics()?
    .into_iter()
    .filter(|m| m.epoch <= start)
    .collect();
    let text: String = history
        .iter()
        .map(|m| serde_json::to_string(m).unwrap_or_default() + "\n")
        .collect();
    smk_format::writer::write_atomic(&metrics_path, text.as_bytes()).map_err(io(&metrics_path))?;

    let n = train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let mut new = Vec::new();
    for epoch in start..cfg.epochs {
        if opts.stop_after.is_some_and(|s| new.len() >= s) {
            break;
        }
        let t0 = Instant::now();
        if cfg.method == MethodKind::Packnet && epoch == crate::packnet::prune_epoch(&cfg) {
            let share = crate::packnet::share(&cfg)?;
            for rep in &mut replicas {
                crate::packnet::prune(&mut rep.net, share)?;
            }
        }
        let lr = match cfg.schedule {
            Schedule::Cosine => cosine_lr(cfg.lr, epoch, cfg.epochs),
            Schedule::Constant => cfg.lr,
        };
        let order = Rng::new(cfg.seed, stream::SHUFFLE + epoch as u64).permutation(n);
        let bar = progress_bar(steps_per_epoch as u64, epoch, cfg.epochs, opts.quiet);
        // Σ loss·batch in f64 (as the host summed it before, so the metric is unchanged) and
        // the count of correct predictions, kept on each replica's device between reads.
        let mut loss_sum_t = Vec::with_capacity(ranks);
        let mut correct_t = Vec::with_capacity(ranks);
        for r in &replicas {
            loss_sum_t.push(Tensor::zeros((), DType::F64, &r.device)?);
            correct_t.push(Tensor::zeros((), DType::U32, &r.device)?);
        }
        let mut loss_sum = 0.0;
        let mut prof = Profile::default();
        let mut clock = Instant::now();
        let mut lap = |slot: &mut f64| {
            let now = Instant::now();
            *slot += (now - clock).as_secs_f64();
            clock = now;
        };
        for (b, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let rule = rule_at(&cfg, epoch, b as f64 / steps_per_epoch as f64);
            let mut grads = Vec::with_capacity(ranks);
            for (r, rep) in replicas.iter_mut().enumerate() {
                let part = &chunk[parallel::shard(chunk.len(), r, ranks)];
                if part.is_empty() {
                    // A last batch smaller than the replicas: this one adds nothing.
                    let zero = (rep.vars[0].as_tensor().sum_all()? * 0.0)?;
                    grads.push(zero.backward()?);
                    continue;
                }
                if let Some(d) = &mut rep.dino {
                    let step = (epoch * steps_per_epoch + b) as u64;
                    let mut rng = Rng::new(cfg.seed, stream::CROPS + step);
                    let views = crate::dino::views(&train, part, cfg.local_crops, &mut rng, &rep.device)?;
                    lap(&mut prof.data);
                    let (loss, agree) = d.loss(&mut rep.net, &views, part.len(), rule)?;
                    lap(&mut prof.forward);
                    grads.push(loss.backward()?);
                    lap(&mut prof.backward);
                    loss_sum_t[r] = (&loss_sum_t[r] + (loss.detach().to_dtype(DType::F64)? * part.len() as f64)?)?;
                    let hits = (agree * part.len() as f64)?.round()?.to_dtype(DType::U32)?;
                    correct_t[r] = (&correct_t[r] + hits)?;
                    continue;
                }
                let (x, y) = batch(&train, part, &rep.device)?;
                lap(&mut prof.data);
                let logits = rep.net.forward(&x, rule, true)?;
                let mut loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                if let Some((t, teacher_rule)) = &mut rep.teacher {
                    let zt = t.forward(&x, *teacher_rule, false)?.detach();
                    loss = distill(&logits, &zt, &loss, cfg.alpha, cfg.temperature)?;
                }
                if cfg.method == MethodKind::MovementSoft && cfg.lambda != 0.0 {
                    loss = (loss + (soft_penalty(&rep.net)? * cfg.lambda)?)?;
                }
                lap(&mut prof.forward);
                // Each replica's share of the batch mean, so that the summed gradients are the
                // whole batch's (one replica: the loss itself, bit for bit).
                let share = if ranks == 1 {
                    loss.clone()
                } else {
                    (&loss * (part.len() as f64 / chunk.len() as f64))?
                };
                grads.push(share.backward()?);
                lap(&mut prof.backward);
                // Detached: the running sums must not hold on to every step's graph.
                loss_sum_t[r] = (&loss_sum_t[r] + (loss.detach().to_dtype(DType::F64)? * part.len() as f64)?)?;
                let hits = logits.detach().argmax(D::Minus1)?.eq(&y)?;
                correct_t[r] = (&correct_t[r] + hits.to_dtype(DType::U32)?.sum_all()?)?;
            }
            let vars: Vec<Vec<Var>> = replicas.iter().map(|r| r.vars.clone()).collect();
            reducer.sum(&vars, &mut grads)?;
            for (rep, g) in replicas.iter_mut().zip(&grads) {
                rep.opt.step(g, lr)?;
                rep.net.clip_binary()?;
                if let Some(d) = &mut rep.dino {
                    let step = (epoch * steps_per_epoch + b + 1) as u64;
                    d.follow(&rep.net, Dino::momentum(step, (cfg.epochs * steps_per_epoch) as u64))?;
                }
            }
            lap(&mut prof.step);
            bar.inc(1);
            if (b + 1) % READ_EVERY == 0 || b + 1 == steps_per_epoch {
                loss_sum = 0.0;
                for t in &loss_sum_t {
                    loss_sum += t.to_scalar::<f64>()?;
                }
                // One non-finite step makes the sum non-finite (finite f32 losses cannot
                // overflow an f64 sum).
                let l = loss_sum / ((b + 1) * cfg.batch_size).min(n) as f64;
                if !l.is_finite() {
                    return Err(Error::Config(format!(
                        "loss became {l} at epoch {}: lower --lr",
                        epoch + 1
                    )));
                }
                bar.set_message(format!("loss {l:.4}"));
            }
            lap(&mut prof.host);
        }
        bar.finish_and_clear();
        let mut correct = 0usize;
        for t in &correct_t {
            correct += t.to_scalar::<u32>()? as usize;
        }
        let Replica { net, opt, dino, .. } = &mut replicas[0];
        let rule = rule_at(&cfg, epoch + 1, 0.0);
        let eval = match dino {
            // No labels in training; the teacher's features, judged by k-NN on the labels.
            Some(d) => Evaluation {
                loss: 0.0,
                accuracy: crate::dino::knn_accuracy(&mut d.teacher, &train, &test, rule, &device)?,
                examples: test.len(),
                per_class: Vec::new(),
            },
            None => evaluate(net, &test, rule, &device)?,
        };
        let (density, overall_density) = densities(net, rule)?;
        lap(&mut prof.eval);
        let m = EpochMetrics {
            schema: SCHEMA,
            epoch: epoch + 1,
            step: opt.steps(),
            lr,
            train_loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            density,
            overall_density,
            seconds: t0.elapsed().as_secs_f64(),
        };
        // The metrics line first, then the checkpoint: a crash between leaves a line for an
        // epoch the checkpoint does not hold, which resume drops and recomputes.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&metrics_path)
            .map_err(io(&metrics_path))?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(&m).map_err(|e| Error::Config(e.to_string()))?
        )
        .map_err(io(&metrics_path))?;
        drop(f);
        let mut tensors = net.tensors();
        tensors.extend(opt.state_tensors()?);
        if let Some(d) = dino {
            tensors.extend(d.tensors());
        }
        tensors.insert("state.epoch".into(), Tensor::new(&[(epoch + 1) as u32], &device)?);
        atomic_save(&tensors, &ckpt_path)?;
        lap(&mut prof.checkpoint);
        if opts.profile {
            eprintln!("{}", prof.report(epoch + 1, t0.elapsed().as_secs_f64()));
        }
        if !opts.quiet {
            eprintln!(
                "epoch {:>3}/{}  loss {:.4}  train {:.2}%  test {:.2}%  kept {:.3}  {:.1}s",
                m.epoch,
                cfg.epochs,
                m.train_loss,
                100.0 * m.train_accuracy,
                100.0 * m.test_accuracy,
                m.overall_density,
                m.seconds
            );
        }
        new.push(m);
    }
    history.extend(new);
    Ok(history)
}

/// `α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α)·CE`, KL averaged over the batch.
pub fn distill(student: &Tensor, teacher: &Tensor, ce: &Tensor, alpha: f64, temperature: f64) -> Result<Tensor> {
    let log_ps = candle_nn::ops::log_softmax(&(student / temperature)?, D::Minus1)?;
    let log_pt = candle_nn::ops::log_softmax(&(teacher / temperature)?, D::Minus1)?;
    let kl = (log_pt.exp()? * (&log_pt - &log_ps)?)?.sum(D::Minus1)?.mean_all()?;
    Ok(((kl * (alpha * temperature * temperature))? + (ce * (1.0 - alpha))?)?)
}

/// Movement-soft's penalty: the mean of sigmoid(scores) over all masked weights.
fn soft_penalty(net: &Net) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut count = 0usize;
    for l in &net.layers {
        if let Some(s) = &l.scores {
            let p = candle_nn::ops::sigmoid(s.as_tensor())?.sum_all()?;
            count += s.elem_count();
            total = Some(match total {
                Some(t) => (t + p)?,
                None => p,
            });
        }
    }
    match total {
        Some(t) => Ok((t / count as f64)?),
        None => Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?),
    }
}

fn progress_bar(len: u64, epoch: usize, epochs: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}
