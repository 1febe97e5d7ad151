//! Data: IDX (MNIST format, raw or gzip) and CIFAR-10 binary loaders, and the continual-learning
//! task families (permuted, rotated, split).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::{stream, Rng};

/// Images as f32 in [0, 1], `[N, C, H, W]` row-major, with labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Pixel values, `N·C·H·W`.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// `[C, H, W]` of one image.
    pub shape: [usize; 3],
    /// Number of classes the labels range over.
    pub classes: usize,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether it holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            classes: self.classes,
        }
    }
}

/// Which half of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training files.
    Train,
    /// The test files.
    Test,
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes: returns its dims and data.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 {
        return Err(Error::data(
            path,
            format!("{} bytes is too short for an IDX header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::data(path, "not an IDX file (the first two bytes must be zero)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::data(
            path,
            format!("IDX element type {:#04x} is not unsigned bytes (0x08)", bytes[2]),
        ));
    }
    let rank = bytes[3] as usize;
    if rank == 0 || rank > 4 {
        return Err(Error::data(path, format!("IDX rank {rank} is not 1 to 4")));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(Error::data(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::data(path, "IDX dims overflow"))?;
    let body = &bytes[header..];
    if body.len() != n {
        return Err(Error::data(
            path,
            format!(
                "IDX header promises {n} values ({dims:?}) but the file holds {}",
                body.len()
            ),
        ));
    }
    Ok((dims, body.to_vec()))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::data(
        &dir.join(stem),
        "not found (looked for it with and without .gz)",
    ))
}

/// Loads MNIST-format IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-…`) from `dir`.
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let ipath = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, pixels) = parse_idx(&ipath, &read_maybe_gz(&ipath)?)?;
    let (ldims, labels) = parse_idx(&lpath, &read_maybe_gz(&lpath)?)?;
    if idims.len() != 3 {
        return Err(Error::data(
            &ipath,
            format!("images must be a rank-3 IDX array, found dims {idims:?}"),
        ));
    }
    if idims[1] == 0 || idims[2] == 0 {
        return Err(Error::data(
            &ipath,
            format!("images of {}×{} pixels", idims[1], idims[2]),
        ));
    }
    if ldims.len() != 1 || ldims[0] != idims[0] {
        return Err(Error::data(
            &lpath,
            format!("{:?} labels for {} images", ldims, idims[0]),
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l > 9) {
        return Err(Error::data(&lpath, format!("label {bad} is not a digit 0..9")));
    }
    Ok(Dataset {
        images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: labels.iter().map(|&l| l as u32).collect(),
        shape: [1, idims[1], idims[2]],
        classes: 10,
    })
}

/// Loads CIFAR-10 in its binary format (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`:
/// records of one label byte and 3,072 pixel bytes, channel-major 3×32×32).
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let path = dir.join(&f);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        const RECORD: usize = 1 + 3 * 32 * 32;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::data(
                &path,
                format!(
                    "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                    bytes.len()
                ),
            ));
        }
        for rec in bytes.chunks_exact(RECORD) {
            if rec[0] > 9 {
                return Err(Error::data(&path, format!("label {} is not a class 0..9", rec[0])));
            }
            labels.push(rec[0] as u32);
            images.extend(rec[1..].iter().map(|&p| p as f32 / 255.0));
        }
    }
    Ok(Dataset {
        images,
        labels,
        shape: [3, 32, 32],
        classes: 10,
    })
}

/// Loads a data set by name: `mnist` (IDX files) or `cifar10` (binary batches).
pub fn load(kind: DataKind, dir: &Path, split: Split) -> Result<Dataset> {
    match kind {
        DataKind::Mnist => load_mnist(dir, split),
        DataKind::Cifar10 => load_cifar10(dir, split),
    }
}

/// The format of a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// MNIST-style IDX files.
    Mnist,
    /// CIFAR-10 binary batches.
    Cifar10,
}

/// A family of tasks built from one data set (SupSup's definitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskFamily {
    /// Task k permutes the pixels with a fixed random permutation (task 0 too).
    Permuted(usize),
    /// Task k rotates every image by `k · 360° / N`.
    Rotated(usize),
    /// The classes split into N equal groups; task k keeps group k, labels renumbered from 0.
    Split(usize),
}

impl std::str::FromStr for TaskFamily {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, n) = s
            .split_once(':')
            .ok_or_else(|| format!("task '{s}' must look like permuted:N, rotated:N or split:N"))?;
        let n: usize = n.parse().map_err(|_| format!("task count '{n}' is not a number"))?;
        if n == 0 {
            return Err("a task family needs at least one task".into());
        }
        match kind {
            "permuted" => Ok(Self::Permuted(n)),
            "rotated" => Ok(Self::Rotated(n)),
            "split" => Ok(Self::Split(n)),
            _ => Err(format!("unknown task family '{kind}' (permuted, rotated or split)")),
        }
    }
}

impl std::fmt::Display for TaskFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Permuted(n) => write!(f, "permuted:{n}"),
            Self::Rotated(n) => write!(f, "rotated:{n}"),
            Self::Split(n) => write!(f, "split:{n}"),
        }
    }
}

impl TaskFamily {
    /// Number of tasks.
    pub fn count(&self) -> usize {
        match *self {
            Self::Permuted(n) | Self::Rotated(n) | Self::Split(n) => n,
        }
    }

    /// Task `k` of `data`; `seed` fixes the permutations.
    pub fn task(&self, data: &Dataset, k: usize, seed: u64) -> Result<Dataset> {
        if k >= self.count() {
            return Err(Error::Config(format!("task index {k} is out of range for {self}")));
        }
        match *self {
            Self::Permuted(_) => {
                let perm = Rng::new(seed, stream::TASKS + k as u64).permutation(data.image_len());
                let mut out = data.clone();
                for (i, img) in out.images.chunks_mut(data.image_len()).enumerate() {
                    let src = data.image(i);
                    for (dst, &p) in img.iter_mut().zip(&perm) {
                        *dst = src[p];
                    }
                }
                Ok(out)
            }
            Self::Rotated(n) => {
                let degrees = 360.0 * k as f32 / n as f32;
                let mut out = data.clone();
                let [c, h, w] = data.shape;
                for (i, img) in out.images.chunks_mut(data.image_len()).enumerate() {
                    for ch in 0..c {
                        let plane = &data.image(i)[ch * h * w..(ch + 1) * h * w];
                        rotate(plane, h, w, degrees, &mut img[ch * h * w..(ch + 1) * h * w]);
                    }
                }
                Ok(out)
            }
            Self::Split(n) => {
                if !data.classes.is_multiple_of(n) {
                    return Err(Error::Config(format!(
                        "{} classes do not split into {n} equal groups",
                        data.classes
                    )));
                }
                let per = data.classes / n;
                let lo = (k * per) as u32;
                let keep: Vec<usize> = (0..data.len())
                    .filter(|&i| (lo..lo + per as u32).contains(&data.labels[i]))
                    .collect();
                let mut out = data.subset(&keep);
                for l in &mut out.labels {
                    *l -= lo;
                }
                out.classes = per;
                Ok(out)
            }
        }
    }
}

/// Rotates an `h × w` plane by `degrees` counter-clockwise about its centre, bilinear, zero fill.
pub fn rotate(src: &[f32], h: usize, w: usize, degrees: f32, dst: &mut [f32]) {
    let (s, c) = (degrees.to_radians() as f64).sin_cos();
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let at = |y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            0.0
        } else {
            src[y as usize * w + x as usize] as f64
        }
    };
    for y in 0..h {
        for x in 0..w {
            // Inverse map: where in the source does this output pixel come from.
            let (dy, dx) = (y as f64 - cy, x as f64 - cx);
            let sx = c * dx - s * dy + cx;
            let sy = s * dx + c * dy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let v = at(y0, x0) * (1.0 - fx) * (1.0 - fy)
                + at(y0, x0 + 1) * fx * (1.0 - fy)
                + at(y0 + 1, x0) * (1.0 - fx) * fy
                + at(y0 + 1, x0 + 1) * fx * fy;
            dst[y * w + x] = v as f32;
        }
    }
}

/// The bundled digits: `data/mnist-8k` beside the workspace root, found from the current
/// directory or the executable's location.
pub fn default_data_dir() -> PathBuf {
    let candidates = [
        PathBuf::from("data"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("train-images-idx3-ubyte.gz").exists())
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Writes every task of `family` over `ds` as gzipped IDX files in `out`:
/// `task-K-images-idx3-ubyte.gz` (pixels back to bytes, `[N, H, W]`, or `[N, C, H, W]` for
/// colour) and `task-K-labels-idx1-ubyte.gz`, K from 0, each file atomically. Returns the number
/// of examples of each task.
pub fn write_tasks(family: &TaskFamily, ds: &Dataset, seed: u64, out: &Path) -> Result<Vec<usize>> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut counts = Vec::with_capacity(family.count());
    for k in 0..family.count() {
        let t = family.task(ds, k, seed)?;
        let [c, h, w] = t.shape;
        let mut dims = vec![t.len() as u32];
        if c != 1 {
            dims.push(c as u32);
        }
        dims.extend([h as u32, w as u32]);
        // Rotations interpolate: their pixels round to the nearest byte.
        let pixels: Vec<u8> = t
            .images
            .iter()
            .map(|&p| (p * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        let labels: Vec<u8> = t
            .labels
            .iter()
            .map(|&l| u8::try_from(l).map_err(|_| Error::Config(format!("label {l} does not fit an IDX byte"))))
            .collect::<Result<_>>()?;
        write_idx_gz(&out.join(format!("task-{k}-images-idx3-ubyte.gz")), &dims, &pixels)?;
        write_idx_gz(
            &out.join(format!("task-{k}-labels-idx1-ubyte.gz")),
            &[t.len() as u32],
            &labels,
        )?;
        counts.push(t.len());
    }
    Ok(counts)
}

/// One gzipped IDX file of unsigned bytes, written atomically.
fn write_idx_gz(path: &Path, dims: &[u32], body: &[u8]) -> Result<()> {
    let mut raw = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        raw.extend_from_slice(&d.to_be_bytes());
    }
    raw.extend_from_slice(body);
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).map_err(io)?;
    smk_format::writer::write_atomic(path, &gz.finish().map_err(io)?).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn idx_parses_and_refuses_bad_files() {
        let p = Path::new("x");
        let (dims, body) = parse_idx(p, &idx(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!((dims, body), (vec![2, 3], vec![1, 2, 3, 4, 5, 6]));
        for (bad, what) in [
            (idx(&[2, 3], &[1, 2, 3]), "holds 3"),
            (vec![0, 0, 8], "too short"),
            (vec![1, 0, 8, 1, 0, 0, 0, 0], "not an IDX"),
            (vec![0, 0, 0x0D, 1, 0, 0, 0, 0], "element type"),
            (vec![0, 0, 8, 9], "rank 9"),
            (vec![0, 0, 8, 2, 0, 0, 0, 1], "truncated"),
        ] {
            let e = parse_idx(p, &bad).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains('x'), "{e}");
        }
    }

    #[test]
    fn bundled_digits_load_with_counts_from_the_headers() {
        let dir = default_data_dir();
        let train = load_mnist(&dir, Split::Train).unwrap();
        let test = load_mnist(&dir, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (7001, 999));
        assert_eq!(train.shape, [1, 28, 28]);
        assert!(train.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
        let mut seen = [0usize; 10];
        for &l in &test.labels {
            seen[l as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }

    #[test]
    fn gzip_and_raw_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let body = idx(&[1], &[7]);
        std::fs::write(dir.path().join("raw"), &body).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &body).unwrap();
        std::fs::write(dir.path().join("gz"), gz.finish().unwrap()).unwrap();
        assert_eq!(
            read_maybe_gz(&dir.path().join("raw")).unwrap(),
            read_maybe_gz(&dir.path().join("gz")).unwrap()
        );
        std::fs::write(dir.path().join("bad"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(read_maybe_gz(&dir.path().join("bad"))
            .unwrap_err()
            .to_string()
            .contains("gzip"));
    }

    #[test]
    fn cifar_loader_reads_generated_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![3u8];
        rec.extend((0..3072).map(|i| (i % 256) as u8));
        let two: Vec<u8> = rec.iter().chain(rec.iter()).copied().collect();
        for i in 1..=5 {
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &two).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), &rec).unwrap();
        let train = load_cifar10(dir.path(), Split::Train).unwrap();
        assert_eq!((train.len(), train.shape), (10, [3, 32, 32]));
        assert_eq!(train.labels[0], 3);
        assert_eq!(train.image(1)[255], 1.0);
        std::fs::write(dir.path().join("test_batch.bin"), &rec[..100]).unwrap();
        let e = load_cifar10(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin") && e.contains("records"), "{e}");
    }

    fn tiny() -> Dataset {
        Dataset {
            images: (0..4 * 9).map(|i| i as f32).collect(),
            labels: vec![0, 1, 2, 3],
            shape: [1, 3, 3],
            classes: 4,
        }
    }

    #[test]
    fn tasks() {
        let d = tiny();
        let p0 = TaskFamily::Permuted(3).task(&d, 0, 1).unwrap();
        let p1 = TaskFamily::Permuted(3).task(&d, 1, 1).unwrap();
        assert_ne!(p0.images, p1.images);
        let mut sorted = p0.image(0).to_vec();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, d.image(0), "a permutation keeps the pixels");
        let s = TaskFamily::Split(2).task(&d, 1, 0).unwrap();
        assert_eq!((s.labels.clone(), s.classes), (vec![0, 1], 2));
        assert_eq!(s.image(0), d.image(2));
        let r = TaskFamily::Rotated(4).task(&d, 0, 0).unwrap();
        assert_eq!(r.images, d.images, "task 0 rotates by 0°");
        let r1 = TaskFamily::Rotated(4).task(&d, 1, 0).unwrap();
        // 90° counter-clockwise: the top-right pixel moves to the top-left.
        assert!((r1.image(0)[0] - d.image(0)[2]).abs() < 1e-5, "{:?}", r1.image(0));
        assert!("split:3".parse::<TaskFamily>().is_ok() && "bogus:1".parse::<TaskFamily>().is_err());
        assert!(
            TaskFamily::Split(3).task(&d, 0, 0).is_err(),
            "4 classes do not split in 3"
        );
    }
}
