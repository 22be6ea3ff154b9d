//! The GPU side of the fused updates (`ops/update.rs`): one variant, `update/vec4`
//! ([`VEC4`], `shaders/update.wgsl`), one dispatch that reads device scalars (and forms
//! CG's ratio) itself.

use crate::backend::gpu::fusion::{self, CoefSource, FusedOp};
use crate::backend::gpu::registry::{self, Variant};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::backend::{Coef, Coefs};
use crate::error::Result;

/// What an update variant gives the dispatch code: its entry point, with the parameters
/// and bindings of `shaders/update.wgsl`.
pub(crate) struct Plan {
    main: Kernel,
}

pub(crate) static VEC4: Variant<Plan> = Variant {
    name: "vec4",
    summary: "four elements per invocation, device scalars read in the kernel",
    requires: |facts| registry::workgroup(facts, WG, 0),
    suits: registry::everywhere,
    plan: Plan {
        main: Kernel {
            shader: &shaders::UPDATE,
            entry: "main",
            reads: 4,
            writes: 1,
        },
    },
};

const WG: u32 = 256;

/// Where the kernel takes a coefficient from (its `A_SRC` and `B_SRC` constants).
const COEF_HOST: u32 = 0;
const COEF_DEVICE: u32 = 1;
/// `A_SRC` only: the ratio of the two device scalars.
const COEF_RATIO: u32 = 2;

/// The codes above as the WGSL constants of `//#include op_codes` (`backend/gpu/codes.rs`).
pub(crate) const CODES: &[(&str, u32)] = &[
    ("COEF_HOST", COEF_HOST),
    ("COEF_DEVICE", COEF_DEVICE),
    ("COEF_RATIO", COEF_RATIO),
];

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
    if ctx.fusion() {
        return defer_update(y, x, n, coefs);
    }
    // Unused scalar slots are bound to y: read-only, never read by the kernel.
    let (a_src, b_src, a, b, s0, s1) = match coefs {
        Coefs::Linear { b, a } => {
            let (a_src, a_val, s0) = match a {
                Coef::Host(v) => (COEF_HOST, v, y),
                Coef::Device(t) => (COEF_DEVICE, 1.0, t),
            };
            let (b_src, b_val, s1) = match b {
                Coef::Host(v) => (COEF_HOST, v, y),
                Coef::Device(t) => (COEF_DEVICE, 0.0, t),
            };
            (a_src, b_src, a_val, b_val, s0, s1)
        }
        Coefs::Ratio { sign, num, den } => (COEF_RATIO, COEF_HOST, sign, 1.0, num, den),
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
        &ctx.variant(&registry::UPDATE).plan.main,
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

/// The update as a deferred op of a fused kernel (`fusion.rs`).
fn defer_update<'a>(
    y: &'a GpuBuffer,
    x: &'a GpuBuffer,
    n: usize,
    coefs: Coefs<'a, GpuBuffer>,
) -> Result<GpuBuffer> {
    let mut operands = vec![y, x];
    let source = |c: Coef<'a, GpuBuffer>, operands: &mut Vec<&'a GpuBuffer>| match c {
        Coef::Host(v) => (CoefSource::Host, v as f32),
        Coef::Device(t) => {
            operands.push(t);
            (CoefSource::Device, 1.0)
        }
    };
    let (op, scalars) = match coefs {
        Coefs::Linear { b, a } => {
            let (a_src, a_val) = source(a, &mut operands);
            let (b_src, b_val) = source(b, &mut operands);
            (FusedOp::Update { a: a_src, b: b_src }, [a_val, b_val])
        }
        Coefs::Ratio { sign, num, den } => {
            operands.push(num);
            operands.push(den);
            let op = FusedOp::Update {
                a: CoefSource::Ratio,
                b: CoefSource::Host,
            };
            (op, [sign as f32, 1.0])
        }
    };
    fusion::defer(&y.ctx, op, &operands, scalars, n)
}
