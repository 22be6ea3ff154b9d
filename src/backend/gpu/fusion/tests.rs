use super::*;
use crate::backend::{ALL_BINARY, ALL_UNARY, BinaryOp, FullOp, UnaryOp};
use crate::bilevel::{Inner, InnerOptimizer, Method, Problem, hypergradient_from};
use crate::problems::Ridge;
use crate::testing::{fresh_gpu_or_skip, rel_err};
use crate::{DType, Device, Tensor};

/// A GPU context of its own with fusion on (whatever `BLO_FUSION` says).
fn fused_gpu() -> Option<Device> {
    let gpu = fresh_gpu_or_skip()?;
    gpu.gpu_context()?.set_fusion(true);
    Some(gpu)
}

/// Parses and validates generated WGSL with naga (no adapter needed).
fn validate(source: &str) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{}\n{source}", e.emit_to_string(source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}\n{source}", e.emit_to_string(source)));
}

/// Every op the fusion can generate, over a full-length and a one-element input, in
/// one kernel and each alone: the WGSL parses and validates.
#[test]
fn every_fused_op_generates_valid_wgsl() {
    let (v, s) = (Arg::Input(0), Arg::Input(1));
    let mut ops: Vec<(FusedOp, Vec<Arg>)> =
        vec![(FusedOp::Fill, vec![]), (FusedOp::Splat, vec![s])];
    ops.extend(ALL_UNARY.iter().map(|&u| (FusedOp::Unary(u), vec![v])));
    ops.extend(ALL_BINARY.iter().map(|&b| (FusedOp::Binary(b), vec![v, s])));
    ops.push((FusedOp::Binary(BinaryOp::Add), vec![v, Arg::Input(2)]));
    ops.push((FusedOp::Splat, vec![Arg::Input(2)]));
    for a in [CoefSource::Host, CoefSource::Device, CoefSource::Ratio] {
        for b in [CoefSource::Host, CoefSource::Device] {
            if a == CoefSource::Ratio && b == CoefSource::Device {
                continue; // never formed (`Coefs::Ratio` has b = 1)
            }
            let mut args = vec![v, Arg::Op(0)];
            let scalars = match (a, b) {
                (CoefSource::Host, CoefSource::Host) => 0,
                (CoefSource::Ratio, _) | (CoefSource::Device, CoefSource::Device) => 2,
                _ => 1,
            };
            args.extend(std::iter::repeat_n(s, scalars));
            ops.push((FusedOp::Update { a, b }, args));
        }
    }
    // Inputs: one read whole, one single element, one through a broadcast stride.
    let splats = [Read::Whole, Read::Splat, Read::Strided];
    // Reductions end an expression: each alone, over an op and an input.
    for r in [FullOp::Sum, FullOp::SumSq, FullOp::Dot, FullOp::SqDiff] {
        let ops = [
            (FusedOp::Unary(UnaryOp::Exp), vec![v]),
            (FusedOp::Reduce(r), vec![Arg::Op(0), v]),
        ];
        let src = wgsl(&ops, &splats, &[0], 1, &signature(&ops, &splats));
        assert!(src.contains("workgroupBarrier"), "{src}");
        validate(&src);
    }
    for (op, args) in &ops {
        let one = [(
            *op,
            args.iter()
                .map(|a| if *a == Arg::Op(0) { v } else { *a })
                .collect(),
        )];
        validate(&wgsl(&one, &splats, &[], 0, &signature(&one, &splats)));
    }
    // All at once, each op reading the previous one, as a chain does.
    let chained: Vec<(FusedOp, Vec<Arg>)> = ops
        .iter()
        .enumerate()
        .map(|(k, (op, args))| {
            let prev = if k == 0 { v } else { Arg::Op(k - 1) };
            let args = args
                .iter()
                .map(|a| if *a == v { prev } else { *a })
                .collect();
            (*op, args)
        })
        .collect();
    let sig = signature(&chained, &splats);
    assert!(
        sig.starts_with("v0s1t2|Fill|Splat,i1|Unary(Neg),o1"),
        "{sig}"
    );
    let last = chained.len() - 1;
    assert!(wgsl(&chained, &splats, &[], last, &sig).contains("fn load2("));
    validate(&wgsl(&chained, &splats, &[3, 7], last, &sig));
    // A kernel with companions returns its root, which is then not the last op.
    let src = wgsl(&chained, &splats, &[last], 2, &sig);
    assert!(src.contains("return o2;"), "{src}");
    validate(&src);
}

fn values(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0) - 1.0)
        .collect()
}

/// The same expression on three devices: the GPU fused, the GPU unfused, the CPU in f64.
fn expression(x: &Tensor, y: &Tensor, s: &Tensor, d: &Tensor) -> crate::Result<Tensor> {
    let a = x.exp()?.mul(y)?.scale_shift(0.5, -0.25)?; // shared below
    let b = a.sub(&x.tanh()?)?.div(&y.abs()?.scale_shift(1.0, 1.0)?)?;
    let c = b
        .maximum(&a.sigmoid()?)?
        .mul(&x.gt(y)?)?
        .add(&a.square()?)?;
    let e = c
        .axpy(s, &a)?
        .axpy_ratio(s, d, -1.0, &b)?
        .axpby(d, 0.5, &x.relu()?)?;
    let f = e.mul(s)?.add(&x.zeros_like()?.scale_shift(1.0, 1.0)?)?;
    f.add(&s.broadcast_to(x.shape())?)?
        .sub(&x.sin()?.mul(&y.cos()?)?)?
        .mul(&x.sign()?.relu_mask()?.scale_shift(1.0, 0.5)?)
}

/// Fused kernels compute what one dispatch per op computes, and what the CPU computes
/// in f64, at awkward sizes (1, primes, past a workgroup of vec4s), with new buffers
/// poisoned; a shared subexpression is evaluated once per kernel.
#[test]
fn fused_expressions_match_unfused_ones_and_the_cpu_in_f64() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    for n in [1usize, 2, 5, 7, 257, 1031, 4099] {
        let (xv, yv) = (values(n, 1), values(n, 2));
        let run = |dev: &Device, dtype: DType| -> Vec<f64> {
            let t = |v: &[f64], shape: &[usize]| {
                Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
                    .and_then(|t| match dtype {
                        DType::F64 => Ok(t),
                        DType::F32 => t.to_dtype(DType::F32),
                    })
                    .and_then(|t| t.to_device(dev))
                    .unwrap()
            };
            let (x, y) = (t(&xv, &[n]), t(&yv, &[n]));
            let (s, d) = (t(&[0.75], &[]), t(&[-1.5], &[]));
            expression(&x, &y, &s, &d).unwrap().to_vec::<f64>().unwrap()
        };
        let want = run(&Device::Cpu, DType::F64);
        let mut dispatches = [0u64; 2];
        let mut out = [Vec::new(), Vec::new()];
        for (k, fused) in [false, true].into_iter().enumerate() {
            ctx.set_fusion(fused);
            out[k] = run(&gpu, DType::F32);
            // Counted again without poisoning, which adds a fill per new buffer.
            ctx.set_poison(false);
            let before = ctx.dispatch_count();
            run(&gpu, DType::F32);
            dispatches[k] = ctx.dispatch_count() - before;
            ctx.set_poison(true);
        }
        let [unfused, fused] = out;
        let [unfused_dispatches, fused_dispatches] = dispatches;
        assert!(
            rel_err(&fused, &unfused) <= 1e-6,
            "n = {n}: {:e}",
            rel_err(&fused, &unfused)
        );
        assert!(
            rel_err(&fused, &want) <= 1e-5,
            "n = {n}: {:e}",
            rel_err(&fused, &want)
        );
        // Over 30 ops: the expression is a few kernels (it passes MAX_NODES, which
        // computes its largest operand first).
        assert!(unfused_dispatches >= 30, "{unfused_dispatches}");
        assert!(
            fused_dispatches <= 6,
            "n = {n}: {fused_dispatches} dispatches"
        );
    }
}

/// A deferred value costs nothing until read, is computed once by a sync that finds a
/// tensor holding it, and an unread one is never computed.
#[test]
fn deferred_values_run_when_needed_and_never_when_not() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    ctx.set_poison(false);
    let x = Tensor::from_vec(vec![0.5f32, -1.0, 2.0], &[3], &gpu).unwrap();
    gpu.sync().unwrap();
    let before = ctx.dispatch_count();
    let unread = x.exp().unwrap().scale(2.0).unwrap();
    drop(unread);
    let kept = x.square().unwrap().add(&x).unwrap();
    assert_eq!(ctx.dispatch_count(), before, "nothing runs yet");
    gpu.sync().unwrap();
    assert_eq!(
        ctx.dispatch_count(),
        before + 1,
        "the sync ran the kept value only"
    );
    assert_eq!(kept.to_vec::<f32>().unwrap(), vec![0.75, 0.0, 6.0]);
    assert_eq!(ctx.dispatch_count(), before + 1, "and it was not run again");
    // A product with a constant one (an autodiff seed) is its other operand: a matvec
    // then binds x itself, with nothing computed for the product.
    let one = Tensor::ones(&[], &gpu).unwrap();
    let same = x.mul(&one).unwrap();
    assert!(Arc::ptr_eq(
        &same.gpu_buffer().unwrap().inner,
        &x.gpu_buffer().unwrap().inner
    ));
    let before = ctx.dispatch_count();
    assert_eq!(
        one.mul(&x).unwrap().to_vec::<f32>().unwrap(),
        vec![0.5, -1.0, 2.0]
    );
    assert_eq!(ctx.dispatch_count(), before, "no kernel for x · 1");
    // A kernel that binds a deferred operand computes it first, in one dispatch.
    let m = Tensor::from_vec(vec![1.0f32; 6], &[2, 3], &gpu).unwrap();
    let before = ctx.dispatch_count();
    let v = x
        .scale_shift(2.0, 1.0)
        .unwrap()
        .mul(&x)
        .unwrap()
        .reshape(&[3, 1])
        .unwrap();
    let mv = m.matmul(&v).unwrap();
    assert_eq!(mv.to_vec::<f32>().unwrap(), vec![12.0, 12.0]);
    let matvec = ctx.dispatch_count() - before - 1;
    assert!((1..=2).contains(&matvec), "{matvec}");
}

/// A chain past MAX_NODES ops, and one reading more buffers than a kernel binds, are
/// split into several kernels with the right result.
#[test]
fn long_and_wide_expressions_split_into_several_kernels() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    ctx.set_poison(false);
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0], &[5], &gpu).unwrap();
    gpu.sync().unwrap();
    let before = ctx.dispatch_count();
    let mut y = x.clone();
    for _ in 0..100 {
        y = y.scale_shift(1.0, 0.5).unwrap();
    }
    assert_eq!(
        y.to_vec::<f32>().unwrap(),
        vec![51.0, 52.0, 53.0, 54.0, 55.0]
    );
    // A scale_shift has two host scalars: the parameter block caps the chain first.
    let per_kernel = MAX_NODES.min(MAX_SCALARS / 2) as u64;
    assert_eq!(ctx.dispatch_count() - before, 100_u64.div_ceil(per_kernel));

    let parts: Vec<Tensor> = (0..20)
        .map(|i| Tensor::full(&[5], i as f32, &gpu).unwrap().mul(&x).unwrap())
        .collect();
    // Each part is computed by a kernel of its own (a fill would be, but the product
    // reads x): 20 deferred values over one input, then sums of them.
    gpu.sync().unwrap();
    let before = ctx.dispatch_count();
    let mut sum = parts[0].clone();
    for p in &parts[1..] {
        sum = sum.add(p).unwrap();
    }
    let want: Vec<f32> = (1..=5).map(|k| 190.0 * k as f32).collect();
    assert_eq!(sum.to_vec::<f32>().unwrap(), want);
    let kernels = ctx.dispatch_count() - before;
    let cap = ctx.input_cap() as u64;
    assert!(
        kernels >= 19_u64.div_ceil(cap) && kernels <= 19,
        "{kernels} (cap {cap})"
    );
}

/// Kernels are cached by the structure of their expression: a RAD run of 300 steps
/// compiles no kernel that one of 30 steps did not, and its dispatch count per step is
/// the same every run (and below the unfused count).
#[test]
fn the_kernel_cache_stays_bounded_and_dispatch_counts_are_deterministic() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    let p = Ridge::synthetic(40, 30, 7, 3, &gpu, DType::F32).unwrap();
    let lambda = vec![Tensor::zeros(&[7], &gpu).unwrap()];
    let w0 = p.init_w().unwrap();
    let count = |steps: usize| {
        let inner = Inner {
            optimizer: InnerOptimizer::Gd { lr: 0.1 },
            steps,
        };
        let before = ctx.dispatch_count();
        let r = hypergradient_from(&p, &lambda, &w0, &inner, &Method::Rad).unwrap();
        (
            ctx.dispatch_count() - before,
            r.grad[0].to_vec::<f64>().unwrap(),
        )
    };
    let (short, _) = count(30);
    let kernels = ctx.fused_kernel_count();
    let (long, fused) = count(300);
    assert_eq!(
        ctx.fused_kernel_count(),
        kernels,
        "no new kernel for a longer run"
    );
    assert_eq!(count(300).0, long, "the same count every run");
    let per_step = (long - short) as f64 / 270.0;
    ctx.set_fusion(false);
    let (long_unfused, unfused) = count(300);
    let (short_unfused, _) = count(30);
    let per_step_unfused = (long_unfused - short_unfused) as f64 / 270.0;
    assert!(
        per_step * 2.0 <= per_step_unfused,
        "{per_step} vs {per_step_unfused} per RAD step"
    );
    assert!(
        rel_err(&fused, &unfused) <= 1e-5,
        "{:e}",
        rel_err(&fused, &unfused)
    );
}

/// Full reductions of deferred expressions run the expression inside the reduction, at
/// awkward sizes and past one workgroup's share (a second pass sums the partials), and
/// match the CPU in f64; an unread reduction never runs.
#[test]
fn fused_reductions_match_the_cpu_in_f64() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    for n in [1usize, 3, 5, 1031, 65_537, 300_007] {
        let (xv, yv) = (values(n, 3), values(n, 4));
        let run = |dev: &Device, dtype: DType| -> Vec<f64> {
            let t = |v: &[f64]| {
                let t = Tensor::from_vec(v.to_vec(), &[n], &Device::Cpu).unwrap();
                let t = if dtype == DType::F32 {
                    t.to_dtype(DType::F32).unwrap()
                } else {
                    t
                };
                t.to_device(dev).unwrap()
            };
            let (x, y) = (t(&xv), t(&yv));
            let e = x
                .scale_shift(0.5, 0.25)
                .unwrap()
                .mul(&y.exp().unwrap())
                .unwrap();
            let parts = [
                e.sum().unwrap(),
                e.sqnorm().unwrap().scale(0.5).unwrap(),
                e.dot(&y).unwrap(),
                x.dot(&x).unwrap(),
                e.mean().unwrap(),
            ];
            // A reduction read by an elementwise op: computed first, then read.
            let mixed = parts[0].add(&parts[1]).unwrap().mul(&parts[2]).unwrap();
            let mut out: Vec<f64> = parts
                .iter()
                .map(|p| p.to_vec::<f64>().unwrap()[0])
                .collect();
            out.push(mixed.to_vec::<f64>().unwrap()[0]);
            out
        };
        let want = run(&Device::Cpu, DType::F64);
        for fused in [true, false] {
            ctx.set_fusion(fused);
            let got = run(&gpu, DType::F32);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "n = {n}, fused {fused}, result {k}: {g} vs {w}"
                );
            }
        }
    }
    ctx.set_fusion(true);
    ctx.set_poison(false);
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3], &gpu).unwrap();
    gpu.sync().unwrap();
    let before = ctx.dispatch_count();
    drop(x.exp().unwrap().sum().unwrap());
    let s = x.square().unwrap().sum().unwrap();
    gpu.sync().unwrap();
    assert_eq!(
        ctx.dispatch_count(),
        before + 1,
        "one kernel: square inside the sum"
    );
    assert_eq!(s.to_vec::<f32>().unwrap(), vec![14.0]);
}

/// The broadcasts a fused kernel reads through `(e / div) % len`: one contiguous block
/// of the output's dimensions; the others go to the binary kernel's strided path.
#[test]
fn block_strides_cover_one_contiguous_block_of_dimensions() {
    assert_eq!(
        block_stride(&[10], &[7, 10]),
        Some((1, 10)),
        "a bias over rows"
    );
    assert_eq!(
        block_stride(&[7, 1], &[7, 10]),
        Some((10, 7)),
        "a weight per row"
    );
    assert_eq!(block_stride(&[1, 10], &[7, 10]), Some((1, 10)));
    assert_eq!(block_stride(&[2, 1, 1], &[2, 3, 4]), Some((12, 2)));
    assert_eq!(block_stride(&[1, 3, 1], &[2, 3, 4]), Some((4, 3)));
    assert_eq!(block_stride(&[4, 5], &[2, 3, 4, 5]), Some((1, 20)));
    assert_eq!(
        block_stride(&[3, 1, 1], &[3, 1, 5]),
        Some((5, 3)),
        "length-1 dims inside"
    );
    assert_eq!(
        block_stride(&[3, 1, 5], &[3, 4, 5]),
        None,
        "broadcast in a gap"
    );
    assert_eq!(block_stride(&[7, 10], &[7, 10]), None, "no broadcast");
    assert_eq!(
        block_stride(&[1, 1], &[7, 10]),
        None,
        "one element: a splat"
    );
}

/// Broadcast operands (a bias over rows, a weight per row, a broadcast_to, and a
/// broadcast in a gap, which takes the binary kernel) fused against unfused and the CPU
/// in f64 at awkward sizes, with new buffers poisoned.
#[test]
fn fused_broadcasts_match_unfused_ones_and_the_cpu_in_f64() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    for (n, c) in [(1usize, 1usize), (7, 3), (5, 10), (257, 13)] {
        let run = |dev: &Device, dtype: DType| -> Vec<f64> {
            let t = |shape: &[usize], seed: u64| {
                let v = values(shape.iter().product(), seed);
                let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
                let t = if dtype == DType::F32 {
                    t.to_dtype(DType::F32).unwrap()
                } else {
                    t
                };
                t.to_device(dev).unwrap()
            };
            let (z, bias, w) = (t(&[n, c], 5), t(&[c], 6), t(&[n, 1], 7));
            let gap = (t(&[n, 1, c], 8), t(&[n, 2, c], 9));
            let e = z
                .add(&bias)
                .unwrap()
                .exp()
                .unwrap()
                .mul(&w.sigmoid().unwrap())
                .unwrap();
            let e = e
                .sub(&bias.broadcast_to(&[n, c]).unwrap().scale(0.5).unwrap())
                .unwrap();
            let e = e
                .div(&w.abs().unwrap().scale_shift(1.0, 1.0).unwrap())
                .unwrap();
            let g = gap.0.mul(&gap.1).unwrap().tanh().unwrap();
            let mut out = e.to_vec::<f64>().unwrap();
            out.extend(g.to_vec::<f64>().unwrap());
            out.push(e.sum().unwrap().to_vec::<f64>().unwrap()[0]);
            out
        };
        let want = run(&Device::Cpu, DType::F64);
        let mut got = Vec::new();
        for fused in [true, false] {
            ctx.set_fusion(fused);
            got.push(run(&gpu, DType::F32));
        }
        ctx.set_fusion(true);
        assert!(
            rel_err(&got[0], &got[1]) <= 1e-6,
            "[{n}, {c}]: {:e}",
            rel_err(&got[0], &got[1])
        );
        assert!(
            rel_err(&got[0], &want) <= 1e-5,
            "[{n}, {c}]: {:e}",
            rel_err(&got[0], &want)
        );
    }
    // Fused, the broadcast chain is a kernel for each deferred operand read through a
    // stride (w's sigmoid and abs) and one for the rest.
    ctx.set_poison(false);
    let (z, bias, w) = (
        Tensor::rand_uniform(&[9, 4], -1.0, 1.0, 1, &gpu).unwrap(),
        Tensor::rand_uniform(&[4], -1.0, 1.0, 2, &gpu).unwrap(),
        Tensor::rand_uniform(&[9, 1], -1.0, 1.0, 3, &gpu).unwrap(),
    );
    gpu.sync().unwrap();
    let before = ctx.dispatch_count();
    let e = z
        .add(&bias)
        .unwrap()
        .mul(&w)
        .unwrap()
        .sub(&bias.broadcast_to(&[9, 4]).unwrap());
    e.unwrap().to_vec::<f32>().unwrap();
    assert_eq!(
        ctx.dispatch_count() - before,
        1,
        "one kernel for a bias, a weight and a broadcast_to"
    );
}

/// `values` on `dev` (f32 on the GPU, f64 on the CPU).
fn on(dev: &Device, v: &[f64], shape: &[usize]) -> Tensor {
    let t = Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap();
    match dev {
        Device::Cpu => t,
        _ => t.to_dtype(DType::F32).unwrap().to_device(dev).unwrap(),
    }
}

/// Scalar factors of a matrix product's deferred operand (scale-shifts with no shift,
/// products with a one-element tensor) apply to the product's result instead, where
/// they fuse into its reader: no kernel computes the scaled operand. Either operand,
/// values as the CPU's in f64.
#[test]
fn scalar_factors_of_a_product_operand_move_to_its_result() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    ctx.set_poison(false);
    for (rows, k) in [(1usize, 1usize), (7, 5), (13, 33), (3, 257)] {
        let (mv, vv) = (values(rows * k, 3), values(k, 4));
        let run = |dev: &Device| -> (Vec<f64>, Vec<f64>, u64) {
            let m = on(dev, &mv, &[rows, k]);
            let v = on(dev, &vv, &[k, 1]);
            let s = on(dev, &[-1.3], &[]);
            dev.sync().unwrap();
            let before = dev.gpu_context().map_or(0, |c| c.dispatch_count());
            // (m · (0.7·v·s)) summed: the product, then one kernel for the factors and
            // the sum. Unsplit, the scaled operand would take a kernel of its own.
            let scaled = v.scale(0.7).unwrap().mul(&s).unwrap();
            let total = m.matmul(&scaled).unwrap().sum().unwrap();
            let total = total.to_vec::<f64>().unwrap();
            let count = dev.gpu_context().map_or(0, |c| c.dispatch_count()) - before;
            // The left operand scaled: (s·vᵀ·0.5) · m'.
            let row = v
                .reshape(&[1, k])
                .unwrap()
                .mul(&s)
                .unwrap()
                .scale(0.5)
                .unwrap();
            let left = row.matmul(&m.reshape(&[k, rows]).unwrap()).unwrap();
            // One shifted, which is not a factor: m · (0.7·v + 0.25).
            let shifted = m.matmul(&v.scale_shift(0.7, 0.25).unwrap()).unwrap();
            let mut both = left.to_vec::<f64>().unwrap();
            both.extend(shifted.to_vec::<f64>().unwrap());
            (total, both, count)
        };
        let (want_total, want_left, _) = run(&Device::Cpu);
        let (total, left, count) = run(&gpu);
        assert!(
            rel_err(&total, &want_total) < 1e-5,
            "{total:?} {want_total:?}"
        );
        assert!(rel_err(&left, &want_left) < 1e-5, "{rows}x{k}");
        assert_eq!(count, 2, "{rows}x{k}: the product and one fused kernel");
    }
}

/// Values computed together run in one kernel, each op once, and match the CPU in f64;
/// a value one of them reads is written out, not computed twice; a reduction under one
/// of them runs first, on its own.
#[test]
fn values_computed_together_share_one_kernel() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    ctx.set_poison(false);
    for n in [1usize, 6, 1031] {
        let (xv, yv) = (values(n, 5), values(n, 6));
        let run = |dev: &Device| -> (Vec<Vec<f64>>, u64) {
            let (x, y) = (on(dev, &xv, &[n]), on(dev, &yv, &[n]));
            dev.sync().unwrap();
            let before = dev.gpu_context().map_or(0, |c| c.dispatch_count());
            let shared = x.sin().unwrap().mul(&y).unwrap();
            let a = shared.scale_shift(2.0, 1.0).unwrap().mul(&y).unwrap();
            let b = x.exp().unwrap().sub(&shared).unwrap();
            let c = y
                .scale(y.sqnorm().unwrap().to_scalar::<f64>().unwrap())
                .unwrap();
            let reduced = x.dot(&y).unwrap();
            let d = x.mul(&reduced).unwrap();
            let after_read = dev.gpu_context().map_or(0, |c| c.dispatch_count());
            Tensor::compute_together(&[&a, &b, &shared, &c]).unwrap();
            Tensor::compute_together(&[&d, &x]).unwrap();
            let count = dev.gpu_context().map_or(0, |c| c.dispatch_count()) - after_read;
            let _ = before;
            let out = [a, b, shared, c, d]
                .iter()
                .map(|t| t.to_vec::<f64>().unwrap())
                .collect();
            (out, count)
        };
        let (want, _) = run(&Device::Cpu);
        let (got, count) = run(&gpu);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(rel_err(g, w) < 1e-5, "n = {n}, value {k}: {g:?} vs {w:?}");
        }
        // a, b, shared and c in one kernel; the dot, then d.
        assert_eq!(count, 3, "n = {n}");
    }
}

/// The cross-entropy's VJP with u = m + bias (bias [c] broadcast over rows, either
/// order) adds the bias as it reads m, saving the kernel that would compute u, and
/// matches the CPU in f64.
#[test]
fn the_cross_entropy_vjp_adds_a_row_bias_itself() {
    let Some(gpu) = fused_gpu() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    ctx.set_poison(false);
    for (n, c) in [(1usize, 2usize), (7, 3), (37, 10)] {
        let (zv, mv, bv) = (values(n * c, 7), values(n * c, 8), values(c, 9));
        let labels: Vec<f64> = (0..n).map(|i| (i % c) as f64).collect();
        for bias_first in [false, true] {
            let run = |dev: &Device| -> (Vec<f64>, Vec<f64>, u64) {
                let z = on(dev, &zv, &[n, c]);
                let m = on(dev, &mv, &[n, c]);
                let b = on(dev, &bv, &[c]);
                let y = on(dev, &labels, &[n]);
                let g = on(dev, &[0.5], &[]);
                dev.sync().unwrap();
                let before = dev.gpu_context().map_or(0, |c| c.dispatch_count());
                let bias = b.broadcast_to(&[n, c]).unwrap();
                let u = if bias_first {
                    bias.add(&m).unwrap()
                } else {
                    m.add(&bias).unwrap()
                };
                let (dz, r) =
                    crate::ops::loss::cross_entropy_grad_vjp_raw(&z, &y, None, &g, &u).unwrap();
                // Held, u would be computed by the sync (what a sync owes the caller).
                drop((u, bias, m));
                dev.sync().unwrap();
                let count = dev.gpu_context().map_or(0, |c| c.dispatch_count()) - before;
                (
                    dz.to_vec::<f64>().unwrap(),
                    r.to_vec::<f64>().unwrap(),
                    count,
                )
            };
            let (want_dz, want_r, _) = run(&Device::Cpu);
            let (dz, r, count) = run(&gpu);
            assert!(
                rel_err(&dz, &want_dz) < 1e-5,
                "{n}x{c}: {dz:?} vs {want_dz:?}"
            );
            assert!(rel_err(&r, &want_r) < 1e-5, "{n}x{c}: {r:?} vs {want_r:?}");
            assert_eq!(count, 1, "{n}x{c}: the VJP alone, with u never computed");
        }
    }
}
