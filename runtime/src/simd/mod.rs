//! Vector primitives per instruction set ([`Lanes`]), and the kernels written once over them
//! ([`kernels`]). Each instruction set's module instantiates the kernels inside functions compiled
//! for its features (`isa_kernels!`); [`crate::linear`] chooses among them with the plan's [`Isa`].
//!
//! [`Isa`]: crate::Isa

pub(crate) mod kernels;
pub(crate) mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

/// One instruction set's vector of f32 lanes.
///
/// # Safety
/// Implementations may use instructions the CPU lacks: callers guarantee the features (through
/// the plan's [`crate::Isa`]) and that every pointer is valid for `W` elements.
pub(crate) unsafe trait Lanes: Copy {
    /// Lanes per vector; divides 64, at most 16.
    const W: usize;
    /// Rows of a block held in registers at once by the block kernel (at most 16).
    const RB: usize;
    /// The vector.
    type V: Copy;
    /// All lanes 0.
    unsafe fn zero() -> Self::V;
    /// `W` f32 from `p`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `W` binary16 values from `p`, widened.
    unsafe fn load_f16(p: *const u16) -> Self::V;
    /// `W` bfloat16 values from `p`, widened.
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    /// Every lane `v`.
    unsafe fn splat(v: f32) -> Self::V;
    /// Writes the `W` lanes to `p`.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a·b + acc`.
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// Lanes whose bit in `bits` (low `W` bits) is clear become 0.
    unsafe fn keep(v: Self::V, bits: u64) -> Self::V;
    /// `acc + x` on the lanes whose bit in `bits` is set; `acc` elsewhere.
    unsafe fn add_where(acc: Self::V, x: Self::V, bits: u64) -> Self::V;
    /// `acc + x` on the lanes whose bit in `keep` is set, with `x`'s sign flipped on those
    /// whose bit in `neg` is set too: one add per vector for `±x` sums.
    unsafe fn add_signed(acc: Self::V, x: Self::V, neg: u64, keep: u64) -> Self::V;
    /// [`Lanes::add_signed`] over 64 columns from `x` into eight accumulators, with the bits of
    /// `neg` and `keep` in column order. Which column goes to which accumulator is the
    /// implementation's choice: only the sum of all eight means anything.
    ///
    /// # Safety
    /// `x` is valid for 64 reads.
    #[inline(always)]
    unsafe fn add_signed_64(acc: &mut [Self::V; 8], x: *const f32, neg: u64, keep: u64) {
        let mut at = 0;
        while at < 64 {
            let lane_bits = |v: u64| (v >> at) & (u64::MAX >> (64 - Self::W));
            let a = &mut acc[(at / Self::W) % 8];
            // SAFETY: `at + W <= 64` (W divides 64).
            *a = unsafe { Self::add_signed(*a, Self::load(x.add(at)), lane_bits(neg), lane_bits(keep)) };
            at += Self::W;
        }
    }
    /// The sum of the lanes.
    unsafe fn sum(v: Self::V) -> f32;
    /// `out[i] = draw(key, first + i·stride)` for `i < n`: the seeded generator
    /// ([`smk_format::seeded::draw`]), bit for bit, as many draws at a time as the instruction set
    /// allows. The counters form a progression, so the generator's inputs need additions only.
    ///
    /// # Safety
    /// `out` is valid for `n` writes.
    #[inline(always)]
    unsafe fn fill_draws(key: u64, first: u64, stride: u64, out: *mut u64, n: usize) {
        for i in 0..n {
            let counter = first.wrapping_add(stride.wrapping_mul(i as u64));
            // SAFETY: `i < n` (the caller's contract).
            unsafe { *out.add(i) = smk_format::seeded::draw(key, counter) };
        }
    }
    /// Hints that `p` will be read soon, into the second-level cache: the first level has too
    /// few outstanding misses to fetch many tiles ahead (into L1, the tile-major kernel ran at
    /// 7.7 GB/s here; into L2, 13).
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
}

/// The generator's inputs for the draws at counters `first + i·stride`: `(z0, step)` with
/// `draw(key, first + i·stride) = mix64(z0 + i·step)` (wrapping), so that vector lanes walk a
/// progression by additions alone. (The x86 kernels are its users.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn draw_progression(key: u64, first: u64, stride: u64) -> (u64, u64) {
    use smk_format::seeded::GOLDEN;
    (
        key.wrapping_add(GOLDEN.wrapping_mul(first.wrapping_add(1))),
        GOLDEN.wrapping_mul(stride),
    )
}

/// A stored weight element, widened to f32 in registers.
pub(crate) trait Elem: Copy + Default + 'static {
    /// `W` elements from `p` as f32 lanes.
    ///
    /// # Safety
    /// As for [`Lanes`]: the features are present and `p` is valid for `L::W` elements.
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V;
    /// One element as f32.
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V {
        // SAFETY: the caller's contract.
        unsafe { L::load(p) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// binary16 bits.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(transparent)]
pub(crate) struct F16(pub u16);

/// bfloat16 bits.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(transparent)]
pub(crate) struct Bf16(pub u16);

impl Elem for F16 {
    #[inline(always)]
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V {
        // SAFETY: the caller's contract; `F16` is a transparent `u16`.
        unsafe { L::load_f16(p.cast()) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self.0).to_f32()
    }
}

impl Elem for Bf16 {
    #[inline(always)]
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V {
        // SAFETY: the caller's contract; `Bf16` is a transparent `u16`.
        unsafe { L::load_bf16(p.cast()) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// Instantiates the kernels of [`kernels`] for one instruction set, inside functions compiled
/// with its target features, so that the generic code inlines into them.
macro_rules! isa_kernels {
    ($lanes:ty $(, $features:literal)?) => {
        use $crate::simd::kernels::{self, BlockGeometry, Blocks, Rows};
        use $crate::simd::Elem;

        /// See [`kernels::dense_rows`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::dense_rows`]'s contract.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn dense_rows<E: Elem>(w: *const E, mask: *const u64, rows: Rows, x: *const f32, y: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe { kernels::dense_rows::<$lanes, E>(w, mask, rows, x, y) }
        }

        /// See [`kernels::dense_outer`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::dense_outer`]'s contract.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn dense_outer<E: Elem>(w: *const E, mask: *const u64, g: Rows, xt: *const f32, y: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe { kernels::dense_outer::<$lanes, E>(w, mask, g, xt, y) }
        }

        /// See [`kernels::signed_panel`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::signed_panel`]'s contract.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn signed_panel(signs: *const u64, mask: *const u64, rows: usize, cols: usize, scale: f32, out: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe { kernels::signed_panel::<$lanes>(signs, mask, rows, cols, scale, out) }
        }

        /// See [`kernels::block_outer`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::block_outer`]'s contract.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn block_outer<E: Elem, B: Blocks>(data: *const E, blocks: B, g: BlockGeometry, xt: *const f32, y: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe { kernels::block_outer::<$lanes, E, B>(data, blocks, g, xt, y) }
        }

        /// See [`kernels::narrow_block_row`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::narrow_block_row`]'s contract.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn narrow_block_row<E: Elem, B: Blocks>(data: *const E, blocks: B, g: BlockGeometry, xrep: *const f32, y: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe { kernels::narrow_block_row::<$lanes, E, B>(data, blocks, g, xrep, y) }
        }

        /// See [`Lanes::fill_draws`](crate::simd::Lanes::fill_draws).
        ///
        /// # Safety
        /// The CPU has the features; `out` is valid for `n` writes.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn fill_draws(key: u64, first: u64, stride: u64, out: *mut u64, n: usize) {
            // SAFETY: forwarded contract.
            unsafe { <$lanes as $crate::simd::Lanes>::fill_draws(key, first, stride, out, n) }
        }

        /// See [`kernels::signed_rows`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::signed_rows`]'s contract.
        $(#[target_feature(enable = $features)])?
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn signed_rows(
            key: u64,
            row0: usize,
            signs: *mut u64,
            mask: *const u64,
            rows: Rows,
            x: *const f32,
            scale: f32,
            y: *mut f32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { kernels::signed_rows::<$lanes>(key, row0, signs, mask, rows, x, scale, y) }
        }

        /// See [`kernels::prefetch_tiles`].
        ///
        /// # Safety
        /// The CPU has the features.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn prefetch_tiles<E: Elem, B: Blocks>(data: *const E, blocks: B, area: usize, bytes: usize) {
            // SAFETY: forwarded contract.
            unsafe { kernels::prefetch_tiles::<$lanes, E, B>(data, blocks, area, bytes) }
        }

        /// See [`kernels::block_row`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::block_row`]'s contract.
        $(#[target_feature(enable = $features)])?
        pub(crate) unsafe fn block_row<E: Elem, B: Blocks>(
            data: *const E,
            blocks: B,
            g: BlockGeometry,
            x: *const f32,
            y: *mut f32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { kernels::block_row::<$lanes, E, B>(data, blocks, g, x, y) }
        }

        /// See [`kernels::signed_block_row`].
        ///
        /// # Safety
        /// The CPU has the features; the caller upholds [`kernels::signed_block_row`]'s contract.
        $(#[target_feature(enable = $features)])?
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn signed_block_row<B: Blocks>(
            key: u64,
            row0: u64,
            blocks: B,
            g: BlockGeometry,
            x: *const f32,
            block_sums: *const f32,
            scale: f32,
            y: *mut f32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { kernels::signed_block_row::<$lanes, B>(key, row0, blocks, g, x, block_sums, scale, y) }
        }
    };
}
pub(crate) use isa_kernels;

#[cfg(test)]
mod tests {
    use super::Lanes;
    use crate::Isa;
    use smk_format::seeded::draw;

    /// Each instruction set's generator against the format's scalar definition, for
    /// progressions of every length up to 40 (not multiples of the vector width) and strides
    /// 0, 1 and large.
    #[test]
    fn fill_draws_matches_the_format() {
        let mut state = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            state = draw(state, 7);
            state
        };
        for n in 0..=40 {
            for stride in [0, 1, 3, 64, 1 << 40] {
                let (key, first) = (next(), next() >> 8);
                let want: Vec<u64> = (0..n as u64)
                    .map(|i| draw(key, first.wrapping_add(stride * i)))
                    .collect();
                for isa in Isa::available_all() {
                    let mut got = vec![0u64; n + 1];
                    got[n] = 0xDEAD;
                    // SAFETY: `isa` is available; `got` holds n + 1 values.
                    unsafe {
                        match isa {
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx512 => super::avx512::fill_draws(key, first, stride, got.as_mut_ptr(), n),
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx2 => super::avx2::fill_draws(key, first, stride, got.as_mut_ptr(), n),
                            #[cfg(target_arch = "aarch64")]
                            Isa::Neon => super::neon::fill_draws(key, first, stride, got.as_mut_ptr(), n),
                            _ => super::scalar::Scalar::fill_draws(key, first, stride, got.as_mut_ptr(), n),
                        }
                    }
                    assert_eq!(&got[..n], &want[..], "{isa}, n {n}, stride {stride}");
                    assert_eq!(got[n], 0xDEAD, "{isa} wrote past n = {n}");
                }
            }
        }
    }
}
