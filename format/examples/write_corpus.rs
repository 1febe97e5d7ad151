//! Writes small valid .smk files of every layer, storage and mask kind into a directory, then
//! opens each and prints a summary. Used to seed the fuzzer's corpus, and a working example of
//! the builder API.
//!
//! ```text
//! cargo run -p smk-format --example write_corpus -- DIR
//! ```

use smk_format::seeded::{kaiming_std, SeededInit, RELU_GAIN};
use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{InitRule, Input, MappedModel, Op, Window2d};

fn values(n: usize, salt: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| ((smk_format::seeded::draw(salt, i) >> 40) as f32 / 8_388_608.0) - 1.0)
        .collect()
}

fn keep(n: usize, salt: u64, density: f64) -> Vec<bool> {
    (0..n as u64)
        .map(|i| (smk_format::seeded::draw(salt, i) >> 11) as f64 / (1u64 << 53) as f64 <= density)
        .collect()
}

/// LeNet-300-100 over seeded signed-constant weights with element masks: the edge-popup export.
fn seeded_mlp(tasks: usize) -> Result<ModelBuilder, smk_format::Error> {
    let mut b = ModelBuilder::new(&[1, 28, 28])?;
    b.flatten("flatten")?;
    let mut fan_in = 784u32;
    let mut layers = Vec::new();
    for (i, out) in [300u32, 100, 10].into_iter().enumerate() {
        let init = SeededInit {
            rule: InitRule::SignedConstant,
            seed: 7,
            stream: i as u32,
            scale: kaiming_std(fan_in as f64, RELU_GAIN),
        };
        layers.push((
            b.linear(
                &format!("fc{}", i + 1),
                TensorSpec::seeded(format!("fc{}.weight", i + 1), &[out, fan_in], init)?,
                None,
            )?,
            out * fan_in,
        ));
        if out != 10 {
            b.relu(&format!("relu{}", i + 1))?;
        }
        fan_in = out;
    }
    for t in 0..tasks {
        let set = b.mask_set(&format!("task-{t}"))?;
        for (k, &(layer, n)) in layers.iter().enumerate() {
            b.set_mask(
                set,
                layer,
                MaskSpec::element_bools(&keep(n as usize, (t * 10 + k) as u64, 0.5)),
            )?;
        }
    }
    b.metadata("method", "edge-popup")?;
    b.history("write_corpus", "seeded LeNet-300-100", 0)?;
    Ok(b)
}

/// A small conv net with every layer kind; the dense layer is block-masked (tile-major or packed).
fn conv_net(packed: bool) -> Result<ModelBuilder, smk_format::Error> {
    let mut b = ModelBuilder::new(&[1, 12, 12])?;
    b.conv2d(
        "conv",
        TensorSpec::f32("conv.weight", &[4, 1, 3, 3], values(36, 1))?,
        Some(TensorSpec::f32("conv.bias", &[4], values(4, 2))?),
        Window2d::conv(3, 1),
    )?;
    let f16 = |n, s| TensorData::F16(values(n, s).into_iter().map(half::f16::from_f32).collect());
    b.batch_norm(
        "bn",
        TensorSpec::f32("bn.mean", &[4], values(4, 3))?,
        TensorSpec::f32("bn.var", &[4], vec![1.0; 4])?,
        Some(TensorSpec::new("bn.weight", &[4], f16(4, 4))?),
        None,
        1e-5,
    )?;
    b.relu("relu")?;
    b.op("max", Op::MaxPool(Window2d::pool(2)))?;
    b.op(
        "avg",
        Op::AvgPool {
            window: Window2d::pool(2),
            count_include_pad: true,
        },
    )?;
    b.flatten("flat")?;
    let bf16 = TensorData::Bf16(values(20 * 36, 5).into_iter().map(half::bf16::from_f32).collect());
    let fc = b.linear("fc", TensorSpec::new("fc.weight", &[20, 36], bf16)?, None)?;
    b.layer_norm(
        "ln",
        None,
        Some(TensorSpec::f32("ln.bias", &[20], values(20, 6))?),
        1e-5,
    )?;
    let a = b.relu("relu2")?;
    b.add("twice", Input::Layer(a), Input::Layer(a))?;
    b.op("softmax", Op::Softmax)?;
    let set = b.mask_set("task")?;
    b.set_mask(set, fc, MaskSpec::block_bools([8, 8], &keep(3 * 5, 9, 0.4)))?;
    if packed {
        b.pack_blocks(fc)?;
    }
    Ok(b)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: write_corpus DIR")?;
    std::fs::create_dir_all(&dir)?;
    let files = [
        ("seeded-mlp-1task.smk", seeded_mlp(1)?),
        ("seeded-mlp-3tasks.smk", seeded_mlp(3)?),
        ("conv-tile-major.smk", conv_net(false)?),
        ("conv-packed.smk", conv_net(true)?),
    ];
    for (name, builder) in files {
        let path = std::path::Path::new(&dir).join(name);
        builder.write(&path)?;
        let mapped = MappedModel::open(&path, true)?;
        let m = mapped.model()?;
        println!(
            "{}: {} bytes, {} layers, {} tensors, {} mask sets, input {} -> output {}",
            path.display(),
            mapped.bytes().len(),
            m.layer_count(),
            m.tensor_count(),
            m.mask_set_count(),
            m.input_shape(),
            m.output_shape()
        );
    }
    Ok(())
}
