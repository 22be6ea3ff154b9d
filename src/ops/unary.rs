//! Elementwise unary ops: `shaders/unary.wgsl` on the GPU, `unary_cpu` on the CPU.

use crate::autodiff::{Op, record};
use crate::backend::cpu::CpuBuf;
use crate::backend::cpu::math::CpuMath;
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::Result;
use crate::tensor::{Element, Storage, Tensor};

/// An elementwise function of one tensor. The discriminant is the `OP` constant of
/// `shaders/unary.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum UnaryOp {
    /// −x
    Neg = 0,
    /// eˣ
    Exp = 1,
    /// ln x (NaN for x < 0)
    Log = 2,
    /// √x
    Sqrt = 3,
    /// x²
    Square = 4,
    /// |x|
    Abs = 5,
    /// sin x
    Sin = 6,
    /// cos x
    Cos = 7,
    /// tanh x
    Tanh = 8,
    /// 1 / (1 + e⁻ˣ)
    Sigmoid = 9,
    /// max(x, 0)
    Relu = 10,
    /// 1 where x > 0, else 0: ReLU's derivative.
    ReluMask = 11,
    /// a·x + b with host scalars a, b.
    ScaleShift = 12,
    /// −1, 0 or 1 (0 for ±0): the derivative of |x| away from 0.
    Sign = 13,
    /// 1 / x
    Recip = 14,
}

/// Every unary op, for tests and `blo check`.
pub const ALL_UNARY: [UnaryOp; 15] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Square,
    UnaryOp::Abs,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::ReluMask,
    UnaryOp::ScaleShift,
    UnaryOp::Sign,
    UnaryOp::Recip,
];

static UNARY: Kernel = Kernel {
    shader: &shaders::UNARY,
    entry: "main",
    reads: 1,
    writes: 1,
};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n4: u32,
    _pad: u32,
    a: f32,
    b: f32,
}

/// The CPU reference of one element.
pub(crate) fn apply<T: Element>(op: UnaryOp, x: T, a: T, b: T) -> T {
    let zero = T::zero();
    let one = T::one();
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Square => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => one / (one + (-x).exp()),
        UnaryOp::Relu => {
            if x > zero {
                x
            } else {
                zero
            }
        }
        UnaryOp::ReluMask => {
            if x > zero {
                one
            } else {
                zero
            }
        }
        UnaryOp::ScaleShift => a * x + b,
        UnaryOp::Sign => {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else {
                zero
            }
        }
        UnaryOp::Recip => one / x,
    }
}

/// CPU reference: `op` applied to every element.
pub(crate) fn unary_cpu<T: CpuMath>(op: UnaryOp, x: &[T], a: f64, b: f64) -> Vec<T> {
    let (a, b) = (T::of(a), T::of(b));
    // One loop per op (the op is matched once, not per element), so each vectorises.
    fn map<T: Element>(x: &[T], f: impl Fn(T) -> T) -> Vec<T> {
        x.iter().map(|&v| f(v)).collect()
    }
    let one = T::one();
    match op {
        UnaryOp::Exp => {
            let mut y = x.to_vec();
            T::exp_inplace(&mut y);
            y
        }
        UnaryOp::Sigmoid => {
            let mut y = map(x, |v| -v);
            T::exp_inplace(&mut y);
            y.iter_mut().for_each(|v| *v = one / (one + *v));
            y
        }
        UnaryOp::Neg => map(x, |v| -v),
        UnaryOp::Square => map(x, |v| v * v),
        UnaryOp::Abs => map(x, |v| v.abs()),
        UnaryOp::ScaleShift => map(x, |v| a * v + b),
        UnaryOp::Recip => map(x, |v| one / v),
        UnaryOp::Relu => map(x, |v| if v > T::zero() { v } else { T::zero() }),
        UnaryOp::ReluMask => map(x, |v| if v > T::zero() { one } else { T::zero() }),
        _ => map(x, |v| apply(op, v, a, b)),
    }
}

fn unary_gpu(op: UnaryOp, x: &GpuBuffer, n: usize, a: f32, b: f32) -> Result<GpuBuffer> {
    let ctx = &x.ctx;
    let y = ctx.alloc((n * 4) as u64)?;
    let n4 = n.div_ceil(4) as u64;
    let params = Params {
        n4: n4 as u32,
        _pad: 0,
        a,
        b,
    };
    ctx.dispatch(
        &UNARY,
        &[("OP", f64::from(op as u32)), ("WG", f64::from(WG))],
        bytemuck::bytes_of(&params),
        &[x, &y],
        ctx.grid(n4, u64::from(WG))?,
    )?;
    Ok(y)
}

/// `op` applied elementwise, with scalars `a`, `b` used by [`UnaryOp::ScaleShift`].
pub(crate) fn unary_raw(x: &Tensor, op: UnaryOp, a: f64, b: f64) -> Result<Tensor> {
    let storage = match &*x.storage {
        Storage::F32(v) => Storage::F32(CpuBuf::from(unary_cpu(op, v, a, b))),
        Storage::F64(v) => Storage::F64(CpuBuf::from(unary_cpu(op, v, a, b))),
        Storage::Gpu(buf) => Storage::Gpu(unary_gpu(op, buf, x.numel(), a as f32, b as f32)?),
    };
    Ok(Tensor::from_storage(storage, x.shape()))
}

impl Tensor {
    /// Applies `op` to every element (for [`UnaryOp::ScaleShift`] use [`Tensor::scale_shift`]).
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        if op == UnaryOp::ScaleShift {
            return self.scale_shift(1.0, 0.0);
        }
        let out = unary_raw(self, op, 1.0, 0.0)?;
        Ok(record(Op::Unary { op, a: 1.0 }, &[self], out))
    }
    /// −x
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    /// eˣ
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    /// ln x
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    /// √x
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    /// x²
    pub fn square(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Square)
    }
    /// |x|
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    /// sin x
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    /// cos x
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }
    /// tanh x
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    /// 1 / (1 + e⁻ˣ)
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// max(x, 0)
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// 1 where x > 0, else 0.
    pub fn relu_mask(&self) -> Result<Tensor> {
        self.unary(UnaryOp::ReluMask)
    }
    /// sign(x) ∈ {−1, 0, 1}
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sign)
    }
    /// 1 / x
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    /// a·x + b with host scalars.
    pub fn scale_shift(&self, a: f64, b: f64) -> Result<Tensor> {
        let out = unary_raw(self, UnaryOp::ScaleShift, a, b)?;
        Ok(record(
            Op::Unary {
                op: UnaryOp::ScaleShift,
                a,
            },
            &[self],
            out,
        ))
    }
    /// a·x
    pub fn scale(&self, a: f64) -> Result<Tensor> {
        self.scale_shift(a, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu_or_skip, oracle_pair};

    /// Inputs inside each op's domain, so the comparison tests arithmetic, not NaN.
    fn input(op: UnaryOp, shape: &[usize], seed: u64) -> Vec<f32> {
        let x = oracle_pair(shape, seed).0;
        match op {
            UnaryOp::Log | UnaryOp::Sqrt => x.iter().map(|v| v.abs() + 0.05).collect(),
            UnaryOp::Recip => x
                .iter()
                .map(|v| if *v >= 0.0 { v + 0.1 } else { v - 0.1 })
                .collect(),
            _ => x,
        }
    }

    #[test]
    fn cpu_reference_values() {
        let x = Tensor::from_vec(vec![-1.0f64, 0.0, 2.0], &[3], &crate::Device::Cpu).unwrap();
        let got = |op| x.unary(op).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(got(UnaryOp::Relu), vec![0.0, 0.0, 2.0]);
        assert_eq!(got(UnaryOp::ReluMask), vec![0.0, 0.0, 1.0]);
        assert_eq!(got(UnaryOp::Sign), vec![-1.0, 0.0, 1.0]);
        assert_eq!(got(UnaryOp::Square), vec![1.0, 0.0, 4.0]);
        assert_eq!(
            x.scale_shift(2.0, 1.0).unwrap().to_vec::<f64>().unwrap(),
            vec![-1.0, 1.0, 5.0]
        );
        assert!((got(UnaryOp::Sigmoid)[1] - 0.5).abs() < 1e-15);
    }

    #[test]
    fn gpu_matches_cpu_f64_on_awkward_sizes() {
        let Some(gpu) = gpu_or_skip() else { return };
        for &n in &[1usize, 7, 31, 257, 1031] {
            for (k, &op) in ALL_UNARY.iter().enumerate() {
                let x = input(op, &[n], 100 + k as u64);
                let xg = Tensor::from_vec(x.clone(), &[n], &gpu).unwrap();
                let xc = Tensor::from_vec(
                    x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                    &[n],
                    &crate::Device::Cpu,
                )
                .unwrap();
                let (a, b) = (-0.7, 0.3);
                let (yg, yc) = if op == UnaryOp::ScaleShift {
                    (xg.scale_shift(a, b).unwrap(), xc.scale_shift(a, b).unwrap())
                } else {
                    (xg.unary(op).unwrap(), xc.unary(op).unwrap())
                };
                // f32 rounding of the input and the result: a few ulp; sin/cos of
                // arguments in [-1, 1] lose relative accuracy only near their zeros, hence atol.
                assert_close(
                    &yg.to_vec::<f64>().unwrap(),
                    &yc.to_vec::<f64>().unwrap(),
                    1e-5,
                    1e-6,
                    &format!("{op:?} n={n}"),
                );
            }
        }
    }

    #[test]
    fn gpu_handles_rank_3_and_empty() {
        let Some(gpu) = gpu_or_skip() else { return };
        let (x32, x64) = oracle_pair(&[3, 5, 7], 9);
        let y = Tensor::from_vec(x32, &[3, 5, 7], &gpu)
            .unwrap()
            .exp()
            .unwrap();
        assert_eq!(y.shape(), &[3, 5, 7]);
        let want: Vec<f64> = x64.iter().map(|v| v.exp()).collect();
        assert_close(&y.to_vec::<f64>().unwrap(), &want, 1e-5, 1e-6, "exp rank 3");
        let e = Tensor::zeros(&[0, 4], &gpu).unwrap().tanh().unwrap();
        assert_eq!(e.to_vec::<f32>().unwrap(), Vec::<f32>::new());
    }
}
