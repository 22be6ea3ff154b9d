//! Losses: log-softmax, (weighted) cross-entropy and mean squared error. The CPU code is
//! in `backend/cpu/loss.rs` (`log_softmax_cpu`, `cross_entropy_cpu`, ...), the GPU plans
//! of `shaders/loss.wgsl` in `backend/gpu/kernels/loss.rs` (mse is a `reduce` kernel).
//! Every loss is a 0-d tensor on its device.
//!
//! Cross-entropy is the inner loss of data hyper-cleaning, evaluated at every inner
//! step, so it is fused: one dispatch computes each row's log-sum-exp, picks the label's
//! logit, weights it and reduces the batch (a second, one-workgroup dispatch finishes
//! large batches).

use crate::error::{Error, Result, invalid};
use crate::ops::reduce;
use crate::tensor::tape::{Op, record};
use crate::tensor::{Tensor, same_place};

/// Log-softmax along the last axis.
pub(crate) fn log_softmax_raw(z: &Tensor) -> Result<Tensor> {
    let Some(&c) = z.shape().last() else {
        return Err(invalid(
            "log_softmax",
            "needs a tensor of rank ≥ 1 (it normalises along the last axis); reshape the 0-d tensor to [1]",
        ));
    };
    let rows = z.numel().checked_div(c).unwrap_or(0);
    let storage = z.storage.log_softmax(rows, c)?;
    Ok(Tensor::from_storage(storage, z.shape()))
}

/// Softmax along the last axis. On the GPU it is the log-softmax kernel followed by exp
/// (the same two dispatches the composition would cost); on the CPU one fused pass.
pub(crate) fn softmax_raw(z: &Tensor) -> Result<Tensor> {
    let Some(&c) = z.shape().last() else {
        return Err(invalid(
            "softmax",
            "needs a tensor of rank ≥ 1 (it normalises along the last axis); reshape the 0-d tensor to [1]",
        ));
    };
    let rows = z.numel().checked_div(c).unwrap_or(0);
    let storage = z.storage.softmax(rows, c)?;
    Ok(Tensor::from_storage(storage, z.shape()))
}

/// Mean (optionally weighted) cross-entropy of logits `[n, c]` against class labels `[n]`.
pub(crate) fn cross_entropy_raw(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let &[n, c] = logits.shape() else {
        return Err(invalid(
            OP,
            format!(
                "logits must be a matrix [n, c] (rows are examples, columns classes), got shape {:?}",
                logits.shape()
            ),
        ));
    };
    if c == 0 {
        return Err(invalid(
            OP,
            format!(
                "logits of shape {:?} have no classes; need c ≥ 1",
                logits.shape()
            ),
        ));
    }
    same_place(OP, logits, labels)?;
    let per_row = |t: &Tensor| {
        if t.shape() == [n] {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                op: OP,
                lhs: logits.shape().to_vec(),
                rhs: t.shape().to_vec(),
            })
        }
    };
    per_row(labels)?;
    if let Some(w) = weights {
        same_place(OP, logits, w)?;
        per_row(w)?;
    }
    let storage =
        logits
            .storage
            .cross_entropy(&labels.storage, weights.map(|w| &*w.storage), n, c)?;
    Ok(Tensor::from_storage(storage, &[]))
}

/// [`cross_entropy_raw`] on the CPU, also returning softmax(logits) from the same exps.
/// `None` when the operands are not well-formed CPU tensors of one dtype: the plain op
/// then reports what is wrong.
fn cross_entropy_with_probs_raw(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
) -> Option<Result<(Tensor, Tensor)>> {
    let &[n, c] = logits.shape() else {
        return None;
    };
    if c == 0 || labels.shape() != [n] || weights.is_some_and(|w| w.shape() != [n]) {
        return None;
    }
    let parts = logits.storage.cross_entropy_with_probs(
        &labels.storage,
        weights.map(|w| &*w.storage),
        c,
    )?;
    Some(parts.map(|(loss, probs)| {
        (
            Tensor::from_storage(loss, &[]),
            Tensor::from_storage(probs, logits.shape()),
        )
    }))
}

/// The gradient of `cross_entropy(logits, labels, weights)` with respect to the logits
/// times the 0-d upstream gradient `g`, in one op (one dispatch on a GPU):
/// `g · (w_i/n) · (softmax(z_i) − onehot(y_i))`. Not recorded: the backward rule uses
/// it only when the gradient itself is not differentiated again. `probs` is the
/// forward pass's softmax(z), where it kept one.
pub(crate) fn cross_entropy_grad_raw(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
    probs: Option<&Tensor>,
    g: &Tensor,
) -> Result<Tensor> {
    let (n, c) = (logits.shape()[0], logits.shape()[1]);
    let out = logits.storage.cross_entropy_grad(
        &labels.storage,
        weights.map(|w| &*w.storage),
        probs.map(|p| &*p.storage),
        &g.storage,
        n,
        c,
    )?;
    Ok(Tensor::from_storage(out, logits.shape()))
}

/// [`cross_entropy_grad_raw`] recorded on the tape as [`Op::CeGrad`] (when recording),
/// so that the gradient it computes can be differentiated again.
pub(crate) fn cross_entropy_grad(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
    probs: Option<&Tensor>,
    g: &Tensor,
) -> Result<Tensor> {
    let out = cross_entropy_grad_raw(logits, labels, weights, probs, g)?;
    let op = Op::CeGrad {
        labels: labels.detach(),
    };
    Ok(match weights {
        Some(w) => record(op, &[logits, g, w], out),
        None => record(op, &[logits, g], out),
    })
}

/// The vector–Jacobian product of the cross-entropy's gradient with an upstream `u`
/// (shaped like the logits), in one op (one dispatch on a GPU): with p = softmax(z),
/// s_i = g·w_i/n and r_i = ⟨p_i − onehot_i, u_i⟩, returns (s_i·p_i ⊙ (u_i − ⟨p_i, u_i⟩),
/// r). Not recorded: [`Op::CeGrad`]'s rule uses it when not differentiated again.
pub(crate) fn cross_entropy_grad_vjp_raw(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
    g: &Tensor,
    u: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (n, c) = (logits.shape()[0], logits.shape()[1]);
    let (dz, r) = logits.storage.cross_entropy_grad_vjp(
        &labels.storage,
        weights.map(|w| &*w.storage),
        &g.storage,
        &u.storage,
        n,
        c,
    )?;
    Ok((
        Tensor::from_storage(dz, logits.shape()),
        Tensor::from_storage(r, &[n]),
    ))
}

/// mean((pred − target)²) over tensors of the same shape.
pub(crate) fn mse_raw(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    reduce::mean_sqdiff_raw("mse", pred, target)
}

impl Tensor {
    /// Log-softmax along the last axis: `z − logsumexp(z)` per row, computed stably
    /// (the row maximum is subtracted before exponentiating). Rank must be ≥ 1
    /// (`InvalidArgument` otherwise).
    pub fn log_softmax(&self) -> Result<Tensor> {
        let out = log_softmax_raw(self)?;
        Ok(record(Op::LogSoftmax, &[self], out))
    }

    /// Softmax along the last axis: `exp(z − logsumexp(z))` per row, computed stably.
    /// Rank must be ≥ 1 (`InvalidArgument` otherwise).
    pub fn softmax(&self) -> Result<Tensor> {
        let out = softmax_raw(self)?;
        Ok(record(Op::Softmax, &[self], out))
    }

    /// Mean cross-entropy of logits `self` (`[n, c]`) against `labels` (`[n]`, f32
    /// values holding class indices `0..c`), optionally weighted per example:
    /// `(1/n) Σ_i w_i · (logsumexp(z_i) − z_{i, y_i})`, with `w_i = 1` without
    /// `weights` (`[n]`). The result is a 0-d tensor on the device; the mean is over
    /// `n`, not over `Σ w`, and an empty batch gives NaN.
    ///
    /// A label that is not an integer in `0..c`: on the CPU, `InvalidArgument`; on
    /// the GPU, where checking would need a readback, the loss is NaN (the row's
    /// term is NaN, whatever its weight). Shapes that do not fit are `ShapeMismatch`;
    /// logits that are not a matrix, or have no classes, are `InvalidArgument`.
    pub fn cross_entropy(&self, labels: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
        let recording = crate::tensor::tape::is_grad_enabled() && self.node.is_some();
        // The backward rule needs softmax(z); the CPU loss has it almost for free.
        let fused = recording
            .then(|| cross_entropy_with_probs_raw(self, labels, weights))
            .flatten();
        let (out, probs) = match fused {
            Some(parts) => {
                let (out, probs) = parts?;
                (out, Some(probs))
            }
            None => (cross_entropy_raw(self, labels, weights)?, None),
        };
        let op = Op::CrossEntropy {
            labels: labels.detach(),
            probs,
        };
        Ok(match weights {
            Some(w) => record(op, &[self, w], out),
            None => record(op, &[self], out),
        })
    }

    /// Mean squared error `mean((self − target)²)` as a 0-d tensor; the shapes must be
    /// equal (`ShapeMismatch`). An empty pair gives NaN (0 / 0).
    pub fn mse(&self, target: &Tensor) -> Result<Tensor> {
        let out = mse_raw(self, target)?;
        Ok(record(Op::Mse, &[self, target], out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use crate::testing::{assert_close, gpu_or_skip, oracle_pair, rel_err};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Logits of three kinds: uniform in [-1, 1]; scaled to ±50, where an unshifted
    /// exp would overflow f32; and rows that are constant (every class tied).
    fn logits(n: usize, c: usize, kind: usize, seed: u64) -> Vec<f32> {
        let x = oracle_pair(&[n, c], seed).0;
        match kind {
            0 => x,
            1 => x.iter().map(|v| 50.0 * v).collect(),
            _ => (0..n * c).map(|i| x[i / c] * 3.0).collect(),
        }
    }

    fn labels(n: usize, c: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(0..c) as f32).collect()
    }

    /// Weights in (0, 1), as sigmoid(λ) gives them.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        oracle_pair(&[n], seed)
            .0
            .iter()
            .map(|v| 0.5 + 0.49 * v)
            .collect()
    }

    fn on(data: &[f32], shape: &[usize], gpu: &Device) -> (Tensor, Tensor) {
        (
            Tensor::from_vec(data.to_vec(), shape, gpu).unwrap(),
            Tensor::from_vec(
                data.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )
            .unwrap(),
        )
    }

    /// 1e-4 for the sum over rows (as every reduction); the atol covers log-probabilities
    /// and losses near 0 (a row with one dominant logit), where f32 exp/log keep about
    /// 1e-6 absolute, scaled by the logits' magnitude (50 for the ±50 rows).
    #[track_caller]
    fn check(got: &Tensor, want: &Tensor, atol: f64, what: &str) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        let (g, w) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
        assert!(
            rel_err(&g, &w) <= 1e-4,
            "{what}: rel_err {}",
            rel_err(&g, &w)
        );
        assert_close(&g, &w, 1e-4, atol, what);
    }

    /// Tiny, odd, many-rows (two dispatches for cross-entropy) and long-row shapes.
    const SHAPES: [(usize, usize); 7] = [
        (1, 1),
        (7, 3),
        (31, 10),
        (257, 13),
        (3000, 10),
        (20000, 7),
        (3, 5001),
    ];

    #[test]
    fn cpu_reference_values() {
        let cpu = Device::Cpu;
        let z = Tensor::from_vec(vec![0.0f64, 0.0, 1.0, 1.0], &[2, 2], &cpu).unwrap();
        let ls = z.log_softmax().unwrap().to_vec::<f64>().unwrap();
        let l2 = -(2.0f64).ln();
        assert_close(&ls, &[l2, l2, l2, l2], 1e-15, 1e-15, "ties");
        let y = Tensor::from_vec(vec![1.0f64, 0.0], &[2], &cpu).unwrap();
        let w = Tensor::from_vec(vec![1.0f64, 3.0], &[2], &cpu).unwrap();
        let ce = z
            .cross_entropy(&y, None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((ce - 2.0f64.ln()).abs() < 1e-15);
        let ce = z
            .cross_entropy(&y, Some(&w))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (ce - 2.0 * 2.0f64.ln()).abs() < 1e-15,
            "(1·ln2 + 3·ln2) / 2"
        );
        let t = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 3.0], &[2, 2], &cpu).unwrap();
        assert_eq!(
            z.mse(&t).unwrap().to_scalar::<f64>().unwrap(),
            3.25,
            "(1 + 4 + 4 + 4) / 4"
        );
        // Stable at ±1000, where exp alone overflows even f64.
        let big = Tensor::from_vec(vec![1000.0f64, -1000.0], &[1, 2], &cpu).unwrap();
        let ls = big.log_softmax().unwrap().to_vec::<f64>().unwrap();
        assert_eq!(ls, vec![0.0, -2000.0]);
    }

    #[test]
    fn gpu_log_softmax_matches_f64() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, &(n, c)) in SHAPES.iter().enumerate() {
            for kind in 0..3 {
                let z = logits(n, c, kind, 10 * k as u64 + kind as u64);
                let (zg, zc) = on(&z, &[n, c], &gpu);
                let atol = if kind == 1 { 5e-5 } else { 1e-6 };
                check(
                    &zg.log_softmax().unwrap(),
                    &zc.log_softmax().unwrap(),
                    atol,
                    &format!("log_softmax [{n}, {c}] kind {kind}"),
                );
            }
        }
        // Any rank: rows are everything but the last axis.
        let z = logits(6, 5, 0, 99);
        let (zg, zc) = on(&z, &[2, 3, 5], &gpu);
        check(
            &zg.log_softmax().unwrap(),
            &zc.log_softmax().unwrap(),
            1e-6,
            "rank 3",
        );
        let (zg, zc) = on(&z[..7], &[7], &gpu);
        check(
            &zg.log_softmax().unwrap(),
            &zc.log_softmax().unwrap(),
            1e-6,
            "rank 1",
        );
    }

    #[test]
    fn gpu_softmax_matches_f64() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, &(n, c)) in SHAPES.iter().enumerate() {
            for kind in 0..3 {
                let z = logits(n, c, kind, 10 * k as u64 + kind as u64);
                let (zg, zc) = on(&z, &[n, c], &gpu);
                check(
                    &zg.softmax().unwrap(),
                    &zc.softmax().unwrap(),
                    1e-6,
                    &format!("softmax [{n}, {c}] kind {kind}"),
                );
            }
        }
    }

    /// The fused CPU softmax (f32 and f64) is exp of log-softmax, rows sum to 1, and a
    /// huge logit does not overflow.
    #[test]
    fn cpu_softmax_is_exp_of_log_softmax() {
        let cpu = Device::Cpu;
        for &(n, c) in SHAPES.iter() {
            let z = logits(n, c, 0, 5);
            let z64 = Tensor::from_vec(z.clone(), &[n, c], &cpu)
                .unwrap()
                .to_dtype(crate::DType::F64)
                .unwrap();
            let want = z64
                .log_softmax()
                .unwrap()
                .exp()
                .unwrap()
                .to_vec::<f64>()
                .unwrap();
            let got = z64.softmax().unwrap().to_vec::<f64>().unwrap();
            crate::testing::assert_close(&got, &want, 1e-14, 1e-15, &format!("f64 [{n}, {c}]"));
            let got32 = z64.to_dtype(crate::DType::F32).unwrap().softmax().unwrap();
            let got32 = got32.to_vec::<f64>().unwrap();
            crate::testing::assert_close(&got32, &want, 1e-6, 1e-7, &format!("f32 [{n}, {c}]"));
            for row in got.chunks_exact(c) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let big = Tensor::from_vec(vec![1000.0f64, -1000.0], &[1, 2], &cpu).unwrap();
        assert_eq!(
            big.softmax().unwrap().to_vec::<f64>().unwrap(),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn gpu_cross_entropy_matches_f64() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, &(n, c)) in SHAPES.iter().enumerate() {
            let (yg, yc) = on(&labels(n, c, 7 + k as u64), &[n], &gpu);
            let (wg, wc) = on(&weights(n, 70 + k as u64), &[n], &gpu);
            for kind in 0..3 {
                let z = logits(n, c, kind, 100 + 10 * k as u64 + kind as u64);
                let (zg, zc) = on(&z, &[n, c], &gpu);
                let atol = if kind == 1 { 5e-5 } else { 1e-6 };
                let what = format!("cross_entropy [{n}, {c}] kind {kind}");
                check(
                    &zg.cross_entropy(&yg, None).unwrap(),
                    &zc.cross_entropy(&yc, None).unwrap(),
                    atol,
                    &what,
                );
                check(
                    &zg.cross_entropy(&yg, Some(&wg)).unwrap(),
                    &zc.cross_entropy(&yc, Some(&wc)).unwrap(),
                    atol,
                    &format!("weighted {what}"),
                );
            }
        }
    }

    #[test]
    fn gpu_mse_matches_f64() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, shape) in [vec![1], vec![7], vec![7, 3], vec![31, 257], vec![65537]]
            .into_iter()
            .enumerate()
        {
            let (p32, _) = oracle_pair(&shape, 300 + k as u64);
            let (t32, _) = oracle_pair(&shape, 400 + k as u64);
            let (pg, pc) = on(&p32, &shape, &gpu);
            let (tg, tc) = on(&t32, &shape, &gpu);
            check(
                &pg.mse(&tg).unwrap(),
                &pc.mse(&tc).unwrap(),
                1e-6,
                &format!("mse {shape:?}"),
            );
        }
    }

    /// The GPU cannot raise an error for a bad label without a readback, so it returns
    /// NaN; the CPU returns InvalidArgument. Both for each kind of bad label, in small
    /// batches (one dispatch) and large ones (partials plus a finishing dispatch).
    #[test]
    fn invalid_labels_are_an_error_on_the_cpu_and_nan_on_the_gpu() {
        let gpu = gpu_or_skip();
        for &(n, c) in &[(7usize, 3usize), (5000, 4)] {
            let z = logits(n, c, 0, 5);
            for bad in [-1.0f32, c as f32, 1.5, f32::NAN, 1e9] {
                let mut y = labels(n, c, 6);
                y[n / 2] = bad;
                let zc = Tensor::from_vec(z.clone(), &[n, c], &Device::Cpu).unwrap();
                let yc = Tensor::from_vec(y.clone(), &[n], &Device::Cpu).unwrap();
                let e = zc.cross_entropy(&yc, None);
                assert!(
                    matches!(
                        e,
                        Err(Error::InvalidArgument {
                            op: "cross_entropy",
                            ..
                        })
                    ),
                    "label {bad}: {e:?}"
                );
                if let Some(gpu) = &gpu {
                    let (zg, yg) = (zc.to_device(gpu).unwrap(), yc.to_device(gpu).unwrap());
                    let w = Tensor::zeros(&[n], gpu).unwrap();
                    for weights in [None, Some(&w)] {
                        let l = zg.cross_entropy(&yg, weights).unwrap();
                        let l = l.to_scalar::<f32>().unwrap();
                        assert!(l.is_nan(), "label {bad} n={n}: GPU loss {l}, want NaN");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut devices = vec![Device::Cpu];
        devices.extend(gpu_or_skip());
        for dev in devices {
            let z = Tensor::zeros(&[4, 3], &dev).unwrap();
            let y = Tensor::zeros(&[4], &dev).unwrap();
            let ce = |z: &Tensor, y: &Tensor, w: Option<&Tensor>| z.cross_entropy(y, w);
            let three = Tensor::zeros(&[3], &dev).unwrap();
            assert!(matches!(
                ce(&z, &three, None),
                Err(Error::ShapeMismatch {
                    op: "cross_entropy",
                    ..
                })
            ));
            assert!(matches!(
                ce(&z, &y, Some(&three)),
                Err(Error::ShapeMismatch {
                    op: "cross_entropy",
                    ..
                })
            ));
            let z3 = Tensor::zeros(&[4, 3, 1], &dev).unwrap();
            assert!(matches!(
                ce(&z3, &y, None),
                Err(Error::InvalidArgument { .. })
            ));
            let z0 = Tensor::zeros(&[4, 0], &dev).unwrap();
            assert!(matches!(
                ce(&z0, &y, None),
                Err(Error::InvalidArgument { .. })
            ));
            let s = Tensor::scalar(1.0, &dev).unwrap();
            assert!(matches!(
                s.log_softmax(),
                Err(Error::InvalidArgument { .. })
            ));
            assert!(matches!(
                z.mse(&Tensor::zeros(&[3, 4], &dev).unwrap()),
                Err(Error::ShapeMismatch { op: "mse", .. })
            ));
            // Empty: log_softmax of no rows is empty, mean losses are NaN (0 / 0).
            let e = Tensor::zeros(&[0, 3], &dev).unwrap();
            assert_eq!(e.log_softmax().unwrap().shape(), &[0, 3]);
            let ye = Tensor::zeros(&[0], &dev).unwrap();
            let l = e
                .cross_entropy(&ye, None)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(l.is_nan(), "{dev}");
            assert!(e.mse(&e).unwrap().to_scalar::<f32>().unwrap().is_nan());
        }
        let z = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
        let y64 = Tensor::zeros(&[2], &Device::Cpu)
            .unwrap()
            .to_dtype(crate::DType::F64)
            .unwrap();
        assert!(matches!(
            z.cross_entropy(&y64, None),
            Err(Error::DTypeMismatch { .. })
        ));
        if let Some(gpu) = gpu_or_skip() {
            let yg = Tensor::zeros(&[2], &gpu).unwrap();
            assert!(matches!(
                z.cross_entropy(&yg, None),
                Err(Error::DeviceMismatch { .. })
            ));
        }
    }

    #[test]
    fn gpu_cross_entropy_is_one_dispatch_for_a_small_batch() {
        if gpu_or_skip().is_none() {
            return;
        }
        let gpu = Device::gpu().unwrap();
        let ctx = gpu.gpu_context().unwrap().clone();
        let z = Tensor::rand_uniform(&[1000, 10], -1.0, 1.0, 1, &gpu).unwrap();
        let y = Tensor::from_vec(labels(1000, 10, 2), &[1000], &gpu).unwrap();
        let w = Tensor::rand_uniform(&[1000], 0.0, 1.0, 3, &gpu).unwrap();
        gpu.sync().unwrap();
        for fused in [false, true] {
            ctx.set_fusion(fused);
            let before = ctx.dispatch_count();
            let loss = z.cross_entropy(&y, Some(&w)).unwrap();
            // Fused, the loss is deferred until it is read: an unread one never runs.
            assert_eq!(ctx.dispatch_count(), before + u64::from(!fused));
            assert!(loss.to_vec::<f32>().unwrap()[0].is_finite());
            assert_eq!(ctx.dispatch_count(), before + 1, "fused: {fused}");
        }
        let before = ctx.dispatch_count();
        drop(z.cross_entropy(&y, None).unwrap());
        gpu.sync().unwrap();
        assert_eq!(ctx.dispatch_count(), before);
    }
}
