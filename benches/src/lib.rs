//! Shared pieces of the benchmarks: synthetic layers and models built with the format's writer,
//! held in huge-page memory as a mapped file would be.

use smk_format::seeded::{draw, SeededInit};
use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{InitRule, Model, Op, Window2d};

/// How a benchmarked layer stores its weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Weights {
    F32,
    F16,
    Bf16,
    /// Signed-constant, regenerated from the seed.
    Seeded,
}

impl Weights {
    pub fn name(self) -> &'static str {
        match self {
            Weights::F32 => "f32",
            Weights::F16 => "f16",
            Weights::Bf16 => "bf16",
            Weights::Seeded => "seeded",
        }
    }
}

/// Which mask a benchmarked layer has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mask {
    None,
    Element(f64),
    /// Block rows, block columns, density, packed (else tile-major).
    Block(u16, u16, f64, bool),
}

impl Mask {
    pub fn name(self) -> String {
        match self {
            Mask::None => "dense".into(),
            Mask::Element(d) => format!("element-{d}"),
            Mask::Block(r, c, d, packed) => format!("block{r}x{c}-{d}{}", if packed { "" } else { "-tiled" }),
        }
    }
    pub fn density(self) -> f64 {
        match self {
            Mask::None => 1.0,
            Mask::Element(d) | Mask::Block(_, _, d, _) => d,
        }
    }
}

/// Uniform values in [-1, 1)·scale.
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| ((draw(seed, i) >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale)
        .collect()
}

fn bits(seed: u64, n: usize, density: f64) -> Vec<bool> {
    (0..n as u64)
        .map(|i| ((draw(seed ^ 0xB175, i) >> 11) as f64) < density * (1u64 << 53) as f64)
        .collect()
}

fn weight(name: &str, rows: u32, cols: u32, w: Weights, seed: u64) -> TensorSpec {
    let n = rows as usize * cols as usize;
    let scale = 1.0 / (cols as f32).sqrt();
    let dims = [rows, cols];
    match w {
        Weights::F32 => TensorSpec::f32(name, &dims, values(seed, n, scale)),
        Weights::F16 => TensorSpec::new(
            name,
            &dims,
            TensorData::F16(values(seed, n, scale).into_iter().map(half::f16::from_f32).collect()),
        ),
        Weights::Bf16 => TensorSpec::new(
            name,
            &dims,
            TensorData::Bf16(values(seed, n, scale).into_iter().map(half::bf16::from_f32).collect()),
        ),
        Weights::Seeded => TensorSpec::seeded(
            name,
            &dims,
            SeededInit {
                rule: InitRule::SignedConstant,
                seed,
                stream: 0,
                scale,
            },
        ),
    }
    .expect("valid weight")
}

#[allow(clippy::too_many_arguments)]
fn set_mask(b: &mut ModelBuilder, set: u32, layer: u32, rows: u32, cols: u32, mask: Mask, w: Weights, seed: u64) {
    match mask {
        Mask::None => {}
        Mask::Element(d) => b
            .set_mask(
                set,
                layer,
                MaskSpec::element_bools(&bits(seed, rows as usize * cols as usize, d)),
            )
            .unwrap(),
        Mask::Block(r, c, d, packed) => {
            let grid = rows.div_ceil(r as u32) as usize * cols.div_ceil(c as u32) as usize;
            b.set_mask(set, layer, MaskSpec::block_bools([r, c], &bits(seed, grid, d)))
                .unwrap();
            if packed && w != Weights::Seeded {
                b.pack_blocks(layer).unwrap();
            }
        }
    }
}

/// One `rows × cols` linear layer.
pub fn layer(rows: u32, cols: u32, w: Weights, mask: Mask, seed: u64) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[cols]).unwrap();
    let fc = b.linear("fc", weight("fc.weight", rows, cols, w, seed), None).unwrap();
    if mask != Mask::None {
        let s = b.mask_set("bench").unwrap();
        set_mask(&mut b, s, fc, rows, cols, mask, w, seed);
    }
    b.to_bytes().unwrap()
}

/// A stack of `count` `width × width` linear layers with ReLUs between.
pub fn stack(width: u32, count: u32, w: Weights, mask: Mask) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[width]).unwrap();
    let mut ids = Vec::new();
    for l in 0..count {
        ids.push(
            b.linear(
                &format!("fc{l}"),
                weight(&format!("fc{l}.weight"), width, width, w, l as u64),
                None,
            )
            .unwrap(),
        );
        if l + 1 < count {
            b.relu(&format!("relu{l}")).unwrap();
        }
    }
    if mask != Mask::None {
        let s = b.mask_set("bench").unwrap();
        for (l, &id) in ids.iter().enumerate() {
            set_mask(&mut b, s, id, width, width, mask, w, l as u64);
        }
    }
    b.to_bytes().unwrap()
}

/// LeNet-300-100 as the trainer exports it (normalisation, then 784-300-100-10 with ReLUs,
/// softmax).
pub fn lenet_300_100(w: Weights, mask: Mask) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[1, 28, 28]).unwrap();
    b.flatten("flat").unwrap();
    let shapes = [(300, 784), (100, 300), (10, 100)];
    let mut ids = Vec::new();
    for (l, &(r, c)) in shapes.iter().enumerate() {
        ids.push(
            b.linear(
                &format!("fc{l}"),
                weight(&format!("fc{l}.weight"), r, c, w, l as u64),
                None,
            )
            .unwrap(),
        );
        if l < 2 {
            b.relu(&format!("relu{l}")).unwrap();
        }
    }
    b.op("softmax", Op::Softmax).unwrap();
    if mask != Mask::None {
        let s = b.mask_set("bench").unwrap();
        for (l, (&id, &(r, c))) in ids.iter().zip(&shapes).enumerate() {
            set_mask(&mut b, s, id, r, c, mask, w, l as u64);
        }
    }
    b.to_bytes().unwrap()
}

/// Conv-4 for 28×28 digits (Ramanujan et al.'s, as the trainer builds it): two 64-channel and
/// two 128-channel 3×3 convolutions with max pooling, then 256-256-10.
pub fn conv4(w: Weights, mask: Mask) -> Vec<u8> {
    let mut b = ModelBuilder::new(&[1, 28, 28]).unwrap();
    let mut layers = Vec::new();
    let mut channels = 1;
    for (k, width) in [64u32, 64, 128, 128].into_iter().enumerate() {
        let t = weight(&format!("conv{k}.weight"), width, channels * 9, w, k as u64);
        let t = TensorSpec::new(format!("conv{k}.weight"), &[width, channels, 3, 3], t.data().clone()).unwrap();
        layers.push((
            b.conv2d(&format!("conv{k}"), t, None, Window2d::conv(3, 1)).unwrap(),
            width,
            channels * 9,
        ));
        b.relu(&format!("relu{k}")).unwrap();
        if k % 2 == 1 {
            b.op(&format!("pool{k}"), Op::MaxPool(Window2d::pool(2))).unwrap();
        }
        channels = width;
    }
    b.flatten("flat").unwrap();
    for (l, &(r, c)) in [(256u32, 128 * 49u32), (256, 256), (10, 256)].iter().enumerate() {
        layers.push((
            b.linear(
                &format!("fc{l}"),
                weight(&format!("fc{l}.weight"), r, c, w, 10 + l as u64),
                None,
            )
            .unwrap(),
            r,
            c,
        ));
        if l < 2 {
            b.relu(&format!("frelu{l}")).unwrap();
        }
    }
    if mask != Mask::None {
        let s = b.mask_set("bench").unwrap();
        for (l, &(id, r, c)) in layers.iter().enumerate() {
            set_mask(&mut b, s, id, r, c, mask, w, l as u64);
        }
    }
    b.to_bytes().unwrap()
}

/// Bytes in page-aligned anonymous memory, on huge pages where the kernel allows.
#[derive(Debug)]
pub struct Mapped {
    map: memmap2::MmapMut,
    len: usize,
}

impl Mapped {
    pub fn new(bytes: &[u8]) -> Self {
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).expect("anonymous memory");
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        map[..bytes.len()].copy_from_slice(bytes);
        Self { map, len: bytes.len() }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.map[..self.len]
    }
    pub fn model(&self) -> Model<'_> {
        Model::parse(self.bytes()).expect("a valid model")
    }
}

/// Bytes of weights and masks one inference reads (see `Plan::bytes_read`).
pub fn bytes_read(model: &Model<'_>) -> u64 {
    smk_runtime::Plan::new(model, 1, None).map_or(0, |p| p.bytes_read())
}
