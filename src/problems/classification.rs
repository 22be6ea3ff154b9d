//! Linear softmax classifiers: data hyper-cleaning and L2-regularised logistic /
//! softmax regression (the HOAG setting).

use crate::bilevel::Problem;
use crate::device::Device;
use crate::error::{Error, Result, invalid};
use crate::problems::data::{CleaningData, Split, cleaning_split, digits};
use crate::problems::labels_tensor;
use crate::tensor::{DType, Tensor};

/// Features and labels of one split on the device.
#[derive(Debug, Clone)]
struct DeviceSplit {
    x: Tensor,
    labels: Tensor,
    host_labels: Vec<usize>,
}

impl DeviceSplit {
    fn new(s: &Split, classes: usize, device: &Device, dtype: DType) -> Result<Self> {
        if s.labels.len() != s.x.rows {
            return Err(Error::ShapeMismatch {
                op: "labels must have one entry per row of X",
                lhs: vec![s.labels.len()],
                rhs: vec![s.x.rows, s.x.cols],
            });
        }
        Ok(Self {
            x: s.x.to_tensor(device, dtype)?,
            labels: labels_tensor(&s.labels, classes, device, dtype)?,
            host_labels: s.labels.clone(),
        })
    }

    fn logits(&self, w: &[Tensor]) -> Result<Tensor> {
        self.x.matmul(&w[0])?.add(&w[1])
    }

    /// The zero linear classifier [W (d × classes), b (classes)] on this data's device.
    fn zero_classifier(&self, classes: usize) -> Result<Vec<Tensor>> {
        let d = self.x.shape()[1];
        Ok(vec![
            zeros(&[d, classes], &self.x)?,
            zeros(&[classes], &self.x)?,
        ])
    }

    /// Fraction of rows whose arg-max logit is the label.
    fn accuracy(&self, w: &[Tensor]) -> Result<f64> {
        let logits = self.logits(w)?.to_vec::<f64>()?;
        let c = w[1].numel();
        let correct = self
            .host_labels
            .iter()
            .enumerate()
            .filter(|&(i, &y)| {
                let row = &logits[i * c..(i + 1) * c];
                let best = (0..c)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                best == y
            })
            .count();
        Ok(correct as f64 / self.host_labels.len().max(1) as f64)
    }
}

fn zeros(shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::from_f64(
        &vec![0.0; shape.iter().product()],
        shape,
        &like.device(),
        like.dtype(),
    )
}

/// Data hyper-cleaning (Franceschi et al. 2017) with a linear softmax classifier
/// W (d×c), b (c) and one weight per training example, λ ∈ R^n:
///
/// L_in(W, b, λ) = (1/n) Σ_i sigmoid(λ_i)·CE(x_i W + b, y_i) + (μ/2)‖W‖²  (b not penalised),
/// L_out(W, b)   = mean CE on the validation set.
///
/// w is the list [W `[d, c]`, b `[c]`]; flat (an experiment's `inner.init`), W row-major
/// and then b: d·c + c values. H is singular: b ↦ b + t·1 leaves every softmax, so L_in,
/// unchanged, and b is not penalised.
#[derive(Debug, Clone)]
pub struct HyperCleaning {
    train: DeviceSplit,
    val: DeviceSplit,
    test: DeviceSplit,
    corrupted: Vec<bool>,
    classes: usize,
    mu: f64,
}

impl HyperCleaning {
    /// The problem on prepared data, with L2 strength μ ≥ 0.
    pub fn new(data: &CleaningData, mu: f64, device: &Device, dtype: DType) -> Result<Self> {
        if !mu.is_finite() || mu < 0.0 {
            return Err(invalid(
                "hyper-cleaning",
                format!("mu must be finite and ≥ 0, got {mu}"),
            ));
        }
        let c = data.classes;
        Ok(Self {
            train: DeviceSplit::new(&data.train, c, device, dtype)?,
            val: DeviceSplit::new(&data.val, c, device, dtype)?,
            test: DeviceSplit::new(&data.test, c, device, dtype)?,
            corrupted: data.corrupted.clone(),
            classes: c,
            mu,
        })
    }

    /// The built-in benchmark: digits, 500 train / 500 val / 797 test, half of the
    /// training labels corrupted, μ = 1e-3.
    pub fn digits(seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        let (x, y) = digits();
        let data = cleaning_split(&x, &y, 10, 500, 500, 0.5, seed)?;
        Self::new(&data, 1e-3, device, dtype)
    }

    /// Number of training examples (the length of λ).
    pub fn n_train(&self) -> usize {
        self.corrupted.len()
    }

    /// Test accuracy of the classifier w = [W, b].
    pub fn test_accuracy(&self, w: &[Tensor]) -> Result<f64> {
        self.test.accuracy(w)
    }

    /// Validation accuracy of w = [W, b] (the validation labels are clean).
    pub fn val_accuracy(&self, w: &[Tensor]) -> Result<f64> {
        self.val.accuracy(w)
    }

    /// Training accuracy of w = [W, b] against the training labels as given, corrupted
    /// ones included: how much of the noise the classifier fits.
    pub fn train_accuracy(&self, w: &[Tensor]) -> Result<f64> {
        self.train.accuracy(w)
    }

    /// F1 score of flagging example i as corrupted when sigmoid(λ_i) < 0.5 (λ_i < 0).
    pub fn corruption_f1(&self, lambda: &[Tensor]) -> Result<f64> {
        let lam = lambda[0].to_vec::<f64>()?;
        let (mut tp, mut fp, mut fneg) = (0.0, 0.0, 0.0);
        for (l, &bad) in lam.iter().zip(&self.corrupted) {
            match (*l < 0.0, bad) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fneg += 1.0,
                (false, false) => {}
            }
        }
        Ok(if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fneg)
        })
    }
}

impl Problem for HyperCleaning {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        self.train.zero_classifier(self.classes)
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.n_train()]]
    }

    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let weights = lambda[0].sigmoid()?;
        let ce = self
            .train
            .logits(w)?
            .cross_entropy(&self.train.labels, Some(&weights))?;
        if self.mu == 0.0 {
            return Ok(ce);
        }
        ce.add(&w[0].sqnorm()?.scale(0.5 * self.mu)?)
    }

    fn outer_loss(&self, w: &[Tensor], _lambda: &[Tensor]) -> Result<Tensor> {
        self.val.logits(w)?.cross_entropy(&self.val.labels, None)
    }
}

/// Softmax (or, with two classes, logistic) regression with L2 regularisation whose
/// log-strength is the hyperparameter: λ ∈ R¹ (one strength) or R^d (one per feature):
///
/// L_in(W, b, λ) = mean CE(X W + b, y) + ½ Σ_j exp(λ_j) ‖W_j,:‖²  (λ_j = λ for a scalar),
/// L_out(W, b)   = mean CE on the validation set.
///
/// w is the list [W `[d, c]`, b `[c]`]; flat (an experiment's `inner.init`), W row-major
/// and then b: d·c + c values.
#[derive(Debug, Clone)]
pub struct Logistic {
    train: DeviceSplit,
    val: DeviceSplit,
    classes: usize,
    per_feature: bool,
}

impl Logistic {
    /// The problem on train / validation splits with `classes` classes.
    pub fn new(
        train: &Split,
        val: &Split,
        classes: usize,
        per_feature: bool,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if train.x.cols != val.x.cols {
            return Err(Error::ShapeMismatch {
                op: "logistic: validation features must match training features",
                lhs: vec![val.x.rows, val.x.cols],
                rhs: vec![train.x.rows, train.x.cols],
            });
        }
        Ok(Self {
            train: DeviceSplit::new(train, classes, device, dtype)?,
            val: DeviceSplit::new(val, classes, device, dtype)?,
            classes,
            per_feature,
        })
    }

    /// Validation accuracy of w = [W, b].
    pub fn val_accuracy(&self, w: &[Tensor]) -> Result<f64> {
        self.val.accuracy(w)
    }

    /// Training accuracy of w = [W, b].
    pub fn train_accuracy(&self, w: &[Tensor]) -> Result<f64> {
        self.train.accuracy(w)
    }
}

impl Problem for Logistic {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        self.train.zero_classifier(self.classes)
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![if self.per_feature {
            self.train.x.shape()[1]
        } else {
            1
        }]]
    }

    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let d = self.train.x.shape()[1];
        let ce = self
            .train
            .logits(w)?
            .cross_entropy(&self.train.labels, None)?;
        let strength = lambda[0].exp()?;
        let reg = if self.per_feature {
            w[0].square()?.mul(&strength.reshape(&[d, 1])?)?.sum()?
        } else {
            w[0].sqnorm()?.mul(&strength.reshape(&[])?)?
        };
        ce.add(&reg.scale(0.5)?)
    }

    fn outer_loss(&self, w: &[Tensor], _lambda: &[Tensor]) -> Result<Tensor> {
        self.val.logits(w)?.cross_entropy(&self.val.labels, None)
    }
}
