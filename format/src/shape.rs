//! Shapes, layer operations and shape inference, shared by the parser (which checks the shapes a
//! file states) and the writer (which computes them).

use crate::spec::{caps, LayerKind};

/// The shape of one activation (without the batch dimension) or one tensor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    rank: u8,
    dims: [u32; caps::RANK],
}

impl Shape {
    /// A shape of rank 1 to 4 with no zero dimension and at most 2^40 elements.
    pub fn new(dims: &[u32]) -> Option<Self> {
        if dims.is_empty() || dims.len() > caps::RANK || dims.contains(&0) {
            return None;
        }
        let mut numel = 1u64;
        for &d in dims {
            numel = numel.checked_mul(d as u64)?;
        }
        if numel > caps::ELEMENTS {
            return None;
        }
        let mut all = [0u32; caps::RANK];
        all[..dims.len()].copy_from_slice(dims);
        Some(Self {
            rank: dims.len() as u8,
            dims: all,
        })
    }

    /// The dimensions.
    pub fn dims(&self) -> &[u32] {
        &self.dims[..self.rank as usize]
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    /// The element count (at most 2^40).
    pub fn numel(&self) -> u64 {
        self.dims().iter().map(|&d| d as u64).product()
    }

    /// The matrix view: rank 1 is one row; otherwise `dims[0]` rows of the product of the rest.
    pub fn matrix(&self) -> (u64, u64) {
        if self.rank == 1 {
            (1, self.dims[0] as u64)
        } else {
            (self.dims[0] as u64, self.numel() / self.dims[0] as u64)
        }
    }

    /// The last dimension.
    pub fn last(&self) -> u32 {
        self.dims[self.rank as usize - 1]
    }
}

impl core::fmt::Debug for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl core::fmt::Display for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// Geometry of a 2-D window (convolution or pooling), `[height, width]` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Kernel size.
    pub kernel: [u32; 2],
    /// Stride, at least 1.
    pub stride: [u32; 2],
    /// Zero padding (implicit −∞ for max pooling) on each side.
    pub padding: [u32; 2],
    /// Dilation, at least 1; always 1 for pooling.
    pub dilation: [u32; 2],
}

impl Window2d {
    /// A window with stride = kernel, no padding, no dilation (the usual pooling).
    pub fn pool(k: u32) -> Self {
        Self {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
            dilation: [1, 1],
        }
    }

    /// A square convolution window with stride 1, padding `pad`, no dilation.
    pub fn conv(k: u32, pad: u32) -> Self {
        Self {
            kernel: [k, k],
            stride: [1, 1],
            padding: [pad, pad],
            dilation: [1, 1],
        }
    }

    /// Output size along `axis` for input size `n`, `None` when the window does not fit.
    pub fn output_len(&self, axis: usize, n: u32) -> Option<u32> {
        let padded = (n as u64).checked_add(2 * self.padding[axis] as u64)?;
        let reach = (self.dilation[axis] as u64).checked_mul((self.kernel[axis] as u64).checked_sub(1)?)? + 1;
        let span = padded.checked_sub(reach)?;
        u32::try_from(span / self.stride[axis] as u64 + 1).ok()
    }

    fn valid(&self, pooling: bool) -> Result<(), &'static str> {
        if self.kernel.contains(&0) {
            return Err("kernel size 0");
        }
        if self.stride.contains(&0) {
            return Err("stride 0");
        }
        if self.dilation.contains(&0) {
            return Err("dilation 0");
        }
        if pooling && self.dilation != [1, 1] {
            return Err("pooling with dilation");
        }
        let too_wide = |axis: usize| 2 * self.padding[axis] as u64 > self.kernel[axis] as u64;
        if pooling && (too_wide(0) || too_wide(1)) {
            return Err("pooling padding larger than half the kernel");
        }
        Ok(())
    }
}

/// One layer's operation, with the indices of the tensors it uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `y = W x + b`, `W` is `[out, in]`.
    Linear {
        /// Weight tensor.
        weight: u32,
        /// Bias tensor, `[out]`.
        bias: Option<u32>,
    },
    /// Cross-correlation over `[C, H, W]`, weight `[O, C, kh, kw]`.
    Conv2d {
        /// Weight tensor.
        weight: u32,
        /// Bias tensor, `[O]`.
        bias: Option<u32>,
        /// Kernel, stride, padding, dilation.
        window: Window2d,
    },
    /// `max(x, 0)`.
    Relu,
    /// Max pooling; padding counts as −∞.
    MaxPool(Window2d),
    /// Average pooling.
    AvgPool {
        /// Kernel, stride, padding.
        window: Window2d,
        /// Divide by the full kernel area (true) or by the in-bounds count (false).
        count_include_pad: bool,
    },
    /// Reshape to `[numel]`.
    Flatten,
    /// `(x − mean)/√(var + eps)·γ + β` per channel (`dims[0]`).
    BatchNorm {
        /// Running mean.
        mean: u32,
        /// Running variance.
        var: u32,
        /// Scale γ, absent for non-affine norms.
        gamma: Option<u32>,
        /// Shift β, absent for non-affine norms.
        beta: Option<u32>,
        /// Added to the variance.
        eps: f32,
    },
    /// Normalisation over the last dimension, then `·γ + β`.
    LayerNorm {
        /// Scale γ.
        gamma: Option<u32>,
        /// Shift β.
        beta: Option<u32>,
        /// Added to the variance.
        eps: f32,
    },
    /// Element-wise sum of the two inputs.
    Add,
    /// Softmax over the last dimension.
    Softmax,
}

impl Op {
    /// The layer kind.
    pub fn kind(&self) -> LayerKind {
        match self {
            Op::Linear { .. } => LayerKind::Linear,
            Op::Conv2d { .. } => LayerKind::Conv2d,
            Op::Relu => LayerKind::Relu,
            Op::MaxPool(_) => LayerKind::MaxPool,
            Op::AvgPool { .. } => LayerKind::AvgPool,
            Op::Flatten => LayerKind::Flatten,
            Op::BatchNorm { .. } => LayerKind::BatchNorm,
            Op::LayerNorm { .. } => LayerKind::LayerNorm,
            Op::Add => LayerKind::Add,
            Op::Softmax => LayerKind::Softmax,
        }
    }

    /// The tensor slots in their on-disk order.
    pub fn tensor_slots(&self) -> [Option<u32>; 4] {
        match *self {
            Op::Linear { weight, bias } | Op::Conv2d { weight, bias, .. } => [Some(weight), bias, None, None],
            Op::BatchNorm {
                mean, var, gamma, beta, ..
            } => [Some(mean), Some(var), gamma, beta],
            Op::LayerNorm { gamma, beta, .. } => [gamma, beta, None, None],
            _ => [None; 4],
        }
    }

    /// The number of inputs (2 for add, else 1).
    pub fn arity(&self) -> usize {
        if matches!(self, Op::Add) {
            2
        } else {
            1
        }
    }
}

fn check_vector(shape: Option<Shape>, len: u32, what: &'static str) -> Result<(), &'static str> {
    match shape {
        Some(s) if s.dims() != [len] => Err(what),
        _ => Ok(()),
    }
}

/// The output shape of `op` given its input shapes and the shapes of its tensor slots, or what is
/// wrong.
pub fn infer_shape(
    op: &Op,
    input: Shape,
    second: Option<Shape>,
    slots: [Option<Shape>; 4],
) -> Result<Shape, &'static str> {
    let dims = input.dims();
    match *op {
        Op::Linear { .. } => {
            let w = slots[0].ok_or("linear without weight")?;
            if input.rank() != 1 {
                return Err("linear input must have rank 1 (flatten first)");
            }
            if w.rank() != 2 || w.dims()[1] != dims[0] {
                return Err("linear weight must be [out, in] with in = input features");
            }
            check_vector(slots[1], w.dims()[0], "linear bias must be [out]")?;
            Shape::new(&[w.dims()[0]]).ok_or("bad output shape")
        }
        Op::Conv2d { window, .. } => {
            window.valid(false)?;
            let w = slots[0].ok_or("conv2d without weight")?;
            if input.rank() != 3 {
                return Err("conv2d input must be [C, H, W]");
            }
            let wd = w.dims();
            if w.rank() != 4 || wd[1] != dims[0] || wd[2] != window.kernel[0] || wd[3] != window.kernel[1] {
                return Err("conv2d weight must be [O, C, kh, kw] matching the input channels and kernel");
            }
            check_vector(slots[1], wd[0], "conv2d bias must be [O]")?;
            let h = window
                .output_len(0, dims[1])
                .ok_or("conv2d window larger than the padded input")?;
            let wi = window
                .output_len(1, dims[2])
                .ok_or("conv2d window larger than the padded input")?;
            Shape::new(&[wd[0], h, wi]).ok_or("bad output shape")
        }
        Op::MaxPool(window) | Op::AvgPool { window, .. } => {
            window.valid(true)?;
            if input.rank() != 3 {
                return Err("pooling input must be [C, H, W]");
            }
            let h = window
                .output_len(0, dims[1])
                .ok_or("pooling window larger than the padded input")?;
            let w = window
                .output_len(1, dims[2])
                .ok_or("pooling window larger than the padded input")?;
            Shape::new(&[dims[0], h, w]).ok_or("bad output shape")
        }
        Op::Relu | Op::Softmax => Ok(input),
        Op::Flatten => Shape::new(&[input.numel() as u32])
            .filter(|s| s.numel() == input.numel())
            .ok_or("flatten output exceeds u32"),
        Op::BatchNorm { eps, .. } => {
            if !(eps.is_finite() && eps.is_sign_positive()) {
                return Err("eps must be finite and not negative");
            }
            let c = dims[0];
            // [channels] shared by every task, or [tasks, channels]: a row per mask set (1.1;
            // the parser checks the row count against the file's mask sets).
            let first = slots.iter().flatten().next().copied();
            for s in slots.into_iter().flatten() {
                let per_task = s.rank() == 2 && s.dims()[1] == c && s.dims()[0] >= 1;
                if s.dims() != [c] && !per_task {
                    return Err("batch norm tensors must be [channels] or [tasks, channels]");
                }
                if Some(s) != first {
                    return Err("batch norm tensors must all be [channels] or all [tasks, channels]");
                }
            }
            Ok(input)
        }
        Op::LayerNorm { eps, .. } => {
            if !(eps.is_finite() && eps.is_sign_positive()) {
                return Err("eps must be finite and not negative");
            }
            for s in slots {
                check_vector(s, input.last(), "layer norm tensors must be [last dim]")?;
            }
            Ok(input)
        }
        Op::Add => match second {
            Some(b) if b == input => Ok(input),
            _ => Err("add inputs must have the same shape"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pooling_padding_is_refused_without_overflow() {
        let w = Window2d {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [u32::MAX, 1 << 31],
            dilation: [1, 1],
        };
        assert!(w.valid(true).is_err());
        let input = Shape::new(&[1, 4, 4]).unwrap();
        assert!(infer_shape(&Op::MaxPool(w), input, None, [None; 4]).is_err());
        let huge = Window2d {
            kernel: [u32::MAX, 1],
            stride: [1, 1],
            padding: [u32::MAX, 0],
            dilation: [u32::MAX, 1],
        };
        assert_eq!(
            huge.output_len(0, u32::MAX),
            None,
            "reach overflows u64 arithmetic safely"
        );
    }

    #[test]
    fn conv_output_length_matches_the_formula() {
        // floor((n + 2p - d(k-1) - 1) / s) + 1, against a direct count of window positions.
        for n in 1..12u32 {
            for k in 1..5u32 {
                for s in 1..4u32 {
                    for p in 0..3u32 {
                        for d in 1..3u32 {
                            let w = Window2d {
                                kernel: [k, k],
                                stride: [s, s],
                                padding: [p, p],
                                dilation: [d, d],
                            };
                            let reach = d * (k - 1) + 1;
                            let count = (0..)
                                .step_by(s as usize)
                                .take_while(|&start| start + reach <= n + 2 * p)
                                .count();
                            let want = (count > 0).then_some(count as u32);
                            assert_eq!(w.output_len(0, n), want, "n{n} k{k} s{s} p{p} d{d}");
                        }
                    }
                }
            }
        }
    }
}
