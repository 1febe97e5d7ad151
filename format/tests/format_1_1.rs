//! What format 1.1 adds: signs (learned binary weights, one bit per weight and a scale), and
//! batch norms with a row of statistics per task. Written, read back, and refused when hostile.

mod common;

use common::*;
use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
use smk_format::{Error, Model, Storage};

const ROWS: u32 = 5;
/// Two words a row, the second holding 6 columns: the padding bits are exercised.
const COLS: u32 = 70;
const SCALE: f32 = 0.375;

fn signs_model() -> (Vec<u8>, Vec<bool>) {
    let positive = bits(7, (ROWS * COLS) as usize, 0.5);
    let mut b = ModelBuilder::new(&[COLS]).unwrap();
    let fc = b
        .linear(
            "fc",
            TensorSpec::signs("fc.weight", &[ROWS, COLS], positive.clone(), SCALE).unwrap(),
            None,
        )
        .unwrap();
    let set = b.mask_set("only").unwrap();
    b.set_mask(set, fc, MaskSpec::element_bools(&bits(8, (ROWS * COLS) as usize, 0.3)))
        .unwrap();
    (b.to_bytes().unwrap(), positive)
}

#[test]
fn signs_read_back_as_plus_or_minus_the_scale() {
    let (bytes, positive) = signs_model();
    let m = Model::parse(&bytes).unwrap();
    m.verify().unwrap();
    assert_eq!(m.version(), (1, 1), "a file with signs is a 1.1 file");
    let t = m.tensors().next().unwrap();
    assert_eq!(t.storage, Storage::Signs { scale: SCALE });
    assert_eq!(
        t.data.len(),
        (ROWS * COLS.div_ceil(64) * 8) as usize,
        "one bit a weight"
    );
    let dense = t.to_f32_vec().unwrap();
    for r in 0..ROWS as u64 {
        for c in 0..COLS as u64 {
            let i = (r * COLS as u64 + c) as usize;
            let want = if positive[i] { SCALE } else { -SCALE };
            assert_eq!(t.value(r, c), want, "({r}, {c})");
            assert_eq!(dense[i], want);
        }
    }
    // A file without signs stays 1.0, readable by every 1.x reader.
    assert_eq!(Model::parse(&small()).unwrap().version(), (1, 0));
}

#[test]
fn hostile_signs_are_refused() {
    let (good, _) = signs_model();
    let t0 = {
        let m = Model::parse(&good).unwrap();
        let (data, _) = m
            .sections()
            .find(|s| s.kind == smk_format::SectionKind::TensorData)
            .map(|s| (s.offset as usize, s.length))
            .unwrap();
        (tensor(&good, 0), data)
    };
    let patch = |off: usize, v: &[u8]| {
        let mut b = good.clone();
        put(&mut b, off, v);
        fix(&mut b);
        b
    };
    // A padding bit past column 70 in row 3: the structure parses, verify names the row.
    let row3_last = t0.1 + (3 * 2 + 1) * 8;
    let word = u64_at(&good, row3_last) | 1 << 10;
    let b = patch(row3_last, &word.to_le_bytes());
    assert_eq!(
        Model::parse(&b).unwrap().verify().unwrap_err(),
        Error::SignPaddingBits { tensor: 0, row: 3 }
    );
    // Negative, infinite and NaN scales.
    for bad in [-1.0f32, f32::INFINITY, f32::NAN, -0.0] {
        let e = Model::parse(&patch(t0.0 + 56, &bad.to_bits().to_le_bytes())).unwrap_err();
        assert!(matches!(e, Error::BadTensorField { field: "scale", .. }), "{bad}: {e}");
    }
    // Tile-major signs, and a nonzero byte where seeded tensors keep their seed.
    let e = Model::parse(&patch(t0.0 + 9, &[1])).unwrap_err();
    assert!(matches!(e, Error::LayoutMismatch { tensor: 0, .. }), "{e}");
    assert!(Model::parse(&patch(t0.0 + 48, &[1])).is_err());
    // Dims that need more words than the data holds.
    let e = Model::parse(&patch(t0.0 + 16, &(ROWS + 1).to_le_bytes())).unwrap_err();
    assert!(e.to_string().contains("is 80 bytes, expected 96"), "{e}");
    // The writer refuses block masks over signs and a bad scale.
    let mut b = ModelBuilder::new(&[COLS]).unwrap();
    let fc = b
        .linear(
            "fc",
            TensorSpec::signs("fc.weight", &[ROWS, COLS], vec![true; (ROWS * COLS) as usize], 1.0).unwrap(),
            None,
        )
        .unwrap();
    let set = b.mask_set("only").unwrap();
    let grid = (ROWS.div_ceil(2) * COLS.div_ceil(2)) as usize;
    assert!(b
        .set_mask(set, fc, MaskSpec::block_bools([2, 2], &vec![true; grid]))
        .is_err());
    assert!(TensorSpec::signs("w", &[2, 2], vec![true; 4], f32::NAN).is_err());
    // Signs are weights: a bias of signs makes no file.
    let mut b = ModelBuilder::new(&[2]).unwrap();
    let bias = TensorSpec::signs("fc.bias", &[3], vec![true; 3], 1.0).unwrap();
    b.linear("fc", f32_tensor("fc.weight", &[3, 2], 1), Some(bias)).unwrap();
    let e = b.to_bytes().unwrap_err();
    assert!(e.to_string().contains("linear and conv2d weights only"), "{e}");
    assert!(TensorSpec::signs("w", &[2, 2], vec![true; 3], 1.0).is_err());
}

/// `[6] → linear(4) → batch_norm → softmax` with two mask sets and norms of `rows` rows.
fn per_task_norms(rows: u32) -> Result<Vec<u8>, Error> {
    let mut b = ModelBuilder::new(&[6]).unwrap();
    let fc = b.linear("fc", f32_tensor("fc.weight", &[4, 6], 1), None).unwrap();
    let dims = if rows == 0 { vec![4] } else { vec![rows, 4] };
    let n = dims.iter().product::<u32>() as usize;
    let mean = TensorSpec::f32("bn.mean", &dims, values(2, n)).unwrap();
    let var = TensorSpec::f32("bn.var", &dims, values(3, n).iter().map(|v| v.abs() + 0.5).collect()).unwrap();
    b.batch_norm("bn", mean, var, None, None, 1e-5)?;
    b.op("softmax", smk_format::Op::Softmax).unwrap();
    for (k, name) in ["a", "b"].into_iter().enumerate() {
        let s = b.mask_set(name).unwrap();
        b.set_mask(s, fc, MaskSpec::element_bools(&bits(10 + k as u64, 24, 0.5)))
            .unwrap();
    }
    b.to_bytes()
}

#[test]
fn per_task_norms_hold_a_row_per_mask_set() {
    let bytes = per_task_norms(2).unwrap();
    let m = Model::parse(&bytes).unwrap();
    m.verify().unwrap();
    assert_eq!(m.version(), (1, 1));
    let mean = m.tensors().find(|t| t.name == "bn.mean").unwrap();
    let v = values(2, 8);
    for c in 0..4u64 {
        assert_eq!(mean.channel(Some(0), c), v[c as usize]);
        assert_eq!(mean.channel(Some(1), c), v[4 + c as usize]);
    }
    // Shared norms stay 1.0 files and read the same under every set.
    let shared_bytes = per_task_norms(0).unwrap();
    let shared = Model::parse(&shared_bytes).unwrap();
    assert_eq!(shared.version(), (1, 0));
    let mean = shared.tensors().find(|t| t.name == "bn.mean").unwrap();
    assert_eq!(mean.channel(Some(1), 2), mean.channel(None, 2));
    // A row count other than the set count, and mixed forms, are refused.
    let e = per_task_norms(3).unwrap_err();
    assert!(e.to_string().contains("one row per mask set"), "{e}");
    let mut b = ModelBuilder::new(&[6]).unwrap();
    b.linear("fc", f32_tensor("fc.weight", &[4, 6], 1), None).unwrap();
    let e = b
        .batch_norm(
            "bn",
            TensorSpec::f32("m", &[2, 4], values(2, 8)).unwrap(),
            TensorSpec::f32("v", &[4], values(3, 4)).unwrap(),
            None,
            None,
            1e-5,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("must all be [channels] or all [tasks, channels]"),
        "{e}"
    );
}
