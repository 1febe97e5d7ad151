//! The .smk supermask file format.
//!
//! One file holds a model's layer graph, its frozen weights (stored as f32, f16 or bf16, or only
//! the seed that regenerates them) and bit-packed masks, one set per task. `FORMAT.md` beside this
//! crate is the byte-exact spec; this crate is its reference reader and writer.
//!
//! - [`Model::parse`] reads `&[u8]` into borrowed views without copying or allocating (the core
//!   builds with `no_std` and no `alloc`). Every offset and length is checked before use; a
//!   hostile file gets an [`Error`] naming what is wrong and where, never a panic.
//! - [`Model::verify`] checks payload checksums and the rest of the file on request, so opening
//!   stays proportional to the header.
//! - [`seeded`] is the one definition of seeded weights, shared by trainer and runtime.
//! - With `alloc`, [`writer::ModelBuilder`] builds files; with `std`, [`MappedModel`] maps a file
//!   and [`writer::write_atomic`] replaces one atomically.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use smk_format::writer::{MaskSpec, ModelBuilder, TensorSpec};
//! use smk_format::{InitRule, MappedModel, SeededInit};
//!
//! let mut b = ModelBuilder::new(&[784])?;
//! let init = SeededInit { rule: InitRule::SignedConstant, seed: 7, stream: 0, scale: 0.05 };
//! let fc = b.linear("fc", TensorSpec::seeded("fc.weight", &[10, 784], init)?, None)?;
//! let task = b.mask_set("digits")?;
//! b.set_mask(task, fc, MaskSpec::element_bools(&vec![true; 7840]))?;
//! let path = std::env::temp_dir().join(format!("smk-doc-{}.smk", std::process::id()));
//! b.write(&path)?; // temporary file, then rename
//!
//! let file = MappedModel::open(&path, /* verify checksums */ true)?;
//! let model = file.model()?; // borrowed views, nothing copied
//! assert_eq!(model.mask(0, 0).unwrap().ones, 7840);
//! # std::fs::remove_file(&path)?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod bytes;
pub mod crc32c;
mod error;
#[cfg(feature = "std")]
mod file;
mod model;
pub mod seeded;
mod shape;
pub mod spec;
#[cfg(feature = "alloc")]
pub mod writer;

pub use error::Error;
#[cfg(feature = "std")]
pub use file::{MappedModel, OpenError};
pub use model::{BlockIndex, HistoryEntry, Input, Layer, Layout, Mask, MaskSet, Model, Section, Storage, Tensor};
pub use seeded::SeededInit;
pub use shape::{infer_shape, Op, Shape, Window2d};
pub use spec::{GeneratorKind, InitRule, LayerKind, LayoutKind, MaskKind, SectionKind, StorageKind};
