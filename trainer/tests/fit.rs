//! End to end on a small slice of the bundled digits: fit, resume, eval, export.

mod common;

use std::path::Path;

use candle_core::DType;
use common::{small_data_in, QUIET};
use smk_trainer::config::{FitConfig, FrozenDtype, MethodKind};
use smk_trainer::export::{export, WeightsDtype};
use smk_trainer::model::Net;
use smk_trainer::train::{fit, FitOptions, Run};

fn config(data: &Path, method: MethodKind, epochs: usize) -> FitConfig {
    FitConfig {
        data: data.to_path_buf(),
        epochs,
        batch_size: 64,
        ..FitConfig::defaults(method)
    }
}

#[test]
fn same_seed_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let mut files = Vec::new();
    for run in ["a", "b"] {
        let dir = tmp.path().join(run);
        fit(&dir, config(&data, MethodKind::EdgePopup, 2), QUIET).unwrap();
        let out = tmp.path().join(format!("{run}.smk"));
        let summary = export(&dir, &out, WeightsDtype::F32).unwrap();
        // Seeded signed-constant weights and a bit mask: about one bit per weight.
        assert!(summary.bits_per_weight < 1.3, "{summary:?}");
        files.push(std::fs::read(out).unwrap());
    }
    assert_eq!(files[0], files[1], "two runs with one seed must export identical files");
    let other = tmp.path().join("c");
    fit(
        &other,
        FitConfig {
            seed: 1,
            ..config(&data, MethodKind::EdgePopup, 2)
        },
        QUIET,
    )
    .unwrap();
    export(&other, &tmp.path().join("c.smk"), WeightsDtype::F32).unwrap();
    assert_ne!(
        files[0],
        std::fs::read(tmp.path().join("c.smk")).unwrap(),
        "another seed, another model"
    );

    // The export holds what the run learned: the seed and the masks, at the run's density.
    let bytes = &files[0];
    let m = smk_format::Model::parse(bytes).unwrap();
    m.verify().unwrap();
    let fc1 = m.tensors().find(|t| t.name == "fc1.weight").unwrap();
    let mask = m.mask(0, fc1.index).unwrap();
    assert_eq!(mask.ones, 784 * 300 / 2);
    assert!(matches!(fc1.storage, smk_format::Storage::Seeded(_)));
    assert_eq!(
        m.layer(0).unwrap().name,
        "normalize",
        "the graph takes pixels in [0, 1]"
    );
    assert_eq!(m.metadata_value("method"), Some("edge-popup"));
}

#[test]
fn resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    for (method, dtype) in [
        (MethodKind::EdgePopup, FrozenDtype::F32),
        (MethodKind::Dense, FrozenDtype::F32),
        (MethodKind::EdgePopup, FrozenDtype::Bf16),
    ] {
        let cfg = FitConfig {
            dtype,
            ..config(&data, method, 3)
        };
        let method = (method, dtype);
        let whole = tmp.path().join(format!("whole-{}-{}", method.0.id(), dtype.id()));
        let full = fit(&whole, cfg.clone(), QUIET).unwrap();
        let split = tmp.path().join(format!("split-{}-{}", method.0.id(), dtype.id()));
        let first = fit(
            &split,
            cfg.clone(),
            FitOptions {
                stop_after: Some(1),
                profile: false,
                ..QUIET
            },
        )
        .unwrap();
        assert_eq!(first.len(), 1);
        let rest = fit(&split, cfg, FitOptions { resume: true, ..QUIET }).unwrap();
        assert_eq!(rest.len(), 3, "metrics of all three epochs");
        for (a, b) in full.iter().zip(&rest) {
            assert_eq!((a.epoch, a.step), (b.epoch, b.step));
            assert_eq!(a.test_accuracy, b.test_accuracy, "{method:?} epoch {}", a.epoch);
            assert_eq!(a.train_loss, b.train_loss, "{method:?} epoch {}", a.epoch);
        }
        let ea = std::fs::read(whole.join("checkpoint.safetensors")).unwrap();
        let eb = std::fs::read(split.join("checkpoint.safetensors")).unwrap();
        assert_eq!(ea, eb, "{method:?}: resumed checkpoint differs");
    }
}

#[test]
fn fit_refuses_to_overwrite_and_eval_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let dir = tmp.path().join("run");
    let m = fit(&dir, config(&data, MethodKind::Dense, 1), QUIET).unwrap();
    let e = fit(&dir, config(&data, MethodKind::Dense, 1), QUIET)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let run = Run::open(&dir).unwrap();
    let (mut net, test, rule) = run.load_net(&candle_core::Device::Cpu).unwrap();
    let ev = smk_trainer::train::evaluate(&mut net, &test, rule, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        ev.accuracy, m[0].test_accuracy,
        "eval of the checkpoint matches the run's own metric"
    );
    assert!(
        ev.accuracy > 0.5,
        "one epoch on 600 digits learns something: {}",
        ev.accuracy
    );
    let bad = tmp.path().join("nodata");
    let e = fit(&tmp.path().join("r2"), config(&bad, MethodKind::Dense, 1), QUIET)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nodata") && e.contains("not found"), "{e}");
}

#[test]
fn sweep_writes_a_table_and_a_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let out = tmp.path().join("sweep");
    let base = config(&data, MethodKind::EdgePopup, 1);
    let rows = smk_trainer::sweep::sweep(&out, &base, &[0.1, 0.5], true).unwrap();
    assert_eq!(rows.len(), 3, "two keeps and the dense reference");
    assert_eq!((rows[0].density, rows[1].density, rows[2].density), (0.1, 0.5, 1.0));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.starts_with("method,keep,density,test_accuracy"));
    if out.join("sweep.svg").exists() {
        let svg = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("dense"));
        let png = std::fs::read(out.join("sweep.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    // A second call reuses the finished runs.
    let again = smk_trainer::sweep::sweep(&out, &base, &[0.1, 0.5], true).unwrap();
    assert_eq!(again, rows);
}

#[test]
fn init_from_reads_pytorch_style_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    // Weights named as PyTorch names an nn.Module's parameters (fc1.weight, ...), shaped [out, in].
    let dev = candle_core::Device::Cpu;
    let mut tensors = std::collections::HashMap::new();
    for (name, out, inp) in [("fc1", 300usize, 784usize), ("fc2", 100, 300), ("fc3", 10, 100)] {
        let values: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 7919) % 2003) as f32 / 2003.0 - 0.5)
            .collect();
        let t = candle_core::Tensor::from_vec(values, (out, inp), &dev)
            .unwrap()
            .to_dtype(candle_core::DType::F16)
            .unwrap();
        tensors.insert(format!("{name}.weight"), t);
    }
    let file = tmp.path().join("pretrained.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();

    // Piggyback over them: the frozen weights are exactly the file's (f16 widened to f32).
    let cfg = FitConfig {
        init_from: Some(file.clone()),
        ..config(&data, MethodKind::Piggyback, 1)
    };
    let dir = tmp.path().join("pb");
    fit(&dir, cfg, QUIET).unwrap();
    let (net, _, _) = Run::open(&dir).unwrap().load_net(&dev).unwrap();
    let want = tensors["fc2.weight"]
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(net.layers[1].weight.to_vec2::<f32>().unwrap(), want);
    assert!(net.layers[1].weight_var.is_none(), "piggyback never trains the weights");

    // A wrong shape is refused with the tensor's name.
    tensors.insert(
        "fc2.weight".into(),
        candle_core::Tensor::zeros((100, 299), candle_core::DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let cfg = FitConfig {
        init_from: Some(file),
        ..config(&data, MethodKind::Piggyback, 1)
    };
    let e = fit(&tmp.path().join("bad"), cfg, QUIET).unwrap_err().to_string();
    assert!(e.contains("fc2.weight") && e.contains("299"), "{e}");
}

#[test]
fn split_task_runs_evaluate_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let dir = tmp.path().join("digits-5-9");
    let cfg = FitConfig {
        task: Some("split:2".into()),
        task_index: 1,
        ..config(&data, MethodKind::EdgePopup, 1)
    };
    fit(&dir, cfg, QUIET).unwrap();
    let run = Run::open(&dir).unwrap();
    let (mut net, test, rule) = run.load_net(&candle_core::Device::Cpu).unwrap();
    assert_eq!(test.classes, 5);
    assert!(test.labels.iter().all(|&l| l < 5));
    let e = smk_trainer::train::evaluate(&mut net, &test, rule, &candle_core::Device::Cpu).unwrap();
    assert_eq!(e.per_class.len(), 5);
    let out = tmp.path().join("m.smk");
    export(&dir, &out, WeightsDtype::F16).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let m = smk_format::Model::parse(&bytes).unwrap();
    assert_eq!(m.mask_set(0).unwrap().name, "split:2#1");
}

#[test]
fn interrupted_writes_are_survived() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let cfg = FitConfig {
        warmup_epochs: 0,
        cooldown_epochs: 1,
        keep: 0.2,
        ..config(&data, MethodKind::MovementHard, 3)
    };
    let whole = fit(&tmp.path().join("whole"), cfg.clone(), QUIET).unwrap();

    let dir = tmp.path().join("cut");
    fit(
        &dir,
        cfg.clone(),
        FitOptions {
            stop_after: Some(1),
            profile: false,
            ..QUIET
        },
    )
    .unwrap();
    // A stopped movement run is evaluated at the density it had, not the final one.
    let run = Run::open(&dir).unwrap();
    let (_, _, rule) = run.load_net(&candle_core::Device::Cpu).unwrap();
    assert_eq!(rule, smk_trainer::train::rule_at(&cfg, 1, 0.0));
    assert_ne!(rule, smk_trainer::train::rule_at(&cfg, 3, 0.0));
    // A crash after the metrics line of epoch 2 but before its checkpoint, then a crash in the
    // middle of appending the next line.
    let metrics = dir.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    let orphan = text.lines().next().unwrap().replace("\"epoch\":1", "\"epoch\":2");
    text += &format!("{orphan}\n{{\"schema\":1,\"epo");
    std::fs::write(&metrics, text).unwrap();
    assert_eq!(run.metrics().unwrap().len(), 2, "the cut line is skipped");
    let resumed = fit(&dir, cfg, FitOptions { resume: true, ..QUIET }).unwrap();
    for (a, b) in whole.iter().zip(&resumed) {
        assert_eq!(
            (a.epoch, a.test_accuracy, a.train_loss, a.overall_density),
            (b.epoch, b.test_accuracy, b.train_loss, b.overall_density)
        );
    }
    assert_eq!(resumed.len(), 3);
}

/// The running loss is read back only every few steps, yet a diverged run still stops with the
/// epoch named and leaves no checkpoint of the broken epoch.
#[test]
fn a_diverging_loss_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let dir = tmp.path().join("run");
    // 75 steps: the read after step 50 (mid-epoch) is the one that sees it.
    let cfg = FitConfig {
        lr: 1e30,
        batch_size: 8,
        ..config(&data, MethodKind::Dense, 1)
    };
    let e = fit(&dir, cfg, QUIET).unwrap_err().to_string();
    assert!(e.contains("loss became") && e.contains("at epoch 1: lower --lr"), "{e}");
    assert!(!dir.join("checkpoint.safetensors").exists());
}

/// `--dtype bf16`: frozen weights live in bf16 (in the network and its checkpoint), the run
/// still learns, and its checkpoint evaluates to the run's own figure.
#[test]
fn bf16_frozen_weights_train() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let dev = candle_core::Device::Cpu;
    for (method, dtype) in [
        (MethodKind::EdgePopup, FrozenDtype::Bf16),
        (MethodKind::Block, FrozenDtype::F16),
    ] {
        let cfg = FitConfig {
            dtype,
            ..config(&data, method, 1)
        };
        let built = Net::build(&cfg, [1, 28, 28], 10, None, &dev).unwrap();
        for l in &built.layers {
            assert_eq!(l.weight.dtype(), dtype.dtype(), "{method:?} {}", l.name);
            assert!(l.weight_var.is_none());
            assert_eq!(l.scores.as_ref().unwrap().dtype(), DType::F32, "scores stay f32");
        }
        let dir = tmp.path().join(method.id());
        let m = fit(&dir, cfg.clone(), QUIET).unwrap();
        let f32_run = fit(
            &tmp.path().join(format!("{}-f32", method.id())),
            FitConfig {
                dtype: FrozenDtype::F32,
                ..cfg
            },
            QUIET,
        )
        .unwrap();
        // Ten classes: chance is 0.1. 200 test digits: one is half a point.
        let (a, b) = (m[0].test_accuracy, f32_run[0].test_accuracy);
        assert!(a > 0.5 && (a - b).abs() <= 0.05, "{method:?}: {dtype:?} {a}, f32 {b}");
        let saved = candle_core::safetensors::load(dir.join("checkpoint.safetensors"), &dev).unwrap();
        assert_eq!(
            saved["fc1.weight"].dtype(),
            dtype.dtype(),
            "half the checkpoint bytes too"
        );
        assert_eq!(saved["fc1.scores"].dtype(), DType::F32);
        let run = Run::open(&dir).unwrap();
        assert_eq!(run.cfg.dtype, dtype);
        let (mut net, test, rule) = run.load_net(&dev).unwrap();
        assert_eq!(net.layers[0].weight.dtype(), dtype.dtype());
        let e = smk_trainer::train::evaluate(&mut net, &test, rule, &dev).unwrap();
        assert_eq!(e.accuracy, m[0].test_accuracy, "{method:?}");
        // Seeded layers export as their seed, whatever they were held in.
        let out = tmp.path().join(format!("{}.smk", method.id()));
        export(&dir, &out, WeightsDtype::F32).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let model = smk_format::Model::parse(&bytes).unwrap();
        let fc1 = model.tensors().find(|t| t.name == "fc1.weight").unwrap();
        assert!(matches!(fc1.storage, smk_format::Storage::Seeded(_)));
    }
}

/// Loaded weights under `--dtype bf16`: the frozen layers hold the file's values rounded to
/// bf16, piggyback's trained head stays f32, and export writes exactly the values used.
#[test]
fn bf16_loaded_weights_export_the_values_used() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let dev = candle_core::Device::Cpu;
    let mut tensors = std::collections::HashMap::new();
    for (name, out, inp) in [("fc1", 300usize, 784usize), ("fc2", 100, 300), ("fc3", 10, 100)] {
        let values: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 7919) % 2003) as f32 / 2003.0 - 0.5)
            .collect();
        let t = candle_core::Tensor::from_vec(values, (out, inp), &dev).unwrap();
        tensors.insert(format!("{name}.weight"), t);
    }
    let file = tmp.path().join("pretrained.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let cfg = FitConfig {
        init_from: Some(file),
        train_head: true,
        dtype: FrozenDtype::Bf16,
        ..config(&data, MethodKind::Piggyback, 1)
    };
    let dir = tmp.path().join("pb");
    fit(&dir, cfg, QUIET).unwrap();
    let (net, _, _) = Run::open(&dir).unwrap().load_net(&dev).unwrap();
    let bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
    let want: Vec<f32> = tensors["fc1.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(bf16)
        .collect();
    assert_eq!(net.layers[0].weight.dtype(), DType::BF16);
    let held: Vec<f32> = net.layers[0]
        .weight_f32()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(held == want, "the file's values, rounded to bf16 once");
    let head = &net.layers[2];
    assert!(head.weight_var.is_some(), "--train-head trains the head");
    assert_eq!(head.weight_var.as_ref().unwrap().dtype(), DType::F32);
    let out = tmp.path().join("pb.smk");
    export(&dir, &out, WeightsDtype::F32).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let model = smk_format::Model::parse(&bytes).unwrap();
    let fc1 = model.tensors().find(|t| t.name == "fc1.weight").unwrap();
    assert_eq!(fc1.storage, smk_format::Storage::F32);
    let stored = fc1.to_f32_vec().unwrap();
    assert!(!stored.is_empty());
    // Rows or columns may have been compacted away; every stored value is a bf16 the run used.
    assert!(stored.iter().all(|&v| v == bf16(v)));
    if fc1.matrix() == (300, 784) {
        assert!(stored == want);
    }
}

#[test]
fn data_parallel_replicas_take_the_single_device_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    for method in [MethodKind::Dense, MethodKind::EdgePopup] {
        // 600 examples: batches of 250, 250 and 100, split three ways (ragged shards).
        let cfg = FitConfig {
            batch_size: 250,
            ..config(&data, method, 1)
        };
        let one = tmp.path().join(format!("one-{}", method.id()));
        let single = fit(&one, cfg.clone(), QUIET).unwrap();
        let three = tmp.path().join(format!("three-{}", method.id()));
        let cfg3 = FitConfig {
            devices: vec!["cpu".into(); 3],
            ..cfg
        };
        let replicated = fit(&three, cfg3, QUIET).unwrap();
        let (a, b) = (&single[0], &replicated[0]);
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-5 * a.train_loss,
            "{method:?}: {a:?} vs {b:?}"
        );
        let load = |dir: &Path| {
            candle_core::safetensors::load(dir.join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap()
        };
        let (ta, tb) = (load(&one), load(&three));
        let mut compared = 0;
        for (name, x) in &ta {
            if x.dtype() != DType::F32 {
                continue;
            }
            let y = &tb[name];
            let diff = (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = x
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1e-3);
            assert!(
                diff <= 1e-4 * scale,
                "{method:?} {name}: replicas differ by {diff} (scale {scale})"
            );
            compared += 1;
        }
        assert!(compared >= 3, "{method:?}: only {compared} tensors compared");
    }
}

#[test]
fn dnw_keeps_the_largest_weights_and_trains_them_all() {
    use smk_trainer::mask::{hard_mask, Binarize};
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let cfg = FitConfig {
        keep: 0.2,
        ..config(&data, MethodKind::Dnw, 3)
    };
    // The gradient of a step reaches the weights the mask drops, too.
    let net = Net::build(&cfg, [1, 28, 28], 10, None, &candle_core::Device::Cpu).unwrap();
    let rule = Binarize::TopK { keep: 0.2, abs: true };
    let mut net = net;
    let x = candle_core::Tensor::ones((4, 1, 28, 28), DType::F32, &candle_core::Device::Cpu).unwrap();
    let loss = net.forward(&x, rule, true).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let fc1 = &net.layers[0];
    let w = fc1.weight_var.as_ref().unwrap();
    let g = grads.get(w.as_tensor()).unwrap();
    let dropped = (1.0 - hard_mask(w.as_tensor(), rule).unwrap()).unwrap();
    let reaching = (g.abs().unwrap() * dropped)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(reaching > 0.0, "no gradient reached a dropped weight");

    let run = tmp.path().join("dnw");
    let m = fit(&run, cfg, QUIET).unwrap();
    let last = m.last().unwrap();
    assert!(last.test_accuracy > 0.7, "{last:?}");
    for (name, d) in &last.density {
        assert!((d - 0.2).abs() < 0.01, "{name}: density {d}");
    }
    let out = tmp.path().join("dnw.smk");
    export(&run, &out, WeightsDtype::F32).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let model = smk_format::Model::parse(&bytes).unwrap();
    assert_eq!(model.mask_set_count(), 1);
}
