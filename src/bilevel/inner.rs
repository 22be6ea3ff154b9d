//! The inner problem's solver: a differentiable update map Φ run for T steps.

use crate::error::{Result, invalid};
use crate::tensor::Tensor;

/// A differentiable inner update map Φ. The optimizer state is w followed by any extra
/// buffers (the momentum's velocity), one tensor per w-tensor each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InnerOptimizer {
    /// Gradient descent: w ← w − lr·∇_w L_in(w, λ).
    Gd {
        /// Step size η > 0.
        lr: f64,
    },
    /// Heavy-ball momentum: m ← μ·m + ∇_w L_in(w, λ); w ← w − lr·m, with m₀ = 0.
    Momentum {
        /// Step size η > 0.
        lr: f64,
        /// Momentum μ in [0, 1).
        momentum: f64,
    },
}

impl InnerOptimizer {
    /// The step size η.
    pub fn lr(&self) -> f64 {
        match self {
            InnerOptimizer::Gd { lr } | InnerOptimizer::Momentum { lr, .. } => *lr,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let lr = self.lr();
        if !lr.is_finite() || lr <= 0.0 {
            return Err(invalid(
                "inner optimizer",
                format!("the step size must be finite and > 0, got {lr}"),
            ));
        }
        if let InnerOptimizer::Momentum { momentum, .. } = self
            && !(0.0..1.0).contains(momentum)
        {
            return Err(invalid(
                "inner optimizer",
                format!("momentum must be in [0, 1), got {momentum}"),
            ));
        }
        Ok(())
    }

    /// Initial state for w₀: [w₀] or [w₀, 0].
    pub(crate) fn init_state(&self, w0: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut state: Vec<Tensor> = w0.iter().map(Tensor::detach).collect();
        if let InnerOptimizer::Momentum { .. } = self {
            for w in w0 {
                state.push(w.detach().zeros_like()?);
            }
        }
        Ok(state)
    }

    /// Φ with a tensor step size: the gradient g of each w-tensor is replaced by α ⊙ g
    /// (α broadcast to g's shape) before the update, so gradient descent becomes
    /// w ← w − lr·α ⊙ ∇_w L_in and momentum accumulates α ⊙ ∇_w L_in. `alpha` holds one
    /// tensor per w-tensor, or is empty (then this is [`InnerOptimizer::step`]'s map).
    /// Recorded like any op when α is on the graph, so dΦ/dα comes from the tape.
    pub(crate) fn step_scaled(
        &self,
        state: &[Tensor],
        g: &[Tensor],
        alpha: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        if alpha.is_empty() {
            return self.step(state, g);
        }
        let scaled: Vec<Tensor> = g
            .iter()
            .zip(alpha)
            .map(|(gi, a)| gi.mul(a))
            .collect::<Result<_>>()?;
        self.step(state, &scaled)
    }

    /// Φ applied to a state given the gradient ∇_w L_in at its w. Recorded when the
    /// inputs are on the graph (RAD rebuilds steps through it).
    pub(crate) fn step(&self, state: &[Tensor], g: &[Tensor]) -> Result<Vec<Tensor>> {
        let n = g.len();
        match *self {
            InnerOptimizer::Gd { lr } => state[..n]
                .iter()
                .zip(g)
                .map(|(w, gi)| w.axpy(-lr, gi))
                .collect(),
            InnerOptimizer::Momentum { lr, momentum } => {
                let m: Vec<Tensor> = state[n..]
                    .iter()
                    .zip(g)
                    .map(|(m, gi)| gi.axpy(momentum, m))
                    .collect::<Result<_>>()?;
                let mut next: Vec<Tensor> = state[..n]
                    .iter()
                    .zip(&m)
                    .map(|(w, mi)| w.axpy(-lr, mi))
                    .collect::<Result<_>>()?;
                next.extend(m);
                Ok(next)
            }
        }
    }
}

/// The inner problem's solver: an optimizer and a number of steps T.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inner {
    /// The update map Φ.
    pub optimizer: InnerOptimizer,
    /// Number of inner steps T run from w₀ before (or, for unrolled methods, while)
    /// computing the hypergradient. 0 evaluates the method at w₀ (see
    /// [`Method`](super::Method)).
    pub steps: usize,
}
