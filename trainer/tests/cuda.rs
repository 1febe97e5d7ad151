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

/// The first GPU, or `None` (and a note) where none answers, unless `SMK_REQUIRE_GPU` is set
/// (scripts/gpu-check.sh sets it on the GPU machine, where a skip would hide a broken setup).
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("SMK_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: no CUDA device answers ({e})");
            None
        }
        Err(e) => panic!("SMK_REQUIRE_GPU is set but no CUDA device answers: {e}"),
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

/// The GPU's top-k (bisection on the device, no host round trip) gives the mask that the same
/// algorithm gives on the CPU, and, for keys without ties, the exact top-k of the host path.
#[test]
fn gpu_topk_matches_the_cpu() {
    use smk_trainer::mask::{hard_mask, topk_mask, topk_mask_device, Binarize};
    let Some(gpu) = gpu() else { return };
    let mut rng = smk_trainer::rng::Rng::new(11, 0);
    for n in [7usize, 1000, 100_003] {
        // Distinct magnitudes: a permutation's integers plus a fraction below one half.
        let values: Vec<f32> = rng
            .permutation(n)
            .into_iter()
            .map(|p| {
                let v = (p as f32 + 0.5 * rng.uniform()) / n as f32;
                if rng.next_u64() & 1 == 0 {
                    -v
                } else {
                    v
                }
            })
            .collect();
        let t = candle_core::Tensor::new(values.as_slice(), &gpu).unwrap();
        let c = candle_core::Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        for keep in [0.01, 0.1, 0.5, 0.9] {
            for abs in [false, true] {
                let on_gpu: Vec<f32> = hard_mask(&t, Binarize::TopK { keep, abs }).unwrap().to_vec1().unwrap();
                let on_cpu: Vec<f32> = topk_mask_device(&c, keep, abs).unwrap().to_vec1().unwrap();
                assert!(on_gpu == on_cpu, "n {n} keep {keep} abs {abs}");
                assert!(on_gpu == topk_mask(&values, keep, abs), "n {n} keep {keep} abs {abs}");
            }
        }
    }
}

/// `--dtype bf16` on the GPU: frozen weights are bf16 there, and a short run learns as on the
/// CPU.
#[test]
fn bf16_frozen_weights_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    small_data(&data);
    let cfg = |device: &str| FitConfig {
        dtype: smk_trainer::config::FrozenDtype::Bf16,
        ..config(&data, MethodKind::EdgePopup, device)
    };
    let net = Net::build(&cfg("cuda"), [1, 28, 28], 10, None, &gpu).unwrap();
    assert!(net
        .layers
        .iter()
        .all(|l| l.weight.dtype() == DType::BF16 && l.weight.device().is_cuda()));
    let mut accuracy = Vec::new();
    for device in ["cpu", "cuda"] {
        let metrics = fit(&tmp.path().join(device), cfg(device), QUIET).unwrap();
        accuracy.push(metrics.last().unwrap().test_accuracy);
    }
    assert!(
        accuracy[1] > 0.5 && (accuracy[0] - accuracy[1]).abs() <= 0.05,
        "CPU {:.3} against GPU {:.3}",
        accuracy[0],
        accuracy[1]
    );
}

/// `--devices 0` on a one-GPU machine goes through NCCL (one rank) and must take exactly the
/// steps of `--device cuda`: an all-reduce over one rank changes nothing.
#[cfg(feature = "nccl")]
#[test]
fn one_gpu_through_nccl_takes_the_single_device_steps() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    small_data(tmp.path());
    let cfg = config(tmp.path(), MethodKind::EdgePopup, "cuda:0");
    let single = fit(&tmp.path().join("single"), cfg.clone(), QUIET).unwrap();
    let ranked = FitConfig {
        devices: vec!["cuda:0".into()],
        ..cfg
    };
    let nccl = fit(&tmp.path().join("nccl"), ranked, QUIET).unwrap();
    for (a, b) in single.iter().zip(&nccl) {
        assert_eq!(a.train_loss, b.train_loss, "epoch {}", a.epoch);
        assert_eq!(a.test_accuracy, b.test_accuracy, "epoch {}", a.epoch);
    }
}
