//! BDA, bilevel descent aggregation (Liu et al., ICML 2020, "A Generic First-Order
//! Algorithmic Framework for Bi-Level Programming Beyond Lower-Level Singleton"): the
//! inner loop descends an aggregation of both levels, so that when the inner problem
//! has a set of minimisers the trajectory drifts towards the one the outer loss
//! prefers; the hypergradient is reverse mode through that aggregated trajectory.

use serde::{Deserialize, Serialize};

use crate::bilevel::method::{BadSetting, HypergradientMethod, MethodOutput, outer_grads};
use crate::bilevel::trajectory::Trajectory;
use crate::bilevel::{Inner, Problem};
use crate::error::{Result, invalid};
use crate::tensor::Tensor;

/// How BDA's aggregation weight α_k of the outer loss falls with the inner step k
/// (k = 0, 1, …). Every α_k must lie in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlphaSchedule {
    /// α_k = μ / (k + 1), the paper's schedule (its convergence proof needs α_k → 0
    /// with Σ α_k = ∞), with 0 < μ ≤ 1.
    Harmonic {
        /// μ in (0, 1].
        mu: f64,
    },
    /// α_k = α₀ · decay^k, BOAT's alternative, with 0 < α₀ ≤ 1 and 0 < decay ≤ 1.
    Geometric {
        /// α₀ in (0, 1].
        alpha0: f64,
        /// decay in (0, 1].
        decay: f64,
    },
}

/// BDA's aggregation: inner step k descends
/// φ_k(w) = (1 − α_k)·L_in(w, λ) + α_k·(s_u / s_l)·L_out(w, λ), so that with gradient
/// descent at the inner step size s_l the update is
/// w_{k+1} = w_k − (α_k·s_u·∇_w L_out + (1 − α_k)·s_l·∇_w L_in), the paper's
/// y_{k+1} = y_k − (α_k s_u ∇_y F + (1 − α_k) s_l ∇_y f). With another inner optimizer
/// (momentum) the optimizer is fed ∇φ_k.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregation {
    /// α_k.
    pub alpha: AlphaSchedule,
    /// s_u / s_l, the upper level's step size relative to the inner optimizer's; > 0.
    pub upper_ratio: f64,
}

impl Default for Aggregation {
    /// The defaults blo documents for BDA: α_k = 0.5 / (k + 1) and s_u = s_l.
    fn default() -> Self {
        Aggregation {
            alpha: AlphaSchedule::Harmonic { mu: 0.5 },
            upper_ratio: 1.0,
        }
    }
}

impl Aggregation {
    /// α_k for inner step k (0-based).
    pub fn alpha(&self, k: usize) -> f64 {
        match self.alpha {
            AlphaSchedule::Harmonic { mu } => mu / (k as f64 + 1.0),
            AlphaSchedule::Geometric { alpha0, decay } => alpha0 * decay.powi(k as i32),
        }
    }

    /// s_u / s_l.
    pub fn upper_ratio(&self) -> f64 {
        self.upper_ratio
    }

    pub(crate) fn check(&self) -> std::result::Result<(), BadSetting> {
        let unit = |key: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(BadSetting {
                    key,
                    error: invalid(
                        "bda",
                        format!("{key} must be in (0, 1] so that every α_k is, got {v}"),
                    ),
                })
            }
        };
        match self.alpha {
            AlphaSchedule::Harmonic { mu } => unit("mu", mu)?,
            AlphaSchedule::Geometric { alpha0, decay } => {
                unit("alpha0", alpha0)?;
                unit("decay", decay)?;
            }
        }
        super::super::method::positive("upper_ratio", self.upper_ratio)
    }

    /// Fails unless every α_k is in (0, 1] and s_u / s_l > 0.
    pub fn validate(&self) -> Result<()> {
        Ok(self.check()?)
    }
}

/// [`Method::Bda`](crate::bilevel::Method::Bda): reverse mode through T steps of the
/// aggregated inner update ([`Aggregation`]), storing only the iterates as RAD does;
/// hypergradient = dL_out(w_T(λ), λ)/dλ, which includes each step's dependence on λ
/// through both losses. Also returns dL_out/dw₀.
///
/// In an experiment config: `kind = "bda"` with `mu` (default 0.5) for the harmonic
/// schedule, or `alpha0` and `decay` for the geometric one, and `upper_ratio` (s_u / s_l,
/// default 1).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "BdaSettings", into = "BdaSettings")]
pub struct Bda {
    /// The aggregation of the outer loss into the inner steps.
    pub aggregation: Aggregation,
}

/// [`Bda`] as an experiment config spells it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BdaSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alpha0: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decay: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upper_ratio: Option<f64>,
}

impl TryFrom<BdaSettings> for Bda {
    type Error = String;

    fn try_from(s: BdaSettings) -> std::result::Result<Self, String> {
        let alpha = match (s.mu, s.alpha0, s.decay) {
            (mu, None, None) => AlphaSchedule::Harmonic {
                mu: mu.unwrap_or(0.5),
            },
            (None, Some(alpha0), Some(decay)) => AlphaSchedule::Geometric { alpha0, decay },
            _ => {
                return Err(
                    "give `mu` (α_k = μ/(k+1)) or both `alpha0` and `decay` (α_k = α₀·decay^k), not a mix"
                        .into(),
                );
            }
        };
        Ok(Bda {
            aggregation: Aggregation {
                alpha,
                upper_ratio: s.upper_ratio.unwrap_or(1.0),
            },
        })
    }
}

impl From<Bda> for BdaSettings {
    fn from(b: Bda) -> Self {
        let (mu, alpha0, decay) = match b.aggregation.alpha {
            AlphaSchedule::Harmonic { mu } => (Some(mu), None, None),
            AlphaSchedule::Geometric { alpha0, decay } => (None, Some(alpha0), Some(decay)),
        };
        BdaSettings {
            mu,
            alpha0,
            decay,
            upper_ratio: Some(b.aggregation.upper_ratio),
        }
    }
}

impl Bda {
    pub(crate) const NAME: &str = "bda";

    pub(crate) fn check(&self) -> std::result::Result<(), BadSetting> {
        self.aggregation.check()
    }
}

impl HypergradientMethod for Bda {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn validate(&self, _inner: &Inner) -> Result<()> {
        Ok(self.check()?)
    }

    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput> {
        let trajectory = Trajectory::run_aggregated(problem, lambda, w0, inner, &self.aggregation)?;
        let stored = trajectory.stored_bytes();
        let t = trajectory.steps();
        let w_t = trajectory.w(t).to_vec();
        let (loss, gw, gl) = outer_grads(problem, &w_t, lambda)?;
        let adjoint = trajectory.reverse(t, gw, gl)?;
        Ok(MethodOutput {
            grad: adjoint.dlambda,
            w: w_t,
            dw0: Some(adjoint.dw),
            outer_loss: loss.to_scalar::<f64>()?,
            inner_steps: t,
            solver_iterations: 0,
            residual: None,
            stored_bytes: stored,
            inner_grad_norm: None,
        })
    }

    fn supports_inner_bounds(&self) -> bool {
        true
    }
}
