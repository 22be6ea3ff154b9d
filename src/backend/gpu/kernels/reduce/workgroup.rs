//! `reduce/subgroup` ([`SUBGROUP`], `shaders/reduce_subgroup.wgsl`) and `reduce/tree`
//! ([`TREE`], `shaders/reduce_tree.wgsl`): the reductions designed for GPUs. Both run
//! the kernels of `shaders/common/reduce_workgroup.wgsl`; they differ only in how the
//! lanes of a workgroup combine their values: subgroup shuffles then a short tree in
//! workgroup memory, or a tree in workgroup memory throughout, for adapters without
//! subgroups. Two variants rather than one with a fallback inside, so that both are
//! forced and tested on lavapipe (which has subgroups) and the registry, not the
//! kernel, decides which runs.
//!
//! - A full reduction is ONE dispatch of up to [`MAX_GROUPS`] workgroups of [`WG`]
//!   lanes striding over the whole buffer with vec4 loads; the last workgroup to finish
//!   adds the workgroups' partials (`common/grid_sum.wgsl`), through a small scratch
//!   buffer kept per context ([`scratch`]), so a full reduction costs one dependent
//!   dispatch instead of two (7-9 µs each on a discrete GPU).
//! - An axis reduction gives each output a segment of `TPR` lanes (a power of two): up
//!   to a whole workgroup along a contiguous row, up to [`COL_MAX_TPR`] rows of a column
//!   block (lanes of neighbouring segments read neighbouring columns, so that a
//!   subgroup of 32 reads 4 columns × 8 rows of 64 contiguous bytes). Few long axes are
//!   split into chunks across workgroups until about [`TARGET_LANES`] lanes are busy,
//!   each split costing a second, small dispatch over the partials.
//!
//! Accuracy: f32 accumulators of at most [`MAX_LANE_TERMS`] vec4s (rows) or rows (cols)
//! each, then trees: a 16M-element sum adds 32 vec4s per lane.

use std::sync::{Arc, Mutex, Weak};

use super::{Plan, Shape};
use crate::backend::gpu::registry::{self, AdapterFacts, Variant};
use crate::backend::gpu::shaders::{self, Shader};
use crate::backend::gpu::{GpuBuffer, GpuContext, Kernel};
use crate::backend::{AxisOp, FullOp};
use crate::error::Result;

/// Lanes per workgroup: 8 subgroups of 32 on NVIDIA, 4 of 64 on AMD; enough loads in
/// flight per workgroup to hide memory latency.
pub(crate) const WG: u32 = 256;
/// Most workgroups of a full reduction: 2048 × 256 lanes is about two waves on a
/// 132-SM GPU, and the last workgroup adds at most 8 partials per lane.
pub(crate) const MAX_GROUPS: u32 = 2048;
/// Fewest vec4s (rows, chunk rows) per lane before another workgroup is worth its
/// share of the trees.
const MIN_LANE_TERMS: usize = 8;
/// Most terms one lane's f32 accumulators add (the rest goes to more splits).
const MAX_LANE_TERMS: usize = 4096;
/// Lanes an axis reduction aims to keep busy before it splits its axis (a large GPU
/// holds ~270K resident lanes; half of that hides memory latency well).
const TARGET_LANES: usize = 1 << 17;
/// Inputs smaller than this are not split for parallelism: the second dispatch would
/// cost more than the lanes it adds save.
const SPLIT_MIN_ELEMS: usize = 1 << 16;
/// Most lanes per column block in `cols` (see the module documentation).
const COL_MAX_TPR: usize = 8;

/// Workgroup memory: one vec4 per lane for the tree.
const SHARED_BYTES: u32 = 16 * WG;

const fn plan(shader: &'static Shader, subgroups: bool) -> Plan {
    Plan {
        full: Kernel {
            shader,
            entry: "full",
            reads: 2,
            writes: 2,
        },
        rows: Kernel {
            shader,
            entry: "rows",
            reads: 1,
            writes: 1,
        },
        cols: Kernel {
            shader,
            entry: "cols",
            reads: 1,
            writes: 1,
        },
        shape: Shape::Workgroup { subgroups },
    }
}

pub(crate) static SUBGROUP: Variant<Plan> = Variant {
    name: "subgroup",
    summary: "256-lane workgroups, coalesced vec4 loads, subgroup shuffles; full sums in one dispatch",
    requires: requires_subgroups,
    suits: |facts| facts.device_type != wgpu::DeviceType::Cpu,
    plan: plan(&shaders::REDUCE_SUBGROUP, true),
};

pub(crate) static TREE: Variant<Plan> = Variant {
    name: "tree",
    summary: "256-lane workgroups, coalesced vec4 loads, trees in workgroup memory; full sums in one dispatch",
    requires: |facts| registry::workgroup(facts, WG, SHARED_BYTES),
    suits: |facts| facts.device_type != wgpu::DeviceType::Cpu,
    plan: plan(&shaders::REDUCE_TREE, false),
};

fn requires_subgroups(facts: &AdapterFacts) -> std::result::Result<(), String> {
    if !facts.features.contains(wgpu::Features::SUBGROUP) {
        return Err("needs the SUBGROUP feature".into());
    }
    match facts.subgroup_sizes {
        // Subgroups must tile the workgroup, and the butterfly works in aligned groups
        // of the smallest size.
        Some((min, max)) if min.is_power_of_two() && max.is_power_of_two() && max <= WG => {}
        Some((min, max)) => {
            return Err(format!(
                "needs power-of-two subgroup sizes of at most {WG} lanes (the adapter's: {min}..{max})"
            ));
        }
        None => return Err("needs subgroup sizes the adapter reports".into()),
    }
    registry::workgroup(facts, WG, SHARED_BYTES)
}

/// The override constants of a dispatch.
fn constants(
    subgroups: bool,
    facts: &AdapterFacts,
    tpr: u32,
    op: u32,
    maximum: bool,
    vec: u32,
) -> Vec<(&'static str, f64)> {
    let mut c = vec![
        ("WG", f64::from(WG)),
        ("TPR", f64::from(tpr)),
        ("OP", f64::from(op)),
        ("MAXIMUM", f64::from(u8::from(maximum))),
        ("VEC", f64::from(vec)),
    ];
    if subgroups {
        c.push(("SG_MIN", f64::from(sg_min(facts))));
    }
    c
}

/// The adapter's smallest subgroup size (`requires_subgroups` has checked it).
pub(crate) fn sg_min(facts: &AdapterFacts) -> u32 {
    facts.subgroup_sizes.map_or(1, |(min, _)| min.max(1))
}

// ---- the scratch of one-dispatch sums --------------------------------------------------

/// One scratch buffer per context: a counter of finished workgroups, 0 between
/// dispatches (wgpu zeroes a new buffer; the last workgroup of each dispatch resets
/// it), then [`MAX_GROUPS`] partials. Dispatches that use it are ordered by the barriers
/// wgpu puts between dispatches writing one buffer, so one buffer serves them all. It
/// lives here rather than in the context: only the kernels that need it know of it.
/// A `Weak` keeps a dead context's address from matching a new one.
static SCRATCH: Mutex<Vec<(Weak<GpuContext>, wgpu::Buffer)>> = Mutex::new(Vec::new());

/// The scratch buffer of `ctx` for `common/grid_sum.wgsl`, created on first use.
pub(crate) fn scratch(ctx: &Arc<GpuContext>) -> GpuBuffer {
    let mut list = SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|(owner, _)| owner.strong_count() > 0);
    let known = list
        .iter()
        .find(|(owner, _)| std::ptr::eq(owner.as_ptr(), Arc::as_ptr(ctx)));
    let buffer = match known {
        Some((_, b)) => b.clone(),
        None => {
            let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("blo grid_sum scratch"),
                size: 4 * (4 + u64::from(MAX_GROUPS)),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            list.push((Arc::downgrade(ctx), b.clone()));
            b
        }
    };
    GpuBuffer::borrowed(ctx.clone(), buffer)
}

// ---- full reductions ----------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FullParams {
    n: u32,
    nv: u32,
    scale: f32,
    _pad: u32,
}

/// Workgroups of a full reduction over `n` elements.
fn full_groups(n: usize) -> u32 {
    ((n / 4) as u64)
        .div_ceil(u64::from(WG) * MIN_LANE_TERMS as u64)
        .clamp(1, u64::from(MAX_GROUPS)) as u32
}

/// `scale · op(a, b)` over `n` elements into a new one-element buffer, in one dispatch.
pub(super) fn full(
    plan: &'static Plan,
    subgroups: bool,
    op: FullOp,
    a: &GpuBuffer,
    b: &GpuBuffer,
    n: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let out = ctx.alloc(4)?;
    let params = FullParams {
        n: n as u32,
        nv: (n / 4) as u32,
        scale,
        _pad: 0,
    };
    let scratch = scratch(ctx);
    ctx.dispatch(
        &plan.full,
        &constants(subgroups, ctx.facts(), WG, op as u32, false, 1),
        bytemuck::bytes_of(&params),
        &[a, b, &out, &scratch],
        [full_groups(n), 1, 1],
    )?;
    Ok(out)
}

// ---- axis reductions ----------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    splits: u32,
    chunk: u32,
    scale: f32,
    segments: u32,
    _pad: u32,
}

/// How an axis of `len` is split when `units` outputs (of `elems` input elements in all)
/// each get up to `max_lanes` lanes, a lane taking `per_lane` elements of the axis per
/// step: (splits, chunk length).
fn split(
    elems: usize,
    units: usize,
    len: usize,
    max_lanes: usize,
    per_lane: usize,
) -> (usize, usize) {
    if len == 0 {
        return (1, 0);
    }
    let lane_span = max_lanes * per_lane;
    let for_accuracy = len.div_ceil(lane_span * MAX_LANE_TERMS);
    let lanes = units * max_lanes.min(len.div_ceil(per_lane));
    let for_parallelism = if elems < SPLIT_MIN_ELEMS || lanes >= TARGET_LANES {
        1
    } else {
        TARGET_LANES
            .div_ceil(lanes)
            .min(len.div_ceil(lane_span * MIN_LANE_TERMS))
    };
    let splits = for_accuracy.max(for_parallelism).max(1);
    let chunk = len.div_ceil(splits);
    (len.div_ceil(chunk), chunk)
}

/// Lanes per row of `rows` for chunks of `chunk` floats: about 4 vec4s each, up to a
/// whole workgroup.
fn row_tpr(chunk: usize) -> u32 {
    ((chunk / 4 + 1).div_ceil(4).next_power_of_two() as u32).clamp(1, WG)
}

/// Lanes per column block of `cols`: enough for [`TARGET_LANES`] over `units` blocks, no
/// more than the chunk has rows for (about 4 each), at most [`COL_MAX_TPR`].
fn col_tpr(units: usize, chunk: usize) -> u32 {
    let wanted = TARGET_LANES.div_ceil(units.max(1));
    let useful = chunk.div_ceil(4);
    wanted.min(useful).clamp(1, COL_MAX_TPR).next_power_of_two() as u32
}

/// A reduction over the middle axis of `x` viewed as `[outer, len, inner]`, into a new
/// `[outer, inner]` buffer; split axes take one more dispatch per split level.
#[allow(
    clippy::too_many_arguments,
    reason = "the axis view and the variant's flags"
)]
pub(super) fn axis(
    plan: &'static Plan,
    subgroups: bool,
    op: AxisOp,
    x: &GpuBuffer,
    outer: usize,
    mut len: usize,
    inner: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    let ctx = x.ctx.clone();
    let maximum = op == AxisOp::Max;
    let mut owned: Option<GpuBuffer> = None;
    loop {
        let src = owned.as_ref().unwrap_or(x);
        let (kernel, vec, units, tpr, splits, chunk) = if inner == 1 {
            let (splits, chunk) = split(outer * len, outer, len, WG as usize, 4);
            (&plan.rows, 1, outer, row_tpr(chunk), splits, chunk)
        } else {
            let vec = if inner.is_multiple_of(4) { 4 } else { 1 };
            let units = outer * inner / vec;
            let (splits, chunk) = split(outer * len * inner, units, len, COL_MAX_TPR, 1);
            (&plan.cols, vec, units, col_tpr(units, chunk), splits, chunk)
        };
        let segments = units * splits;
        let out = ctx.alloc((outer * splits * inner * 4) as u64)?;
        let params = AxisParams {
            outer: outer as u32,
            len: len as u32,
            inner: inner as u32,
            splits: splits as u32,
            chunk: chunk as u32,
            scale: if splits == 1 { scale } else { 1.0 },
            segments: segments as u32,
            _pad: 0,
        };
        ctx.dispatch(
            kernel,
            &constants(subgroups, ctx.facts(), tpr, 0, maximum, vec as u32),
            bytemuck::bytes_of(&params),
            &[src, &out],
            ctx.grid(segments as u64, u64::from(WG / tpr))?,
        )?;
        if splits == 1 {
            return Ok(out);
        }
        owned = Some(out);
        len = splits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fill_a_gpu_and_bound_each_lane() {
        // Many short rows: no split, one lane per row.
        assert_eq!(split(1_000_000, 100_000, 10, WG as usize, 4), (1, 10));
        assert_eq!(row_tpr(10), 1);
        // Few long rows: split until ~128K lanes are busy, chunks of ≥ 8 vec4s per lane.
        let (splits, chunk) = split(1 << 24, 4, 1 << 22, WG as usize, 4);
        assert!(
            splits >= 64 && chunk * splits >= 1 << 22,
            "{splits} {chunk}"
        );
        assert_eq!(row_tpr(chunk), WG);
        // A small input is never split for parallelism.
        assert_eq!(split(10_006, 2, 5003, WG as usize, 4), (1, 5003));
        // Few columns down a long axis: split, and up to 8 lanes per column block.
        let (splits, chunk) = split(3 << 20, 1, 1 << 20, COL_MAX_TPR, 1);
        assert!(splits > 1 && chunk < 1 << 20);
        assert_eq!(col_tpr(1, chunk), 8);
        // Many columns: one lane each.
        assert_eq!(col_tpr(1 << 18, 1000), 1);
        assert_eq!(split(0, 7, 0, 8, 1), (1, 0));
        // Per-lane terms stay bounded whatever the shape.
        for (units, len) in [(1, 1usize << 27), (3, 1 << 25), (1 << 20, 100)] {
            let (_, chunk) = split(units * len, units, len, WG as usize, 4);
            assert!(chunk.div_ceil(4 * WG as usize) <= MAX_LANE_TERMS);
        }
        assert_eq!(full_groups(0), 1);
        assert_eq!(full_groups(1 << 24), MAX_GROUPS);
    }
}
