//! Datasets: the built-in UCI optical digits, seeded synthetic generators, and `.npy` I/O.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::device::Device;
use crate::error::{Error, Result, invalid};
use crate::tensor::{DType, Tensor};

/// A dense row-major f64 matrix on the host (features), before it becomes a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows × columns values, row-major.
    pub data: Vec<f64>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl Matrix {
    /// The matrix as a tensor [rows, cols] of `dtype` on `device`
    /// ([`Tensor::from_f64`]).
    pub fn to_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        Tensor::from_f64(&self.data, &[self.rows, self.cols], device, dtype)
    }

    /// The rows at `idx`, in that order.
    pub fn select_rows(&self, idx: &[usize]) -> Matrix {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(&self.data[i * self.cols..(i + 1) * self.cols]);
        }
        Matrix {
            data,
            rows: idx.len(),
            cols: self.cols,
        }
    }
}

const DIGITS_CSV: &str = include_str!("../../data/digits.csv");

/// The UCI optical digits as bundled by scikit-learn: 1,797 images of 8×8 pixels
/// scaled to [0, 1] (64 features) and their labels 0..9. CC BY 4.0; see `data/README.md`.
pub fn digits() -> (Matrix, Vec<usize>) {
    let mut data = Vec::with_capacity(1797 * 64);
    let mut labels = Vec::with_capacity(1797);
    for line in DIGITS_CSV
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut fields = line
            .split(',')
            .map(|f| f.parse::<u32>().expect("data/digits.csv holds integers"));
        for _ in 0..64 {
            data.push(f64::from(fields.next().expect("64 pixels per row")) / 16.0);
        }
        labels.push(fields.next().expect("a label per row") as usize);
    }
    let rows = labels.len();
    (
        Matrix {
            data,
            rows,
            cols: 64,
        },
        labels,
    )
}

/// A labelled classification split.
#[derive(Debug, Clone)]
pub struct Split {
    /// Features.
    pub x: Matrix,
    /// Labels as observed (possibly corrupted).
    pub labels: Vec<usize>,
}

/// The data-hyper-cleaning benchmark set-up (Franceschi et al. 2017): a seeded shuffle
/// into `n_train` / `n_val` / rest (test), then a fraction `corruption` of the training
/// labels replaced by a different, uniformly random class.
#[derive(Debug, Clone)]
pub struct CleaningData {
    /// Training split with corrupted labels.
    pub train: Split,
    /// Which training labels were corrupted.
    pub corrupted: Vec<bool>,
    /// Validation split (clean).
    pub val: Split,
    /// Test split (clean).
    pub test: Split,
    /// Number of classes.
    pub classes: usize,
}

/// Splits and corrupts a dataset as [`CleaningData`] describes.
pub fn cleaning_split(
    x: &Matrix,
    labels: &[usize],
    classes: usize,
    n_train: usize,
    n_val: usize,
    corruption: f64,
    seed: u64,
) -> Result<CleaningData> {
    if n_train + n_val >= x.rows || n_train == 0 || n_val == 0 {
        return Err(invalid(
            "cleaning_split",
            format!(
                "need 0 < n_train, 0 < n_val and n_train + n_val < {} rows, got {n_train} + {n_val}",
                x.rows
            ),
        ));
    }
    if !(0.0..=1.0).contains(&corruption) || classes < 2 {
        return Err(invalid(
            "cleaning_split",
            format!("corruption must be in [0, 1] and classes ≥ 2, got {corruption}, {classes}"),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..x.rows).collect();
    idx.shuffle(&mut rng);
    let (tr, rest) = idx.split_at(n_train);
    let (va, te) = rest.split_at(n_val);
    let mut train_labels: Vec<usize> = tr.iter().map(|&i| labels[i]).collect();
    let n_bad = (corruption * n_train as f64).round() as usize;
    let mut order: Vec<usize> = (0..n_train).collect();
    order.shuffle(&mut rng);
    let mut corrupted = vec![false; n_train];
    for &i in &order[..n_bad] {
        // A different class, uniformly among the other classes − 1 choices.
        let shift = rng.random_range(1..classes);
        train_labels[i] = (train_labels[i] + shift) % classes;
        corrupted[i] = true;
    }
    Ok(CleaningData {
        train: Split {
            x: x.select_rows(tr),
            labels: train_labels,
        },
        corrupted,
        val: Split {
            x: x.select_rows(va),
            labels: va.iter().map(|&i| labels[i]).collect(),
        },
        test: Split {
            x: x.select_rows(te),
            labels: te.iter().map(|&i| labels[i]).collect(),
        },
        classes,
    })
}

/// Seeded Gaussian-cluster classification data: `classes` means drawn N(0, sep²·I) in
/// `d` dimensions, samples = mean + N(0, I), balanced classes.
pub fn synthetic_classification(
    n: usize,
    d: usize,
    classes: usize,
    sep: f64,
    seed: u64,
) -> (Matrix, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means: Vec<f64> = (0..classes * d)
        .map(|_| sep * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let mut data = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        labels.push(c);
        for j in 0..d {
            data.push(means[c * d + j] + rng.sample::<f64, _>(StandardNormal));
        }
    }
    (
        Matrix {
            data,
            rows: n,
            cols: d,
        },
        labels,
    )
}

/// Seeded linear-regression data: X ~ N(0, 1), w_true ~ N(0, 1/d), y = X w_true + noise·N(0, 1).
/// The same w_true generates every call with the same seed, so train and validation sets
/// from `seed` and `seed + 1` share it when drawn with [`synthetic_regression_pair`].
pub fn synthetic_regression_pair(
    n: usize,
    m: usize,
    d: usize,
    noise: f64,
    seed: u64,
) -> ((Matrix, Vec<f64>), (Matrix, Vec<f64>)) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (d.max(1) as f64).sqrt();
    let w_true: Vec<f64> = (0..d)
        .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let mut draw = |rows: usize| {
        let data: Vec<f64> = (0..rows * d)
            .map(|_| rng.sample::<f64, _>(StandardNormal))
            .collect();
        let y = (0..rows)
            .map(|i| {
                let clean: f64 = (0..d).map(|j| data[i * d + j] * w_true[j]).sum();
                clean + noise * rng.sample::<f64, _>(StandardNormal)
            })
            .collect();
        (
            Matrix {
                data,
                rows,
                cols: d,
            },
            y,
        )
    };
    let train = draw(n);
    let val = draw(m);
    (train, val)
}

/// An array read from a `.npy` file: values as f64 and the shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Values in C (row-major) order.
    pub data: Vec<f64>,
    /// The shape.
    pub shape: Vec<usize>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    invalid("npy", format!("{}: {e}", path.display()))
}

/// The shape an `.npy` header declares and where its data starts, read before the file
/// reaches npyz: a crafted header whose shape's product overflows would otherwise wrap
/// (or panic inside the reader) instead of being an error.
fn npy_layout(bytes: &[u8]) -> std::result::Result<(Vec<u64>, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (it does not start with the \\x93NUMPY magic)".into());
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        2 | 3 => return Err("truncated inside its header".into()),
        v => {
            return Err(format!(
                ".npy format version {v} is not supported (1 to 3 are)"
            ));
        }
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated inside its header")?;
    let header = String::from_utf8_lossy(&bytes[start..end]);
    let at = header
        .find("'shape'")
        .or_else(|| header.find("\"shape\""))
        .ok_or("its header has no shape")?;
    let tuple = &header[at..];
    let (open, close) = match (tuple.find('('), tuple.find(')')) {
        (Some(o), Some(c)) if o < c => (o, c),
        _ => return Err("its header's shape is not a tuple".into()),
    };
    let dims = tuple[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| format!("its shape has `{d}`, not a non-negative integer"))
        })
        .collect::<std::result::Result<Vec<u64>, String>>()?;
    Ok((dims, end))
}

/// Reads a `.npy` file of f32 or f64 values in C order. The file must hold exactly
/// the values its shape declares: a shape whose element count overflows, or a file
/// shorter or longer than its shape, is an error that says so.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (dims, data_start) = npy_layout(&bytes).map_err(|e| io_err(path, e))?;
    // Extents after a zero still have to multiply without overflow: the reader's
    // strides are their running products.
    let strides_fit = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d.max(1)))
        .is_some();
    let count = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| strides_fit && n <= isize::MAX as u64 / 8)
        .ok_or_else(|| {
            io_err(
                path,
                format!("its shape {dims:?} has more elements than any array can hold"),
            )
        })?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| io_err(path, e))?;
    if npy.order() != npyz::Order::C {
        return Err(io_err(
            path,
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape: Vec<usize> = dims.iter().map(|&s| s as usize).collect();
    let descr = npy.dtype().descr().replace(['\'', '"'], "");
    let item: u64 = match descr.as_str() {
        "<f8" => 8,
        "<f4" => 4,
        other => {
            return Err(io_err(
                path,
                format!("dtype {other} is not supported; use float32 or float64 (little-endian)"),
            ));
        }
    };
    let (need, have) = (count * item, (bytes.len() - data_start) as u64);
    if have != need {
        return Err(io_err(
            path,
            format!(
                "{}: its shape {dims:?} of {descr} needs {need} bytes of data and the file holds {have}",
                if have < need {
                    "the file is truncated"
                } else {
                    "the file has data past its array"
                }
            ),
        ));
    }
    let data: Vec<f64> = if item == 8 {
        npy.into_vec::<f64>().map_err(|e| io_err(path, e))?
    } else {
        npy.into_vec::<f32>()
            .map_err(|e| io_err(path, e))?
            .into_iter()
            .map(f64::from)
            .collect()
    };
    Ok(NpyArray { data, shape })
}

/// f64 values with `shape` as the bytes of a `.npy` file (C order).
pub fn npy_bytes(data: &[f64], shape: &[usize]) -> Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let err = |e: std::io::Error| invalid("npy", e.to_string());
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let mut out = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut out)
        .begin_nd()
        .map_err(err)?;
    writer.extend(data.iter().copied()).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(out)
}

/// Writes f64 values with `shape` to a `.npy` file (C order).
pub fn write_npy(path: &Path, data: &[f64], shape: &[usize]) -> Result<()> {
    let bytes = npy_bytes(data, shape)?;
    std::fs::write(path, bytes).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load() {
        let (x, y) = digits();
        assert_eq!((x.rows, x.cols, y.len()), (1797, 64, 1797));
        assert!(x.data.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(*y.iter().max().unwrap(), 9);
    }

    #[test]
    fn cleaning_split_corrupts_exactly_the_flagged_labels() {
        let (x, y) = digits();
        let d = cleaning_split(&x, &y, 10, 500, 500, 0.5, 0).unwrap();
        assert_eq!(
            (d.train.x.rows, d.val.x.rows, d.test.x.rows),
            (500, 500, 797)
        );
        assert_eq!(d.corrupted.iter().filter(|&&c| c).count(), 250);
        // Rebuild the clean training labels from the same shuffle and check each flag.
        let again = cleaning_split(&x, &y, 10, 500, 500, 0.0, 0).unwrap();
        for i in 0..500 {
            assert_eq!(d.train.labels[i] != again.train.labels[i], d.corrupted[i]);
        }
        assert!(cleaning_split(&x, &y, 10, 1000, 1000, 0.5, 0).is_err());
    }

    #[test]
    fn npy_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("blo-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        write_npy(&p, &[1.0, 2.5, -3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 2.5, -3.0, 4.0, 5.0, 6.0]);
        assert!(read_npy(&dir.join("missing.npy")).is_err());
        std::fs::write(dir.join("junk.npy"), b"not an npy file").unwrap();
        assert!(read_npy(&dir.join("junk.npy")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// An `.npy` file: `header` (the dict text) padded as numpy pads it, then `data`.
    fn npy_bytes(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let prefix = if version == 1 { 10 } else { 12 };
        let mut h = header.to_string();
        while !(prefix + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend((h.len() as u16).to_le_bytes());
        } else {
            out.extend((h.len() as u32).to_le_bytes());
        }
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    /// The defects a hostile file used to trigger, each now a message naming the cause.
    #[test]
    fn crafted_npy_files_are_errors_that_name_the_cause() {
        let dir = std::env::temp_dir().join(format!("blo-npy-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npy");
        let read = |bytes: Vec<u8>| {
            std::fs::write(&p, bytes).unwrap();
            read_npy(&p).map_err(|e| e.to_string())
        };
        let dict = |descr: &str, shape: &str| {
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
        };
        // A shape whose product wraps to 0 (2^62 · 4 = 2^64), with no data.
        let e = read(npy_bytes(1, &dict("<f8", "(4, 4611686018427387904)"), &[])).unwrap_err();
        assert!(e.contains("more elements than any array"), "{e}");
        let e = read(npy_bytes(1, &dict("<f8", "(3, 2)"), &[0; 40])).unwrap_err();
        assert!(
            e.contains("truncated") && e.contains("48 bytes") && e.contains("40"),
            "{e}"
        );
        let e = read(npy_bytes(1, &dict("<f4", "(2,)"), &[0; 12])).unwrap_err();
        assert!(e.contains("past its array"), "{e}");
        let mut cut = npy_bytes(1, &dict("<f8", "(2,)"), &[0; 16]);
        cut.truncate(30);
        let e = read(cut).unwrap_err();
        assert!(e.contains("truncated inside its header"), "{e}");
        let e = read(npy_bytes(1, &dict("<f8", "(-3,)"), &[])).unwrap_err();
        assert!(e.contains("`-3`"), "{e}");
        let ok = read(npy_bytes(
            2,
            &dict("<f4", "(2, 1)"),
            &[0, 0, 128, 63, 0, 0, 0, 64],
        ))
        .unwrap();
        assert_eq!((ok.data, ok.shape), (vec![1.0, 2.0], vec![2, 1]));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Seeded random headers (shapes with huge and zero extents, dtypes, orders,
    /// versions) with exact, short or long data: every one reads as Ok with exactly its
    /// shape's values or as an error, never a panic, and nothing allocates more than the
    /// file's size.
    #[test]
    fn random_npy_headers_never_panic() {
        use rand::{Rng, SeedableRng};
        let dir = std::env::temp_dir().join(format!("blo-npy-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.npy");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let extents: [u64; 10] = [0, 1, 2, 3, 7, 1 << 31, 1 << 32, 1 << 62, u64::MAX, 5];
        let descrs = ["<f8", "<f4", ">f8", "<i8", "|u1", "<c16"];
        let (mut ok, mut err) = (0, 0);
        for _ in 0..500 {
            let rank = rng.random_range(0..4);
            let dims: Vec<u64> = (0..rank)
                .map(|_| {
                    if rng.random_bool(0.7) {
                        rng.random_range(0..6)
                    } else {
                        extents[rng.random_range(0..extents.len())]
                    }
                })
                .collect();
            let shape = match dims.len() {
                1 => format!("({},)", dims[0]),
                _ => format!(
                    "({})",
                    dims.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let descr = descrs[rng.random_range(0..descrs.len())];
            let fortran = if rng.random_bool(0.2) {
                "True"
            } else {
                "False"
            };
            let header =
                format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
            let count = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            let exact = count.filter(|&n| n <= 64).map_or(0, |n| 8 * n as usize);
            let len = match rng.random_range(0..3) {
                0 => exact,
                1 => exact.saturating_sub(rng.random_range(1..9)),
                _ => exact + rng.random_range(1..9),
            };
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let version = if rng.random_bool(0.5) { 1 } else { 2 };
            std::fs::write(&p, npy_bytes(version, &header, &data)).unwrap();
            match read_npy(&p) {
                Ok(a) => {
                    ok += 1;
                    let n: usize = a.shape.iter().product();
                    assert_eq!(a.data.len(), n, "{header}");
                    assert!(a.data.len() * 4 <= data.len(), "{header}");
                }
                Err(_) => err += 1,
            }
        }
        // Both outcomes occur, so the generator reaches valid and invalid files.
        assert!(ok > 20 && err > 100, "ok {ok}, err {err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
