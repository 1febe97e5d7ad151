//! Small data for the trainer's end-to-end tests.
#![allow(dead_code)]

use std::path::Path;

use smk_trainer::data::{default_data_dir, load_mnist, Dataset, Split};
use smk_trainer::train::FitOptions;

/// Options for tests: no progress bar.
pub const QUIET: FitOptions = FitOptions {
    resume: false,
    quiet: true,
    stop_after: None,
    profile: false,
};

fn write_idx(path: &Path, dims: &[u32], body: &[u8]) {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    std::fs::write(path, v).unwrap();
}

fn write_split(dir: &Path, prefix: &str, ds: &Dataset, n: usize) {
    let pixels: Vec<u8> = ds.images[..n * 784]
        .iter()
        .map(|&p| (p * 255.0).round() as u8)
        .collect();
    let labels: Vec<u8> = ds.labels[..n].iter().map(|&l| l as u8).collect();
    write_idx(
        &dir.join(format!("{prefix}-images-idx3-ubyte")),
        &[n as u32, 28, 28],
        &pixels,
    );
    write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[n as u32], &labels);
}

/// 600 training and 200 test digits, raw IDX (the loader reads raw and gzip alike).
pub fn small_data(dir: &Path) {
    let src = default_data_dir();
    write_split(dir, "train", &load_mnist(&src, Split::Train).unwrap(), 600);
    write_split(dir, "t10k", &load_mnist(&src, Split::Test).unwrap(), 200);
}

/// [`small_data`] in `dir/data`, which it creates; returns that directory.
pub fn small_data_in(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    small_data(&data);
    data
}
