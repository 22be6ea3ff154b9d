//! The registry's rules without an adapter, and every kernel variant an adapter can run,
//! forced on a context of its own, against the CPU backend in f64: random inputs of
//! awkward sizes (1, primes, non-multiples of the tiles and vec4s), on poisoned buffers
//! (every new GPU buffer starts as NaN, so an unwritten element fails).

use super::*;
use crate::backend::{ALL_BINARY, ALL_UNARY, UnaryOp};
use crate::ops::matmul::{GpuPlan, matmul_with};
use crate::testing::{assert_close, fresh_gpu_or_skip, oracle_pair};
use crate::{Device, Tensor};

// ---- rules, without an adapter --------------------------------------------------------

fn facts(subgroup_sizes: Option<(u32, u32)>) -> AdapterFacts {
    AdapterFacts {
        features: if subgroup_sizes.is_some() {
            wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::empty()
        },
        subgroup_sizes,
        limits: wgpu::Limits::default(),
        device_type: wgpu::DeviceType::Cpu,
        vendor: 0,
    }
}

fn default_name(family: FamilyId, facts: &AdapterFacts) -> &'static str {
    family.entries()[default_of(family, facts)].name
}

#[test]
fn matmul_defaults_to_subgroups_of_at_least_8_lanes_as_before() {
    // Today's rule: the subgroup kernel wherever SUBGROUP is enabled with a minimum
    // subgroup size of 8 or more, the portable one everywhere else.
    for (sizes, want) in [
        (Some((8, 8)), "subgroup"),
        (Some((32, 32)), "subgroup"),
        (Some((8, 128)), "subgroup"),
        (Some((4, 64)), "portable"),
        (None, "portable"),
    ] {
        assert_eq!(
            default_name(FamilyId::Matmul, &facts(sizes)),
            want,
            "{sizes:?}"
        );
    }
    for family in FamilyId::ALL {
        assert!(default_of(family, &facts(None)) < family.entries().len());
    }
}

#[test]
fn matmul_defaults_to_tiled_on_adapters_that_are_not_cpus() {
    for (device_type, sizes, want) in [
        (wgpu::DeviceType::DiscreteGpu, Some((32, 32)), "tiled"),
        (wgpu::DeviceType::IntegratedGpu, Some((8, 64)), "tiled"),
        (wgpu::DeviceType::Other, None, "tiled"),
        (wgpu::DeviceType::Cpu, Some((8, 8)), "subgroup"),
        (wgpu::DeviceType::Cpu, None, "portable"),
    ] {
        let mut f = facts(sizes);
        f.device_type = device_type;
        assert_eq!(
            default_name(FamilyId::Matmul, &f),
            want,
            "{device_type:?} {sizes:?}"
        );
    }
    // A GPU whose workgroups cannot hold 256 invocations or 8 KiB of workgroup memory
    // falls back to the next variant.
    let mut small = facts(Some((32, 32)));
    small.device_type = wgpu::DeviceType::DiscreteGpu;
    small.limits.max_compute_invocations_per_workgroup = 128;
    let e = (matmul::TILED.requires)(&small).unwrap_err();
    assert!(e.contains("256 invocations"), "{e}");
    assert_eq!(default_name(FamilyId::Matmul, &small), "subgroup");
    let mut little_memory = facts(None);
    little_memory.device_type = wgpu::DeviceType::DiscreteGpu;
    little_memory.limits.max_compute_workgroup_storage_size = 4096;
    let e = (matmul::TILED.requires)(&little_memory).unwrap_err();
    assert!(e.contains("8192 bytes"), "{e}");
    assert_eq!(default_name(FamilyId::Matmul, &little_memory), "portable");
    // matmul/tiled_large needs the same 256 invocations and its padded tiles (8448
    // bytes); it comes after `tiled`, so it is never the default (only forced) for now.
    let e = (matmul::TILED_LARGE.requires)(&small).unwrap_err();
    assert!(e.contains("256 invocations"), "{e}");
    let mut exactly_8k = facts(None);
    exactly_8k.device_type = wgpu::DeviceType::DiscreteGpu;
    exactly_8k.limits.max_compute_workgroup_storage_size = 8192;
    assert!((matmul::TILED.requires)(&exactly_8k).is_ok());
    let e = (matmul::TILED_LARGE.requires)(&exactly_8k).unwrap_err();
    assert!(e.contains("8448 bytes"), "{e}");
    let mut discrete = facts(Some((32, 32)));
    discrete.device_type = wgpu::DeviceType::DiscreteGpu;
    assert!((matmul::TILED_LARGE.requires)(&discrete).is_ok());
    assert!((matmul::TILED_LARGE.suits)(&discrete));
    assert!(!(matmul::TILED_LARGE.suits)(&facts(Some((8, 8)))));
    assert_eq!(default_name(FamilyId::Matmul, &discrete), "tiled");
}

#[test]
fn reductions_and_losses_default_to_workgroup_kernels_on_adapters_that_are_not_cpus() {
    for (device_type, sizes, reduce, loss) in [
        (
            wgpu::DeviceType::DiscreteGpu,
            Some((32, 32)),
            "subgroup",
            "row_per_workgroup",
        ),
        (
            wgpu::DeviceType::IntegratedGpu,
            Some((8, 32)),
            "subgroup",
            "row_per_workgroup",
        ),
        (
            wgpu::DeviceType::DiscreteGpu,
            None,
            "tree",
            "row_per_workgroup",
        ),
        // lavapipe: the CPU-tuned kernels, subgroups or not.
        (
            wgpu::DeviceType::Cpu,
            Some((8, 8)),
            "one_barrier",
            "row_per_invocation",
        ),
        (
            wgpu::DeviceType::Cpu,
            None,
            "one_barrier",
            "row_per_invocation",
        ),
    ] {
        let mut f = facts(sizes);
        f.device_type = device_type;
        assert_eq!(
            default_name(FamilyId::Reduce, &f),
            reduce,
            "{device_type:?} {sizes:?}"
        );
        assert_eq!(
            default_name(FamilyId::Loss, &f),
            loss,
            "{device_type:?} {sizes:?}"
        );
    }
    // Subgroups wider than the 256-lane workgroup, or of a size that is not a power of
    // two, cannot tile it: the tree runs instead.
    let mut wide = facts(Some((32, 512)));
    wide.device_type = wgpu::DeviceType::DiscreteGpu;
    let e = (reduce::workgroup::SUBGROUP.requires)(&wide).unwrap_err();
    assert!(e.contains("at most 256 lanes"), "{e}");
    assert_eq!(default_name(FamilyId::Reduce, &wide), "tree");
}

#[test]
fn a_family_no_variant_of_which_runs_falls_back_to_its_last() {
    let mut tiny = facts(None);
    tiny.limits.max_compute_invocations_per_workgroup = 32;
    let e = (ELEMENTWISE.variants[0].requires)(&tiny).unwrap_err();
    assert!(e.contains("256 invocations"), "{e}");
    let last = FamilyId::Elementwise.entries().len() - 1;
    assert_eq!(default_of(FamilyId::Elementwise, &tiny), last);
}

#[test]
fn names_are_unique_snake_case_and_listed_once() {
    let mut families: Vec<&str> = FamilyId::ALL.iter().map(|f| f.name()).collect();
    families.dedup();
    assert_eq!(families.len(), FAMILIES);
    for family in FamilyId::ALL {
        assert_eq!(FamilyId::from_name(family.name()), Some(family));
        let mut names: Vec<&str> = family.entries().iter().map(|e| e.name).collect();
        for name in &names {
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}/{name}",
                family.name()
            );
        }
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "{} repeats a variant name", family.name());
    }
}

#[test]
fn blo_kernels_values_parse_or_are_typed_errors() {
    let with = facts(Some((8, 8)));
    let without = facts(None);
    assert!(parse_forced("", &with).unwrap().is_empty());
    assert!(parse_forced(" , ", &with).unwrap().is_empty());
    assert_eq!(
        parse_forced(" matmul = portable , reduce=one_barrier,", &with).unwrap(),
        vec![(FamilyId::Matmul, 3), (FamilyId::Reduce, 2)]
    );
    assert_eq!(
        parse_forced("matmul=subgroup", &with).unwrap(),
        vec![(FamilyId::Matmul, 2)]
    );
    assert_eq!(
        parse_forced("matmul=tiled", &with).unwrap(),
        vec![(FamilyId::Matmul, 0)]
    );
    assert_eq!(
        parse_forced("matmul=tiled_large", &with).unwrap(),
        vec![(FamilyId::Matmul, 1)]
    );
    let err = |spec: &str, facts: &AdapterFacts| match parse_forced(spec, facts) {
        Err(Error::KernelChoice {
            choice,
            reason,
            valid,
        }) => (choice, reason, valid),
        other => panic!("{spec}: expected a KernelChoice error, got {other:?}"),
    };
    let (choice, reason, valid) = err("matmul=portable,conv=fast", &with);
    assert_eq!(choice, "conv=fast");
    assert!(reason.contains("no kernel family `conv`"), "{reason}");
    assert!(
        valid.contains("matmul=tiled|tiled_large|subgroup|portable"),
        "{valid}"
    );
    assert!(
        valid.contains("reduce=subgroup|tree|one_barrier"),
        "{valid}"
    );
    let (_, reason, valid) = err("reduce=fast", &with);
    assert!(reason.contains("no variant `fast`"), "{reason}");
    assert!(
        valid.contains("loss=row_per_workgroup|row_per_invocation"),
        "{valid}"
    );
    // Without subgroups, the reduction's subgroup variant is not among the choices.
    let (_, _, valid) = err("reduce=fast", &without);
    assert!(valid.contains("reduce=tree|one_barrier,"), "{valid}");
    let (_, reason, _) = err("matmul", &with);
    assert!(reason.contains("family=variant"), "{reason}");
    // Profiles: every family as an adapter of that kind would choose it, overridable.
    let mut discrete = facts(Some((32, 32)));
    discrete.device_type = wgpu::DeviceType::DiscreteGpu;
    let matmul = |spec: &str, facts: &AdapterFacts| {
        let forced = parse_forced(spec, facts).unwrap();
        assert_eq!(forced.len() % FamilyId::ALL.len(), 0, "{spec}: {forced:?}");
        forced
            .iter()
            .rev()
            .find(|(id, _)| *id == FamilyId::Matmul)
            .map(|&(_, i)| i)
    };
    assert_eq!(
        matmul("gpu", &with),
        Some(0),
        "tiled on lavapipe-like facts"
    );
    assert_eq!(
        matmul("cpu", &discrete),
        Some(2),
        "subgroup on a discrete GPU"
    );
    assert_eq!(matmul("auto", &with), Some(2));
    assert_eq!(matmul("auto", &discrete), Some(0));
    assert_eq!(
        matmul("cpu", &without),
        Some(3),
        "portable without subgroups"
    );
    assert_eq!(
        parse_forced("gpu,matmul=portable", &with)
            .unwrap()
            .last()
            .copied(),
        Some((FamilyId::Matmul, 3))
    );
    let (_, reason, _) = err("gpus", &with);
    assert!(reason.contains("`gpu`, `cpu` or `auto`"), "{reason}");
    // A variant the adapter cannot run: the reason says why, and the valid choices are
    // those of this adapter only.
    let (_, reason, valid) = err("matmul=subgroup", &without);
    assert!(reason.contains("cannot run matmul/subgroup") && reason.contains("SUBGROUP"));
    assert!(
        valid.contains("matmul=tiled|tiled_large|portable,") && !valid.contains("subgroup"),
        "{valid}"
    );
    let (_, reason, _) = err("matmul=subgroup", &facts(Some((4, 32))));
    assert!(reason.contains("at least 8 lanes"), "{reason}");
    // The message a user sees names all of it.
    let shown = parse_forced("matmul=fast", &without)
        .unwrap_err()
        .to_string();
    assert!(
        shown.contains("matmul=fast") && shown.contains("matmul=tiled|tiled_large|portable"),
        "{shown}"
    );
}

// ---- every variant on the adapter, against the CPU ------------------------------------

/// Runs `body` once for each variant of `family` this adapter can run, forced on a
/// context of its own (forcing on the shared test device would change what other tests
/// run). Variants the adapter cannot run are reported and skipped.
fn for_each_variant(family: &str, body: impl Fn(&Device, &str)) {
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().expect("a GPU device");
    let mut ran = 0;
    for v in ctx.kernel_variants() {
        if v.family != family {
            continue;
        }
        let label = format!("{family}/{}", v.name);
        if let Some(why) = &v.unsupported {
            eprintln!("notice: {label} cannot run on this adapter, not tested: {why}");
            continue;
        }
        ctx.force_kernel(family, Some(v.name)).unwrap();
        body(&gpu, &label);
        ran += 1;
    }
    ctx.force_kernel(family, None).unwrap();
    assert!(ran > 0, "no variant of {family} runs on this adapter");
}

/// The same seeded values in [-1, 1) as an f32 tensor on `dev` and an f64 one on the CPU.
fn pair(shape: &[usize], seed: u64, dev: &Device) -> (Tensor, Tensor) {
    let (x32, x64) = oracle_pair(shape, seed);
    (
        Tensor::from_vec(x32, shape, dev).unwrap(),
        Tensor::from_vec(x64, shape, &Device::Cpu).unwrap(),
    )
}

/// Values as an f32 tensor on `dev` and an f64 one on the CPU.
fn exact(values: Vec<f32>, shape: &[usize], dev: &Device) -> (Tensor, Tensor) {
    let wide: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    (
        Tensor::from_vec(values, shape, dev).unwrap(),
        Tensor::from_vec(wide, shape, &Device::Cpu).unwrap(),
    )
}

/// |got − want| ≤ max(rtol·|want|, atol) elementwise (the tolerances at each call).
#[track_caller]
fn check(got: &Tensor, want: &Tensor, rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
    assert_close(&g, &w, rtol, atol, what);
}

#[test]
fn matmul_variants_match_the_cpu() {
    for_each_variant("matmul", |gpu, label| {
        // m, k, n: ones, primes, k < m, n; m past 64 rows (the subgroup kernel's largest
        // block and the tiled one's) and past 8 (the portable one's); n past 8 columns
        // times 8 lanes and past 64; k past the tiled kernel's K-step of 16; and rows that
        // are whole vec4s (20·44·12).
        let shapes = [
            (1, 1, 1),
            (1, 7, 5),
            (7, 1, 3),
            (13, 37, 7),
            (20, 44, 12),
            (67, 5, 9),
            (3, 29, 131),
            // Past matmul/tiled's 64×64 block and 16-wide K-step on every side, k = 1
            // with two blocks, n = 1 with two row blocks.
            (70, 37, 133),
            (129, 1, 66),
            (131, 17, 1),
            // Past matmul/tiled_large's 128×128 block and 8-wide K-step: m and n
            // non-multiples of 128 (two or three blocks each way), k not a multiple of 8
            // (nor of 4: rows read as floats), then whole blocks with no edge at all.
            (129, 131, 257),
            (300, 17, 250),
            (256, 256, 256),
        ];
        let mut seed = 1000;
        for (m, k, n) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for batch in [None, Some(3)] {
                    seed += 2;
                    let stored = |r: usize, c: usize, t: bool| {
                        let mut s: Vec<usize> = batch.into_iter().collect();
                        s.extend(if t { [c, r] } else { [r, c] });
                        s
                    };
                    let (a, a64) = pair(&stored(m, k, ta), seed, gpu);
                    let (b, b64) = pair(&stored(k, n, tb), seed + 1, gpu);
                    let want = a64.matmul_t(&b64, ta, tb).unwrap();
                    let what = format!("{label} m{m} k{k} n{n} ta={ta} tb={tb} batch={batch:?}");
                    // atol: an f32 dot product of k terms of size ≤ 1 errs by up to ~k ulp.
                    let atol = 2e-6 * k as f64;
                    // A non-default plan keeps narrow products on the GEMM kernels
                    // (the default hands them to `matvec`, tested below).
                    let in_place = GpuPlan {
                        pack: Some(false),
                        ..GpuPlan::default()
                    };
                    let got = matmul_with(&a, &b, ta, tb, in_place).unwrap();
                    check(&got, &want, 1e-4, atol, &what);
                    // The copied-operand layout large products use, forced on small ones.
                    let packed = GpuPlan {
                        pack: Some(true),
                        ..GpuPlan::default()
                    };
                    let got = matmul_with(&a, &b, ta, tb, packed).unwrap();
                    check(&got, &want, 1e-4, atol, &format!("packed {what}"));
                }
            }
        }
        // One operand shared across the batch, on either side.
        let (a, a64) = pair(&[3, 13, 29], 7, gpu);
        let (w, w64) = pair(&[29, 11], 8, gpu);
        let want = a64.matmul(&w64).unwrap();
        check(
            &a.matmul(&w).unwrap(),
            &want,
            1e-4,
            6e-5,
            &format!("{label} shared right"),
        );
        let (l, l64) = pair(&[29, 13], 9, gpu);
        let (r, r64) = pair(&[3, 11, 29], 10, gpu);
        let want = l64.matmul_t(&r64, true, true).unwrap();
        let got = l.matmul_t(&r, true, true).unwrap();
        check(&got, &want, 1e-4, 6e-5, &format!("{label} shared left"));
    });
}

#[test]
fn matvec_variants_match_the_cpu() {
    for_each_variant("matvec", |gpu, label| {
        // (m, k, n): the narrow side 1, 2, 7, 16 and 17 (past the threshold: the GEMM
        // path) on either side, k = 1, primes, whole and partial vec4 rows, and k large
        // enough for many strides of a workgroup.
        let shapes = [
            (1, 1, 1),
            (37, 1, 1),
            (37, 13, 2),
            (64, 20, 7),
            (131, 44, 16),
            (29, 41, 17),
            (2, 31, 53),
            (7, 12, 130),
            (16, 9, 67),
            (17, 13, 33),
            (203, 5003, 1),
            (1, 5000, 203),
            (300, 5001, 3),
        ];
        let mut seed = 5000;
        // The adapter's rules, then 16 rows per invocation (the GPU rule's shape for
        // short rows, run on any adapter; the subgroup variant caps it at its subgroup
        // size) with k split in 3 across workgroups, then 1 per row with 7 splits (chunks
        // that do not divide k, batches; k = 1 cannot split).
        use crate::backend::gpu::kernels::matvec::{SPLIT_OVERRIDE, TPR_OVERRIDE};
        use std::sync::atomic::Ordering::Relaxed;
        for (tpr, splits) in [(0, 0), (16, 3), (1, 7)] {
            TPR_OVERRIDE.store(tpr, Relaxed);
            SPLIT_OVERRIDE.store(splits, Relaxed);
            for (m, k, n) in shapes {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let batches: &[Option<usize>] =
                        if k > 1000 { &[None] } else { &[None, Some(3)] };
                    for &batch in batches {
                        seed += 2;
                        let stored = |r: usize, c: usize, t: bool| {
                            let mut s: Vec<usize> = batch.into_iter().collect();
                            s.extend(if t { [c, r] } else { [r, c] });
                            s
                        };
                        let (a, a64) = pair(&stored(m, k, ta), seed, gpu);
                        let (b, b64) = pair(&stored(k, n, tb), seed + 1, gpu);
                        let want = a64.matmul_t(&b64, ta, tb).unwrap();
                        let what =
                            format!("{label} m{m} k{k} n{n} ta={ta} tb={tb} batch={batch:?}");
                        let atol = 2e-6 * k as f64;
                        let what = format!("{what} tpr override {tpr} splits {splits}");
                        check(&a.matmul_t(&b, ta, tb).unwrap(), &want, 1e-4, atol, &what);
                    }
                }
            }
        }
        TPR_OVERRIDE.store(0, Relaxed);
        SPLIT_OVERRIDE.store(0, Relaxed);
        // One operand shared across the batch, on either side.
        let (a, a64) = pair(&[3, 13, 29], 7, gpu);
        let (w, w64) = pair(&[29, 2], 8, gpu);
        let want = a64.matmul(&w64).unwrap();
        check(
            &a.matmul(&w).unwrap(),
            &want,
            1e-4,
            6e-5,
            &format!("{label} shared right"),
        );
        let (l, l64) = pair(&[29, 1], 9, gpu);
        let (r, r64) = pair(&[3, 40, 29], 10, gpu);
        let want = l64.matmul_t(&r64, true, true).unwrap();
        let got = l.matmul_t(&r, true, true).unwrap();
        check(&got, &want, 1e-4, 6e-5, &format!("{label} shared left"));
    });
}

#[test]
fn reduce_variants_match_the_cpu() {
    for_each_variant("reduce", |gpu, label| {
        // The reduction tests' tolerance (ops/reduce.rs): 1e-4, and an atol of 1e-6·√terms
        // for sums that cancel to near zero.
        let tol = |terms: usize| 1e-6 * (terms.max(1) as f64).sqrt();
        // One element, primes, 70,001 elements (one_barrier: two dispatches; the workgroup
        // variants: 9 workgroups finished by the last), and 2^20 + 3 (129 workgroups, a
        // 3-element tail).
        for (i, n) in [1usize, 7, 1031, 70_001, (1 << 20) + 3]
            .into_iter()
            .enumerate()
        {
            let (x, x64) = pair(&[n], 2 * i as u64, gpu);
            let (y, y64) = pair(&[n], 2 * i as u64 + 1, gpu);
            let what = |op: &str| format!("{label} {op} n={n}");
            check(
                &x.sum().unwrap(),
                &x64.sum().unwrap(),
                1e-4,
                tol(n),
                &what("sum"),
            );
            check(
                &x.mean().unwrap(),
                &x64.mean().unwrap(),
                1e-4,
                tol(n),
                &what("mean"),
            );
            let sq = x.sqnorm().unwrap();
            check(&sq, &x64.sqnorm().unwrap(), 1e-4, tol(n), &what("sqnorm"));
            let dot = x.dot(&y).unwrap();
            check(&dot, &x64.dot(&y64).unwrap(), 1e-4, tol(n), &what("dot"));
            let mse = x.mse(&y).unwrap();
            check(&mse, &x64.mse(&y64).unwrap(), 1e-4, tol(n), &what("mse"));
        }
        // Axes: rows (inner 1), columns with 1 and 4 outputs per invocation, and axes
        // long enough (> 4,096) to be split into chunks reduced again. For the workgroup
        // variants: many short rows (a lane each), few very long rows and few long
        // columns (split across workgroups, then a second pass), and many columns
        // (8 lanes per column block).
        let axes: [(&[usize], usize); 12] = [
            (&[1, 1], 1),
            (&[13, 37], 0),
            (&[13, 37], 1),
            (&[5, 8, 3], 1),
            (&[3, 4103, 8], 1),
            (&[2, 5003], 1),
            (&[5003, 3], 0),
            (&[20_011, 3], 1),
            (&[2, 300_007], 1),
            (&[70_001, 3], 0),
            (&[3, 20_011, 8], 1),
            (&[601, 1028], 0),
        ];
        for (i, (shape, axis)) in axes.into_iter().enumerate() {
            let (x, x64) = pair(shape, 50 + i as u64, gpu);
            let terms = shape[axis];
            let what = |op: &str| format!("{label} {op} {shape:?} axis {axis}");
            let got = x.sum_axis(axis, false).unwrap();
            let want = x64.sum_axis(axis, false).unwrap();
            check(&got, &want, 1e-4, tol(terms), &what("sum_axis"));
            let got = x.mean_axis(axis, true).unwrap();
            let want = x64.mean_axis(axis, true).unwrap();
            check(&got, &want, 1e-4, tol(terms), &what("mean_axis"));
            // A maximum is one of the inputs: exact.
            let got = x.max_axis(axis, false).unwrap();
            let want = x64.max_axis(axis, false).unwrap();
            check(&got, &want, 0.0, 0.0, &what("max_axis"));
        }
    });
}

#[test]
fn elementwise_variants_match_the_cpu() {
    for_each_variant("elementwise", |gpu, label| {
        for (i, n) in [1usize, 7, 1031].into_iter().enumerate() {
            let (x, x64) = pair(&[n], 100 + i as u64, gpu);
            // log, sqrt and 1/x on [0.1, 1.1): their domain, away from the pole.
            let (xp, xp64) = (
                x.abs().unwrap().scale_shift(1.0, 0.1).unwrap(),
                x64.abs().unwrap().scale_shift(1.0, 0.1).unwrap(),
            );
            for op in ALL_UNARY {
                let what = format!("{label} {op:?} n={n}");
                let (input, input64) = match op {
                    UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip => (&xp, &xp64),
                    _ => (&x, &x64),
                };
                let (got, want) = if op == UnaryOp::ScaleShift {
                    (
                        input.scale_shift(-0.7, 0.3).unwrap(),
                        input64.scale_shift(-0.7, 0.3).unwrap(),
                    )
                } else {
                    (input.unary(op).unwrap(), input64.unary(op).unwrap())
                };
                // A few ulp of f32 rounding; sin near its zero keeps ~1e-7 absolute.
                check(&got, &want, 1e-5, 1e-6, &what);
            }
        }
        // Binary ops in every indexing mode: same shapes, a scalar on either side,
        // general broadcasting (rank 3, odd sizes), and broadcast_to (a copy).
        let cases: [(&[usize], &[usize]); 4] = [
            (&[1031], &[1031]),
            (&[], &[7, 13]),
            (&[7, 13], &[1]),
            (&[5, 1, 3], &[4, 1]),
        ];
        for (i, (sa, sb)) in cases.into_iter().enumerate() {
            let (a, a64) = pair(sa, 200 + i as u64, gpu);
            // Away from 0 so that a / b stays moderate.
            let (b, b64) = pair(sb, 300 + i as u64, gpu);
            let (b, b64) = (
                b.scale_shift(1.0, 1.5).unwrap(),
                b64.scale_shift(1.0, 1.5).unwrap(),
            );
            for op in ALL_BINARY {
                let what = format!("{label} {op:?} {sa:?} {sb:?}");
                let got = a.binary(&b, op).unwrap();
                check(&got, &a64.binary(&b64, op).unwrap(), 1e-6, 1e-7, &what);
            }
        }
        let (c, c64) = pair(&[3, 1], 400, gpu);
        let what = format!("{label} broadcast_to");
        let got = c.broadcast_to(&[2, 3, 5]).unwrap();
        check(
            &got,
            &c64.broadcast_to(&[2, 3, 5]).unwrap(),
            0.0,
            0.0,
            &what,
        );
        // Fill: every element, including an odd tail.
        for n in [1usize, 7, 1031] {
            let got = Tensor::full(&[n], -2.5, gpu).unwrap();
            let want = Tensor::full(&[n], -2.5, &Device::Cpu).unwrap();
            check(&got, &want, 0.0, 0.0, &format!("{label} full n={n}"));
        }
    });
}

#[test]
fn loss_variants_match_the_cpu() {
    for_each_variant("loss", |gpu, label| {
        // Rows of 1, 3, 13 and 37 classes (row starts off vec4 boundaries); 1,031 rows
        // take two workgroups of the cross-entropy sum and a finishing dispatch. For
        // row_per_workgroup: many narrow rows (a lane each, 36 workgroups finished by
        // the last), few wide rows (a whole workgroup per row, several vec4s per lane)
        // and a prime width.
        for (i, (n, c)) in [
            (1usize, 1usize),
            (7, 13),
            (67, 3),
            (1031, 37),
            (9001, 1),
            (3, 4096),
            (5, 5003),
            (2003, 10),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 500 + 10 * i as u64;
            let (z, z64) = pair(&[n, c], seed, gpu);
            let (z, z64) = (z.scale(4.0).unwrap(), z64.scale(4.0).unwrap());
            let what = |op: &str| format!("{label} {op} [{n}, {c}]");
            let got = z.log_softmax().unwrap();
            check(
                &got,
                &z64.log_softmax().unwrap(),
                1e-4,
                1e-6,
                &what("log_softmax"),
            );
            let got = z.softmax().unwrap();
            check(&got, &z64.softmax().unwrap(), 1e-4, 1e-6, &what("softmax"));
            let labels: Vec<f32> = (0..n).map(|r| ((r * 7 + 3) % c) as f32).collect();
            let (y, y64) = exact(labels, &[n], gpu);
            let (w, w64) = pair(&[n], seed + 1, gpu);
            let got = z.cross_entropy(&y, None).unwrap();
            let want = z64.cross_entropy(&y64, None).unwrap();
            check(&got, &want, 1e-4, 1e-6, &what("cross_entropy"));
            let got = z.cross_entropy(&y, Some(&w)).unwrap();
            let want = z64.cross_entropy(&y64, Some(&w64)).unwrap();
            check(&got, &want, 1e-4, 1e-5, &what("weighted cross_entropy"));
            // The fused gradient, with the upstream gradient on the device and as a
            // constant (a parameter of the kernel), weighted or not.
            let ce_grad = crate::ops::loss::cross_entropy_grad_raw;
            let (g, g64) = (
                Tensor::scalar(0.6, gpu).unwrap(),
                Tensor::scalar(0.6, &Device::Cpu)
                    .unwrap()
                    .to_dtype(crate::DType::F64)
                    .unwrap(),
            );
            let got = ce_grad(&z, &y, None, None, &g).unwrap();
            let want = ce_grad(&z64, &y64, None, None, &g64).unwrap();
            check(&got, &want, 1e-4, 1e-7, &what("ce_grad"));
            let g = Tensor::full(&[], 0.6, gpu).unwrap();
            let got = ce_grad(&z, &y, Some(&w), None, &g).unwrap();
            let want = ce_grad(&z64, &y64, Some(&w64), None, &g64).unwrap();
            check(&got, &want, 1e-4, 1e-7, &what("weighted ce_grad"));
            // Its vector–Jacobian product (the same kernel in every variant).
            let (u, u64_) = pair(&[n, c], seed + 2, gpu);
            let vjp = crate::ops::loss::cross_entropy_grad_vjp_raw;
            let (dz, r) = vjp(&z, &y, Some(&w), &g, &u).unwrap();
            let (dz64, r64) = vjp(&z64, &y64, Some(&w64), &g64, &u64_).unwrap();
            check(&dz, &dz64, 1e-4, 1e-7, &what("ce_grad_vjp (logits)"));
            check(&r, &r64, 1e-4, 1e-6, &what("ce_grad_vjp (rows)"));
        }
    });
}

#[test]
fn index_variants_match_the_cpu() {
    for_each_variant("index", |gpu, label| {
        // Pure data movement: exact.
        for (i, (n, classes)) in [(1usize, 1usize), (7, 5), (1031, 3)]
            .into_iter()
            .enumerate()
        {
            let labels: Vec<f32> = (0..n).map(|r| ((r * 5 + 1) % classes) as f32).collect();
            let (y, y64) = exact(labels, &[n], gpu);
            let what = format!("{label} one_hot [{n}, {classes}]");
            let got = Tensor::one_hot(&y, classes).unwrap();
            check(
                &got,
                &Tensor::one_hot(&y64, classes).unwrap(),
                0.0,
                0.0,
                &what,
            );
            let (x, x64) = pair(&[n, classes], 600 + i as u64, gpu);
            let what = format!("{label} gather [{n}, {classes}]");
            check(
                &x.gather(&y).unwrap(),
                &x64.gather(&y64).unwrap(),
                0.0,
                0.0,
                &what,
            );
        }
        // Tiles of 32 columns by 32 rows: shapes off their multiples, and a batch.
        let shapes: [&[usize]; 4] = [&[1, 1], &[7, 13], &[33, 65], &[3, 17, 40]];
        for (i, shape) in shapes.into_iter().enumerate() {
            let (x, x64) = pair(shape, 700 + i as u64, gpu);
            let what = format!("{label} transpose {shape:?}");
            check(
                &x.transpose().unwrap(),
                &x64.transpose().unwrap(),
                0.0,
                0.0,
                &what,
            );
        }
    });
}

#[test]
fn update_variants_match_the_cpu() {
    for_each_variant("update", |gpu, label| {
        for (i, n) in [1usize, 7, 1031].into_iter().enumerate() {
            let seed = 800 + 10 * i as u64;
            let (y, y64) = pair(&[n], seed, gpu);
            let (x, x64) = pair(&[n], seed + 1, gpu);
            let (s, s64) = exact(vec![0.75], &[], gpu);
            let (t, t64) = exact(vec![-1.25], &[1], gpu);
            let (zero, zero64) = exact(vec![0.0], &[], gpu);
            let what = |form: &str| format!("{label} {form} n={n}");
            // f32 rounding of two products and a sum.
            let tol = (1e-5, 1e-6);
            let got = y.axpy(0.3, &x).unwrap();
            check(
                &got,
                &y64.axpy(0.3, &x64).unwrap(),
                tol.0,
                tol.1,
                &what("axpy host"),
            );
            let got = y.axpy(&s, &x).unwrap();
            check(
                &got,
                &y64.axpy(&s64, &x64).unwrap(),
                tol.0,
                tol.1,
                &what("axpy device"),
            );
            let got = y.axpby(&t, 0.3, &x).unwrap();
            let want = y64.axpby(&t64, 0.3, &x64).unwrap();
            check(&got, &want, tol.0, tol.1, &what("axpby device b"));
            let got = y.axpby(-2.0, &s, &x).unwrap();
            let want = y64.axpby(-2.0, &s64, &x64).unwrap();
            check(&got, &want, tol.0, tol.1, &what("axpby device a"));
            let got = y.axpy_ratio(&s, &t, -1.0, &x).unwrap();
            let want = y64.axpy_ratio(&s64, &t64, -1.0, &x64).unwrap();
            check(&got, &want, tol.0, tol.1, &what("axpy_ratio"));
            // A zero denominator gives a zero ratio: y itself.
            let got = y.axpy_ratio(&s, &zero, 1.0, &x).unwrap();
            let want = y64.axpy_ratio(&s64, &zero64, 1.0, &x64).unwrap();
            check(&got, &want, 0.0, 0.0, &what("axpy_ratio over 0"));
        }
    });
}

// ---- listing and forcing on a real context --------------------------------------------

#[test]
fn every_family_lists_one_default_and_one_active_variant() {
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    let list = ctx.kernel_variants();
    for family in FamilyId::ALL {
        let of: Vec<_> = list.iter().filter(|v| v.family == family.name()).collect();
        assert_eq!(of.len(), family.entries().len(), "{}", family.name());
        assert_eq!(of.iter().filter(|v| v.default).count(), 1);
        assert_eq!(of.iter().filter(|v| v.active).count(), 1);
        let default = of.iter().find(|v| v.default).unwrap();
        assert!(default.runnable(), "{}/{}", family.name(), default.name);
        assert!(of.iter().any(|v| v.runnable()));
    }
}

#[test]
fn forcing_a_variant_changes_the_kernel_that_runs() {
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    let ran = |shader: &str| {
        ctx.pipelines
            .lock()
            .unwrap()
            .keys()
            .any(|(s, entry, _)| *s == shader && *entry == "main")
    };
    // 20 × 20: not narrow, so the product runs a GEMM kernel (not `matvec`).
    let (a, _) = pair(&[20, 6], 1, &gpu);
    ctx.force_kernel("matmul", Some("portable")).unwrap();
    let active: Vec<_> = ctx
        .kernel_variants()
        .into_iter()
        .filter(|v| v.family == "matmul" && v.active)
        .map(|v| v.name)
        .collect();
    assert_eq!(active, ["portable"]);
    a.matmul_t(&a, false, true)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(ran("matmul_portable") && !ran("matmul"));
    let subgroup = ctx
        .kernel_variants()
        .into_iter()
        .find(|v| v.family == "matmul" && v.name == "subgroup")
        .unwrap();
    if subgroup.runnable() {
        ctx.force_kernel("matmul", Some("subgroup")).unwrap();
        a.matmul_t(&a, false, true)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert!(ran("matmul"));
    } else {
        let e = ctx.force_kernel("matmul", Some("subgroup")).unwrap_err();
        assert!(matches!(e, Error::KernelChoice { .. }), "{e}");
    }
    // The GPU variants run on any adapter that has their workgroups (lavapipe has).
    for (name, shader) in [
        ("tiled", "matmul_tiled"),
        ("tiled_large", "matmul_tiled_large"),
    ] {
        let runnable = ctx
            .kernel_variants()
            .into_iter()
            .any(|v| v.family == "matmul" && v.name == name && v.runnable());
        if runnable {
            ctx.force_kernel("matmul", Some(name)).unwrap();
            a.matmul_t(&a, false, true)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            assert!(ran(shader), "{name}");
        }
    }
    // Back to the automatic choice.
    ctx.force_kernel("matmul", None).unwrap();
    let list = ctx.kernel_variants();
    let matmul = list.iter().filter(|v| v.family == "matmul");
    assert!(matmul.clone().all(|v| v.active == v.default), "{list:?}");
}

#[test]
fn force_kernel_rejects_bad_choices_with_typed_errors() {
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    let before = ctx.kernel_variants();
    for (family, variant) in [
        ("matmul", Some("fastest")),
        ("conv", Some("direct")),
        ("conv", None),
        ("", Some("")),
    ] {
        match ctx.force_kernel(family, variant) {
            Err(Error::KernelChoice { valid, .. }) => {
                assert!(
                    valid.contains("matmul=") && valid.contains("portable"),
                    "{valid}"
                );
            }
            other => panic!("{family}={variant:?}: expected KernelChoice, got {other:?}"),
        }
    }
    // Nothing changed.
    assert_eq!(ctx.kernel_variants(), before);
}

/// Set in the child process of the test below.
const CHILD: &str = "BLO_KERNELS_TEST_CHILD";

/// `BLO_KERNELS` is read when a context opens: a valid value forces variants, a bad one
/// makes opening the device a typed error. The variable is process-wide, so each value
/// is tried in a child process running this same test.
#[test]
fn blo_kernels_is_read_when_a_context_opens() {
    if std::env::var_os(CHILD).is_some() {
        match Device::gpu() {
            Ok(dev) => {
                for v in dev.gpu_context().unwrap().kernel_variants() {
                    if v.active {
                        println!("active {}/{}", v.family, v.name);
                    }
                }
            }
            Err(e) => println!("error {e:?}"),
        }
        return;
    }
    if fresh_gpu_or_skip().is_none() {
        return;
    }
    let run = |value: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "backend::gpu::registry::tests::blo_kernels_is_read_when_a_context_opens",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env(ENV, value)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run("matmul=portable");
    assert!(
        out.contains("active matmul/portable") && out.contains("active reduce/one_barrier"),
        "{out}"
    );
    let out = run("reduce=one_barrier,matmul=warp");
    assert!(
        out.contains("error KernelChoice") && out.contains("matmul=warp"),
        "{out}"
    );
    assert!(out.contains("matmul=") && out.contains("portable"), "{out}");
}
