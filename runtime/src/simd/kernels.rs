//! The kernels, written once over [`Lanes`]: a weight matrix (stored or regenerated, masked per
//! element or per block) times a batch of input vectors. Each writes its outputs (no bias); the
//! layer code adds biases.
//!
//! Every function here is `unsafe` with one contract: the CPU has `L`'s features, and every
//! pointer is valid for the elements the geometry says it reads or writes.

use super::{Elem, Lanes};
use smk_format::seeded::draw;

/// Geometry of a row kernel: `rows` weight rows of `cols` columns against `batch` inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    /// Weight rows.
    pub rows: usize,
    /// Columns (inputs per row).
    pub cols: usize,
    /// Elements between weight rows.
    pub w_stride: usize,
    /// 64-bit words between mask rows (and sign rows).
    pub mask_stride: usize,
    /// Input vectors.
    pub batch: usize,
    /// f32 between input vectors.
    pub x_stride: usize,
    /// f32 between the outputs of consecutive inputs.
    pub y_batch: usize,
    /// f32 between the outputs of consecutive rows.
    pub y_row: usize,
}

/// Geometry of one block row of an `R × C` block grid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockGeometry {
    /// Block rows `R`.
    pub r: usize,
    /// Block columns `C`.
    pub c: usize,
    /// Rows of this block row inside the matrix (`R`, or fewer at the bottom edge).
    pub rows_here: usize,
    /// Columns of the matrix.
    pub cols: usize,
    /// Blocks per grid row.
    pub grid_cols: usize,
    /// Input vectors.
    pub batch: usize,
    /// f32 between input vectors; each holds `grid_cols · C` readable values, zero past `cols`.
    pub x_stride: usize,
    /// f32 between the outputs of consecutive inputs.
    pub y_batch: usize,
    /// f32 between the outputs of consecutive rows.
    pub y_row: usize,
}

/// The kept blocks of one block row, as `(block column, block number in the data)`.
pub(crate) trait Blocks: Iterator<Item = (usize, usize)> + Clone {}
impl<T: Iterator<Item = (usize, usize)> + Clone> Blocks for T {}

/// How many of the next block row's kept tiles are asked for a block row ahead.
const NEXT_ROW_TILES: usize = 64;

/// How many kept tiles ahead the block kernel prefetches.
const PREFETCH_TILES: usize = 16;

/// Rows the plain (any block width) kernels accumulate at once.
const PLAIN_ROWS: usize = 16;

/// The low `n` bits set.
#[inline(always)]
pub(crate) const fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The `L::W` mask bits of columns `c ..` (`c` a multiple of `L::W`).
#[inline(always)]
unsafe fn mask_bits<L: Lanes>(mask: *const u64, c: usize) -> u64 {
    // SAFETY: the caller's contract covers the mask row.
    (unsafe { *mask.add(c / 64) } >> (c % 64)) & low_bits(L::W)
}

/// Loads the `n < W` elements at `p`, the other lanes 0. Element by element over a fixed `W`
/// lanes: a variable-length copy would become a call to `memcpy`, and a call inside a kernel's
/// loop makes the compiler keep every accumulator in memory.
#[inline(always)]
unsafe fn load_tail<L: Lanes, E: Elem>(p: *const E, n: usize) -> L::V {
    let mut buf = [E::default(); 16];
    for (i, v) in buf.iter_mut().enumerate().take(L::W) {
        if i < n {
            // SAFETY: `p` is valid for `n` elements (the caller's contract).
            *v = unsafe { p.add(i).read() };
        }
    }
    // SAFETY: `buf` holds 16 ≥ W elements.
    unsafe { E::load::<L>(buf.as_ptr()) }
}

/// Loads `W` elements at column `c`, or the `cols − c` left at the tail.
#[inline(always)]
unsafe fn load_at<L: Lanes, E: Elem>(p: *const E, c: usize, cols: usize) -> L::V {
    // SAFETY: the caller's contract.
    unsafe {
        if c + L::W <= cols {
            E::load::<L>(p.add(c))
        } else {
            load_tail::<L, E>(p.add(c), cols - c)
        }
    }
}

/// Weight rows and inputs whose `MR × NR` dot products one register tile holds.
const MR: usize = 4;
const NR: usize = 4;
/// Columns per pass of the batch kernel: a `MR × KC` weight panel (8 KB of f32) stays in L1
/// while every input's `KC` columns stream past it from L2.
const KC: usize = 512;

/// The dot products of weight rows `o .. o + M` with inputs `b .. b + N` over columns
/// `k0 .. k0 + kn`, stored into `y` (first pass) or added to it. The loop over whole vectors
/// has no branch (masking is a compile-time choice), so the `M × N` accumulators stay in
/// registers; the last partial vector is done apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<L: Lanes, E: Elem, const M: usize, const N: usize, const MASKED: bool>(
    w: *const E,
    mask: *const u64,
    g: &Rows,
    x: *const f32,
    y: *mut f32,
    (o, b): (usize, usize),
    (k0, kn): (usize, usize),
) {
    // SAFETY: rows o .. o + M, inputs b .. b + N and columns k0 .. k0 + kn ≤ cols are inside the
    // caller's buffers (its contract); whole vectors end at or before k0 + kn, the tail is
    // loaded through a buffer.
    unsafe {
        let wr: [*const E; M] = core::array::from_fn(|i| w.add((o + i) * g.w_stride));
        let mr: [*const u64; M] = core::array::from_fn(|i| {
            if MASKED {
                mask.add((o + i) * g.mask_stride)
            } else {
                mask
            }
        });
        let xr: [*const f32; N] = core::array::from_fn(|j| x.add((b + j) * g.x_stride));
        let whole = k0 + kn / L::W * L::W;
        let mut c = k0;
        let mut acc = [[L::zero(); N]; M];
        if M == 4 && N == 4 {
            // The full tile with sixteen named accumulators: as an array indexed in a loop, the
            // compiler keeps some of them in memory.
            let (w0, w1, w2, w3) = (wr[0], wr[1 % M], wr[2 % M], wr[3 % M]);
            let (m0, m1, m2, m3) = (mr[0], mr[1 % M], mr[2 % M], mr[3 % M]);
            let (x0, x1, x2, x3) = (xr[0], xr[1 % N], xr[2 % N], xr[3 % N]);
            let z = L::zero();
            let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
            let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
            let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
            let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
            while c < whole {
                let (v0, v1, v2, v3) = (
                    L::load(x0.add(c)),
                    L::load(x1.add(c)),
                    L::load(x2.add(c)),
                    L::load(x3.add(c)),
                );
                let load = |p: *const E, m: *const u64| {
                    let v = E::load::<L>(p.add(c));
                    if MASKED {
                        L::keep(v, mask_bits::<L>(m, c))
                    } else {
                        v
                    }
                };
                let r = load(w0, m0);
                (a00, a01, a02, a03) = (
                    L::fma(r, v0, a00),
                    L::fma(r, v1, a01),
                    L::fma(r, v2, a02),
                    L::fma(r, v3, a03),
                );
                let r = load(w1, m1);
                (a10, a11, a12, a13) = (
                    L::fma(r, v0, a10),
                    L::fma(r, v1, a11),
                    L::fma(r, v2, a12),
                    L::fma(r, v3, a13),
                );
                let r = load(w2, m2);
                (a20, a21, a22, a23) = (
                    L::fma(r, v0, a20),
                    L::fma(r, v1, a21),
                    L::fma(r, v2, a22),
                    L::fma(r, v3, a23),
                );
                let r = load(w3, m3);
                (a30, a31, a32, a33) = (
                    L::fma(r, v0, a30),
                    L::fma(r, v1, a31),
                    L::fma(r, v2, a32),
                    L::fma(r, v3, a33),
                );
                c += L::W;
            }
            let named = [
                [a00, a01, a02, a03],
                [a10, a11, a12, a13],
                [a20, a21, a22, a23],
                [a30, a31, a32, a33],
            ];
            acc = core::array::from_fn(|i| core::array::from_fn(|j| named[i % 4][j % 4]));
            // The tail and the stores below run once; the loop above must not share them.
            tile_finish::<L, E, M, N, MASKED>(acc, wr, mr, xr, g, y, (o, b), (k0, kn), whole);
            return;
        }
        while c < whole {
            let xv: [L::V; N] = core::array::from_fn(|j| L::load(xr[j].add(c)));
            for i in 0..M {
                let mut wv = E::load::<L>(wr[i].add(c));
                if MASKED {
                    wv = L::keep(wv, mask_bits::<L>(mr[i], c));
                }
                for j in 0..N {
                    acc[i][j] = L::fma(wv, xv[j], acc[i][j]);
                }
            }
            c += L::W;
        }
        tile_finish::<L, E, M, N, MASKED>(acc, wr, mr, xr, g, y, (o, b), (k0, kn), whole);
    }
}

/// The last partial vector of a tile's pass, then its stores.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_finish<L: Lanes, E: Elem, const M: usize, const N: usize, const MASKED: bool>(
    mut acc: [[L::V; N]; M],
    wr: [*const E; M],
    mr: [*const u64; M],
    xr: [*const f32; N],
    g: &Rows,
    y: *mut f32,
    (o, b): (usize, usize),
    (k0, kn): (usize, usize),
    whole: usize,
) {
    // SAFETY: as for `tile`.
    unsafe {
        if whole < k0 + kn {
            let n = k0 + kn - whole;
            let xv: [L::V; N] = core::array::from_fn(|j| load_tail::<L, f32>(xr[j].add(whole), n));
            for i in 0..M {
                let mut wv = load_tail::<L, E>(wr[i].add(whole), n);
                if MASKED {
                    wv = L::keep(wv, mask_bits::<L>(mr[i], whole));
                }
                for j in 0..N {
                    acc[i][j] = L::fma(wv, xv[j], acc[i][j]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                let out = y.add((b + j) * g.y_batch + (o + i) * g.y_row);
                *out = if k0 == 0 { L::sum(*a) } else { *out + L::sum(*a) };
            }
        }
    }
}

/// [`dense_rows`] for four or more inputs: register tiles of `MR` rows × `NR` inputs, each
/// weight load shared by `NR` inputs and each input load by `MR` rows, over `KC`-column passes.
///
/// # Safety
/// As for [`dense_rows`].
#[inline(always)]
unsafe fn dense_gemm<L: Lanes, E: Elem>(w: *const E, mask: *const u64, g: Rows, x: *const f32, y: *mut f32) {
    // SAFETY: forwarded contract.
    unsafe {
        if mask.is_null() {
            dense_gemm_with::<L, E, false>(w, mask, g, x, y)
        } else {
            dense_gemm_with::<L, E, true>(w, mask, g, x, y)
        }
    }
}

#[inline(always)]
unsafe fn dense_gemm_with<L: Lanes, E: Elem, const MASKED: bool>(
    w: *const E,
    mask: *const u64,
    g: Rows,
    x: *const f32,
    y: *mut f32,
) {
    let mut k0 = 0;
    while k0 < g.cols {
        let k = (k0, KC.min(g.cols - k0));
        let mut o = 0;
        while o < g.rows {
            let m = MR.min(g.rows - o);
            let mut b = 0;
            while b < g.batch {
                let n = NR.min(g.batch - b);
                // SAFETY: the tiles stay inside rows < rows, inputs < batch (the caller's contract).
                unsafe {
                    match (m == MR, n == NR) {
                        (true, true) => tile::<L, E, MR, NR, MASKED>(w, mask, &g, x, y, (o, b), k),
                        (true, false) => {
                            (0..n).for_each(|j| tile::<L, E, MR, 1, MASKED>(w, mask, &g, x, y, (o, b + j), k))
                        }
                        (false, true) => {
                            (0..m).for_each(|i| tile::<L, E, 1, NR, MASKED>(w, mask, &g, x, y, (o + i, b), k))
                        }
                        (false, false) => {
                            for i in 0..m {
                                (0..n).for_each(|j| tile::<L, E, 1, 1, MASKED>(w, mask, &g, x, y, (o + i, b + j), k));
                            }
                        }
                    }
                }
                b += n;
            }
            o += m;
        }
        k0 += KC;
    }
}

/// `y[b, o] = Σ_c w[o, c] · m[o, c] · x[b, c]`, `m` the bits at `mask` (all ones when null).
///
/// # Safety
/// See the module: `w` holds `rows` rows at `w_stride`, `mask` (if not null) `rows` rows of
/// `ceil(cols/64)` words at `mask_stride`, `x` `batch` vectors at `x_stride`.
#[inline(always)]
pub(crate) unsafe fn dense_rows<L: Lanes, E: Elem>(w: *const E, mask: *const u64, g: Rows, x: *const f32, y: *mut f32) {
    if g.batch >= NR {
        // SAFETY: forwarded contract.
        return unsafe { dense_gemm::<L, E>(w, mask, g, x, y) };
    }
    let w_len = L::W;
    let full = g.cols / w_len * w_len;
    for o in 0..g.rows {
        // SAFETY: row `o` of the weights and the mask are inside the caller's buffers.
        let (wr, mr) = unsafe {
            (
                w.add(o * g.w_stride),
                if mask.is_null() {
                    mask
                } else {
                    mask.add(o * g.mask_stride)
                },
            )
        };
        if !mr.is_null() {
            // A row with every weight masked out costs nothing but reading its mask.
            // SAFETY: the mask row holds ceil(cols/64) words.
            let any = (0..g.cols.div_ceil(64)).any(|i| unsafe { *mr.add(i) } != 0);
            if !any {
                for b in 0..g.batch {
                    // SAFETY: output (b, o) is inside `y`.
                    unsafe { *y.add(b * g.y_batch + o * g.y_row) = 0.0 };
                }
                continue;
            }
        }
        let mut b = 0;
        // One input: four accumulators along the row hide the FMA latency.
        while b < g.batch {
            // SAFETY: input b is inside `x`; the unrolled loop stays below `full`; tails use `load_at`.
            unsafe {
                let xb = x.add(b * g.x_stride);
                let (mut a0, mut a1, mut a2, mut a3) = (L::zero(), L::zero(), L::zero(), L::zero());
                let mut c = 0;
                let masked = !mr.is_null();
                while c + 4 * w_len <= full {
                    let mut w0 = E::load::<L>(wr.add(c));
                    let mut w1 = E::load::<L>(wr.add(c + w_len));
                    let mut w2 = E::load::<L>(wr.add(c + 2 * w_len));
                    let mut w3 = E::load::<L>(wr.add(c + 3 * w_len));
                    if masked {
                        // One mask load covers the four vectors (4·W ≤ 64 columns, inside one
                        // word); where all are kept the weights go through untouched.
                        let all = low_bits(4 * w_len);
                        let bits = (*mr.add(c / 64) >> (c % 64)) & all;
                        if bits != all {
                            w0 = L::keep(w0, bits);
                            w1 = L::keep(w1, bits >> w_len);
                            w2 = L::keep(w2, bits >> (2 * w_len));
                            w3 = L::keep(w3, bits >> (3 * w_len));
                        }
                    }
                    a0 = L::fma(w0, L::load(xb.add(c)), a0);
                    a1 = L::fma(w1, L::load(xb.add(c + w_len)), a1);
                    a2 = L::fma(w2, L::load(xb.add(c + 2 * w_len)), a2);
                    a3 = L::fma(w3, L::load(xb.add(c + 3 * w_len)), a3);
                    c += 4 * w_len;
                }
                while c < g.cols {
                    let mut wv = load_at::<L, E>(wr, c, g.cols);
                    if masked {
                        wv = L::keep(wv, mask_bits::<L>(mr, c));
                    }
                    a0 = L::fma(wv, load_at::<L, f32>(xb, c, g.cols), a0);
                    c += w_len;
                }
                *y.add(b * g.y_batch + o * g.y_row) = L::sum(a0) + L::sum(a1) + (L::sum(a2) + L::sum(a3));
            }
            b += 1;
        }
    }
}

/// Seeded signed-constant rows `row0 ..` (`g.rows` of them): with `s` the row's sign bits
/// (1 = `+scale`) and `m` its mask (all ones when null), `y[b, o] = scale · Σ_m ±x`: one add per
/// vector, the sign applied by an integer xor. Each row's signs are drawn into `signs` first,
/// eight or four at a time where the instruction set can.
///
/// # Safety
/// See [`dense_rows`]; `signs` is valid for `ceil(cols/64)` writes and `mask` (when not null)
/// points at row `row0`'s words.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn signed_rows<L: Lanes>(
    key: u64,
    row0: usize,
    signs: *mut u64,
    mask: *const u64,
    g: Rows,
    x: *const f32,
    scale: f32,
    y: *mut f32,
) {
    let words = g.cols.div_ceil(64);
    let masked = !mask.is_null();
    for o in 0..g.rows {
        // SAFETY: `signs` holds one row of words (the caller's contract).
        unsafe { L::fill_draws(key, ((row0 + o) * words) as u64, 1, signs, words) };
        for b in 0..g.batch {
            // SAFETY: rows, words and inputs are inside the caller's buffers; whole words read
            // 64 columns below `cols`, the last partial word goes through `load_at`.
            unsafe {
                let xb = x.add(b * g.x_stride);
                // Eight accumulators: one running sum would make every add wait for the one
                // before.
                let mut acc = [L::zero(); 8];
                for wi in 0..words {
                    let m = if masked {
                        *mask.add(o * g.mask_stride + wi)
                    } else {
                        u64::MAX
                    };
                    if m == 0 {
                        continue;
                    }
                    let neg = !*signs.add(wi);
                    let base = wi * 64;
                    if base + 64 <= g.cols {
                        L::add_signed_64(&mut acc, xb.add(base), neg, m);
                    } else {
                        let mut q = 0;
                        while base + q < g.cols {
                            let xv = load_at::<L, f32>(xb, base + q, g.cols);
                            acc[0] = L::add_signed(acc[0], xv, (neg >> q) & low_bits(L::W), (m >> q) & low_bits(L::W));
                            q += L::W;
                        }
                    }
                }
                let mut total = 0.0;
                for a in acc {
                    total += L::sum(a);
                }
                *y.add(b * g.y_batch + o * g.y_row) = scale * total;
            }
        }
    }
}

/// One block row of a tile-major or packed matrix: for every kept block `(gc, k)`, the `R × C`
/// block stored at `data + k·R·C` meets input columns `gc·C ..`. Only kept blocks are read.
///
/// # Safety
/// See the module; `C` is a multiple of `L::W`; every `k` is a block stored in
/// `data`, every `gc < grid_cols`.
#[inline(always)]
pub(crate) unsafe fn block_row<L: Lanes, E: Elem, B: Blocks>(
    data: *const E,
    blocks: B,
    g: BlockGeometry,
    x: *const f32,
    y: *mut f32,
) {
    for b in 0..g.batch {
        // SAFETY: input b is inside `x`.
        let xb = unsafe { x.add(b * g.x_stride) };
        let mut r0 = 0;
        while r0 < g.rows_here {
            let left = g.rows_here - r0;
            // A fixed number of rows per pass keeps the accumulators in registers.
            // SAFETY: forwarded contract; each pass covers rows below rows_here.
            r0 += unsafe {
                if left >= 16 && L::RB >= 16 {
                    block_rows::<L, E, B, 16>(data, &blocks, &g, r0, xb, y.add(b * g.y_batch))
                } else if left >= 8 && L::RB >= 8 {
                    block_rows::<L, E, B, 8>(data, &blocks, &g, r0, xb, y.add(b * g.y_batch))
                } else if left >= 4 {
                    block_rows::<L, E, B, 4>(data, &blocks, &g, r0, xb, y.add(b * g.y_batch))
                } else {
                    block_rows::<L, E, B, 1>(data, &blocks, &g, r0, xb, y.add(b * g.y_batch))
                }
            };
        }
    }
}

/// Asks for the first [`PREFETCH_TILES`] tiles of `blocks`, `bytes` from the start of each: the
/// next block row's first tiles, requested a whole block row ahead, where the block kernel's own
/// prefetch would ask for them only as it starts on that row.
///
/// # Safety
/// `L`'s features are present (prefetching never faults, whatever the address).
#[inline(always)]
pub(crate) unsafe fn prefetch_tiles<L: Lanes, E: Elem, B: Blocks>(
    data: *const E,
    blocks: B,
    area: usize,
    bytes: usize,
) {
    for (_, k) in blocks.take(NEXT_ROW_TILES) {
        let p = data.wrapping_add(k * area).cast::<u8>();
        let mut off = 0;
        while off < bytes {
            // SAFETY: the caller's contract.
            unsafe { L::prefetch(p.wrapping_add(off)) };
            off += 64;
        }
    }
}

/// Rows `r0 .. r0 + R` of one block row for one input; returns `R`.
#[inline(always)]
unsafe fn block_rows<L: Lanes, E: Elem, B: Blocks, const R: usize>(
    data: *const E,
    blocks: &B,
    g: &BlockGeometry,
    r0: usize,
    xb: *const f32,
    y: *mut f32,
) -> usize {
    let area = g.r * g.c;
    // Tiles are scattered (tile-major) or follow each other (packed): either way, ask for the
    // rows of the tile `PREFETCH_TILES` ahead while this one is multiplied, so that memory
    // latency overlaps the work of the tiles in between.
    let bytes = R * g.c * core::mem::size_of::<E>();
    let prefetch = |k: usize| {
        // SAFETY: block `k` is stored in `data`; prefetching never faults.
        let p = unsafe { data.add(k * area + r0 * g.c).cast::<u8>() };
        let mut off = 0;
        while off < bytes {
            // SAFETY: as above.
            unsafe { L::prefetch(p.wrapping_add(off)) };
            off += 64;
        }
    };
    // Whole tiles that follow each other in memory (the packed layout, read R = all rows at a
    // time) are one stream, left to the hardware prefetcher: asking for them too made it slower
    // (17 against 26 GB/s here). Part-tiles (blocks taller than R) are strided: fetched ahead.
    let mut ahead = blocks.clone();
    let mut last = usize::MAX;
    let whole = R == g.r;
    let mut prefetch_scattered = |k: usize| {
        if !whole || k != last.wrapping_add(1) {
            prefetch(k);
        }
        last = k;
    };
    for (_, k) in ahead.by_ref().take(PREFETCH_TILES) {
        prefetch_scattered(k);
    }
    // SAFETY: `L`'s features are present; every kept block `k` is stored in `data`, its rows
    // r0 .. r0 + R are `R·C` contiguous elements; input columns gc·C .. gc·C + C are readable;
    // outputs r0 .. r0 + R are inside `y`.
    unsafe {
        let mut acc = [L::zero(); R];
        for (gc, k) in blocks.clone() {
            if let Some((_, kn)) = ahead.next() {
                prefetch_scattered(kn);
            }
            let blk = data.add(k * area + r0 * g.c);
            let xc = xb.add(gc * g.c);
            let mut cc = 0;
            while cc < g.c {
                let xv = L::load(xc.add(cc));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = L::fma(E::load::<L>(blk.add(r * g.c + cc)), xv, *a);
                }
                cc += L::W;
            }
        }
        for (r, a) in acc.iter().enumerate() {
            *y.add((r0 + r) * g.y_row) = L::sum(*a);
        }
    }
    R
}

/// [`block_row`] for any block width, in plain scalar code.
///
/// # Safety
/// As for [`block_row`], without the width condition.
pub(crate) unsafe fn block_row_plain<E: Elem, B: Blocks>(
    data: *const E,
    blocks: B,
    g: BlockGeometry,
    x: *const f32,
    y: *mut f32,
) {
    let area = g.r * g.c;
    // As in `signed_block_row_plain`: rows in groups, one accumulator each.
    for b in 0..g.batch {
        let mut r0 = 0;
        while r0 < g.rows_here {
            let rn = PLAIN_ROWS.min(g.rows_here - r0);
            let mut acc = [0f32; PLAIN_ROWS];
            for (gc, k) in blocks.clone() {
                for c in 0..g.c {
                    // SAFETY: input column gc·C + c is readable (padded), block `k` is stored.
                    let xv = unsafe { *x.add(b * g.x_stride + gc * g.c + c) };
                    for (r, a) in acc.iter_mut().enumerate().take(rn) {
                        // SAFETY: row r0 + r < R of block k.
                        *a += unsafe { (*data.add(k * area + (r0 + r) * g.c + c)).to_f32() } * xv;
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(rn) {
                // SAFETY: output (b, r0 + r) is inside `y`.
                unsafe { *y.add(b * g.y_batch + (r0 + r) * g.y_row) = *a };
            }
            r0 += rn;
        }
    }
}

/// Seeded signed-constant weights under a block mask: rows `row0 ..` of the matrix, kept blocks
/// only; `block_sums[b·grid_cols + gc]` is the sum of input `b` over block column `gc`.
///
/// # Safety
/// See the module; `C` divides 64 and is a multiple of `L::W`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn signed_block_row<L: Lanes, B: Blocks>(
    key: u64,
    row0: u64,
    blocks: B,
    g: BlockGeometry,
    x: *const f32,
    block_sums: *const f32,
    scale: f32,
    y: *mut f32,
) {
    let mut r = 0;
    while r < g.rows_here {
        let left = g.rows_here - r;
        let (at, yr) = (row0 + r as u64, y.wrapping_add(r * g.y_row));
        // SAFETY: rows r .. r + R are inside the block row; the rest is forwarded.
        unsafe {
            r += if left >= 16 {
                signed_block_rows::<L, B, 16>(key, at, blocks.clone(), g, x, block_sums, scale, yr)
            } else if left >= 8 {
                signed_block_rows::<L, B, 8>(key, at, blocks.clone(), g, x, block_sums, scale, yr)
            } else if left >= 4 {
                signed_block_rows::<L, B, 4>(key, at, blocks.clone(), g, x, block_sums, scale, yr)
            } else {
                signed_block_rows::<L, B, 1>(key, at, blocks.clone(), g, x, block_sums, scale, yr)
            };
        }
    }
}

/// `R` rows of [`signed_block_row`] from matrix row `row`, their outputs at `y` (row stride
/// `g.y_row`): each kept block's signs for the `R` rows are drawn together, and each input
/// vector feeds `R` independent sums. Returns `R`.
///
/// # Safety
/// As for [`signed_block_row`]; `R` rows from `row` are inside the block row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn signed_block_rows<L: Lanes, B: Blocks, const R: usize>(
    key: u64,
    row: u64,
    blocks: B,
    g: BlockGeometry,
    x: *const f32,
    block_sums: *const f32,
    scale: f32,
    y: *mut f32,
) -> usize {
    let words = g.cols.div_ceil(64) as u64;
    let mut draws = [0u64; R];
    for b in 0..g.batch {
        // SAFETY: `L`'s features are present (the module's contract).
        let mut pos = [unsafe { L::zero() }; R];
        let mut tot = 0f32;
        let mut last = usize::MAX;
        for (gc, _) in blocks.clone() {
            let c0 = gc * g.c;
            // SAFETY: input columns c0 .. c0 + C are readable (zero past `cols`), the block
            // sums hold grid_cols values per input, and `draws` holds R values.
            unsafe {
                if last != c0 / 64 {
                    // Blocks narrower than 64 columns share one draw of 64 signs per row.
                    last = c0 / 64;
                    L::fill_draws(key, row * words + last as u64, words, draws.as_mut_ptr(), R);
                }
                let xc = x.add(b * g.x_stride + c0);
                let mut cc = 0;
                while cc < g.c {
                    let xv = L::load(xc.add(cc));
                    let shift = c0 % 64 + cc;
                    for (p, d) in pos.iter_mut().zip(draws) {
                        *p = L::add_where(*p, xv, (d >> shift) & low_bits(L::W));
                    }
                    cc += L::W;
                }
                tot += *block_sums.add(b * g.grid_cols + gc);
            }
        }
        for (r, p) in pos.into_iter().enumerate() {
            // SAFETY: output (b, r) is inside `y`.
            unsafe { *y.add(b * g.y_batch + r * g.y_row) = scale * (2.0 * L::sum(p) - tot) };
        }
    }
    R
}

/// [`signed_block_row`] for any block width, in plain scalar code.
///
/// # Safety
/// As for [`signed_block_row`], without the width condition.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn signed_block_row_plain<B: Blocks>(
    key: u64,
    row0: u64,
    blocks: B,
    g: BlockGeometry,
    x: *const f32,
    block_sums: *const f32,
    scale: f32,
    y: *mut f32,
) {
    let words = g.cols.div_ceil(64) as u64;
    // Sixteen rows at a time, each its own accumulator (a single running sum would make every
    // add wait for the previous one), and each row's last draw of 64 signs kept.
    for b in 0..g.batch {
        let mut r0 = 0;
        while r0 < g.rows_here {
            let rn = PLAIN_ROWS.min(g.rows_here - r0);
            let mut pos = [0f32; PLAIN_ROWS];
            let mut last = [(u64::MAX, 0u64); PLAIN_ROWS];
            let mut tot = 0f32;
            for (gc, _) in blocks.clone() {
                let end = ((gc + 1) * g.c).min(g.cols);
                for c in gc * g.c..end {
                    let wi = (c / 64) as u64;
                    // SAFETY: column c < cols of input b.
                    let xv = unsafe { *x.add(b * g.x_stride + c) };
                    for r in 0..rn {
                        if last[r].0 != wi {
                            last[r] = (wi, draw(key, (row0 + (r0 + r) as u64) * words + wi));
                        }
                        pos[r] += (last[r].1 >> (c % 64) & 1) as f32 * xv;
                    }
                }
                // SAFETY: the block sums hold grid_cols values per input.
                tot += unsafe { *block_sums.add(b * g.grid_cols + gc) };
            }
            for (r, p) in pos.iter().enumerate().take(rn) {
                // SAFETY: output (b, r0 + r) is inside `y`.
                unsafe { *y.add(b * g.y_batch + (r0 + r) * g.y_row) = scale * (2.0 * p - tot) };
            }
            r0 += rn;
        }
    }
}

/// Rows of weights whose outputs the batch-major kernels accumulate in registers at once.
pub(crate) const OUTER_ROWS: usize = 8;

/// Writes the first `n` lanes of `v` to `y[j · stride]`.
#[inline(always)]
unsafe fn store_lanes<L: Lanes>(v: L::V, n: usize, y: *mut f32, stride: usize) {
    let mut buf = [0f32; 16];
    // SAFETY: `buf` holds 16 ≥ W lanes; the caller's contract covers `y`.
    unsafe {
        L::store(buf.as_mut_ptr(), v);
        for (j, b) in buf.iter().enumerate().take(n) {
            *y.add(j * stride) = *b;
        }
    }
}

/// `R` rows times one vector of inputs, batch-major: lane `j` of `acc[r]` is the output of row
/// `r` for input `b0 + j`. Each weight is broadcast and meets `W` inputs at once, so no lane
/// sum is needed and the weights stream row by row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn outer_tile<L: Lanes, E: Elem, const R: usize>(
    w: *const E,
    mask: *const u64,
    o: usize,
    b0: usize,
    g: &Rows,
    xt: *const f32,
    bp: usize,
    y: *mut f32,
) {
    // SAFETY: rows o .. o + R and columns < cols are inside `w`; `xt` holds cols rows of `bp`
    // values and b0 + W ≤ bp; outputs b0 .. min(b0 + W, batch) are inside `y`.
    unsafe {
        let rows: [*const E; R] = core::array::from_fn(|r| w.add((o + r) * g.w_stride));
        let mut acc = [L::zero(); R];
        if core::mem::size_of::<E>() == 4 && mask.is_null() {
            for c in 0..g.cols {
                let xv = L::load(xt.add(c * bp + b0));
                for (a, row) in acc.iter_mut().zip(&rows) {
                    *a = L::fma(L::splat((*row.add(c)).to_f32()), xv, *a);
                }
            }
        } else {
            // Half-precision or masked weights: widen (and mask) a vector of each row at once
            // (a scalar binary16 conversion per weight costs more than the multiply-add), then
            // broadcast.
            let masks: [*const u64; R] = core::array::from_fn(|r| {
                if mask.is_null() {
                    mask
                } else {
                    mask.add((o + r) * g.mask_stride)
                }
            });
            let mut wide = [[0f32; 16]; R];
            let mut c0 = 0;
            while c0 < g.cols {
                for ((w, row), m) in wide.iter_mut().zip(&rows).zip(&masks) {
                    let mut v = load_at::<L, E>(*row, c0, g.cols);
                    if !m.is_null() {
                        v = L::keep(v, mask_bits::<L>(*m, c0));
                    }
                    L::store(w.as_mut_ptr(), v);
                }
                for cc in 0..L::W.min(g.cols - c0) {
                    let xv = L::load(xt.add((c0 + cc) * bp + b0));
                    for (a, w) in acc.iter_mut().zip(&wide) {
                        *a = L::fma(L::splat(w[cc]), xv, *a);
                    }
                }
                c0 += L::W;
            }
        }
        let n = L::W.min(g.batch - b0);
        for (r, a) in acc.iter().enumerate() {
            store_lanes::<L>(*a, n, y.add(b0 * g.y_batch + (o + r) * g.y_row), g.y_batch);
        }
    }
}

/// Rows (masked per element when `mask` is not null) times a batch of inputs given transposed: `xt[c · bp + b]`, `bp` the
/// batch rounded up to `W` with zero inputs.
///
/// # Safety
/// See the module; `xt` holds `cols · bp` values.
#[inline(always)]
pub(crate) unsafe fn dense_outer<L: Lanes, E: Elem>(
    w: *const E,
    mask: *const u64,
    g: Rows,
    xt: *const f32,
    y: *mut f32,
) {
    let bp = g.batch.div_ceil(L::W) * L::W;
    let mut o = 0;
    while o < g.rows {
        let mut b0 = 0;
        while b0 < g.batch {
            // SAFETY: forwarded contract; tiles stay inside rows < rows.
            unsafe {
                if o + OUTER_ROWS <= g.rows {
                    outer_tile::<L, E, OUTER_ROWS>(w, mask, o, b0, &g, xt, bp, y);
                } else {
                    for r in o..g.rows {
                        outer_tile::<L, E, 1>(w, mask, r, b0, &g, xt, bp, y);
                    }
                }
            }
            b0 += L::W;
        }
        o += OUTER_ROWS;
    }
}

/// `R` rows of one block row, batch-major, over every kept block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_outer_rows<L: Lanes, E: Elem, B: Blocks, const R: usize>(
    data: *const E,
    blocks: &B,
    g: &BlockGeometry,
    r0: usize,
    b0: usize,
    xt: *const f32,
    bp: usize,
    y: *mut f32,
) {
    let area = g.r * g.c;
    // SAFETY: rows r0 .. r0 + R < R_block of every kept block are inside its tile; `xt` holds
    // grid_cols·C rows of `bp` values; outputs are inside `y`.
    unsafe {
        let mut acc = [L::zero(); R];
        for (gc, k) in blocks.clone() {
            let blk = data.add(k * area + r0 * g.c);
            let xc = xt.add(gc * g.c * bp + b0);
            for c in 0..g.c {
                let xv = L::load(xc.add(c * bp));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = L::fma(L::splat((*blk.add(r * g.c + c)).to_f32()), xv, *a);
                }
            }
        }
        let n = L::W.min(g.batch - b0);
        for (r, a) in acc.iter().enumerate() {
            store_lanes::<L>(*a, n, y.add(b0 * g.y_batch + (r0 + r) * g.y_row), g.y_batch);
        }
    }
}

/// [`block_row`] for a batch given transposed (`xt[c · bp + b]`, `c` up to `grid_cols · C`,
/// zero past `cols`): each kept block's weights are broadcast against `W` inputs at once, for
/// any block shape.
///
/// # Safety
/// See the module and [`block_row`], without the width condition; `xt` holds
/// `grid_cols · C · bp` values.
#[inline(always)]
pub(crate) unsafe fn block_outer<L: Lanes, E: Elem, B: Blocks>(
    data: *const E,
    blocks: B,
    g: BlockGeometry,
    xt: *const f32,
    y: *mut f32,
) {
    let bp = g.batch.div_ceil(L::W) * L::W;
    let mut b0 = 0;
    while b0 < g.batch {
        let mut r0 = 0;
        while r0 < g.rows_here {
            let left = g.rows_here - r0;
            // SAFETY: forwarded contract; each call covers rows below rows_here.
            unsafe {
                let step = if left >= 16 {
                    block_outer_rows::<L, E, B, 16>(data, &blocks, &g, r0, b0, xt, bp, y);
                    16
                } else if left >= 8 {
                    block_outer_rows::<L, E, B, 8>(data, &blocks, &g, r0, b0, xt, bp, y);
                    8
                } else if left >= 4 {
                    block_outer_rows::<L, E, B, 4>(data, &blocks, &g, r0, b0, xt, bp, y);
                    4
                } else {
                    block_outer_rows::<L, E, B, 1>(data, &blocks, &g, r0, b0, xt, bp, y);
                    1
                };
                r0 += step;
            }
        }
        b0 += L::W;
    }
}

/// Whether [`narrow_block_row`] handles `r × c` blocks with `w`-lane vectors.
pub(crate) const fn narrow_fits(r: usize, c: usize, w: usize) -> bool {
    c < w && w.is_multiple_of(c) && (r * c).is_multiple_of(w) && r * c / w <= 16
}

/// [`block_row`] for blocks narrower than a vector (4×4 under 8 or 16 lanes): a vector holds
/// `W / C` whole rows of a tile, and meets the block's `C` inputs repeated `W / C` times
/// (`xrep`, prepared once per layer: for input `b`, `grid_cols` groups of `W` values). One
/// load and one multiply-add per vector of a kept tile; the lanes are summed per row once per
/// block row.
///
/// # Safety
/// See the module and [`block_row`]; [`narrow_fits`] holds; `xrep` holds
/// `batch · grid_cols · W` values.
#[inline(always)]
pub(crate) unsafe fn narrow_block_row<L: Lanes, E: Elem, B: Blocks>(
    data: *const E,
    blocks: B,
    g: BlockGeometry,
    xrep: *const f32,
    y: *mut f32,
) {
    let area = g.r * g.c;
    let vectors = area / L::W;
    let per = L::W / g.c;
    for b in 0..g.batch {
        // SAFETY: every kept tile holds `area` elements; `xrep` holds grid_cols·W values per
        // input; rows below rows_here are inside `y`.
        unsafe {
            let xb = xrep.add(b * g.grid_cols * L::W);
            let mut acc = [L::zero(); 16];
            for (gc, k) in blocks.clone() {
                let xv = L::load(xb.add(gc * L::W));
                let blk = data.add(k * area);
                for (j, a) in acc.iter_mut().enumerate().take(vectors) {
                    *a = L::fma(E::load::<L>(blk.add(j * L::W)), xv, *a);
                }
            }
            let mut lanes = [0f32; 16];
            for (j, a) in acc.iter().enumerate().take(vectors) {
                L::store(lanes.as_mut_ptr(), *a);
                for rr in 0..per {
                    let row = j * per + rr;
                    if row < g.rows_here {
                        *y.add(b * g.y_batch + row * g.y_row) = lanes[rr * g.c..(rr + 1) * g.c].iter().sum();
                    }
                }
            }
        }
    }
}

/// Seeded signed-constant rows written out as f32 (`±scale` where kept, 0 elsewhere), `rows`
/// rows of `cols` into `out` (stride `cols`), from their sign words and mask words (all kept
/// when `mask` is null), both `ceil(cols/64)` per row.
///
/// # Safety
/// See the module; `signs` (and `mask`) hold `rows · ceil(cols/64)` words, `out` `rows · cols`.
#[inline(always)]
pub(crate) unsafe fn signed_panel<L: Lanes>(
    signs: *const u64,
    mask: *const u64,
    rows: usize,
    cols: usize,
    scale: f32,
    out: *mut f32,
) {
    let words = cols.div_ceil(64);
    // SAFETY: the caller's contract; a vector is stored whole only where it fits in the row.
    unsafe {
        let (minus, twice) = (L::splat(-scale), L::splat(2.0 * scale));
        let mut tail = [0f32; 16];
        for r in 0..rows {
            let mut c = 0;
            while c < cols {
                let w = r * words + c / 64;
                let s = (*signs.add(w) >> (c % 64)) & low_bits(L::W);
                let m = if mask.is_null() {
                    low_bits(L::W)
                } else {
                    (*mask.add(w) >> (c % 64)) & low_bits(L::W)
                };
                let v = L::keep(L::add_where(minus, twice, s), m);
                let dst = out.add(r * cols + c);
                if c + L::W <= cols {
                    L::store(dst, v);
                } else {
                    L::store(tail.as_mut_ptr(), v);
                    for (j, t) in tail.iter().enumerate().take(cols - c) {
                        *dst.add(j) = *t;
                    }
                }
                c += L::W;
            }
        }
    }
}
