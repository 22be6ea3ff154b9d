//! The built-in hypergradient methods, one file per family, each a type implementing
//! [`HypergradientMethod`](super::HypergradientMethod) and holding the method's
//! settings. [`Method`](super::Method) names them all (its variants carry the exact
//! definitions) and runs them; an experiment config's `[method]` table deserialises
//! straight into them.
//!
//! - `unrolled`: [`Rad`], [`Trad`], reverse sweeps through the stored trajectory;
//! - `forward`: [`Forward`], forward-mode tangents carried along the inner run;
//! - `implicit`: [`Cg`], [`Neumann`], [`FixedPoint`], a linear solve with H at w_T, and
//!   [`Implicit`], H solved densely at w* or w_T;
//! - `one_step`: [`OneStep`], DARTS's one virtual step;
//! - `bda`: [`Bda`], reverse mode through an inner loop that also descends the outer
//!   loss (for inner problems with several minimisers);
//!
//! Notation: g = ∇_w L_out, H = ∇²_w L_in, J = ∂²L_in/∂λ∂w, all at the point the method
//! evaluates them.

pub(crate) mod bda;
mod forward;
mod implicit;
mod one_step;
mod unrolled;

pub use bda::{Aggregation, AlphaSchedule, Bda};
pub use forward::Forward;
pub use implicit::{Cg, FixedPoint, Implicit, MAX_DENSE_DIM, Neumann};

/// The former name of [`Implicit`], kept so that code written for it still builds.
pub type Exact = Implicit;
pub use one_step::OneStep;
pub use unrolled::{Rad, Trad};

/// The settings table of a method that has none: `kind` alone, any other key an error
/// (a unit struct would accept any table, or reject it without naming the key).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

impl From<NoSettings> for Rad {
    fn from(_: NoSettings) -> Self {
        Rad
    }
}

impl From<NoSettings> for Forward {
    fn from(_: NoSettings) -> Self {
        Forward
    }
}

impl From<NoSettings> for Implicit {
    fn from(_: NoSettings) -> Self {
        Implicit
    }
}
