//! Optimizers with state that checkpoints: SGD with momentum and RMSprop (absent from candle-nn),
//! and Adam, all with PyTorch's update rules and L2 weight decay (added to the gradient).

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::{Error, Result};

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (optionally Nesterov) momentum.
    Sgd,
    /// RMSprop (not centred, no momentum).
    Rmsprop,
    /// Adam.
    Adam,
}

/// Hyper-parameters (those a rule does not use are ignored).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// SGD momentum.
    pub momentum: f64,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay, added to the gradient.
    pub weight_decay: f64,
    /// RMSprop smoothing constant.
    pub alpha: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Added to denominators.
    pub eps: f64,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            alpha: 0.99,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// An optimizer over named variables.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    hyper: Hyper,
    vars: Vec<(String, Var)>,
    /// Per variable: SGD momentum buffer / RMSprop square average / Adam (m, v).
    state: Vec<Vec<Tensor>>,
    steps: u64,
}

impl Optimizer {
    /// An optimizer for `vars`.
    pub fn new(kind: OptimizerKind, hyper: Hyper, vars: Vec<(String, Var)>) -> Self {
        let state = vars.iter().map(|_| Vec::new()).collect();
        Self {
            kind,
            hyper,
            vars,
            state,
            steps: 0,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr`. Variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let h = self.hyper;
        let t = self.steps as i32;
        for ((_, var), state) in self.vars.iter().zip(&mut self.state) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Gradients (and so anything built from them) can carry the step's autograd graph;
            // detached, the optimizer state does not keep every step's activations alive.
            let g = g.detach();
            let p = var.as_tensor().detach();
            let g = if h.weight_decay != 0.0 {
                (&g + (&p * h.weight_decay)?)?
            } else {
                g
            };
            let update = match self.kind {
                OptimizerKind::Sgd => {
                    if h.momentum == 0.0 {
                        g
                    } else {
                        let buf = match state.first() {
                            Some(b) => ((b * h.momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let u = if h.nesterov {
                            (&g + (&buf * h.momentum)?)?
                        } else {
                            buf.clone()
                        };
                        *state = vec![buf];
                        u
                    }
                }
                OptimizerKind::Rmsprop => {
                    let sq = match state.first() {
                        Some(s) => ((s * h.alpha)? + (g.sqr()? * (1.0 - h.alpha))?)?,
                        None => (g.sqr()? * (1.0 - h.alpha))?,
                    };
                    let u = g.broadcast_div(&(sq.sqrt()? + h.eps)?)?;
                    *state = vec![sq];
                    u
                }
                OptimizerKind::Adam => {
                    let (m, v) = match state.as_slice() {
                        [m, v] => (
                            ((m * h.beta1)? + (&g * (1.0 - h.beta1))?)?,
                            ((v * h.beta2)? + (g.sqr()? * (1.0 - h.beta2))?)?,
                        ),
                        _ => ((&g * (1.0 - h.beta1))?, (g.sqr()? * (1.0 - h.beta2))?),
                    };
                    let m_hat = (&m / (1.0 - h.beta1.powi(t)))?;
                    let v_hat = (&v / (1.0 - h.beta2.powi(t)))?;
                    let u = (m_hat / (v_hat.sqrt()? + h.eps)?)?;
                    *state = vec![m, v];
                    u
                }
            };
            var.set(&(p - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The state as named tensors, for a checkpoint.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for ((name, _), state) in self.vars.iter().zip(&self.state) {
            for (i, t) in state.iter().enumerate() {
                out.insert(format!("opt.{name}.{i}"), t.clone());
            }
        }
        let steps = [(self.steps & 0xFFFF_FFFF) as u32, (self.steps >> 32) as u32];
        let device = self
            .vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert("opt.steps".into(), Tensor::new(&steps, &device)?);
        Ok(out)
    }

    /// Restores the state saved by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let steps = tensors
            .get("opt.steps")
            .ok_or_else(|| Error::Config("checkpoint has no optimizer state".into()))?
            .to_vec1::<u32>()?;
        let lo = steps
            .first()
            .copied()
            .ok_or_else(|| Error::Config("checkpoint's optimizer step count is empty".into()))?;
        self.steps = lo as u64 | (steps.get(1).copied().unwrap_or(0) as u64) << 32;
        for ((name, _), state) in self.vars.iter().zip(&mut self.state) {
            *state = (0..2)
                .map_while(|i| tensors.get(&format!("opt.{name}.{i}")).cloned())
                .collect();
        }
        Ok(())
    }
}

/// Cosine annealing from `lr` to 0 over `total` epochs (evaluated at the start of `epoch`).
pub fn cosine_lr(lr: f64, epoch: usize, total: usize) -> f64 {
    if total == 0 {
        return lr;
    }
    0.5 * lr * (1.0 + (std::f64::consts::PI * epoch as f64 / total as f64).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Runs `steps` updates of `kind` on f(p) = Σ c·p² (gradient 2·c·p) and returns p.
    fn run(kind: OptimizerKind, hyper: Hyper, steps: usize, lr: f64) -> Vec<f32> {
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let c = Tensor::new(&[1.0f32, 0.5, 3.0], &dev).unwrap();
        let mut opt = Optimizer::new(kind, hyper, vec![("p".into(), p.clone())]);
        for _ in 0..steps {
            let loss = (p.as_tensor().sqr().unwrap() * &c).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, lr).unwrap();
        }
        p.as_tensor().to_vec1().unwrap()
    }

    /// The same updates in f64 scalar loops, straight from PyTorch's documented rules.
    fn reference(kind: OptimizerKind, h: Hyper, steps: usize, lr: f64) -> Vec<f64> {
        let c = [1.0, 0.5, 3.0];
        let mut p = [1.0f64, -2.0, 0.5];
        let mut s1 = [0.0f64; 3];
        let mut s2 = [0.0f64; 3];
        for t in 1..=steps {
            for i in 0..3 {
                let g = 2.0 * c[i] * p[i] + h.weight_decay * p[i];
                let u = match kind {
                    OptimizerKind::Sgd => {
                        s1[i] = if t == 1 { g } else { h.momentum * s1[i] + g };
                        if h.nesterov {
                            g + h.momentum * s1[i]
                        } else {
                            s1[i]
                        }
                    }
                    OptimizerKind::Rmsprop => {
                        s1[i] = h.alpha * s1[i] + (1.0 - h.alpha) * g * g;
                        g / (s1[i].sqrt() + h.eps)
                    }
                    OptimizerKind::Adam => {
                        s1[i] = h.beta1 * s1[i] + (1.0 - h.beta1) * g;
                        s2[i] = h.beta2 * s2[i] + (1.0 - h.beta2) * g * g;
                        let m = s1[i] / (1.0 - h.beta1.powi(t as i32));
                        let v = s2[i] / (1.0 - h.beta2.powi(t as i32));
                        m / (v.sqrt() + h.eps)
                    }
                };
                p[i] -= lr * u;
            }
        }
        p.to_vec()
    }

    #[test]
    fn optimizers_match_the_f64_reference() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Rmsprop, OptimizerKind::Adam] {
            for (wd, nesterov) in [(0.0, false), (0.01, false), (0.01, true)] {
                let h = Hyper {
                    weight_decay: wd,
                    nesterov,
                    ..Hyper::default()
                };
                let got = run(kind, h, 7, 0.05);
                let want = reference(kind, h, 7, 0.05);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()),
                        "{kind:?} wd {wd} nesterov {nesterov}: {got:?} vs {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f32, 2.0], &dev).unwrap();
        let mut a = Optimizer::new(OptimizerKind::Adam, Hyper::default(), vec![("p".into(), p.clone())]);
        let grads = p.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        a.step(&grads, 0.1).unwrap();
        let saved = a.state_tensors().unwrap();
        let mut b = Optimizer::new(OptimizerKind::Adam, Hyper::default(), vec![("p".into(), p.clone())]);
        b.load_state(&saved).unwrap();
        assert_eq!(b.steps(), 1);
        assert_eq!(b.state[0].len(), 2);
        assert_eq!(
            b.state[0][1].to_vec1::<f32>().unwrap(),
            a.state[0][1].to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn state_holds_no_autograd_graph() {
        // A gradient through a masked product carries graph nodes; the state must not keep them
        // (it would keep every step's activations alive: memory grew by gigabytes per run).
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0, 3.0], &dev).unwrap();
        let s = Var::new(&[0.5f32, 0.1, -0.3], &dev).unwrap();
        for kind in [OptimizerKind::Sgd, OptimizerKind::Rmsprop, OptimizerKind::Adam] {
            let mut opt = Optimizer::new(
                kind,
                Hyper {
                    weight_decay: 0.1,
                    ..Hyper::default()
                },
                vec![("s".into(), s.clone())],
            );
            for _ in 0..3 {
                let loss = (w.as_tensor() * s.as_tensor())
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                opt.step(&loss.backward().unwrap(), 0.01).unwrap();
            }
            for t in opt.state_tensors().unwrap().values() {
                assert!(!t.track_op(), "{kind:?}: optimizer state tracks the graph");
            }
        }
    }

    #[test]
    fn cosine_schedule() {
        assert_eq!(cosine_lr(0.1, 0, 10), 0.1);
        assert!((cosine_lr(0.1, 5, 10) - 0.05).abs() < 1e-12);
        assert!(cosine_lr(0.1, 10, 10).abs() < 1e-12);
    }
}
