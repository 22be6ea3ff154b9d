//! The solver and hypergradient checks: every method on small ridge and hyper-cleaning.

use super::*;

/// The hypergradient methods checked, as in the integration tests.
pub(super) fn methods() -> Vec<(&'static str, Method)> {
    vec![
        ("rad", Method::Rad),
        ("trad", Method::Trad { k: 5 }),
        ("forward", Method::Forward),
        // Damped: the small cleaning Hessian has eigenvalues down to ~1e-2 (and the
        // softmax bias an all-ones direction with none), so undamped CG amplifies f32
        // rounding past the tolerance on the CPU in f32 just as on a GPU.
        (
            "cg",
            Method::Cg {
                iters: 10,
                tol: None,
                damping: 0.1,
            },
        ),
        ("neumann", Method::Neumann { k: 10, eta: 0.5 }),
        ("fixed_point", Method::FixedPoint { k: 10, eta: 0.5 }),
        (
            "one_step_exact",
            Method::OneStep {
                xi: 0.5,
                exact: true,
            },
        ),
        (
            "one_step_fd",
            Method::OneStep {
                xi: 0.5,
                exact: false,
            },
        ),
        ("exact", Method::Exact),
        ("bda", Method::Bda(crate::bilevel::methods::Bda::default())),
    ]
}

fn hypergrad_of(p: &dyn Problem, lambda: &Tensor, method: Method) -> Result<Vec<Tensor>> {
    let inner = Inner {
        optimizer: InnerOptimizer::Gd { lr: 0.2 },
        steps: 12,
    };
    Ok(hypergradient(p, std::slice::from_ref(lambda), &inner, &method)?.grad)
}

pub(super) fn hypergradient_checks(v: &mut Vec<Check>) {
    let tol = HYPERGRADIENT_TOL;
    let ridge_lambda = Values(vec![5], (0..5).map(|j| -0.5 + 0.25 * j as f32).collect());
    let cleaning_lambda = Values(
        vec![30],
        (0..30).map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6).collect(),
    );
    for (name, m) in methods() {
        v.push(Check::new(
            format!("hypergrad/ridge/{name}"),
            tol,
            vec![ridge_lambda.clone()],
            move |t| {
                let p = Ridge::synthetic(40, 30, 5, 3, &t[0].device(), t[0].dtype())?;
                hypergrad_of(&p, &t[0], m)
            },
        ));
    }
    for (name, m) in methods() {
        if m == Method::Exact {
            // Hyper-cleaning has no closed-form inner solution.
            continue;
        }
        v.push(Check::new(
            format!("hypergrad/cleaning/{name}"),
            tol,
            vec![cleaning_lambda.clone()],
            move |t| {
                let (x, y) = synthetic_classification(90, 6, 3, 2.0, 5);
                let data = cleaning_split(&x, &y, 3, 30, 30, 0.3, 1)?;
                let p = HyperCleaning::new(&data, 1e-2, &t[0].device(), t[0].dtype())?;
                hypergrad_of(&p, &t[0], m)
            },
        ));
    }
}
