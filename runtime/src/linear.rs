//! Weight matrix × batch of vectors, for every storage, layout and mask kind: picks the kernel
//! and the instruction set, checks every length before a kernel sees a pointer.

use crate::simd::kernels::{self, BlockGeometry, Rows};
use crate::simd::{self, Bf16, Elem, F16};
use crate::{Error, Isa};
use smk_format::{InitRule, Layout, Mask, MaskKind, Storage, Tensor};

/// Calls kernel `$f` of the instruction set `$isa`.
macro_rules! on_isa {
    ($isa:expr, $f:ident($($a:expr),* $(,)?)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => simd::avx512::$f($($a),*),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => simd::avx2::$f($($a),*),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => simd::neon::$f($($a),*),
            _ => simd::scalar::$f($($a),*),
        }
    };
}

/// Work per 64 columns of the AVX-512 seeded kernel: subset-sum tables (16 groups of 16
/// values), then 16 rows' mask words (32 f32).
const LUT_F32_PER_WORD: usize = 256 + 32;

/// f32 lanes of an instruction set's vectors.
fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 | Isa::Scalar => 8,
        Isa::Neon => 4,
    }
}

/// Where a product reads its inputs and writes its outputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Io {
    /// Input vectors.
    pub batch: usize,
    /// f32 between input vectors.
    pub x_stride: usize,
    /// f32 between the outputs of consecutive inputs.
    pub y_batch: usize,
    /// f32 between the outputs of consecutive rows.
    pub y_row: usize,
}

/// How the product will run: decided from the tensor and mask alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Row-major stored weights, no mask or an element mask.
    Dense,
    /// Tile-major or packed stored weights: only kept blocks.
    Blocks { r: usize, c: usize },
    /// Signed-constant seeded weights, no mask or an element mask.
    Signed,
    /// Signed-constant seeded weights under a block mask.
    SignedBlocks { r: usize, c: usize },
    /// Other seeded weights: each row generated, then a dense row.
    Generated,
    /// Stored signs (learned binary weights), no mask or an element mask: eight rows at a time
    /// written out as `±scale` (masked ones zero), then dense rows.
    StoredSigns,
    /// Anything else the format allows: the plain reference loop.
    Reference,
}

fn path(t: &Tensor<'_>, mask: Option<&Mask<'_>>) -> Path {
    // Kernels read weights and mask words in place: bytes that are not aligned for that (a
    // buffer the caller did not align) take the reference loop rather than a copy.
    let aligned = mask.is_none_or(|m| m.as_words().is_some())
        && match t.storage {
            Storage::F32 => t.as_f32().is_some(),
            Storage::F16 | Storage::Bf16 => t.as_u16().is_some(),
            Storage::Seeded(_) => true,
            Storage::Signs { .. } => t.as_sign_words().is_some(),
        };
    if !aligned {
        return Path::Reference;
    }
    let block = mask.filter(|m| m.kind == MaskKind::Block).map(|m| m.block);
    match (t.storage, t.layout, block) {
        (Storage::Seeded(init), _, None) if init.rule == InitRule::SignedConstant => Path::Signed,
        (Storage::Seeded(init), _, Some(b)) if init.rule == InitRule::SignedConstant => Path::SignedBlocks {
            r: b[0] as usize,
            c: b[1] as usize,
        },
        (Storage::Seeded(_), _, _) => Path::Generated,
        (Storage::Signs { .. }, Layout::RowMajor, None) => Path::StoredSigns,
        (Storage::Signs { .. }, _, _) => Path::Reference,
        (_, Layout::RowMajor, None) => Path::Dense,
        (_, Layout::TileMajor { block: tb } | Layout::Packed { block: tb, .. }, b)
            if mask.is_none() || b == Some(tb) =>
        {
            Path::Blocks {
                r: tb[0] as usize,
                c: tb[1] as usize,
            }
        }
        _ => Path::Reference,
    }
}

/// A short name of the kernel that runs `t` under `mask`.
pub(crate) fn kernel_name(t: &Tensor<'_>, mask: Option<&Mask<'_>>) -> &'static str {
    let element = mask.is_some();
    match (path(t, mask), t.layout) {
        (Path::Dense, _) if element => "dense, element mask",
        (Path::Dense, _) => "dense",
        (Path::Blocks { .. }, Layout::Packed { .. }) => "packed blocks",
        (Path::Blocks { .. }, _) => "tile-major blocks",
        (Path::Signed, _) if element => "signed-constant, element mask",
        (Path::Signed, _) => "signed-constant",
        (Path::SignedBlocks { .. }, _) => "signed-constant, block mask",
        (Path::Generated, _) => "generated rows",
        (Path::StoredSigns, _) if element => "signs, element mask",
        (Path::StoredSigns, _) => "signs",
        (Path::Reference, _) => "reference loop",
    }
}

/// From this many inputs on, unmasked dense and block products run batch-major: the inputs are
/// transposed once per layer, and each weight is broadcast against a vector of inputs.
const OUTER_MIN_BATCH: usize = 8;

/// `x` (batch × cols, stride `io.x_stride`) transposed into `xt` (`rows_pad` × `bp`), zero past
/// `cols` and past the batch.
fn transpose(x: &[f32], io: Io, cols: usize, rows_pad: usize, bp: usize, xt: &mut [f32]) {
    let xt = &mut xt[..rows_pad * bp];
    xt.fill(0.0);
    for b in 0..io.batch {
        for (c, v) in x[b * io.x_stride..b * io.x_stride + cols].iter().enumerate() {
            xt[c * bp + b] = *v;
        }
    }
}

/// The geometry of block row `gr` of a `rows × cols` matrix cut into `block` blocks.
fn block_geometry(block: [usize; 2], rows: usize, cols: usize, gr: usize, io: Io, x_stride: usize) -> BlockGeometry {
    let [r, c] = block;
    BlockGeometry {
        r,
        c,
        rows_here: r.min(rows - gr * r),
        cols,
        grid_cols: cols.div_ceil(c),
        batch: io.batch,
        x_stride,
        y_batch: io.y_batch,
        y_row: io.y_row,
    }
}

/// The instruction set for blocks `c` wide: AVX-512's vectors are 16 wide, so blocks of 8
/// (or 24, 40, …) columns run on its AVX2 (every AVX-512 CPU here has it).
fn block_isa(isa: Isa, c: usize) -> Isa {
    if isa == Isa::Avx512 && !c.is_multiple_of(16) {
        Isa::Avx2
    } else {
        isa
    }
}

fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// f32 of scratch [`matvec`] needs for `t` under `mask` with `batch` inputs (`None`: too large).
pub(crate) fn work_len(t: &Tensor<'_>, mask: Option<&Mask<'_>>, batch: usize) -> Option<usize> {
    let (rows, cols) = t.matrix();
    let (_rows, cols) = (usize::try_from(rows).ok()?, usize::try_from(cols).ok()?);
    let words = cols.div_ceil(64);
    let padded_input = |c: usize| {
        if cols % c == 0 {
            Some(0)
        } else {
            batch.checked_mul(round_up(cols, c))
        }
    };
    let outer = |rows_pad: usize| {
        if batch >= OUTER_MIN_BATCH {
            rows_pad.checked_mul(batch.checked_next_multiple_of(16)?)
        } else {
            Some(0)
        }
    };
    let n = match path(t, mask) {
        Path::Dense => outer(cols)?,
        Path::Reference => 0,
        Path::Blocks { c, .. } => {
            // Narrow blocks at small batches: each block column's inputs repeated to 16 lanes.
            let repeated = if batch < OUTER_MIN_BATCH {
                batch.checked_mul(cols.div_ceil(c))?.checked_mul(16)?
            } else {
                0
            };
            padded_input(c)?
                .checked_add(outer(round_up(cols, c))?)?
                .checked_add(repeated)?
        }
        // Batch-major: the inputs transposed, eight rows' sign words (two f32 each), and those
        // rows written out.
        Path::Signed if batch >= OUTER_MIN_BATCH => (cols.checked_mul(batch.checked_next_multiple_of(16)?)?)
            .checked_next_multiple_of(16)?
            .checked_add(round_up(2 * words * kernels::OUTER_ROWS, 16))?
            .checked_add(kernels::OUTER_ROWS.checked_mul(cols)?)?,
        // The row's sign words (two f32 each); on x86_64 also the subset-sum tables of the
        // AVX-512 kernel.
        Path::Signed => round_up(2 * words, 16).checked_add(if cfg!(target_arch = "x86_64") {
            words.checked_mul(LUT_F32_PER_WORD)?
        } else {
            0
        })?,
        Path::SignedBlocks { c, .. } => padded_input(c)?.checked_add(batch.checked_mul(cols.div_ceil(c))?)?,
        Path::Generated => cols,
        // The inputs transposed (batch-major only), and eight rows written out; on x86_64 also
        // the AVX-512 lookup kernel's tables and the sign words cut into halves.
        Path::StoredSigns => outer(cols)?
            .checked_add(kernels::OUTER_ROWS.checked_mul(cols)?)?
            .checked_add(if cfg!(target_arch = "x86_64") {
                words.checked_mul(LUT_F32_PER_WORD + 32)?
            } else {
                0
            })?,
    };
    Some(round_up(n, 16))
}

/// `y[b·y_batch + o·y_row] = Σ_c W'[o, c] · x[b·x_stride + c]` for every output row `o` and input
/// `b`, `W'` the weights of `t` with `mask` applied. `work` holds [`work_len`] f32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matvec(
    isa: Isa,
    t: &Tensor<'_>,
    mask: Option<&Mask<'_>>,
    x: &[f32],
    y: &mut [f32],
    io: Io,
    work: &mut [f32],
    layer: u32,
) -> Result<(), Error> {
    let bad = Error::Inconsistent { layer };
    let (rows, cols) = t.matrix();
    let (rows, cols) = (
        usize::try_from(rows).map_err(|_| bad.clone())?,
        usize::try_from(cols).map_err(|_| bad.clone())?,
    );
    if io.batch == 0 || rows == 0 {
        return Ok(());
    }
    // Every kernel reads inputs (b, c < cols) and writes outputs (b, o < rows): check both ends.
    let x_need = (io.batch - 1) * io.x_stride + cols;
    let y_need = (io.batch - 1) * io.y_batch + (rows - 1) * io.y_row + 1;
    if x.len() < x_need || y.len() < y_need || work.len() < work_len(t, mask, io.batch).ok_or(bad.clone())? {
        return Err(bad);
    }
    if let Some(m) = mask {
        let (br, bc) = (m.block[0] as u64, m.block[1] as u64);
        if m.grid != ((rows as u64).div_ceil(br), (cols as u64).div_ceil(bc)) {
            return Err(bad);
        }
    }
    let words = cols.div_ceil(64);
    let element_mask = |m: Option<&Mask<'_>>| -> Result<*const u64, Error> {
        match m {
            None => Ok(core::ptr::null()),
            Some(m) => match m.as_words() {
                Some(w) if w.len() >= rows * words && m.words_per_row as usize == words => Ok(w.as_ptr()),
                _ => Err(Error::Inconsistent { layer }),
            },
        }
    };
    let geometry = Rows {
        rows,
        cols,
        w_stride: cols,
        mask_stride: words,
        batch: io.batch,
        x_stride: io.x_stride,
        y_batch: io.y_batch,
        y_row: io.y_row,
    };
    match path(t, mask) {
        Path::Dense if io.batch >= OUTER_MIN_BATCH => {
            let m = element_mask(mask)?;
            let n = rows * cols;
            let bp = round_up(io.batch, lanes(isa));
            transpose(x, io, cols, cols, bp, work);
            let xt = work.as_ptr();
            let yp = y.as_mut_ptr();
            match t.storage {
                Storage::F32 => {
                    let w = t.as_f32().filter(|w| w.len() >= n).ok_or(bad)?;
                    // SAFETY: `isa` is available; the weights hold rows·cols values, `xt` holds
                    // cols·bp (work_len sized it), outputs are inside `y` (checked above).
                    unsafe { on_isa!(isa, dense_outer(w.as_ptr(), m, geometry, xt, yp)) }
                }
                Storage::F16 => {
                    let w = t.as_u16().filter(|w| w.len() >= n).ok_or(bad)?;
                    // SAFETY: as above; `F16` is a transparent u16.
                    unsafe { on_isa!(isa, dense_outer(w.as_ptr().cast::<F16>(), m, geometry, xt, yp)) }
                }
                Storage::Bf16 => {
                    let w = t.as_u16().filter(|w| w.len() >= n).ok_or(bad)?;
                    // SAFETY: as above; `Bf16` is a transparent u16.
                    unsafe { on_isa!(isa, dense_outer(w.as_ptr().cast::<Bf16>(), m, geometry, xt, yp)) }
                }
                Storage::Seeded(_) | Storage::Signs { .. } => return Err(bad),
            }
        }
        Path::Dense => {
            let m = element_mask(mask)?;
            let n = rows * cols;
            match t.storage {
                Storage::F32 => {
                    let w = t.as_f32().filter(|w| w.len() >= n).ok_or(bad)?;
                    // SAFETY: `isa` is available (the plan's invariant); weights, mask, inputs and
                    // outputs hold what the geometry reads and writes (checked above).
                    unsafe { on_isa!(isa, dense_rows(w.as_ptr(), m, geometry, x.as_ptr(), y.as_mut_ptr())) }
                }
                Storage::F16 => {
                    let w = t.as_u16().filter(|w| w.len() >= n).ok_or(bad)?;
                    // SAFETY: as above; `F16` is a transparent u16.
                    unsafe {
                        on_isa!(
                            isa,
                            dense_rows(w.as_ptr().cast::<F16>(), m, geometry, x.as_ptr(), y.as_mut_ptr())
                        )
                    }
                }
                Storage::Bf16 => {
                    let w = t.as_u16().filter(|w| w.len() >= n).ok_or(bad)?;
                    // SAFETY: as above; `Bf16` is a transparent u16.
                    unsafe {
                        on_isa!(
                            isa,
                            dense_rows(w.as_ptr().cast::<Bf16>(), m, geometry, x.as_ptr(), y.as_mut_ptr())
                        )
                    }
                }
                Storage::Seeded(_) | Storage::Signs { .. } => return Err(bad),
            }
        }
        Path::Blocks { r, c } => match t.storage {
            Storage::F32 => blocks(
                isa,
                t,
                mask,
                t.as_f32().ok_or(bad)?,
                r,
                c,
                rows,
                cols,
                x,
                y,
                io,
                work,
                layer,
            )?,
            Storage::F16 => {
                let w: &[F16] = bytemuck_u16(t.as_u16().ok_or(bad)?);
                blocks(isa, t, mask, w, r, c, rows, cols, x, y, io, work, layer)?
            }
            Storage::Bf16 => {
                let w: &[Bf16] = bytemuck_u16(t.as_u16().ok_or(bad)?);
                blocks(isa, t, mask, w, r, c, rows, cols, x, y, io, work, layer)?
            }
            Storage::Seeded(_) | Storage::Signs { .. } => return Err(bad),
        },
        Path::Signed if io.batch >= OUTER_MIN_BATCH => {
            // Many inputs: write eight rows out at a time and run them batch-major, so that
            // the signs are made once per row, not once per input.
            let Storage::Seeded(init) = t.storage else {
                return Err(bad);
            };
            let key = init.key();
            let m = element_mask(mask)?;
            let bp = round_up(io.batch, lanes(isa));
            let (xt, rest) = work.split_at_mut(round_up(cols * bp, 16));
            transpose(x, io, cols, cols, bp, xt);
            let (sign_area, rest) = rest.split_at_mut(round_up(2 * words * kernels::OUTER_ROWS, 16));
            let signs: &mut [u64] = bytemuck::try_cast_slice_mut(&mut sign_area[..2 * words * kernels::OUTER_ROWS])
                .map_err(|_| bad.clone())?;
            let panel = rest.get_mut(..kernels::OUTER_ROWS * cols).ok_or(bad.clone())?;
            let mut o0 = 0;
            while o0 < rows {
                let rn = kernels::OUTER_ROWS.min(rows - o0);
                // SAFETY: `isa` is available and `signs` holds at least rn·words words.
                unsafe {
                    on_isa!(
                        isa,
                        fill_draws(key, (o0 * words) as u64, 1, signs.as_mut_ptr(), rn * words)
                    )
                };
                let mo = if m.is_null() { m } else { m.wrapping_add(o0 * words) };
                let g = Rows { rows: rn, ..geometry };
                // SAFETY: `isa` is available; `signs` and the mask rows hold rn·words words,
                // `panel` rn·cols values, `xt` cols·bp; rows o0 .. o0 + rn of `y` are inside it.
                unsafe {
                    on_isa!(
                        isa,
                        signed_panel(signs.as_ptr(), mo, rn, cols, init.scale, panel.as_mut_ptr())
                    );
                    on_isa!(
                        isa,
                        dense_outer(
                            panel.as_ptr(),
                            core::ptr::null(),
                            g,
                            xt.as_ptr(),
                            y.as_mut_ptr().add(o0 * io.y_row)
                        )
                    );
                }
                o0 += rn;
            }
        }
        Path::Signed => {
            let Storage::Seeded(init) = t.storage else {
                return Err(bad);
            };
            let key = init.key();
            let m = element_mask(mask)?;
            let (sign_area, rest) = work.split_at_mut(round_up(2 * words, 16));
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                let signs = simd::avx512::SignBits::Seeded(key);
                return lut_products(signs, m, rows, cols, init.scale, x, io, y, rest, layer);
            }
            let _ = rest; // only the AVX-512 kernel above uses the space after the signs
            let signs: &mut [u64] =
                bytemuck::try_cast_slice_mut(&mut sign_area[..2 * words]).map_err(|_| bad.clone())?;
            // SAFETY: as for the dense path; `signs` holds one row of words, the mask (when
            // present) every row's, and `y` every row's outputs.
            unsafe {
                on_isa!(
                    isa,
                    signed_rows(
                        key,
                        0,
                        signs.as_mut_ptr(),
                        m,
                        geometry,
                        x.as_ptr(),
                        init.scale,
                        y.as_mut_ptr()
                    )
                )
            }
        }
        Path::SignedBlocks { r, c } => {
            let Storage::Seeded(init) = t.storage else {
                return Err(bad);
            };
            let mask = mask.ok_or(bad.clone())?;
            let mw = mask.as_words().ok_or(bad.clone())?;
            let grid_cols = cols.div_ceil(c);
            let (xp, xs, rest) = padded(x, io, cols, c, work);
            let sums = &mut rest[..io.batch * grid_cols];
            for b in 0..io.batch {
                for gc in 0..grid_cols {
                    sums[b * grid_cols + gc] = xp[b * xs + gc * c..b * xs + ((gc + 1) * c).min(cols)].iter().sum();
                }
            }
            let key = init.key();
            let mwpr = mask.words_per_row as usize;
            for gr in 0..rows.div_ceil(r) {
                let row_words = mw.get(gr * mwpr..(gr + 1) * mwpr).ok_or(bad.clone())?;
                let set = SetBits::new(row_words, grid_cols, gr * grid_cols);
                let g = block_geometry([r, c], rows, cols, gr, io, xs);
                let yp = y[gr * r * io.y_row..].as_mut_ptr();
                let row0 = (gr * r) as u64;
                let kisa = block_isa(isa, c);
                // SAFETY: the padded input holds grid_cols·C values per input, the sums
                // grid_cols per input, and the block row's outputs are inside `y` (checked
                // above); `kisa` is available (AVX-512 implies AVX2).
                unsafe {
                    if c % lanes(kisa) == 0 && 64 % c == 0 {
                        on_isa!(
                            kisa,
                            signed_block_row(key, row0, set, g, xp.as_ptr(), sums.as_ptr(), init.scale, yp)
                        )
                    } else {
                        kernels::signed_block_row_plain(key, row0, set, g, xp.as_ptr(), sums.as_ptr(), init.scale, yp)
                    }
                }
            }
        }
        Path::Generated => {
            let Storage::Seeded(init) = t.storage else {
                return Err(bad);
            };
            let key = init.key();
            let row = &mut work[..cols];
            let block = mask.filter(|m| m.kind == MaskKind::Block);
            let m = if block.is_some() {
                core::ptr::null()
            } else {
                element_mask(mask)?
            };
            for o in 0..rows {
                init.fill_row(key, o as u64, row);
                if let Some(bm) = block {
                    let (br, bc) = (bm.block[0] as u64, bm.block[1] as u64);
                    for (c, v) in row.iter_mut().enumerate() {
                        if !bm.bit(o as u64 / br, c as u64 / bc) {
                            *v = 0.0;
                        }
                    }
                }
                let g = Rows { rows: 1, ..geometry };
                let mo = if m.is_null() { m } else { m.wrapping_add(o * words) };
                // SAFETY: as for the dense path, with one generated row of `cols` weights.
                unsafe {
                    on_isa!(
                        isa,
                        dense_rows(row.as_ptr(), mo, g, x.as_ptr(), y.as_mut_ptr().add(o * io.y_row))
                    )
                }
            }
        }
        Path::StoredSigns => {
            let Storage::Signs { scale } = t.storage else {
                return Err(bad);
            };
            let signs = t
                .as_sign_words()
                .filter(|s| s.len() >= rows * words)
                .ok_or(bad.clone())?;
            let m = element_mask(mask)?;
            let outer = io.batch >= OUTER_MIN_BATCH;
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 && !outer {
                // Few inputs: the seeded kernel's table lookup, reading the stored words.
                let (halves, rest) = work.split_at_mut_checked(32 * words).ok_or(bad.clone())?;
                let signs = simd::avx512::SignBits::Stored {
                    words: signs.as_ptr(),
                    halves: bytemuck::cast_slice_mut::<f32, u32>(halves).as_mut_ptr(),
                };
                return lut_products(signs, m, rows, cols, scale, x, io, y, rest, layer);
            }
            let (xt, rest) = if outer {
                let bp = round_up(io.batch, lanes(isa));
                let (xt, rest) = work.split_at_mut(round_up(cols * bp, 16));
                transpose(x, io, cols, cols, bp, xt);
                (&xt[..], rest)
            } else {
                (&[][..], work)
            };
            let panel = rest.get_mut(..kernels::OUTER_ROWS * cols).ok_or(bad.clone())?;
            let mut o0 = 0;
            while o0 < rows {
                let rn = kernels::OUTER_ROWS.min(rows - o0);
                let mo = if m.is_null() { m } else { m.wrapping_add(o0 * words) };
                let g = Rows { rows: rn, ..geometry };
                // SAFETY: `isa` is available; `signs` and the mask (when present) hold every
                // row's words, so rows o0 .. o0 + rn are inside them; `panel` holds rn·cols
                // values; `xt` (batch-major) holds cols·bp; rows o0 .. o0 + rn of every input's
                // outputs are inside `y` (checked above).
                unsafe {
                    on_isa!(
                        isa,
                        signed_panel(signs.as_ptr().add(o0 * words), mo, rn, cols, scale, panel.as_mut_ptr())
                    );
                    if outer {
                        on_isa!(
                            isa,
                            dense_outer(
                                panel.as_ptr(),
                                core::ptr::null(),
                                g,
                                xt.as_ptr(),
                                y.as_mut_ptr().add(o0 * io.y_row)
                            )
                        );
                    } else {
                        on_isa!(
                            isa,
                            dense_rows(
                                panel.as_ptr(),
                                core::ptr::null(),
                                g,
                                x.as_ptr(),
                                y.as_mut_ptr().add(o0 * io.y_row)
                            )
                        );
                    }
                }
                o0 += rn;
            }
        }
        Path::Reference => {
            for b in 0..io.batch {
                for o in 0..rows {
                    let mut acc = 0f32;
                    for c in 0..cols {
                        if mask.is_none_or(|m| m.keeps(o as u64, c as u64)) {
                            acc += t.value(o as u64, c as u64) * x[b * io.x_stride + c];
                        }
                    }
                    y[b * io.y_batch + o * io.y_row] = acc;
                }
            }
        }
    }
    Ok(())
}

/// Signed rows for each input by AVX-512 table lookup (seeded or stored signs): the subset
/// sums of the input, then sixteen rows a lookup. `work` holds the tables and the mask's
/// halves; `m` is the element mask or null. Stored signs must hold `rows · words` words and
/// their halves `32 · words` (the caller's).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn lut_products(
    signs: simd::avx512::SignBits,
    m: *const u64,
    rows: usize,
    cols: usize,
    scale: f32,
    x: &[f32],
    io: Io,
    y: &mut [f32],
    work: &mut [f32],
    layer: u32,
) -> Result<(), Error> {
    let bad = Error::Inconsistent { layer };
    let words = cols.div_ceil(64);
    let (tables, rest) = work.split_at_mut_checked(words * 256).ok_or(bad.clone())?;
    let mask_t: &mut [u32] = bytemuck::cast_slice_mut(rest.get_mut(..32 * words).ok_or(bad)?);
    for b in 0..io.batch {
        let xb = &x[b * io.x_stride..b * io.x_stride + cols];
        // SAFETY: AVX-512 is available (the plan checked the ISA); `tables` holds words·256
        // values, `mask_t` 32·words halves, `xb` cols; the mask (when present) and stored signs
        // hold rows·words words (the caller checked), and every output row of input b is inside
        // `y` (`matvec` checked).
        unsafe {
            simd::avx512::subset_sums(xb.as_ptr(), cols, words, tables.as_mut_ptr());
            simd::avx512::signed_rows_lut(
                signs,
                rows,
                words,
                m,
                words,
                mask_t.as_mut_ptr(),
                tables.as_ptr(),
                xb.iter().sum(),
                scale,
                y.as_mut_ptr().add(b * io.y_batch),
                io.y_row,
            );
        }
    }
    Ok(())
}

fn bytemuck_u16<E: Elem>(w: &[u16]) -> &[E] {
    // Only called with the transparent u16 wrappers.
    debug_assert_eq!(core::mem::size_of::<E>(), 2);
    // SAFETY: `E` is `F16` or `Bf16`, `#[repr(transparent)]` over `u16`: same size, alignment
    // and validity, so the slice reinterprets exactly.
    unsafe { core::slice::from_raw_parts(w.as_ptr().cast::<E>(), w.len()) }
}

/// The input with each vector padded with zeros to whole `c`-wide block columns: `x` itself
/// when `cols` is a multiple of `c`, else a copy in `work`. Returns the input, its stride and
/// what is left of `work`.
fn padded<'w>(x: &'w [f32], io: Io, cols: usize, c: usize, work: &'w mut [f32]) -> (&'w [f32], usize, &'w mut [f32]) {
    if cols.is_multiple_of(c) {
        return (x, io.x_stride, work);
    }
    let stride = round_up(cols, c);
    let (pad, rest) = work.split_at_mut(io.batch * stride);
    for b in 0..io.batch {
        let dst = &mut pad[b * stride..(b + 1) * stride];
        dst[..cols].copy_from_slice(&x[b * io.x_stride..b * io.x_stride + cols]);
        dst[cols..].fill(0.0);
    }
    (pad, stride, rest)
}

/// The set bits of one block row's mask words, as `(block column, tile number)`.
#[derive(Clone, Debug)]
struct SetBits<'a> {
    words: &'a [u64],
    word: usize,
    bits: u64,
    grid_cols: usize,
    tile0: usize,
}

impl<'a> SetBits<'a> {
    fn new(words: &'a [u64], grid_cols: usize, tile0: usize) -> Self {
        Self {
            words,
            word: 0,
            bits: words.first().copied().unwrap_or(0),
            grid_cols,
            tile0,
        }
    }
}

impl Iterator for SetBits<'_> {
    type Item = (usize, usize);
    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        while self.bits == 0 {
            self.word += 1;
            self.bits = *self.words.get(self.word)?;
        }
        let gc = self.word * 64 + self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        // Padding bits past the grid are zero in a verified file; stop at them in any file.
        (gc < self.grid_cols).then_some((gc, self.tile0 + gc))
    }
}

/// Every block of a row: a tile-major matrix without a mask.
#[derive(Clone, Debug)]
struct AllBlocks {
    gc: usize,
    grid_cols: usize,
    tile0: usize,
}

impl Iterator for AllBlocks {
    type Item = (usize, usize);
    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        (self.gc < self.grid_cols).then(|| {
            self.gc += 1;
            (self.gc - 1, self.tile0 + self.gc - 1)
        })
    }
}

/// The kept blocks of a packed block row, from its index.
#[derive(Clone, Debug)]
struct PackedBlocks<'a> {
    index: smk_format::BlockIndex<'a>,
    k: u32,
    end: u32,
    grid_cols: usize,
    stored: usize,
}

impl Iterator for PackedBlocks<'_> {
    type Item = (usize, usize);
    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.k >= self.end {
            return None;
        }
        let (k, gc) = (self.k as usize, self.index.col(self.k) as usize);
        self.k += 1;
        // The index was validated when the file was parsed; a block outside stays unread.
        (gc < self.grid_cols && k < self.stored).then_some((gc, k))
    }
}

#[allow(clippy::too_many_arguments)]
fn blocks<E: Elem>(
    isa: Isa,
    t: &Tensor<'_>,
    mask: Option<&Mask<'_>>,
    data: &[E],
    r: usize,
    c: usize,
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
    io: Io,
    work: &mut [f32],
    layer: u32,
) -> Result<(), Error> {
    let bad = Error::Inconsistent { layer };
    let (grid_rows, grid_cols) = (rows.div_ceil(r), cols.div_ceil(c));
    let area = r * c;
    let outer = io.batch >= OUTER_MIN_BATCH;
    let bp = round_up(io.batch, lanes(isa));
    let kisa = block_isa(isa, c);
    let narrow = !outer && !c.is_multiple_of(lanes(kisa)) && kernels::narrow_fits(r, c, lanes(isa));
    // Only the row kernels read the input in place: the other two paths make their own copy.
    let (xp, xs, rest) = if outer || narrow {
        (x, io.x_stride, work)
    } else {
        padded(x, io, cols, c, work)
    };
    if outer {
        transpose(x, io, cols, grid_cols * c, bp, rest);
    } else if narrow {
        // Each block column's C inputs, repeated to fill a vector (zeros past `cols`).
        let w = lanes(isa);
        let rep = &mut rest[..io.batch * grid_cols * w];
        for b in 0..io.batch {
            for gc in 0..grid_cols {
                for l in 0..w {
                    let col = gc * c + l % c;
                    rep[(b * grid_cols + gc) * w + l] = if col < cols { x[b * io.x_stride + col] } else { 0.0 };
                }
            }
        }
    }
    let xt = rest.as_ptr();
    let simd = c.is_multiple_of(lanes(kisa));
    let mask_words = match mask {
        Some(m) => Some((m.as_words().ok_or(bad.clone())?, m.words_per_row as usize)),
        None => None,
    };
    for gr in 0..grid_rows {
        let g = block_geometry([r, c], rows, cols, gr, io, xs);
        let yp = y[gr * r * io.y_row..].as_mut_ptr();
        macro_rules! run {
            ($blocks:expr) => {{
                let blocks = $blocks;
                // SAFETY: every block the iterator yields is stored in `data` (tile numbers below
                // grid_rows·grid_cols, checked against the data length; packed numbers below
                // the stored count); inputs are padded to grid_cols·C; the block row's outputs
                // are inside `y`; `kisa` is available.
                unsafe {
                    if outer {
                        // `xt` holds grid_cols·C·bp values (work_len sized it).
                        on_isa!(isa, block_outer(data.as_ptr(), blocks, g, xt, yp))
                    } else if narrow {
                        // `xt` holds the repeated inputs, batch·grid_cols·W values.
                        on_isa!(isa, narrow_block_row(data.as_ptr(), blocks, g, xt, yp))
                    } else if simd {
                        on_isa!(kisa, block_row(data.as_ptr(), blocks, g, xp.as_ptr(), yp))
                    } else {
                        kernels::block_row_plain(data.as_ptr(), blocks, g, xp.as_ptr(), yp)
                    }
                }
            }};
        }
        match t.layout {
            Layout::TileMajor { .. } => {
                if data.len() < grid_rows * grid_cols * area {
                    return Err(bad);
                }
                match mask_words {
                    Some((w, wpr)) if simd && !outer && !narrow && gr + 1 < grid_rows => {
                        // Scattered tiles: the next block row's first ones are asked for now.
                        let next = SetBits::new(
                            w.get((gr + 1) * wpr..(gr + 2) * wpr).ok_or(bad.clone())?,
                            grid_cols,
                            (gr + 1) * grid_cols,
                        );
                        let bytes = (r.min(16) * c * core::mem::size_of::<E>()).min(area * core::mem::size_of::<E>());
                        // SAFETY: `kisa` is available; prefetching never faults.
                        unsafe { on_isa!(kisa, prefetch_tiles(data.as_ptr(), next, area, bytes)) };
                        run!(SetBits::new(
                            w.get(gr * wpr..(gr + 1) * wpr).ok_or(bad.clone())?,
                            grid_cols,
                            gr * grid_cols
                        ))
                    }
                    Some((w, wpr)) => run!(SetBits::new(
                        w.get(gr * wpr..(gr + 1) * wpr).ok_or(bad.clone())?,
                        grid_cols,
                        gr * grid_cols
                    )),
                    None => run!(AllBlocks {
                        gc: 0,
                        grid_cols,
                        tile0: gr * grid_cols
                    }),
                }
            }
            Layout::Packed { index, .. } => {
                let range = index.row_range(gr as u32);
                run!(PackedBlocks {
                    index,
                    k: range.start,
                    end: range.end,
                    grid_cols,
                    stored: data.len() / area
                })
            }
            Layout::RowMajor => return Err(bad),
        }
    }
    Ok(())
}
