//! The GPU side of the losses (`ops/loss.rs`), two variants:
//! - `loss/row_per_workgroup` ([`workgroup::ROW_PER_WORKGROUP`], for GPUs): a row shared
//!   by up to a whole workgroup, so wide rows and few rows still fill a GPU;
//! - `loss/row_per_invocation` ([`ROW_PER_INVOCATION`], `shaders/loss.wgsl`, for CPU
//!   adapters): one row per invocation, no barrier but the batch sum's.
//!
//! Cross-entropy is the inner loss of data hyper-cleaning, evaluated at every inner step,
//! so it is fused: one dispatch computes each row's log-sum-exp, picks the label's
//! logit, weights it and reduces the batch (with `row_per_invocation`, a second,
//! one-workgroup dispatch finishes large batches).

pub(crate) mod workgroup;

use super::reduce::sum_partials_gpu;
use super::unary::unary_gpu;
use crate::backend::gpu::fusion;
use crate::backend::gpu::registry::{self, Variant};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::backend::{Coef, UnaryOp};
use crate::error::Result;

/// What a loss variant gives the dispatch code: its entry points, with the parameters
/// and bindings of `shaders/loss.wgsl`.
pub(crate) struct Plan {
    log_softmax: Kernel,
    cross_entropy: Kernel,
    /// The cross-entropy's gradient with respect to the logits (`ce_grad`).
    ce_grad: Kernel,
    /// Its vector–Jacobian product (`ce_grad_vjp`; one row per invocation in every
    /// variant, shaders/loss.wgsl).
    ce_grad_vjp: Kernel,
    /// Whether these are the kernels of [`workgroup`], whose dispatch rules differ.
    per_workgroup: bool,
}

pub(crate) static ROW_PER_INVOCATION: Variant<Plan> = Variant {
    name: "row_per_invocation",
    summary: "one row per invocation (an online softmax), no barrier but the batch sum's",
    requires: |facts| registry::workgroup(facts, WG, 4 * WG),
    suits: registry::everywhere,
    plan: Plan {
        log_softmax: Kernel {
            shader: &shaders::LOSS,
            entry: "log_softmax",
            reads: 1,
            writes: 1,
        },
        cross_entropy: Kernel {
            shader: &shaders::LOSS,
            entry: "cross_entropy",
            reads: 3,
            writes: 1,
        },
        ce_grad: Kernel {
            shader: &shaders::LOSS,
            entry: "ce_grad",
            reads: 4,
            writes: 1,
        },
        ce_grad_vjp: CE_GRAD_VJP,
        per_workgroup: false,
    },
};

/// `ce_grad_vjp`, shared by the variants: second-order products through the
/// cross-entropy are rarer than its value and gradient, so one row-per-invocation kernel
/// serves both.
pub(super) const CE_GRAD_VJP: Kernel = Kernel {
    shader: &shaders::LOSS,
    entry: "ce_grad_vjp",
    reads: 6,
    writes: 2,
};

/// Invocations per workgroup of the loss kernels (a multiple of 8, as `cross_entropy` requires).
const WG: u32 = 64;
/// Fewest rows an invocation of `cross_entropy` takes before another workgroup (and
/// with it a finishing dispatch) is worth it: one workgroup covers 1,024 rows.
const CE_MIN_ROWS: u64 = 16;
/// At most this many partial losses, finished by one workgroup of `reduce::full`.
const CE_MAX_GROUPS: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32,
    c: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CeParams {
    n: u32,
    c: u32,
    scale: f32,
    _pad: u32,
}
pub(crate) fn log_softmax_gpu(z: &GpuBuffer, rows: usize, c: usize) -> Result<GpuBuffer> {
    let ctx = &z.ctx;
    let plan = &ctx.variant(&registry::LOSS).plan;
    if plan.per_workgroup {
        return workgroup::log_softmax(plan, z, rows, c);
    }
    let y = ctx.alloc((rows * c * 4) as u64)?;
    let params = RowParams {
        rows: rows as u32,
        c: c as u32,
        _pad: [0; 2],
    };
    ctx.dispatch(
        &plan.log_softmax,
        &[("WG", f64::from(WG))],
        bytemuck::bytes_of(&params),
        &[z, &y],
        ctx.grid(rows as u64, u64::from(WG))?,
    )?;
    Ok(y)
}

/// Softmax of `rows` rows of `c`: the log-softmax kernel followed by exp (the same two
/// dispatches the composition would cost).
pub(crate) fn softmax_gpu(z: &GpuBuffer, rows: usize, c: usize) -> Result<GpuBuffer> {
    let log_p = log_softmax_gpu(z, rows, c)?;
    unary_gpu(UnaryOp::Exp, &log_p, rows * c, 0.0, 0.0)
}

pub(crate) fn cross_entropy_gpu(
    z: &GpuBuffer,
    n: usize,
    c: usize,
    labels: &GpuBuffer,
    weights: Option<&GpuBuffer>,
) -> Result<GpuBuffer> {
    let ctx = &z.ctx;
    let plan = &ctx.variant(&registry::LOSS).plan;
    if plan.per_workgroup {
        return workgroup::cross_entropy(plan, z, n, c, labels, weights);
    }
    let groups = (n as u64)
        .div_ceil(u64::from(WG) * CE_MIN_ROWS)
        .clamp(1, CE_MAX_GROUPS) as u32;
    let scale = (1.0 / n as f64) as f32;
    let out = ctx.alloc(u64::from(groups) * 4)?;
    let params = CeParams {
        n: n as u32,
        c: c as u32,
        scale: if groups == 1 { scale } else { 1.0 },
        _pad: 0,
    };
    ctx.dispatch(
        &plan.cross_entropy,
        &[
            ("WG", f64::from(WG)),
            ("WEIGHTED", f64::from(u8::from(weights.is_some()))),
        ],
        bytemuck::bytes_of(&params),
        &[z, labels, weights.unwrap_or(labels), &out],
        [groups, 1, 1],
    )?;
    if groups == 1 {
        return Ok(out);
    }
    sum_partials_gpu(&out, groups as usize, scale)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GradParams {
    rows: u32,
    c: u32,
    scale: f32,
    _pad: u32,
}

/// `g · (w_i/n) · (softmax(z_i) − onehot(y_i))` for the `n` rows of `c` logits: the
/// gradient of the (weighted) mean cross-entropy times the upstream gradient `g`, a
/// host value or a one-element device buffer, in one dispatch.
pub(crate) fn ce_grad_gpu(
    z: &GpuBuffer,
    n: usize,
    c: usize,
    labels: &GpuBuffer,
    weights: Option<&GpuBuffer>,
    upstream: Coef<'_, GpuBuffer>,
) -> Result<GpuBuffer> {
    let ctx = &z.ctx;
    let plan = &ctx.variant(&registry::LOSS).plan;
    let dz = ctx.alloc((n * c * 4) as u64)?;
    let inv_n = 1.0 / n.max(1) as f64;
    // Unused bindings are bound to the labels: read-only, never read by the kernel.
    let (scale, g) = match upstream {
        Coef::Host(v) => (v * inv_n, None),
        Coef::Device(b) => (inv_n, Some(b)),
    };
    let params = GradParams {
        rows: n as u32,
        c: c as u32,
        scale: scale as f32,
        _pad: 0,
    };
    let (tpr, rows_per_group, wg) = if plan.per_workgroup {
        let tpr = workgroup::tpr(c);
        (tpr, workgroup::WG / tpr, workgroup::WG)
    } else {
        (1, WG, WG)
    };
    let mut constants = vec![
        ("WG", f64::from(wg)),
        ("WEIGHTED", f64::from(u8::from(weights.is_some()))),
        ("UPSTREAM", f64::from(u8::from(g.is_some()))),
    ];
    if plan.per_workgroup {
        constants.push(("TPR", f64::from(tpr)));
    }
    ctx.dispatch(
        &plan.ce_grad,
        &constants,
        bytemuck::bytes_of(&params),
        &[
            z,
            labels,
            weights.unwrap_or(labels),
            g.unwrap_or(labels),
            &dz,
        ],
        ctx.grid(n as u64, u64::from(rows_per_group))?,
    )?;
    Ok(dz)
}

/// The vector–Jacobian product of [`ce_grad_gpu`]'s output with `u` (`[n, c]`): the
/// logits' part and the per-row r_i = ⟨p_i − onehot_i, u_i⟩, in one dispatch.
pub(crate) fn ce_grad_vjp_gpu(
    z: &GpuBuffer,
    n: usize,
    c: usize,
    labels: &GpuBuffer,
    weights: Option<&GpuBuffer>,
    upstream: Coef<'_, GpuBuffer>,
    u: &GpuBuffer,
) -> Result<(GpuBuffer, GpuBuffer)> {
    let ctx = &z.ctx;
    let plan = &ctx.variant(&registry::LOSS).plan;
    // u = m + bias (a deferred sum, bias broadcast over rows): the kernel adds the bias
    // as it reads m, saving the dispatch that would compute u.
    let split = ctx.fusion().then(|| fusion::split_row_bias(u, c)).flatten();
    let (u, bias) = match &split {
        Some((m, bias)) => (m, Some(bias)),
        None => (u, None),
    };
    let dz = ctx.alloc((n * c * 4) as u64)?;
    let r = ctx.alloc((n * 4) as u64)?;
    let inv_n = 1.0 / n.max(1) as f64;
    let (scale, g) = match upstream {
        Coef::Host(v) => (v * inv_n, None),
        Coef::Device(b) => (inv_n, Some(b)),
    };
    let params = GradParams {
        rows: n as u32,
        c: c as u32,
        scale: scale as f32,
        _pad: 0,
    };
    ctx.dispatch(
        &plan.ce_grad_vjp,
        &[
            ("WG", f64::from(WG)),
            ("WEIGHTED", f64::from(u8::from(weights.is_some()))),
            ("UPSTREAM", f64::from(u8::from(g.is_some()))),
            ("BIAS", f64::from(u8::from(bias.is_some()))),
        ],
        bytemuck::bytes_of(&params),
        &[
            z,
            labels,
            weights.unwrap_or(labels),
            g.unwrap_or(labels),
            u,
            bias.unwrap_or(labels),
            &dz,
            &r,
        ],
        ctx.grid(n as u64, u64::from(WG))?,
    )?;
    Ok((dz, r))
}
