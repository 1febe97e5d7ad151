//! `trainer export --format safetensors|onnx`: a run as the masked dense model it computes.

mod common;

use candle_core::{Device, D};
use common::{small_data_in, QUIET};
use smk_trainer::config::{FitConfig, MethodKind};
use smk_trainer::export::{export_with, ExportFormat, ExportOptions, WeightsDtype};
use smk_trainer::model::Net;
use smk_trainer::train::{batch, evaluate, fit, rule_at, Run};

fn as_format(format: ExportFormat) -> ExportOptions {
    ExportOptions {
        format,
        ..ExportOptions::default()
    }
}

/// The safetensors file holds each layer's masked weights; a dense network built from it
/// predicts what the masked run predicted, image by image.
#[test]
fn safetensors_rebuild_the_run_as_a_dense_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let dev = Device::Cpu;
    for (method, model) in [
        (MethodKind::EdgePopup, "lenet-300-100"),
        (MethodKind::Block, "lenet-300-100"),
        // Learned signs, masked by magnitude: exactly ±scale or 0.
        (MethodKind::Binary, "lenet-300-100"),
        (MethodKind::EdgePopup, "lenet-5"),
    ] {
        let what = format!("{} {model}", method.id());
        let dir = tmp.path().join(format!("{}-{model}", method.id()));
        let cfg = FitConfig {
            data: data.clone(),
            model: model.into(),
            keep: 0.3,
            epochs: 1,
            batch_size: 64,
            ..FitConfig::defaults(method)
        };
        fit(&dir, cfg, QUIET).unwrap();
        let file = dir.with_extension("safetensors");
        export_with(&dir, &file, &as_format(ExportFormat::Safetensors)).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        export_with(&dir, &file, &as_format(ExportFormat::Safetensors)).unwrap();
        assert_eq!(bytes, std::fs::read(&file).unwrap(), "{what}: the same bytes again");

        let map = candle_core::safetensors::load(&file, &dev).unwrap();
        let (mut net, test, rule) = Run::open(&dir).unwrap().load_net(&dev).unwrap();
        assert_eq!(map.len(), net.layers.len(), "{what}: bias-free layers, no norms");
        for l in &net.layers {
            let got: Vec<f32> = map[&format!("{}.weight", l.name)]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want: Vec<f32> = l.masked_weight(rule).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{what}: {}", l.name);
            let zeros = got.iter().filter(|&&v| v == 0.0).count() as f64 / got.len() as f64;
            assert!((0.55..0.85).contains(&zeros), "{what}: {} is {zeros} zeros", l.name);
        }

        let dense_cfg = FitConfig {
            model: model.into(),
            ..FitConfig::defaults(MethodKind::Dense)
        };
        let dense_rule = rule_at(&dense_cfg, 0, 0.0);
        let mut dense = Net::build(&dense_cfg, test.shape, 10, Some(&map), &dev).unwrap();
        let idx: Vec<usize> = (0..test.len()).collect();
        let (x, _) = batch(&test, &idx, &dev).unwrap();
        let a: Vec<u32> = net
            .forward(&x, rule, false)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<u32> = dense
            .forward(&x, dense_rule, false)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "{what}: the same predictions");
        let (ea, eb) = (
            evaluate(&mut net, &test, rule, &dev).unwrap(),
            evaluate(&mut dense, &test, dense_rule, &dev).unwrap(),
        );
        assert_eq!(ea.accuracy, eb.accuracy, "{what}");
        assert!(ea.accuracy > 0.3, "{what}: {}", ea.accuracy);
    }

    // `fit --method dense --init-from FILE` starts from it.
    let from = FitConfig {
        data: data.clone(),
        epochs: 1,
        batch_size: 64,
        init_from: Some(tmp.path().join("edge-popup-lenet-300-100.safetensors")),
        ..FitConfig::defaults(MethodKind::Dense)
    };
    let m = fit(&tmp.path().join("dense-from-export"), from, QUIET).unwrap();
    assert!(m[0].test_accuracy > 0.5, "{m:?}");
}

#[test]
fn onnx_exports_repeat_and_flags_that_do_not_apply_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data_in(tmp.path());
    let dir = tmp.path().join("run");
    let cfg = FitConfig {
        data,
        epochs: 1,
        batch_size: 64,
        ..FitConfig::defaults(MethodKind::EdgePopup)
    };
    fit(&dir, cfg, QUIET).unwrap();
    let out = tmp.path().join("m.onnx");
    let s = export_with(&dir, &out, &as_format(ExportFormat::Onnx)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(s.bytes, bytes.len());
    // ModelProto.ir_version (field 1, varint) = 8 comes first.
    assert_eq!(bytes[..2], [0x08, 0x08]);
    export_with(&dir, &out, &as_format(ExportFormat::Onnx)).unwrap();
    assert_eq!(bytes, std::fs::read(&out).unwrap(), "the same bytes again");

    let refused = |opts: ExportOptions| export_with(&dir, &out, &opts).unwrap_err().to_string();
    let e = refused(ExportOptions {
        task: Some(0),
        ..as_format(ExportFormat::Onnx)
    });
    assert!(e.contains("--task 0") && e.contains("not a task sequence"), "{e}");
    let e = refused(ExportOptions {
        task: Some(0),
        ..as_format(ExportFormat::Smk)
    });
    assert!(e.contains("--task 0 picks one task") && e.contains("every task"), "{e}");
    let e = refused(ExportOptions {
        weights_dtype: Some(WeightsDtype::F16),
        ..as_format(ExportFormat::Safetensors)
    });
    assert!(e.contains("--weights-dtype f16") && e.contains("always f32"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes, "a refused export writes nothing");
}

/// A ResNet-8 state dict as PyTorch writes one (`model.state_dict()` of the equivalent
/// `nn.Module` with `bias=False` convolutions and affine `BatchNorm2d`s, saved with
/// `safetensors.torch.save_file`): every tensor lands in its layer, the int64
/// `num_batches_tracked` counters are ignored, and a bias is refused rather than dropped.
#[test]
fn init_from_reads_a_pytorch_state_dict() {
    use candle_core::{DType, Tensor};
    use std::collections::HashMap;
    let dev = Device::Cpu;
    let mut dict: HashMap<String, Tensor> = HashMap::new();
    let mut seed = 0u64;
    let mut random = |dims: &[usize]| {
        seed += 1;
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((smk_format::seeded::draw(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
            .collect();
        Tensor::from_vec(v, dims, &dev).unwrap()
    };
    let norm =
        |dict: &mut HashMap<String, Tensor>, name: &str, c: usize, random: &mut dyn FnMut(&[usize]) -> Tensor| {
            dict.insert(format!("{name}.weight"), random(&[c]));
            dict.insert(format!("{name}.bias"), random(&[c]));
            dict.insert(format!("{name}.running_mean"), random(&[c]));
            dict.insert(format!("{name}.running_var"), (random(&[c]) + 1.0).unwrap());
            dict.insert(
                format!("{name}.num_batches_tracked"),
                Tensor::new(1234i64, &dev).unwrap(),
            );
        };
    dict.insert("conv1.weight".into(), random(&[16, 1, 3, 3]));
    norm(&mut dict, "bn1", 16, &mut random);
    let mut c_in = 16;
    for (i, c) in [16usize, 32, 64].into_iter().enumerate() {
        let p = format!("layer{}", i + 1);
        dict.insert(format!("{p}.conv1.weight"), random(&[c, c_in, 3, 3]));
        norm(&mut dict, &format!("{p}.bn1"), c, &mut random);
        dict.insert(format!("{p}.conv2.weight"), random(&[c, c, 3, 3]));
        norm(&mut dict, &format!("{p}.bn2"), c, &mut random);
        if c != c_in {
            dict.insert(format!("{p}.shortcut.weight"), random(&[c, c_in, 1, 1]));
            norm(&mut dict, &format!("{p}.shortcut_bn"), c, &mut random);
        }
        c_in = c;
    }
    dict.insert("fc.weight".into(), random(&[10, 64]));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("resnet8.safetensors");
    candle_core::safetensors::save(&dict, &file).unwrap();

    let cfg = FitConfig {
        model: "resnet-8".into(),
        ..FitConfig::defaults(MethodKind::Dense)
    };
    let init = smk_trainer::train::load_init(&file).unwrap();
    let net = Net::build(&cfg, [1, 28, 28], 10, Some(&init), &dev).unwrap();
    let values = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(net.layers.len(), 10);
    for l in &net.layers {
        assert_eq!(
            values(&l.weight),
            values(&dict[&format!("{}.weight", l.name)]),
            "{}",
            l.name
        );
    }
    assert_eq!(net.norms.len(), 9);
    for n in &net.norms {
        let (g, b) = n.affine.as_ref().unwrap();
        for (got, key) in [
            (g.as_tensor(), "weight"),
            (b.as_tensor(), "bias"),
            (&n.running_mean, "running_mean"),
            (&n.running_var, "running_var"),
        ] {
            assert_eq!(
                values(got),
                values(&dict[&format!("{}.{key}", n.name)]),
                "{}.{key}",
                n.name
            );
        }
    }

    // A layer with a bias cannot be loaded into a bias-free layer without changing its function.
    dict.insert("fc.bias".into(), random(&[10]));
    candle_core::safetensors::save(&dict, &file).unwrap();
    let init = smk_trainer::train::load_init(&file).unwrap();
    let e = Net::build(&cfg, [1, 28, 28], 10, Some(&init), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'fc.bias'") && e.contains("bias-free"), "{e}");
}
