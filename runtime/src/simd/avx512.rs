//! x86_64 AVX-512F: sixteen lanes; a 16-bit piece of a mask word is a lane mask as it is.

use super::Lanes;
use core::arch::x86_64::*;

/// Sixteen AVX-512 lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512;

/// SplitMix64's output function ([`smk_format::seeded::mix64`]) on eight lanes.
#[inline(always)]
unsafe fn mix64(z: __m512i) -> __m512i {
    // SAFETY: AVX-512F and DQ are present (the trait's contract).
    unsafe {
        let z = _mm512_xor_si512(z, _mm512_srli_epi64::<30>(z));
        let z = _mm512_mullo_epi64(z, _mm512_set1_epi64(0xBF58_476D_1CE4_E5B9u64 as i64));
        let z = _mm512_xor_si512(z, _mm512_srli_epi64::<27>(z));
        let z = _mm512_mullo_epi64(z, _mm512_set1_epi64(0x94D0_49BB_1331_11EBu64 as i64));
        _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z))
    }
}

// SAFETY: every method uses AVX-512F and DQ (with AVX2, FMA, F16C) only, which the plan's
// `Isa::Avx512` guarantees; loads are unaligned and read exactly 16 elements.
unsafe impl Lanes for Avx512 {
    const W: usize = 16;
    const RB: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: `p` is valid for 16 f32.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 16 u16; AVX-512F converts binary16.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 16 u16.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                p.cast(),
            ))))
        }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: `p` is valid for 16 f32.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn keep(v: Self::V, bits: u64) -> Self::V {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_maskz_mov_ps(bits as __mmask16, v) }
    }
    #[inline(always)]
    unsafe fn add_where(acc: Self::V, x: Self::V, bits: u64) -> Self::V {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_mask_add_ps(acc, bits as __mmask16, acc, x) }
    }
    #[inline(always)]
    unsafe fn add_signed(acc: Self::V, x: Self::V, neg: u64, keep: u64) -> Self::V {
        // SAFETY: AVX-512F is present. The sign flip is an integer xor, which runs beside the
        // adds rather than on their units.
        unsafe {
            let xi = _mm512_castps_si512(x);
            let v = _mm512_mask_xor_epi32(xi, neg as __mmask16, xi, _mm512_set1_epi32(i32::MIN));
            _mm512_mask_add_ps(acc, keep as __mmask16, acc, _mm512_castsi512_ps(v))
        }
    }
    #[inline(always)]
    unsafe fn add_signed_64(acc: &mut [Self::V; 8], x: *const f32, neg: u64, keep: u64) {
        // SAFETY: AVX-512F is present; `x` is valid for 64 reads.
        unsafe {
            // Moving a mask into a mask register is the scarce operation here, so only `keep`
            // takes that way. The signs are shifted into each lane's sign bit by vector shifts
            // of the broadcast word (lane j of vector k moves bit 16k + j up to bit 31), and one
            // ternary logic op flips `x` by them: x ^ (t & sign).
            let low = _mm512_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16);
            let high = _mm512_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
            let sign = _mm512_set1_epi32(i32::MIN);
            for half in 0..2 {
                let word = _mm512_set1_epi32((neg >> (32 * half)) as i32);
                for (k, shifts) in [(2 * half, low), (2 * half + 1, high)] {
                    let flip = _mm512_sllv_epi32(word, shifts);
                    let xv = _mm512_castps_si512(_mm512_loadu_ps(x.add(16 * k)));
                    let v = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0x78>(xv, flip, sign));
                    acc[k] = _mm512_mask_add_ps(acc[k], (keep >> (16 * k)) as __mmask16, acc[k], v);
                }
            }
        }
    }
    #[inline(always)]
    unsafe fn fill_draws(key: u64, first: u64, stride: u64, out: *mut u64, n: usize) {
        let (z0, step) = super::draw_progression(key, first, stride);
        let at = |i: u64| z0.wrapping_add(step.wrapping_mul(i)) as i64;
        // SAFETY: AVX-512F and DQ are present; the last store writes only the lanes below `n`.
        unsafe {
            let mut z = _mm512_setr_epi64(at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7));
            let inc = _mm512_set1_epi64(step.wrapping_mul(8) as i64);
            let mut i = 0;
            while i + 8 <= n {
                _mm512_storeu_si512(out.add(i).cast(), mix64(z));
                z = _mm512_add_epi64(z, inc);
                i += 8;
            }
            if i < n {
                _mm512_mask_storeu_epi64(out.add(i).cast(), ((1u32 << (n - i)) - 1) as __mmask8, mix64(z));
            }
        }
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        // SAFETY: prefetching never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast()) }
    }
}

super::isa_kernels!(super::avx512::Avx512, "avx512f,avx512dq,avx2,fma,f16c");

/// Groups of four input columns per subset-sum table; a table holds the 16 sums.
const GROUP: usize = 4;

/// The subset-sum tables of [`signed_rows_lut`] for one input: for every group of four columns
/// `4g ..`, `tables[16g + i] = Σ_{j < 4, bit j of i} x[4g + j]`, for `words · 16` groups
/// (columns past `cols` count as 0).
///
/// # Safety
/// AVX-512F is present; `x` is valid for `cols` reads and `tables` for `words · 256` writes,
/// with `words · 64 ≥ cols`.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
pub(crate) unsafe fn subset_sums(x: *const f32, cols: usize, words: usize, tables: *mut f32) {
    // SAFETY: the caller's contract; reads stop at `cols`, writes at `words · 256`.
    unsafe {
        let bit = |j: i32| {
            let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            _mm512_cvtepi32_ps(_mm512_and_si512(
                _mm512_srlv_epi32(lanes, _mm512_set1_epi32(j)),
                _mm512_set1_epi32(1),
            ))
        };
        let (b0, b1, b2, b3) = (bit(0), bit(1), bit(2), bit(3));
        for g in 0..words * 64 / GROUP {
            let at = |j: usize| {
                if g * GROUP + j < cols {
                    *x.add(g * GROUP + j)
                } else {
                    0.0
                }
            };
            // Multiplying by exactly 0 or 1 adds each subset's columns in column order.
            let t = _mm512_mul_ps(_mm512_set1_ps(at(0)), b0);
            let t = _mm512_fmadd_ps(_mm512_set1_ps(at(1)), b1, t);
            let t = _mm512_fmadd_ps(_mm512_set1_ps(at(2)), b2, t);
            let t = _mm512_fmadd_ps(_mm512_set1_ps(at(3)), b3, t);
            _mm512_storeu_ps(tables.add(16 * g), t);
        }
    }
}

/// Where the sign bits of [`signed_rows_lut`] come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SignBits {
    /// Generated from a seeded signed-constant tensor's key.
    Seeded(u64),
    /// Stored (learned binary weights): `rows` rows of `words` words, cut into 32-bit halves
    /// in `halves` (valid for `32 · words` writes) sixteen rows at a time, as the mask is.
    Stored {
        /// The sign words.
        words: *const u64,
        /// Room for one block of sixteen rows' halves.
        halves: *mut u32,
    },
}

/// Signed-constant rows (seeded or stored signs) by table lookup, sixteen rows at once, one row
/// per lane: with `s` a row's sign bits and `m` its mask, `y = scale · (2 · Σ_{m∧s} x − Σ_m x)`,
/// where each group of four columns contributes `tables[16g + nibble]`, looked up for sixteen
/// rows by one permute. One permute and one add then cover 64 weights, where masked adds cover
/// 16. Without a mask, `Σ_m x` is `total`.
///
/// # Safety
/// AVX-512F and DQ are present; `tables` holds [`subset_sums`] for `words` words; `mask` is null
/// (no mask) or holds `rows` rows of `words` words at `mask_stride`, and then `mask_t` is valid
/// for `32 · words` writes; stored `signs` are as [`SignBits::Stored`] says; `y[o · y_row]` is
/// writable for `o < rows`.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn signed_rows_lut(
    signs: SignBits,
    rows: usize,
    words: usize,
    mask: *const u64,
    mask_stride: usize,
    mask_t: *mut u32,
    tables: *const f32,
    total: f32,
    scale: f32,
    y: *mut f32,
    y_row: usize,
) {
    let (key, stored, halves) = match signs {
        SignBits::Seeded(key) => (key, core::ptr::null(), core::ptr::null_mut()),
        SignBits::Stored { words, halves } => (0, words, halves),
    };
    macro_rules! rows {
        ($masked:literal, $stored:literal) => {
            lut_rows::<$masked, $stored>(
                key,
                stored,
                halves,
                rows,
                words,
                mask,
                mask_stride,
                mask_t,
                tables,
                total,
                scale,
                y,
                y_row,
            )
        };
    }
    // SAFETY: forwarded contract.
    unsafe {
        match (mask.is_null(), stored.is_null()) {
            (true, true) => rows!(false, false),
            (false, true) => rows!(true, false),
            (true, false) => rows!(false, true),
            (false, false) => rows!(true, true),
        }
    }
}

/// The mask words of rows `r0 .. r0 + rn` (at most 16) cut into 32-bit halves, word-major:
/// `mask_t[32·wi + 16·half + i]` is half `half` of row `r0 + i`'s word `wi` (0 for `i ≥ rn`), so
/// that a half of one word for all 16 rows is one load. Eight words of the 16 rows are a 16 × 16
/// matrix of halves, transposed in registers.
///
/// # Safety
/// AVX-512F is present; rows `r0 .. r0 + rn` of `words` words at `mask_stride` are readable at
/// `mask`; `mask_t` is valid for `32 · words` writes.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
unsafe fn transpose_mask(mask: *const u64, mask_stride: usize, r0: usize, rn: usize, words: usize, mask_t: *mut u32) {
    // SAFETY: the caller's contract; the masked loads read only the words below `words`.
    unsafe {
        let mut wi0 = 0;
        while wi0 < words {
            let n = 8.min(words - wi0);
            let live = (0xFFu32 >> (8 - n)) as __mmask8;
            let mut a = [_mm512_setzero_si512(); 16];
            for (i, row) in a.iter_mut().enumerate().take(rn) {
                *row = _mm512_maskz_loadu_epi64(live, mask.add((r0 + i) * mask_stride + wi0).cast());
            }
            // Four rounds of interleaving: 32-bit, 64-bit, then 128-bit lanes twice; output j
            // is column j (half j % 2 of word j / 2) with rows in order.
            let mut t = [_mm512_setzero_si512(); 16];
            for k in 0..8 {
                t[2 * k] = _mm512_unpacklo_epi32(a[2 * k], a[2 * k + 1]);
                t[2 * k + 1] = _mm512_unpackhi_epi32(a[2 * k], a[2 * k + 1]);
            }
            for k in 0..4 {
                let b = 4 * k;
                a[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
                a[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
                a[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
                a[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
            }
            for h in 0..2 {
                let b = 8 * h;
                for k in 0..4 {
                    t[b + k] = _mm512_shuffle_i32x4::<0x88>(a[b + k], a[b + 4 + k]);
                    t[b + 4 + k] = _mm512_shuffle_i32x4::<0xDD>(a[b + k], a[b + 4 + k]);
                }
            }
            for k in 0..8 {
                a[k] = _mm512_shuffle_i32x4::<0x88>(t[k], t[8 + k]);
                a[8 + k] = _mm512_shuffle_i32x4::<0xDD>(t[k], t[8 + k]);
            }
            for (j, col) in a.iter().enumerate().take(2 * n) {
                _mm512_storeu_si512(mask_t.add(32 * wi0 + 16 * j).cast(), *col);
            }
            wi0 += 8;
        }
    }
}

/// [`signed_rows_lut`] with the mask's presence known at compile time.
///
/// # Safety
/// As for [`signed_rows_lut`].
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn lut_rows<const MASKED: bool, const STORED: bool>(
    key: u64,
    signs: *const u64,
    signs_t: *mut u32,
    rows: usize,
    words: usize,
    mask: *const u64,
    mask_stride: usize,
    mask_t: *mut u32,
    tables: *const f32,
    total: f32,
    scale: f32,
    y: *mut f32,
    y_row: usize,
) {
    // SAFETY: AVX-512F and DQ are present (the caller's contract); every pointer access is
    // inside the bounds the contract gives.
    unsafe {
        // Dword indices of the low and high halves of sixteen u64 held in two vectors.
        let low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let high_halves = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (_, step) = super::draw_progression(key, 0, words as u64);
        let offsets = _mm512_mullo_epi64(
            _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
            _mm512_set1_epi64(step as i64),
        );
        let eight = _mm512_set1_epi64(step.wrapping_mul(8) as i64);
        let mut r0 = 0;
        while r0 < rows {
            let rn = 16.min(rows - r0);
            if MASKED {
                transpose_mask(mask, mask_stride, r0, rn, words, mask_t);
            }
            if STORED {
                transpose_mask(signs, words, r0, rn, words, signs_t);
            }
            let z = _mm512_setzero_ps();
            let (mut pos, mut all) = ([z; 4], [z; 4]);
            // The next 16 rows' mask words, 16·words·8 bytes from row r0 + 16 on when rows
            // are contiguous: two 64-byte lines per word here, fetched ahead so that the copy
            // above finds them in cache (16 interleaved streams defeat the hardware prefetcher).
            let ahead = mask.wrapping_add((r0 + 16) * mask_stride).cast::<u8>();
            for wi in 0..words {
                if MASKED {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128 * wi).cast());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128 * wi + 64).cast());
                }
                // Signs of rows r0 .. r0 + 16 at word wi: stored (cut into halves above), or
                // draws r·words + wi, a progression.
                let (s_lo, s_hi) = if STORED {
                    (_mm512_setzero_si512(), _mm512_setzero_si512())
                } else {
                    let (z0, _) = super::draw_progression(key, (r0 * words + wi) as u64, 0);
                    let lanes = _mm512_add_epi64(_mm512_set1_epi64(z0 as i64), offsets);
                    (mix64(lanes), mix64(_mm512_add_epi64(lanes, eight)))
                };
                for half in 0..2 {
                    let s = if STORED {
                        _mm512_loadu_si512(signs_t.add(32 * wi + 16 * half).cast())
                    } else {
                        _mm512_permutex2var_epi32(s_lo, if half == 0 { low_halves } else { high_halves }, s_hi)
                    };
                    let m = if MASKED {
                        _mm512_loadu_si512(mask_t.add(32 * wi + 16 * half).cast())
                    } else {
                        _mm512_set1_epi32(-1)
                    };
                    let p = _mm512_and_si512(s, m);
                    let t = tables.add((wi * 64 + half * 32) / GROUP * 16);
                    // Eight groups of four columns; the permute reads only an index's low
                    // four bits, so shifting the piece selects the group.
                    macro_rules! group {
                        ($g:literal) => {{
                            let tbl = _mm512_loadu_ps(t.add(16 * $g));
                            let ip = _mm512_srli_epi32::<{ 4 * $g }>(p);
                            pos[$g % 4] = _mm512_add_ps(pos[$g % 4], _mm512_permutexvar_ps(ip, tbl));
                            if MASKED {
                                let im = _mm512_srli_epi32::<{ 4 * $g }>(m);
                                all[$g % 4] = _mm512_add_ps(all[$g % 4], _mm512_permutexvar_ps(im, tbl));
                            }
                        }};
                    }
                    group!(0);
                    group!(1);
                    group!(2);
                    group!(3);
                    group!(4);
                    group!(5);
                    group!(6);
                    group!(7);
                }
            }
            let p = _mm512_add_ps(_mm512_add_ps(pos[0], pos[1]), _mm512_add_ps(pos[2], pos[3]));
            let a = if MASKED {
                _mm512_add_ps(_mm512_add_ps(all[0], all[1]), _mm512_add_ps(all[2], all[3]))
            } else {
                _mm512_set1_ps(total)
            };
            let out = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_sub_ps(_mm512_add_ps(p, p), a));
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), out);
            for (i, v) in lanes.iter().enumerate().take(rn) {
                *y.add((r0 + i) * y_row) = *v;
            }
            r0 += 16;
        }
    }
}
