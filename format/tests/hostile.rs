//! Hostile files: one hand-made byte string per error variant, truncation at every byte, and
//! random bit flips. Each must give the named error, never a panic.

mod common;

use common::*;
use smk_format::spec::{caps, NONE};
use smk_format::writer::refresh_header_checksum;
use smk_format::{Error, Model, SectionKind};

fn parse(b: &[u8]) -> Error {
    match Model::parse(b) {
        Ok(_) => panic!("hostile file parsed"),
        Err(e) => {
            // Every message names something; none is empty.
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

fn verify(b: &[u8]) -> Error {
    Model::parse(b)
        .expect("structure stays valid")
        .verify()
        .expect_err("verify must refuse")
}

/// Patches `b` at `off`, fixes every checksum, and parses.
fn patched(off: usize, v: &[u8]) -> Error {
    let mut b = small();
    put(&mut b, off, v);
    fix(&mut b);
    parse(&b)
}

fn le(x: u32) -> [u8; 4] {
    x.to_le_bytes()
}

#[test]
fn sample_is_valid() {
    let b = small();
    let m = Model::parse(&b).unwrap();
    m.verify().unwrap();
    let kinds: Vec<_> = m.sections().map(|s| s.kind).collect();
    use SectionKind::*;
    assert_eq!(
        kinds,
        [
            Strings, Graph, Tensors, Masks, Metadata, History, TensorData, TensorData, TensorData, MaskData, MaskData,
            MaskData, MaskData
        ]
    );
    Model::parse(&small_packed()).unwrap().verify().unwrap();
}

#[test]
fn header_errors() {
    assert_eq!(parse(&small()[..10]), Error::TooShort { len: 10 });
    assert_eq!(parse(&[]), Error::TooShort { len: 0 });

    let mut b = small();
    b[1] = b'X';
    assert!(matches!(parse(&b), Error::BadMagic { .. }));

    let mut b = small();
    put(&mut b, 8, &2u16.to_le_bytes());
    assert_eq!(parse(&b), Error::UnsupportedVersion { major: 2, minor: 0 });
    let mut b = small();
    put(&mut b, 10, &7u16.to_le_bytes());
    fix(&mut b);
    Model::parse(&b).expect("a newer minor of the same major is readable");

    let mut b = small();
    put(&mut b, 12, &[1, 2, 3, 4]);
    assert_eq!(parse(&b), Error::WrongByteOrder { found: 0x0403_0201 });

    let mut b = small();
    b.push(0);
    assert!(matches!(parse(&b), Error::FileLength { .. }));

    assert_eq!(patched(16, &le(1)), Error::UnknownFlags { flags: 1 });
    assert_eq!(patched(20, &le(48)), Error::BadAlignment { alignment: 48 });
    assert_eq!(patched(20, &le(96)), Error::BadAlignment { alignment: 96 });
    assert_eq!(patched(20, &le(1 << 17)), Error::BadAlignment { alignment: 1 << 17 });
    assert_eq!(
        patched(24, &le(caps::SECTIONS + 1)),
        Error::TooManySections {
            count: caps::SECTIONS + 1
        }
    );
    assert!(matches!(patched(28, &le(64)), Error::HeaderLength { stored: 64, .. }));
    assert!(
        matches!(patched(24, &le(1000)), Error::HeaderLength { .. }),
        "table longer than the file"
    );
    assert_eq!(patched(50, &[1]), Error::ReservedNotZero { offset: 50 });

    let mut b = small();
    b[64 + 32 * 2 + 20] ^= 1; // a length byte in the section table, checksum left stale
    assert!(matches!(parse(&b), Error::HeaderChecksum { .. }));
}

#[test]
fn section_table_errors() {
    let e = |i: usize| 64 + 32 * i;
    assert_eq!(
        patched(e(3), &le(99)),
        Error::UnknownSectionKind { section: 3, kind: 99 }
    );
    assert_eq!(
        patched(e(3) + 4, &[1]),
        Error::ReservedNotZero {
            offset: e(3) as u64 + 4
        }
    );
    let b = small();
    let (off1, _) = section(&b, 1);
    assert!(matches!(
        patched(e(1) + 8, &(off1 as u64 + 64).to_le_bytes()),
        Error::SectionMisplaced { section: 1, .. }
    ));
    let last = u32_at(&b, 24) as usize - 1;
    let (_, len_last) = section(&b, last);
    assert!(matches!(
        patched(e(last) + 16, &(len_last as u64 + 4096).to_le_bytes()),
        Error::SectionOutOfBounds { .. }
    ));

    // A nonzero byte in the padding after the section table.
    let header_len = u32_at(&b, 28) as usize;
    assert!(section(&b, 0).0 > header_len, "sample has padding after its table");
    assert_eq!(
        patched(header_len + 1, &[7]),
        Error::PaddingNotZero {
            offset: header_len as u64 + 1
        }
    );

    // Sixty-four bytes appended, the file length updated.
    let mut b = small();
    let len = b.len();
    b.extend_from_slice(&[0; 64]);
    put(&mut b, 32, &(len as u64 + 64).to_le_bytes());
    fix(&mut b);
    assert_eq!(parse(&b), Error::TrailingBytes { end: len as u64 });

    // STRINGS and GRAPH swapped.
    let mut b = small();
    put(&mut b, e(0), &le(SectionKind::Graph.code()));
    put(&mut b, e(1), &le(SectionKind::Strings.code()));
    fix(&mut b);
    assert_eq!(
        parse(&b),
        Error::SectionOrder {
            section: 0,
            found: SectionKind::Graph,
            expected: "STRINGS"
        }
    );

    // A header with no sections at all.
    let mut b = small()[..64].to_vec();
    put(&mut b, 24, &le(0));
    put(&mut b, 28, &le(64));
    put(&mut b, 32, &64u64.to_le_bytes());
    refresh_header_checksum(&mut b);
    assert_eq!(
        parse(&b),
        Error::MissingSection {
            kind: SectionKind::Strings
        }
    );

    // A structure section whose bytes do not match their checksum.
    let mut b = small();
    let (graph, _) = section(&b, 1);
    b[graph + 40] ^= 0x10;
    assert!(matches!(
        parse(&b),
        Error::SectionChecksum {
            section: 1,
            kind: SectionKind::Graph,
            ..
        }
    ));

    // A payload section flipped: parse accepts (open stays O(header)), verify refuses.
    let mut b = small();
    let (w, _) = section(&b, 6);
    b[w + 3] ^= 0x01;
    assert!(matches!(
        verify(&b),
        Error::SectionChecksum {
            section: 6,
            kind: SectionKind::TensorData,
            ..
        }
    ));
}

#[test]
fn graph_errors() {
    let b = small();
    let graph = section(&b, 1).0;
    assert!(matches!(
        patched(graph, &le(5)),
        Error::SectionLength {
            section: 1,
            kind: SectionKind::Graph,
            ..
        }
    ));
    assert!(matches!(
        patched(graph, &le(caps::LAYERS + 1)),
        Error::CountTooLarge { what: "layer", .. }
    ));
    assert_eq!(
        patched(graph + 4, &le(0)),
        Error::BadShape {
            offset: graph as u64 + 8
        }
    );
    assert_eq!(
        patched(graph + 12, &le(3)),
        Error::BadShape {
            offset: graph as u64 + 8
        },
        "dims past the rank must be zero"
    );

    let l0 = layer(&b, 0);
    let l1 = layer(&b, 1);
    assert!(matches!(patched(l0 + 4, &le(1 << 20)), Error::StringOutOfBounds { .. }));
    assert!(matches!(patched(l0 + 8, &le(0)), Error::BadName { len: 0, .. }));
    assert!(matches!(patched(l0 + 8, &le(300)), Error::BadName { len: 300, .. }));
    let mut s = small();
    let name_at = section(&s, 0).0 + u32_at(&s, l0 + 4) as usize;
    s[name_at] = 0xFF;
    fix(&mut s);
    assert!(matches!(parse(&s), Error::StringNotUtf8 { .. }));

    assert_eq!(
        patched(l0, &77u16.to_le_bytes()),
        Error::UnknownLayerKind { layer: 0, code: 77 }
    );
    assert!(matches!(
        patched(l1 + 56, &le(1)),
        Error::BadLayerField {
            layer: 1,
            field: "attribute",
            ..
        }
    ));
    assert!(matches!(
        patched(l1 + 2, &1u16.to_le_bytes()),
        Error::BadLayerField {
            layer: 1,
            field: "flags",
            ..
        }
    ));
    assert!(matches!(
        patched(l1 + 40, &le(0)),
        Error::BadLayerField {
            layer: 1,
            field: "tensor slot",
            ..
        }
    ));
    assert!(matches!(
        patched(l1 + 16, &le(0)),
        Error::BadLayerField {
            layer: 1,
            field: "second input",
            ..
        }
    ));
    assert_eq!(patched(l1 + 12, &le(1)), Error::BadLayerInput { layer: 1, input: 1 });
    assert_eq!(patched(l1 + 12, &le(9)), Error::BadLayerInput { layer: 1, input: 9 });
    assert!(
        matches!(patched(graph + 8, &le(7)), Error::LayerShape { layer: 0, .. }),
        "input no longer fits fc1"
    );
    assert!(matches!(patched(l0 + 24, &le(5)), Error::OutputShape { layer: 0, .. }));
    assert!(matches!(patched(l0 + 20, &[0]), Error::BadShape { .. }));
    assert_eq!(
        patched(l0 + 44, &le(0)),
        Error::TensorReference {
            layer: 0,
            slot: 1,
            found: 0,
            expected: 1
        }
    );
    let l2 = layer(&b, 2);
    assert_eq!(patched(l2 + 44, &le(NONE)), Error::UnusedTensors { used: 3, count: 4 });
}

#[test]
fn tensor_errors() {
    let b = small();
    let tensors = section(&b, 2).0;
    assert!(matches!(
        patched(tensors, &le(caps::TENSORS + 1)),
        Error::CountTooLarge { what: "tensor", .. }
    ));
    assert!(matches!(
        patched(tensors, &le(3)),
        Error::SectionLength { section: 2, .. }
    ));
    let (t0, t1, t2) = (tensor(&b, 0), tensor(&b, 1), tensor(&b, 2));
    assert_eq!(patched(t0 + 8, &[9]), Error::UnknownStorage { tensor: 0, code: 9 });
    assert_eq!(patched(t0 + 9, &[9]), Error::UnknownLayout { tensor: 0, code: 9 });
    assert_eq!(patched(t1 + 40, &[9]), Error::UnknownInitRule { tensor: 1, code: 9 });
    assert_eq!(patched(t1 + 41, &[9]), Error::UnknownGenerator { tensor: 1, code: 9 });
    assert_eq!(
        patched(t1 + 32, &le(0)),
        Error::BadTensorField {
            tensor: 1,
            field: "data_section",
            value: 0
        }
    );
    assert!(matches!(
        patched(t1 + 56, &f32::NAN.to_bits().to_le_bytes()),
        Error::BadTensorField { field: "scale", .. }
    ));
    assert!(matches!(
        patched(t1 + 56, &(-0.0f32).to_bits().to_le_bytes()),
        Error::BadTensorField { field: "scale", .. }
    ));
    assert!(
        matches!(patched(t0 + 9, &[1]), Error::LayoutMismatch { tensor: 0, .. }),
        "element mask on a tile-major tensor"
    );
    assert!(
        matches!(
            patched(t2 + 14, &3u16.to_le_bytes()),
            Error::LayoutMismatch { tensor: 2, .. }
        ),
        "block shape differs from the mask's"
    );
    assert!(matches!(
        patched(t2 + 9, &[0]),
        Error::BadTensorField {
            tensor: 2,
            field: "block",
            ..
        }
    ));
    assert!(
        matches!(patched(t2 + 9, &[2]), Error::LayoutMismatch { tensor: 2, .. }),
        "packed with two mask sets"
    );
    let mut s = small();
    put(&mut s, t2 + 9, &[0]);
    put(&mut s, t2 + 12, &[0, 0, 0, 0]);
    fix(&mut s);
    assert!(
        matches!(parse(&s), Error::LayoutMismatch { tensor: 2, reason } if reason.contains("tile-major or packed"))
    );
    assert!(
        matches!(patched(t1 + 9, &[1]), Error::LayoutMismatch { tensor: 1, .. }),
        "seeded must say row-major"
    );
    assert!(matches!(
        patched(t1 + 12, &[4]),
        Error::BadTensorField {
            tensor: 1,
            field: "block",
            ..
        }
    ));
    assert_eq!(
        patched(t1 + 36, &le(3)),
        Error::BadTensorField {
            tensor: 1,
            field: "index_section",
            value: 3
        }
    );
    assert!(matches!(
        patched(t0 + 36, &le(7)),
        Error::BadTensorField {
            tensor: 0,
            field: "index_section",
            ..
        }
    ));
    assert!(matches!(
        patched(t2 + 36, &le(8)),
        Error::BadTensorField {
            tensor: 2,
            field: "index_section",
            ..
        }
    ));
    assert!(matches!(patched(t0 + 10, &[0]), Error::BadShape { .. }), "rank 0");
    assert!(matches!(patched(t0 + 16, &le(0)), Error::BadShape { .. }), "zero dim");
    assert_eq!(
        patched(t0 + 32, &le(7)),
        Error::PayloadReference {
            offset: t0 as u64 + 32,
            found: 7,
            expected: 6
        }
    );
    assert!(
        matches!(patched(t0 + 48, &[1]), Error::ReservedNotZero { .. }),
        "seed on a stored tensor"
    );
    // The data section one element short.
    let mut s = small();
    put(&mut s, t0 + 16, &le(3));
    let l0 = layer(&s, 0);
    put(&mut s, l0 + 24, &le(3));
    fix(&mut s);
    assert!(matches!(
        parse(&s),
        Error::SectionLength {
            section: 6,
            kind: SectionKind::TensorData,
            ..
        }
    ));
    // A payload section of the wrong kind where a tensor's data should be.
    let mut s = small();
    put(&mut s, 64 + 32 * 6, &le(SectionKind::MaskData.code()));
    fix(&mut s);
    assert_eq!(
        parse(&s),
        Error::SectionOrder {
            section: 6,
            found: SectionKind::MaskData,
            expected: "TENSOR_DATA"
        }
    );
}

#[test]
fn packed_index_errors() {
    let b = small_packed();
    let idx = section(&b, 6).0; // row_ptr [0, 1, 3, 4], cols [0, 0, 1, 1]
    let words: Vec<u32> = (0..8).map(|k| u32_at(&b, idx + 4 * k)).collect();
    assert_eq!(words, [0, 1, 3, 4, 0, 0, 1, 1]);
    let hit = |k: usize, v: u32| {
        let mut s = small_packed();
        put(&mut s, idx + 4 * k, &le(v));
        fix(&mut s);
        parse(&s)
    };
    assert!(matches!(
        hit(6, 2),
        Error::BadBlockIndex {
            tensor: 1,
            block_row: 1,
            reason: "block column out of range"
        }
    ));
    assert!(matches!(
        hit(6, 0),
        Error::BadBlockIndex {
            block_row: 1,
            reason: "block columns not strictly ascending",
            ..
        }
    ));
    assert!(matches!(
        hit(0, 1),
        Error::BadBlockIndex {
            block_row: 0,
            reason: "row_ptr[0] must be 0",
            ..
        }
    ));
    assert!(matches!(
        hit(2, 0),
        Error::BadBlockIndex {
            block_row: 1,
            reason: "row_ptr decreases",
            ..
        }
    ));
    assert!(matches!(
        hit(2, 5),
        Error::BadBlockIndex {
            block_row: 1,
            reason: "row_ptr exceeds the kept-block count",
            ..
        }
    ));
    assert!(matches!(
        hit(3, 2),
        Error::SectionLength {
            section: 6,
            kind: SectionKind::BlockIndex,
            ..
        }
    ));
    // Packed data section of the wrong length.
    let mut s = small_packed();
    let t1 = tensor(&s, 1);
    put(&mut s, t1 + 8, &[2]); // f16 now: the same blocks need half the bytes
    fix(&mut s);
    assert!(matches!(
        parse(&s),
        Error::SectionLength {
            section: 5,
            kind: SectionKind::TensorData,
            ..
        }
    ));
}

#[test]
fn mask_errors() {
    let b = small();
    let masks = section(&b, 3).0;
    assert!(matches!(
        patched(masks, &le(caps::MASK_SETS + 1)),
        Error::CountTooLarge { what: "mask set", .. }
    ));
    assert!(matches!(
        patched(masks + 4, &le(caps::MASKED_TENSORS + 1)),
        Error::CountTooLarge {
            what: "masked tensor",
            ..
        }
    ));
    assert!(matches!(
        patched(masks, &le(3)),
        Error::SectionLength {
            section: 3,
            kind: SectionKind::Masks,
            ..
        }
    ));
    // No sets at all: the section must be absent instead.
    assert_eq!(patched(masks, &le(0)), Error::EmptyMasks { section: 3 });
    let entry = |e: usize| masks + 16 + 16 * e;
    assert_eq!(
        patched(entry(0) + 4, &[9]),
        Error::UnknownMaskKind { entry: 0, code: 9 }
    );
    assert!(matches!(
        patched(entry(0), &le(9)),
        Error::BadMaskedTensor {
            entry: 0,
            reason: "tensor index out of range"
        }
    ));
    assert!(
        matches!(patched(entry(1), &le(0)), Error::BadMaskedTensor { entry: 1, .. }),
        "unsorted entries"
    );
    assert!(matches!(
        patched(entry(0), &le(1)),
        Error::BadMaskedTensor {
            entry: 0,
            reason: "only linear and conv2d weights can carry masks"
        }
    ));
    assert!(
        matches!(
            patched(entry(0) + 6, &2u16.to_le_bytes()),
            Error::BadMaskedTensor { entry: 0, .. }
        ),
        "element mask with a block shape"
    );
    assert!(
        matches!(
            patched(entry(1) + 6, &0u16.to_le_bytes()),
            Error::BadMaskedTensor { entry: 1, .. }
        ),
        "block side 0"
    );
    let set = |s: usize| masks + 16 + 16 * 2 + 16 * s;
    assert!(matches!(patched(set(1) + 4, &le(0)), Error::BadName { .. }));
    let rec = |s: usize, e: usize| masks + 16 + 16 * 2 + 16 * 2 + 16 * (2 * s + e);
    assert_eq!(
        patched(rec(0, 0), &1000u64.to_le_bytes()),
        Error::MaskOnesTooLarge {
            set: 0,
            entry: 0,
            ones: 1000
        }
    );
    assert!(matches!(
        patched(rec(1, 1) + 8, &le(9)),
        Error::PayloadReference {
            found: 9,
            expected: 12,
            ..
        }
    ));

    // Verification: popcount, padding bits, duplicate names.
    let mut s = small();
    let ones = u64_at(&s, rec(0, 0));
    put(&mut s, rec(0, 0), &(ones - 1).to_le_bytes());
    fix(&mut s);
    assert_eq!(
        verify(&s),
        Error::MaskOnesMismatch {
            set: 0,
            entry: 0,
            stored: ones - 1,
            counted: ones
        }
    );

    let mut s = small();
    let m = section(&s, 9).0;
    s[m + 7] |= 0x80; // bit 63 of row 0: fc1 rows are 6 bits wide
    let ones = u64_at(&s, rec(0, 0));
    put(&mut s, rec(0, 0), &(ones + 1).to_le_bytes());
    fix(&mut s);
    assert_eq!(
        verify(&s),
        Error::MaskPaddingBits {
            set: 0,
            entry: 0,
            row: 0
        }
    );

    let mut s = small();
    let name_a = u64_at(&s, set(0));
    put(&mut s, set(1), &name_a.to_le_bytes());
    fix(&mut s);
    assert_eq!(verify(&s), Error::DuplicateMaskSetName { set: 1 });

    // A packed index that disagrees with its mask (counts kept consistent).
    let mut s = small_packed();
    let m = section(&s, 9).0; // fc2 block mask, rows [1 0], [1 1], [0 1]
    s[m] = 0b11;
    s[m + 8] = 0b01;
    fix(&mut s);
    assert_eq!(
        verify(&s),
        Error::PackedMaskMismatch {
            tensor: 1,
            block_row: 0
        }
    );

    // Nonzero padding in a ragged tile: fc2 is 3×4 in 2×2 tiles, so tile row 1 has a pad row.
    let mut s = small();
    let w = section(&s, 7).0;
    let pad = w + 4 * (2 * 4 + 2); // block 2 (row 1, col 0), element (1, 0): matrix row 3
    put(&mut s, pad, &1.0f32.to_le_bytes());
    fix(&mut s);
    assert_eq!(verify(&s), Error::TilePaddingNotZero { tensor: 2, block: 2 });
}

#[test]
fn metadata_and_history_errors() {
    let b = small();
    let meta = section(&b, 4).0;
    assert!(matches!(
        patched(meta, &le(caps::METADATA + 1)),
        Error::CountTooLarge {
            what: "metadata entry",
            ..
        }
    ));
    assert!(matches!(patched(meta, &le(1)), Error::SectionLength { section: 4, .. }));
    let mut s = small();
    let (k0, k1) = (u64_at(&s, meta + 16), u64_at(&s, meta + 32));
    put(&mut s, meta + 16, &k1.to_le_bytes());
    put(&mut s, meta + 32, &k0.to_le_bytes());
    fix(&mut s);
    assert_eq!(parse(&s), Error::MetadataOrder { entry: 1 });
    assert!(
        matches!(patched(meta + 16 + 12, &le(1 << 30)), Error::StringOutOfBounds { .. }),
        "value out of bounds"
    );
    let hist = section(&b, 5).0;
    assert!(matches!(
        patched(hist, &le(caps::HISTORY + 1)),
        Error::CountTooLarge {
            what: "history entry",
            ..
        }
    ));
    assert_eq!(
        patched(hist + 16 + 4, &[1]),
        Error::ReservedNotZero {
            offset: hist as u64 + 20
        }
    );
    assert!(matches!(patched(hist + 16 + 20, &le(0)), Error::BadName { .. }));
}

#[test]
fn truncation_at_every_byte_is_refused() {
    for b in [small(), small_packed()] {
        for len in 0..b.len() {
            match Model::parse(&b[..len]) {
                Ok(_) => panic!("truncated to {len} bytes parsed"),
                Err(e) => assert!(
                    matches!(e, Error::TooShort { .. } | Error::FileLength { .. }),
                    "len {len}: {e}"
                ),
            }
        }
    }
}

#[test]
fn truncation_with_a_patched_length_is_refused() {
    // Even when the attacker also fixes the stored length and checksum.
    let b = small();
    for len in (64..b.len()).step_by(7) {
        let mut t = b[..len].to_vec();
        put(&mut t, 32, &(len as u64).to_le_bytes());
        refresh_header_checksum(&mut t);
        assert!(Model::parse(&t).is_err(), "len {len}");
    }
}

#[test]
fn every_single_bit_flip_is_caught() {
    // Every bit of the small files: parse refuses, or verify refuses. Never a panic, never a
    // silently different model.
    for b in [small(), small_packed()] {
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut f = b.clone();
                f[byte] ^= 1 << bit;
                let caught = match Model::parse(&f) {
                    Err(_) => true,
                    Ok(m) => m.verify().is_err(),
                };
                assert!(caught, "flip of bit {bit} in byte {byte} went unnoticed");
            }
        }
    }
}

#[test]
fn random_multi_byte_corruption_never_panics() {
    let b = every_kind_bytes();
    let mut state = 0x1234_5678_9ABC_DEF0u64;
    let mut parsed = 0;
    for round in 0..3000 {
        let mut f = b.clone();
        let n = 1 + (smk_format::seeded::draw(state, 0) % 8) as usize;
        for k in 0..n {
            let d = smk_format::seeded::draw(state, k as u64 + 1);
            let at = (d % f.len() as u64) as usize;
            f[at] = (d >> 32) as u8;
        }
        state = state.wrapping_add(1);
        // Recompute the checksums half the time, so mutations reach the structural checks.
        if round % 2 == 0 {
            fix(&mut f);
        }
        if let Ok(m) = Model::parse(&f) {
            parsed += 1;
            let _ = m.verify();
            // Walk every view: accessors must not panic on whatever parse accepted.
            for l in m.layers() {
                let _ = l.output_shape.numel();
            }
            for t in m.tensors() {
                let (rows, cols) = t.matrix();
                let _ = t.value(rows - 1, cols - 1);
                let _ = t.value(rows, u64::MAX);
            }
            for set in 0..m.mask_set_count() {
                for t in m.masked_tensors() {
                    if let Some(mask) = m.mask(set, t) {
                        let _ = mask.bit(mask.grid.0 - 1, mask.grid.1 - 1) || mask.bit(u64::MAX, 0);
                    }
                }
            }
            let _ = m.metadata().count() + m.history().count();
        }
    }
    // Mutations of payload bytes parse (their checksums are checked by verify).
    assert!(parsed > 100, "only {parsed} mutants reached the accessors");
}

#[test]
fn every_reserved_byte_is_checked() {
    let b = small();
    let (graph, tensors, masks, meta, hist) = (
        section(&b, 1).0,
        section(&b, 2).0,
        section(&b, 3).0,
        section(&b, 4).0,
        section(&b, 5).0,
    );
    let (l0, t0, t1) = (layer(&b, 0), tensor(&b, 0), tensor(&b, 1));
    let entry = masks + 16;
    let set = masks + 16 + 32;
    let rec = masks + 16 + 32 + 32;
    let mut spots = vec![
        44,
        63,
        64 + 4,
        64 + 28,
        graph + 24,
        graph + 31,
        l0 + 21,
        l0 + 23,
        l0 + 88,
        l0 + 95,
    ];
    spots.extend([tensors + 4, tensors + 15, t0 + 11, t0 + 60, t1 + 42, t1 + 60]);
    spots.extend([
        masks + 8,
        masks + 15,
        entry + 5,
        entry + 10,
        entry + 15,
        set + 8,
        set + 15,
        rec + 12,
        rec + 15,
    ]);
    spots.extend([meta + 4, meta + 15, hist + 4, hist + 15, hist + 16 + 4]);
    for at in spots {
        assert_eq!(
            patched(at, &[0x5A]),
            Error::ReservedNotZero { offset: at as u64 },
            "byte {at}"
        );
    }
}

#[test]
fn shape_rules_are_checked_from_bytes() {
    // every_kind: layer 0 conv 3×3 pad 1 on [2, 9, 9]; 1 batch norm; 3 max pool 2;
    // 6 linear; 7 layer norm; 10 add.
    let base = every_kind(false).to_bytes().unwrap();
    let hit = |l: usize, off: usize, v: u32| {
        let mut s = base.clone();
        let at = layer(&s, l) + off;
        put(&mut s, at, &le(v));
        fix(&mut s);
        parse(&s)
    };
    let attr = |i: usize| 56 + 4 * i;
    assert!(
        matches!(hit(0, attr(0), 5), Error::LayerShape { layer: 0, .. }),
        "conv kernel vs weight"
    );
    assert!(matches!(
        hit(0, attr(2), 0),
        Error::LayerShape {
            layer: 0,
            reason: "stride 0"
        }
    ));
    assert!(matches!(
        hit(0, attr(6), 0),
        Error::LayerShape {
            layer: 0,
            reason: "dilation 0"
        }
    ));
    assert!(
        matches!(hit(0, attr(4), 0), Error::OutputShape { layer: 0, .. }),
        "padding changes the output"
    );
    assert!(matches!(
        hit(3, attr(0), 0),
        Error::LayerShape {
            layer: 3,
            reason: "kernel size 0"
        }
    ));
    assert!(
        matches!(hit(3, attr(4), 2), Error::LayerShape { layer: 3, .. }),
        "pool padding over half the kernel"
    );
    assert!(matches!(
        hit(3, attr(6), 2),
        Error::LayerShape {
            layer: 3,
            reason: "pooling with dilation"
        }
    ));
    assert!(
        matches!(hit(3, attr(0), 40), Error::LayerShape { layer: 3, .. }),
        "window larger than the input"
    );
    assert!(
        matches!(hit(1, attr(0), f32::NAN.to_bits()), Error::LayerShape { layer: 1, .. }),
        "NaN eps"
    );
    assert!(
        matches!(hit(7, attr(0), (-0.0f32).to_bits()), Error::LayerShape { layer: 7, .. }),
        "-0.0 eps"
    );
    assert!(matches!(
        hit(10, 16, 5),
        Error::LayerShape {
            layer: 10,
            reason: "add inputs must have the same shape"
        }
    ));
    assert!(
        matches!(hit(6, 12, 4), Error::LayerShape { layer: 6, .. }),
        "linear fed a rank-3 activation"
    );
}

#[test]
fn block_index_checksum_is_checked_at_open() {
    let mut b = small_packed();
    let idx = section(&b, 6).0;
    b[idx + 16] ^= 1;
    assert!(matches!(
        parse(&b),
        Error::SectionChecksum {
            section: 6,
            kind: SectionKind::BlockIndex,
            ..
        }
    ));
}

#[test]
fn a_payload_section_missing_from_the_table_is_named() {
    // small_packed with its last section (fc2's mask) cut off the table and the file.
    let b = small_packed();
    let count = u32_at(&b, 24) as usize;
    let first = section(&b, 0).0;
    let short_header = 64 + 32 * (count - 1);
    assert_eq!(short_header.div_ceil(64) * 64, first, "the sections keep their offsets");
    let (o, l) = section(&b, count - 2);
    let mut s = b[..o + l].to_vec();
    s[short_header..short_header + 32].fill(0);
    put(&mut s, 24, &le(count as u32 - 1));
    put(&mut s, 28, &le(short_header as u32));
    put(&mut s, 32, &((o + l) as u64).to_le_bytes());
    fix(&mut s);
    assert_eq!(
        parse(&s),
        Error::MissingSection {
            kind: SectionKind::MaskData
        }
    );
}

fn every_kind_bytes() -> Vec<u8> {
    every_kind(true).to_bytes().unwrap()
}

/// FORMAT.md §13.1 lists the section table of this very file; a second reader is written from
/// that table, so the writer must keep producing it.
#[test]
fn the_spec_worked_example_matches_the_writer() {
    let b = small();
    assert_eq!((u32_at(&b, 24), u32_at(&b, 28), u64_at(&b, 32)), (13, 480, 2192));
    let table: Vec<(u32, usize, usize)> = (0..13)
        .map(|i| (u32_at(&b, 64 + 32 * i), section(&b, i).0, section(&b, i).1))
        .collect();
    let spec = [
        (1, 512, 86),
        (2, 640, 416),
        (3, 1088, 272),
        (4, 1408, 144),
        (5, 1600, 48),
        (6, 1664, 48),
        (16, 1728, 96),
        (16, 1856, 64),
        (16, 1920, 12),
        (18, 1984, 32),
        (18, 2048, 16),
        (18, 2112, 32),
        (18, 2176, 16),
    ];
    assert_eq!(table, spec);
    // §13.3: fc2.weight (3×4) in 2×2 tiles: tile (0,0) holds rows 0–1, cols 0–1, first.
    let m = Model::parse(&b).unwrap();
    let fc2 = m.tensor(2).unwrap();
    let stored: Vec<f32> = (0..16).map(|i| fc2.stored(i)).collect();
    let value = |r, c| fc2.value(r, c);
    assert_eq!(&stored[..4], &[value(0, 0), value(0, 1), value(1, 0), value(1, 1)]);
    assert_eq!(
        &stored[8..12],
        &[value(2, 0), value(2, 1), 0.0, 0.0],
        "tile (1,0): row 3 is padding"
    );
}
