//! Elementwise binary ops with NumPy broadcasting: `binary_cpu` in
//! `backend/cpu/binary.rs` on the CPU, `shaders/binary.wgsl` (planned in
//! `backend/gpu/kernels/binary.rs`) on the GPU. A 0-d tensor on the device is a valid operand, so a
//! scalar computed on the GPU (a dot product, a loss) scales a vector with no readback.
pub use crate::backend::{ALL_BINARY, BinaryOp};
use crate::error::{Error, Result};
use crate::tensor::tape::{Op, record};
use crate::tensor::{Tensor, same_place};

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
    crate::tensor::checked_numel(op, &out)?;
    Ok(out)
}

pub(crate) fn binary_raw(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = op_name(op);
    same_place(name, a, b)?;
    let out = broadcast_shape(name, a.shape(), b.shape())?;
    let storage = a
        .storage
        .binary(name, op, &b.storage, a.shape(), b.shape(), &out)?;
    Ok(Tensor::from_storage(storage, &out))
}

/// `x` broadcast to `shape` (which must be a broadcast of x's shape).
pub(crate) fn broadcast_raw(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = broadcast_shape("broadcast_to", x.shape(), shape)?;
    if out != shape {
        return Err(Error::ShapeMismatch {
            op: "broadcast_to",
            lhs: x.shape().to_vec(),
            rhs: shape.to_vec(),
        });
    }
    let storage = x.storage.broadcast_to(x.shape(), shape)?;
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
    /// Each element clamped to [lo, hi], as `minimum(maximum(x, lo), hi)` (an infinite
    /// bound is skipped): the derivative is 1 strictly inside the box and 0 outside it.
    /// `lo > hi` or a NaN bound is an `InvalidArgument` error.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(crate::error::invalid(
                "clamp",
                format!("[{lo}, {hi}] is not an interval: need lo ≤ hi, neither NaN"),
            ));
        }
        let mut out = self.clone();
        if lo.is_finite() {
            out = out.maximum(&self.full_like(lo)?)?;
        }
        if hi.is_finite() {
            out = out.minimum(&self.full_like(hi)?)?;
        }
        Ok(out)
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
    use crate::backend::cpu::binary::{binary_cpu, broadcast_cpu};
    use crate::tensor::numel;
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
        let shapes: [(&[usize], &[usize]); 24] = [
            (&[4, 3], &[3]),
            (&[3], &[4, 3]),
            (&[4, 3], &[4, 1]),
            (&[4, 1], &[4, 3]),
            (&[2, 4, 3], &[1, 3]),
            (&[2, 4, 3], &[2, 1, 1]),
            (&[2, 4, 3], &[]),
            (&[2, 1, 3], &[4, 1]),
            (&[0, 3], &[3]),
            // Empty outputs, each fast-path pattern on either side: the guards that
            // send them to the general loop are what keeps `b[..p]` in bounds.
            (&[2, 0], &[0]),
            (&[0], &[2, 0]),
            (&[3], &[0, 3]),
            (&[0, 3], &[0, 1]),
            (&[0, 1], &[0, 3]),
            (&[2, 0], &[2, 1]),
            // A row broadcast inside each outer block (a per-task bias), either side,
            // with one or several broadcast dims, and empty variants.
            (&[3, 4, 5], &[3, 1, 5]),
            (&[3, 1, 5], &[3, 4, 5]),
            (&[2, 3, 4, 5], &[2, 1, 1, 5]),
            (&[2, 3, 4, 5], &[2, 1, 4, 5]),
            (&[3, 0, 5], &[3, 1, 5]),
            (&[3, 4, 0], &[3, 1, 0]),
            // One element against anything, either side.
            (&[3, 4, 5], &[1]),
            (&[1, 1], &[7]),
            (&[0, 2], &[1]),
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
        // The GPU fused (generated kernels, backend/gpu/fusion.rs) and unfused
        // (shaders/binary.wgsl), each a context of its own.
        let gpus: Vec<(&str, Device)> = match (
            crate::testing::fresh_gpu_or_skip(),
            crate::testing::fresh_gpu_or_skip(),
        ) {
            (Some(fused), Some(unfused)) => {
                fused.gpu_context().unwrap().set_fusion(true);
                unfused.gpu_context().unwrap().set_fusion(false);
                vec![("gpu fused", fused), ("gpu unfused", unfused)]
            }
            _ => Vec::new(),
        };
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
            for (label, g) in &gpus {
                pairs.push((
                    label,
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
        for fused in [false, true] {
            ctx.set_fusion(fused);
            let before = ctx.dispatch_count();
            let y = x.mul(&s).unwrap();
            // Fused, the product is deferred until it is read: still one dispatch.
            assert_eq!(ctx.dispatch_count(), before + u64::from(!fused));
            assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.5, -1.0, 1.5, 2.0, 2.5]);
            assert_eq!(ctx.dispatch_count(), before + 1, "fused: {fused}");
        }
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
