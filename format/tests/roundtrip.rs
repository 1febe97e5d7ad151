//! Files written by the builder open with the parser, and every field comes back.

mod common;

use common::*;
use proptest::prelude::*;
use smk_format::seeded::SeededInit;
use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{InitRule, Input, Layout, MaskKind, Model, Op, Storage, StorageKind};

/// The values a builder tensor holds, as f32, row-major over its matrix view.
fn expected_values(spec: &TensorSpec, data: &TensorData) -> Vec<f32> {
    match data {
        TensorData::F32(v) => v.clone(),
        TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        TensorData::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        TensorData::Seeded(init) => {
            let (rows, cols) = spec.shape().matrix();
            let mut out = vec![0.0; (rows * cols) as usize];
            init.fill(cols as usize, &mut out);
            out
        }
        TensorData::Signs { positive, scale } => positive.iter().map(|&p| if p { *scale } else { -scale }).collect(),
    }
}

#[test]
fn every_kind_round_trips() {
    for packed in [false, true] {
        let bytes = every_kind(packed).to_bytes().unwrap();
        let m = Model::parse(&bytes).unwrap();
        m.verify().unwrap();
        assert_eq!(m.version(), (1, 0));
        assert_eq!(m.alignment(), 64);
        assert_eq!(m.input_shape().dims(), &[2, 9, 9]);
        assert_eq!(m.output_shape().dims(), &[10]);
        let names: Vec<_> = m.layers().map(|l| l.name).collect();
        assert_eq!(
            names,
            ["conv", "bn", "relu0", "pool", "avg", "flat", "fc1", "ln", "relu1", "fc2", "residual", "fc3", "softmax"]
        );
        let shapes: Vec<Vec<u32>> = m.layers().map(|l| l.output_shape.dims().to_vec()).collect();
        assert_eq!(shapes[0], [5, 9, 9]);
        assert_eq!(shapes[3], [5, 4, 4]);
        assert_eq!(shapes[4], [5, 4, 4]);
        assert_eq!(shapes[5], [80]);
        assert_eq!(shapes[6], [37]);
        let residual = m.layer(10).unwrap();
        assert_eq!(
            (residual.op, residual.input, residual.second_input),
            (Op::Add, Input::Layer(8), Some(Input::Layer(9)))
        );
        match m.layer(4).unwrap().op {
            Op::AvgPool {
                window,
                count_include_pad,
            } => {
                assert_eq!(
                    (window.kernel, window.stride, window.padding, count_include_pad),
                    ([3, 3], [1, 1], [1, 1], false)
                )
            }
            other => panic!("layer 4 is {other:?}"),
        }
        match m.layer(1).unwrap().op {
            Op::BatchNorm {
                eps,
                gamma: Some(_),
                beta: Some(_),
                ..
            } => assert_eq!(eps, 1e-5),
            other => panic!("layer 1 is {other:?}"),
        }

        // Tensors: names, storage, layout, and every value.
        let t = |name: &str| m.tensors().find(|t| t.name == name).unwrap();
        assert_eq!(t("conv.weight").storage, Storage::F32);
        assert_eq!(t("fc1.weight").storage.kind(), StorageKind::F16);
        assert_eq!(t("ln.weight").storage.kind(), StorageKind::Bf16);
        assert_eq!(
            t("fc2.weight").storage,
            Storage::Seeded(SeededInit {
                rule: InitRule::SignedConstant,
                seed: 2026,
                stream: 9,
                scale: 0.25
            })
        );
        assert!(t("fc2.weight").data.is_empty());
        match t("fc1.weight").layout {
            Layout::Packed { block, index } => {
                assert!(packed);
                assert_eq!(block, [4, 8]);
                assert_eq!(index.block_rows(), 10);
            }
            Layout::TileMajor { block } => {
                assert!(!packed);
                assert_eq!(block, [4, 8]);
            }
            Layout::RowMajor => panic!("fc1 under a block mask must not be row-major"),
        }
        assert_eq!(t("conv.weight").layout, Layout::RowMajor);
        assert_eq!(m.tensor_count(), 12);

        let mask_sets: Vec<_> = m.mask_sets().map(|s| s.name).collect();
        assert_eq!(mask_sets, if packed { vec!["only"] } else { vec!["task-a", "task-b"] });
        assert_eq!(m.masked_tensors().collect::<Vec<_>>(), [0, 6, 9, 11]);
        for (tensor, seed_base, kind, block) in [
            (0u32, 1u64, MaskKind::Element, [1u16, 1u16]),
            (6, 2, MaskKind::Block, [4, 8]),
            (9, 3, MaskKind::Element, [1, 1]),
            (11, 4, MaskKind::Block, [3, 16]),
        ] {
            for s in 0..m.mask_set_count() {
                let mask = m.mask(s, tensor).unwrap();
                assert_eq!((mask.kind, mask.block), (kind, block));
                let density = [0.5, 0.3, 0.5, 0.5][seed_base as usize - 1];
                let want = bits(
                    100 * s as u64 + seed_base,
                    (mask.grid.0 * mask.grid.1) as usize,
                    density,
                );
                let mut ones = 0;
                for r in 0..mask.grid.0 {
                    for c in 0..mask.grid.1 {
                        let b = want[(r * mask.grid.1 + c) as usize];
                        assert_eq!(mask.bit(r, c), b, "set {s} tensor {tensor} bit {r},{c}");
                        ones += b as u64;
                    }
                }
                assert_eq!(mask.ones, ones);
                assert!(
                    mask.as_words().is_some(),
                    "mask words are 8-byte aligned in an aligned buffer"
                );
            }
        }
        assert_eq!(
            m.metadata().collect::<Vec<_>>(),
            [
                ("config", "{\"method\":\"edge-popup\",\"keep\":0.5}"),
                ("dataset", "mnist-8k")
            ]
        );
        assert_eq!(m.metadata_value("dataset"), Some("mnist-8k"));
        let h: Vec<_> = m.history().collect();
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].tool, h[0].note, h[0].unix_time, h[0].version),
            ("smk-format tests", "built by the test suite", 1_790_000_000, (1, 0))
        );
    }
}

#[test]
fn every_value_round_trips_in_every_layout() {
    for packed in [false, true] {
        let bytes = every_kind(packed).to_bytes().unwrap();
        let m = Model::parse(&bytes).unwrap();
        // Rebuild the same specs the sample used and compare element by element.
        let specs = [
            ("conv.weight", f32_tensor("conv.weight", &[5, 2, 3, 3], 1)),
            ("fc1.weight", f16_tensor("fc1.weight", &[37, 80], 6)),
            ("ln.weight", bf16_tensor("ln.weight", &[37], 7)),
            (
                "fc2.weight",
                seeded("fc2.weight", &[37, 37], InitRule::SignedConstant, 9),
            ),
            ("fc2.bias", seeded("fc2.bias", &[37], InitRule::Uniform, 10)),
            ("fc3.weight", seeded("fc3.weight", &[10, 37], InitRule::Normal, 11)),
        ];
        for (name, spec) in specs {
            let t = m.tensors().find(|t| t.name == name).unwrap();
            let want = expected_values(&spec, spec.data());
            let (rows, cols) = t.matrix();
            let mask = m.mask(0, t.index);
            for r in 0..rows {
                for c in 0..cols {
                    let v = t.value(r, c);
                    let stored_zero = packed && name == "fc1.weight" && !mask.unwrap().keeps(r, c);
                    let w = if stored_zero {
                        0.0
                    } else {
                        want[(r * cols + c) as usize]
                    };
                    assert_eq!(v.to_bits(), w.to_bits(), "{name} ({r},{c}) packed={packed}");
                }
            }
            #[cfg(feature = "alloc")]
            if !matches!(t.layout, Layout::Packed { .. }) {
                assert_eq!(t.to_f32_vec().unwrap(), want, "{name}");
            }
        }
    }
}

#[test]
fn same_input_gives_byte_identical_files() {
    assert_eq!(
        every_kind(false).to_bytes().unwrap(),
        every_kind(false).to_bytes().unwrap()
    );
}

#[test]
fn sections_and_data_pointers_are_aligned() {
    for alignment in [64u32, 256, 4096, 65536] {
        let mut b = every_kind(false);
        b.alignment(alignment).unwrap();
        let bytes = b.to_bytes().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.smk");
        smk_format::writer::write_atomic(&path, &bytes).unwrap();
        let mapped = smk_format::MappedModel::open(&path, true).unwrap();
        let m = mapped.model().unwrap();
        assert_eq!(m.alignment(), alignment);
        // A mapping starts on a page: pointers are aligned to the smaller of the two.
        let pointer_alignment = alignment.min(4096) as usize;
        for s in m.sections() {
            assert_eq!(s.offset % alignment as u64, 0, "section {} offset", s.index);
        }
        for t in m.tensors().filter(|t| !t.data.is_empty()) {
            assert_eq!(
                t.data.as_ptr() as usize % pointer_alignment,
                0,
                "tensor {} data pointer",
                t.name
            );
        }
        for s in 0..m.mask_set_count() {
            for t in m.masked_tensors() {
                let mask = m.mask(s, t).unwrap();
                assert_eq!(mask.data.as_ptr() as usize % pointer_alignment, 0);
            }
        }
        let conv = m.tensor(0).unwrap();
        assert_eq!(conv.as_f32().unwrap().len(), 90);
    }
}

#[test]
fn writer_refuses_what_it_cannot_store() {
    let mut b = ModelBuilder::new(&[4]).unwrap();
    assert!(
        b.linear("fc", f32_tensor("w", &[3, 5], 1), None).is_err(),
        "in-features mismatch"
    );
    assert!(TensorSpec::f32("w", &[3, 4], vec![0.0; 11]).is_err(), "values vs dims");
    assert!(TensorSpec::f32("w", &[0, 4], vec![]).is_err(), "zero dim");
    assert!(b.alignment(100).is_err());
    let fc = b.linear("fc", f32_tensor("w", &[3, 4], 1), None).unwrap();
    assert!(b.linear("", f32_tensor("w2", &[2, 3], 1), None).is_err(), "empty name");
    let relu = b.relu("relu").unwrap();
    let s = b.mask_set("t").unwrap();
    assert!(b.mask_set("t").is_err(), "duplicate set");
    assert!(
        b.set_mask(s, relu, MaskSpec::element_bools(&[true; 12])).is_err(),
        "relu has no weight"
    );
    assert!(
        b.set_mask(s, fc, MaskSpec::element_bools(&[true; 11])).is_err(),
        "bit count"
    );
    assert!(b.set_mask(s, fc, MaskSpec::element_words(&[1 << 3, 0, 0])).is_ok());
    assert!(
        b.set_mask(s, fc, MaskSpec::element_words(&[1 << 3, 1 << 4, 0]))
            .is_err(),
        "padding bits"
    );
    assert!(
        b.set_mask(s, fc, MaskSpec::block_bools([2, 2], &[true; 4])).is_err(),
        "kind change"
    );
    assert!(b.pack_blocks(fc).is_err(), "packing an element mask");
    let s2 = b.mask_set("u").unwrap();
    assert!(b.to_bytes().is_err(), "set u lacks fc's mask");
    b.set_mask(s2, fc, MaskSpec::element_bools(&[false; 12])).unwrap();
    let m = b.to_bytes().unwrap();
    assert_eq!(Model::parse(&m).unwrap().mask(1, 0).unwrap().ones, 0);
}

#[test]
fn atomic_write_replaces_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.smk");
    std::fs::write(&path, b"old").unwrap();
    let bytes = small();
    every_kind(false).write(&path).unwrap();
    smk_format::writer::write_atomic(&path, &bytes).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// A random multilayer model: dims, storage, mask kinds and densities (including 0 and 1),
/// block shapes, tasks, packing and alignment drawn by proptest.
#[derive(Debug, Clone)]
struct RandomModel {
    input: u32,
    layers: Vec<(u32, u8, u8, [u16; 2], bool)>,
    tasks: usize,
    densities: Vec<f64>,
    pack: bool,
    alignment: u32,
    seed: u64,
}

fn random_model() -> impl Strategy<Value = RandomModel> {
    (
        1u32..70,
        prop::collection::vec(
            (
                1u32..70,
                0u8..4,
                0u8..3,
                (1u16..9, 1u16..9).prop_map(|(a, b)| [a, b]),
                any::<bool>(),
            ),
            1..4,
        ),
        1usize..4,
        prop::collection::vec(prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0], 4),
        any::<bool>(),
        prop::sample::select(vec![64u32, 128, 1024]),
        any::<u64>(),
    )
        .prop_map(|(input, layers, tasks, densities, pack, alignment, seed)| RandomModel {
            input,
            layers,
            tasks,
            densities,
            pack,
            alignment,
            seed,
        })
}

/// Each linear layer: (layer index, weight data, out, in).
type Weights = Vec<(u32, TensorData, u32, u32)>;
/// Mask bits per task, per layer (empty where the layer is unmasked).
type TaskBits = Vec<Vec<Vec<bool>>>;

fn build(r: &RandomModel) -> (ModelBuilder, Weights, TaskBits) {
    let mut b = ModelBuilder::new(&[r.input]).unwrap();
    b.alignment(r.alignment).unwrap();
    let mut fan_in = r.input;
    let mut weights = Vec::new();
    let mut layer_ids = Vec::new();
    for (i, &(out, storage, _, _, bias)) in r.layers.iter().enumerate() {
        let n = (out * fan_in) as usize;
        let seed = r.seed.wrapping_add(i as u64);
        let data = match storage {
            0 => TensorData::F32(values(seed, n)),
            1 => TensorData::F16(values(seed, n).into_iter().map(half::f16::from_f32).collect()),
            2 => TensorData::Bf16(values(seed, n).into_iter().map(half::bf16::from_f32).collect()),
            _ => TensorData::Seeded(SeededInit {
                rule: InitRule::SignedConstant,
                seed,
                stream: i as u32,
                scale: 0.1,
            }),
        };
        let w = TensorSpec::new(format!("l{i}.weight"), &[out, fan_in], data.clone()).unwrap();
        let bias = bias.then(|| f32_tensor(&format!("l{i}.bias"), &[out], seed ^ 1));
        let l = b.linear(&format!("l{i}"), w, bias).unwrap();
        b.relu(&format!("relu{i}")).unwrap();
        layer_ids.push(l);
        weights.push((l, data, out, fan_in));
        fan_in = out;
    }
    let single = r.tasks == 1;
    let mut all_bits = Vec::new();
    for t in 0..r.tasks {
        let s = b.mask_set(&format!("task-{t}")).unwrap();
        let mut task_bits = Vec::new();
        for (i, &(out, _, mask_kind, block, _)) in r.layers.iter().enumerate() {
            let rows_cols = (out as u64, weights[i].3 as u64);
            let density = r.densities[(i + t) % 4];
            let seed = r.seed ^ ((t as u64) << 32 | i as u64);
            let spec_bits;
            let spec = match mask_kind {
                0 => {
                    spec_bits = Vec::new();
                    None
                }
                1 => {
                    spec_bits = bits(seed, (rows_cols.0 * rows_cols.1) as usize, density);
                    Some(MaskSpec::element_bools(&spec_bits))
                }
                _ => {
                    let grid = rows_cols.0.div_ceil(block[0] as u64) * rows_cols.1.div_ceil(block[1] as u64);
                    spec_bits = bits(seed, grid as usize, density);
                    Some(MaskSpec::block_bools(block, &spec_bits))
                }
            };
            if let Some(spec) = spec {
                b.set_mask(s, layer_ids[i], spec).unwrap();
                let seeded = matches!(weights[i].1, TensorData::Seeded(_));
                if single && r.pack && mask_kind == 2 && t == 0 {
                    assert_eq!(b.pack_blocks(layer_ids[i]).is_ok(), !seeded, "only stored weights pack");
                }
            }
            task_bits.push(spec_bits);
        }
        all_bits.push(task_bits);
    }
    b.metadata("seed", &r.seed.to_string()).unwrap();
    (b, weights, all_bits)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_models_round_trip(r in random_model()) {
        let (b, weights, all_bits) = build(&r);
        let bytes = b.to_bytes().unwrap();
        let m = Model::parse(&bytes).unwrap();
        m.verify().unwrap();
        prop_assert_eq!(m.alignment(), r.alignment);
        prop_assert_eq!(m.layer_count() as usize, 2 * r.layers.len());
        let seed = r.seed.to_string();
        prop_assert_eq!(m.metadata_value("seed"), Some(seed.as_str()));
        for (i, (layer, data, out, fan_in)) in weights.iter().enumerate() {
            let Op::Linear { weight, .. } = m.layer(*layer).unwrap().op else { panic!("not linear") };
            let t = m.tensor(weight).unwrap();
            prop_assert_eq!(t.shape.dims(), &[*out, *fan_in]);
            let spec = TensorSpec::new("x", &[*out, *fan_in], data.clone()).unwrap();
            let want = expected_values(&spec, data);
            let packed = matches!(t.layout, Layout::Packed { .. });
            for row in 0..*out as u64 {
                for col in 0..*fan_in as u64 {
                    let dropped = packed && !m.mask(0, weight).unwrap().keeps(row, col);
                    let w = if dropped { 0.0 } else { want[(row * *fan_in as u64 + col) as usize] };
                    prop_assert_eq!(t.value(row, col).to_bits(), w.to_bits());
                }
            }
            for (task, task_bits) in all_bits.iter().enumerate() {
                let bits = &task_bits[i];
                match m.mask(task as u32, weight) {
                    None => prop_assert!(bits.is_empty()),
                    Some(mask) => {
                        let mut ones = 0;
                        for (k, &bit) in bits.iter().enumerate() {
                            let (gr, gc) = (k as u64 / mask.grid.1, k as u64 % mask.grid.1);
                            prop_assert_eq!(mask.bit(gr, gc), bit);
                            ones += bit as u64;
                        }
                        prop_assert_eq!(mask.ones, ones);
                    }
                }
            }
        }
    }
}

#[test]
fn branches_read_the_layer_they_name() {
    // A residual block whose shortcut is a 1×1 conv reading the block input.
    let mut b = ModelBuilder::new(&[2, 6, 6]).unwrap();
    let stem = b.relu("stem").unwrap();
    let main = b
        .conv2d(
            "main",
            f32_tensor("main.weight", &[4, 2, 3, 3], 1),
            None,
            smk_format::Window2d::conv(3, 1),
        )
        .unwrap();
    b.input_from(Input::Layer(stem));
    let short = b
        .conv2d(
            "short",
            f32_tensor("short.weight", &[4, 2, 1, 1], 2),
            None,
            smk_format::Window2d::conv(1, 0),
        )
        .unwrap();
    let sum = b.add("sum", Input::Layer(main), Input::Layer(short)).unwrap();
    let after = b.relu("after").unwrap();
    let bytes = b.to_bytes().unwrap();
    let m = Model::parse(&bytes).unwrap();
    assert_eq!(m.layer(short).unwrap().input, Input::Layer(stem));
    assert_eq!(m.layer(main).unwrap().input, Input::Layer(stem));
    assert_eq!(m.layer(sum).unwrap().second_input, Some(Input::Layer(short)));
    assert_eq!(
        m.layer(after).unwrap().input,
        Input::Layer(sum),
        "input_from applies to one layer only"
    );
}
