//! f32 matrix–vector kernels of matmul's CPU path for x86-64 with AVX2 and FMA, chosen at
//! run time (a portable build targets baseline x86-64).
//!
//! Both kernels walk eight matrix rows at once, the shape XLA's CPU backend emits for
//! the same products: eight independent accumulators hide the FMA latency, and the
//! shared operand is loaded once per eight rows. A ridge hypergradient is a chain of
//! such passes over a matrix that sits in L2; measured on a 2000×200 f32 matrix, one pass
//! takes 17 µs (94 GB/s) against 31–38 µs for the autovectorised loops these replace.

use std::arch::x86_64::{
    __m256, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehdup_ps, _mm_movehl_ps,
    _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
    _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
};

/// Rows walked together.
const ROWS: usize = 8;
/// f32 lanes of one AVX register.
const LANES: usize = 8;

/// Whether this CPU can run the AVX2+FMA kernels (the same test as the vectorised exp).
pub(super) use crate::backend::cpu::math::avx2_fma as available;

#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// out[i] = rows[i·len .. (i+1)·len] · v.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots(rows: &[f32], len: usize, v: &[f32], out: &mut [f32]) {
    let m = out.len();
    assert!(
        rows.len() >= m * len && v.len() >= len,
        "dots: operand too short"
    );
    let body = len / LANES * LANES;
    let (xp, vp) = (rows.as_ptr(), v.as_ptr());
    let mut i = 0;
    while i + ROWS <= m {
        // SAFETY: rows i..i+ROWS of `len` elements lie inside `rows`, and j + LANES ≤ body
        // ≤ len ≤ v.len() (asserted above), so every load is in bounds.
        unsafe {
            let base = xp.add(i * len);
            let mut acc = [_mm256_setzero_ps(); ROWS];
            let mut j = 0;
            while j < body {
                let vv = _mm256_loadu_ps(vp.add(j));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(base.add(r * len + j)), vv, *a);
                }
                j += LANES;
            }
            for (r, a) in acc.iter().enumerate() {
                let row = std::slice::from_raw_parts(base.add(r * len), len);
                out[i + r] = tail_dot(hsum(*a), &row[body..], &v[body..len]);
            }
        }
        i += ROWS;
    }
    for (o, row) in out[i..].iter_mut().zip(rows[i * len..].chunks_exact(len)) {
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j < body {
            // SAFETY: j + LANES ≤ body ≤ len = row.len() ≤ v.len().
            acc = unsafe {
                _mm256_fmadd_ps(
                    _mm256_loadu_ps(row.as_ptr().add(j)),
                    _mm256_loadu_ps(vp.add(j)),
                    acc,
                )
            };
            j += LANES;
        }
        *o = tail_dot(hsum(acc), &row[body..], &v[body..len]);
    }
}

#[target_feature(enable = "avx2,fma")]
fn tail_dot(start: f32, x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).fold(start, |s, (&p, &q)| p.mul_add(q, s))
}

/// out = Σ_p coeffs[p] · rows[p·len .. (p+1)·len] (out is overwritten).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn combine_rows(rows: &[f32], len: usize, coeffs: &[f32], out: &mut [f32]) {
    let m = coeffs.len();
    assert!(
        rows.len() >= m * len && out.len() == len,
        "combine_rows: operand too short"
    );
    out.fill(0.0);
    let body = len / LANES * LANES;
    let (xp, op) = (rows.as_ptr(), out.as_mut_ptr());
    let mut p = 0;
    while p + ROWS <= m {
        let s: [__m256; ROWS] = std::array::from_fn(|q| _mm256_set1_ps(coeffs[p + q]));
        // SAFETY: rows p..p+ROWS lie inside `rows` and j + LANES ≤ body ≤ len = out.len().
        unsafe {
            let base = xp.add(p * len);
            let mut j = 0;
            while j < body {
                let mut a = _mm256_loadu_ps(op.add(j));
                for (q, sq) in s.iter().enumerate() {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(base.add(q * len + j)), *sq, a);
                }
                _mm256_storeu_ps(op.add(j), a);
                j += LANES;
            }
        }
        for j in body..len {
            let mut a = out[j];
            for q in 0..ROWS {
                a = rows[(p + q) * len + j].mul_add(coeffs[p + q], a);
            }
            out[j] = a;
        }
        p += ROWS;
    }
    for (row, &c) in rows[p * len..m * len].chunks_exact(len).zip(&coeffs[p..]) {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = x.mul_add(c, *o);
        }
    }
}

/// Widest output row [`narrow_gemm`] takes: one 512-bit register.
pub(super) const NARROW_MAX: usize = 16;

/// Whether this CPU can run [`narrow_gemm`].
pub(super) fn narrow_available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// C = op(A)·B for outputs at most [`NARROW_MAX`] wide (a linear classifier's logits and
/// their gradients: n = classes), where a packing GEMM spends as long copying A as
/// multiplying. Element (i, p) of op(A) is `a[i·rsa + p·csa]`; B is row-major [k, n];
/// C is row-major [m, n]. Each row of B is one 512-bit register (a masked load), and
/// eight rows of C accumulate at once.
///
/// # Safety
/// The CPU must support AVX-512F ([`narrow_available`]).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn narrow_gemm(
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
        _mm512_setzero_ps,
    };
    assert!(
        (1..=NARROW_MAX).contains(&n) && m > 0 && k > 0,
        "narrow_gemm: bad shape"
    );
    assert!(
        (m - 1) * rsa + (k - 1) * csa < a.len() && b.len() >= k * n && c.len() >= m * n,
        "narrow_gemm: operand too short"
    );
    if rsa == 1 && m >= 16 {
        // op(A) is a transposed matrix (Xᵀ·G, the classifier's weight gradient): its
        // columns are contiguous, so compute Cᵀ sixteen rows of C at a time instead.
        crate::backend::cpu::math::with_row_len!(n, |N| {
            if N > 0 {
                // SAFETY: same operands and bounds as asserted above; AVX-512F as here.
                unsafe { narrow_gemm_t::<N>(a, csa, b, m, k, c) };
                return;
            }
        });
    }
    // Rows of B are loaded with a lane mask rather than copied into a padded buffer
    // (that copy, a memcpy call per row, cost 4 % of a hyper-cleaning hypergradient).
    let mask: u16 = if n == NARROW_MAX {
        u16::MAX
    } else {
        (1u16 << n) - 1
    };
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(ROWS);
        // SAFETY: rows i..i+rows of op(A) are in bounds (asserted above: the largest
        // index of op(A) is (m−1)·rsa + (k−1)·csa); the masked loads read the n elements
        // of B's rows p < k (b.len() ≥ k·n) and never touch masked-off lanes; the masked
        // stores write n ≤ 16 elements of C rows below m.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); ROWS];
            if rows == ROWS {
                for p in 0..k {
                    let bv = _mm512_maskz_loadu_ps(mask, bp.add(p * n));
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*ap.add((i + r) * rsa + p * csa));
                        *acc_r = _mm512_fmadd_ps(av, bv, *acc_r);
                    }
                }
            } else {
                for p in 0..k {
                    let bv = _mm512_maskz_loadu_ps(mask, bp.add(p * n));
                    for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
                        let av = _mm512_set1_ps(*ap.add((i + r) * rsa + p * csa));
                        *acc_r = _mm512_fmadd_ps(av, bv, *acc_r);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate().take(rows) {
                _mm512_mask_storeu_ps(cp.add((i + r) * n), mask, *acc_r);
            }
        }
        i += rows;
    }
}

/// [`narrow_gemm`] for op(A) with unit row stride (A stored transposed, [k, m] with row
/// stride `csa`) and N = n output columns: every lane of every FMA is used (Cᵀ's rows
/// are A's contiguous rows), where the row-broadcast kernel leaves 16 − n lanes idle and
/// loads one scalar per FMA. C[i, q] = Σ_p a[i + p·csa] · b[p·N + q].
///
/// # Safety
/// AVX-512F, and the bounds [`narrow_gemm`] asserts ((m−1) + (k−1)·csa < a.len(),
/// b.len() ≥ k·N, c.len() ≥ m·N).
#[target_feature(enable = "avx512f")]
unsafe fn narrow_gemm_t<const N: usize>(
    a: &[f32],
    csa: usize,
    b: &[f32],
    m: usize,
    k: usize,
    c: &mut [f32],
) {
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut j0 = 0;
    while j0 < m {
        let w = (m - j0).min(16);
        let mask: u16 = if w == 16 { u16::MAX } else { (1u16 << w) - 1 };
        let mut acc = [_mm512_setzero_ps(); N];
        // SAFETY: lanes j0..j0+w of A's rows p < k lie below (m−1) + (k−1)·csa + 1 ≤
        // a.len(); masked-off lanes are never accessed; b[p·N + q] < k·N ≤ b.len().
        unsafe {
            for p in 0..k {
                let av = _mm512_maskz_loadu_ps(mask, ap.add(p * csa + j0));
                for (q, acc_q) in acc.iter_mut().enumerate() {
                    *acc_q = _mm512_fmadd_ps(_mm512_set1_ps(*bp.add(p * N + q)), av, *acc_q);
                }
            }
        }
        // acc[q] holds column q of C for rows j0..j0+w; transpose into C's rows.
        let mut cols = [[0.0f32; 16]; N];
        for (col, acc_q) in cols.iter_mut().zip(&acc) {
            // SAFETY: `col` holds sixteen f32.
            unsafe { _mm512_storeu_ps(col.as_mut_ptr(), *acc_q) };
        }
        for l in 0..w {
            for (q, col) in cols.iter().enumerate() {
                c[(j0 + l) * N + q] = col[l];
            }
        }
        j0 += 16;
    }
}
