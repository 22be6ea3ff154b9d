//! The built-in hypergradient methods, one file per family, each a type implementing
//! [`HypergradientMethod`](super::HypergradientMethod) and holding the method's
//! settings. [`Method`](super::Method) names them all (its variants carry the exact
//! definitions) and runs them; an experiment config's `[method]` table deserialises
//! straight into them.
//!
//! - `unrolled`: [`Rad`], [`Trad`], reverse sweeps through the stored trajectory;
//! - `forward`: [`Forward`], forward-mode tangents carried along the inner run;
//! - `implicit`: [`Cg`], [`Neumann`], [`FixedPoint`], a linear solve with H at w_T;
//! - `one_step`: [`OneStep`], DARTS's one virtual step;
//! - `exact`: [`Exact`], the implicit hypergradient at a closed-form w*, solved densely.
//!
//! Notation: g = ∇_w L_out, H = ∇²_w L_in, J = ∂²L_in/∂λ∂w, all at the point the method
//! evaluates them.

mod exact;
mod forward;
mod implicit;
mod one_step;
mod unrolled;

pub use exact::Exact;
pub use forward::Forward;
pub use implicit::{Cg, FixedPoint, Neumann};
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

impl From<NoSettings> for Exact {
    fn from(_: NoSettings) -> Self {
        Exact
    }
}
