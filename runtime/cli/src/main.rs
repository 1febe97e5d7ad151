//! `runtime`: run, evaluate, inspect, verify and benchmark .smk supermask models.

mod bench;
mod device;
mod input;
mod inspect;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use smk_runtime::{Isa, Model, Session};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Version of the `--json` output layout.
pub const JSON_SCHEMA: u32 = 1;

const EXIT_CODES: &str = "Exit codes: 0 success; 1 a file or input cannot be used (one line on stderr says which \
and why); 2 bad command line; 3 `verify` found the file damaged.";

#[derive(Parser)]
#[command(name = "runtime", version, about = "Run .smk supermask models on the CPU or a GPU", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify one input: a .npy of f32, a PNG or PGM image, or one item of an IDX file.
    #[command(after_help = EXIT_CODES)]
    Infer(InferArgs),
    /// Accuracy on labelled IDX files (MNIST format), per class, and images per second.
    #[command(after_help = EXIT_CODES)]
    Eval(EvalArgs),
    /// Layers, shapes, weight and mask kinds, densities, bytes and bits per weight, tasks, metadata.
    #[command(after_help = EXIT_CODES)]
    Inspect {
        /// The .smk file.
        model: PathBuf,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum and structural rule; exit 0 only when all hold.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// The .smk file.
        model: PathBuf,
    },
    /// Latency percentiles and throughput of a model, or of a synthetic one built in memory.
    #[command(after_help = EXIT_CODES)]
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct Common {
    /// The mask set (task) to apply, by name or number; needed when the file has several.
    /// `auto`: the network infers each input's task (SupSup), see --task-rule.
    #[arg(long)]
    task: Option<String>,
    /// How `--task auto` chooses: one-shot (the entropy gradient of the mixture of every
    /// task's mask; chains of linear layers), binary-search (halving rounds of the one-shot
    /// rule over the remaining tasks, for many tasks; the same models) or min-entropy (each
    /// task's own output; any model).
    #[arg(long, value_enum, default_value = "one-shot")]
    task_rule: TaskRuleArg,
    /// `--task auto`: below this confidence (1/tasks = no idea, 1 = certain) the task is
    /// "unknown" and the input is not classified. binary-search's is that of its last two
    /// tasks: 0.5 for a tie, else about 0.88.
    #[arg(long, default_value_t = 0.0)]
    task_threshold: f32,
    /// Instruction set: auto, scalar, avx2, avx512 or neon.
    #[arg(long, default_value = "auto")]
    isa: String,
    /// Where to run: cpu, or cuda / cuda:N (the N-th GPU; needs a runtime built with
    /// `--features cuda`, the NVIDIA driver and libnvrtc).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TaskRuleArg {
    OneShot,
    BinarySearch,
    MinEntropy,
}

#[derive(Args)]
struct InferArgs {
    /// The .smk file.
    model: PathBuf,
    /// The input: .npy (f32, the model's input shape), .png or .pgm (converted to the model's
    /// channels, resized to its height and width, pixels scaled by the file's
    /// `input.pixel_scale` metadata, else 1/255), or an IDX file (pick the item with --index).
    input: PathBuf,
    /// Item of an IDX input.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// How many of the best classes to print.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct EvalArgs {
    /// The .smk file.
    model: PathBuf,
    /// IDX images (e.g. data/t10k-images-idx3-ubyte.gz).
    #[arg(long)]
    images: PathBuf,
    /// IDX labels.
    #[arg(long)]
    labels: PathBuf,
    /// Inputs per call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Write each image's predicted class, one per line, to this file.
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer(a) => infer(a),
        Command::Eval(a) => eval(a),
        Command::Inspect { model, json } => inspect::inspect(&model, json),
        Command::Verify { model } => verify(&model),
        Command::Bench(a) => bench::bench(a),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("runtime: error: {message}");
            ExitCode::from(1)
        }
    }
}

pub fn open(path: &Path) -> Result<Session, String> {
    Session::open(path).map_err(|e| e.to_string())
}

pub fn parse_isa(name: &str) -> Result<Option<Isa>, String> {
    if name == "auto" {
        return Ok(None);
    }
    let isa = Isa::from_name(name)
        .ok_or_else(|| format!("unknown instruction set {name:?} (auto, scalar, avx2, avx512, neon)"))?;
    isa.checked()
        .map(Some)
        .ok_or_else(|| format!("instruction set {isa} is not available on this CPU"))
}

/// The mask set named `task` (a name, or a number when no set has that name).
pub fn resolve_task(model: &Model<'_>, task: Option<&str>, path: &Path) -> Result<Option<u32>, String> {
    let Some(task) = task else { return Ok(None) };
    if let Some(set) = model.mask_set_by_name(task) {
        return Ok(Some(set.index));
    }
    if let Ok(i) = task.parse::<u32>() {
        if i < model.mask_set_count() {
            return Ok(Some(i));
        }
    }
    let names: Vec<_> = model.mask_sets().map(|s| s.name.to_string()).collect();
    Err(format!(
        "{}: no task {task:?}; the file has {}",
        path.display(),
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    ))
}

fn engine<'s>(session: &'s Session, c: &Common, batch: usize) -> Result<device::Engine<'s>, String> {
    let path = session.path();
    let model = session.model().map_err(|e| format!("{}: {e}", path.display()))?;
    if c.task.as_deref() == Some("auto") {
        if device::Device::parse(&c.device)? != device::Device::Cpu {
            return Err("--task auto runs on the CPU: leave out --device".into());
        }
        let rule = match c.task_rule {
            TaskRuleArg::OneShot => smk_runtime::TaskRule::OneShot,
            TaskRuleArg::BinarySearch => smk_runtime::TaskRule::BinarySearch,
            TaskRuleArg::MinEntropy => smk_runtime::TaskRule::MinEntropy,
        };
        return device::Engine::auto(session, &model, rule, c.task_threshold, parse_isa(&c.isa)?)
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    let task = resolve_task(&model, c.task.as_deref(), path)?;
    match device::Device::parse(&c.device)? {
        device::Device::Cpu => session
            .runner(batch, task, parse_isa(&c.isa)?)
            .map(|r| device::Engine::Cpu(Box::new(r)))
            .map_err(|e| format!("{}: {e}", path.display())),
        device::Device::Cuda(ordinal) => device::Engine::gpu(&model, task, ordinal, batch, path),
    }
}

fn pixel_scale(model: &Model<'_>) -> f32 {
    model
        .metadata_value("input.pixel_scale")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0 / 255.0)
}

fn infer(a: InferArgs) -> Result<ExitCode, String> {
    let session = open(&a.model)?;
    let mut run = engine(&session, &a.common, 1)?;
    let model = session.model().map_err(|e| e.to_string())?;
    let in_len = run.input_len();
    let ext = a
        .input
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let x = match ext.as_str() {
        "npy" => input::read_npy(&a.input)?,
        "png" | "pgm" => input::image_input(&a.input, model.input_shape().dims(), pixel_scale(&model))?,
        _ => {
            let idx = input::read_idx(&a.input)?;
            if a.index >= idx.len() {
                return Err(format!(
                    "{}: --index {} but the file holds {} items",
                    a.input.display(),
                    a.index,
                    idx.len()
                ));
            }
            let scale = pixel_scale(&model);
            idx.item(a.index).iter().map(|&p| p as f32 * scale).collect()
        }
    };
    if x.len() != in_len {
        return Err(format!(
            "{}: holds {} values; the model takes {} ({:?})",
            a.input.display(),
            x.len(),
            in_len,
            model.input_shape().dims()
        ));
    }
    let mut y = vec![0f32; run.output_len()];
    let start = Instant::now();
    run.infer(&x, &mut y)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_by(|&i, &j| y[j].total_cmp(&y[i]));
    let top: Vec<_> = order.iter().take(a.top_k.max(1)).map(|&k| (k, y[k])).collect();
    let mut task = run.task().and_then(|t| model.mask_set(t)).map(|s| s.name.to_string());
    // Under --task auto: the inferred task, and whether it clears the threshold.
    let inferred = run
        .auto_state()
        .and_then(|a| a.guesses.first().map(|g| (*g, a.known(g))));
    if let Some((g, known)) = inferred {
        let name = model.mask_set(g.task).map(|s| s.name.to_string()).unwrap_or_default();
        if !known {
            if a.common.json {
                let out = json!({"schema": JSON_SCHEMA, "model": a.model, "input": a.input, "task": null,
                    "inferred_task": {"task": name, "confidence": g.confidence, "score": g.score, "known": false},
                    "class": null, "ms": ms});
                println!("{out}");
            } else {
                println!(
                    "task unknown: the best guess, {name}, has confidence {:.3}, below --task-threshold {}",
                    g.confidence, a.common.task_threshold
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        task = Some(format!("{name} (inferred, confidence {:.3})", g.confidence));
        if a.common.json {
            task = Some(name);
        }
    }
    if a.common.json {
        let top_json: Vec<_> = top.iter().map(|(k, s)| json!({"class": k, "score": s})).collect();
        let out = json!({"schema": JSON_SCHEMA, "model": a.model, "input": a.input, "task": task,
            "class": top[0].0, "top": top_json, "outputs": y, "isa": run.isa_name(), "device": run.device(), "ms": ms,
            "inferred_task": inferred.map(|(g, _)| json!({"confidence": g.confidence, "score": g.score, "known": true}))});
        println!("{out}");
    } else {
        println!(
            "class {} (score {:.4}){}",
            top[0].0,
            top[0].1,
            task.map(|t| format!(", task {t}")).unwrap_or_default()
        );
        for (k, s) in &top[1..] {
            println!("      {k} (score {s:.4})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<ExitCode, String> {
    let session = open(&a.model)?;
    let images = input::read_idx(&a.images)?;
    let labels = input::read_idx(&a.labels)?;
    if labels.dims.len() != 1 {
        return Err(format!(
            "{}: labels must be a rank-1 IDX file (one byte per image); it has dims {:?}",
            a.labels.display(),
            labels.dims
        ));
    }
    if images.len() != labels.len() {
        return Err(format!(
            "{} holds {} images but {} holds {} labels",
            a.images.display(),
            images.len(),
            a.labels.display(),
            labels.len()
        ));
    }
    let n = a.limit.unwrap_or(images.len()).min(images.len());
    if n == 0 {
        return Err(format!("{}: no images to evaluate", a.images.display()));
    }
    let batch = a.batch.clamp(1, n);
    let mut run = engine(&session, &a.common, batch)?;
    let model = session.model().map_err(|e| e.to_string())?;
    let in_len = run.input_len();
    if images.item_len() != in_len {
        return Err(format!(
            "{}: images of {} values; the model takes {in_len}",
            a.images.display(),
            images.item_len()
        ));
    }
    let out_len = run.output_len();
    let scale = pixel_scale(&model);
    let mut tail_run = if n % batch != 0 {
        Some(engine(&session, &a.common, n % batch)?)
    } else {
        None
    };
    let (mut correct, mut per_class) = (0usize, vec![(0usize, 0usize); out_len.max(10)]);
    let mut predictions = Vec::with_capacity(n);
    let mut x = vec![0f32; batch * in_len];
    let mut y = vec![0f32; batch * out_len];
    let mut busy = 0f64;
    let mut start = 0;
    let (mut inferred, mut unknown) = (std::collections::BTreeMap::<u32, usize>::new(), 0usize);
    while start < n {
        let m = batch.min(n - start);
        for (k, xs) in x.chunks_mut(in_len).take(m).enumerate() {
            for (v, &p) in xs.iter_mut().zip(images.item(start + k)) {
                *v = p as f32 * scale;
            }
        }
        let t = Instant::now();
        let r = if m == batch {
            &mut run
        } else {
            tail_run.as_mut().ok_or("internal: no tail plan")?
        };
        r.infer(&x[..m * in_len], &mut y[..m * out_len])?;
        busy += t.elapsed().as_secs_f64();
        let guesses: Option<Vec<(u32, bool)>> = r
            .auto_state()
            .map(|a| a.guesses.iter().map(|g| (g.task, a.known(g))).collect());
        for k in 0..m {
            let ys = &y[k * out_len..(k + 1) * out_len];
            let mut pred = (0..out_len)
                .max_by(|&i, &j| ys[i].total_cmp(&ys[j]).then(j.cmp(&i)))
                .unwrap_or(0);
            if let Some(gs) = &guesses {
                let (task, known) = gs[k];
                *inferred.entry(task).or_insert(0usize) += 1;
                if !known {
                    // Not classified: counted wrong.
                    unknown += 1;
                    pred = usize::MAX;
                }
            }
            let label = labels.item(start + k)[0] as usize;
            if label >= per_class.len() {
                per_class.resize(label + 1, (0, 0));
            }
            per_class[label].1 += 1;
            if pred == label {
                correct += 1;
                per_class[label].0 += 1;
            }
            predictions.push(pred);
        }
        start += m;
    }
    if let Some(p) = &a.predictions {
        let text: String = predictions
            .iter()
            .map(|&k| match k {
                usize::MAX => "unknown\n".to_string(),
                k => format!("{k}\n"),
            })
            .collect();
        smk_format::writer::write_atomic(p, text.as_bytes()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let accuracy = correct as f64 / n as f64;
    let ips = n as f64 / busy.max(1e-9);
    let auto = run.auto_state().is_some();
    let task = match auto {
        true => Some("auto".to_string()),
        false => run.task().and_then(|t| model.mask_set(t)).map(|s| s.name.to_string()),
    };
    let name_of = |t: u32| model.mask_set(t).map_or(t.to_string(), |s| s.name.to_string());
    if a.common.json {
        let classes: Vec<_> = per_class
            .iter()
            .enumerate()
            .filter(|(_, (_, total))| *total > 0)
            .map(|(k, (c, t))| json!({"class": k, "accuracy": *c as f64 / *t as f64, "images": t}))
            .collect();
        let out = json!({"schema": JSON_SCHEMA, "model": a.model, "task": task, "images": n, "correct": correct,
            "accuracy": accuracy, "per_class": classes, "images_per_second": ips, "batch": batch,
            "isa": run.isa_name(), "device": run.device()});
        let mut out = out;
        if auto {
            let counts: serde_json::Map<String, serde_json::Value> =
                inferred.iter().map(|(&t, &c)| (name_of(t), json!(c))).collect();
            out["task_inference"] = json!({"rule": match a.common.task_rule {
                TaskRuleArg::OneShot => "one-shot",
                TaskRuleArg::BinarySearch => "binary-search",
                TaskRuleArg::MinEntropy => "min-entropy",
            },
                "inferred": counts, "unknown": unknown, "threshold": a.common.task_threshold});
        }
        println!("{out}");
    } else {
        println!(
            "accuracy {:.2}% ({correct}/{n}){}",
            100.0 * accuracy,
            task.map(|t| format!(", task {t}")).unwrap_or_default()
        );
        if auto {
            let counts: Vec<String> = inferred.iter().map(|(&t, &c)| format!("{} {c}", name_of(t))).collect();
            println!("  tasks inferred: {}; unknown {unknown}", counts.join(", "));
        }
        for (k, (c, t)) in per_class.iter().enumerate().filter(|(_, (_, t))| *t > 0) {
            println!("  class {k}: {:.2}% of {t}", 100.0 * *c as f64 / *t as f64);
        }
        println!("{ips:.0} images/s (batch {batch}, {})", run.describe());
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path) -> Result<ExitCode, String> {
    let session = open(path)?;
    match session.verify() {
        Ok(()) => {
            println!("{}: ok (every checksum and rule holds)", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("runtime: {}: damaged: {e}", path.display());
            Ok(ExitCode::from(3))
        }
    }
}
