//! Signs (format 1.1): learned binary weights, one bit per weight and a scale. Written, read
//! back value by value on ragged rows, and refused when hostile.

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
