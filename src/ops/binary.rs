//! Elementwise binary ops with NumPy broadcasting: `shaders/binary.wgsl` on the GPU,
//! `binary_cpu` on the CPU. A 0-d tensor on the device is a valid operand, so a
//! scalar computed on the GPU (a dot product, a loss) scales a vector with no readback.

use crate::autodiff::{Op, record};
use crate::backend::cpu::CpuBuf;
use crate::backend::cpu::math::{row_len, with_row_len};
use crate::backend::gpu::shaders;
use crate::backend::gpu::{GpuBuffer, Kernel};
use crate::error::{Error, Result, invalid};
use crate::tensor::{Element, Storage, Tensor, numel, same_place};

/// An elementwise function of two tensors. The discriminant is the `OP` constant of
/// `shaders/binary.wgsl`. Comparisons return 1.0 where they hold and 0.0 elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BinaryOp {
    /// a + b
    Add = 0,
    /// a − b
    Sub = 1,
    /// a · b
    Mul = 2,
    /// a / b
    Div = 3,
    /// max(a, b)
    Max = 4,
    /// min(a, b)
    Min = 5,
    /// a > b
    Gt = 6,
    /// a ≥ b
    Ge = 7,
    /// a < b
    Lt = 8,
    /// a ≤ b
    Le = 9,
    /// a = b
    Eq = 10,
}

/// Every binary op, for tests and `blo check`.
pub const ALL_BINARY: [BinaryOp; 11] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Eq,
];

static BINARY: Kernel = Kernel {
    shader: &shaders::BINARY,
    entry: "main",
    reads: 2,
    writes: 1,
};

const WG: u32 = 256;
/// Highest rank the GPU kernel's general broadcasting path indexes.
pub(crate) const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    n4: u32,
    rank: u32,
    _pad: u32,
    shape: [u32; MAX_RANK],
    stride_a: [u32; MAX_RANK],
    stride_b: [u32; MAX_RANK],
}

/// The CPU reference of one element.
pub(crate) fn apply<T: Element>(op: BinaryOp, a: T, b: T) -> T {
    let mask = |c: bool| if c { T::one() } else { T::zero() };
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Gt => mask(a > b),
        BinaryOp::Ge => mask(a >= b),
        BinaryOp::Lt => mask(a < b),
        BinaryOp::Le => mask(a <= b),
        BinaryOp::Eq => mask(a == b),
    }
}

/// The NumPy broadcast of two shapes: aligned at the right, each pair of extents equal
/// or one of them 1.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for k in 0..rank {
        let da = if k < a.len() { a[a.len() - 1 - k] } else { 1 };
        let db = if k < b.len() { b[b.len() - 1 - k] } else { 1 };
        out[rank - 1 - k] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: a.to_vec(),
                    rhs: b.to_vec(),
                });
            }
        };
    }
    Ok(out)
}

/// Element strides of an operand of `shape` read along `out` (0 on broadcast dims).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut stride = 1;
    for k in 0..shape.len() {
        let d = shape.len() - 1 - k;
        let od = out.len() - 1 - k;
        if shape[d] != 1 {
            strides[od] = stride;
        }
        stride *= shape[d];
    }
    strides
}

/// [`binary_cpu`] with the op matched once, outside the element loop, so that each
/// arithmetic op gets its own vectorised loop.
fn binary_cpu_op<T: Element>(
    op: BinaryOp,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &[usize],
) -> Vec<T> {
    let run = |f: &dyn Fn(T, T) -> T| binary_cpu(f, a, a_shape, b, b_shape, out);
    match op {
        BinaryOp::Add => binary_cpu(|u, v| u + v, a, a_shape, b, b_shape, out),
        BinaryOp::Sub => binary_cpu(|u, v| u - v, a, a_shape, b, b_shape, out),
        BinaryOp::Mul => binary_cpu(|u, v| u * v, a, a_shape, b, b_shape, out),
        BinaryOp::Div => binary_cpu(|u, v| u / v, a, a_shape, b, b_shape, out),
        _ => run(&|u, v| apply(op, u, v)),
    }
}

/// How an operand's elements map onto the output's, for the CPU's fast paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Same shape as the output.
    Full,
    /// Output element i reads element i % period (a row broadcast down the leading dims).
    Tile(usize),
    /// Output element i reads element i / block (a column broadcast along trailing dims;
    /// a single element is a block of the whole output).
    Repeat(usize),
}

fn pattern(shape: &[usize], out: &[usize]) -> Option<Pattern> {
    if shape == out {
        return Some(Pattern::Full);
    }
    let n = numel(shape);
    let trimmed: &[usize] = {
        let lead = shape.iter().take_while(|&&d| d == 1).count();
        &shape[lead..]
    };
    if out.ends_with(trimmed) {
        return Some(Pattern::Tile(n.max(1)));
    }
    let mut padded = vec![1; out.len() - shape.len()];
    padded.extend_from_slice(shape);
    let j = padded.iter().zip(out).take_while(|(p, o)| p == o).count();
    if padded[j..].iter().all(|&d| d == 1) {
        return Some(Pattern::Repeat(numel(&out[j..]).max(1)));
    }
    None
}

// Explicit row loops rather than `flat_map(..).collect()`: a flattened iterator has no
// exact length, so it neither preallocates nor vectorises. Rows are often short (a bias
// over ten classes), so they are walked with a compile-time length when it is small
// (`with_row_len`).

/// f(full[i], row[i % row.len()]) for every element of `full`.
fn tile_rows<T: Element>(full: &[T], row: &[T], f: &impl Fn(T, T) -> T) -> Vec<T> {
    let mut y = vec![T::zero(); full.len()];
    with_row_len!(row.len(), |C| {
        let len = row_len::<C>(row.len());
        let row = &row[..len];
        for (yr, fr) in y.chunks_exact_mut(len).zip(full.chunks_exact(len)) {
            for j in 0..len {
                yr[j] = f(fr[j], row[j]);
            }
        }
    });
    y
}

/// f(full[i], per_row[i / k]) for every element of `full`.
fn repeat_rows<T: Element>(full: &[T], per_row: &[T], k: usize, f: &impl Fn(T, T) -> T) -> Vec<T> {
    let mut y = vec![T::zero(); full.len()];
    with_row_len!(k, |C| {
        let len = row_len::<C>(k);
        for ((yr, fr), &v) in y
            .chunks_exact_mut(len)
            .zip(full.chunks_exact(len))
            .zip(per_row)
        {
            for j in 0..len {
                yr[j] = f(fr[j], v);
            }
        }
    });
    y
}

/// CPU reference with general broadcasting. Row, column and scalar broadcasts (bias
/// adds, per-row weights) take contiguous loops; other patterns walk an odometer.
pub(crate) fn binary_cpu<T: Element>(
    f: impl Fn(T, T) -> T,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &[usize],
) -> Vec<T> {
    let n = numel(out);
    match (pattern(a_shape, out), pattern(b_shape, out)) {
        (Some(Pattern::Full), Some(Pattern::Full)) => {
            return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
        }
        // The mirrored patterns swap the operands (and the arguments of `f`).
        (Some(Pattern::Full), Some(Pattern::Tile(p))) if n > 0 && p > 0 && n.is_multiple_of(p) => {
            return tile_rows(a, &b[..p], &f);
        }
        (Some(Pattern::Tile(p)), Some(Pattern::Full)) if n > 0 && p > 0 && n.is_multiple_of(p) => {
            return tile_rows(b, &a[..p], &|x, y| f(y, x));
        }
        (Some(Pattern::Full), Some(Pattern::Repeat(k)))
            if n > 0 && k > 0 && n.is_multiple_of(k) =>
        {
            return repeat_rows(a, b, k, &f);
        }
        (Some(Pattern::Repeat(k)), Some(Pattern::Full))
            if n > 0 && k > 0 && n.is_multiple_of(k) =>
        {
            return repeat_rows(b, a, k, &|x, y| f(y, x));
        }
        _ => {}
    }
    let sa = broadcast_strides(a_shape, out);
    let sb = broadcast_strides(b_shape, out);
    let mut idx = vec![0usize; out.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        y.push(f(a[ia], b[ib]));
        // Odometer increment of the output index, carrying the operand offsets along.
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < out[d] {
                break;
            }
            ia -= sa[d] * out[d];
            ib -= sb[d] * out[d];
            idx[d] = 0;
        }
    }
    y
}

/// `op_index` is the kernel's `OP` constant: a [`BinaryOp`] or [`OP_FIRST`].
fn binary_gpu(
    op_index: u32,
    a: &GpuBuffer,
    a_shape: &[usize],
    b: &GpuBuffer,
    b_shape: &[usize],
    out: &[usize],
) -> Result<GpuBuffer> {
    let ctx = &a.ctx;
    let n = numel(out);
    let y = ctx.alloc((n * 4) as u64)?;
    let n4 = n.div_ceil(4);
    let mut params = Params {
        n: n as u32,
        n4: n4 as u32,
        rank: out.len() as u32,
        _pad: 0,
        shape: [1; MAX_RANK],
        stride_a: [0; MAX_RANK],
        stride_b: [0; MAX_RANK],
    };
    let mode = if a_shape == out && b_shape == out {
        0
    } else if numel(a_shape) == 1 && b_shape == out {
        1
    } else if numel(b_shape) == 1 && a_shape == out {
        2
    } else {
        if out.len() > MAX_RANK {
            return Err(invalid(
                "binary op",
                format!(
                    "GPU broadcasting supports rank ≤ {MAX_RANK}, got output shape {out:?}; reshape to fewer dimensions"
                ),
            ));
        }
        let (sa, sb) = (
            broadcast_strides(a_shape, out),
            broadcast_strides(b_shape, out),
        );
        for d in 0..out.len() {
            params.shape[d] = out[d] as u32;
            params.stride_a[d] = sa[d] as u32;
            params.stride_b[d] = sb[d] as u32;
        }
        3
    };
    ctx.dispatch(
        &BINARY,
        &[
            ("OP", f64::from(op_index)),
            ("MODE", f64::from(mode)),
            ("WG", f64::from(WG)),
        ],
        bytemuck::bytes_of(&params),
        &[a, b, &y],
        ctx.grid(n4 as u64, u64::from(WG))?,
    )?;
    Ok(y)
}

pub(crate) fn binary_raw(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = op_name(op);
    same_place(name, a, b)?;
    let out = broadcast_shape(name, a.shape(), b.shape())?;
    let storage = match (&*a.storage, &*b.storage) {
        (Storage::F32(x), Storage::F32(y)) => Storage::F32(CpuBuf::from(binary_cpu_op(
            op,
            x,
            a.shape(),
            y,
            b.shape(),
            &out,
        ))),
        (Storage::F64(x), Storage::F64(y)) => Storage::F64(CpuBuf::from(binary_cpu_op(
            op,
            x,
            a.shape(),
            y,
            b.shape(),
            &out,
        ))),
        (Storage::Gpu(x), Storage::Gpu(y)) => {
            Storage::Gpu(binary_gpu(op as u32, x, a.shape(), y, b.shape(), &out)?)
        }
        _ => unreachable!("same_place checked device and dtype"),
    };
    Ok(Tensor::from_storage(storage, &out))
}

/// The kernel's `OP` value that returns its left operand: broadcasting as a copy.
const OP_FIRST: u32 = 11;

/// `x` broadcast to `shape` (which must be a broadcast of x's shape).
/// `x` copied out to the broadcast shape `out`: whole rows or runs of one value where
/// the pattern allows, the general odometer otherwise.
fn broadcast_cpu<T: Element>(x: &[T], x_shape: &[usize], out: &[usize]) -> Vec<T> {
    let n = numel(out);
    match pattern(x_shape, out) {
        Some(Pattern::Full) => x.to_vec(),
        Some(Pattern::Tile(p)) if p == x.len() && p > 0 => {
            let mut y = Vec::with_capacity(n);
            while y.len() < n {
                y.extend_from_slice(x);
            }
            y
        }
        Some(Pattern::Repeat(k)) if k > 0 => {
            let mut y = Vec::with_capacity(n);
            for &v in x.iter().take(n / k) {
                y.resize(y.len() + k, v);
            }
            y
        }
        _ => binary_cpu(|u, _| u, x, x_shape, x, x_shape, out),
    }
}

pub(crate) fn broadcast_raw(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = broadcast_shape("broadcast_to", x.shape(), shape)?;
    if out != shape {
        return Err(Error::ShapeMismatch {
            op: "broadcast_to",
            lhs: x.shape().to_vec(),
            rhs: shape.to_vec(),
        });
    }
    let storage = match &*x.storage {
        Storage::F32(v) => Storage::F32(CpuBuf::from(broadcast_cpu(v, x.shape(), shape))),
        Storage::F64(v) => Storage::F64(CpuBuf::from(broadcast_cpu(v, x.shape(), shape))),
        Storage::Gpu(b) => Storage::Gpu(binary_gpu(OP_FIRST, b, x.shape(), b, x.shape(), shape)?),
    };
    Ok(Tensor::from_storage(storage, shape))
}

fn op_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Max => "maximum",
        BinaryOp::Min => "minimum",
        BinaryOp::Gt => "gt",
        BinaryOp::Ge => "ge",
        BinaryOp::Lt => "lt",
        BinaryOp::Le => "le",
        BinaryOp::Eq => "eq",
    }
}

impl Tensor {
    /// `op` applied elementwise with NumPy broadcasting.
    pub fn binary(&self, other: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let out = binary_raw(self, other, op)?;
        Ok(record(Op::Binary(op), &[self, other], out))
    }
    /// self + other (broadcasting)
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Add)
    }
    /// self − other (broadcasting)
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Sub)
    }
    /// self · other (broadcasting)
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Mul)
    }
    /// self / other (broadcasting)
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Div)
    }
    /// Elementwise maximum (broadcasting).
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Max)
    }
    /// Elementwise minimum (broadcasting).
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Min)
    }
    /// 1 where self > other, else 0.
    pub fn gt(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Gt)
    }
    /// 1 where self ≥ other, else 0.
    pub fn ge(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Ge)
    }
    /// 1 where self < other, else 0.
    pub fn lt(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Lt)
    }
    /// 1 where self ≤ other, else 0.
    pub fn le(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Le)
    }
    /// 1 where self = other, else 0.
    pub fn eq_mask(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, BinaryOp::Eq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use crate::testing::{assert_close, gpu_or_skip, oracle_pair};

    #[test]
    fn broadcast_shapes() {
        assert_eq!(broadcast_shape("t", &[3, 1], &[4]).unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shape("t", &[], &[2, 5]).unwrap(), vec![2, 5]);
        assert_eq!(
            broadcast_shape("t", &[2, 1, 5], &[3, 1]).unwrap(),
            vec![2, 3, 5]
        );
        let e = broadcast_shape("add", &[3, 2], &[3]).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { op: "add", .. }), "{e}");
    }

    /// For each element of `out`, the offset of the element of an operand of `shape` it
    /// reads under broadcasting, from the definition alone (no strides of the code under
    /// test): the output index is split into digits, the operand's dims are aligned at
    /// the right, an extent-1 dim reads index 0, and the operand's digits are put back
    /// together row-major.
    fn naive_indices(shape: &[usize], out: &[usize]) -> Vec<usize> {
        let lead = out.len() - shape.len();
        (0..numel(out))
            .map(|i| {
                let mut digits = vec![0; out.len()];
                let mut rem = i;
                for d in (0..out.len()).rev() {
                    digits[d] = rem % out[d];
                    rem /= out[d];
                }
                let mut offset = 0;
                for (d, &extent) in shape.iter().enumerate() {
                    let digit = if extent == 1 { 0 } else { digits[lead + d] };
                    offset = offset * extent + digit;
                }
                offset
            })
            .collect()
    }

    /// Every CPU fast path (binary ops and broadcast_to) against a naive index computation.
    #[test]
    fn cpu_fast_paths_match_naive_broadcasting() {
        let shapes: [(&[usize], &[usize]); 10] = [
            (&[4, 3], &[3]),
            (&[3], &[4, 3]),
            (&[4, 3], &[4, 1]),
            (&[4, 1], &[4, 3]),
            (&[2, 4, 3], &[1, 3]),
            (&[2, 4, 3], &[2, 1, 1]),
            (&[2, 4, 3], &[]),
            (&[2, 1, 3], &[4, 1]),
            (&[0, 3], &[3]),
            // An empty operand tiled over an empty output.
            (&[2, 0], &[0]),
        ];
        for (sa, sb) in shapes {
            let out = broadcast_shape("t", sa, sb).unwrap();
            let (a, b) = (oracle_pair(sa, 1).1, oracle_pair(sb, 2).1);
            let got = binary_cpu(|x, y| x * 10.0 + y, &a, sa, &b, sb, &out);
            // Operand elements read by each output element, by naive index arithmetic.
            let (ia, ib) = (naive_indices(sa, &out), naive_indices(sb, &out));
            let want: Vec<f64> = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| a[i] * 10.0 + b[j])
                .collect();
            assert_eq!(got, want, "{sa:?} {sb:?}");
            // broadcast_to of each operand alone.
            let only_a: Vec<f64> = ia.iter().map(|&i| a[i]).collect();
            assert_eq!(
                broadcast_cpu(&a, sa, &out),
                only_a,
                "broadcast {sa:?} to {out:?}"
            );
            let only_b: Vec<f64> = ib.iter().map(|&j| b[j]).collect();
            assert_eq!(
                broadcast_cpu(&b, sb, &out),
                only_b,
                "broadcast {sb:?} to {out:?}"
            );
        }
    }

    #[test]
    fn cpu_reference_broadcasts_rows_and_columns() {
        let cpu = Device::Cpu;
        let m = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &cpu).unwrap();
        let row = Tensor::from_vec(vec![10.0f64, 20.0, 30.0], &[3], &cpu).unwrap();
        let col = Tensor::from_vec(vec![100.0f64, 200.0], &[2, 1], &cpu).unwrap();
        assert_eq!(
            m.add(&row).unwrap().to_vec::<f64>().unwrap(),
            vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
        );
        assert_eq!(
            m.add(&col).unwrap().to_vec::<f64>().unwrap(),
            vec![101.0, 102.0, 103.0, 204.0, 205.0, 206.0]
        );
        assert_eq!(
            row.reshape(&[1, 3])
                .unwrap()
                .sub(&col)
                .unwrap()
                .to_vec::<f64>()
                .unwrap(),
            vec![-90.0, -80.0, -70.0, -190.0, -180.0, -170.0]
        );
    }

    /// Shape pairs covering every indexing mode: same shape, scalar on either side, a
    /// 0-d device scalar, row and column broadcasting, and general rank-3 broadcasting.
    fn cases() -> Vec<(Vec<usize>, Vec<usize>)> {
        let mut v = vec![];
        for &n in &[1usize, 7, 31, 257] {
            v.push((vec![n], vec![n]));
            v.push((vec![n], vec![]));
            v.push((vec![], vec![n]));
            v.push((vec![n, 3], vec![3]));
            v.push((vec![n, 3], vec![n, 1]));
            v.push((vec![1, n], vec![5, 1]));
        }
        v.push((vec![2, 1, 7], vec![3, 1]));
        v.push((vec![31, 5], vec![1, 1]));
        v
    }

    #[test]
    fn gpu_matches_cpu_f64_with_broadcasting() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, (sa, sb)) in cases().into_iter().enumerate() {
            let (a32, a64) = oracle_pair(&sa, 10 + k as u64);
            let (mut b32, mut b64) = oracle_pair(&sb, 1000 + k as u64);
            // Keep divisors away from 0 so Div compares arithmetic, not overflow.
            for (x, y) in b32.iter_mut().zip(b64.iter_mut()) {
                if x.abs() < 0.1 {
                    *x += 0.2;
                    *y = f64::from(*x);
                }
            }
            // Ties for Eq/Ge/Le: every third output element's b is a copy of its a (a
            // broadcast b element may be overwritten by a later copy, so not every third
            // output ties). Small a values are not copied, to keep the divisors as above.
            let out = broadcast_shape("t", &sa, &sb).unwrap();
            let (ia, ib) = (naive_indices(&sa, &out), naive_indices(&sb, &out));
            for o in (0..ia.len()).step_by(3) {
                if a32[ia[o]].abs() >= 0.1 {
                    b32[ib[o]] = a32[ia[o]];
                    b64[ib[o]] = a64[ia[o]];
                }
            }
            let ties = (0..ia.len()).filter(|&o| a64[ia[o]] == b64[ib[o]]).count();
            assert!(
                ties > 0 || a64.iter().all(|x| x.abs() < 0.1),
                "no ties in {sa:?} {sb:?}"
            );
            let (ag, bg) = (
                Tensor::from_vec(a32, &sa, &gpu).unwrap(),
                Tensor::from_vec(b32, &sb, &gpu).unwrap(),
            );
            let (ac, bc) = (
                Tensor::from_vec(a64, &sa, &Device::Cpu).unwrap(),
                Tensor::from_vec(b64, &sb, &Device::Cpu).unwrap(),
            );
            for op in ALL_BINARY {
                let yg = ag.binary(&bg, op).unwrap();
                let yc = ac.binary(&bc, op).unwrap();
                assert_eq!(yg.shape(), yc.shape());
                assert_close(
                    &yg.to_vec::<f64>().unwrap(),
                    &yc.to_vec::<f64>().unwrap(),
                    1e-5,
                    1e-6,
                    &format!("{op:?} {sa:?} {sb:?}"),
                );
            }
            let tie = ag.eq_mask(&ag).unwrap().to_vec::<f32>().unwrap();
            assert!(tie.iter().all(|&t| t == 1.0), "x == x must hold everywhere");
        }
    }

    /// The comparisons and Max/Min on inputs full of exact ties, against their f64
    /// definitions, on the CPU in f32 and f64 and on the GPU, across the broadcast
    /// patterns of both backends (same shape, rows, columns, scalars, general). Values
    /// on a grid of quarters (−0 included) tie often by chance, and b is overwritten
    /// with a's operand at every second output element (where b broadcasts, later copies
    /// win, so fewer outputs tie). The results are compared exactly: inputs are
    /// exact in f32 and widening to f64 keeps their order, so a 0/1 mask, or the operand
    /// that Max/Min returns, has one right answer on every device.
    #[test]
    fn comparisons_and_extrema_with_ties_match_their_definitions() {
        use BinaryOp::{Eq, Ge, Gt, Le, Lt, Max, Min};
        let naive = |op: BinaryOp, x: f64, y: f64| -> f64 {
            let mask = |c: bool| if c { 1.0 } else { 0.0 };
            match op {
                Gt => mask(x > y),
                Ge => mask(x >= y),
                Lt => mask(x < y),
                Le => mask(x <= y),
                Eq => mask(x == y),
                Max => {
                    if x > y {
                        x
                    } else {
                        y
                    }
                }
                Min => {
                    if x < y {
                        x
                    } else {
                        y
                    }
                }
                _ => unreachable!(),
            }
        };
        let shapes: [(&[usize], &[usize]); 10] = [
            (&[257], &[257]),
            (&[5, 7], &[7]),
            (&[7], &[5, 7]),
            (&[5, 7], &[5, 1]),
            (&[5, 1], &[5, 7]),
            (&[5, 7], &[]),
            (&[], &[5, 7]),
            (&[1, 7], &[5, 1]),
            (&[2, 1, 7], &[3, 1]),
            (&[3, 1, 4], &[2, 1, 5, 1]),
        ];
        let gpu = gpu_or_skip();
        for (k, (sa, sb)) in shapes.into_iter().enumerate() {
            let grid = |shape: &[usize], seed: u64| -> Vec<f32> {
                let x = oracle_pair(shape, seed).0;
                x.iter().map(|v| (v * 4.0).round() / 4.0).collect()
            };
            let (a, mut b) = (grid(sa, 20 + k as u64), grid(sb, 40 + k as u64));
            let out = broadcast_shape("t", sa, sb).unwrap();
            let (ia, ib) = (naive_indices(sa, &out), naive_indices(sb, &out));
            for o in (0..ia.len()).step_by(2) {
                b[ib[o]] = a[ia[o]];
            }
            let (a64, b64): (Vec<f64>, Vec<f64>) = (
                a.iter().map(|&v| f64::from(v)).collect(),
                b.iter().map(|&v| f64::from(v)).collect(),
            );
            let ties = (0..ia.len()).filter(|&o| a[ia[o]] == b[ib[o]]).count();
            // A broadcast b ties with fewer outputs (its copies overwrite each other),
            // but every case has a few.
            assert!(ties >= 3, "{sa:?} {sb:?}: only {ties} ties");
            let mut pairs = vec![
                (
                    "cpu f32",
                    Tensor::from_vec(a.clone(), sa, &Device::Cpu).unwrap(),
                    Tensor::from_vec(b.clone(), sb, &Device::Cpu).unwrap(),
                ),
                (
                    "cpu f64",
                    Tensor::from_vec(a64.clone(), sa, &Device::Cpu).unwrap(),
                    Tensor::from_vec(b64.clone(), sb, &Device::Cpu).unwrap(),
                ),
            ];
            if let Some(g) = &gpu {
                pairs.push((
                    "gpu",
                    Tensor::from_vec(a.clone(), sa, g).unwrap(),
                    Tensor::from_vec(b.clone(), sb, g).unwrap(),
                ));
            }
            for op in [Gt, Ge, Lt, Le, Eq, Max, Min] {
                let want: Vec<f64> = (0..ia.len())
                    .map(|o| naive(op, a64[ia[o]], b64[ib[o]]))
                    .collect();
                for (dev, ta, tb) in &pairs {
                    let y = ta.binary(tb, op).unwrap();
                    assert_eq!(y.shape(), out.as_slice(), "{dev} {op:?} {sa:?} {sb:?}");
                    let got = y.to_vec::<f64>().unwrap();
                    if let Some(o) = (0..want.len()).find(|&o| got[o] != want[o]) {
                        panic!(
                            "{dev} {op:?} {sa:?} {sb:?}: output {o} is {}, want {} (a {}, b {})",
                            got[o], want[o], a64[ia[o]], b64[ib[o]]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn device_scalar_scales_a_vector_without_readback() {
        if gpu_or_skip().is_none() {
            return;
        }
        // A context of its own: the shared one counts other tests' dispatches too.
        let gpu = Device::gpu().unwrap();
        let ctx = gpu.gpu_context().unwrap().clone();
        let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, 4.0, 5.0], &[5], &gpu).unwrap();
        let s = Tensor::scalar(0.5, &gpu).unwrap();
        let before = ctx.dispatch_count();
        let y = x.mul(&s).unwrap();
        assert_eq!(ctx.dispatch_count(), before + 1);
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.5, -1.0, 1.5, 2.0, 2.5]);
    }

    #[test]
    fn mismatches_are_errors() {
        let cpu = Device::Cpu;
        let a = Tensor::zeros(&[2, 3], &cpu).unwrap();
        let b = Tensor::zeros(&[4], &cpu).unwrap();
        assert!(matches!(
            a.add(&b),
            Err(Error::ShapeMismatch { op: "add", .. })
        ));
        let c = a.to_dtype(crate::DType::F64).unwrap();
        assert!(matches!(
            a.mul(&c),
            Err(Error::DTypeMismatch { op: "mul", .. })
        ));
        if let Some(gpu) = gpu_or_skip() {
            let g = Tensor::zeros(&[2, 3], &gpu).unwrap();
            assert!(matches!(
                a.sub(&g),
                Err(Error::DeviceMismatch { op: "sub", .. })
            ));
        }
    }
}
