//! Matrix multiplication, plain, transposed and batched: `matmul_cpu` in
//! `backend/cpu/matmul/` on the CPU (`matrixmultiply` plus kernels of its own),
//! `shaders/matmul_tiled.wgsl`, `shaders/matmul_tiled_large.wgsl`, `shaders/matmul.wgsl` and
//! `shaders/matmul_portable.wgsl` (planned in `backend/gpu/kernels/matmul.rs`, which says why
//! they look the way they do) on the GPU.

use crate::backend::MatmulDims;
pub(crate) use crate::backend::gpu::kernels::matmul::GpuPlan;
use crate::error::{Error, Result};
use crate::tensor::tape::{Op, record};
use crate::tensor::{Tensor, same_place};

fn mismatch(a: &[usize], b: &[usize]) -> Error {
    Error::ShapeMismatch {
        op: "matmul",
        lhs: a.to_vec(),
        rhs: b.to_vec(),
    }
}

/// Checks the shapes of `op(a) · op(b)`: rank 2 or 3 each, equal batch extents when both
/// are rank 3, equal inner dimensions.
fn dims(
    a: &[usize],
    b: &[usize],
    trans_a: bool,
    trans_b: bool,
) -> Result<(MatmulDims, Vec<usize>)> {
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
    let d = MatmulDims {
        batch: batch.unwrap_or(1),
        m,
        k: ka,
        n,
        a_batched: ba.is_some(),
        b_batched: bb.is_some(),
    };
    Ok((d, out))
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
    let storage = a.storage.matmul(&b.storage, &d, trans_a, trans_b, plan)?;
    Ok(Tensor::from_storage(storage, &out))
}

impl Tensor {
    /// Matrix product `self · other`: [m, k]·[k, n] → [m, n]. Rank-3 operands multiply
    /// per batch entry ([B, m, k]·[B, k, n] → [B, m, n]); a rank-2 operand next to a
    /// rank-3 one is shared by every entry.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, false, false)
    }

    /// Matrix–vector product `self · v`: `[m, k]·[k] → [m]` (with `trans`, selfᵀ·v for
    /// self stored [k, m]). Recorded as reshape, matmul and reshape, so it is
    /// differentiable in both operands to any order, and on a GPU it runs the
    /// matrix–vector kernels (the product is narrow). Other shapes are `ShapeMismatch`.
    ///
    /// ```
    /// use blo::{Device, Tensor};
    /// # fn main() -> blo::Result<()> {
    /// let dev = Device::cpu();
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &dev)?;
    /// let v = Tensor::from_vec(vec![1.0f32, 0.0, -1.0], &[3], &dev)?;
    /// assert_eq!(x.matvec(&v, false)?.to_vec::<f32>()?, vec![-2.0, -2.0]);
    /// # Ok(()) }
    /// ```
    pub fn matvec(&self, v: &Tensor, trans: bool) -> Result<Tensor> {
        let (&[r, c], &[k]) = (self.shape(), v.shape()) else {
            return Err(Error::ShapeMismatch {
                op: "matvec",
                lhs: self.shape().to_vec(),
                rhs: v.shape().to_vec(),
            });
        };
        let (m, inner) = if trans { (c, r) } else { (r, c) };
        if inner != k {
            return Err(Error::ShapeMismatch {
                op: "matvec",
                lhs: self.shape().to_vec(),
                rhs: v.shape().to_vec(),
            });
        }
        self.matmul_t(&v.reshape(&[k, 1])?, trans, false)?
            .reshape(&[m])
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
    use super::*;
    use crate::Device;
    use crate::testing::{assert_close, gpu_or_skip, oracle_pair, rel_err};

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

    #[test]
    fn matvec_values_gradients_and_shape_errors() {
        let cpu = Device::Cpu;
        let xv = oracle_pair(&[5, 3], 41).1;
        let xt = Tensor::from_vec(xv.clone(), &[5, 3], &cpu).unwrap();
        let v = Tensor::from_vec(vec![0.5f64, -1.0, 2.0], &[3], &cpu).unwrap();
        let u = Tensor::from_vec(vec![1.0f64, 2.0, 0.0, -1.0, 0.25], &[5], &cpu).unwrap();
        let want: Vec<f64> = (0..5)
            .map(|i| xv[3 * i] * 0.5 - xv[3 * i + 1] + 2.0 * xv[3 * i + 2])
            .collect();
        let got = xt.matvec(&v, false).unwrap();
        assert_eq!(got.shape(), &[5]);
        assert_close(&got.to_vec::<f64>().unwrap(), &want, 1e-15, 1e-15, "X v");
        let want_t: Vec<f64> = (0..3)
            .map(|j| {
                (0..5)
                    .map(|i| xv[3 * i + j] * [1.0, 2.0, 0.0, -1.0, 0.25][i])
                    .sum()
            })
            .collect();
        let got_t = xt.matvec(&u, true).unwrap().to_vec::<f64>().unwrap();
        assert_close(&got_t, &want_t, 1e-15, 1e-15, "Xᵀ u");
        // d⟨u, X v⟩/dv = Xᵀ u and d/dX = u vᵀ.
        let (xg, vg) = (xt.requires_grad(), v.requires_grad());
        let g = crate::autodiff::grad(
            &xg.matvec(&vg, false).unwrap().dot(&u).unwrap(),
            &[&xg, &vg],
            false,
        )
        .unwrap();
        assert_close(
            &g[1].to_vec::<f64>().unwrap(),
            &want_t,
            1e-15,
            1e-15,
            "d/dv",
        );
        let uv: Vec<f64> = (0..15)
            .map(|e| [1.0, 2.0, 0.0, -1.0, 0.25][e / 3] * [0.5, -1.0, 2.0][e % 3])
            .collect();
        assert_close(&g[0].to_vec::<f64>().unwrap(), &uv, 1e-15, 1e-15, "d/dX");
        for bad in [
            xt.matvec(&u, false),
            xt.matvec(&v, true),
            v.matvec(&v, false),
        ] {
            assert!(
                matches!(bad, Err(Error::ShapeMismatch { op: "matvec", .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn gpu_matvec_runs_the_matvec_kernels() {
        let Some(gpu) = crate::testing::fresh_gpu_or_skip() else {
            return;
        };
        let ctx = gpu.gpu_context().unwrap().clone();
        let (x32, x64) = oracle_pair(&[37, 19], 42);
        let (v32, v64) = oracle_pair(&[19], 43);
        let want = Tensor::from_vec(x64, &[37, 19], &Device::Cpu)
            .unwrap()
            .matvec(&Tensor::from_vec(v64, &[19], &Device::Cpu).unwrap(), false)
            .unwrap();
        ctx.start_profile().unwrap();
        let got = Tensor::from_vec(x32, &[37, 19], &gpu)
            .unwrap()
            .matvec(&Tensor::from_vec(v32, &[19], &gpu).unwrap(), false)
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        let profile = ctx.finish_profile().unwrap();
        assert_close(&got, &want.to_vec::<f64>().unwrap(), 1e-5, 1e-6, "GPU X v");
        let families: Vec<&str> = profile.kernels.iter().map(|k| k.family.as_str()).collect();
        assert!(families.contains(&"matvec"), "{families:?}");
        assert!(!families.contains(&"matmul"), "{families:?}");
    }
}
