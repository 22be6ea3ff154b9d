//! Custom WGSL kernels on GPU tensors: the extension point for kernels blo does not ship
//! (a new op under test, the benchmark's compute ceiling), dispatched into the same
//! command stream, pipeline machinery and buffer pool as blo's own kernels.

use std::sync::{Arc, Mutex, Weak};

use crate::device::GpuContext;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor, numel};

use super::gpu::PARAM_BLOCK;

/// One compute entry point of a user-supplied WGSL module, ready to dispatch on any GPU
/// device with [`GpuContext::dispatch_custom`]. Cloning is cheap; clones share the
/// pipelines compiled so far (one per device).
///
/// The module follows blo's binding convention, all in `@group(0)`: an optional
/// `var<uniform>` parameter block at binding 0 (at most 256 bytes), then the inputs as
/// `var<storage, read>` at bindings 1, 2, ..., then the outputs as
/// `var<storage, read_write>` right after them. [`CustomKernel::new`] reads that
/// signature from the WGSL (parsed and validated by naga, no adapter needed), so a
/// dispatch with the wrong number or size of buffers is an error before anything runs.
///
/// ```
/// use blo::{CustomKernel, Device, Tensor};
/// # fn main() -> blo::Result<()> {
/// // y = a·x + b, elementwise. The length comes in the parameter block: a binding is
/// // rounded up to whole 16 bytes, so `arrayLength` may exceed the tensor's length.
/// let axpb = CustomKernel::new(
///     "axpb",
///     r#"
///     struct Params { n: u32, a: f32, b: f32 }
///     @group(0) @binding(0) var<uniform> p: Params;
///     @group(0) @binding(1) var<storage, read> x: array<f32>;
///     @group(0) @binding(2) var<storage, read_write> y: array<f32>;
///     override WG: u32 = 64u;
///
///     @compute @workgroup_size(WG)
///     fn main(@builtin(global_invocation_id) id: vec3<u32>) {
///         if id.x < p.n { y[id.x] = p.a * x[id.x] + p.b; }
///     }
///     "#,
///     "main",
/// )?
/// .with_constant("WG", 32.0)?;
/// assert_eq!((axpb.inputs(), axpb.outputs(), axpb.param_bytes()), (1, 1, 12));
///
/// // Skips at run time on a machine without a GPU adapter.
/// let Ok(dev) = Device::gpu() else { return Ok(()) };
/// let ctx = dev.gpu_context().expect("a GPU device");
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0], &[5], &dev)?;
/// let mut params = Vec::new();
/// params.extend_from_slice(&5u32.to_ne_bytes());
/// params.extend_from_slice(&2.0f32.to_ne_bytes());
/// params.extend_from_slice(&0.5f32.to_ne_bytes());
/// let groups = 5u32.div_ceil(32);
/// let y = ctx.dispatch_custom(&axpb, &params, &[&x], &[&[5]], [groups, 1, 1])?;
/// assert_eq!(y[0].to_vec::<f32>()?, vec![2.5, 4.5, 6.5, 8.5, 10.5]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CustomKernel {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    source: String,
    entry: String,
    /// Override constants set with [`CustomKernel::with_constant`].
    constants: Vec<(String, f64)>,
    /// Names (and `@id`s) of the module's `override` declarations.
    overrides: Vec<String>,
    /// Size of the uniform parameter block, 0 without one.
    param_bytes: u64,
    /// Per input, then per output: the binding's WGSL name and its smallest size in
    /// bytes (one element for a runtime-sized array).
    inputs: Vec<(String, u64)>,
    outputs: Vec<(String, u64)>,
    /// One pipeline per device it ran on. A `Weak` keeps its context's address from
    /// being reused, so a pipeline is never handed to a different device.
    pipelines: Mutex<Vec<(Weak<GpuContext>, Arc<wgpu::ComputePipeline>)>>,
}

impl std::fmt::Debug for CustomKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomKernel")
            .field("name", &self.inner.name)
            .field("entry", &self.inner.entry)
            .field("constants", &self.inner.constants)
            .field("param_bytes", &self.inner.param_bytes)
            .field("inputs", &self.inner.inputs)
            .field("outputs", &self.inner.outputs)
            .finish_non_exhaustive()
    }
}

impl CustomKernel {
    /// Parses and validates `wgsl` with naga and reads the binding signature of its
    /// module (see [`CustomKernel`]); `entry` must be a `@compute` function of it. `name` labels errors and GPU debug tools. A syntax or validation error, a
    /// missing entry point, or a binding outside the convention is an [`Error::Shader`].
    pub fn new(name: &str, wgsl: &str, entry: &str) -> Result<CustomKernel> {
        let err = |message: String| Error::Shader {
            kernel: name.to_string(),
            message,
        };
        let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| err(e.emit_to_string(wgsl)))?;
        // Every capability: what the chosen adapter lacks is reported when the pipeline
        // is created on it.
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .map_err(|e| err(e.emit_to_string(wgsl)))?;
        if !module
            .entry_points
            .iter()
            .any(|ep| ep.name == entry && ep.stage == naga::ShaderStage::Compute)
        {
            let found: Vec<&str> = module
                .entry_points
                .iter()
                .filter(|ep| ep.stage == naga::ShaderStage::Compute)
                .map(|ep| ep.name.as_str())
                .collect();
            return Err(err(format!(
                "no @compute entry point `{entry}` (found: {})",
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            )));
        }
        let signature = Signature::of(&module).map_err(err)?;
        if signature.param_bytes > PARAM_BLOCK {
            return Err(err(format!(
                "the uniform parameter block is {} bytes; blo passes at most {PARAM_BLOCK}",
                signature.param_bytes
            )));
        }
        let overrides = module
            .overrides
            .iter()
            .flat_map(|(_, o)| {
                o.name
                    .clone()
                    .into_iter()
                    .chain(o.id.map(|i| i.to_string()))
            })
            .collect();
        Ok(CustomKernel {
            inner: Arc::new(Inner {
                name: name.to_string(),
                source: wgsl.to_string(),
                entry: entry.to_string(),
                constants: Vec::new(),
                overrides,
                param_bytes: signature.param_bytes,
                inputs: signature.inputs,
                outputs: signature.outputs,
                pipelines: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The same kernel with the WGSL `override` constant `name` (its identifier, or its
    /// `@id` in decimal) set to `value`, as `PipelineCompilationOptions::constants` sets
    /// it; setting one twice keeps the last value. An `override` the module does not
    /// declare is an [`Error::Shader`]; a value its type cannot hold is reported when the
    /// pipeline is created. Set constants once and reuse the kernel: each distinct
    /// kernel compiles its own pipeline per device.
    pub fn with_constant(&self, name: &str, value: f64) -> Result<CustomKernel> {
        let k = &self.inner;
        if !k.overrides.iter().any(|o| o == name) {
            return Err(Error::Shader {
                kernel: k.name.clone(),
                message: format!(
                    "no `override {name}` in the module (declared: {})",
                    if k.overrides.is_empty() {
                        "none".to_string()
                    } else {
                        k.overrides.join(", ")
                    }
                ),
            });
        }
        let mut constants = k.constants.clone();
        constants.retain(|(n, _)| n != name);
        constants.push((name.to_string(), value));
        Ok(CustomKernel {
            inner: Arc::new(Inner {
                name: k.name.clone(),
                source: k.source.clone(),
                entry: k.entry.clone(),
                constants,
                overrides: k.overrides.clone(),
                param_bytes: k.param_bytes,
                inputs: k.inputs.clone(),
                outputs: k.outputs.clone(),
                pipelines: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The name given to [`CustomKernel::new`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Number of input buffers (`var<storage, read>`) a dispatch takes.
    pub fn inputs(&self) -> usize {
        self.inner.inputs.len()
    }

    /// Number of output buffers (`var<storage, read_write>`) a dispatch returns.
    pub fn outputs(&self) -> usize {
        self.inner.outputs.len()
    }

    /// Size in bytes of the uniform parameter block a dispatch passes (0 without one).
    pub fn param_bytes(&self) -> usize {
        self.inner.param_bytes as usize
    }

    fn args_error(&self, what: String, expected: u64, got: u64) -> Error {
        Error::KernelArguments {
            kernel: self.inner.name.clone(),
            what,
            expected,
            got,
        }
    }

    /// This kernel's pipeline on `ctx`, compiled on first use.
    fn pipeline(&self, ctx: &Arc<GpuContext>) -> Result<Arc<wgpu::ComputePipeline>> {
        let k = &self.inner;
        let mut pipelines = k.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        let me = Arc::downgrade(ctx);
        pipelines.retain(|(c, _)| c.strong_count() > 0);
        if let Some((_, p)) = pipelines.iter().find(|(c, _)| c.ptr_eq(&me)) {
            return Ok(p.clone());
        }
        let module = ctx.compile_module(&k.name, &k.source)?;
        let constants: Vec<(&str, f64)> =
            k.constants.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let pipeline = ctx.create_pipeline(
            &format!("{}::{}", k.name, k.entry),
            &module,
            &k.entry,
            (k.inputs.len() as u32, k.outputs.len() as u32),
            &constants,
            true,
        )?;
        pipelines.push((me, pipeline.clone()));
        Ok(pipeline)
    }
}

/// A module's bindings read into blo's convention.
struct Signature {
    param_bytes: u64,
    inputs: Vec<(String, u64)>,
    outputs: Vec<(String, u64)>,
}

impl Signature {
    fn of(module: &naga::Module) -> std::result::Result<Signature, String> {
        const CONVENTION: &str = "blo's convention is @group(0): an optional var<uniform> at @binding(0), \
            then var<storage, read> inputs at @binding(1), (2), ..., then var<storage, read_write> outputs";
        let mut uniform = None;
        // (binding, read-only, name, smallest size)
        let mut storage: Vec<(u32, bool, String, u64)> = Vec::new();
        for (_, var) in module.global_variables.iter() {
            let Some(rb) = &var.binding else { continue };
            let name = var
                .name
                .clone()
                .unwrap_or_else(|| format!("binding {}", rb.binding));
            if rb.group != 0 {
                return Err(format!("`{name}` is in @group({}); {CONVENTION}", rb.group));
            }
            // Validation bounds every type's size, so this is always `Some`.
            let bytes = module.types[var.ty]
                .inner
                .try_size(module.to_ctx())
                .map_or(u64::MAX, u64::from);
            match var.space {
                naga::AddressSpace::Uniform if rb.binding == 0 => uniform = Some(bytes),
                naga::AddressSpace::Storage { access } if rb.binding > 0 => storage.push((
                    rb.binding,
                    !access.contains(naga::StorageAccess::STORE),
                    name,
                    bytes,
                )),
                _ => {
                    return Err(format!(
                        "`{name}` at @binding({}) is not a buffer of the kind expected there; {CONVENTION}",
                        rb.binding
                    ));
                }
            }
        }
        storage.sort_by_key(|s| s.0);
        for (i, s) in storage.iter().enumerate() {
            if s.0 as usize != i + 1 {
                return Err(format!(
                    "storage bindings must be @binding(1), (2), ... without gaps, found @binding({}) for `{}`",
                    s.0, s.2
                ));
            }
        }
        let inputs = storage.iter().take_while(|s| s.1).count();
        if let Some(s) = storage[inputs..].iter().find(|s| s.1) {
            return Err(format!(
                "read-only `{}` at @binding({}) follows a read_write buffer; {CONVENTION}",
                s.2, s.0
            ));
        }
        let mut named = storage.into_iter().map(|s| (s.2, s.3));
        Ok(Signature {
            param_bytes: uniform.unwrap_or(0),
            inputs: named.by_ref().take(inputs).collect(),
            outputs: named.collect(),
        })
    }
}

impl GpuContext {
    /// Records one dispatch of a [`CustomKernel`] and returns its outputs: new f32
    /// tensors of the given shapes on this device, whose contents are whatever the kernel
    /// writes (unwritten elements are undefined; NaN with [`GpuContext::set_poison`]).
    ///
    /// `params` is the uniform parameter block's bytes (exactly
    /// [`CustomKernel::param_bytes`] of them, e.g. `bytemuck::bytes_of` of a `#[repr(C)]`
    /// struct laid out like the WGSL one); `inputs` are f32 tensors on this device, bound
    /// in order; `workgroups` is the grid, each count at most the adapter's
    /// `max_compute_workgroups_per_dimension` (a zero count records nothing). Like every
    /// op, the dispatch is queued and nothing waits until a value is read. The outputs are
    /// constants to autodiff: a custom kernel has no backward rule.
    ///
    /// Errors: [`Error::KernelArguments`] for a wrong number of inputs or outputs, a
    /// parameter block of the wrong size or a buffer smaller than a fixed-size binding;
    /// [`Error::DeviceMismatch`] for an input on another device; [`Error::TooLarge`] past
    /// an adapter limit; [`Error::Gpu`] if the device rejects the kernel.
    pub fn dispatch_custom(
        self: &Arc<Self>,
        kernel: &CustomKernel,
        params: &[u8],
        inputs: &[&Tensor],
        outputs: &[&[usize]],
        workgroups: [u32; 3],
    ) -> Result<Vec<Tensor>> {
        let k = &kernel.inner;
        let count = |what: &str, expected: usize, got: usize| {
            (expected != got).then(|| kernel.args_error(what.into(), expected as u64, got as u64))
        };
        if let Some(e) = count("input buffers", k.inputs.len(), inputs.len())
            .or_else(|| count("output buffers", k.outputs.len(), outputs.len()))
            .or_else(|| count("parameter bytes", k.param_bytes as usize, params.len()))
        {
            return Err(e);
        }
        let too_small = |i: usize, name: &str, need: u64, bound: u64| {
            kernel.args_error(
                format!("bytes bound at @binding({}) (`{name}`)", i + 1),
                need,
                bound,
            )
        };
        let mut buffers = Vec::with_capacity(inputs.len() + outputs.len());
        for (i, (t, (name, need))) in inputs.iter().zip(&k.inputs).enumerate() {
            let buf = t
                .gpu_buffer()
                .filter(|b| Arc::ptr_eq(&b.ctx, self))
                .ok_or_else(|| Error::DeviceMismatch {
                    op: "dispatch_custom",
                    lhs: t.device().to_string(),
                    rhs: crate::Device::Gpu(self.clone()).to_string(),
                })?;
            if buf.binding_size() < *need {
                return Err(too_small(i, name, *need, buf.binding_size()));
            }
            buffers.push(buf);
        }
        for (j, (shape, (name, need))) in outputs.iter().zip(&k.outputs).enumerate() {
            // Bindings are whole 16-byte units (at least one), as in `GpuBuffer`.
            let bound = ((numel(shape) * 4) as u64).div_ceil(16).max(1) * 16;
            if bound < *need {
                return Err(too_small(inputs.len() + j, name, *need, bound));
            }
            self.check_size("dispatch_custom output", (numel(shape) * 4) as u64)?;
        }
        self.check_workgroups(&k.name, workgroups)?;
        let pipeline = kernel.pipeline(self)?;
        let out_buffers = outputs
            .iter()
            .map(|shape| self.alloc((numel(shape) * 4) as u64))
            .collect::<Result<Vec<_>>>()?;
        if !workgroups.contains(&0) {
            buffers.extend(&out_buffers);
            self.record(
                &pipeline,
                (k.inputs.len() as u32, k.outputs.len() as u32),
                params,
                &buffers,
                workgroups,
            );
        }
        Ok(out_buffers
            .into_iter()
            .zip(outputs)
            .map(|(b, shape)| Tensor::from_storage(Storage::Gpu(b), shape))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::gpu_or_skip;

    const AXPB: &str = r#"
        struct Params { n: u32, a: f32, b: f32 }
        @group(0) @binding(0) var<uniform> p: Params;
        @group(0) @binding(1) var<storage, read> x: array<f32>;
        @group(0) @binding(2) var<storage, read_write> y: array<f32>;
        override WG: u32 = 64u;

        @compute @workgroup_size(WG)
        fn main(@builtin(global_invocation_id) id: vec3<u32>) {
            if id.x < p.n { y[id.x] = p.a * x[id.x] + p.b; }
        }
    "#;

    fn params(n: u32, a: f32, b: f32) -> Vec<u8> {
        [n.to_ne_bytes(), a.to_ne_bytes(), b.to_ne_bytes()].concat()
    }

    #[test]
    fn the_signature_comes_from_the_wgsl() {
        let k = CustomKernel::new("axpb", AXPB, "main").unwrap();
        assert_eq!((k.inputs(), k.outputs(), k.param_bytes()), (1, 1, 12));
        assert_eq!(k.name(), "axpb");
        let src = r#"
            @group(0) @binding(1) var<storage, read> a: array<f32>;
            @group(0) @binding(2) var<storage, read> b: array<f32, 64>;
            @group(0) @binding(3) var<storage, read_write> c: array<f32>;
            @group(0) @binding(4) var<storage, read_write> d: array<f32>;
            @compute @workgroup_size(1) fn go() { c[0] = a[0] + b[0]; d[0] = 1.0; }
        "#;
        let k = CustomKernel::new("two_two", src, "go").unwrap();
        assert_eq!((k.inputs(), k.outputs(), k.param_bytes()), (2, 2, 0));
        assert_eq!(k.inner.inputs[1], ("b".to_string(), 256));
    }

    #[test]
    fn a_broken_shader_is_an_error_not_a_panic() {
        let shader_err = |src: &str, entry: &str| match CustomKernel::new("k", src, entry) {
            Err(Error::Shader { kernel, message }) => {
                assert_eq!(kernel, "k");
                message
            }
            other => panic!("expected Error::Shader, got {other:?}"),
        };
        // Syntax, then types (naga's validation), each with naga's diagnostic.
        let m = shader_err(
            "@compute @workgroup_size(1) fn main() { let x = ; }",
            "main",
        );
        assert!(m.contains("expected"), "{m}");
        let m = shader_err(
            "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }",
            "main",
        );
        assert!(!m.is_empty());
        let m = shader_err(AXPB, "mian");
        assert!(m.contains("`mian`") && m.contains("main"), "{m}");
        // Bindings outside the convention.
        let gap = r#"
            @group(0) @binding(2) var<storage, read_write> y: array<f32>;
            @compute @workgroup_size(1) fn main() { y[0] = 1.0; }
        "#;
        assert!(shader_err(gap, "main").contains("@binding(2)"));
        let order = r#"
            @group(0) @binding(1) var<storage, read_write> y: array<f32>;
            @group(0) @binding(2) var<storage, read> x: array<f32>;
            @compute @workgroup_size(1) fn main() { y[0] = x[0]; }
        "#;
        assert!(shader_err(order, "main").contains("follows a read_write"));
        let group = r#"
            @group(1) @binding(1) var<storage, read_write> y: array<f32>;
            @compute @workgroup_size(1) fn main() { y[0] = 1.0; }
        "#;
        assert!(shader_err(group, "main").contains("@group(1)"));
        let big = r#"
            @group(0) @binding(0) var<uniform> p: array<vec4<f32>, 17>;
            @group(0) @binding(1) var<storage, read_write> y: array<f32>;
            @compute @workgroup_size(1) fn main() { y[0] = p[0].x; }
        "#;
        assert!(shader_err(big, "main").contains("272 bytes"));
        // An override the module does not declare.
        let k = CustomKernel::new("k", AXPB, "main").unwrap();
        match k.with_constant("TILE", 8.0) {
            Err(Error::Shader { message, .. }) => assert!(message.contains("WG"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_custom_kernel_computes_a_known_result() {
        let Some(dev) = gpu_or_skip() else { return };
        let ctx = dev.gpu_context().unwrap();
        let k = CustomKernel::new("axpb", AXPB, "main")
            .unwrap()
            .with_constant("WG", 32.0)
            .unwrap();
        // 1000 is not a multiple of the workgroup: the tail is guarded by p.n.
        let n = 1000;
        let (x32, x64) = crate::testing::oracle_pair(&[n], 7);
        let x = Tensor::from_vec(x32, &[n], &dev).unwrap();
        let y = ctx
            .dispatch_custom(
                &k,
                &params(n as u32, -1.5, 0.25),
                &[&x],
                &[&[10, 100]],
                [(n as u32).div_ceil(32), 1, 1],
            )
            .unwrap();
        assert_eq!(y.len(), 1);
        assert_eq!(y[0].shape(), &[10, 100]);
        assert_eq!(y[0].device(), dev);
        let want: Vec<f64> = x64.iter().map(|v| -1.5 * v + 0.25).collect();
        let got: Vec<f64> = y[0].to_vec::<f64>().unwrap();
        // One f32 multiply-add per element: a few ulps.
        let (worst, at) = crate::testing::worst_violation(&got, &want, 1e-6, 1e-6);
        assert!(worst <= 1.0, "element {at}: {} vs {}", got[at], want[at]);
        // The outputs feed ordinary ops.
        let s = y[0].sum().unwrap().to_scalar::<f32>().unwrap();
        assert!((f64::from(s) - want.iter().sum::<f64>()).abs() < 1e-3);
        // Overrides select the workgroup size: with WG = 64 half the groups cover all.
        let k64 = k.with_constant("WG", 64.0).unwrap();
        let y = ctx
            .dispatch_custom(
                &k64,
                &params(n as u32, 2.0, 0.0),
                &[&x],
                &[&[n]],
                [(n as u32).div_ceil(64), 1, 1],
            )
            .unwrap();
        let got = y[0].to_vec::<f64>().unwrap();
        let want: Vec<f64> = x64.iter().map(|v| 2.0 * v).collect();
        let (worst, at) = crate::testing::worst_violation(&got, &want, 1e-6, 1e-6);
        assert!(worst <= 1.0, "element {at}: {} vs {}", got[at], want[at]);
    }

    #[test]
    fn wrong_buffers_and_params_are_typed_errors() {
        let Some(dev) = gpu_or_skip() else { return };
        let ctx = dev.gpu_context().unwrap();
        let k = CustomKernel::new("axpb", AXPB, "main").unwrap();
        let x = Tensor::from_vec(vec![1.0f32; 8], &[8], &dev).unwrap();
        let p = params(8, 1.0, 0.0);
        let args = |r: Result<Vec<Tensor>>| match r {
            Err(Error::KernelArguments {
                kernel,
                what,
                expected,
                got,
            }) => {
                assert!(["axpb", "table"].contains(&kernel.as_str()), "{kernel}");
                (what, expected, got)
            }
            other => panic!("expected Error::KernelArguments, got {other:?}"),
        };
        let g = [1, 1, 1];
        assert_eq!(
            args(ctx.dispatch_custom(&k, &p, &[], &[&[8]], g)),
            ("input buffers".into(), 1, 0)
        );
        assert_eq!(
            args(ctx.dispatch_custom(&k, &p, &[&x, &x], &[&[8]], g)),
            ("input buffers".into(), 1, 2)
        );
        assert_eq!(
            args(ctx.dispatch_custom(&k, &p, &[&x], &[], g)),
            ("output buffers".into(), 1, 0)
        );
        assert_eq!(
            args(ctx.dispatch_custom(&k, &p[..8], &[&x], &[&[8]], g)),
            ("parameter bytes".into(), 12, 8)
        );
        // A fixed-size binding needs a buffer at least that large.
        let table = r#"
            @group(0) @binding(1) var<storage, read> t: array<f32, 64>;
            @group(0) @binding(2) var<storage, read_write> y: array<f32, 16>;
            @compute @workgroup_size(1) fn main() { y[0] = t[63]; }
        "#;
        let k = CustomKernel::new("table", table, "main").unwrap();
        let (what, expected, got) = args(ctx.dispatch_custom(&k, &[], &[&x], &[&[16]], g));
        assert!(
            what.contains("@binding(1)") && what.contains("`t`"),
            "{what}"
        );
        assert_eq!((expected, got), (256, 32));
        let t = Tensor::zeros(&[64], &dev).unwrap();
        let (what, expected, got) = args(ctx.dispatch_custom(&k, &[], &[&t], &[&[3]], g));
        assert!(what.contains("@binding(2)"), "{what}");
        assert_eq!((expected, got), (64, 16));
        assert!(ctx.dispatch_custom(&k, &[], &[&t], &[&[16]], g).is_ok());
        // Inputs on another device, and grids past the adapter's limit.
        let k = CustomKernel::new("axpb", AXPB, "main").unwrap();
        let cpu = Tensor::from_vec(vec![1.0f32; 8], &[8], &crate::Device::Cpu).unwrap();
        assert!(matches!(
            ctx.dispatch_custom(&k, &p, &[&cpu], &[&[8]], g),
            Err(Error::DeviceMismatch { .. })
        ));
        let too_many = ctx.limits().max_compute_workgroups_per_dimension + 1;
        assert!(matches!(
            ctx.dispatch_custom(&k, &p, &[&x], &[&[8]], [too_many, 1, 1]),
            Err(Error::TooLarge { .. })
        ));
        // None of these left an error on the device: the next op still works.
        let y = ctx.dispatch_custom(&k, &p, &[&x], &[&[8]], g).unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![1.0; 8]);
    }

    #[test]
    fn a_kernel_the_device_rejects_is_an_error() {
        let Some(dev) = gpu_or_skip() else { return };
        let ctx = dev.gpu_context().unwrap();
        // Valid WGSL, but the workgroup is larger than any adapter allows.
        let src = r#"
            @group(0) @binding(1) var<storage, read_write> y: array<f32>;
            override WG: u32 = 64u;
            @compute @workgroup_size(WG) fn main() { y[0] = 1.0; }
        "#;
        let k = CustomKernel::new("huge", src, "main")
            .unwrap()
            .with_constant("WG", 1e6)
            .unwrap();
        let r = ctx.dispatch_custom(&k, &[], &[], &[&[1]], [1, 1, 1]);
        assert!(matches!(r, Err(Error::Gpu { .. })), "{r:?}");
        dev.sync().unwrap();
    }
}
