//! `--device`: the CPU runtime's `Runner`, or the GPU path of `runtime/cuda` where the runtime
//! was built with `--features cuda`, behind one small interface.

use smk_format::Model;
use smk_runtime::{Isa, Runner, Session, TaskGuess, TaskPlan, TaskRule};
use std::path::Path;

/// Task inference in front of one batch-1 runner per task.
pub struct Auto<'s> {
    plan: TaskPlan<'s>,
    runners: Vec<Runner<'s>>,
    scratch: Vec<u8>,
    threshold: f32,
    /// The guesses of the last batch.
    pub guesses: Vec<TaskGuess>,
}

impl Auto<'_> {
    /// Whether guess `g` clears the confidence threshold.
    pub fn known(&self, g: &TaskGuess) -> bool {
        g.confidence >= self.threshold
    }
}

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
    /// `--task auto`: each input's task inferred, then that task's mask applied.
    Auto(Box<Auto<'s>>),
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

    /// `--task auto` over every task of `model`.
    pub fn auto(
        session: &'s Session,
        model: &Model<'s>,
        rule: TaskRule,
        threshold: f32,
        isa: Option<Isa>,
    ) -> Result<Self, String> {
        let mut plan = TaskPlan::new(model, rule).map_err(|e| e.to_string())?;
        if let Some(isa) = isa {
            plan = plan.with_isa(isa).map_err(|e| e.to_string())?;
        }
        let runners = (0..plan.tasks() as u32)
            .map(|k| session.runner(1, Some(k), isa).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let scratch = vec![0u8; plan.scratch_bytes()];
        Ok(Engine::Auto(Box::new(Auto {
            plan,
            runners,
            scratch,
            threshold,
            guesses: Vec::new(),
        })))
    }

    /// The task inference of the last batch, under `--task auto`.
    pub fn auto_state(&self) -> Option<&Auto<'s>> {
        match self {
            Engine::Auto(a) => Some(a),
            _ => None,
        }
    }

    #[cfg(not(feature = "cuda"))]
    pub fn gpu(_: &Model<'_>, _: Option<u32>, _: usize, _: usize, _: &Path) -> Result<Self, String> {
        Err("this runtime was built without CUDA".into())
    }

    /// Values per input.
    pub fn input_len(&self) -> usize {
        match self {
            Engine::Cpu(r) => r.plan().input_len(),
            Engine::Auto(a) => a.plan.input_len(),
            #[cfg(feature = "cuda")]
            Engine::Gpu { model, .. } => model.input_len(),
        }
    }

    /// Values per output.
    pub fn output_len(&self) -> usize {
        match self {
            Engine::Cpu(r) => r.plan().output_len(),
            Engine::Auto(a) => a.runners[0].plan().output_len(),
            #[cfg(feature = "cuda")]
            Engine::Gpu { model, .. } => model.output_len(),
        }
    }

    /// The mask set applied.
    pub fn task(&self) -> Option<u32> {
        match self {
            Engine::Cpu(r) => r.plan().task(),
            Engine::Auto(_) => None,
            #[cfg(feature = "cuda")]
            Engine::Gpu { task, .. } => *task,
        }
    }

    /// The instruction set's name on the CPU, `null` in JSON on a GPU.
    pub fn isa_name(&self) -> Option<&'static str> {
        match self {
            Engine::Cpu(r) => Some(r.plan().isa().name()),
            Engine::Auto(a) => Some(a.runners[0].plan().isa().name()),
            #[cfg(feature = "cuda")]
            Engine::Gpu { .. } => None,
        }
    }

    /// `cpu` or `cuda:N`.
    pub fn device(&self) -> String {
        match self {
            Engine::Cpu(_) | Engine::Auto(_) => "cpu".into(),
            #[cfg(feature = "cuda")]
            Engine::Gpu { ordinal, .. } => format!("cuda:{ordinal}"),
        }
    }

    /// Where it runs, for people.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(r) => format!("{}, one thread", r.plan().isa()),
            Engine::Auto(a) => format!("{}, one thread, tasks inferred", a.runners[0].plan().isa()),
            #[cfg(feature = "cuda")]
            Engine::Gpu { ordinal, .. } => format!("GPU cuda:{ordinal}"),
        }
    }

    /// One batch: `x` holds batch × input values, `y` receives batch × output values.
    pub fn infer(&mut self, x: &[f32], y: &mut [f32]) -> Result<(), String> {
        match self {
            Engine::Cpu(r) => r.infer(x, y).map_err(|e| e.to_string()),
            Engine::Auto(a) => {
                let (inl, outl) = (a.plan.input_len(), a.runners[0].plan().output_len());
                let n = x.len() / inl.max(1);
                a.guesses.clear();
                a.guesses.resize(
                    n,
                    TaskGuess {
                        task: 0,
                        confidence: 0.0,
                        score: 0.0,
                    },
                );
                a.plan
                    .infer_tasks(&mut a.scratch, x, &mut a.guesses)
                    .map_err(|e| e.to_string())?;
                for (b, g) in a.guesses.iter().enumerate() {
                    let runner = &mut a.runners[g.task as usize];
                    runner
                        .infer(&x[b * inl..(b + 1) * inl], &mut y[b * outl..(b + 1) * outl])
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
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
