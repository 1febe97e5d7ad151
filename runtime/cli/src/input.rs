//! Inputs from files: NumPy `.npy` (f32), PNG and PGM images, and IDX (MNIST) files, gzipped or
//! not. Every failure names the file and what is wrong.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// Reads a file, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: bad gzip data: {e}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX file of unsigned bytes: its dimensions and values.
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

impl Idx {
    /// Items (the first dimension).
    pub fn len(&self) -> usize {
        self.dims[0]
    }
    /// Values per item.
    pub fn item_len(&self) -> usize {
        self.dims[1..].iter().product()
    }
    /// Item `i`.
    pub fn item(&self, i: usize) -> &[u8] {
        let n = self.item_len();
        &self.data[i * n..(i + 1) * n]
    }
}

pub fn read_idx(path: &Path) -> Result<Idx, String> {
    let bytes = read_maybe_gz(path)?;
    let fail = |m: String| format!("{}: {m}", path.display());
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(fail("not an IDX file (bad magic)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(fail(format!(
            "IDX element type {:#04x} is not unsigned bytes (0x08)",
            bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    if !(1..=4).contains(&rank) || bytes.len() < 4 + 4 * rank {
        return Err(fail(format!(
            "IDX rank {rank} is not 1 to 4, or the header is truncated"
        )));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fail("IDX dimensions overflow".into()))?;
    let body = &bytes[4 + 4 * rank..];
    if body.len() != n {
        return Err(fail(format!(
            "IDX header promises {n} values ({dims:?}) but the file holds {}",
            body.len()
        )));
    }
    Ok(Idx {
        dims,
        data: body.to_vec(),
    })
}

/// `[C, H, W]` an image must become for a model whose input has `numel` values and shape `dims`.
pub fn image_geometry(dims: &[u32]) -> Result<(usize, usize, usize), String> {
    match dims {
        [c, h, w] => Ok((*c as usize, *h as usize, *w as usize)),
        [n] => {
            let side = (*n as f64).sqrt().round() as usize;
            if side * side == *n as usize {
                Ok((1, side, side))
            } else {
                Err(format!("the model takes {n} values, which is not a square image"))
            }
        }
        _ => Err(format!("the model's input shape {dims:?} is not an image")),
    }
}

/// A decoded image: channels (1 or 3), height, width, bytes row-major interleaved.
struct Image {
    channels: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
}

fn read_png(path: &Path) -> Result<Image, String> {
    let fail = |m: String| format!("{}: {m}", path.display());
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| fail(format!("not a readable PNG: {e}")))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| fail(format!("bad PNG data: {e}")))?;
    buf.truncate(info.buffer_size());
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    // Drop alpha; keep gray or RGB.
    let keep = match channels {
        1 | 2 => 1,
        _ => 3,
    };
    let pixels = buf.chunks(channels).flat_map(|p| p[..keep].to_vec()).collect();
    Ok(Image {
        channels: keep,
        height: h,
        width: w,
        pixels,
    })
}

/// Binary PGM (`P5`, 8-bit).
fn read_pgm(path: &Path) -> Result<Image, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fail = |m: &str| format!("{}: {m}", path.display());
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'#') {
            if bytes[i] == b'#' {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err(fail("truncated PGM header"));
        }
        fields.push(String::from_utf8_lossy(&bytes[start..i]).to_string());
    }
    if fields[0] != "P5" {
        return Err(fail("only binary PGM (P5) is read"));
    }
    let num = |s: &str| s.parse::<usize>().map_err(|_| fail("bad number in the PGM header"));
    let (w, h, max) = (num(&fields[1])?, num(&fields[2])?, num(&fields[3])?);
    if max == 0 || max > 255 {
        return Err(fail("only 8-bit PGM (maxval 1..255) is read"));
    }
    let body = bytes
        .get(i + 1..i + 1 + w * h)
        .ok_or_else(|| fail("PGM pixel data is truncated"))?;
    let pixels = body.iter().map(|&p| (p as usize * 255 / max) as u8).collect();
    Ok(Image {
        channels: 1,
        height: h,
        width: w,
        pixels,
    })
}

/// Bilinear resampling of channel `c` to `h × w`, as f32 in [0, 255].
fn resample(img: &Image, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(h * w);
    let at = |y: usize, x: usize| img.pixels[(y * img.width + x) * img.channels + c] as f32;
    for i in 0..h {
        let sy = ((i as f32 + 0.5) * img.height as f32 / h as f32 - 0.5).clamp(0.0, (img.height - 1) as f32);
        let (y0, fy) = (sy.floor() as usize, sy.fract());
        let y1 = (y0 + 1).min(img.height - 1);
        for j in 0..w {
            let sx = ((j as f32 + 0.5) * img.width as f32 / w as f32 - 0.5).clamp(0.0, (img.width - 1) as f32);
            let (x0, fx) = (sx.floor() as usize, sx.fract());
            let x1 = (x0 + 1).min(img.width - 1);
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// An image file as the model's input: converted to its channel count, resized to its height
/// and width, pixels multiplied by `pixel_scale`.
pub fn image_input(path: &Path, dims: &[u32], pixel_scale: f32) -> Result<Vec<f32>, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let img = if ext == "pgm" { read_pgm(path)? } else { read_png(path)? };
    if img.width == 0 || img.height == 0 {
        return Err(format!("{}: the image is empty", path.display()));
    }
    let (c, h, w) = image_geometry(dims)?;
    let mut out = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        let plane = if img.channels == 1 || c == 1 {
            if img.channels == 3 {
                // Luma of the RGB channels.
                let (r, g, b) = (
                    resample(&img, 0, h, w),
                    resample(&img, 1, h, w),
                    resample(&img, 2, h, w),
                );
                r.iter()
                    .zip(&g)
                    .zip(&b)
                    .map(|((r, g), b)| 0.299 * r + 0.587 * g + 0.114 * b)
                    .collect()
            } else {
                resample(&img, 0, h, w)
            }
        } else {
            resample(&img, ch.min(img.channels - 1), h, w)
        };
        out.extend(plane.into_iter().map(|v| v * pixel_scale));
    }
    Ok(out)
}

/// A `.npy` file of little-endian f32 (C order), any shape: its values.
pub fn read_npy(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fail = |m: &str| format!("{}: {m}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fail("not a .npy file (bad magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(fail(&format!(".npy version {v} is not 1, 2 or 3"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| fail("truncated .npy header"))?;
    let header = String::from_utf8_lossy(header);
    if !header.contains("'<f4'") {
        return Err(fail(
            "the array is not little-endian f32 ('<f4'); save it with dtype=np.float32",
        ));
    }
    if header.contains("'fortran_order': True") {
        return Err(fail("the array is in Fortran order; save it C-contiguous"));
    }
    let body = &bytes[start + header_len..];
    if body.len() % 4 != 0 {
        return Err(fail("the data is not a whole number of f32"));
    }
    Ok(body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
