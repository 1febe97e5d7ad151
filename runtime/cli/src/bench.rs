//! `runtime bench`: latency percentiles and throughput of a model, or of a synthetic stack of
//! linear layers built in memory, optionally against the same shapes with dense f32 weights.

use clap::Args;
use serde_json::json;
use smk_format::seeded::{draw, SeededInit};
use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{InitRule, Model};
use smk_runtime::{Isa, Plan, Runner};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["model", "synthetic"]))]
pub struct BenchArgs {
    /// The .smk file to time.
    model: Option<PathBuf>,
    /// Time a model built in memory instead: `linear:OUTxINxCOUNT` (a stack of COUNT linear
    /// layers), then any of `weights=f32|f16|bf16|seeded|signs` (seeded: signed-constant;
    /// signs: stored learned binary weights, element masks only),
    /// `mask=none|element|blockRxC`, `density=F` (fraction of weights or blocks kept),
    /// `layout=packed|tiled` (block masks over stored weights; default packed, as `trainer
    /// export` writes a single mask), `seed=N`. Example:
    /// `linear:4096x4096x8,mask=block16x16,density=0.1,weights=f32`.
    #[arg(long)]
    synthetic: Option<String>,
    /// Inputs per call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Instruction set: auto, scalar, avx2, avx512 or neon.
    #[arg(long, default_value = "auto")]
    isa: String,
    /// Where to run: cpu, or cuda / cuda:N (a runtime built with `--features cuda`). On a GPU
    /// the times are of the kernels alone: inputs already there, outputs left there.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also time the same layer shapes with dense f32 weights and no mask, and print the speedup.
    #[arg(long)]
    compare_dense: bool,
    /// The mask set (task) to apply, by name or number.
    #[arg(long)]
    task: Option<String>,
    /// Seconds to time each model for (after warm-up).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// A parsed `--synthetic` spec.
#[derive(Clone, Debug)]
struct Spec {
    /// `(rows, cols)` of each linear layer, in order.
    shapes: Vec<(u32, u32)>,
    weights: String,
    mask: Option<[u16; 2]>,
    element: bool,
    density: f64,
    packed: bool,
    seed: u64,
}

fn parse_spec(s: &str) -> Result<Spec, String> {
    let bad = |m: &str| format!("--synthetic {s:?}: {m}");
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or("");
    let dims = head
        .strip_prefix("linear:")
        .ok_or_else(|| bad("must start with linear:OUTxINxCOUNT"))?;
    let nums: Vec<u32> = dims
        .split('x')
        .map(|d| d.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("bad OUTxIN[xCOUNT]"))?;
    let (out, inp, count) = match nums[..] {
        [o, i] => (o, i, 1),
        [o, i, c] => (o, i, c),
        _ => return Err(bad("bad OUTxIN[xCOUNT]")),
    };
    if out == 0 || inp == 0 || count == 0 || count > 1000 {
        return Err(bad("sizes must be positive (and at most 1000 layers)"));
    }
    let shapes = (0..count).map(|l| (out, if l == 0 { inp } else { out })).collect();
    let mut spec = Spec {
        shapes,
        weights: "f32".into(),
        mask: None,
        element: false,
        density: 1.0,
        packed: true,
        seed: 1,
    };
    let mut density_given = false;
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(&format!("{kv:?} is not key=value")))?;
        match k {
            "weights" if ["f32", "f16", "bf16", "seeded", "signs"].contains(&v) => spec.weights = v.into(),
            "mask" if v == "none" => {}
            "mask" if v == "element" => spec.element = true,
            "mask" => {
                let rc = v
                    .strip_prefix("block")
                    .ok_or_else(|| bad("mask is none, element or blockRxC"))?;
                let (r, c) = rc
                    .split_once('x')
                    .ok_or_else(|| bad("mask is none, element or blockRxC"))?;
                let (r, c) = (
                    r.parse::<u16>().map_err(|_| bad("bad block rows"))?,
                    c.parse::<u16>().map_err(|_| bad("bad block columns"))?,
                );
                if r == 0 || c == 0 || r > 1024 || c > 1024 {
                    return Err(bad("block sides are 1 to 1024"));
                }
                spec.mask = Some([r, c]);
            }
            "density" => {
                spec.density = v.parse().map_err(|_| bad("density is a number"))?;
                density_given = true;
                if !(0.0..=1.0).contains(&spec.density) {
                    return Err(bad("density is between 0 and 1"));
                }
            }
            "layout" if v == "packed" || v == "tiled" => spec.packed = v == "packed",
            "seed" => spec.seed = v.parse().map_err(|_| bad("seed is an integer"))?,
            _ => return Err(bad(&format!("unknown or bad setting {kv:?}"))),
        }
    }
    if (spec.element || spec.mask.is_some()) && !density_given {
        spec.density = 0.5;
    }
    Ok(spec)
}

/// Uniform values in [-1, 1)·scale.
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| ((draw(seed, i) >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale)
        .collect()
}

fn bits(seed: u64, n: usize, density: f64) -> Vec<bool> {
    (0..n as u64)
        .map(|i| ((draw(seed ^ 0xB175, i) >> 11) as f64) < density * (1u64 << 53) as f64)
        .collect()
}

/// Builds the synthetic model (`dense`: the same shapes, f32, unmasked).
fn build(spec: &Spec, dense: bool) -> Result<Vec<u8>, String> {
    let mut b = ModelBuilder::new(&[spec.shapes[0].1]).map_err(|e| e.to_string())?;
    let mut layers = Vec::new();
    for (l, &(rows, cols)) in spec.shapes.iter().enumerate() {
        let l = l as u32;
        let n = rows as usize * cols as usize;
        let name = format!("fc{l}.weight");
        let scale = 1.0 / (cols as f32).sqrt();
        let seed = spec.seed.wrapping_mul(1000) + l as u64;
        let w = if dense { "f32" } else { spec.weights.as_str() };
        let t = match w {
            "seeded" => TensorSpec::seeded(
                &name,
                &[rows, cols],
                SeededInit {
                    rule: InitRule::SignedConstant,
                    seed,
                    stream: l,
                    scale,
                },
            ),
            "signs" => TensorSpec::signs(&name, &[rows, cols], bits(seed ^ 0x5161, n, 0.5), scale),
            "f16" => TensorSpec::new(
                &name,
                &[rows, cols],
                TensorData::F16(values(seed, n, scale).into_iter().map(half::f16::from_f32).collect()),
            ),
            "bf16" => TensorSpec::new(
                &name,
                &[rows, cols],
                TensorData::Bf16(values(seed, n, scale).into_iter().map(half::bf16::from_f32).collect()),
            ),
            _ => TensorSpec::f32(&name, &[rows, cols], values(seed, n, scale)),
        }
        .map_err(|e| e.to_string())?;
        layers.push((
            b.linear(&format!("fc{l}"), t, None).map_err(|e| e.to_string())?,
            rows,
            cols,
            seed,
        ));
    }
    if !dense && (spec.element || spec.mask.is_some()) {
        let set = b.mask_set("synthetic").map_err(|e| e.to_string())?;
        for &(id, rows, cols, seed) in &layers {
            let spec_mask = match spec.mask {
                Some([r, c]) => {
                    let grid = rows.div_ceil(r as u32) as usize * cols.div_ceil(c as u32) as usize;
                    MaskSpec::block_bools([r, c], &bits(seed, grid, spec.density))
                }
                None => MaskSpec::element_bools(&bits(seed, rows as usize * cols as usize, spec.density)),
            };
            b.set_mask(set, id, spec_mask).map_err(|e| e.to_string())?;
            if spec.mask.is_some() && spec.packed && spec.weights != "seeded" {
                b.pack_blocks(id).map_err(|e| e.to_string())?;
            }
        }
    }
    b.to_bytes().map_err(|e| e.to_string())
}

/// The last-level cache's size in bytes, where the OS says.
fn llc_bytes() -> Option<u64> {
    let mut best = None;
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let Ok(size) = std::fs::read_to_string(format!("{dir}/size")) else {
            continue;
        };
        let size = size.trim();
        let n: u64 = size.trim_end_matches(['K', 'M']).parse().ok()?;
        let bytes = if size.ends_with('M') {
            n << 20
        } else if size.ends_with('K') {
            n << 10
        } else {
            n
        };
        best = best.max(Some(bytes));
    }
    best
}

struct Timing {
    median_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    runs: usize,
}

/// One pass of a single-thread streaming read over `buf`: seconds taken.
fn read_pass(buf: &[f32]) -> f64 {
    let t = Instant::now();
    let mut acc = [0f32; 16];
    for chunk in buf.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    std::hint::black_box(acc);
    t.elapsed().as_secs_f64()
}

/// Median milliseconds per call (and p90, p99) of each runner. With several, calls alternate
/// round by round, so that all see the same machine (shared memory bandwidth drifts over
/// seconds on a shared host); `stream`, when given, is read once per round too, and its
/// median read time reported last.
fn time_together(runs: &mut [&mut Runner<'_>], stream: Option<&[f32]>, seconds: f64) -> Result<Vec<Timing>, String> {
    let mut io: Vec<(Vec<f32>, Vec<f32>)> = runs
        .iter()
        .map(|r| {
            (
                values(7, r.plan().batch() * r.plan().input_len(), 1.0),
                vec![0f32; r.plan().batch() * r.plan().output_len()],
            )
        })
        .collect();
    for (r, (x, y)) in runs.iter_mut().zip(io.iter_mut()) {
        for _ in 0..3 {
            r.infer(x, y).map_err(|e| e.to_string())?;
        }
    }
    let lanes = runs.len() + stream.is_some() as usize;
    let mut times = vec![Vec::new(); lanes];
    let start = Instant::now();
    while (start.elapsed().as_secs_f64() < seconds * lanes as f64 || times[0].len() < 10) && times[0].len() < 1_000_000
    {
        for (k, (r, (x, y))) in runs.iter_mut().zip(io.iter_mut()).enumerate() {
            let t = Instant::now();
            r.infer(x, y).map_err(|e| e.to_string())?;
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(buf) = stream {
            times[lanes - 1].push(read_pass(buf) * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            let pct = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize];
            Timing {
                median_ms: pct(0.5),
                p90_ms: pct(0.9),
                p99_ms: pct(0.99),
                runs: t.len(),
            }
        })
        .collect())
}

pub fn bench(a: BenchArgs) -> Result<ExitCode, String> {
    let isa = crate::parse_isa(&a.isa)?;
    let device = crate::device::Device::parse(&a.device)?;
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let (bytes, spec) = match (&a.model, &a.synthetic) {
        (Some(path), None) => (
            std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            None,
        ),
        (None, Some(s)) => {
            let spec = parse_spec(s)?;
            eprintln!("building the synthetic model …");
            (build(&spec, false)?, Some(spec))
        }
        _ => return Err("give a model file or --synthetic, not both".into()),
    };
    let aligned = AlignedBytes::new(&bytes);
    drop(bytes);
    let name = a
        .model
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| a.synthetic.clone().unwrap_or_default());
    let model = Model::parse(aligned.bytes()).map_err(|e| format!("{name}: {e}"))?;
    let task = crate::resolve_task(&model, a.task.as_deref(), std::path::Path::new(&name))?;
    if let crate::device::Device::Cuda(ordinal) = device {
        let dense = match (a.compare_dense, &spec) {
            (false, _) => None,
            (true, Some(s)) => Some(build(s, true)?),
            (true, None) => Some(build(
                &dense_spec_of(&model).ok_or_else(|| {
                    format!("{name}: --compare-dense needs a chain of linear layers (no convolutions)")
                })?,
                true,
            )?),
        };
        let dense = dense.map(|b| AlignedBytes::new(&b));
        let read = Plan::new(&model, a.batch, task)
            .map_err(|e| format!("{name}: {e}"))?
            .bytes_read();
        return gpu::bench(
            &a,
            &name,
            &model,
            task,
            ordinal,
            read,
            dense.as_ref().map(AlignedBytes::bytes),
        );
    }
    let mut plan = Plan::new(&model, a.batch, task).map_err(|e| format!("{name}: {e}"))?;
    if let Some(isa) = isa {
        plan = plan.with_isa(isa).map_err(|e| e.to_string())?;
    }
    let used_isa: Isa = plan.isa();
    let read = plan.bytes_read();
    let mut run = Runner::try_new(plan).map_err(|e| format!("{name}: {e}"))?;
    let llc = llc_bytes();
    let mut dense_part = None;
    if a.compare_dense {
        let dense_spec = match &spec {
            Some(s) => s.clone(),
            None => dense_spec_of(&model)
                .ok_or_else(|| format!("{name}: --compare-dense needs a chain of linear layers (no convolutions)"))?,
        };
        eprintln!("building the dense f32 model of the same shapes …");
        dense_part = Some(AlignedBytes::new(&build(&dense_spec, true)?));
    }
    let (t, dense_timing) = match &dense_part {
        None => (time_together(&mut [&mut run], None, a.seconds)?.remove(0), None),
        Some(bytes) => {
            let dense = Model::parse(bytes.bytes()).map_err(|e| e.to_string())?;
            let dplan = Plan::new(&dense, a.batch, None)
                .and_then(|p| p.with_isa(used_isa))
                .map_err(|e| e.to_string())?;
            let dense_read = dplan.bytes_read();
            let mut drun = Runner::try_new(dplan).map_err(|e| e.to_string())?;
            // The streaming read covers as many bytes as the dense weights (at least 256 MB,
            // so that it measures memory, not cache).
            let stream_bytes = AlignedBytes::new(&vec![0u8; dense_read.max(256 << 20) as usize]);
            let stream: &[f32] = bytemuck::cast_slice(stream_bytes.bytes());
            let mut ts = time_together(&mut [&mut run, &mut drun], Some(stream), a.seconds)?;
            let (s, d) = (ts.pop().ok_or("no timing")?, ts.pop().ok_or("no timing")?);
            let bandwidth = stream.len() as f64 * 4.0 / (s.median_ms / 1e3) / 1e9;
            (ts.remove(0), Some((d, dense_read, bandwidth)))
        }
    };
    let mut out = json!({
        "schema": crate::JSON_SCHEMA, "model": name, "batch": a.batch, "isa": used_isa.name(),
        "median_ms": t.median_ms, "p90_ms": t.p90_ms, "p99_ms": t.p99_ms, "runs": t.runs,
        "inputs_per_second": a.batch as f64 / (t.median_ms / 1e3),
        "bytes_read": read, "gbs": read as f64 / (t.median_ms / 1e3) / 1e9, "llc_bytes": llc,
    });
    let mut notes = Vec::new();
    if let Some((d, dense_read, bandwidth)) = dense_timing {
        let roofline_ms = dense_read as f64 / (bandwidth * 1e9) * 1e3;
        out["dense_median_ms"] = json!(d.median_ms);
        out["speedup"] = json!(d.median_ms / t.median_ms);
        out["dense_bytes_read"] = json!(dense_read);
        out["dense_gbs"] = json!(dense_read as f64 / (d.median_ms / 1e3) / 1e9);
        out["bandwidth_gbs"] = json!(bandwidth);
        out["dense_over_roofline"] = json!(d.median_ms / roofline_ms);
        if llc.is_some_and(|l| dense_read <= l) {
            notes.push(format!(
                "the dense weights ({:.1} MB) fit in the last-level cache ({:.0} MB): these timings are not memory-bound",
                dense_read as f64 / 1e6,
                llc.unwrap_or(0) as f64 / (1 << 20) as f64
            ));
        }
    } else if spec.is_some() && llc.is_some_and(|l| read <= l) {
        notes.push(format!(
            "the weights read ({:.1} MB) fit in the last-level cache ({:.0} MB): these timings are not memory-bound",
            read as f64 / 1e6,
            llc.unwrap_or(0) as f64 / (1 << 20) as f64
        ));
    }
    out["notes"] = json!(notes);
    if a.json {
        println!("{out}");
    } else {
        println!("{name}: batch {}, {}, one thread, {} runs", a.batch, used_isa, t.runs);
        println!(
            "  median {:.4} ms (p90 {:.4}, p99 {:.4}), {:.1} inputs/s, {:.2} GB/s on {:.1} MB of weights and masks",
            t.median_ms,
            t.p90_ms,
            t.p99_ms,
            out["inputs_per_second"].as_f64().unwrap_or(0.0),
            out["gbs"].as_f64().unwrap_or(0.0),
            read as f64 / 1e6
        );
        if a.compare_dense {
            println!(
                "  dense f32: median {:.4} ms, {:.2} GB/s; speedup {:.2}x",
                out["dense_median_ms"].as_f64().unwrap_or(0.0),
                out["dense_gbs"].as_f64().unwrap_or(0.0),
                out["speedup"].as_f64().unwrap_or(0.0)
            );
            println!(
                "  memory read bandwidth here {:.1} GB/s: dense takes {:.2}x the time to read its weights once",
                out["bandwidth_gbs"].as_f64().unwrap_or(0.0),
                out["dense_over_roofline"].as_f64().unwrap_or(0.0)
            );
        }
        for n in &notes {
            println!("  note: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The layer shapes of a file's linear layers, chained (element-wise layers between them are
/// left out: they cost little), for `--compare-dense` on a file.
fn dense_spec_of(model: &Model<'_>) -> Option<Spec> {
    let mut shapes = Vec::new();
    for l in model.layers() {
        if let smk_format::Op::Linear { weight, .. } = l.op {
            let (r, c) = model.tensor(weight)?.matrix();
            shapes.push((r as u32, c as u32));
        }
    }
    let chained = !shapes.is_empty() && shapes.windows(2).all(|w| w[1].1 == w[0].0);
    chained.then(|| Spec {
        shapes,
        weights: "f32".into(),
        mask: None,
        element: false,
        density: 1.0,
        packed: false,
        seed: 1,
    })
}

/// Bytes copied to page-aligned anonymous memory, on huge pages where the kernel gives them
/// (fewer TLB misses when streaming hundreds of megabytes), so kernels read in place.
struct AlignedBytes {
    map: memmap2::MmapMut,
    len: usize,
}

impl AlignedBytes {
    fn new(bytes: &[u8]) -> Self {
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).expect("anonymous memory for the model");
        // Advice only: where huge pages are off, the copy works the same.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        map[..bytes.len()].copy_from_slice(bytes);
        Self { map, len: bytes.len() }
    }
    fn bytes(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::{values, BenchArgs};
    use serde_json::json;
    use smk_format::Model;
    use smk_runtime_cuda::GpuModel;
    use std::process::ExitCode;
    use std::time::Instant;

    /// Median milliseconds of one batch through the kernels (input resident, a stream sync
    /// after each call).
    fn time(gpu: &GpuModel, batch: usize, seconds: f64) -> Result<(f64, usize), String> {
        let e = |e: smk_runtime_cuda::GpuError| e.to_string();
        let x = gpu
            .stream()
            .clone_htod(&values(7, batch * gpu.input_len(), 1.0))
            .map_err(|e| format!("{e:?}"))?;
        let once = || -> Result<f64, String> {
            let t = Instant::now();
            gpu.infer_resident(&x, batch).map_err(e)?;
            gpu.stream().synchronize().map_err(|e| format!("{e:?}"))?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        for _ in 0..3 {
            once()?;
        }
        let start = Instant::now();
        let mut t = Vec::new();
        while (start.elapsed().as_secs_f64() < seconds || t.len() < 10) && t.len() < 1_000_000 {
            t.push(once()?);
        }
        t.sort_by(f64::total_cmp);
        Ok((t[t.len() / 2], t.len()))
    }

    pub fn bench(
        a: &BenchArgs,
        name: &str,
        model: &Model<'_>,
        task: Option<u32>,
        ordinal: usize,
        read: u64,
        dense: Option<&[u8]>,
    ) -> Result<ExitCode, String> {
        let load =
            |m: &Model<'_>, t| GpuModel::load(m, t, ordinal, None).map_err(|e| format!("{name}: cuda:{ordinal}: {e}"));
        let gpu = load(model, task)?;
        let (ms, runs) = time(&gpu, a.batch, a.seconds)?;
        let mut out = json!({
            "schema": crate::JSON_SCHEMA, "model": name, "batch": a.batch, "device": format!("cuda:{ordinal}"),
            "median_ms": ms, "runs": runs, "inputs_per_second": a.batch as f64 / (ms / 1e3),
            "bytes_read": read, "gbs": read as f64 / (ms / 1e3) / 1e9,
        });
        if let Some(bytes) = dense {
            let dense_model = Model::parse(bytes).map_err(|e| e.to_string())?;
            let (dms, _) = time(&load(&dense_model, None)?, a.batch, a.seconds)?;
            out["dense_median_ms"] = json!(dms);
            out["speedup"] = json!(dms / ms);
        }
        if a.json {
            println!("{out}");
        } else {
            println!(
                "{name}: batch {}, GPU cuda:{ordinal}, {runs} runs (kernels only)",
                a.batch
            );
            println!(
                "  median {ms:.4} ms, {:.1} inputs/s, {:.1} GB/s on {:.1} MB of weights and masks",
                a.batch as f64 / (ms / 1e3),
                read as f64 / (ms / 1e3) / 1e9,
                read as f64 / 1e6
            );
            if let Some(d) = out["dense_median_ms"].as_f64() {
                println!("  dense f32: median {d:.4} ms; speedup {:.2}x", d / ms);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(not(feature = "cuda"))]
mod gpu {
    use super::BenchArgs;
    use smk_format::Model;
    use std::process::ExitCode;

    pub fn bench(
        _: &BenchArgs,
        _: &str,
        _: &Model<'_>,
        _: Option<u32>,
        _: usize,
        _: u64,
        _: Option<&[u8]>,
    ) -> Result<ExitCode, String> {
        Err("this runtime was built without CUDA".into())
    }
}
