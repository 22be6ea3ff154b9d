//! The wgpu side of a GPU device: adapter and queue, pipeline cache, buffer pool and the
//! pending command stream that batches many dispatches into one submission.
//!
//! Execution model: an op records a dispatch into a compute pass that stays open across
//! ops; nothing waits until the host reads a buffer or calls [`GpuContext::sync`]. Small
//! per-dispatch parameters are appended to a host-side arena and bound with a dynamic
//! uniform offset, so a dispatch costs no staging buffer and no round trip; the arena is
//! written with one `write_buffer` right before its submission.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::pipeline::{Kernel, KernelLayout, PipelineKey};
use super::pool::{GpuBuffer, Pool};
use super::profile::{Label, Profiler};
use super::registry::{AdapterFacts, Choices};
use super::tune::Tuner;
use crate::error::{Error, Result};

/// Bytes reserved per dispatch for its parameter block (uniform, dynamic offset).
/// 256 is the largest `min_uniform_buffer_offset_alignment` wgpu allows, so one value
/// works on every adapter.
pub(crate) const PARAM_BLOCK: u64 = 256;
/// Dispatches per submission. A submission lets the device start working while the
/// host records the next batch; the parameter arena holds exactly one batch.
pub(super) const DISPATCHES_PER_SUBMIT: u64 = 512;
/// Most bind groups kept for reuse (see [`GpuContext::record`]).
const BIND_GROUP_CACHE: usize = 4096;

/// A bind group's identity: the binding signature (reads, writes) and each storage
/// binding's buffer and size (binding 0 is always the parameter arena).
type BindKey = ((u32, u32), Vec<(wgpu::Buffer, u64)>);

/// What blo reports about an adapter (also the form experiment results and benchmark
/// reports record it in).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdapterInfo {
    /// Adapter name as the driver reports it, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// PCI vendor id (0 when the backend does not report one).
    pub vendor: u32,
    /// Graphics API wgpu uses for it: Vulkan, Metal, Dx12, Gl or BrowserWebGpu.
    pub backend: String,
    /// DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu (a software rasteriser) or Other.
    pub device_type: String,
    /// Driver name.
    pub driver: String,
    /// Driver version or other driver detail.
    pub driver_info: String,
}

impl AdapterInfo {
    pub(crate) fn from_wgpu(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            vendor: info.vendor,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }

    /// True for a hardware (or virtualised hardware) GPU, false for a software
    /// rasteriser or an adapter of unknown kind.
    pub fn is_hardware(&self) -> bool {
        matches!(
            self.device_type.as_str(),
            "DiscreteGpu" | "IntegratedGpu" | "VirtualGpu"
        )
    }
}

pub(super) struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    arena: Vec<u8>,
    batch_dispatches: u64,
    /// The open per-kernel profile (`profile.rs`), if any.
    pub(super) profiler: Option<Profiler>,
}

/// A wgpu device and queue with blo's execution machinery. Shared behind an `Arc` by
/// [`crate::Device::Gpu`] and every GPU tensor.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(super) info: AdapterInfo,
    pub(super) limits: wgpu::Limits,
    pub(super) features: wgpu::Features,
    /// What the kernel registry's rules see of the adapter.
    pub(super) facts: AdapterFacts,
    /// The kernel variant each family runs (`registry.rs`).
    pub(super) kernels: Choices,
    /// The autotuner's mode, cache file and results (`tune.rs`).
    pub(super) tuner: Tuner,
    pub(super) params: wgpu::Buffer,
    pub(super) pending: Mutex<Pending>,
    pub(super) pool: Mutex<Pool>,
    pub(super) modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    pub(super) pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    pub(super) layouts: Mutex<HashMap<(u32, u32), Arc<KernelLayout>>>,
    pub(super) bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    pub(super) poison: AtomicBool,
    /// Elementwise fusion (`fusion.rs`): whether it is on, its compiled kernels by
    /// signature, and the deferred buffers a sync must compute.
    pub(super) fusion: AtomicBool,
    pub(super) fused: Mutex<HashMap<String, super::fusion::FusedKernel>>,
    pub(super) deferred_list: Mutex<Vec<std::sync::Weak<super::pool::BufferCell>>>,
    pub(super) dispatch_count: AtomicU64,
    pub(super) readback_count: AtomicU64,
    pub(super) uncaptured: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .finish_non_exhaustive()
    }
}

pub(super) fn gpu_err(context: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Gpu {
        context: context.into(),
        message: e.to_string(),
    }
}

impl GpuContext {
    /// Opens a device on `adapter`, requesting the adapter's real limits (software and
    /// hardware adapters usually allow far more than wgpu's defaults).
    pub(crate) fn new(adapter: wgpu::Adapter) -> Result<Self> {
        let info = AdapterInfo::from_wgpu(&adapter.get_info());
        let limits = adapter.limits();
        // SUBGROUP lets matmul share loads across a subgroup (backend/gpu/kernels/matmul.rs).
        let features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        let wgpu_info = adapter.get_info();
        let subgroup_sizes = (wgpu_info.subgroup_min_size, wgpu_info.subgroup_max_size);
        let facts = AdapterFacts {
            features,
            subgroup_sizes: features
                .contains(wgpu::Features::SUBGROUP)
                .then_some(subgroup_sizes),
            limits: limits.clone(),
            device_type: wgpu_info.device_type,
            vendor: wgpu_info.vendor,
        };
        // The kernel variants, with those `BLO_KERNELS` forces: a bad value is an error
        // before any device is opened.
        let kernels = Choices::new(&facts)?;
        let tuner = Tuner::new(&info, facts.device_type == wgpu::DeviceType::Cpu)?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("blo"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| gpu_err(format!("request_device on {}", info.name), e))?;

        // wgpu's default handler panics; a library must turn device errors into Results.
        let uncaptured = Arc::new(Mutex::new(None::<String>));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));

        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("blo params arena"),
            size: PARAM_BLOCK * DISPATCHES_PER_SUBMIT,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            facts,
            kernels,
            tuner,
            params,
            pending: Mutex::new(Pending {
                encoder: None,
                pass: None,
                arena: Vec::with_capacity((PARAM_BLOCK * DISPATCHES_PER_SUBMIT) as usize),
                batch_dispatches: 0,
                profiler: None,
            }),
            pool: Mutex::new(Pool::default()),
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(HashMap::new()),
            poison: AtomicBool::new(std::env::var_os("BLO_POISON").is_some()),
            fusion: AtomicBool::new(fusion_from_env()?),
            fused: Mutex::new(HashMap::new()),
            deferred_list: Mutex::new(Vec::new()),
            dispatch_count: AtomicU64::new(0),
            readback_count: AtomicU64::new(0),
            uncaptured,
        })
    }

    /// The adapter this context runs on.
    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    /// The limits the device was opened with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Features enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// The wgpu device blo records on, for interop with other wgpu code and for measuring
    /// raw wgpu beside blo (`blo bench`'s dispatch floor). Work recorded here is ordered
    /// after blo's only once blo's pending work is submitted: call [`Self::sync`] (or
    /// [`Self::flush`], which leaves deferred elementwise results unrun) first.
    pub fn wgpu_device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue blo submits to; see [`Self::wgpu_device`] for ordering with blo's work.
    pub fn wgpu_queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// When on, every buffer handed to a new tensor is first filled with NaN, so a kernel
    /// that leaves an output element unwritten produces a visible NaN. Tests turn it on;
    /// the environment variable `BLO_POISON` turns it on for a whole process.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Number of compute dispatches recorded since the context was created.
    pub fn dispatch_count(&self) -> u64 {
        self.dispatch_count.load(Ordering::Relaxed)
    }

    /// Number of reads of device data to the host since the context was created (each
    /// one waits for the device): hot loops should not add to it.
    pub fn readback_count(&self) -> u64 {
        self.readback_count.load(Ordering::Relaxed)
    }

    /// Submits everything recorded so far and waits until the device has finished it.
    /// Deferred elementwise results that tensors still hold are computed first.
    pub fn sync(&self) -> Result<()> {
        self.compute_deferred()?;
        {
            let mut pending = self.lock_pending();
            self.flush_locked(&mut pending);
        }
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_err("sync", e))?;
        self.check_uncaptured("sync")
    }

    /// Submits everything recorded so far without waiting. Deferred elementwise results
    /// are not computed (see [`Self::sync`]).
    pub fn flush(&self) {
        let mut pending = self.lock_pending();
        self.flush_locked(&mut pending);
    }

    pub(super) fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn check_uncaptured(&self, context: &str) -> Result<()> {
        let mut slot = self.uncaptured.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(message) => Err(gpu_err(context, message)),
            None => Ok(()),
        }
    }

    pub(super) fn flush_locked(&self, pending: &mut Pending) {
        // The pass borrows the encoder (its lifetime was erased), so it must end first.
        pending.pass = None;
        if let Some(mut encoder) = pending.encoder.take() {
            if !pending.arena.is_empty() {
                self.queue.write_buffer(&self.params, 0, &pending.arena);
            }
            if let Some(p) = &mut pending.profiler {
                p.resolve(&mut encoder);
            }
            self.queue.submit([encoder.finish()]);
            if let Some(p) = &mut pending.profiler {
                p.collect(&self.device);
            }
        }
        pending.arena.clear();
        pending.batch_dispatches = 0;
    }

    pub(super) fn encoder<'p>(&self, pending: &'p mut Pending) -> &'p mut wgpu::CommandEncoder {
        pending.pass = None;
        pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("blo") })
        })
    }

    /// Checks a tensor's byte size against the adapter's storage-binding and buffer limits.
    pub(crate) fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        let binding = self.limits.max_storage_buffer_binding_size;
        if bytes > binding {
            return Err(Error::TooLarge {
                what: what.to_string(),
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: binding,
            });
        }
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                what: what.to_string(),
                bytes,
                limit_name: "max_buffer_size",
                limit: self.limits.max_buffer_size,
            });
        }
        Ok(())
    }

    /// Copies host data into a new buffer. The copy is recorded in the command stream
    /// (not written directly through the queue) so that it stays ordered after pending
    /// dispatches that may still read a pooled buffer being reused here.
    pub(crate) fn upload(self: &Arc<Self>, data: &[u8]) -> Result<GpuBuffer> {
        let out = self.alloc(data.len() as u64)?;
        if data.is_empty() {
            return Ok(out);
        }
        let padded = (data.len() as u64).div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("blo upload"),
            size: padded,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        {
            let mut view = staging
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| gpu_err("upload map", e))?;
            view.slice(..data.len()).copy_from_slice(data);
        }
        staging.unmap();
        let mut pending = self.lock_pending();
        self.encoder(&mut pending)
            .copy_buffer_to_buffer(&staging, 0, out.raw(), 0, padded);
        Ok(out)
    }

    /// Copies `bytes` bytes from `src` at `src_offset` to `dst` at `dst_offset` in the
    /// command stream. Offsets and length must be multiples of 4.
    pub(crate) fn copy(
        &self,
        src: &GpuBuffer,
        src_offset: u64,
        dst: &GpuBuffer,
        dst_offset: u64,
        bytes: u64,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        src.compute()?;
        dst.compute()?;
        let mut pending = self.lock_pending();
        self.encoder(&mut pending).copy_buffer_to_buffer(
            src.raw(),
            src_offset,
            dst.raw(),
            dst_offset,
            bytes,
        );
        Ok(())
    }

    /// Reads `bytes` bytes of a buffer back to the host: submits pending work and waits.
    pub(crate) fn read(&self, src: &GpuBuffer, bytes: u64) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        src.compute()?;
        self.readback_count.fetch_add(1, Ordering::Relaxed);
        let padded = bytes.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("blo readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut pending = self.lock_pending();
            self.encoder(&mut pending)
                .copy_buffer_to_buffer(src.raw(), 0, &staging, 0, padded);
            self.flush_locked(&mut pending);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_err("readback", e))?;
        self.check_uncaptured("readback")?;
        rx.recv()
            .map_err(|e| gpu_err("readback", e))?
            .map_err(|e| gpu_err("readback map", e))?;
        let data = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| gpu_err("readback map", e))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        Ok(data)
    }

    /// Records one dispatch of `kernel`. `params` is the kernel's uniform parameter block
    /// (at most [`PARAM_BLOCK`] bytes); `buffers` are the storage bindings in order, reads
    /// first. Nothing is submitted unless the current batch is full.
    pub(crate) fn dispatch(
        &self,
        kernel: &'static Kernel,
        constants: &[(&'static str, f64)],
        params: &[u8],
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) -> Result<()> {
        debug_assert_eq!(
            buffers.len() as u32,
            kernel.reads + kernel.writes,
            "{}",
            kernel.entry
        );
        debug_assert!(params.len() as u64 <= PARAM_BLOCK);
        self.check_workgroups(kernel.entry, workgroups)?;
        if workgroups.contains(&0) {
            return Ok(());
        }
        for b in buffers {
            b.compute()?;
        }
        let pipeline = self.pipeline(kernel, constants)?;
        self.record(
            &pipeline,
            Label::Builtin(kernel),
            (kernel.reads, kernel.writes),
            params,
            buffers,
            workgroups,
        );
        Ok(())
    }

    /// Rejects a dispatch whose workgroup counts exceed the adapter's per-dimension limit.
    pub(crate) fn check_workgroups(&self, entry: &str, workgroups: [u32; 3]) -> Result<()> {
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&g| g > max_groups) {
            return Err(Error::TooLarge {
                what: format!("dispatch of {entry} with {workgroups:?} workgroups"),
                bytes: u64::from(*workgroups.iter().max().unwrap_or(&0)),
                limit_name: "max_compute_workgroups_per_dimension",
                limit: u64::from(max_groups),
            });
        }
        Ok(())
    }

    /// Records one dispatch of a pipeline created by [`Self::create_pipeline`] with the
    /// same `(reads, writes)` signature; the caller has checked the workgroup counts.
    pub(crate) fn record(
        &self,
        pipeline: &wgpu::ComputePipeline,
        label: Label<'_>,
        (reads, writes): (u32, u32),
        params: &[u8],
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) {
        // A loop binds the same pooled buffers step after step: the bind group is made
        // once and found again by (signature, buffers, sizes), which saves its creation
        // on the host per dispatch.
        let key: BindKey = (
            (reads, writes),
            buffers
                .iter()
                .map(|b| (b.raw().clone(), b.binding_size()))
                .collect(),
        );
        let bind_group = {
            let mut cache = self.bind_groups.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&key) {
                Some(g) => g.clone(),
                None => {
                    let layout = self.layout(reads, writes);
                    let mut entries = Vec::with_capacity(buffers.len() + 1);
                    entries.push(wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &self.params,
                            offset: 0,
                            size: std::num::NonZeroU64::new(PARAM_BLOCK),
                        }),
                    });
                    for (i, b) in buffers.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: 1 + i as u32,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: b.raw(),
                                offset: 0,
                                size: std::num::NonZeroU64::new(b.binding_size()),
                            }),
                        });
                    }
                    let g = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &layout.0,
                        entries: &entries,
                    });
                    // Bounded: entries keep their buffers alive, so a cache that only
                    // grew would hold buffers the program has dropped.
                    if cache.len() >= BIND_GROUP_CACHE {
                        cache.clear();
                    }
                    cache.insert(key, g.clone());
                    g
                }
            }
        };

        let mut pending = self.lock_pending();
        if pending.batch_dispatches >= DISPATCHES_PER_SUBMIT {
            self.flush_locked(&mut pending);
        }
        let offset = pending.arena.len() as u32;
        pending.arena.extend_from_slice(params);
        pending
            .arena
            .resize((offset as u64 + PARAM_BLOCK) as usize, 0);
        let pending = &mut *pending;
        // Profiled, a dispatch has a pass of its own whose ends write its timestamps.
        let timed = match &mut pending.profiler {
            Some(p) => {
                pending.pass = None;
                Some(p.begin_dispatch(label))
            }
            None => None,
        };
        if pending.pass.is_none() {
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("blo") })
            });
            let timestamp_writes =
                timed
                    .flatten()
                    .map(|(query_set, at)| wgpu::ComputePassTimestampWrites {
                        query_set,
                        beginning_of_pass_write_index: Some(at),
                        end_of_pass_write_index: Some(at + 1),
                    });
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes,
                })
                .forget_lifetime();
            pending.pass = Some(pass);
        }
        let pass = pending.pass.as_mut().expect("pass opened above");
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[offset]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        if timed.is_some() {
            pending.pass = None;
        }
        pending.batch_dispatches += 1;
        self.dispatch_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Workgroup counts covering `items` work items with `per_group` items per group,
    /// spilling into the y dimension past the per-dimension limit. Kernels recover the
    /// linear group index as `wid.x + wid.y * nwg.x`.
    pub(crate) fn grid(&self, items: u64, per_group: u64) -> Result<[u32; 3]> {
        let groups = items.div_ceil(per_group.max(1));
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        if groups <= max {
            return Ok([groups as u32, 1, 1]);
        }
        let y = groups.div_ceil(max);
        if y > max {
            return Err(Error::TooLarge {
                what: format!("a grid of {items} work items"),
                bytes: items,
                limit_name: "max_compute_workgroups_per_dimension squared",
                limit: max * max * per_group,
            });
        }
        Ok([groups.div_ceil(y) as u32, y as u32, 1])
    }
}

/// `BLO_FUSION`: unset, `1` or `on` fuses elementwise ops (the default); `0` or `off`
/// dispatches each op alone.
fn fusion_from_env() -> Result<bool> {
    parse_fusion(std::env::var("BLO_FUSION").ok().as_deref())
}

fn parse_fusion(value: Option<&str>) -> Result<bool> {
    match value {
        None => Ok(true),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "1" | "on" | "true" => Ok(true),
            "0" | "off" | "false" => Ok(false),
            other => Err(crate::error::invalid(
                "BLO_FUSION",
                format!(
                    "unknown value {other:?}; use 1 (fuse elementwise ops, the default) or 0 (one dispatch per op)"
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::parse_fusion;
    use crate::Tensor;

    #[test]
    fn blo_fusion_takes_on_and_off_and_rejects_anything_else() {
        for (v, want) in [
            (None, true),
            (Some("1"), true),
            (Some(" ON "), true),
            (Some("0"), false),
        ] {
            assert_eq!(parse_fusion(v).unwrap(), want, "{v:?}");
        }
        let e = parse_fusion(Some("maybe")).unwrap_err().to_string();
        assert!(e.contains("BLO_FUSION") && e.contains("\"maybe\""), "{e}");
    }
    use crate::testing::fresh_gpu_or_skip;

    /// A loop that binds the same pooled buffers reuses its bind groups: the cache
    /// stops growing after the first steps, and releasing the pool empties it.
    #[test]
    fn bind_groups_are_reused_across_a_loop_and_released_with_the_pool() {
        let Some(gpu) = fresh_gpu_or_skip() else {
            return;
        };
        let ctx = gpu.gpu_context().unwrap();
        ctx.set_fusion(false);
        ctx.set_poison(false);
        let x = Tensor::rand_uniform(&[33], -1.0, 1.0, 1, &gpu).unwrap();
        let step = |y: &Tensor| y.scale_shift(0.5, 0.25).unwrap().mul(&x).unwrap();
        let cached = || ctx.bind_groups.lock().unwrap().len();
        let mut y = x.clone();
        for _ in 0..5 {
            y = step(&y);
        }
        gpu.sync().unwrap();
        let warm = cached();
        assert!(warm > 0);
        for _ in 0..200 {
            y = step(&y);
        }
        gpu.sync().unwrap();
        assert_eq!(cached(), warm, "no new bind group in a steady loop");
        assert!(y.to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
        drop(y);
        ctx.release_pooled();
        assert_eq!(cached(), 0);
    }
}
