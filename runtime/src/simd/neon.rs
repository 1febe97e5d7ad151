//! aarch64 Advanced SIMD: four lanes. binary16 is widened with integer operations (the
//! half-precision vector types are not stable Rust), bfloat16 by a shift.

use super::Lanes;
use core::arch::aarch64::*;

/// Four NEON lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon;

/// Lane masks from the low 4 bits of `bits`.
#[inline(always)]
unsafe fn lane_mask(bits: u64) -> uint32x4_t {
    const SEL: [u32; 4] = [1, 2, 4, 8];
    // SAFETY: NEON is present on every aarch64 target this crate builds for; SEL holds 4 u32.
    unsafe { vtstq_u32(vdupq_n_u32(bits as u32), vld1q_u32(SEL.as_ptr())) }
}

// SAFETY: NEON is part of the aarch64 baseline; loads read exactly 4 elements.
unsafe impl Lanes for Neon {
    const W: usize = 4;
    const RB: usize = 8;
    type V = float32x4_t;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        // SAFETY: NEON is present.
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: `p` is valid for 4 f32.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 4 u16; NEON is present.
        unsafe {
            let h = vmovl_u16(vld1_u16(p));
            let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
            let mag = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7fff)));
            // Exponent rebias by a multiply by 2^112: exact for normals and subnormals alike.
            let f = vmulq_f32(vreinterpretq_f32_u32(mag), vdupq_n_f32(f32::from_bits(0x7780_0000)));
            // Infinities and NaNs (exponent 31) keep their payload with an all-ones exponent.
            let special = vcgeq_u32(mag, vdupq_n_u32(0x0f80_0000));
            let inf_nan = vorrq_u32(mag, vdupq_n_u32(0x7f80_0000));
            let bits = vbslq_u32(special, inf_nan, vreinterpretq_u32_f32(f));
            vreinterpretq_f32_u32(vorrq_u32(bits, sign))
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 4 u16.
        unsafe { vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(vld1_u16(p)))) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        // SAFETY: NEON is present.
        unsafe { vdupq_n_f32(v) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: `p` is valid for 4 f32.
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        // SAFETY: NEON is present.
        unsafe { vfmaq_f32(acc, a, b) }
    }
    #[inline(always)]
    unsafe fn keep(v: Self::V, bits: u64) -> Self::V {
        // SAFETY: NEON is present.
        unsafe { vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), lane_mask(bits))) }
    }
    #[inline(always)]
    unsafe fn add_where(acc: Self::V, x: Self::V, bits: u64) -> Self::V {
        // SAFETY: NEON is present.
        unsafe { vaddq_f32(acc, Self::keep(x, bits)) }
    }
    #[inline(always)]
    unsafe fn add_signed(acc: Self::V, x: Self::V, neg: u64, keep: u64) -> Self::V {
        // SAFETY: NEON is present.
        unsafe {
            let flip = vandq_u32(lane_mask(neg), vdupq_n_u32(0x8000_0000));
            let v = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(x), flip));
            vaddq_f32(acc, Self::keep(v, keep))
        }
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        // SAFETY: NEON is present.
        unsafe { vaddvq_f32(v) }
    }
}

super::isa_kernels!(super::neon::Neon, "neon");
