//! smk-trainer: learns supermasks over frozen weights with candle, and exports them to .smk.
//!
//! - [`model`]: masked layers (frozen weights as plain tensors, scores as variables) and the
//!   model zoo.
//! - [`mask`]: binarising scores with the straight-through estimator; exact top-k.
//! - [`config`]: methods and their defaults; [`optim`]: SGD, RMSprop and Adam with state.
//! - [`data`]: IDX and CIFAR-10 loaders, task families; [`rng`]: the seeded generator.
//! - [`supsup`]: task families trained in turn, a mask per task over one network, and task
//!   inference; [`packnet`]: tasks packed into one network by pruning.
//! - [`dino`]: self-supervised masks (DINO), judged by k-NN accuracy.
//! - [`train`]: fit, eval, checkpoints and resume; [`parallel`]: data parallel over devices; [`export`]: .smk export; [`sweep`]: accuracy
//!   against density, as a table and a plot.
//! - [`dense`]: a run as the masked dense model it computes, written as safetensors; [`onnx`]:
//!   the same as an ONNX graph (`trainer export --format safetensors|onnx`).

pub mod compact;
pub mod config;
pub mod data;
pub mod dense;
pub mod dino;
pub mod error;
pub mod export;
pub mod mask;
pub mod model;
pub mod onnx;
pub mod optim;
pub mod packnet;
pub mod parallel;
pub mod rng;
pub mod supsup;
pub mod sweep;
pub mod train;

pub use error::{Error, Result};
