//! The seeded generator's test vectors, exactly as printed in FORMAT.md. A second implementation
//! of the format must reproduce these bits; this implementation must never drift from them.

use smk_format::seeded::{draw, SeededInit};
use smk_format::InitRule;

#[test]
fn signed_constant_vector() {
    let s = SeededInit {
        rule: InitRule::SignedConstant,
        seed: 42,
        stream: 3,
        scale: 0.0625,
    };
    assert_eq!(s.key(), 0x480d_2dd1_c3fd_9e64);
    assert_eq!(draw(s.key(), 0), 0xc747_dc16_d6f0_a301);
    assert_eq!(draw(s.key(), 1), 0xc3d1_b0dd_21ac_3b62);
    assert_eq!(draw(s.key(), 2), 0xfa49_dd80_7469_a4a0);
    // A 2 × 70 matrix: rows take two draws each (words 0,1 and 2,3).
    let mut out = vec![0f32; 2 * 70];
    s.fill(70, &mut out);
    let p = 0.0625f32;
    assert_eq!(&out[..8], &[p, -p, -p, -p, -p, -p, -p, -p]);
    assert_eq!(&out[134..140], &[p, p, -p, p, -p, p]);
}

#[test]
fn uniform_vector() {
    let s = SeededInit {
        rule: InitRule::Uniform,
        seed: 42,
        stream: 3,
        scale: 0.5,
    };
    assert_eq!(s.key(), 0x3484_1598_c0d6_9f8b);
    let mut out = vec![0f32; 4];
    s.fill(4, &mut out);
    assert_eq!(
        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        [0xbe9b808b, 0xbdfef0fc, 0x3e6739f2, 0xbda774f4]
    );
}

#[test]
fn normal_vector() {
    let s = SeededInit {
        rule: InitRule::Normal,
        seed: 42,
        stream: 3,
        scale: 1.0,
    };
    assert_eq!(s.key(), 0x75ff_cf3b_692e_3270);
    let mut out = vec![0f32; 4];
    s.fill(4, &mut out);
    assert_eq!(
        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        [0x3f8d855e, 0xbe91991a, 0x3f9d048c, 0x3e696763]
    );
}
