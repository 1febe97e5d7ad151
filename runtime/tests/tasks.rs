//! Task inference against a plain f64 reference: the one-shot scores are the derivatives of the
//! output entropy with respect to each task's mixture weight (central differences of the f64
//! forward pass), the minimum-entropy scores each task's own entropy, the binary search the
//! same derivatives over halving sets of tasks; on every instruction set, on ragged sizes, with
//! element and block masks over seeded and stored weights.

use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
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
    model_of(seed, TASKS, true, false)
}

/// The same layers with `tasks` mask sets; fc1's weights seeded, or stored as f32; fc2's masks
/// per 2×3 block, or per element. fc2's are the masks whose mixture the gradient rules read: the
/// first masked layer's output is the mean of the tasks' own products.
fn model_of(seed: u64, tasks: u32, seeded: bool, fc2_element: bool) -> Vec<u8> {
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
    let fc1_w = match seeded {
        true => TensorSpec::seeded("fc1.w", &[19, 35], init).unwrap(),
        false => TensorSpec::f32("fc1.w", &[19, 35], values(8, 19 * 35, 0.8)).unwrap(),
    };
    let fc1 = b.linear("fc1", fc1_w, None).unwrap();
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
    for k in 0..tasks {
        let s = b.mask_set(&format!("task-{k}")).unwrap();
        b.set_mask(s, fc1, MaskSpec::element_bools(&bits(seed + 10 + k as u64, 19 * 35)))
            .unwrap();
        let fc2_mask = match fc2_element {
            true => MaskSpec::element_bools(&bits(seed + 20 + k as u64, 13 * 19)),
            false => MaskSpec::block_bools([2, 3], &bits(seed + 20 + k as u64, 7 * 7)),
        };
        b.set_mask(s, fc2, fc2_mask).unwrap();
    }
    b.to_bytes().unwrap()
}

/// Entropy of the output at mixture weights `alpha` (one per task), in f64 with plain loops.
fn entropy_at(model: &Model<'_>, alpha: &[f64], x: &[f32]) -> f64 {
    let tasks = model.mask_set_count();
    let mut h: Vec<f64> = x.iter().map(|&v| (v as f64 - 0.3) / 0.2f64.sqrt()).collect();
    for l in model.layers() {
        if let Op::Linear { weight, bias } = l.op {
            let t = model.tensor(weight).unwrap();
            let (rows, cols) = t.matrix();
            let masked = model.mask(0, weight).is_some();
            // The tasks in the mixture (a zero weight adds nothing), their masks looked up once.
            let present: Vec<_> = (0..tasks)
                .filter(|&k| alpha[k as usize] != 0.0)
                .map(|k| (model.mask(k, weight), alpha[k as usize]))
                .collect();
            let mut z = vec![0f64; rows as usize];
            for (r, zr) in z.iter_mut().enumerate() {
                for c in 0..cols {
                    let share: f64 = match masked {
                        true => present
                            .iter()
                            .filter(|(m, _)| m.unwrap().keeps(r as u64, c))
                            .map(|(_, a)| a)
                            .sum(),
                        false => 1.0,
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
    for rule in [TaskRule::OneShot, TaskRule::BinarySearch, TaskRule::MinEntropy] {
        let e = TaskPlan::new(&Model::parse(&one).unwrap(), rule).unwrap_err();
        assert!(e.to_string().contains("fewer than two tasks"), "{rule:?}: {e}");
    }
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
    for rule in [TaskRule::OneShot, TaskRule::BinarySearch] {
        let e = TaskPlan::new(&cm, rule).unwrap_err();
        assert!(e.to_string().contains("minimum-entropy"), "{rule:?}: {e}");
    }
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

/// SupSup's binary search in f64: while more than one task is left, the derivatives
/// `∂H/∂α_k` (central differences) at the uniform mixture of the remaining tasks only, then
/// the lower half kept (rounded up; ties to the lower task). Returns the last task, its
/// derivative in the last round, and whether every round's cut between the last task kept and
/// the first dropped is clear of a near-tie, which f32 may round either way.
fn binary_search_reference(model: &Model<'_>, x: &[f32]) -> (usize, f64, bool) {
    let tasks = model.mask_set_count() as usize;
    let mut set: Vec<usize> = (0..tasks).collect();
    let (mut clear, mut last) = (true, 0.0);
    while set.len() > 1 {
        let mut alpha = vec![0.0; tasks];
        for &k in &set {
            alpha[k] = 1.0 / set.len() as f64;
        }
        let eps = 1e-6;
        let derivative: Vec<f64> = set
            .iter()
            .map(|&k| {
                let (mut up, mut down) = (alpha.clone(), alpha.clone());
                up[k] += eps;
                down[k] -= eps;
                (entropy_at(model, &up, x) - entropy_at(model, &down, x)) / (2.0 * eps)
            })
            .collect();
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.sort_by(|&i, &j| derivative[i].total_cmp(&derivative[j]).then(i.cmp(&j)));
        let keep = set.len().div_ceil(2);
        let (a, b) = (derivative[order[keep - 1]], derivative[order[keep]]);
        clear &= b - a > 1e-3 * a.abs().max(b.abs()) + 1e-5;
        last = derivative[order[0]];
        let mut kept = order[..keep].to_vec();
        kept.sort();
        set = kept.iter().map(|&i| set[i]).collect();
    }
    (set[0], last, clear)
}

#[test]
fn binary_search_halves_the_tasks_by_their_entropy_derivatives() {
    let n = 24;
    let (mut total, mut checked, mut unlike_one_shot) = (0, 0, 0);
    // 5 tasks: rounds of 5, 3 and 2; 19: 19 (a batch-major tangent product, and masks counted
    // in two groups), 10, 5, 3 and 2.
    for tasks in [5u32, 19] {
        for (seeded, fc2_element) in [(true, false), (false, false), (true, true), (false, true)] {
            let bytes = model_of(7 * tasks as u64, tasks, seeded, fc2_element);
            let m = Model::parse(&bytes).unwrap();
            let x: Vec<f32> = values(50 + tasks as u64, n * 35, 2.0)
                .into_iter()
                .map(|v| v + 0.5)
                .collect();
            let want: Vec<_> = (0..n)
                .map(|b| binary_search_reference(&m, &x[b * 35..(b + 1) * 35]))
                .collect();
            let one_shot = guesses(&TaskPlan::new(&m, TaskRule::OneShot).unwrap(), &x, n);
            for isa in Isa::available_all() {
                let plan = TaskPlan::new(&m, TaskRule::BinarySearch)
                    .unwrap()
                    .with_isa(isa)
                    .unwrap();
                for (b, (g, &(task, score, clear))) in guesses(&plan, &x, n).iter().zip(&want).enumerate() {
                    let at = format!("{tasks} tasks, seeded {seeded}, fc2 element {fc2_element}, {isa}, input {b}");
                    total += 1;
                    // The last round has two tasks: a tie, or 1/(1 + e⁻²).
                    assert!(g.confidence >= 0.5 - 1e-6 && g.confidence <= 1.0, "{at}: {g:?}");
                    if !clear {
                        continue;
                    }
                    checked += 1;
                    assert_eq!(g.task as usize, task, "{at}: {g:?}");
                    assert!(
                        (g.score as f64 - score).abs() <= 1e-3 * score.abs() + 1e-5,
                        "{at}: score {} vs ∂H/∂α {score}",
                        g.score
                    );
                    unlike_one_shot += usize::from(one_shot[b].task != g.task);
                }
            }
        }
    }
    assert!(
        checked * 10 >= total * 8,
        "only {checked} of {total} inputs clear of near-ties"
    );
    assert!(
        unlike_one_shot > 0,
        "the binary search always chose as the one-shot rule did: the test cannot tell them apart"
    );
}

#[test]
fn binary_search_over_two_tasks_is_the_one_shot_rule() {
    for seeded in [true, false] {
        let bytes = model_of(3, 2, seeded, !seeded);
        let m = Model::parse(&bytes).unwrap();
        let x: Vec<f32> = values(60, 8 * 35, 2.0).into_iter().map(|v| v + 0.5).collect();
        for isa in Isa::available_all() {
            let plan = |rule| TaskPlan::new(&m, rule).unwrap().with_isa(isa).unwrap();
            // One round over every task, at the same mixture: the same guesses, to the bit.
            assert_eq!(
                guesses(&plan(TaskRule::BinarySearch), &x, 8),
                guesses(&plan(TaskRule::OneShot), &x, 8),
                "seeded {seeded}, {isa}"
            );
        }
    }
}

#[test]
fn a_scratch_reused_for_another_rule_rebuilds_what_it_keeps() {
    // The binary search keeps the weights beside the mixtures, where the one-shot rule keeps
    // its buffers: the same model under the other rule must not pass for built.
    let bytes = model_of(5, 6, true, false);
    let m = Model::parse(&bytes).unwrap();
    let (one_shot, binary) = (
        TaskPlan::new(&m, TaskRule::OneShot).unwrap(),
        TaskPlan::new(&m, TaskRule::BinarySearch).unwrap(),
    );
    let x: Vec<f32> = values(41, 6 * 35, 2.0).into_iter().map(|v| v + 0.5).collect();
    let (fresh_one_shot, fresh_binary) = (guesses(&one_shot, &x, 6), guesses(&binary, &x, 6));
    let mut scratch = vec![0u8; one_shot.scratch_bytes().max(binary.scratch_bytes())];
    let mut g = fresh_one_shot.clone();
    for _ in 0..2 {
        one_shot.infer_tasks(&mut scratch, &x, &mut g).unwrap();
        assert_eq!(g, fresh_one_shot, "the one-shot rule after the binary search");
        binary.infer_tasks(&mut scratch, &x, &mut g).unwrap();
        assert_eq!(g, fresh_binary, "the binary search after the one-shot rule");
    }
}

/// A product's work is not monotonic in its batch: one input through a narrow seeded layer (the
/// tasks' own products) needs tables that a batch of nine (the tangents) does not. Both
/// gradient rules size their scratch for every product they run.
#[test]
fn narrow_seeded_layers_under_many_tasks_fit_the_scratch() {
    let mut b = ModelBuilder::new(&[4]).unwrap();
    let init = SeededInit {
        rule: InitRule::SignedConstant,
        seed: 4,
        stream: 0,
        scale: 0.4,
    };
    let fc = b
        .linear("fc", TensorSpec::seeded("w", &[3, 4], init).unwrap(), None)
        .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    for k in 0..9u64 {
        let s = b.mask_set(&format!("t{k}")).unwrap();
        b.set_mask(s, fc, MaskSpec::element_bools(&bits(50 + k, 12))).unwrap();
    }
    let bytes = b.to_bytes().unwrap();
    let m = Model::parse(&bytes).unwrap();
    for rule in [TaskRule::OneShot, TaskRule::BinarySearch] {
        for isa in Isa::available_all() {
            let plan = TaskPlan::new(&m, rule).unwrap().with_isa(isa).unwrap();
            let g = guesses(&plan, &[0.5, -0.2, 0.3, 0.9, 0.1, 0.7, -0.4, 0.2], 2);
            assert!(
                g.iter().all(|g| g.task < 9 && g.score.is_finite()),
                "{rule:?}, {isa}: {g:?}"
            );
        }
    }
}

/// The tangents' product after the first masked layer runs on the dense f32 mixture, whatever
/// the weights are: f16 weights whose bytes could not be read as f32 (an odd count, stored
/// row-major under element masks) must not size it as the plain loop, which needs no work.
#[test]
fn the_dense_mixture_is_sized_as_dense_f32() {
    let mut b = ModelBuilder::new(&[5]).unwrap();
    let fc1 = b
        .linear("fc1", TensorSpec::f32("w1", &[7, 5], values(8, 35, 1.0)).unwrap(), None)
        .unwrap();
    b.relu("r").unwrap();
    let w: Vec<half::f16> = values(9, 21, 1.0).into_iter().map(half::f16::from_f32).collect();
    let fc2 = b
        .linear("fc2", TensorSpec::new("w2", &[3, 7], TensorData::F16(w)).unwrap(), None)
        .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    for k in 0..9u64 {
        let s = b.mask_set(&format!("t{k}")).unwrap();
        b.set_mask(s, fc1, MaskSpec::element_bools(&bits(60 + k, 35))).unwrap();
        b.set_mask(s, fc2, MaskSpec::element_bools(&bits(70 + k, 21))).unwrap();
    }
    let bytes = b.to_bytes().unwrap();
    let m = Model::parse(&bytes).unwrap();
    let Op::Linear { weight, .. } = m.layer(2).unwrap().op else {
        unreachable!()
    };
    assert_eq!(
        m.tensor(weight).unwrap().data.len(),
        42,
        "f16 bytes that are not whole f32"
    );
    for rule in [TaskRule::OneShot, TaskRule::BinarySearch] {
        for isa in Isa::available_all() {
            let plan = TaskPlan::new(&m, rule).unwrap().with_isa(isa).unwrap();
            let g = guesses(&plan, &values(61, 10, 2.0), 2);
            assert!(
                g.iter().all(|g| g.task < 9 && g.score.is_finite()),
                "{rule:?}, {isa}: {g:?}"
            );
        }
    }
}
