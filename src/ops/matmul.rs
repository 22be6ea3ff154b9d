//! Matrix multiplication, plain, transposed and batched: `shaders/matmul.wgsl` on the GPU,
//! `matrixmultiply` on the CPU (transposes are free there: they are just strides).
//!
//! ## The GPU kernel, and why it looks the way it does
//! Each invocation owns 4 adjacent columns of C and `ROWS` rows; its accumulators live in
//! registers. The rows are shared by the whole subgroup: lanes 0..7 each load one vec4 of
//! A, and `subgroupBroadcast` hands all 32 values to every lane, while B (the lane's own
//! columns) is loaded per lane, one vec4 per k row, and reused by all `ROWS` rows.
//!
//! Measured on llvmpipe (Mesa 22.3, 8 lanes of 32 bits; numbers are CPU-time based, see
//! the report in the commit history): a load whose address may differ across lanes is
//! compiled to a loop over the lanes with a bounds check per component, ~50 cycles per
//! vec4 per group of 8 lanes, and llvmpipe 22.3 treats even a uniform address as
//! per-lane inside a loop. A multiply-add costs ~1 cycle per 8 lanes, a broadcast ~1.
//! So loads decide everything:
//! - 8×4 register block per invocation, every lane loading its own A and B: ~14 GFLOP/s;
//! - A shared through subgroup broadcasts, 32 rows: ~33, 64 rows: ~38 (n = 1024).
//!
//! Many rows per invocation make LLVM spill accumulators to the stack, which is cheap
//! (one vector load and store) next to a per-lane load. Shared-memory tiles lose on
//! llvmpipe (barriers switch coroutines) and are not used; a hardware GPU gets the same
//! register blocking and subgroup sharing, which suits it too, if not optimally.
//!
//! Adapters without subgroups (the GL backend) run `shaders/matmul_portable.wgsl`, the same
//! loop with every lane loading its own A. Both kernels load operands as vec4s, so an
//! operand whose contiguous dimension is not a multiple of 4 is first copied with a padded
//! leading dimension (`pack`, O(size) next to the O(m·n·k) product).

use crate::autodiff::{Op, record};
use crate::device::{GpuBuffer, Kernel};
use crate::error::{Error, Result};
use crate::shaders;
use crate::tensor::{Element, Storage, Tensor, same_place};

static MATMUL: Kernel = Kernel {
    shader: &shaders::MATMUL,
    entry: "main",
    reads: 2,
    writes: 1,
};

static MATMUL_PORTABLE: Kernel = Kernel {
    shader: &shaders::MATMUL_PORTABLE,
    entry: "main",
    reads: 2,
    writes: 1,
};

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
    lda4: u32,
    ldb4: u32,
    a_batch4: u32,
    b_batch4: u32,
    a_rows: u32,
    a_cols4: u32,
    b_rows: u32,
    b_cols4: u32,
    groups_n: u32,
    groups_m: u32,
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

/// The shapes of one product: `batch` products of [m, k]·[k, n]. An operand with
/// `*_batched == false` is one matrix shared by every product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a_batched: bool,
    b_batched: bool,
}

fn mismatch(a: &[usize], b: &[usize]) -> Error {
    Error::ShapeMismatch {
        op: "matmul",
        lhs: a.to_vec(),
        rhs: b.to_vec(),
    }
}

/// Checks the shapes of `op(a) · op(b)`: rank 2 or 3 each, equal batch extents when both
/// are rank 3, equal inner dimensions.
fn dims(a: &[usize], b: &[usize], trans_a: bool, trans_b: bool) -> Result<(Dims, Vec<usize>)> {
    let split = |s: &[usize]| match *s {
        [r, c] => Some((None, r, c)),
        [bt, r, c] => Some((Some(bt), r, c)),
        _ => None,
    };
    let ((ba, ra, ca), (bb, rb, cb)) = match (split(a), split(b)) {
        (Some(x), Some(y)) => (x, y),
        _ => return Err(mismatch(a, b)),
    };
    let (m, ka) = if trans_a { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    if ka != kb {
        return Err(mismatch(a, b));
    }
    let batch = match (ba, bb) {
        (Some(x), Some(y)) if x != y => return Err(mismatch(a, b)),
        (Some(x), _) | (None, Some(x)) => Some(x),
        (None, None) => None,
    };
    let out = match batch {
        Some(bt) => vec![bt, m, n],
        None => vec![m, n],
    };
    let d = Dims {
        batch: batch.unwrap_or(1),
        m,
        k: ka,
        n,
        a_batched: ba.is_some(),
        b_batched: bb.is_some(),
    };
    Ok((d, out))
}

/// The CPU GEMMs of `matrixmultiply`, for the two element types.
trait Gemm: Element {
    /// C = A·B with explicit row and column strides (elements).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl Gemm for f32 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded from the caller, which checks every extent against the slices.
        unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc) }
    }
}

impl Gemm for f64 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded from the caller, which checks every extent against the slices.
        unsafe { matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc) }
    }
}

/// CPU reference: one strided GEMM per batch entry.
fn matmul_cpu<T: Gemm>(a: &[T], b: &[T], d: &Dims, trans_a: bool, trans_b: bool) -> Vec<T> {
    let Dims { batch, m, k, n, .. } = *d;
    let mut c = vec![T::zero(); batch * m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    // Element (i, p) of op(A) is at i·rsa + p·csa in a stored [m, k] or (transposed) [k, m].
    let (rsa, csa) = if trans_a { (1, m) } else { (k, 1) };
    let (rsb, csb) = if trans_b { (1, k) } else { (n, 1) };
    let (sa, sb) = (
        if d.a_batched { m * k } else { 0 },
        if d.b_batched { k * n } else { 0 },
    );
    assert!(a.len() >= (batch - 1) * sa + m * k && b.len() >= (batch - 1) * sb + k * n);
    for (t, ct) in c.chunks_exact_mut(m * n).enumerate() {
        // SAFETY: op(A) of batch t spans a[t·sa .. t·sa + m·k], op(B) spans
        // b[t·sb .. t·sb + k·n] (checked above), and ct holds m·n elements, all with the
        // strides computed above.
        unsafe {
            T::gemm(
                m,
                k,
                n,
                a.as_ptr().add(t * sa),
                rsa as isize,
                csa as isize,
                b.as_ptr().add(t * sb),
                rsb as isize,
                csb as isize,
                ct.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    c
}

/// Which GPU kernel runs, and its block shape. `Auto` is what the public ops use; tests
/// force the portable kernel to cover it on adapters that have subgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GpuKernel {
    Auto,
    Portable,
    /// The subgroup kernel with explicit `ROWS` and `WG` (tuning).
    #[allow(dead_code)]
    Subgroup {
        rows: u32,
        wg: u32,
    },
}

/// An operand ready for the kernels: stacked matrices whose rows are whole vec4s.
struct Operand<'a> {
    buf: Packed<'a>,
    /// Rows of one stored matrix.
    rows: usize,
    /// Row length in vec4s.
    ld4: usize,
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
}

/// `count` stacked [rows, cols] matrices as an [`Operand`]: the buffer itself when rows
/// are whole vec4s and no transpose is asked for, otherwise a pooled copy (transposed when
/// `transpose`) with rows padded by zeros to a multiple of 4.
fn operand(
    buf: &GpuBuffer,
    count: usize,
    rows: usize,
    cols: usize,
    transpose: bool,
) -> Result<Operand<'_>> {
    let (out_rows, out_cols) = if transpose {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let ld4 = out_cols.div_ceil(4);
    if !transpose && cols % 4 == 0 {
        return Ok(Operand {
            buf: Packed::Borrowed(buf),
            rows,
            ld4,
        });
    }
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
    const PACK_WG: u32 = 64;
    ctx.dispatch(
        &PACK,
        &[
            ("WG", f64::from(PACK_WG)),
            ("TRANSPOSE", f64::from(u8::from(transpose))),
        ],
        bytemuck::bytes_of(&params),
        &[buf, &out],
        ctx.grid(total_rows as u64, u64::from(PACK_WG))?,
    )?;
    Ok(Operand {
        buf: Packed::Owned(out),
        rows: out_rows,
        ld4,
    })
}

/// Block shape of the subgroup kernel for an output of m rows. 64 rows per invocation was
/// the fastest on llvmpipe (32 rows: −15% at n = 1024; the accumulators spill either way);
/// small m takes the smallest block that covers it, so no work is spent on clamped rows.
/// 8 lanes per workgroup (one llvmpipe subgroup): see `bench_notes` in the tests.
/// Products of at least this many flops copy their operands to the fastest layout first.
const PACK_MIN_FLOP: usize = 1 << 30;

fn subgroup_shape(m: usize) -> (u32, u32) {
    let rows = [8u32, 16, 32, 64]
        .into_iter()
        .find(|&r| m <= r as usize)
        .unwrap_or(64);
    (rows, 8)
}

fn matmul_gpu(
    a: &GpuBuffer,
    b: &GpuBuffer,
    d: &Dims,
    trans_a: bool,
    trans_b: bool,
    kernel: GpuKernel,
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let Dims { batch, m, k, n, .. } = *d;
    let out = ctx.alloc((batch * m * n * 4) as u64)?;
    if batch * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        crate::ops::fill::fill_gpu_bits(&out, 0)?;
        return Ok(out);
    }
    let (a_count, b_count) = (
        if d.a_batched { batch } else { 1 },
        if d.b_batched { batch } else { 1 },
    );
    // Stored shapes: A is [m, k] or (transposed) [k, m]; B is [k, n] or [n, k]. Large
    // products first copy A to [m, k] and B to [n, k] (rows along k), the layout the kernel
    // reads fastest (see `PACK_MIN_FLOP`).
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    let big = std::env::var("SCR_PACK").map_or(2 * m * n * k >= PACK_MIN_FLOP, |v| v == "1");
    let pa = operand(a, a_count, a_rows, a_cols, big && trans_a)?;
    let pb = operand(b, b_count, b_rows, b_cols, big && !trans_b)?;
    let (trans_a, trans_b) = (trans_a && !big, trans_b || big);

    let subgroups = ctx.subgroup_min_size() >= 8;
    let (entry, rows, wg) = match kernel {
        GpuKernel::Auto if subgroups => {
            let (rows, wg) = subgroup_shape(m);
            (&MATMUL, rows, wg)
        }
        GpuKernel::Subgroup { rows, wg } if subgroups => (&MATMUL, rows, wg),
        _ => (&MATMUL_PORTABLE, 8, 64),
    };
    let groups_n = n.div_ceil(4).div_ceil(wg as usize);
    let groups_m = m.div_ceil(rows as usize);
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        k4: k.div_ceil(4) as u32,
        lda4: pa.ld4 as u32,
        ldb4: pb.ld4 as u32,
        a_batch4: if d.a_batched {
            (pa.rows * pa.ld4) as u32
        } else {
            0
        },
        b_batch4: if d.b_batched {
            (pb.rows * pb.ld4) as u32
        } else {
            0
        },
        a_rows: pa.rows as u32 - 1,
        a_cols4: pa.ld4 as u32 - 1,
        b_rows: pb.rows as u32 - 1,
        b_cols4: pb.ld4 as u32 - 1,
        groups_n: groups_n as u32,
        groups_m: groups_m as u32,
        _pad: [0; 2],
    };
    let mut constants = vec![
        ("WG", f64::from(wg)),
        ("TRANS_A", f64::from(u8::from(trans_a))),
        ("TRANS_B", f64::from(u8::from(trans_b))),
    ];
    let swap = std::env::var("SCR_SWAP").is_ok_and(|v| v == "1");
    if std::ptr::eq(entry, &MATMUL) {
        constants.push(("ROWS", f64::from(rows)));
        constants.push(("SWAP", f64::from(u8::from(swap))));
    }
    ctx.dispatch(
        entry,
        &constants,
        bytemuck::bytes_of(&params),
        &[pa.buf(), pb.buf(), &out],
        if swap {
            [groups_m as u32, groups_n as u32, batch as u32]
        } else {
            [groups_n as u32, groups_m as u32, batch as u32]
        },
    )?;
    Ok(out)
}

/// `op(a) · op(b)` where op transposes the stored matrix when its flag is set. Operands
/// are rank 2 ([m, k]·[k, n]) or rank 3 with a shared leading batch dimension; a rank-2
/// operand next to a rank-3 one is shared by every batch entry.
pub(crate) fn matmul_raw(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    matmul_with(a, b, trans_a, trans_b, GpuKernel::Auto)
}

pub(crate) fn matmul_with(
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    kernel: GpuKernel,
) -> Result<Tensor> {
    same_place("matmul", a, b)?;
    let (d, out) = dims(a.shape(), b.shape(), trans_a, trans_b)?;
    let storage = match (&*a.storage, &*b.storage) {
        (Storage::F32(x), Storage::F32(y)) => Storage::F32(matmul_cpu(x, y, &d, trans_a, trans_b)),
        (Storage::F64(x), Storage::F64(y)) => Storage::F64(matmul_cpu(x, y, &d, trans_a, trans_b)),
        (Storage::Gpu(x), Storage::Gpu(y)) => {
            Storage::Gpu(matmul_gpu(x, y, &d, trans_a, trans_b, kernel)?)
        }
        _ => unreachable!("same_place checked device and dtype"),
    };
    Ok(Tensor::from_storage(storage, &out))
}

impl Tensor {
    /// Matrix product `self · other`: [m, k]·[k, n] → [m, n]. Rank-3 operands multiply
    /// per batch entry ([B, m, k]·[B, k, n] → [B, m, n]); a rank-2 operand next to a
    /// rank-3 one is shared by every entry.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, false, false)
    }

    /// Matrix product with either stored operand transposed: `trans_a` uses selfᵀ (self
    /// stored [k, m]), `trans_b` uses otherᵀ (other stored [n, k]). No transposed copy is
    /// made on either device. Batching works as in [`Tensor::matmul`], per batch entry.
    pub fn matmul_t(&self, other: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        let out = matmul_raw(self, other, trans_a, trans_b)?;
        Ok(record(Op::Matmul { trans_a, trans_b }, &[self, other], out))
    }
}

#[cfg(test)]
#[path = "/work/scratch/mm_scratch.rs"]
mod scratch;
