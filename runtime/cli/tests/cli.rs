//! The `runtime` command end to end: every subcommand, its JSON keys, its exit codes, and one-line
//! errors for bad input.

use smk_format::seeded::SeededInit;
use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
use smk_format::{InitRule, Op};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn runtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runtime")).args(args).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A digit classifier shaped like the trainer's exports: [1, 28, 28] → flatten → seeded
/// signed-constant 784→10 under an element mask → softmax, with two tasks.
fn model(dir: &Path) -> PathBuf {
    let mut b = ModelBuilder::new(&[1, 28, 28]).unwrap();
    b.flatten("flat").unwrap();
    let init = SeededInit {
        rule: InitRule::SignedConstant,
        seed: 3,
        stream: 0,
        scale: 0.05,
    };
    let fc = b
        .linear("fc", TensorSpec::seeded("fc.weight", &[10, 784], init).unwrap(), None)
        .unwrap();
    b.op("softmax", Op::Softmax).unwrap();
    for (i, name) in ["even", "odd"].iter().enumerate() {
        let s = b.mask_set(name).unwrap();
        let bits: Vec<bool> = (0..7840).map(|k| (k + i) % 2 == 0).collect();
        b.set_mask(s, fc, MaskSpec::element_bools(&bits)).unwrap();
    }
    b.metadata("input.pixel_scale", "0.00392156862745098").unwrap();
    let path = dir.join("model.smk");
    b.write(&path).unwrap();
    path
}

fn idx(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    images.extend((0..n * 784).map(|i| (i * 7 % 256) as u8));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    labels.extend((0..n).map(|i| (i % 10) as u8));
    let (ip, lp) = (dir.join("images-idx3-ubyte"), dir.join("labels-idx1-ubyte"));
    std::fs::write(&ip, images).unwrap();
    std::fs::write(&lp, labels).unwrap();
    (ip, lp)
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

#[test]
fn infer_reads_idx_npy_png_and_pgm_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let m = m.to_str().unwrap();
    let (images, _) = idx(tmp.path(), 3);
    // Item 1 of the IDX file, as .npy (scaled), PGM and PNG.
    let pixels: Vec<u8> = (0..784).map(|i| ((784 + i) * 7 % 256) as u8).collect();
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 28, 28), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    for &p in &pixels {
        npy.extend_from_slice(&(p as f32 / 255.0).to_le_bytes());
    }
    std::fs::write(tmp.path().join("x.npy"), npy).unwrap();
    let mut pgm = b"P5\n# a digit\n28 28\n255\n".to_vec();
    pgm.extend_from_slice(&pixels);
    std::fs::write(tmp.path().join("x.pgm"), pgm).unwrap();
    {
        let f = std::fs::File::create(tmp.path().join("x.png")).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 28, 28);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&pixels).unwrap();
    }
    let mut outs = Vec::new();
    for input in ["x.npy", "x.pgm", "x.png"] {
        let p = tmp.path().join(input);
        let v = json(&runtime(&[
            "infer",
            m,
            p.to_str().unwrap(),
            "--task",
            "odd",
            "--json",
            "--top-k",
            "2",
        ]));
        assert_eq!(v["task"], "odd");
        assert_eq!(v["top"].as_array().unwrap().len(), 2);
        outs.push(v["outputs"].clone());
    }
    let via_idx = json(&runtime(&[
        "infer",
        m,
        images.to_str().unwrap(),
        "--index",
        "1",
        "--task",
        "1",
        "--json",
    ]));
    outs.push(via_idx["outputs"].clone());
    let as_f = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    for o in &outs[1..] {
        for (a, b) in as_f(&outs[0]).iter().zip(as_f(o)) {
            assert!(
                (a - b).abs() < 1e-5,
                "{a} vs {b}: every input form must give the same result"
            );
        }
    }
    let text = runtime(&["infer", m, tmp.path().join("x.png").to_str().unwrap(), "--task", "even"]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("class "));
}

#[test]
fn eval_reports_accuracy_per_class_and_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let (images, labels) = idx(tmp.path(), 37);
    let preds = tmp.path().join("preds.txt");
    let v = json(&runtime(&[
        "eval",
        m.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--task",
        "even",
        "--batch",
        "8",
        "--json",
        "--predictions",
        preds.to_str().unwrap(),
    ]));
    assert_eq!(v["images"], 37);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let lines = std::fs::read_to_string(&preds).unwrap();
    assert_eq!(lines.lines().count(), 37);
    // Accuracy is what the predictions say, whatever the batch (37 = 4·8 + 5 exercises the tail).
    let correct = lines
        .lines()
        .enumerate()
        .filter(|(i, l)| l.parse::<usize>().unwrap() == i % 10)
        .count();
    assert_eq!(v["correct"], correct);
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(v["per_class"].as_array().unwrap().len(), 10);
    let one = json(&runtime(&[
        "eval",
        m.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--task",
        "even",
        "--batch",
        "1",
        "--isa",
        "scalar",
        "--json",
    ]));
    assert_eq!(
        one["correct"], v["correct"],
        "batch and instruction set do not change predictions"
    );
}

#[test]
fn eval_on_the_bundled_digits_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let d = data_dir();
    let v = json(&runtime(&[
        "eval",
        m.to_str().unwrap(),
        "--images",
        d.join("t10k-images-idx3-ubyte.gz").to_str().unwrap(),
        "--labels",
        d.join("t10k-labels-idx1-ubyte.gz").to_str().unwrap(),
        "--task",
        "odd",
        "--json",
    ]));
    assert!(v["images"].as_u64().unwrap() >= 999);
}

#[test]
fn inspect_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let v = json(&runtime(&["inspect", m.to_str().unwrap(), "--json"]));
    assert_eq!(v["tasks"], serde_json::json!(["even", "odd"]));
    assert_eq!(v["weights"], 7840);
    let fc = &v["layers"][1]["weight"];
    assert_eq!(fc["masks"][0]["kind"], "element");
    assert!((fc["masks"][0]["density"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert!(
        v["bits_per_weight"].as_f64().unwrap() > 2.0,
        "two tasks of one bit each, plus the header"
    );
    let text = runtime(&["inspect", m.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("element mask, density 0.5000"));

    assert_eq!(runtime(&["verify", m.to_str().unwrap()]).status.code(), Some(0));
    // Flip one bit of the last mask's payload: parsing still works, the checksum does not.
    let mut bytes = std::fs::read(&m).unwrap();
    let n = bytes.len();
    bytes[n - 8] ^= 1;
    let bad = tmp.path().join("bad.smk");
    std::fs::write(&bad, &bytes).unwrap();
    let out = runtime(&["verify", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_synthetic_compares_with_dense() {
    let v = json(&runtime(&[
        "bench",
        "--synthetic",
        "linear:64x96x2,mask=block16x16,density=0.25,weights=f16",
        "--compare-dense",
        "--seconds",
        "0.05",
        "--batch",
        "3",
        "--json",
    ]));
    for key in [
        "median_ms",
        "dense_median_ms",
        "speedup",
        "p90_ms",
        "p99_ms",
        "bandwidth_gbs",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    let speedup = v["dense_median_ms"].as_f64().unwrap() / v["median_ms"].as_f64().unwrap();
    assert!((speedup - v["speedup"].as_f64().unwrap()).abs() < 1e-9);
    assert!(
        v["notes"][0].as_str().unwrap().contains("last-level cache"),
        "tiny weights are cache-resident: {v}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let file = json(&runtime(&[
        "bench",
        m.to_str().unwrap(),
        "--task",
        "even",
        "--seconds",
        "0.05",
        "--compare-dense",
        "--json",
    ]));
    assert!(file["speedup"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_input_is_one_clear_line_and_exit_code_1() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let m = m.to_str().unwrap();
    let garbage = tmp.path().join("garbage.smk");
    std::fs::write(&garbage, b"not a model at all, just text").unwrap();
    let (images, labels) = idx(tmp.path(), 4);
    let gpu_error = if cfg!(feature = "cuda") {
        "cuda:0"
    } else {
        "built without CUDA"
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["inspect", garbage.to_str().unwrap()], "garbage.smk"),
        (vec!["infer", "/nonexistent.smk", "x.npy"], "nonexistent"),
        (vec!["infer", m, images.to_str().unwrap()], "choose one"),
        (
            vec!["infer", m, images.to_str().unwrap(), "--task", "nine"],
            "no task \"nine\"",
        ),
        (
            vec!["infer", m, images.to_str().unwrap(), "--task", "odd", "--index", "9"],
            "--index 9",
        ),
        (
            vec!["infer", m, labels.to_str().unwrap(), "--task", "odd"],
            "values; the model takes 784",
        ),
        (
            vec![
                "eval",
                m,
                "--images",
                images.to_str().unwrap(),
                "--labels",
                images.to_str().unwrap(),
                "--task",
                "odd",
            ],
            "labels",
        ),
        (
            vec!["bench", "--synthetic", "linear:10", "--seconds", "0.01"],
            "--synthetic",
        ),
        (
            vec!["bench", "--synthetic", "linear:8x8,mask=triangle", "--seconds", "0.01"],
            "blockRxC",
        ),
        (
            vec!["infer", m, images.to_str().unwrap(), "--task", "odd", "--isa", "sse9"],
            "unknown instruction set",
        ),
        (
            vec!["infer", m, images.to_str().unwrap(), "--task", "odd", "--device", "tpu"],
            "unknown device",
        ),
        // Built without the `cuda` feature, the runtime says how to get it; built with it on a
        // machine without a GPU (CI's CUDA step), it names the device it could not open.
        (
            vec![
                "infer",
                m,
                images.to_str().unwrap(),
                "--task",
                "odd",
                "--device",
                "cuda",
            ],
            gpu_error,
        ),
        (
            vec![
                "eval",
                m,
                "--images",
                images.to_str().unwrap(),
                "--labels",
                labels.to_str().unwrap(),
                "--task",
                "odd",
                "--device",
                "cuda:1",
            ],
            if cfg!(feature = "cuda") {
                "cuda:1"
            } else {
                "without CUDA"
            },
        ),
        (
            vec!["bench", m, "--task", "odd", "--seconds", "0.01", "--device", "cuda"],
            gpu_error,
        ),
    ];
    for (args, needle) in cases {
        let out = runtime(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.contains(needle), "{args:?}: {err} should mention {needle}");
    }
    assert_eq!(runtime(&["infer"]).status.code(), Some(2), "usage errors exit 2");
    let help = runtime(&["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}

#[test]
fn task_auto_infers_each_inputs_task() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let m = m.to_str().unwrap();
    let (images, labels) = idx(tmp.path(), 12);
    let (images, labels) = (images.to_str().unwrap(), labels.to_str().unwrap());
    for rule in ["one-shot", "binary-search", "min-entropy"] {
        let v = json(&runtime(&[
            "infer",
            m,
            images,
            "--index",
            "3",
            "--task",
            "auto",
            "--task-rule",
            rule,
            "--json",
        ]));
        let task = v["task"].as_str().unwrap();
        assert!(task == "even" || task == "odd", "{v}");
        let c = v["inferred_task"]["confidence"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&c), "{v}");
        // The inferred task's own run gives the same outputs.
        let own = json(&runtime(&[
            "infer", m, images, "--index", "3", "--task", task, "--json",
        ]));
        assert_eq!(own["outputs"], v["outputs"], "{rule}");

        let e = json(&runtime(&[
            "eval",
            m,
            "--images",
            images,
            "--labels",
            labels,
            "--task",
            "auto",
            "--task-rule",
            rule,
            "--batch",
            "5",
            "--json",
        ]));
        let ti = &e["task_inference"];
        let counted: u64 = ti["inferred"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(counted, 12, "{e}");
        assert_eq!(ti["unknown"], 0);
        assert_eq!(ti["rule"], rule);
    }
    let help = runtime(&["eval", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("binary-search") && help.contains("halving rounds"),
        "{help}"
    );
    // A threshold above any confidence: nothing is classified.
    let e = json(&runtime(&[
        "eval",
        m,
        "--images",
        images,
        "--labels",
        labels,
        "--task",
        "auto",
        "--task-threshold",
        "1.01",
        "--json",
    ]));
    assert_eq!(
        (e["task_inference"]["unknown"].as_u64(), e["correct"].as_u64()),
        (Some(12), Some(0))
    );
    let v = json(&runtime(&[
        "infer",
        m,
        images,
        "--task",
        "auto",
        "--task-threshold",
        "1.01",
        "--json",
    ]));
    assert!(
        v["task"].is_null() && v["class"].is_null() && v["inferred_task"]["known"] == false,
        "{v}"
    );
}
