//! Any bytes: parse, walk every view, verify. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = smk_format::Model::parse(data) {
        let _ = m.verify();
        for l in m.layers() {
            let _ = (l.name, l.output_shape.numel());
        }
        for t in m.tensors() {
            let (rows, cols) = t.matrix();
            let _ = t.value(rows - 1, cols - 1);
            let _ = t.value(0, 0);
        }
        for s in m.mask_sets() {
            for t in m.masked_tensors() {
                if let Some(mask) = m.mask(s.index, t) {
                    let _ = mask.bit(mask.grid.0 - 1, mask.grid.1 - 1);
                }
            }
        }
        let _ = m.metadata().count() + m.history().count();
    }
});
