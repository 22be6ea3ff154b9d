//! `fill`: writes one 32-bit pattern into a whole GPU buffer (zeros, ones, NaN poison),
//! with the `elementwise` family's fill kernel (`kernels/elementwise.rs`;
//! `shaders/fill.wgsl`). The CPU backend needs no kernel for this (`vec![v; n]`).

use super::elementwise::WG;
use std::sync::Arc;

use crate::backend::gpu::fusion::{self, FusedOp};
use crate::backend::gpu::registry;
use crate::backend::gpu::{GpuBuffer, GpuContext};
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n4: u32,
    bits: u32,
}

/// `n` elements equal to `value`, as a deferred op of a fused kernel (`fusion.rs`):
/// a constant costs no dispatch of its own.
pub(crate) fn fill_gpu(ctx: &Arc<GpuContext>, n: usize, value: f32) -> Result<GpuBuffer> {
    fusion::defer(ctx, FusedOp::Fill, &[], [value, 0.0], n)
}

/// Fills every element of `buf` (including its vec4 padding) with `bits`.
pub(crate) fn fill_gpu_bits(buf: &GpuBuffer, bits: u32) -> Result<()> {
    let n4 = buf.bytes().div_ceil(16).max(1);
    let ctx = &buf.ctx;
    let grid = ctx.grid(n4, u64::from(WG))?;
    let params = Params {
        n4: n4 as u32,
        bits,
    };
    ctx.dispatch(
        &ctx.variant(&registry::ELEMENTWISE).plan.fill,
        &[("WG", f64::from(WG))],
        bytemuck::bytes_of(&params),
        &[buf],
        grid,
    )
}
