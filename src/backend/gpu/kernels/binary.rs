//! The GPU side of the binary ops and `broadcast_to` (`ops/binary.rs`, `ops/shape.rs`):
//! one dispatch of the `elementwise` family's binary kernel (`kernels/elementwise.rs`;
//! `shaders/binary.wgsl`), which indexes same-shape operands, a scalar on either side, or
//! general broadcasting up to [`MAX_RANK`] dimensions.

use super::elementwise::WG;
use crate::backend::gpu::GpuBuffer;
use crate::backend::gpu::fusion::{self, FusedOp};
use crate::backend::gpu::registry;
use crate::backend::{BinaryOp, broadcast_strides, numel};
use crate::error::{Result, invalid};
/// Highest rank the GPU kernel's general broadcasting path indexes.
pub(crate) const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    n4: u32,
    rank: u32,
    _pad: u32,
    shape: [u32; MAX_RANK],
    stride_a: [u32; MAX_RANK],
    stride_b: [u32; MAX_RANK],
}

/// `op` of `a` and `b` broadcast to `out`.
pub(crate) fn binary_gpu(
    op: BinaryOp,
    a: &GpuBuffer,
    a_shape: &[usize],
    b: &GpuBuffer,
    b_shape: &[usize],
    out: &[usize],
) -> Result<GpuBuffer> {
    // Equal shapes, a one-element operand, or one broadcast over a contiguous block of
    // dimensions (a bias over rows, a weight per row): the op joins a fused kernel
    // (`fusion.rs`).
    // A product with a constant 1 (an autodiff seed, times a gradient) is its other
    // operand: nothing to compute, and nothing that a kernel must bind.
    if a.ctx.fusion() && op == BinaryOp::Mul {
        if a_shape == out && fusion::constant(b) == Some(1.0) {
            return Ok(a.share());
        }
        if b_shape == out && fusion::constant(a) == Some(1.0) {
            return Ok(b.share());
        }
    }
    if a.ctx.fusion()
        && let (Some(sa), Some(sb)) = (fused_read(a_shape, out), fused_read(b_shape, out))
    {
        let n = numel(out);
        return fusion::defer_strided(&a.ctx, FusedOp::Binary(op), &[a, b], &[sa, sb], [0.0; 2], n);
    }
    dispatch(op as u32, a, a_shape, b, b_shape, out)
}

/// `x` copied out to the broadcast shape `out`.
pub(crate) fn broadcast_gpu(x: &GpuBuffer, x_shape: &[usize], out: &[usize]) -> Result<GpuBuffer> {
    if x.ctx.fusion()
        && let Some(st) = fused_read(x_shape, out)
    {
        return fusion::defer_strided(&x.ctx, FusedOp::Splat, &[x], &[st], [0.0; 2], numel(out));
    }
    dispatch(OP_FIRST, x, x_shape, x, x_shape, out)
}

/// The kernel's `OP` value that returns its left operand: broadcasting as a copy.
const OP_FIRST: u32 = 11;
/// The kernel's `MODE` values: how it indexes its operands (see the shader).
const MODE_SAME: u32 = 0;
const MODE_SCALAR_A: u32 = 1;
const MODE_SCALAR_B: u32 = 2;
const MODE_STRIDED: u32 = 3;

/// The codes above as the WGSL constants of `//#include op_codes` (`backend/gpu/codes.rs`).
pub(crate) const CODES: &[(&str, u32)] = &[
    ("BINARY_FIRST", OP_FIRST),
    ("MODE_SAME", MODE_SAME),
    ("MODE_SCALAR_A", MODE_SCALAR_A),
    ("MODE_SCALAR_B", MODE_SCALAR_B),
    ("MODE_STRIDED", MODE_STRIDED),
];

/// `op_index` is the kernel's `OP` constant: a [`BinaryOp`] or [`OP_FIRST`].
fn dispatch(
    op_index: u32,
    a: &GpuBuffer,
    a_shape: &[usize],
    b: &GpuBuffer,
    b_shape: &[usize],
    out: &[usize],
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let n = numel(out);
    let y = ctx.alloc((n * 4) as u64)?;
    let n4 = n.div_ceil(4);
    let mut params = Params {
        n: n as u32,
        n4: n4 as u32,
        rank: out.len() as u32,
        _pad: 0,
        shape: [1; MAX_RANK],
        stride_a: [0; MAX_RANK],
        stride_b: [0; MAX_RANK],
    };
    let mode = if a_shape == out && b_shape == out {
        MODE_SAME
    } else if numel(a_shape) == 1 && b_shape == out {
        MODE_SCALAR_A
    } else if numel(b_shape) == 1 && a_shape == out {
        MODE_SCALAR_B
    } else {
        if out.len() > MAX_RANK {
            return Err(invalid(
                "binary op",
                format!(
                    "GPU broadcasting supports rank ≤ {MAX_RANK}, got output shape {out:?}; reshape to fewer dimensions"
                ),
            ));
        }
        let (sa, sb) = (
            broadcast_strides(a_shape, out),
            broadcast_strides(b_shape, out),
        );
        for d in 0..out.len() {
            params.shape[d] = out[d] as u32;
            params.stride_a[d] = sa[d] as u32;
            params.stride_b[d] = sb[d] as u32;
        }
        MODE_STRIDED
    };
    ctx.dispatch(
        &ctx.variant(&registry::ELEMENTWISE).plan.binary,
        &[
            ("OP", f64::from(op_index)),
            ("MODE", f64::from(mode)),
            ("WG", f64::from(WG)),
        ],
        bytemuck::bytes_of(&params),
        &[a, b, &y],
        ctx.grid(n4 as u64, u64::from(WG))?,
    )?;
    Ok(y)
}

/// How a fused kernel reads an operand of `shape` broadcast to `out`: `Some(None)` as
/// is (the same shape, or one element), `Some(Some(stride))` through a block stride,
/// `None` if it cannot (broadcast over dimensions that are not one block: this
/// kernel's strided path).
fn fused_read(shape: &[usize], out: &[usize]) -> Option<Option<fusion::Stride>> {
    if shape == out || numel(shape) == 1 {
        return Some(None);
    }
    fusion::block_stride(shape, out).map(Some)
}
