//! Elementwise unary ops: `unary_cpu` in `backend/cpu/unary.rs` on the CPU,
//! `shaders/unary.wgsl` (planned in `backend/gpu/kernels/unary.rs`) on the GPU.

pub use crate::backend::{ALL_UNARY, UnaryOp};
use crate::error::Result;
use crate::tensor::Tensor;
use crate::tensor::tape::{Op, record};

/// `op` applied elementwise, with scalars `a`, `b` used by [`UnaryOp::ScaleShift`].
pub(crate) fn unary_raw(x: &Tensor, op: UnaryOp, a: f64, b: f64) -> Result<Tensor> {
    let storage = x.storage.unary(op, x.numel(), a, b)?;
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
