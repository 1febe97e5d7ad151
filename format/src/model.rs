//! The parser: `&[u8]` in, borrowed views out, nothing copied or allocated.
//!
//! [`Model::parse`] checks the whole structure (header, section table, graph, tensors, masks,
//! metadata, history, block indices) and the checksums of every structure section, in time
//! proportional to the header and records, never to the weights. [`Model::verify`] checks the
//! rest: payload checksums, mask popcounts and padding, packed indices against masks.

use crate::bytes::{usize_of, Rec};
use crate::crc32c::{crc32c, Crc32c};
use crate::error::Error;
use crate::seeded::SeededInit;
use crate::shape::{infer_shape, Op, Shape, Window2d};
use crate::spec::{
    align_up, caps, record, GeneratorKind, InitRule, LayerKind, LayoutKind, MaskKind, SectionKind, StorageKind,
    BYTE_ORDER_MARK, HEADER_CRC_OFFSET, HEADER_LEN, MAGIC, MAX_ALIGNMENT, MIN_ALIGNMENT, NONE, SECTION_ENTRY_LEN,
    VERSION_MAJOR,
};

/// One entry of the section table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Position in the table.
    pub index: u32,
    /// What it holds.
    pub kind: SectionKind,
    /// Absolute offset of its first byte.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
    /// CRC-32C of its bytes.
    pub checksum: u32,
}

/// Where a layer's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The model's input.
    Graph,
    /// The output of an earlier layer.
    Layer(u32),
}

impl Input {
    fn from_code(code: u32) -> Self {
        if code == NONE {
            Input::Graph
        } else {
            Input::Layer(code)
        }
    }
}

/// One layer of the graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layer<'a> {
    /// Position in the graph.
    pub index: u32,
    /// Its name.
    pub name: &'a str,
    /// What it computes, with its tensors.
    pub op: Op,
    /// Its first input.
    pub input: Input,
    /// Its second input (add only).
    pub second_input: Option<Input>,
    /// Its output shape, without the batch dimension.
    pub output_shape: Shape,
}

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Storage {
    /// binary32.
    F32,
    /// binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// Regenerated from a seed.
    Seeded(SeededInit),
    /// One bit per element: `+scale` where it is set, `−scale` where it is clear (format 1.1).
    Signs {
        /// The magnitude of every element.
        scale: f32,
    },
}

impl Storage {
    /// The storage kind.
    pub fn kind(&self) -> StorageKind {
        match self {
            Storage::F32 => StorageKind::F32,
            Storage::F16 => StorageKind::F16,
            Storage::Bf16 => StorageKind::Bf16,
            Storage::Seeded(_) => StorageKind::Seeded,
            Storage::Signs { .. } => StorageKind::Signs,
        }
    }
}

/// The block-row index of a packed tensor (CSR over blocks): for block row `r`, the kept blocks
/// are `row_ptr[r]..row_ptr[r+1]`, their block columns in `cols`, ascending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIndex<'a> {
    rows: u32,
    row_ptr: &'a [u8],
    cols: &'a [u8],
}

impl<'a> BlockIndex<'a> {
    /// Block rows.
    pub fn block_rows(&self) -> u32 {
        self.rows
    }
    /// Kept blocks in all.
    pub fn nnz(&self) -> u32 {
        (self.cols.len() / 4) as u32
    }
    /// The range of kept-block numbers in block row `r` (empty when out of range).
    pub fn row_range(&self, r: u32) -> core::ops::Range<u32> {
        let rp = Rec::new(self.row_ptr, 0);
        if r >= self.rows {
            return 0..0;
        }
        rp.u32(4 * r as usize)..rp.u32(4 * (r as usize + 1))
    }
    /// The block column of kept block `i`.
    pub fn col(&self, i: u32) -> u32 {
        Rec::new(self.cols, 0).u32((i as usize).saturating_mul(4))
    }
    /// The raw little-endian `row_ptr` array (`block_rows + 1` entries).
    pub fn row_ptr_bytes(&self) -> &'a [u8] {
        self.row_ptr
    }
    /// The raw little-endian column array (`nnz` entries).
    pub fn col_bytes(&self) -> &'a [u8] {
        self.cols
    }
}

/// How a stored tensor's elements are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout<'a> {
    /// C order (also the layout of seeded tensors, which store nothing).
    RowMajor,
    /// Every block of the matrix view stored contiguously, blocks in row-major grid order.
    TileMajor {
        /// `[rows, cols]` of a block.
        block: [u16; 2],
    },
    /// Only the kept blocks, with their index.
    Packed {
        /// `[rows, cols]` of a block.
        block: [u16; 2],
        /// Which blocks are stored.
        index: BlockIndex<'a>,
    },
}

/// One tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tensor<'a> {
    /// Position in the tensor table.
    pub index: u32,
    /// Its name.
    pub name: &'a str,
    /// Its logical shape.
    pub shape: Shape,
    /// Its storage.
    pub storage: Storage,
    /// Its element order.
    pub layout: Layout<'a>,
    /// Its bytes (empty for seeded tensors).
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// `(rows, cols)` of the matrix view.
    pub fn matrix(&self) -> (u64, u64) {
        self.shape.matrix()
    }

    /// The stored data as `&[f32]` in storage order (tile order, padding included, for tile-major
    /// and packed tensors), when stored as f32, aligned, on a little-endian target.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.storage != Storage::F32 || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }

    /// The stored data as raw `&[u16]` (f16 or bf16 bits) in storage order, when aligned, on a
    /// little-endian target.
    pub fn as_u16(&self) -> Option<&'a [u16]> {
        if !matches!(self.storage, Storage::F16 | Storage::Bf16) || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }

    /// The stored sign words as `&[u64]` (`ceil(cols / 64)` per row), when stored as signs,
    /// aligned, on a little-endian target.
    pub fn as_sign_words(&self) -> Option<&'a [u64]> {
        if !matches!(self.storage, Storage::Signs { .. }) || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }

    /// The `i`-th stored element, decoded to f32 (0 when out of range, seeded or signs, whose
    /// elements are bits: see [`Tensor::value`]).
    pub fn stored(&self, i: u64) -> f32 {
        let r = Rec::new(self.data, 0);
        let i = usize_of(i);
        match self.storage {
            Storage::F32 => f32::from_bits(r.u32(i.saturating_mul(4))),
            Storage::F16 => half::f16::from_bits(r.u16(i.saturating_mul(2))).to_f32(),
            Storage::Bf16 => half::bf16::from_bits(r.u16(i.saturating_mul(2))).to_f32(),
            Storage::Seeded(_) | Storage::Signs { .. } => 0.0,
        }
    }

    /// The weight at (`row`, `col`) of the matrix view, whatever the storage and layout: the
    /// plain reference that kernels are tested against. Masks are not applied. Seeded tensors
    /// recompute their key on every call; use [`SeededInit`] directly in loops.
    pub fn value(&self, row: u64, col: u64) -> f32 {
        let (rows, cols) = self.matrix();
        if row >= rows || col >= cols {
            return 0.0;
        }
        match (self.storage, self.layout) {
            (Storage::Seeded(init), _) => init.value(init.key(), cols, row, col),
            (Storage::Signs { scale }, _) => {
                let word = row * cols.div_ceil(64) + col / 64;
                let bits = Rec::new(self.data, 0).u64(usize_of(word).saturating_mul(8));
                if bits >> (col % 64) & 1 == 1 {
                    scale
                } else {
                    -scale
                }
            }
            (_, Layout::RowMajor) => self.stored(row * cols + col),
            (_, Layout::TileMajor { block }) => {
                let (br, bc) = (block[0] as u64, block[1] as u64);
                let grid_cols = cols.div_ceil(bc);
                let b = (row / br) * grid_cols + col / bc;
                self.stored(b * br * bc + (row % br) * bc + col % bc)
            }
            (_, Layout::Packed { block, index }) => {
                let (br, bc) = (block[0] as u64, block[1] as u64);
                let range = index.row_range((row / br) as u32);
                let want = (col / bc) as u32;
                let (mut lo, mut hi) = (range.start, range.end);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    match index.col(mid).cmp(&want) {
                        core::cmp::Ordering::Less => lo = mid + 1,
                        core::cmp::Ordering::Greater => hi = mid,
                        core::cmp::Ordering::Equal => {
                            return self.stored(mid as u64 * br * bc + (row % br) * bc + col % bc);
                        }
                    }
                }
                0.0
            }
        }
    }

    /// Channel `i` of a batch norm's vector under mask set `set`: the vector itself when the
    /// tensor is `[C]`, row `set` when it is `[tasks, C]` (per-task norms, format 1.1; `None`
    /// reads row 0, so name the set for such a tensor).
    pub fn channel(&self, set: Option<u32>, i: u64) -> f32 {
        let row = if self.shape.rank() == 2 {
            set.unwrap_or(0) as u64
        } else {
            0
        };
        self.value(row, i)
    }

    /// The whole tensor as dense row-major f32, masks not applied; `None` when it does not fit
    /// in memory (a seeded tensor may describe far more weights than its file holds bytes).
    #[cfg(feature = "alloc")]
    pub fn to_f32_vec(&self) -> Option<alloc::vec::Vec<f32>> {
        let (rows, cols) = self.matrix();
        let n = usize::try_from(rows.checked_mul(cols)?).ok()?;
        let mut out = alloc::vec::Vec::new();
        out.try_reserve_exact(n).ok()?;
        out.resize(n, 0f32);
        if let Storage::Seeded(init) = self.storage {
            init.fill(usize_of(cols), &mut out);
            return Some(out);
        }
        for r in 0..rows {
            for c in 0..cols {
                out[usize_of(r * cols + c)] = self.value(r, c);
            }
        }
        Some(out)
    }
}

/// One named mask set (one task).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskSet<'a> {
    /// Position among the sets: the task id.
    pub index: u32,
    /// Its name.
    pub name: &'a str,
}

/// The bits of one mask: bit `(r, c)` of the grid is bit `c % 64` of little-endian word
/// `r · words_per_row + c / 64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mask<'a> {
    /// The mask set (task).
    pub set: u32,
    /// The masked tensor.
    pub tensor: u32,
    /// Per element or per block.
    pub kind: MaskKind,
    /// `[rows, cols]` one bit covers (`[1, 1]` for element masks).
    pub block: [u16; 2],
    /// `(rows, cols)` of the bit grid.
    pub grid: (u64, u64),
    /// 64-bit words per grid row.
    pub words_per_row: u64,
    /// Bits set.
    pub ones: u64,
    /// The words, little-endian.
    pub data: &'a [u8],
}

impl<'a> Mask<'a> {
    /// Word `i` (0 when out of range).
    pub fn word(&self, i: u64) -> u64 {
        Rec::new(self.data, 0).u64(usize_of(i).saturating_mul(8))
    }
    /// Bit (`r`, `c`) of the grid.
    pub fn bit(&self, r: u64, c: u64) -> bool {
        if r >= self.grid.0 || c >= self.grid.1 {
            return false;
        }
        self.word(r * self.words_per_row + c / 64) >> (c % 64) & 1 == 1
    }
    /// Whether weight (`row`, `col`) of the tensor's matrix view is kept.
    pub fn keeps(&self, row: u64, col: u64) -> bool {
        self.bit(row / self.block[0] as u64, col / self.block[1] as u64)
    }
    /// The words as `&[u64]` when aligned, on a little-endian target.
    pub fn as_words(&self) -> Option<&'a [u64]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }
    /// Fraction of grid bits set.
    pub fn density(&self) -> f64 {
        self.ones as f64 / (self.grid.0 * self.grid.1) as f64
    }
}

/// One history entry: a tool that wrote or changed the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry<'a> {
    /// Format version it wrote.
    pub version: (u16, u16),
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
    /// The tool and its version.
    pub tool: &'a str,
    /// What it did.
    pub note: &'a str,
}

#[derive(Clone, Copy, Debug)]
struct MaskTable<'a> {
    sets: u32,
    masked: u32,
    rec: Rec<'a>,
}

impl<'a> MaskTable<'a> {
    fn entry(&self, e: u32) -> Rec<'a> {
        self.rec.sub(
            record::MASKS_HEADER + record::MASKED_TENSOR * e as usize,
            record::MASKED_TENSOR,
        )
    }
    fn set(&self, s: u32) -> Rec<'a> {
        let base = record::MASKS_HEADER + record::MASKED_TENSOR * self.masked as usize;
        self.rec.sub(base + record::MASK_SET * s as usize, record::MASK_SET)
    }
    fn mask(&self, s: u32, e: u32) -> Rec<'a> {
        let base =
            record::MASKS_HEADER + record::MASKED_TENSOR * self.masked as usize + record::MASK_SET * self.sets as usize;
        let i = s as usize * self.masked as usize + e as usize;
        self.rec.sub(base + record::MASK * i, record::MASK)
    }
    /// The entry masking tensor `t` (entries are sorted by tensor).
    fn find(&self, t: u32) -> Option<u32> {
        let (mut lo, mut hi) = (0, self.masked);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid).u32(0).cmp(&t) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }
    /// `(kind, block)` of entry `e`, as validated.
    fn shape_of(&self, e: u32) -> (MaskKind, [u16; 2]) {
        let r = self.entry(e);
        match MaskKind::from_code(r.u8(4)) {
            Some(MaskKind::Block) => (MaskKind::Block, [r.u16(6), r.u16(8)]),
            _ => (MaskKind::Element, [1, 1]),
        }
    }
}

/// A parsed .smk file: borrowed views over the caller's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    bytes: &'a [u8],
    version: (u16, u16),
    alignment: u32,
    section_count: u32,
    strings: &'a [u8],
    input: Shape,
    layers: Rec<'a>,
    layer_count: u32,
    tensors: Rec<'a>,
    tensor_count: u32,
    masks: MaskTable<'a>,
    metadata: Rec<'a>,
    metadata_count: u32,
    history: Rec<'a>,
    history_count: u32,
}

fn section_entry(bytes: &[u8], i: u32) -> Rec<'_> {
    Rec::new(bytes, 0).sub(HEADER_LEN + SECTION_ENTRY_LEN * i as usize, SECTION_ENTRY_LEN)
}

fn read_section(bytes: &[u8], i: u32) -> Section {
    let e = section_entry(bytes, i);
    Section {
        index: i,
        kind: SectionKind::from_code(e.u32(0)).unwrap_or(SectionKind::Strings),
        offset: e.u64(8),
        length: e.u64(16),
        checksum: e.u32(24),
    }
}

/// The bytes of section `s` (empty if out of range, which parsing rules out; re-checked because
/// a mapped file can change under a parsed model).
fn section_bytes<'a>(bytes: &'a [u8], s: &Section) -> &'a [u8] {
    s.offset
        .checked_add(s.length)
        .and_then(|end| bytes.get(usize_of(s.offset)..usize_of(end)))
        .unwrap_or(&[])
}

fn check_zero(r: &Rec<'_>, from: usize, to: usize) -> Result<(), Error> {
    match r.first_nonzero(from, to) {
        Some(offset) => Err(Error::ReservedNotZero { offset }),
        None => Ok(()),
    }
}

fn read_shape(r: &Rec<'_>, rank: u32, dims_at: usize) -> Result<Shape, Error> {
    let offset = r.pos(dims_at);
    if rank == 0 || rank as usize > caps::RANK {
        return Err(Error::BadShape { offset });
    }
    let mut dims = [0u32; caps::RANK];
    for (i, d) in dims.iter_mut().enumerate() {
        *d = r.u32(dims_at + 4 * i);
    }
    if dims[rank as usize..].iter().any(|&d| d != 0) {
        return Err(Error::BadShape { offset });
    }
    Shape::new(&dims[..rank as usize]).ok_or(Error::BadShape { offset })
}

/// Accumulates the parse state that crosses sections.
struct Parser<'a> {
    bytes: &'a [u8],
    count: u32,
    strings: &'a [u8],
    next_payload: u32,
}

impl<'a> Parser<'a> {
    fn string(&self, r: &Rec<'_>, off: usize) -> Result<&'a str, Error> {
        let (start, len) = (r.u32(off), r.u32(off + 4));
        let offset = r.pos(off);
        let end = start as u64 + len as u64;
        let raw = self
            .strings
            .get(start as usize..usize_of(end))
            .ok_or(Error::StringOutOfBounds { offset, start, len })?;
        core::str::from_utf8(raw).map_err(|_| Error::StringNotUtf8 { offset })
    }

    fn name(&self, r: &Rec<'_>, off: usize) -> Result<&'a str, Error> {
        let len = r.u32(off + 4);
        if len == 0 || len > caps::NAME_BYTES {
            return Err(Error::BadName {
                offset: r.pos(off),
                len,
            });
        }
        self.string(r, off)
    }

    fn structure(&self, i: u32, kind: SectionKind) -> Result<Rec<'a>, Error> {
        let s = read_section(self.bytes, i);
        let b = section_bytes(self.bytes, &s);
        let computed = crc32c(b);
        if computed != s.checksum {
            return Err(Error::SectionChecksum {
                section: i,
                kind,
                stored: s.checksum,
                computed,
            });
        }
        Ok(Rec::new(b, s.offset))
    }

    /// Takes the next payload section, which the record field at `field` must name.
    fn payload(&mut self, r: &Rec<'_>, field: usize, kind: SectionKind) -> Result<Section, Error> {
        let expected = self.next_payload;
        if expected >= self.count {
            return Err(Error::MissingSection { kind });
        }
        let found = r.u32(field);
        if found != expected {
            return Err(Error::PayloadReference {
                offset: r.pos(field),
                found,
                expected,
            });
        }
        let s = read_section(self.bytes, expected);
        if s.kind != kind {
            return Err(Error::SectionOrder {
                section: expected,
                found: s.kind,
                expected: kind.name(),
            });
        }
        self.next_payload += 1;
        Ok(s)
    }

    fn expect_len(s: &Section, expected: u64) -> Result<(), Error> {
        if s.length != expected {
            return Err(Error::SectionLength {
                section: s.index,
                kind: s.kind,
                length: s.length,
                expected,
            });
        }
        Ok(())
    }

    /// A METADATA or HISTORY section: a 16-byte header (count, zeros) and `count` records of
    /// `size` bytes. Returns the section and the count.
    fn list(
        &self,
        i: u32,
        kind: SectionKind,
        what: &'static str,
        cap: u32,
        size: usize,
    ) -> Result<(Rec<'a>, u32), Error> {
        let r = self.structure(i, kind)?;
        if r.b.len() < record::LIST_HEADER {
            let (length, expected) = (r.b.len() as u64, record::LIST_HEADER as u64);
            return Err(Error::SectionLength {
                section: i,
                kind,
                length,
                expected,
            });
        }
        let n = Self::counted(&r, what, cap)?;
        check_zero(&r, 4, record::LIST_HEADER)?;
        Self::records(i, kind, &r, record::LIST_HEADER, size, n as u64)?;
        Ok((r, n))
    }

    fn counted(r: &Rec<'_>, what: &'static str, cap: u32) -> Result<u32, Error> {
        let count = r.u32(0);
        if count > cap {
            return Err(Error::CountTooLarge {
                what,
                count: count as u64,
                cap: cap as u64,
                offset: r.pos(0),
            });
        }
        Ok(count)
    }

    fn records(s: u32, kind: SectionKind, r: &Rec<'_>, header: usize, size: usize, n: u64) -> Result<(), Error> {
        let expected = header as u64 + size as u64 * n;
        if r.b.len() as u64 != expected {
            return Err(Error::SectionLength {
                section: s,
                kind,
                length: r.b.len() as u64,
                expected,
            });
        }
        Ok(())
    }
}

/// The bit grid of a mask over a tensor of shape `shape`.
fn mask_grid(shape: &Shape, block: [u16; 2]) -> (u64, u64) {
    let (rows, cols) = shape.matrix();
    (rows.div_ceil(block[0] as u64), cols.div_ceil(block[1] as u64))
}

impl<'a> Model<'a> {
    /// Parses and validates the structure of a .smk file. Time is proportional to the header and
    /// records, not to the weights; payload checksums are left to [`Model::verify`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let len = bytes.len() as u64;
        if bytes.len() < HEADER_LEN {
            return Err(Error::TooShort { len });
        }
        let h = Rec::new(bytes, 0);
        let magic: [u8; 8] = core::array::from_fn(|i| h.u8(i));
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let (major, minor) = (h.u16(8), h.u16(10));
        match major {
            VERSION_MAJOR => {}
            _ => return Err(Error::UnsupportedVersion { major, minor }),
        }
        let bom = h.u32(12);
        if bom != BYTE_ORDER_MARK {
            return Err(Error::WrongByteOrder { found: bom });
        }
        let stored_len = h.u64(32);
        if stored_len != len {
            return Err(Error::FileLength {
                stored: stored_len,
                actual: len,
            });
        }
        let flags = h.u32(16);
        if flags != 0 {
            return Err(Error::UnknownFlags { flags });
        }
        let alignment = h.u32(20);
        if !alignment.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&alignment) {
            return Err(Error::BadAlignment { alignment });
        }
        let count = h.u32(24);
        if count > caps::SECTIONS {
            return Err(Error::TooManySections { count });
        }
        let header_len = h.u32(28);
        let expected_header = HEADER_LEN as u64 + SECTION_ENTRY_LEN as u64 * count as u64;
        if header_len as u64 != expected_header || expected_header > len {
            return Err(Error::HeaderLength {
                stored: header_len,
                expected: expected_header,
            });
        }
        check_zero(&h, HEADER_CRC_OFFSET + 4, HEADER_LEN)?;
        let stored_crc = h.u32(HEADER_CRC_OFFSET);
        let mut crc = Crc32c::new();
        crc.update(&bytes[..HEADER_CRC_OFFSET]);
        crc.update(&[0; 4]);
        crc.update(&bytes[HEADER_CRC_OFFSET + 4..header_len as usize]);
        let computed = crc.finish();
        if computed != stored_crc {
            return Err(Error::HeaderChecksum {
                stored: stored_crc,
                computed,
            });
        }

        // The section table: each section at the aligned end of the previous one, zero padding
        // between, the last one ending at the end of the file.
        let align = alignment as u64;
        let mut end = header_len as u64;
        for i in 0..count {
            let e = section_entry(bytes, i);
            let kind = e.u32(0);
            if SectionKind::from_code(kind).is_none() {
                return Err(Error::UnknownSectionKind { section: i, kind });
            }
            check_zero(&e, 4, 8)?;
            check_zero(&e, 28, 32)?;
            let (offset, length) = (e.u64(8), e.u64(16));
            let expected = align_up(end, align).unwrap_or(u64::MAX);
            if offset != expected {
                return Err(Error::SectionMisplaced {
                    section: i,
                    offset,
                    expected,
                });
            }
            let section_end = offset
                .checked_add(length)
                .filter(|&x| x <= len)
                .ok_or(Error::SectionOutOfBounds {
                    section: i,
                    offset,
                    length,
                })?;
            if let Some(offset) = h.first_nonzero(usize_of(end), usize_of(offset)) {
                return Err(Error::PaddingNotZero { offset });
            }
            end = section_end;
        }
        if end != len {
            return Err(Error::TrailingBytes { end });
        }

        // Structure sections in canonical order.
        let kind_at = |i: u32| read_section(bytes, i).kind;
        for (i, kind) in [SectionKind::Strings, SectionKind::Graph, SectionKind::Tensors]
            .into_iter()
            .enumerate()
        {
            let i = i as u32;
            if i >= count {
                return Err(Error::MissingSection { kind });
            }
            if kind_at(i) != kind {
                return Err(Error::SectionOrder {
                    section: i,
                    found: kind_at(i),
                    expected: kind.name(),
                });
            }
        }
        let mut optional = [None; 3];
        let mut next = 3;
        for (slot, kind) in [SectionKind::Masks, SectionKind::Metadata, SectionKind::History]
            .into_iter()
            .enumerate()
        {
            if next < count && kind_at(next) == kind {
                optional[slot] = Some(next);
                next += 1;
            }
        }
        let mut p = Parser {
            bytes,
            count,
            strings: &[],
            next_payload: next,
        };
        let strings = p.structure(0, SectionKind::Strings)?;
        p.strings = strings.b;

        // GRAPH header.
        let graph = p.structure(1, SectionKind::Graph)?;
        if graph.b.len() < record::GRAPH_HEADER {
            return Err(Error::SectionLength {
                section: 1,
                kind: SectionKind::Graph,
                length: graph.b.len() as u64,
                expected: record::GRAPH_HEADER as u64,
            });
        }
        let layer_count = Parser::counted(&graph, "layer", caps::LAYERS)?;
        let input = read_shape(&graph, graph.u32(4), 8)?;
        check_zero(&graph, 24, 32)?;
        Parser::records(
            1,
            SectionKind::Graph,
            &graph,
            record::GRAPH_HEADER,
            record::LAYER,
            layer_count as u64,
        )?;

        // TENSORS header.
        let tensors = p.structure(2, SectionKind::Tensors)?;
        if tensors.b.len() < record::TENSORS_HEADER {
            return Err(Error::SectionLength {
                section: 2,
                kind: SectionKind::Tensors,
                length: tensors.b.len() as u64,
                expected: record::TENSORS_HEADER as u64,
            });
        }
        let tensor_count = Parser::counted(&tensors, "tensor", caps::TENSORS)?;
        check_zero(&tensors, 4, 16)?;
        Parser::records(
            2,
            SectionKind::Tensors,
            &tensors,
            record::TENSORS_HEADER,
            record::TENSOR,
            tensor_count as u64,
        )?;

        // MASKS header and masked-tensor entries (mask records come after the tensors' payload).
        let mut masks = MaskTable {
            sets: 0,
            masked: 0,
            rec: Rec::new(&[], 0),
        };
        if let Some(i) = optional[0] {
            let r = p.structure(i, SectionKind::Masks)?;
            if r.b.len() < record::MASKS_HEADER {
                return Err(Error::SectionLength {
                    section: i,
                    kind: SectionKind::Masks,
                    length: r.b.len() as u64,
                    expected: record::MASKS_HEADER as u64,
                });
            }
            let sets = Parser::counted(&r, "mask set", caps::MASK_SETS)?;
            let masked = Parser::counted(&r.sub(4, 4), "masked tensor", caps::MASKED_TENSORS)?;
            check_zero(&r, 8, 16)?;
            if sets == 0 {
                return Err(Error::EmptyMasks { section: i });
            }
            let expected = record::MASKS_HEADER as u64
                + record::MASKED_TENSOR as u64 * masked as u64
                + record::MASK_SET as u64 * sets as u64
                + record::MASK as u64 * sets as u64 * masked as u64;
            if r.b.len() as u64 != expected {
                return Err(Error::SectionLength {
                    section: i,
                    kind: SectionKind::Masks,
                    length: r.b.len() as u64,
                    expected,
                });
            }
            masks = MaskTable { sets, masked, rec: r };
            let mut prev = None;
            for e in 0..masked {
                let er = masks.entry(e);
                let t = er.u32(0);
                if t >= tensor_count {
                    return Err(Error::BadMaskedTensor {
                        entry: e,
                        reason: "tensor index out of range",
                    });
                }
                if prev.is_some_and(|p| t <= p) {
                    return Err(Error::BadMaskedTensor {
                        entry: e,
                        reason: "entries must be sorted by tensor, without repeats",
                    });
                }
                prev = Some(t);
                let code = er.u8(4);
                let kind = MaskKind::from_code(code).ok_or(Error::UnknownMaskKind { entry: e, code })?;
                check_zero(&er, 5, 6)?;
                check_zero(&er, 10, 16)?;
                let (br, bc) = (er.u16(6), er.u16(8));
                let ok = match kind {
                    MaskKind::Element => br == 0 && bc == 0,
                    MaskKind::Block => (1..=caps::BLOCK_SIDE).contains(&br) && (1..=caps::BLOCK_SIDE).contains(&bc),
                };
                if !ok {
                    return Err(Error::BadMaskedTensor {
                        entry: e,
                        reason: "block shape must be 0×0 for element masks and 1..1024 per side for block masks",
                    });
                }
            }
        }

        let mut model = Model {
            bytes,
            version: (major, minor),
            alignment,
            section_count: count,
            strings: strings.b,
            input,
            layers: graph.sub(record::GRAPH_HEADER, record::LAYER * layer_count as usize),
            layer_count,
            tensors: tensors.sub(record::TENSORS_HEADER, record::TENSOR * tensor_count as usize),
            tensor_count,
            masks,
            metadata: Rec::new(&[], 0),
            metadata_count: 0,
            history: Rec::new(&[], 0),
            history_count: 0,
        };

        // Layers, and the tensors they use, in order.
        let mut next_tensor = 0u32;
        for l in 0..layer_count {
            let r = model.layers.sub(record::LAYER * l as usize, record::LAYER);
            let (op, input_code, second_code) = decode_layer(&r, l)?;
            p.name(&r, 4)?;
            let out = read_shape(&r, r.u8(20) as u32, 24)?;
            check_zero(&r, 21, 24)?;
            check_zero(&r, 88, 96)?;
            let shape_of = |code: u32| -> Result<Shape, Error> {
                if code == NONE {
                    Ok(input)
                } else if code < l {
                    let pr = model.layers.sub(record::LAYER * code as usize, record::LAYER);
                    read_shape(&pr, pr.u8(20) as u32, 24)
                } else {
                    Err(Error::BadLayerInput { layer: l, input: code })
                }
            };
            let in_shape = shape_of(input_code)?;
            let second = match second_code {
                Some(c) => Some(shape_of(c)?),
                None => None,
            };
            let mut slot_shapes = [None; 4];
            for (slot, t) in op.tensor_slots().into_iter().enumerate() {
                let Some(t) = t else { continue };
                if t != next_tensor {
                    return Err(Error::TensorReference {
                        layer: l,
                        slot: slot as u32,
                        found: t,
                        expected: next_tensor,
                    });
                }
                if t >= tensor_count {
                    return Err(Error::TensorReference {
                        layer: l,
                        slot: slot as u32,
                        found: t,
                        expected: tensor_count,
                    });
                }
                let maskable = slot == 0 && matches!(op, Op::Linear { .. } | Op::Conv2d { .. });
                slot_shapes[slot] = Some(model.check_tensor(&mut p, t, maskable)?);
                next_tensor += 1;
            }
            let expected = infer_shape(&op, in_shape, second, slot_shapes)
                .map_err(|reason| Error::LayerShape { layer: l, reason })?;
            if let (Op::BatchNorm { .. }, Some(s)) = (&op, slot_shapes[0]) {
                if s.rank() == 2 && s.dims()[0] != masks.sets {
                    return Err(Error::LayerShape {
                        layer: l,
                        reason: "per-task batch norm tensors need one row per mask set",
                    });
                }
            }
            if expected != out {
                return Err(Error::OutputShape {
                    layer: l,
                    stored: out,
                    expected,
                });
            }
        }
        if next_tensor != tensor_count {
            return Err(Error::UnusedTensors {
                used: next_tensor,
                count: tensor_count,
            });
        }

        // Mask sets and their payload.
        for s in 0..masks.sets {
            let sr = masks.set(s);
            p.name(&sr, 0)?;
            check_zero(&sr, 8, 16)?;
            for e in 0..masks.masked {
                let mr = masks.mask(s, e);
                check_zero(&mr, 12, 16)?;
                let (_, block) = masks.shape_of(e);
                let shape = model.tensor_shape(masks.entry(e).u32(0));
                let grid = mask_grid(&shape, block);
                let ones = mr.u64(0);
                if ones > grid.0 * grid.1 {
                    return Err(Error::MaskOnesTooLarge { set: s, entry: e, ones });
                }
                let sec = p.payload(&mr, 8, SectionKind::MaskData)?;
                Parser::expect_len(&sec, grid.0 * grid.1.div_ceil(64) * 8)?;
            }
        }

        // Metadata: keys sorted and unique.
        if let Some(i) = optional[1] {
            let (r, n) = p.list(
                i,
                SectionKind::Metadata,
                "metadata entry",
                caps::METADATA,
                record::METADATA,
            )?;
            let mut prev: Option<&str> = None;
            for e in 0..n {
                let er = r.sub(record::LIST_HEADER + record::METADATA * e as usize, record::METADATA);
                let key = p.name(&er, 0)?;
                p.string(&er, 8)?;
                if prev.is_some_and(|p| key <= p) {
                    return Err(Error::MetadataOrder { entry: e });
                }
                prev = Some(key);
            }
            model.metadata = r.sub(record::LIST_HEADER, record::METADATA * n as usize);
            model.metadata_count = n;
        }

        if let Some(i) = optional[2] {
            let (r, n) = p.list(i, SectionKind::History, "history entry", caps::HISTORY, record::HISTORY)?;
            for e in 0..n {
                let er = r.sub(record::LIST_HEADER + record::HISTORY * e as usize, record::HISTORY);
                check_zero(&er, 4, 8)?;
                p.name(&er, 16)?;
                p.string(&er, 24)?;
            }
            model.history = r.sub(record::LIST_HEADER, record::HISTORY * n as usize);
            model.history_count = n;
        }

        if p.next_payload != count {
            let i = p.next_payload;
            return Err(Error::SectionOrder {
                section: i,
                found: kind_at(i),
                expected: "the end of the section table",
            });
        }
        Ok(model)
    }

    fn tensor_rec(&self, t: u32) -> Rec<'a> {
        self.tensors.sub(record::TENSOR * t as usize, record::TENSOR)
    }

    fn tensor_shape(&self, t: u32) -> Shape {
        let r = self.tensor_rec(t);
        read_shape(&r, r.u8(10) as u32, 16).unwrap_or(self.input)
    }

    /// Validates tensor `t` and takes its payload sections; returns its shape.
    fn check_tensor(&self, p: &mut Parser<'a>, t: u32, maskable: bool) -> Result<Shape, Error> {
        let r = self.tensor_rec(t);
        p.name(&r, 0)?;
        let shape = read_shape(&r, r.u8(10) as u32, 16)?;
        check_zero(&r, 11, 12)?;
        let code = r.u8(8);
        let storage = StorageKind::from_code(code).ok_or(Error::UnknownStorage { tensor: t, code })?;
        let code = r.u8(9);
        let layout = LayoutKind::from_code(code).ok_or(Error::UnknownLayout { tensor: t, code })?;
        let block = [r.u16(12), r.u16(14)];
        let entry = self.masks.find(t);
        if let (Some(entry), false) = (entry, maskable) {
            return Err(Error::BadMaskedTensor {
                entry,
                reason: "only linear and conv2d weights can carry masks",
            });
        }
        let mask = entry.map(|e| self.masks.shape_of(e));
        let field = |field: &'static str, value: u64| Error::BadTensorField {
            tensor: t,
            field,
            value,
        };

        if storage == StorageKind::Seeded {
            if layout != LayoutKind::RowMajor {
                return Err(Error::LayoutMismatch {
                    tensor: t,
                    reason: "seeded tensors store nothing and must say row-major",
                });
            }
            if block != [0, 0] {
                return Err(field("block", (block[0] as u64) << 16 | block[1] as u64));
            }
            for (off, name) in [(32, "data_section"), (36, "index_section")] {
                if r.u32(off) != NONE {
                    return Err(field(name, r.u32(off) as u64));
                }
            }
            let code = r.u8(40);
            InitRule::from_code(code).ok_or(Error::UnknownInitRule { tensor: t, code })?;
            let code = r.u8(41);
            GeneratorKind::from_code(code).ok_or(Error::UnknownGenerator { tensor: t, code })?;
            check_zero(&r, 42, 44)?;
            check_zero(&r, 60, 64)?;
            let scale = f32::from_bits(r.u32(56));
            if !(scale.is_finite() && scale.is_sign_positive()) {
                return Err(field("scale", r.u32(56) as u64));
            }
            return Ok(shape);
        }

        if storage == StorageKind::Signs {
            if !maskable {
                return Err(Error::LayoutMismatch {
                    tensor: t,
                    reason: "signs hold linear and conv2d weights only",
                });
            }
            if layout != LayoutKind::RowMajor || block != [0, 0] {
                return Err(Error::LayoutMismatch {
                    tensor: t,
                    reason: "signs are stored row-major, a row of 64-bit words each",
                });
            }
            if matches!(mask, Some((MaskKind::Block, _))) {
                return Err(Error::LayoutMismatch {
                    tensor: t,
                    reason: "signs take element masks only",
                });
            }
            if r.u32(36) != NONE {
                return Err(field("index_section", r.u32(36) as u64));
            }
            check_zero(&r, 40, 56)?;
            check_zero(&r, 60, 64)?;
            let scale = f32::from_bits(r.u32(56));
            if !(scale.is_finite() && scale.is_sign_positive()) {
                return Err(field("scale", r.u32(56) as u64));
            }
            let (rows, cols) = shape.matrix();
            let data = p.payload(&r, 32, SectionKind::TensorData)?;
            Parser::expect_len(&data, rows * cols.div_ceil(64) * 8)?;
            return Ok(shape);
        }

        check_zero(&r, 40, 64)?;
        let esize = storage.element_bytes();
        let (rows, cols) = shape.matrix();
        let (data, expected_len) = match layout {
            LayoutKind::RowMajor => {
                if block != [0, 0] {
                    return Err(field("block", (block[0] as u64) << 16 | block[1] as u64));
                }
                if matches!(mask, Some((MaskKind::Block, _))) {
                    return Err(Error::LayoutMismatch {
                        tensor: t,
                        reason: "stored weights under a block mask must be tile-major or packed",
                    });
                }
                if r.u32(36) != NONE {
                    return Err(field("index_section", r.u32(36) as u64));
                }
                let data = p.payload(&r, 32, SectionKind::TensorData)?;
                Parser::expect_len(&data, shape.numel() * esize)?;
                return Ok(shape);
            }
            LayoutKind::TileMajor | LayoutKind::PackedBlocks => {
                if mask != Some((MaskKind::Block, block)) {
                    return Err(Error::LayoutMismatch {
                        tensor: t,
                        reason: "tile-major and packed tensors need a block mask of the same block shape",
                    });
                }
                let (br, bc) = (block[0] as u64, block[1] as u64);
                let (gr, gc) = (rows.div_ceil(br), cols.div_ceil(bc));
                let data = p.payload(&r, 32, SectionKind::TensorData)?;
                let blocks = if layout == LayoutKind::TileMajor {
                    if r.u32(36) != NONE {
                        return Err(field("index_section", r.u32(36) as u64));
                    }
                    gr * gc
                } else {
                    if self.masks.sets != 1 {
                        return Err(Error::LayoutMismatch {
                            tensor: t,
                            reason: "packed tensors need exactly one mask set",
                        });
                    }
                    let idx = p.payload(&r, 36, SectionKind::BlockIndex)?;
                    let b = p.structure(idx.index, SectionKind::BlockIndex)?;
                    check_block_index(t, b.b, gr, gc, idx.index)? as u64
                };
                (data, blocks * br * bc * esize)
            }
        };
        Parser::expect_len(&data, expected_len)?;
        Ok(shape)
    }

    /// Checks everything [`Model::parse`] leaves out: every payload checksum, mask popcounts and
    /// padding bits, packed indices against their masks, zero padding in stored blocks, and
    /// unique mask set names. Reads the whole file.
    pub fn verify(&self) -> Result<(), Error> {
        for s in self.sections() {
            let b = section_bytes(self.bytes, &s);
            let computed = crc32c(b);
            if computed != s.checksum {
                return Err(Error::SectionChecksum {
                    section: s.index,
                    kind: s.kind,
                    stored: s.checksum,
                    computed,
                });
            }
        }
        for s in 0..self.masks.sets {
            let name = self.mask_set(s).map(|m| m.name);
            if (0..s).any(|o| self.mask_set(o).map(|m| m.name) == name) {
                return Err(Error::DuplicateMaskSetName { set: s });
            }
            for e in 0..self.masks.masked {
                let Some(m) = self.mask_entry(s, e) else { continue };
                let mut counted = 0u64;
                let tail = m.grid.1 % 64;
                for row in 0..m.grid.0 {
                    for w in 0..m.words_per_row {
                        let word = m.word(row * m.words_per_row + w);
                        if w + 1 == m.words_per_row && tail != 0 && word >> tail != 0 {
                            return Err(Error::MaskPaddingBits { set: s, entry: e, row });
                        }
                        counted += word.count_ones() as u64;
                    }
                }
                if counted != m.ones {
                    return Err(Error::MaskOnesMismatch {
                        set: s,
                        entry: e,
                        stored: m.ones,
                        counted,
                    });
                }
            }
        }
        for t in self.tensors() {
            if let Storage::Signs { .. } = t.storage {
                let (rows, cols) = t.matrix();
                let (words, tail) = (cols.div_ceil(64), cols % 64);
                let r = Rec::new(t.data, 0);
                for row in 0..rows {
                    let last = r.u64(usize_of((row * words + words - 1).saturating_mul(8)));
                    if tail != 0 && last >> tail != 0 {
                        return Err(Error::SignPaddingBits { tensor: t.index, row });
                    }
                }
                continue;
            }
            let (block, packed) = match t.layout {
                Layout::RowMajor => continue,
                Layout::TileMajor { block } => (block, None),
                Layout::Packed { block, index } => (block, Some(index)),
            };
            let (rows, cols) = t.matrix();
            let (br, bc) = (block[0] as u64, block[1] as u64);
            let gc = cols.div_ceil(bc);
            let check_block = |stored: u64, grid_r: u64, grid_c: u64| -> Result<(), Error> {
                let ragged = (grid_r + 1) * br > rows || (grid_c + 1) * bc > cols;
                if !ragged {
                    return Ok(());
                }
                for i in 0..br {
                    for j in 0..bc {
                        let outside = grid_r * br + i >= rows || grid_c * bc + j >= cols;
                        if outside && t.stored(stored * br * bc + i * bc + j).to_bits() != 0 {
                            return Err(Error::TilePaddingNotZero {
                                tensor: t.index,
                                block: stored,
                            });
                        }
                    }
                }
                Ok(())
            };
            match packed {
                None => {
                    for b in 0..rows.div_ceil(br) * gc {
                        check_block(b, b / gc, b % gc)?;
                    }
                }
                Some(index) => {
                    let mask = self.mask(0, t.index);
                    for r in 0..index.block_rows() {
                        let range = index.row_range(r);
                        let mut kept = range.clone();
                        for c in 0..gc {
                            let in_index = kept.start < kept.end && index.col(kept.start) as u64 == c;
                            if in_index {
                                check_block(kept.start as u64, r as u64, c)?;
                                kept.start += 1;
                            }
                            if mask.is_some_and(|m| m.bit(r as u64, c) != in_index) {
                                return Err(Error::PackedMaskMismatch {
                                    tensor: t.index,
                                    block_row: r,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// `(major, minor)` format version of the file.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }
    /// Section alignment in bytes.
    pub fn alignment(&self) -> u32 {
        self.alignment
    }
    /// The section table.
    pub fn sections(&self) -> impl Iterator<Item = Section> + 'a {
        let bytes = self.bytes;
        (0..self.section_count).map(move |i| read_section(bytes, i))
    }
    /// The input shape, without the batch dimension.
    pub fn input_shape(&self) -> Shape {
        self.input
    }
    /// The output shape (the last layer's), or the input shape for an empty graph.
    pub fn output_shape(&self) -> Shape {
        self.layer(self.layer_count.wrapping_sub(1))
            .map_or(self.input, |l| l.output_shape)
    }
    /// Number of layers.
    pub fn layer_count(&self) -> u32 {
        self.layer_count
    }
    /// Layer `i`.
    pub fn layer(&self, i: u32) -> Option<Layer<'a>> {
        if i >= self.layer_count {
            return None;
        }
        let r = self.layers.sub(record::LAYER * i as usize, record::LAYER);
        let (op, input, second) = decode_layer(&r, i).ok()?;
        let p = Parser {
            bytes: self.bytes,
            count: 0,
            strings: self.strings,
            next_payload: 0,
        };
        Some(Layer {
            index: i,
            name: p.string(&r, 4).ok()?,
            op,
            input: Input::from_code(input),
            second_input: second.map(Input::from_code),
            output_shape: read_shape(&r, r.u8(20) as u32, 24).ok()?,
        })
    }
    /// All layers in order.
    pub fn layers(&self) -> impl Iterator<Item = Layer<'a>> + '_ {
        (0..self.layer_count).filter_map(|i| self.layer(i))
    }
    /// Number of tensors.
    pub fn tensor_count(&self) -> u32 {
        self.tensor_count
    }
    /// Tensor `t`.
    pub fn tensor(&self, t: u32) -> Option<Tensor<'a>> {
        if t >= self.tensor_count {
            return None;
        }
        let r = self.tensor_rec(t);
        let p = Parser {
            bytes: self.bytes,
            count: 0,
            strings: self.strings,
            next_payload: 0,
        };
        let storage = match StorageKind::from_code(r.u8(8))? {
            StorageKind::F32 => Storage::F32,
            StorageKind::F16 => Storage::F16,
            StorageKind::Bf16 => Storage::Bf16,
            StorageKind::Seeded => Storage::Seeded(SeededInit {
                rule: InitRule::from_code(r.u8(40))?,
                seed: r.u64(48),
                stream: r.u32(44),
                scale: f32::from_bits(r.u32(56)),
            }),
            StorageKind::Signs => Storage::Signs {
                scale: f32::from_bits(r.u32(56)),
            },
        };
        let section = |field: usize| {
            let i = r.u32(field);
            (i < self.section_count).then(|| read_section(self.bytes, i))
        };
        let slice = |s: Section| section_bytes(self.bytes, &s);
        let block = [r.u16(12), r.u16(14)];
        let layout = match LayoutKind::from_code(r.u8(9))? {
            LayoutKind::RowMajor => Layout::RowMajor,
            LayoutKind::TileMajor => Layout::TileMajor { block },
            LayoutKind::PackedBlocks => {
                let b = slice(section(36)?);
                let rows = self.tensor_shape(t).matrix().0.div_ceil(block[0] as u64) as u32;
                let split = 4 * (rows as usize + 1);
                Layout::Packed {
                    block,
                    index: BlockIndex {
                        rows,
                        row_ptr: b.get(..split)?,
                        cols: b.get(split..)?,
                    },
                }
            }
        };
        let data = match storage {
            Storage::Seeded(_) => &[][..],
            _ => slice(section(32)?),
        };
        Some(Tensor {
            index: t,
            name: p.string(&r, 0).ok()?,
            shape: self.tensor_shape(t),
            storage,
            layout,
            data,
        })
    }
    /// All tensors in order.
    pub fn tensors(&self) -> impl Iterator<Item = Tensor<'a>> + '_ {
        (0..self.tensor_count).filter_map(|t| self.tensor(t))
    }
    /// Number of mask sets (tasks).
    pub fn mask_set_count(&self) -> u32 {
        self.masks.sets
    }
    /// Mask set `s`.
    pub fn mask_set(&self, s: u32) -> Option<MaskSet<'a>> {
        if s >= self.masks.sets {
            return None;
        }
        let p = Parser {
            bytes: self.bytes,
            count: 0,
            strings: self.strings,
            next_payload: 0,
        };
        Some(MaskSet {
            index: s,
            name: p.string(&self.masks.set(s), 0).ok()?,
        })
    }
    /// All mask sets in order.
    pub fn mask_sets(&self) -> impl Iterator<Item = MaskSet<'a>> + '_ {
        (0..self.masks.sets).filter_map(|s| self.mask_set(s))
    }
    /// The first mask set named `name`.
    pub fn mask_set_by_name(&self, name: &str) -> Option<MaskSet<'a>> {
        self.mask_sets().find(|m| m.name == name)
    }
    /// The tensors that carry masks, ascending.
    pub fn masked_tensors(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.masks.masked).map(|e| self.masks.entry(e).u32(0))
    }
    /// The mask of tensor `tensor` in set `set`, if it has one.
    pub fn mask(&self, set: u32, tensor: u32) -> Option<Mask<'a>> {
        self.mask_entry(set, self.masks.find(tensor)?)
    }
    fn mask_entry(&self, set: u32, e: u32) -> Option<Mask<'a>> {
        if set >= self.masks.sets || e >= self.masks.masked {
            return None;
        }
        let tensor = self.masks.entry(e).u32(0);
        let (kind, block) = self.masks.shape_of(e);
        let grid = mask_grid(&self.tensor_shape(tensor), block);
        let r = self.masks.mask(set, e);
        let i = r.u32(8);
        if i >= self.section_count {
            return None;
        }
        let s = read_section(self.bytes, i);
        Some(Mask {
            set,
            tensor,
            kind,
            block,
            grid,
            words_per_row: grid.1.div_ceil(64),
            ones: r.u64(0),
            data: section_bytes(self.bytes, &s),
        })
    }
    /// Metadata entries, keys ascending.
    pub fn metadata(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        let p = Parser {
            bytes: self.bytes,
            count: 0,
            strings: self.strings,
            next_payload: 0,
        };
        (0..self.metadata_count).filter_map(move |e| {
            let r = self.metadata.sub(record::METADATA * e as usize, record::METADATA);
            Some((p.string(&r, 0).ok()?, p.string(&r, 8).ok()?))
        })
    }
    /// The metadata value for `key`.
    pub fn metadata_value(&self, key: &str) -> Option<&'a str> {
        self.metadata().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    /// History entries, oldest first.
    pub fn history(&self) -> impl Iterator<Item = HistoryEntry<'a>> + '_ {
        let p = Parser {
            bytes: self.bytes,
            count: 0,
            strings: self.strings,
            next_payload: 0,
        };
        (0..self.history_count).filter_map(move |e| {
            let r = self.history.sub(record::HISTORY * e as usize, record::HISTORY);
            Some(HistoryEntry {
                version: (r.u16(0), r.u16(2)),
                unix_time: r.u64(8),
                tool: p.string(&r, 16).ok()?,
                note: p.string(&r, 24).ok()?,
            })
        })
    }
}

/// Checks a BLOCK_INDEX section for a `gr × gc` block grid; returns the kept-block count.
fn check_block_index(t: u32, b: &[u8], gr: u64, gc: u64, section: u32) -> Result<u32, Error> {
    let r = Rec::new(b, 0);
    let head = 4 * (gr + 1);
    let len = b.len() as u64;
    if len < head {
        return Err(Error::SectionLength {
            section,
            kind: SectionKind::BlockIndex,
            length: len,
            expected: head,
        });
    }
    let nnz = r.u32(usize_of(4 * gr)) as u64;
    let expected = head + 4 * nnz;
    if len != expected {
        return Err(Error::SectionLength {
            section,
            kind: SectionKind::BlockIndex,
            length: len,
            expected,
        });
    }
    if r.u32(0) != 0 {
        return Err(Error::BadBlockIndex {
            tensor: t,
            block_row: 0,
            reason: "row_ptr[0] must be 0",
        });
    }
    for row in 0..gr {
        let (a, z) = (r.u32(usize_of(4 * row)) as u64, r.u32(usize_of(4 * row + 4)) as u64);
        if z < a {
            return Err(Error::BadBlockIndex {
                tensor: t,
                block_row: row as u32,
                reason: "row_ptr decreases",
            });
        }
        if z > nnz {
            return Err(Error::BadBlockIndex {
                tensor: t,
                block_row: row as u32,
                reason: "row_ptr exceeds the kept-block count",
            });
        }
        let mut prev = None;
        for k in a..z {
            let c = r.u32(usize_of(head + 4 * k)) as u64;
            if c >= gc {
                return Err(Error::BadBlockIndex {
                    tensor: t,
                    block_row: row as u32,
                    reason: "block column out of range",
                });
            }
            if prev.is_some_and(|p| c <= p) {
                return Err(Error::BadBlockIndex {
                    tensor: t,
                    block_row: row as u32,
                    reason: "block columns not strictly ascending",
                });
            }
            prev = Some(c);
        }
    }
    Ok(nnz as u32)
}

fn window(r: &Rec<'_>) -> Window2d {
    let a = |i: usize| r.u32(56 + 4 * i);
    Window2d {
        kernel: [a(0), a(1)],
        stride: [a(2), a(3)],
        padding: [a(4), a(5)],
        dilation: [a(6), a(7)],
    }
}

/// Decodes a layer record's kind, flags, slots and attributes into an [`Op`], checking that
/// fields the kind does not use are zero (attributes, flags) or NONE (slots, second input).
fn decode_layer(r: &Rec<'_>, l: u32) -> Result<(Op, u32, Option<u32>), Error> {
    let code = r.u16(0);
    let kind = LayerKind::from_code(code).ok_or(Error::UnknownLayerKind { layer: l, code })?;
    let flags = r.u16(2);
    let slot = |i: usize| r.u32(40 + 4 * i);
    let opt = |i: usize| Some(slot(i)).filter(|&s| s != NONE);
    let bad = |field: &'static str, value: u64, off: usize| Error::BadLayerField {
        layer: l,
        field,
        value,
        offset: r.pos(off),
    };
    // (slots the kind may use, required slots, attributes it uses, flags allowed)
    let (used_slots, required, used_attrs, allowed_flags) = match kind {
        LayerKind::Linear => (2, 1, 0, 0),
        LayerKind::Conv2d => (2, 1, 8, 0),
        LayerKind::MaxPool => (0, 0, 8, 0),
        LayerKind::AvgPool => (0, 0, 8, 1),
        LayerKind::BatchNorm => (4, 2, 1, 0),
        LayerKind::LayerNorm => (2, 0, 1, 0),
        LayerKind::Relu | LayerKind::Flatten | LayerKind::Add | LayerKind::Softmax => (0, 0, 0, 0),
    };
    if flags & !allowed_flags != 0 {
        return Err(bad("flags", flags as u64, 2));
    }
    for i in 0..4 {
        let unused = i >= used_slots && slot(i) != NONE;
        let missing = i < required && slot(i) == NONE;
        if unused || missing {
            return Err(bad("tensor slot", slot(i) as u64, 40 + 4 * i));
        }
    }
    for i in used_attrs..8 {
        if r.u32(56 + 4 * i) != 0 {
            return Err(bad("attribute", r.u32(56 + 4 * i) as u64, 56 + 4 * i));
        }
    }
    let eps = f32::from_bits(r.u32(56));
    let op = match kind {
        LayerKind::Linear => Op::Linear {
            weight: slot(0),
            bias: opt(1),
        },
        LayerKind::Conv2d => Op::Conv2d {
            weight: slot(0),
            bias: opt(1),
            window: window(r),
        },
        LayerKind::Relu => Op::Relu,
        LayerKind::MaxPool => Op::MaxPool(window(r)),
        LayerKind::AvgPool => Op::AvgPool {
            window: window(r),
            count_include_pad: flags & 1 == 1,
        },
        LayerKind::Flatten => Op::Flatten,
        LayerKind::BatchNorm => Op::BatchNorm {
            mean: slot(0),
            var: slot(1),
            gamma: opt(2),
            beta: opt(3),
            eps,
        },
        LayerKind::LayerNorm => Op::LayerNorm {
            gamma: opt(0),
            beta: opt(1),
            eps,
        },
        LayerKind::Add => Op::Add,
        LayerKind::Softmax => Op::Softmax,
    };
    let second = r.u32(16);
    let second = if kind == LayerKind::Add {
        Some(second)
    } else if second != NONE {
        return Err(bad("second input", second as u64, 16));
    } else {
        None
    };
    Ok((op, r.u32(12), second))
}
