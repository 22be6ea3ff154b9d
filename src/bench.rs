//! The benchmark suite behind `blo bench`: kernel throughput, dispatch overhead,
//! second-order autodiff and whole hypergradients, each also expressed as a fraction
//! of the device's own measured ceilings, with a JSON format and a side-by-side
//! comparison of several result files (one per adapter or vendor).
//!
//! ```no_run
//! use blo::{Device, bench};
//! # fn main() -> blo::Result<()> {
//! let config = bench::Config::quick();
//! let report = bench::run(&Device::cpu(), &config, |r| println!("{}", r.name))?;
//! println!("{}", bench::table(&report));
//! std::fs::write("cpu.json", bench::to_json(&report)?).unwrap();
//! # Ok(()) }
//! ```
//!
//! Conventions: GB/s counts bytes read plus bytes written once each (an `add` of n
//! f32 moves 12n bytes, a copy 8n); GFLOP/s counts a multiply-add as two operations.
//! Every time is the median of several repeats after one warm-up run, with a device
//! sync before and after each repeat, so GPU numbers include execution, not just
//! recording. The two ceilings are the exception: their throughput comes from the
//! fastest repeat, and they are measured before and after the suite with the better
//! kept, since a ceiling is the best the device can do.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::autodiff::HvpOperator;
use crate::bilevel::{Inner, InnerOptimizer, Method, Problem, hypergradient};
use crate::device::{AdapterInfo, Device, Kernel};
use crate::error::{Error, Result, invalid};
use crate::problems::data::{cleaning_split, digits};
use crate::problems::{HyperCleaning, Ridge};
use crate::shaders;
use crate::solvers::{CgOptions, conjugate_gradient};
use crate::tensor::{DType, Tensor};

/// One benchmark result. Serialised exactly as `blo bench --json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What was measured, e.g. `matmul`, `add`, `hypergrad_ridge_rad`.
    pub name: String,
    /// The problem size; its meaning per name is listed in the README
    /// (matmul: `[m, k, n]`; elementwise and reductions: `[elements]`; ...).
    pub size: Vec<usize>,
    /// The device it ran on, as [`Device`]'s `Display` prints it.
    pub device: String,
    /// Median wall time of one run, in milliseconds.
    pub median_ms: f64,
    /// Arithmetic throughput, where the operation count is known.
    pub gflops: Option<f64>,
    /// Memory throughput (bytes read + bytes written), for memory-bound kernels.
    pub gbps: Option<f64>,
    /// `gflops` over the device's FMA ceiling, or `gbps` over its copy ceiling.
    #[serde(default)]
    pub fraction_of_ceiling: Option<f64>,
    /// Microseconds per elementary operation, for records that time a chain of them
    /// (`dispatch_overhead`: per kernel; `cg_iteration_mlp`: per CG iteration;
    /// ceilings: per FMA dispatch or per copy).
    #[serde(default)]
    pub per_op_us: Option<f64>,
    /// Timed repeats behind the median.
    #[serde(default)]
    pub repeats: usize,
    /// Fastest repeat, in milliseconds (with `max_ms`, a view of the noise).
    #[serde(default)]
    pub min_ms: f64,
    /// Slowest repeat, in milliseconds.
    #[serde(default)]
    pub max_ms: f64,
}

/// The adapter (or CPU) a report was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRecord {
    /// The adapter; for the CPU backend the CPU's model name, backend `cpu`, device type
    /// `Cpu` and the threads it uses. Flattened: the JSON keeps one flat object.
    #[serde(flatten)]
    pub info: AdapterInfo,
    /// The vendor's name when the id is a known one, e.g. `NVIDIA`, `AMD`, `Mesa`.
    pub vendor_name: String,
}

/// The device's own ceilings that results are expressed against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Peak arithmetic throughput measured with independent FMA chains on registers.
    pub gflops: f64,
    /// Peak memory throughput of a buffer-to-buffer copy (read + write).
    pub gbps: f64,
}

/// A whole benchmark run: what ran where, and the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// blo's version (`CARGO_PKG_VERSION`).
    pub blo_version: String,
    /// Short git commit the binary was built from, or `unknown`.
    pub git_commit: String,
    /// When the run started, UTC, ISO 8601.
    pub date: String,
    /// Whether the small `--quick` sizes were used.
    pub quick: bool,
    /// The device the results are for.
    pub device: String,
    /// Details of its adapter.
    pub adapter: AdapterRecord,
    /// Host OS, architecture and hardware threads.
    pub host: String,
    /// The ceilings measured in this run.
    pub ceilings: Ceilings,
    /// One record per result, ceilings included.
    pub results: Vec<Record>,
    /// Results that could not run on this device because they exceed one of its
    /// limits (e.g. a 64 MiB buffer on an adapter with a smaller binding limit).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

/// A result left out because the device's limits do not allow it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// The result's name.
    pub name: String,
    /// Its size.
    pub size: Vec<usize>,
    /// The error that stopped it.
    pub reason: String,
}

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
        }
    }
}

/// blo's version and the git commit the library was built from (captured by
/// `build.rs`; `unknown` outside a git checkout).
pub fn build_info() -> (&'static str, &'static str) {
    (
        env!("CARGO_PKG_VERSION"),
        option_env!("BLO_GIT_COMMIT").unwrap_or("unknown"),
    )
}

/// Human name of a PCI vendor id, for the ids of common GPU vendors.
pub fn vendor_name(id: u32) -> &'static str {
    match id {
        0x1002 | 0x1022 => "AMD",
        0x10de => "NVIDIA",
        0x8086 => "Intel",
        0x106b => "Apple",
        0x13b5 => "ARM",
        0x5143 => "Qualcomm",
        0x1010 => "Imagination",
        0x14e4 => "Broadcom",
        0x1414 => "Microsoft",
        0x10005 => "Mesa",
        _ => "unknown",
    }
}

/// Describes the device's adapter; for the CPU backend, the host CPU.
pub fn adapter_record(device: &Device) -> AdapterRecord {
    let info = match device {
        Device::Gpu(ctx) => ctx.info().clone(),
        Device::Cpu => AdapterInfo {
            name: cpu_model(),
            vendor: 0,
            backend: "cpu".to_string(),
            device_type: "Cpu".to_string(),
            driver: "blo CPU backend".to_string(),
            driver_info: format!("{} threads", crate::ops::cpu_pair::cores()),
        },
    };
    AdapterRecord {
        vendor_name: vendor_name(info.vendor).to_string(),
        info,
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU's model name from /proc/cpuinfo (Linux), else the architecture.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH))
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as ISO 8601 UTC (H. Hinnant's civil-from-days).
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Runs the suite on `device`, calling `on_record` as each result arrives (for
/// progress output; the ceilings arrive twice, before and after the suite, and the
/// report's fractions use the better of each). A result that exceeds a limit of the device
/// ([`crate::Error::TooLarge`]) is listed in [`Report::skipped`]; any other error
/// stops the run.
pub fn run(device: &Device, config: &Config, mut on_record: impl FnMut(&Record)) -> Result<Report> {
    if config.min_repeats == 0 || config.max_repeats < config.min_repeats {
        return Err(invalid(
            "bench",
            format!(
                "need 1 ≤ min_repeats ≤ max_repeats, got {} and {}",
                config.min_repeats, config.max_repeats
            ),
        ));
    }
    let date = utc_now();
    let mut b = Bencher {
        device: device.clone(),
        config: config.clone(),
        ceilings: Ceilings {
            gflops: f64::NAN,
            gbps: f64::NAN,
        },
        results: Vec::new(),
    };
    let fma = b.ceiling_fma()?;
    on_record(&fma);
    let copy = b.ceiling_copy()?;
    on_record(&copy);
    b.ceilings = ceilings_of(&fma, &copy);
    b.results.push(fma);
    b.results.push(copy);
    let mut skipped = Vec::new();
    for case in suite(config.quick) {
        if let Some(f) = &config.only
            && !case.name().contains(f.as_str())
        {
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
    let fma = b.ceiling_fma()?;
    on_record(&fma);
    let copy = b.ceiling_copy()?;
    on_record(&copy);
    for (i, again) in [fma, copy].into_iter().enumerate() {
        let better = match (again.gflops, b.results[i].gflops) {
            (Some(x), Some(y)) => x > y,
            _ => again.gbps.unwrap_or(0.0) > b.results[i].gbps.unwrap_or(0.0),
        };
        if better {
            b.results[i] = again;
        }
    }
    b.ceilings = ceilings_of(&b.results[0], &b.results[1]);
    for r in &mut b.results[2..] {
        r.fraction_of_ceiling = fraction(r, &b.ceilings);
    }
    let (version, commit) = build_info();
    Ok(Report {
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

fn ceilings_of(fma: &Record, copy: &Record) -> Ceilings {
    Ceilings {
        gflops: fma.gflops.unwrap_or(f64::NAN),
        gbps: copy.gbps.unwrap_or(f64::NAN),
    }
}

/// A result's throughput over the matching ceiling: GFLOP/s over the FMA ceiling
/// where the result has a FLOP count, else GB/s over the copy ceiling.
fn fraction(r: &Record, c: &Ceilings) -> Option<f64> {
    let f = match (r.gflops, r.gbps) {
        (Some(g), _) => g / c.gflops,
        (None, Some(g)) => g / c.gbps,
        _ => return None,
    };
    f.is_finite().then_some(f)
}

/// One benchmark of the suite (the ceilings are measured separately).
#[derive(Debug, Clone, PartialEq)]
enum Case {
    Matmul(usize),
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
        }
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
            Case::Add(n) | Case::Exp(n) | Case::Sum(n) | Case::DispatchOverhead(n) => vec![*n],
            Case::Hvp(s) => s.to_vec(),
            Case::CgIteration(s, k) => {
                let mut v = s.to_vec();
                v.push(*k);
                v
            }
            Case::Ridge(s, t, m) => with_method(s.to_vec(), *t, m),
            Case::Cleaning(s, t, m) => with_method(s.to_vec(), *t, m),
        }
    }
}

/// The suite in order. Sizes follow the README's table.
fn suite(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let mm: &[usize] = if quick {
        &[128, 256]
    } else {
        &[256, 512, 1024, 2048]
    };
    v.extend(mm.iter().map(|&n| Case::Matmul(n)));
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
    v
}

/// Times of one measurement series, in seconds.
struct Timing {
    median: f64,
    min: f64,
    max: f64,
    repeats: usize,
}

struct Bencher {
    device: Device,
    config: Config,
    ceilings: Ceilings,
    results: Vec<Record>,
}

static FMA_CHAIN: Kernel = Kernel {
    shader: &shaders::CEILING,
    entry: "fma_chain",
    reads: 0,
    writes: 1,
};

const FMA_WG: u32 = 64;
/// FLOPs per invocation and loop iteration of `shaders/ceiling.wgsl`: 8 unrolled
/// steps × 4 chains × 4 lanes × 2.
const FMA_FLOPS_PER_ITER: f64 = 8.0 * 4.0 * 4.0 * 2.0;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FmaParams {
    iters: u32,
    _pad: u32,
    m: f32,
    c: f32,
}

impl Bencher {
    /// Warm-up once, then time repeats of `f` with a device sync around each.
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
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
        times.sort_by(f64::total_cmp);
        let mid = times.len() / 2;
        let median = if times.len() % 2 == 1 {
            times[mid]
        } else {
            0.5 * (times[mid - 1] + times[mid])
        };
        Ok(Timing {
            median,
            min: times[0],
            max: times[times.len() - 1],
            repeats,
        })
    }

    fn record(
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
        };
        r.fraction_of_ceiling = fraction(&r, &self.ceilings);
        r
    }

    /// A ceiling's record: its throughput comes from the fastest repeat (a ceiling is
    /// the best the device can do; on a busy machine the median understates it), and
    /// `per_op_us` is the time of one of the `reps` back-to-back units.
    fn ceiling_record(
        &self,
        name: &str,
        size: Vec<usize>,
        t: &Timing,
        reps: usize,
        flops: Option<f64>,
        bytes: Option<f64>,
    ) -> Record {
        let mut r = self.record(name, size, t, None, None);
        r.gflops = flops.map(|f| f / t.min / 1e9);
        r.gbps = bytes.map(|b| b / t.min / 1e9);
        r.per_op_us = Some(t.median * 1e6 / reps as f64);
        r.fraction_of_ceiling = None;
        r
    }

    /// Finds how many back-to-back units of `f(reps)` make one measurement last at
    /// least `target` (doubling from 1, at most 1024), so that sync overhead does not
    /// distort a ceiling on a fast device; returns the repeats and the timing of that
    /// many units.
    fn calibrated(&self, mut f: impl FnMut(usize) -> Result<()>) -> Result<(usize, Timing)> {
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

    fn ceiling_fma(&self) -> Result<Record> {
        match &self.device {
            Device::Gpu(ctx) => {
                let groups: u32 = if self.config.quick { 1024 } else { 4096 };
                let iters: u32 = 64;
                let invocations = u64::from(groups) * u64::from(FMA_WG);
                let out = ctx.alloc(invocations * 4)?;
                let grid = ctx.grid(invocations, u64::from(FMA_WG))?;
                let params = FmaParams {
                    iters,
                    _pad: 0,
                    m: 0.999,
                    c: 1e-3,
                };
                let (reps, t) = self.calibrated(|reps| {
                    for _ in 0..reps {
                        ctx.dispatch(
                            &FMA_CHAIN,
                            &[("WG", f64::from(FMA_WG))],
                            bytemuck::bytes_of(&params),
                            &[&out],
                            grid,
                        )?;
                    }
                    Ok(())
                })?;
                let flops =
                    reps as f64 * invocations as f64 * f64::from(iters) * FMA_FLOPS_PER_ITER;
                Ok(self.ceiling_record(
                    "ceiling_fma",
                    vec![invocations as usize, iters as usize],
                    &t,
                    reps,
                    Some(flops),
                    None,
                ))
            }
            Device::Cpu => {
                let iters = if self.config.quick { 20_000 } else { 100_000 };
                let n = threads();
                let (reps, t) = self.calibrated(|reps| {
                    cpu_fma_threads(n, iters * reps);
                    Ok(())
                })?;
                let flops = (reps * iters * n) as f64 * cpu_fma::flops_per_iter() as f64;
                Ok(self.ceiling_record("ceiling_fma", vec![n, iters], &t, reps, Some(flops), None))
            }
        }
    }

    fn ceiling_copy(&self) -> Result<Record> {
        let mut elems: usize = if self.config.quick { 1 << 22 } else { 1 << 24 };
        if let Some(ctx) = self.device.gpu_context() {
            // Buffers are checked against the binding limit; stay within it.
            let limit = ctx.limits().max_storage_buffer_binding_size / 4;
            while elems as u64 > limit && elems > 1024 {
                elems /= 2;
            }
        }
        let bytes = (elems * 4) as u64;
        match &self.device {
            Device::Gpu(ctx) => {
                let a = ctx.alloc(bytes)?;
                let b = ctx.alloc(bytes)?;
                let (reps, t) = self.calibrated(|reps| {
                    // Alternate directions so each copy reads what the last one wrote.
                    for r in 0..reps {
                        let (src, dst) = if r % 2 == 0 { (&a, &b) } else { (&b, &a) };
                        ctx.copy(src, 0, dst, 0, bytes);
                    }
                    Ok(())
                })?;
                let moved = 2.0 * bytes as f64 * reps as f64;
                Ok(self.ceiling_record("ceiling_copy", vec![elems], &t, reps, None, Some(moved)))
            }
            Device::Cpu => {
                let mut a = vec![1.0f32; elems];
                let mut b = vec![0.0f32; elems];
                let n = threads();
                let (reps, t) = self.calibrated(|reps| {
                    for r in 0..reps {
                        let (src, dst) = if r % 2 == 0 {
                            (&a, &mut b)
                        } else {
                            (&b, &mut a)
                        };
                        parallel_copy(src, dst, n);
                    }
                    Ok(())
                })?;
                let moved = 2.0 * bytes as f64 * reps as f64;
                Ok(self.ceiling_record("ceiling_copy", vec![elems], &t, reps, None, Some(moved)))
            }
        }
    }

    fn run_case(&self, case: &Case) -> Result<Record> {
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
                let t = self.time(|| {
                    let mut y = x.clone();
                    for _ in 0..*chain {
                        y = y.scale_shift(0.5, 0.25)?;
                    }
                    Ok(())
                })?;
                let mut r = rec(&t, None, None);
                r.per_op_us = Some(t.median * 1e6 / *chain as f64);
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
            Case::Ridge([n, m, d], steps, method) => {
                let p = Ridge::synthetic(*n, *m, *d, 1, dev, DType::F32)?;
                let lambda = vec![Tensor::zeros(&[*d], dev)?];
                self.time_hypergradient(&p, &lambda, 0.3, *steps, method.method())
                    .map(|t| rec(&t, None, None))
            }
            Case::Cleaning([n_train, n_val], steps, method) => {
                let (x, y) = digits();
                let data = cleaning_split(&x, &y, 10, *n_train, *n_val, 0.5, 0)?;
                let p = HyperCleaning::new(&data, 1e-3, dev, DType::F32)?;
                let lambda = vec![Tensor::zeros(&[*n_train], dev)?];
                self.time_hypergradient(&p, &lambda, 1.0, *steps, method.method())
                    .map(|t| rec(&t, None, None))
            }
        }
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
        self.time(|| hypergradient(p, lambda, &w0, &inner, &method).map(drop))
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

/// Copies `src` into `dst` with `threads` threads, one contiguous chunk each.
fn parallel_copy(src: &[f32], dst: &mut [f32], threads: usize) {
    let chunk = src.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
            s.spawn(move || d.copy_from_slice(c));
        }
    });
}

/// Runs the CPU FMA kernel on `threads` threads at once.
fn cpu_fma_threads(threads: usize, iters: usize) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || std::hint::black_box(cpu_fma::run(iters, t as f32).0));
        }
    });
}

/// The CPU's FMA ceiling: independent chains of fused multiply-adds on registers,
/// compiled for the widest vector unit the CPU reports at run time (AVX-512 or
/// AVX2+FMA on x86-64), since the CPU backend's GEMM also picks its kernel at run time.
mod cpu_fma {
    /// Independent accumulator chains: enough to cover FMA latency (4 cycles) times
    /// issue width (2 per cycle) on current cores.
    const CHAINS: usize = 12;

    /// Portable fallback: 8-lane arrays the compiler may vectorise. Without detected
    /// FMA hardware `mul_add` would call a slow libm routine, so this multiplies and
    /// adds separately (still counted as 2 FLOPs); aarch64 has FMA in its base set.
    fn portable(iters: usize, seed: f32) -> (f32, usize) {
        const LANES: usize = 8;
        let m = std::hint::black_box(0.999f32);
        let c = std::hint::black_box(1e-3f32);
        let mut acc = [[seed; LANES]; CHAINS];
        for (i, chain) in acc.iter_mut().enumerate() {
            for (j, v) in chain.iter_mut().enumerate() {
                *v += (i * LANES + j) as f32 * 1e-3;
            }
        }
        for _ in 0..iters {
            for chain in acc.iter_mut() {
                for v in chain.iter_mut() {
                    *v = if cfg!(target_arch = "aarch64") {
                        v.mul_add(m, c)
                    } else {
                        *v * m + c
                    };
                }
            }
        }
        (acc.iter().flatten().sum(), CHAINS * LANES * 2)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn avx512(iters: usize, seed: f32) -> (f32, usize) {
        use std::arch::x86_64::*;
        let m = _mm512_set1_ps(std::hint::black_box(0.999));
        let c = _mm512_set1_ps(std::hint::black_box(1e-3));
        let mut acc: [__m512; CHAINS] =
            std::array::from_fn(|i| _mm512_set1_ps(seed + i as f32 * 1e-3));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        let total = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
        (_mm512_reduce_add_ps(total), CHAINS * 16 * 2)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn avx2(iters: usize, seed: f32) -> (f32, usize) {
        use std::arch::x86_64::*;
        let m = _mm256_set1_ps(std::hint::black_box(0.999));
        let c = _mm256_set1_ps(std::hint::black_box(1e-3));
        let mut acc: [__m256; CHAINS] =
            std::array::from_fn(|i| _mm256_set1_ps(seed + i as f32 * 1e-3));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let mut lanes = [0.0f32; 8];
        let total = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
        // SAFETY: `lanes` holds exactly the 8 f32 an unaligned store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        (lanes.iter().sum(), CHAINS * 8 * 2)
    }

    /// Runs `iters` iterations and returns a value that depends on all of them, and
    /// the FLOPs one iteration performs on this CPU.
    pub(super) fn run(iters: usize, seed: f32) -> (f32, usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected on this CPU just above.
                return unsafe { avx512(iters, seed) };
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { avx2(iters, seed) };
            }
        }
        portable(iters, seed)
    }

    /// FLOPs per iteration of [`run`] on this CPU.
    pub(super) fn flops_per_iter() -> usize {
        run(0, 0.0).1
    }
}

/// Serialises a report as pretty JSON (the `--json` format).
pub fn to_json(report: &Report) -> Result<String> {
    serde_json::to_string_pretty(report).map_err(|e| invalid("bench json", e.to_string()))
}

/// Parses a report written by [`to_json`]; the error names the problem and the path.
pub fn from_json(text: &str, path: &str) -> Result<Report> {
    serde_json::from_str(text).map_err(|e| {
        invalid(
            "bench --compare",
            format!(
                "{path} is not a blo bench JSON file ({e}); write one with `blo bench --json FILE`"
            ),
        )
    })
}

/// Reads and parses a report file.
pub fn load(path: &std::path::Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            "bench --compare",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    from_json(&text, &path.display().to_string())
}

/// A ratio with three significant digits (0.0123×, 0.123×, 1.23×, 12.3×).
fn ratio_str(x: f64) -> String {
    let decimals = (2 - x.abs().log10().floor() as i64).clamp(0, 6) as usize;
    format!("{x:.decimals$}×")
}

/// What [`compare`] matches results by: name and size, or the name alone for the
/// ceilings.
fn compare_key(r: &Record) -> (String, Vec<usize>) {
    if r.name.starts_with("ceiling_") {
        (r.name.clone(), Vec::new())
    } else {
        (r.name.clone(), r.size.clone())
    }
}

fn size_str(size: &[usize]) -> String {
    size.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

/// The record's headline number with its unit: GFLOP/s, else GB/s, else µs per op,
/// else milliseconds.
fn headline(r: &Record) -> String {
    if let Some(g) = r.gflops {
        format!("{g:.2} GFLOP/s")
    } else if let Some(g) = r.gbps {
        format!("{g:.2} GB/s")
    } else if let Some(u) = r.per_op_us {
        format!("{u:.1} µs/op")
    } else {
        format!("{:.2} ms", r.median_ms)
    }
}

/// How much faster `r` is than `base` (> 1: faster): a throughput ratio where there
/// is a throughput, else the inverse ratio of times.
fn speedup(r: &Record, base: &Record) -> Option<f64> {
    let ratio = match (r.gflops, base.gflops, r.gbps, base.gbps) {
        (Some(a), Some(b), _, _) => a / b,
        (_, _, Some(a), Some(b)) => a / b,
        _ => base.median_ms / r.median_ms,
    };
    ratio.is_finite().then_some(ratio)
}

/// A plain-text table of one report (what `blo bench` prints).
pub fn table(report: &Report) -> String {
    let mut s = format!(
        "blo {} ({}) on {} [{} {}, driver {} {}], {}\n",
        report.blo_version,
        report.git_commit,
        report.adapter.info.name,
        report.adapter.info.backend,
        report.adapter.info.device_type,
        report.adapter.info.driver,
        report.adapter.info.driver_info,
        report.date
    );
    s += &format!(
        "ceilings: {:.1} GFLOP/s (FMA chains), {:.1} GB/s (copy, read + write)\n",
        report.ceilings.gflops, report.ceilings.gbps
    );
    s += &format!(
        "{:<24} {:<18} {:>11} {:>11} {:>10} {:>10} {:>9}\n",
        "result", "size", "median ms", "GFLOP/s", "GB/s", "µs/op", "% ceiling"
    );
    for r in &report.results {
        s += &row(r);
    }
    s
}

/// One row of [`table`] (also printed as results arrive).
pub fn row(r: &Record) -> String {
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |x| format!("{x:.prec$}"));
    format!(
        "{:<24} {:<18} {:>11.3} {:>11} {:>10} {:>10} {:>9}\n",
        r.name,
        size_str(&r.size),
        r.median_ms,
        opt(r.gflops, 2),
        opt(r.gbps, 2),
        opt(r.per_op_us, 1),
        opt(r.fraction_of_ceiling.map(|f| 100.0 * f), 1),
    )
}

/// One side-by-side table of several reports, matched by (name, size), with each
/// result's speed relative to the first report (> 1 is faster; throughput ratio where
/// there is one, else inverse time ratio) and, after each throughput, its percentage
/// of that device's ceiling. The ceilings themselves match by name alone (their sizes
/// depend on the device). Missing results are shown as `-`.
pub fn compare(reports: &[(String, Report)]) -> String {
    let mut keys: Vec<(String, Vec<usize>)> = Vec::new();
    for (_, rep) in reports {
        for r in &rep.results {
            let k = compare_key(r);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut s = String::new();
    for (i, (label, rep)) in reports.iter().enumerate() {
        s += &format!(
            "[{}] {label}: {} [{} {}, driver {} {}], blo {} ({}), {}; ceilings {:.1} GFLOP/s, {:.1} GB/s\n",
            i + 1,
            rep.adapter.info.name,
            rep.adapter.info.backend,
            rep.adapter.info.device_type,
            rep.adapter.info.driver,
            rep.adapter.info.driver_info,
            rep.blo_version,
            rep.git_commit,
            rep.date,
            rep.ceilings.gflops,
            rep.ceilings.gbps,
        );
    }
    const W: usize = 22;
    s += &format!("{:<24} {:<18}", "result", "size");
    for i in 0..reports.len() {
        s += &format!(" {:>W$}", format!("[{}]", i + 1));
        if i > 0 {
            s += &format!(" {:>8}", format!("[{}]/[1]", i + 1));
        }
    }
    s.push('\n');
    for key in &keys {
        let size = if key.1.is_empty() {
            "own".to_string()
        } else {
            size_str(&key.1)
        };
        s += &format!("{:<24} {:<18}", key.0, size);
        let find = |rep: &Report| rep.results.iter().find(|r| &compare_key(r) == key).cloned();
        let base = find(&reports[0].1);
        for (i, (_, rep)) in reports.iter().enumerate() {
            let r = find(rep);
            let cell = r
                .as_ref()
                .map_or("-".to_string(), |r| match r.fraction_of_ceiling {
                    Some(f) => format!("{} {:>3.0}%", headline(r), 100.0 * f),
                    None => headline(r),
                });
            s += &format!(" {cell:>W$}");
            if i > 0 {
                let ratio = match (&r, &base) {
                    (Some(r), Some(b)) => speedup(r, b),
                    _ => None,
                };
                s += &format!(" {:>8}", ratio.map_or("-".to_string(), ratio_str));
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

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

    #[test]
    fn cpu_fma_runs_and_depends_on_iterations() {
        let (a, flops) = cpu_fma::run(10, 0.0);
        let (b, _) = cpu_fma::run(11, 0.0);
        assert!(flops >= 16);
        assert!(a.is_finite() && b.is_finite() && a != b);
    }

    #[test]
    fn compare_matches_by_name_and_size() {
        let rec = |name: &str, size: Vec<usize>, ms: f64, gflops: Option<f64>| Record {
            name: name.into(),
            size,
            device: "cpu".into(),
            median_ms: ms,
            gflops,
            gbps: None,
            fraction_of_ceiling: None,
            per_op_us: None,
            repeats: 3,
            min_ms: ms,
            max_ms: ms,
        };
        let report = |results| Report {
            blo_version: "0".into(),
            git_commit: "x".into(),
            date: "d".into(),
            quick: true,
            device: "cpu".into(),
            adapter: adapter_record(&Device::Cpu),
            host: "h".into(),
            ceilings: Ceilings {
                gflops: 1.0,
                gbps: 1.0,
            },
            results,
            skipped: Vec::new(),
        };
        let a = report(vec![
            rec("matmul", vec![2, 2, 2], 1.0, Some(10.0)),
            rec("hvp_mlp", vec![1], 4.0, None),
        ]);
        let b = report(vec![
            rec("hvp_mlp", vec![1], 2.0, None),
            rec("only_b", vec![3], 1.0, None),
            rec("matmul", vec![2, 2, 2], 0.5, Some(20.0)),
        ]);
        let t = compare(&[("a".into(), a), ("b".into(), b)]);
        let line = |name: &str| t.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        assert!(line("matmul").contains("2.00×"), "{t}");
        assert!(line("hvp_mlp").contains("2.00×"), "{t}");
        assert_eq!(ratio_str(0.012345), "0.0123×");
        assert_eq!(ratio_str(12.345), "12.3×");
        let only_b = line("only_b");
        assert!(only_b.contains(" - "), "{t}");
    }
}
