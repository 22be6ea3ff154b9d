//! Helpers shared by blo's tests and by `blo check`: the shared test GPU, seeded oracle
//! inputs and the one tolerance check. Not part of the stable API.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Device;

/// The GPU device tests run on, opened once per process with buffer poisoning on (every
/// new buffer starts as NaN, so an unwritten output element fails its comparison).
///
/// Without an adapter this prints a notice and returns `None`, and the calling test
/// skips its GPU part; with `BLO_REQUIRE_GPU=1` a missing adapter panics instead, so CI
/// cannot pass by skipping.
pub fn gpu_or_skip() -> Option<Device> {
    static GPU: OnceLock<Result<Device, String>> = OnceLock::new();
    let dev = GPU.get_or_init(|| match Device::gpu() {
        Ok(d) => {
            if let Some(ctx) = d.gpu_context() {
                ctx.set_poison(true);
            }
            Ok(d)
        }
        Err(e) => Err(e.to_string()),
    });
    match dev {
        Ok(d) => Some(d.clone()),
        Err(e) => skip(e),
    }
}

/// A GPU device of its own (a new context, buffer poisoning on) for a test that changes
/// the context's state, such as forcing a kernel variant, which would disturb tests
/// sharing [`gpu_or_skip`]'s device. Skips or panics as [`gpu_or_skip`] does.
pub fn fresh_gpu_or_skip() -> Option<Device> {
    match Device::gpu() {
        Ok(d) => {
            if let Some(ctx) = d.gpu_context() {
                ctx.set_poison(true);
            }
            Some(d)
        }
        Err(e) => skip(&e.to_string()),
    }
}

fn skip(e: &str) -> Option<Device> {
    if std::env::var("BLO_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("BLO_REQUIRE_GPU=1 but no GPU adapter: {e}");
    }
    eprintln!("notice: skipping GPU part of this test: {e}");
    None
}

/// Seeded inputs uniform in [-1, 1): the f32 values and the same values widened to f64.
pub fn oracle_pair(shape: &[usize], seed: u64) -> (Vec<f32>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let x32: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let x64 = x32.iter().map(|&v| f64::from(v)).collect();
    (x32, x64)
}

/// Largest elementwise violation of |got − want| ≤ max(rtol·|want|, atol), as the
/// ratio |got − want| / max(rtol·|want|, atol) (≤ 1 passes). NaN anywhere fails.
pub fn worst_violation(got: &[f64], want: &[f64], rtol: f64, atol: f64) -> (f64, usize) {
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let allowed = (rtol * w.abs()).max(atol);
        let ratio = if g.is_nan() || w.is_nan() {
            if g.is_nan() && w.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (g - w).abs() / allowed
        };
        if ratio > worst.0 || (ratio.is_infinite() && !worst.0.is_infinite()) {
            worst = (ratio, i);
        }
    }
    worst
}

/// The norm-wise relative error, now public as [`crate::check::rel_err`].
pub use crate::check::rel_err;

/// Asserts |got − want| ≤ max(rtol·|want|, atol) elementwise, and equal lengths.
#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let (ratio, i) = worst_violation(got, want, rtol, atol);
    assert!(
        ratio <= 1.0,
        "{what}: element {i}: got {}, want {} (rtol {rtol}, atol {atol}, {ratio:.2}× the tolerance)",
        got[i],
        want[i]
    );
}
