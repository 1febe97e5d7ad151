//! `GpuModel` against the CPU runtime (itself checked against an f64 reference), on small
//! two-layer models of every weight storage and mask kind and on a graph of every layer kind,
//! at batches that take the per-input kernels (1, 5) and the tiled one (9, 70), on the first GPU.
//! Where no GPU answers, the test says so and returns, unless `SMK_REQUIRE_GPU` is set:
//! `scripts/gpu-check.sh` sets it on the GPU machine, where a skip would hide a broken setup.

use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{seeded::draw, InitRule, Input, Model, Op, SeededInit, Window2d};
use smk_runtime::Plan;
use smk_runtime_cuda::{GpuError, GpuModel};

#[derive(Clone, Copy, Debug)]
enum Weights {
    F32,
    F16,
    Bf16,
    /// Stored signs: element masks only.
    Signs,
    Signed,
    Uniform,
    Normal,
}

#[derive(Clone, Copy, Debug)]
enum Mask {
    None,
    Element,
    Block { r: u16, c: u16, packed: bool },
}

fn values(seed: u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (draw(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect()
}

fn bits(seed: u64, n: usize, density: f64) -> Vec<bool> {
    (0..n)
        .map(|i| ((draw(seed, i as u64) >> 11) as f64) < density * (1u64 << 53) as f64)
        .collect()
}

fn weight(name: &str, dims: [u32; 2], w: Weights, seed: u64) -> TensorSpec {
    let n = (dims[0] * dims[1]) as usize;
    let seeded = |rule| {
        let init = SeededInit {
            rule,
            seed,
            stream: 1,
            scale: 0.1,
        };
        TensorSpec::seeded(name, &dims, init).unwrap()
    };
    match w {
        Weights::F32 => TensorSpec::f32(name, &dims, values(seed, n)).unwrap(),
        Weights::F16 => {
            let v = values(seed, n).into_iter().map(half::f16::from_f32).collect();
            TensorSpec::new(name, &dims, TensorData::F16(v)).unwrap()
        }
        Weights::Bf16 => {
            let v = values(seed, n).into_iter().map(half::bf16::from_f32).collect();
            TensorSpec::new(name, &dims, TensorData::Bf16(v)).unwrap()
        }
        Weights::Signs => TensorSpec::signs(name, &dims, bits(seed + 9, n, 0.5), 0.1).unwrap(),
        Weights::Signed => seeded(InitRule::SignedConstant),
        Weights::Uniform => seeded(InitRule::Uniform),
        Weights::Normal => seeded(InitRule::Normal),
    }
}

/// `[cols] → linear(hidden) → relu → linear(10) → softmax`, the first layer masked.
fn model(cols: u32, hidden: u32, w: Weights, mask: Mask, seed: u64) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[cols]).unwrap();
    let bias = TensorSpec::f32("fc1.bias", &[hidden], values(seed + 1, hidden as usize)).unwrap();
    let fc1 = b
        .linear("fc1", weight("fc1.weight", [hidden, cols], w, seed), Some(bias))
        .unwrap();
    b.relu("relu").unwrap();
    b.linear("fc2", weight("fc2.weight", [10, hidden], Weights::F32, seed + 2), None)
        .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    match mask {
        Mask::None => {}
        Mask::Element => {
            let s = b.mask_set("task").unwrap();
            let n = (hidden * cols) as usize;
            b.set_mask(s, fc1, MaskSpec::element_bools(&bits(seed + 3, n, 0.5)))
                .unwrap();
        }
        Mask::Block { r, c, packed } => {
            let s = b.mask_set("task").unwrap();
            let grid = (hidden.div_ceil(r as u32) * cols.div_ceil(c as u32)) as usize;
            b.set_mask(s, fc1, MaskSpec::block_bools([r, c], &bits(seed + 3, grid, 0.3)))
                .unwrap();
            if packed {
                b.pack_blocks(fc1).unwrap();
            }
        }
    }
    b.to_bytes().unwrap()
}

#[test]
fn gpu_matches_the_cpu_runtime() {
    let mut seed = 10;
    let mut checked = 0;
    for w in [
        Weights::F32,
        Weights::F16,
        Weights::Bf16,
        Weights::Signs,
        Weights::Signed,
        Weights::Uniform,
        Weights::Normal,
    ] {
        let stored = matches!(w, Weights::F32 | Weights::F16 | Weights::Bf16);
        let mut masks = vec![Mask::None, Mask::Element];
        if !matches!(w, Weights::Signs) {
            masks.push(Mask::Block {
                r: 16,
                c: 16,
                packed: false,
            });
        }
        if stored {
            masks.push(Mask::Block {
                r: 16,
                c: 16,
                packed: true,
            });
            masks.push(Mask::Block {
                r: 4,
                c: 4,
                packed: true,
            });
        }
        for mask in masks {
            for (cols, hidden) in [(784, 300), (97, 33)] {
                seed += 10;
                let bytes = model(cols, hidden, w, mask, seed);
                let m = Model::parse(&bytes).unwrap();
                let gpu = match GpuModel::load(&m, None, 0, None) {
                    Ok(g) => g,
                    Err(GpuError::Driver(e)) | Err(GpuError::Compile(smk_runtime_cuda::CompileError::NoNvrtc(e)))
                        if std::env::var_os("SMK_REQUIRE_GPU").is_none() =>
                    {
                        eprintln!("skipped: no GPU or no NVRTC here ({e})");
                        return;
                    }
                    Err(e) => panic!("{w:?} {mask:?}: {e}"),
                };
                for batch in [1, 5, 9, 70] {
                    let x = values(seed + 4, batch * cols as usize);
                    let plan = Plan::new(&m, batch, None).unwrap();
                    let mut scratch = vec![0u8; plan.scratch_bytes()];
                    let mut want = vec![0f32; batch * 10];
                    plan.infer(&mut scratch, &x, &mut want).unwrap();
                    let got = gpu.infer(&x, batch).unwrap();
                    for (i, (g, c)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - c).abs() <= 1e-4,
                            "{w:?} {mask:?} {cols}x{hidden} batch {batch} output {i}: GPU {g}, CPU {c}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} model × batch cases agree");
}

#[test]
fn a_bad_input_length_is_an_error_not_a_crash() {
    let bytes = model(20, 8, Weights::F32, Mask::None, 1);
    let m = Model::parse(&bytes).unwrap();
    let gpu = match GpuModel::load(&m, None, 0, None) {
        Ok(g) => g,
        Err(e) if std::env::var_os("SMK_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: no GPU here ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(matches!(
        gpu.infer(&[0.0; 19], 1),
        Err(GpuError::InputLength { got: 19, want: 20 })
    ));
    assert!(matches!(gpu.infer(&[], 0), Err(GpuError::InputLength { .. })));
}

/// `GpuModel` where it loads, or `None` (and a note) where no GPU answers and none is required.
fn load_or_skip(m: &Model<'_>) -> Option<GpuModel> {
    match GpuModel::load(m, None, 0, None) {
        Ok(g) => Some(g),
        Err(GpuError::Driver(e)) | Err(GpuError::Compile(smk_runtime_cuda::CompileError::NoNvrtc(e)))
            if std::env::var_os("SMK_REQUIRE_GPU").is_none() =>
        {
            eprintln!("skipped: no GPU or no NVRTC here ({e})");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Every layer kind in one graph, on ragged sizes: conv (element mask) → relu → max pool →
/// strided, dilated conv over seeded weights (block mask) → batch norm → average pool with
/// padding → flatten → linear (packed blocks) → relu → linear (bf16) → residual add → layer
/// norm → linear → softmax.
fn every_layer_kind(seed: u64) -> Vec<u8> {
    let f = |name: &str, dims: &[u32], k: u64, scale: f32| {
        let n = dims.iter().product::<u32>() as usize;
        TensorSpec::f32(name, dims, values(seed + k, n).into_iter().map(|v| v * scale).collect()).unwrap()
    };
    let mut b = ModelBuilder::new(&[2, 13, 11]).unwrap();
    let c1 = b
        .conv2d(
            "c1",
            f("c1.w", &[5, 2, 3, 3], 1, 1.0),
            Some(f("c1.b", &[5], 2, 1.0)),
            Window2d::conv(3, 1),
        )
        .unwrap();
    b.relu("r1").unwrap();
    b.op("p1", Op::MaxPool(Window2d::pool(2))).unwrap();
    let init = SeededInit {
        rule: InitRule::SignedConstant,
        seed,
        stream: 2,
        scale: 0.2,
    };
    let window = Window2d {
        kernel: [3, 3],
        stride: [2, 1],
        padding: [1, 0],
        dilation: [2, 1],
    };
    let c2 = b
        .conv2d(
            "c2",
            TensorSpec::seeded("c2.w", &[6, 5, 3, 3], init).unwrap(),
            None,
            window,
        )
        .unwrap();
    let positive: Vec<f32> = values(seed + 4, 6).into_iter().map(|v| v + 1.0).collect();
    b.batch_norm(
        "bn",
        f("bn.mean", &[6], 3, 1.0),
        TensorSpec::f32("bn.var", &[6], positive).unwrap(),
        Some(f("bn.gamma", &[6], 5, 1.0)),
        Some(f("bn.beta", &[6], 6, 1.0)),
        1e-5,
    )
    .unwrap();
    let avg = Window2d {
        kernel: [2, 2],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
    };
    b.op(
        "p2",
        Op::AvgPool {
            window: avg,
            count_include_pad: false,
        },
    )
    .unwrap();
    b.flatten("flat").unwrap();
    let f1 = b
        .linear("f1", f("f1.w", &[40, 72], 7, 0.3), Some(f("f1.b", &[40], 8, 1.0)))
        .unwrap();
    let r2 = b.relu("r2").unwrap();
    let bf = values(seed + 9, 1600)
        .into_iter()
        .map(|v| half::bf16::from_f32(v * 0.3))
        .collect();
    let f2 = b
        .linear(
            "f2",
            TensorSpec::new("f2.w", &[40, 40], TensorData::Bf16(bf)).unwrap(),
            None,
        )
        .unwrap();
    b.add("res", Input::Layer(f2), Input::Layer(r2)).unwrap();
    b.layer_norm(
        "ln",
        Some(f("ln.g", &[40], 10, 1.0)),
        Some(f("ln.b", &[40], 11, 1.0)),
        1e-5,
    )
    .unwrap();
    b.linear("f3", f("f3.w", &[10, 40], 12, 0.5), None).unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    let s = b.mask_set("task").unwrap();
    b.set_mask(s, c1, MaskSpec::element_bools(&bits(seed + 13, 90, 0.6)))
        .unwrap();
    b.set_mask(s, c2, MaskSpec::block_bools([2, 4], &bits(seed + 14, 3 * 12, 0.5)))
        .unwrap();
    b.set_mask(s, f1, MaskSpec::block_bools([4, 8], &bits(seed + 15, 10 * 9, 0.4)))
        .unwrap();
    b.pack_blocks(f1).unwrap();
    b.to_bytes().unwrap()
}

#[test]
fn every_layer_kind_matches_the_cpu_runtime() {
    let bytes = every_layer_kind(3);
    let m = Model::parse(&bytes).unwrap();
    let (in_len, out_len) = (2 * 13 * 11, 10);
    // The CPU side first, so that the graph is checked here even where no GPU answers.
    let cases: Vec<(usize, Vec<f32>, Vec<f32>)> = [1, 3, 8, 70]
        .into_iter()
        .map(|batch| {
            let x = values(99 + batch as u64, batch * in_len);
            let plan = Plan::new(&m, batch, None).unwrap();
            let mut scratch = vec![0u8; plan.scratch_bytes()];
            let mut want = vec![0f32; batch * out_len];
            plan.infer(&mut scratch, &x, &mut want).unwrap();
            for p in want.chunks(out_len) {
                assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4 && p.iter().all(|v| v.is_finite()));
            }
            (batch, x, want)
        })
        .collect();
    let Some(gpu) = load_or_skip(&m) else { return };
    for (batch, x, want) in cases {
        let got = gpu.infer(&x, batch).unwrap();
        for (i, (g, c)) in got.iter().zip(&want).enumerate() {
            assert!((g - c).abs() <= 1e-4, "batch {batch} output {i}: GPU {g}, CPU {c}");
        }
    }
}
