//! PackNet (Mallya & Lazebnik, 2018): many tasks packed into one network by pruning.
//!
//! The tasks of a family train one after another (as SupSup's do: `RUN/task-K/`, each an
//! ordinary run). Task `k` starts from task `k − 1`'s network: the weights earlier tasks own
//! stay fixed, the free ones start from zero and train. Halfway through its epochs the task
//! keeps its share of the free weights, those of largest magnitude in each layer, and the rest
//! of its epochs retrain only those. From then on it owns them. Task `k`'s mask is every weight
//! that it or an earlier task owns, so one set of stored weights serves every task.

use candle_core::Tensor;

use crate::config::FitConfig;
use crate::error::Result;
use crate::model::Net;

/// The epoch (from 0) at whose start a task prunes: the first half of its epochs trains every
/// free weight, the second half retrains the kept ones.
pub fn prune_epoch(cfg: &FitConfig) -> usize {
    cfg.epochs / 2
}

/// The fraction of each layer's weights that tasks 0 to `task_index` own together once this
/// task has pruned: `--keep` (the share of the network the whole family may use) split equally
/// among the tasks.
pub fn share(cfg: &FitConfig) -> Result<f64> {
    let tasks = crate::supsup::family(cfg)?.count();
    Ok(cfg.keep * (cfg.task_index + 1) as f64 / tasks as f64)
}

/// Keeps, in every layer, the free weights of largest magnitude that bring what the tasks own
/// together to `share · n` (all the free ones, when fewer are left), ties broken by position;
/// the others leave the task.
pub fn prune(net: &mut Net, share: f64) -> Result<()> {
    for l in &mut net.layers {
        let w: Vec<f32> = l.weight_f32()?.flatten_all()?.to_vec1()?;
        let Some(p) = &mut l.pack else { continue };
        let claimed: Vec<f32> = p.claimed.flatten_all()?.to_vec1()?;
        let mut free: Vec<usize> = (0..w.len()).filter(|&i| claimed[i] != 0.0).collect();
        let owned = w.len() - free.len();
        let want = ((share * w.len() as f64).round() as usize)
            .saturating_sub(owned)
            .min(free.len());
        if want < free.len() {
            let larger = |a: &usize, b: &usize| w[*b].abs().total_cmp(&w[*a].abs()).then(a.cmp(b));
            if want > 0 {
                free.select_nth_unstable_by(want - 1, larger);
            }
            free.truncate(want);
        }
        let mut keep = vec![0f32; w.len()];
        for i in free {
            keep[i] = 1.0;
        }
        p.claimed = Tensor::from_vec(keep, p.claimed.shape(), p.claimed.device())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MethodKind;
    use crate::model::Pack;
    use candle_core::Device;

    fn net() -> Net {
        let cfg = FitConfig {
            task: Some("permuted:4".into()),
            ..FitConfig::defaults(MethodKind::Packnet)
        };
        Net::build(&cfg, [1, 28, 28], 10, None, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn each_task_claims_its_share_of_the_free_weights_by_magnitude() {
        let mut net = net();
        prune(&mut net, 0.25).unwrap();
        for l in &net.layers {
            let p = l.pack.as_ref().unwrap();
            let (w, kept) = (values(&l.weight_f32().unwrap()), values(&p.claimed));
            let n = w.len();
            assert_eq!(
                kept.iter().filter(|&&k| k == 1.0).count(),
                (0.25 * n as f64).round() as usize
            );
            // Every kept weight is at least as large as every dropped one.
            let smallest_kept = (0..n)
                .filter(|&i| kept[i] == 1.0)
                .map(|i| w[i].abs())
                .fold(f32::MAX, f32::min);
            let largest_dropped = (0..n)
                .filter(|&i| kept[i] == 0.0)
                .map(|i| w[i].abs())
                .fold(0.0, f32::max);
            assert!(
                smallest_kept >= largest_dropped,
                "{}: {smallest_kept} < {largest_dropped}",
                l.name
            );
        }
    }

    #[test]
    fn the_next_task_keeps_earlier_weights_and_trains_only_free_ones() {
        let mut net = net();
        prune(&mut net, 0.25).unwrap();
        let l = &net.layers[0];
        let p = l.pack.as_ref().unwrap();
        let w = l.weight_f32().unwrap();
        let before = values(&p.effective(&w).unwrap());
        let (start, next) = Pack::next(&w, p).unwrap();
        // The owned weights compute as they did; the free ones start from zero.
        let after = values(&next.effective(&start).unwrap());
        assert_eq!(after, before);
        let (owned, claimed) = (values(&next.owned), values(&next.claimed));
        assert!(owned.iter().zip(&claimed).all(|(o, c)| o + c == 1.0));
        // Whatever the optimizer does to the variable, owned weights do not move.
        let moved = (start.ones_like().unwrap() * 7.0).unwrap();
        let eff = values(&next.effective(&moved).unwrap());
        for i in 0..eff.len() {
            let want = if owned[i] == 1.0 { before[i] } else { 7.0 };
            assert_eq!(eff[i], want, "weight {i}");
        }
        // The gradient reaches only free weights.
        let var = candle_core::Var::from_tensor(&start).unwrap();
        let grads = next
            .effective(var.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = values(grads.get(var.as_tensor()).unwrap());
        assert!(g.iter().zip(&claimed).all(|(g, c)| g == c));
    }
}
