//! BDA and IAPTT-GM on the papers' problems (T1–T3 in `problems::toys`): they reach the
//! known optima where the methods that assume a unique inner minimiser do not, their
//! hypergradients match finite differences of their own definitions in f64, the GPU
//! matches the CPU, and bad settings are clear errors.

use super::methods::{Aggregation, AlphaSchedule, Bda};
use super::trajectory::Trajectory;
use super::*;
use crate::problems::{BdaToy, IapttToy, QuadraticToy};
use crate::testing::{gpu_or_skip, rel_err};
use crate::{DType, Device};

fn gd(lr: f64, steps: usize) -> Inner {
    Inner {
        optimizer: InnerOptimizer::Gd { lr },
        steps,
    }
}

fn host(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(|t| t.to_vec::<f64>().unwrap()).collect()
}

fn dist(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn filled(v: f64, n: usize, dev: &Device, dtype: DType) -> Vec<Tensor> {
    vec![Tensor::from_f64(&vec![v; n], &[n], dev, dtype).unwrap()]
}

fn sgd(steps: usize, lr: f64, warm: bool) -> OuterConfig {
    OuterConfig {
        steps,
        optimizer: OuterOptimizer::Sgd { lr },
        warm_start: if warm {
            WarmStart::Warm
        } else {
            WarmStart::Reinit
        },
    }
}

/// T1 (n = 10): BDA reaches x* = e; RAD with the same budget stalls near (e + y₂⁰)/2 =
/// e/2, which is the point of the method. Both warm-start the inner loop.
#[test]
fn bda_reaches_the_optimistic_optimum_of_t1_where_rad_stalls() {
    let dev = Device::Cpu;
    let p = BdaToy::new(10, &dev, DType::F64).unwrap();
    let x0 = filled(0.0, 10, &dev, DType::F64);
    let inner = gd(0.5, 20);
    let config = sgd(300, 0.5, true);
    let bda = optimize(&p, &x0, &inner, &Method::Bda(Bda::default()), &config).unwrap();
    let rad = optimize(&p, &x0, &inner, &Method::Rad, &config).unwrap();
    let (xb, xr) = (host(&bda.lambda), host(&rad.lambda));
    let e = p.solution();
    let half: Vec<f64> = e.iter().map(|v| v / 2.0).collect();
    assert!(
        dist(&xb, &e) <= 1e-2,
        "BDA ended at ‖x − e‖ = {}",
        dist(&xb, &e)
    );
    assert!(
        dist(&xr, &half) <= 1e-3,
        "RAD should stall at e/2: ‖x − e/2‖ = {}",
        dist(&xr, &half)
    );
    assert!(dist(&xr, &e) > 100.0 * dist(&xb, &e));
}

/// T2 (n = 5, unique inner minimiser): BDA, RAD and CG agree with x* = ½·e. BDA's
/// inner loop ends biased towards the outer loss's minimiser by about α_{K−1}; with the
/// geometric schedule that bias is ~10⁻⁵ after 30 steps, with the harmonic one (α_k =
/// 0.5/(k+1)) it falls as 1/K: 300 steps leave ‖x − x*‖ ≈ 2·10⁻³ (30 steps leave 2·10⁻²).
#[test]
fn every_method_reaches_the_closed_form_of_t2() {
    let dev = Device::Cpu;
    let p = QuadraticToy::new(5, &dev, DType::F64).unwrap();
    let x0 = filled(0.0, 5, &dev, DType::F64);
    let config = sgd(200, 0.3, true);
    let want = p.solution();
    let geometric = Bda {
        aggregation: Aggregation {
            alpha: AlphaSchedule::Geometric {
                alpha0: 0.5,
                decay: 0.7,
            },
            upper_ratio: 1.0,
        },
    };
    let cg = Method::Cg {
        iters: 5,
        tol: None,
        damping: 0.0,
    };
    for (method, steps, tol) in [
        (Method::Bda(geometric), 30, 1e-4),
        (Method::Bda(Bda::default()), 300, 5e-3),
        (Method::Rad, 30, 1e-4),
        (cg, 30, 1e-4),
    ] {
        let trace = optimize(&p, &x0, &gd(0.5, steps), &method, &config).unwrap();
        let x = host(&trace.lambda);
        assert!(
            dist(&x, &want) <= tol,
            "{method:?}: ‖x − x*‖ = {}",
            dist(&x, &want)
        );
    }
}

/// T3 from the paper's start (x⁰ = 1, y⁰ = 2, 40 inner steps of 5·10⁻⁴, 500 outer steps
/// of 0.1 then decaying): IAPTT-GM reaches 11π/4; RAD, whose inner loop always starts at
/// y⁰ = 2, does not.
#[test]
fn iaptt_gm_reaches_the_optimum_of_t3_where_rad_does_not() {
    let dev = Device::Cpu;
    let p = IapttToy::new(1, &dev, DType::F64).unwrap();
    let inner = gd(5e-4, 40);
    let trace = iaptt_gm(
        &p,
        &p.lambda0().unwrap(),
        &p.init_w().unwrap(),
        &inner,
        &IapttConfig::default(),
    )
    .unwrap();
    let x = host(&trace.lambda);
    let want = p.solution();
    assert!(
        (x[0] - want[0]).abs() <= 1e-2,
        "IAPTT-GM ended at x = {}",
        x[0]
    );
    assert_eq!(host(&trace.z), vec![-2.0], "z runs to the box's edge");
    assert!(
        trace.steps.iter().any(|s| s.k_star < 40),
        "k* truncates sometimes"
    );
    let rad = optimize(
        &p,
        &p.lambda0().unwrap(),
        &inner,
        &Method::Rad,
        &sgd(500, 0.1, false),
    )
    .unwrap();
    let xr = host(&rad.lambda);
    assert!((xr[0] - want[0]).abs() > 1.0, "RAD ended at x = {}", xr[0]);
}

/// Central differences in f64 of `value` at `x` along every coordinate.
fn fd(value: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let (mut up, mut down) = (x.to_vec(), x.to_vec());
            up[i] += h;
            down[i] -= h;
            (value(&up) - value(&down)) / (2.0 * h)
        })
        .collect()
}

/// BDA's inner steps are the paper's, computed by hand on T1:
/// y_{k+1} = y_k − s_l·((1 − α_k)·∇f + α_k·ρ·∇F) with α_k = μ/(k+1) (or α₀·decay^k),
/// ∇_{y₁}f = y₁ − x, ∇_{y₂}f = 0, ∇_{y₁}F = y₁ − e, ∇_{y₂}F = y₂ − x.
#[test]
fn bda_steps_follow_the_aggregation_by_hand() {
    let dev = Device::Cpu;
    let p = BdaToy::new(2, &dev, DType::F64).unwrap().with_y2_start(0.4);
    let x = [0.9, -0.3];
    let lambda = vec![Tensor::from_f64(&x, &[2], &dev, DType::F64).unwrap()];
    let (s_l, rho) = (0.3, 2.0);
    for alpha in [
        AlphaSchedule::Harmonic { mu: 0.6 },
        AlphaSchedule::Geometric {
            alpha0: 0.8,
            decay: 0.5,
        },
    ] {
        let agg = Aggregation {
            alpha,
            upper_ratio: rho,
        };
        let (mut y1, mut y2) = (vec![0.0, 0.0], vec![0.4, 0.4]);
        for k in 0..3 {
            let a = match alpha {
                AlphaSchedule::Harmonic { mu } => mu / (k as f64 + 1.0),
                AlphaSchedule::Geometric { alpha0, decay } => alpha0 * decay.powi(k),
            };
            for i in 0..2 {
                let g1 = (1.0 - a) * (y1[i] - x[i]) + a * rho * (y1[i] - 1.0);
                let g2 = a * rho * (y2[i] - x[i]);
                y1[i] -= s_l * g1;
                y2[i] -= s_l * g2;
            }
        }
        let t = Trajectory::run_aggregated(&p, &lambda, &p.init_w().unwrap(), &gd(s_l, 3), &agg)
            .unwrap();
        let got = host(t.w(3));
        let want: Vec<f64> = y1.iter().chain(&y2).copied().collect();
        assert!(
            rel_err(&got, &want) < 1e-14,
            "{alpha:?}: {got:?} vs {want:?}"
        );
    }
}

/// BDA's hypergradient is the derivative of L_out(w_T(λ), λ) along its own aggregated
/// trajectory (central differences in f64), with either schedule, and its dw₀ is the
/// derivative with respect to the start.
#[test]
fn bda_hypergradients_match_finite_differences_of_their_definition() {
    let dev = Device::Cpu;
    let p = BdaToy::new(3, &dev, DType::F64).unwrap().with_y2_start(0.3);
    let inner = gd(0.4, 6);
    let x = vec![0.7, -0.2, 1.3];
    for alpha in [
        AlphaSchedule::Harmonic { mu: 0.8 },
        AlphaSchedule::Geometric {
            alpha0: 0.9,
            decay: 0.7,
        },
    ] {
        let agg = Aggregation {
            alpha,
            upper_ratio: 1.5,
        };
        let value = |x: &[f64], w0: &[Tensor]| {
            let l = vec![Tensor::from_f64(x, &[3], &dev, DType::F64).unwrap()];
            let t = Trajectory::run_aggregated(&p, &l, w0, &inner, &agg).unwrap();
            p.outer_loss(t.w(t.steps()), &l)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let w0 = p.init_w().unwrap();
        let lambda = vec![Tensor::from_f64(&x, &[3], &dev, DType::F64).unwrap()];
        let hg = hypergradient_from(
            &p,
            &lambda,
            &w0,
            &inner,
            &Method::Bda(Bda { aggregation: agg }),
        )
        .unwrap();
        let want = fd(|x| value(x, &w0), &x, 1e-5);
        let got = host(&hg.grad);
        assert!(
            rel_err(&got, &want) < 1e-7,
            "{alpha:?}: {got:?} vs {want:?}"
        );
        // dL/dw₀ along y₂'s start.
        let y1 = w0[0].clone();
        let start = host(&w0[1..]);
        let want_dw = fd(
            |s| {
                let y2 = Tensor::from_f64(s, &[3], &dev, DType::F64).unwrap();
                value(&x, &[y1.clone(), y2])
            },
            &start,
            1e-5,
        );
        let got_dw = host(&hg.dw0.unwrap()[1..]);
        assert!(
            rel_err(&got_dw, &want_dw) < 1e-7,
            "{got_dw:?} vs {want_dw:?}"
        );
    }
}

/// IAPTT-GM's gradients are the derivatives of L_out(w_{k*}(λ, z), λ) with k* held at
/// the step it picked (central differences in f64), through the box projection.
#[test]
fn iaptt_gradients_match_finite_differences_of_their_definition() {
    let dev = Device::Cpu;
    let p = IapttToy::new(2, &dev, DType::F64).unwrap();
    let inner = gd(0.05, 12);
    let (x, z) = (vec![3.0, 5.0], vec![0.5, 1.7]);
    let t = |v: &[f64]| vec![Tensor::from_f64(v, &[2], &dev, DType::F64).unwrap()];
    let g = iaptt_gradient(&p, &t(&x), &t(&z), &inner, true).unwrap();
    assert!(g.k_star >= 1 && g.k_star <= 12);
    let upto = gd(0.05, g.k_star);
    let value = |x: &[f64], z: &[f64]| {
        let w = trajectory::run_to_end(&p, &t(x), &t(z), &upto).unwrap();
        p.outer_loss(&w, &t(x)).unwrap().to_scalar::<f64>().unwrap()
    };
    let (dx, dz) = (
        fd(|x| value(x, &z), &x, 1e-6),
        fd(|z| value(&x, z), &z, 1e-6),
    );
    assert!(
        rel_err(&host(&g.dlambda), &dx) < 1e-6,
        "{:?} vs {dx:?}",
        host(&g.dlambda)
    );
    assert!(
        rel_err(&host(&g.dz), &dz) < 1e-6,
        "{:?} vs {dz:?}",
        host(&g.dz)
    );
    assert!((g.outer_at_k_star - value(&x, &z)).abs() < 1e-12);
}

/// On the GPU (f32) BDA's and IAPTT-GM's hypergradients match the CPU's in f64.
#[test]
fn bda_and_iaptt_on_the_gpu_match_the_cpu_in_f64() {
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let run = |dev: &Device, dtype: DType| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let t1 = BdaToy::new(7, dev, dtype).unwrap().with_y2_start(0.2);
        let x: Vec<f64> = (0..7).map(|i| 0.3 * i as f64 - 0.8).collect();
        let lambda = vec![Tensor::from_f64(&x, &[7], dev, dtype).unwrap()];
        let w0 = t1.init_w().unwrap();
        let bda = hypergradient_from(&t1, &lambda, &w0, &gd(0.4, 8), &Method::Bda(Bda::default()))
            .unwrap();
        let t3 = IapttToy::new(5, dev, dtype).unwrap();
        let t = |v: &[f64]| vec![Tensor::from_f64(v, &[5], dev, dtype).unwrap()];
        let g = iaptt_gradient(
            &t3,
            &t(&[2.0, 3.0, 4.5, 6.0, 9.0]),
            &t(&[1.5, -0.5, 0.2, 1.9, -1.0]),
            &gd(0.02, 10),
            false,
        )
        .unwrap();
        (host(&bda.grad), host(&g.dlambda), host(&g.dz))
    };
    let want = run(&Device::Cpu, DType::F64);
    let got = run(&gpu, DType::F32);
    for (g, w) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
        assert!(rel_err(g, w) < 1e-4, "{g:?} vs {w:?}");
    }
}

/// A bounded problem the named method does not differentiate through.
struct BadBox;

impl Problem for BadBox {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_vec(vec![0.0f64], &[1], &Device::Cpu)?])
    }
    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![1]]
    }
    fn inner_loss(&self, w: &[Tensor], l: &[Tensor]) -> Result<Tensor> {
        w[0].sub(&l[0])?.sqnorm()
    }
    fn outer_loss(&self, w: &[Tensor], _l: &[Tensor]) -> Result<Tensor> {
        w[0].sqnorm()
    }
    fn inner_bounds(&self) -> Option<(f64, f64)> {
        Some((1.0, -1.0))
    }
}

/// α schedules outside (0, 1], an empty box, λ⁰ outside its box and a method that
/// cannot differentiate through a box are errors that say so.
#[test]
fn bad_schedules_boxes_and_starts_are_clear_errors() {
    let dev = Device::Cpu;
    let p = QuadraticToy::new(2, &dev, DType::F64).unwrap();
    let x0 = filled(0.0, 2, &dev, DType::F64);
    let w0 = p.init_w().unwrap();
    for alpha in [
        AlphaSchedule::Harmonic { mu: 1.5 },
        AlphaSchedule::Harmonic { mu: 0.0 },
        AlphaSchedule::Geometric {
            alpha0: 0.5,
            decay: f64::NAN,
        },
    ] {
        let m = Method::Bda(Bda {
            aggregation: Aggregation {
                alpha,
                upper_ratio: 1.0,
            },
        });
        let e = hypergradient_from(&p, &x0, &w0, &gd(0.1, 3), &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(0, 1]"), "{e}");
    }
    let l = vec![Tensor::from_vec(vec![0.0f64], &[1], &dev).unwrap()];
    let e = hypergradient_from(
        &BadBox,
        &l,
        &BadBox.init_w().unwrap(),
        &gd(0.1, 2),
        &Method::Rad,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a box"), "{e}");
    let t3 = IapttToy::new(1, &dev, DType::F64).unwrap();
    let outside = filled(0.5, 1, &dev, DType::F64);
    let e = iaptt_gm(
        &t3,
        &outside,
        &t3.init_w().unwrap(),
        &gd(5e-4, 4),
        &IapttConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("outside") && e.contains("[1, 10]"), "{e}");
    let cg = Method::Cg {
        iters: 3,
        tol: None,
        damping: 0.0,
    };
    let e = hypergradient_from(
        &t3,
        &t3.lambda0().unwrap(),
        &t3.init_w().unwrap(),
        &gd(0.1, 2),
        &cg,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[-2, 2]") && e.contains("`cg`"), "{e}");
}
