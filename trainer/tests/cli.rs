//! The `trainer` binary as users run it: exit codes, one-line errors, JSON output.

mod common;

use std::process::Command;

fn trainer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn fit_eval_export_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    common::small_data(&data);
    let (d, run, smk) = (data.to_str().unwrap(), tmp.path().join("run"), tmp.path().join("m.smk"));
    let run = run.to_str().unwrap();
    let (ok, out, err) = trainer(&[
        "fit",
        "--method",
        "edge-popup",
        "--sparsity",
        "0.8",
        "--epochs",
        "1",
        "--data",
        d,
        "--out",
        run,
        "-q",
        "--profile",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("weights kept 0.200"), "{out}");
    // --profile accounts for the epoch phase by phase.
    assert!(
        err.contains("profile epoch 1:") && err.contains("backward") && err.contains("optimizer step"),
        "{err}"
    );
    let cfg = std::fs::read_to_string(tmp.path().join("run/config.toml")).unwrap();
    assert!(
        cfg.contains("keep = 0.2") && cfg.contains("method = \"edge-popup\""),
        "{cfg}"
    );

    let (ok, out, err) = trainer(&["eval", run, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(v["per_class"].as_array().unwrap().len(), 10);

    let (ok, out, err) = trainer(&["export", run, "--out", smk.to_str().unwrap(), "--weights-dtype", "bf16"]);
    assert!(ok, "{err}");
    assert!(out.contains("bits per weight"), "{out}");
    assert!(smk_format::Model::parse(&std::fs::read(&smk).unwrap()).is_ok());

    // The masked dense model, for other tools; flags that do not apply are refused.
    let onnx = tmp.path().join("m.onnx");
    let onnx = onnx.to_str().unwrap();
    let (ok, out, err) = trainer(&["export", run, "--out", onnx, "--format", "onnx"]);
    assert!(ok, "{err}");
    assert!(out.contains("m.onnx") && out.contains("bits per weight"), "{out}");
    let st = tmp.path().join("m.safetensors");
    let (ok, _, err) = trainer(&["export", run, "--out", st.to_str().unwrap(), "--format", "safetensors"]);
    assert!(ok, "{err}");
    assert!(candle_core::safetensors::load(&st, &candle_core::Device::Cpu)
        .unwrap()
        .contains_key("fc1.weight"));
    for (args, says) in [
        (vec!["--format", "smk", "--task", "0"], "a .smk file holds every task"),
        (vec!["--format", "onnx", "--task", "0"], "not a task sequence"),
        (vec!["--format", "onnx", "--weights-dtype", "bf16"], "always f32"),
    ] {
        let (ok, _, err) = trainer(&[&["export", run, "--out", onnx][..], &args].concat());
        assert!(!ok && err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let (_, help, _) = trainer(&["export", "--help"]);
    assert!(
        help.contains("--format") && help.contains("safetensors") && help.contains("--task"),
        "{help}"
    );
}

#[test]
fn bad_invocations_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let out = out.to_str().unwrap();
    for (args, says) in [
        (vec!["fit", "--keep", "0.1,0.5", "--out", out], "trainer sweep"),
        (
            vec!["fit", "--block", "2048x4", "--method", "block", "--out", out],
            "1 to 1024",
        ),
        (vec!["fit", "--temperature", "0", "--out", out], "--temperature"),
        (vec!["fit", "--model", "vgg-16", "--out", out], "unknown model 'vgg-16'"),
        (vec!["fit", "--method", "piggyback", "--out", out], "--init-from"),
        (vec!["fit", "--keep", "1.5", "--out", out], "--keep 1.5"),
        (
            vec!["fit", "--data", "/nonexistent", "--epochs", "1", "--out", out],
            "/nonexistent",
        ),
        (vec!["eval", "/nonexistent-run"], "config.toml"),
        (
            vec!["fit", "--method", "dense", "--dtype", "bf16", "--out", out],
            "--dtype bf16 applies to frozen weights, and dense trains every weight",
        ),
        (
            vec!["fit", "--method", "movement-soft", "--dtype", "f16", "--out", out],
            "movement-soft trains every weight",
        ),
        (vec!["fit", "--devices", "0,0", "--out", out], "a GPU is named twice"),
        (
            vec![
                "fit",
                "--method",
                "packnet",
                "--task",
                "permuted:2",
                "--model",
                "resnet-8",
                "--out",
                out,
            ],
            "packnet does not support resnet-8",
        ),
        (
            vec!["fit", "--method", "supsup", "--out", out],
            "give --task permuted:N",
        ),
        (vec!["fit", "--devices", "cpu,0", "--out", out], "mixes CPU and GPU"),
        (
            vec!["fit", "--devices", "cpu,cpu,cpu", "--batch-size", "2", "--out", out],
            "smaller than the 3 replicas",
        ),
    ] {
        let (ok, _, err) = trainer(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        let _ = std::fs::remove_dir_all(tmp.path().join("x"));
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_on_a_cpu_build_says_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let (ok, _, err) = trainer(&[
        "fit",
        "--device",
        "cuda",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("built without CUDA") && err.contains("--features cuda"),
        "{err}"
    );
}

/// `--dtype f32` is the default, bit for bit; `--dtype bf16` is recorded in config.toml; a run
/// whose config.toml predates the key still evaluates and exports.
#[test]
fn dtype_flag_default_record_and_old_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    common::small_data(&data);
    let d = data.to_str().unwrap();
    let fit = |name: &str, extra: &[&str]| {
        let run = tmp.path().join(name);
        let mut args = vec![
            "fit",
            "--epochs",
            "1",
            "--data",
            d,
            "-q",
            "--out",
            run.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = trainer(&args);
        assert!(ok, "{name}: {err}");
        run
    };
    let strip = |run: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect()
    };
    let plain = fit("plain", &[]);
    let f32_run = fit("f32", &["--dtype", "f32"]);
    assert_eq!(strip(&plain), strip(&f32_run));
    assert_eq!(
        std::fs::read(plain.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(f32_run.join("checkpoint.safetensors")).unwrap()
    );
    let bf16 = fit("bf16", &["--dtype", "bf16"]);
    let cfg = std::fs::read_to_string(bf16.join("config.toml")).unwrap();
    assert!(cfg.contains("dtype = \"bf16\""), "{cfg}");

    // A run from before --dtype: its config.toml has no such key.
    let cfg_path = plain.join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(cfg.contains("dtype = \"f32\""), "{cfg}");
    let old: String = cfg
        .lines()
        .filter(|l| !l.starts_with("dtype"))
        .map(|l| l.to_string() + "\n")
        .collect();
    std::fs::write(&cfg_path, old).unwrap();
    let (ok, _, err) = trainer(&["eval", plain.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let smk = tmp.path().join("old.smk");
    let (ok, _, err) = trainer(&["export", plain.to_str().unwrap(), "--out", smk.to_str().unwrap()]);
    assert!(ok, "{err}");
}
