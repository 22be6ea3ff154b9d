//! The CPU matmul paths against naive loops and f64: the matrix–vector kernels, the
//! narrow GEMMs, the two-core splits and the threaded GEMM.

use super::*;
use crate::testing::{assert_close, oracle_pair};

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
            let a = oracle_pair(&[batch * m * k], 1).1;
            let b = oracle_pair(&[batch * k * n], 2).1;
            let d = MatmulDims {
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
            assert_close(
                &got,
                &want,
                1e-12,
                1e-12,
                &format!("{m}x{k}x{n} ta={ta} tb={tb}"),
            );
        }
    }
}

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
            let d = MatmulDims {
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

/// Passes large enough to be split over two cores (`backend/cpu/threads.rs`), both forms, row
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
    let d = MatmulDims {
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
    let d = MatmulDims {
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

/// Every path of `matmul_cpu` writes each element of C, which it takes from the pool
/// without zeroing: the pool is primed with NaN arrays of C's length (each at least
/// the pool's 32 KB minimum), so an element a path skips stays NaN. Shapes reach the small kernel (plain and transposed B), the
/// narrow GEMM, both matrix–vector kernels and the packing GEMM, threaded or not; f64
/// takes the portable loops of the same shapes.
#[test]
fn every_cpu_matmul_path_overwrites_a_recycled_output() {
    fn check<T: Gemm>(tol: f64) {
        for (batch, m, k, n, ta, tb) in [
            (64, 10, 40, 40, false, false),
            (64, 10, 40, 40, true, true),
            (8, 300, 20, 16, false, false),
            (1, 10000, 30, 1, false, false),
            (1, 1, 30, 10000, false, false),
            (1, 1, 30, 10000, true, true),
            (1, 300, 250, 230, false, false),
            (4, 100, 90, 80, true, false),
        ] {
            let len = batch * m * n;
            for _ in 0..4 {
                crate::backend::cpu::pool::give(vec![T::nan(); len]);
            }
            let a: Vec<T> = oracle_pair(&[batch * m * k], 3)
                .1
                .iter()
                .map(|&v| T::of(v))
                .collect();
            let b: Vec<T> = oracle_pair(&[batch * k * n], 4)
                .1
                .iter()
                .map(|&v| T::of(v))
                .collect();
            let d = MatmulDims {
                batch,
                m,
                k,
                n,
                a_batched: true,
                b_batched: true,
            };
            let got = matmul_cpu(&a, &b, &d, ta, tb);
            let (a64, b64): (Vec<f64>, Vec<f64>) = (
                a.iter().map(|v| v.f64()).collect(),
                b.iter().map(|v| v.f64()).collect(),
            );
            let want = matmul_cpu(&a64, &b64, &d, ta, tb);
            let got: Vec<f64> = got.iter().map(|v| v.f64()).collect();
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{batch}x{m}x{k}x{n} ta={ta} tb={tb}: an element was not written"
            );
            assert_close(&got, &want, tol, tol, &format!("{batch}x{m}x{k}x{n}"));
        }
    }
    // f32 against f64 over at most 250 terms of size ≤ 1.
    check::<f32>(1e-4);
    check::<f64>(1e-12);
}
