//! The GPU side of the fused updates (`ops/update.rs`): one dispatch of
//! `shaders/update.wgsl`, which reads device scalars (and forms CG's ratio) itself.

use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::backend::{Coef, Coefs};
use crate::error::Result;

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

/// `b·y + a·x` over `n` elements, with each device scalar read by the kernel.
pub(crate) fn update_gpu(
    y: &GpuBuffer,
    x: &GpuBuffer,
    n: usize,
    coefs: Coefs<'_, GpuBuffer>,
) -> Result<GpuBuffer> {
    let ctx = &y.ctx;
    // Unused scalar slots are bound to y: read-only, never read by the kernel.
    let (a_src, b_src, a, b, s0, s1) = match coefs {
        Coefs::Linear { b, a } => {
            let (a_src, a_val, s0) = match a {
                Coef::Host(v) => (0u32, v, y),
                Coef::Device(t) => (1, 1.0, t),
            };
            let (b_src, b_val, s1) = match b {
                Coef::Host(v) => (0u32, v, y),
                Coef::Device(t) => (1, 0.0, t),
            };
            (a_src, b_src, a_val, b_val, s0, s1)
        }
        Coefs::Ratio { sign, num, den } => (2, 0, sign, 1.0, num, den),
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
