//! Reductions: sums, means, maxima, dot products and squared norms, over all elements
//! (a 0-d result) or over one axis. `full_cpu` and `axis_cpu` in `backend/cpu/reduce.rs`
//! on the CPU, `shaders/reduce.wgsl` (planned in `backend/gpu/kernels/reduce.rs`) on the
//! GPU. Results stay on their device: a GPU sum is a 0-d GPU tensor
//! that later kernels read, with no readback.
//!
//! Accuracy: the GPU accumulates in f32, but no accumulator adds more than a few
//! thousand terms (strided runs per invocation, then a tree; axis reductions are split
//! into chunks whose partial sums are reduced again), so even a 16M-element sum stays
//! within 1e-4 relative of an f64 sum. The CPU accumulates in f64 for both dtypes.

use crate::backend::{AxisOp, FullOp};
use crate::error::{Error, Result, invalid};
use crate::tensor::tape::{Op, record};
use crate::tensor::{Tensor, same_place};

fn full_raw(
    name: &'static str,
    op: FullOp,
    a: &Tensor,
    b: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let b = match b {
        Some(b) => {
            same_place(name, a, b)?;
            if a.shape() != b.shape() {
                return Err(Error::ShapeMismatch {
                    op: name,
                    lhs: a.shape().to_vec(),
                    rhs: b.shape().to_vec(),
                });
            }
            b
        }
        None => a,
    };
    let storage = a
        .storage
        .reduce_full(name, op, &b.storage, a.numel(), scale)?;
    Ok(Tensor::from_storage(storage, &[]))
}

/// Σ of all elements, as a 0-d tensor on the same device.
pub(crate) fn sum_raw(x: &Tensor) -> Result<Tensor> {
    full_raw("sum", FullOp::Sum, x, None, 1.0)
}

/// Mean of all elements (NaN for an empty tensor), as a 0-d tensor.
pub(crate) fn mean_raw(x: &Tensor) -> Result<Tensor> {
    full_raw("mean", FullOp::Sum, x, None, 1.0 / x.numel() as f64)
}

/// Σ aᵢ·bᵢ over tensors of the same shape, as a 0-d tensor.
pub(crate) fn dot_raw(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    full_raw("dot", FullOp::Dot, a, Some(b), 1.0)
}

/// Σ xᵢ², as a 0-d tensor.
pub(crate) fn sqnorm_raw(x: &Tensor) -> Result<Tensor> {
    full_raw("sqnorm", FullOp::SumSq, x, None, 1.0)
}

/// mean((a − b)²) over tensors of the same shape (NaN when empty), as a 0-d tensor.
pub(crate) fn mean_sqdiff_raw(name: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    full_raw(name, FullOp::SqDiff, a, Some(b), 1.0 / a.numel() as f64)
}

/// The `[outer, len, inner]` view of `shape` around `axis`, and the output shape.
fn axis_view(
    name: &'static str,
    shape: &[usize],
    axis: usize,
    keepdim: bool,
) -> Result<((usize, usize, usize), Vec<usize>)> {
    if axis >= shape.len() {
        return Err(invalid(
            name,
            format!(
                "axis {axis} is out of range for a tensor of shape {shape:?} (rank {}); use an axis below the rank",
                shape.len()
            ),
        ));
    }
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    let mut out = shape.to_vec();
    if keepdim {
        out[axis] = 1;
    } else {
        out.remove(axis);
    }
    Ok(((outer, shape[axis], inner), out))
}

fn axis_raw(
    name: &'static str,
    op: AxisOp,
    x: &Tensor,
    axis: usize,
    keepdim: bool,
    mean: bool,
) -> Result<Tensor> {
    let ((outer, len, inner), out_shape) = axis_view(name, x.shape(), axis, keepdim)?;
    if op == AxisOp::Max && len == 0 {
        return Err(invalid(
            name,
            format!(
                "axis {axis} of shape {:?} is empty and has no maximum; reduce a non-empty axis",
                x.shape()
            ),
        ));
    }
    let scale = if mean { 1.0 / len as f64 } else { 1.0 };
    let storage = x.storage.reduce_axis(op, outer, len, inner, scale)?;
    Ok(Tensor::from_storage(storage, &out_shape))
}

/// Σ along `axis`.
pub(crate) fn sum_axis_raw(x: &Tensor, axis: usize, keepdim: bool) -> Result<Tensor> {
    axis_raw("sum_axis", AxisOp::Sum, x, axis, keepdim, false)
}

/// Mean along `axis` (NaN where the axis is empty).
pub(crate) fn mean_axis_raw(x: &Tensor, axis: usize, keepdim: bool) -> Result<Tensor> {
    axis_raw("mean_axis", AxisOp::Sum, x, axis, keepdim, true)
}

/// Maximum along `axis` (an error for an empty axis).
pub(crate) fn max_axis_raw(x: &Tensor, axis: usize, keepdim: bool) -> Result<Tensor> {
    axis_raw("max_axis", AxisOp::Max, x, axis, keepdim, false)
}

impl Tensor {
    /// Sum of all elements as a 0-d tensor on the same device (0 for an empty tensor).
    pub fn sum(&self) -> Result<Tensor> {
        let out = sum_raw(self)?;
        Ok(record(Op::Sum, &[self], out))
    }

    /// Mean of all elements as a 0-d tensor. An empty tensor gives NaN (0 / 0), as in
    /// NumPy, rather than an error, because the GPU cannot report one without a readback.
    pub fn mean(&self) -> Result<Tensor> {
        let out = mean_raw(self)?;
        Ok(record(Op::Mean, &[self], out))
    }

    /// Sum along `axis`; with `keepdim` the axis stays as extent 1, otherwise it is
    /// removed. An empty axis sums to 0. Errors with `InvalidArgument` when
    /// `axis >= rank`.
    pub fn sum_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        let out = sum_axis_raw(self, axis, keepdim)?;
        Ok(record(Op::SumAxis { axis, keepdim }, &[self], out))
    }

    /// Mean along `axis` (NaN where the axis is empty); `keepdim` as in
    /// [`Tensor::sum_axis`].
    pub fn mean_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        let out = mean_axis_raw(self, axis, keepdim)?;
        Ok(record(Op::MeanAxis { axis, keepdim }, &[self], out))
    }

    /// Maximum along `axis`; `keepdim` as in [`Tensor::sum_axis`]. An empty axis is
    /// `InvalidArgument`. The CPU propagates NaN; on the GPU NaN inputs give an
    /// unspecified result, since WGSL lets drivers assume floats are not NaN.
    pub fn max_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        let out = max_axis_raw(self, axis, keepdim)?;
        Ok(record(Op::MaxAxis { axis, keepdim }, &[self], out))
    }

    /// Σ selfᵢ · otherᵢ as a 0-d tensor; the shapes must be equal (`ShapeMismatch`).
    pub fn dot(&self, other: &Tensor) -> Result<Tensor> {
        let out = dot_raw(self, other)?;
        Ok(record(Op::Dot, &[self, other], out))
    }

    /// Σ selfᵢ² (the squared Euclidean norm) as a 0-d tensor.
    pub fn sqnorm(&self) -> Result<Tensor> {
        let out = sqnorm_raw(self)?;
        Ok(record(Op::Sqnorm, &[self], out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use crate::backend::cpu::reduce::full_cpu;
    use crate::testing::{assert_close, gpu_or_skip, oracle_pair, rel_err};

    /// The GPU (f32) and CPU (f64) tensors of the same seeded values.
    fn pair(gpu: &Device, shape: &[usize], seed: u64) -> (Tensor, Tensor) {
        let (x32, x64) = oracle_pair(shape, seed);
        (
            Tensor::from_vec(x32, shape, gpu).unwrap(),
            Tensor::from_vec(x64, shape, &Device::Cpu).unwrap(),
        )
    }

    /// Reductions sum O(n) rounded terms, so they get the looser 1e-4 of the brief,
    /// normwise and elementwise. The atol is for outputs that cancel to near zero: a
    /// sum of `terms` values in [-1, 1] is itself about √terms in size, and its f32
    /// rounding error grows like √terms too (measured: 1.3e-5 for 9,000 terms with
    /// blocked accumulation, 5e-5 without), so atol = 1e-6·√terms, ~16 ulp of 1 per
    /// √term. A lost or doubled element is off by ~0.5, far outside it.
    #[track_caller]
    fn check_n(got: &Tensor, want: &Tensor, terms: usize, what: &str) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        let (g, w) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
        assert!(
            rel_err(&g, &w) <= 1e-4,
            "{what}: rel_err {}",
            rel_err(&g, &w)
        );
        assert_close(&g, &w, 1e-4, 1e-6 * (terms.max(1) as f64).sqrt(), what);
    }

    #[test]
    fn cpu_reference_values() {
        let cpu = Device::Cpu;
        let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, -6.0], &[2, 3], &cpu).unwrap();
        let v = |t: Tensor| t.to_vec::<f64>().unwrap();
        assert_eq!(v(x.sum().unwrap()), vec![9.0]);
        assert_eq!(v(x.mean().unwrap()), vec![1.5]);
        assert_eq!(v(x.sum_axis(0, false).unwrap()), vec![5.0, 7.0, -3.0]);
        assert_eq!(v(x.sum_axis(1, true).unwrap()), vec![6.0, 3.0]);
        assert_eq!(v(x.mean_axis(1, false).unwrap()), vec![2.0, 1.0]);
        assert_eq!(v(x.max_axis(0, false).unwrap()), vec![4.0, 5.0, 3.0]);
        assert_eq!(v(x.max_axis(1, false).unwrap()), vec![3.0, 5.0]);
        assert_eq!(v(x.sqnorm().unwrap()), vec![91.0]);
        assert_eq!(v(x.dot(&x).unwrap()), vec![91.0]);
        assert_eq!(x.sum().unwrap().shape(), &[] as &[usize]);
        assert_eq!(x.sum_axis(1, true).unwrap().shape(), &[2, 1]);
    }

    #[test]
    fn gpu_full_reductions_match_f64_on_awkward_sizes() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, &n) in [1usize, 7, 31, 257, 1000, 4099, 65537, 300_001]
            .iter()
            .enumerate()
        {
            let (xg, xc) = pair(&gpu, &[n], 10 + k as u64);
            let (yg, yc) = pair(&gpu, &[n], 500 + k as u64);
            check_n(
                &xg.sum().unwrap(),
                &xc.sum().unwrap(),
                n,
                &format!("sum n={n}"),
            );
            check_n(
                &xg.mean().unwrap(),
                &xc.mean().unwrap(),
                n,
                &format!("mean n={n}"),
            );
            check_n(
                &xg.sqnorm().unwrap(),
                &xc.sqnorm().unwrap(),
                n,
                &format!("sqnorm n={n}"),
            );
            check_n(
                &xg.dot(&yg).unwrap(),
                &xc.dot(&yc).unwrap(),
                n,
                &format!("dot n={n}"),
            );
        }
    }

    #[test]
    fn gpu_full_reductions_of_tiny_and_empty_tensors() {
        let Some(gpu) = gpu_or_skip() else { return };
        let s = Tensor::scalar(-2.5, &gpu).unwrap();
        assert_eq!(s.sum().unwrap().to_vec::<f32>().unwrap(), vec![-2.5]);
        assert_eq!(s.sqnorm().unwrap().to_vec::<f32>().unwrap(), vec![6.25]);
        for dev in [Device::Cpu, gpu] {
            let e = Tensor::zeros(&[0, 3], &dev).unwrap();
            assert_eq!(
                e.sum().unwrap().to_vec::<f32>().unwrap(),
                vec![0.0],
                "{dev}"
            );
            assert_eq!(
                e.dot(&e).unwrap().to_vec::<f32>().unwrap(),
                vec![0.0],
                "{dev}"
            );
            assert!(
                e.mean().unwrap().to_scalar::<f32>().unwrap().is_nan(),
                "{dev}"
            );
        }
    }

    /// Shapes for axis reductions: rows, columns, both small and both long, vec4-able
    /// inner extents and not, and long axes that take more than one pass.
    fn axis_shapes() -> Vec<Vec<usize>> {
        vec![
            vec![1],
            vec![7],
            vec![31],
            vec![257],
            vec![1000],
            vec![65537],
            vec![1, 1],
            vec![7, 3],
            vec![31, 257],
            vec![257, 31],
            vec![4, 8],
            vec![3, 20000],
            vec![20000, 3],
            vec![9000, 8],
            vec![3, 5, 7],
            vec![2, 300, 4],
            vec![5, 1, 6],
        ]
    }

    #[test]
    fn gpu_axis_reductions_match_f64() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, shape) in axis_shapes().into_iter().enumerate() {
            let (xg, xc) = pair(&gpu, &shape, 40 + k as u64);
            for axis in 0..shape.len() {
                for keepdim in [false, true] {
                    let what = format!("{shape:?} axis {axis} keepdim {keepdim}");
                    check_n(
                        &xg.sum_axis(axis, keepdim).unwrap(),
                        &xc.sum_axis(axis, keepdim).unwrap(),
                        shape[axis],
                        &format!("sum_axis {what}"),
                    );
                    check_n(
                        &xg.mean_axis(axis, keepdim).unwrap(),
                        &xc.mean_axis(axis, keepdim).unwrap(),
                        shape[axis],
                        &format!("mean_axis {what}"),
                    );
                    check_n(
                        &xg.max_axis(axis, keepdim).unwrap(),
                        &xc.max_axis(axis, keepdim).unwrap(),
                        shape[axis],
                        &format!("max_axis {what}"),
                    );
                }
            }
        }
    }

    #[test]
    fn axis_reductions_of_empty_axes_and_outputs() {
        let mut devices = vec![Device::Cpu];
        devices.extend(gpu_or_skip());
        for dev in devices {
            let x = Tensor::zeros(&[3, 0, 2], &dev).unwrap();
            let s = x.sum_axis(1, false).unwrap();
            assert_eq!(s.shape(), &[3, 2]);
            assert_eq!(s.to_vec::<f32>().unwrap(), vec![0.0; 6], "{dev}");
            let m = x.mean_axis(1, true).unwrap();
            assert_eq!(m.shape(), &[3, 1, 2]);
            assert!(
                m.to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()),
                "{dev}"
            );
            // Reducing a non-empty axis of an empty tensor gives an empty tensor.
            let e = x.sum_axis(0, false).unwrap();
            assert_eq!(e.shape(), &[0, 2]);
            assert_eq!(e.to_vec::<f32>().unwrap(), Vec::<f32>::new());
            assert!(matches!(
                x.max_axis(1, false),
                Err(Error::InvalidArgument { op: "max_axis", .. })
            ));
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut devices = vec![Device::Cpu];
        devices.extend(gpu_or_skip());
        for dev in devices {
            let x = Tensor::zeros(&[2, 3], &dev).unwrap();
            for r in [
                x.sum_axis(2, false),
                x.mean_axis(5, true),
                x.max_axis(2, false),
            ] {
                assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
            }
            let s = Tensor::scalar(1.0, &dev).unwrap();
            assert!(matches!(
                s.sum_axis(0, false),
                Err(Error::InvalidArgument { .. })
            ));
            let y = Tensor::zeros(&[3, 2], &dev).unwrap();
            assert!(matches!(
                x.dot(&y),
                Err(Error::ShapeMismatch { op: "dot", .. })
            ));
        }
        let a = Tensor::zeros(&[3], &Device::Cpu).unwrap();
        let b = a.to_dtype(crate::DType::F64).unwrap();
        assert!(matches!(
            a.dot(&b),
            Err(Error::DTypeMismatch { op: "dot", .. })
        ));
        if let Some(gpu) = gpu_or_skip() {
            let g = Tensor::zeros(&[3], &gpu).unwrap();
            assert!(matches!(
                a.dot(&g),
                Err(Error::DeviceMismatch { op: "dot", .. })
            ));
        }
    }

    /// 16M elements: the blocked f32 accumulation must stay within 1e-4 of f64, both
    /// with cancellation (values in [-1, 1]) and without (values in [0, 1], where a
    /// running f32 sum would have lost digits long before the end).
    #[test]
    fn gpu_sum_of_16m_elements_matches_f64() {
        let Some(gpu) = gpu_or_skip() else { return };
        let n = 1 << 24;
        let (x32, x64) = oracle_pair(&[n], 77);
        let want = full_cpu(FullOp::Sum, &x64, &x64, 1.0);
        let got = Tensor::from_vec(x32.clone(), &[n], &gpu).unwrap();
        let g = got.sum().unwrap().to_scalar::<f64>().unwrap();
        assert!(rel_err(&[g], &[want]) <= 1e-4, "sum {g} vs {want}");
        let pos32: Vec<f32> = x32.iter().map(|v| v.abs()).collect();
        let pos64: Vec<f64> = pos32.iter().map(|&v| f64::from(v)).collect();
        let want = full_cpu(FullOp::Sum, &pos64, &pos64, 1.0);
        let t = Tensor::from_vec(pos32, &[n], &gpu).unwrap();
        let g = t.sum().unwrap().to_scalar::<f64>().unwrap();
        assert!(rel_err(&[g], &[want]) <= 1e-4, "sum |x| {g} vs {want}");
        // The axis paths: three passes for one long row, two for rows and columns.
        let g = t.sum_axis(0, false).unwrap().to_scalar::<f64>().unwrap();
        assert!(rel_err(&[g], &[want]) <= 1e-4, "sum_axis(0) {g} vs {want}");
        let m = t.reshape(&[4096, 4096]).unwrap();
        for axis in [0, 1] {
            let g = m.sum_axis(axis, false).unwrap().sum().unwrap();
            let g = g.to_scalar::<f64>().unwrap();
            assert!(
                rel_err(&[g], &[want]) <= 1e-4,
                "axis {axis} sums {g} vs {want}"
            );
        }
    }

    #[test]
    fn gpu_reductions_stay_on_the_device() {
        if gpu_or_skip().is_none() {
            return;
        }
        // A context of its own: the shared one counts other tests' dispatches too.
        let gpu = Device::gpu().unwrap();
        let ctx = gpu.gpu_context().unwrap().clone();
        // The reduce kernels' dispatches: fused, a reduction waits until it is read.
        ctx.set_fusion(false);
        let x = Tensor::rand_uniform(&[1000], -1.0, 1.0, 5, &gpu).unwrap();
        let before = ctx.dispatch_count();
        let s = x.sum().unwrap();
        assert_eq!(
            ctx.dispatch_count(),
            before + 1,
            "a small sum is one dispatch"
        );
        assert!(s.gpu_buffer().is_some());
        let big = Tensor::rand_uniform(&[1 << 20], -1.0, 1.0, 6, &gpu).unwrap();
        let before = ctx.dispatch_count();
        let _ = big.dot(&big).unwrap();
        // reduce/one_barrier adds its workgroups' partials in a second dispatch; the
        // workgroup variants let the last workgroup add them in the same one.
        let two_pass = ctx
            .kernel_variants()
            .iter()
            .any(|v| v.family == "reduce" && v.active && v.name == "one_barrier");
        assert_eq!(
            ctx.dispatch_count(),
            before + if two_pass { 2 } else { 1 },
            "a large dot (two_pass: {two_pass})"
        );
    }
}
