//! Shader modules, bind-group layouts and compute pipelines, each created once per
//! context and cached; creation errors are returned, never a panic.

use std::sync::Arc;

use super::context::{GpuContext, gpu_err};
use super::shaders::Shader;
use crate::error::Result;

/// One compute entry point of a shader, with its binding signature: binding 0 is the
/// parameter uniform, then `reads` read-only storage buffers, then `writes` read-write
/// storage buffers.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub reads: u32,
    pub writes: u32,
}

/// The bind-group layout of a binding signature and the pipeline layout around it.
pub(super) type KernelLayout = (wgpu::BindGroupLayout, wgpu::PipelineLayout);

pub(super) type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

impl GpuContext {
    fn module(&self, shader: &'static Shader) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(shader.name) {
            return Ok(m.clone());
        }
        let module = Arc::new(self.compile_module(shader.name, shader.source()?)?);
        modules.insert(shader.name, module.clone());
        Ok(module)
    }

    /// Compiles WGSL into a shader module; a compile error is returned, never a panic.
    pub(crate) fn compile_module(&self, name: &str, source: &str) -> Result<wgpu::ShaderModule> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(gpu_err(format!("compiling shader {name}"), e));
        }
        Ok(module)
    }

    pub(super) fn layout(&self, reads: u32, writes: u32) -> Arc<KernelLayout> {
        let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        layouts
            .entry((reads, writes))
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: None,
                    },
                    count: None,
                }];
                for i in 0..reads + writes {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: 1 + i,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: i < reads,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                let bgl = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some("blo kernel"),
                        entries: &entries,
                    });
                let pl = self
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some("blo kernel"),
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                Arc::new((bgl, pl))
            })
            .clone()
    }

    /// The compute pipeline of `kernel` specialised with `constants` (WGSL `override`s),
    /// created once and cached. A shader error is returned, never a panic.
    pub(crate) fn pipeline(
        &self,
        kernel: &'static Kernel,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key: PipelineKey = (
            kernel.shader.name,
            kernel.entry,
            constants.iter().map(|(k, v)| (*k, v.to_bits())).collect(),
        );
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let module = self.module(kernel.shader)?;
        let pipeline = self.create_pipeline(
            &format!("{}::{}", kernel.shader.name, kernel.entry),
            &module,
            kernel.entry,
            (kernel.reads, kernel.writes),
            constants,
            false,
        )?;
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Creates the compute pipeline of `entry` in `module` with blo's binding signature of
    /// `reads` and `writes` storage buffers; a shader error is returned, never a panic.
    /// `zero_workgroup_memory` follows WGSL's rule that workgroup memory starts at zero;
    /// blo's own kernels initialise what they read and skip it.
    pub(crate) fn create_pipeline(
        &self,
        label: &str,
        module: &wgpu::ShaderModule,
        entry: &str,
        (reads, writes): (u32, u32),
        constants: &[(&str, f64)],
        zero_workgroup_memory: bool,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let layout = self.layout(reads, writes);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&layout.1),
                module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: zero_workgroup_memory,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(gpu_err(format!("creating pipeline {label}"), e));
        }
        Ok(Arc::new(pipeline))
    }
}
