//! The GPU side of the index and layout ops (`ops/index.rs`): `one_hot`, `gather` and
//! `transpose` are kernels of one variant, `index/direct` ([`DIRECT`],
//! `shaders/index.wgsl`); `concat` and `slice` are
//! buffer-to-buffer copies in the command stream (no kernel, no host round trip). An
//! invalid label turns its output row (`one_hot`) or element (`gather`) into NaN, since
//! checking it would need a readback.

use crate::backend::gpu::registry::{self, Variant};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::{Result, invalid};

/// What an index variant gives the dispatch code: its entry points, with the parameters
/// and bindings of `shaders/index.wgsl`.
pub(crate) struct Plan {
    one_hot: Kernel,
    gather: Kernel,
    transpose: Kernel,
}

pub(crate) static DIRECT: Variant<Plan> = Variant {
    name: "direct",
    summary: "four elements per invocation; transpose in register tiles, no workgroup memory",
    requires: |facts| registry::workgroup(facts, WG, 0),
    suits: registry::everywhere,
    plan: Plan {
        one_hot: Kernel {
            shader: &shaders::INDEX,
            entry: "one_hot",
            reads: 2,
            writes: 1,
        },
        gather: Kernel {
            shader: &shaders::INDEX,
            entry: "gather",
            reads: 2,
            writes: 1,
        },
        transpose: Kernel {
            shader: &shaders::INDEX,
            entry: "transpose",
            reads: 2,
            writes: 1,
        },
    },
};

const WG: u32 = 256;
/// Columns per transpose tile; a workgroup covers TILE columns × (WG / TILE · 4) rows.
const TILE: u32 = 32;
const QUIET_NAN: u32 = 0x7fc0_0000;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    classes: u32,
    rows: u32,
    cols: u32,
    total: u32,
    total4: u32,
    nan_bits: u32,
    _pad: u32,
}

/// A count the GPU kernels index with u32. Tensors that fit a storage binding always
/// pass; this guards the arithmetic before the allocation would refuse them.
fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        invalid(
            op,
            format!("{what} = {v} exceeds 2^32 − 1, the GPU's index range; use the CPU device"),
        )
    })
}

/// Records one dispatch of an index kernel writing `total` elements into a new buffer,
/// over `groups` workgroups (`None`: one invocation per four output elements).
fn dispatch_index(
    kernel: &'static Kernel,
    mut params: Params,
    a: &GpuBuffer,
    b: &GpuBuffer,
    total: usize,
    groups: Option<u64>,
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let y = ctx.alloc((total * 4) as u64)?;
    let total4 = total.div_ceil(4);
    params.total = u32_of(kernel.entry, "element count", total)?;
    params.total4 = total4 as u32;
    params.nan_bits = QUIET_NAN;
    let grid = match groups {
        Some(g) => ctx.grid(g, 1)?,
        None => ctx.grid(total4 as u64, u64::from(WG))?,
    };
    ctx.dispatch(
        kernel,
        &[("WG", f64::from(WG)), ("TILE", f64::from(TILE))],
        bytemuck::bytes_of(&params),
        &[a, b, &y],
        grid,
    )?;
    Ok(y)
}

/// One-hot rows `[n, classes]` of `labels`.
pub(crate) fn one_hot_gpu(labels: &GpuBuffer, n: usize, classes: usize) -> Result<GpuBuffer> {
    let params = Params {
        n: u32_of("one_hot", "labels", n)?,
        classes: u32_of("one_hot", "classes", classes)?,
        ..Params::default()
    };
    let plan = &labels.ctx.variant(&registry::INDEX).plan;
    dispatch_index(&plan.one_hot, params, labels, labels, n * classes, None)
}

/// `x[i, labels[i]]` for the `n` rows of `x` (`[n, classes]`).
pub(crate) fn gather_gpu(
    x: &GpuBuffer,
    labels: &GpuBuffer,
    n: usize,
    classes: usize,
) -> Result<GpuBuffer> {
    let params = Params {
        n: u32_of("gather", "rows", n)?,
        classes: u32_of("gather", "classes", classes)?,
        ..Params::default()
    };
    let plan = &x.ctx.variant(&registry::INDEX).plan;
    dispatch_index(&plan.gather, params, x, labels, n, None)
}

/// `[batch, rows, cols]` → `[batch, cols, rows]`.
pub(crate) fn transpose_gpu(
    x: &GpuBuffer,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Result<GpuBuffer> {
    let params = Params {
        n: u32_of("transpose", "batch", batch)?,
        rows: u32_of("transpose", "rows", rows)?,
        cols: u32_of("transpose", "cols", cols)?,
        ..Params::default()
    };
    let tile_rows = (WG / TILE * 4) as usize;
    let tiles = batch * cols.div_ceil(TILE as usize) * rows.div_ceil(tile_rows);
    dispatch_index(
        &x.ctx.variant(&registry::INDEX).plan.transpose,
        params,
        x,
        x,
        batch * rows * cols,
        Some(tiles as u64),
    )
}

/// The parts one after another in a new buffer of `total` elements (`ctx`'s).
pub(crate) fn concat_gpu<'a>(
    first: &GpuBuffer,
    parts: impl Iterator<Item = &'a GpuBuffer>,
    total: usize,
) -> Result<GpuBuffer> {
    let ctx = &first.ctx;
    let y = ctx.alloc((total * 4) as u64)?;
    let mut offset = 0u64;
    for src in parts {
        let bytes = src.bytes();
        ctx.copy(src, 0, &y, offset, bytes)?;
        offset += bytes;
    }
    Ok(y)
}

/// Elements `[start, start + len)` in a new buffer.
pub(crate) fn slice_gpu(b: &GpuBuffer, start: usize, len: usize) -> Result<GpuBuffer> {
    let y = b.ctx.alloc((len * 4) as u64)?;
    b.ctx.copy(b, (start * 4) as u64, &y, 0, (len * 4) as u64)?;
    Ok(y)
}
