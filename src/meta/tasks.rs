//! A batch of B tasks as four tensors with a leading task dimension.

use crate::device::Device;
use crate::error::{Error, Result, invalid};
use crate::tensor::{DType, Tensor, same_place};

/// How a task scores predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskLoss {
    /// Mean squared error over the task's points and outputs, without a ½ factor:
    /// (1/(N·out)) Σ (f(x) − y)². Targets are `[B, N, out]` (or `[B, N]` for out = 1).
    Mse,
    /// Mean cross-entropy of the logits `[B, N, classes]` against labels `[B, N]`
    /// (class indices stored as floats).
    CrossEntropy,
}

/// B tasks, each with a support set (what the inner loop adapts on) and a query set
/// (what the adapted parameters are scored on): `support_x` `[B, N_s, in]`,
/// `support_y` `[B, N_s, out]` (or labels `[B, N_s]`), and the same for the query set.
/// Every task of a batch has the same numbers of points.
#[derive(Debug, Clone)]
pub struct TaskBatch {
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    /// Ones `[B, N_s, 1]` and `[B, N_q, 1]` for the bias products.
    support_ones: Tensor,
    query_ones: Tensor,
    /// B as a 0-d tensor (see [`TaskBatch::loss_sum`]).
    count: Tensor,
    loss: TaskLoss,
}

impl TaskBatch {
    /// Checks and stores a task batch. Targets of a regression batch may be `[B, N]` (one
    /// output); they are stored as `[B, N, 1]`. All four tensors must share device and
    /// dtype.
    pub fn new(
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        loss: TaskLoss,
    ) -> Result<Self> {
        for t in [&support_y, &query_x, &query_y] {
            same_place("task batch", &support_x, t)?;
        }
        let (sx, qx) = (support_x.shape().to_vec(), query_x.shape().to_vec());
        if sx.len() != 3 || qx.len() != 3 {
            return Err(invalid(
                "task batch",
                format!(
                    "inputs must be [tasks, points, features]; got support x {sx:?} and query x {qx:?}"
                ),
            ));
        }
        if sx[0] != qx[0] || sx[2] != qx[2] || sx[0] == 0 || sx[1] == 0 || qx[1] == 0 {
            return Err(Error::ShapeMismatch {
                op: "task batch (support x vs query x: same tasks and features, ≥ 1 point each)",
                lhs: sx,
                rhs: qx,
            });
        }
        let fix = |y: Tensor, x: &[usize], what: &'static str| -> Result<Tensor> {
            let ys = y.shape().to_vec();
            let ok = match loss {
                TaskLoss::Mse => (ys.len() == 2 || ys.len() == 3) && ys[0] == x[0] && ys[1] == x[1],
                TaskLoss::CrossEntropy => ys.len() == 2 && ys[0] == x[0] && ys[1] == x[1],
            };
            if !ok {
                return Err(Error::ShapeMismatch {
                    op: what,
                    lhs: ys,
                    rhs: x.to_vec(),
                });
            }
            if ys.len() == 2 && loss == TaskLoss::Mse {
                y.reshape(&[ys[0], ys[1], 1])
            } else {
                Ok(y)
            }
        };
        let support_y = fix(support_y, &sx, "task batch (support y vs support x)")?;
        let query_y = fix(query_y, &qx, "task batch (query y vs query x)")?;
        if loss == TaskLoss::Mse && support_y.shape()[2] != query_y.shape()[2] {
            return Err(Error::ShapeMismatch {
                op: "task batch (support y vs query y outputs)",
                lhs: support_y.shape().to_vec(),
                rhs: query_y.shape().to_vec(),
            });
        }
        let ones = |x: &[usize]| {
            super::mlp::host_tensor(
                &vec![1.0; x[0] * x[1]],
                &[x[0], x[1], 1],
                &support_x.device(),
                support_x.dtype(),
            )
        };
        Ok(Self {
            support_ones: ones(&sx)?,
            query_ones: ones(&qx)?,
            count: super::mlp::host_tensor(
                &[sx[0] as f64],
                &[],
                &support_x.device(),
                support_x.dtype(),
            )?,
            support_x: support_x.detach(),
            support_y: support_y.detach(),
            query_x: query_x.detach(),
            query_y: query_y.detach(),
            loss,
        })
    }

    /// The number of tasks B.
    pub fn tasks(&self) -> usize {
        self.support_x.shape()[0]
    }

    /// Input features per point.
    pub fn features(&self) -> usize {
        self.support_x.shape()[2]
    }

    /// Support points per task.
    pub fn support_points(&self) -> usize {
        self.support_x.shape()[1]
    }

    /// Query points per task.
    pub fn query_points(&self) -> usize {
        self.query_x.shape()[1]
    }

    /// The loss.
    pub fn loss(&self) -> TaskLoss {
        self.loss
    }

    /// The device the tasks live on.
    pub fn device(&self) -> Device {
        self.support_x.device()
    }

    /// Their dtype.
    pub fn dtype(&self) -> DType {
        self.support_x.dtype()
    }

    /// Support inputs `[B, N_s, in]`.
    pub fn support_x(&self) -> &Tensor {
        &self.support_x
    }

    /// Support targets `[B, N_s, out]` or labels `[B, N_s]`.
    pub fn support_y(&self) -> &Tensor {
        &self.support_y
    }

    /// Query inputs `[B, N_q, in]`.
    pub fn query_x(&self) -> &Tensor {
        &self.query_x
    }

    /// Query targets `[B, N_q, out]` or labels `[B, N_q]`.
    pub fn query_y(&self) -> &Tensor {
        &self.query_y
    }

    /// Ones `[B, N_s, 1]`.
    pub(crate) fn support_ones(&self) -> &Tensor {
        &self.support_ones
    }

    /// Ones `[B, N_q, 1]`.
    pub(crate) fn query_ones(&self) -> &Tensor {
        &self.query_ones
    }

    /// The tasks `range` of this batch as a batch of their own (a copy), for running a
    /// large batch in chunks or checking a batch against separate runs.
    pub fn select(&self, start: usize, len: usize) -> Result<TaskBatch> {
        let b = self.tasks();
        if len == 0 || start.checked_add(len).is_none_or(|e| e > b) {
            return Err(invalid(
                "task batch",
                format!("tasks [{start}, {start} + {len}) are out of range for {b} tasks"),
            ));
        }
        let cut = |t: &Tensor| -> Result<Tensor> {
            let per: usize = t.shape()[1..].iter().product();
            let mut shape = t.shape().to_vec();
            shape[0] = len;
            t.slice(start * per, len * per)?.reshape(&shape)
        };
        TaskBatch::new(
            cut(&self.support_x)?,
            cut(&self.support_y)?,
            cut(&self.query_x)?,
            cut(&self.query_y)?,
            self.loss,
        )
    }

    /// Σ over tasks of each task's mean loss of `pred` (`[B, N, out]`) against `y`: B
    /// times the mean. B multiplies as a 0-d tensor, not a host scalar: the GPU's kernel
    /// fusion folds a host factor of 1 away, so B = 1 would run fewer kernels than B > 1.
    pub(crate) fn loss_sum(&self, pred: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.loss_mean(pred, y)?.mul(&self.count)
    }

    /// The mean over tasks of each task's mean loss (every task has the same number of
    /// points, so this is the mean over all points).
    pub(crate) fn loss_mean(&self, pred: &Tensor, y: &Tensor) -> Result<Tensor> {
        match self.loss {
            TaskLoss::Mse => pred.mse(y),
            TaskLoss::CrossEntropy => {
                let s = pred.shape();
                let n = s[0] * s[1];
                pred.reshape(&[n, s[2]])?
                    .cross_entropy(&y.reshape(&[n])?, None)
            }
        }
    }

    /// The fraction of query points whose largest logit is at their label, per task
    /// (classification only), from logits `[B, N_q, classes]` read back to the host.
    pub fn query_accuracy(&self, logits: &Tensor) -> Result<Vec<f64>> {
        if self.loss != TaskLoss::CrossEntropy {
            return Err(invalid(
                "query accuracy",
                "accuracy needs a classification task batch (cross-entropy)",
            ));
        }
        let s = logits.shape().to_vec();
        let (b, n) = (self.tasks(), self.query_points());
        if s.len() != 3 || s[0] != b || s[1] != n {
            return Err(Error::ShapeMismatch {
                op: "query accuracy",
                lhs: s,
                rhs: vec![b, n],
            });
        }
        let c = s[2];
        let z = logits.to_vec::<f64>()?;
        let y = self.query_y.to_vec::<f64>()?;
        Ok((0..b)
            .map(|t| {
                let hits = (0..n)
                    .filter(|&i| {
                        let row = &z[(t * n + i) * c..(t * n + i + 1) * c];
                        let arg = row
                            .iter()
                            .enumerate()
                            .fold(0, |best, (k, &v)| if v > row[best] { k } else { best });
                        arg as f64 == y[t * n + i]
                    })
                    .count();
                hits as f64 / n as f64
            })
            .collect())
    }
}
