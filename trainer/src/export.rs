//! `trainer export`: a run's final masks and weights as one .smk file, or (`--format
//! safetensors|onnx`) the masked dense model it computes, for other tools.
//!
//! Frozen seeded weights are stored as their seed only; trained or loaded weights are stored in
//! the requested precision. Masks are the hard masks of the final rule, bit-packed (block masks
//! for the `block` method, whose stored weights are then packed: only the kept blocks). Nothing time-dependent is written,
//! so a run exports to the same bytes every time.
//!
//! The dense formats hold no mask and no seed: every layer's effective weights in f32
//! ([`crate::dense`]), as PyTorch tensors or as an ONNX graph ([`crate::onnx`]). A task sequence
//! (supsup, packnet) exports one task of it at a time (`--task K`).

use std::collections::BTreeMap;
use std::path::Path;

use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{Input, Op, Window2d};

use crate::compact;
use crate::dense::DenseModel;
use crate::error::{Error, Result};
use crate::mask::Binarize;
use crate::model::{MaskedLayer, Net, Node};
use crate::train::{densities, Run};

/// Precision of stored weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsDtype {
    /// binary32.
    F32,
    /// binary16.
    F16,
    /// bfloat16.
    Bf16,
}

fn stored(name: String, dims: &[usize], values: Vec<f32>, dtype: WeightsDtype) -> Result<TensorSpec> {
    let dims: Vec<u32> = dims.iter().map(|&d| d as u32).collect();
    let data = match dtype {
        WeightsDtype::F32 => TensorData::F32(values),
        WeightsDtype::F16 => TensorData::F16(values.into_iter().map(half::f16::from_f32).collect()),
        WeightsDtype::Bf16 => TensorData::Bf16(values.into_iter().map(half::bf16::from_f32).collect()),
    };
    Ok(TensorSpec::new(name, &dims, data)?)
}

/// A linear layer's weights with only the kept rows and columns (see [`crate::compact`]).
fn compacted_spec(
    l: &MaskedLayer,
    rows: Option<&[usize]>,
    cols: Option<&[usize]>,
    dtype: WeightsDtype,
) -> Result<TensorSpec> {
    let (r, c) = l.matrix();
    let w = stored_values(l)?;
    let values = compact::select(&w, c, rows, cols);
    let dims = [rows.map_or(r, |k| k.len()), cols.map_or(c, |k| k.len())];
    stored_spec(l, format!("{}.weight", l.name), &dims, values, dtype)
}

fn weight_spec(l: &MaskedLayer, dtype: WeightsDtype) -> Result<TensorSpec> {
    let name = format!("{}.weight", l.name);
    let dims: Vec<u32> = l.dims.iter().map(|&d| d as u32).collect();
    match (l.seeded, &l.weight_var) {
        // The runtime draws these again in f32; under `--dtype bf16|f16` training saw them
        // rounded to that precision.
        (Some(init), None) => Ok(TensorSpec::seeded(name, &dims, init)?),
        // Frozen bf16 or f16 weights widen exactly: the stored values are those the run used.
        _ => stored_spec(l, name, &l.dims, stored_values(l)?, dtype),
    }
}

/// A layer's stored weights: learned binary weights as their signs (one bit each), others in
/// the requested precision.
fn stored_spec(
    l: &MaskedLayer,
    name: String,
    dims: &[usize],
    values: Vec<f32>,
    dtype: WeightsDtype,
) -> Result<TensorSpec> {
    match l.binary {
        Some(scale) => {
            let dims: Vec<u32> = dims.iter().map(|&d| d as u32).collect();
            let positive = values.iter().map(|&v| v >= 0.0).collect();
            Ok(TensorSpec::signs(name, &dims, positive, scale)?)
        }
        None => stored(name, dims, values, dtype),
    }
}

/// The values a layer stores: its weights, or for PackNet every task's owned weights together
/// (the free ones zero).
fn stored_values(l: &MaskedLayer) -> Result<Vec<f32>> {
    let w = l.weight_f32()?;
    let w = match &l.pack {
        Some(p) => p.effective(&w)?,
        None => w,
    };
    Ok(w.flatten_all()?.to_vec1()?)
}

/// Builds the .smk bytes of a trained network.
pub fn to_smk(net: &Net, run: &Run, rule: Binarize, dtype: WeightsDtype) -> Result<Vec<u8>> {
    let cfg = &run.cfg;
    let task = cfg
        .task
        .as_ref()
        .map_or("default".to_string(), |t| format!("{t}#{}", cfg.task_index));
    // Binary weights without --keep have no mask: no set either.
    let masked = net
        .layers
        .iter()
        .any(|l| l.scores.is_some() || l.rank_weights || l.pack.is_some());
    let sets: Vec<(String, &Net)> = if masked { vec![(task, net)] } else { Vec::new() };
    to_smk_sets(net, &sets, run, rule, dtype)
}

/// Builds the .smk bytes of `net`'s weights with one named mask set per entry of `sets`, each
/// from its own network's scores (SupSup: one per task over the same frozen weights).
pub fn to_smk_sets(
    net: &Net,
    sets: &[(String, &Net)],
    run: &Run,
    rule: Binarize,
    dtype: WeightsDtype,
) -> Result<Vec<u8>> {
    let cfg = &run.cfg;
    let [c, h, w] = net.input;
    let mut b = ModelBuilder::new(&[c as u32, h as u32, w as u32])?;
    let mut set_ids = Vec::with_capacity(sets.len());
    for (name, task_net) in sets {
        set_ids.push((b.mask_set(name)?, *task_net));
    }
    // Pixels in [0, 1] go in; the training normalisation is the first layer (eps 0, so the
    // variance is exactly std²).
    let channels = net.normalize.len() as u32;
    let mean: Vec<f32> = net.normalize.iter().map(|m| m.0).collect();
    let var: Vec<f32> = net.normalize.iter().map(|m| m.1 * m.1).collect();
    b.batch_norm(
        "normalize",
        TensorSpec::f32("normalize.mean", &[channels], mean)?,
        TensorSpec::f32("normalize.var", &[channels], var)?,
        None,
        None,
        0.0,
    )?;
    // Units that are dead under one mask may live under another: compaction is for one mask.
    let compaction = if sets.len() > 1 {
        compact::Compaction::default()
    } else {
        compact::plan(net, rule)?
    };
    let kept = |l: usize| {
        (
            compaction.rows.get(&l).map(|v| v.as_slice()),
            compaction.cols.get(&l).map(|v| v.as_slice()),
        )
    };
    let mut smk_layer = Vec::with_capacity(net.nodes.len());
    for (i, node) in net.nodes.iter().enumerate() {
        if let Some(j) = net.inputs[i] {
            b.input_from(Input::Layer(smk_layer[j]));
        }
        let name = format!("n{i}");
        let id = match *node {
            Node::Flatten => b.flatten(&name)?,
            Node::Relu => b.relu(&name)?,
            Node::MaxPool(k) => b.op(&name, Op::MaxPool(Window2d::pool(k as u32)))?,
            Node::AvgPool(k) => b.op(
                &name,
                Op::AvgPool {
                    window: Window2d::pool(k as u32),
                    count_include_pad: true,
                },
            )?,
            Node::Linear(l) => {
                let spec = match kept(l) {
                    (None, None) => weight_spec(&net.layers[l], dtype)?,
                    (rows, cols) => compacted_spec(&net.layers[l], rows, cols, dtype)?,
                };
                b.linear(&net.layers[l].name, spec, None)?
            }
            Node::Conv { layer, stride, padding } => {
                let l = &net.layers[layer];
                let k = l.dims[2] as u32;
                let window = Window2d {
                    kernel: [k, k],
                    stride: [stride as u32; 2],
                    padding: [padding as u32; 2],
                    dilation: [1, 1],
                };
                b.conv2d(&l.name, weight_spec(l, dtype)?, None, window)?
            }
            Node::Norm(n) => {
                let nm = &net.norms[n];
                // Several tasks (SupSup): each task's own statistics, a row per mask set
                // (format 1.1); one: the vector itself.
                let nets: Vec<&Net> = if set_ids.len() > 1 {
                    set_ids.iter().map(|&(_, t)| t).collect()
                } else {
                    vec![net]
                };
                let dims: Vec<u32> = if nets.len() > 1 {
                    vec![nets.len() as u32, nm.channels as u32]
                } else {
                    vec![nm.channels as u32]
                };
                let rows = |suffix: &str, pick: &dyn Fn(&crate::model::Norm) -> Option<candle_core::Tensor>| {
                    let mut values = Vec::with_capacity(nets.len() * nm.channels);
                    for t in &nets {
                        match pick(&t.norms[n]) {
                            Some(v) => values.extend(v.to_vec1::<f32>()?),
                            None => return Ok::<_, Error>(None),
                        }
                    }
                    Ok(Some(TensorSpec::f32(format!("{}.{suffix}", nm.name), &dims, values)?))
                };
                let gamma = rows("weight", &|m| m.affine.as_ref().map(|a| a.0.as_tensor().clone()))?;
                let beta = rows("bias", &|m| m.affine.as_ref().map(|a| a.1.as_tensor().clone()))?;
                let mean = rows("running_mean", &|m| Some(m.running_mean.clone()))?;
                let var = rows("running_var", &|m| Some(m.running_var.clone()))?;
                let (Some(mean), Some(var)) = (mean, var) else {
                    return Err(Error::Config(format!("{}: no running statistics", nm.name)));
                };
                b.batch_norm(&nm.name, mean, var, gamma, beta, nm.eps as f32)?
            }
            Node::Add(x, y) => b.add(&name, Input::Layer(smk_layer[x]), Input::Layer(smk_layer[y]))?,
        };
        for &(set, task_net) in &set_ids {
            let (Node::Linear(l) | Node::Conv { layer: l, .. }) = *node else {
                break;
            };
            let layer = &task_net.layers[l];
            if let Some(grid) = layer.hard_mask_grid(rule)? {
                let bits: Vec<bool> = grid
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|v| v != 0.0)
                    .collect();
                let bits = match kept(l) {
                    (None, None) => bits,
                    (rows, cols) => compact::select(&bits, layer.matrix().1, rows, cols),
                };
                let spec = match layer.block {
                    Some(bl) => MaskSpec::block_bools([bl[0] as u16, bl[1] as u16], &bits),
                    None => MaskSpec::element_bools(&bits),
                };
                b.set_mask(set, id, spec)?;
                // One mask over stored weights: keep only the kept blocks (the runtime's fastest
                // layout); seeded weights store nothing to pack.
                if layer.block.is_some() && layer.seeded.is_none() && set_ids.len() == 1 {
                    b.pack_blocks(id)?;
                }
            }
        }
        smk_layer.push(id);
    }
    b.op("softmax", Op::Softmax)?;
    if !compaction.removed.is_empty() {
        // Hidden units that could only output 0, or that nothing read, were left out.
        let removed: serde_json::Map<String, serde_json::Value> = compaction
            .removed
            .iter()
            .map(|(name, n)| (name.clone(), serde_json::Value::from(*n)))
            .collect();
        b.metadata(
            "compaction.removed_units",
            &serde_json::Value::Object(removed).to_string(),
        )?;
    }

    let config = serde_json::to_string(cfg).map_err(|e| Error::Config(e.to_string()))?;
    b.metadata("config", &config)?;
    // How raw pixels become the graph's input (its first layer normalises): `runtime infer`
    // reads this to feed images.
    b.metadata("input.pixel_scale", &(1.0f64 / 255.0).to_string())?;
    b.metadata("method", cfg.method.id())?;
    b.metadata("model", &cfg.model)?;
    let data = serde_json::json!({ "kind": cfg.data_kind, "task": cfg.task, "task_index": cfg.task_index });
    b.metadata("dataset", &data.to_string())?;
    let (per_layer, overall) = densities(net, rule)?;
    b.metadata(
        "density",
        &serde_json::json!({ "overall": overall, "layers": per_layer }).to_string(),
    )?;
    if let Some(m) = run.metrics()?.last() {
        // Time-free fields only, so the bytes depend on the run alone.
        let metrics = serde_json::json!({
            "epoch": m.epoch, "test_accuracy": m.test_accuracy, "test_loss": m.test_loss,
            "train_accuracy": m.train_accuracy, "train_loss": m.train_loss,
        });
        b.metadata("metrics", &metrics.to_string())?;
    }
    b.history(
        concat!("smk-trainer ", env!("CARGO_PKG_VERSION")),
        &format!("trainer export ({} {})", cfg.method.id(), cfg.model),
        0,
    )?;
    Ok(b.to_bytes()?)
}

/// What `trainer export` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The .smk file the smk runtime runs: seeds, stored weights and bit-packed masks (every
    /// task's, for a task sequence).
    #[default]
    Smk,
    /// The masked dense model as safetensors: `{layer}.weight` (the effective weights in f32,
    /// PyTorch layout, no biases) and batch norms' `running_mean`, `running_var` (and
    /// `weight`, `bias` when affine); the model, input shape and normalisation in the metadata.
    Safetensors,
    /// The masked dense model as an ONNX graph (opset 17): pixels `[N, C, H, W]` in [0, 1] in,
    /// softmax `probabilities` `[N, classes]` out, as the .smk graph computes them.
    Onnx,
}

impl ExportFormat {
    /// The name `--format` takes.
    pub fn id(self) -> &'static str {
        match self {
            ExportFormat::Smk => "smk",
            ExportFormat::Safetensors => "safetensors",
            ExportFormat::Onnx => "onnx",
        }
    }
}

/// How `trainer export` writes a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// The file format.
    pub format: ExportFormat,
    /// Precision of stored weights in a .smk file (`None`: f32). The dense formats are f32
    /// and refuse anything else.
    pub weights_dtype: Option<WeightsDtype>,
    /// The task of a task sequence (supsup, packnet) to write, for the dense formats: required
    /// there, refused elsewhere (a .smk file holds every task).
    pub task: Option<usize>,
}

/// `trainer export RUN_DIR --out FILE`: the .smk file.
pub fn export(run_dir: &Path, out: &Path, dtype: WeightsDtype) -> Result<ExportSummary> {
    export_with(
        run_dir,
        out,
        &ExportOptions {
            weights_dtype: Some(dtype),
            ..ExportOptions::default()
        },
    )
}

/// `trainer export RUN_DIR --out FILE --format F [--task K]`.
pub fn export_with(run_dir: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportSummary> {
    let run = Run::open(run_dir)?;
    let (net, bytes) = match opts.format {
        ExportFormat::Smk => {
            if let Some(k) = opts.task {
                return Err(Error::Config(format!(
                    "--task {k} picks one task for --format safetensors or onnx; a .smk file holds every task's \
                     masks (as mask sets task-0, task-1, ...)"
                )));
            }
            smk_bytes(&run, opts.weights_dtype.unwrap_or(WeightsDtype::F32))?
        }
        format => {
            if let Some(d) = opts.weights_dtype.filter(|&d| d != WeightsDtype::F32) {
                return Err(Error::Config(format!(
                    "--weights-dtype {} applies to --format smk only: --format {} is always f32",
                    format!("{d:?}").to_lowercase(),
                    format.id()
                )));
            }
            let (net, rule, task) = dense_source(&run, opts.task)?;
            let dense = DenseModel::from_net(&net, rule)?;
            let meta = dense_metadata(&run, &dense, format, task)?;
            let bytes = match format {
                ExportFormat::Onnx => crate::onnx::to_onnx(&dense, &format!("smk-{}", run.cfg.model), &meta)?,
                _ => dense.to_safetensors(&meta)?,
            };
            (net, bytes)
        }
    };
    smk_format::writer::write_atomic(out, &bytes).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let weights: usize = net.layers.iter().map(|l| l.dims.iter().product::<usize>()).sum();
    Ok(ExportSummary {
        bytes: bytes.len(),
        weights,
        bits_per_weight: bytes.len() as f64 * 8.0 / weights as f64,
    })
}

/// A run's network and .smk bytes.
fn smk_bytes(run: &Run, dtype: WeightsDtype) -> Result<(Net, Vec<u8>)> {
    if run.cfg.method.is_sequence() {
        // One mask set per finished task, named task-K as `trainer data` names their files.
        // The weights are the last task's: PackNet's earlier tasks own fixed parts of them.
        let (mut nets, rule) = crate::supsup::load_tasks(&run.dir, &candle_core::Device::Cpu)?;
        let sets: Vec<(String, &Net)> = nets.iter().enumerate().map(|(k, n)| (format!("task-{k}"), n)).collect();
        let last = nets.len() - 1;
        let bytes = to_smk_sets(&nets[last], &sets, run, rule, dtype)?;
        Ok((nets.swap_remove(last), bytes))
    } else {
        let (net, _, rule) = run.load_net(&candle_core::Device::Cpu)?;
        let bytes = to_smk(&net, run, rule, dtype)?;
        Ok((net, bytes))
    }
}

/// The network a dense export writes, its rule, and its task: task `task` of a sequence (which
/// must be given), or the run's only network (when it is not).
fn dense_source(run: &Run, task: Option<usize>) -> Result<(Net, Binarize, Option<usize>)> {
    let method = run.cfg.method.id();
    if !run.cfg.method.is_sequence() {
        if let Some(k) = task {
            return Err(Error::Config(format!(
                "--task {k}: {} is a single {method} run, not a task sequence (supsup, packnet): leave --task out",
                run.dir.display()
            )));
        }
        let (net, _, rule) = run.load_net(&candle_core::Device::Cpu)?;
        return Ok((net, rule, None));
    }
    let (mut nets, rule) = crate::supsup::load_tasks(&run.dir, &candle_core::Device::Cpu)?;
    let n = nets.len();
    let family = run.cfg.task.as_deref().unwrap_or("?");
    match task {
        None => Err(Error::Config(format!(
            "{} is a {method} run over {family} with {n} trained task{} (each with its own masks): choose one with \
             --task K, K from 0 to {}",
            run.dir.display(),
            if n == 1 { "" } else { "s" },
            n - 1
        ))),
        Some(k) if k >= n => Err(Error::Config(format!(
            "--task {k}: {} holds {n} trained task{}, 0 to {}",
            run.dir.display(),
            if n == 1 { "" } else { "s" },
            n - 1
        ))),
        Some(k) => Ok((nets.swap_remove(k), rule, Some(k))),
    }
}

/// The string metadata of a dense export: what the model is and how to feed it.
fn dense_metadata(
    run: &Run,
    dense: &DenseModel,
    format: ExportFormat,
    task: Option<usize>,
) -> Result<BTreeMap<String, String>> {
    let cfg = &run.cfg;
    let json = |v: serde_json::Value| v.to_string();
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("model", cfg.model.clone());
    put("method", cfg.method.id().to_string());
    put("input.shape", json(serde_json::json!(dense.input)));
    // Each f32 as its shortest decimal (0.1307, not 0.1307000070810318), which reads back as
    // the same f32.
    let decimal = |v: f32| v.to_string().parse::<f64>().unwrap_or(f64::from(v));
    put(
        "input.normalize",
        json(serde_json::json!({
            "mean": dense.normalize.iter().map(|m| decimal(m.0)).collect::<Vec<_>>(),
            "std": dense.normalize.iter().map(|m| decimal(m.1)).collect::<Vec<_>>(),
        })),
    );
    put("input.pixel_scale", (1.0f64 / 255.0).to_string());
    put("classes", dense.classes()?.to_string());
    let layers = "bias-free linear and conv layers holding their effective (masked) weights in f32, PyTorch layout \
                  ([out, in], [out, in, kh, kw])";
    match format {
        ExportFormat::Onnx => {
            put("layers", layers.to_string());
            put(
                "graph",
                "pixels [N, C, H, W] in [0, 1] are normalised ((x - mean) / std) inside the graph; the output is \
                 softmax probabilities, as the .smk graph's"
                    .to_string(),
            );
        }
        _ => {
            // The convention of safetensors files holding PyTorch tensors.
            put("format", "pt".to_string());
            put(
                "layers",
                format!(
                    "{layers}; batch norms as BatchNorm2d state dicts without num_batches_tracked (weight and bias \
                     only when affine); inputs are pixels in [0, 1] normalised per channel ((x - mean) / std) before \
                     the first layer; the last layer's outputs are logits"
                ),
            );
        }
    }
    let data = serde_json::json!({ "kind": cfg.data_kind, "task": cfg.task, "task_index": cfg.task_index });
    put("dataset", data.to_string());
    if let Some(k) = task {
        put("task", format!("task-{k}"));
    }
    put(
        "config",
        serde_json::to_string(cfg).map_err(|e| Error::Config(e.to_string()))?,
    );
    put(
        "producer",
        concat!("smk-trainer ", env!("CARGO_PKG_VERSION")).to_string(),
    );
    Ok(m)
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ExportSummary {
    /// File size.
    pub bytes: usize,
    /// Linear and conv weights in the model.
    pub weights: usize,
    /// File bits per weight.
    pub bits_per_weight: f64,
}
