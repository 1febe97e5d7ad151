//! SupSup end to end on a small slice of the bundled digits: a mask per task trained in turn,
//! resumed midway, evaluated with inferred tasks, exported as one file with a mask set per
//! task; and `trainer data` writing each task's split.

mod common;

use common::{small_data_in, QUIET};
use smk_format::Model;
use smk_trainer::config::{FitConfig, MethodKind};
use smk_trainer::export::{export, export_with, ExportFormat, ExportOptions, WeightsDtype};
use smk_trainer::supsup;
use smk_trainer::train::{fit, FitOptions};

#[test]
fn tasks_train_in_turn_resume_infer_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let cfg = FitConfig {
        data: data.clone(),
        task: Some("permuted:3".into()),
        batches_per_task: 40,
        lr: 1e-3,
        ..FitConfig::defaults(MethodKind::Supsup)
    };
    let whole = tmp.path().join("whole");
    let all = fit(&whole, cfg.clone(), QUIET).unwrap();
    assert_eq!(all.len(), 3, "one metrics line per task");
    assert!(all.iter().all(|m| m.test_accuracy > 0.5), "{all:?}");

    // Stopped after one task, then resumed: the same masks as the straight run.
    let split = tmp.path().join("split");
    let first = fit(
        &split,
        cfg.clone(),
        FitOptions {
            stop_after: Some(1),
            ..QUIET
        },
    )
    .unwrap();
    assert_eq!(first.len(), 1);
    assert!(!supsup::task_dir(&split, 1).exists());
    let rest = fit(&split, cfg, FitOptions { resume: true, ..QUIET }).unwrap();
    assert_eq!(rest.len(), 3);
    for (a, b) in all.iter().zip(&rest) {
        assert_eq!(a.test_accuracy, b.test_accuracy, "task {}", a.epoch);
    }

    let report = supsup::evaluate(&whole, None, &candle_core::Device::Cpu).unwrap();
    assert_eq!(report.tasks, 3);
    let mean = all.iter().map(|m| m.test_accuracy).sum::<f64>() / 3.0;
    assert!((report.task_given_accuracy - mean).abs() < 1e-9, "{report:?}");
    // Permutations are easy to tell apart, even for briefly trained masks.
    assert!(report.one_shot_task_accuracy.unwrap() > 0.8, "{report:?}");
    assert!(report.binary_search_task_accuracy.unwrap() > 0.8, "{report:?}");
    assert!(
        report.one_shot_accuracy.unwrap() <= report.task_given_accuracy + 0.05,
        "{report:?}"
    );

    let out = tmp.path().join("tasks.smk");
    let summary = export(&whole, &out, WeightsDtype::F32).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let names: Vec<String> = model.mask_sets().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["task-0", "task-1", "task-2"]);
    // Weights as the seed, three element masks: about 1.1 bits per weight and task.
    assert!(summary.bits_per_weight < 3.5, "{summary:?}");

    // The dense formats hold one task: it must be named, and is its own masked weights.
    let dense = |task| ExportOptions {
        format: ExportFormat::Safetensors,
        task,
        ..ExportOptions::default()
    };
    let file = tmp.path().join("task.safetensors");
    let e = export_with(&whole, &file, &dense(None)).unwrap_err().to_string();
    assert!(
        e.contains("3 trained tasks") && e.contains("--task K, K from 0 to 2"),
        "{e}"
    );
    let e = export_with(&whole, &file, &dense(Some(3))).unwrap_err().to_string();
    assert!(e.contains("--task 3") && e.contains("0 to 2"), "{e}");
    export_with(&whole, &file, &dense(Some(1))).unwrap();
    let map = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let (nets, rule) = supsup::load_tasks(&whole, &candle_core::Device::Cpu).unwrap();
    for (k, net) in nets.iter().enumerate() {
        let want: Vec<f32> = net.layers[0]
            .masked_weight(rule)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got: Vec<f32> = map["fc1.weight"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got == want, k == 1, "task {k}");
    }
}

/// PackNet: tasks in turn, each owning its share of the weights; earlier tasks' weights never
/// move; resumed midway, the same network.
#[test]
fn packnet_tasks_own_their_weights_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let cfg = FitConfig {
        data: data.clone(),
        task: Some("permuted:3".into()),
        batches_per_task: 40,
        ..FitConfig::defaults(MethodKind::Packnet)
    };
    let whole = tmp.path().join("whole");
    let all = fit(&whole, cfg.clone(), QUIET).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|m| m.test_accuracy > 0.5), "{all:?}");
    // Task k uses (k + 1)/3 of every layer's weights.
    for (k, m) in all.iter().enumerate() {
        for (name, d) in &m.density {
            assert!((d - (k + 1) as f64 / 3.0).abs() < 1e-3, "task {k} {name}: {d}");
        }
    }
    let cpu = candle_core::Device::Cpu;
    let nets: Vec<_> = (0..3)
        .map(|k| {
            smk_trainer::train::Run::open(&supsup::task_dir(&whole, k))
                .unwrap()
                .load_net(&cpu)
                .unwrap()
                .0
        })
        .collect();
    let rule = smk_trainer::train::rule_at(&cfg, 0, 0.0);
    for l in 0..nets[0].layers.len() {
        let values = |k: usize| -> (Vec<f32>, Vec<f32>) {
            let layer = &nets[k].layers[l];
            let w = layer
                .effective_weight(rule)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let m = layer
                .hard_mask_grid(rule)
                .unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (w, m)
        };
        let (w0, m0) = values(0);
        let (w2, m2) = values(2);
        for i in 0..w0.len() {
            assert!(m0[i] <= m2[i], "masks grow");
            if m0[i] == 1.0 {
                assert_eq!(w0[i], w2[i], "layer {l} weight {i}: task 0's weights moved");
            } else {
                assert_eq!(w0[i], 0.0, "layer {l} weight {i}: outside task 0's mask");
            }
        }
    }
    let report = supsup::evaluate(&whole, None, &cpu).unwrap();
    let mean = all.iter().map(|m| m.test_accuracy).sum::<f64>() / 3.0;
    assert!((report.task_given_accuracy - mean).abs() < 1e-9, "{report:?}");

    let split = tmp.path().join("split");
    fit(
        &split,
        cfg.clone(),
        FitOptions {
            stop_after: Some(2),
            ..QUIET
        },
    )
    .unwrap();
    let rest = fit(&split, cfg, FitOptions { resume: true, ..QUIET }).unwrap();
    for (a, b) in all.iter().zip(&rest) {
        assert_eq!(a.test_accuracy, b.test_accuracy, "task {}", a.epoch);
    }
}

#[test]
fn data_writes_every_task_as_idx() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let ds = smk_trainer::data::load_mnist(&data, smk_trainer::data::Split::Test).unwrap();
    let family: smk_trainer::data::TaskFamily = "split:5".parse().unwrap();
    let out = tmp.path().join("tasks");
    let counts = smk_trainer::data::write_tasks(&family, &ds, 0, &out).unwrap();
    assert_eq!(counts.len(), 5);
    assert_eq!(counts.iter().sum::<usize>(), ds.len(), "split tasks partition the data");
    for (k, &n) in counts.iter().enumerate() {
        let read = |name: String| {
            let path = out.join(name);
            let bytes = std::fs::read(&path).unwrap();
            let mut gz = flate2::read::GzDecoder::new(&bytes[..]);
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut gz, &mut raw).unwrap();
            smk_trainer::data::parse_idx(&path, &raw).unwrap()
        };
        let (dims, pixels) = read(format!("task-{k}-images-idx3-ubyte.gz"));
        assert_eq!(dims, [n, 28, 28]);
        let (ldims, labels) = read(format!("task-{k}-labels-idx1-ubyte.gz"));
        assert_eq!(ldims, [n]);
        assert!(labels.iter().all(|&l| l < 2), "split tasks renumber labels from 0");
        let t = family.task(&ds, k, 0).unwrap();
        let back: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
        assert!(back.iter().zip(&t.images).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
