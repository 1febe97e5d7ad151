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
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
}

super::isa_kernels!(super::avx2::Avx2, "avx2,fma,f16c");
