//! Tensors: a shape plus storage on a device.
//!
//! Tensors are immutable values; cloning one is cheap (storage is shared). f32 tensors
//! live on either device; f64 tensors live on the CPU, where they serve as oracles.

use std::fmt;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::gpu::GpuBuffer;
use crate::device::Device;
pub use crate::dtype::{DType, Element};
use crate::error::{Error, Result, invalid};

pub(crate) mod scalar;
mod storage;
pub(crate) mod tape;

pub(crate) use storage::Storage;

/// An n-dimensional array of floats on a [`Device`].
#[derive(Clone)]
pub struct Tensor {
    pub(crate) shape: Arc<[usize]>,
    pub(crate) storage: Arc<Storage>,
    /// The op that produced this tensor, when it is on an autodiff graph.
    pub(crate) node: Option<Arc<tape::Node>>,
}

pub(crate) use crate::backend::{checked_numel, numel, try_host_vec};

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    if len != checked_numel(op, shape)? {
        return Err(Error::ShapeMismatch {
            op,
            lhs: vec![len],
            rhs: shape.to_vec(),
        });
    }
    Ok(())
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.into(),
            storage: Arc::new(storage),
            node: None,
        }
    }

    /// A tensor holding `data` (row-major) with `shape`, on `device`.
    /// f64 data is accepted on the CPU only.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize], device: &Device) -> Result<Tensor> {
        check_len("from_vec", data.len(), shape)?;
        let storage = Storage::from_host("from_vec", data, device)?;
        Ok(Tensor::from_storage(storage, shape))
    }

    /// A tensor of `dtype` on `device` holding `data` (row-major) with `shape`, from f64
    /// host values (rounded to nearest for f32). The constructor for code that runs in
    /// either dtype, such as a [`Problem`](crate::bilevel::Problem) built in f64 for
    /// gradient checks and in f32 for a GPU; f64 works on the CPU only (a GPU tensor
    /// must be f32: `InvalidArgument`). A 0-d tensor is `from_f64(&[v], &[], …)`.
    ///
    /// ```
    /// use blo::{DType, Device, Tensor};
    /// # fn main() -> blo::Result<()> {
    /// let t = Tensor::from_f64(&[1.0, 2.5], &[2], &Device::cpu(), DType::F32)?;
    /// assert_eq!((t.dtype(), t.to_vec::<f32>()?), (DType::F32, vec![1.0, 2.5]));
    /// # Ok(()) }
    /// ```
    pub fn from_f64(
        data: &[f64],
        shape: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        check_len("from_f64", data.len(), shape)?;
        let storage = match dtype {
            DType::F64 => Storage::from_host("from_f64", data.to_vec(), device)?,
            DType::F32 => Storage::from_host(
                "from_f64",
                data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                device,
            )?,
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    /// A tensor of `dtype` on `device` filled with `value` (rounded for f32): [`Tensor::full`]
    /// for any dtype. f64 works on the CPU only (`InvalidArgument` on a GPU).
    pub fn full_dtype(
        shape: &[usize],
        value: f64,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        match dtype {
            DType::F32 => Tensor::full(shape, value as f32, device),
            DType::F64 => {
                let n = checked_numel("full_dtype", shape)?;
                let mut v = try_host_vec("full_dtype", n)?;
                v.resize(n, value);
                let storage = Storage::from_host("full_dtype", v, device)?;
                Ok(Tensor::from_storage(storage, shape))
            }
        }
    }

    /// Zeros of `dtype` on `device`: [`Tensor::zeros`] for any dtype.
    pub fn zeros_dtype(shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        Tensor::full_dtype(shape, 0.0, device, dtype)
    }

    /// A 0-d f32 tensor holding `value` on `device` (any dtype:
    /// [`from_f64`](Tensor::from_f64)`(&[value], &[], device, dtype)`).
    pub fn scalar(value: f32, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(vec![value], &[], device)
    }

    /// An f32 tensor filled with `value`. On the GPU this is a fill kernel, not an upload.
    /// Any dtype: [`Tensor::full_dtype`].
    pub fn full(shape: &[usize], value: f32, device: &Device) -> Result<Tensor> {
        let storage = Storage::full_f32(checked_numel("full", shape)?, value, device)?;
        Ok(Tensor::from_storage(storage, shape))
    }

    /// An f32 tensor of zeros (any dtype: [`Tensor::zeros_dtype`]).
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, device)
    }

    /// An f32 tensor of ones (any dtype: [`Tensor::full_dtype`] with 1).
    pub fn ones(shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, device)
    }

    /// A tensor of the same shape, dtype and device as `self`, filled with `value`.
    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        match self.dtype() {
            DType::F64 => {
                let mut v = try_host_vec("full_like", self.numel())?;
                v.resize(self.numel(), value);
                Tensor::from_vec(v, &self.shape, &Device::Cpu)
            }
            DType::F32 => Tensor::full(&self.shape, value as f32, &self.device()),
        }
    }

    /// Zeros of the same shape, dtype and device as `self`.
    pub fn zeros_like(&self) -> Result<Tensor> {
        self.full_like(0.0)
    }

    /// Ones of the same shape, dtype and device as `self`.
    pub fn ones_like(&self) -> Result<Tensor> {
        self.full_like(1.0)
    }

    /// f32 values drawn uniformly from `[low, high)` by a ChaCha8 generator seeded with
    /// `seed` (the same values on every platform and device).
    pub fn rand_uniform(
        shape: &[usize],
        low: f32,
        high: f32,
        seed: u64,
        device: &Device,
    ) -> Result<Tensor> {
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(invalid(
                "rand_uniform",
                format!("need finite low < high, got [{low}, {high})"),
            ));
        }
        let n = checked_numel("rand_uniform", shape)?;
        let mut data: Vec<f32> = try_host_vec("rand_uniform", n)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        data.extend((0..n).map(|_| low + (high - low) * rng.random::<f32>()));
        Tensor::from_vec(data, shape, device)
    }

    /// f32 values drawn from a normal distribution with `mean` and `std`, seeded.
    pub fn rand_normal(
        shape: &[usize],
        mean: f32,
        std: f32,
        seed: u64,
        device: &Device,
    ) -> Result<Tensor> {
        if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
            return Err(invalid(
                "rand_normal",
                format!("need finite mean and std >= 0, got mean {mean}, std {std}"),
            ));
        }
        let n = checked_numel("rand_normal", shape)?;
        let mut data: Vec<f32> = try_host_vec("rand_normal", n)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        data.extend((0..n).map(|_| mean + std * rng.sample::<f32, _>(rand_distr::StandardNormal)));
        Tensor::from_vec(data, shape, device)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// The device the storage lives on.
    pub fn device(&self) -> Device {
        self.storage.device()
    }

    /// Copies the elements to a host vector, converting to `T`. On the GPU this submits
    /// pending work and waits for it.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.storage.to_host(self.numel())
    }

    /// The single element of a tensor with one element (any rank), as `T`.
    pub fn to_scalar<T: Element>(&self) -> Result<T> {
        if self.numel() != 1 {
            return Err(Error::ShapeMismatch {
                op: "to_scalar",
                lhs: self.shape.to_vec(),
                rhs: vec![],
            });
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// The same values on `device`. f64 tensors must be converted to f32 before moving to
    /// a GPU. Returns a cheap clone when already there.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device() == *device {
            return Ok(self.clone());
        }
        let storage = self.storage.to_device(self.numel(), device)?;
        Ok(Tensor::from_storage(storage, &self.shape))
    }

    /// The same values as `dtype`. Converting to f64 is for the CPU device only.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        let storage = self.storage.to_dtype(dtype)?;
        Ok(Tensor::from_storage(storage, &self.shape))
    }

    pub(crate) fn gpu_buffer(&self) -> Option<&GpuBuffer> {
        self.storage.gpu_buffer()
    }

    /// Computes GPU tensors whose values are still deferred (fused elementwise ops not
    /// yet run) in as few dispatches as possible: those of one length in one kernel.
    /// For values a loop carries side by side, so that one nothing reads until the end
    /// (CG's x) is computed with one that is read each iteration (p) instead of growing a
    /// chain computed on its own. Nothing to do on the CPU.
    pub(crate) fn compute_together(ts: &[&Tensor]) -> Result<()> {
        let bufs: Vec<&GpuBuffer> = ts.iter().filter_map(|t| t.gpu_buffer()).collect();
        if bufs.is_empty() {
            return Ok(());
        }
        crate::backend::gpu::fusion::compute_together(&bufs)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({:?}, {:?}, {})",
            self.shape,
            self.dtype(),
            self.device()
        )
    }
}

/// Checks that two operands share device and dtype; returns the shared device.
pub(crate) fn same_place(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    let (da, db) = (a.device(), b.device());
    if da != db {
        return Err(Error::DeviceMismatch {
            op,
            lhs: da.to_string(),
            rhs: db.to_string(),
        });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            lhs: a.dtype(),
            rhs: b.dtype(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dtype-taking constructors make what they say on either device, and refuse f64
    /// on a GPU and data that does not fit the shape.
    #[test]
    fn dtype_constructors() {
        let cpu = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let t = Tensor::from_f64(&[1.0, -2.5, 1e-3], &[3], &cpu, dtype).unwrap();
            assert_eq!((t.dtype(), t.shape()), (dtype, &[3][..]));
            let want = [
                1.0,
                -2.5,
                if dtype == DType::F32 {
                    f64::from(1e-3f32)
                } else {
                    1e-3
                },
            ];
            assert_eq!(t.to_vec::<f64>().unwrap(), want);
            let f = Tensor::full_dtype(&[2, 2], 0.5, &cpu, dtype).unwrap();
            assert_eq!(
                (f.dtype(), f.to_vec::<f64>().unwrap()),
                (dtype, vec![0.5; 4])
            );
            let z = Tensor::zeros_dtype(&[0, 3], &cpu, dtype).unwrap();
            assert_eq!((z.dtype(), z.numel()), (dtype, 0));
            let s = Tensor::from_f64(&[2.0], &[], &cpu, dtype).unwrap();
            assert_eq!(s.to_scalar::<f64>().unwrap(), 2.0);
        }
        let e = Tensor::from_f64(&[1.0; 5], &[2, 3], &cpu, DType::F64).unwrap_err();
        assert!(
            matches!(e, Error::ShapeMismatch { op: "from_f64", .. }),
            "{e}"
        );
        if let Some(gpu) = crate::testing::gpu_or_skip() {
            let t = Tensor::from_f64(&[1.0, 2.0], &[2], &gpu, DType::F32).unwrap();
            assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
            let f = Tensor::full_dtype(&[3], 4.0, &gpu, DType::F32).unwrap();
            assert_eq!(f.to_vec::<f32>().unwrap(), vec![4.0; 3]);
            for r in [
                Tensor::from_f64(&[1.0], &[1], &gpu, DType::F64),
                Tensor::full_dtype(&[1], 1.0, &gpu, DType::F64),
            ] {
                assert!(matches!(r, Err(Error::UnsupportedDType { .. })), "{r:?}");
            }
        }
    }

    /// Shapes whose element count overflows, or whose bytes no platform can address, are
    /// typed errors, on every constructor and on reshape and broadcasting, instead of a
    /// wrapped count (an empty tensor "of" 2^64 elements) or an allocation abort.
    #[test]
    fn impossible_shapes_are_errors_not_wraps_or_aborts() {
        let cpu = Device::Cpu;
        let wraps: &[usize] = &[1 << 33, 1 << 31];
        let e = Tensor::from_vec(Vec::<f32>::new(), wraps, &cpu).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        assert!(Tensor::from_vec(Vec::<f32>::new(), &[1 << 62, 4, 0], &cpu).is_err());
        for shape in [&[1usize << 62, 4][..], &[usize::MAX, 2], &[1 << 61]] {
            let e = Tensor::zeros(shape, &cpu).unwrap_err();
            assert!(e.to_string().contains("no tensor that large"), "{e}");
            assert!(Tensor::rand_uniform(shape, 0.0, 1.0, 0, &cpu).is_err());
            assert!(Tensor::rand_normal(shape, 0.0, 1.0, 0, &cpu).is_err());
        }
        // Addressable, but more than any host has: a typed error, not an abort.
        let e = Tensor::zeros(&[1 << 58], &cpu).unwrap_err();
        assert!(e.to_string().contains("cannot allocate"), "{e}");
        // A zero extent is fine, but the other extents must still multiply.
        let empty = Tensor::zeros(&[0, 5], &cpu).unwrap();
        assert_eq!(empty.numel(), 0);
        assert!(empty.reshape(&[1 << 40, 1 << 40, 0]).is_err());
        assert_eq!(empty.reshape(&[5, 0, 3]).unwrap().numel(), 0);
        let a = Tensor::zeros(&[1 << 40, 1, 0], &cpu).unwrap();
        let b = Tensor::zeros(&[1, 1 << 40, 0], &cpu).unwrap();
        assert!(a.add(&b).is_err(), "the broadcast shape overflows");
        if let Some(gpu) = crate::testing::gpu_or_skip() {
            assert!(Tensor::zeros(&[1 << 62, 4], &gpu).is_err());
            assert!(Tensor::from_vec(Vec::<f32>::new(), wraps, &gpu).is_err());
        }
    }
}
