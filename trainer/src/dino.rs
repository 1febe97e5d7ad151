//! Self-supervised masks (`--objective dino`): DINO (Caron et al., 2021) with a supermask as the
//! student.
//!
//! The student is the run's masked network (scores over frozen weights, trained as usual). The
//! teacher is the same frozen network under its own scores, an exponential moving average of
//! the student's: momentum 0.996 rising to 1 on a cosine over the run. No labels are read.
//! Each step cuts every image into two global crops (80–100% of the area, turned by up to ±15°)
//! and `--local-crops` local ones (40–80%, default none), each resampled to the input size. The
//! teacher sees the global crops; its outputs are centred (a running mean, momentum 0.9) and
//! sharpened (temperature 0.04). The student sees every crop (temperature 0.1) and learns to
//! match the teacher's answer for every other view: cross-entropy summed over pairs of different
//! views, averaged.
//!
//! The crops are milder than DINO's, measured on the bundled digits (k-NN, three seeds; the
//! figures are in docs/CONTINUAL.md): DINO's ImageNet crops (40–100% and 5–40%) cut a 28×28
//! digit into strokes, and the masks learned features worse than random ones; six local crops of
//! 40–80% gained 0.4–3.3 points over random masks, two global crops alone 2.3–4.4, and with the
//! small turns 3.1–4.7. A part of a digit is often another digit's part; a slightly turned digit
//! is still itself.
//!
//! A self-supervised network is judged by its features: [`knn_accuracy`] classifies each test
//! image by a vote of its 20 nearest training images (cosine similarity of the features before
//! the last layer, votes weighted `exp(sim / 0.07)`), as DINO evaluates.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::mask::Binarize;
use crate::model::Net;
use crate::rng::{stream, Rng};

/// Student softmax temperature.
pub const STUDENT_TEMPERATURE: f64 = 0.1;
/// Teacher softmax temperature (sharpening).
pub const TEACHER_TEMPERATURE: f64 = 0.04;
/// Momentum of the running centre of teacher outputs.
pub const CENTER_MOMENTUM: f64 = 0.9;
/// Teacher momentum at the first step (it rises to 1 by the last).
pub const TEACHER_MOMENTUM: f64 = 0.996;
/// Global crops per image (the teacher's views).
pub const GLOBAL_CROPS: usize = 2;
/// Area fractions of global and local crops (see the module documentation).
const GLOBAL_SCALE: (f32, f32) = (0.8, 1.0);
const LOCAL_SCALE: (f32, f32) = (0.4, 0.8);
/// Every crop is also turned by a random angle up to this, either way: a digit keeps its class
/// under small turns, and features that ignore them are what a k-NN vote on digits needs.
const ROTATION_DEGREES: f32 = 15.0;
/// Neighbours and temperature of the k-NN vote.
const KNN_K: usize = 20;
const KNN_TEMPERATURE: f64 = 0.07;

/// DINO's projection head, a training-only device as in DINO: the features → 256 (ReLU) → 64,
/// L2-normalised, then cosines against 256 L2-normalised prototypes. Cosine logits (in [−1, 1])
/// cannot be flattened by shrinking or killing the features, which a mask can do at once; the
/// head trains its weights, while the network below it learns only its mask.
const HEAD_HIDDEN: usize = 256;
const HEAD_BOTTLENECK: usize = 64;
const PROTOTYPES: usize = 256;
const HEAD_NAMES: [&str; 3] = ["dino.head.hidden", "dino.head.bottleneck", "dino.head.prototypes"];

/// The teacher, the heads and the centre: DINO's state besides the student network.
#[derive(Debug)]
pub struct Dino {
    /// The teacher network (the student's frozen weights, its own scores).
    pub teacher: Net,
    /// The student's head (trained).
    head: [Var; 3],
    /// The teacher's head (the moving average of the student's).
    teacher_head: [Tensor; 3],
    /// Running centre of the teacher's outputs, `[PROTOTYPES]`.
    center: Tensor,
}

fn unit_rows(t: &Tensor) -> Result<Tensor> {
    let norm = (t.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(t.broadcast_div(&norm)?)
}

/// The head's logits (cosines) for features `f`.
fn head_logits(w: [&Tensor; 3], f: &Tensor) -> Result<Tensor> {
    let h = f.matmul(&w[0].t()?)?.relu()?;
    let b = h.matmul(&w[1].t()?)?;
    Ok(unit_rows(&b)?.matmul(&unit_rows(w[2])?.t()?)?)
}

impl Dino {
    /// A head drawn from `seed`, and a teacher (built like the student) that starts as it.
    pub fn new(student: &Net, teacher: Net, seed: u64, device: &Device) -> Result<Self> {
        let width = student.feature_width()?;
        let mut rng = Rng::new(seed, stream::HEAD);
        let mut draw = |rows: usize, cols: usize, std: f32| -> Result<Var> {
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal(std)).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, (rows, cols), device)?)?)
        };
        let head = [
            draw(HEAD_HIDDEN, width, (2.0 / width as f32).sqrt())?,
            draw(HEAD_BOTTLENECK, HEAD_HIDDEN, (1.0 / HEAD_HIDDEN as f32).sqrt())?,
            draw(PROTOTYPES, HEAD_BOTTLENECK, 1.0)?,
        ];
        let teacher_head = [
            head[0].as_tensor().copy()?,
            head[1].as_tensor().copy()?,
            head[2].as_tensor().copy()?,
        ];
        let dino = Self {
            teacher,
            teacher_head,
            head,
            center: Tensor::zeros(PROTOTYPES, DType::F32, device)?,
        };
        dino.teacher_follows_masks(student, 0.0)?;
        Ok(dino)
    }

    /// The student head's variables, named, for the optimizer.
    pub fn vars(&self) -> Vec<(String, Var)> {
        HEAD_NAMES
            .iter()
            .zip(&self.head)
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    fn teacher_follows_masks(&self, student: &Net, momentum: f64) -> Result<()> {
        for (t, s) in self.teacher.layers.iter().zip(&student.layers) {
            if let (Some(ts), Some(ss)) = (&t.scores, &s.scores) {
                ts.set(&ema(ts.as_tensor(), ss.as_tensor(), momentum)?)?;
            }
        }
        Ok(())
    }

    /// The teacher ← `m · teacher + (1 − m) · student`: scores and head.
    pub fn follow(&mut self, student: &Net, momentum: f64) -> Result<()> {
        self.teacher_follows_masks(student, momentum)?;
        for (t, s) in self.teacher_head.iter_mut().zip(&self.head) {
            *t = ema(t, s.as_tensor(), momentum)?;
        }
        Ok(())
    }

    /// The teacher momentum at `step` of `steps`: cosine from 0.996 to 1.
    pub fn momentum(step: u64, steps: u64) -> f64 {
        let f = step as f64 / steps.max(1) as f64;
        1.0 - (1.0 - TEACHER_MOMENTUM) * ((std::f64::consts::PI * f.min(1.0)).cos() + 1.0) / 2.0
    }

    /// DINO's loss on the views of one batch (`views`: the global crops first, each view's
    /// images together), and the fraction of global views on which the student's answer agrees
    /// with the teacher's for the other global view. Updates the centre.
    pub fn loss(
        &mut self,
        student: &mut Net,
        views: &Tensor,
        batch: usize,
        rule: Binarize,
    ) -> Result<(Tensor, Tensor)> {
        let globals = views.narrow(0, 0, GLOBAL_CROPS * batch)?;
        let tf = self.teacher.features(&globals, rule, false)?;
        let [a, b, c] = &self.teacher_head;
        let t_out = head_logits([a, b, c], &tf)?.detach();
        let sf = student.features(views, rule, true)?;
        let [a, b, c] = &self.head;
        let s_out = head_logits([a.as_tensor(), b.as_tensor(), c.as_tensor()], &sf)?;
        let t_prob = candle_nn::ops::softmax(
            &((t_out.broadcast_sub(&self.center))? / TEACHER_TEMPERATURE)?,
            D::Minus1,
        )?;
        let s_logp = candle_nn::ops::log_softmax(&(&s_out / STUDENT_TEMPERATURE)?, D::Minus1)?;
        let views_n = s_out.dim(0)? / batch;
        let mut total: Option<Tensor> = None;
        let mut pairs = 0usize;
        for i in 0..GLOBAL_CROPS {
            let t = t_prob.narrow(0, i * batch, batch)?;
            for j in (0..views_n).filter(|&j| j != i) {
                let s = s_logp.narrow(0, j * batch, batch)?;
                let ce = (&t * &s)?.sum(D::Minus1)?.mean_all()?.neg()?;
                total = Some(match total {
                    Some(a) => (a + ce)?,
                    None => ce,
                });
                pairs += 1;
            }
        }
        let loss = (total.ok_or_else(|| Error::Config("DINO needs two views at least".into()))? / pairs as f64)?;
        self.center = ema(&self.center, &t_out.mean(0)?, CENTER_MOMENTUM)?;
        let s_arg = s_out.narrow(0, 0, GLOBAL_CROPS * batch)?.detach().argmax(D::Minus1)?;
        let t_arg = t_out.argmax(D::Minus1)?;
        let swapped = Tensor::cat(&[t_arg.narrow(0, batch, batch)?, t_arg.narrow(0, 0, batch)?], 0)?;
        let agree = s_arg.eq(&swapped)?.to_dtype(DType::F32)?.mean_all()?;
        Ok((loss, agree))
    }

    /// The teacher's scores and head, the student's head and the centre, for the checkpoint.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .teacher
            .layers
            .iter()
            .filter_map(|l| {
                l.scores
                    .as_ref()
                    .map(|s| (format!("dino.teacher.{}.scores", l.name), s.as_tensor().clone()))
            })
            .collect();
        for (i, name) in HEAD_NAMES.iter().enumerate() {
            out.insert(name.to_string(), self.head[i].as_tensor().clone());
            out.insert(name.replace("dino.", "dino.teacher."), self.teacher_head[i].clone());
        }
        out.insert("dino.center".into(), self.center.clone());
        out
    }

    /// Restores what [`Dino::tensors`] saved.
    pub fn load(&mut self, map: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| Error::Config(format!("checkpoint has no tensor '{k}'")))
        };
        for l in &self.teacher.layers {
            if let Some(s) = &l.scores {
                s.set(get(&format!("dino.teacher.{}.scores", l.name))?)?;
            }
        }
        for (i, name) in HEAD_NAMES.iter().enumerate() {
            self.head[i].set(get(name)?)?;
            self.teacher_head[i] = get(&name.replace("dino.", "dino.teacher."))?.clone();
        }
        self.center = get("dino.center")?.clone();
        Ok(())
    }
}

/// `m · a + (1 − m) · b`.
fn ema(a: &Tensor, b: &Tensor, m: f64) -> Result<Tensor> {
    Ok(((a * m)? + (b * (1.0 - m))?)?)
}

/// The views of images `idx` of `ds`, `[V·B, C, H, W]`: the global crops (view by view), then
/// the local ones, each resampled to the image size.
pub fn views(ds: &Dataset, idx: &[usize], local_crops: usize, rng: &mut Rng, device: &Device) -> Result<Tensor> {
    let [c, h, w] = ds.shape;
    let len = ds.image_len();
    let n = GLOBAL_CROPS + local_crops;
    let mut out = vec![0f32; n * idx.len() * len];
    for v in 0..n {
        let scale = if v < GLOBAL_CROPS { GLOBAL_SCALE } else { LOCAL_SCALE };
        for (b, &i) in idx.iter().enumerate() {
            let at = (v * idx.len() + b) * len;
            crop(ds.image(i), [c, h, w], scale, rng, &mut out[at..at + len]);
        }
    }
    Ok(Tensor::from_vec(out, (n * idx.len(), c, h, w), device)?)
}

/// A random crop of `area` ∈ `scale` of the image, aspect ratio in [3/4, 4/3], turned by up to
/// ±[`ROTATION_DEGREES`] about its centre, resampled bilinearly to the image size (as
/// torchvision's RandomResizedCrop after RandomRotation). Outside the image reads its border.
fn crop(image: &[f32], [c, h, w]: [usize; 3], scale: (f32, f32), rng: &mut Rng, out: &mut [f32]) {
    let area = (scale.0 + (scale.1 - scale.0) * rng.uniform()) * (h * w) as f32;
    let ratio = ((3f32 / 4.0).ln() + ((4f32 / 3.0).ln() - (3f32 / 4.0).ln()) * rng.uniform()).exp();
    let cw = (area * ratio).sqrt().clamp(1.0, w as f32);
    let ch = (area / ratio).sqrt().clamp(1.0, h as f32);
    let x0 = (w as f32 - cw) * rng.uniform();
    let y0 = (h as f32 - ch) * rng.uniform();
    let angle = (2.0 * rng.uniform() - 1.0) * ROTATION_DEGREES.to_radians();
    let (sin, cos) = angle.sin_cos();
    let (cx, cy) = (x0 + cw / 2.0, y0 + ch / 2.0);
    for ch_i in 0..c {
        let plane = &image[ch_i * h * w..(ch_i + 1) * h * w];
        let at =
            |y: isize, x: isize| plane[y.clamp(0, h as isize - 1) as usize * w + x.clamp(0, w as isize - 1) as usize];
        for i in 0..h {
            let v = ((i as f32 + 0.5) / h as f32 - 0.5) * ch;
            for j in 0..w {
                let u = ((j as f32 + 0.5) / w as f32 - 0.5) * cw;
                let sx = cx + cos * u - sin * v - 0.5;
                let sy = cy + sin * u + cos * v - 0.5;
                let (fx, tx) = (sx.floor(), sx - sx.floor());
                let (fy, ty) = (sy.floor(), sy - sy.floor());
                let (y, x) = (fy as isize, fx as isize);
                let top = at(y, x) * (1.0 - tx) + at(y, x + 1) * tx;
                let bottom = at(y + 1, x) * (1.0 - tx) + at(y + 1, x + 1) * tx;
                out[ch_i * h * w + i * w + j] = top * (1.0 - ty) + bottom * ty;
            }
        }
    }
}

/// L2-normalised features (before the last layer) of every image of `ds`, `[N, F]`.
fn features(net: &mut Net, ds: &Dataset, rule: Binarize, device: &Device) -> Result<Tensor> {
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mut parts = Vec::new();
    for chunk in idx.chunks(1000) {
        let (x, _) = crate::train::batch(ds, chunk, device)?;
        let f = net.features(&x, rule, false)?;
        let norm = f.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        parts.push(f.broadcast_div(&norm)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// k-NN accuracy of `net`'s features: each test image labelled by the weighted vote of its 20
/// most similar training images.
pub fn knn_accuracy(net: &mut Net, train: &Dataset, test: &Dataset, rule: Binarize, device: &Device) -> Result<f64> {
    if train.is_empty() {
        return Err(Error::Config("k-NN needs training images".into()));
    }
    let bank = features(net, train, rule, device)?;
    let queries = features(net, test, rule, device)?;
    let k = KNN_K.min(train.len());
    let classes = train.classes.max(test.classes);
    let mut correct = 0usize;
    for start in (0..test.len()).step_by(500) {
        let n = (test.len() - start).min(500);
        let sims: Vec<Vec<f32>> = queries.narrow(0, start, n)?.matmul(&bank.t()?)?.to_vec2()?;
        for (q, row) in sims.iter().enumerate() {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mut votes = vec![0f64; classes];
            for &j in &order[..k] {
                votes[train.labels[j] as usize] += (row[j] as f64 / KNN_TEMPERATURE).exp();
            }
            let best = (0..classes).max_by(|&a, &b| votes[a].total_cmp(&votes[b]).then(b.cmp(&a)));
            correct += (best == Some(test.labels[start + q] as usize)) as usize;
        }
    }
    Ok(correct as f64 / test.len().max(1) as f64)
}

/// k-NN accuracy of a run's features (on its own splits): the teacher's for a DINO run, the
/// network's for any other, or with `random_masks` the same frozen weights under the scores the
/// run started from (random masks: the baseline). Returns the accuracy and what was measured.
pub fn run_knn(run: &crate::train::Run, random_masks: bool, device: &Device) -> Result<(f64, &'static str)> {
    use crate::config::Objective;
    use crate::data::Split;
    use crate::train::{load_init, load_split, outputs};
    let cfg = &run.cfg;
    let train = load_split(cfg, Split::Train)?;
    let (mut net, test, rule) = run.load_net(device)?;
    let what = if random_masks {
        let init = cfg.init_from.as_deref().map(load_init).transpose()?;
        net = Net::build(cfg, train.shape, outputs(cfg, &train), init.as_ref(), device)?;
        "random masks (the run's initial scores)"
    } else if cfg.objective == Objective::Dino {
        let file = run.dir.join("checkpoint.safetensors");
        let saved = candle_core::safetensors::load(&file, device).map_err(|e| Error::data(&file, e.to_string()))?;
        for l in &net.layers {
            if let Some(s) = &l.scores {
                let key = format!("dino.teacher.{}.scores", l.name);
                s.set(
                    saved
                        .get(&key)
                        .ok_or_else(|| Error::data(&file, format!("no tensor '{key}'")))?,
                )?;
            }
        }
        "the DINO teacher's masks"
    } else {
        "the trained masks"
    };
    Ok((knn_accuracy(&mut net, &train, &test, rule, device)?, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(n: usize) -> Dataset {
        let mut rng = Rng::new(3, 4);
        Dataset {
            images: (0..n * 784).map(|_| rng.uniform()).collect(),
            labels: (0..n as u32).map(|i| i % 10).collect(),
            shape: [1, 28, 28],
            classes: 10,
        }
    }

    #[test]
    fn crops_resample_within_the_image() {
        let ds = digits(3);
        let mut rng = Rng::new(1, 2);
        // Bilinear resampling of a constant image is that constant, at any crop.
        let flat = vec![0.25f32; 784];
        let mut out = vec![0f32; 784];
        for scale in [GLOBAL_SCALE, LOCAL_SCALE] {
            crop(&flat, [1, 28, 28], scale, &mut rng, &mut out);
            assert!(out.iter().all(|&p| (p - 0.25).abs() < 1e-6));
        }
        let v = views(&ds, &[0, 1, 2], 6, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(v.dims(), [(GLOBAL_CROPS + 6) * 3, 1, 28, 28]);
        let all: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            all.iter().all(|p| (0.0..=1.0).contains(p)),
            "bilinear stays within the pixels' range"
        );
    }

    #[test]
    fn the_teacher_moves_towards_the_student_by_the_momentum() {
        let cfg = crate::config::FitConfig::defaults(crate::config::MethodKind::EdgePopup);
        let build = || Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
        let student = build();
        let mut dino = Dino::new(&student, build(), 0, &Device::Cpu).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let teacher0 = values(dino.teacher.layers[0].scores.as_ref().unwrap().as_tensor());
        let head0 = values(&dino.teacher_head[2]);
        // The student moves: every score and the prototypes by +1.
        let s = student.layers[0].scores.as_ref().unwrap();
        s.set(&(s.as_tensor() + 1.0).unwrap()).unwrap();
        dino.head[2].set(&(dino.head[2].as_tensor() + 1.0).unwrap()).unwrap();
        dino.follow(&student, 0.75).unwrap();
        let teacher1 = values(dino.teacher.layers[0].scores.as_ref().unwrap().as_tensor());
        let head1 = values(&dino.teacher_head[2]);
        for (a, b) in teacher0.iter().zip(&teacher1).chain(head0.iter().zip(&head1)) {
            assert!(
                (b - a - 0.25).abs() < 1e-5,
                "{a} -> {b}: a quarter of the student's step"
            );
        }
    }

    #[test]
    fn the_teacher_momentum_rises_from_0996_to_1() {
        assert!((Dino::momentum(0, 100) - 0.996).abs() < 1e-12);
        assert!((Dino::momentum(100, 100) - 1.0).abs() < 1e-12);
        assert!(Dino::momentum(50, 100) > 0.996 && Dino::momentum(50, 100) < 1.0);
    }

    #[test]
    fn knn_finds_the_training_image_itself() {
        // Test images that are training images: with k = 1 weight dominating (similarity 1),
        // the vote returns their own labels.
        let ds = digits(40);
        let cfg = crate::config::FitConfig::defaults(crate::config::MethodKind::EdgePopup);
        let mut net = Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap();
        let rule = crate::train::rule_at(&cfg, 0, 0.0);
        let acc = knn_accuracy(&mut net, &ds, &ds, rule, &Device::Cpu).unwrap();
        assert!(acc > 0.9, "{acc}");
    }
}
