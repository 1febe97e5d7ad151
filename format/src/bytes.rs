//! Little-endian field reads over a slice whose absolute file offset is known, so errors can
//! name where they are. Reads never panic: the parser checks lengths first, and a read past the
//! end (which validation rules out) yields zero.

#[derive(Clone, Copy, Debug)]
pub(crate) struct Rec<'a> {
    pub b: &'a [u8],
    /// Absolute file offset of `b[0]`.
    pub at: u64,
}

impl<'a> Rec<'a> {
    pub fn new(b: &'a [u8], at: u64) -> Self {
        Self { b, at }
    }

    fn array<const N: usize>(&self, off: usize) -> [u8; N] {
        off.checked_add(N)
            .and_then(|end| self.b.get(off..end))
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; N])
    }

    pub fn u8(&self, off: usize) -> u8 {
        self.array::<1>(off)[0]
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.array(off))
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.array(off))
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.array(off))
    }
    /// Absolute offset of field `off`.
    pub fn pos(&self, off: usize) -> u64 {
        self.at + off as u64
    }
    /// The sub-record `[off, off + len)`, empty if out of range.
    pub fn sub(&self, off: usize, len: usize) -> Rec<'a> {
        let b = off.checked_add(len).and_then(|end| self.b.get(off..end)).unwrap_or(&[]);
        Rec { b, at: self.pos(off) }
    }
    /// The first nonzero byte in `[from, to)`, as an absolute offset.
    pub fn first_nonzero(&self, from: usize, to: usize) -> Option<u64> {
        let s = self.b.get(from..to)?;
        s.iter().position(|&x| x != 0).map(|i| self.pos(from + i))
    }
}

/// Converts a length already checked against an in-memory slice.
pub(crate) fn usize_of(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}
