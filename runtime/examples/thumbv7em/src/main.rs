//! Classifies one bundled MNIST digit with a trained supermask (LeNet-300-100, edge-popup over
//! seeded signed-constant weights: 38 KB for 266,200 weights) on a bare-metal Cortex-M4F.
//! Everything lives in flash or on the stack: the model bytes, the plan, the scratch.
#![no_std]
#![no_main]

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU32, Ordering};
use smk_runtime::{Model, Plan};

/// The model, aligned so that the kernels read its mask words in place.
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("../model.smk"));
/// One 28×28 test digit (a 5), raw bytes.
static DIGIT: [u8; 784] = *include_bytes!("../digit.bin");
/// Where the answer goes (a debugger reads it): the class, or `u32::MAX` on error.
static PREDICTION: AtomicU32 = AtomicU32::new(u32::MAX - 1);

/// Scratch for batch 1 (the plan says how much it needs: about 10 KB here).
const SCRATCH: usize = 16 * 1024;

fn classify() -> Result<u32, smk_runtime::Error> {
    let model = Model::parse(&MODEL.0)?;
    let plan = Plan::new(&model, 1, None)?;
    let mut scratch = [0u8; SCRATCH];
    let mut input = [0f32; 784];
    for (x, &p) in input.iter_mut().zip(DIGIT.iter()) {
        *x = p as f32 / 255.0;
    }
    let mut probabilities = [0f32; 10];
    plan.infer(&mut scratch, &input, &mut probabilities)?;
    let mut best = 0;
    for (k, p) in probabilities.iter().enumerate() {
        if *p > probabilities[best] {
            best = k;
        }
    }
    Ok(best as u32)
}

/// The reset entry point.
#[no_mangle]
pub extern "C" fn _start() -> ! {
    PREDICTION.store(classify().unwrap_or(u32::MAX), Ordering::SeqCst);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
