//! The CPU side of matmul (`ops/matmul.rs`): `matrixmultiply`'s GEMMs (transposes are
//! free there: they are just strides), with matrix–vector products and narrow outputs
//! on kernels of their own (`x86.rs`: AVX2 and AVX-512, chosen at run time) and large
//! passes split over two cores (`threads.rs`).

#[cfg(target_arch = "x86_64")]
mod small;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::backend::MatmulDims;
use crate::dtype::Element;

/// The CPU GEMMs of `matrixmultiply`, for the two element types.
pub(crate) trait Gemm: Element {
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
    /// C = op(A)·op(B) for a product small enough that packing its operands would cost
    /// as much as multiplying them (see `matmul/small.rs`); false when there is no
    /// kernel for this shape or CPU. Element (p, j) of op(B) is `b[p·rsb + j·csb]`.
    #[allow(clippy::too_many_arguments)]
    fn fast_small(
        _a: &[Self],
        _rsa: usize,
        _csa: usize,
        _b: &[Self],
        _rsb: usize,
        _csb: usize,
        _m: usize,
        _k: usize,
        _n: usize,
        _c: &mut [Self],
    ) -> bool {
        false
    }
}

/// Matrix–vector passes over at least this many elements (512 KB of f32) are split
/// over two cores (see `backend/cpu/threads.rs`); smaller ones cost less than the hand-off.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PAIR_MIN_ELEMENTS: usize = 1 << 17;

/// `f(r0, r1, rows r0..r1 of out)` for the two halves of `m` output rows of `width`
/// elements, split on an eight-row boundary (only the last block of a half is partial),
/// one half per core when the helper is free (`backend/cpu/threads.rs`).
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
        if x86::available() {
            use x86::dots;
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
        if n <= x86::NARROW_MAX && x86::narrow_available() {
            use x86::narrow_gemm;
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

    fn fast_small(
        a: &[f32],
        rsa: usize,
        csa: usize,
        b: &[f32],
        rsb: usize,
        csb: usize,
        m: usize,
        k: usize,
        n: usize,
        c: &mut [f32],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if m * k * n <= small::SMALL_MAX && small::available() {
            // SAFETY: the CPU has AVX-512F or AVX2 and FMA (checked just above).
            unsafe { small::small_gemm(a, rsa, csa, b, rsb, csb, m, k, n, c) };
            return true;
        }
        false
    }

    fn fast_combine_rows(rows: &[f32], len: usize, c: &[f32], out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            use x86::combine_rows;
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
    d: &MatmulDims,
    trans_a: bool,
    trans_b: bool,
    c: &mut [T],
) -> bool {
    let MatmulDims { batch, m, k, n, .. } = *d;
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
            ct.fill(T::zero());
            for (p, row) in rows.chunks_exact(len).enumerate() {
                axpy_row(ct, vector[p], row);
            }
        }
    }
    true
}

/// CPU reference: one strided GEMM per batch entry.
pub(crate) fn matmul_cpu<T: Gemm>(
    a: &[T],
    b: &[T],
    d: &MatmulDims,
    trans_a: bool,
    trans_b: bool,
) -> Vec<T> {
    let MatmulDims { batch, m, k, n, .. } = *d;
    if batch * m * n == 0 || k == 0 {
        return crate::backend::cpu::pool::zeros(batch * m * n);
    }
    // Every path below writes each element of C (the accumulating fallback of
    // `matvec_cpu` zeroes its rows first), so C need not be zeroed here.
    let mut c = crate::backend::cpu::pool::stale(batch * m * n);
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
    let mut all = true;
    for (t, ct) in c.chunks_exact_mut(m * n).enumerate() {
        let (at, bt) = (&a[t * sa..t * sa + m * k], &b[t * sb..t * sb + k * n]);
        all &= T::fast_small(at, rsa, csa, bt, rsb, csb, m, k, n, ct);
    }
    if all {
        return c;
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

#[cfg(test)]
mod tests;
