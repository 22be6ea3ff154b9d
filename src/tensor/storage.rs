//! Where a tensor's elements are, and the one place that picks a backend for them.

use super::{DType, Element};
use crate::backend::cpu::CpuBuf;
use crate::backend::gpu::GpuBuffer;
use crate::backend::gpu::kernels::matmul::GpuPlan;
use crate::backend::{AxisOp, BinaryOp, Coefs, FullOp, MatmulDims, UnaryOp, cpu, gpu};
use crate::device::Device;
use crate::error::{Error, Result};

/// Where a tensor's elements are.
pub(crate) enum Storage {
    F32(CpuBuf<f32>),
    F64(CpuBuf<f64>),
    Gpu(GpuBuffer),
}

impl Storage {
    #[inline]
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) | Storage::Gpu(_) => DType::F32,
            Storage::F64(_) => DType::F64,
        }
    }

    #[inline]
    pub(crate) fn device(&self) -> Device {
        match self {
            Storage::F32(_) | Storage::F64(_) => Device::Cpu,
            Storage::Gpu(b) => Device::Gpu(b.ctx.clone()),
        }
    }
}

/// The error for operands of `op` on different devices or of different dtypes. The ops
/// check this first (`same_place`), naming their operands; the backends' arms reach it
/// only through an op that forgot to.
fn mismatch(op: &'static str, a: &Storage, b: &Storage) -> Error {
    let (da, db) = (a.device(), b.device());
    if da != db {
        Error::DeviceMismatch {
            op,
            lhs: da.to_string(),
            rhs: db.to_string(),
        }
    } else {
        Error::DTypeMismatch {
            op,
            lhs: a.dtype(),
            rhs: b.dtype(),
        }
    }
}

// ---- host transfers and conversions -------------------------------------------------

impl Storage {
    /// `data` on `device`; `op` names the caller in the error for f64 data on a GPU.
    pub(crate) fn from_host<T: Element>(
        op: &'static str,
        data: Vec<T>,
        device: &Device,
    ) -> Result<Storage> {
        Ok(match (T::DTYPE, device) {
            (DType::F32, Device::Cpu) => Storage::F32(CpuBuf::aligned(bytemuck::cast_vec(data))),
            (DType::F64, Device::Cpu) => Storage::F64(CpuBuf::aligned(bytemuck::cast_vec(data))),
            (DType::F32, Device::Gpu(ctx)) => {
                Storage::Gpu(ctx.upload(bytemuck::cast_slice(&data))?)
            }
            (DType::F64, Device::Gpu(_)) => {
                return Err(Error::UnsupportedDType {
                    op,
                    dtype: DType::F64,
                    device: device.to_string(),
                });
            }
        })
    }

    /// `n` f32 elements equal to `value` on `device`: a fill kernel on the GPU, not an
    /// upload.
    pub(crate) fn full_f32(n: usize, value: f32, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => {
                let mut v = crate::backend::try_host_vec("full", n)?;
                v.resize(n, value);
                Storage::from_host("full", v, device)
            }
            Device::Gpu(ctx) if ctx.fusion() => {
                Ok(Storage::Gpu(gpu::kernels::fill::fill_gpu(ctx, n, value)?))
            }
            Device::Gpu(ctx) => {
                // n was checked: n · 8 bytes fit in an isize, so n · 4 cannot overflow.
                let buf = ctx.alloc((n * 4) as u64)?;
                gpu::kernels::fill::fill_gpu_bits(&buf, value.to_bits())?;
                Ok(Storage::Gpu(buf))
            }
        }
    }

    /// The `n` elements on the host, converted to `T`. On the GPU this submits pending
    /// work and waits for it.
    pub(crate) fn to_host<T: Element>(&self, n: usize) -> Result<Vec<T>> {
        Ok(match self {
            Storage::F32(v) => v.iter().map(|&x| T::of(f64::from(x))).collect(),
            Storage::F64(v) => v.iter().map(|&x| T::of(x)).collect(),
            Storage::Gpu(b) => {
                let bytes = b.ctx.read(b, (n * 4) as u64)?;
                bytemuck::pod_collect_to_vec::<u8, f32>(&bytes)
                    .into_iter()
                    .map(|x| T::of(f64::from(x)))
                    .collect()
            }
        })
    }

    /// A copy of the `n` elements on `device` (f64 stays on the CPU).
    pub(crate) fn to_device(&self, n: usize, device: &Device) -> Result<Storage> {
        match (self, device) {
            (Storage::F32(v), _) => Storage::from_host("to_device", v.to_vec(), device),
            (Storage::F64(v), _) => Storage::from_host("to_device", v.to_vec(), device),
            (Storage::Gpu(_), _) => {
                Storage::from_host("to_device", self.to_host::<f32>(n)?, device)
            }
        }
    }

    /// The values converted to `dtype`, which must differ from the storage's: f32 and
    /// f64 on the CPU convert both ways; a GPU holds f32 only.
    pub(crate) fn to_dtype(&self, dtype: DType) -> Result<Storage> {
        match (self, dtype) {
            (Storage::F32(v), DType::F64) => Ok(Storage::F64(
                v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>().into(),
            )),
            (Storage::F64(v), DType::F32) => Ok(Storage::F32(
                v.iter().map(|&x| x as f32).collect::<Vec<_>>().into(),
            )),
            _ => Err(Error::UnsupportedDType {
                op: "to_dtype",
                dtype,
                device: self.device().to_string(),
            }),
        }
    }

    /// The elements, for f32 storage on the CPU.
    fn f32s(&self) -> Option<&[f32]> {
        match self {
            Storage::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements, for f64 storage on the CPU.
    fn f64s(&self) -> Option<&[f64]> {
        match self {
            Storage::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The GPU buffer, for storage on a GPU.
    pub(crate) fn gpu_buffer(&self) -> Option<&GpuBuffer> {
        match self {
            Storage::Gpu(b) => Some(b),
            _ => None,
        }
    }
}

// The routers are marked #[inline]: the CPU backend's small ops cost ~55 ns each, and
// an out-of-line call through here measured 7 ns more of that (`blo bench`'s
// dispatch_overhead on the CPU, 64-element scale_shift chains).

// ---- unary -------------------------------------------------------------------------

impl Storage {
    /// `op` applied to each of the `n` elements; `a`, `b` are [`UnaryOp::ScaleShift`]'s.
    #[inline]
    pub(crate) fn unary(&self, op: UnaryOp, n: usize, a: f64, b: f64) -> Result<Storage> {
        Ok(match self {
            Storage::F32(v) => Storage::F32(CpuBuf::from(cpu::unary::unary_cpu(op, v, a, b))),
            Storage::F64(v) => Storage::F64(CpuBuf::from(cpu::unary::unary_cpu(op, v, a, b))),
            Storage::Gpu(buf) => Storage::Gpu(gpu::kernels::unary::unary_gpu(
                op, buf, n, a as f32, b as f32,
            )?),
        })
    }
}

// ---- binary ------------------------------------------------------------------------

impl Storage {
    /// `op` of `self` (shaped `a_shape`) and `rhs` (`b_shape`) broadcast to `out`.
    #[inline]
    pub(crate) fn binary(
        &self,
        name: &'static str,
        op: BinaryOp,
        rhs: &Storage,
        a_shape: &[usize],
        b_shape: &[usize],
        out: &[usize],
    ) -> Result<Storage> {
        use cpu::binary::binary_cpu_op;
        Ok(match (self, rhs) {
            (Storage::F32(x), Storage::F32(y)) => {
                Storage::F32(CpuBuf::from(binary_cpu_op(op, x, a_shape, y, b_shape, out)))
            }
            (Storage::F64(x), Storage::F64(y)) => {
                Storage::F64(CpuBuf::from(binary_cpu_op(op, x, a_shape, y, b_shape, out)))
            }
            (Storage::Gpu(x), Storage::Gpu(y)) => Storage::Gpu(gpu::kernels::binary::binary_gpu(
                op, x, a_shape, y, b_shape, out,
            )?),
            (a, b) => return Err(mismatch(name, a, b)),
        })
    }

    /// `self` (shaped `shape`) copied out to its broadcast shape `out`.
    #[inline]
    pub(crate) fn broadcast_to(&self, shape: &[usize], out: &[usize]) -> Result<Storage> {
        use cpu::binary::broadcast_cpu;
        Ok(match self {
            Storage::F32(v) => Storage::F32(CpuBuf::from(broadcast_cpu(v, shape, out))),
            Storage::F64(v) => Storage::F64(CpuBuf::from(broadcast_cpu(v, shape, out))),
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::binary::broadcast_gpu(b, shape, out)?),
        })
    }
}

// ---- reduce ------------------------------------------------------------------------

impl Storage {
    /// `scale · Σ op(a_i, b_i)` over the `n` elements of `self` (and `rhs`, read by
    /// [`FullOp::Dot`] and [`FullOp::SqDiff`]), as one element.
    #[inline]
    pub(crate) fn reduce_full(
        &self,
        name: &'static str,
        op: FullOp,
        rhs: &Storage,
        n: usize,
        scale: f64,
    ) -> Result<Storage> {
        use cpu::reduce::full_cpu;
        Ok(match (self, rhs) {
            (Storage::F32(x), Storage::F32(y)) => {
                Storage::F32(CpuBuf::from(vec![full_cpu(op, x, y, scale)]))
            }
            (Storage::F64(x), Storage::F64(y)) => {
                Storage::F64(CpuBuf::from(vec![full_cpu(op, x, y, scale)]))
            }
            (Storage::Gpu(x), Storage::Gpu(y)) if x.ctx.fusion() => {
                Storage::Gpu(gpu::fusion::defer_reduce(op, x, y, scale as f32)?)
            }
            (Storage::Gpu(x), Storage::Gpu(y)) => {
                Storage::Gpu(gpu::kernels::reduce::full_gpu(op, x, y, n, scale as f32)?)
            }
            (a, b) => return Err(mismatch(name, a, b)),
        })
    }

    /// `op` over the middle axis of `self` viewed as `[outer, len, inner]`; sums are
    /// multiplied by `scale`.
    #[inline]
    pub(crate) fn reduce_axis(
        &self,
        op: AxisOp,
        outer: usize,
        len: usize,
        inner: usize,
        scale: f64,
    ) -> Result<Storage> {
        use cpu::reduce::axis_cpu;
        Ok(match self {
            Storage::F32(v) => {
                Storage::F32(CpuBuf::from(axis_cpu(op, v, outer, len, inner, scale)))
            }
            Storage::F64(v) => {
                Storage::F64(CpuBuf::from(axis_cpu(op, v, outer, len, inner, scale)))
            }
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::reduce::axis_gpu(
                op,
                b,
                outer,
                len,
                inner,
                scale as f32,
            )?),
        })
    }
}

// ---- index -------------------------------------------------------------------------

impl Storage {
    /// One-hot rows `[n, classes]` (`total` elements) of the labels in `self`.
    #[inline]
    pub(crate) fn one_hot(&self, n: usize, classes: usize, total: usize) -> Result<Storage> {
        use cpu::index::one_hot_cpu;
        debug_assert_eq!(total, n * classes);
        Ok(match self {
            Storage::F32(v) => Storage::F32(CpuBuf::from(one_hot_cpu(v, classes)?)),
            Storage::F64(v) => Storage::F64(CpuBuf::from(one_hot_cpu(v, classes)?)),
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::index::one_hot_gpu(b, n, classes)?),
        })
    }

    /// `self[i, labels[i]]` for the `n` rows of `self` (`[n, classes]`).
    #[inline]
    pub(crate) fn gather(&self, labels: &Storage, n: usize, classes: usize) -> Result<Storage> {
        use cpu::index::gather_cpu;
        Ok(match (self, labels) {
            (Storage::F32(v), Storage::F32(l)) => {
                Storage::F32(CpuBuf::from(gather_cpu(v, l, classes)?))
            }
            (Storage::F64(v), Storage::F64(l)) => {
                Storage::F64(CpuBuf::from(gather_cpu(v, l, classes)?))
            }
            (Storage::Gpu(v), Storage::Gpu(l)) => {
                Storage::Gpu(gpu::kernels::index::gather_gpu(v, l, n, classes)?)
            }
            (a, b) => return Err(mismatch("gather", a, b)),
        })
    }

    /// `[batch, rows, cols]` → `[batch, cols, rows]`.
    #[inline]
    pub(crate) fn transpose(&self, batch: usize, rows: usize, cols: usize) -> Result<Storage> {
        use cpu::index::transpose_cpu;
        Ok(match self {
            Storage::F32(v) => Storage::F32(CpuBuf::from(transpose_cpu(v, batch, rows, cols))),
            Storage::F64(v) => Storage::F64(CpuBuf::from(transpose_cpu(v, batch, rows, cols))),
            Storage::Gpu(b) => {
                Storage::Gpu(gpu::kernels::index::transpose_gpu(b, batch, rows, cols)?)
            }
        })
    }

    /// The elements of `parts` (at least one, `total` elements in all) one after another.
    #[inline]
    pub(crate) fn concat<'a>(
        parts: impl Iterator<Item = &'a Storage> + Clone,
        total: usize,
    ) -> Result<Storage> {
        use cpu::index::concat_cpu;
        let mut rest = parts.clone();
        let Some(first) = rest.next() else {
            return Err(crate::error::invalid("concat", "needs at least one part"));
        };
        if let Some(other) =
            rest.find(|p| p.dtype() != first.dtype() || p.device() != first.device())
        {
            return Err(mismatch("concat", first, other));
        }
        Ok(match first {
            Storage::F32(_) => Storage::F32(CpuBuf::from(concat_cpu(
                parts.filter_map(|p| match p {
                    Storage::F32(v) => Some(&v[..]),
                    _ => None,
                }),
                total,
            ))),
            Storage::F64(_) => Storage::F64(CpuBuf::from(concat_cpu(
                parts.filter_map(|p| match p {
                    Storage::F64(v) => Some(&v[..]),
                    _ => None,
                }),
                total,
            ))),
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::index::concat_gpu(
                b,
                parts.filter_map(|p| match p {
                    Storage::Gpu(g) => Some(g),
                    _ => None,
                }),
                total,
            )?),
        })
    }

    /// Elements `[start, end)`.
    #[inline]
    pub(crate) fn slice(&self, start: usize, end: usize) -> Result<Storage> {
        Ok(match self {
            Storage::F32(v) => Storage::F32(CpuBuf::from(cpu::index::copy_cpu(&v[start..end]))),
            Storage::F64(v) => Storage::F64(CpuBuf::from(cpu::index::copy_cpu(&v[start..end]))),
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::index::slice_gpu(b, start, end - start)?),
        })
    }
}

// ---- loss --------------------------------------------------------------------------

impl Storage {
    /// Log-softmax of `rows` rows of `c` elements.
    #[inline]
    pub(crate) fn log_softmax(&self, rows: usize, c: usize) -> Result<Storage> {
        use cpu::loss::log_softmax_cpu;
        Ok(match self {
            Storage::F32(v) if c > 0 => Storage::F32(CpuBuf::from(log_softmax_cpu(v, c))),
            Storage::F64(v) if c > 0 => Storage::F64(CpuBuf::from(log_softmax_cpu(v, c))),
            Storage::F32(_) => Storage::F32(CpuBuf::from(Vec::new())),
            Storage::F64(_) => Storage::F64(CpuBuf::from(Vec::new())),
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::loss::log_softmax_gpu(b, rows, c)?),
        })
    }

    /// Softmax of `rows` rows of `c` elements.
    #[inline]
    pub(crate) fn softmax(&self, rows: usize, c: usize) -> Result<Storage> {
        use cpu::loss::softmax_cpu;
        Ok(match self {
            Storage::F32(v) if c > 0 => Storage::F32(CpuBuf::from(softmax_cpu(v, c))),
            Storage::F64(v) if c > 0 => Storage::F64(CpuBuf::from(softmax_cpu(v, c))),
            Storage::F32(_) => Storage::F32(CpuBuf::from(Vec::new())),
            Storage::F64(_) => Storage::F64(CpuBuf::from(Vec::new())),
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::loss::softmax_gpu(b, rows, c)?),
        })
    }

    /// Mean (optionally weighted) cross-entropy of the logits `[n, c]` in `self`.
    #[inline]
    pub(crate) fn cross_entropy(
        &self,
        labels: &Storage,
        weights: Option<&Storage>,
        n: usize,
        c: usize,
    ) -> Result<Storage> {
        use cpu::loss::cross_entropy_cpu;
        use gpu::kernels::loss::cross_entropy_gpu;
        const OP: &str = "cross_entropy";
        Ok(match (self, labels, weights) {
            (Storage::F32(z), Storage::F32(y), None) => {
                Storage::F32(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, None)?]))
            }
            (Storage::F32(z), Storage::F32(y), Some(Storage::F32(w))) => {
                Storage::F32(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, Some(w))?]))
            }
            (Storage::F64(z), Storage::F64(y), None) => {
                Storage::F64(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, None)?]))
            }
            (Storage::F64(z), Storage::F64(y), Some(Storage::F64(w))) => {
                Storage::F64(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, Some(w))?]))
            }
            // Deferred with fusion on: an inner step's loss value is never read, so its
            // kernel never runs.
            (Storage::Gpu(z), Storage::Gpu(y), None) if z.ctx.fusion() => {
                Storage::Gpu(gpu::fusion::defer_kernel(&[z, y], 4, move |b| {
                    cross_entropy_gpu(&b[0], n, c, &b[1], None)
                })?)
            }
            (Storage::Gpu(z), Storage::Gpu(y), Some(Storage::Gpu(w))) if z.ctx.fusion() => {
                Storage::Gpu(gpu::fusion::defer_kernel(&[z, y, w], 4, move |b| {
                    cross_entropy_gpu(&b[0], n, c, &b[1], Some(&b[2]))
                })?)
            }
            (Storage::Gpu(z), Storage::Gpu(y), None) => {
                Storage::Gpu(cross_entropy_gpu(z, n, c, y, None)?)
            }
            (Storage::Gpu(z), Storage::Gpu(y), Some(Storage::Gpu(w))) => {
                Storage::Gpu(cross_entropy_gpu(z, n, c, y, Some(w))?)
            }
            (z, y, w) => return Err(mismatch(OP, z, odd_one(z, y, w))),
        })
    }

    /// The cross-entropy's gradient with respect to the logits `[n, c]` in `self`, times
    /// the one-element upstream gradient: `g · (w_i/n) · (softmax(z_i) − onehot(y_i))`.
    /// `probs` is softmax(z) where the forward pass kept it (the CPU's).
    pub(crate) fn cross_entropy_grad(
        &self,
        labels: &Storage,
        weights: Option<&Storage>,
        probs: Option<&Storage>,
        upstream: &Storage,
        n: usize,
        c: usize,
    ) -> Result<Storage> {
        use crate::backend::Coef;
        use cpu::loss::ce_grad_cpu;
        const OP: &str = "cross_entropy";
        Ok(match (self, labels, upstream) {
            (Storage::F32(z), Storage::F32(y), Storage::F32(g))
                if weights.is_none_or(|w| w.f32s().is_some()) =>
            {
                let w = weights.and_then(Storage::f32s);
                let p = probs.and_then(Storage::f32s);
                Storage::F32(CpuBuf::from(ce_grad_cpu(z, c, y, w, p, g[0])?))
            }
            (Storage::F64(z), Storage::F64(y), Storage::F64(g))
                if weights.is_none_or(|w| w.f64s().is_some()) =>
            {
                let w = weights.and_then(Storage::f64s);
                let p = probs.and_then(Storage::f64s);
                Storage::F64(CpuBuf::from(ce_grad_cpu(z, c, y, w, p, g[0])?))
            }
            (Storage::Gpu(z), Storage::Gpu(y), Storage::Gpu(g))
                if weights.is_none_or(|w| w.gpu_buffer().is_some()) =>
            {
                let w = weights.and_then(Storage::gpu_buffer);
                // A constant upstream gradient (the seed of a first-order backward) is a
                // kernel parameter, not a buffer to compute and bind.
                let upstream = match gpu::fusion::constant(g) {
                    Some(v) => Coef::Host(f64::from(v)),
                    None => Coef::Device(g),
                };
                Storage::Gpu(gpu::kernels::loss::ce_grad_gpu(z, n, c, y, w, upstream)?)
            }
            (z, y, g) => {
                let odd = if g.dtype() == z.dtype() && g.device() == z.device() {
                    odd_one(z, y, weights)
                } else {
                    g
                };
                return Err(mismatch(OP, z, odd));
            }
        })
    }

    /// The vector–Jacobian product of [`Self::cross_entropy_grad`] with `u` (shaped like
    /// the logits): (s_i·p_i ⊙ (u_i − ⟨p_i, u_i⟩), r_i = ⟨p_i − onehot_i, u_i⟩) with
    /// p = softmax(z) and s_i = g·w_i/n.
    pub(crate) fn cross_entropy_grad_vjp(
        &self,
        labels: &Storage,
        weights: Option<&Storage>,
        upstream: &Storage,
        u: &Storage,
        n: usize,
        c: usize,
    ) -> Result<(Storage, Storage)> {
        use crate::backend::Coef;
        use cpu::loss::ce_grad_vjp_cpu;
        const OP: &str = "cross_entropy";
        Ok(match (self, labels, upstream, u) {
            (Storage::F32(z), Storage::F32(y), Storage::F32(g), Storage::F32(u))
                if weights.is_none_or(|w| w.f32s().is_some()) =>
            {
                let (d, r) = ce_grad_vjp_cpu(z, c, y, weights.and_then(Storage::f32s), g[0], u)?;
                (Storage::F32(d.into()), Storage::F32(r.into()))
            }
            (Storage::F64(z), Storage::F64(y), Storage::F64(g), Storage::F64(u))
                if weights.is_none_or(|w| w.f64s().is_some()) =>
            {
                let (d, r) = ce_grad_vjp_cpu(z, c, y, weights.and_then(Storage::f64s), g[0], u)?;
                (Storage::F64(d.into()), Storage::F64(r.into()))
            }
            (Storage::Gpu(z), Storage::Gpu(y), Storage::Gpu(g), Storage::Gpu(u))
                if weights.is_none_or(|w| w.gpu_buffer().is_some()) =>
            {
                let w = weights.and_then(Storage::gpu_buffer);
                let upstream = match gpu::fusion::constant(g) {
                    Some(v) => Coef::Host(f64::from(v)),
                    None => Coef::Device(g),
                };
                let (d, r) = gpu::kernels::loss::ce_grad_vjp_gpu(z, n, c, y, w, upstream, u)?;
                (Storage::Gpu(d), Storage::Gpu(r))
            }
            (z, y, g, u) => {
                let odd = [g, u]
                    .into_iter()
                    .find(|s| s.dtype() != z.dtype() || s.device() != z.device())
                    .unwrap_or_else(|| odd_one(z, y, weights));
                return Err(mismatch(OP, z, odd));
            }
        })
    }

    /// The CPU's fused cross-entropy that also returns softmax(logits) from the same
    /// exps; `None` on the GPU, or for operands that do not fit (the plain op reports).
    #[inline]
    pub(crate) fn cross_entropy_with_probs(
        &self,
        labels: &Storage,
        weights: Option<&Storage>,
        c: usize,
    ) -> Option<Result<(Storage, Storage)>> {
        use cpu::loss::ce_probs_cpu;
        Some(match (self, labels, weights) {
            (Storage::F32(z), Storage::F32(y), None) => ce_probs_cpu(z, c, y, None)
                .map(|(l, p)| (Storage::F32(vec![l].into()), Storage::F32(p.into()))),
            (Storage::F32(z), Storage::F32(y), Some(Storage::F32(w))) => {
                ce_probs_cpu(z, c, y, Some(w))
                    .map(|(l, p)| (Storage::F32(vec![l].into()), Storage::F32(p.into())))
            }
            (Storage::F64(z), Storage::F64(y), None) => ce_probs_cpu(z, c, y, None)
                .map(|(l, p)| (Storage::F64(vec![l].into()), Storage::F64(p.into()))),
            (Storage::F64(z), Storage::F64(y), Some(Storage::F64(w))) => {
                ce_probs_cpu(z, c, y, Some(w))
                    .map(|(l, p)| (Storage::F64(vec![l].into()), Storage::F64(p.into())))
            }
            _ => return None,
        })
    }
}

/// The operand among `y` and `w` that does not match `z`'s device or dtype (for an
/// error message; `y` when both do).
fn odd_one<'a>(z: &Storage, y: &'a Storage, w: Option<&'a Storage>) -> &'a Storage {
    match w {
        Some(w) if y.dtype() == z.dtype() && y.device() == z.device() => w,
        _ => y,
    }
}

// ---- update ------------------------------------------------------------------------

impl Storage {
    /// `b·self + a·x` over `n` elements with the coefficients of `coefs`, whose device
    /// scalars must be one-element storages like `self`'s.
    #[inline]
    pub(crate) fn update(
        &self,
        name: &'static str,
        x: &Storage,
        n: usize,
        coefs: Coefs<'_, Storage>,
    ) -> Result<Storage> {
        use cpu::update::{host_coefs, update_cpu};
        let odd = || {
            let scalars = coefs.scalars().into_iter().flatten();
            let other = scalars
                .chain([x])
                .find(|s| s.dtype() != self.dtype() || s.device() != self.device());
            mismatch(name, self, other.unwrap_or(x))
        };
        Ok(match (self, x) {
            (Storage::F32(yv), Storage::F32(xv)) => {
                let c = coefs.try_map(|s| match s {
                    Storage::F32(v) => Some(v),
                    _ => None,
                });
                let (a, b) = host_coefs(c.ok_or_else(odd)?, |v| f64::from(v[0]));
                Storage::F32(CpuBuf::from(update_cpu(yv, xv, a as f32, b as f32)))
            }
            (Storage::F64(yv), Storage::F64(xv)) => {
                let c = coefs.try_map(|s| match s {
                    Storage::F64(v) => Some(v),
                    _ => None,
                });
                let (a, b) = host_coefs(c.ok_or_else(odd)?, |v| v[0]);
                Storage::F64(CpuBuf::from(update_cpu(yv, xv, a, b)))
            }
            (Storage::Gpu(yb), Storage::Gpu(xb)) => {
                let c = coefs.try_map(|s| match s {
                    Storage::Gpu(b) => Some(b),
                    _ => None,
                });
                Storage::Gpu(gpu::kernels::update::update_gpu(
                    yb,
                    xb,
                    n,
                    c.ok_or_else(odd)?,
                )?)
            }
            _ => return Err(odd()),
        })
    }
}

// ---- matmul ------------------------------------------------------------------------

impl Storage {
    /// `op(self) · op(rhs)` with the shapes of `d`; `plan` says how the GPU runs it.
    #[inline]
    pub(crate) fn matmul(
        &self,
        rhs: &Storage,
        d: &MatmulDims,
        trans_a: bool,
        trans_b: bool,
        plan: GpuPlan,
    ) -> Result<Storage> {
        use cpu::matmul::matmul_cpu;
        Ok(match (self, rhs) {
            (Storage::F32(x), Storage::F32(y)) => {
                Storage::F32(CpuBuf::from(matmul_cpu(x, y, d, trans_a, trans_b)))
            }
            (Storage::F64(x), Storage::F64(y)) => {
                Storage::F64(CpuBuf::from(matmul_cpu(x, y, d, trans_a, trans_b)))
            }
            (Storage::Gpu(x), Storage::Gpu(y)) => Storage::Gpu(gpu::kernels::matmul::matmul_gpu(
                x, y, d, trans_a, trans_b, plan,
            )?),
            (a, b) => return Err(mismatch("matmul", a, b)),
        })
    }
}
