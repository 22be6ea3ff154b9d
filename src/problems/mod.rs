//! Built-in bilevel problems with exact definitions, meta-learning task distributions
//! (sinusoid regression, few-shot digits), and their data.

pub mod classification;
pub mod data;
pub mod fewshot;
pub mod ridge;

pub use classification::{HyperCleaning, Logistic};
pub use fewshot::{ClassSplit, DigitsFewShot, Sinusoid};
pub use ridge::Ridge;

use crate::device::Device;
use crate::error::{Result, invalid};
use crate::problems::data::Matrix;
use crate::tensor::{DType, Tensor};

/// Makes a tensor on `device` in `dtype` from f64 host values.
pub(crate) fn tensor(
    data: &[f64],
    shape: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    match dtype {
        DType::F64 => Tensor::from_vec(data.to_vec(), shape, device),
        DType::F32 => Tensor::from_vec(
            data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            shape,
            device,
        ),
    }
}

pub(crate) fn matrix_tensor(m: &Matrix, device: &Device, dtype: DType) -> Result<Tensor> {
    tensor(&m.data, &[m.rows, m.cols], device, dtype)
}

pub(crate) fn labels_tensor(
    labels: &[usize],
    classes: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(invalid(
            "labels",
            format!("label {bad} is out of range for {classes} classes"),
        ));
    }
    let v: Vec<f64> = labels.iter().map(|&l| l as f64).collect();
    tensor(&v, &[labels.len()], device, dtype)
}

/// `X w` for a matrix X [n, d] and a vector w [d], as a vector [n].
pub(crate) fn matvec(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, d) = (x.shape()[0], x.shape()[1]);
    x.matmul(&w.reshape(&[d, 1])?)?.reshape(&[n])
}
