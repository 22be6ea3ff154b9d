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
    /// |x|. Its derivative is sign(x), which is 0 at x = 0 (so a gradient step from
    /// x = 0 does not move x).
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
    /// max(x, 0). Its derivative is 1 for x > 0 and 0 for x ≤ 0, including x = 0 (as in
    /// PyTorch): a parameter that starts at 0 gets no gradient through relu.
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// 1 where x > 0, else 0.
    pub fn relu_mask(&self) -> Result<Tensor> {
        self.unary(UnaryOp::ReluMask)
    }
    /// sign(x) ∈ {−1, 0, 1}. Its derivative is 0 everywhere, at x = 0 too: no gradient
    /// flows through it.
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sign)
    }
    /// 1 / x
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    /// softplus(x) = ln(1 + eˣ), stable for any x: computed as max(x, 0) + ln(1 + e^−|x|),
    /// so it neither overflows for large x (softplus(1000) = 1000) nor rounds small values
    /// to 0 (softplus(−40) ≈ 4.2e−18 in f64). Its derivative is sigmoid(x) everywhere
    /// (½ at x = 0), differentiable again to any order; writing softplus by hand from
    /// `relu` and `abs` would give derivative 0 at x = 0.
    pub fn softplus(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Softplus)
    }
    /// ln sigmoid(x) = −softplus(−x) = −ln(1 + e⁻ˣ), stable for any x (computed as
    /// min(x, 0) − ln(1 + e^−|x|)). Its derivative is sigmoid(−x) = 1 − sigmoid(x)
    /// everywhere.
    pub fn log_sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::LogSigmoid)
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

    /// The extreme and near-zero inputs of softplus and log_sigmoid, with their values
    /// in closed form (f64).
    const EXTREMES: [f64; 9] = [
        -1000.0, -100.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0, 1000.0,
    ];

    #[test]
    fn softplus_and_log_sigmoid_are_stable() {
        let x = Tensor::from_vec(EXTREMES.to_vec(), &[9], &crate::Device::Cpu).unwrap();
        let sp = x.softplus().unwrap().to_vec::<f64>().unwrap();
        let ls = x.log_sigmoid().unwrap().to_vec::<f64>().unwrap();
        for (i, &v) in EXTREMES.iter().enumerate() {
            // ln(1 + eᵛ): eᵛ itself below −30 (the next term is e²ᵛ/2 < 1e-26·eᵛ),
            // ln_1p(eᵛ) in between, v + e⁻ᵛ above 30.
            let want = if v < -30.0 {
                v.exp()
            } else if v > 30.0 {
                v + (-v).exp()
            } else {
                v.exp().ln_1p()
            };
            assert_close(&[sp[i]], &[want], 1e-14, 0.0, &format!("softplus({v})"));
            let want_ls = if v > 30.0 {
                -(-v).exp()
            } else if v < -30.0 {
                v - v.exp()
            } else {
                -(-v).exp().ln_1p()
            };
            assert_close(
                &[ls[i]],
                &[want_ls],
                1e-14,
                0.0,
                &format!("log_sigmoid({v})"),
            );
        }
        // In f32 too: no overflow to ∞ at 1000, no flush to 0 at −20.
        let x32 = Tensor::from_vec(vec![1000.0f32, -20.0], &[2], &crate::Device::Cpu).unwrap();
        let y = x32.softplus().unwrap().to_vec::<f32>().unwrap();
        assert_eq!(y[0], 1000.0);
        assert!((y[1] / (-20.0f32).exp() - 1.0).abs() < 1e-6, "{}", y[1]);
    }

    /// The GPU (f32) against the CPU in f64 at extreme inputs, values and gradients.
    #[test]
    fn gpu_softplus_and_log_sigmoid_at_extremes() {
        let Some(gpu) = gpu_or_skip() else { return };
        let cpu = crate::Device::Cpu;
        let xs: Vec<f64> = EXTREMES[1..8].to_vec(); // ±100, ±20, ±1e-3, 0
        let xc = Tensor::from_vec(xs.clone(), &[xs.len()], &cpu).unwrap();
        let xg = Tensor::from_vec(
            xs.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &[xs.len()],
            &gpu,
        )
        .unwrap();
        for op in [UnaryOp::Softplus, UnaryOp::LogSigmoid] {
            let yc = xc.unary(op).unwrap().to_vec::<f64>().unwrap();
            let yg = xg.unary(op).unwrap().to_vec::<f64>().unwrap();
            // f32 rounding (a few ulp) relative; atol for the e⁻¹⁰⁰ tails, below f32's
            // smallest normal, which a GPU may flush to 0.
            assert_close(&yg, &yc, 1e-5, 1e-30, &format!("{op:?} values"));
            let (tc, tg) = (xc.requires_grad(), xg.requires_grad());
            let gc = crate::autodiff::grad(&tc.unary(op).unwrap().sum().unwrap(), &[&tc], false)
                .unwrap()[0]
                .to_vec::<f64>()
                .unwrap();
            let gg = crate::autodiff::grad(&tg.unary(op).unwrap().sum().unwrap(), &[&tg], false)
                .unwrap()[0]
                .to_vec::<f64>()
                .unwrap();
            assert_close(&gg, &gc, 1e-5, 1e-30, &format!("{op:?} gradients"));
            assert_eq!(gg[3], 0.5, "{op:?}'(0) on the GPU");
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
