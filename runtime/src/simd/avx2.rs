//! x86_64 AVX2 + FMA + F16C: eight lanes; mask bits become lane masks by a compare.

use super::Lanes;
use core::arch::x86_64::*;

/// Eight AVX2 lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2;

/// Lane masks from the low 8 bits of `bits`.
#[inline(always)]
unsafe fn lane_mask(bits: u64) -> __m256 {
    // SAFETY: AVX2 is present (the trait's contract).
    unsafe {
        let sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let b = _mm256_and_si256(_mm256_set1_epi32(bits as i32), sel);
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel))
    }
}

/// The sign bit set in the lanes whose bit in the low 8 bits of `bits` is set: each lane
/// shifts its own bit up to bit 31.
#[inline(always)]
unsafe fn sign_bits(bits: u64) -> __m256 {
    // SAFETY: AVX2 is present (the trait's contract).
    unsafe {
        let up = _mm256_sllv_epi32(
            _mm256_set1_epi32(bits as i32),
            _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24),
        );
        _mm256_castsi256_ps(_mm256_and_si256(up, _mm256_set1_epi32(i32::MIN)))
    }
}

/// `a · c` modulo 2^64 in each of four lanes, from 32-bit products (AVX2 has no 64-bit
/// multiply): `lo(a)·lo(c) + ((hi(a)·lo(c) + lo(a)·hi(c)) << 32)`.
#[inline(always)]
unsafe fn mul64(a: __m256i, c: u64) -> __m256i {
    // SAFETY: AVX2 is present (the trait's contract).
    unsafe {
        let (lo, hi) = (
            _mm256_set1_epi64x((c & 0xFFFF_FFFF) as i64),
            _mm256_set1_epi64x((c >> 32) as i64),
        );
        let cross = _mm256_add_epi64(
            _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), lo),
            _mm256_mul_epu32(a, hi),
        );
        _mm256_add_epi64(_mm256_mul_epu32(a, lo), _mm256_slli_epi64::<32>(cross))
    }
}

/// SplitMix64's output function ([`smk_format::seeded::mix64`]) on four lanes.
#[inline(always)]
unsafe fn mix64(z: __m256i) -> __m256i {
    // SAFETY: AVX2 is present (the trait's contract).
    unsafe {
        let z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64::<30>(z)), 0xBF58_476D_1CE4_E5B9);
        let z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64::<27>(z)), 0x94D0_49BB_1331_11EB);
        _mm256_xor_si256(z, _mm256_srli_epi64::<31>(z))
    }
}

// SAFETY: every method uses AVX2, FMA or F16C only, which the plan's `Isa::Avx2` (or better)
// guarantees; loads are unaligned and read exactly 8 elements.
unsafe impl Lanes for Avx2 {
    const W: usize = 8;
    const RB: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        // SAFETY: AVX is present.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: `p` is valid for 8 f32.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 8 u16; F16C is present.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 8 u16; AVX2 is present.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                p.cast(),
            ))))
        }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        // SAFETY: AVX is present.
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: `p` is valid for 8 f32.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        // SAFETY: FMA is present.
        unsafe { _mm256_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn keep(v: Self::V, bits: u64) -> Self::V {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_and_ps(v, lane_mask(bits)) }
    }
    #[inline(always)]
    unsafe fn add_where(acc: Self::V, x: Self::V, bits: u64) -> Self::V {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_add_ps(acc, _mm256_and_ps(x, lane_mask(bits))) }
    }
    #[inline(always)]
    unsafe fn add_signed(acc: Self::V, x: Self::V, neg: u64, keep: u64) -> Self::V {
        // SAFETY: AVX2 is present.
        unsafe { _mm256_add_ps(acc, _mm256_and_ps(_mm256_xor_ps(x, sign_bits(neg)), lane_mask(keep))) }
    }
    #[inline(always)]
    unsafe fn fill_draws(key: u64, first: u64, stride: u64, out: *mut u64, n: usize) {
        let (z0, step) = super::draw_progression(key, first, stride);
        let at = |i: u64| z0.wrapping_add(step.wrapping_mul(i)) as i64;
        // SAFETY: AVX2 is present; whole vectors are stored only where `n` allows, the rest
        // goes through a local buffer.
        unsafe {
            let mut z = _mm256_setr_epi64x(at(0), at(1), at(2), at(3));
            let inc = _mm256_set1_epi64x(step.wrapping_mul(4) as i64);
            let mut i = 0;
            while i + 4 <= n {
                _mm256_storeu_si256(out.add(i).cast(), mix64(z));
                z = _mm256_add_epi64(z, inc);
                i += 4;
            }
            if i < n {
                let mut tail = [0u64; 4];
                _mm256_storeu_si256(tail.as_mut_ptr().cast(), mix64(z));
                for (j, t) in tail.iter().enumerate().take(n - i) {
                    *out.add(i + j) = *t;
                }
            }
        }
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        // SAFETY: AVX is present.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        // SAFETY: prefetching never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast()) }
    }
}

super::isa_kernels!(super::avx2::Avx2, "avx2,fma,f16c");
