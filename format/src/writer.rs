//! The writer: a builder that takes layers, weights, masks and metadata and lays out a valid file.
//!
//! The builder computes shapes with the same inference the parser checks, puts every tensor and
//! mask in canonical order, converts weights under block masks to tile-major (or packed) order,
//! computes checksums and aligns sections. [`ModelBuilder::to_bytes`] parses and verifies its own
//! output before returning it, so a file it returns is one every reader accepts.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use bitvec::order::Lsb0;
use bitvec::slice::BitSlice;

use crate::crc32c::{crc32c, Crc32c};
use crate::error::Error;
use crate::model::{Input, Model};
use crate::seeded::SeededInit;
use crate::shape::{infer_shape, Op, Shape, Window2d};
use crate::spec::{
    align_up, caps, record, LayoutKind, MaskKind, SectionKind, StorageKind, BYTE_ORDER_MARK, DEFAULT_ALIGNMENT,
    HEADER_CRC_OFFSET, HEADER_LEN, MAGIC, MAX_ALIGNMENT, MIN_ALIGNMENT, NONE, SECTION_ENTRY_LEN, VERSION_MAJOR,
    VERSION_MINOR,
};

/// The values of a tensor handed to the builder, row-major over its dims.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Stored as binary32.
    F32(Vec<f32>),
    /// Stored as binary16.
    F16(Vec<half::f16>),
    /// Stored as bfloat16.
    Bf16(Vec<half::bf16>),
    /// Not stored: regenerated from the seed.
    Seeded(SeededInit),
    /// One bit per element (format 1.1): `+scale` where `positive`, else `−scale`.
    Signs {
        /// Each element's sign, row-major.
        positive: Vec<bool>,
        /// The magnitude of every element.
        scale: f32,
    },
}

/// A tensor handed to the builder.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    name: String,
    shape: Shape,
    data: TensorData,
}

impl TensorSpec {
    /// A tensor; checks that the values fit the dims.
    pub fn new(name: impl Into<String>, dims: &[u32], data: TensorData) -> Result<Self> {
        let shape = Shape::new(dims).ok_or(Error::InvalidInput {
            reason: "tensor dims must be rank 1..4, nonzero, at most 2^40 elements",
        })?;
        let len = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::Bf16(v) => v.len(),
            TensorData::Seeded(s) => {
                if !(s.scale.is_finite() && s.scale.is_sign_positive()) {
                    return Err(Error::InvalidInput {
                        reason: "seeded scale must be finite and not negative",
                    });
                }
                usize::try_from(shape.numel()).unwrap_or(usize::MAX)
            }
            TensorData::Signs { positive, scale } => {
                if !(scale.is_finite() && scale.is_sign_positive()) {
                    return Err(Error::InvalidInput {
                        reason: "the scale of signs must be finite and not negative",
                    });
                }
                positive.len()
            }
        };
        if len as u64 != shape.numel() {
            return Err(Error::InvalidInput {
                reason: "tensor values do not match its dims",
            });
        }
        Ok(Self {
            name: name.into(),
            shape,
            data,
        })
    }

    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, dims: &[u32], values: Vec<f32>) -> Result<Self> {
        Self::new(name, dims, TensorData::F32(values))
    }

    /// A seeded tensor.
    pub fn seeded(name: impl Into<String>, dims: &[u32], init: SeededInit) -> Result<Self> {
        Self::new(name, dims, TensorData::Seeded(init))
    }

    /// A tensor of signs: `±scale`, one bit per element.
    pub fn signs(name: impl Into<String>, dims: &[u32], positive: Vec<bool>, scale: f32) -> Result<Self> {
        Self::new(name, dims, TensorData::Signs { positive, scale })
    }

    /// Its shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Its values.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    fn storage(&self) -> StorageKind {
        match self.data {
            TensorData::F32(_) => StorageKind::F32,
            TensorData::F16(_) => StorageKind::F16,
            TensorData::Bf16(_) => StorageKind::Bf16,
            TensorData::Seeded(_) => StorageKind::Seeded,
            TensorData::Signs { .. } => StorageKind::Signs,
        }
    }

    /// The little-endian bytes of element `i` (row-major), or zeros for padding.
    fn push_element(&self, i: Option<usize>, out: &mut Vec<u8>) {
        match &self.data {
            TensorData::F32(v) => out.extend_from_slice(&i.map_or(0.0, |i| v[i]).to_le_bytes()),
            TensorData::F16(v) => out.extend_from_slice(&i.map_or(0, |i| v[i].to_bits()).to_le_bytes()),
            TensorData::Bf16(v) => out.extend_from_slice(&i.map_or(0, |i| v[i].to_bits()).to_le_bytes()),
            TensorData::Seeded(_) | TensorData::Signs { .. } => {}
        }
    }
}

/// A mask handed to the builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskSpec {
    kind: MaskKind,
    block: [u16; 2],
    bits: MaskBits,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum MaskBits {
    /// Logical row-major bits over the grid.
    Logical(Vec<bool>),
    /// Words already in the file's layout (rows padded to whole words).
    Words(Vec<u64>),
}

impl MaskSpec {
    /// One bit per weight, row-major over the matrix view: bit `i` is weight `i`.
    pub fn element(bits: &BitSlice<u64, Lsb0>) -> Self {
        Self {
            kind: MaskKind::Element,
            block: [1, 1],
            bits: MaskBits::Logical(bits.iter().by_vals().collect()),
        }
    }
    /// One bit per `block[0] × block[1]` block, row-major over the block grid.
    pub fn block(block: [u16; 2], bits: &BitSlice<u64, Lsb0>) -> Self {
        Self {
            kind: MaskKind::Block,
            block,
            bits: MaskBits::Logical(bits.iter().by_vals().collect()),
        }
    }
    /// Element mask from booleans, row-major over the matrix view.
    pub fn element_bools(bits: &[bool]) -> Self {
        Self {
            kind: MaskKind::Element,
            block: [1, 1],
            bits: MaskBits::Logical(bits.to_vec()),
        }
    }
    /// Block mask from booleans, row-major over the block grid.
    pub fn block_bools(block: [u16; 2], bits: &[bool]) -> Self {
        Self {
            kind: MaskKind::Block,
            block,
            bits: MaskBits::Logical(bits.to_vec()),
        }
    }
    /// Element mask already in the file's word layout (rows padded to whole `u64` words).
    pub fn element_words(words: &[u64]) -> Self {
        Self {
            kind: MaskKind::Element,
            block: [1, 1],
            bits: MaskBits::Words(words.to_vec()),
        }
    }
    /// Block mask already in the file's word layout.
    pub fn block_words(block: [u16; 2], words: &[u64]) -> Self {
        Self {
            kind: MaskKind::Block,
            block,
            bits: MaskBits::Words(words.to_vec()),
        }
    }

    /// The padded words for a `grid` of bits.
    fn words(&self, grid: (u64, u64)) -> Result<Vec<u64>> {
        let wpr = grid.1.div_ceil(64) as usize;
        let (rows, cols) = (grid.0 as usize, grid.1 as usize);
        match &self.bits {
            MaskBits::Logical(bits) => {
                if bits.len() != rows * cols {
                    return Err(Error::InvalidInput {
                        reason: "mask bit count does not match the tensor (or block grid)",
                    });
                }
                let mut words = vec![0u64; rows * wpr];
                for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
                    let (r, c) = (i / cols, i % cols);
                    words[r * wpr + c / 64] |= 1 << (c % 64);
                }
                Ok(words)
            }
            MaskBits::Words(words) => {
                if words.len() != rows * wpr {
                    return Err(Error::InvalidInput {
                        reason: "mask word count does not match the tensor (or block grid)",
                    });
                }
                let tail = cols % 64;
                if tail != 0 && words.chunks(wpr).any(|row| row[wpr - 1] >> tail != 0) {
                    return Err(Error::InvalidInput {
                        reason: "mask padding bits past the end of a row are set",
                    });
                }
                Ok(words.clone())
            }
        }
    }
}

#[derive(Clone, Debug)]
struct LayerDraft {
    name: String,
    op: Op,
    input: u32,
    second: u32,
    shape: Shape,
}

#[derive(Clone, Debug)]
struct MaskedTensor {
    kind: MaskKind,
    block: [u16; 2],
    packed: bool,
}

/// Builds a .smk file layer by layer. Each layer reads the previous layer's output (or the model
/// input, for the first) unless added with [`ModelBuilder::add`].
#[derive(Clone, Debug)]
pub struct ModelBuilder {
    input: Shape,
    alignment: u32,
    layers: Vec<LayerDraft>,
    tensors: Vec<TensorSpec>,
    masked: BTreeMap<u32, MaskedTensor>,
    sets: Vec<String>,
    masks: BTreeMap<(u32, u32), Vec<u64>>,
    metadata: BTreeMap<String, String>,
    history: Vec<(u64, String, String)>,
    next_input: Option<u32>,
}

/// Result of a builder call.
pub type Result<T> = core::result::Result<T, Error>;

fn invalid(reason: &'static str) -> Error {
    Error::InvalidInput { reason }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > caps::NAME_BYTES as usize {
        return Err(invalid("names must be 1 to 255 bytes"));
    }
    Ok(())
}

impl ModelBuilder {
    /// A model taking inputs of shape `input_dims` (without the batch dimension).
    pub fn new(input_dims: &[u32]) -> Result<Self> {
        Ok(Self {
            input: Shape::new(input_dims).ok_or(invalid("input dims must be rank 1..4 and nonzero"))?,
            alignment: DEFAULT_ALIGNMENT,
            layers: Vec::new(),
            tensors: Vec::new(),
            masked: BTreeMap::new(),
            sets: Vec::new(),
            masks: BTreeMap::new(),
            metadata: BTreeMap::new(),
            history: Vec::new(),
            next_input: None,
        })
    }

    /// Section alignment: a power of two from 64 to 65536 (default 64).
    pub fn alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        if !alignment.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&alignment) {
            return Err(invalid("alignment must be a power of two from 64 to 65536"));
        }
        self.alignment = alignment;
        Ok(self)
    }

    /// The input of the next single-input layer: the previous layer's output unless
    /// [`ModelBuilder::input_from`] said otherwise.
    fn last(&mut self) -> u32 {
        self.next_input
            .take()
            .unwrap_or((self.layers.len() as u32).wrapping_sub(1))
    }

    /// Makes the next layer read `input` instead of the previous layer's output (a branch, such
    /// as a residual shortcut).
    pub fn input_from(&mut self, input: Input) -> &mut Self {
        self.next_input = Some(match input {
            Input::Graph => NONE,
            Input::Layer(l) => l,
        });
        self
    }

    fn shape_of(&self, input: u32) -> Result<Shape> {
        if input == NONE {
            return Ok(self.input);
        }
        self.layers
            .get(input as usize)
            .map(|l| l.shape)
            .ok_or(invalid("layer input is not an earlier layer"))
    }

    /// Adds a layer; `slots` are the tensors in the op's slot order. Returns the layer index.
    fn push(
        &mut self,
        name: &str,
        make: impl FnOnce(&[Option<u32>; 4]) -> Op,
        slots: [Option<TensorSpec>; 4],
        input: u32,
        second: u32,
    ) -> Result<u32> {
        check_name(name)?;
        if self.layers.len() >= caps::LAYERS as usize {
            return Err(invalid("too many layers"));
        }
        let mut ids = [None; 4];
        let mut shapes = [None; 4];
        let mut next = self.tensors.len() as u32;
        for (i, t) in slots.iter().enumerate() {
            if let Some(t) = t {
                check_name(&t.name)?;
                ids[i] = Some(next);
                shapes[i] = Some(t.shape);
                next += 1;
            }
        }
        if next > caps::TENSORS {
            return Err(invalid("too many tensors"));
        }
        let op = make(&ids);
        let second_shape = if op.arity() == 2 {
            Some(self.shape_of(second)?)
        } else {
            None
        };
        let shape = infer_shape(&op, self.shape_of(input)?, second_shape, shapes)
            .map_err(|reason| Error::InvalidInput { reason })?;
        self.tensors.extend(slots.into_iter().flatten());
        self.layers.push(LayerDraft {
            name: name.to_string(),
            op,
            input,
            second,
            shape,
        });
        Ok(self.layers.len() as u32 - 1)
    }

    /// `y = W x + b`; `weight` is `[out, in]`.
    pub fn linear(&mut self, name: &str, weight: TensorSpec, bias: Option<TensorSpec>) -> Result<u32> {
        let input = self.last();
        self.push(
            name,
            |t| Op::Linear {
                weight: t[0].unwrap_or(NONE),
                bias: t[1],
            },
            [Some(weight), bias, None, None],
            input,
            NONE,
        )
    }

    /// 2-D convolution; `weight` is `[O, C, kh, kw]`.
    pub fn conv2d(
        &mut self,
        name: &str,
        weight: TensorSpec,
        bias: Option<TensorSpec>,
        window: Window2d,
    ) -> Result<u32> {
        let input = self.last();
        self.push(
            name,
            |t| Op::Conv2d {
                weight: t[0].unwrap_or(NONE),
                bias: t[1],
                window,
            },
            [Some(weight), bias, None, None],
            input,
            NONE,
        )
    }

    /// A layer without tensors (relu, pools, flatten, softmax).
    pub fn op(&mut self, name: &str, op: Op) -> Result<u32> {
        if op.tensor_slots().iter().any(Option::is_some) || op.arity() != 1 {
            return Err(invalid(
                "use the dedicated method for layers with tensors or two inputs",
            ));
        }
        let input = self.last();
        self.push(name, |_| op, [None, None, None, None], input, NONE)
    }

    /// `max(x, 0)`.
    pub fn relu(&mut self, name: &str) -> Result<u32> {
        self.op(name, Op::Relu)
    }

    /// Reshape to one dimension.
    pub fn flatten(&mut self, name: &str) -> Result<u32> {
        self.op(name, Op::Flatten)
    }

    /// Batch norm in inference form; `gamma`/`beta` absent for non-affine norms.
    pub fn batch_norm(
        &mut self,
        name: &str,
        mean: TensorSpec,
        var: TensorSpec,
        gamma: Option<TensorSpec>,
        beta: Option<TensorSpec>,
        eps: f32,
    ) -> Result<u32> {
        let input = self.last();
        self.push(
            name,
            |t| Op::BatchNorm {
                mean: t[0].unwrap_or(NONE),
                var: t[1].unwrap_or(NONE),
                gamma: t[2],
                beta: t[3],
                eps,
            },
            [Some(mean), Some(var), gamma, beta],
            input,
            NONE,
        )
    }

    /// Layer norm over the last dimension.
    pub fn layer_norm(
        &mut self,
        name: &str,
        gamma: Option<TensorSpec>,
        beta: Option<TensorSpec>,
        eps: f32,
    ) -> Result<u32> {
        let input = self.last();
        self.push(
            name,
            |t| Op::LayerNorm {
                gamma: t[0],
                beta: t[1],
                eps,
            },
            [gamma, beta, None, None],
            input,
            NONE,
        )
    }

    /// Element-wise sum of two earlier outputs (a residual connection).
    pub fn add(&mut self, name: &str, a: Input, b: Input) -> Result<u32> {
        self.next_input = None;
        let code = |i: Input| match i {
            Input::Graph => NONE,
            Input::Layer(l) => l,
        };
        self.push(name, |_| Op::Add, [None, None, None, None], code(a), code(b))
    }

    /// The weight tensor index of linear or conv layer `layer`.
    pub fn weight_of(&self, layer: u32) -> Option<u32> {
        match self.layers.get(layer as usize)?.op {
            Op::Linear { weight, .. } | Op::Conv2d { weight, .. } => Some(weight),
            _ => None,
        }
    }

    /// Adds a mask set (a task); returns its index.
    pub fn mask_set(&mut self, name: &str) -> Result<u32> {
        check_name(name)?;
        if self.sets.iter().any(|s| s == name) {
            return Err(invalid("mask set names must be unique"));
        }
        if self.sets.len() >= caps::MASK_SETS as usize {
            return Err(invalid("too many mask sets"));
        }
        self.sets.push(name.to_string());
        Ok(self.sets.len() as u32 - 1)
    }

    /// Sets the mask of layer `layer`'s weight in set `set`. Every set must mask the same weights
    /// with the same kind and block shape.
    pub fn set_mask(&mut self, set: u32, layer: u32, mask: MaskSpec) -> Result<()> {
        if set as usize >= self.sets.len() {
            return Err(invalid("no such mask set"));
        }
        let tensor = self
            .weight_of(layer)
            .ok_or(invalid("only linear and conv2d weights can carry masks"))?;
        if mask.kind == MaskKind::Block && !mask.block.iter().all(|s| (1..=caps::BLOCK_SIDE).contains(s)) {
            return Err(invalid("block sides must be 1 to 1024"));
        }
        if mask.kind == MaskKind::Block && matches!(self.tensors[tensor as usize].data, TensorData::Signs { .. }) {
            return Err(invalid("signs take element masks only"));
        }
        let shape = self.tensors[tensor as usize].shape;
        let (rows, cols) = shape.matrix();
        let grid = (rows.div_ceil(mask.block[0] as u64), cols.div_ceil(mask.block[1] as u64));
        let words = mask.words(grid)?;
        if !self.masked.contains_key(&tensor) && self.masked.len() >= caps::MASKED_TENSORS as usize {
            return Err(invalid("too many masked tensors"));
        }
        let entry = self.masked.entry(tensor).or_insert(MaskedTensor {
            kind: mask.kind,
            block: mask.block,
            packed: false,
        });
        if entry.kind != mask.kind || entry.block != mask.block {
            return Err(invalid(
                "every mask of one tensor must have the same kind and block shape",
            ));
        }
        self.masks.insert((set, tensor), words);
        Ok(())
    }

    /// Stores only the kept blocks of layer `layer`'s block-masked weight (needs exactly one
    /// mask set when written).
    pub fn pack_blocks(&mut self, layer: u32) -> Result<()> {
        let tensor = self
            .weight_of(layer)
            .ok_or(invalid("only linear and conv2d weights can be packed"))?;
        if matches!(self.tensors[tensor as usize].data, TensorData::Seeded(_)) {
            return Err(invalid("seeded weights store nothing, so there are no blocks to pack"));
        }
        match self.masked.get_mut(&tensor) {
            Some(m) if m.kind == MaskKind::Block => {
                m.packed = true;
                Ok(())
            }
            _ => Err(invalid("set a block mask before packing")),
        }
    }

    /// A metadata entry (keys 1..255 bytes; a repeated key replaces the value).
    pub fn metadata(&mut self, key: &str, value: &str) -> Result<&mut Self> {
        check_name(key)?;
        self.metadata.insert(key.to_string(), value.to_string());
        Ok(self)
    }

    /// A history entry: which tool wrote the file, when, and why.
    pub fn history(&mut self, tool: &str, note: &str, unix_time: u64) -> Result<&mut Self> {
        check_name(tool)?;
        self.history.push((unix_time, tool.to_string(), note.to_string()));
        Ok(self)
    }

    /// Lays out, checksums, and self-verifies the file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.sets.is_empty() && !self.masked.is_empty() {
            return Err(invalid("masks need a mask set"));
        }
        for (&t, m) in &self.masked {
            for s in 0..self.sets.len() as u32 {
                if !self.masks.contains_key(&(s, t)) {
                    return Err(invalid("every mask set must give a mask for every masked weight"));
                }
            }
            if m.packed && self.sets.len() != 1 {
                return Err(invalid("packed blocks need exactly one mask set"));
            }
        }

        let mut strings = Vec::new();
        let mut intern = |s: &str| -> [u8; 8] {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            let mut r = [0u8; 8];
            r[..4].copy_from_slice(&off.to_le_bytes());
            r[4..].copy_from_slice(&(s.len() as u32).to_le_bytes());
            r
        };

        let has_masks = !self.sets.is_empty();
        let structure_count = 3 + has_masks as u32 + !self.metadata.is_empty() as u32 + !self.history.is_empty() as u32;
        let mut payloads: Vec<(SectionKind, Vec<u8>)> = Vec::new();
        let first_payload = structure_count;

        // Tensors and their payload.
        let mut tensors = Vec::with_capacity(record::TENSORS_HEADER + record::TENSOR * self.tensors.len());
        put32(&mut tensors, self.tensors.len() as u32);
        tensors.resize(record::TENSORS_HEADER, 0);
        for (t, spec) in self.tensors.iter().enumerate() {
            let mut r = [0u8; record::TENSOR];
            r[0..8].copy_from_slice(&intern(&spec.name));
            r[8] = spec.storage().code();
            r[10] = spec.shape.rank() as u8;
            for (i, d) in spec.shape.dims().iter().enumerate() {
                r[16 + 4 * i..20 + 4 * i].copy_from_slice(&d.to_le_bytes());
            }
            r[32..36].copy_from_slice(&NONE.to_le_bytes());
            r[36..40].copy_from_slice(&NONE.to_le_bytes());
            if let TensorData::Seeded(init) = spec.data {
                r[40] = init.rule.code();
                r[41] = crate::spec::GeneratorKind::SplitMix64.code();
                r[44..48].copy_from_slice(&init.stream.to_le_bytes());
                r[48..56].copy_from_slice(&init.seed.to_le_bytes());
                r[56..60].copy_from_slice(&init.scale.to_bits().to_le_bytes());
            } else {
                if let TensorData::Signs { scale, .. } = spec.data {
                    r[56..60].copy_from_slice(&scale.to_bits().to_le_bytes());
                }
                let masked = self.masked.get(&(t as u32)).filter(|m| m.kind == MaskKind::Block);
                let (layout, data, index) = match masked {
                    None => (LayoutKind::RowMajor, self.row_major(spec), None),
                    Some(m) => {
                        let keep = m.packed.then(|| &self.masks[&(0, t as u32)]);
                        let (data, index) = self.tiles(spec, m.block, keep);
                        r[12..14].copy_from_slice(&m.block[0].to_le_bytes());
                        r[14..16].copy_from_slice(&m.block[1].to_le_bytes());
                        (
                            if m.packed {
                                LayoutKind::PackedBlocks
                            } else {
                                LayoutKind::TileMajor
                            },
                            data,
                            index,
                        )
                    }
                };
                r[9] = layout.code();
                let at = first_payload + payloads.len() as u32;
                r[32..36].copy_from_slice(&at.to_le_bytes());
                payloads.push((SectionKind::TensorData, data));
                if let Some(index) = index {
                    r[36..40].copy_from_slice(&(at + 1).to_le_bytes());
                    payloads.push((SectionKind::BlockIndex, index));
                }
            }
            tensors.extend_from_slice(&r);
        }

        // Layers.
        let mut graph = Vec::with_capacity(record::GRAPH_HEADER + record::LAYER * self.layers.len());
        put32(&mut graph, self.layers.len() as u32);
        put32(&mut graph, self.input.rank() as u32);
        put_dims(&mut graph, self.input);
        graph.resize(record::GRAPH_HEADER, 0);
        for l in &self.layers {
            let mut r = [0u8; record::LAYER];
            r[0..2].copy_from_slice(&l.op.kind().code().to_le_bytes());
            let mut attrs = [0u32; 8];
            let mut flags = 0u16;
            let put_window = |attrs: &mut [u32; 8], w: &Window2d| {
                attrs.copy_from_slice(&[
                    w.kernel[0],
                    w.kernel[1],
                    w.stride[0],
                    w.stride[1],
                    w.padding[0],
                    w.padding[1],
                    w.dilation[0],
                    w.dilation[1],
                ]);
            };
            match &l.op {
                Op::Conv2d { window, .. } | Op::MaxPool(window) => put_window(&mut attrs, window),
                Op::AvgPool {
                    window,
                    count_include_pad,
                } => {
                    put_window(&mut attrs, window);
                    flags = *count_include_pad as u16;
                }
                Op::BatchNorm { eps, .. } | Op::LayerNorm { eps, .. } => attrs[0] = eps.to_bits(),
                _ => {}
            }
            r[2..4].copy_from_slice(&flags.to_le_bytes());
            r[4..12].copy_from_slice(&intern(&l.name));
            r[12..16].copy_from_slice(&l.input.to_le_bytes());
            r[16..20].copy_from_slice(&l.second.to_le_bytes());
            r[20] = l.shape.rank() as u8;
            let mut dims = Vec::new();
            put_dims(&mut dims, l.shape);
            r[24..40].copy_from_slice(&dims);
            for (i, s) in l.op.tensor_slots().iter().enumerate() {
                r[40 + 4 * i..44 + 4 * i].copy_from_slice(&s.unwrap_or(NONE).to_le_bytes());
            }
            for (i, a) in attrs.iter().enumerate() {
                r[56 + 4 * i..60 + 4 * i].copy_from_slice(&a.to_le_bytes());
            }
            graph.extend_from_slice(&r);
        }

        // Masks: entries, sets, then one record per (set, entry), set-major.
        let mut masks = Vec::new();
        if has_masks {
            put32(&mut masks, self.sets.len() as u32);
            put32(&mut masks, self.masked.len() as u32);
            masks.resize(record::MASKS_HEADER, 0);
            for (&t, m) in &self.masked {
                let mut r = [0u8; record::MASKED_TENSOR];
                r[0..4].copy_from_slice(&t.to_le_bytes());
                r[4] = m.kind.code();
                if m.kind == MaskKind::Block {
                    r[6..8].copy_from_slice(&m.block[0].to_le_bytes());
                    r[8..10].copy_from_slice(&m.block[1].to_le_bytes());
                }
                masks.extend_from_slice(&r);
            }
            for name in &self.sets {
                masks.extend_from_slice(&intern(name));
                masks.extend_from_slice(&[0; 8]);
            }
            for s in 0..self.sets.len() as u32 {
                for &t in self.masked.keys() {
                    let words = &self.masks[&(s, t)];
                    let ones: u64 = words.iter().map(|w| w.count_ones() as u64).sum();
                    let at = first_payload + payloads.len() as u32;
                    masks.extend_from_slice(&ones.to_le_bytes());
                    put32(&mut masks, at);
                    put32(&mut masks, 0);
                    payloads.push((
                        SectionKind::MaskData,
                        words.iter().flat_map(|w| w.to_le_bytes()).collect(),
                    ));
                }
            }
        }

        let mut metadata = Vec::new();
        if !self.metadata.is_empty() {
            put32(&mut metadata, self.metadata.len() as u32);
            metadata.resize(record::LIST_HEADER, 0);
            for (k, v) in &self.metadata {
                metadata.extend_from_slice(&intern(k));
                metadata.extend_from_slice(&intern(v));
            }
        }
        // The oldest minor version that has every feature the file uses.
        let signs = self.tensors.iter().any(|t| matches!(t.data, TensorData::Signs { .. }));
        let per_task_norms = self.layers.iter().any(|l| match l.op {
            Op::BatchNorm { mean, .. } => self.tensors.get(mean as usize).is_some_and(|t| t.shape.rank() == 2),
            _ => false,
        });
        let minor: u16 = if signs || per_task_norms { 1 } else { 0 };
        debug_assert!(minor <= VERSION_MINOR);
        let mut history = Vec::new();
        if !self.history.is_empty() {
            put32(&mut history, self.history.len() as u32);
            history.resize(record::LIST_HEADER, 0);
            for (time, tool, note) in &self.history {
                history.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
                history.extend_from_slice(&minor.to_le_bytes());
                put32(&mut history, 0);
                history.extend_from_slice(&time.to_le_bytes());
                history.extend_from_slice(&intern(tool));
                history.extend_from_slice(&intern(note));
            }
        }
        if strings.len() > u32::MAX as usize {
            return Err(invalid("names and metadata exceed 4 GiB"));
        }

        let mut sections: Vec<(SectionKind, &[u8])> = vec![
            (SectionKind::Strings, &strings[..]),
            (SectionKind::Graph, &graph[..]),
            (SectionKind::Tensors, &tensors[..]),
        ];
        if has_masks {
            sections.push((SectionKind::Masks, &masks));
        }
        if !self.metadata.is_empty() {
            sections.push((SectionKind::Metadata, &metadata));
        }
        if !self.history.is_empty() {
            sections.push((SectionKind::History, &history));
        }
        sections.extend(payloads.iter().map(|(k, b)| (*k, &b[..])));
        if sections.len() > caps::SECTIONS as usize {
            return Err(invalid("too many sections"));
        }
        let bytes = layout_file(&sections, self.alignment, minor);
        let model = Model::parse(&bytes)?;
        model.verify()?;
        Ok(bytes)
    }

    fn row_major(&self, spec: &TensorSpec) -> Vec<u8> {
        if let TensorData::Signs { positive, .. } = &spec.data {
            // Each row whole 64-bit words, bit j of word w the sign of column 64w + j.
            let cols = spec.shape.matrix().1 as usize;
            let mut out = Vec::with_capacity(positive.len() / 8 + 8);
            for row in positive.chunks(cols) {
                for word in row.chunks(64) {
                    let bits = word.iter().enumerate().fold(0u64, |acc, (j, &p)| acc | (p as u64) << j);
                    out.extend_from_slice(&bits.to_le_bytes());
                }
            }
            return out;
        }
        let n = spec.shape.numel() as usize;
        let mut out = Vec::with_capacity(n * spec.storage().element_bytes() as usize);
        for i in 0..n {
            spec.push_element(Some(i), &mut out);
        }
        out
    }

    /// Tile-major bytes (every block, or with `keep` only the kept ones plus their index).
    fn tiles(&self, spec: &TensorSpec, block: [u16; 2], keep: Option<&Vec<u64>>) -> (Vec<u8>, Option<Vec<u8>>) {
        let (rows, cols) = spec.shape.matrix();
        let (br, bc) = (block[0] as u64, block[1] as u64);
        let (gr, gc) = (rows.div_ceil(br), cols.div_ceil(bc));
        let wpr = gc.div_ceil(64);
        let mut out = Vec::new();
        let mut row_ptr = vec![0u32];
        let mut cols_idx = Vec::new();
        for i in 0..gr {
            for j in 0..gc {
                if let Some(words) = keep {
                    if words[(i * wpr + j / 64) as usize] >> (j % 64) & 1 == 0 {
                        continue;
                    }
                    cols_idx.push(j as u32);
                }
                for r in i * br..(i + 1) * br {
                    for c in j * bc..(j + 1) * bc {
                        let inside = r < rows && c < cols;
                        spec.push_element(inside.then_some((r * cols + c) as usize), &mut out);
                    }
                }
            }
            row_ptr.push(cols_idx.len() as u32);
        }
        let index = keep.map(|_| row_ptr.iter().chain(&cols_idx).flat_map(|v| v.to_le_bytes()).collect());
        (out, index)
    }

    /// Builds, then writes atomically to `path` (see [`write_atomic`]).
    #[cfg(feature = "std")]
    pub fn write(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        let bytes = self
            .to_bytes()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        write_atomic(path, &bytes)
    }
}

fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put_dims(v: &mut Vec<u8>, s: Shape) {
    for i in 0..caps::RANK {
        put32(v, s.dims().get(i).copied().unwrap_or(0));
    }
}

/// Header, section table, and sections each at the aligned end of the previous one.
fn layout_file(sections: &[(SectionKind, &[u8])], alignment: u32, minor: u16) -> Vec<u8> {
    let align = alignment as u64;
    let header_len = HEADER_LEN + SECTION_ENTRY_LEN * sections.len();
    let mut offsets = Vec::with_capacity(sections.len());
    let mut end = header_len as u64;
    for (_, b) in sections {
        let at = align_up(end, align).unwrap_or(u64::MAX);
        offsets.push(at);
        end = at + b.len() as u64;
    }
    let mut out = vec![0u8; end as usize];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
    out[10..12].copy_from_slice(&minor.to_le_bytes());
    out[12..16].copy_from_slice(&BYTE_ORDER_MARK.to_le_bytes());
    out[20..24].copy_from_slice(&alignment.to_le_bytes());
    out[24..28].copy_from_slice(&(sections.len() as u32).to_le_bytes());
    out[28..32].copy_from_slice(&(header_len as u32).to_le_bytes());
    out[32..40].copy_from_slice(&end.to_le_bytes());
    for (i, ((kind, b), &at)) in sections.iter().zip(&offsets).enumerate() {
        let e = HEADER_LEN + SECTION_ENTRY_LEN * i;
        out[e..e + 4].copy_from_slice(&kind.code().to_le_bytes());
        out[e + 8..e + 16].copy_from_slice(&at.to_le_bytes());
        out[e + 16..e + 24].copy_from_slice(&(b.len() as u64).to_le_bytes());
        out[e + 24..e + 28].copy_from_slice(&crc32c(b).to_le_bytes());
        out[at as usize..at as usize + b.len()].copy_from_slice(b);
    }
    let mut crc = Crc32c::new();
    crc.update(&out[..HEADER_CRC_OFFSET]);
    crc.update(&[0; 4]);
    crc.update(&out[HEADER_CRC_OFFSET + 4..header_len]);
    out[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.finish().to_le_bytes());
    out
}

/// Recomputes the header checksum of `bytes` in place (for tools that patch a header field,
/// and for tests that make hostile files).
pub fn refresh_header_checksum(bytes: &mut [u8]) {
    let Some(count) = bytes.get(24..28).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) else {
        return;
    };
    let header_len = SECTION_ENTRY_LEN
        .saturating_mul(count as usize)
        .saturating_add(HEADER_LEN)
        .min(bytes.len());
    if header_len < HEADER_LEN {
        return;
    }
    let mut crc = Crc32c::new();
    crc.update(&bytes[..HEADER_CRC_OFFSET]);
    crc.update(&[0; 4]);
    crc.update(&bytes[HEADER_CRC_OFFSET + 4..header_len]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.finish().to_le_bytes());
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over `path`. Readers (and mappings of the old file) never see a partial file.
#[cfg(feature = "std")]
pub fn write_atomic(path: impl AsRef<std::path::Path>, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Persist the rename; some filesystems cannot open directories, which is not an error.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
