//! What a run is: the model, the method and every hyper-parameter, resolved from method defaults,
//! then a TOML file, then flags (each overriding the last), and saved with the run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::DataKind;
use crate::error::{Error, Result};
use crate::optim::OptimizerKind;

/// The training method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// Ordinary training of all weights: the baseline, and how pretrained models are made.
    Dense,
    /// Real-valued mask over frozen pretrained weights, thresholded (Mallya et al.).
    Piggyback,
    /// Top-k of |scores| per layer over frozen (seeded) weights (Ramanujan et al.).
    EdgePopup,
    /// Edge-popup with one score per R×C block (Lagunas et al.).
    Block,
    /// Weights and scores train; top-k of the movement scores, cubic schedule (Sanh et al.).
    MovementHard,
    /// Weights and scores train; sigmoid threshold with an L1 penalty (Sanh et al.).
    MovementSoft,
    /// Discovering Neural Wirings (Wortsman et al., 2019): the weights train, each layer keeps
    /// its top-k weights by magnitude, and the gradient reaches every weight (straight-through).
    Dnw,
    /// One mask per task of a family over one frozen seeded network (Wortsman et al.):
    /// `scores ≥ 0`, or top-k with `--keep` below 1; the tasks train one after another.
    Supsup,
    /// PackNet (Mallya & Lazebnik, 2018): the tasks of a family train one after another over one
    /// network; each trains the weights still free, keeps its share by magnitude, retrains them,
    /// and owns them from then on. Each task's mask is the weights it and earlier tasks own.
    Packnet,
    /// Learned binary weights (BinaryConnect, Courbariaux et al., 2015): real latent weights
    /// train, the forward pass uses `±scale` by their signs (straight-through), and they are
    /// clipped to `[−scale, scale]` after each step. With `--keep` below 1 each layer also keeps
    /// its top-k latent weights by magnitude (DNW's rule): a mask over signs. Exported as one
    /// bit per weight (and the mask).
    Binary,
}

impl MethodKind {
    /// Whether the weights train.
    pub fn trains_weights(self) -> bool {
        matches!(
            self,
            Self::Dense | Self::MovementHard | Self::MovementSoft | Self::Dnw | Self::Packnet | Self::Binary
        )
    }
    /// Whether a run trains a task family one task after another (`RUN/task-K/`).
    pub fn is_sequence(self) -> bool {
        matches!(self, Self::Supsup | Self::Packnet)
    }
    /// Whether layers carry masks.
    pub fn masks(self) -> bool {
        self != Self::Dense
    }
    /// The method's id.
    pub fn id(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Piggyback => "piggyback",
            Self::EdgePopup => "edge-popup",
            Self::Block => "block",
            Self::MovementHard => "movement-hard",
            Self::MovementSoft => "movement-soft",
            Self::Dnw => "dnw",
            Self::Supsup => "supsup",
            Self::Packnet => "packnet",
            Self::Binary => "binary",
        }
    }
}

/// What a run learns from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Labels: cross-entropy (with distillation when there is a teacher).
    #[default]
    Supervised,
    /// No labels: DINO self-distillation between crops, an EMA teacher of the mask
    /// ([`crate::dino`]); judged by k-NN accuracy of the features.
    Dino,
}

/// How frozen (or initial) weights are drawn from the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WeightInit {
    /// ±gain/√fan_in (edge-popup's signed Kaiming constant): ~1 bit per weight on export.
    SignedConstant,
    /// Uniform on ±gain·√(3/fan_in).
    KaimingUniform,
    /// Normal with std gain/√fan_in.
    KaimingNormal,
}

impl WeightInit {
    /// The smk-format rule.
    pub fn rule(self) -> smk_format::InitRule {
        match self {
            Self::SignedConstant => smk_format::InitRule::SignedConstant,
            Self::KaimingUniform => smk_format::InitRule::Uniform,
            Self::KaimingNormal => smk_format::InitRule::Normal,
        }
    }
}

/// Precision in which frozen weights are held on the device (`--dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FrozenDtype {
    /// bfloat16: f32's range, 8 bits of precision; half the memory.
    Bf16,
    /// binary16: 11 bits of precision, range to ±65504; half the memory.
    F16,
    /// binary32: as computed.
    #[default]
    F32,
}

impl FrozenDtype {
    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
            Self::F32 => candle_core::DType::F32,
        }
    }
    /// The flag's value.
    pub fn id(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine annealing to zero over the run.
    Cosine,
    /// Constant.
    Constant,
}

/// A fully resolved run configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitConfig {
    /// Model id (`lenet-300-100`, `fc-1024-1024`, `lenet-5`, `conv-2`, `conv-4`, `conv-6`, `resnet-8`).
    pub model: String,
    /// Method.
    pub method: MethodKind,
    /// Fraction of weights kept by top-k methods (1 − sparsity).
    pub keep: f64,
    /// Block shape `[R, C]` for `block`.
    pub block: [usize; 2],
    /// Seeded weight rule when not loading weights.
    pub weights: WeightInit,
    /// Edge-popup's "scale fan": divide the signed constant by √keep as well.
    pub scale_fan: bool,
    /// Load weights from a safetensors file or a run directory.
    pub init_from: Option<PathBuf>,
    /// Data directory.
    pub data: PathBuf,
    /// Data format.
    pub data_kind: DataKind,
    /// Task family (`permuted:N`, `rotated:N`, `split:N`), if any.
    pub task: Option<String>,
    /// Which task of the family.
    pub task_index: usize,
    /// Epochs.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay (on scores too).
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Seed of every random draw.
    pub seed: u64,
    /// `cpu` or `cuda[:N]`.
    pub device: String,
    /// Piggyback's threshold; movement-soft's final sigmoid threshold.
    pub threshold: f32,
    /// Initial value of real-valued masks or scores (Piggyback 1e-2; movement 0).
    pub mask_init: f32,
    /// Movement-soft's L1 penalty on sigmoid(scores).
    pub lambda: f64,
    /// Movement pruning: epochs at full density before the cubic schedule starts.
    pub warmup_epochs: usize,
    /// Movement pruning: epochs at the final density after the schedule ends.
    pub cooldown_epochs: usize,
    /// A dense run to distil from (movement pruning).
    pub teacher: Option<PathBuf>,
    /// Weight of the distillation term.
    pub alpha: f64,
    /// Distillation temperature.
    pub temperature: f64,
    /// Piggyback: train the last layer's weights (unmasked) too.
    pub train_head: bool,
    /// Precision of frozen weights on the device (configurations from before it: f32).
    #[serde(default)]
    pub dtype: FrozenDtype,
    /// Output units (at least the data's classes): SupSup's superfluous outputs, which task
    /// inference relies on. Absent: the data's classes (at least 10).
    #[serde(default)]
    pub outputs: Option<usize>,
    /// SupSup: training steps per task (the epochs follow from it).
    #[serde(default = "default_batches_per_task")]
    pub batches_per_task: usize,
    /// What the run learns from (configurations from before it: supervised).
    #[serde(default)]
    pub objective: Objective,
    /// `--objective dino`: local crops per image besides the two global ones (configurations
    /// from before it: the 6 they ran with).
    #[serde(default = "default_local_crops")]
    pub local_crops: usize,
    /// Data-parallel replicas (`--devices`), one device each; empty: `device` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

fn default_batches_per_task() -> usize {
    1000
}

fn default_local_crops() -> usize {
    6
}

impl FitConfig {
    /// The defaults of `method` (from the papers, scaled to MNIST-sized runs).
    pub fn defaults(method: MethodKind) -> Self {
        let mut c = Self {
            model: "lenet-300-100".into(),
            method,
            keep: 0.5,
            block: [4, 4],
            weights: WeightInit::SignedConstant,
            scale_fan: false,
            init_from: None,
            data: crate::data::default_data_dir(),
            data_kind: DataKind::Mnist,
            task: None,
            task_index: 0,
            epochs: 20,
            batch_size: 128,
            lr: 0.1,
            optimizer: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 1e-4,
            schedule: Schedule::Cosine,
            seed: 0,
            device: "cpu".into(),
            threshold: 5e-3,
            mask_init: 1e-2,
            lambda: 1.0,
            warmup_epochs: 1,
            cooldown_epochs: 1,
            teacher: None,
            alpha: 0.5,
            temperature: 2.0,
            train_head: false,
            dtype: FrozenDtype::F32,
            outputs: None,
            batches_per_task: default_batches_per_task(),
            objective: Objective::Supervised,
            local_crops: 0,
            devices: Vec::new(),
        };
        match method {
            MethodKind::Dense => {
                c.keep = 1.0;
                c.weights = WeightInit::KaimingNormal;
                c.lr = 0.05;
                c.weight_decay = 5e-4;
            }
            MethodKind::Piggyback => {
                c.optimizer = OptimizerKind::Adam;
                // The paper's 1e-4 suits ImageNet-length runs; a 20-epoch MNIST run needs 1e-3
                // for the mask (init 1e-2, threshold 5e-3) to move.
                c.lr = 1e-3;
                c.weight_decay = 0.0;
                c.schedule = Schedule::Constant;
            }
            // Measured on the bundled digits: 0.1 (the paper's CIFAR rate) learns too slowly in
            // the ~1,100 steps of a 20-epoch run; 0.3 reaches 94.8% at keep 0.5.
            MethodKind::EdgePopup | MethodKind::Block => c.lr = 0.3,
            // Trained like the dense baseline; the mask follows the weights.
            // Trained like the dense baseline, task after task; `--keep` is the share of the
            // weights the whole family may use, split equally among its tasks.
            MethodKind::Dnw | MethodKind::Packnet => {
                if method == MethodKind::Packnet {
                    c.keep = 1.0;
                }
                c.weights = WeightInit::KaimingNormal;
                c.lr = 0.05;
                c.weight_decay = 5e-4;
            }
            // The paper's MNIST settings: RMSprop at 1e-4, batches of 128, 100 outputs of which
            // the data uses 10, `scores ≥ 0` masks.
            MethodKind::Supsup => {
                c.keep = 1.0;
                c.optimizer = OptimizerKind::Rmsprop;
                c.lr = 1e-4;
                c.weight_decay = 0.0;
                c.schedule = Schedule::Constant;
                c.outputs = Some(100);
            }
            // BinaryConnect's recipe: Adam on latent weights that start uniform; all of them
            // binary unless --keep is set.
            MethodKind::Binary => {
                c.keep = 1.0;
                c.weights = WeightInit::KaimingUniform;
                c.optimizer = OptimizerKind::Adam;
                c.lr = 1e-3;
                c.weight_decay = 0.0;
            }
            MethodKind::MovementHard | MethodKind::MovementSoft => {
                c.weights = WeightInit::KaimingNormal;
                c.optimizer = OptimizerKind::Adam;
                c.lr = 1e-3;
                c.weight_decay = 0.0;
                c.schedule = Schedule::Constant;
                c.mask_init = 0.0;
                if method == MethodKind::MovementSoft {
                    c.threshold = 0.5;
                    c.lambda = 1.0;
                }
            }
        }
        c
    }

    /// Checks settings that cannot work together.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(0.0..=1.0).contains(&self.keep) || (self.keep == 0.0 && self.method.masks()) {
            return bad(format!("--keep {} must be in (0, 1]", self.keep));
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("--epochs and --batch-size must be at least 1".into());
        }
        if self.batch_size < self.devices.len() {
            return bad(format!(
                "--batch-size {} is smaller than the {} replicas of --devices",
                self.batch_size,
                self.devices.len()
            ));
        }
        if self.block.iter().any(|&b| b == 0 || b > 1024) {
            return bad(format!(
                "--block {}x{}: sides must be 1 to 1024",
                self.block[0], self.block[1]
            ));
        }
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        for (flag, v) in [
            ("--momentum", self.momentum),
            ("--weight-decay", self.weight_decay),
            ("--lambda", self.lambda),
        ] {
            if !finite_nonneg(v) {
                return bad(format!("{flag} {v} must be finite and not negative"));
            }
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("--temperature {} must be positive", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad(format!("--alpha {} must be in [0, 1]", self.alpha));
        }
        if !self.threshold.is_finite()
            || (self.method == MethodKind::MovementSoft && !(0.0..1.0).contains(&self.threshold))
        {
            return bad(format!(
                "--threshold {} must be finite (and in [0, 1) for movement-soft)",
                self.threshold
            ));
        }
        if !self.mask_init.is_finite() {
            return bad(format!("--mask-init {} must be finite", self.mask_init));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {} must be positive", self.lr));
        }
        if self.method == MethodKind::Piggyback && self.init_from.is_none() {
            return bad(
                "piggyback learns a mask over pretrained weights: give --init-from (a dense run or a safetensors file)"
                    .into(),
            );
        }
        if self.method == MethodKind::Dense && self.keep != 1.0 {
            return bad("dense trains every weight: --keep applies to masking methods".into());
        }
        if self.dtype != FrozenDtype::F32 && self.method.trains_weights() {
            return bad(format!(
                "--dtype {} applies to frozen weights, and {} trains every weight: use --dtype f32",
                self.dtype.id(),
                self.method.id()
            ));
        }
        if self.warmup_epochs + self.cooldown_epochs >= self.epochs
            && matches!(self.method, MethodKind::MovementHard | MethodKind::MovementSoft)
        {
            return bad(format!(
                "movement pruning needs more epochs ({}) than warm-up ({}) plus cool-down ({})",
                self.epochs, self.warmup_epochs, self.cooldown_epochs
            ));
        }
        if self.method.is_sequence() && self.task.is_none() {
            return bad(format!(
                "{} trains a mask per task: give --task permuted:N, rotated:N or split:N",
                self.method.id()
            ));
        }
        if self.local_crops > 0 && self.objective != Objective::Dino {
            return bad("--local-crops applies to --objective dino".into());
        }
        if self.objective == Objective::Dino {
            if !matches!(self.method, MethodKind::EdgePopup | MethodKind::Block) {
                return bad(format!(
                    "--objective dino learns a mask's scores with an EMA teacher: use --method edge-popup or block, not {}",
                    self.method.id()
                ));
            }
            if !self.devices.is_empty() || self.teacher.is_some() || self.task.is_some() {
                return bad("--objective dino runs on one device, without --teacher or --task".into());
            }
            // The teacher runs in inference mode: its norms would keep their initial
            // statistics. Not built: refused rather than trained wrong.
            if self.model == "resnet-8" {
                return bad("--objective dino does not support resnet-8 yet (batch norms in the EMA teacher)".into());
            }
        }
        if self.method.is_sequence() && self.batches_per_task == 0 {
            return bad("--batches-per-task must be at least 1".into());
        }
        if let Some(t) = &self.task {
            let family: crate::data::TaskFamily = t.parse().map_err(Error::Config)?;
            if self.task_index >= family.count() {
                return bad(format!("--task-index {} is out of range for {t}", self.task_index));
            }
        }
        crate::model::ModelId::parse(&self.model)?;
        Ok(())
    }

    /// The fraction kept at `epoch` (0-based) and `progress` ∈ [0, 1) through it: constant for
    /// most methods; for movement-hard the cubic schedule of Zhu & Gupta from 1 to `keep`.
    pub fn keep_at(&self, epoch: usize, progress: f64) -> f64 {
        if self.method != MethodKind::MovementHard {
            return self.keep;
        }
        self.keep + (1.0 - self.keep) * (1.0 - self.schedule_fraction(epoch, progress)).powi(3)
    }

    /// Movement-soft's sigmoid threshold: cubic from 0 to `threshold`.
    pub fn threshold_at(&self, epoch: usize, progress: f64) -> f32 {
        let f = 1.0 - (1.0 - self.schedule_fraction(epoch, progress)).powi(3);
        (self.threshold as f64 * f) as f32
    }

    fn schedule_fraction(&self, epoch: usize, progress: f64) -> f64 {
        let span = self
            .epochs
            .saturating_sub(self.warmup_epochs + self.cooldown_epochs)
            .max(1) as f64;
        ((epoch as f64 + progress - self.warmup_epochs as f64) / span).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_toml() {
        let c = FitConfig::defaults(MethodKind::EdgePopup);
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<FitConfig>(&text).unwrap(), c);
        assert!(toml::from_str::<FitConfig>(&format!("{text}\nbogus = 1")).is_err());
    }

    #[test]
    fn configs_from_before_dtype_load_as_f32() {
        let c = FitConfig::defaults(MethodKind::EdgePopup);
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("dtype = \"f32\""), "{text}");
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("dtype"))
            .map(|l| l.to_string() + "\n")
            .collect();
        assert_ne!(old, text);
        assert_eq!(toml::from_str::<FitConfig>(&old).unwrap(), c);
        let bf16 = text.replace("dtype = \"f32\"", "dtype = \"bf16\"");
        assert_eq!(toml::from_str::<FitConfig>(&bf16).unwrap().dtype, FrozenDtype::Bf16);
        assert!(toml::from_str::<FitConfig>(&text.replace("\"f32\"", "\"f8\"")).is_err());
    }

    #[test]
    fn dino_runs_from_before_local_crops_keep_their_six() {
        let c = FitConfig {
            objective: Objective::Dino,
            ..FitConfig::defaults(MethodKind::EdgePopup)
        };
        assert_eq!(c.local_crops, 0, "new runs: none");
        let text = toml::to_string(&c).unwrap();
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("local_crops"))
            .map(|l| l.to_string() + "\n")
            .collect();
        assert_ne!(old, text);
        assert_eq!(toml::from_str::<FitConfig>(&old).unwrap().local_crops, 6, "as they ran");
        let supervised = FitConfig {
            local_crops: 2,
            ..FitConfig::defaults(MethodKind::EdgePopup)
        };
        assert!(supervised.validate().unwrap_err().to_string().contains("--local-crops"));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = FitConfig::defaults(MethodKind::EdgePopup);
        c.keep = 1.5;
        assert!(c.validate().unwrap_err().to_string().contains("--keep"));
        let c = FitConfig::defaults(MethodKind::Piggyback);
        assert!(c.validate().unwrap_err().to_string().contains("--init-from"));
        let mut c = FitConfig::defaults(MethodKind::EdgePopup);
        c.model = "vgg".into();
        assert!(c.validate().unwrap_err().to_string().contains("vgg"));
        for method in [MethodKind::Dense, MethodKind::MovementHard, MethodKind::MovementSoft] {
            let mut c = FitConfig::defaults(method);
            c.dtype = FrozenDtype::Bf16;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("--dtype bf16") && e.contains(method.id()), "{e}");
        }
        let mut c = FitConfig::defaults(MethodKind::Block);
        c.dtype = FrozenDtype::F16;
        c.validate().unwrap();
    }

    #[test]
    fn cubic_schedule_runs_from_dense_to_keep() {
        let mut c = FitConfig::defaults(MethodKind::MovementHard);
        c.epochs = 10;
        c.keep = 0.1;
        assert_eq!(c.keep_at(0, 0.5), 1.0, "warm-up");
        assert!((c.keep_at(9, 0.0) - 0.1).abs() < 1e-12, "cool-down");
        let mid = c.keep_at(5, 0.0);
        assert!(mid > 0.1 && mid < 1.0);
        assert!(c.keep_at(3, 0.0) > c.keep_at(4, 0.0));
    }
}
