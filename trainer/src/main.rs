//! The `trainer` command: fit, eval and export supermasks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use smk_trainer::config::{FitConfig, FrozenDtype, MethodKind, Schedule, WeightInit};
use smk_trainer::data::{DataKind, Split, TaskFamily};
use smk_trainer::export::{ExportFormat, ExportOptions, WeightsDtype};
use smk_trainer::optim::OptimizerKind;
use smk_trainer::train::{self, FitOptions, Run};
use smk_trainer::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "Learn supermasks over frozen weights, and export them to .smk"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a run: masks (and, for some methods, weights) on a data set.
    Fit(Box<FitArgs>),
    /// One run per --keep value plus a dense run: results.csv and a plot (sweep.svg, sweep.png).
    Sweep(Box<FitArgs>),
    /// Evaluate a run's checkpoint on the test split.
    Eval {
        /// The run directory.
        run: PathBuf,
        /// Data directory (default: the one the run trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        /// k-NN accuracy of the features before the last layer (20 neighbours among the
        /// training images, cosine similarity), as self-supervised networks are judged. DINO
        /// runs report it by default (of their teacher).
        #[arg(long)]
        knn: bool,
        /// With --knn: the run's frozen weights under the scores it started from (random
        /// masks), the baseline for self-supervised masks.
        #[arg(long, requires = "knn")]
        random_masks: bool,
        /// supsup and packnet runs: evaluate at most N images of each task's test split (the
        /// first N), for a quicker look at many tasks.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Write each task of a family (permuted:N, rotated:N, split:N) as IDX files, so that any
    /// tool (`runtime eval` among them) can be evaluated per task: task-K-images-idx3-ubyte.gz
    /// and task-K-labels-idx1-ubyte.gz, K from 0.
    Data {
        /// The task family: permuted:N, rotated:N or split:N.
        #[arg(long)]
        task: String,
        /// Data directory (default: the bundled MNIST digits).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Its format.
        #[arg(long, value_enum, default_value = "mnist")]
        data_kind: DataKind,
        /// Which split.
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        /// The permutations' seed: the --seed of the runs to evaluate.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a run's model and masks as one .smk file, or (--format safetensors|onnx) the masked
    /// dense model it computes, for PyTorch, ONNX Runtime and other tools.
    Export {
        /// The run directory.
        run: PathBuf,
        /// The file to write (atomically).
        #[arg(long)]
        out: PathBuf,
        /// What to write: the .smk file, or the masked dense model (every layer's W ⊙ mask in
        /// f32) as safetensors under PyTorch names (fc1.weight, layer1.conv1.weight,
        /// bn1.running_mean; `fit --init-from` loads it) or as an ONNX graph.
        #[arg(long, value_enum, default_value = "smk")]
        format: ExportFormat,
        /// Precision of stored (non-seeded) weights in a .smk file (default f32); safetensors
        /// and ONNX are always f32.
        #[arg(long, value_enum)]
        weights_dtype: Option<WeightsDtype>,
        /// supsup and packnet runs, with --format safetensors or onnx: which task's masked model
        /// to write, from 0 (required there; a .smk file holds every task).
        #[arg(long)]
        task: Option<usize>,
    },
}

/// Every flag of `fit`. Unset flags fall back to the `--config` file, then to the method's
/// defaults (`trainer fit --method M --help` lists them).
#[derive(Args, Debug, Default, Clone)]
struct FitArgs {
    /// Model: lenet-300-100, fc-1024-1024, lenet-5, conv-2, conv-4, conv-6, resnet-8.
    #[arg(long)]
    model: Option<String>,
    /// Method.
    #[arg(long, value_enum)]
    method: Option<MethodKind>,
    /// Fraction of weights kept per layer (top-k methods; packnet: by the whole family, split
    /// equally among its tasks); `sweep` takes a list: 0.05,0.1,0.5.
    #[arg(long, conflicts_with = "sparsity", value_delimiter = ',')]
    keep: Vec<f64>,
    /// Fraction of weights removed per layer (= 1 − keep); `sweep` takes a list.
    #[arg(long, value_delimiter = ',')]
    sparsity: Vec<f64>,
    /// Block shape for `block`, as RxC (e.g. 4x4, 16x16).
    #[arg(long, value_parser = parse_block)]
    block: Option<[usize; 2]>,
    /// Rule of seeded weights (frozen for edge-popup and block; the initial weights otherwise).
    #[arg(long, value_enum, conflicts_with = "init_from")]
    weights: Option<WeightInit>,
    /// Scale the signed constant by fan-in × keep (edge-popup's "scale fan").
    #[arg(long)]
    scale_fan: bool,
    /// Start from weights in a safetensors file (PyTorch-style names: fc1.weight, conv1.weight) or a run directory.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Data directory (default: the bundled 8,000 MNIST digits in data/).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Data format.
    #[arg(long, value_enum)]
    data_kind: Option<DataKind>,
    /// Task family: permuted:N, rotated:N or split:N.
    #[arg(long)]
    task: Option<String>,
    /// Which task of the family, from 0 (supsup and packnet train them all).
    #[arg(long)]
    task_index: Option<usize>,
    /// Output units, at least the data's classes (supsup: 100, the paper's superfluous
    /// outputs that task inference relies on).
    #[arg(long)]
    outputs: Option<usize>,
    /// supsup, packnet: training steps per task (default 1000; the epochs follow from it;
    /// packnet prunes halfway and retrains).
    #[arg(long)]
    batches_per_task: Option<usize>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Examples per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Optimizer.
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// SGD momentum.
    #[arg(long)]
    momentum: Option<f64>,
    /// L2 weight decay (applies to scores too).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Seed of every random draw: the same seed gives the same run on the CPU.
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Data parallel over several GPUs: `0,1,2,3` (ordinals; `cuda:N` and, to try the path
    /// without a GPU, `cpu` also work). Each step's batch is split across them and the
    /// gradients summed with NCCL (a trainer built with `--features nccl`), so the run
    /// matches one device's up to rounding. Overrides --device.
    #[arg(long)]
    devices: Option<String>,
    /// Piggyback's mask threshold; movement-soft's final sigmoid threshold.
    #[arg(long)]
    threshold: Option<f32>,
    /// Initial real-valued mask / score value (piggyback, movement).
    #[arg(long)]
    mask_init: Option<f32>,
    /// Movement-soft's L1 penalty on sigmoid(scores).
    #[arg(long)]
    lambda: Option<f64>,
    /// Movement pruning: dense epochs before the cubic schedule.
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Movement pruning: epochs at the final density after it.
    #[arg(long)]
    cooldown_epochs: Option<usize>,
    /// A dense run to distil from.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Weight of the distillation loss.
    #[arg(long)]
    alpha: Option<f64>,
    /// Distillation temperature.
    #[arg(long)]
    temperature: Option<f64>,
    /// Piggyback: train the last layer (unmasked) as well.
    #[arg(long)]
    train_head: bool,
    /// Precision of frozen weights on the device (default f32): bf16 or f16 halve their memory
    /// between steps. The forward pass widens them to f32 (exactly); scores, masks, activations
    /// and gradients stay f32. Only frozen layers change: dense and movement pruning train every
    /// weight and refuse anything but f32, and piggyback's head under --train-head stays f32.
    /// Seeded weights still export as their seed: the runtime draws them in f32, within bf16/f16
    /// rounding of what training used. (The precision written to the .smk file is
    /// `export --weights-dtype`.)
    #[arg(long, value_enum)]
    dtype: Option<FrozenDtype>,
    /// supervised (labels), or dino: self-supervised masks (edge-popup or block scores trained
    /// by DINO self-distillation between crops, with an EMA teacher; no labels; the epoch's
    /// test accuracy is then the k-NN accuracy of the teacher's features; --outputs default 256).
    #[arg(long, value_enum)]
    objective: Option<smk_trainer::config::Objective>,
    /// With --objective dino: local crops per image (40–80% of the digit) that the student
    /// also matches to the teacher's answer on the two global crops. Default 0: on the bundled
    /// digits, local crops lowered the k-NN accuracy (docs/CONTINUAL.md).
    #[arg(long, value_name = "N")]
    local_crops: Option<usize>,
    /// TOML file of settings (the keys of config.toml in a run directory); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run directory to create (or continue, with --resume); for `sweep`, the directory of runs.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// After each epoch, print where its time went: data, forward, backward, optimizer step,
    /// masks, host reads, evaluation, checkpoint.
    #[arg(long)]
    profile: bool,
}

/// `1 − sparsity`, rounded to 12 decimals so that `--sparsity 0.8` records `keep = 0.2`.
fn keep_of(sparsity: f64) -> f64 {
    ((1.0 - sparsity) * 1e12).round() / 1e12
}

fn parse_block(s: &str) -> std::result::Result<[usize; 2], String> {
    let (r, c) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("block '{s}' must look like 4x4"))?;
    let side = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("bad block side '{v}'"))
    };
    Ok([side(r)?, side(c)?])
}

/// Method defaults, then the config file, then flags.
fn resolve(a: &FitArgs) -> Result<FitConfig> {
    let file: toml::Table = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?;
            text.parse()
                .map_err(|e: toml::de::Error| Error::data(p, e.to_string()))?
        }
        None => toml::Table::new(),
    };
    let method = match (a.method, file.get("method")) {
        (Some(m), _) => m,
        (None, Some(v)) => v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(format!("config method: {e}")))?,
        (None, None) => MethodKind::EdgePopup,
    };
    let mut table = toml::Table::try_from(FitConfig::defaults(method)).map_err(|e| Error::Config(e.to_string()))?;
    let dino = a.objective == Some(smk_trainer::config::Objective::Dino)
        || (a.objective.is_none() && file.get("objective").and_then(|v| v.as_str()) == Some("dino"));
    if dino {
        // Measured on the bundled digits: the scores and the head learn under Adam at 5e-4;
        // SGD at edge-popup's 0.3 (and Adam at 3e-3) lose to random masks on k-NN.
        table.insert("optimizer".into(), value(&smk_trainer::optim::OptimizerKind::Adam));
        table.insert("lr".into(), toml::Value::Float(5e-4));
        table.insert("weight_decay".into(), toml::Value::Float(0.0));
    }
    for (k, v) in file {
        table.insert(k, v);
    }
    let mut set = |k: &str, v: Option<toml::Value>| {
        if let Some(v) = v {
            table.insert(k.to_string(), v);
        }
    };
    let s = |v: &Option<String>| v.clone().map(toml::Value::String);
    let p = |v: &Option<PathBuf>| v.as_ref().map(|p| toml::Value::String(p.display().to_string()));
    let f = |v: Option<f64>| v.map(toml::Value::Float);
    let i = |v: Option<usize>| v.map(|x| toml::Value::Integer(x as i64));
    set("model", s(&a.model));
    set("method", Some(value(&method)));
    set(
        "keep",
        f(a.keep.first().copied().or(a.sparsity.first().map(|&s| keep_of(s)))),
    );
    set(
        "block",
        a.block
            .map(|b| toml::Value::Array(b.iter().map(|&x| toml::Value::Integer(x as i64)).collect())),
    );
    set("weights", a.weights.as_ref().map(value));
    set("scale_fan", a.scale_fan.then_some(toml::Value::Boolean(true)));
    set("init_from", p(&a.init_from));
    set("data", p(&a.data));
    set("data_kind", a.data_kind.as_ref().map(value));
    set("task", s(&a.task));
    set("task_index", i(a.task_index));
    set("outputs", i(a.outputs));
    set("batches_per_task", i(a.batches_per_task));
    set("epochs", i(a.epochs));
    set("batch_size", i(a.batch_size));
    set("lr", f(a.lr));
    set("optimizer", a.optimizer.as_ref().map(value));
    set("momentum", f(a.momentum));
    set("weight_decay", f(a.weight_decay));
    set("schedule", a.schedule.as_ref().map(value));
    set("seed", a.seed.map(|x| toml::Value::Integer(x as i64)));
    set("device", s(&a.device));
    set("threshold", f(a.threshold.map(|x| x as f64)));
    set("mask_init", f(a.mask_init.map(|x| x as f64)));
    set("lambda", f(a.lambda));
    set("warmup_epochs", i(a.warmup_epochs));
    set("cooldown_epochs", i(a.cooldown_epochs));
    set("teacher", p(&a.teacher));
    set("alpha", f(a.alpha));
    set("temperature", f(a.temperature));
    set("train_head", a.train_head.then_some(toml::Value::Boolean(true)));
    set("dtype", a.dtype.as_ref().map(value));
    set("objective", a.objective.as_ref().map(value));
    set("local_crops", i(a.local_crops));
    if let Some(list) = &a.devices {
        let devices = smk_trainer::parallel::parse_devices(list)?;
        set("device", devices.first().cloned().map(toml::Value::String));
        set(
            "devices",
            Some(toml::Value::Array(
                devices.into_iter().map(toml::Value::String).collect(),
            )),
        );
    }
    let cfg: FitConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Config(format!("configuration: {e}")))?;
    cfg.validate()?;
    Ok(cfg)
}

/// A setting as a TOML value (clap value enums serialise to their kebab-case names).
fn value<T: serde::Serialize>(v: &T) -> toml::Value {
    toml::Value::try_from(v).unwrap_or_else(|_| toml::Value::String(String::new()))
}

fn eval(
    run_dir: &Path,
    data: Option<PathBuf>,
    json: bool,
    knn: bool,
    random_masks: bool,
    limit: Option<usize>,
) -> Result<()> {
    let mut run = Run::open(run_dir)?;
    if limit.is_some() && (knn || !run.cfg.method.is_sequence()) {
        return Err(Error::Config(
            "--limit applies to the task evaluation of supsup and packnet runs".into(),
        ));
    }
    if limit == Some(0) {
        return Err(Error::Config("--limit 0 leaves no image to evaluate".into()));
    }
    if let Some(d) = data {
        run.cfg.data = d;
    }
    if knn || run.cfg.objective == smk_trainer::config::Objective::Dino {
        let device = train::device(&run.cfg.device).or_else(|_| Ok::<_, Error>(candle_core::Device::Cpu))?;
        let (accuracy, what) = smk_trainer::dino::run_knn(&run, random_masks, &device)?;
        if json {
            let out = serde_json::json!({
                "schema": train::SCHEMA, "run": run_dir, "knn_accuracy": accuracy, "features": what,
                "random_masks": random_masks,
            });
            println!("{out}");
        } else {
            println!(
                "{}: k-NN accuracy {:.2}% (20 neighbours, features before the last layer) of {what}",
                run_dir.display(),
                100.0 * accuracy
            );
        }
        return Ok(());
    }
    if run.cfg.method.is_sequence() {
        return eval_tasks(&run, json, limit);
    }
    let device = train::device(&run.cfg.device).or_else(|_| Ok::<_, Error>(candle_core::Device::Cpu))?;
    let (mut net, test, rule) = run.load_net(&device)?;
    let e = train::evaluate(&mut net, &test, rule, &device)?;
    let (density, overall) = train::densities(&net, rule)?;
    if json {
        let per_class: Vec<_> = e
            .per_class
            .iter()
            .enumerate()
            .map(|(c, &(ok, n))| serde_json::json!({ "class": c, "correct": ok, "total": n, "accuracy": ok as f64 / n.max(1) as f64 }))
            .collect();
        let out = serde_json::json!({
            "schema": train::SCHEMA, "run": run_dir, "accuracy": e.accuracy, "loss": e.loss, "examples": e.examples,
            "per_class": per_class, "density": { "overall": overall, "layers": density },
        });
        println!("{out}");
    } else {
        println!(
            "{}: {} {} on {} test examples",
            run_dir.display(),
            run.cfg.method.id(),
            run.cfg.model,
            e.examples
        );
        println!(
            "accuracy {:.2}%   loss {:.4}   weights kept {:.3}",
            100.0 * e.accuracy,
            e.loss,
            overall
        );
        for (c, &(ok, n)) in e.per_class.iter().enumerate() {
            println!("  class {c}: {ok}/{n} ({:.1}%)", 100.0 * ok as f64 / n.max(1) as f64);
        }
    }
    Ok(())
}

/// A SupSup or PackNet run: every task with its own mask, and with the task inferred from each
/// image.
fn eval_tasks(run: &Run, json: bool, limit: Option<usize>) -> Result<()> {
    let device = train::device(&run.cfg.device).or_else(|_| Ok::<_, Error>(candle_core::Device::Cpu))?;
    let r = smk_trainer::supsup::evaluate(&run.dir, limit, &device)?;
    if json {
        let mut out = serde_json::to_value(&r).map_err(|e| Error::Config(e.to_string()))?;
        out["schema"] = train::SCHEMA.into();
        out["run"] = serde_json::json!(run.dir);
        println!("{out}");
        return Ok(());
    }
    let family = run.cfg.task.clone().unwrap_or_default();
    println!(
        "{}: {} over {family}, {} tasks",
        run.dir.display(),
        run.cfg.method.id(),
        r.tasks
    );
    println!(
        "  task given:              accuracy {:.2}% (mean over tasks)",
        100.0 * r.task_given_accuracy
    );
    let pair = |task: Option<f64>, acc: Option<f64>| match (task, acc) {
        (Some(t), Some(a)) => format!("task right {:.2}%, accuracy {:.2}%", 100.0 * t, 100.0 * a),
        _ => "not computed: this model has norms or max pooling (the minimum-entropy rule applies)".into(),
    };
    println!(
        "  one-shot task inference: {}",
        pair(r.one_shot_task_accuracy, r.one_shot_accuracy)
    );
    println!(
        "  binary search:           {}",
        pair(r.binary_search_task_accuracy, r.binary_search_accuracy)
    );
    println!(
        "  minimum entropy:         task right {:.2}%, accuracy {:.2}%",
        100.0 * r.min_entropy_task_accuracy,
        100.0 * r.min_entropy_accuracy
    );
    for (k, (given, right, acc)) in r.per_task.iter().enumerate() {
        println!(
            "    task {k}: given {:.2}%, one-shot task right {:.2}%, accuracy {:.2}%",
            100.0 * given,
            100.0 * right,
            100.0 * acc
        );
    }
    Ok(())
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Fit(a) => {
            if a.keep.len() + a.sparsity.len() > 1 {
                return Err(Error::Config(
                    "fit takes one --keep value: use `trainer sweep` for several".into(),
                ));
            }
            let cfg = if a.resume {
                FitConfig {
                    epochs: a.epochs.unwrap_or(0),
                    ..FitConfig::defaults(MethodKind::Dense)
                }
            } else {
                resolve(&a)?
            };
            let opts = FitOptions {
                resume: a.resume,
                quiet: a.quiet,
                stop_after: None,
                profile: a.profile,
            };
            let sequence =
                cfg.method.is_sequence() || (a.resume && Run::open(&a.out).is_ok_and(|r| r.cfg.method.is_sequence()));
            let m = train::fit(&a.out, cfg, opts)?;
            if sequence {
                let mean = m.iter().map(|t| t.test_accuracy).sum::<f64>() / m.len().max(1) as f64;
                println!(
                    "{}: {} tasks, mean test accuracy {:.2}% (task given); `trainer eval` infers the tasks",
                    a.out.display(),
                    m.len(),
                    100.0 * mean
                );
            } else if let Some(last) = m.last() {
                println!(
                    "{}: test accuracy {:.2}% after {} epochs, weights kept {:.3}",
                    a.out.display(),
                    100.0 * last.test_accuracy,
                    last.epoch,
                    last.overall_density
                );
            }
            Ok(())
        }
        Command::Sweep(a) => {
            let keeps: Vec<f64> = if a.sparsity.is_empty() {
                a.keep.clone()
            } else {
                a.sparsity.iter().map(|&s| keep_of(s)).collect()
            };
            let base = resolve(&a)?;
            let rows = smk_trainer::sweep::sweep(&a.out, &base, &keeps, a.quiet)?;
            println!(
                "{:<14} {:>6} {:>8} {:>9} {:>8}",
                "method", "keep", "density", "test acc", "s/epoch"
            );
            for r in rows {
                println!(
                    "{:<14} {:>6} {:>8.3} {:>8.2}% {:>8.2}",
                    r.method,
                    r.keep,
                    r.density,
                    100.0 * r.test_accuracy,
                    r.seconds_per_epoch
                );
            }
            println!("{}: results.csv, sweep.svg, sweep.png", a.out.display());
            Ok(())
        }
        Command::Eval {
            run,
            data,
            json,
            knn,
            random_masks,
            limit,
        } => eval(&run, data, json, knn, random_masks, limit),
        Command::Data {
            task,
            data,
            data_kind,
            split,
            seed,
            out,
        } => {
            let family: TaskFamily = task.parse().map_err(Error::Config)?;
            let dir = data.unwrap_or_else(smk_trainer::data::default_data_dir);
            let ds = smk_trainer::data::load(data_kind, &dir, split)?;
            let counts = smk_trainer::data::write_tasks(&family, &ds, seed, &out)?;
            let sizes: Vec<String> = counts.iter().map(usize::to_string).collect();
            println!(
                "{}: {} tasks of {family}, {} split; examples per task: {}",
                out.display(),
                counts.len(),
                if split == Split::Train { "train" } else { "test" },
                sizes.join(", ")
            );
            Ok(())
        }
        Command::Export {
            run,
            out,
            format,
            weights_dtype,
            task,
        } => {
            let opts = ExportOptions {
                format,
                weights_dtype,
                task,
            };
            let s = smk_trainer::export::export_with(&run, &out, &opts)?;
            println!(
                "{}: {} bytes, {} weights, {:.2} bits per weight",
                out.display(),
                s.bytes,
                s.weights,
                s.bits_per_weight
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
