//! Per-kernel GPU profiles: how many dispatches each kernel had and how long the device
//! spent in them, measured with GPU timestamps where the adapter has
//! [`wgpu::Features::TIMESTAMP_QUERY`].
//!
//! While a profile is open ([`GpuContext::start_profile`]), every dispatch gets a compute
//! pass of its own whose beginning and end write a timestamp; each submission resolves
//! its timestamps and waits for them, so a profiled run is slower on the host than an
//! unprofiled one (one wait per batch of dispatches) and its dispatches do not overlap
//! on the device. The GPU times are what the kernels took, without submission or sync
//! latency, which is what kernel comparisons across vendors need. Without timestamp
//! support the profile still counts dispatches per kernel and reports no times.

use std::collections::HashMap;

use super::context::{GpuContext, gpu_err};
use super::pipeline::Kernel;
use crate::error::{Error, Result};

/// Time and dispatch count of one kernel (a shader entry point, or a custom kernel) in a
/// profile.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelTime {
    /// The kernel family: `matmul`, `matvec`, `reduce`, `elementwise`, `loss`, `index`,
    /// `update` or `custom`.
    pub family: String,
    /// `shader::entry` (the shader file stem in `shaders/` and its entry point), or
    /// `custom:<name>` for a [`crate::CustomKernel`].
    pub kernel: String,
    /// Dispatches recorded.
    pub dispatches: u64,
    /// Device time spent in them, in milliseconds; `None` without timestamp support.
    pub gpu_ms: Option<f64>,
}

/// What a profile measured: one entry per kernel, in order of first dispatch.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuProfile {
    /// Whether the times come from GPU timestamps (false: counts only).
    pub timestamps: bool,
    /// Per kernel.
    pub kernels: Vec<KernelTime>,
}

impl GpuProfile {
    /// The same profile summed per family, in order of first dispatch.
    pub fn by_family(&self) -> Vec<KernelTime> {
        let mut out: Vec<KernelTime> = Vec::new();
        for k in &self.kernels {
            match out.iter_mut().find(|f| f.family == k.family) {
                Some(f) => {
                    f.dispatches += k.dispatches;
                    f.gpu_ms = f.gpu_ms.zip(k.gpu_ms).map(|(a, b)| a + b);
                }
                None => out.push(KernelTime {
                    kernel: k.family.clone(),
                    ..k.clone()
                }),
            }
        }
        out
    }

    /// Dispatches in all.
    pub fn dispatches(&self) -> u64 {
        self.kernels.iter().map(|k| k.dispatches).sum()
    }

    /// Device time in all, in milliseconds (`None` without timestamps).
    pub fn gpu_ms(&self) -> Option<f64> {
        self.timestamps.then(|| {
            self.kernels
                .iter()
                .filter_map(|k| k.gpu_ms)
                .fold(0.0, |a, b| a + b)
        })
    }

    /// A plain-text table: one line per family (or per kernel with `per_kernel`), with
    /// dispatches, milliseconds, share of the total and µs per dispatch.
    pub fn table(&self, per_kernel: bool) -> String {
        let rows = if per_kernel {
            self.kernels.clone()
        } else {
            self.by_family()
        };
        let total = self.gpu_ms();
        let mut s = format!(
            "{:<28} {:>10} {:>10} {:>7} {:>12}\n",
            if per_kernel { "kernel" } else { "family" },
            "dispatches",
            "GPU ms",
            "share",
            "µs/dispatch"
        );
        for r in &rows {
            let (ms, share, per) = match (r.gpu_ms, total) {
                (Some(ms), Some(t)) => (
                    format!("{ms:.3}"),
                    if t > 0.0 {
                        format!("{:.1}%", 100.0 * ms / t)
                    } else {
                        "-".into()
                    },
                    format!("{:.2}", 1e3 * ms / r.dispatches.max(1) as f64),
                ),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            s.push_str(&format!(
                "{:<28} {:>10} {:>10} {:>7} {:>12}\n",
                r.kernel, r.dispatches, ms, share, per
            ));
        }
        s.push_str(&format!(
            "{:<28} {:>10} {:>10}\n",
            "total",
            self.dispatches(),
            total.map_or("-".into(), |t| format!("{t:.3}"))
        ));
        if !self.timestamps {
            s.push_str("(this adapter has no GPU timestamps: dispatch counts only)\n");
        }
        s
    }
}

/// Which kernel a dispatch runs, for the profile.
#[derive(Clone, Copy)]
pub(crate) enum Label<'a> {
    Builtin(&'static Kernel),
    Custom(&'a str),
}

impl Label<'_> {
    fn key(&self) -> (&'static str, String) {
        match self {
            Label::Builtin(k) => (
                family_of(k.shader.name),
                format!("{}::{}", k.shader.name, k.entry),
            ),
            Label::Custom(name) => ("custom", format!("custom:{name}")),
        }
    }
}

/// The family a shader file belongs to: its stem up to the first `_` (`matmul_tiled` is
/// a matmul variant), with the elementwise shaders gathered under one name as the
/// registry does.
fn family_of(shader: &str) -> &'static str {
    match shader.split('_').next().unwrap_or(shader) {
        "matmul" => "matmul",
        "matvec" => "matvec",
        "reduce" => "reduce",
        "loss" => "loss",
        "index" => "index",
        "update" => "update",
        "unary" | "binary" | "fill" => "elementwise",
        _ => "other",
    }
}

/// Queries per batch: a beginning and an end per dispatch.
fn queries_for(dispatches: u64) -> u32 {
    (2 * dispatches) as u32
}

/// An open profile: the statistics so far and, with timestamps, the query machinery of
/// the current batch.
pub(super) struct Profiler {
    stats: Vec<KernelTime>,
    ticks: Vec<u64>,
    index: HashMap<String, usize>,
    /// Per dispatch of the current batch: its entry in `stats`.
    batch: Vec<usize>,
    timer: Option<Timer>,
    /// The first error met while reading timestamps back (reported by `finish_profile`).
    error: Option<Error>,
}

struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Nanoseconds per tick.
    period: f64,
}

impl Profiler {
    /// The query index pair of the next dispatch, after noting which kernel it runs.
    pub(super) fn begin_dispatch(&mut self, label: Label<'_>) -> Option<(&wgpu::QuerySet, u32)> {
        let (family, kernel) = label.key();
        let slot = match self.index.get(&kernel) {
            Some(&i) => i,
            None => {
                self.stats.push(KernelTime {
                    family: family.to_string(),
                    kernel: kernel.clone(),
                    dispatches: 0,
                    gpu_ms: None,
                });
                self.ticks.push(0);
                self.index.insert(kernel, self.stats.len() - 1);
                self.stats.len() - 1
            }
        };
        self.stats[slot].dispatches += 1;
        self.batch.push(slot);
        let at = 2 * (self.batch.len() as u32 - 1);
        self.timer.as_ref().map(|t| (&t.queries, at))
    }

    /// Records the resolution of this batch's timestamps into `encoder` (before it is
    /// submitted).
    pub(super) fn resolve(&mut self, encoder: &mut wgpu::CommandEncoder) {
        if let Some(t) = &self.timer
            && !self.batch.is_empty()
        {
            let n = queries_for(self.batch.len() as u64);
            encoder.resolve_query_set(&t.queries, 0..n, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, u64::from(n) * 8);
        }
    }

    /// After the batch's submission: waits for its timestamps and adds them up.
    pub(super) fn collect(&mut self, device: &wgpu::Device) {
        let batch = std::mem::take(&mut self.batch);
        let Some(t) = &self.timer else { return };
        if batch.is_empty() {
            return;
        }
        let bytes = u64::from(queries_for(batch.len() as u64)) * 8;
        let slice = t.readback.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let mapped = device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_err("profile timestamps", e))
            .and_then(|_| {
                rx.recv()
                    .map_err(|e| gpu_err("profile timestamps", e))?
                    .map_err(|e| gpu_err("profile timestamps", e))
            });
        if let Err(e) = mapped {
            self.error.get_or_insert(e);
            return;
        }
        match slice.get_mapped_range() {
            Ok(view) => {
                let stamps: &[u64] = bytemuck::cast_slice(&view);
                for (i, &slot) in batch.iter().enumerate() {
                    let (begin, end) = (stamps[2 * i], stamps[2 * i + 1]);
                    // A counter that wrapped or a pass the driver did not time reads as
                    // end < begin; it adds nothing rather than a huge number.
                    self.ticks[slot] += end.saturating_sub(begin);
                }
            }
            Err(e) => {
                self.error.get_or_insert(gpu_err("profile timestamps", e));
            }
        }
        t.readback.unmap();
    }

    fn finish(self) -> Result<GpuProfile> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let period = self.timer.as_ref().map(|t| t.period);
        let kernels = self
            .stats
            .into_iter()
            .zip(self.ticks)
            .map(|(mut k, ticks)| {
                k.gpu_ms = period.map(|p| ticks as f64 * p * 1e-6);
                k
            })
            .collect();
        Ok(GpuProfile {
            timestamps: period.is_some(),
            kernels,
        })
    }
}

impl GpuContext {
    /// Whether profiles on this adapter carry GPU times (it has
    /// [`wgpu::Features::TIMESTAMP_QUERY`]); without them they count dispatches only.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Starts recording a per-kernel profile of every dispatch from now on (see the
    /// module documentation for what it costs); a profile already open is discarded.
    /// Work recorded before is submitted first, so it is not counted.
    pub fn start_profile(&self) -> Result<()> {
        let timer = if self.has_timestamps() {
            let queries = queries_for(super::context::DISPATCHES_PER_SUBMIT);
            let bytes = u64::from(queries) * 8;
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let t = Timer {
                queries: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("blo profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: queries,
                }),
                resolve: self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("blo profile resolve"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                readback: self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("blo profile readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                period: f64::from(self.queue.get_timestamp_period()),
            };
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(gpu_err("creating the profile's timestamp queries", e));
            }
            Some(t)
        } else {
            None
        };
        let mut pending = self.lock_pending();
        self.flush_locked(&mut pending);
        pending.profiler = Some(Profiler {
            stats: Vec::new(),
            ticks: Vec::new(),
            index: HashMap::new(),
            batch: Vec::new(),
            timer,
            error: None,
        });
        Ok(())
    }

    /// Whether a profile is open.
    pub fn profiling(&self) -> bool {
        self.lock_pending().profiler.is_some()
    }

    /// Waits for everything recorded, closes the open profile and returns it; an
    /// error if none is open.
    pub fn finish_profile(&self) -> Result<GpuProfile> {
        self.sync()?;
        let profiler = self.lock_pending().profiler.take();
        match profiler {
            Some(p) => p.finish(),
            None => Err(Error::InvalidArgument {
                op: "finish_profile",
                msg: "no profile is open: call start_profile first".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaders_map_to_their_families() {
        assert_eq!(family_of("matmul_tiled"), "matmul");
        assert_eq!(family_of("matmul"), "matmul");
        assert_eq!(family_of("matvec_subgroup"), "matvec");
        assert_eq!(family_of("binary"), "elementwise");
        assert_eq!(family_of("fill"), "elementwise");
        assert_eq!(family_of("reduce"), "reduce");
        assert_eq!(family_of("loss"), "loss");
    }

    #[test]
    fn families_sum_their_kernels() {
        let k = |family: &str, kernel: &str, dispatches, gpu_ms| KernelTime {
            family: family.into(),
            kernel: kernel.into(),
            dispatches,
            gpu_ms,
        };
        let p = GpuProfile {
            timestamps: true,
            kernels: vec![
                k("elementwise", "binary::main", 3, Some(1.0)),
                k("matmul", "matmul_tiled::main", 2, Some(4.0)),
                k("elementwise", "unary::main", 5, Some(0.5)),
            ],
        };
        let f = p.by_family();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0], k("elementwise", "elementwise", 8, Some(1.5)));
        assert_eq!(f[1], k("matmul", "matmul", 2, Some(4.0)));
        assert_eq!(p.dispatches(), 10);
        assert_eq!(p.gpu_ms(), Some(5.5));
        let t = p.table(false);
        assert!(t.contains("elementwise") && t.contains("27.3%"), "{t}");
        let counts = GpuProfile {
            timestamps: false,
            kernels: vec![k("reduce", "reduce::full", 1, None)],
        };
        assert_eq!(counts.gpu_ms(), None);
        assert!(counts.table(true).contains("no GPU timestamps"));
    }

    /// A profiled run computes what an unprofiled one does, counts every dispatch (across
    /// more than one submission batch) under its kernel and family, and times them where
    /// the adapter has timestamps.
    #[test]
    fn profiles_count_every_dispatch_and_time_it() {
        use crate::Tensor;
        let Some(gpu) = crate::testing::fresh_gpu_or_skip() else {
            return;
        };
        let ctx = gpu.gpu_context().expect("a GPU device");
        let err = ctx.finish_profile().unwrap_err();
        assert!(err.to_string().contains("start_profile"), "{err}");
        let a = Tensor::rand_uniform(&[37, 53], -1.0, 1.0, 1, &gpu).unwrap();
        let b = Tensor::rand_uniform(&[53, 29], -1.0, 1.0, 2, &gpu).unwrap();
        let c = Tensor::rand_uniform(&[37, 29], -1.0, 1.0, 3, &gpu).unwrap();
        let work = || -> Vec<f32> {
            let mut y = a.matmul(&b).unwrap().add(&c).unwrap();
            // Past one submission batch, so timestamps are collected more than once.
            for _ in 0..600 {
                y = y.scale_shift(0.5, 0.25).unwrap();
            }
            y.sum().unwrap().to_vec::<f32>().unwrap()
        };
        let plain = work();
        ctx.sync().unwrap();
        let before = ctx.dispatch_count();
        ctx.start_profile().unwrap();
        assert!(ctx.profiling());
        let profiled = work();
        let p = ctx.finish_profile().unwrap();
        assert!(!ctx.profiling());
        assert_eq!(plain, profiled);
        assert_eq!(p.dispatches(), ctx.dispatch_count() - before);
        assert_eq!(p.timestamps, ctx.has_timestamps());
        let fam = p.by_family();
        let family = |name: &str| fam.iter().find(|f| f.family == name).cloned();
        assert!(
            family("matmul").is_some() || family("matvec").is_some(),
            "{p:?}"
        );
        assert!(family("elementwise").unwrap().dispatches >= 601, "{p:?}");
        assert!(family("reduce").is_some(), "{p:?}");
        eprintln!("{}", p.table(true));
        if p.timestamps {
            let total = p.gpu_ms().unwrap();
            assert!(total > 0.0 && total.is_finite(), "{total}");
            for k in &p.kernels {
                let ms = k.gpu_ms.unwrap();
                assert!(ms >= 0.0 && ms <= total, "{k:?}");
            }
        } else {
            eprintln!("notice: this adapter has no timestamps; profile times not tested");
        }
    }
}
