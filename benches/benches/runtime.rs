//! `cargo bench -p smk-benches`: the runtime's kernels and whole models against dense peers
//! (our dense f32, and candle's CPU matmul) on the same shapes, plus this machine's streaming
//! read bandwidth, measured in the same run. Writes `target/criterion/smk-table.md`.
//!
//! Single layers whose weights fit in the last-level cache are **rotated**: each iteration runs
//! the next of several copies (enough copies to hold ≥ 96 MB, at most 256), so that batch-1
//! figures measure memory, as a real model's layers do. Where even 256 copies fit in the cache,
//! the table says "cache".

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion};
use smk_benches::{bytes_read, conv4, layer, lenet_300_100, stack, Mapped, Mask, Weights};
use smk_runtime::{Plan, Runner};
use std::path::PathBuf;
use std::time::Duration;

/// One measured case, for the table.
struct Case {
    group: String,
    id: String,
    /// Floating-point operations per call on the kept weights (2 per kept weight per input).
    flops: f64,
    /// Bytes of weights and masks read per call.
    bytes: f64,
    /// Whether all rotated copies together fit in the last-level cache.
    in_cache: bool,
}

const LLC: u64 = 32 << 20;
const ROTATE_BYTES: u64 = 96 << 20;

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/criterion")
}

fn criterion() -> Criterion {
    Criterion::default()
        .output_directory(&out_dir())
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200))
        .sample_size(10)
        .configure_from_args()
}

/// Runs `models` round-robin, one call per iteration.
fn bench_models(c: &mut Criterion, group: &str, id: &str, models: &[Mapped], batch: usize) {
    let parsed: Vec<_> = models.iter().map(|m| m.model()).collect();
    let mut runners: Vec<Runner<'_>> = parsed
        .iter()
        .map(|m| Runner::try_new(Plan::new(m, batch, None).unwrap()).unwrap())
        .collect();
    let x = smk_benches::values(1, batch * runners[0].plan().input_len(), 1.0);
    let mut y = vec![0f32; batch * runners[0].plan().output_len()];
    let mut next = 0;
    c.benchmark_group(group)
        .bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                runners[next].infer(&x, &mut y).unwrap();
                next = (next + 1) % runners.len();
            })
        });
}

fn kernels(c: &mut Criterion, cases: &mut Vec<Case>) {
    let mut masks = vec![
        (Weights::F32, Mask::None),
        (Weights::F16, Mask::None),
        (Weights::Bf16, Mask::None),
    ];
    for d in [1.0, 0.5, 0.25, 0.1, 0.05] {
        masks.push((Weights::F32, Mask::Element(d)));
    }
    for side in [4u16, 8, 16, 32] {
        for d in [1.0, 0.5, 0.25, 0.1, 0.05] {
            masks.push((Weights::F32, Mask::Block(side, side, d, true)));
        }
    }
    masks.push((Weights::F32, Mask::Block(16, 16, 0.1, false)));
    masks.push((Weights::Seeded, Mask::Element(0.5)));
    masks.push((Weights::Seeded, Mask::Block(16, 16, 0.1, true)));
    for (rows, cols) in [(300u32, 784u32), (1024, 1024), (4096, 4096)] {
        let group = format!("layer-{rows}x{cols}");
        for &(w, mask) in &masks {
            let first = Mapped::new(&layer(rows, cols, w, mask, 0));
            let read = bytes_read(&first.model()).max(1);
            let copies = ROTATE_BYTES.div_ceil(read).clamp(1, 256);
            let mut models = vec![first];
            models.extend((1..copies).map(|k| Mapped::new(&layer(rows, cols, w, mask, k))));
            let kept = rows as f64 * cols as f64 * mask.density();
            for batch in [1usize, 64] {
                let id = format!("{}-{}-b{batch}", w.name(), mask.name());
                bench_models(c, &group, &id, &models, batch);
                cases.push(Case {
                    group: group.clone(),
                    id,
                    flops: 2.0 * kept * batch as f64,
                    bytes: read as f64,
                    in_cache: copies * read <= LLC,
                });
            }
        }
        // candle's CPU matmul on the same shape: y = x · Wᵀ with Wᵀ stored contiguous.
        let bytes = rows as u64 * cols as u64 * 4;
        let copies = ROTATE_BYTES.div_ceil(bytes).clamp(1, 256);
        let wts: Vec<Tensor> = (0..copies)
            .map(|k| {
                Tensor::from_vec(
                    smk_benches::values(k, (rows * cols) as usize, 0.05),
                    (cols as usize, rows as usize),
                    &Device::Cpu,
                )
                .unwrap()
            })
            .collect();
        for batch in [1usize, 64] {
            let x = Tensor::from_vec(
                smk_benches::values(9, batch * cols as usize, 1.0),
                (batch, cols as usize),
                &Device::Cpu,
            )
            .unwrap();
            let id = format!("candle-matmul-b{batch}");
            let mut next = 0;
            c.benchmark_group(&group)
                .bench_function(BenchmarkId::from_parameter(&id), |b| {
                    b.iter(|| {
                        let y = x.matmul(&wts[next]).unwrap();
                        next = (next + 1) % wts.len();
                        y
                    })
                });
            cases.push(Case {
                group: group.clone(),
                id,
                flops: 2.0 * rows as f64 * cols as f64 * batch as f64,
                bytes: bytes as f64,
                in_cache: copies * bytes <= LLC,
            });
        }
    }
}

fn models(c: &mut Criterion, cases: &mut Vec<Case>) {
    type Build = fn(Weights, Mask) -> Vec<u8>;
    let fc4096: Build = |w, m| stack(4096, 8, w, m);
    let nets: [(&str, Build, f64); 3] = [
        ("lenet-300-100", lenet_300_100, 2.0 * 266_200.0),
        // Conv-4 on 28×28: multiply-adds per image, convolutions and linear layers.
        (
            "conv-4",
            conv4,
            2.0 * (784.0 * 64.0 * 9.0
                + 784.0 * 64.0 * 576.0
                + 196.0 * 128.0 * 576.0
                + 196.0 * 128.0 * 1152.0
                + 6272.0 * 256.0
                + 65536.0
                + 2560.0),
        ),
        ("fc-4096x8", fc4096, 2.0 * 8.0 * 4096.0 * 4096.0),
    ];
    for (name, build, flops) in nets {
        for (w, mask) in [
            (Weights::F32, Mask::None),
            (Weights::Seeded, Mask::Element(0.5)),
            (Weights::F32, Mask::Block(16, 16, 0.1, true)),
        ] {
            let model = Mapped::new(&build(w, mask));
            let read = bytes_read(&model.model());
            for batch in [1usize, 64] {
                let id = format!("{}-{}-b{batch}", w.name(), mask.name());
                bench_models(c, &format!("model-{name}"), &id, std::slice::from_ref(&model), batch);
                cases.push(Case {
                    group: format!("model-{name}"),
                    id,
                    flops: flops * mask.density() * batch as f64,
                    bytes: read as f64,
                    in_cache: read <= LLC,
                });
            }
        }
    }
}

/// Single-thread streaming read of 512 MB (huge pages): the machine's memory bandwidth.
fn bandwidth(c: &mut Criterion, cases: &mut Vec<Case>) {
    let bytes = 512usize << 20;
    let buf = Mapped::new(&vec![0u8; bytes]);
    let floats: &[f32] = bytemuck_f32(buf.bytes());
    c.benchmark_group("memory").bench_function("stream-read-512MB", |b| {
        b.iter(|| {
            let mut acc = [0f32; 16];
            for chunk in floats.chunks_exact(16) {
                for (a, v) in acc.iter_mut().zip(chunk) {
                    *a += v;
                }
            }
            acc
        })
    });
    cases.push(Case {
        group: "memory".into(),
        id: "stream-read-512MB".into(),
        flops: 0.0,
        bytes: bytes as f64,
        in_cache: false,
    });
}

fn bytemuck_f32(bytes: &[u8]) -> &[f32] {
    bytemuck::cast_slice(&bytes[..bytes.len() / 4 * 4])
}

/// The median time of a case, from criterion's estimates.
fn median_ns(case: &Case) -> Option<f64> {
    let path = out_dir().join(&case.group).join(&case.id).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn table(cases: &[Case]) -> String {
    let bandwidth = cases
        .iter()
        .find(|c| c.group == "memory")
        .and_then(|c| median_ns(c).map(|t| c.bytes / t));
    let mut s = String::new();
    if let Some(bw) = bandwidth {
        s += &format!("Streaming read bandwidth (one thread, 512 MB): **{bw:.1} GB/s**.\n\n");
    }
    s += "| group | case | median | GFLOP/s (kept weights) | GB/s (weights + masks read) | read time at that bandwidth | note |\n";
    s += "| --- | --- | --- | --- | --- | --- | --- |\n";
    for c in cases.iter().filter(|c| c.group != "memory") {
        let Some(t) = median_ns(c) else { continue };
        let time = if t > 1e6 {
            format!("{:.3} ms", t / 1e6)
        } else {
            format!("{:.2} µs", t / 1e3)
        };
        let roof = bandwidth
            .map(|bw| format!("{:.2}×", t / (c.bytes / bw)))
            .unwrap_or_default();
        s += &format!(
            "| {} | {} | {time} | {:.1} | {:.1} | {roof} | {} |\n",
            c.group,
            c.id,
            c.flops / t,
            c.bytes / t,
            if c.in_cache { "cache" } else { "" }
        );
    }
    s
}

fn main() {
    let mut c = criterion();
    let mut cases = Vec::new();
    bandwidth(&mut c, &mut cases);
    kernels(&mut c, &mut cases);
    models(&mut c, &mut cases);
    c.final_summary();
    let t = table(&cases);
    let path = out_dir().join("smk-table.md");
    std::fs::create_dir_all(out_dir()).ok();
    std::fs::write(&path, &t).expect("write the table");
    println!("\n{t}\nwritten to {}", path.display());
}
