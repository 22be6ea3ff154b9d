//! Losses: log-softmax, (weighted) cross-entropy, binary cross-entropy with logits and
//! mean squared error. The CPU code is
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

    /// Mean binary cross-entropy of logits `self` against `labels` (the same shape,
    /// values in [0, 1]; soft labels allowed), optionally weighted per element, as
    /// PyTorch's `binary_cross_entropy_with_logits(z, y, weight)` with the default
    /// `reduction = "mean"`:
    ///
    /// `(1/N) Σ_i w_i · (softplus(z_i) − y_i·z_i)`
    /// ` = (1/N) Σ_i w_i · (−y_i ln σ(z_i) − (1 − y_i) ln(1 − σ(z_i)))`,
    ///
    /// with N the number of elements of `self` (not Σ w) and `w_i = 1` without
    /// `weights`. `weights` must broadcast to the logits' shape (per example `[n]` for
    /// logits `[n]`, or per class `[c]` for `[n, c]`). Stable for any logits (through
    /// [`Tensor::softplus`]) and differentiable to any order in the logits, the labels
    /// and the weights; an empty tensor gives NaN (0 / 0). Computed as
    /// `y_i·softplus(−z_i) + (1 − y_i)·softplus(z_i)`, whose terms are ≥ 0 for labels in
    /// [0, 1], so no cancellation. A 0-d tensor on the device, recorded as a few
    /// elementwise ops and a mean (fused into few dispatches on a GPU).
    ///
    /// Labels are not range-checked (that would cost a readback on a GPU): a label
    /// outside [0, 1] gives a loss that is not a cross-entropy and may be unbounded
    /// below. Shapes that do not fit are `ShapeMismatch`; operands on different devices
    /// or of different dtypes are `DeviceMismatch` / `DTypeMismatch`.
    ///
    /// ```
    /// use blo::{Device, Tensor};
    /// # fn main() -> blo::Result<()> {
    /// let dev = Device::cpu();
    /// let z = Tensor::from_vec(vec![0.0f64, 100.0, -100.0], &[3], &dev)?;
    /// let y = Tensor::from_vec(vec![1.0f64, 1.0, 0.0], &[3], &dev)?;
    /// let loss = z.bce_with_logits(&y, None)?.to_scalar::<f64>()?;
    /// // ln 2 for the first element, e⁻¹⁰⁰ for the confident correct ones.
    /// assert!((loss - 2f64.ln() / 3.0).abs() < 1e-15);
    /// # Ok(()) }
    /// ```
    pub fn bce_with_logits(&self, labels: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "bce_with_logits";
        same_place(OP, self, labels)?;
        if labels.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().to_vec(),
                rhs: labels.shape().to_vec(),
            });
        }
        // y·softplus(−z) + (1 − y)·softplus(z), not softplus(z) − y·z: both terms are
        // ≥ 0 for labels in [0, 1], so a confident right answer (z = 100, y = 1) keeps
        // its e⁻¹⁰⁰ instead of cancelling to 0 (the gradient in the weights sees it).
        let terms = labels
            .mul(&self.neg()?.softplus()?)?
            .add(&labels.scale_shift(-1.0, 1.0)?.mul(&self.softplus()?)?)?;
        let terms = match weights {
            Some(w) => {
                same_place(OP, self, w)?;
                let out = crate::ops::binary::broadcast_shape(OP, self.shape(), w.shape());
                if out.as_deref().ok() != Some(self.shape()) {
                    return Err(Error::ShapeMismatch {
                        op: OP,
                        lhs: self.shape().to_vec(),
                        rhs: w.shape().to_vec(),
                    });
                }
                terms.mul(w)?
            }
            None => terms,
        };
        terms.mean()
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

    /// Logits at the extremes and near 0, labels hard and soft, weights in (0, 1).
    fn bce_inputs() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let z = vec![-100.0, -20.0, -1.5, -1e-3, 0.0, 1e-3, 0.7, 20.0, 100.0];
        let y = vec![0.0, 1.0, 0.3, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0];
        let w = vec![0.2, 0.9, 0.5, 0.7, 0.1, 0.6, 0.4, 0.8, 0.3];
        (z, y, w)
    }

    /// PyTorch's formula, evaluated on the host: max(z, 0) − z·y + ln(1 + e^−|z|).
    fn bce_host(z: &[f64], y: &[f64], w: &[f64]) -> f64 {
        let n = z.len() as f64;
        z.iter()
            .zip(y)
            .zip(w)
            .map(|((&z, &y), &w)| w * (z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()))
            .sum::<f64>()
            / n
    }

    #[test]
    fn bce_with_logits_values_and_derivatives() {
        let cpu = Device::Cpu;
        let (z, y, w) = bce_inputs();
        let n = z.len();
        let t = |v: &[f64]| Tensor::from_vec(v.to_vec(), &[n], &cpu).unwrap();
        let (zt, yt, wt) = (t(&z), t(&y), t(&w));
        let got = zt.bce_with_logits(&yt, Some(&wt)).unwrap();
        assert_eq!(got.shape(), &[] as &[usize]);
        let want = bce_host(&z, &y, &w);
        assert!((got.to_scalar::<f64>().unwrap() - want).abs() <= 1e-15 * want.abs());
        let unweighted = zt.bce_with_logits(&yt, None).unwrap();
        let want = bce_host(&z, &y, &vec![1.0; n]);
        assert!((unweighted.to_scalar::<f64>().unwrap() - want).abs() <= 1e-15 * want);
        // Gradients in the logits, the labels and the weights, in closed form:
        // w_i (σ(z_i) − y_i)/N, −w_i z_i/N and (softplus(z_i) − y_i z_i)/N, with
        // σ(z) − y written as (1 − y)σ(z) − yσ(−z), which keeps σ(−100) = e⁻¹⁰⁰.
        let (zg, yg, wg) = (zt.requires_grad(), yt.requires_grad(), wt.requires_grad());
        let loss = zg.bce_with_logits(&yg, Some(&wg)).unwrap();
        let g = crate::autodiff::grad(&loss, &[&zg, &yg, &wg], true).unwrap();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let nf = n as f64;
        let dz: Vec<f64> = (0..n)
            .map(|i| w[i] * ((1.0 - y[i]) * sig(z[i]) - y[i] * sig(-z[i])) / nf)
            .collect();
        let dy: Vec<f64> = (0..n).map(|i| -w[i] * z[i] / nf).collect();
        let dw: Vec<f64> = (0..n)
            .map(|i| (z[i].max(0.0) - z[i] * y[i] + (-z[i].abs()).exp().ln_1p()) / nf)
            .collect();
        for (k, want) in [dz, dy, dw].iter().enumerate() {
            let got = g[k].to_vec::<f64>().unwrap();
            // 1e-12, not ε: near z = 0 with a soft label, σ(z) − y ≈ 2.5e-4 is a difference
            // of two ~0.5 terms, on both sides, each rounding differently.
            assert_close(&got, want, 1e-12, 1e-300, &format!("gradient {k}"));
        }
        // Second order: the Hessian in z is diagonal, w_i σ(z_i)σ(−z_i)/N, so
        // H·1 holds it (¼·w/N at z = 0, where a relu-based softplus would give 0).
        let ones = zt.ones_like().unwrap();
        let hz = crate::autodiff::grad(&g[0].dot(&ones).unwrap(), &[&zg], false).unwrap();
        let want: Vec<f64> = (0..n).map(|i| w[i] * sig(z[i]) * sig(-z[i]) / nf).collect();
        // atol ε/N: sigmoid's rule is σ(1 − σ), whose 1 − σ keeps only absolute accuracy
        // where σ ≈ 1 (z = 20: 2e-9 to ~5e-8 relative).
        assert_close(&hz[0].to_vec::<f64>().unwrap(), &want, 1e-12, 1e-17, "H·1");
        // Per-class weights broadcast; a wrong label or weight shape is an error.
        let z2 = Tensor::from_vec(vec![0.5f64; 6], &[2, 3], &cpu).unwrap();
        let y2 = z2.zeros_like().unwrap();
        let per_class = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3], &cpu).unwrap();
        let l = z2.bce_with_logits(&y2, Some(&per_class)).unwrap();
        // Labels 0: every term is softplus(0.5) = ln(1 + e^0.5), times mean(1, 2, 3) = 2.
        let sp = 0.5f64.exp().ln_1p();
        assert!((l.to_scalar::<f64>().unwrap() - 2.0 * sp).abs() < 1e-14);
        let e = z2.bce_with_logits(&per_class, None).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch {
                    op: "bce_with_logits",
                    ..
                }
            ),
            "{e}"
        );
        let e = z2.bce_with_logits(&y2, Some(&yt)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch {
                    op: "bce_with_logits",
                    ..
                }
            ),
            "{e}"
        );
    }

    /// The GPU (f32) against the CPU (f64) at extreme logits, fused and unfused: the
    /// loss, and its gradient in the logits and the weights.
    #[test]
    fn gpu_bce_with_logits_matches_f64() {
        let Some(gpu) = crate::testing::fresh_gpu_or_skip() else {
            return;
        };
        let ctx = gpu.gpu_context().unwrap().clone();
        let (z, y, w) = bce_inputs();
        let n = z.len();
        let run = |dev: &Device, dtype: crate::DType| {
            let t = |v: &[f64]| {
                Tensor::from_vec(v.to_vec(), &[n], &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .to_device(dev)
                    .unwrap()
            };
            let (zt, yt, wt) = (t(&z).requires_grad(), t(&y), t(&w).requires_grad());
            let loss = zt.bce_with_logits(&yt, Some(&wt)).unwrap();
            let g = crate::autodiff::grad(&loss, &[&zt, &wt], false).unwrap();
            let mut out = loss.to_vec::<f64>().unwrap();
            for gi in &g {
                out.extend(gi.to_vec::<f64>().unwrap());
            }
            out
        };
        let want = run(&Device::Cpu, crate::DType::F64);
        for fused in [true, false] {
            ctx.set_fusion(fused);
            let got = run(&gpu, crate::DType::F32);
            // f32 rounding of inputs and results; atol for the e⁻¹⁰⁰-sized gradient
            // terms, which f32 cannot hold.
            assert_close(&got, &want, 1e-5, 1e-7, &format!("fused: {fused}"));
        }
    }
}
