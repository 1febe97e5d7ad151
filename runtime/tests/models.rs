//! Whole models against the reference interpreter, and the plan's refusals.

mod common;

use common::samples::{every_kind, small, small_packed};
use common::{inputs, reference};
use smk_format::Model;
use smk_runtime::{Error, Isa, Plan};

/// Every layer kind, storage and mask kind in one graph (with a residual branch), per task,
/// batch 1 and 3, on every instruction set here.
#[test]
fn every_layer_kind_matches_the_reference() {
    for packed in [false, true] {
        let bytes = every_kind(packed).to_bytes().unwrap();
        let model = Model::parse(&bytes).unwrap();
        let in_len = model.input_shape().numel() as usize;
        let out_len = model.output_shape().numel() as usize;
        for task in 0..model.mask_set_count() {
            for batch in [1, 3] {
                let x = inputs(40 + batch as u64, batch * in_len);
                for isa in Isa::available_all() {
                    let plan = Plan::new(&model, batch, Some(task)).unwrap().with_isa(isa).unwrap();
                    let mut scratch = vec![0xFFu8; plan.scratch_bytes()];
                    let mut y = vec![f32::NAN; batch * out_len];
                    plan.infer(&mut scratch, &x, &mut y).unwrap();
                    for b in 0..batch {
                        let r = reference(&model, Some(task), &x[b * in_len..(b + 1) * in_len]);
                        for k in 0..out_len {
                            let got = y[b * out_len + k] as f64;
                            let tol = 1e-4 * r.magnitude[k] + 1e-6;
                            assert!(
                                (got - r.values[k]).abs() <= tol,
                                "{isa}, packed {packed}, task {task}, batch {batch}: output {b}/{k} {got} vs {} (tol {tol:e})",
                                r.values[k]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn small_models_match_the_reference() {
    for (bytes, task) in [(small(), Some(1)), (small(), Some(0)), (small_packed(), None)] {
        let model = Model::parse(&bytes).unwrap();
        let plan = Plan::new(&model, 1, task).unwrap();
        let mut scratch = vec![0u8; plan.scratch_bytes()];
        let x = inputs(5, plan.input_len());
        let mut y = vec![0f32; plan.output_len()];
        plan.infer(&mut scratch, &x, &mut y).unwrap();
        let r = reference(&model, task, &x);
        for (g, want) in y.iter().zip(&r.values) {
            assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
        }
    }
}

/// Per-task batch norms (format 1.1): conv → norm with a row of statistics (and scale, shift)
/// per task → linear, three tasks; each task's plan matches the reference with that task's row,
/// and the tasks' outputs differ by their norms alone (the masks are full).
#[test]
fn per_task_norms_use_the_task_row() {
    use common::samples::{bits, values};
    use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
    use smk_format::Window2d;
    let (tasks, c) = (3u32, 5u32);
    let mut b = ModelBuilder::new(&[2, 6, 7]).unwrap();
    let window = Window2d {
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
    };
    let conv = b
        .conv2d(
            "conv",
            TensorSpec::f32("conv.w", &[c, 2, 3, 3], values(1, 90)).unwrap(),
            None,
            window,
        )
        .unwrap();
    let n = (tasks * c) as usize;
    let row = |name: &str, seed: u64, positive: bool| {
        let v = values(seed, n)
            .into_iter()
            .map(|v| if positive { v.abs() + 0.25 } else { v })
            .collect();
        TensorSpec::f32(name, &[tasks, c], v).unwrap()
    };
    b.batch_norm(
        "bn",
        row("bn.mean", 2, false),
        row("bn.var", 3, true),
        Some(row("bn.gamma", 4, true)),
        Some(row("bn.beta", 5, false)),
        1e-5,
    )
    .unwrap();
    b.relu("relu").unwrap();
    b.flatten("flat").unwrap();
    let fc = b
        .linear("fc", TensorSpec::f32("fc.w", &[4, 210], values(6, 840)).unwrap(), None)
        .unwrap();
    for k in 0..tasks {
        let s = b.mask_set(&format!("task-{k}")).unwrap();
        b.set_mask(s, conv, MaskSpec::element_bools(&bits(7, 90, 1.0))).unwrap();
        b.set_mask(s, fc, MaskSpec::element_bools(&bits(8, 840, 1.0))).unwrap();
    }
    let bytes = b.to_bytes().unwrap();
    let model = Model::parse(&bytes).unwrap();
    let x = inputs(9, 84);
    let mut outs = Vec::new();
    for task in 0..tasks {
        let r = reference(&model, Some(task), &x);
        for isa in Isa::available_all() {
            let plan = Plan::new(&model, 1, Some(task)).unwrap().with_isa(isa).unwrap();
            let mut scratch = vec![0u8; plan.scratch_bytes()];
            let mut y = vec![0f32; 4];
            plan.infer(&mut scratch, &x, &mut y).unwrap();
            for (k, (g, want)) in y.iter().zip(&r.values).enumerate() {
                let tol = 1e-4 * r.magnitude[k] + 1e-6;
                assert!(
                    (*g as f64 - want).abs() <= tol,
                    "{isa} task {task} output {k}: {g} vs {want}"
                );
            }
            outs.push(y);
        }
    }
    assert_ne!(
        outs.first(),
        outs.last(),
        "the tasks' norms differ, so must their outputs"
    );
}

/// Scratch at any alignment works; results do not depend on what the scratch held before.
#[test]
fn scratch_alignment_and_contents_do_not_matter() {
    let bytes = every_kind(false).to_bytes().unwrap();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, 2, Some(1)).unwrap();
    let x = inputs(9, 2 * plan.input_len());
    let mut first = vec![0f32; 2 * plan.output_len()];
    let mut big = vec![0u8; plan.scratch_bytes() + 64];
    plan.infer(&mut big[..plan.scratch_bytes()], &x, &mut first).unwrap();
    for offset in [1, 3, 17, 63] {
        big.iter_mut().for_each(|b| *b = offset as u8);
        let mut y = vec![0f32; 2 * plan.output_len()];
        plan.infer(&mut big[offset..offset + plan.scratch_bytes()], &x, &mut y)
            .unwrap();
        assert_eq!(y, first, "offset {offset}");
    }
}

#[test]
fn refusals_name_what_is_wrong() {
    let bytes = small();
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(
        Plan::new(&model, 1, None).unwrap_err(),
        Error::TaskRequired { tasks: 2 }
    );
    assert_eq!(
        Plan::new(&model, 1, Some(2)).unwrap_err(),
        Error::NoSuchTask { task: 2, tasks: 2 }
    );
    assert_eq!(Plan::new(&model, 0, Some(0)).unwrap_err(), Error::BadBatch { batch: 0 });
    // Batches whose sizes overflow are refused, not wrapped (or a panic) in the size arithmetic.
    for batch in [usize::MAX / 2, usize::MAX - 7, usize::MAX] {
        assert_eq!(
            Plan::new(&model, batch, Some(0)).unwrap_err(),
            Error::BadBatch { batch }
        );
    }
    let plan = Plan::new(&model, 2, Some(0)).unwrap();
    let need = plan.scratch_bytes();
    let mut scratch = vec![0u8; need];
    let mut y = vec![0f32; 2 * plan.output_len()];
    let x = vec![0f32; 2 * plan.input_len()];
    assert_eq!(
        plan.infer(&mut scratch[..need - 1], &x, &mut y).unwrap_err(),
        Error::ScratchTooSmall { need, got: need - 1 }
    );
    assert_eq!(
        plan.infer(&mut scratch, &x[1..], &mut y).unwrap_err(),
        Error::InputLength { expected: 12, got: 11 }
    );
    assert_eq!(
        plan.infer(&mut scratch, &x, &mut y[1..]).unwrap_err(),
        Error::OutputLength { expected: 6, got: 5 }
    );
    for isa in Isa::ALL {
        match Plan::new(&model, 1, Some(0)).unwrap().with_isa(isa) {
            Ok(p) => assert!(isa.available() && p.isa() == isa),
            Err(e) => assert_eq!(e, Error::IsaUnavailable(isa)),
        }
    }
    assert!(Error::TaskRequired { tasks: 2 }.to_string().contains("choose one"));
}

/// A file read into a buffer at an odd address still runs (weights and masks read in place need
/// alignment; without it the layer takes the plain loop) and gives the same answer.
#[test]
fn misaligned_bytes_still_run() {
    let bytes = every_kind(true).to_bytes().unwrap();
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let (aligned, odd) = (Model::parse(&bytes).unwrap(), Model::parse(&shifted[1..]).unwrap());
    let mut outs = Vec::new();
    for model in [&aligned, &odd] {
        let plan = Plan::new(model, 1, None).unwrap();
        let mut scratch = vec![0u8; plan.scratch_bytes()];
        let x = inputs(11, plan.input_len());
        let mut y = vec![0f32; plan.output_len()];
        plan.infer(&mut scratch, &x, &mut y).unwrap();
        outs.push(y);
    }
    for (a, b) in outs[0].iter().zip(&outs[1]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// Files damaged in ways the parser accepts (random bytes changed, then the header checksum
/// fixed so that parsing goes past it) never make planning or inference panic: they run, or
/// are refused with an error.
#[test]
fn damaged_files_never_panic() {
    use smk_format::seeded::draw;
    use smk_format::writer::refresh_header_checksum;
    let original = every_kind(false).to_bytes().unwrap();
    let (mut parsed, mut ran) = (0, 0);
    for case in 0..3000u64 {
        let mut bytes = original.clone();
        for k in 0..1 + draw(case, 0) % 4 {
            let at = (draw(case, 2 * k + 1) % bytes.len() as u64) as usize;
            bytes[at] = draw(case, 2 * k + 2) as u8;
        }
        refresh_header_checksum(&mut bytes);
        let Ok(model) = Model::parse(&bytes) else { continue };
        parsed += 1;
        for task in [None, Some(0), Some(1)] {
            let Ok(plan) = Plan::new(&model, 2, task) else { continue };
            if plan.scratch_bytes() > 64 << 20 {
                continue;
            }
            let mut scratch = vec![0u8; plan.scratch_bytes()];
            let x = inputs(case, 2 * plan.input_len());
            let mut y = vec![0f32; 2 * plan.output_len()];
            if plan.infer(&mut scratch, &x, &mut y).is_ok() {
                ran += 1;
            }
        }
    }
    // Most single-byte changes land in payloads (weights, masks), which parse and run.
    assert!(parsed > 1000 && ran > 1000, "parsed {parsed}, ran {ran}");
}

/// What a call reads: every stored byte of a packed or element-masked model, plus its masks.
#[test]
fn bytes_read_counts_stored_weights_and_masks() {
    let bytes = small_packed();
    let model = Model::parse(&bytes).unwrap();
    let plan = Plan::new(&model, 1, None).unwrap();
    let weights: u64 = model.tensors().map(|t| t.data.len() as u64).sum();
    let masks: u64 = (0..model.tensor_count())
        .filter_map(|t| model.mask(0, t))
        .map(|m| m.data.len() as u64)
        .sum();
    assert!(weights > 0 && masks > 0);
    assert_eq!(plan.bytes_read(), weights + masks);
}
