//! Conformance: one weight product per problem, every storage × mask × layout, random and ragged
//! shapes, masks at density 0, 1 and between, run on every instruction set this CPU has, against
//! the f64 reference. Tolerance: |y − ref| ≤ 1e-5 · (Σ|w·x| + |b|) + 1e-6 (f32 accumulation
//! over at most a few thousand terms; weights are exact in every storage, so f16 and bf16 need
//! nothing looser).

mod common;

use common::samples::{bits, values};
use common::{inputs, reference};
use smk_format::seeded::{draw, SeededInit};
use smk_format::writer::{MaskSpec, ModelBuilder, TensorData, TensorSpec};
use smk_format::{InitRule, Model};
use smk_runtime::{Isa, Plan};

#[derive(Clone, Copy, Debug)]
enum Weights {
    F32,
    F16,
    Bf16,
    /// Stored signs (learned binary weights), which take element masks only.
    Signs,
    Signed,
    Uniform,
    Normal,
}

#[derive(Clone, Copy, Debug)]
enum MaskKind {
    None,
    Element,
    Block { r: u16, c: u16, packed: bool },
}

#[derive(Clone, Copy, Debug)]
struct Problem {
    rows: u32,
    cols: u32,
    batch: usize,
    weights: Weights,
    mask: MaskKind,
    density: f64,
    bias: bool,
    seed: u64,
}

impl Problem {
    fn build(&self) -> Vec<u8> {
        let (rows, cols) = (self.rows, self.cols);
        let n = (rows * cols) as usize;
        let name = "fc.weight";
        let dims = [rows, cols];
        let seeded = |rule| {
            TensorSpec::seeded(
                name,
                &dims,
                SeededInit {
                    rule,
                    seed: self.seed,
                    stream: 3,
                    scale: 0.125,
                },
            )
            .unwrap()
        };
        let w = match self.weights {
            Weights::F32 => TensorSpec::f32(name, &dims, values(self.seed, n)).unwrap(),
            Weights::F16 => TensorSpec::new(
                name,
                &dims,
                TensorData::F16(values(self.seed, n).into_iter().map(half::f16::from_f32).collect()),
            )
            .unwrap(),
            Weights::Bf16 => TensorSpec::new(
                name,
                &dims,
                TensorData::Bf16(values(self.seed, n).into_iter().map(half::bf16::from_f32).collect()),
            )
            .unwrap(),
            Weights::Signs => TensorSpec::signs(name, &dims, bits(self.seed + 5, n, 0.5), 0.125).unwrap(),
            Weights::Signed => seeded(InitRule::SignedConstant),
            Weights::Uniform => seeded(InitRule::Uniform),
            Weights::Normal => seeded(InitRule::Normal),
        };
        let bias = self
            .bias
            .then(|| TensorSpec::f32("fc.bias", &[rows], values(self.seed + 1, rows as usize)).unwrap());
        let mut b = ModelBuilder::new(&[cols]).unwrap();
        let fc = b.linear("fc", w, bias).unwrap();
        let mask = match (self.weights, self.mask) {
            (Weights::Signs, MaskKind::Block { .. }) => MaskKind::Element,
            (_, m) => m,
        };
        match mask {
            MaskKind::None => {}
            MaskKind::Element => {
                let s = b.mask_set("task").unwrap();
                b.set_mask(s, fc, MaskSpec::element_bools(&bits(self.seed + 2, n, self.density)))
                    .unwrap();
            }
            MaskKind::Block { r, c, packed } => {
                let s = b.mask_set("task").unwrap();
                let grid = (rows.div_ceil(r as u32) * cols.div_ceil(c as u32)) as usize;
                b.set_mask(
                    s,
                    fc,
                    MaskSpec::block_bools([r, c], &bits(self.seed + 2, grid, self.density)),
                )
                .unwrap();
                if packed && !matches!(self.weights, Weights::Signed | Weights::Uniform | Weights::Normal) {
                    b.pack_blocks(fc).unwrap();
                }
            }
        }
        b.to_bytes().unwrap()
    }

    fn check(&self) {
        let bytes = self.build();
        let model = Model::parse(&bytes).unwrap();
        let x = inputs(self.seed + 3, self.batch * self.cols as usize);
        let refs: Vec<_> = x
            .chunks(self.cols as usize)
            .map(|xb| reference(&model, None, xb))
            .collect();
        for isa in Isa::available_all() {
            let plan = Plan::new(&model, self.batch, None).unwrap().with_isa(isa).unwrap();
            let mut scratch = vec![0u8; plan.scratch_bytes()];
            let mut y = vec![f32::NAN; self.batch * self.rows as usize];
            plan.infer(&mut scratch, &x, &mut y).unwrap();
            for (b, r) in refs.iter().enumerate() {
                for o in 0..self.rows as usize {
                    let got = y[b * self.rows as usize + o] as f64;
                    let tol = 1e-5 * r.magnitude[o] + 1e-6;
                    assert!(
                        (got - r.values[o]).abs() <= tol,
                        "{isa} ({}): input {b} row {o}: got {got}, reference {} (tolerance {tol:e}); {self:?}",
                        plan.kernel(0),
                        r.values[o]
                    );
                }
            }
        }
    }
}

const WEIGHTS: [Weights; 7] = [
    Weights::F32,
    Weights::F16,
    Weights::Bf16,
    Weights::Signs,
    Weights::Signed,
    Weights::Uniform,
    Weights::Normal,
];
const BLOCKS: [(u16, u16); 8] = [(1, 4), (4, 4), (8, 8), (16, 16), (3, 5), (2, 32), (16, 64), (5, 16)];

/// Pinned shapes at the vector widths' edges (4, 8, 16, 64 and one past or short of them), every
/// storage and mask kind, densities 0, 1 and ½.
#[test]
fn pinned_edges_every_kind() {
    let mut seed = 1;
    for &(rows, cols) in &[(1, 1), (3, 15), (2, 16), (5, 17), (7, 63), (4, 64), (9, 65), (17, 130)] {
        for &weights in &WEIGHTS {
            let mut masks = vec![MaskKind::None, MaskKind::Element];
            for &(r, c) in &BLOCKS[..4] {
                masks.push(MaskKind::Block { r, c, packed: false });
                masks.push(MaskKind::Block { r, c, packed: true });
            }
            for &mask in &masks {
                for density in [0.0, 1.0, 0.5] {
                    for batch in [1, 5, 17] {
                        seed += 1;
                        Problem {
                            rows,
                            cols,
                            batch,
                            weights,
                            mask,
                            density,
                            bias: seed % 2 == 0,
                            seed,
                        }
                        .check();
                    }
                }
            }
        }
    }
}

/// Random problems: any shape up to 70 × 300, any block shape, any density, batch 1 to 9.
#[test]
fn random_problems() {
    for i in 0..400u64 {
        let r = |k: u64, n: u64| draw(0x5EED + i, k) % n;
        let weights = WEIGHTS[r(0, WEIGHTS.len() as u64) as usize];
        let (br, bc) = BLOCKS[r(1, BLOCKS.len() as u64) as usize];
        let mask = match r(2, 4) {
            0 => MaskKind::None,
            1 => MaskKind::Element,
            k => MaskKind::Block {
                r: br,
                c: bc,
                packed: k == 3,
            },
        };
        let density = [0.0, 1.0, 0.05, 0.1, 0.3, 0.5, 0.9][r(3, 7) as usize];
        Problem {
            rows: 1 + r(4, 70) as u32,
            cols: 1 + r(5, 300) as u32,
            batch: 1 + r(6, 9) as usize,
            weights,
            mask,
            density,
            bias: r(7, 2) == 0,
            seed: 1000 + i,
        }
        .check();
    }
}

/// Weights wider than one sign draw and than the unrolled loop, with a bias: the layer shapes
/// the trainer exports.
#[test]
fn trained_shapes() {
    for (k, &weights) in WEIGHTS.iter().enumerate() {
        for mask in [
            MaskKind::Element,
            MaskKind::Block {
                r: 16,
                c: 16,
                packed: true,
            },
            MaskKind::Block {
                r: 4,
                c: 4,
                packed: false,
            },
        ] {
            Problem {
                rows: 300,
                cols: 784,
                batch: 2,
                weights,
                mask,
                density: 0.3,
                bias: true,
                seed: 77 + k as u64,
            }
            .check();
        }
    }
}

/// The batch kernel's passes over columns (512 at a time) and its register tiles (4 rows × 4
/// inputs) at their edges: 1,100 columns, 7 rows, 4 to 9 inputs.
#[test]
fn batch_tiles_and_column_passes() {
    for (k, &weights) in WEIGHTS[..4].iter().enumerate() {
        for mask in [MaskKind::None, MaskKind::Element] {
            for batch in [4, 6, 9] {
                Problem {
                    rows: 7,
                    cols: 1100,
                    batch,
                    weights,
                    mask,
                    density: 0.7,
                    bias: true,
                    seed: 90 + k as u64,
                }
                .check();
            }
        }
    }
}
