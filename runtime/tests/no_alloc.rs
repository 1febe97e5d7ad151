//! `infer` allocates nothing, for every layer kind: a counting global allocator watches this
//! thread while it runs.

mod common;
#[path = "common/counting.rs"]
mod counting;

use common::inputs;
use common::samples::every_kind;
use counting::allocations_in;
use smk_format::Model;
use smk_runtime::{Isa, Plan};

#[test]
fn infer_allocates_nothing() {
    // The counter itself must see allocations, or the test proves nothing.
    assert_eq!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 10]))), 1);
    for packed in [false, true] {
        let bytes = every_kind(packed).to_bytes().unwrap();
        let model = Model::parse(&bytes).unwrap();
        for isa in Isa::available_all() {
            for batch in [1, 4] {
                let plan = Plan::new(&model, batch, Some(0)).unwrap().with_isa(isa).unwrap();
                let mut scratch = vec![0u8; plan.scratch_bytes()];
                let x = inputs(3, batch * plan.input_len());
                let mut y = vec![0f32; batch * plan.output_len()];
                let n = allocations_in(|| plan.infer(&mut scratch, &x, &mut y).unwrap());
                assert_eq!(n, 0, "{isa}, batch {batch}, packed {packed}: infer allocated {n} times");
                assert!(y.iter().all(|v| v.is_finite()));
            }
        }
    }
}

#[test]
fn task_inference_allocates_nothing() {
    use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
    use smk_runtime::{TaskGuess, TaskPlan, TaskRule};
    let mut b = ModelBuilder::new(&[20]).unwrap();
    let fc1 = b
        .linear("fc1", TensorSpec::f32("w1", &[9, 20], inputs(1, 180)).unwrap(), None)
        .unwrap();
    b.relu("r").unwrap();
    let fc2 = b
        .linear("fc2", TensorSpec::f32("w2", &[5, 9], inputs(2, 45)).unwrap(), None)
        .unwrap();
    b.op("softmax", smk_format::Op::Softmax).unwrap();
    // Five tasks, both layers masked: the binary search rebuilds fc2's mixture for 3 tasks,
    // then for 2.
    for k in 0..5u64 {
        let s = b.mask_set(&format!("t{k}")).unwrap();
        let bits: Vec<bool> = (0..180).map(|i| (i * 7 + k * 3) % 5 < 3).collect();
        b.set_mask(s, fc1, MaskSpec::element_bools(&bits)).unwrap();
        let bits: Vec<bool> = (0..45).map(|i| (i * 3 + k * 5) % 7 < 4).collect();
        b.set_mask(s, fc2, MaskSpec::element_bools(&bits)).unwrap();
    }
    let bytes = b.to_bytes().unwrap();
    let model = Model::parse(&bytes).unwrap();
    let x = inputs(3, 3 * 20);
    for rule in [TaskRule::OneShot, TaskRule::BinarySearch, TaskRule::MinEntropy] {
        let plan = TaskPlan::new(&model, rule).unwrap();
        let mut scratch = vec![0u8; plan.scratch_bytes()];
        let mut g = [TaskGuess {
            task: 0,
            confidence: 0.0,
            score: 0.0,
        }; 3];
        let n = allocations_in(|| plan.infer_tasks(&mut scratch, &x, &mut g).unwrap());
        assert_eq!(n, 0, "{rule:?} allocated {n} times");
    }
}
