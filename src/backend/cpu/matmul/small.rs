//! Small f32 products without packing, for x86-64 with AVX-512 or AVX2+FMA (chosen at
//! run time): C = op(A)·op(B) for the tiny per-task matrices of a meta-learning batch
//! (a 1-40-40-1 MLP on 10 points multiplies [10, 40]·[40, 40] once per task, layer and
//! step). A packing GEMM copies both operands into panels on every call and runs its
//! edge kernel through a buffer whenever m is below its 16-row tile; at these sizes
//! that copying was as long as the multiplying.
//!
//! Each block of up to eight rows of C and one register-wide chunk of its columns stays
//! in registers while p runs over k: one load of B's row chunk serves every row of the
//! block, and each element of op(A) is broadcast from where it lies (any strides, so a
//! transposed A costs nothing). The last chunk of a row is a masked load and store. A
//! transposed B is first copied to a row-major scratch array (k·n elements, against
//! m·k·n multiply-adds).

use std::arch::x86_64::{
    __m256, __m256i, __m512, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256,
    _mm256_maskload_ps, _mm256_maskstore_ps, _mm256_permute2f128_ps, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

/// Products with m·k·n up to this go through [`small_gemm`]; above it a packing GEMM's
/// copies pay for themselves.
pub(super) const SMALL_MAX: usize = 1 << 17;

thread_local! {
    /// A transposed B's row-major copy, reused across calls (a MAML step makes hundreds).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether this CPU can run [`small_gemm`].
pub(super) fn available() -> bool {
    super::x86::narrow_available() || super::x86::available()
}

/// C = op(A)·op(B) into row-major `c` ([m, n]). Element (i, p) of op(A) is
/// `a[i·rsa + p·csa]` and element (p, j) of op(B) is `b[p·rsb + j·csb]`.
///
/// # Safety
/// The CPU must support AVX-512F, or AVX2 and FMA ([`available`]).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_gemm(
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
) {
    assert!(
        m > 0 && k > 0 && n > 0 && c.len() >= m * n,
        "small_gemm: bad extents"
    );
    assert!(
        a.len() > (m - 1) * rsa + (k - 1) * csa && b.len() > (k - 1) * rsb + (n - 1) * csb,
        "small_gemm: operand too short"
    );
    let mut run = |b: &[f32]| {
        let args = Args {
            a: a.as_ptr(),
            rsa,
            csa,
            b: b.as_ptr(),
            m,
            k,
            n,
            c: c.as_mut_ptr(),
        };
        // SAFETY: every index the kernels form is (i, p) with i < m, p < k into A (in
        // bounds: asserted above), (p, j) with j < n into the row-major [k, n] B, and
        // (i, j) into C (c.len() ≥ m·n); the caller vouches for the CPU features.
        unsafe {
            if super::x86::narrow_available() {
                kernel_avx512(&args)
            } else {
                kernel_avx2(&args)
            }
        }
    };
    if csb == 1 && rsb == n {
        run(b);
    } else {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            s.resize(k * n, 0.0);
            if rsb == 1 && csb == k {
                // SAFETY: B is stored [n, k] (checked long enough above), `s` holds k·n;
                // the CPU has AVX2 (implied by either kernel's features).
                unsafe { transpose(b, n, k, &mut s) };
            } else {
                for p in 0..k {
                    for j in 0..n {
                        s[p * n + j] = b[p * rsb + j * csb];
                    }
                }
            }
            run(&s);
        });
    }
}

/// `out` ([cols, rows] row-major) = the transpose of `src` ([rows, cols] row-major):
/// 8×8 blocks through registers (eight row loads, three shuffle stages, eight row
/// stores), the ragged edges element by element. A scalar transpose of a 40×40 block
/// took as long as the product that reads it.
///
/// # Safety
/// The CPU must support AVX2; `src` and `out` must hold rows·cols elements.
#[target_feature(enable = "avx2")]
unsafe fn transpose(src: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    assert!(src.len() >= rows * cols && out.len() >= rows * cols);
    let (full_r, full_c) = (rows / 8 * 8, cols / 8 * 8);
    for r0 in (0..full_r).step_by(8) {
        for c0 in (0..full_c).step_by(8) {
            // SAFETY: rows r0..r0+8 and columns c0..c0+8 lie inside both arrays.
            unsafe {
                let x: [__m256; 8] = std::array::from_fn(|i| {
                    _mm256_loadu_ps(src.as_ptr().add((r0 + i) * cols + c0))
                });
                let t0 = _mm256_unpacklo_ps(x[0], x[1]);
                let t1 = _mm256_unpackhi_ps(x[0], x[1]);
                let t2 = _mm256_unpacklo_ps(x[2], x[3]);
                let t3 = _mm256_unpackhi_ps(x[2], x[3]);
                let t4 = _mm256_unpacklo_ps(x[4], x[5]);
                let t5 = _mm256_unpackhi_ps(x[4], x[5]);
                let t6 = _mm256_unpacklo_ps(x[6], x[7]);
                let t7 = _mm256_unpackhi_ps(x[6], x[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let y = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (i, v) in y.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add((c0 + i) * rows + r0), *v);
                }
            }
        }
    }
    for r in 0..rows {
        let from = if r < full_r { full_c } else { 0 };
        for c in from..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
}

/// Raw operands: B row-major [k, n], C row-major [m, n].
struct Args {
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    m: usize,
    k: usize,
    n: usize,
    c: *mut f32,
}

/// `block(i, rows)` over row blocks of 8, then 4, 2 and 1 for the remainder: eight
/// accumulators hide the FMA latency, the smaller blocks keep a tail of m from running
/// one latency-bound row at a time.
#[inline(always)]
fn row_blocks(m: usize, mut block: impl FnMut(usize, usize)) {
    let mut i = 0;
    for rows in [8, 4, 2, 1] {
        while m - i >= rows {
            block(i, rows);
            i += rows;
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(g: &Args) {
    /// Rows i..i+R, columns j0..j0+16 (masked).
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize>(g: &Args, i: usize, j0: usize, mask: u16) {
        let mut acc: [__m512; R] = [_mm512_setzero_ps(); R];
        for p in 0..g.k {
            // SAFETY (here and below): indices as described in `small_gemm`; masked-off
            // lanes of the load and store touch no memory.
            unsafe {
                let bv = _mm512_maskz_loadu_ps(mask, g.b.add(p * g.n + j0));
                for (r, x) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*g.a.add((i + r) * g.rsa + p * g.csa));
                    *x = _mm512_fmadd_ps(av, bv, *x);
                }
            }
        }
        for (r, x) in acc.iter().enumerate() {
            unsafe { _mm512_mask_storeu_ps(g.c.add((i + r) * g.n + j0), mask, *x) };
        }
    }
    /// Rows i..i+R, columns j0..j0+16 and (masked) j0+16..j0+32: each broadcast of A
    /// feeds two FMAs, so loads no longer bound the loop.
    #[target_feature(enable = "avx512f")]
    unsafe fn block2<const R: usize>(g: &Args, i: usize, j0: usize, mask: u16) {
        let mut acc0: [__m512; R] = [_mm512_setzero_ps(); R];
        let mut acc1: [__m512; R] = [_mm512_setzero_ps(); R];
        for p in 0..g.k {
            // SAFETY: as in `block`; columns j0..j0+16 are all inside the row.
            unsafe {
                let row = g.b.add(p * g.n + j0);
                let b0 = _mm512_loadu_ps(row);
                let b1 = _mm512_maskz_loadu_ps(mask, row.add(16));
                for r in 0..R {
                    let av = _mm512_set1_ps(*g.a.add((i + r) * g.rsa + p * g.csa));
                    acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                    acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
                }
            }
        }
        for r in 0..R {
            unsafe {
                let row = g.c.add((i + r) * g.n + j0);
                _mm512_storeu_ps(row, acc0[r]);
                _mm512_mask_storeu_ps(row.add(16), mask, acc1[r]);
            }
        }
    }
    let mask_of = |cols: usize| {
        if cols == 16 {
            u16::MAX
        } else {
            (1u16 << cols) - 1
        }
    };
    let mut j0 = 0;
    while j0 < g.n {
        let rem = g.n - j0;
        if rem > 16 {
            let mask = mask_of((rem - 16).min(16));
            row_blocks(g.m, |i, rows| unsafe {
                match rows {
                    8 => block2::<8>(g, i, j0, mask),
                    4 => block2::<4>(g, i, j0, mask),
                    2 => block2::<2>(g, i, j0, mask),
                    _ => block2::<1>(g, i, j0, mask),
                }
            });
            j0 += 32;
        } else {
            let mask = mask_of(rem);
            row_blocks(g.m, |i, rows| unsafe {
                match rows {
                    8 => block::<8>(g, i, j0, mask),
                    4 => block::<4>(g, i, j0, mask),
                    2 => block::<2>(g, i, j0, mask),
                    _ => block::<1>(g, i, j0, mask),
                }
            });
            j0 += 16;
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(g: &Args) {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const R: usize>(g: &Args, i: usize, j0: usize, mask: __m256i) {
        let mut acc: [__m256; R] = [_mm256_setzero_ps(); R];
        for p in 0..g.k {
            // SAFETY (here and below): indices as described in `small_gemm`; masked-off
            // lanes of the load and store touch no memory.
            unsafe {
                let bv = _mm256_maskload_ps(g.b.add(p * g.n + j0), mask);
                for (r, x) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*g.a.add((i + r) * g.rsa + p * g.csa));
                    *x = _mm256_fmadd_ps(av, bv, *x);
                }
            }
        }
        for (r, x) in acc.iter().enumerate() {
            unsafe { _mm256_maskstore_ps(g.c.add((i + r) * g.n + j0), mask, *x) };
        }
    }
    let mut j0 = 0;
    while j0 < g.n {
        let cols = (g.n - j0).min(8);
        let lanes: [i32; 8] = std::array::from_fn(|l| if l < cols { -1 } else { 0 });
        // SAFETY: `lanes` is 32 bytes.
        let mask = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
        row_blocks(g.m, |i, rows| unsafe {
            match rows {
                8 => block::<8>(g, i, j0, mask),
                4 => block::<4>(g, i, j0, mask),
                2 => block::<2>(g, i, j0, mask),
                _ => block::<1>(g, i, j0, mask),
            }
        });
        j0 += 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape class (rows across the 8/4/2/1 blocks, columns below, at and past a
    /// register, k = 1) and every stride pattern, on each kernel the CPU has, against a
    /// naive f64 loop; C is poisoned so an unwritten element fails.
    #[test]
    fn small_gemm_matches_naive_for_awkward_shapes() {
        if !available() {
            return;
        }
        for (m, k, n) in [
            (1, 1, 1),
            (10, 40, 40),
            (3, 1, 17),
            (5, 7, 8),
            (15, 13, 16),
            (9, 2, 33),
            (40, 10, 40),
            (13, 37, 1),
            (5, 19, 27),
            (8, 24, 17),
            (11, 6, 32),
            (9, 5, 47),
            (3, 4, 64),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0)
                    .collect();
                let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
                let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
                type Kernel = unsafe fn(&Args);
                let mut kernels: Vec<(&str, Kernel)> = vec![];
                if super::super::x86::narrow_available() {
                    kernels.push(("avx512", kernel_avx512));
                }
                if super::super::x86::available() {
                    kernels.push(("avx2", kernel_avx2));
                }
                for (name, kernel) in kernels {
                    let mut c = vec![f32::NAN; m * n + 3];
                    let bt: Vec<f32> = (0..k * n)
                        .map(|e| b[(e / n) * rsb + (e % n) * csb])
                        .collect();
                    let g = Args {
                        a: a.as_ptr(),
                        rsa,
                        csa,
                        b: bt.as_ptr(),
                        m,
                        k,
                        n,
                        c: c.as_mut_ptr(),
                    };
                    // SAFETY: the kernel's CPU features were checked above; the
                    // operands have the extents `Args` describes.
                    unsafe { kernel(&g) };
                    let mut via_entry = vec![f32::NAN; m * n];
                    // SAFETY: `available()` was checked at the top.
                    unsafe { small_gemm(&a, rsa, csa, &b, rsb, csb, m, k, n, &mut via_entry) };
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|p| {
                                    f64::from(a[i * rsa + p * csa])
                                        * f64::from(b[p * rsb + j * csb])
                                })
                                .sum();
                            for got in [c[i * n + j], via_entry[i * n + j]] {
                                // Sums of up to 40 products of magnitude ≤ 4 in f32: a
                                // few ulps of the sum's scale.
                                assert!(
                                    (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                    "{name} {m}x{k}x{n} ta {ta} tb {tb} ({i}, {j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                    // Nothing written past C.
                    assert!(c[m * n..].iter().all(|x| x.is_nan()), "{name} wrote past C");
                }
            }
        }
    }
}
