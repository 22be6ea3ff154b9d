//! Custom WGSL kernels on GPU tensors: [`GpuContext::dispatch_custom`] checks the tensors
//! against the kernel's signature and the context, and runs it through the GPU backend
//! (`backend/gpu/custom.rs`). The outputs are constants to autodiff.

use std::sync::Arc;

use crate::backend::gpu::{CustomKernel, GpuContext};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

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
        kernel.check_counts(params.len(), inputs.len(), outputs.len())?;
        let mut buffers = Vec::with_capacity(inputs.len());
        for (i, t) in inputs.iter().enumerate() {
            let buf = t
                .gpu_buffer()
                .filter(|b| Arc::ptr_eq(&b.ctx, self))
                .ok_or_else(|| Error::DeviceMismatch {
                    op: "dispatch_custom",
                    lhs: t.device().to_string(),
                    rhs: Device::Gpu(self.clone()).to_string(),
                })?;
            kernel.check_input(i, buf)?;
            buffers.push(buf);
        }
        let out = self.run_custom(kernel, params, &buffers, outputs, workgroups)?;
        Ok(out
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
