//! The autotuner: for the tunable families (`matmul`, and `matvec` for narrow products),
//! the first time a *shape class* is
//! used on an adapter, time every variant the adapter can run on the call's own operands
//! and keep the fastest for that class, in memory and in a cache file on disk.
//!
//! - **When.** `BLO_TUNE=off|quick|full` (read when a context opens, or
//!   [`GpuContext::set_tune_mode`]). The default is `quick` on adapters that are not CPUs
//!   and `off` on CPU-type adapters (software rasterisers such as lavapipe, where the
//!   registry's defaults are measured and tuning would only add start-up time). A family
//!   forced with `BLO_KERNELS` or [`GpuContext::force_kernel`] is never tuned, and
//!   products below [`MIN_TUNED_FLOP`] keep the default (launch costs dominate them and
//!   a hypergradient has many such shapes).
//! - **What.** A shape class rounds each dimension up to a power of two (at least 16)
//!   and keeps the transpose flags and whether the product is batched:
//!   `matmul m1024 k1024 n512 ta0 tb1 b1`. Candidates are the family's registered
//!   variants the adapter can run, all of which the registry tests check against the CPU,
//!   so tuning changes speed only, never results beyond f32 rounding.
//! - **How.** Each candidate runs once to compile its pipeline and once timed, so every
//!   one is measured; then up to 3 (quick) or 10 (full) rounds of one more timed run
//!   each, while the class's budget (1 s quick, 10 s full) lasts. A candidate keeps its
//!   fastest run. Runs are timed with GPU timestamps where the adapter has them (and no
//!   profile is open), else with wall time around a sync. A candidate that fails is
//!   skipped. So a class costs at most two runs of every candidate plus the budget. The
//!   measured times are kept with the winner.
//! - **Where.** `<cache dir>/blo/tune-<adapter hash>.json`, the cache dir being
//!   `BLO_CACHE_DIR` if set, else the platform's (`$XDG_CACHE_HOME` or `~/.cache` on
//!   Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows);
//!   [`GpuContext::set_tune_cache`] overrides it. A file is keyed by the adapter's name,
//!   vendor, backend, driver and driver info and blo's version; one that does not parse,
//!   or that belongs to another adapter or version, is ignored with a warning on stderr
//!   (and replaced at the next save). An entry whose candidate list differs from today's
//!   (a variant was added or removed) is tuned again. Writes go through a temporary file
//!   and a rename, so a crash never leaves half a file; a write that fails is a warning,
//!   not an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::context::{AdapterInfo, GpuContext};
use super::registry::{Family, Variant};
use crate::error::{Error, Result};

/// Products below this many flops (2mnk) keep the registry's default variant.
pub(crate) const MIN_TUNED_FLOP: u64 = 1 << 24;

/// The environment variable that sets the tuning mode when a context opens.
pub(crate) const ENV: &str = "BLO_TUNE";

/// How much the autotuner does (see the `tune` module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TuneMode {
    /// Never tune: every family runs its registry default.
    Off,
    /// Three timed runs per candidate, at most about a second per shape class.
    Quick,
    /// Ten timed runs per candidate, at most about ten seconds per shape class.
    Full,
}

impl TuneMode {
    fn reps(self) -> usize {
        match self {
            TuneMode::Off => 0,
            TuneMode::Quick => 3,
            TuneMode::Full => 10,
        }
    }

    fn budget(self) -> Duration {
        match self {
            TuneMode::Off => Duration::ZERO,
            TuneMode::Quick => Duration::from_secs(1),
            TuneMode::Full => Duration::from_secs(10),
        }
    }
}

impl std::str::FromStr for TuneMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "off" => Ok(TuneMode::Off),
            "quick" => Ok(TuneMode::Quick),
            "full" => Ok(TuneMode::Full),
            other => Err(Error::InvalidArgument {
                op: "BLO_TUNE",
                msg: format!("`{other}` is not a tuning mode: use off, quick or full"),
            }),
        }
    }
}

/// One tuned shape class, as [`GpuContext::tuned`] lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TuneResult {
    /// The shape class, e.g. `matmul m1024 k1024 n1024 ta0 tb0 b1`.
    pub class: String,
    /// The variant that runs for it.
    pub winner: String,
    /// Every candidate timed, in registry order, with microseconds per run (`None`:
    /// skipped for the time budget, or it failed).
    pub times_us: Vec<(String, Option<f64>)>,
    /// Whether the times came from GPU timestamps (else wall time around a sync).
    pub timestamps: bool,
}

/// The cache file's contents.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct CacheFile {
    format: u32,
    blo_version: String,
    adapter: AdapterInfo,
    /// By shape class.
    entries: BTreeMap<String, TuneResult>,
}

const FORMAT: u32 = 1;

/// A context's tuner state.
pub(crate) struct Tuner {
    state: Mutex<State>,
}

struct State {
    mode: TuneMode,
    /// The cache file (`None`: memory only).
    path: Option<PathBuf>,
    /// Whether `path` has been read.
    loaded: bool,
    entries: BTreeMap<String, TuneResult>,
}

/// The platform cache directory blo keeps its files in, if there is one.
fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("BLO_CACHE_DIR") {
        return Some(d);
    }
    let base = if cfg!(target_os = "windows") {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("blo"))
}

/// A stable 64-bit FNV-1a hash (file names must not change between builds, which rules
/// out `std`'s randomly seeded hasher).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The cache file of `info` in `dir`.
fn cache_file(dir: &Path, info: &AdapterInfo) -> PathBuf {
    let vendor = info.vendor.to_string();
    let h = fnv1a(&[
        &info.name,
        &vendor,
        &info.backend,
        &info.driver,
        &info.driver_info,
        env!("CARGO_PKG_VERSION"),
    ]);
    dir.join(format!("tune-{h:016x}.json"))
}

/// Reads a cache file: its entries, or why it was ignored (`Ok(None)`: no file).
fn read_cache(
    path: &Path,
    info: &AdapterInfo,
) -> std::result::Result<Option<BTreeMap<String, TuneResult>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let file: CacheFile =
        serde_json::from_str(&text).map_err(|e| format!("it is not a blo tuning cache: {e}"))?;
    if file.format != FORMAT {
        return Err(format!("format {} (this blo writes {FORMAT})", file.format));
    }
    if file.blo_version != env!("CARGO_PKG_VERSION") || &file.adapter != info {
        return Err(format!(
            "it belongs to blo {} on {} ({}), not blo {} on {} ({})",
            file.blo_version,
            file.adapter.name,
            file.adapter.driver_info,
            env!("CARGO_PKG_VERSION"),
            info.name,
            info.driver_info
        ));
    }
    Ok(Some(file.entries))
}

fn warn(msg: impl std::fmt::Display) {
    eprintln!("blo: warning: {msg}");
}

impl Tuner {
    /// The tuner of a new context: its mode from `BLO_TUNE` (or the adapter's default),
    /// its file in the cache directory.
    pub(crate) fn new(info: &AdapterInfo, cpu_adapter: bool) -> Result<Tuner> {
        let mode = match std::env::var(ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse()?,
            Ok(_) | Err(std::env::VarError::NotPresent) => {
                if cpu_adapter {
                    TuneMode::Off
                } else {
                    TuneMode::Quick
                }
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::InvalidArgument {
                    op: "BLO_TUNE",
                    msg: "BLO_TUNE is not valid UTF-8: use off, quick or full".into(),
                });
            }
        };
        Ok(Tuner {
            state: Mutex::new(State {
                mode,
                path: default_cache_dir().map(|d| cache_file(&d, info)),
                loaded: false,
                entries: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn load(&mut self, info: &AdapterInfo) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let Some(path) = &self.path else { return };
        match read_cache(path, info) {
            Ok(Some(entries)) => {
                // Entries tuned in this process win over the file's.
                for (k, v) in entries {
                    self.entries.entry(k).or_insert(v);
                }
            }
            Ok(None) => {}
            Err(why) => warn(format!(
                "ignoring the tuning cache {}: {why}; it will be replaced",
                path.display()
            )),
        }
    }

    fn save(&self, info: &AdapterInfo) {
        let Some(path) = &self.path else { return };
        let file = CacheFile {
            format: FORMAT,
            blo_version: env!("CARGO_PKG_VERSION").to_string(),
            adapter: info.clone(),
            entries: self.entries.clone(),
        };
        let written = serde_json::to_vec_pretty(&file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                }
                let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
                std::fs::write(&tmp, bytes)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        e.to_string()
                    })
            });
        if let Err(e) = written {
            warn(format!(
                "cannot write the tuning cache {}: {e}",
                path.display()
            ));
        }
    }
}

impl GpuContext {
    /// The tuning mode (see [`TuneMode`]).
    pub fn tune_mode(&self) -> TuneMode {
        self.tuner.lock().mode
    }

    /// Sets the tuning mode for later ops on this context.
    pub fn set_tune_mode(&self, mode: TuneMode) {
        self.tuner.lock().mode = mode;
    }

    /// The tuning cache file of this adapter (`None`: tuning results stay in memory).
    pub fn tune_cache(&self) -> Option<PathBuf> {
        self.tuner.lock().path.clone()
    }

    /// Keeps this adapter's tuning results in `dir` (its file is read on the next
    /// tuning decision), or with `None` in memory only. Results tuned so far are kept.
    pub fn set_tune_cache(&self, dir: Option<&Path>) {
        let mut state = self.tuner.lock();
        state.path = dir.map(|d| cache_file(d, &self.info));
        state.loaded = false;
    }

    /// Every shape class tuned on this context or read from its cache file.
    pub fn tuned(&self) -> Vec<TuneResult> {
        let mut state = self.tuner.lock();
        state.load(&self.info);
        state.entries.values().cloned().collect()
    }

    /// The variant of `family` for a call of shape class `class` doing `flops` flops:
    /// the forced one if the family is forced, the registry default when tuning is off
    /// or the call is small, else the class's tuned winner, tuning it now (with `run`,
    /// which records the call with the given variant) if it has none.
    pub(crate) fn tuned_variant<P>(
        &self,
        family: &'static Family<P>,
        class: impl FnOnce() -> String,
        flops: u64,
        mut run: impl FnMut(&'static Variant<P>) -> Result<()>,
    ) -> Result<&'static Variant<P>> {
        let chosen = self.variant(family);
        if self.kernels.is_forced(family.id) || flops < MIN_TUNED_FLOP {
            return Ok(chosen);
        }
        let mut state = self.tuner.lock();
        if state.mode == TuneMode::Off {
            return Ok(chosen);
        }
        state.load(&self.info);
        let candidates: Vec<&'static Variant<P>> = family
            .variants
            .iter()
            .copied()
            .filter(|v| (v.requires)(&self.facts).is_ok())
            .collect();
        if candidates.len() < 2 {
            return Ok(chosen);
        }
        let class = class();
        let names: Vec<&str> = candidates.iter().map(|v| v.name).collect();
        if let Some(e) = state.entries.get(&class) {
            let same_candidates = e.times_us.iter().map(|(n, _)| n.as_str()).eq(names.clone());
            if let Some(v) = candidates.iter().find(|v| v.name == e.winner)
                && same_candidates
            {
                return Ok(v);
            }
        }
        let mode = state.mode;
        let result = self.tune_class(&class, &candidates, mode, &mut run)?;
        let winner = candidates
            .iter()
            .copied()
            .find(|v| v.name == result.winner)
            .unwrap_or(chosen);
        state.entries.insert(class, result);
        state.save(&self.info);
        Ok(winner)
    }

    fn tune_class<P>(
        &self,
        class: &str,
        candidates: &[&'static Variant<P>],
        mode: TuneMode,
        run: &mut impl FnMut(&'static Variant<P>) -> Result<()>,
    ) -> Result<TuneResult> {
        let start = Instant::now();
        let timestamps = self.has_timestamps() && !self.profiling();
        // Every candidate compiles and runs once untimed, then once timed, so each is
        // measured whatever the budget; further rounds run while the budget lasts. A
        // candidate keeps its fastest run (noise only ever adds time).
        let mut best: Vec<Option<f64>> = Vec::with_capacity(candidates.len());
        for v in candidates {
            let warm = run(v).and_then(|()| self.sync());
            best.push(match warm {
                Ok(()) => self.time_runs(1, timestamps, || run(v))?,
                Err(_) => None,
            });
        }
        for _ in 1..mode.reps() {
            for (v, t) in candidates.iter().zip(best.iter_mut()) {
                if start.elapsed() > mode.budget() {
                    break;
                }
                if let Some(prev) = *t {
                    *t = self
                        .time_runs(1, timestamps, || run(v))?
                        .map(|now| now.min(prev));
                }
            }
        }
        let times_us: Vec<(String, Option<f64>)> = candidates
            .iter()
            .zip(best)
            .map(|(v, t)| (v.name.to_string(), t))
            .collect();
        let winner = times_us
            .iter()
            .filter_map(|(n, t)| t.map(|t| (n, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, _)| n.clone())
            .ok_or_else(|| Error::Gpu {
                context: format!("tuning {class}"),
                message: "every candidate failed".into(),
            })?;
        Ok(TuneResult {
            class: class.to_string(),
            winner,
            times_us,
            timestamps,
        })
    }

    /// Microseconds per run of `f` over `reps` runs, or `None` if it failed (a
    /// candidate that fails is skipped; device loss still surfaces at the next sync).
    fn time_runs(
        &self,
        reps: usize,
        timestamps: bool,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<Option<f64>> {
        self.sync()?;
        let reps = reps.max(1);
        if timestamps {
            self.start_profile()?;
            let ran = (0..reps).try_for_each(|_| f());
            let profile = self.finish_profile()?;
            if ran.is_err() {
                return Ok(None);
            }
            return Ok(profile.gpu_ms().map(|ms| 1e3 * ms / reps as f64));
        }
        let t = Instant::now();
        let ran = (0..reps).try_for_each(|_| f());
        self.sync()?;
        Ok(ran
            .is_ok()
            .then(|| 1e6 * t.elapsed().as_secs_f64() / reps as f64))
    }
}

/// The shape class of a matmul: see [`shape_class`].
pub(crate) fn matmul_class(
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    batched: bool,
) -> String {
    shape_class("matmul", m, k, n, trans_a, trans_b, batched)
}

/// The shape class of a product in `family`: dimensions rounded up to powers of two (at
/// least 16).
pub(crate) fn shape_class(
    family: &str,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    batched: bool,
) -> String {
    let r = |x: usize| x.max(16).next_power_of_two();
    format!(
        "{family} m{} k{} n{} ta{} tb{} b{}",
        r(m),
        r(k),
        r(n),
        u8::from(trans_a),
        u8::from(trans_b),
        if batched { "n" } else { "1" }
    )
}

#[cfg(test)]
mod tests;
