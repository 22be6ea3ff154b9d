//! Indexing and layout: `one_hot`, `gather`, `transpose` (kernels in
//! `shaders/index.wgsl`) and `concat`, `slice`, `split` (buffer-to-buffer copies in the
//! command stream on the GPU, no kernel and no host round trip). The CPU code is in
//! `backend/cpu/index.rs`, the GPU plans in `backend/gpu/kernels/index.rs`.
//!
//! Every op here moves data without arithmetic, so GPU results equal the CPU reference
//! exactly.
//!
//! Labels are float tensors holding class indices. An invalid label (negative, not an
//! integer, not below `classes`, NaN or infinite) is an [`Error::InvalidArgument`] on the
//! CPU. On the GPU, checking would need a readback, so an invalid label instead turns
//! its output row (`one_hot`) or element (`gather`) into NaN, which shows up in any
//! loss computed from it.

use crate::error::{Error, Result, invalid};
use crate::tensor::tape::{Op, record};
use crate::tensor::{Storage, Tensor, same_place};

fn check_labels(op: &'static str, labels: &Tensor) -> Result<usize> {
    match labels.shape() {
        [n] => Ok(*n),
        s => Err(invalid(
            op,
            format!("labels must be a rank-1 tensor [n], got shape {s:?}; reshape it"),
        )),
    }
}

pub(crate) fn one_hot_raw(labels: &Tensor, classes: usize) -> Result<Tensor> {
    let n = check_labels("one_hot", labels)?;
    if classes == 0 {
        return Err(invalid("one_hot", "classes must be at least 1"));
    }
    let total = n.checked_mul(classes).ok_or_else(|| {
        invalid(
            "one_hot",
            format!("{n} × {classes} elements overflow usize"),
        )
    })?;
    let storage = labels.storage.one_hot(n, classes, total)?;
    Ok(Tensor::from_storage(storage, &[n, classes]))
}

pub(crate) fn gather_raw(x: &Tensor, labels: &Tensor) -> Result<Tensor> {
    same_place("gather", x, labels)?;
    let n = check_labels("gather", labels)?;
    let classes = match x.shape() {
        [rows, c] if *rows == n => *c,
        _ => {
            return Err(Error::ShapeMismatch {
                op: "gather",
                lhs: x.shape().to_vec(),
                rhs: labels.shape().to_vec(),
            });
        }
    };
    if n > 0 && classes == 0 {
        return Err(invalid(
            "gather",
            "x has 0 columns, so no label can be valid",
        ));
    }
    let storage = x.storage.gather(&labels.storage, n, classes)?;
    Ok(Tensor::from_storage(storage, &[n]))
}

pub(crate) fn transpose_raw(x: &Tensor) -> Result<Tensor> {
    let (batch, rows, cols, out) = match *x.shape() {
        [m, n] => (1, m, n, vec![n, m]),
        [b, m, n] => (b, m, n, vec![b, n, m]),
        ref s => {
            return Err(invalid(
                "transpose",
                format!(
                    "expects rank 2 [m, n] or rank 3 [batch, m, n] (the last two dims swap), got shape {s:?}"
                ),
            ));
        }
    };
    let storage = x.storage.transpose(batch, rows, cols)?;
    Ok(Tensor::from_storage(storage, &out))
}

pub(crate) fn concat_raw(parts: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return Err(invalid(
            "concat",
            "needs at least one tensor; there is nothing to concatenate",
        ));
    };
    for p in &parts[1..] {
        same_place("concat", first, p)?;
    }
    let total: usize = parts.iter().map(|p| p.numel()).sum();
    let storage = Storage::concat(parts.iter().map(|p| &*p.storage), total)?;
    Ok(Tensor::from_storage(storage, &[total]))
}

pub(crate) fn slice_raw(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let n = x.numel();
    let end = start.checked_add(len).filter(|&e| e <= n).ok_or_else(|| {
        invalid(
            "slice",
            format!(
                "elements [{start}, {start} + {len}) are out of range for a tensor of {n} elements (shape {:?})",
                x.shape()
            ),
        )
    })?;
    let storage = x.storage.slice(start, end)?;
    Ok(Tensor::from_storage(storage, &[len]))
}

pub(crate) fn split_raw(x: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let sum = sizes
        .iter()
        .try_fold(0usize, |acc, &s| acc.checked_add(s))
        .filter(|&s| s == x.numel());
    if sum.is_none() {
        return Err(invalid(
            "split",
            format!(
                "sizes {sizes:?} must sum to the tensor's {} elements (shape {:?})",
                x.numel(),
                x.shape()
            ),
        ));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let piece = slice_raw(x, start, len);
            start += len;
            piece
        })
        .collect()
}

impl Tensor {
    /// Rows of one-hot vectors: `[n, classes]` with a 1 at `(i, labels[i])`. `labels` is a
    /// rank-1 float tensor of class indices; the result has its device and dtype.
    ///
    /// An invalid label (negative, not an integer, ≥ `classes`) is an
    /// [`Error::InvalidArgument`] on the CPU; on the GPU its row is NaN instead, since a
    /// check would need a readback.
    pub fn one_hot(labels: &Tensor, classes: usize) -> Result<Tensor> {
        one_hot_raw(labels, classes)
    }

    /// `y[i] = self[i, labels[i]]` for `self` of shape `[n, classes]` and rank-1 `labels`
    /// of length `n` (class indices stored as floats). Invalid labels: as
    /// [`Tensor::one_hot`] (an error on the CPU, NaN on the GPU).
    pub fn gather(&self, labels: &Tensor) -> Result<Tensor> {
        let out = gather_raw(self, labels)?;
        Ok(record(
            Op::Gather {
                labels: labels.detach(),
            },
            &[self],
            out,
        ))
    }

    /// Swaps the last two dimensions: `[m, n]` → `[n, m]`, `[batch, m, n]` → `[batch, n, m]`.
    pub fn transpose(&self) -> Result<Tensor> {
        let out = transpose_raw(self)?;
        Ok(record(Op::Transpose, &[self], out))
    }

    /// Flattens each part and concatenates them into one rank-1 tensor (for example a
    /// model's parameters as one vector). All parts must share device and dtype.
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor> {
        let out = concat_raw(parts)?;
        Ok(record(Op::Concat, parts, out))
    }

    /// Elements `[start, start + len)` of the flattened tensor, as a rank-1 tensor.
    pub fn slice(&self, start: usize, len: usize) -> Result<Tensor> {
        let out = slice_raw(self, start, len)?;
        Ok(record(Op::Slice { start }, &[self], out))
    }

    /// Consecutive rank-1 pieces of the flattened tensor with the given `sizes`, which
    /// must sum to [`Tensor::numel`]. The inverse of [`Tensor::concat`].
    pub fn split(&self, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let pieces = split_raw(self, sizes)?;
        let mut start = 0;
        Ok(pieces
            .into_iter()
            .map(|p| {
                let node = record(Op::Slice { start }, &[self], p);
                start += node.numel();
                node
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use crate::testing::{gpu_or_skip, oracle_pair};

    const SIZES: [usize; 4] = [1, 7, 31, 257];

    fn cpu64(data: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_vec(data.to_vec(), shape, &Device::Cpu).unwrap()
    }

    /// Seeded integer labels in [0, classes), as (f32 for the GPU, f64 for the CPU).
    fn labels(n: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
        let u = oracle_pair(&[n], seed).1;
        let l64: Vec<f64> = u
            .iter()
            .map(|v| {
                (((v + 1.0) / 2.0) * classes as f64)
                    .floor()
                    .min(classes as f64 - 1.0)
            })
            .collect();
        (l64.iter().map(|&v| v as f32).collect(), l64)
    }

    /// The GPU result read back exactly (f32 widened to f64, which is lossless).
    fn read(t: &Tensor) -> Vec<f64> {
        t.to_vec::<f64>().unwrap()
    }

    /// Exact equality that also treats NaN as equal to NaN, for the invalid-label rows.
    fn same_bits(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g == w || (g.is_nan() && w.is_nan()),
                "{what}: element {i}: got {g}, want {w}"
            );
        }
    }

    #[test]
    fn cpu_reference_values() {
        let l = cpu64(&[2.0, 0.0, 1.0], &[3]);
        let oh = Tensor::one_hot(&l, 3).unwrap();
        assert_eq!(oh.shape(), &[3, 3]);
        assert_eq!(read(&oh), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let x = cpu64(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]);
        let g = x.gather(&cpu64(&[1.0, 0.0, 1.0], &[3])).unwrap();
        assert_eq!(read(&g), vec![2.0, 3.0, 6.0]);
        let t = x.transpose().unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(read(&t), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let c = Tensor::concat(&[&x, &cpu64(&[7.0], &[])]).unwrap();
        assert_eq!(c.shape(), &[7]);
        assert_eq!(read(&c), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(read(&c.slice(2, 3).unwrap()), vec![3.0, 4.0, 5.0]);
        let parts = c.split(&[1, 0, 6]).unwrap();
        let got: Vec<Vec<f64>> = parts.iter().map(read).collect();
        assert_eq!(
            got,
            vec![vec![1.0], vec![], vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]
        );
    }

    #[test]
    fn gpu_one_hot_and_gather_match_cpu_exactly() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (k, &n) in SIZES.iter().enumerate() {
            for &classes in &[1usize, 3, 10, 257] {
                let seed = 10 * k as u64 + classes as u64;
                let (l32, l64) = labels(n, classes, seed);
                let lg = Tensor::from_vec(l32, &[n], &gpu).unwrap();
                let lc = cpu64(&l64, &[n]);
                let what = format!("n={n} classes={classes}");

                let og = Tensor::one_hot(&lg, classes).unwrap();
                let oc = Tensor::one_hot(&lc, classes).unwrap();
                assert_eq!(og.shape(), &[n, classes]);
                assert_eq!(read(&og), read(&oc), "one_hot {what}");

                let (x32, x64) = oracle_pair(&[n, classes], seed + 1);
                let xg = Tensor::from_vec(x32, &[n, classes], &gpu).unwrap();
                let gg = xg.gather(&lg).unwrap();
                let gc = cpu64(&x64, &[n, classes]).gather(&lc).unwrap();
                assert_eq!(gg.shape(), &[n]);
                assert_eq!(read(&gg), read(&gc), "gather {what}");
            }
        }
    }

    #[test]
    fn invalid_labels_are_errors_on_cpu_and_nan_rows_on_gpu() {
        let classes = 3;
        let bad = [-1.0, 3.0, 1.5, f64::NAN, f64::INFINITY, -0.5, 1e10];
        for &b in &bad {
            let l = cpu64(&[0.0, b, 2.0], &[3]);
            assert!(
                matches!(
                    Tensor::one_hot(&l, classes),
                    Err(Error::InvalidArgument { op: "one_hot", .. })
                ),
                "one_hot label {b}"
            );
            let x = cpu64(&[0.5; 9], &[3, 3]);
            assert!(
                matches!(
                    x.gather(&l),
                    Err(Error::InvalidArgument { op: "gather", .. })
                ),
                "gather label {b}"
            );
        }
        let Some(gpu) = gpu_or_skip() else { return };
        let n = bad.len() + 2;
        let mut l: Vec<f32> = vec![1.0];
        l.extend(bad.iter().map(|&b| b as f32));
        l.push(-0.0); // a valid class 0
        let lg = Tensor::from_vec(l.clone(), &[n], &gpu).unwrap();
        let oh = read(&Tensor::one_hot(&lg, classes).unwrap());
        let (x32, x64) = oracle_pair(&[n, classes], 5);
        let g = read(
            &Tensor::from_vec(x32, &[n, classes], &gpu)
                .unwrap()
                .gather(&lg)
                .unwrap(),
        );
        let mut want_oh = vec![f64::NAN; n * classes];
        let mut want_g = vec![f64::NAN; n];
        for (i, class) in [(0usize, 1usize), (n - 1, 0)] {
            want_oh[i * classes..(i + 1) * classes].copy_from_slice(&[0.0; 3]);
            want_oh[i * classes + class] = 1.0;
            want_g[i] = x64[i * classes + class];
        }
        same_bits(&oh, &want_oh, "one_hot with invalid labels");
        same_bits(&g, &want_g, "gather with invalid labels");
    }

    #[test]
    fn gpu_transpose_matches_cpu_exactly() {
        let Some(gpu) = gpu_or_skip() else { return };
        // Past one 32 × 32 tile in both dims, several tiles per batch plane, and more
        // tiles than one grid dimension holds (65,535), so the grid spills into y.
        let shapes: [&[usize]; 15] = [
            &[2, 40, 70],
            &[3, 33, 65],
            &[70_000, 2, 1],
            &[1, 1],
            &[7, 3],
            &[3, 7],
            &[1, 7],
            &[7, 1],
            &[31, 257],
            &[257, 31],
            &[4, 8],
            &[3, 5, 7],
            &[2, 1, 5],
            &[5, 3, 1],
            &[0, 4],
        ];
        for (k, shape) in shapes.iter().enumerate() {
            let (x32, x64) = oracle_pair(shape, 40 + k as u64);
            let tg = Tensor::from_vec(x32, shape, &gpu)
                .unwrap()
                .transpose()
                .unwrap();
            let tc = cpu64(&x64, shape).transpose().unwrap();
            assert_eq!(tg.shape(), tc.shape());
            assert_eq!(read(&tg), read(&tc), "transpose {shape:?}");
            // Transposing twice is the identity.
            assert_eq!(read(&tg.transpose().unwrap()), x64, "transpose² {shape:?}");
        }
    }

    #[test]
    fn gpu_concat_slice_split_match_cpu_exactly() {
        let Some(gpu) = gpu_or_skip() else { return };
        let shapes: [&[usize]; 4] = [&[1], &[7], &[31], &[3, 5]];
        let pairs: Vec<_> = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| oracle_pair(s, 70 + k as u64))
            .collect();
        let gpu_parts: Vec<Tensor> = pairs
            .iter()
            .zip(shapes)
            .map(|(p, s)| Tensor::from_vec(p.0.clone(), s, &gpu).unwrap())
            .collect();
        let cpu_parts: Vec<Tensor> = pairs
            .iter()
            .zip(shapes)
            .map(|(p, s)| cpu64(&p.1, s))
            .collect();
        let cg = Tensor::concat(&gpu_parts.iter().collect::<Vec<_>>()).unwrap();
        let cc = Tensor::concat(&cpu_parts.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(cg.shape(), &[54]);
        assert_eq!(read(&cg), read(&cc), "concat");
        let one = Tensor::concat(&[&gpu_parts[2]]).unwrap();
        assert_eq!(read(&one), pairs[2].1, "concat of one part");

        for &(start, len) in &[
            (3usize, 5usize),
            (0, 54),
            (1, 1),
            (53, 1),
            (7, 0),
            (5, 31),
            (54, 0),
        ] {
            let sg = cg.slice(start, len).unwrap();
            assert_eq!(sg.shape(), &[len]);
            assert_eq!(
                read(&sg),
                read(&cc.slice(start, len).unwrap()),
                "slice {start} {len}"
            );
        }
        let sizes = [1, 7, 31, 15];
        let back = cg.split(&sizes).unwrap();
        for ((piece, pair), &size) in back.iter().zip(&pairs).zip(&sizes) {
            assert_eq!(piece.shape(), &[size]);
            assert_eq!(read(piece), pair.1, "split piece of {size}");
        }
        let uneven = cg.split(&[3, 0, 50, 1]).unwrap();
        let want = cc.split(&[3, 0, 50, 1]).unwrap();
        for (g, c) in uneven.iter().zip(&want) {
            assert_eq!(read(g), read(c), "uneven split");
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let cpu = Device::Cpu;
        let x = Tensor::zeros(&[3, 2], &cpu).unwrap();
        let l = Tensor::zeros(&[3], &cpu).unwrap();
        let bad_arg = |r: Result<Tensor>, op: &str| {
            assert!(
                matches!(&r, Err(Error::InvalidArgument { op: o, .. }) if *o == op),
                "{op}: {r:?}"
            )
        };
        bad_arg(Tensor::one_hot(&x, 2), "one_hot");
        bad_arg(Tensor::one_hot(&l, 0), "one_hot");
        bad_arg(x.gather(&x), "gather");
        bad_arg(Tensor::zeros(&[3, 0], &cpu).unwrap().gather(&l), "gather");
        assert!(matches!(
            x.gather(&Tensor::zeros(&[2], &cpu).unwrap()),
            Err(Error::ShapeMismatch { op: "gather", .. })
        ));
        assert!(matches!(
            x.gather(&l.to_dtype(crate::DType::F64).unwrap()),
            Err(Error::DTypeMismatch { op: "gather", .. })
        ));
        bad_arg(l.transpose(), "transpose");
        bad_arg(
            Tensor::zeros(&[1, 2, 3, 4], &cpu).unwrap().transpose(),
            "transpose",
        );
        bad_arg(Tensor::concat(&[]), "concat");
        assert!(matches!(
            Tensor::concat(&[&x, &l.to_dtype(crate::DType::F64).unwrap()]),
            Err(Error::DTypeMismatch { op: "concat", .. })
        ));
        bad_arg(x.slice(5, 2), "slice");
        bad_arg(x.slice(7, 0), "slice");
        bad_arg(x.slice(usize::MAX, 2), "slice");
        assert!(matches!(
            x.split(&[2, 3]),
            Err(Error::InvalidArgument { op: "split", .. })
        ));
        assert!(matches!(
            x.split(&[usize::MAX, 7]),
            Err(Error::InvalidArgument { op: "split", .. })
        ));
        if let Some(gpu) = gpu_or_skip() {
            let g = Tensor::zeros(&[3], &gpu).unwrap();
            assert!(matches!(
                Tensor::concat(&[&g, &l]),
                Err(Error::DeviceMismatch { op: "concat", .. })
            ));
            assert!(matches!(
                x.gather(&g),
                Err(Error::DeviceMismatch { op: "gather", .. })
            ));
            bad_arg(g.slice(1, 3), "slice");
            bad_arg(Tensor::one_hot(&g, 0), "one_hot");
        }
    }
}
