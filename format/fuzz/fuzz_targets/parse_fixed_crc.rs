//! Any bytes, with every checksum recomputed before parsing: random mutations would otherwise
//! almost never get past the header and structure checksums, and the structural checks behind
//! them would go unexplored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smk_format::crc32c::crc32c;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.len() >= 64 {
        let count = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
        let len = bytes.len();
        for i in (0..count).take_while(|i| 64 + 32 * (i + 1) <= len) {
            let e = 64 + 32 * i;
            let off = u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap());
            let n = u64::from_le_bytes(bytes[e + 16..e + 24].try_into().unwrap());
            if let Some(section) = off.checked_add(n).filter(|&end| end <= len as u64).map(|end| &bytes[off as usize..end as usize]) {
                let c = crc32c(section);
                bytes[e + 24..e + 28].copy_from_slice(&c.to_le_bytes());
            }
        }
        smk_format::writer::refresh_header_checksum(&mut bytes);
    }
    if let Ok(m) = smk_format::Model::parse(&bytes) {
        let _ = m.verify();
        for t in m.tensors() {
            let (rows, cols) = t.matrix();
            let _ = t.value(rows - 1, cols - 1);
        }
        for s in m.mask_sets() {
            for t in m.masked_tensors() {
                if let Some(mask) = m.mask(s.index, t) {
                    let _ = mask.bit(mask.grid.0 - 1, mask.grid.1 - 1);
                }
            }
        }
        let _ = m.layers().count() + m.metadata().count() + m.history().count();
    }
});
