//! The results of a run as `blo bench --json` writes them (the JSON schema is these
//! types' serde form), the table `blo bench` prints and the side-by-side table of
//! `blo bench --compare`.

use serde::{Deserialize, Serialize};

use blo::{AdapterInfo, Error, GpuProfile, Result};

fn invalid(op: &'static str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op,
        msg: msg.into(),
    }
}

/// One benchmark result. Serialised exactly as `blo bench --json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What was measured, e.g. `matmul`, `add`, `hypergrad_ridge_rad`.
    pub name: String,
    /// The problem size; its meaning per name is listed in the README
    /// (matmul: `[m, k, n]`; elementwise and reductions: `[elements]`; ...).
    pub size: Vec<usize>,
    /// The device it ran on, as [`blo::Device`]'s `Display` prints it.
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
    /// With `--profile` on a GPU: the median of three more runs, recorded per kernel (dispatch counts,
    /// and device times where the adapter has timestamps). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<GpuProfile>,
    /// `dispatches_*` results (GPU only): dispatches per step of a hypergradient's
    /// parts, with fusion on and off. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_counts: Option<DispatchCounts>,
    /// `dispatch_overhead` on a GPU: host microseconds to record one dispatch of the
    /// chain (the median time of the loop of calls alone, without its final sync, over
    /// the chain's length). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_us_per_dispatch: Option<f64>,
    /// `meta_*` results: tasks per second (the batch's tasks over the median time of one
    /// meta-gradient step). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_per_s: Option<f64>,
    /// `meta_*` results on a GPU: dispatches of one meta-gradient step (the same for
    /// every number of tasks). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatches_per_step: Option<u64>,
}

/// Dispatches per step of each part of a hypergradient, counted by difference: a run
/// with T steps (or K + 1 CG iterations) minus the same run with none (or one), over T
/// (or K). Fractional where a part's dispatches are not the same every step (a batch
/// of fused ops that flushes every other step, say).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepDispatches {
    /// Per inner gradient-descent step.
    pub gd_step: f64,
    /// Per iteration of the `cg` method's conjugate-gradient solve.
    pub cg_iteration: f64,
    /// Per step of `rad`: its forward step and its reverse step together.
    pub rad_step: f64,
}

/// [`StepDispatches`] with elementwise fusion on and off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DispatchCounts {
    /// Fusion on (`GpuContext::set_fusion(true)`).
    pub fused: StepDispatches,
    /// Fusion off: every elementwise op and reduction is a dispatch of its own.
    pub unfused: StepDispatches,
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
    /// Microseconds per dispatch of a chain of tiny dependent dispatches recorded with
    /// wgpu alone (one compute pass, one bind group): the floor under blo's
    /// `dispatch_overhead`. GPU devices only; absent from files written before it was
    /// measured.
    #[serde(default)]
    pub dispatch_us: Option<f64>,
}

/// A whole benchmark run: what ran where, and the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
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
    /// limits (e.g. a 64 MiB buffer on an adapter with a smaller binding limit) or
    /// need a GPU device (the dispatch counts, on the CPU backend).
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

/// The ceilings that `records` (the ceiling records `ceiling_fma`, `ceiling_copy` and,
/// on a GPU, `ceiling_dispatch`) hold; NaN or `None` for one that is missing.
pub fn ceilings_of(records: &[Record]) -> Ceilings {
    let find = |name: &str| records.iter().find(|r| r.name == name);
    Ceilings {
        gflops: find("ceiling_fma")
            .and_then(|r| r.gflops)
            .unwrap_or(f64::NAN),
        gbps: find("ceiling_copy")
            .and_then(|r| r.gbps)
            .unwrap_or(f64::NAN),
        dispatch_us: find("ceiling_dispatch").and_then(|r| r.per_op_us),
    }
}

/// Whether the ceiling record `a` is better than `b`, a measurement of the same ceiling:
/// more throughput, or for the dispatch floor less time per dispatch.
pub fn better_ceiling(a: &Record, b: &Record) -> bool {
    match (a.gflops, b.gflops, a.gbps, b.gbps) {
        (Some(x), Some(y), _, _) => x > y,
        (_, _, Some(x), Some(y)) => x > y,
        _ => a.per_op_us.unwrap_or(f64::INFINITY) < b.per_op_us.unwrap_or(f64::INFINITY),
    }
}

/// A result's throughput over the matching ceiling: GFLOP/s over the FMA ceiling
/// where the result has a FLOP count, else GB/s over the copy ceiling; for
/// `dispatch_overhead`, the raw wgpu floor's time per dispatch over blo's (1 would be
/// as fast as wgpu alone).
pub fn fraction(r: &Record, c: &Ceilings) -> Option<f64> {
    let f = match (r.gflops, r.gbps) {
        (Some(g), _) => g / c.gflops,
        (None, Some(g)) => g / c.gbps,
        _ if r.name == "dispatch_overhead" => c.dispatch_us? / r.per_op_us?,
        _ => return None,
    };
    f.is_finite().then_some(f)
}

/// Serialises a report as pretty JSON (the `--json` format).
pub fn to_json(report: &BenchReport) -> Result<String> {
    serde_json::to_string_pretty(report).map_err(|e| invalid("bench json", e.to_string()))
}

/// Parses a report written by [`to_json`]; the error names the problem and the path.
pub fn from_json(text: &str, path: &str) -> Result<BenchReport> {
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
pub fn load(path: &std::path::Path) -> Result<BenchReport> {
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

/// The record's headline number with its unit: GFLOP/s, else GB/s, else the fused
/// dispatches per GD step, CG iteration and RAD step, else µs per op, else milliseconds.
fn headline(r: &Record) -> String {
    if let Some(d) = &r.dispatch_counts {
        let f = &d.fused;
        format!(
            "{:.1}/{:.1}/{:.1} fused",
            f.gd_step, f.cg_iteration, f.rad_step
        )
    } else if let Some(g) = r.gflops {
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
/// is a throughput, the inverse ratio of fused dispatches per GD step, CG iteration and
/// RAD step together for dispatch counts, else the inverse ratio of times.
fn speedup(r: &Record, base: &Record) -> Option<f64> {
    let per_step = |d: &DispatchCounts| d.fused.gd_step + d.fused.cg_iteration + d.fused.rad_step;
    let ratio = match (r.gflops, base.gflops, r.gbps, base.gbps) {
        (Some(a), Some(b), _, _) => a / b,
        (_, _, Some(a), Some(b)) => a / b,
        _ => match (&r.dispatch_counts, &base.dispatch_counts) {
            (Some(a), Some(b)) => per_step(b) / per_step(a),
            _ => base.median_ms / r.median_ms,
        },
    };
    ratio.is_finite().then_some(ratio)
}

/// A plain-text table of one report (what `blo bench` prints).
pub fn table(report: &BenchReport) -> String {
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
        "ceilings: {:.1} GFLOP/s (FMA chains), {:.1} GB/s (copy, read + write){}\n",
        report.ceilings.gflops,
        report.ceilings.gbps,
        dispatch_floor_str(&report.ceilings)
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

/// The dispatch floor as the ceilings' line ends, or nothing where there is none.
fn dispatch_floor_str(c: &Ceilings) -> String {
    c.dispatch_us.map_or(String::new(), |us| {
        format!(", {us:.1} µs per dispatch (raw wgpu chain)")
    })
}

/// The lines under a row: its profile, its dispatches per step and its host time per
/// recorded dispatch, those it has; empty when it has none of them.
pub fn notes(r: &Record) -> String {
    let mut s = profile_line(r);
    if let Some(d) = &r.dispatch_counts {
        let (f, u) = (&d.fused, &d.unfused);
        s += &format!(
            "    └ dispatches fused / unfused: per inner GD step {:.1} / {:.1}, per CG iteration {:.1} / {:.1}, per RAD step (forward + reverse) {:.1} / {:.1}\n",
            f.gd_step, u.gd_step, f.cg_iteration, u.cg_iteration, f.rad_step, u.rad_step
        );
    }
    if let Some(t) = r.tasks_per_s {
        s += &format!("    └ {t:.0} tasks/s");
        if let Some(d) = r.dispatches_per_step {
            s += &format!(", {d} dispatches per meta-gradient step");
        }
        s += "\n";
    }
    if let Some(us) = r.host_us_per_dispatch {
        s += &format!("    └ host {us:.1} µs per recorded dispatch (the calls alone, no sync)\n");
    }
    s
}

/// The profile line under a row: the profiled run's device time and dispatches, then
/// each family's share; empty without a profile.
fn profile_line(r: &Record) -> String {
    let Some(p) = r.profile.as_ref().filter(|p| p.dispatches() > 0) else {
        return String::new();
    };
    let families: Vec<String> = p
        .by_family()
        .iter()
        .map(|f| match f.gpu_ms {
            Some(ms) => format!("{} {:.3} ms/{}", f.family, ms, f.dispatches),
            None => format!("{} ×{}", f.family, f.dispatches),
        })
        .collect();
    format!(
        "    └ {} in {} dispatch{}: {}\n",
        p.gpu_ms()
            .map_or("no GPU timestamps".into(), |ms| format!("GPU {ms:.3} ms")),
        p.dispatches(),
        if p.dispatches() == 1 { "" } else { "es" },
        families.join(", ")
    )
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
    ) + &notes(r)
}

/// One side-by-side table of several reports, matched by (name, size), with each
/// result's speed relative to the first report (> 1 is faster; throughput ratio where
/// there is one, else inverse time ratio) and, after each throughput, its percentage
/// of that device's ceiling. The ceilings themselves match by name alone (their sizes
/// depend on the device). Missing results are shown as `-`.
pub fn compare(reports: &[(String, BenchReport)]) -> String {
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
    // Names, labels and adapter strings come from files: control characters (terminal
    // escapes) are shown escaped, never sent to the terminal.
    let clean = |t: &str| -> String {
        t.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    };
    for (i, (label, rep)) in reports.iter().enumerate() {
        s += &format!(
            "[{}] {}: {} [{} {}, driver {} {}], blo {} ({}), {}; ceilings {:.1} GFLOP/s, {:.1} GB/s{}\n",
            i + 1,
            clean(label),
            clean(&rep.adapter.info.name),
            clean(&rep.adapter.info.backend),
            clean(&rep.adapter.info.device_type),
            clean(&rep.adapter.info.driver),
            clean(&rep.adapter.info.driver_info),
            clean(&rep.blo_version),
            clean(&rep.git_commit),
            clean(&rep.date),
            rep.ceilings.gflops,
            rep.ceilings.gbps,
            dispatch_floor_str(&rep.ceilings),
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
        s += &format!("{:<24} {:<18}", clean(&key.0), size);
        let find = |rep: &BenchReport| rep.results.iter().find(|r| &compare_key(r) == key).cloned();
        let base = find(&reports[0].1);
        for (i, (_, rep)) in reports.iter().enumerate() {
            let r = find(rep);
            // The fraction is recomputed from the file's own figures and ceilings, not
            // taken from the file (an edited or older file may disagree with itself).
            let cell = r.as_ref().map_or("-".to_string(), |r| {
                let own = if r.name.starts_with("ceiling_") {
                    None
                } else {
                    fraction(r, &rep.ceilings)
                };
                match own {
                    Some(f) => format!("{} {:>3.0}%", headline(r), 100.0 * f),
                    None => headline(r),
                }
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
    use blo::Device;

    use crate::bench::host::adapter_record;

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
            profile: None,
            dispatch_counts: None,
            host_us_per_dispatch: None,
            tasks_per_s: None,
            dispatches_per_step: None,
        };
        let report = |results| BenchReport {
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
                dispatch_us: None,
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

    /// A record without the fields added since (dispatch counts, host time per
    /// dispatch, the dispatch floor) loads; with them, they are printed under the row
    /// and `dispatch_overhead`'s fraction is the floor over its time per dispatch.
    #[test]
    fn dispatch_fields_are_optional_and_printed() {
        let old = r#"{"name": "dispatch_overhead", "size": [1000], "device": "gpu",
            "median_ms": 20.0, "gflops": null, "gbps": null, "fraction_of_ceiling": null,
            "per_op_us": 20.0, "repeats": 3, "min_ms": 19.0, "max_ms": 21.0}"#;
        let mut r: Record = serde_json::from_str(old).unwrap();
        assert_eq!((r.dispatch_counts, r.host_us_per_dispatch), (None, None));
        let old_ceilings: Ceilings =
            serde_json::from_str(r#"{"gflops": 1.0, "gbps": 2.0}"#).unwrap();
        assert_eq!(old_ceilings.dispatch_us, None);
        assert_eq!(fraction(&r, &old_ceilings), None);
        assert_eq!(notes(&r), "");
        let ceilings = Ceilings {
            dispatch_us: Some(5.0),
            ..old_ceilings
        };
        assert_eq!(fraction(&r, &ceilings), Some(0.25));
        r.host_us_per_dispatch = Some(3.5);
        assert!(
            notes(&r).contains("host 3.5 µs per recorded dispatch"),
            "{}",
            notes(&r)
        );
        let step = |gd_step, cg_iteration, rad_step| StepDispatches {
            gd_step,
            cg_iteration,
            rad_step,
        };
        r.name = "dispatches_ridge".into();
        r.host_us_per_dispatch = None;
        r.dispatch_counts = Some(DispatchCounts {
            fused: step(4.0, 9.8, 11.8),
            unfused: step(22.0, 17.0, 61.0),
        });
        let line = notes(&r);
        assert!(
            line.contains("per inner GD step 4.0 / 22.0")
                && line.contains("per CG iteration 9.8 / 17.0")
                && line.contains("per RAD step (forward + reverse) 11.8 / 61.0"),
            "{line}"
        );
        // Round trip: the new fields are written and read back.
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
