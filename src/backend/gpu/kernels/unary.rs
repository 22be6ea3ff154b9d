//! The GPU side of the unary ops (`ops/unary.rs`): one dispatch of `shaders/unary.wgsl`.

use crate::backend::UnaryOp;
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::Result;

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

pub(crate) fn unary_gpu(op: UnaryOp, x: &GpuBuffer, n: usize, a: f32, b: f32) -> Result<GpuBuffer> {
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
