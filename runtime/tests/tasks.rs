//! Task inference against a plain f64 reference: the one-shot scores are the derivatives of the
//! output entropy with respect to each task's mixture weight (central differences of the f64
//! forward pass), the minimum-entropy scores each task's own entropy; on every instruction
//! set, on ragged sizes, with element and block masks over seeded and stored weights.

use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
use smk_format::{seeded::draw, InitRule, Model, Op, SeededInit, Window2d};
use smk_runtime::{Error, Isa, TaskGuess, TaskPlan, TaskRule};

fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((draw(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale)
        .collect()
}

fn bits(seed: u64, n: usize) -> Vec<bool> {
    (0..n).map(|i| draw(seed, i as u64) >> 63 == 1).collect()
}

const TASKS: u32 = 3;

/// [1, 5, 7] → normalise → flatten → seeded 35→19 (element masks) → relu → f32 19→13 (2×3
/// block masks) → relu → f32 13→11 with bias (unmasked) → softmax.
fn model() -> Vec<u8> {
    model_with_masks(0)
}

fn model_with_masks(seed: u64) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[1, 5, 7]).unwrap();
    b.batch_norm(
        "normalize",
        TensorSpec::f32("m", &[1], vec![0.3]).unwrap(),
        TensorSpec::f32("v", &[1], vec![0.2]).unwrap(),
        None,
        None,
        0.0,
    )
    .unwrap();
    b.flatten("flat").unwrap();
    let init = SeededInit {
        rule: InitRule::SignedConstant,
        seed: 4,
        stream: 0,
        scale: 0.4,
    };
    let fc1 = b
        .linear("fc1", TensorSpec::seeded("fc1.w", &[19, 35], init).unwrap(), None)
        .unwrap();
    b.relu("r1").unwrap();
    let fc2 = b
        .linear(
            "fc2",
            TensorSpec::f32("fc2.w", &[13, 19], values(5, 13 * 19, 1.2)).unwrap(),
            None,
        )
        .unwrap();
    b.relu("r2").unwrap();
    let bias = TensorSpec::f32("fc3.b", &[11], values(7, 11, 0.5)).unwrap();
    b.linear(
        "fc3",
        TensorSpec::f32("fc3.w", &[11, 13], values(6, 143, 2.0)).unwrap(),
        Some(bias),
    )
    .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    for k in 0..TASKS {
        let s = b.mask_set(&format!("task-{k}")).unwrap();
        b.set_mask(s, fc1, MaskSpec::element_bools(&bits(seed + 10 + k as u64, 19 * 35)))
            .unwrap();
        b.set_mask(
            s,
            fc2,
            MaskSpec::block_bools([2, 3], &bits(seed + 20 + k as u64, 7 * 7)),
        )
        .unwrap();
    }
    b.to_bytes().unwrap()
}

/// Entropy of the output at mixture weights `alpha`, in f64 with plain loops.
fn entropy_at(model: &Model<'_>, alpha: &[f64], x: &[f32]) -> f64 {
    let mut h: Vec<f64> = x.iter().map(|&v| (v as f64 - 0.3) / 0.2f64.sqrt()).collect();
    for l in model.layers() {
        if let Op::Linear { weight, bias } = l.op {
            let t = model.tensor(weight).unwrap();
            let (rows, cols) = t.matrix();
            let mut z = vec![0f64; rows as usize];
            for (r, zr) in z.iter_mut().enumerate() {
                for c in 0..cols {
                    let share: f64 = match model.mask(0, weight) {
                        Some(_) => (0..TASKS)
                            .filter(|&k| model.mask(k, weight).unwrap().keeps(r as u64, c))
                            .map(|k| alpha[k as usize])
                            .sum(),
                        None => 1.0,
                    };
                    *zr += t.value(r as u64, c) as f64 * share * h[c as usize];
                }
                if let Some(b) = bias {
                    *zr += model.tensor(b).unwrap().stored(r as u64) as f64;
                }
            }
            h = z;
        } else if l.op == Op::Relu {
            h.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    let max = h.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_total = h.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    h.iter()
        .map(|v| -(v - max - log_total).exp() * (v - max - log_total))
        .sum()
}

fn guesses(plan: &TaskPlan<'_>, x: &[f32], n: usize) -> Vec<TaskGuess> {
    let mut scratch = vec![0u8; plan.scratch_bytes()];
    let mut g = vec![
        TaskGuess {
            task: 0,
            confidence: 0.0,
            score: 0.0
        };
        n
    ];
    plan.infer_tasks(&mut scratch, x, &mut g).unwrap();
    g
}

#[test]
fn one_shot_scores_are_entropy_derivatives() {
    let bytes = model();
    let m = Model::parse(&bytes).unwrap();
    let n = 6;
    let x: Vec<f32> = values(30, n * 35, 2.0).into_iter().map(|v| v + 0.5).collect();
    for isa in Isa::available_all() {
        let plan = TaskPlan::new(&m, TaskRule::OneShot).unwrap().with_isa(isa).unwrap();
        let got = guesses(&plan, &x, n);
        for (b, g) in got.iter().enumerate() {
            let xb = &x[b * 35..(b + 1) * 35];
            let eps = 1e-6;
            let derivative: Vec<f64> = (0..TASKS as usize)
                .map(|k| {
                    let mut up = vec![1.0 / 3.0; 3];
                    let mut down = up.clone();
                    up[k] += eps;
                    down[k] -= eps;
                    (entropy_at(&m, &up, xb) - entropy_at(&m, &down, xb)) / (2.0 * eps)
                })
                .collect();
            let best = (0..3).min_by(|&i, &j| derivative[i].total_cmp(&derivative[j])).unwrap();
            let want = derivative[best];
            assert!(
                (g.score as f64 - want).abs() <= 1e-3 * want.abs() + 1e-5,
                "{isa} input {b}: score {} vs ∂H/∂α {derivative:?}",
                g.score
            );
            let mut sorted = derivative.clone();
            sorted.sort_by(f64::total_cmp);
            if sorted[1] - sorted[0] > 1e-3 * sorted[0].abs() + 1e-5 {
                assert_eq!(g.task as usize, best, "{isa} input {b}: {derivative:?}");
            }
            assert!(g.confidence > 1.0 / 3.0 - 1e-6 && g.confidence <= 1.0, "{g:?}");
        }
    }
}

#[test]
fn min_entropy_picks_the_most_certain_task() {
    let bytes = model();
    let m = Model::parse(&bytes).unwrap();
    let n = 5;
    let x: Vec<f32> = values(31, n * 35, 2.0).into_iter().map(|v| v + 0.5).collect();
    let plan = TaskPlan::new(&m, TaskRule::MinEntropy).unwrap();
    for (b, g) in guesses(&plan, &x, n).iter().enumerate() {
        let xb = &x[b * 35..(b + 1) * 35];
        let hs: Vec<f64> = (0..3)
            .map(|k| {
                let mut a = vec![0.0; 3];
                a[k] = 1.0;
                entropy_at(&m, &a, xb)
            })
            .collect();
        let best = (0..3).min_by(|&i, &j| hs[i].total_cmp(&hs[j])).unwrap();
        assert_eq!(g.task as usize, best, "input {b}: {hs:?}");
        assert!(
            (g.score as f64 - hs[best]).abs() < 1e-4,
            "input {b}: {} vs {hs:?}",
            g.score
        );
    }
}

#[test]
fn refusals_say_why() {
    let bytes = model();
    let m = Model::parse(&bytes).unwrap();
    let plan = TaskPlan::new(&m, TaskRule::OneShot).unwrap();
    let mut small = vec![0u8; 10];
    let mut g = [TaskGuess {
        task: 0,
        confidence: 0.0,
        score: 0.0,
    }];
    assert!(matches!(
        plan.infer_tasks(&mut small, &[0.0; 35], &mut g),
        Err(Error::ScratchTooSmall { .. })
    ));
    let mut scratch = vec![0u8; plan.scratch_bytes()];
    assert!(matches!(
        plan.infer_tasks(&mut scratch, &[0.0; 34], &mut g),
        Err(Error::InputLength { .. })
    ));
    // One task: nothing to infer.
    let mut b = ModelBuilder::new(&[4]).unwrap();
    let fc = b
        .linear("fc", TensorSpec::f32("w", &[2, 4], values(1, 8, 1.0)).unwrap(), None)
        .unwrap();
    let s = b.mask_set("only").unwrap();
    b.set_mask(s, fc, MaskSpec::element_bools(&bits(1, 8))).unwrap();
    let one = b.to_bytes().unwrap();
    let e = TaskPlan::new(&Model::parse(&one).unwrap(), TaskRule::OneShot).unwrap_err();
    assert!(e.to_string().contains("fewer than two tasks"), "{e}");
    // A convolution: the one-shot rule refuses, the minimum-entropy rule runs.
    let mut b = ModelBuilder::new(&[1, 4, 4]).unwrap();
    let conv = b
        .conv2d(
            "c",
            TensorSpec::f32("c.w", &[2, 1, 3, 3], values(2, 18, 1.0)).unwrap(),
            None,
            Window2d::conv(3, 1),
        )
        .unwrap();
    b.flatten("f").unwrap();
    for k in 0..2 {
        let s = b.mask_set(&format!("t{k}")).unwrap();
        b.set_mask(s, conv, MaskSpec::element_bools(&bits(3 + k, 18))).unwrap();
    }
    let conv_bytes = b.to_bytes().unwrap();
    let cm = Model::parse(&conv_bytes).unwrap();
    let e = TaskPlan::new(&cm, TaskRule::OneShot).unwrap_err();
    assert!(e.to_string().contains("minimum-entropy"), "{e}");
    let plan = TaskPlan::new(&cm, TaskRule::MinEntropy).unwrap();
    assert!(guesses(&plan, &values(4, 16, 1.0), 1)[0].task < 2);
}

#[test]
fn a_scratch_reused_for_another_model_rebuilds_its_mixtures() {
    let (a, b) = (model_with_masks(0), model_with_masks(100));
    let (ma, mb) = (Model::parse(&a).unwrap(), Model::parse(&b).unwrap());
    let (pa, pb) = (
        TaskPlan::new(&ma, TaskRule::OneShot).unwrap(),
        TaskPlan::new(&mb, TaskRule::OneShot).unwrap(),
    );
    assert_eq!(pa.scratch_bytes(), pb.scratch_bytes());
    let x: Vec<f32> = values(40, 4 * 35, 2.0).into_iter().map(|v| v + 0.5).collect();
    let fresh = guesses(&pb, &x, 4);
    let mut scratch = vec![0u8; pa.scratch_bytes()];
    let mut g = fresh.clone();
    pa.infer_tasks(&mut scratch, &x, &mut g).unwrap();
    pb.infer_tasks(&mut scratch, &x, &mut g).unwrap();
    assert_eq!(g, fresh, "model B's scores from a scratch that held model A's mixtures");
    assert_ne!(
        guesses(&pa, &x, 4),
        fresh,
        "the two models must differ for this to test anything"
    );
}
