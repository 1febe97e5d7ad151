//! Files on disk: map once, plan per batch size, and run with owned scratch.

use crate::{Error, Isa, Plan};
use smk_format::{MappedModel, Model, OpenError};
use std::path::Path;

/// A mapped .smk file.
#[derive(Debug)]
pub struct Session {
    file: MappedModel,
}

impl Session {
    /// Maps and parses `path` (checksums are not read; see [`Session::verify`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Ok(Self {
            file: MappedModel::open(path, false)?,
        })
    }

    /// Checks every checksum and the rest of the file.
    pub fn verify(&self) -> Result<(), smk_format::Error> {
        self.model()?.verify()
    }

    /// The parsed model (borrowed views over the mapping).
    pub fn model(&self) -> Result<Model<'_>, smk_format::Error> {
        self.file.model()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A runner for `batch` inputs at a time with mask set `task`, on the fastest instruction
    /// set here (or `isa`), owning its scratch.
    pub fn runner(&self, batch: usize, task: Option<u32>, isa: Option<Isa>) -> Result<Runner<'_>, Error> {
        let model = self.model()?;
        let mut plan = Plan::new(&model, batch, task)?;
        if let Some(isa) = isa {
            plan = plan.with_isa(isa)?;
        }
        Runner::try_new(plan)
    }
}

/// A plan with its scratch: call [`Runner::infer`] as often as needed.
#[derive(Debug)]
pub struct Runner<'a> {
    plan: Plan<'a>,
    scratch: Vec<u8>,
}

impl<'a> Runner<'a> {
    /// Makes a runner from a plan, allocating its scratch; refuses (rather than aborting) when
    /// the scratch cannot be allocated, as for a file that declares enormous activations.
    pub fn try_new(plan: Plan<'a>) -> Result<Self, Error> {
        let need = plan.scratch_bytes();
        let mut scratch = Vec::new();
        scratch
            .try_reserve_exact(need)
            .map_err(|_| Error::NoMemory { bytes: need })?;
        scratch.resize(need, 0);
        Ok(Self { plan, scratch })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan<'a> {
        &self.plan
    }

    /// See [`Plan::infer`].
    pub fn infer(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), Error> {
        self.plan.infer(&mut self.scratch, input, output)
    }
}
