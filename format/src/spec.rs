//! Constants and enumerations of the .smk format, version 1.1.
//!
//! Every number here is defined in `FORMAT.md`; this module is the one place the code spells them.

/// The first eight bytes of every .smk file. The high-bit first byte and the CR LF / SUB / LF tail
/// catch 7-bit transfers and newline translation, as PNG's magic does.
pub const MAGIC: [u8; 8] = *b"\x89SMK\r\n\x1a\n";
/// Major version: bumped only for structural change. Readers refuse other majors.
pub const VERSION_MAJOR: u16 = 1;
/// The newest minor version this crate reads and writes. Readers accept any minor of their
/// major; the writer writes the oldest minor that has every feature a file uses (1.0 unless it
/// stores signs or per-task batch norms).
pub const VERSION_MINOR: u16 = 1;
/// The byte-order marker, stored little-endian (bytes `04 03 02 01`).
pub const BYTE_ORDER_MARK: u32 = 0x0102_0304;

/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 64;
/// Length of one section table entry in bytes.
pub const SECTION_ENTRY_LEN: usize = 32;
/// Byte offset of the header checksum field.
pub const HEADER_CRC_OFFSET: usize = 40;

/// Smallest allowed section alignment.
pub const MIN_ALIGNMENT: u32 = 64;
/// Largest allowed section alignment.
pub const MAX_ALIGNMENT: u32 = 65536;
/// Alignment the writer uses unless told otherwise.
pub const DEFAULT_ALIGNMENT: u32 = 64;

/// Marks an absent index (layer input, tensor slot, section).
pub const NONE: u32 = u32::MAX;

/// Caps that bound the work a hostile header can ask for.
pub mod caps {
    /// Entries in the section table.
    pub const SECTIONS: u32 = 1 << 22;
    /// Layers in the graph.
    pub const LAYERS: u32 = 65_535;
    /// Tensors.
    pub const TENSORS: u32 = 65_535;
    /// Mask sets (tasks).
    pub const MASK_SETS: u32 = 4096;
    /// Tensors carrying masks.
    pub const MASKED_TENSORS: u32 = 4096;
    /// Metadata entries.
    pub const METADATA: u32 = 65_535;
    /// History entries.
    pub const HISTORY: u32 = 65_535;
    /// Bytes in a name (layer, tensor, mask set, metadata key, history tool).
    pub const NAME_BYTES: u32 = 255;
    /// Rank of a shape.
    pub const RANK: usize = 4;
    /// Elements in one tensor (2^40).
    pub const ELEMENTS: u64 = 1 << 40;
    /// Rows or columns of a mask block.
    pub const BLOCK_SIDE: u16 = 1024;
}

/// Record sizes, in bytes.
pub mod record {
    /// GRAPH section header.
    pub const GRAPH_HEADER: usize = 32;
    /// One layer.
    pub const LAYER: usize = 96;
    /// TENSORS section header.
    pub const TENSORS_HEADER: usize = 16;
    /// One tensor.
    pub const TENSOR: usize = 64;
    /// MASKS section header.
    pub const MASKS_HEADER: usize = 16;
    /// One masked-tensor entry.
    pub const MASKED_TENSOR: usize = 16;
    /// One mask set.
    pub const MASK_SET: usize = 16;
    /// One mask (per set, per masked tensor).
    pub const MASK: usize = 16;
    /// METADATA / HISTORY section header.
    pub const LIST_HEADER: usize = 16;
    /// One metadata entry.
    pub const METADATA: usize = 16;
    /// One history entry.
    pub const HISTORY: usize = 32;
}

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident : $repr:ty { $($(#[$vm:meta])* $v:ident = $n:literal => $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name { $($(#[$vm])* $v = $n,)+ }
        impl $name {
            /// Decodes the on-disk code, `None` when unknown.
            pub fn from_code(code: $repr) -> Option<Self> {
                match code { $($n => Some(Self::$v),)+ _ => None }
            }
            /// The on-disk code.
            pub fn code(self) -> $repr { self as $repr }
            /// The name the spec uses.
            pub fn name(self) -> &'static str {
                match self { $(Self::$v => $s,)+ }
            }
        }
        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

code_enum! {
    /// What a section holds.
    SectionKind: u32 {
        /// UTF-8 string pool.
        Strings = 1 => "STRINGS",
        /// Input shape and layer records.
        Graph = 2 => "GRAPH",
        /// Tensor records.
        Tensors = 3 => "TENSORS",
        /// Mask sets and mask records.
        Masks = 4 => "MASKS",
        /// Key/value metadata.
        Metadata = 5 => "METADATA",
        /// Writers that produced or changed the file.
        History = 6 => "HISTORY",
        /// The bytes of one stored tensor.
        TensorData = 16 => "TENSOR_DATA",
        /// The block-row index of one packed tensor.
        BlockIndex = 17 => "BLOCK_INDEX",
        /// The bits of one mask.
        MaskData = 18 => "MASK_DATA",
    }
}

code_enum! {
    /// The operation of a layer.
    LayerKind: u16 {
        /// `y = W x + b`.
        Linear = 1 => "linear",
        /// 2-D convolution, NCHW.
        Conv2d = 2 => "conv2d",
        /// `max(x, 0)`.
        Relu = 3 => "relu",
        /// 2-D max pooling.
        MaxPool = 4 => "max_pool",
        /// 2-D average pooling.
        AvgPool = 5 => "avg_pool",
        /// Reshape to one dimension.
        Flatten = 6 => "flatten",
        /// Batch norm in inference form.
        BatchNorm = 7 => "batch_norm",
        /// Layer norm over the last dimension.
        LayerNorm = 8 => "layer_norm",
        /// Element-wise sum of two earlier outputs.
        Add = 9 => "add",
        /// Softmax over the last dimension.
        Softmax = 10 => "softmax",
    }
}

code_enum! {
    /// How a tensor's values are stored.
    StorageKind: u8 {
        /// IEEE 754 binary32.
        F32 = 1 => "f32",
        /// IEEE 754 binary16.
        F16 = 2 => "f16",
        /// bfloat16 (the high half of a binary32).
        Bf16 = 3 => "bf16",
        /// Not stored: regenerated from a seed (see the `seeded` module).
        Seeded = 4 => "seeded",
        /// One bit per element, `+scale` or `−scale` (format 1.1): learned binary weights.
        Signs = 5 => "signs",
    }
}

impl StorageKind {
    /// Bytes per stored element: 0 for seeded, and for signs, which store bits (a row of
    /// `cols` signs is `ceil(cols / 64)` 64-bit words).
    pub fn element_bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Seeded | Self::Signs => 0,
        }
    }
}

code_enum! {
    /// How a stored tensor's elements are ordered.
    LayoutKind: u8 {
        /// C order over the tensor's dims (also the code for seeded tensors, which store nothing).
        RowMajor = 0 => "row-major",
        /// The matrix view cut into R×C blocks, each contiguous, blocks in row-major grid order.
        TileMajor = 1 => "tile-major",
        /// Only the kept blocks, block-row by block-row, with a BLOCK_INDEX section.
        PackedBlocks = 2 => "packed-blocks",
    }
}

code_enum! {
    /// The distribution of seeded weights.
    InitRule: u8 {
        /// `±scale`, the sign from one bit of a 64-bit draw.
        SignedConstant = 1 => "signed-constant",
        /// Uniform on `(-scale, scale)`.
        Uniform = 2 => "uniform",
        /// Normal with mean 0 and standard deviation `scale`.
        Normal = 3 => "normal",
    }
}

code_enum! {
    /// The counter-based generator behind seeded weights.
    GeneratorKind: u8 {
        /// SplitMix64 keyed by seed, stream and rule (see `FORMAT.md`).
        SplitMix64 = 1 => "splitmix64",
    }
}

code_enum! {
    /// What one mask bit covers.
    MaskKind: u8 {
        /// One bit per weight.
        Element = 1 => "element",
        /// One bit per R×C block of the matrix view.
        Block = 2 => "block",
    }
}

/// `x` rounded up to a multiple of `align` (a power of two), `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}
