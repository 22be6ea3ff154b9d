//! Losses: log-softmax, (weighted) cross-entropy and mean squared error.
//! `shaders/loss.wgsl` on the GPU (mse is a `reduce` kernel), `log_softmax_cpu` and
//! `cross_entropy_cpu` on the CPU. Every loss is a 0-d tensor on its device.
//!
//! Cross-entropy is the inner loss of data hyper-cleaning, evaluated at every inner
//! step, so it is fused: one dispatch computes each row's log-sum-exp, picks the label's
//! logit, weights it and reduces the batch (a second, one-workgroup dispatch finishes
//! large batches).

use crate::autodiff::{Op, record};
use crate::backend::cpu::CpuBuf;
use crate::backend::cpu::index::class_of;
use crate::backend::cpu::math::{CpuMath, row_len, with_row_len};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::{Error, Result, invalid};
use crate::ops::reduce;
use crate::tensor::{Element, Storage, Tensor, same_place};

static LOG_SOFTMAX: Kernel = Kernel {
    shader: &shaders::LOSS,
    entry: "log_softmax",
    reads: 1,
    writes: 1,
};

static CROSS_ENTROPY: Kernel = Kernel {
    shader: &shaders::LOSS,
    entry: "cross_entropy",
    reads: 3,
    writes: 1,
};

/// Invocations per workgroup of the loss kernels (a multiple of 8, as `cross_entropy` requires).
const WG: u32 = 64;
/// Fewest rows an invocation of `cross_entropy` takes before another workgroup (and
/// with it a finishing dispatch) is worth it: one workgroup covers 1,024 rows.
const CE_MIN_ROWS: u64 = 16;
/// At most this many partial losses, finished by one workgroup of `reduce::full`.
const CE_MAX_GROUPS: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32,
    c: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CeParams {
    n: u32,
    c: u32,
    scale: f32,
    _pad: u32,
}

/// Stable log Σ exp of every row of `c` elements: the row max is subtracted first, so every
/// term is in (0, 1] and the element type keeps ~1e-7 relative accuracy.
fn row_logsumexp<T: CpuMath>(z: &[T], c: usize) -> Vec<T> {
    with_row_len!(c, |C| {
        let (e, maxes) = exp_shifted_rows::<T, C>(z, c);
        e.chunks_exact(row_len::<C>(c))
            .zip(&maxes)
            .map(|(row, &m)| m + row_sum(row).ln())
            .collect()
    })
}

/// exp(z − row max) for every row, with the maxima. The exps of all rows run as one
/// slice (vectorised for f32), not row by row.
#[inline(always)]
fn exp_shifted_rows<T: CpuMath, const C: usize>(z: &[T], c: usize) -> (Vec<T>, Vec<T>) {
    let c = row_len::<C>(c);
    let mut e = z.to_vec();
    let mut maxes = Vec::with_capacity(z.len() / c);
    for row in e.chunks_exact_mut(c) {
        let m = row_max(row);
        row.iter_mut().for_each(|v| *v = *v - m);
        maxes.push(m);
    }
    T::exp_inplace(&mut e);
    (e, maxes)
}

/// Row reductions with four interleaved accumulators: rows are short (ten classes), and
/// one accumulator makes each row a chain of dependent max / add latencies.
fn row_fold<T: Element>(row: &[T], init: T, f: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 4];
    let quads = row.chunks_exact(4);
    let tail = quads.remainder().iter().fold(init, |a, &v| f(a, v));
    for q in quads {
        for l in 0..4 {
            acc[l] = f(acc[l], q[l]);
        }
    }
    f(f(acc[0], acc[1]), f(f(acc[2], acc[3]), tail))
}

/// A plain comparison (`max` must also order NaNs, which costs). A NaN in a row still
/// comes out of a softmax: it survives the subtraction and the exp into the row's sum.
fn row_max<T: Element>(row: &[T]) -> T {
    row_fold(row, T::neg_infinity(), |m, v| if v > m { v } else { m })
}

fn row_sum<T: Element>(row: &[T]) -> T {
    row_fold(row, T::zero(), |a, v| a + v)
}

/// CPU reference of log-softmax over rows of length `c` (`c > 0`).
pub(crate) fn log_softmax_cpu<T: CpuMath>(z: &[T], c: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(z.len());
    for (row, &lse) in z.chunks_exact(c).zip(&row_logsumexp(z, c)) {
        y.extend(row.iter().map(|&v| v - lse));
    }
    y
}

/// CPU reference of `(1/n) Σ_i w_i (logsumexp(z_i) − z_{i,y_i})` over `n` rows of `c`
/// logits. A label that is not an integer in `0..c` is an error.
pub(crate) fn cross_entropy_cpu<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
) -> Result<T> {
    ce_from_lse(z, c, labels, weights, &row_logsumexp(z, c))
}

/// The weighted mean of lse_i − z_{i, y_i}, checking every label.
fn ce_from_lse<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
    lse: &[T],
) -> Result<T> {
    let n = labels.len();
    let mut sum = 0.0f64;
    for (i, row) in z.chunks_exact(c).enumerate() {
        let y = class_of("cross_entropy", i, labels[i], c)?;
        let w = weights.map_or(1.0, |w| w[i].f64());
        sum += w * (lse[i] - row[y]).f64();
    }
    Ok(T::of(sum * (1.0 / n as f64)))
}

fn log_softmax_gpu(z: &GpuBuffer, rows: usize, c: usize) -> Result<GpuBuffer> {
    let ctx = &z.ctx;
    let y = ctx.alloc((rows * c * 4) as u64)?;
    let params = RowParams {
        rows: rows as u32,
        c: c as u32,
        _pad: [0; 2],
    };
    ctx.dispatch(
        &LOG_SOFTMAX,
        &[("WG", f64::from(WG))],
        bytemuck::bytes_of(&params),
        &[z, &y],
        ctx.grid(rows as u64, u64::from(WG))?,
    )?;
    Ok(y)
}

fn cross_entropy_gpu(
    z: &GpuBuffer,
    n: usize,
    c: usize,
    labels: &GpuBuffer,
    weights: Option<&GpuBuffer>,
) -> Result<GpuBuffer> {
    let ctx = &z.ctx;
    let groups = (n as u64)
        .div_ceil(u64::from(WG) * CE_MIN_ROWS)
        .clamp(1, CE_MAX_GROUPS) as u32;
    let scale = (1.0 / n as f64) as f32;
    let out = ctx.alloc(u64::from(groups) * 4)?;
    let params = CeParams {
        n: n as u32,
        c: c as u32,
        scale: if groups == 1 { scale } else { 1.0 },
        _pad: 0,
    };
    ctx.dispatch(
        &CROSS_ENTROPY,
        &[
            ("WG", f64::from(WG)),
            ("WEIGHTED", f64::from(u8::from(weights.is_some()))),
        ],
        bytemuck::bytes_of(&params),
        &[z, labels, weights.unwrap_or(labels), &out],
        [groups, 1, 1],
    )?;
    if groups == 1 {
        return Ok(out);
    }
    crate::backend::gpu::kernels::reduce::sum_partials_gpu(&out, groups as usize, scale)
}

/// Log-softmax along the last axis.
pub(crate) fn log_softmax_raw(z: &Tensor) -> Result<Tensor> {
    let Some(&c) = z.shape().last() else {
        return Err(invalid(
            "log_softmax",
            "needs a tensor of rank ≥ 1 (it normalises along the last axis); reshape the 0-d tensor to [1]",
        ));
    };
    let rows = z.numel().checked_div(c).unwrap_or(0);
    let storage = match &*z.storage {
        Storage::F32(v) if c > 0 => Storage::F32(CpuBuf::from(log_softmax_cpu(v, c))),
        Storage::F64(v) if c > 0 => Storage::F64(CpuBuf::from(log_softmax_cpu(v, c))),
        Storage::F32(_) => Storage::F32(CpuBuf::from(Vec::new())),
        Storage::F64(_) => Storage::F64(CpuBuf::from(Vec::new())),
        Storage::Gpu(b) => Storage::Gpu(log_softmax_gpu(b, rows, c)?),
    };
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
    let storage = match &*z.storage {
        Storage::F32(v) if c > 0 => Storage::F32(CpuBuf::from(softmax_cpu(v, c))),
        Storage::F64(v) if c > 0 => Storage::F64(CpuBuf::from(softmax_cpu(v, c))),
        Storage::F32(_) => Storage::F32(CpuBuf::from(Vec::new())),
        Storage::F64(_) => Storage::F64(CpuBuf::from(Vec::new())),
        Storage::Gpu(_) => {
            let log_p = log_softmax_raw(z)?;
            return crate::ops::unary::unary_raw(&log_p, crate::ops::unary::UnaryOp::Exp, 0.0, 0.0);
        }
    };
    Ok(Tensor::from_storage(storage, z.shape()))
}

/// CPU reference of softmax over rows of length `c` (`c > 0`): exp(z − max) / Σ, with
/// the exps of all rows in one slice.
pub(crate) fn softmax_cpu<T: CpuMath>(z: &[T], c: usize) -> Vec<T> {
    with_row_len!(c, |C| {
        let (mut e, _) = exp_shifted_rows::<T, C>(z, c);
        for row in e.chunks_exact_mut(row_len::<C>(c)) {
            let inv = T::one() / row_sum(row);
            row.iter_mut().for_each(|v| *v = *v * inv);
        }
        e
    })
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
    let w = weights.map(|w| &*w.storage);
    let storage = match (&*logits.storage, &*labels.storage, w) {
        (Storage::F32(z), Storage::F32(y), None) => {
            Storage::F32(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, None)?]))
        }
        (Storage::F32(z), Storage::F32(y), Some(Storage::F32(w))) => {
            Storage::F32(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, Some(w))?]))
        }
        (Storage::F64(z), Storage::F64(y), None) => {
            Storage::F64(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, None)?]))
        }
        (Storage::F64(z), Storage::F64(y), Some(Storage::F64(w))) => {
            Storage::F64(CpuBuf::from(vec![cross_entropy_cpu(z, c, y, Some(w))?]))
        }
        (Storage::Gpu(z), Storage::Gpu(y), None) => {
            Storage::Gpu(cross_entropy_gpu(z, n, c, y, None)?)
        }
        (Storage::Gpu(z), Storage::Gpu(y), Some(Storage::Gpu(w))) => {
            Storage::Gpu(cross_entropy_gpu(z, n, c, y, Some(w))?)
        }
        _ => unreachable!("same_place checked device and dtype"),
    };
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
    let w = weights.map(|w| &*w.storage);
    let parts = match (&*logits.storage, &*labels.storage, w) {
        (Storage::F32(z), Storage::F32(y), None) => ce_probs_cpu(z, c, y, None)
            .map(|(l, p)| (Storage::F32(vec![l].into()), Storage::F32(p.into()))),
        (Storage::F32(z), Storage::F32(y), Some(Storage::F32(w))) => ce_probs_cpu(z, c, y, Some(w))
            .map(|(l, p)| (Storage::F32(vec![l].into()), Storage::F32(p.into()))),
        (Storage::F64(z), Storage::F64(y), None) => ce_probs_cpu(z, c, y, None)
            .map(|(l, p)| (Storage::F64(vec![l].into()), Storage::F64(p.into()))),
        (Storage::F64(z), Storage::F64(y), Some(Storage::F64(w))) => ce_probs_cpu(z, c, y, Some(w))
            .map(|(l, p)| (Storage::F64(vec![l].into()), Storage::F64(p.into()))),
        _ => return None,
    };
    Some(parts.map(|(loss, probs)| {
        (
            Tensor::from_storage(loss, &[]),
            Tensor::from_storage(probs, logits.shape()),
        )
    }))
}

/// The loss of [`cross_entropy_cpu`] and softmax(z), from one pass of exps.
fn ce_probs_cpu<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
) -> Result<(T, Vec<T>)> {
    with_row_len!(c, |C| {
        let len = row_len::<C>(c);
        let (mut e, maxes) = exp_shifted_rows::<T, C>(z, c);
        let mut lse = Vec::with_capacity(maxes.len());
        for (row, &m) in e.chunks_exact_mut(len).zip(&maxes) {
            let s = row_sum(row);
            lse.push(m + s.ln());
            let inv = T::one() / s;
            row.iter_mut().for_each(|v| *v = *v * inv);
        }
        Ok((ce_from_lse(z, c, labels, weights, &lse)?, e))
    })
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
        let recording = crate::autodiff::is_grad_enabled() && self.node.is_some();
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
        let before = ctx.dispatch_count();
        let _ = z.cross_entropy(&y, Some(&w)).unwrap();
        assert_eq!(ctx.dispatch_count(), before + 1);
    }
}
