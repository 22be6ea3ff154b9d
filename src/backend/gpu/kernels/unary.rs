//! The GPU side of the unary ops (`ops/unary.rs`): one dispatch of the `elementwise`
//! family's unary kernel (`kernels/elementwise.rs`; `shaders/unary.wgsl`).

use super::elementwise::WG;
use crate::backend::UnaryOp;
use crate::backend::gpu::GpuBuffer;
use crate::backend::gpu::fusion::{self, FusedOp};
use crate::backend::gpu::registry;
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n4: u32,
    _pad: u32,
    a: f32,
    b: f32,
}

pub(crate) fn unary_gpu(op: UnaryOp, x: &GpuBuffer, n: usize, a: f32, b: f32) -> Result<GpuBuffer> {
    let ctx = &x.ctx;
    if ctx.fusion() {
        return fusion::defer(ctx, FusedOp::Unary(op), &[x], [a, b], n);
    }
    let y = ctx.alloc((n * 4) as u64)?;
    let n4 = n.div_ceil(4) as u64;
    let params = Params {
        n4: n4 as u32,
        _pad: 0,
        a,
        b,
    };
    ctx.dispatch(
        &ctx.variant(&registry::ELEMENTWISE).plan.unary,
        &[("OP", f64::from(op as u32)), ("WG", f64::from(WG))],
        bytemuck::bytes_of(&params),
        &[x, &y],
        ctx.grid(n4, u64::from(WG))?,
    )?;
    Ok(y)
}
