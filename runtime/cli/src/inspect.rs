//! `runtime inspect`: what a file holds, layer by layer.

use serde_json::{json, Value};
use smk_format::{Layout, MaskKind, Model, Op, Storage, Tensor};
use smk_runtime::Plan;
use std::path::Path;
use std::process::ExitCode;

fn storage_name(t: &Tensor<'_>) -> String {
    match t.storage {
        Storage::Seeded(init) => format!("seeded {} (seed {}, scale {})", init.rule.name(), init.seed, init.scale),
        Storage::Signs { scale } => format!("signs (±{scale}, 1 bit a weight)"),
        s => s.kind().name().to_string(),
    }
}

fn layout_name(t: &Tensor<'_>) -> String {
    match t.layout {
        Layout::RowMajor => "row-major".into(),
        Layout::TileMajor { block } => format!("tile-major {}x{}", block[0], block[1]),
        Layout::Packed { block, index } => format!("packed {}x{} ({} blocks kept)", block[0], block[1], index.nnz()),
    }
}

/// The file's description as JSON (also what the text form prints).
pub fn describe(model: &Model<'_>, file_bytes: u64) -> Value {
    let mut layers = Vec::new();
    let mut weights = 0u64;
    let plan = Plan::new(model, 1, (model.mask_set_count() > 0).then_some(0)).ok();
    for l in model.layers() {
        let mut entry = json!({
            "index": l.index, "name": l.name, "kind": l.op.kind().name(), "output_shape": l.output_shape.dims(),
        });
        if let Op::Linear { weight, .. } | Op::Conv2d { weight, .. } = l.op {
            if let Some(t) = model.tensor(weight) {
                weights += t.shape.numel();
                let masks: Vec<_> = model
                    .mask_sets()
                    .filter_map(|s| model.mask(s.index, weight).map(|m| (s, m)))
                    .map(|(s, m)| {
                        let kind = match m.kind {
                            MaskKind::Element => "element".to_string(),
                            MaskKind::Block => format!("block {}x{}", m.block[0], m.block[1]),
                        };
                        json!({"task": s.name, "kind": kind, "density": m.density(), "bytes": m.data.len()})
                    })
                    .collect();
                entry["weight"] = json!({
                    "name": t.name, "shape": t.shape.dims(), "storage": storage_name(&t), "layout": layout_name(&t),
                    "bytes": t.data.len(), "masks": masks,
                    "kernel": plan.as_ref().map(|p| p.kernel(l.index)),
                });
            }
        }
        layers.push(entry);
    }
    let tasks: Vec<_> = model.mask_sets().map(|s| s.name).collect();
    let metadata: serde_json::Map<String, Value> =
        model.metadata().map(|(k, v)| (k.to_string(), Value::from(v))).collect();
    json!({
        "version": format!("{}.{}", model.version().0, model.version().1),
        "input_shape": model.input_shape().dims(), "output_shape": model.output_shape().dims(),
        "layers": layers, "weights": weights, "bytes": file_bytes,
        "bits_per_weight": if weights > 0 { file_bytes as f64 * 8.0 / weights as f64 } else { 0.0 },
        "tasks": tasks, "metadata": metadata,
    })
}

pub fn inspect(path: &Path, as_json: bool) -> Result<ExitCode, String> {
    let session = crate::open(path)?;
    let model = session.model().map_err(|e| format!("{}: {e}", path.display()))?;
    let d = describe(&model, model.bytes().len() as u64);
    if as_json {
        let mut d = d;
        d["schema"] = json!(crate::JSON_SCHEMA);
        d["path"] = json!(path);
        println!("{d}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: .smk {}, {} bytes",
        path.display(),
        d["version"].as_str().unwrap_or("?"),
        d["bytes"]
    );
    println!("input {} -> output {}", d["input_shape"], d["output_shape"]);
    println!(
        "{} weights, {:.3} bits per weight on disk",
        d["weights"],
        d["bits_per_weight"].as_f64().unwrap_or(0.0)
    );
    let tasks: Vec<_> = model.mask_sets().map(|s| s.name).collect();
    println!(
        "tasks ({}): {}",
        tasks.len(),
        if tasks.is_empty() {
            "none (no masks)".into()
        } else {
            tasks.join(", ")
        }
    );
    println!("layers:");
    for l in d["layers"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  {:>3} {:<14} {:<10} -> {}",
            l["index"],
            l["name"].as_str().unwrap_or(""),
            l["kind"].as_str().unwrap_or(""),
            l["output_shape"]
        );
        if let Some(w) = l.get("weight") {
            line += &format!(
                "  weight {} {}, {}, {} bytes",
                w["shape"],
                w["storage"].as_str().unwrap_or(""),
                w["layout"].as_str().unwrap_or(""),
                w["bytes"]
            );
            for m in w["masks"].as_array().into_iter().flatten() {
                line += &format!(
                    "\n        task {}: {} mask, density {:.4}, {} bytes",
                    m["task"].as_str().unwrap_or(""),
                    m["kind"].as_str().unwrap_or(""),
                    m["density"].as_f64().unwrap_or(0.0),
                    m["bytes"]
                );
            }
            if let Some(k) = w["kernel"].as_str() {
                line += &format!("\n        kernel: {k}");
            }
        }
        println!("{line}");
    }
    if let Some(meta) = d["metadata"].as_object() {
        println!("metadata:");
        for (k, v) in meta {
            let v = v.as_str().unwrap_or("");
            let short: String = v.chars().take(100).collect();
            println!("  {k} = {short}{}", if v.chars().count() > 100 { " …" } else { "" });
        }
    }
    Ok(ExitCode::SUCCESS)
}
