//! A CPU meta-gradient's task batch in two halves, one per core.
//!
//! Every method but iMAML is a mean over tasks of terms that never see each other's
//! tasks, so the meta-gradient of a batch is the task-weighted mean of its halves'. On
//! the CPU with two or more cores, [`meta_gradient_with`](super::meta_gradient_with)
//! computes the two halves at once, one per core. Each op has a fixed cost (recording
//! it on the tape, taking its output, the call itself), about 0.4 µs, paid once per op
//! whatever the batch size: about a sixth of a MAML step at B = 32, K = 10. Two halves
//! pay it on both cores at once instead of twice on one, and split the arithmetic too,
//! where RAD's two-thread reverse sweep (which this replaces inside a half) overlapped
//! only the rebuilding of one step with the back-propagation through the next.
//!
//! Whether a call splits depends only on the device, the core count, the method and
//! B, never on timing: a half that finds the second core taken runs on the calling
//! thread, with the same result. The result agrees with the unsplit batch's
//! (`BLO_CPU_THREADS=1`) to rounding: the halves' means are combined at the end
//! instead of one sum over all tasks.
//!
//! iMAML is not split: its B conjugate-gradient systems are solved as one system, with
//! inner products over the whole batch, so two halves would take different CG steps.

use crate::backend::cpu::threads;
use crate::device::Device;
use crate::error::{Result, invalid};

use super::{MetaGradient, MetaMethod, TaskBatch};

/// Whether [`meta_gradient_with`](super::meta_gradient_with) computes `tasks` in two
/// halves: on the CPU with two or more cores, at least two tasks, any method but iMAML,
/// and not already inside a half.
pub(super) fn splits(method: &MetaMethod, tasks: &TaskBatch) -> bool {
    tasks.device().is_cpu()
        && Device::cpu_threads() > 1
        && tasks.tasks() >= 2
        && !matches!(method, MetaMethod::Imaml { .. })
        && !threads::inside_half()
}

/// The meta-gradient of `tasks` from `half(batch, first)` of its two halves, where
/// `batch` holds the tasks `first..first + batch.tasks()` of `tasks`: the halves run
/// at once, one per core ([`threads::in_two`]), and their directions, meta-losses and
/// extra gradients are combined as means weighted by the halves' task counts.
pub(super) fn in_halves(
    tasks: &TaskBatch,
    half: &(dyn Fn(&TaskBatch, usize) -> Result<MetaGradient> + Sync),
) -> Result<MetaGradient> {
    let t0 = std::time::Instant::now();
    let b = tasks.tasks();
    let first = b / 2;
    let parts = [tasks.select(0, first)?, tasks.select(first, b - first)?];
    let [a, c] = threads::in_two(&|i| half(&parts[i], [0, first][i]));
    let mut out = combine(a?, c?, first as f64 / b as f64)?;
    out.wall_time = t0.elapsed();
    Ok(out)
}

/// w·a + (1 − w)·c for the directions, α-gradients, meta-losses and extra gradients of
/// two halves (w: the first half's share of the tasks). Stored bytes add up: the halves
/// hold theirs at the same time (WarpGrad's include an accumulator per half).
fn combine(a: MetaGradient, c: MetaGradient, w: f64) -> Result<MetaGradient> {
    let mean = |x: &crate::Tensor, y: &crate::Tensor| x.axpby(w, 1.0 - w, y);
    let alpha = match (&a.alpha, &c.alpha) {
        (Some(x), Some(y)) => Some(mean(x, y)?),
        (None, None) => None,
        _ => return Err(mismatch("an α-gradient")),
    };
    if a.extra.len() != c.extra.len() || a.inner_steps != c.inner_steps {
        return Err(mismatch("extra gradients or inner steps"));
    }
    let extra = a
        .extra
        .iter()
        .zip(&c.extra)
        .map(|((name, x), (other, y))| {
            if name != other {
                return Err(mismatch("extra gradient names"));
            }
            Ok((*name, mean(x, y)?))
        })
        .collect::<Result<_>>()?;
    Ok(MetaGradient {
        theta: mean(&a.theta, &c.theta)?,
        alpha,
        meta_loss: w * a.meta_loss + (1.0 - w) * c.meta_loss,
        inner_steps: a.inner_steps,
        solver_iterations: a.solver_iterations.max(c.solver_iterations),
        residual: None,
        stored_bytes: a.stored_bytes + c.stored_bytes,
        extra,
        dispatches: None,
        // The caller times the whole split (the halves overlap).
        wall_time: std::time::Duration::ZERO,
    })
}

/// The two halves of one batch came back with different kinds of results: a bug in
/// the method, reported rather than combined.
fn mismatch(what: &str) -> crate::Error {
    invalid(
        "meta-gradient halves",
        format!("the two halves of the task batch returned different {what}; please report this"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::extra_tests::{new_methods, params};
    use super::super::tests::{host, net, sin_tasks};
    use super::super::*;
    use super::splits;
    use crate::device::Device;
    use crate::tensor::DType;
    use crate::testing::assert_close;

    fn m_net() -> Mlp {
        net(Activation::Relu)
    }

    /// Every method that splits gives the same meta-gradient from two halves as from the
    /// whole batch, in f64: θ's direction, α's gradient, each extra gradient, the
    /// meta-loss and the stored bytes. B = 5 splits 2 + 3, so a half weighted ½ instead
    /// of by its task count fails, and MT-Net's halves must get their own tasks' noise
    /// rows (the second half given the first half's fails).
    #[test]
    fn halves_equal_the_whole_batch() {
        let dev = Device::cpu();
        let m = net(Activation::Relu);
        let tasks = sin_tasks(5, 4, 91, &dev, DType::F64);
        let family = [
            MetaMethod::Maml,
            MetaMethod::Fomaml,
            MetaMethod::MetaSgd,
            MetaMethod::Anil,
            MetaMethod::Reptile,
        ];
        for method in family.into_iter().chain(new_methods()) {
            let mut p = params(&method, &m, &dev, DType::F64);
            if method == MetaMethod::MetaSgd {
                let a: Vec<f64> = (0..m.dim())
                    .map(|i| 0.02 + 0.001 * (i % 7) as f64)
                    .collect();
                p.alpha = StepSize::PerParameter(
                    mlp::host_tensor(&a, &[a.len()], &dev, DType::F64).unwrap(),
                );
            }
            let name = method.name();
            let run = |split| meta_gradient_split(&method, &m, &tasks, &p, 2, 5, split).unwrap();
            let (whole, halves) = (run(false), run(true));
            // Only the order of the sums over tasks differs: rounding in f64.
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                assert_close(&host(a), &host(b), 1e-12, 1e-14, &format!("{name} {what}"));
            };
            close(&halves.theta, &whole.theta, "θ");
            match (&halves.alpha, &whole.alpha) {
                (Some(a), Some(b)) => close(a, b, "α"),
                (None, None) => {}
                _ => panic!("{name}: α-gradients differ in presence"),
            }
            assert_eq!(halves.extra.len(), whole.extra.len(), "{name}");
            for ((n, a), (_, b)) in halves.extra.iter().zip(&whole.extra) {
                close(a, b, n);
            }
            assert!(
                (halves.meta_loss - whole.meta_loss).abs() <= 1e-13 * whole.meta_loss.abs(),
                "{name}: meta-loss {} vs {}",
                halves.meta_loss,
                whole.meta_loss
            );
            // Both halves hold their iterates at once, so the bytes add up; WarpGrad's
            // halves each hold an accumulator for ω's gradient as well.
            let accumulators = match method {
                MetaMethod::WarpGrad { .. } => 8 * p.extra[0].numel() as u64,
                _ => 0,
            };
            assert_eq!(
                halves.stored_bytes,
                whole.stored_bytes + accumulators,
                "{name}"
            );
        }
    }

    /// Only CPU batches of two or more tasks split, never iMAML's, never inside a half,
    /// and only with a second core; `meta_gradient_with` takes that route.
    #[test]
    fn which_calls_split() {
        let dev = Device::cpu();
        let two = sin_tasks(2, 3, 1, &dev, DType::F32);
        let one = sin_tasks(1, 3, 1, &dev, DType::F32);
        let cores = Device::cpu_threads() > 1;
        assert_eq!(splits(&MetaMethod::Maml, &two), cores);
        assert!(!splits(&MetaMethod::Maml, &one));
        let imaml = MetaMethod::Imaml {
            lambda: 1.0,
            cg_iters: 3,
        };
        assert!(!splits(&imaml, &two));
        let inside = crate::backend::cpu::threads::in_two(&|_| splits(&MetaMethod::Maml, &two));
        assert_eq!(inside, [false, false], "a half does not split again");
        // The public entry point splits exactly when `splits` says so: bit for bit the
        // split (or unsplit) result.
        let tasks = sin_tasks(4, 3, 2, &dev, DType::F64);
        let p = params(&MetaMethod::Maml, &m_net(), &dev, DType::F64);
        let via = meta_gradient_with(&MetaMethod::Maml, &m_net(), &tasks, &p, 2, 0).unwrap();
        for split in [false, true] {
            let direct =
                meta_gradient_split(&MetaMethod::Maml, &m_net(), &tasks, &p, 2, 0, split).unwrap();
            let same = host(&direct.theta) == host(&via.theta);
            assert_eq!(same, split == cores, "split = {split}, two cores: {cores}");
        }
        if let Some(gpu) = crate::testing::gpu_or_skip() {
            let on_gpu = sin_tasks(2, 3, 1, &gpu, DType::F32);
            assert!(!splits(&MetaMethod::Maml, &on_gpu));
        }
    }
}
