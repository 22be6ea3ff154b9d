//! Where a tensor's elements are, and the one place that picks a backend for them.

use super::DType;
use crate::backend::cpu::CpuBuf;
use crate::backend::gpu::GpuBuffer;
use crate::backend::{AxisOp, BinaryOp, FullOp, UnaryOp, cpu, gpu};
use crate::device::Device;
use crate::error::{Error, Result};

/// Where a tensor's elements are.
pub(crate) enum Storage {
    F32(CpuBuf<f32>),
    F64(CpuBuf<f64>),
    Gpu(GpuBuffer),
}

impl Storage {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) | Storage::Gpu(_) => DType::F32,
            Storage::F64(_) => DType::F64,
        }
    }

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

// ---- unary -------------------------------------------------------------------------

impl Storage {
    /// `op` applied to each of the `n` elements; `a`, `b` are [`UnaryOp::ScaleShift`]'s.
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
            (Storage::Gpu(x), Storage::Gpu(y)) => {
                Storage::Gpu(gpu::kernels::reduce::full_gpu(op, x, y, n, scale as f32)?)
            }
            (a, b) => return Err(mismatch(name, a, b)),
        })
    }

    /// `op` over the middle axis of `self` viewed as `[outer, len, inner]`; sums are
    /// multiplied by `scale`.
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
    pub(crate) fn slice(&self, start: usize, end: usize) -> Result<Storage> {
        Ok(match self {
            Storage::F32(v) => Storage::F32(CpuBuf::from(v[start..end].to_vec())),
            Storage::F64(v) => Storage::F64(CpuBuf::from(v[start..end].to_vec())),
            Storage::Gpu(b) => Storage::Gpu(gpu::kernels::index::slice_gpu(b, start, end - start)?),
        })
    }
}
