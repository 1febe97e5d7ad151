//! Sample models and byte-patching helpers shared by the integration tests.
#![allow(dead_code)]

use smk_format::crc32c::crc32c;
use smk_format::seeded::{draw, SeededInit};
use smk_format::writer::{refresh_header_checksum, MaskSpec, ModelBuilder, TensorSpec};
use smk_format::{InitRule, Input, Op, Window2d};

/// Deterministic test values in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| ((draw(seed, i) >> 40) as f32 / (1u64 << 23) as f32) - 1.0)
        .collect()
}

/// Deterministic mask bits with roughly `density` ones.
pub fn bits(seed: u64, n: usize, density: f64) -> Vec<bool> {
    (0..n as u64)
        .map(|i| (draw(seed ^ 0xABCD, i) >> 11) as f64 / (1u64 << 53) as f64 <= density)
        .collect()
}

pub fn f32_tensor(name: &str, dims: &[u32], seed: u64) -> TensorSpec {
    let n = dims.iter().product::<u32>() as usize;
    TensorSpec::f32(name, dims, values(seed, n)).unwrap()
}

pub fn f16_tensor(name: &str, dims: &[u32], seed: u64) -> TensorSpec {
    let n = dims.iter().product::<u32>() as usize;
    let v = values(seed, n).into_iter().map(half::f16::from_f32).collect();
    TensorSpec::new(name, dims, smk_format::writer::TensorData::F16(v)).unwrap()
}

pub fn bf16_tensor(name: &str, dims: &[u32], seed: u64) -> TensorSpec {
    let n = dims.iter().product::<u32>() as usize;
    let v = values(seed, n).into_iter().map(half::bf16::from_f32).collect();
    TensorSpec::new(name, dims, smk_format::writer::TensorData::Bf16(v)).unwrap()
}

pub fn seeded(name: &str, dims: &[u32], rule: InitRule, stream: u32) -> TensorSpec {
    TensorSpec::seeded(
        name,
        dims,
        SeededInit {
            rule,
            seed: 2026,
            stream,
            scale: 0.25,
        },
    )
    .unwrap()
}

/// Every layer kind, every storage kind, element and block masks, two tasks, ragged shapes.
pub fn every_kind(packed: bool) -> ModelBuilder {
    let mut b = ModelBuilder::new(&[2, 9, 9]).unwrap();
    let conv = b
        .conv2d(
            "conv",
            f32_tensor("conv.weight", &[5, 2, 3, 3], 1),
            Some(f32_tensor("conv.bias", &[5], 2)),
            Window2d::conv(3, 1),
        )
        .unwrap();
    b.batch_norm(
        "bn",
        f32_tensor("bn.running_mean", &[5], 3),
        TensorSpec::f32("bn.running_var", &[5], vec![0.5, 1.0, 1.5, 2.0, 2.5]).unwrap(),
        Some(f16_tensor("bn.weight", &[5], 4)),
        Some(bf16_tensor("bn.bias", &[5], 5)),
        1e-5,
    )
    .unwrap();
    b.relu("relu0").unwrap();
    b.op("pool", Op::MaxPool(Window2d::pool(2))).unwrap();
    b.op(
        "avg",
        Op::AvgPool {
            window: Window2d {
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1, 1],
                dilation: [1, 1],
            },
            count_include_pad: false,
        },
    )
    .unwrap();
    b.flatten("flat").unwrap();
    let fc1 = b.linear("fc1", f16_tensor("fc1.weight", &[37, 80], 6), None).unwrap();
    b.layer_norm(
        "ln",
        Some(bf16_tensor("ln.weight", &[37], 7)),
        Some(f32_tensor("ln.bias", &[37], 8)),
        1e-5,
    )
    .unwrap();
    let skip = b.relu("relu1").unwrap();
    let fc2 = b
        .linear(
            "fc2",
            seeded("fc2.weight", &[37, 37], InitRule::SignedConstant, 9),
            Some(seeded("fc2.bias", &[37], InitRule::Uniform, 10)),
        )
        .unwrap();
    b.add("residual", Input::Layer(skip), Input::Layer(fc2)).unwrap();
    let fc3 = b
        .linear("fc3", seeded("fc3.weight", &[10, 37], InitRule::Normal, 11), None)
        .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    let tasks: &[&str] = if packed { &["only"] } else { &["task-a", "task-b"] };
    for (s, name) in tasks.iter().enumerate() {
        let set = b.mask_set(name).unwrap();
        let k = 100 * s as u64;
        b.set_mask(set, conv, MaskSpec::element_bools(&bits(k + 1, 5 * 18, 0.5)))
            .unwrap();
        b.set_mask(set, fc1, MaskSpec::block_bools([4, 8], &bits(k + 2, 10 * 10, 0.3)))
            .unwrap();
        b.set_mask(set, fc2, MaskSpec::element_bools(&bits(k + 3, 37 * 37, 0.5)))
            .unwrap();
        b.set_mask(set, fc3, MaskSpec::block_bools([3, 16], &bits(k + 4, 4 * 3, 0.5)))
            .unwrap();
    }
    if packed {
        b.pack_blocks(fc1).unwrap();
    }
    b.metadata("dataset", "mnist-8k").unwrap();
    b.metadata("config", "{\"method\":\"edge-popup\",\"keep\":0.5}")
        .unwrap();
    b.history("smk-format tests", "built by the test suite", 1_790_000_000)
        .unwrap();
    b
}

/// A small file whose layout the hostile tests patch: input [6]; fc1 f32 [4,6] with an element
/// mask and a seeded uniform bias; relu; fc2 f32 [3,4] tile-major under a 2×2 block mask, with an
/// f32 bias; softmax. Two mask sets "a" and "b", two metadata keys, one history entry.
/// Sections: 0 STRINGS, 1 GRAPH, 2 TENSORS, 3 MASKS, 4 METADATA, 5 HISTORY, 6 fc1.weight,
/// 7 fc2.weight, 8 fc2.bias, 9..=12 masks (a/fc1, a/fc2, b/fc1, b/fc2).
pub fn small() -> Vec<u8> {
    let mut b = ModelBuilder::new(&[6]).unwrap();
    let fc1 = b
        .linear(
            "fc1",
            f32_tensor("fc1.weight", &[4, 6], 1),
            Some(seeded("fc1.bias", &[4], InitRule::Uniform, 1)),
        )
        .unwrap();
    b.relu("relu").unwrap();
    let fc2 = b
        .linear(
            "fc2",
            f32_tensor("fc2.weight", &[3, 4], 2),
            Some(f32_tensor("fc2.bias", &[3], 3)),
        )
        .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let s = b.mask_set(name).unwrap();
        b.set_mask(s, fc1, MaskSpec::element_bools(&bits(i as u64, 24, 0.5)))
            .unwrap();
        b.set_mask(s, fc2, MaskSpec::block_bools([2, 2], &[true, false, true, true]))
            .unwrap();
    }
    b.metadata("a-key", "first").unwrap();
    b.metadata("b-key", "second").unwrap();
    b.history("tests", "small", 1).unwrap();
    b.to_bytes().unwrap()
}

/// One task, fc1 [4,6] element-masked, fc2 [3,4] packed under a 1×2 block mask (block grid
/// 3×2, bits [1 0; 1 1; 0 1]), with a bias.
/// Sections: 0 STRINGS, 1 GRAPH, 2 TENSORS, 3 MASKS, 4 fc1.weight, 5 fc2.weight, 6 fc2 index,
/// 7 fc2.bias, 8 mask fc1, 9 mask fc2.
pub fn small_packed() -> Vec<u8> {
    let mut b = ModelBuilder::new(&[6]).unwrap();
    let fc1 = b.linear("fc1", f32_tensor("fc1.weight", &[4, 6], 1), None).unwrap();
    let fc2 = b
        .linear(
            "fc2",
            f32_tensor("fc2.weight", &[3, 4], 2),
            Some(f32_tensor("fc2.bias", &[3], 3)),
        )
        .unwrap();
    let s = b.mask_set("only").unwrap();
    b.set_mask(s, fc1, MaskSpec::element_bools(&bits(7, 24, 0.5))).unwrap();
    b.set_mask(
        s,
        fc2,
        MaskSpec::block_bools([1, 2], &[true, false, true, true, false, true]),
    )
    .unwrap();
    b.pack_blocks(fc2).unwrap();
    b.to_bytes().unwrap()
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

pub fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// `(offset, length)` of section `i`.
pub fn section(b: &[u8], i: usize) -> (usize, usize) {
    let e = 64 + 32 * i;
    (u64_at(b, e + 8) as usize, u64_at(b, e + 16) as usize)
}

/// Recomputes every section checksum and the header checksum, so a patch reaches the check it
/// targets instead of failing a checksum first.
pub fn fix(b: &mut [u8]) {
    let count = u32_at(b, 24) as usize;
    let len = b.len();
    for i in (0..count).take_while(|i| 64 + 32 * (i + 1) <= len) {
        let (off, len) = section(b, i);
        if off.checked_add(len).is_some_and(|end| end <= b.len()) {
            let c = crc32c(&b[off..off + len]);
            put(b, 64 + 32 * i + 24, &c.to_le_bytes());
        }
    }
    refresh_header_checksum(b);
}

pub fn layer(b: &[u8], l: usize) -> usize {
    section(b, 1).0 + 32 + 96 * l
}

pub fn tensor(b: &[u8], t: usize) -> usize {
    section(b, 2).0 + 16 + 64 * t
}
