//! A small model for the C API's tests, built with the format's writer.

use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
use smk_format::{seeded::draw, InitRule, Op, SeededInit};

pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((draw(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale)
        .collect()
}

/// [1, 5, 7] → flatten → seeded 35→19 → relu → f32 19→11 with bias → softmax, with `tasks`
/// element mask sets (none for 0).
pub fn model_bytes(tasks: u32) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[1, 5, 7]).unwrap();
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
    let bias = TensorSpec::f32("fc2.b", &[11], values(7, 11, 0.5)).unwrap();
    b.linear(
        "fc2",
        TensorSpec::f32("fc2.w", &[11, 19], values(6, 11 * 19, 2.0)).unwrap(),
        Some(bias),
    )
    .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    for k in 0..tasks {
        let s = b.mask_set(&format!("task-{k}")).unwrap();
        let keep: Vec<bool> = (0..19 * 35).map(|i| draw(10 + k as u64, i) >> 63 == 1).collect();
        b.set_mask(s, fc1, MaskSpec::element_bools(&keep)).unwrap();
    }
    b.to_bytes().unwrap()
}
