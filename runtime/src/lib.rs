//! Runs .smk supermask models.
//!
//! `no_std`, and nothing allocates while inferring: [`Model::parse`] validates borrowed bytes,
//! [`Plan::new`] decides buffers and kernels and says how much scratch a batch needs, and
//! [`Plan::infer`] runs in that scratch. Kernels exist for every weight kind (f32, f16, bf16,
//! seeded) and mask kind (none, per element, per block), in portable code and with AVX2,
//! AVX-512 and NEON; block masks touch only the kept blocks. For files with a mask set per task,
//! [`TaskPlan`] infers an input's task (SupSup's one-shot rule or its binary search, or minimum
//! entropy).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use smk_runtime::{Model, Plan};
//! let bytes = std::fs::read("model.smk")?;
//! let model = Model::parse(&bytes)?;
//! let plan = Plan::new(&model, 1, None)?; // batch 1, the model's only task
//! let mut scratch = vec![0u8; plan.scratch_bytes()];
//! let input = vec![0.0f32; plan.input_len()];
//! let mut logits = vec![0.0f32; plan.output_len()];
//! plan.infer(&mut scratch, &input, &mut logits)?; // no allocation in here
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

mod error;
mod isa;
mod linear;
mod ops;
mod plan;
#[cfg(feature = "std")]
mod session;
mod simd;
mod tasks;

pub use error::Error;
pub use isa::Isa;
pub use plan::{Plan, MAX_LAYERS, MAX_LIVE};
#[cfg(feature = "std")]
pub use session::{Runner, Session};
pub use smk_format::Model;
pub use tasks::{TaskGuess, TaskPlan, TaskRule, MAX_TASKS};
