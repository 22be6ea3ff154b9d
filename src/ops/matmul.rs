//! Matrix multiplication, plain, transposed and batched: `shaders/matmul.wgsl` on the GPU,
//! `matrixmultiply` on the CPU (transposes are free there: they are just strides).
//!
//! ## The GPU kernel, and why it looks the way it does
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
//! Adapters without subgroups (the GL backend) run `shaders/matmul_portable.wgsl`, the same
//! loop with every lane loading its own A. Both kernels read either stored layout of each
//! operand in place, as vec4s when its rows are whole vec4s and as floats otherwise (four
//! loads per vec4, cheaper than a copy for the small products that such shapes usually
//! are); only large products copy operands, to the layout read fastest (see
//! `PACK_MIN_FLOP`).

use crate::autodiff::{Op, record};
use crate::backend::cpu::CpuBuf;
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::{Error, Result};
use crate::tensor::{Element, Storage, Tensor, same_place};

/// Reads A and B, each bound twice (as vec4s and as floats, see the shader).
static MATMUL: Kernel = Kernel {
    shader: &shaders::MATMUL,
    entry: "main",
    reads: 4,
    writes: 1,
};

static MATMUL_PORTABLE: Kernel = Kernel {
    shader: &shaders::MATMUL_PORTABLE,
    entry: "main",
    reads: 4,
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

    /// Matrix–vector kernels tuned for this element type, when the CPU has them:
    /// `dots` (out[i] = row_i · v) and `combine_rows` (out = Σ_p c_p row_p). Return false
    /// to fall back to the portable loops.
    fn fast_dots(_rows: &[Self], _len: usize, _v: &[Self], _out: &mut [Self]) -> bool {
        false
    }
    fn fast_combine_rows(_rows: &[Self], _len: usize, _c: &[Self], _out: &mut [Self]) -> bool {
        false
    }
    /// C = op(A)·B for a narrow row-major B (see `matmul_x86::narrow_gemm`); false when
    /// there is no kernel for this shape or CPU.
    #[allow(clippy::too_many_arguments)]
    fn fast_narrow(
        _a: &[Self],
        _rsa: usize,
        _csa: usize,
        _b: &[Self],
        _m: usize,
        _k: usize,
        _n: usize,
        _c: &mut [Self],
    ) -> bool {
        false
    }
}

/// Matrix–vector passes over at least this many elements (512 KB of f32) are split
/// over two cores (see `cpu_pair`); smaller ones cost less than the hand-off.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PAIR_MIN_ELEMENTS: usize = 1 << 17;

/// `f(r0, r1, rows r0..r1 of out)` for the two halves of `m` output rows of `width`
/// elements, split on an eight-row boundary (only the last block of a half is partial),
/// one half per core when the helper is free (`cpu_pair`).
#[cfg(target_arch = "x86_64")]
fn rows_on_two_cores(
    out: &mut [f32],
    m: usize,
    width: usize,
    f: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    let h = ((m / 2).div_ceil(8) * 8).min(m);
    let (first, second) = out[..m * width].split_at_mut(h * width);
    let halves = [std::sync::Mutex::new(first), std::sync::Mutex::new(second)];
    crate::backend::cpu::threads::run_halves(&|half| {
        let (r0, r1) = if half == 0 { (0, h) } else { (h, m) };
        let mut rows = halves[half].lock().unwrap_or_else(|e| e.into_inner());
        f(r0, r1, &mut rows);
    });
}

// The fast kernels exist for x86-64 only; elsewhere these report "no kernel".
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
impl Gemm for f32 {
    fn fast_dots(rows: &[f32], len: usize, v: &[f32], out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if super::matmul_x86::available() {
            use super::matmul_x86::dots;
            let m = out.len();
            if m * len < PAIR_MIN_ELEMENTS {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { dots(rows, len, v, out) };
                return true;
            }
            rows_on_two_cores(out, m, 1, &|r0, r1, o| {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                unsafe { dots(&rows[r0 * len..r1 * len], len, v, o) };
            });
            return true;
        }
        false
    }

    fn fast_narrow(
        a: &[f32],
        rsa: usize,
        csa: usize,
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        c: &mut [f32],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if n <= super::matmul_x86::NARROW_MAX && super::matmul_x86::narrow_available() {
            use super::matmul_x86::narrow_gemm;
            if m < 16 || m * k * n < PAIR_MIN_ELEMENTS {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                unsafe { narrow_gemm(a, rsa, csa, b, m, k, n, c) };
                return true;
            }
            rows_on_two_cores(c, m, n, &|r0, r1, o| {
                // SAFETY: the CPU supports AVX-512F (checked above).
                unsafe { narrow_gemm(&a[r0 * rsa..], rsa, csa, b, r1 - r0, k, n, o) };
            });
            return true;
        }
        false
    }

    fn fast_combine_rows(rows: &[f32], len: usize, c: &[f32], out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if super::matmul_x86::available() {
            use super::matmul_x86::combine_rows;
            let m = c.len();
            if m * len < PAIR_MIN_ELEMENTS {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { combine_rows(rows, len, c, out) };
                return true;
            }
            // Each half of the rows sums into its own output; the second is added after.
            let h = m / 2;
            let mut second = vec![0.0f32; len];
            {
                let outs = [
                    std::sync::Mutex::new(&mut *out),
                    std::sync::Mutex::new(&mut second[..]),
                ];
                crate::backend::cpu::threads::run_halves(&|half| {
                    let (r0, r1) = if half == 0 { (0, h) } else { (h, m) };
                    let mut o = outs[half].lock().unwrap_or_else(|e| e.into_inner());
                    // SAFETY: the CPU supports AVX2 and FMA (checked above).
                    unsafe { combine_rows(&rows[r0 * len..r1 * len], len, &c[r0..r1], &mut o) };
                });
            }
            for (o, s) in out.iter_mut().zip(&second) {
                *o += s;
            }
            return true;
        }
        false
    }

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

/// Independent accumulators of [`dot_lanes`]: enough vectors in flight to hide the
/// add latency with 8-wide registers (32 f32 = 4 AVX registers).
const DOT_LANES: usize = 32;

/// Σ x_i·y_i with [`DOT_LANES`] independent accumulators, so the loop vectorises and
/// pipelines (a single floating-point accumulator forces a sequential chain).
fn dot_lanes<T: Element>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::zero(); DOT_LANES];
    let (xc, yc) = (x.chunks_exact(DOT_LANES), y.chunks_exact(DOT_LANES));
    let tail: T = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .fold(T::zero(), |s, (&p, &q)| s + p * q);
    for (p, q) in xc.zip(yc) {
        for l in 0..DOT_LANES {
            acc[l] = acc[l] + p[l] * q[l];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// out += s·row
fn axpy_row<T: Element>(out: &mut [T], s: T, row: &[T]) {
    for (o, &r) in out.iter_mut().zip(row) {
        *o = *o + s * r;
    }
}

/// Matrix–vector products (n = 1 or m = 1), which a GEMM kernel handles badly: it packs
/// the whole matrix on every call (measured: 70% of a ridge hypergradient's time).
/// Returns false when the shape is not a matrix–vector product.
fn matvec_cpu<T: Gemm>(
    a: &[T],
    b: &[T],
    d: &Dims,
    trans_a: bool,
    trans_b: bool,
    c: &mut [T],
) -> bool {
    let Dims { batch, m, k, n, .. } = *d;
    if n != 1 && m != 1 {
        return false;
    }
    let (sa, sb) = (
        if d.a_batched { m * k } else { 0 },
        if d.b_batched { k * n } else { 0 },
    );
    for t in 0..batch {
        let (at, bt) = (&a[t * sa..t * sa + m * k], &b[t * sb..t * sb + k * n]);
        let ct = &mut c[t * m * n..(t + 1) * m * n];
        // Normalise to the two kernels: rows · vector (each output a dot product of a
        // contiguous row) or vector · rows (each output column accumulates row by row).
        let (rows, len, vector, dots) = match (n == 1, trans_a, trans_b) {
            (true, false, _) => (at, k, bt, true),
            (true, true, _) => (at, m, bt, false),
            (false, _, true) => (bt, k, at, true),
            (false, _, false) => (bt, n, at, false),
        };
        // Single-threaded on purpose: splitting rows over 2 threads measured 2–3× slower
        // whenever other work shares the cores (tests, the GPU driver's threads).
        if dots {
            if !T::fast_dots(rows, len, vector, ct) {
                for (ci, row) in ct.iter_mut().zip(rows.chunks_exact(len)) {
                    *ci = dot_lanes(row, vector);
                }
            }
        } else if !T::fast_combine_rows(rows, len, &vector[..rows.len() / len], ct) {
            for (p, row) in rows.chunks_exact(len).enumerate() {
                axpy_row(ct, vector[p], row);
            }
        }
    }
    true
}

/// CPU reference: one strided GEMM per batch entry.
fn matmul_cpu<T: Gemm>(a: &[T], b: &[T], d: &Dims, trans_a: bool, trans_b: bool) -> Vec<T> {
    let Dims { batch, m, k, n, .. } = *d;
    let mut c = vec![T::zero(); batch * m * n];
    if c.is_empty() || k == 0 {
        return c;
    }
    if matvec_cpu(a, b, d, trans_a, trans_b, &mut c) {
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
    if !trans_b {
        let mut all = true;
        for (t, ct) in c.chunks_exact_mut(m * n).enumerate() {
            let (at, bt) = (&a[t * sa..t * sa + m * k], &b[t * sb..t * sb + k * n]);
            all &= T::fast_narrow(at, rsa, csa, bt, m, k, n, ct);
        }
        if all {
            return c;
        }
    }
    // matrixmultiply's own threading spins and yields on every call, which cost a third
    // of a small-matrix workload (hyper-cleaning); big products split their rows over
    // scoped threads here instead, and small ones stay on the calling thread.
    let threads = crate::backend::cpu::threads::cores().min(4);
    let parts = if threads > 1 && m * k * n >= 1 << 24 && m >= 16 * threads {
        threads
    } else {
        1
    };
    let rows_per_part = m.div_ceil(parts);
    for (t, ct) in c.chunks_exact_mut(m * n).enumerate() {
        let run = |r0: usize, cpart: &mut [T]| {
            let rows = cpart.len() / n;
            // SAFETY: op(A) of batch t spans a[t·sa .. t·sa + m·k] and its rows r0..r0+rows
            // start at r0·rsa; op(B) spans b[t·sb .. t·sb + k·n] (checked above); cpart
            // holds rows·n elements of C; all strides are those computed above.
            unsafe {
                T::gemm(
                    rows,
                    k,
                    n,
                    a.as_ptr().add(t * sa + r0 * rsa),
                    rsa as isize,
                    csa as isize,
                    b.as_ptr().add(t * sb),
                    rsb as isize,
                    csb as isize,
                    cpart.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        };
        if parts == 1 {
            run(0, ct);
        } else {
            std::thread::scope(|scope| {
                for (i, cpart) in ct.chunks_mut(rows_per_part * n).enumerate() {
                    let run = &run;
                    scope.spawn(move || run(i * rows_per_part, cpart));
                }
            });
        }
    }
    c
}

/// How the GPU runs one product. The default is what the public ops use; tests and
/// tuning override parts of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GpuPlan {
    /// Run `matmul_portable.wgsl` even when the adapter has subgroups.
    pub portable: bool,
    /// `(ROWS, WG)` of the subgroup kernel instead of the automatic choice.
    pub shape: Option<(u32, u32)>,
    /// Copy operands to the layout with rows along k: always, never, or by size (`None`).
    pub pack: Option<bool>,
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
    const PACK_WG: u32 = 64;
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

/// Columns owned by one invocation of each kernel.
const SUBGROUP_COLS: usize = 8;
const PORTABLE_COLS: usize = 4;
const PORTABLE_ROWS: usize = 8;
const PORTABLE_WG: u32 = 64;

fn matmul_gpu(
    a: &GpuBuffer,
    b: &GpuBuffer,
    d: &Dims,
    trans_a: bool,
    trans_b: bool,
    plan: GpuPlan,
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let Dims { batch, m, k, n, .. } = *d;
    let out = ctx.alloc((batch * m * n * 4) as u64)?;
    if batch * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        crate::backend::gpu::kernels::fill::fill_gpu_bits(&out, 0)?;
        return Ok(out);
    }
    let (a_count, b_count) = (
        if d.a_batched { batch } else { 1 },
        if d.b_batched { batch } else { 1 },
    );
    // Stored shapes: A is [m, k] or (transposed) [k, m]; B is [k, n] or [n, k].
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    let big = plan
        .pack
        .unwrap_or(2 * (m as u64) * (n as u64) * (k as u64) >= PACK_MIN_FLOP);
    let pa = operand(a, a_count, a_rows, a_cols, big && trans_a)?;
    let pb = operand(b, b_count, b_rows, b_cols, big && !trans_b)?;
    let (trans_a, trans_b) = (trans_a && !big, trans_b || big);

    // The subgroup kernel broadcasts from lanes 0..7, so every subgroup needs 8 lanes. One
    // subgroup per workgroup: the kernel shares nothing across subgroups, and on llvmpipe
    // (8 lanes) a small workgroup wastes the least on columns past n.
    let sizes = ctx
        .subgroup_sizes()
        .filter(|&(min, _)| min >= 8 && !plan.portable);
    let (entry, rows, wg, cols) = match (plan.shape, sizes) {
        (None, Some((_, max))) => (&MATMUL, rows_for(m), max.min(64), SUBGROUP_COLS),
        (Some((rows, wg)), Some(_)) => (&MATMUL, rows, wg, SUBGROUP_COLS),
        (_, None) => (
            &MATMUL_PORTABLE,
            PORTABLE_ROWS as u32,
            PORTABLE_WG,
            PORTABLE_COLS,
        ),
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
        ("WG", f64::from(wg)),
        ("TRANS_A", f64::from(u8::from(trans_a))),
        ("TRANS_B", f64::from(u8::from(trans_b))),
        ("A_VEC4", f64::from(u8::from(pa.vec4()))),
        ("B_VEC4", f64::from(u8::from(pb.vec4()))),
    ];
    if std::ptr::eq(entry, &MATMUL) {
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
                entry,
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

/// `op(a) · op(b)` where op transposes the stored matrix when its flag is set. Operands
/// are rank 2 ([m, k]·[k, n]) or rank 3 with a shared leading batch dimension; a rank-2
/// operand next to a rank-3 one is shared by every batch entry.
pub(crate) fn matmul_raw(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    matmul_with(a, b, trans_a, trans_b, GpuPlan::default())
}

pub(crate) fn matmul_with(
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    plan: GpuPlan,
) -> Result<Tensor> {
    same_place("matmul", a, b)?;
    let (d, out) = dims(a.shape(), b.shape(), trans_a, trans_b)?;
    let storage = match (&*a.storage, &*b.storage) {
        (Storage::F32(x), Storage::F32(y)) => {
            Storage::F32(CpuBuf::from(matmul_cpu(x, y, &d, trans_a, trans_b)))
        }
        (Storage::F64(x), Storage::F64(y)) => {
            Storage::F64(CpuBuf::from(matmul_cpu(x, y, &d, trans_a, trans_b)))
        }
        (Storage::Gpu(x), Storage::Gpu(y)) => {
            Storage::Gpu(matmul_gpu(x, y, &d, trans_a, trans_b, plan)?)
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
    /// stored [k, m]), `trans_b` uses otherᵀ (other stored [n, k]), as fast as the plain
    /// product: the kernels read either layout in place. Batching works as in
    /// [`Tensor::matmul`], per batch entry.
    pub fn matmul_t(&self, other: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        let out = matmul_raw(self, other, trans_a, trans_b)?;
        Ok(record(Op::Matmul { trans_a, trans_b }, &[self, other], out))
    }
}

#[cfg(test)]
mod tests {

    /// The CPU matrix–vector fast path and the row-split threaded GEMM (300·250·230 is
    /// above its threshold) against a naive triple loop, every flag, batched.
    #[test]
    fn cpu_matvec_and_threaded_gemm_match_naive() {
        for (m, k, n) in [
            (300, 250, 230),
            (7, 5, 1),
            (1, 5, 7),
            (1, 1, 1),
            (33, 17, 1),
            (1, 17, 33),
            (1, 9, 1),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let batch = 3;
                let a = crate::testing::oracle_pair(&[batch * m * k], 1).1;
                let b = crate::testing::oracle_pair(&[batch * k * n], 2).1;
                let d = Dims {
                    batch,
                    m,
                    k,
                    n,
                    a_batched: true,
                    b_batched: true,
                };
                let got = matmul_cpu(&a, &b, &d, ta, tb);
                let mut want = vec![0.0; batch * m * n];
                for t in 0..batch {
                    for i in 0..m {
                        for j in 0..n {
                            want[t * m * n + i * n + j] = (0..k)
                                .map(|p| {
                                    let av = if ta {
                                        a[t * m * k + p * m + i]
                                    } else {
                                        a[t * m * k + i * k + p]
                                    };
                                    let bv = if tb {
                                        b[t * k * n + j * k + p]
                                    } else {
                                        b[t * k * n + p * n + j]
                                    };
                                    av * bv
                                })
                                .sum();
                        }
                    }
                }
                crate::testing::assert_close(
                    &got,
                    &want,
                    1e-12,
                    1e-12,
                    &format!("{m}x{k}x{n} ta={ta} tb={tb}"),
                );
            }
        }
    }
    use super::*;
    use crate::Device;
    use crate::testing::{assert_close, gpu_or_skip, oracle_pair, rel_err};

    /// The f32 narrow GEMMs (outputs ≤ 16 wide: eight-row blocks, or sixteen-row column
    /// blocks for a transposed A) against the f64 path,
    /// with A plain and transposed, batched, at widths on both sides of the limit and row
    /// counts around the block, split over two cores or not. Tolerance: f32 rounding over
    /// at most 67 terms of size ≤ 1.
    #[test]
    fn f32_narrow_gemm_matches_f64() {
        for (m, k, n) in [
            (1, 1, 1),
            (9, 67, 10),
            (8, 5, 16),
            (17, 3, 7),
            (23, 64, 17),
            (7, 1, 2),
            // Transposed A with m ≥ 16 takes the column kernel: full and partial
            // sixteen-row blocks, n at both ends of its range, and n = 1 (row kernel).
            (16, 5, 2),
            (33, 9, 16),
            (19, 4, 1),
            // Large enough to be split over two cores.
            (203, 67, 10),
        ] {
            for trans_a in [false, true] {
                let batch = 2;
                let (_, a64) = oracle_pair(&[batch * m * k], 5);
                let (_, b64) = oracle_pair(&[batch * k * n], 6);
                let d = Dims {
                    batch,
                    m,
                    k,
                    n,
                    a_batched: true,
                    b_batched: true,
                };
                let want = matmul_cpu(&a64, &b64, &d, trans_a, false);
                let a32: Vec<f32> = a64.iter().map(|&v| v as f32).collect();
                let b32: Vec<f32> = b64.iter().map(|&v| v as f32).collect();
                let got: Vec<f64> = matmul_cpu(&a32, &b32, &d, trans_a, false)
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                assert_close(
                    &got,
                    &want,
                    1e-5,
                    1e-5,
                    &format!("{m}x{k}x{n} ta={trans_a}"),
                );
            }
        }
    }

    /// Passes large enough to be split over two cores (`cpu_pair`), both forms, row
    /// counts that do not halve on an eight-row block, repeated from two threads at once
    /// (one owns the helper, the other runs alone) so that hand-offs, reuse of one job
    /// address and the busy path all run. Tolerance as in the single-core test below.
    #[test]
    fn f32_matvec_split_over_two_cores_matches_f64() {
        let (rows, len) = (1031, 203);
        assert!(rows * len >= PAIR_MIN_ELEMENTS);
        let (_, x64) = oracle_pair(&[rows * len], 7);
        let (_, v64) = oracle_pair(&[rows], 8);
        let check = || {
            for rep in 0..40 {
                check_matvec_forms(&x64, rows, len, &v64, 1e-4, &format!("rep {rep}"));
            }
        };
        std::thread::scope(|s| {
            s.spawn(check);
            check();
        });
    }

    /// The f32 matrix–vector kernels (eight-row blocks, eight-lane bodies, scalar tails)
    /// against an f64 loop, on row counts and lengths around every block edge, both
    /// forms (row dots and row combinations), with the matrix at every offset from a
    /// 32-byte boundary. Tolerance: f32 rounding over at most 203 terms of size ≤ 1.
    #[test]
    fn f32_matvec_kernels_match_f64() {
        for rows in [1, 7, 8, 9, 16, 17, 203] {
            for len in [1, 7, 8, 9, 31, 200, 203] {
                let (_, x64) = oracle_pair(&[rows * len + 7], 3);
                let (_, v64) = oracle_pair(&[rows.max(len)], 4);
                for offset in [0, 1, 4, 7] {
                    let xr = &x64[offset..offset + rows * len];
                    let what = format!("{rows}x{len}+{offset}");
                    check_matvec_forms(xr, rows, len, &v64, 1e-5, &what);
                }
            }
        }
    }

    /// Both f32 matrix–vector forms on the [rows, len] matrix `x` (an f32 copy of the
    /// f64 values) against f64 loops: row dots with v[..len] (rtol 1e-5) and row
    /// combinations with v[..rows] (rtol `combine_rtol`), atol 1e-5, outputs poisoned.
    fn check_matvec_forms(
        x64: &[f64],
        rows: usize,
        len: usize,
        v64: &[f64],
        combine_rtol: f64,
        what: &str,
    ) {
        let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
        let to64 = |out: &[f32]| out.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let (vd, vc) = (&v64[..len], &v64[..rows]);
        // Row dots: out[i] = row_i · v.
        let v32: Vec<f32> = vd.iter().map(|&v| v as f32).collect();
        let mut out = vec![f32::NAN; rows];
        let d = Dims {
            batch: 1,
            m: rows,
            k: len,
            n: 1,
            a_batched: false,
            b_batched: false,
        };
        assert!(matvec_cpu(&x32, &v32, &d, false, false, &mut out));
        let want: Vec<f64> = x64
            .chunks_exact(len)
            .map(|r| r.iter().zip(vd).map(|(a, b)| a * b).sum())
            .collect();
        assert_close(&to64(&out), &want, 1e-5, 1e-5, &format!("dots {what}"));
        // Row combinations: out = Σ_p c_p row_p, i.e. cᵀ·X.
        let c32: Vec<f32> = vc.iter().map(|&v| v as f32).collect();
        let mut out = vec![f32::NAN; len];
        let d = Dims {
            batch: 1,
            m: 1,
            k: rows,
            n: len,
            a_batched: false,
            b_batched: false,
        };
        assert!(matvec_cpu(&c32, &x32, &d, false, false, &mut out));
        let want: Vec<f64> = (0..len)
            .map(|j| (0..rows).map(|p| vc[p] * x64[p * len + j]).sum())
            .collect();
        let msg = format!("combine {what}");
        assert_close(&to64(&out), &want, combine_rtol, 1e-5, &msg);
    }

    /// (m, k, n): ones, primes, k smaller than m and n, sizes that are not multiples of
    /// any block (4, 8 lanes, 8 columns, 8..64 rows) and ones that are.
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (7, 3, 5),
        (13, 5, 33),
        (31, 257, 13),
        (257, 31, 129),
        (64, 64, 64),
        (130, 1, 70),
        (3, 100, 1),
        (65, 9, 17),
    ];

    /// Stored shape of an operand: [rows, cols] of op(X), swapped when transposed, with a
    /// leading batch dimension when batched.
    fn stored(rows: usize, cols: usize, trans: bool, batch: Option<usize>) -> Vec<usize> {
        let mut s: Vec<usize> = batch.into_iter().collect();
        if trans {
            s.extend([cols, rows]);
        } else {
            s.extend([rows, cols]);
        }
        s
    }

    /// The same seeded inputs as f32 on `dev` and as f64 on the CPU.
    fn inputs(shape: &[usize], seed: u64, dev: &Device) -> (Tensor, Tensor) {
        let (x32, x64) = oracle_pair(shape, seed);
        (
            Tensor::from_vec(x32, shape, dev).unwrap(),
            Tensor::from_vec(x64, shape, &Device::Cpu).unwrap(),
        )
    }

    /// Compares `got` with the f64 reference: norm-wise relative error ≤ 1e-4 and
    /// elementwise |got − want| ≤ max(1e-4·|want|, 2e-6·k). The absolute part scales with
    /// k because an f32 dot product of k terms of size ≤ 1 carries an error that grows
    /// with k (~√k for random signs, k in the worst case); elements near zero need it.
    fn check(got: &Tensor, want: &Tensor, k: usize, what: &str) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        let (g, w) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
        let e = rel_err(&g, &w);
        assert!(e <= 1e-4, "{what}: relative error {e:e}");
        assert_close(&g, &w, 1e-4, 2e-6 * k.max(1) as f64, what);
    }

    /// Runs every shape, every transpose combination, unbatched and with a batch of 3,
    /// through `plan` on `dev`, against the CPU in f64.
    fn against_f64(dev: &Device, plan: GpuPlan, shapes: &[(usize, usize, usize)], label: &str) {
        let mut seed = 0;
        for &(m, k, n) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for batch in [None, Some(3)] {
                    seed += 2;
                    let (a, a64) = inputs(&stored(m, k, ta, batch), seed, dev);
                    let (b, b64) = inputs(&stored(k, n, tb, batch), seed + 1, dev);
                    let got = matmul_with(&a, &b, ta, tb, plan).unwrap();
                    let want = a64.matmul_t(&b64, ta, tb).unwrap();
                    let what = format!("{label} m{m} k{k} n{n} ta={ta} tb={tb} batch={batch:?}");
                    check(&got, &want, k, &what);
                }
            }
        }
    }

    #[test]
    fn cpu_reference_known_values() {
        let cpu = Device::Cpu;
        // [[1,2,3],[4,5,6]] · [[1,0],[0,1],[1,1]] = [[4,5],[10,11]]
        let a = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &cpu).unwrap();
        let b = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2], &cpu).unwrap();
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[2, 2]);
        assert_eq!(c.to_vec::<f64>().unwrap(), vec![4.0, 5.0, 10.0, 11.0]);
        // aᵀ·a is [3, 3]; a·aᵀ is [2, 2] = [[14, 32], [32, 77]].
        assert_eq!(a.matmul_t(&a, true, false).unwrap().shape(), &[3, 3]);
        assert_eq!(
            a.matmul_t(&a, false, true)
                .unwrap()
                .to_vec::<f64>()
                .unwrap(),
            vec![14.0, 32.0, 32.0, 77.0]
        );
        // (a·b)ᵀ = bᵀ·aᵀ, with both operands stored untransposed.
        assert_eq!(
            b.matmul_t(&a, true, true).unwrap().to_vec::<f64>().unwrap(),
            vec![4.0, 10.0, 5.0, 11.0]
        );
    }

    #[test]
    fn cpu_f32_matches_cpu_f64() {
        against_f64(&Device::Cpu, GpuPlan::default(), &SHAPES, "cpu f32");
    }

    #[test]
    fn gpu_matches_cpu_f64_all_transposes_and_batches() {
        let Some(gpu) = gpu_or_skip() else { return };
        against_f64(&gpu, GpuPlan::default(), &SHAPES, "gpu");
    }

    #[test]
    fn gpu_with_copied_operands_matches_cpu_f64() {
        // The layout large products use (A as [m, k], B as [n, k]), forced on small ones.
        let Some(gpu) = gpu_or_skip() else { return };
        let plan = GpuPlan {
            pack: Some(true),
            ..GpuPlan::default()
        };
        against_f64(&gpu, plan, &SHAPES[..6], "gpu packed");
    }

    #[test]
    fn gpu_portable_kernel_matches_cpu_f64() {
        // The kernel for adapters without subgroups, run here although llvmpipe has them.
        let Some(gpu) = gpu_or_skip() else { return };
        let plan = GpuPlan {
            portable: true,
            ..GpuPlan::default()
        };
        against_f64(&gpu, plan, &SHAPES, "gpu portable");
    }

    #[test]
    fn gpu_subgroup_block_shapes_match_cpu_f64() {
        // Every rows-per-invocation the automatic choice uses, on an m that is not a
        // multiple of it, and a wider workgroup than llvmpipe's subgroup.
        let Some(gpu) = gpu_or_skip() else { return };
        for (rows, wg) in [(8, 8), (16, 8), (32, 8), (64, 8), (8, 32)] {
            let plan = GpuPlan {
                shape: Some((rows, wg)),
                ..GpuPlan::default()
            };
            let (m, k, n) = (rows as usize + 3, 21, 77);
            let (a, a64) = inputs(&[m, k], 7, &gpu);
            let (b, b64) = inputs(&[n, k], 8, &gpu);
            let got = matmul_with(&a, &b, false, true, plan).unwrap();
            let want = a64.matmul_t(&b64, false, true).unwrap();
            check(&got, &want, k, &format!("rows {rows} wg {wg}"));
        }
    }

    #[test]
    fn shared_operand_across_the_batch() {
        let mut devices = vec![Device::Cpu];
        devices.extend(gpu_or_skip());
        for dev in devices {
            let (m, k, n, bt) = (9, 6, 11, 4);
            // [B, m, k]·[k, n]: the right matrix is shared.
            let (a, a64) = inputs(&[bt, m, k], 21, &dev);
            let (w, w64) = inputs(&[k, n], 22, &dev);
            let got = a.matmul(&w).unwrap();
            assert_eq!(got.shape(), &[bt, m, n]);
            // The reference: each batch entry on its own.
            let a_rows = a64.to_vec::<f64>().unwrap();
            let mut want = Vec::new();
            for t in 0..bt {
                let at = Tensor::from_vec(
                    a_rows[t * m * k..(t + 1) * m * k].to_vec(),
                    &[m, k],
                    &Device::Cpu,
                )
                .unwrap();
                want.extend(at.matmul(&w64).unwrap().to_vec::<f64>().unwrap());
            }
            let want = Tensor::from_vec(want, &[bt, m, n], &Device::Cpu).unwrap();
            check(&got, &want, k, &format!("{dev} shared right"));
            // [m, k]ᵀ-stored left matrix shared against [B, n, k]ᵀ-stored right ones.
            let (l, l64) = inputs(&[k, m], 23, &dev);
            let (r, r64) = inputs(&[bt, n, k], 24, &dev);
            let got = l.matmul_t(&r, true, true).unwrap();
            let want = l64.matmul_t(&r64, true, true).unwrap();
            assert_eq!(got.shape(), &[bt, m, n]);
            check(&got, &want, k, &format!("{dev} shared left"));
        }
    }

    #[test]
    fn grids_beyond_the_workgroup_limit_are_split() {
        // 70,000 batch entries and (portable kernel, 8 rows per workgroup) 600,000 rows
        // both exceed 65,535 workgroups in one dimension.
        let Some(gpu) = gpu_or_skip() else { return };
        let (a, a64) = inputs(&[70_000, 1, 2], 31, &gpu);
        let (b, b64) = inputs(&[70_000, 2, 1], 32, &gpu);
        check(
            &a.matmul(&b).unwrap(),
            &a64.matmul(&b64).unwrap(),
            2,
            "batch 70000",
        );
        let (a, a64) = inputs(&[600_000, 1], 33, &gpu);
        let (b, b64) = inputs(&[1, 3], 34, &gpu);
        let plan = GpuPlan {
            portable: true,
            ..GpuPlan::default()
        };
        let got = matmul_with(&a, &b, false, false, plan).unwrap();
        check(&got, &a64.matmul(&b64).unwrap(), 1, "600000 rows");
    }

    #[test]
    fn empty_dimensions() {
        let mut devices = vec![Device::Cpu];
        devices.extend(gpu_or_skip());
        for dev in devices {
            // k = 0: a sum of nothing, zeros (the GPU output starts as NaN poison).
            let a = Tensor::zeros(&[3, 0], &dev).unwrap();
            let b = Tensor::zeros(&[0, 5], &dev).unwrap();
            let c = a.matmul(&b).unwrap();
            assert_eq!(c.shape(), &[3, 5]);
            assert_eq!(c.to_vec::<f32>().unwrap(), vec![0.0; 15]);
            // m = 0 or n = 0 (or an empty batch): empty results.
            let e = Tensor::zeros(&[0, 4], &dev)
                .unwrap()
                .matmul(&Tensor::ones(&[4, 6], &dev).unwrap())
                .unwrap();
            assert_eq!((e.shape(), e.numel()), (&[0usize, 6][..], 0));
            let e = Tensor::ones(&[2, 4], &dev)
                .unwrap()
                .matmul(&Tensor::ones(&[4, 0], &dev).unwrap())
                .unwrap();
            assert_eq!(e.shape(), &[2, 0]);
            let e = Tensor::ones(&[0, 2, 4], &dev)
                .unwrap()
                .matmul(&Tensor::ones(&[0, 4, 3], &dev).unwrap())
                .unwrap();
            assert_eq!(e.shape(), &[0, 2, 3]);
        }
    }

    #[test]
    fn bad_operands_are_typed_errors() {
        let cpu = Device::Cpu;
        let t = |s: &[usize]| Tensor::zeros(s, &cpu).unwrap();
        let shape_err = |r: Result<Tensor>, lhs: &[usize], rhs: &[usize]| match r {
            Err(Error::ShapeMismatch { op, lhs: l, rhs: r }) => {
                assert_eq!((op, &l[..], &r[..]), ("matmul", lhs, rhs));
            }
            other => panic!("expected a matmul ShapeMismatch for {lhs:?}·{rhs:?}, got {other:?}"),
        };
        shape_err(t(&[2, 3]).matmul(&t(&[4, 5])), &[2, 3], &[4, 5]);
        // The flags decide which dimension is k.
        shape_err(
            t(&[2, 3]).matmul_t(&t(&[3, 4]), true, false),
            &[2, 3],
            &[3, 4],
        );
        shape_err(
            t(&[2, 3]).matmul_t(&t(&[3, 4]), false, true),
            &[2, 3],
            &[3, 4],
        );
        assert!(t(&[2, 3]).matmul_t(&t(&[2, 4]), true, false).is_ok());
        // Ranks other than 2 and 3, and unequal batches.
        shape_err(t(&[3]).matmul(&t(&[3, 2])), &[3], &[3, 2]);
        shape_err(t(&[1, 2, 2, 2]).matmul(&t(&[2, 2])), &[1, 2, 2, 2], &[2, 2]);
        shape_err(t(&[2, 2, 3]).matmul(&t(&[3, 3, 4])), &[2, 2, 3], &[3, 3, 4]);
        // Element types and devices.
        let f64_b = t(&[3, 4]).to_dtype(crate::DType::F64).unwrap();
        assert!(matches!(
            t(&[2, 3]).matmul(&f64_b),
            Err(Error::DTypeMismatch { op: "matmul", .. })
        ));
        if let Some(gpu) = gpu_or_skip() {
            let g = Tensor::zeros(&[3, 4], &gpu).unwrap();
            assert!(matches!(
                t(&[2, 3]).matmul(&g),
                Err(Error::DeviceMismatch { op: "matmul", .. })
            ));
        }
    }
}
