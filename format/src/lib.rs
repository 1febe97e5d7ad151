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
