//! x86_64 AVX-512F: sixteen lanes; a 16-bit piece of a mask word is a lane mask as it is.

use super::Lanes;
use core::arch::x86_64::*;

/// Sixteen AVX-512 lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512;

// SAFETY: every method uses AVX-512F (with AVX2, FMA, F16C) only, which the plan's
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
    unsafe fn sum(v: Self::V) -> f32 {
        // SAFETY: AVX-512F is present.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        // SAFETY: prefetching never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
}

super::isa_kernels!(super::avx512::Avx512, "avx512f,avx2,fma,f16c");
