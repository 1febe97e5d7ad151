//! `GpuModel` against the CPU runtime (itself checked against an f64 reference), on small
//! two-layer models of every weight storage and mask kind, at batch 1 and 5, on the first GPU.
//! Where no GPU answers, the test says so and returns, unless `SMK_REQUIRE_GPU` is set:
//! `scripts/gpu-check.sh` sets it on the GPU machine, where a skip would hide a broken setup.

use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{seeded::draw, InitRule, Model, Op, SeededInit};
use smk_runtime::Plan;
use smk_runtime_cuda::{GpuError, GpuModel};

#[derive(Clone, Copy, Debug)]
enum Weights {
    F32,
    F16,
    Bf16,
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
        Weights::Signed,
        Weights::Uniform,
        Weights::Normal,
    ] {
        let stored = matches!(w, Weights::F32 | Weights::F16 | Weights::Bf16);
        let mut masks = vec![
            Mask::None,
            Mask::Element,
            Mask::Block {
                r: 16,
                c: 16,
                packed: false,
            },
        ];
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
                let gpu = match GpuModel::load(&m, None, 0, "sm_90") {
                    Ok(g) => g,
                    Err(GpuError::Driver(e)) | Err(GpuError::Compile(smk_runtime_cuda::CompileError::NoNvrtc(e)))
                        if std::env::var_os("SMK_REQUIRE_GPU").is_none() =>
                    {
                        eprintln!("skipped: no GPU or no NVRTC here ({e})");
                        return;
                    }
                    Err(e) => panic!("{w:?} {mask:?}: {e}"),
                };
                for batch in [1, 5] {
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
    let gpu = match GpuModel::load(&m, None, 0, "sm_90") {
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
