//! The one error type of the parser, the verifier and the writer.

use crate::shape::Shape;
use crate::spec::SectionKind;

/// Everything that can be wrong with a .smk file. Offsets are absolute byte offsets in the file.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The input is shorter than the 64-byte fixed header.
    TooShort {
        /// Bytes present.
        len: u64,
    },
    /// The first eight bytes are not the .smk magic.
    BadMagic {
        /// What was there.
        found: [u8; 8],
    },
    /// The major version is not one this reader knows.
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
    },
    /// The byte-order marker does not read 0x01020304 little-endian.
    WrongByteOrder {
        /// The marker as read little-endian.
        found: u32,
    },
    /// Header flags this version does not define.
    UnknownFlags {
        /// The flags word.
        flags: u32,
    },
    /// The alignment is not a power of two in 64..=65536.
    BadAlignment {
        /// The stored alignment.
        alignment: u32,
    },
    /// More entries in the section table than the cap allows.
    TooManySections {
        /// The stored count.
        count: u32,
    },
    /// The stored header length disagrees with 64 + 32 × section count, or exceeds the file.
    HeaderLength {
        /// The stored header length.
        stored: u32,
        /// What the section count implies.
        expected: u64,
    },
    /// The stored file length is not the length of the input.
    FileLength {
        /// The stored length.
        stored: u64,
        /// The input's length.
        actual: u64,
    },
    /// A reserved field or byte is not zero.
    ReservedNotZero {
        /// Where.
        offset: u64,
    },
    /// The header checksum does not match: the header or section table is corrupt.
    HeaderChecksum {
        /// Stored CRC-32C.
        stored: u32,
        /// Computed CRC-32C.
        computed: u32,
    },
    /// A section kind this version does not define.
    UnknownSectionKind {
        /// Section index.
        section: u32,
        /// The stored kind code.
        kind: u32,
    },
    /// A section does not start where the layout rule puts it (the aligned end of the previous
    /// one): a gap, an overlap or an unsorted table.
    SectionMisplaced {
        /// Section index.
        section: u32,
        /// Its stored offset.
        offset: u64,
        /// Where it must start.
        expected: u64,
    },
    /// A section runs past the end of the file.
    SectionOutOfBounds {
        /// Section index.
        section: u32,
        /// Stored offset.
        offset: u64,
        /// Stored length.
        length: u64,
    },
    /// Padding between sections is not zero.
    PaddingNotZero {
        /// Where the first nonzero padding byte is.
        offset: u64,
    },
    /// Bytes follow the last section.
    TrailingBytes {
        /// Where the last section ends.
        end: u64,
    },
    /// A section appears where the canonical order wants another kind.
    SectionOrder {
        /// Section index.
        section: u32,
        /// The kind found.
        found: SectionKind,
        /// What the order wants there.
        expected: &'static str,
    },
    /// A required section is absent.
    MissingSection {
        /// The missing kind.
        kind: SectionKind,
    },
    /// A section's bytes do not match its checksum.
    SectionChecksum {
        /// Section index.
        section: u32,
        /// Its kind.
        kind: SectionKind,
        /// Stored CRC-32C.
        stored: u32,
        /// Computed CRC-32C.
        computed: u32,
    },
    /// A section's length is not what its records or its tensor imply.
    SectionLength {
        /// Section index.
        section: u32,
        /// Its kind.
        kind: SectionKind,
        /// Stored length.
        length: u64,
        /// Required length.
        expected: u64,
    },
    /// A count exceeds its cap.
    CountTooLarge {
        /// What is counted.
        what: &'static str,
        /// The stored count.
        count: u64,
        /// The cap.
        cap: u64,
        /// Where the count is stored.
        offset: u64,
    },
    /// A string reference points outside the string pool.
    StringOutOfBounds {
        /// Where the reference is stored.
        offset: u64,
        /// Its start in the pool.
        start: u32,
        /// Its length.
        len: u32,
    },
    /// A string is not valid UTF-8.
    StringNotUtf8 {
        /// Where the reference is stored.
        offset: u64,
    },
    /// A name is empty or longer than 255 bytes.
    BadName {
        /// Where the reference is stored.
        offset: u64,
        /// Its length.
        len: u32,
    },
    /// A layer kind this version does not define.
    UnknownLayerKind {
        /// Layer index.
        layer: u32,
        /// The stored code.
        code: u16,
    },
    /// A layer field holds a value its kind does not allow (flags, unused slot, attribute).
    BadLayerField {
        /// Layer index.
        layer: u32,
        /// The field.
        field: &'static str,
        /// The stored value.
        value: u64,
        /// Where it is stored.
        offset: u64,
    },
    /// A layer input is not an earlier layer or the graph input.
    BadLayerInput {
        /// Layer index.
        layer: u32,
        /// The stored input.
        input: u32,
    },
    /// A shape has rank 0 or above 4, a zero dimension, or more than 2^40 elements.
    BadShape {
        /// Where the shape is stored.
        offset: u64,
    },
    /// A layer's inputs and tensors do not fit its operation.
    LayerShape {
        /// Layer index.
        layer: u32,
        /// What does not fit.
        reason: &'static str,
    },
    /// A layer's stored output shape is not the one its operation gives.
    OutputShape {
        /// Layer index.
        layer: u32,
        /// Stored.
        stored: Shape,
        /// Inferred.
        expected: Shape,
    },
    /// A tensor slot does not name the next tensor in order (every tensor is used exactly once,
    /// in layer order).
    TensorReference {
        /// Layer index.
        layer: u32,
        /// Slot 0..4.
        slot: u32,
        /// Stored index.
        found: u32,
        /// Required index.
        expected: u32,
    },
    /// Tensors that no layer uses.
    UnusedTensors {
        /// Tensors used.
        used: u32,
        /// Tensors stored.
        count: u32,
    },
    /// A storage code this version does not define.
    UnknownStorage {
        /// Tensor index.
        tensor: u32,
        /// The stored code.
        code: u8,
    },
    /// A layout code this version does not define.
    UnknownLayout {
        /// Tensor index.
        tensor: u32,
        /// The stored code.
        code: u8,
    },
    /// An init rule code this version does not define.
    UnknownInitRule {
        /// Tensor index.
        tensor: u32,
        /// The stored code.
        code: u8,
    },
    /// A generator code this version does not define.
    UnknownGenerator {
        /// Tensor index.
        tensor: u32,
        /// The stored code.
        code: u8,
    },
    /// A tensor field holds a value its storage or layout does not allow.
    BadTensorField {
        /// Tensor index.
        tensor: u32,
        /// The field.
        field: &'static str,
        /// The stored value.
        value: u64,
    },
    /// A tensor's layout does not fit its masks (tile-major and packed need a block mask of the
    /// same block shape; packed needs exactly one mask set; element masks need row-major).
    LayoutMismatch {
        /// Tensor index.
        tensor: u32,
        /// What does not fit.
        reason: &'static str,
    },
    /// A record names a section other than the next payload section in canonical order.
    PayloadReference {
        /// Where the reference is stored.
        offset: u64,
        /// Stored section index.
        found: u32,
        /// Required section index.
        expected: u32,
    },
    /// A packed tensor's block index is inconsistent.
    BadBlockIndex {
        /// Tensor index.
        tensor: u32,
        /// Block row where it breaks.
        block_row: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A MASKS section with no mask set (the section must then be absent).
    EmptyMasks {
        /// Section index.
        section: u32,
    },
    /// A mask kind code this version does not define.
    UnknownMaskKind {
        /// Masked-tensor entry.
        entry: u32,
        /// The stored code.
        code: u8,
    },
    /// A masked-tensor entry is invalid (unsorted, not a linear or conv weight, bad block shape).
    BadMaskedTensor {
        /// Masked-tensor entry.
        entry: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A mask stores more ones than it has bits.
    MaskOnesTooLarge {
        /// Mask set.
        set: u32,
        /// Masked-tensor entry.
        entry: u32,
        /// Stored count.
        ones: u64,
    },
    /// Metadata keys are not strictly ascending (sorted and unique).
    MetadataOrder {
        /// Entry index.
        entry: u32,
    },
    /// Verification: a mask's stored count of ones is not its popcount.
    MaskOnesMismatch {
        /// Mask set.
        set: u32,
        /// Masked-tensor entry.
        entry: u32,
        /// Stored count.
        stored: u64,
        /// Counted.
        counted: u64,
    },
    /// Verification: bits past the end of a mask row are set.
    MaskPaddingBits {
        /// Mask set.
        set: u32,
        /// Masked-tensor entry.
        entry: u32,
        /// Row of the mask grid.
        row: u64,
    },
    /// Verification: a packed tensor's block index disagrees with its block mask.
    PackedMaskMismatch {
        /// Tensor index.
        tensor: u32,
        /// Block row.
        block_row: u32,
    },
    /// Verification: padding elements of a tile-major or packed tensor are not zero.
    TilePaddingNotZero {
        /// Tensor index.
        tensor: u32,
        /// Block (in storage order).
        block: u64,
    },
    /// Verification: bits past the last column of a row of signs are set.
    SignPaddingBits {
        /// Tensor index.
        tensor: u32,
        /// The row.
        row: u64,
    },
    /// Verification: two mask sets share a name.
    DuplicateMaskSetName {
        /// The later set.
        set: u32,
    },
    /// The writer was given something it cannot store.
    InvalidInput {
        /// What.
        reason: &'static str,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use Error::*;
        match self {
            TooShort { len } => write!(f, "file is {len} bytes, shorter than the 64-byte .smk header (truncated or not a .smk file)"),
            BadMagic { found } => write!(f, "not a .smk file: bytes 0..8 are {found:02x?}, expected the .smk magic 89 53 4d 4b 0d 0a 1a 0a"),
            UnsupportedVersion { major, minor } => write!(f, "format version {major}.{minor} is not supported: this reader reads version {}.x", crate::spec::VERSION_MAJOR),
            WrongByteOrder { found } => write!(f, "byte-order marker at byte 12 reads {found:#010x}, expected 0x01020304 (little-endian)"),
            UnknownFlags { flags } => write!(f, "header flags {flags:#x} at byte 16 are not defined in this version"),
            BadAlignment { alignment } => write!(f, "alignment {alignment} at byte 20 is not a power of two from 64 to 65536"),
            TooManySections { count } => write!(f, "section count {count} at byte 24 exceeds the cap of {}", crate::spec::caps::SECTIONS),
            HeaderLength { stored, expected } => write!(f, "header length {stored} at byte 28 does not match the section table ({expected} bytes) or exceeds the file"),
            FileLength { stored, actual } => write!(f, "header says the file is {stored} bytes but it is {actual} bytes (truncated or appended to)"),
            ReservedNotZero { offset } => write!(f, "reserved field at byte {offset} is not zero"),
            HeaderChecksum { stored, computed } => write!(f, "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): header or section table corrupted"),
            UnknownSectionKind { section, kind } => write!(f, "section {section} has unknown kind {kind}"),
            SectionMisplaced { section, offset, expected } => write!(f, "section {section} starts at byte {offset}, expected {expected} (sections must follow each other in order, each at the next aligned offset)"),
            SectionOutOfBounds { section, offset, length } => write!(f, "section {section} (bytes {offset}+{length}) runs past the end of the file"),
            PaddingNotZero { offset } => write!(f, "padding byte at {offset} is not zero"),
            TrailingBytes { end } => write!(f, "bytes follow the last section, which ends at byte {end}"),
            SectionOrder { section, found, expected } => write!(f, "section {section} is {found}, expected {expected} at this position"),
            MissingSection { kind } => write!(f, "required section {kind} is missing"),
            SectionChecksum { section, kind, stored, computed } => write!(f, "section {section} ({kind}) is corrupted: checksum {computed:#010x} does not match the stored {stored:#010x}"),
            SectionLength { section, kind, length, expected } => write!(f, "section {section} ({kind}) is {length} bytes, expected {expected}"),
            CountTooLarge { what, count, cap, offset } => write!(f, "{what} count {count} at byte {offset} exceeds the cap of {cap}"),
            StringOutOfBounds { offset, start, len } => write!(f, "string reference at byte {offset} ({start}+{len}) lies outside the STRINGS section"),
            StringNotUtf8 { offset } => write!(f, "string referenced at byte {offset} is not valid UTF-8"),
            BadName { offset, len } => write!(f, "name referenced at byte {offset} is {len} bytes: names must be 1 to 255 bytes"),
            UnknownLayerKind { layer, code } => write!(f, "layer {layer} has unknown kind {code}"),
            BadLayerField { layer, field, value, offset } => write!(f, "layer {layer}: field {field} = {value} at byte {offset} is not allowed for its kind"),
            BadLayerInput { layer, input } => write!(f, "layer {layer}: input {input} is neither an earlier layer nor the graph input"),
            BadShape { offset } => write!(f, "shape at byte {offset} is invalid (rank must be 1..4, dims nonzero, at most 2^40 elements)"),
            LayerShape { layer, reason } => write!(f, "layer {layer}: {reason}"),
            OutputShape { layer, stored, expected } => write!(f, "layer {layer}: stored output shape {stored} but its inputs give {expected}"),
            TensorReference { layer, slot, found, expected } => write!(f, "layer {layer}: tensor slot {slot} names tensor {found}, expected {expected} (tensors are used once each, in layer order)"),
            UnusedTensors { used, count } => write!(f, "{count} tensors are stored but layers use only {used}"),
            UnknownStorage { tensor, code } => write!(f, "tensor {tensor} has unknown storage code {code}"),
            UnknownLayout { tensor, code } => write!(f, "tensor {tensor} has unknown layout code {code}"),
            UnknownInitRule { tensor, code } => write!(f, "tensor {tensor} has unknown init rule {code}"),
            UnknownGenerator { tensor, code } => write!(f, "tensor {tensor} has unknown generator {code}"),
            BadTensorField { tensor, field, value } => write!(f, "tensor {tensor}: field {field} = {value} is not allowed here"),
            LayoutMismatch { tensor, reason } => write!(f, "tensor {tensor}: {reason}"),
            PayloadReference { offset, found, expected } => write!(f, "record at byte {offset} names section {found}, expected section {expected} (payload sections follow their records in order)"),
            BadBlockIndex { tensor, block_row, reason } => write!(f, "tensor {tensor}: block index broken at block row {block_row}: {reason}"),
            EmptyMasks { section } => write!(f, "section {section} (MASKS) holds no mask set: omit the section instead"),
            UnknownMaskKind { entry, code } => write!(f, "masked tensor entry {entry} has unknown mask kind {code}"),
            BadMaskedTensor { entry, reason } => write!(f, "masked tensor entry {entry}: {reason}"),
            MaskOnesTooLarge { set, entry, ones } => write!(f, "mask set {set}, entry {entry}: {ones} ones stored, more than the mask has bits"),
            MetadataOrder { entry } => write!(f, "metadata entry {entry}: keys must be unique and sorted ascending"),
            MaskOnesMismatch { set, entry, stored, counted } => write!(f, "mask set {set}, entry {entry}: {stored} ones stored but {counted} bits are set"),
            MaskPaddingBits { set, entry, row } => write!(f, "mask set {set}, entry {entry}: padding bits of row {row} are set"),
            PackedMaskMismatch { tensor, block_row } => write!(f, "tensor {tensor}: packed block index and block mask disagree in block row {block_row}"),
            TilePaddingNotZero { tensor, block } => write!(f, "tensor {tensor}: padding elements of stored block {block} are not zero"),
            SignPaddingBits { tensor, row } => write!(f, "tensor {tensor}: padding bits of sign row {row} are set"),
            DuplicateMaskSetName { set } => write!(f, "mask set {set} repeats the name of an earlier set"),
            InvalidInput { reason } => write!(f, "cannot write model: {reason}"),
        }
    }
}

impl core::error::Error for Error {}
