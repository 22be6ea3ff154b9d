//! The GPU side of the reductions (`ops/reduce.rs`), three variants:
//! - `reduce/subgroup` and `reduce/tree` ([`workgroup`], for GPUs): workgroups whose
//!   lanes cooperate on coalesced vec4 loads, a full reduction in one dispatch;
//! - `reduce/one_barrier` ([`ONE_BARRIER`], `shaders/reduce.wgsl`, for CPU adapters):
//!   per-invocation accumulators, then one barrier and one invocation adding the
//!   workgroup's partials, since barriers are what costs on CPU adapters.
//!
//! Accuracy: the GPU accumulates in f32, but no accumulator adds more than a few
//! thousand terms (strided runs per invocation, then a tree; axis reductions are split
//! into chunks whose partial sums are reduced again), so even a 16M-element sum stays
//! within 1e-4 relative of an f64 sum.

pub(crate) mod workgroup;

use crate::backend::gpu::registry::{self, Variant};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::backend::{AxisOp, FullOp};
use crate::error::Result;

/// What a reduction variant gives the dispatch code: its entry points, with the
/// parameters and bindings of `shaders/reduce.wgsl`.
pub(crate) struct Plan {
    /// A whole buffer (or the product of two) to one partial per workgroup.
    full: Kernel,
    /// An axis with inner = 1 (contiguous).
    rows: Kernel,
    /// An axis read along a stride.
    cols: Kernel,
    /// Whether these are the workgroup kernels of [`workgroup`] (with subgroups or
    /// not), whose dispatch rules differ.
    shape: Shape,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    OneBarrier,
    Workgroup { subgroups: bool },
}

pub(crate) static ONE_BARRIER: Variant<Plan> = Variant {
    name: "one_barrier",
    summary: "strided per-invocation sums, one barrier, one invocation adds the workgroup",
    requires: |facts| registry::workgroup(facts, FULL_WG.max(AXIS_WG), 4 * FULL_WG),
    suits: registry::everywhere,
    plan: Plan {
        full: Kernel {
            shader: &shaders::REDUCE,
            entry: "full",
            reads: 2,
            writes: 1,
        },
        rows: Kernel {
            shader: &shaders::REDUCE,
            entry: "rows",
            reads: 1,
            writes: 1,
        },
        cols: Kernel {
            shader: &shaders::REDUCE,
            entry: "cols",
            reads: 1,
            writes: 1,
        },
        shape: Shape::OneBarrier,
    },
};

/// Invocations per workgroup of `full` (a multiple of 8, as the kernel requires).
const FULL_WG: u32 = 256;
/// At most this many partial sums, so the finishing dispatch is one workgroup whose
/// invocations add at most a handful each.
const FULL_MAX_GROUPS: u64 = 1024;
/// Fewest vec4s an invocation of `full` accumulates before another workgroup is worth
/// its share of the workgroup sum and of the finishing dispatch (with 256 invocations:
/// one dispatch up to 64K elements, blocks of 256 KiB per workgroup above).
const FULL_MIN_VEC4: u64 = 64;
/// Invocations per workgroup of `rows` and `cols`.
const AXIS_WG: u32 = 64;
/// Invocations an axis reduction aims for before it splits the axis into chunks.
const AXIS_THREADS: usize = 16384;
/// Inputs smaller than this are not split for parallelism: a second dispatch costs
/// more (about 50 µs on a CPU adapter) than the threads it would add save.
const AXIS_SPLIT_MIN_ELEMS: usize = 1 << 18;
/// Chunks of the axis are at least this long (split no finer)...
const AXIS_MIN_CHUNK: usize = 64;
/// ...and at most this long, which bounds the terms one f32 accumulator adds.
const AXIS_MAX_CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FullParams {
    n: u32,
    nv: u32,
    scale: f32,
    block: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    splits: u32,
    chunk: u32,
    scale: f32,
    threads: u32,
    _pad: u32,
}

/// One `full` dispatch over `n` elements of `a` (and `b`) into `groups` partials.
fn full_pass(
    op: FullOp,
    a: &GpuBuffer,
    b: &GpuBuffer,
    n: usize,
    groups: u32,
    scale: f32,
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let out = ctx.alloc(u64::from(groups) * 4)?;
    let params = FullParams {
        n: n as u32,
        nv: (n / 4) as u32,
        scale,
        block: (n / 4).div_ceil(groups as usize) as u32,
    };
    ctx.dispatch(
        &ctx.variant(&registry::REDUCE).plan.full,
        &[("OP", f64::from(op as u32)), ("WG", f64::from(FULL_WG))],
        bytemuck::bytes_of(&params),
        &[a, b, &out],
        [groups, 1, 1],
    )?;
    Ok(out)
}

/// A full reduction on the GPU into a new one-element buffer: one dispatch for inputs
/// up to `FULL_WG · FULL_MIN_VEC4 · 4` elements, two above. `b` is read only by
/// [`FullOp::Dot`] and [`FullOp::SqDiff`]; pass `a` again otherwise.
pub(crate) fn full_gpu(
    op: FullOp,
    a: &GpuBuffer,
    b: &GpuBuffer,
    n: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    let plan = &a.ctx.variant(&registry::REDUCE).plan;
    if let Shape::Workgroup { subgroups } = plan.shape {
        return workgroup::full(plan, subgroups, op, a, b, n, scale);
    }
    let nv = (n / 4) as u64;
    let groups = nv
        .div_ceil(u64::from(FULL_WG) * FULL_MIN_VEC4)
        .clamp(1, FULL_MAX_GROUPS) as u32;
    if groups == 1 {
        return full_pass(op, a, b, n, 1, scale);
    }
    let partials = full_pass(op, a, b, n, groups, 1.0)?;
    sum_partials_gpu(&partials, groups as usize, scale)
}

/// `scale · Σ` of the first `count` elements of `partials`, into a new one-element
/// buffer (for kernels that leave one partial sum per workgroup, like the losses).
pub(crate) fn sum_partials_gpu(
    partials: &GpuBuffer,
    count: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    full_gpu(FullOp::Sum, partials, partials, count, scale)
}

/// How an axis of `len` is split when each chunk is reduced by one invocation and
/// `out_threads` invocations (each `width` elements wide) cover the outputs:
/// (splits, chunk length).
fn split(len: usize, out_threads: usize, width: usize) -> (usize, usize) {
    if len == 0 {
        return (1, 0);
    }
    let for_accuracy = len.div_ceil(AXIS_MAX_CHUNK);
    // Splitting for parallelism costs a second dispatch, worth it only for big inputs.
    let for_parallelism = if out_threads * width * len < AXIS_SPLIT_MIN_ELEMS {
        1
    } else {
        AXIS_THREADS
            .div_ceil(out_threads.max(1))
            .min(len.div_ceil(AXIS_MIN_CHUNK))
    };
    let splits = for_accuracy.max(for_parallelism).max(1);
    let chunk = len.div_ceil(splits);
    (len.div_ceil(chunk), chunk)
}

/// A reduction over the middle axis of `x` viewed as `[outer, len, inner]` on the GPU,
/// into a new `[outer, inner]` buffer. Long axes take more than one dispatch: each
/// reduces chunks into `[outer, splits, inner]` partials, until one split remains.
pub(crate) fn axis_gpu(
    op: AxisOp,
    x: &GpuBuffer,
    outer: usize,
    mut len: usize,
    inner: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    let ctx = x.ctx.clone();
    let plan = &ctx.variant(&registry::REDUCE).plan;
    if let Shape::Workgroup { subgroups } = plan.shape {
        return workgroup::axis(plan, subgroups, op, x, outer, len, inner, scale);
    }
    let mut owned: Option<GpuBuffer> = None;
    loop {
        let src = owned.as_ref().unwrap_or(x);
        let vec = if inner > 1 && inner.is_multiple_of(4) {
            4
        } else {
            1
        };
        let out_threads = outer * inner / vec;
        let (splits, chunk) = split(len, out_threads, vec);
        let threads = out_threads * splits;
        let out = ctx.alloc((outer * splits * inner * 4) as u64)?;
        let params = AxisParams {
            outer: outer as u32,
            len: len as u32,
            inner: inner as u32,
            splits: splits as u32,
            chunk: chunk as u32,
            scale: if splits == 1 { scale } else { 1.0 },
            threads: threads as u32,
            _pad: 0,
        };
        let (kernel, vec_c) = if inner == 1 {
            (&plan.rows, 1)
        } else {
            (&plan.cols, vec)
        };
        ctx.dispatch(
            kernel,
            &[
                ("OP", f64::from(op as u32)),
                ("WG", f64::from(AXIS_WG)),
                ("VEC", f64::from(vec_c as u32)),
            ],
            bytemuck::bytes_of(&params),
            &[src, &out],
            ctx.grid(threads as u64, u64::from(AXIS_WG))?,
        )?;
        if splits == 1 {
            return Ok(out);
        }
        owned = Some(out);
        len = splits;
    }
}
