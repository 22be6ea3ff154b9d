//! The suite: what runs, at which sizes, and how each result is timed.

use std::time::{Duration, Instant};

use blo::bilevel::{Inner, InnerOptimizer, Method, Problem, hypergradient_from};
use blo::meta::{Activation, MetaMethod, Mlp as MetaMlp, StepSize, meta_gradient};
use blo::problems::Sinusoid;
use blo::problems::data::{cleaning_split, digits};
use blo::problems::{HyperCleaning, Ridge};
use blo::solvers::{CgOptions, conjugate_gradient};
use blo::{DType, Device, Error, GpuContext, GpuProfile, HvpOperator, Result, Tensor};

use blo::CustomKernel;

use super::ceilings::{copy_kernel, fma_kernel};
use super::host::{adapter_record, build_info, threads, utc_now};
use super::report::{
    BenchReport, Ceilings, DispatchCounts, Record, Skipped, StepDispatches, better_ceiling,
    ceilings_of, fraction,
};

/// What to run and how long to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Small sizes that finish in seconds even on a software adapter.
    pub quick: bool,
    /// Most timed repeats per result.
    pub max_repeats: usize,
    /// Fewest timed repeats per result (slow results stop here).
    pub min_repeats: usize,
    /// Time budget per result: repeats stop at `max_repeats` or once this is spent
    /// (but never below `min_repeats`).
    pub budget: Duration,
    /// Only results whose name contains this substring (all when `None`); the
    /// ceilings always run.
    pub only: Option<String>,
    /// Also run each result once under a per-kernel GPU profile (GPU devices only).
    pub profile: bool,
}

impl Config {
    /// The full suite: matmul up to 2048, 16M-element kernels, the benchmark problems.
    pub fn full() -> Self {
        Self {
            quick: false,
            max_repeats: 10,
            min_repeats: 3,
            budget: Duration::from_secs(2),
            only: None,
            profile: false,
        }
    }

    /// Small sizes and few repeats: seconds on a software adapter (CI runs this).
    pub fn quick() -> Self {
        Self {
            quick: true,
            max_repeats: 5,
            min_repeats: 3,
            budget: Duration::from_millis(300),
            only: None,
            profile: false,
        }
    }
}

/// Runs the suite on `device`, calling `on_record` as each result arrives (for
/// progress output; the ceilings arrive twice, before and after the suite, and the
/// report's fractions use the better of each). A result that exceeds a limit of the device
/// ([`blo::Error::TooLarge`]) is listed in [`BenchReport::skipped`]; any other error
/// stops the run.
pub fn run(
    device: &Device,
    config: &Config,
    mut on_record: impl FnMut(&Record),
) -> Result<BenchReport> {
    if config.min_repeats == 0 || config.max_repeats < config.min_repeats {
        return Err(Error::InvalidArgument {
            op: "bench",
            msg: format!(
                "need 1 ≤ min_repeats ≤ max_repeats, got {} and {}",
                config.min_repeats, config.max_repeats
            ),
        });
    }
    let date = utc_now();
    let mut b = Bencher {
        device: device.clone(),
        config: config.clone(),
        ceilings: Ceilings {
            gflops: f64::NAN,
            gbps: f64::NAN,
            dispatch_us: None,
        },
        results: Vec::new(),
        fma_kernel: fma_kernel()?,
        copy_kernel: copy_kernel()?,
        profile: std::cell::RefCell::new(None),
    };
    let ceilings = b.measure_ceilings(&mut on_record)?;
    let n_ceilings = ceilings.len();
    b.ceilings = ceilings_of(&ceilings);
    b.results = ceilings;
    let mut skipped = Vec::new();
    for case in suite(config.quick) {
        if let Some(f) = &config.only
            && !case.name().contains(f.as_str())
        {
            continue;
        }
        if case.needs_gpu() && device.is_cpu() {
            skipped.push(Skipped {
                name: case.name(),
                size: case.size(),
                reason: "needs a GPU device (the CPU backend has no dispatches)".into(),
            });
            continue;
        }
        match b.run_case(&case) {
            Ok(r) => {
                on_record(&r);
                b.results.push(r);
            }
            Err(e @ Error::TooLarge { .. }) => skipped.push(Skipped {
                name: case.name(),
                size: case.size(),
                reason: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    // Measured again after the suite, keeping the better of the two: on a shared
    // machine a ceiling caught during a busy moment would make later results look
    // like more than 100 % of it.
    for (i, again) in b.measure_ceilings(&mut on_record)?.into_iter().enumerate() {
        if better_ceiling(&again, &b.results[i]) {
            b.results[i] = again;
        }
    }
    b.ceilings = ceilings_of(&b.results[..n_ceilings]);
    for r in &mut b.results[n_ceilings..] {
        r.fraction_of_ceiling = fraction(r, &b.ceilings);
    }
    let (version, commit) = build_info();
    Ok(BenchReport {
        blo_version: version.to_string(),
        git_commit: commit.to_string(),
        date,
        quick: config.quick,
        device: device.to_string(),
        adapter: adapter_record(device),
        host: format!(
            "{} {}, {} threads",
            std::env::consts::OS,
            std::env::consts::ARCH,
            threads()
        ),
        ceilings: b.ceilings,
        results: b.results,
        skipped,
    })
}

/// One benchmark of the suite (the ceilings are measured separately).
#[derive(Debug, Clone, PartialEq)]
enum Case {
    Matmul(usize),
    /// X[m, k]·w (`false`) or Xᵀ·r with the same X (`true`): a matrix–vector product.
    Matvec([usize; 2], bool),
    Add(usize),
    Exp(usize),
    Sum(usize),
    /// A chain of this many dependent tiny kernels.
    DispatchOverhead(usize),
    /// MLP d-h-c on n samples: [n, d, h, c].
    Hvp([usize; 4]),
    /// The same MLP; CG iterations per timed solve.
    CgIteration([usize; 4], usize),
    /// Ridge [n, m, d], inner steps T, and the method.
    Ridge([usize; 3], usize, HyperMethod),
    /// Digits hyper-cleaning [n_train, n_val], inner steps T, and the method.
    Cleaning([usize; 2], usize, HyperMethod),
    /// Dispatches per inner GD step, CG iteration and RAD step of a problem, counted
    /// over T steps and K CG iterations, fused and unfused (GPU only).
    Dispatches(Bilevel, usize, usize),
    /// One meta-gradient step on B sinusoid tasks (K = 10 support and query points,
    /// S = 5 inner steps, MLP 1-40-40-1): the method and B.
    Meta(MetaKind, usize),
}

/// The meta-learning methods benchmarked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MetaKind {
    Maml,
    Fomaml,
    MetaSgd,
}

/// Support (= query) points K, inner steps S and the hidden width of the meta results.
const META_K: usize = 10;
const META_S: usize = 5;
const META_HIDDEN: usize = 40;

/// A benchmark problem of the hypergradient results.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bilevel {
    /// Synthetic ridge [n, m, d].
    Ridge([usize; 3]),
    /// Digits hyper-cleaning [n_train, n_val].
    Cleaning([usize; 2]),
}

impl Bilevel {
    /// The problem, its initial λ and the inner GD step size.
    fn build(self, dev: &Device) -> Result<(Box<dyn Problem>, Vec<Tensor>, f64)> {
        match self {
            Bilevel::Ridge([n, m, d]) => {
                let p = Ridge::synthetic(n, m, d, 1, dev, DType::F32)?;
                Ok((Box::new(p), vec![Tensor::zeros(&[d], dev)?], 0.3))
            }
            Bilevel::Cleaning([n_train, n_val]) => {
                let (x, y) = digits();
                let data = cleaning_split(&x, &y, 10, n_train, n_val, 0.5, 0)?;
                let p = HyperCleaning::new(&data, 1e-3, dev, DType::F32)?;
                Ok((Box::new(p), vec![Tensor::zeros(&[n_train], dev)?], 1.0))
            }
        }
    }

    fn size(self) -> Vec<usize> {
        match self {
            Bilevel::Ridge(s) => s.to_vec(),
            Bilevel::Cleaning(s) => s.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HyperMethod {
    Rad,
    Cg(usize),
}

impl HyperMethod {
    fn method(self) -> Method {
        match self {
            HyperMethod::Rad => Method::Rad,
            HyperMethod::Cg(k) => Method::Cg {
                iters: k,
                tol: None,
                damping: 0.0,
            },
        }
    }
}

impl Case {
    fn name(&self) -> String {
        match self {
            Case::Matmul(_) => "matmul".into(),
            Case::Matvec(_, false) => "matvec".into(),
            Case::Matvec(_, true) => "matvec_t".into(),
            Case::Add(_) => "add".into(),
            Case::Exp(_) => "exp".into(),
            Case::Sum(_) => "sum".into(),
            Case::DispatchOverhead(_) => "dispatch_overhead".into(),
            Case::Hvp(_) => "hvp_mlp".into(),
            Case::CgIteration(..) => "cg_iteration_mlp".into(),
            Case::Ridge(_, _, HyperMethod::Rad) => "hypergrad_ridge_rad".into(),
            Case::Ridge(_, _, HyperMethod::Cg(_)) => "hypergrad_ridge_cg".into(),
            Case::Cleaning(_, _, HyperMethod::Rad) => "hypergrad_cleaning_rad".into(),
            Case::Cleaning(_, _, HyperMethod::Cg(_)) => "hypergrad_cleaning_cg".into(),
            Case::Dispatches(Bilevel::Ridge(_), ..) => "dispatches_ridge".into(),
            Case::Dispatches(Bilevel::Cleaning(_), ..) => "dispatches_cleaning".into(),
            Case::Meta(MetaKind::Maml, _) => "meta_maml".into(),
            Case::Meta(MetaKind::Fomaml, _) => "meta_fomaml".into(),
            Case::Meta(MetaKind::MetaSgd, _) => "meta_meta_sgd".into(),
        }
    }

    /// Whether the case means anything only on a GPU device (elsewhere it is skipped).
    fn needs_gpu(&self) -> bool {
        matches!(self, Case::Dispatches(..))
    }

    fn size(&self) -> Vec<usize> {
        let with_method = |mut v: Vec<usize>, t: usize, m: &HyperMethod| {
            v.push(t);
            if let HyperMethod::Cg(k) = m {
                v.push(*k);
            }
            v
        };
        match self {
            Case::Matmul(n) => vec![*n, *n, *n],
            Case::Matvec(s, _) => s.to_vec(),
            Case::Add(n) | Case::Exp(n) | Case::Sum(n) | Case::DispatchOverhead(n) => vec![*n],
            Case::Hvp(s) => s.to_vec(),
            Case::CgIteration(s, k) => {
                let mut v = s.to_vec();
                v.push(*k);
                v
            }
            Case::Ridge(s, t, m) => with_method(s.to_vec(), *t, m),
            Case::Cleaning(s, t, m) => with_method(s.to_vec(), *t, m),
            Case::Dispatches(p, t, k) => with_method(p.size(), *t, &HyperMethod::Cg(*k)),
            Case::Meta(_, b) => vec![*b, META_K, META_S, META_HIDDEN],
        }
    }
}

/// The names of the suite's results (without the ceilings), each once, in order.
pub fn names(quick: bool) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for case in suite(quick) {
        let n = case.name();
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// The suite in order. Sizes follow the README's table.
fn suite(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let mm: &[usize] = if quick {
        &[128, 256]
    } else {
        &[256, 512, 1024, 2048, 4096]
    };
    v.extend(mm.iter().map(|&n| Case::Matmul(n)));
    v.push(Case::Matvec([2000, 200], false));
    v.push(Case::Matvec([2000, 200], true));
    if !quick {
        v.push(Case::Matvec([20000, 1000], false));
    }
    let big: &[usize] = if quick {
        &[1 << 20]
    } else {
        &[1 << 20, 1 << 24]
    };
    for &n in big {
        v.push(Case::Add(n));
        v.push(Case::Exp(n));
    }
    v.extend(big.iter().map(|&n| Case::Sum(n)));
    v.push(Case::DispatchOverhead(1000));
    let mlp = [256, 64, 32, 10];
    v.push(Case::Hvp(mlp));
    v.push(Case::CgIteration(mlp, 10));
    let (ridge, cleaning, t, k) = if quick {
        ([200, 100, 20], [100, 100], 10, 5)
    } else {
        ([2000, 1000, 200], [500, 500], 100, 20)
    };
    for m in [HyperMethod::Rad, HyperMethod::Cg(k)] {
        v.push(Case::Ridge(ridge, t, m));
    }
    for m in [HyperMethod::Rad, HyperMethod::Cg(k)] {
        v.push(Case::Cleaning(cleaning, t, m));
    }
    v.push(Case::Dispatches(Bilevel::Ridge(ridge), t, k));
    v.push(Case::Dispatches(Bilevel::Cleaning(cleaning), t, k));
    // B = 1 beside 32 shows that a step's dispatches do not depend on the number of tasks.
    let tasks: &[usize] = if quick { &[1, 32] } else { &[1, 32, 1024] };
    for &b in tasks {
        for m in [MetaKind::Maml, MetaKind::Fomaml, MetaKind::MetaSgd] {
            v.push(Case::Meta(m, b));
        }
    }
    v
}

/// Profiled runs per result with `--profile`; the median one is reported.
const PROFILED_RUNS: usize = 3;

/// Times of one measurement series, in seconds.
pub(super) struct Timing {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub repeats: usize,
}

pub(super) struct Bencher {
    pub device: Device,
    pub config: Config,
    pub ceilings: Ceilings,
    pub results: Vec<Record>,
    /// The GPU's FMA-chain kernel (see `ceilings`); it needs no device to exist.
    pub fma_kernel: CustomKernel,
    /// The GPU's copy kernel (see `ceilings`).
    pub copy_kernel: CustomKernel,
    /// The profile of the last timed closure (with `--profile`), until a record takes it.
    pub profile: std::cell::RefCell<Option<GpuProfile>>,
}

impl Bencher {
    /// Measures the ceilings, calling `on_record` with each: FMA, copy and, on a GPU,
    /// the dispatch floor, in that order.
    fn measure_ceilings(&self, mut on_record: impl FnMut(&Record)) -> Result<Vec<Record>> {
        let mut v = vec![self.ceiling_fma()?, self.ceiling_copy()?];
        v.extend(self.ceiling_dispatch()?);
        for r in &v {
            on_record(r);
        }
        Ok(v)
    }

    /// Warm-up once, then time repeats of `f` with a device sync around each.
    pub(super) fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
        let dev = &self.device;
        dev.sync()?;
        let start = Instant::now();
        f()?;
        dev.sync()?;
        let warm = start.elapsed().as_secs_f64();
        let budget = self.config.budget.as_secs_f64();
        let repeats = ((budget / warm.max(1e-9)) as usize)
            .clamp(self.config.min_repeats, self.config.max_repeats);
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            dev.sync()?;
            let t = Instant::now();
            f()?;
            dev.sync()?;
            times.push(t.elapsed().as_secs_f64());
        }
        if self.config.profile
            && let Some(ctx) = dev.gpu_context()
        {
            // Three more runs, profiled: the profile costs host time (a wait per batch)
            // and serialises dispatches, so it stays out of the timed repeats. The run
            // with the median device time is kept (one run alone is noisy).
            let mut profiles = Vec::with_capacity(PROFILED_RUNS);
            for _ in 0..PROFILED_RUNS {
                ctx.start_profile()?;
                let run = f();
                let profile = ctx.finish_profile()?;
                run?;
                profiles.push(profile);
            }
            profiles.sort_by(|a, b| {
                a.gpu_ms()
                    .unwrap_or(0.0)
                    .total_cmp(&b.gpu_ms().unwrap_or(0.0))
            });
            *self.profile.borrow_mut() = Some(profiles.swap_remove(PROFILED_RUNS / 2));
        }
        times.sort_by(f64::total_cmp);
        Ok(Timing {
            median: median_of_sorted(&times),
            min: times[0],
            max: times[times.len() - 1],
            repeats,
        })
    }

    /// The median host time of `f` alone over `max_repeats` runs after a warm-up, in
    /// seconds: the device is idle when each run starts and the sync that waits for the
    /// work `f` submitted is not timed.
    fn host_time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let dev = &self.device;
        let mut times = Vec::with_capacity(self.config.max_repeats);
        for i in 0..=self.config.max_repeats {
            dev.sync()?;
            let t = Instant::now();
            f()?;
            let elapsed = t.elapsed().as_secs_f64();
            dev.sync()?;
            if i > 0 {
                times.push(elapsed);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(median_of_sorted(&times))
    }

    pub(super) fn record(
        &self,
        name: &str,
        size: Vec<usize>,
        t: &Timing,
        flops: Option<f64>,
        bytes: Option<f64>,
    ) -> Record {
        let gflops = flops.map(|f| f / t.median / 1e9);
        let gbps = bytes.map(|b| b / t.median / 1e9);
        let mut r = Record {
            name: name.to_string(),
            size,
            device: self.device.to_string(),
            median_ms: t.median * 1e3,
            gflops,
            gbps,
            fraction_of_ceiling: None,
            per_op_us: None,
            repeats: t.repeats,
            min_ms: t.min * 1e3,
            max_ms: t.max * 1e3,
            profile: self.profile.borrow_mut().take(),
            dispatch_counts: None,
            host_us_per_dispatch: None,
            tasks_per_s: None,
            dispatches_per_step: None,
        };
        r.fraction_of_ceiling = fraction(&r, &self.ceilings);
        r
    }

    /// Finds how many back-to-back units of `f(reps)` make one measurement last at
    /// least `target` (doubling from 1, at most 1024), so that sync overhead does not
    /// distort a ceiling on a fast device; returns the repeats and the timing of that
    /// many units.
    pub(super) fn calibrated(
        &self,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<(usize, Timing)> {
        let target = if self.config.quick { 0.005 } else { 0.02 };
        let mut reps = 1;
        loop {
            let t = self.time(|| f(reps))?;
            if t.median >= target || reps >= 1024 {
                return Ok((reps, t));
            }
            let grow = (target / t.median.max(1e-9)).ceil() as usize;
            reps = (reps * grow.clamp(2, 16)).min(1024);
        }
    }

    fn run_case(&self, case: &Case) -> Result<Record> {
        // The kernel cases time one kernel per op: unfused, since fusion would defer an
        // op whose result is dropped unread and never run it, and would merge the
        // dispatch-overhead chain into a few kernels.
        let kernel_case = matches!(
            case,
            Case::Matmul(_)
                | Case::Matvec(..)
                | Case::Add(_)
                | Case::Exp(_)
                | Case::Sum(_)
                | Case::DispatchOverhead(_)
        );
        let fusion = self.device.gpu_context().map(|c| c.fusion());
        if let (Some(ctx), true) = (self.device.gpu_context(), kernel_case) {
            ctx.set_fusion(false);
        }
        let r = self.run_case_as_set(case);
        if let (Some(ctx), Some(on)) = (self.device.gpu_context(), fusion) {
            ctx.set_fusion(on);
        }
        r
    }

    fn run_case_as_set(&self, case: &Case) -> Result<Record> {
        let dev = &self.device;
        let name = case.name();
        let size = case.size();
        let rec = |t: &Timing, flops: Option<f64>, bytes: Option<f64>| {
            self.record(&name, size.clone(), t, flops, bytes)
        };
        match case {
            Case::Matmul(n) => {
                let a = Tensor::rand_uniform(&[*n, *n], -1.0, 1.0, 1, dev)?;
                let b = Tensor::rand_uniform(&[*n, *n], -1.0, 1.0, 2, dev)?;
                let t = self.time(|| a.matmul(&b).map(drop))?;
                Ok(rec(&t, Some(2.0 * (*n as f64).powi(3)), None))
            }
            Case::Matvec([m, k], trans) => {
                // X·w (w [k, 1]) or Xᵀ·r (r [m, 1]); bytes: the matrix read once.
                let x = Tensor::rand_uniform(&[*m, *k], -1.0, 1.0, 1, dev)?;
                let w =
                    Tensor::rand_uniform(&[if *trans { *m } else { *k }, 1], -1.0, 1.0, 2, dev)?;
                let t = self.time(|| x.matmul_t(&w, *trans, false).map(drop))?;
                Ok(rec(&t, None, Some(4.0 * (*m * *k) as f64)))
            }
            Case::Add(n) => {
                let a = Tensor::rand_uniform(&[*n], -1.0, 1.0, 1, dev)?;
                let b = Tensor::rand_uniform(&[*n], -1.0, 1.0, 2, dev)?;
                let t = self.time(|| a.add(&b).map(drop))?;
                Ok(rec(&t, None, Some(12.0 * *n as f64)))
            }
            Case::Exp(n) => {
                let a = Tensor::rand_uniform(&[*n], -1.0, 1.0, 1, dev)?;
                let t = self.time(|| a.exp().map(drop))?;
                Ok(rec(&t, None, Some(8.0 * *n as f64)))
            }
            Case::Sum(n) => {
                let a = Tensor::rand_uniform(&[*n], -1.0, 1.0, 1, dev)?;
                let t = self.time(|| a.sum().map(drop))?;
                Ok(rec(&t, None, Some(4.0 * *n as f64)))
            }
            Case::DispatchOverhead(chain) => {
                let x = Tensor::rand_uniform(&[64], -1.0, 1.0, 3, dev)?;
                let run = || {
                    let mut y = x.clone();
                    for _ in 0..*chain {
                        y = y.scale_shift(0.5, 0.25)?;
                    }
                    Ok(())
                };
                let t = self.time(run)?;
                let mut r = rec(&t, None, None);
                r.per_op_us = Some(t.median * 1e6 / *chain as f64);
                if !dev.is_cpu() {
                    // What the host spends recording (and submitting, every batch) a
                    // dispatch: the part of `per_op_us` that fewer dispatches save on
                    // any device, however fast its kernels.
                    r.host_us_per_dispatch = Some(self.host_time(run)? * 1e6 / *chain as f64);
                }
                Ok(r)
            }
            Case::Hvp(shape) => {
                let mlp = Mlp::new(*shape, dev)?;
                let t = self.time(|| {
                    let op = HvpOperator::new(&mlp.loss(&mlp.w)?, &[&mlp.w])?;
                    op.hvp1(&mlp.v).map(drop)
                })?;
                Ok(rec(&t, None, None))
            }
            Case::CgIteration(shape, iters) => {
                let mlp = Mlp::new(*shape, dev)?;
                let op = HvpOperator::new(&mlp.loss(&mlp.w)?, &[&mlp.w])?;
                let g = op.gradient().remove(0);
                let opts = CgOptions {
                    max_iters: *iters,
                    ..CgOptions::default()
                };
                let t = self.time(|| conjugate_gradient(|p| op.hvp1(p), &g, &opts).map(drop))?;
                let mut r = rec(&t, None, None);
                r.per_op_us = Some(t.median * 1e6 / *iters as f64);
                Ok(r)
            }
            Case::Ridge(s, steps, method) => {
                let (p, lambda, lr) = Bilevel::Ridge(*s).build(dev)?;
                self.time_hypergradient(p.as_ref(), &lambda, lr, *steps, method.method())
                    .map(|t| rec(&t, None, None))
            }
            Case::Cleaning(s, steps, method) => {
                let (p, lambda, lr) = Bilevel::Cleaning(*s).build(dev)?;
                self.time_hypergradient(p.as_ref(), &lambda, lr, *steps, method.method())
                    .map(|t| rec(&t, None, None))
            }
            Case::Meta(kind, b) => {
                let model = MetaMlp::new(&[1, META_HIDDEN, META_HIDDEN, 1], Activation::Relu)?;
                let tasks = Sinusoid::new(*b, META_K, META_K, 0, dev, DType::F32)?.batch(0)?;
                let theta = model.init(0, dev, DType::F32)?;
                let (method, alpha) = match kind {
                    MetaKind::Maml => (MetaMethod::Maml, StepSize::Scalar(0.01)),
                    MetaKind::Fomaml => (MetaMethod::Fomaml, StepSize::Scalar(0.01)),
                    MetaKind::MetaSgd => (
                        MetaMethod::MetaSgd,
                        StepSize::PerParameter(theta.full_like(0.01)?),
                    ),
                };
                let step = || meta_gradient(&method, &model, &tasks, &theta, &alpha, META_S);
                let t = self.time(|| step().map(drop))?;
                let mut r = rec(&t, None, None);
                r.tasks_per_s = Some(*b as f64 / t.median);
                if dev.gpu_context().is_some() {
                    r.dispatches_per_step = step()?.dispatches;
                }
                Ok(r)
            }
            Case::Dispatches(problem, steps, iters) => {
                let Some(ctx) = dev.gpu_context() else {
                    return Err(Error::InvalidArgument {
                        op: "bench",
                        msg: format!("{name} needs a GPU device"),
                    });
                };
                let (p, lambda, lr) = problem.build(dev)?;
                let start = Instant::now();
                let counts = self.dispatch_counts(ctx, p.as_ref(), &lambda, lr, *steps, *iters)?;
                let elapsed = start.elapsed().as_secs_f64();
                // One measurement: its time is that of all the counting runs.
                let t = Timing {
                    median: elapsed,
                    min: elapsed,
                    max: elapsed,
                    repeats: 1,
                };
                let mut r = rec(&t, None, None);
                r.dispatch_counts = Some(counts);
                Ok(r)
            }
        }
    }

    /// Dispatches per inner GD step (over `steps` steps), per CG iteration (over `iters`)
    /// and per RAD step of `p`, counted by difference, with fusion on and then off. The
    /// caller ([`Self::run_case`]) restores the context's fusion setting.
    fn dispatch_counts(
        &self,
        ctx: &GpuContext,
        p: &dyn Problem,
        lambda: &[Tensor],
        lr: f64,
        steps: usize,
        iters: usize,
    ) -> Result<DispatchCounts> {
        let w0 = p.init_w()?;
        let gd = |steps| Inner {
            optimizer: InnerOptimizer::Gd { lr },
            steps,
        };
        let cg = |iters| Method::Cg {
            iters,
            tol: None,
            damping: 0.0,
        };
        // Dispatches of one hypergradient. Syncs on both sides keep work recorded
        // before it out of the count; what the run leaves deferred and unread (its
        // dropped results) never runs, the same with and without the steps.
        let count = |steps: usize, method: &Method| -> Result<f64> {
            ctx.sync()?;
            let before = ctx.dispatch_count();
            hypergradient_from(p, lambda, &w0, &gd(steps), method).map(drop)?;
            ctx.sync()?;
            Ok((ctx.dispatch_count() - before) as f64)
        };
        let per_step = |fused: bool| -> Result<StepDispatches> {
            ctx.set_fusion(fused);
            // Warm-up: a first use may add dispatches of its own (the autotuner timing
            // matmul variants for a new shape) that would land in one count only.
            count(steps, &cg(iters + 1))?;
            count(steps, &Method::Rad)?;
            let cg1 = count(0, &cg(1))?;
            Ok(StepDispatches {
                gd_step: (count(steps, &cg(1))? - cg1) / steps.max(1) as f64,
                cg_iteration: (count(0, &cg(iters + 1))? - cg1) / iters.max(1) as f64,
                rad_step: (count(steps, &Method::Rad)? - count(0, &Method::Rad)?)
                    / steps.max(1) as f64,
            })
        };
        Ok(DispatchCounts {
            fused: per_step(true)?,
            unfused: per_step(false)?,
        })
    }

    fn time_hypergradient(
        &self,
        p: &dyn Problem,
        lambda: &[Tensor],
        lr: f64,
        steps: usize,
        method: Method,
    ) -> Result<Timing> {
        let w0 = p.init_w()?;
        let inner = Inner {
            optimizer: InnerOptimizer::Gd { lr },
            steps,
        };
        self.time(|| hypergradient_from(p, lambda, &w0, &inner, &method).map(drop))
    }
}

/// The median of sorted, non-empty times.
fn median_of_sorted(times: &[f64]) -> f64 {
    let mid = times.len() / 2;
    if times.len() % 2 == 1 {
        times[mid]
    } else {
        0.5 * (times[mid - 1] + times[mid])
    }
}

/// A d-h-c tanh MLP with a softmax cross-entropy loss on n seeded samples, its flat
/// parameters w and a direction v.
struct Mlp {
    x: Tensor,
    labels: Tensor,
    dims: [usize; 4],
    w: Tensor,
    v: Tensor,
}

impl Mlp {
    fn new(dims: [usize; 4], dev: &Device) -> Result<Self> {
        let [n, d, h, c] = dims;
        let params = d * h + h + h * c + c;
        let labels: Vec<f32> = (0..n).map(|i| (i % c) as f32).collect();
        Ok(Self {
            x: Tensor::rand_normal(&[n, d], 0.0, 1.0, 1, dev)?,
            labels: Tensor::from_vec(labels, &[n], dev)?,
            dims,
            w: Tensor::rand_normal(&[params], 0.0, 0.1, 4, dev)?.requires_grad(),
            v: Tensor::rand_normal(&[params], 0.0, 1.0, 5, dev)?,
        })
    }

    fn loss(&self, w: &Tensor) -> Result<Tensor> {
        let [_, d, h, c] = self.dims;
        let p = w.split(&[d * h, h, h * c, c])?;
        let a = self.x.matmul(&p[0].reshape(&[d, h])?)?.add(&p[1])?.tanh()?;
        a.matmul(&p[2].reshape(&[h, c])?)?
            .add(&p[3])?
            .cross_entropy(&self.labels, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_suite_is_small_and_names_are_unique_per_size() {
        let quick = suite(true);
        assert!(quick.iter().all(|c| match c {
            Case::Matmul(n) => *n <= 256,
            Case::Add(n) | Case::Exp(n) | Case::Sum(n) => *n <= 1 << 20,
            _ => true,
        }));
        for s in [suite(true), suite(false)] {
            let keys: Vec<_> = s.iter().map(|c| (c.name(), c.size())).collect();
            for (i, k) in keys.iter().enumerate() {
                assert!(!keys[..i].contains(k), "duplicate {k:?}");
            }
        }
    }
}
