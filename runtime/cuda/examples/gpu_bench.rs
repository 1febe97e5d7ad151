//! Times `GpuModel` on 8 stacked 4096 × 4096 layers (dense f32, packed 16×16 and 32×32 blocks at
//! density 0.1, seeded signed-constant weights under an element mask at 0.5 and 16×16 blocks at
//! 0.1) at batch 1 and 256, against the device's copy bandwidth. Each time is one whole `infer`
//! (input upload, 8 products, output download), median of many after a warm-up.
//!
//! `cargo run --release -p smk-runtime-cuda --example gpu_bench -- [sm_90] [runs]`

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
            "block32-0.1" => 4 * block(&mut b, 32, 0.1),
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arch: &'static str = Box::leak(args.get(1).cloned().unwrap_or_else(|| "sm_90".into()).into_boxed_str());
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    println!("| model | batch | median ms | GB/s read | GFLOP/s kept |");
    println!("| --- | --- | --- | --- | --- |");
    for spec in [
        "dense-f32",
        "block16-0.1",
        "block32-0.1",
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
        for batch in [1usize, 256] {
            let x: Vec<f32> = (0..batch * N as usize)
                .map(|i| (draw(9, i as u64) >> 40) as f32 / 16777216.0)
                .collect();
            for _ in 0..3 {
                gpu.infer(&x, batch).unwrap();
            }
            let mut times: Vec<f64> = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    gpu.infer(&x, batch).unwrap();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let median = times[runs / 2];
            let flops = 2.0 * density * (N as f64 * N as f64) * LAYERS as f64 * batch as f64;
            println!(
                "| {spec} | {batch} | {:.3} | {:.0} | {:.0} |",
                median * 1e3,
                bytes as f64 / median / 1e9,
                flops / median / 1e9
            );
        }
    }
}
