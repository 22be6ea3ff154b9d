//! Fused updates, one dispatch each: `axpy` (y + a·x), `axpby` (b·y + a·x) and
//! `axpy_ratio` (y + sign·(num/den)·x), in `shaders/update.wgsl` on the GPU
//! (`backend/gpu/kernels/update.rs`) and `update_cpu` on the CPU
//! (`backend/cpu/update.rs`). They return a new tensor (tensors are immutable values).
//!
//! A coefficient is a [`Scalar`]: a host number, or a one-element tensor on the same
//! device. On the GPU a device scalar is read by the kernel itself, so a dot product
//! computed on the GPU scales a vector without a readback, and conjugate gradient's
//! α = rᵀr / pᵀAp never leaves the device ([`Tensor::axpy_ratio`]).

use crate::backend::{Coef, Coefs};
use crate::error::{Error, Result};
pub use crate::tensor::scalar::Scalar;
use crate::tensor::tape::{Op, ScalarKind, record};
use crate::tensor::{Tensor, same_place};

impl<'a> Scalar<'a> {
    fn coef(self) -> Coef<'a, Tensor> {
        match self {
            Scalar::Host(v) => Coef::Host(v),
            Scalar::Device(t) => Coef::Device(t),
        }
    }
}

/// Checks that a device scalar fits the update of `y`: one element, same device, same dtype.
fn check_scalar(op: &'static str, y: &Tensor, s: &Tensor) -> Result<()> {
    same_place(op, y, s)?;
    if s.numel() != 1 {
        return Err(Error::ShapeMismatch {
            op,
            lhs: s.shape().to_vec(),
            rhs: vec![],
        });
    }
    Ok(())
}

/// `out = b·y + a·x` with the coefficients of `coefs`, in one dispatch on the GPU.
pub(crate) fn update_raw(
    op: &'static str,
    y: &Tensor,
    coefs: Coefs<'_, Tensor>,
    x: &Tensor,
) -> Result<Tensor> {
    same_place(op, y, x)?;
    if y.shape() != x.shape() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: y.shape().to_vec(),
            rhs: x.shape().to_vec(),
        });
    }
    for s in coefs.scalars().into_iter().flatten() {
        check_scalar(op, y, s)?;
    }
    let coefs = coefs.map(|t| &*t.storage);
    let storage = y.storage.update(op, &x.storage, y.numel(), coefs)?;
    Ok(Tensor::from_storage(storage, y.shape()))
}

/// Records b·y + a·x with its device scalars as extra inputs (a's before b's).
fn record_linear(y: &Tensor, x: &Tensor, a: Scalar<'_>, b: Scalar<'_>, out: Tensor) -> Tensor {
    let mut inputs = vec![y, x];
    for s in [&a, &b] {
        if let Scalar::Device(t) = s {
            inputs.push(t);
        }
    }
    record(
        Op::Axpby {
            a: ScalarKind::of(&a),
            b: ScalarKind::of(&b),
        },
        &inputs,
        out,
    )
}

impl Tensor {
    /// `self + a·x` in one pass (one dispatch on the GPU). `a` is a host number or a
    /// one-element tensor on the same device; `x` must have the shape of `self`.
    pub fn axpy<'a>(&self, a: impl Into<Scalar<'a>>, x: &Tensor) -> Result<Tensor> {
        let a = a.into();
        let coefs = Coefs::Linear {
            b: Coef::Host(1.0),
            a: a.coef(),
        };
        let out = update_raw("axpy", self, coefs, x)?;
        Ok(record_linear(self, x, a, Scalar::Host(1.0), out))
    }

    /// `b·self + a·x` in one pass (one dispatch on the GPU). `a` and `b` are host numbers
    /// or one-element tensors on the same device; `x` must have the shape of `self`.
    pub fn axpby<'a, 'b>(
        &self,
        b: impl Into<Scalar<'b>>,
        a: impl Into<Scalar<'a>>,
        x: &Tensor,
    ) -> Result<Tensor> {
        let (a, b) = (a.into(), b.into());
        let coefs = Coefs::Linear {
            b: b.coef(),
            a: a.coef(),
        };
        let out = update_raw("axpby", self, coefs, x)?;
        Ok(record_linear(self, x, a, b, out))
    }

    /// `self + sign·(num/den)·x` in one pass, where `num` and `den` are one-element
    /// tensors on the same device (on the GPU the ratio is formed by the kernel, so it
    /// never leaves the device): conjugate gradient's `x + α p` and `r − α Ap` with
    /// `α = rᵀr / pᵀAp`. A zero `den` makes the ratio 0 (so `self` is returned
    /// unchanged): conjugate gradient then stops moving once its residual is exactly
    /// zero instead of dividing 0 by 0.
    pub fn axpy_ratio(&self, num: &Tensor, den: &Tensor, sign: f64, x: &Tensor) -> Result<Tensor> {
        let out = update_raw("axpy_ratio", self, Coefs::Ratio { sign, num, den }, x)?;
        Ok(record(Op::AxpyRatio { sign }, &[self, x, num, den], out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu_or_skip, oracle_pair};
    use crate::{DType, Device};

    fn cpu64(data: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_vec(data.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn cpu_reference_values() {
        let y = cpu64(&[1.0, 2.0, 3.0], &[3]);
        let x = cpu64(&[10.0, 20.0, 30.0], &[3]);
        let v = |t: Tensor| t.to_vec::<f64>().unwrap();
        assert_eq!(v(y.axpy(0.5, &x).unwrap()), vec![6.0, 12.0, 18.0]);
        assert_eq!(v(y.axpy(0.5f32, &x).unwrap()), vec![6.0, 12.0, 18.0]);
        assert_eq!(v(y.axpby(2.0, -0.1, &x).unwrap()), vec![1.0, 2.0, 3.0]);
        let s = cpu64(&[3.0], &[]);
        assert_eq!(v(y.axpy(&s, &x).unwrap()), vec![31.0, 62.0, 93.0]);
        let (num, den) = (cpu64(&[1.0], &[]), cpu64(&[4.0], &[1]));
        assert_eq!(
            v(y.axpy_ratio(&num, &den, -1.0, &x).unwrap()),
            vec![-1.5, -3.0, -4.5]
        );
    }

    /// Every coefficient form on the GPU against the f64 CPU reference.
    #[test]
    fn gpu_matches_cpu_f64_with_host_and_device_scalars() {
        let Some(gpu) = gpu_or_skip() else { return };
        let shapes: [&[usize]; 6] = [&[1], &[7], &[31], &[257], &[1031], &[31, 5]];
        for (k, shape) in shapes.iter().enumerate() {
            let seed = 200 + 10 * k as u64;
            let (y32, y64) = oracle_pair(shape, seed);
            let (x32, x64) = oracle_pair(shape, seed + 1);
            let (yg, xg) = (
                Tensor::from_vec(y32, shape, &gpu).unwrap(),
                Tensor::from_vec(x32, shape, &gpu).unwrap(),
            );
            let (yc, xc) = (cpu64(&y64, shape), cpu64(&x64, shape));
            // Device scalars as 0-d and as [1]; the ratio's denominator kept away from 0.
            let (a, b, den) = (-0.7f32, 1.3f32, 0.4f32);
            let ag = Tensor::scalar(a, &gpu).unwrap();
            let bg = Tensor::from_vec(vec![b], &[1], &gpu).unwrap();
            let dg = Tensor::scalar(den, &gpu).unwrap();
            let ac = cpu64(&[f64::from(a)], &[]);
            let bc = cpu64(&[f64::from(b)], &[1]);
            let dc = cpu64(&[f64::from(den)], &[]);
            let (a64, b64) = (f64::from(a), f64::from(b));
            let cases: Vec<(&str, Tensor, Tensor)> = vec![
                (
                    "axpy host",
                    yg.axpy(a64, &xg).unwrap(),
                    yc.axpy(a64, &xc).unwrap(),
                ),
                (
                    "axpy device",
                    yg.axpy(&ag, &xg).unwrap(),
                    yc.axpy(&ac, &xc).unwrap(),
                ),
                (
                    "axpby host host",
                    yg.axpby(b64, a64, &xg).unwrap(),
                    yc.axpby(b64, a64, &xc).unwrap(),
                ),
                (
                    "axpby device host",
                    yg.axpby(&bg, a64, &xg).unwrap(),
                    yc.axpby(&bc, a64, &xc).unwrap(),
                ),
                (
                    "axpby host device",
                    yg.axpby(b64, &ag, &xg).unwrap(),
                    yc.axpby(b64, &ac, &xc).unwrap(),
                ),
                (
                    "axpby device device",
                    yg.axpby(&bg, &ag, &xg).unwrap(),
                    yc.axpby(&bc, &ac, &xc).unwrap(),
                ),
                (
                    "axpy_ratio +",
                    yg.axpy_ratio(&ag, &dg, 1.0, &xg).unwrap(),
                    yc.axpy_ratio(&ac, &dc, 1.0, &xc).unwrap(),
                ),
                (
                    "axpy_ratio −",
                    yg.axpy_ratio(&bg, &dg, -1.0, &xg).unwrap(),
                    yc.axpy_ratio(&bc, &dc, -1.0, &xc).unwrap(),
                ),
            ];
            for (what, g, c) in cases {
                assert_eq!(g.shape(), *shape);
                // Two f32 roundings per element (product, sum) plus f32 coefficients; the
                // atol covers results that cancel to near 0.
                assert_close(
                    &g.to_vec::<f64>().unwrap(),
                    &c.to_vec::<f64>().unwrap(),
                    1e-5,
                    1e-6,
                    &format!("{what} {shape:?}"),
                );
            }
        }
    }

    #[test]
    fn device_scalar_updates_are_one_dispatch_without_readback() {
        if gpu_or_skip().is_none() {
            return;
        }
        // A context of its own: the shared one counts other tests' dispatches too.
        let gpu = Device::gpu().unwrap();
        let ctx = gpu.gpu_context().unwrap().clone();
        // Poisoning (BLO_POISON) adds a fill dispatch per allocation; count only the update.
        ctx.set_poison(false);
        let y = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0], &[5], &gpu).unwrap();
        let x = Tensor::from_vec(vec![2.0f32, -2.0, 0.0, 4.0, 8.0], &[5], &gpu).unwrap();
        let s = Tensor::scalar(0.5, &gpu).unwrap();
        let d = Tensor::scalar(4.0, &gpu).unwrap();
        for fused in [false, true] {
            ctx.set_fusion(fused);
            // Fused, each update is deferred until it is read, then one dispatch.
            let per = u64::from(!fused);
            let before = ctx.dispatch_count();
            let z = y.axpy(&s, &x).unwrap();
            assert_eq!(ctx.dispatch_count(), before + per, "axpy");
            let w = y.axpy_ratio(&s, &d, -1.0, &x).unwrap();
            assert_eq!(ctx.dispatch_count(), before + 2 * per, "axpy_ratio");
            let v = y.axpby(&d, &s, &x).unwrap();
            assert_eq!(ctx.dispatch_count(), before + 3 * per, "axpby");
            assert_eq!(z.to_vec::<f32>().unwrap(), vec![2.0, 1.0, 3.0, 6.0, 9.0]);
            assert_eq!(w.to_vec::<f32>().unwrap(), vec![0.75, 2.25, 3.0, 3.5, 4.0]);
            assert_eq!(v.to_vec::<f32>().unwrap(), vec![5.0, 7.0, 12.0, 18.0, 24.0]);
            assert_eq!(ctx.dispatch_count(), before + 3, "fused: {fused}");
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let cpu = Device::Cpu;
        let y = Tensor::zeros(&[2, 3], &cpu).unwrap();
        let x = Tensor::zeros(&[3, 2], &cpu).unwrap();
        let one = Tensor::scalar(1.0, &cpu).unwrap();
        let two = Tensor::zeros(&[2], &cpu).unwrap();
        assert!(matches!(
            y.axpy(1.0, &x),
            Err(Error::ShapeMismatch { op: "axpy", .. })
        ));
        assert!(matches!(
            y.axpby(1.0, 2.0, &x),
            Err(Error::ShapeMismatch { op: "axpby", .. })
        ));
        assert!(matches!(
            y.axpy_ratio(&one, &one, 1.0, &x),
            Err(Error::ShapeMismatch {
                op: "axpy_ratio",
                ..
            })
        ));
        assert!(matches!(
            y.axpy(&two, &y),
            Err(Error::ShapeMismatch { op: "axpy", .. })
        ));
        assert!(matches!(
            y.axpby(&two, 1.0, &y),
            Err(Error::ShapeMismatch { op: "axpby", .. })
        ));
        assert!(matches!(
            y.axpy_ratio(&one, &two, 1.0, &y),
            Err(Error::ShapeMismatch {
                op: "axpy_ratio",
                ..
            })
        ));
        let y64 = y.to_dtype(DType::F64).unwrap();
        assert!(matches!(
            y64.axpy(&one, &y64),
            Err(Error::DTypeMismatch { op: "axpy", .. })
        ));
        assert!(matches!(
            y.axpy(1.0, &y64),
            Err(Error::DTypeMismatch { op: "axpy", .. })
        ));
        if let Some(gpu) = gpu_or_skip() {
            let g = Tensor::zeros(&[2, 3], &gpu).unwrap();
            let gs = Tensor::scalar(2.0, &gpu).unwrap();
            let g2 = Tensor::zeros(&[2], &gpu).unwrap();
            assert!(matches!(
                g.axpy(&one, &g),
                Err(Error::DeviceMismatch { op: "axpy", .. })
            ));
            assert!(matches!(
                g.axpby(&gs, &one, &g),
                Err(Error::DeviceMismatch { op: "axpby", .. })
            ));
            assert!(matches!(
                g.axpy_ratio(&gs, &one, 1.0, &g),
                Err(Error::DeviceMismatch {
                    op: "axpy_ratio",
                    ..
                })
            ));
            assert!(matches!(
                g.axpy(1.0, &y),
                Err(Error::DeviceMismatch { op: "axpy", .. })
            ));
            assert!(matches!(
                g.axpy(&g2, &g),
                Err(Error::ShapeMismatch { op: "axpy", .. })
            ));
            assert!(matches!(
                y.axpy(&gs, &y),
                Err(Error::DeviceMismatch { op: "axpy", .. })
            ));
        }
    }
}
