//! The runtime's one error type.

use crate::isa::Isa;

/// Why a plan cannot be made or a model cannot run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The file is not a valid .smk model.
    Format(smk_format::Error),
    /// The batch size is 0, or the activations of one batch do not fit in memory.
    BadBatch {
        /// The batch size asked for.
        batch: usize,
    },
    /// The model has several mask sets (tasks) and none was chosen.
    TaskRequired {
        /// How many tasks the model has.
        tasks: u32,
    },
    /// The task asked for does not exist.
    NoSuchTask {
        /// The task asked for.
        task: u32,
        /// How many tasks the model has.
        tasks: u32,
    },
    /// The graph has more layers than a plan holds.
    TooManyLayers {
        /// Layers in the graph.
        layers: u32,
        /// The most a plan holds.
        max: u32,
    },
    /// The graph keeps more activations alive at once than a plan has buffers for.
    TooManyLive {
        /// The layer at which it happens.
        layer: u32,
        /// The most a plan holds at once.
        max: u32,
    },
    /// The instruction set asked for is not available on this CPU or in this build.
    IsaUnavailable(Isa),
    /// The scratch buffer is smaller than [`crate::Plan::scratch_bytes`].
    ScratchTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// The scratch the plan needs cannot be allocated (`std` only: `Runner` allocates it).
    NoMemory {
        /// Bytes asked for.
        bytes: usize,
    },
    /// The input does not hold `batch` inputs of the model's input shape.
    InputLength {
        /// f32 values expected.
        expected: usize,
        /// f32 values given.
        got: usize,
    },
    /// The output does not hold `batch` outputs of the model's output shape.
    OutputLength {
        /// f32 values expected.
        expected: usize,
        /// f32 values given.
        got: usize,
    },
    /// A layer refers to data that is not there (the mapped file changed after it was parsed).
    Inconsistent {
        /// The layer.
        layer: u32,
    },
    /// Task inference cannot run on this model.
    TaskInference {
        /// Why (a static phrase: no allocation).
        why: &'static str,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Format(e) => write!(f, "{e}"),
            Error::BadBatch { batch } => write!(f, "batch size {batch} is 0 or too large for memory"),
            Error::TaskRequired { tasks } => {
                write!(f, "the model has {tasks} tasks (mask sets); choose one")
            }
            Error::NoSuchTask { task, tasks } => {
                write!(f, "task {task} does not exist (the model has {tasks})")
            }
            Error::TooManyLayers { layers, max } => {
                write!(f, "the model has {layers} layers; a plan holds at most {max}")
            }
            Error::TooManyLive { layer, max } => write!(
                f,
                "at layer {layer} the graph keeps more than {max} activations alive; a plan holds at most {max}"
            ),
            Error::IsaUnavailable(isa) => write!(f, "instruction set {isa} is not available on this CPU or build"),
            Error::ScratchTooSmall { need, got } => {
                write!(f, "scratch buffer holds {got} bytes; the plan needs {need}")
            }
            Error::NoMemory { bytes } => write!(f, "cannot allocate {bytes} bytes of scratch for this plan"),
            Error::InputLength { expected, got } => {
                write!(f, "input holds {got} values; the plan expects {expected}")
            }
            Error::OutputLength { expected, got } => {
                write!(f, "output holds {got} values; the plan writes {expected}")
            }
            Error::TaskInference { why } => write!(f, "task inference: {why}"),
            Error::Inconsistent { layer } => {
                write!(
                    f,
                    "layer {layer} refers to data that is not in the file (did the file change?)"
                )
            }
        }
    }
}

impl core::error::Error for Error {}

impl From<smk_format::Error> for Error {
    fn from(e: smk_format::Error) -> Self {
        Error::Format(e)
    }
}
