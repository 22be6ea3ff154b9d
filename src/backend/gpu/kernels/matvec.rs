//! The GPU side of narrow products: matrix–vector and products with at most
//! [`MAX_NARROW`] output columns (or rows), called by `matmul_gpu` before its GEMM
//! kernels. Two variants: `matvec/subgroup` ([`SUBGROUP`], `shaders/matvec_subgroup.wgsl`),
//! the default on adapters with subgroups that are not CPUs, and `matvec/workgroup`
//! ([`WORKGROUP`], `shaders/matvec.wgsl`), which needs no subgroup operations. Both
//! build on `shaders/common/matvec.wgsl`.
//!
//! ## The kernels
//! A narrow product is read as Y[M, N] = op(L) · S with N ≤ 16: L the long operand
//! (M×K), S the short one (K×N), Y written through strides. C = op(A)·op(B) with
//! n ≤ 16 is L = op(A), S = op(B), Y = C; with m ≤ 16 < n it is the transpose,
//! Cᵀ = op(B)ᵀ·op(A)ᵀ: L = op(B)ᵀ, S = op(A)ᵀ, Y = Cᵀ (C written with swapped strides),
//! so both orientations run the same entry points, chosen by how L is stored:
//! - `rows`, L stored [M][K] (X·w): `TPR` invocations per row (on GPUs a power of two
//!   from 8 to the workgroup size, about a quarter as many as the row has vec4s, so that
//!   each loads ~4 vec4s and a workgroup covers several short rows; on CPU adapters one,
//!   see [`tpr_rule`]), striding along k with vec4 loads when rows are whole vec4s (S too
//!   when it runs along k). `workgroup` then adds a row's partials in workgroup memory
//!   after one barrier; `subgroup` caps TPR at the smallest subgroup size, so that a
//!   row's invocations are aligned lanes of one subgroup, and adds them with
//!   `subgroupShuffleXor` butterflies (log2 TPR steps, no barrier, no workgroup memory).
//! - `rows4` (`workgroup` on CPU adapters, matrix–vector products with whole vec4 rows):
//!   one invocation per four rows, so that each load of w serves four rows. On lavapipe a
//!   load whose address differs per lane is a loop over the lanes, and w's loads were
//!   half of them (X[2000, 200]·w, see the README's benchmark notes).
//! - `cols`, L stored [K][M] (Xᵀ·r): each invocation owns 4 adjacent columns of L (one
//!   vec4 load when M is a multiple of 4; adjacent invocations read adjacent addresses),
//!   `CW` = 16 invocations along the columns and WG / 16 slices of k per workgroup; after
//!   one barrier the first slice adds the others' (both variants).
//! - Split k: Xᵀ·r with X [2000, 200] has 4 blocks of 64 columns, 4 workgroups for a GPU
//!   with 132 SMs. On adapters that are not CPUs, when column blocks × batch are fewer
//!   than [`SPLIT_GROUPS`], `cols` splits k into chunks of at least [`SPLIT_MIN_K`] rows
//!   along the grid's y ([`k_splits`]), writes partial sums [batch][split][N][M] to a
//!   pooled buffer, and `cols_sum` adds them into Y (WGSL has no float atomics).
//!
//! Accumulators are one vec4 per output column, as the 16 named fields of a struct,
//! each touched under `if (NC > j)` with a constant j: the override NC folds those away
//! when the pipeline is made. A private array indexed by a run-time value (the earlier
//! `acc[j]` in loops bounded by NC) lives in slow local memory on NVIDIA; a GEMM measured
//! there fell from 28.5 to 2.1 TFLOP/s that way.
//!
//! All are correct for any size (k is looped over; rows and column blocks beyond the
//! per-dimension workgroup limit go to further dispatches). Accuracy: f32 accumulators
//! each adding k / TPR (rows) or k / (WG / 16) (cols, per split) terms, then a sum of the
//! partials.

use crate::backend::MatmulDims;
use crate::backend::gpu::registry::{self, AdapterFacts, Variant};
use crate::backend::gpu::shaders::{self, Shader};
use crate::backend::gpu::tune;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::Result;

/// Products with at most this many output columns (or rows) are narrow. 16 bounds the
/// accumulators per invocation (16 vec4s) and the workgroup memory (16 × WG partials);
/// above it a GEMM tile (8 columns × up to 64 rows per invocation) reuses each load of
/// the long operand enough to be the better kernel.
pub(crate) const MAX_NARROW: usize = 16;

/// What a matvec variant gives the dispatch code.
pub(crate) struct Plan {
    rows: Kernel,
    /// One invocation per four rows for matrix–vector products on CPU adapters, if the
    /// variant has it.
    rows4: Option<Kernel>,
    cols: Kernel,
    /// The second pass of a `cols` split along k.
    cols_sum: Kernel,
    /// Invocations per workgroup on this adapter.
    wg: fn(&AdapterFacts) -> u32,
    /// The most invocations per row its `rows` can add up.
    max_tpr: fn(&AdapterFacts) -> u32,
}

const fn kernel(shader: &'static Shader, entry: &'static str) -> Kernel {
    // Every entry point binds L twice, S twice (as vec4s and floats) and writes one
    // buffer; `cols_sum` reads its partials through L's bindings.
    Kernel {
        shader,
        entry,
        reads: 4,
        writes: 1,
    }
}

/// Workgroup reductions in shared memory; runs anywhere.
pub(crate) static WORKGROUP: Variant<Plan> = Variant {
    name: "workgroup",
    summary: "rows or columns of the long operand per workgroup, partials added in workgroup memory",
    requires: |facts| registry::workgroup(facts, wg_for(facts), SHARED_BYTES),
    suits: registry::everywhere,
    plan: Plan {
        rows: kernel(&shaders::MATVEC, "rows"),
        rows4: Some(kernel(&shaders::MATVEC, "rows4")),
        cols: kernel(&shaders::MATVEC, "cols"),
        cols_sum: kernel(&shaders::MATVEC, "cols_sum"),
        wg: wg_for,
        max_tpr: |facts| wg_for(facts),
    },
};

/// A row's partials added by subgroup shuffles (`cols` as in [`WORKGROUP`]).
pub(crate) static SUBGROUP: Variant<Plan> = Variant {
    name: "subgroup",
    summary: "as workgroup, but a row's partials are added by subgroup shuffles, without a barrier",
    requires: |facts| {
        if !facts.features.contains(wgpu::Features::SUBGROUP) {
            return Err("needs the SUBGROUP feature".into());
        }
        if facts.subgroup_sizes.is_none() {
            return Err("needs subgroup sizes the adapter reports".into());
        }
        registry::workgroup(facts, wg_for(facts), SHARED_BYTES)
    },
    // On CPU adapters one invocation walks a whole row (see `tpr_rule`): nothing to add.
    suits: |facts| facts.device_type != wgpu::DeviceType::Cpu,
    plan: Plan {
        rows: kernel(&shaders::MATVEC_SUBGROUP, "rows"),
        rows4: None,
        cols: kernel(&shaders::MATVEC_SUBGROUP, "cols"),
        cols_sum: kernel(&shaders::MATVEC_SUBGROUP, "cols_sum"),
        wg: wg_for,
        // The lanes of a row must be lanes of one subgroup.
        max_tpr: |facts| facts.subgroup_sizes.map_or(1, |(min, _)| min.max(1)),
    },
};

/// 64 invocations on CPU adapters (lavapipe runs a workgroup's subgroups in turn, and
/// a barrier switches between them: fewer is cheaper), 256 on GPUs (enough loads in
/// flight per workgroup to hide memory latency).
fn wg_for(facts: &AdapterFacts) -> u32 {
    if facts.device_type == wgpu::DeviceType::Cpu {
        64
    } else {
        256
    }
}

/// Invocations along the columns in `cols` (each owns 4 columns).
const CW: u32 = 16;
/// Invocations per workgroup of `cols` everywhere: 16 × 4 slices of k, whose 16 vec4
/// partials each (16 KiB) fill the smallest workgroup memory WebGPU guarantees.
const COLS_WG: u32 = 64;
/// Workgroup memory either kernel may use: 16 partials per invocation (floats in `rows`
/// at up to 256 invocations, vec4s in `cols` at 64).
const SHARED_BYTES: u32 = 16 * 1024;
/// Invocations per workgroup of `cols_sum`.
const SUM_WG: u32 = 64;

/// `cols` splits k until about this many workgroups run (a GPU the size of an H200 runs
/// 132 SMs with several workgroups each)...
const SPLIT_GROUPS: usize = 256;
/// ...as long as each workgroup keeps at least this many rows of k (16 per slice), so
/// that its loads still stream and the second pass stays small next to the first.
const SPLIT_MIN_K: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    s_k: u32,
    s_n: u32,
    c_m: u32,
    c_n: u32,
    l_batch: u32,
    s_batch: u32,
    c_batch: u32,
    group0: u32,
    batch0: u32,
    splits: u32,
    chunk: u32,
}

/// Whether `matmul_gpu` should hand the product to [`matvec_gpu`].
pub(crate) fn is_narrow(d: &MatmulDims) -> bool {
    d.m.min(d.n) <= MAX_NARROW
}

/// Invocations per row of `rows` for rows of `k` floats: a power of two with about 4
/// vec4s each, from 8 to `wg`.
fn tpr_for(k: usize, wg: u32) -> u32 {
    (k.div_ceil(16).next_power_of_two() as u32).clamp(8, wg)
}

/// Invocations per row of `rows`: on CPU adapters one (no lanes share a row: each
/// invocation walks its row alone, so no partials need adding; measured on lavapipe,
/// X[2000, 200]·w: 3.0 ms with 16 per row, 1.3 ms with one, loaded machine), elsewhere
/// [`tpr_for`].
fn tpr_rule(facts: &AdapterFacts, k: usize, wg: u32) -> u32 {
    if facts.device_type == wgpu::DeviceType::Cpu {
        1
    } else {
        tpr_for(k, wg)
    }
}

/// Workgroups along k for `cols` when `blocks` workgroups (column blocks × batch) cover
/// the output: 1 on CPU adapters (their few threads are busy with any grid, and a second
/// pass costs a dispatch there, ~50 µs), elsewhere enough to reach [`SPLIT_GROUPS`]
/// workgroups, each keeping at least [`SPLIT_MIN_K`] rows of k. Xᵀ·r with X [2000, 200]:
/// 4 column blocks, 31 splits of 65 rows.
fn k_splits(facts: &AdapterFacts, blocks: usize, k: usize) -> usize {
    if facts.device_type == wgpu::DeviceType::Cpu || blocks >= SPLIT_GROUPS {
        return 1;
    }
    SPLIT_GROUPS
        .div_ceil(blocks.max(1))
        .min(k / SPLIT_MIN_K)
        .max(1)
}

/// Tests set this to run `rows` with that many invocations per row (a power of two)
/// whatever the adapter, so that a CPU adapter also runs the GPU shape; 0: the rule.
/// Test builds only: the library has no process-wide knob.
#[cfg(test)]
pub(crate) static TPR_OVERRIDE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Tests set this to split `cols` into that many chunks of k (at most k) whatever the
/// adapter, so that a CPU adapter also runs the split and its second pass; 0: the rule.
#[cfg(test)]
pub(crate) static SPLIT_OVERRIDE: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(0);

/// C[batch, m, n] = op(A)·op(B) for a narrow product (see [`is_narrow`]) into `out`.
pub(crate) fn matvec_gpu(
    a: &GpuBuffer,
    b: &GpuBuffer,
    d: &MatmulDims,
    trans_a: bool,
    trans_b: bool,
    out: &GpuBuffer,
) -> Result<()> {
    matvec_with(a, b, d, trans_a, trans_b, out, None)
}

/// [`matvec_gpu`] with `forced_variant` instead of the context's (or the tuner's) choice.
fn matvec_with(
    a: &GpuBuffer,
    b: &GpuBuffer,
    d: &MatmulDims,
    trans_a: bool,
    trans_b: bool,
    out: &GpuBuffer,
    forced_variant: Option<&'static Variant<Plan>>,
) -> Result<()> {
    let ctx = &a.ctx;
    let MatmulDims { batch, m, k, n, .. } = *d;
    // Y = op(L)·S with N ≤ 16: C itself, or Cᵀ when m is the narrow side.
    let mirror = m < n;
    let (l, s, l_batched, s_batched) = if mirror {
        (b, a, d.b_batched, d.a_batched)
    } else {
        (a, b, d.a_batched, d.b_batched)
    };
    let (big, small) = if mirror { (n, m) } else { (m, n) };
    // L stored along k ([M][K]) or down k ([K][M]); S stored [K][N] or [N][K].
    let l_rows = if mirror { trans_b } else { !trans_a };
    let s_kn = if mirror { trans_a } else { !trans_b };
    let (s_k, s_n) = if s_kn { (small, 1) } else { (1, k) };
    let (c_m, c_n) = if mirror { (1, n) } else { (n, 1) };
    let variant = match forced_variant {
        Some(v) => v,
        // The context's variant, or where the autotuner is on, the fastest it measured
        // for this shape class (`backend/gpu/tune.rs`).
        None => ctx.tuned_variant(
            &registry::MATVEC,
            || {
                tune::shape_class(
                    "matvec",
                    m,
                    k,
                    n,
                    trans_a,
                    trans_b,
                    d.a_batched || d.b_batched,
                )
            },
            2 * (batch as u64) * (m as u64) * (n as u64) * (k as u64),
            |v| {
                let scratch = ctx.alloc((batch * m * n * 4) as u64)?;
                matvec_with(a, b, d, trans_a, trans_b, &scratch, Some(v))
            },
        )?,
    };
    let plan = &variant.plan;
    let facts = ctx.facts();
    let wg = (plan.wg)(facts);
    let l_vec4 = if l_rows { k % 4 == 0 } else { big % 4 == 0 };
    let s_vec4 = l_rows && l_vec4 && s_k == 1 && k % 4 == 0;
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    let (kernel, per_group, tpr, wg, splits) = if l_rows {
        #[cfg(test)]
        let forced = TPR_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(test))]
        let forced = 0;
        let tpr = match forced {
            0 => tpr_rule(facts, k, wg),
            t => t.min(wg),
        }
        .min((plan.max_tpr)(facts));
        match &plan.rows4 {
            Some(rows4) if tpr == 1 && small == 1 && s_vec4 && forced == 0 => {
                (rows4, 4 * wg as usize, 1, wg, 1)
            }
            _ => (&plan.rows, (wg / tpr) as usize, tpr, wg, 1),
        }
    } else {
        let per_group = 4 * CW as usize;
        let blocks = big.div_ceil(per_group) * batch;
        #[cfg(test)]
        let forced = SPLIT_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed) as usize;
        #[cfg(not(test))]
        let forced = 0;
        let splits = match forced {
            0 => k_splits(facts, blocks, k),
            f => f.min(k.max(1)),
        };
        let splits = if blocks.max(batch) <= max { splits } else { 1 };
        (&plan.cols, per_group, 8, COLS_WG, splits)
    };
    // Chunks of whole rows of k; recounted so that none is empty.
    let chunk = k.div_ceil(splits.max(1)).max(1);
    let splits = k.div_ceil(chunk).max(1);
    let mut params = Params {
        m: big as u32,
        n: small as u32,
        k: k as u32,
        s_k: s_k as u32,
        s_n: s_n as u32,
        c_m: c_m as u32,
        c_n: c_n as u32,
        l_batch: if l_batched { (big * k) as u32 } else { 0 },
        s_batch: if s_batched { (small * k) as u32 } else { 0 },
        c_batch: (m * n) as u32,
        group0: 0,
        batch0: 0,
        splits: splits as u32,
        chunk: chunk as u32,
    };
    let flag = |b: bool| f64::from(u8::from(b));
    let constants = |wg: u32, split: bool| {
        [
            ("WG", f64::from(wg)),
            ("TPR", f64::from(tpr)),
            ("CW", f64::from(CW)),
            ("NC", small as f64),
            ("TREE", (small as u32 * wg) as f64),
            ("L_VEC4", flag(l_vec4)),
            ("S_VEC4", flag(s_vec4)),
            ("SPLIT", flag(split)),
        ]
    };
    let groups = big.div_ceil(per_group);
    if splits > 1 {
        // One dispatch of `cols` into partials [batch][split][NC][M], one of `cols_sum`.
        let partials = ctx.alloc((batch * splits * small * big * 4) as u64)?;
        ctx.dispatch(
            kernel,
            &constants(wg, true),
            bytemuck::bytes_of(&params),
            &[l, l, s, s, &partials],
            [groups as u32, splits as u32, batch as u32],
        )?;
        ctx.dispatch(
            &plan.cols_sum,
            &constants(SUM_WG, false),
            bytemuck::bytes_of(&params),
            &[&partials, &partials, &partials, &partials, out],
            [
                (big * small).div_ceil(SUM_WG as usize) as u32,
                1,
                batch as u32,
            ],
        )?;
        return Ok(());
    }
    let constants = constants(wg, false);
    for batch0 in (0..batch).step_by(max) {
        for group0 in (0..groups).step_by(max) {
            params.batch0 = batch0 as u32;
            params.group0 = group0 as u32;
            ctx.dispatch(
                kernel,
                &constants,
                bytemuck::bytes_of(&params),
                &[l, l, s, s, out],
                [
                    (groups - group0).min(max) as u32,
                    1,
                    (batch - batch0).min(max) as u32,
                ],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_invocation_and_threshold() {
        assert_eq!(tpr_for(1, 64), 8);
        assert_eq!(tpr_for(200, 64), 16);
        assert_eq!(tpr_for(1000, 64), 64);
        assert_eq!(tpr_for(1000, 256), 64);
        assert_eq!(tpr_for(100_000, 256), 256);
        let dims = |m, n| MatmulDims {
            batch: 1,
            m,
            k: 5,
            n,
            a_batched: false,
            b_batched: false,
        };
        assert!(is_narrow(&dims(2000, 1)) && is_narrow(&dims(1, 2000)));
        assert!(is_narrow(&dims(16, 17)) && !is_narrow(&dims(17, 17)));
    }

    #[test]
    fn k_is_split_on_gpus_when_few_column_blocks_have_long_k() {
        let facts = |device_type| AdapterFacts {
            features: wgpu::Features::empty(),
            subgroup_sizes: None,
            limits: wgpu::Limits::default(),
            device_type,
            vendor: 0,
        };
        let gpu = facts(wgpu::DeviceType::DiscreteGpu);
        // Xᵀ·r, X [2000, 200]: 4 blocks of 64 columns, 31 chunks of ≥ 64 rows of k.
        assert_eq!(k_splits(&gpu, 4, 2000), 31);
        // X [20000, 1000]ᵀ·r: 16 blocks, 16 splits make 256 workgroups.
        assert_eq!(k_splits(&gpu, 16, 20_000), 16);
        // Enough workgroups already, or too little k to share.
        assert_eq!(k_splits(&gpu, 256, 100_000), 1);
        assert_eq!(k_splits(&gpu, 1, 127), 1);
        assert_eq!(k_splits(&gpu, 1, 128), 2);
        assert_eq!(k_splits(&gpu, 1, 1_000_000), 256);
        // CPU adapters: one pass, always.
        assert_eq!(k_splits(&facts(wgpu::DeviceType::Cpu), 1, 1_000_000), 1);
    }
}
