//! The device's own ceilings that results are expressed against: peak arithmetic
//! (independent FMA chains on registers), peak memory throughput (a copy) and, on a
//! GPU, the floor of chained dispatch (wgpu alone, without blo).

use blo::{CustomKernel, Device, Error, GpuContext, Result, Tensor};

use super::host::threads;
use super::report::Record;
use super::suite::{Bencher, Timing};

const FMA_WG: u32 = 64;
/// FLOPs per invocation and loop iteration of `ceiling.wgsl`: 8 unrolled steps ×
/// 4 chains × 4 lanes × 2.
const FMA_FLOPS_PER_ITER: f64 = 8.0 * 4.0 * 4.0 * 2.0;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FmaParams {
    iters: u32,
    _pad: u32,
    m: f32,
    c: f32,
}

const COPY_WG: u32 = 256;
/// Workgroups of the copy kernel: each invocation copies elements / (4 · 256 · 8192)
/// vec4s (4 at 32M elements), enough in flight to fill a large GPU, few enough that the
/// grid's launch is not what is measured.
const COPY_GROUPS: u32 = 8192;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    n4: u32,
    stride: u32,
    _pad: [u32; 2],
}

/// Dependent dispatches per measurement of the dispatch floor: as many as
/// `dispatch_overhead` chains, so the two compare per dispatch.
const DISPATCH_CHAIN: u32 = 1000;
/// f32 elements the dispatch floor's kernel updates: one workgroup of
/// `ceiling_dispatch.wgsl`, as `dispatch_overhead`'s 64-element tensor.
const DISPATCH_ELEMS: u64 = 64;

/// The GPU's copy kernel.
pub fn copy_kernel() -> Result<CustomKernel> {
    CustomKernel::new(
        "ceiling_copy",
        include_str!("ceiling_copy.wgsl"),
        "copy_vec4",
    )?
    .with_constant("WG", f64::from(COPY_WG))
}

/// The GPU's FMA-chain kernel, with the workgroup size the FLOP count assumes.
pub fn fma_kernel() -> Result<CustomKernel> {
    CustomKernel::new("ceiling", include_str!("ceiling.wgsl"), "fma_chain")?
        .with_constant("WG", f64::from(FMA_WG))
}

impl Bencher {
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

    pub(super) fn ceiling_fma(&self) -> Result<Record> {
        match &self.device {
            Device::Gpu(ctx) => {
                let groups: u32 = if self.config.quick { 1024 } else { 4096 };
                let iters: u32 = 64;
                let invocations = u64::from(groups) * u64::from(FMA_WG);
                let out_shape = [invocations as usize];
                let params = FmaParams {
                    iters,
                    _pad: 0,
                    m: 0.999,
                    c: 1e-3,
                };
                let (reps, t) = self.calibrated(|reps| {
                    for _ in 0..reps {
                        // Each output returns to the pool at once and is the next one's
                        // buffer: every dispatch writes the same buffer. At most 4096
                        // groups, within every adapter's per-dimension limit (≥ 65535).
                        ctx.dispatch_custom(
                            &self.fma_kernel,
                            bytemuck::bytes_of(&params),
                            &[],
                            &[&out_shape],
                            [groups, 1, 1],
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

    /// The floor of chained dispatch on a GPU (`None` on the CPU): µs per dispatch of
    /// [`DISPATCH_CHAIN`] dependent dispatches of a trivial kernel, recorded with wgpu
    /// alone in one compute pass with one bind group, submitted, and waited for. The
    /// median repeat, as `dispatch_overhead` reports, since the two are compared.
    pub(super) fn ceiling_dispatch(&self) -> Result<Option<Record>> {
        let Some(ctx) = self.device.gpu_context() else {
            return Ok(None);
        };
        let chain = RawChain::new(ctx)?;
        let t = self.time(|| {
            chain.run(ctx);
            Ok(())
        })?;
        let mut r = self.ceiling_record(
            "ceiling_dispatch",
            vec![DISPATCH_CHAIN as usize],
            &t,
            DISPATCH_CHAIN as usize,
            None,
            None,
        );
        // blo's profiler sees only blo's dispatches: a profile of this would be empty.
        r.profile = None;
        Ok(Some(r))
    }

    pub(super) fn ceiling_copy(&self) -> Result<Record> {
        // 256 MB per buffer: several times the last-level cache of any GPU (an H200 has
        // 60 MB of L2), so the copy streams from memory.
        let mut elems: usize = if self.config.quick { 1 << 22 } else { 1 << 26 };
        if let Some(ctx) = self.device.gpu_context() {
            // Buffers are checked against the binding limit; stay within it.
            let limit = ctx.limits().max_storage_buffer_binding_size / 4;
            while elems as u64 > limit && elems > 1024 {
                elems /= 2;
            }
        }
        let bytes = (elems * 4) as u64;
        let moved_per_copy = 2.0 * bytes as f64;
        match &self.device {
            Device::Gpu(ctx) => {
                // Two ways to copy; the ceiling is the faster. Either way each copy reads
                // what the last one wrote, and the buffer it replaces returns to the
                // pool as the next destination, so two buffers alternate.
                let mut last = Tensor::zeros(&[elems], &self.device)?;
                let (reps, t) = self.calibrated(|reps| {
                    // A whole-tensor slice is one buffer-to-buffer copy.
                    for _ in 0..reps {
                        last = last.slice(0, elems)?;
                    }
                    Ok(())
                })?;
                let buffer_copy = self.ceiling_record(
                    "ceiling_copy",
                    vec![elems],
                    &t,
                    reps,
                    None,
                    Some(moved_per_copy * reps as f64),
                );
                let n4 = (elems / 4) as u32;
                let params = CopyParams {
                    n4,
                    stride: COPY_GROUPS * COPY_WG,
                    _pad: [0; 2],
                };
                let (reps, t) = self.calibrated(|reps| {
                    for _ in 0..reps {
                        let mut out = ctx.dispatch_custom(
                            &self.copy_kernel,
                            bytemuck::bytes_of(&params),
                            &[&last],
                            &[&[elems]],
                            [COPY_GROUPS, 1, 1],
                        )?;
                        last = out.remove(0);
                    }
                    Ok(())
                })?;
                let kernel_copy = self.ceiling_record(
                    "ceiling_copy",
                    vec![elems],
                    &t,
                    reps,
                    None,
                    Some(moved_per_copy * reps as f64),
                );
                Ok(if kernel_copy.gbps >= buffer_copy.gbps {
                    kernel_copy
                } else {
                    buffer_copy
                })
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
                let moved = moved_per_copy * reps as f64;
                Ok(self.ceiling_record("ceiling_copy", vec![elems], &t, reps, None, Some(moved)))
            }
        }
    }
}

/// `ceiling_dispatch.wgsl` ready to dispatch on a context's own wgpu device: its
/// pipeline and the one bind group every dispatch of the chain reuses.
struct RawChain {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
}

impl RawChain {
    fn new(ctx: &GpuContext) -> Result<Self> {
        let device = ctx.wgpu_device();
        // A validation error is returned, not left to wgpu's uncaptured-error handler.
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("ceiling_dispatch"),
            source: wgpu::ShaderSource::Wgsl(include_str!("ceiling_dispatch.wgsl").into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("ceiling_dispatch"),
            layout: None,
            module: &module,
            entry_point: Some("chain_step"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ceiling_dispatch"),
            size: DISPATCH_ELEMS * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("ceiling_dispatch"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: buffer.as_entire_binding(),
            }],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                context: "creating the ceiling_dispatch pipeline".into(),
                message: e.to_string(),
            });
        }
        Ok(Self {
            pipeline,
            bind_group,
        })
    }

    /// Records the chain in one compute pass and submits it, without waiting (the
    /// timing's sync waits).
    fn run(&self, ctx: &GpuContext) {
        let device = ctx.wgpu_device();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("ceiling_dispatch"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("ceiling_dispatch"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &self.bind_group, &[]);
            for _ in 0..DISPATCH_CHAIN {
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        ctx.wgpu_queue().submit([encoder.finish()]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fma_kernel_validates_and_takes_its_params() {
        let k = fma_kernel().unwrap();
        assert_eq!((k.inputs(), k.outputs()), (0, 1));
        assert_eq!(k.param_bytes(), std::mem::size_of::<FmaParams>());
    }

    /// The copy ceiling's kernel copies every element, also when a grid smaller than
    /// the buffer has to stride over it several times.
    #[test]
    fn the_copy_kernel_copies_everything() {
        let k = copy_kernel().unwrap();
        assert_eq!((k.inputs(), k.outputs()), (1, 1));
        assert_eq!(k.param_bytes(), std::mem::size_of::<CopyParams>());
        let Some(gpu) = blo::testing::gpu_or_skip() else {
            return;
        };
        let ctx = gpu.gpu_context().unwrap();
        let n = 4 * 3001;
        let x = Tensor::rand_uniform(&[n], -1.0, 1.0, 7, &gpu).unwrap();
        let groups = 3;
        let params = CopyParams {
            n4: (n / 4) as u32,
            stride: groups * COPY_WG,
            _pad: [0; 2],
        };
        let y = ctx
            .dispatch_custom(
                &k,
                bytemuck::bytes_of(&params),
                &[&x],
                &[&[n]],
                [groups, 1, 1],
            )
            .unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    }

    /// The dispatch floor's kernel is valid WGSL (checked by naga, no adapter needed),
    /// and its chain runs on the context's own device without a wgpu error.
    #[test]
    fn the_dispatch_floor_kernel_validates_and_runs() {
        let module = naga::front::wgsl::parse_str(include_str!("ceiling_dispatch.wgsl"))
            .expect("ceiling_dispatch.wgsl parses");
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .expect("ceiling_dispatch.wgsl validates");
        let Some(gpu) = blo::testing::gpu_or_skip() else {
            return;
        };
        let ctx = gpu.gpu_context().unwrap();
        let chain = RawChain::new(ctx).unwrap();
        chain.run(ctx);
        ctx.sync().unwrap();
    }

    #[test]
    fn cpu_fma_runs_and_depends_on_iterations() {
        let (a, flops) = cpu_fma::run(10, 0.0);
        let (b, _) = cpu_fma::run(11, 0.0);
        assert!(flops >= 16);
        assert!(a.is_finite() && b.is_finite() && a != b);
    }
}
