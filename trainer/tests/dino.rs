//! Self-supervised masks (`--objective dino`) end to end on a small slice of the bundled
//! digits: no labels in training, k-NN accuracy as the epoch's test figure, resume to the same
//! run, and the k-NN baselines.

mod common;

use common::{small_data_in, QUIET};
use smk_trainer::config::{FitConfig, MethodKind, Objective};
use smk_trainer::train::{fit, FitOptions, Run};

#[test]
fn dino_trains_masks_without_labels_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let cfg = FitConfig {
        data: data.clone(),
        epochs: 2,
        batch_size: 100,
        optimizer: smk_trainer::optim::OptimizerKind::Adam,
        lr: 1e-3,
        objective: Objective::Dino,
        ..FitConfig::defaults(MethodKind::EdgePopup)
    };
    let whole = tmp.path().join("whole");
    let all = fit(&whole, cfg.clone(), QUIET).unwrap();
    assert_eq!(all.len(), 2);
    for m in &all {
        // k-NN over 600 training digits: far above chance (10%) even for random masks.
        assert!(m.test_accuracy > 0.5 && m.test_accuracy <= 1.0, "{m:?}");
        assert!(m.train_loss.is_finite() && m.train_loss > 0.0, "{m:?}");
    }
    // The teacher, the heads and the centre are in the checkpoint: a resumed run is the same.
    let split = tmp.path().join("split");
    fit(
        &split,
        cfg.clone(),
        FitOptions {
            stop_after: Some(1),
            ..QUIET
        },
    )
    .unwrap();
    let rest = fit(&split, cfg.clone(), FitOptions { resume: true, ..QUIET }).unwrap();
    for (a, b) in all.iter().zip(&rest) {
        assert_eq!(
            (a.train_loss, a.test_accuracy),
            (b.train_loss, b.test_accuracy),
            "epoch {}",
            a.epoch
        );
    }
    let cpu = candle_core::Device::Cpu;
    let run = Run::open(&whole).unwrap();
    let (teacher, what) = smk_trainer::dino::run_knn(&run, false, &cpu).unwrap();
    assert!(what.contains("teacher"), "{what}");
    assert_eq!(
        teacher, all[1].test_accuracy,
        "eval reads the teacher the run evaluated"
    );
    let (random, what) = smk_trainer::dino::run_knn(&run, true, &cpu).unwrap();
    assert!(what.contains("random"), "{what}");
    assert!(random > 0.5, "{random}");
}

#[test]
fn dino_refuses_what_it_cannot_train() {
    for method in [MethodKind::Dense, MethodKind::Supsup, MethodKind::Binary] {
        let cfg = FitConfig {
            objective: Objective::Dino,
            task: (method == MethodKind::Supsup).then(|| "permuted:2".into()),
            ..FitConfig::defaults(method)
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("--objective dino"), "{method:?}: {e}");
    }
    let cfg = FitConfig {
        objective: Objective::Dino,
        model: "resnet-8".into(),
        ..FitConfig::defaults(MethodKind::EdgePopup)
    };
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("resnet-8"), "{e}");
}
