//! `loss/row_per_workgroup` ([`ROW_PER_WORKGROUP`], `shaders/loss_workgroup.wgsl`): the
//! softmax losses for GPUs. Each row gets a segment of `TPR` lanes, a power of two
//! chosen per call from the row length (about 2 vec4s per lane, up to a whole workgroup
//! of [`WG`]), so a [64, 4096] batch runs 64 workgroups of 256 lanes rather than 64
//! lanes, and narrow rows (TPR = 1) are one row per lane, as `row_per_invocation` does.
//! Cross-entropy finishes its batch sum in the same dispatch (the last workgroup adds
//! the partials, through the scratch of `reduce/workgroup.rs`).
//!
//! The lanes of a row combine through a tree in workgroup memory (no subgroup
//! operations): a row's max and Σ exp are one merge per tree level, a few per kernel.

use super::Plan;
use crate::backend::gpu::kernels::reduce::workgroup::{MAX_GROUPS, scratch};
use crate::backend::gpu::registry::{self, Variant};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::Result;

/// Lanes per workgroup.
pub(super) const WG: u32 = 256;
/// Workgroup memory: a (max, Σ exp) pair and a partial loss per lane.
const SHARED_BYTES: u32 = 12 * WG;
/// Vec4s of a row per lane that TPR aims for: two loads in flight per lane, and rows of
/// up to 8 floats stay one lane's.
const VEC4_PER_LANE: usize = 2;

pub(crate) static ROW_PER_WORKGROUP: Variant<Plan> = Variant {
    name: "row_per_workgroup",
    summary: "a row per segment of up to 256 lanes (max and Σ exp merged by a tree); one dispatch",
    requires: |facts| registry::workgroup(facts, WG, SHARED_BYTES),
    suits: |facts| facts.device_type != wgpu::DeviceType::Cpu,
    plan: Plan {
        log_softmax: Kernel {
            shader: &shaders::LOSS_WORKGROUP,
            entry: "log_softmax",
            reads: 1,
            writes: 1,
        },
        cross_entropy: Kernel {
            shader: &shaders::LOSS_WORKGROUP,
            entry: "cross_entropy",
            reads: 3,
            writes: 2,
        },
        ce_grad: Kernel {
            shader: &shaders::LOSS_WORKGROUP,
            entry: "ce_grad",
            reads: 4,
            writes: 1,
        },
        ce_grad_vjp: super::CE_GRAD_VJP,
        per_workgroup: true,
    },
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CeParams {
    n: u32,
    c: u32,
    scale: f32,
    rounds: u32,
}

/// Lanes per row of `c` floats (a row spans up to c / 4 + 1 vec4s, wherever it starts).
pub(super) fn tpr(c: usize) -> u32 {
    ((c / 4 + 1).div_ceil(VEC4_PER_LANE).next_power_of_two() as u32).clamp(1, WG)
}

pub(super) fn log_softmax(
    plan: &'static Plan,
    z: &GpuBuffer,
    rows: usize,
    c: usize,
) -> Result<GpuBuffer> {
    let ctx = &z.ctx;
    let y = ctx.alloc((rows * c * 4) as u64)?;
    let tpr = tpr(c);
    let params = super::RowParams {
        rows: rows as u32,
        c: c as u32,
        _pad: [0; 2],
    };
    ctx.dispatch(
        &plan.log_softmax,
        &[("WG", f64::from(WG)), ("TPR", f64::from(tpr))],
        bytemuck::bytes_of(&params),
        &[z, &y],
        ctx.grid(rows as u64, u64::from(WG / tpr))?,
    )?;
    Ok(y)
}

pub(super) fn cross_entropy(
    plan: &'static Plan,
    z: &GpuBuffer,
    n: usize,
    c: usize,
    labels: &GpuBuffer,
    weights: Option<&GpuBuffer>,
) -> Result<GpuBuffer> {
    let ctx = &z.ctx;
    let tpr = tpr(c);
    let per_group = (WG / tpr) as usize;
    let groups = n.div_ceil(per_group).clamp(1, MAX_GROUPS as usize);
    let out = ctx.alloc(4)?;
    let params = CeParams {
        n: n as u32,
        c: c as u32,
        scale: (1.0 / n as f64) as f32,
        rounds: n.div_ceil(per_group * groups) as u32,
    };
    let scratch = scratch(ctx);
    ctx.dispatch(
        &plan.cross_entropy,
        &[
            ("WG", f64::from(WG)),
            ("TPR", f64::from(tpr)),
            ("WEIGHTED", f64::from(u8::from(weights.is_some()))),
        ],
        bytemuck::bytes_of(&params),
        &[z, labels, weights.unwrap_or(labels), &out, &scratch],
        [groups as u32, 1, 1],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_per_row_follow_the_row_length() {
        assert_eq!(tpr(1), 1);
        assert_eq!(tpr(7), 1);
        assert_eq!(tpr(10), 2);
        assert_eq!(tpr(37), 8);
        assert_eq!(tpr(4096), 256);
        assert_eq!(tpr(1 << 20), 256);
    }
}
