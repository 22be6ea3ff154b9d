//! Reductions: sums, means, maxima, dot products and squared norms, over all elements
//! (a 0-d result) or over one axis. `shaders/reduce.wgsl` on the GPU, `full_cpu` and
//! `axis_cpu` on the CPU. Results stay on their device: a GPU sum is a 0-d GPU tensor
//! that later kernels read, with no readback.
//!
//! Accuracy: the GPU accumulates in f32, but no accumulator adds more than a few
//! thousand terms (strided runs per invocation, then a tree; axis reductions are split
//! into chunks whose partial sums are reduced again), so even a 16M-element sum stays
//! within 1e-4 relative of an f64 sum. The CPU accumulates in f64 for both dtypes.

use crate::autodiff::{Op, record};
use crate::backend::cpu::CpuBuf;
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::{Error, Result, invalid};
use crate::tensor::{Element, Storage, Tensor, same_place};

/// What a full reduction adds up; the discriminant is the `OP` constant of `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum FullOp {
    /// Σ a
    Sum = 0,
    /// Σ a²
    SumSq = 1,
    /// Σ a·b
    Dot = 2,
    /// Σ (a − b)²
    SqDiff = 3,
}

/// What an axis reduction combines with; the discriminant is the `OP` constant of
/// `rows` and `cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum AxisOp {
    Sum = 0,
    Max = 1,
}

static FULL: Kernel = Kernel {
    shader: &shaders::REDUCE,
    entry: "full",
    reads: 2,
    writes: 1,
};

static ROWS: Kernel = Kernel {
    shader: &shaders::REDUCE,
    entry: "rows",
    reads: 1,
    writes: 1,
};

static COLS: Kernel = Kernel {
    shader: &shaders::REDUCE,
    entry: "cols",
    reads: 1,
    writes: 1,
};

/// Invocations per workgroup of `full` (a multiple of 8, as the kernel requires).
const FULL_WG: u32 = 256;
/// At most this many partial sums, so the finishing dispatch is one workgroup whose
/// invocations add at most a handful each.
const FULL_MAX_GROUPS: u64 = 1024;
/// Fewest vec4s an invocation of `full` accumulates before another workgroup is worth
/// its share of the workgroup sum and of the finishing dispatch (with 256 invocations:
/// one dispatch up to 64K elements, blocks of 256 KiB per workgroup above).
const FULL_MIN_VEC4: u64 = 64;
/// Invocations per workgroup of `rows` and `cols`.
const AXIS_WG: u32 = 64;
/// Invocations an axis reduction aims for before it splits the axis into chunks.
const AXIS_THREADS: usize = 16384;
/// Inputs smaller than this are not split for parallelism: a second dispatch costs
/// more (about 50 µs on a CPU adapter) than the threads it would add save.
const AXIS_SPLIT_MIN_ELEMS: usize = 1 << 18;
/// Chunks of the axis are at least this long (split no finer)...
const AXIS_MIN_CHUNK: usize = 64;
/// ...and at most this long, which bounds the terms one f32 accumulator adds.
const AXIS_MAX_CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FullParams {
    n: u32,
    nv: u32,
    scale: f32,
    block: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    splits: u32,
    chunk: u32,
    scale: f32,
    threads: u32,
    _pad: u32,
}

/// CPU reference of a full reduction, accumulated in f64 (four interleaved
/// accumulators, so the loop pipelines), times `scale`.
pub(crate) fn full_cpu<T: Element>(op: FullOp, a: &[T], b: &[T], scale: f64) -> T {
    // The op is matched once, outside the loop, so each arm vectorises.
    let total = match op {
        FullOp::Sum => sum_f64(a, b, |u, _| u),
        FullOp::SumSq => sum_f64(a, b, |u, _| u * u),
        FullOp::Dot => sum_f64(a, b, |u, v| u * v),
        FullOp::SqDiff => sum_f64(a, b, |u, v| (u - v) * (u - v)),
    };
    T::of(total * scale)
}

/// Σ term(a_i, b_i) in f64 with eight interleaved accumulators (a single accumulator
/// is a serial chain of dependent adds). `b` may be shorter than `a` when `term`
/// ignores it.
#[inline(always)]
fn sum_f64<T: Element>(a: &[T], b: &[T], term: impl Fn(f64, f64) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let whole = a.len() / LANES * LANES;
    let pair = |i: usize| term(a[i].f64(), b.get(i).map_or(0.0, |v| v.f64()));
    if b.len() >= a.len() {
        for (ca, cb) in a[..whole].chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += term(ca[l].f64(), cb[l].f64());
            }
        }
    } else {
        for ca in a[..whole].chunks_exact(LANES) {
            for l in 0..LANES {
                acc[l] += term(ca[l].f64(), 0.0);
            }
        }
    }
    let tail: f64 = (whole..a.len()).map(pair).sum();
    let half = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    ((half[0] + half[1]) + (half[2] + half[3])) + tail
}

/// CPU reference of a reduction over the middle axis of `x` viewed as
/// `[outer, len, inner]`; sums are multiplied by `scale`. Max propagates NaN.
pub(crate) fn axis_cpu<T: Element>(
    op: AxisOp,
    x: &[T],
    outer: usize,
    len: usize,
    inner: usize,
    scale: f64,
) -> Vec<T> {
    if inner == 1 && op == AxisOp::Sum {
        // Rows: long ones take the interleaved accumulators of `full_cpu`; short ones
        // (a classifier's ten logits) a plain loop, whose chains overlap across rows.
        return x
            .chunks_exact(len.max(1))
            .take(outer)
            .map(|row| {
                if len >= 64 {
                    full_cpu::<T>(FullOp::Sum, row, row, scale)
                } else {
                    T::of(row.iter().fold(0.0, |s, v| s + v.f64()) * scale)
                }
            })
            .collect();
    }
    let mut out = Vec::with_capacity(outer * inner);
    let mut acc = vec![0.0f64; inner];
    for o in 0..outer {
        let init = match op {
            AxisOp::Sum => 0.0,
            AxisOp::Max => f64::NEG_INFINITY,
        };
        acc.fill(init);
        for k in 0..len {
            let row = &x[(o * len + k) * inner..][..inner];
            for (s, v) in acc.iter_mut().zip(row) {
                let v = v.f64();
                match op {
                    AxisOp::Sum => *s += v,
                    AxisOp::Max => {
                        if v > *s || v.is_nan() {
                            *s = v
                        }
                    }
                }
            }
        }
        out.extend(acc.iter().map(|&s| match op {
            AxisOp::Sum => T::of(s * scale),
            AxisOp::Max => T::of(s),
        }));
    }
    out
}

/// One `full` dispatch over `n` elements of `a` (and `b`) into `groups` partials.
fn full_pass(
    op: FullOp,
    a: &GpuBuffer,
    b: &GpuBuffer,
    n: usize,
    groups: u32,
    scale: f32,
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let out = ctx.alloc(u64::from(groups) * 4)?;
    let params = FullParams {
        n: n as u32,
        nv: (n / 4) as u32,
        scale,
        block: (n / 4).div_ceil(groups as usize) as u32,
    };
    ctx.dispatch(
        &FULL,
        &[("OP", f64::from(op as u32)), ("WG", f64::from(FULL_WG))],
        bytemuck::bytes_of(&params),
        &[a, b, &out],
        [groups, 1, 1],
    )?;
    Ok(out)
}

/// A full reduction on the GPU into a new one-element buffer: one dispatch for inputs
/// up to `FULL_WG · FULL_MIN_VEC4 · 4` elements, two above. `b` is read only by
/// [`FullOp::Dot`] and [`FullOp::SqDiff`]; pass `a` again otherwise.
pub(crate) fn full_gpu(
    op: FullOp,
    a: &GpuBuffer,
    b: &GpuBuffer,
    n: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    let nv = (n / 4) as u64;
    let groups = nv
        .div_ceil(u64::from(FULL_WG) * FULL_MIN_VEC4)
        .clamp(1, FULL_MAX_GROUPS) as u32;
    if groups == 1 {
        return full_pass(op, a, b, n, 1, scale);
    }
    let partials = full_pass(op, a, b, n, groups, 1.0)?;
    sum_partials_gpu(&partials, groups as usize, scale)
}

/// `scale · Σ` of the first `count` elements of `partials`, into a new one-element
/// buffer (for kernels that leave one partial sum per workgroup, like the losses).
pub(crate) fn sum_partials_gpu(
    partials: &GpuBuffer,
    count: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    full_gpu(FullOp::Sum, partials, partials, count, scale)
}

/// How an axis of `len` is split when each chunk is reduced by one invocation and
/// `out_threads` invocations (each `width` elements wide) cover the outputs:
/// (splits, chunk length).
fn split(len: usize, out_threads: usize, width: usize) -> (usize, usize) {
    if len == 0 {
        return (1, 0);
    }
    let for_accuracy = len.div_ceil(AXIS_MAX_CHUNK);
    // Splitting for parallelism costs a second dispatch, worth it only for big inputs.
    let for_parallelism = if out_threads * width * len < AXIS_SPLIT_MIN_ELEMS {
        1
    } else {
        AXIS_THREADS
            .div_ceil(out_threads.max(1))
            .min(len.div_ceil(AXIS_MIN_CHUNK))
    };
    let splits = for_accuracy.max(for_parallelism).max(1);
    let chunk = len.div_ceil(splits);
    (len.div_ceil(chunk), chunk)
}

/// A reduction over the middle axis of `x` viewed as `[outer, len, inner]` on the GPU,
/// into a new `[outer, inner]` buffer. Long axes take more than one dispatch: each
/// reduces chunks into `[outer, splits, inner]` partials, until one split remains.
pub(crate) fn axis_gpu(
    op: AxisOp,
    x: &GpuBuffer,
    outer: usize,
    mut len: usize,
    inner: usize,
    scale: f32,
) -> Result<GpuBuffer> {
    let ctx = x.ctx.clone();
    let mut owned: Option<GpuBuffer> = None;
    loop {
        let src = owned.as_ref().unwrap_or(x);
        let vec = if inner > 1 && inner.is_multiple_of(4) {
            4
        } else {
            1
        };
        let out_threads = outer * inner / vec;
        let (splits, chunk) = split(len, out_threads, vec);
        let threads = out_threads * splits;
        let out = ctx.alloc((outer * splits * inner * 4) as u64)?;
        let params = AxisParams {
            outer: outer as u32,
            len: len as u32,
            inner: inner as u32,
            splits: splits as u32,
            chunk: chunk as u32,
            scale: if splits == 1 { scale } else { 1.0 },
            threads: threads as u32,
            _pad: 0,
        };
        let (kernel, vec_c) = if inner == 1 { (&ROWS, 1) } else { (&COLS, vec) };
        ctx.dispatch(
            kernel,
            &[
                ("OP", f64::from(op as u32)),
                ("WG", f64::from(AXIS_WG)),
                ("VEC", f64::from(vec_c as u32)),
            ],
            bytemuck::bytes_of(&params),
            &[src, &out],
            ctx.grid(threads as u64, u64::from(AXIS_WG))?,
        )?;
        if splits == 1 {
            return Ok(out);
        }
        owned = Some(out);
        len = splits;
    }
}

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
    let storage = match (&*a.storage, &*b.storage) {
        (Storage::F32(x), Storage::F32(y)) => {
            Storage::F32(CpuBuf::from(vec![full_cpu(op, x, y, scale)]))
        }
        (Storage::F64(x), Storage::F64(y)) => {
            Storage::F64(CpuBuf::from(vec![full_cpu(op, x, y, scale)]))
        }
        (Storage::Gpu(x), Storage::Gpu(y)) => {
            Storage::Gpu(full_gpu(op, x, y, a.numel(), scale as f32)?)
        }
        _ => unreachable!("same_place checked device and dtype"),
    };
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
    let storage = match &*x.storage {
        Storage::F32(v) => Storage::F32(CpuBuf::from(axis_cpu(op, v, outer, len, inner, scale))),
        Storage::F64(v) => Storage::F64(CpuBuf::from(axis_cpu(op, v, outer, len, inner, scale))),
        Storage::Gpu(b) => Storage::Gpu(axis_gpu(op, b, outer, len, inner, scale as f32)?),
    };
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
        assert_eq!(
            ctx.dispatch_count(),
            before + 2,
            "a large dot is two dispatches"
        );
    }
}
