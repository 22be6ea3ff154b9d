//! Fused updates, one dispatch each: `axpy` (y + a·x), `axpby` (b·y + a·x) and
//! `axpy_ratio` (y + sign·(num/den)·x), in `shaders/update.wgsl` on the GPU and
//! [`update_cpu`] on the CPU. They return a new tensor (tensors are immutable values).
//!
//! A coefficient is a [`Scalar`]: a host number, or a one-element tensor on the same
//! device. On the GPU a device scalar is read by the kernel itself, so a dot product
//! computed on the GPU scales a vector without a readback, and conjugate gradient's
//! α = rᵀr / pᵀAp never leaves the device ([`Tensor::axpy_ratio`]).

use crate::device::{GpuBuffer, Kernel};
use crate::error::{Error, Result};
use crate::shaders;
use crate::tensor::{Element, Storage, Tensor, same_place};

/// A coefficient of a fused update: a host number or a one-element tensor on the
/// device of the tensors it scales (read there, without a readback).
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    /// A value known on the host, passed to the kernel in its parameter block.
    Host(f64),
    /// A one-element tensor (any rank, usually 0-d) on the same device and with the same
    /// dtype as the operands.
    Device(&'a Tensor),
}

impl From<f64> for Scalar<'_> {
    fn from(v: f64) -> Self {
        Scalar::Host(v)
    }
}

impl From<f32> for Scalar<'_> {
    fn from(v: f32) -> Self {
        Scalar::Host(f64::from(v))
    }
}

impl<'a> From<&'a Tensor> for Scalar<'a> {
    fn from(t: &'a Tensor) -> Self {
        Scalar::Device(t)
    }
}

/// The coefficients of `out = b·y + a·x`. The ratio form has b = 1, which keeps the
/// kernel to two scalar bindings.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Coefs<'a> {
    /// `b·y + a·x`
    Linear { b: Scalar<'a>, a: Scalar<'a> },
    /// `y + sign·(num/den)·x`
    Ratio {
        sign: f64,
        num: &'a Tensor,
        den: &'a Tensor,
    },
}

static UPDATE: Kernel = Kernel {
    shader: &shaders::UPDATE,
    entry: "main",
    reads: 4,
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

/// CPU reference: `b·y + a·x` elementwise.
pub(crate) fn update_cpu<T: Element>(y: &[T], x: &[T], a: T, b: T) -> Vec<T> {
    y.iter().zip(x).map(|(&y, &x)| b * y + a * x).collect()
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

/// The value of a checked CPU scalar (no device involved, so no readback).
fn host_value(s: Scalar<'_>) -> Result<f64> {
    match s {
        Scalar::Host(v) => Ok(v),
        Scalar::Device(t) => t.to_scalar::<f64>(),
    }
}

fn update_gpu(y: &GpuBuffer, x: &GpuBuffer, n: usize, coefs: Coefs<'_>) -> Result<GpuBuffer> {
    let ctx = &y.ctx;
    fn buf(t: &Tensor) -> &GpuBuffer {
        t.gpu_buffer()
            .expect("check_scalar put every scalar on the operands' device")
    }
    // Unused scalar slots are bound to y: read-only, never read by the kernel.
    let (a_src, b_src, a, b, s0, s1) = match coefs {
        Coefs::Linear { b, a } => {
            let (a_src, a_val, s0) = match a {
                Scalar::Host(v) => (0u32, v, y),
                Scalar::Device(t) => (1, 1.0, buf(t)),
            };
            let (b_src, b_val, s1) = match b {
                Scalar::Host(v) => (0u32, v, y),
                Scalar::Device(t) => (1, 0.0, buf(t)),
            };
            (a_src, b_src, a_val, b_val, s0, s1)
        }
        Coefs::Ratio { sign, num, den } => (2, 0, sign, 1.0, buf(num), buf(den)),
    };
    let out = ctx.alloc((n * 4) as u64)?;
    let n4 = n.div_ceil(4);
    let params = Params {
        n4: n4 as u32,
        _pad: 0,
        a: a as f32,
        b: b as f32,
    };
    ctx.dispatch(
        &UPDATE,
        &[
            ("A_SRC", f64::from(a_src)),
            ("B_SRC", f64::from(b_src)),
            ("WG", f64::from(WG)),
        ],
        bytemuck::bytes_of(&params),
        &[y, x, s0, s1, &out],
        ctx.grid(n4 as u64, u64::from(WG))?,
    )?;
    Ok(out)
}

/// `out = b·y + a·x` with the coefficients of `coefs`, in one dispatch on the GPU.
pub(crate) fn update_raw(
    op: &'static str,
    y: &Tensor,
    coefs: Coefs<'_>,
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
    let scalars: [Option<&Tensor>; 2] = match coefs {
        Coefs::Linear { b, a } => [b, a].map(|s| match s {
            Scalar::Device(t) => Some(t),
            Scalar::Host(_) => None,
        }),
        Coefs::Ratio { num, den, .. } => [Some(num), Some(den)],
    };
    for s in scalars.into_iter().flatten() {
        check_scalar(op, y, s)?;
    }
    let cpu_coefs = || -> Result<(f64, f64)> {
        match coefs {
            Coefs::Linear { b, a } => Ok((host_value(a)?, host_value(b)?)),
            Coefs::Ratio { sign, num, den } => Ok((
                sign * num.to_scalar::<f64>()? / den.to_scalar::<f64>()?,
                1.0,
            )),
        }
    };
    let storage = match (&*y.storage, &*x.storage) {
        (Storage::F32(yv), Storage::F32(xv)) => {
            let (a, b) = cpu_coefs()?;
            Storage::F32(update_cpu(yv, xv, a as f32, b as f32))
        }
        (Storage::F64(yv), Storage::F64(xv)) => {
            let (a, b) = cpu_coefs()?;
            Storage::F64(update_cpu(yv, xv, a, b))
        }
        (Storage::Gpu(yb), Storage::Gpu(xb)) => Storage::Gpu(update_gpu(yb, xb, y.numel(), coefs)?),
        _ => unreachable!("same_place checked device and dtype"),
    };
    Ok(Tensor::from_storage(storage, y.shape()))
}

impl Tensor {
    /// `self + a·x` in one pass (one dispatch on the GPU). `a` is a host number or a
    /// one-element tensor on the same device; `x` must have the shape of `self`.
    pub fn axpy<'a>(&self, a: impl Into<Scalar<'a>>, x: &Tensor) -> Result<Tensor> {
        let coefs = Coefs::Linear {
            b: Scalar::Host(1.0),
            a: a.into(),
        };
        update_raw("axpy", self, coefs, x)
    }

    /// `b·self + a·x` in one pass (one dispatch on the GPU). `a` and `b` are host numbers
    /// or one-element tensors on the same device; `x` must have the shape of `self`.
    pub fn axpby<'a, 'b>(
        &self,
        b: impl Into<Scalar<'b>>,
        a: impl Into<Scalar<'a>>,
        x: &Tensor,
    ) -> Result<Tensor> {
        let coefs = Coefs::Linear {
            b: b.into(),
            a: a.into(),
        };
        update_raw("axpby", self, coefs, x)
    }

    /// `self + sign·(num/den)·x` in one pass, where `num` and `den` are one-element
    /// tensors on the same device (on the GPU the ratio is formed by the kernel, so it
    /// never leaves the device): conjugate gradient's `x + α p` and `r − α Ap` with
    /// `α = rᵀr / pᵀAp`. A zero `den` gives inf or NaN, as the division would.
    pub fn axpy_ratio(&self, num: &Tensor, den: &Tensor, sign: f64, x: &Tensor) -> Result<Tensor> {
        update_raw("axpy_ratio", self, Coefs::Ratio { sign, num, den }, x)
    }
}
