//! Built-in bilevel problems with exact definitions, meta-learning task distributions
//! (sinusoid regression, few-shot digits), and their data.

pub mod classification;
pub mod data;
pub mod fewshot;
pub mod ridge;
pub mod toys;

pub use classification::{HyperCleaning, Logistic};
pub use fewshot::{ClassSplit, DigitsFewShot, Sinusoid};
pub use ridge::Ridge;
pub use toys::{BdaToy, IapttToy, QuadraticToy};

use crate::device::Device;
use crate::error::{Result, invalid};
use crate::tensor::{DType, Tensor};

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
    Tensor::from_f64(&v, &[labels.len()], device, dtype)
}
