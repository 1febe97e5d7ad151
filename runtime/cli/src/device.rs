//! `--device`: the CPU runtime's `Runner`, or the GPU path of `runtime/cuda` where the runtime
//! was built with `--features cuda`, behind one small interface.

use smk_format::Model;
use smk_runtime::Runner;
use std::path::Path;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Device {
    Cpu,
    /// The GPU of this ordinal.
    Cuda(usize),
}

impl Device {
    /// `cpu`, `cuda` or `cuda:N`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let device = match spec {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            s => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Device::Cuda(n),
                _ => return Err(format!("unknown device {spec:?} (cpu, cuda or cuda:N)")),
            },
        };
        if device != Device::Cpu && !cfg!(feature = "cuda") {
            return Err(
                "this runtime was built without CUDA: rebuild it with `cargo build --release -p smk-runtime-cli --features cuda`"
                    .into(),
            );
        }
        Ok(device)
    }
}

/// A model ready to run batches of a fixed size.
pub enum Engine<'s> {
    Cpu(Box<Runner<'s>>),
    #[cfg(feature = "cuda")]
    Gpu {
        model: smk_runtime_cuda::GpuModel,
        ordinal: usize,
        batch: usize,
        task: Option<u32>,
    },
}

impl<'s> Engine<'s> {
    /// The model on GPU `ordinal` (its sections copied there once).
    #[cfg(feature = "cuda")]
    pub fn gpu(
        model: &Model<'_>,
        task: Option<u32>,
        ordinal: usize,
        batch: usize,
        path: &Path,
    ) -> Result<Self, String> {
        let task = match (task, model.mask_set_count()) {
            (None, 1) => Some(0),
            (t, _) => t,
        };
        let gpu = smk_runtime_cuda::GpuModel::load(model, task, ordinal, None)
            .map_err(|e| format!("{}: cuda:{ordinal}: {e}", path.display()))?;
        Ok(Engine::Gpu {
            model: gpu,
            ordinal,
            batch,
            task,
        })
    }

    #[cfg(not(feature = "cuda"))]
    pub fn gpu(_: &Model<'_>, _: Option<u32>, _: usize, _: usize, _: &Path) -> Result<Self, String> {
        Err("this runtime was built without CUDA".into())
    }

    /// Values per input.
    pub fn input_len(&self) -> usize {
        match self {
            Engine::Cpu(r) => r.plan().input_len(),
            #[cfg(feature = "cuda")]
            Engine::Gpu { model, .. } => model.input_len(),
        }
    }

    /// Values per output.
    pub fn output_len(&self) -> usize {
        match self {
            Engine::Cpu(r) => r.plan().output_len(),
            #[cfg(feature = "cuda")]
            Engine::Gpu { model, .. } => model.output_len(),
        }
    }

    /// The mask set applied.
    pub fn task(&self) -> Option<u32> {
        match self {
            Engine::Cpu(r) => r.plan().task(),
            #[cfg(feature = "cuda")]
            Engine::Gpu { task, .. } => *task,
        }
    }

    /// The instruction set's name on the CPU, `null` in JSON on a GPU.
    pub fn isa_name(&self) -> Option<&'static str> {
        match self {
            Engine::Cpu(r) => Some(r.plan().isa().name()),
            #[cfg(feature = "cuda")]
            Engine::Gpu { .. } => None,
        }
    }

    /// `cpu` or `cuda:N`.
    pub fn device(&self) -> String {
        match self {
            Engine::Cpu(_) => "cpu".into(),
            #[cfg(feature = "cuda")]
            Engine::Gpu { ordinal, .. } => format!("cuda:{ordinal}"),
        }
    }

    /// Where it runs, for people.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(r) => format!("{}, one thread", r.plan().isa()),
            #[cfg(feature = "cuda")]
            Engine::Gpu { ordinal, .. } => format!("GPU cuda:{ordinal}"),
        }
    }

    /// One batch: `x` holds batch × input values, `y` receives batch × output values.
    pub fn infer(&mut self, x: &[f32], y: &mut [f32]) -> Result<(), String> {
        match self {
            Engine::Cpu(r) => r.infer(x, y).map_err(|e| e.to_string()),
            #[cfg(feature = "cuda")]
            Engine::Gpu { model, batch, .. } => {
                let out = model.infer(x, *batch).map_err(|e| e.to_string())?;
                if out.len() != y.len() {
                    return Err(format!("output of {} values, expected {}", out.len(), y.len()));
                }
                y.copy_from_slice(&out);
                Ok(())
            }
        }
    }
}
