//! smk's runtime on CUDA GPUs: the kernel sources ([`SOURCE`]) and their compilation to PTX with
//! NVRTC at first use, so that a deployment needs only the driver and `libnvrtc`, not a toolkit.
//!
//! The kernels cover the weight products of every storage and mask the format defines (dense
//! f32/f16/bf16 rows with or without an element mask, packed and tile-major block masks, seeded
//! signed-constant weights regenerated from smk's SplitMix64 stream, seeded uniform and normal
//! weights), at batch 1 and tiled for many inputs, and the other layers: im2col for
//! convolutions, pooling, batch and layer norm, residual adds, ReLU and softmax. Their conventions match the CPU
//! runtime's (`runtime/src/linear.rs`); `kernels.cu` states them.
//!
//! [`GpuModel`] runs a whole `.smk` model on one GPU: every layer kind and graph the format
//! allows, batch 1 through streaming kernels and larger batches through a tiled one.
//!
//! Status: the sources compile to PTX and to sm_90 machine code on the CPU (tests/compile.rs).
//! Nothing here has run on a GPU yet: `tests/gpu.rs` compares [`GpuModel`] with the CPU runtime
//! where a GPU answers, and is owed a machine that has one (issue 6).

use std::fmt;

mod model;

pub use model::{GpuError, GpuModel};

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// The entry points [`SOURCE`] defines.
pub const KERNELS: [&str; 18] = [
    "smk_rows_f32",
    "smk_rows_f16",
    "smk_rows_bf16",
    "smk_blocks_f32",
    "smk_blocks_f16",
    "smk_blocks_bf16",
    "smk_signed_rows",
    "smk_signed_blocks",
    "smk_generated_rows",
    "smk_bias_relu",
    "smk_softmax",
    "smk_tiled",
    "smk_im2col",
    "smk_conv_out",
    "smk_pool",
    "smk_channel_affine",
    "smk_layer_norm",
    "smk_add",
];

/// Why the kernels could not be compiled.
#[derive(Debug)]
pub enum CompileError {
    /// `libnvrtc` could not be loaded (it ships with the CUDA driver's runtime libraries, or as
    /// the `nvidia-cuda-nvrtc` wheel).
    NoNvrtc(String),
    /// NVRTC rejected the source; the log says why.
    Rejected(String),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::NoNvrtc(why) => write!(f, "NVRTC is not available: {why}"),
            CompileError::Rejected(log) => write!(f, "NVRTC rejected the kernels:\n{log}"),
        }
    }
}

impl std::error::Error for CompileError {}

/// Compiles `source` to PTX for `arch` (`"sm_90"` for H100/H200, `"sm_80"` for A100).
pub fn compile_ptx(source: &str, arch: &'static str) -> Result<String, CompileError> {
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        // The seeded normal rule needs IEEE double log/cos/sqrt; nothing here wants fast math.
        use_fast_math: Some(false),
        ..Default::default()
    };
    let source = source.to_owned();
    // cudarc loads libnvrtc on first use and panics when it is missing: that becomes an error.
    let compiled =
        std::panic::catch_unwind(move || cudarc::nvrtc::compile_ptx_with_opts(source, opts)).map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libnvrtc could not be loaded".into());
            CompileError::NoNvrtc(why)
        })?;
    match compiled {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(e) => Err(CompileError::Rejected(format!("{e:?}"))),
    }
}
