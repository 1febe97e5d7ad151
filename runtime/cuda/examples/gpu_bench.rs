//! Times `GpuModel` on 8 stacked 4096 × 4096 layers (dense f32; packed 16×16 and 32×32 blocks
//! and tile-major 32×32 blocks at density 0.1; seeded signed-constant weights under an element
//! mask at 0.5 and 16×16 blocks at 0.1) at batch 1 and 256, against the device's copy
//! bandwidth and, built with `--features cublas`, against dense cuBLAS through candle. Times
//! are of the kernels alone (inputs already on the GPU, `infer_resident` then a stream sync),
//! median of many after a warm-up; "GB/s" is the bytes of weights, masks and indices one call
//! reads over its time, "of copy" that against a device-to-device copy's read + write rate.
//!
//! `cargo run --release -p smk-runtime-cuda --features cublas --example gpu_bench -- [runs] [sm_XX]`

use std::time::Instant;

use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
use smk_format::{seeded::draw, InitRule, Model, SeededInit};
use smk_runtime_cuda::GpuModel;

const N: u32 = 4096;
const LAYERS: usize = 8;

fn bits(seed: u64, n: usize, density: f64) -> Vec<bool> {
    (0..n)
        .map(|i| ((draw(seed, i as u64) >> 11) as f64) < density * (1u64 << 53) as f64)
        .collect()
}

/// The model and the bytes one call reads (weights, masks, indices).
fn stack(spec: &str) -> (Vec<u8>, u64) {
    let mut b = ModelBuilder::new(&[N]).unwrap();
    let n = (N * N) as usize;
    let mut bytes = 0u64;
    for l in 0..LAYERS {
        let name = format!("fc{l}");
        let seeded = spec.starts_with("seeded");
        let w = if seeded {
            let init = SeededInit {
                rule: InitRule::SignedConstant,
                seed: 7,
                stream: l as u32,
                scale: 0.02,
            };
            TensorSpec::seeded(format!("{name}.weight"), &[N, N], init).unwrap()
        } else {
            let v: Vec<f32> = (0..n)
                .map(|i| ((draw(l as u64, i as u64) >> 40) as f32 / 16777216.0 - 0.5) * 0.03)
                .collect();
            TensorSpec::f32(format!("{name}.weight"), &[N, N], v).unwrap()
        };
        let layer = b.linear(&name, w, None).unwrap();
        let set = if l == 0 { b.mask_set("task").ok() } else { Some(0) };
        let block = |b: &mut ModelBuilder, r: u16, d: f64| {
            let grid = (N / r as u32) as usize * (N / r as u32) as usize;
            let kept = bits(l as u64 + 100, grid, d);
            b.set_mask(set.unwrap(), layer, MaskSpec::block_bools([r, r], &kept))
                .unwrap();
            kept.iter().filter(|&&k| k).count() as u64 * (r as u64 * r as u64)
        };
        bytes += match spec {
            "dense-f32" => 4 * n as u64,
            "block16-0.1" => 4 * block(&mut b, 16, 0.1),
            "block32-0.1" | "tiled32-0.1" => 4 * block(&mut b, 32, 0.1),
            "seeded-element-0.5" => {
                b.set_mask(
                    set.unwrap(),
                    layer,
                    MaskSpec::element_bools(&bits(l as u64 + 100, n, 0.5)),
                )
                .unwrap();
                n as u64 / 8
            }
            "seeded-block16-0.1" => {
                block(&mut b, 16, 0.1);
                n as u64 / 256 / 8
            }
            _ => unreachable!(),
        };
        if spec.starts_with("block") {
            b.pack_blocks(layer).unwrap();
        }
    }
    (b.to_bytes().unwrap(), bytes)
}

/// Median seconds of `f` over `runs` calls after three warm-up calls.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

/// Bytes per second of a 1 GiB device-to-device copy, counting what it reads and writes.
fn copy_bandwidth(runs: usize) -> Result<f64, String> {
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| format!("{e:?}"))?;
    let stream = ctx.default_stream();
    let n = 1usize << 28;
    let src = stream.alloc_zeros::<f32>(n).map_err(|e| format!("{e:?}"))?;
    let mut dst = stream.alloc_zeros::<f32>(n).map_err(|e| format!("{e:?}"))?;
    let t = median(runs, || {
        stream.memcpy_dtod(&src, &mut dst).expect("device copy");
        stream.synchronize().expect("stream sync");
    });
    Ok(2.0 * 4.0 * n as f64 / t)
}

/// Median seconds of 8 dense 4096² f32 products at `batch` through candle (cuBLAS).
#[cfg(feature = "cublas")]
fn cublas(batch: usize, runs: usize) -> Result<f64, String> {
    use candle_core::{DType, Device, Tensor};
    let e = |e: candle_core::Error| e.to_string();
    let dev = Device::new_cuda(0).map_err(e)?;
    let x = Tensor::rand(0f32, 1.0, (batch, N as usize), &dev).map_err(e)?;
    let ws: Vec<Tensor> = (0..LAYERS)
        .map(|_| Tensor::rand(-0.015f32, 0.015, (N as usize, N as usize), &dev)?.t())
        .collect::<Result<_, _>>()
        .map_err(e)?;
    debug_assert_eq!(x.dtype(), DType::F32);
    Ok(median(runs, || {
        let mut h = x.clone();
        for w in &ws {
            h = h.matmul(w).expect("cuBLAS product");
        }
        dev.synchronize().expect("device sync");
    }))
}

#[cfg(not(feature = "cublas"))]
fn cublas(_: usize, _: usize) -> Result<f64, String> {
    Err("built without --features cublas".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50).max(1);
    let arch: Option<&'static str> = args.get(2).map(|a| &*Box::leak(a.clone().into_boxed_str()));
    let copy = match copy_bandwidth(runs.min(20)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            std::process::exit(1);
        }
    };
    println!("device-to-device copy: {:.0} GB/s (read + write)", copy / 1e9);
    let mut dense = [0f64; 2];
    for (k, batch) in [1usize, 256].into_iter().enumerate() {
        match cublas(batch, runs) {
            Ok(t) => {
                dense[k] = t;
                let gb = 4.0 * (N as f64 * N as f64) * LAYERS as f64 / t / 1e9;
                println!(
                    "cuBLAS dense f32 (candle), batch {batch}: {:.3} ms, {gb:.0} GB/s of weights",
                    t * 1e3
                );
            }
            Err(e) => println!("cuBLAS dense f32, batch {batch}: not timed ({e})"),
        }
    }
    println!();
    println!("| model | batch | median ms | GB/s read | of copy | GFLOP/s kept | vs cuBLAS dense |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for spec in [
        "dense-f32",
        "block16-0.1",
        "block32-0.1",
        "tiled32-0.1",
        "seeded-element-0.5",
        "seeded-block16-0.1",
    ] {
        let (file, bytes) = stack(spec);
        let model = Model::parse(&file).unwrap();
        let gpu = match GpuModel::load(&model, None, 0, arch) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gpu_bench: {e}");
                std::process::exit(1);
            }
        };
        let density = match spec {
            "dense-f32" => 1.0,
            "seeded-element-0.5" => 0.5,
            _ => 0.1,
        };
        for (k, batch) in [1usize, 256].into_iter().enumerate() {
            let x: Vec<f32> = (0..batch * N as usize)
                .map(|i| (draw(9, i as u64) >> 40) as f32 / 16777216.0)
                .collect();
            let x = gpu.stream().clone_htod(&x).unwrap();
            let t = median(runs, || {
                gpu.infer_resident(&x, batch).expect("infer");
                gpu.stream().synchronize().expect("stream sync");
            });
            let flops = 2.0 * density * (N as f64 * N as f64) * LAYERS as f64 * batch as f64;
            let gbs = bytes as f64 / t / 1e9;
            let vs = if dense[k] > 0.0 {
                format!("{:.2}x", dense[k] / t)
            } else {
                "-".into()
            };
            println!(
                "| {spec} | {batch} | {:.3} | {gbs:.0} | {:.0}% | {:.0} | {vs} |",
                t * 1e3,
                100.0 * gbs * 1e9 / copy,
                flops / t / 1e9
            );
        }
    }
}
