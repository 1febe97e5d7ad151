//! Data-parallel training: one replica of the net per device, each step's batch split across
//! them, and the replicas' gradients summed so that every replica takes the same step.
//!
//! One host thread drives every replica: candle's CUDA kernels run asynchronously, so the
//! devices work side by side while the host issues the next replica's operations, and NCCL's
//! grouped collectives let one thread reduce over all of them.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};

/// The devices of `--devices`: GPU ordinals (`0,1,2`), or device names (`cuda:1`, `cpu`; CPU
/// replicas exercise the data-parallel path without a GPU).
pub fn parse_devices(list: &str) -> Result<Vec<String>> {
    let names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .map(|d| match d.parse::<usize>() {
            Ok(n) => format!("cuda:{n}"),
            Err(_) => d.to_string(),
        })
        .collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(Error::Config(format!("--devices {list:?}: an empty entry")));
    }
    let cpus = names.iter().filter(|n| *n == "cpu").count();
    if cpus != 0 && cpus != names.len() {
        return Err(Error::Config(format!("--devices {list:?} mixes CPU and GPU replicas")));
    }
    let mut seen = names.clone();
    seen.sort();
    seen.dedup();
    if seen.len() != names.len() && names.iter().any(|n| n != "cpu") {
        return Err(Error::Config(format!("--devices {list:?}: a GPU is named twice")));
    }
    Ok(names)
}

/// The part of a batch of `len` examples that replica `rank` of `ranks` takes: contiguous, sizes
/// differing by at most one.
pub fn shard(len: usize, rank: usize, ranks: usize) -> std::ops::Range<usize> {
    (rank * len / ranks)..((rank + 1) * len / ranks)
}

/// How gradients are summed across replicas.
pub enum Reducer {
    /// One replica: nothing to do.
    Single,
    /// Each gradient gathered on the first replica's device, summed in replica order (the same
    /// sum on every run), and copied back. Any devices; used for CPU replicas.
    Gather,
    /// NCCL all-reduce on the devices' own streams, grouped into one call per step.
    #[cfg(feature = "nccl")]
    Nccl(Vec<cudarc_nccl::Comm>),
}

#[cfg(feature = "nccl")]
use candle_core::cuda_backend::cudarc::nccl::safe as cudarc_nccl;

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reducer::Single => "single",
            Reducer::Gather => "gather",
            #[cfg(feature = "nccl")]
            Reducer::Nccl(_) => "nccl",
        })
    }
}

impl Reducer {
    /// The reducer for these devices: NCCL where they are all GPUs (in a trainer built with
    /// the `nccl` feature), gathering where they are all CPUs. One device needs none, unless
    /// `explicit` (`--devices` named it): one GPU then goes through NCCL all the same, so that
    /// a machine with one GPU tests the multi-GPU path.
    pub fn new(devices: &[Device], explicit: bool) -> Result<Self> {
        if devices.len() <= 1 && !(explicit && devices.iter().all(Device::is_cuda)) {
            return Ok(Reducer::Single);
        }
        if devices.iter().all(Device::is_cpu) {
            return Ok(Reducer::Gather);
        }
        if !devices.iter().all(Device::is_cuda) {
            return Err(Error::Config("--devices mixes CPU and GPU replicas".into()));
        }
        Self::nccl(devices)
    }

    #[cfg(feature = "nccl")]
    fn nccl(devices: &[Device]) -> Result<Self> {
        let streams = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(c) => Ok(c.cuda_stream()),
                _ => Err(Error::Config("NCCL needs GPU replicas".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        let comms = cudarc_nccl::Comm::from_devices(streams)
            .map_err(|e| Error::Config(format!("NCCL could not join the GPUs: {e:?}")))?;
        Ok(Reducer::Nccl(comms))
    }

    #[cfg(not(feature = "nccl"))]
    fn nccl(_: &[Device]) -> Result<Self> {
        Err(Error::Config(
            "training on several GPUs needs NCCL: rebuild with `cargo build --release -p smk-trainer --features nccl`"
                .into(),
        ))
    }

    /// Replaces every replica's gradient of each variable by the sum over replicas. `vars[r]`
    /// are replica r's variables, in the same order on every replica.
    #[allow(clippy::needless_range_loop)] // `v` indexes every replica's list alike
    pub fn sum(&self, vars: &[Vec<Var>], grads: &mut [GradStore]) -> Result<()> {
        match self {
            Reducer::Single => Ok(()),
            Reducer::Gather => {
                let first = vars[0].first().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
                for v in 0..vars[0].len() {
                    let mut total: Option<Tensor> = None;
                    for (r, g) in grads.iter().enumerate() {
                        if let Some(g) = g.get(vars[r][v].as_tensor()) {
                            let g = g.to_device(&first)?;
                            total = Some(match total {
                                Some(t) => (t + g)?,
                                None => g,
                            });
                        }
                    }
                    if let Some(total) = total {
                        for (r, g) in grads.iter_mut().enumerate() {
                            let var = vars[r][v].as_tensor();
                            g.insert(var, total.to_device(var.device())?);
                        }
                    }
                }
                Ok(())
            }
            #[cfg(feature = "nccl")]
            Reducer::Nccl(comms) => {
                // Every replica must hold a gradient for every variable: NCCL waits for all.
                for (r, g) in grads.iter_mut().enumerate() {
                    for var in &vars[r] {
                        if g.get(var.as_tensor()).is_none() {
                            g.insert(var.as_tensor(), var.as_tensor().zeros_like()?);
                        }
                    }
                }
                cudarc_nccl::group_start().map_err(|e| Error::Config(format!("NCCL: {e:?}")))?;
                let mut result = Ok(());
                'all: for v in 0..vars[0].len() {
                    for (r, comm) in comms.iter().enumerate() {
                        let g = grads[r].get(vars[r][v].as_tensor()).cloned();
                        if let Some(g) = g {
                            if let Err(e) = g.inplace_op1(&NcclSum(comm)) {
                                result = Err(e.into());
                                break 'all;
                            }
                        }
                    }
                }
                // The group is closed even after an error, so that NCCL is left usable.
                cudarc_nccl::group_end().map_err(|e| Error::Config(format!("NCCL: {e:?}")))?;
                result
            }
        }
    }
}

/// In-place NCCL sum of one replica's gradient (issued inside a group with the others').
#[cfg(feature = "nccl")]
struct NcclSum<'a>(&'a cudarc_nccl::Comm);

#[cfg(feature = "nccl")]
impl candle_core::InplaceOp1 for NcclSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-sum"
    }

    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &candle_core::Layout) -> candle_core::Result<()> {
        candle_core::bail!("NCCL sums GPU tensors only")
    }

    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL sum of a non-contiguous gradient")
        };
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        let mut view = slice.slice_mut(start..end);
        self.0
            .all_reduce_in_place(&mut view, &cudarc_nccl::ReduceOp::Sum)
            .map(|_| ())
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once() {
        for len in [0, 1, 5, 96, 128] {
            for ranks in 1..=5 {
                let mut next = 0;
                for r in 0..ranks {
                    let s = shard(len, r, ranks);
                    assert_eq!(s.start, next);
                    assert!(s.len() + 1 >= len / ranks && s.len() <= len.div_ceil(ranks));
                    next = s.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn device_lists() {
        assert_eq!(parse_devices("0,1").unwrap(), ["cuda:0", "cuda:1"]);
        assert_eq!(parse_devices("cpu, cpu").unwrap(), ["cpu", "cpu"]);
        assert!(parse_devices("0,0").is_err());
        assert!(parse_devices("0,").is_err());
    }

    #[test]
    fn gathering_sums_every_replicas_gradient() {
        let dev = Device::Cpu;
        let vars: Vec<Vec<Var>> = (0..3)
            .map(|_| vec![Var::zeros(4, candle_core::DType::F32, &dev).unwrap()])
            .collect();
        let mut grads: Vec<GradStore> = vars
            .iter()
            .enumerate()
            .map(|(r, v)| {
                let w = Tensor::new(&[1f32, 2., 3., 4.], &dev).unwrap();
                let loss = (v[0].as_tensor() * (w * (r as f64 + 1.0)).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss.backward().unwrap()
            })
            .collect();
        Reducer::Gather.sum(&vars, &mut grads).unwrap();
        for (r, g) in grads.iter().enumerate() {
            let got: Vec<f32> = g.get(vars[r][0].as_tensor()).unwrap().to_vec1().unwrap();
            assert_eq!(got, [6., 12., 18., 24.], "replica {r}");
        }
    }
}
