//! Shape ops without kernels of their own: `reshape` (free), `broadcast_to` (the binary
//! kernel's copy mode) and `sum_to` (axis sums), the pair autodiff uses for broadcasting.

use crate::error::{Error, Result};
use crate::ops::binary::broadcast_raw;
use crate::tensor::tape::{Op, record};
use crate::tensor::{Tensor, checked_numel};

impl Tensor {
    /// The same elements with a new shape of the same element count. Free: no copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if checked_numel("reshape", shape)? != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape.to_vec(),
                rhs: shape.to_vec(),
            });
        }
        let out = Tensor {
            shape: shape.into(),
            storage: self.storage.clone(),
            node: None,
        };
        Ok(record(Op::Reshape, &[self], out))
    }

    /// This tensor broadcast (NumPy rules) to `shape`, materialised.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let out = broadcast_raw(self, shape)?;
        Ok(record(Op::BroadcastTo, &[self], out))
    }

    /// Sums this tensor down to `shape`, which must broadcast to this tensor's shape:
    /// the adjoint of [`Tensor::broadcast_to`].
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let mismatch = || Error::ShapeMismatch {
            op: "sum_to",
            lhs: self.shape.to_vec(),
            rhs: shape.to_vec(),
        };
        let lead = self.rank().checked_sub(shape.len()).ok_or_else(mismatch)?;
        let mut t = self.detach();
        // Leading dimensions that `shape` lacks are summed away (highest first keeps
        // the axis numbers of the rest valid); then size-1 dims keep theirs.
        for _ in 0..lead {
            t = t.sum_axis(0, false)?;
        }
        for (d, (&have, &want)) in self.shape()[lead..].iter().zip(shape).enumerate() {
            if want == 1 && have != 1 {
                t = t.sum_axis(d, true)?;
            } else if want != have {
                return Err(mismatch());
            }
        }
        let out = t.reshape(shape)?;
        Ok(record(Op::SumTo, &[self], out))
    }
}
