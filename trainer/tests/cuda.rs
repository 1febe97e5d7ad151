//! The trainer on CUDA (feature `cuda`). With one seed, a network built on the GPU starts from
//! exactly the weights and scores it has on the CPU (they are drawn on the host by smk's
//! generator), and a short run on each device ends with test accuracies within noise of each
//! other. Where no GPU answers (CI builds this against a stub driver), each test says so and
//! returns: the GPU run is owed to a machine that has one (`scripts/gpu-check.sh`).
#![cfg(feature = "cuda")]

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::small_data;
use smk_trainer::config::{FitConfig, MethodKind};
use smk_trainer::model::Net;
use smk_trainer::train::{fit, FitOptions};

const METHODS: [MethodKind; 6] = [
    MethodKind::Dense,
    MethodKind::Piggyback,
    MethodKind::EdgePopup,
    MethodKind::Block,
    MethodKind::MovementHard,
    MethodKind::MovementSoft,
];

const QUIET: FitOptions = FitOptions {
    resume: false,
    quiet: true,
    stop_after: None,
    profile: false,
};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device answers ({e})");
            None
        }
    }
}

fn config(data: &Path, method: MethodKind, device: &str) -> FitConfig {
    FitConfig {
        data: data.to_path_buf(),
        epochs: 2,
        batch_size: 64,
        device: device.into(),
        ..FitConfig::defaults(method)
    }
}

#[test]
fn same_seed_same_initial_network_on_cpu_and_gpu() {
    let Some(gpu) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    small_data(tmp.path());
    for method in METHODS {
        let cfg = config(tmp.path(), method, "cuda");
        let cpu = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
        let on_gpu = Net::build(&cfg, [1, 28, 28], 10, None, &gpu).unwrap();
        let (a, b) = (cpu.tensors(), on_gpu.tensors());
        assert_eq!(a.len(), b.len(), "{method:?}");
        for (name, t) in &a {
            let u = b[name].to_device(&Device::Cpu).unwrap();
            let (t, u) = (t.to_dtype(DType::F32).unwrap(), u.to_dtype(DType::F32).unwrap());
            let (t, u) = (
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                u.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(t == u, "{method:?}: {name} differs between CPU and GPU");
        }
    }
}

#[test]
fn short_runs_agree_on_cpu_and_gpu() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    small_data(&data);
    for method in METHODS {
        let mut accuracy = Vec::new();
        for device in ["cpu", "cuda"] {
            let dir = tmp.path().join(format!("{}-{device}", method.id()));
            let metrics = fit(&dir, config(&data, method, device), QUIET).unwrap();
            accuracy.push(metrics.last().unwrap().test_accuracy);
        }
        // 200 test digits: one digit is half a point; float sums on the GPU differ in order.
        assert!(
            (accuracy[0] - accuracy[1]).abs() <= 0.05,
            "{method:?}: CPU {:.3} against GPU {:.3}",
            accuracy[0],
            accuracy[1]
        );
    }
}
