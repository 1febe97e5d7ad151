//! Portable lanes: eight f32 in an array, which the compiler vectorises with the baseline
//! instruction set. Always available; the fallback and the first thing tested against the
//! reference.

use super::Lanes;

/// Eight portable f32 lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

// SAFETY: uses no instruction beyond the target's baseline.
unsafe impl Lanes for Scalar {
    const W: usize = 8;
    const RB: usize = 4;
    type V = [f32; 8];

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: `p` is valid for 8 f32 (the trait's contract).
        unsafe { core::ptr::read_unaligned(p.cast::<[f32; 8]>()) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 8 u16.
        let h = unsafe { core::ptr::read_unaligned(p.cast::<[u16; 8]>()) };
        h.map(|b| half::f16::from_bits(b).to_f32())
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self::V {
        // SAFETY: `p` is valid for 8 u16.
        let h = unsafe { core::ptr::read_unaligned(p.cast::<[u16; 8]>()) };
        h.map(|b| f32::from_bits((b as u32) << 16))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        [v; 8]
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: `p` is valid for 8 f32 (the trait's contract).
        unsafe { core::ptr::write_unaligned(p.cast::<[f32; 8]>(), v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        core::array::from_fn(|i| a[i] * b[i] + acc[i])
    }
    #[inline(always)]
    unsafe fn keep(v: Self::V, bits: u64) -> Self::V {
        core::array::from_fn(|i| if bits >> i & 1 == 1 { v[i] } else { 0.0 })
    }
    #[inline(always)]
    unsafe fn add_where(acc: Self::V, x: Self::V, bits: u64) -> Self::V {
        core::array::from_fn(|i| if bits >> i & 1 == 1 { acc[i] + x[i] } else { acc[i] })
    }
    #[inline(always)]
    unsafe fn add_signed(acc: Self::V, x: Self::V, neg: u64, keep: u64) -> Self::V {
        core::array::from_fn(|i| match (keep >> i & 1, neg >> i & 1) {
            (0, _) => acc[i],
            (_, 0) => acc[i] + x[i],
            _ => acc[i] - x[i],
        })
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
}

super::isa_kernels!(super::scalar::Scalar);
