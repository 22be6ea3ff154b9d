//! Custom WGSL kernels: the extension point for kernels blo does not ship (a new op under
//! test, the benchmark's compute ceiling), dispatched into the same command stream,
//! pipeline machinery and buffer pool as blo's own kernels. The tensor-facing call,
//! [`GpuContext::dispatch_custom`], is in `ops/custom.rs`; this file parses a kernel's
//! signature and runs it on buffers.

use std::sync::{Arc, Mutex, Weak};

use super::context::{GpuContext, PARAM_BLOCK};
use super::pool::GpuBuffer;
use super::profile::Label;
use crate::error::{Error, Result};

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

impl CustomKernel {
    /// Checks the numbers of parameter bytes, inputs and outputs of a dispatch against
    /// the kernel's signature.
    pub(crate) fn check_counts(&self, params: usize, inputs: usize, outputs: usize) -> Result<()> {
        let k = &self.inner;
        let count = |what: &str, expected: usize, got: usize| {
            (expected != got).then(|| self.args_error(what.into(), expected as u64, got as u64))
        };
        match count("input buffers", k.inputs.len(), inputs)
            .or_else(|| count("output buffers", k.outputs.len(), outputs))
            .or_else(|| count("parameter bytes", k.param_bytes as usize, params))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Checks that input `i`'s buffer covers its binding when the binding has a fixed size.
    pub(crate) fn check_input(&self, i: usize, buf: &GpuBuffer) -> Result<()> {
        let (name, need) = &self.inner.inputs[i];
        if buf.binding_size() < *need {
            return Err(self.too_small(i, name, *need, buf.binding_size()));
        }
        Ok(())
    }

    fn too_small(&self, binding: usize, name: &str, need: u64, bound: u64) -> Error {
        self.args_error(
            format!("bytes bound at @binding({}) (`{name}`)", binding + 1),
            need,
            bound,
        )
    }
}

impl GpuContext {
    /// Records one dispatch of `kernel` on `inputs` (checked with
    /// [`CustomKernel::check_counts`] and [`CustomKernel::check_input`]) into new output
    /// buffers of the shapes `outputs`; see `GpuContext::dispatch_custom`.
    pub(crate) fn run_custom(
        self: &Arc<Self>,
        kernel: &CustomKernel,
        params: &[u8],
        inputs: &[&GpuBuffer],
        outputs: &[&[usize]],
        workgroups: [u32; 3],
    ) -> Result<Vec<GpuBuffer>> {
        let k = &kernel.inner;
        let numel = |shape: &[usize]| shape.iter().product::<usize>();
        for (j, (shape, (name, need))) in outputs.iter().zip(&k.outputs).enumerate() {
            let n = numel(shape);
            // Bindings are whole 16-byte units (at least one), as in `GpuBuffer`.
            let bound = ((n * 4) as u64).div_ceil(16).max(1) * 16;
            if bound < *need {
                return Err(kernel.too_small(inputs.len() + j, name, *need, bound));
            }
            self.check_size("dispatch_custom output", (n * 4) as u64)?;
        }
        self.check_workgroups(&k.name, workgroups)?;
        for b in inputs {
            b.compute()?;
        }
        let pipeline = kernel.pipeline(self)?;
        let out_buffers = outputs
            .iter()
            .map(|shape| self.alloc((numel(shape) * 4) as u64))
            .collect::<Result<Vec<_>>>()?;
        if !workgroups.contains(&0) {
            let mut buffers = Vec::with_capacity(inputs.len() + out_buffers.len());
            buffers.extend_from_slice(inputs);
            buffers.extend(&out_buffers);
            self.record(
                &pipeline,
                Label::Custom(&k.name),
                (k.inputs.len() as u32, k.outputs.len() as u32),
                params,
                &buffers,
                workgroups,
            );
        }
        Ok(out_buffers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
