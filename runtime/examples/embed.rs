//! Embedding the runtime in a Rust program with a fixed scratch buffer: the model and one digit
//! are compiled in (or read from the paths given), the plan is made once, and every inference
//! runs in a buffer sized at compile time: no allocation after start-up.
//!
//!   cargo run --release -p smk-runtime --example embed [MODEL.smk DIGIT.bin]
//!
//! DIGIT.bin holds 784 raw pixel bytes (0–255). Without arguments it classifies the digit that
//! the bare-metal example uses, with that example's model (LeNet-300-100 over seeded weights).

use smk_runtime::{Model, Plan};

/// Aligned to 64 bytes, so that the kernels read the model's weights and masks in place.
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

static BUNDLED_MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("thumbv7em/model.smk"));
static BUNDLED_DIGIT: [u8; 784] = *include_bytes!("thumbv7em/digit.bin");

/// The most scratch this program gives a plan: decided when it is built, like a device's RAM.
const SCRATCH_BYTES: usize = 64 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, digit): (Option<Vec<u8>>, Vec<u8>) = match args.as_slice() {
        [] => (None, BUNDLED_DIGIT.to_vec()),
        [model, digit] => (Some(std::fs::read(model)?), std::fs::read(digit)?),
        _ => return Err("usage: embed [MODEL.smk DIGIT.bin]".into()),
    };
    let bytes: &[u8] = file.as_deref().unwrap_or(&BUNDLED_MODEL.0);
    let model = Model::parse(bytes)?;
    model.verify()?;
    let plan = Plan::new(&model, 1, None)?;
    if plan.scratch_bytes() > SCRATCH_BYTES {
        return Err(format!(
            "the model needs {} bytes of scratch; this program has {SCRATCH_BYTES}",
            plan.scratch_bytes()
        )
        .into());
    }
    if digit.len() != plan.input_len() {
        return Err(format!(
            "the digit holds {} pixels; the model takes {}",
            digit.len(),
            plan.input_len()
        )
        .into());
    }

    // Everything below runs in fixed buffers: this is the part a device loops over.
    let mut scratch = [0u8; SCRATCH_BYTES];
    let mut input = [0f32; 784];
    let mut output = [0f32; 16];
    let output = output
        .get_mut(..plan.output_len())
        .ok_or("the model has more than 16 outputs")?;
    for (x, &p) in input.iter_mut().zip(&digit) {
        *x = p as f32 / 255.0;
    }
    plan.infer(&mut scratch, &input[..plan.input_len()], output)?;
    let (class, score) = output
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |best, (k, &v)| if v > best.1 { (k, v) } else { best });
    println!(
        "class {class} (output {score:.4}), {} of {SCRATCH_BYTES} bytes of scratch used, kernels: {}",
        plan.scratch_bytes(),
        plan.isa()
    );
    Ok(())
}
