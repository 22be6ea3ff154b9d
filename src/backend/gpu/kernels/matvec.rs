//! The GPU side of narrow products: matrix–vector and products with at most
//! [`MAX_NARROW`] output columns (or rows), called by `matmul_gpu` before its GEMM
//! kernels. One variant, `matvec/workgroup` ([`WORKGROUP`], `shaders/matvec.wgsl`), which
//! needs no subgroup operations.
//!
//! ## The kernels
//! A narrow product is read as Y[M, N] = op(L) · S with N ≤ 16: L the long operand
//! (M×K), S the short one (K×N), Y written through strides. C = op(A)·op(B) with
//! n ≤ 16 is L = op(A), S = op(B), Y = C; with m ≤ 16 < n it is the transpose,
//! Cᵀ = op(B)ᵀ·op(A)ᵀ: L = op(B)ᵀ, S = op(A)ᵀ, Y = Cᵀ (C written with swapped strides),
//! so both orientations run the same two entry points, chosen by how L is stored:
//! - `rows`, L stored [M][K] (X·w): `TPR` invocations per row (on GPUs a power of two
//!   from 8 to the workgroup size, about a quarter as many as the row has vec4s, so that
//!   each loads ~4 vec4s and a workgroup covers several short rows; on CPU adapters one,
//!   see [`tpr_rule`]), striding along k with
//!   vec4 loads when rows are whole vec4s (S too when it runs along k), then one barrier
//!   and one invocation per output column adding the row's partials.
//! - `cols`, L stored [K][M] (Xᵀ·r): each invocation owns 4 adjacent columns of L (one
//!   vec4 load when M is a multiple of 4; adjacent invocations read adjacent addresses),
//!   `CW` = 16 invocations along the columns and WG / 16 slices of k per workgroup; after
//!   one barrier the first slice adds the others'.
//!
//! Both are correct for any size (k is looped over; rows and column blocks beyond the
//! per-dimension workgroup limit go to further dispatches). Accuracy: f32 accumulators
//! each adding k / TPR (rows) or k / (WG / 16) (cols) terms, then a sum of the partials.
//!
//! What is left: a split of k across workgroups (a second, tiny pass) for `cols` with
//! few columns and huge k, where a discrete GPU gets few workgroups; a subgroup variant
//! (`subgroupAdd` instead of workgroup memory).

use crate::backend::MatmulDims;
use crate::backend::gpu::registry::{self, AdapterFacts, Variant};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::Result;

/// Products with at most this many output columns (or rows) are narrow. 16 bounds the
/// accumulators per invocation (16 floats in `rows`, 16 vec4s in `cols`) and the
/// workgroup memory (16 × WG partials); above it a GEMM tile (8 columns × up to 64 rows
/// per invocation) reuses each load of the long operand enough to be the better kernel.
pub(crate) const MAX_NARROW: usize = 16;

/// What a matvec variant gives the dispatch code.
pub(crate) struct Plan {
    rows: Kernel,
    cols: Kernel,
    /// Invocations per workgroup on this adapter.
    wg: fn(&AdapterFacts) -> u32,
}

/// Workgroup reductions in shared memory; runs anywhere.
pub(crate) static WORKGROUP: Variant<Plan> = Variant {
    name: "workgroup",
    summary: "rows or columns of the long operand per workgroup, partials added in workgroup memory",
    requires: |facts| registry::workgroup(facts, wg_for(facts), SHARED_BYTES),
    suits: registry::everywhere,
    plan: Plan {
        rows: Kernel {
            shader: &shaders::MATVEC,
            entry: "rows",
            reads: 4,
            writes: 1,
        },
        cols: Kernel {
            shader: &shaders::MATVEC,
            entry: "cols",
            reads: 4,
            writes: 1,
        },
        wg: wg_for,
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

/// Tests set this to run `rows` with that many invocations per row (a power of two)
/// whatever the adapter, so that a CPU adapter also runs the GPU shape; 0: the rule.
/// Test builds only: the library has no process-wide knob.
#[cfg(test)]
pub(crate) static TPR_OVERRIDE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// C[batch, m, n] = op(A)·op(B) for a narrow product (see [`is_narrow`]) into `out`.
pub(crate) fn matvec_gpu(
    a: &GpuBuffer,
    b: &GpuBuffer,
    d: &MatmulDims,
    trans_a: bool,
    trans_b: bool,
    out: &GpuBuffer,
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
    let variant = ctx.variant(&registry::MATVEC);
    let wg = (variant.plan.wg)(ctx.facts());
    let l_vec4 = if l_rows { k % 4 == 0 } else { big % 4 == 0 };
    let s_vec4 = l_rows && l_vec4 && s_k == 1 && k % 4 == 0;
    let (kernel, per_group, tpr, wg) = if l_rows {
        #[cfg(test)]
        let forced = TPR_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(test))]
        let forced = 0;
        let tpr = match forced {
            0 => tpr_rule(ctx.facts(), k, wg),
            t => t.min(wg),
        };
        (&variant.plan.rows, (wg / tpr) as usize, tpr, wg)
    } else {
        (&variant.plan.cols, 4 * CW as usize, 8, COLS_WG)
    };
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
    };
    let constants = [
        ("WG", f64::from(wg)),
        ("TPR", f64::from(tpr)),
        ("CW", f64::from(CW)),
        ("NC", small as f64),
        ("TREE", (small as u32 * wg) as f64),
        ("L_VEC4", f64::from(u8::from(l_vec4))),
        ("S_VEC4", f64::from(u8::from(s_vec4))),
    ];
    let groups = big.div_ceil(per_group);
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
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
}
