//! The GPU side of matmul (`ops/matmul.rs`): its four variants, `matmul/tiled`
//! ([`TILED`], `shaders/matmul_tiled.wgsl`), `matmul/tiled_large` ([`TILED_LARGE`],
//! `shaders/matmul_tiled_large.wgsl`), `matmul/subgroup` ([`SUBGROUP`],
//! `shaders/matmul.wgsl`) and `matmul/portable` ([`PORTABLE`],
//! `shaders/matmul_portable.wgsl`), registered in `backend/gpu/registry.rs`, and the
//! dispatch plan they share. All read `shaders/common/matmul_operands.wgsl` (the same
//! parameters and bindings, so one dispatch path serves them).
//!
//! ## `matmul/tiled`: for GPUs
//! The textbook shared-memory SGEMM, the default on every adapter that is not a CPU:
//! - workgroups of 16×16 invocations, each computing a 64×64 block of C;
//! - per K-step of 16, a 64×16 tile of A (stored transposed, [k][m]) and a 16×64 tile of
//!   B in workgroup memory, 8 KiB in all, loaded with one vec4 per invocation each and
//!   bracketed by one pair of `workgroupBarrier()`s;
//! - 4×4 outputs per invocation in four vec4 accumulators (16 floats), unrolled by hand:
//!   on an H200, a textbook kernel whose accumulator array was indexed by a run-time loop
//!   variable fell from 28.5 to 2.1 TFLOP/s (the array went to local memory);
//! - each k of the inner loop reads one vec4 of each tile (A: a broadcast within a warp,
//!   B: 16 consecutive vec4s, no bank conflicts) for 16 multiply-adds.
//!
//! Both stored layouts of each operand are read in place: an operand whose rows run along
//! the block (Aᵀ, B) is loaded 16 vec4s per tile row, fully coalesced; one whose rows run
//! along k (A, Bᵀ) 4 vec4s per row, transposed into the tile component by component. So
//! it never copies operands (`Plan::packs` is false; an explicit [`GpuPlan::pack`]
//! still applies, which the tests use to run the copied layout too). Edges are clamped on
//! load and masked on store as in the other kernels, values past k are zeroed, so any m,
//! n, k, batch and transpose runs the same code. On llvmpipe it is slow (its barriers
//! switch coroutines): 2.1 / 2.8 / 2.9 / 2.7 GFLOP/s at n = 256 / 512 / 1024 / 2048
//! against 27 / 22 / 23 / 25 for `matmul/subgroup` (`blo bench --only matmul`), hence the
//! CPU-type rule. Not measured on a GPU yet.
//!
//! ## `matmul/tiled_large`: for large products on discrete GPUs
//! The shape of the textbook WGSL SGEMM calibrated on an H200 through Vulkan (28.5
//! TFLOP/s at n = 4096, 10.2 at 1024, on the plain layout), in blo's operand conventions:
//! - workgroups of 16×16 invocations, each computing a 128×128 block of C: a quarter as
//!   many workgroups as `matmul/tiled` (at n = 1024, 64 instead of 256, fewer than an
//!   H200's 132 SMs: small products may prefer `tiled`);
//! - per K-step of 8, an 8×128 tile of A (transposed, [k][m]) and of B in workgroup
//!   memory, one vec4 of each per invocation; each k row of a tile is padded by one vec4
//!   (8448 bytes in all instead of 8192), because the component-wise stores of an operand
//!   whose rows run along k (plain A, Bᵀ) otherwise put the two lanes that share a block
//!   row's K-step 512 words apart, on the same bank (2-way conflicts); 528 words apart,
//!   they are 16 banks apart;
//! - 8×8 outputs per invocation (rows 4·ty.. and 64 + 4·ty.., columns 4·tx.. and
//!   64 + 4·tx..) in 16 vec4 accumulators (64 floats, the design limit), each a variable of
//!   its own, every use unrolled by hand (see `matmul/tiled` for why); the halves are 64
//!   apart so the B reads of 16 lanes stay 16 consecutive vec4s (adjacent pairs would be
//!   2-way conflicts);
//! - per k, two vec4 reads of each tile for 64 multiply-adds (`tiled`: 2 for 16).
//!
//! Operands are read in place in either layout, edges clamped, k masked, stores masked and
//! batches on workgroup_id.z exactly as in `matmul/tiled`. It suits every adapter that is
//! not a CPU but is registered after `tiled`: `tiled` stays the default, and the
//! autotuner (`backend/gpu/tune.rs`, on by default on such adapters) picks between all the
//! variants per shape class from measurements; `BLO_KERNELS=matmul=tiled_large` forces it. On llvmpipe it is as slow as `tiled` for the same reason
//! (barriers), if less so: 5.4 / 3.7 / 3.6 / 2.8 / 2.7 GFLOP/s at n = 256 / 512 / 1024 / 2048
//! / 4096 against 2.0 / 1.4 / 1.3 / 1.4 / 1.4 for `tiled` in the same session (a busy
//! machine: both below the figures above), as it computes twice the multiply-adds per
//! barrier.
//!
//! ## `matmul/subgroup`: why it looks the way it does
//! Each invocation owns 8 adjacent columns of C and up to 64 rows, held in registers (and
//! stack slots). The rows are shared by the subgroup: lanes 0..7 each load one vec4 of A
//! per 8 rows and `subgroupBroadcast` hands all 32 values to every lane; B, the lane's own
//! columns, is loaded per lane and reused by all the rows.
//!
//! Why, as measured on llvmpipe (Mesa 22.3 lavapipe, 8 lanes of 32 bits, 2 cores; GFLOP/s
//! normalised by process CPU time because other jobs share the machine): a storage load
//! whose address may differ across lanes compiles to a loop over the 8 lanes with a bounds
//! check per component, ~50 cycles per vec4, and inside a loop even a uniform address (or
//! a uniform-buffer load) takes that path. A multiply-add costs ~1 cycle per 8 lanes (no
//! FMA fusion), a broadcast ~1 per component. So the kernel minimises per-lane loads per
//! multiply-add. Variants tried, n = 1024:
//! - 8×4 block per invocation, each lane loading its own A and B: 12–14 GFLOP/s;
//! - 16×16 shared-memory tiles: ~1 (WGPU-NOTES; barriers switch coroutines on llvmpipe);
//! - A shared by broadcasts, 4 columns per lane: 32 rows 36, 64 rows 40–43, 128 rows 46;
//! - A shared, 8 columns per lane: 32 rows 46, 64 rows 50–55 (kept), 128 rows 39 (spills
//!   swamp the saving);
//! - workgroups in row-block order instead of column-block order: −10–20% at n = 2048;
//! - 8, 16, 32 lanes per workgroup: no difference (lavapipe runs the subgroups in turn).
//!
//! Profile of the kept kernel (perf on the JIT code): ~35% per-lane loads, ~25%
//! multiply-adds, ~25% moving spilled accumulators. On a GPU, subgroup broadcasts and
//! register blocking are cheap too, though without shared-memory tiles it is not tuned
//! for one.
//!
//! CPU adapters without subgroups (llvmpipe through GL) run `matmul/portable`, the same
//! loop with every lane loading its own A. Both kernels read either stored layout of each
//! operand in place, as vec4s when its rows are whole vec4s and as floats otherwise (four
//! loads per vec4, cheaper than a copy for the small products that such shapes usually
//! are); only large products copy operands, to the layout read fastest (see
//! `PACK_MIN_FLOP`).

use crate::backend::MatmulDims;
use crate::backend::gpu::registry::{self, AdapterFacts, Variant};
use crate::backend::gpu::shaders;
use crate::backend::gpu::tune;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::Result;

/// What a matmul variant gives the dispatch code.
pub(crate) struct Plan {
    /// The product. Reads A and B, each bound twice (as vec4s and as floats, see
    /// `shaders/common/matmul_operands.wgsl`), and writes C.
    main: Kernel,
    /// `(rows of C per workgroup, invocations per workgroup along x)` for an output of
    /// `m` rows, on this adapter. A workgroup covers `cols` × that many columns.
    tile: fn(&AdapterFacts, usize) -> (u32, u32),
    /// Whether the workgroup size is the kernel's `WG` override constant (set to the
    /// second value of `tile`); otherwise the kernel's `@workgroup_size` is fixed.
    wg_override: bool,
    /// Whether products of at least [`PACK_MIN_FLOP`] flops copy their operands to rows
    /// along k first (a [`GpuPlan::pack`] given by the caller applies either way).
    packs: bool,
    /// Whether the rows per invocation are the kernel's `ROWS` override constant (so that
    /// [`GpuPlan::shape`] can set them); otherwise `tile` returns the kernel's fixed rows.
    tunable: bool,
    /// Columns of C per invocation.
    cols: usize,
}

/// `shaders/matmul_tiled.wgsl`: 64×64 blocks of C per workgroup of 16×16 invocations,
/// tiles of A and B in workgroup memory (see the module documentation). The default on
/// every adapter that is not a CPU: on lavapipe its barriers make it slow.
pub(crate) static TILED: Variant<Plan> = Variant {
    name: "tiled",
    summary: "64×64 block per 16×16 workgroup, A and B tiles in workgroup memory, 4×4 per invocation",
    requires: |facts| registry::workgroup(facts, TILED_INVOCATIONS, TILED_SHARED_BYTES),
    suits: |facts| facts.device_type != wgpu::DeviceType::Cpu,
    plan: Plan {
        main: Kernel {
            shader: &shaders::MATMUL_TILED,
            entry: "main",
            reads: 4,
            writes: 1,
        },
        // 16 invocations along x, 4 columns each: 64 columns per workgroup.
        tile: |_, _| (TILED_BLOCK, 16),
        wg_override: false,
        // Both layouts of each operand are loaded coalesced into the tiles, so copying
        // one first would only cost a pass over it.
        packs: false,
        tunable: false,
        cols: 4,
    },
};

/// Rows and columns of C per workgroup of `matmul/tiled`.
const TILED_BLOCK: u32 = 64;
/// Invocations per workgroup of `matmul/tiled` (16 × 16).
const TILED_INVOCATIONS: u32 = 256;
/// Workgroup memory of `matmul/tiled`: a 64×16 tile of A and a 16×64 tile of B in f32.
const TILED_SHARED_BYTES: u32 = 2 * 64 * 16 * 4;

/// `shaders/matmul_tiled_large.wgsl`: 128×128 blocks of C per workgroup of 16×16
/// invocations, 8×8 outputs each (see the module documentation). Registered after
/// [`TILED`]: the autotuner chooses it per shape class where it measures faster.
pub(crate) static TILED_LARGE: Variant<Plan> = Variant {
    name: "tiled_large",
    summary: "128×128 block per 16×16 workgroup, K-step 8, A and B tiles in workgroup memory, 8×8 per invocation",
    requires: |facts| registry::workgroup(facts, TILED_INVOCATIONS, TILED_LARGE_SHARED_BYTES),
    suits: |facts| facts.device_type != wgpu::DeviceType::Cpu,
    plan: Plan {
        main: Kernel {
            shader: &shaders::MATMUL_TILED_LARGE,
            entry: "main",
            reads: 4,
            writes: 1,
        },
        // 16 invocations along x, 8 columns each: 128 columns per workgroup.
        tile: |_, _| (TILED_LARGE_BLOCK, 16),
        wg_override: false,
        // As for `matmul/tiled`: both layouts are loaded coalesced into the tiles.
        packs: false,
        tunable: false,
        cols: 8,
    },
};

/// Rows and columns of C per workgroup of `matmul/tiled_large`.
const TILED_LARGE_BLOCK: u32 = 128;
/// Workgroup memory of `matmul/tiled_large`: an 8×128 tile of A and one of B in f32, each
/// k row padded by one vec4 against bank conflicts (`ROW4` in the shader).
const TILED_LARGE_SHARED_BYTES: u32 = 2 * 8 * (128 + 4) * 4;

/// `shaders/matmul.wgsl`: A shared across the subgroup by broadcasts (see the module
/// documentation). The broadcasts come from lanes 0..7, so it needs subgroups of at
/// least 8 lanes.
pub(crate) static SUBGROUP: Variant<Plan> = Variant {
    name: "subgroup",
    summary: "8 columns × up to 64 rows per invocation, A shared by subgroup broadcasts",
    requires: |facts| {
        if !facts.features.contains(wgpu::Features::SUBGROUP) {
            return Err("needs the SUBGROUP feature".into());
        }
        match facts.subgroup_sizes {
            // Workgroups as wide as the tile rule makes them (one subgroup, ≤ 64 lanes).
            Some((min, max)) if min >= 8 => registry::workgroup(facts, max.min(64), 0),
            Some((min, _)) => Err(format!(
                "needs subgroups of at least 8 lanes (the adapter's may have {min})"
            )),
            None => Err("needs subgroup sizes the adapter reports".into()),
        }
    },
    suits: registry::everywhere,
    plan: Plan {
        main: Kernel {
            shader: &shaders::MATMUL,
            entry: "main",
            reads: 4,
            writes: 1,
        },
        tile: subgroup_tile,
        wg_override: true,
        packs: true,
        tunable: true,
        cols: SUBGROUP_COLS,
    },
};

/// `shaders/matmul_portable.wgsl`: every lane loads its own A; runs anywhere.
pub(crate) static PORTABLE: Variant<Plan> = Variant {
    name: "portable",
    summary: "4 columns × 8 rows per invocation, no subgroup operations",
    requires: |facts| registry::workgroup(facts, PORTABLE_WG.max(PACK_WG), 0),
    suits: registry::everywhere,
    plan: Plan {
        main: Kernel {
            shader: &shaders::MATMUL_PORTABLE,
            entry: "main",
            reads: 4,
            writes: 1,
        },
        tile: |_, _| (PORTABLE_ROWS, PORTABLE_WG),
        wg_override: true,
        packs: true,
        tunable: false,
        cols: PORTABLE_COLS,
    },
};

/// Copies an operand to rows along k, for large products of either variant.
static PACK: Kernel = Kernel {
    shader: &shaders::MATMUL_PORTABLE,
    entry: "pack",
    reads: 1,
    writes: 1,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    k4: u32,
    lda: u32,
    ldb: u32,
    a_batch: u32,
    b_batch: u32,
    a_last_row: u32,
    a_last_col4: u32,
    b_last_row: u32,
    b_last_col4: u32,
    group_m0: u32,
    batch0: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PackParams {
    rows: u32,
    cols: u32,
    out_rows: u32,
    out_cols: u32,
    ld4: u32,
    total_rows: u32,
    _pad: [u32; 2],
}

/// How the GPU runs one product. The default is what the public ops use (the variant the
/// context runs, see `backend/gpu/registry.rs`); tests and tuning override parts of it
/// for one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GpuPlan {
    /// Run `matmul/portable` (`matmul_portable.wgsl`) whatever the context's variant.
    pub portable: bool,
    /// `(ROWS, WG)` of the subgroup kernel instead of its tile rule (ignored by the
    /// portable kernel, whose shape is fixed).
    pub shape: Option<(u32, u32)>,
    /// Copy operands to the layout with rows along k: always, never, or by size (`None`).
    pub pack: Option<bool>,
    /// Run this variant of the family (by name) instead of the context's choice; the
    /// autotuner times candidates this way.
    pub variant: Option<&'static str>,
}

/// An operand as the kernels read it: stacked matrices of `rows` rows of `ld` floats.
struct Operand<'a> {
    buf: Packed<'a>,
    rows: usize,
    ld: usize,
}

enum Packed<'a> {
    Borrowed(&'a GpuBuffer),
    Owned(GpuBuffer),
}

impl Operand<'_> {
    fn buf(&self) -> &GpuBuffer {
        match &self.buf {
            Packed::Borrowed(b) => b,
            Packed::Owned(b) => b,
        }
    }

    /// Rows of whole vec4s can be loaded as vec4s (one load instead of four).
    fn vec4(&self) -> bool {
        self.ld.is_multiple_of(4)
    }
}

/// `count` stacked [rows, cols] matrices as an [`Operand`]: the buffer itself, or with
/// `transpose` a pooled copy of the transposed matrices with rows padded by zeros to whole
/// vec4s.
fn operand(
    buf: &GpuBuffer,
    count: usize,
    rows: usize,
    cols: usize,
    transpose: bool,
) -> Result<Operand<'_>> {
    if !transpose {
        return Ok(Operand {
            buf: Packed::Borrowed(buf),
            rows,
            ld: cols,
        });
    }
    let (out_rows, out_cols) = (cols, rows);
    let ld4 = out_cols.div_ceil(4);
    let ctx = &buf.ctx;
    let total_rows = count * out_rows;
    let out = ctx.alloc((total_rows * ld4 * 16) as u64)?;
    let params = PackParams {
        rows: rows as u32,
        cols: cols as u32,
        out_rows: out_rows as u32,
        out_cols: out_cols as u32,
        ld4: ld4 as u32,
        total_rows: total_rows as u32,
        _pad: [0; 2],
    };
    ctx.dispatch(
        &PACK,
        &[("WG", f64::from(PACK_WG))],
        bytemuck::bytes_of(&params),
        &[buf, &out],
        ctx.grid(total_rows as u64, u64::from(PACK_WG))?,
    )?;
    Ok(Operand {
        buf: Packed::Owned(out),
        rows: out_rows,
        ld: 4 * ld4,
    })
}

/// Products of at least this many flops first copy a transposed A to [m, k] and an
/// untransposed B to [n, k], so the kernel reads both along k. Measured on llvmpipe (GFLOP/s
/// by CPU time, plain A·B, n = 512 / 1024 / 2048): as stored 60 / 55 / 45, copied 48 / 53 /
/// 55; Aᵀ·B: 56 / 51 / 43 and 50 / 51 / 51. The copies pay off once B no longer fits in the
/// cache and its rows, read 32 bytes at a time, stop being prefetched.
const PACK_MIN_FLOP: u64 = 1 << 32;

/// Invocations per workgroup of `pack`.
const PACK_WG: u32 = 64;

/// Rows per invocation of the subgroup kernel for an output of `m` rows: 64 for large
/// products (32: −10% at n = 1024; 128 with 8 columns: −20%, too many spills), otherwise
/// the smallest of 8, 16, 32 that covers m, so that small products do not compute clamped
/// rows. Compile time grows with the block: ~0.6 s for 8 rows, ~5 s for 64 on llvmpipe,
/// once per variant (Mesa caches it on disk, after which it is ~0.8 s).
fn rows_for(m: usize) -> u32 {
    [8u32, 16, 32]
        .into_iter()
        .find(|&r| m <= r as usize)
        .unwrap_or(64)
}

/// The tile rule of `matmul/subgroup`: [`rows_for`] rows and one subgroup per workgroup
/// (at most 64 lanes). The kernel shares nothing across subgroups, and on llvmpipe (8
/// lanes) a small workgroup wastes the least on columns past n.
fn subgroup_tile(facts: &AdapterFacts, m: usize) -> (u32, u32) {
    let max_lanes = facts.subgroup_sizes.map_or(8, |(_, max)| max);
    (rows_for(m), max_lanes.min(64))
}

/// Columns owned by one invocation of each kernel.
const SUBGROUP_COLS: usize = 8;
const PORTABLE_COLS: usize = 4;
const PORTABLE_ROWS: u32 = 8;
const PORTABLE_WG: u32 = 64;

pub(crate) fn matmul_gpu(
    a: &GpuBuffer,
    b: &GpuBuffer,
    d: &MatmulDims,
    trans_a: bool,
    trans_b: bool,
    plan: GpuPlan,
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let MatmulDims { batch, m, k, n, .. } = *d;
    // A product is linear in each operand: scalar factors of a deferred operand apply to
    // the result instead, where they fuse into its readers, so the operand need not be
    // computed on its own first (the scaled tangents of an HVP).
    if ctx.fusion() && plan == GpuPlan::default() && (a.is_deferred() || b.is_deferred()) {
        let (ra, fa) = crate::backend::gpu::fusion::split_factors(a);
        let (rb, fb) = crate::backend::gpu::fusion::split_factors(b);
        if !fa.is_empty() || !fb.is_empty() {
            let out = matmul_gpu(&ra, &rb, d, trans_a, trans_b, plan)?;
            return crate::backend::gpu::fusion::apply_factors(
                out,
                fa.into_iter().chain(fb).collect(),
            );
        }
    }
    let out = ctx.alloc((batch * m * n * 4) as u64)?;
    if batch * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        super::fill::fill_gpu_bits(&out, 0)?;
        return Ok(out);
    }
    // Narrow products (n or m ≤ 16) go to the `matvec` family; a non-default plan (a
    // test or tuning run) asks for the GEMM kernels.
    if plan == GpuPlan::default() && super::matvec::is_narrow(d) {
        super::matvec::matvec_gpu(a, b, d, trans_a, trans_b, &out)?;
        return Ok(out);
    }
    let (a_count, b_count) = (
        if d.a_batched { batch } else { 1 },
        if d.b_batched { batch } else { 1 },
    );
    // Stored shapes: A is [m, k] or (transposed) [k, m]; B is [k, n] or [n, k].
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    // The variant: the plan's, else the context's (see `backend/gpu/registry.rs` for the
    // rule, unless one is forced) or, where the autotuner is on, the fastest it measured
    // for this shape class (`backend/gpu/tune.rs`).
    let variant = if plan.portable {
        &PORTABLE
    } else if let Some(name) = plan.variant {
        registry::MATMUL
            .variants
            .iter()
            .copied()
            .find(|v| v.name == name)
            .ok_or_else(|| crate::error::Error::InvalidArgument {
                op: "matmul",
                msg: format!("no matmul variant `{name}`"),
            })?
    } else {
        let flops = 2 * (batch as u64) * (m as u64) * (n as u64) * (k as u64);
        ctx.tuned_variant(
            &registry::MATMUL,
            || tune::matmul_class(m, k, n, trans_a, trans_b, d.a_batched || d.b_batched),
            flops,
            |v| {
                let candidate = GpuPlan {
                    variant: Some(v.name),
                    ..plan
                };
                matmul_gpu(a, b, d, trans_a, trans_b, candidate).map(drop)
            },
        )?
    };
    let Plan {
        ref main,
        tile,
        wg_override,
        packs,
        tunable,
        cols,
    } = variant.plan;
    let big = plan
        .pack
        .unwrap_or(packs && 2 * (m as u64) * (n as u64) * (k as u64) >= PACK_MIN_FLOP);
    let pa = operand(a, a_count, a_rows, a_cols, big && trans_a)?;
    let pb = operand(b, b_count, b_rows, b_cols, big && !trans_b)?;
    let (trans_a, trans_b) = (trans_a && !big, trans_b || big);

    let (rows, wg) = match plan.shape {
        Some(shape) if tunable => shape,
        _ => tile(ctx.facts(), m),
    };
    let groups_n = n.div_ceil(cols).div_ceil(wg as usize);
    let groups_m = m.div_ceil(rows as usize);
    let mut params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        k4: k.div_ceil(4) as u32,
        lda: pa.ld as u32,
        ldb: pb.ld as u32,
        a_batch: if d.a_batched {
            (pa.rows * pa.ld) as u32
        } else {
            0
        },
        b_batch: if d.b_batched {
            (pb.rows * pb.ld) as u32
        } else {
            0
        },
        a_last_row: pa.rows as u32 - 1,
        a_last_col4: pa.ld.div_ceil(4) as u32 - 1,
        b_last_row: pb.rows as u32 - 1,
        b_last_col4: pb.ld.div_ceil(4) as u32 - 1,
        group_m0: 0,
        batch0: 0,
        _pad: [0; 2],
    };
    let mut constants = vec![
        ("TRANS_A", f64::from(u8::from(trans_a))),
        ("TRANS_B", f64::from(u8::from(trans_b))),
        ("A_VEC4", f64::from(u8::from(pa.vec4()))),
        ("B_VEC4", f64::from(u8::from(pb.vec4()))),
    ];
    if wg_override {
        constants.push(("WG", f64::from(wg)));
    }
    if tunable {
        constants.push(("ROWS", f64::from(rows)));
    }
    // Row blocks and batch entries beyond the per-dimension workgroup limit go to further
    // dispatches; columns beyond it (n over ~4M at 8 lanes) are an error from `dispatch`.
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    for batch0 in (0..batch).step_by(max) {
        for group_m0 in (0..groups_m).step_by(max) {
            params.batch0 = batch0 as u32;
            params.group_m0 = group_m0 as u32;
            ctx.dispatch(
                main,
                &constants,
                bytemuck::bytes_of(&params),
                &[pa.buf(), pb.buf(), pa.buf(), pb.buf(), &out],
                [
                    groups_n as u32,
                    (groups_m - group_m0).min(max) as u32,
                    (batch - batch0).min(max) as u32,
                ],
            )?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subgroup_tile_rule_is_the_measured_one() {
        let facts = |min, max| AdapterFacts {
            features: wgpu::Features::SUBGROUP,
            subgroup_sizes: Some((min, max)),
            limits: wgpu::Limits::default(),
            device_type: wgpu::DeviceType::Cpu,
            vendor: 0,
        };
        // llvmpipe: 8 lanes. The smallest of 8, 16, 32 rows covering m, else 64.
        let lavapipe = facts(8, 8);
        for (m, rows) in [
            (1, 8),
            (8, 8),
            (9, 16),
            (16, 16),
            (17, 32),
            (32, 32),
            (33, 64),
        ] {
            assert_eq!(subgroup_tile(&lavapipe, m), (rows, 8), "m = {m}");
        }
        assert_eq!(subgroup_tile(&lavapipe, 4096), (64, 8));
        // One subgroup per workgroup, at most 64 lanes.
        assert_eq!(subgroup_tile(&facts(32, 32), 100), (64, 32));
        assert_eq!(subgroup_tile(&facts(8, 128), 100), (64, 64));
        // The portable kernel's fixed shape.
        assert_eq!((PORTABLE.plan.tile)(&lavapipe, 100), (8, 64));
        assert!(!PORTABLE.plan.tunable && SUBGROUP.plan.tunable);
    }
}
