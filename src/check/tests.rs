use super::hypergradients::methods;
use super::kernels::{TRANSPOSES, flag};
use super::*;

#[test]
fn verdict_passes_close_values_and_fails_far_nan_and_mismatched_ones() {
    let want = vec![vec![1.0, 2.0, 3.0]];
    assert!(verdict("a", &want, &want, 1e-4).passed);
    let close = vec![vec![1.0, 2.0, 3.0 + 1e-6]];
    assert!(verdict("a", &close, &want, 1e-4).passed);
    let far = vec![vec![1.0, 2.0, 3.1]];
    assert!(!verdict("a", &far, &want, 1e-4).passed);
    let nan = vec![vec![1.0, f64::NAN, 3.0]];
    let r = verdict("a", &nan, &want, 1e-4);
    assert!(!r.passed && r.rel_err.is_nan(), "{r:?}");
    let short = vec![vec![1.0, 2.0]];
    assert!(!verdict("a", &short, &want, 1e-4).passed);
    assert!(!verdict("a", &[], &want, 1e-4).passed);
    // The worst output decides, not the concatenation.
    let two_want = vec![vec![1000.0], vec![1.0]];
    let two_got = vec![vec![1000.0], vec![1.01]];
    assert!(!verdict("a", &two_got, &two_want, 1e-4).passed);
}

/// The rule of the module docs: kernel checks have a naive reference, the checks of
/// composite computations compare with the CPU backend in f64.
#[test]
fn every_kernel_check_has_a_naive_reference() {
    let kernel_families = [
        "unary/", "binary/", "matmul/", "matvec/", "reduce/", "loss/", "index/", "shape/", "fill/",
        "update/",
    ];
    for c in checks() {
        let kernel = kernel_families.iter().any(|f| c.name.starts_with(f));
        assert_eq!(c.has_reference(), kernel, "{}", c.name);
    }
}

/// The naive references' own building blocks on hand-worked cases, so that a
/// wrong reference is not mistaken for a wrong kernel.
#[test]
fn naive_references_on_hand_worked_cases() {
    let row = [10.0, 20.0, 30.0];
    let col = [1.0, 2.0];
    assert_eq!(
        naive::elementwise(&col, &[2, 1], &row, &[3], |p, q| p + q),
        vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]
    );
    let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    assert_eq!(naive::sum_to(&m, &[2, 3], &[3]), vec![5.0, 7.0, 9.0]);
    assert_eq!(naive::sum_to(&m, &[2, 3], &[2, 1]), vec![6.0, 15.0]);
    assert_eq!(
        naive::broadcast_to(&col, &[2, 1], &[2, 3]),
        vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    );
    assert_eq!(
        naive::reduce_axis(&m, &[2, 3], 0, naive::Reduce::Max),
        vec![4.0, 5.0, 6.0]
    );
    assert_eq!(
        naive::reduce_axis(&m, &[2, 3], 1, naive::Reduce::Mean),
        vec![2.0, 5.0]
    );
    assert_eq!(
        naive::transpose(&m, 2, 3),
        vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    );
    // [[1, 2, 3], [4, 5, 6]] · [[1, 0], [0, 1], [1, 1]], and its transposed forms.
    let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let want = vec![4.0, 5.0, 10.0, 11.0];
    assert_eq!(naive::matmul(&m, &[2, 3], &b, &[3, 2], false, false), want);
    let (mt, bt) = (naive::transpose(&m, 2, 3), naive::transpose(&b, 3, 2));
    assert_eq!(naive::matmul(&mt, &[3, 2], &bt, &[2, 3], true, true), want);
    // Batched with a shared right operand.
    let two = [m, m].concat();
    assert_eq!(
        naive::matmul(&two, &[2, 2, 3], &b, &[3, 2], false, false),
        [want.clone(), want].concat()
    );
    let ln2 = 2f64.ln();
    let ls = naive::log_softmax(&[0.0, 0.0], 2);
    assert!(ls.iter().all(|v| (v + ln2).abs() < 1e-15), "{ls:?}");
    let ce = naive::cross_entropy(&[0.0, 0.0, 5.0, 5.0], &[1.0, 0.0], Some(&[1.0, 3.0]), 2);
    assert!((ce - 2.0 * ln2).abs() < 1e-15, "{ce}");
}

/// The big reductions reach the multi-workgroup paths, whose partial results take a
/// second dispatch under the CPU-adapter variants (`reduce/one_barrier`,
/// `loss/row_per_invocation`, forced here whatever `BLO_KERNELS` says); the sizes were
/// chosen for it from `full_gpu` and `axis_gpu`. (The workgroup variants finish a full
/// reduction over many workgroups in one dispatch; the same sizes give them 123
/// workgroups.)
#[test]
fn the_big_reductions_take_more_than_one_pass_on_the_gpu() {
    if crate::testing::gpu_or_skip().is_none() {
        return;
    }
    // A context of its own: the shared one counts other tests' dispatches too, and
    // forcing variants on it would change what other tests run.
    let gpu = Device::gpu().unwrap();
    let ctx = gpu.gpu_context().unwrap().clone();
    // The reduce kernels themselves: fused, a reduction is one generated kernel (and a
    // second pass past one workgroup's share, tested in backend/gpu/fusion/tests.rs).
    ctx.set_fusion(false);
    ctx.force_kernel("reduce", Some("one_barrier")).unwrap();
    ctx.force_kernel("loss", Some("row_per_invocation"))
        .unwrap();
    let big: Vec<Check> = checks()
        .into_iter()
        .filter(|c| c.name.ends_with("_1000003") || c.name.ends_with("_long"))
        .collect();
    assert_eq!(big.len(), 7, "{big:?}");
    for c in big {
        let inputs: Vec<Tensor> = c
            .inputs
            .iter()
            .map(|i| i.tensor(&gpu, DType::F32).unwrap())
            .collect();
        let before = ctx.dispatch_count();
        (c.f)(&inputs).unwrap();
        let passes = ctx.dispatch_count() - before;
        assert!(passes >= 2, "{}: {passes} dispatch", c.name);
    }
}

#[test]
fn names_are_unique_and_every_op_is_listed() {
    let all = checks();
    let names: Vec<&str> = all.iter().map(Check::name).collect();
    for (i, n) in names.iter().enumerate() {
        assert!(!names[..i].contains(n), "duplicate check {n}");
    }
    for op in ALL_UNARY {
        assert!(names.contains(&format!("unary/{}", lower(op)).as_str()));
        assert!(names.contains(&format!("grad/unary/{}", lower(op)).as_str()));
    }
    for op in ALL_BINARY {
        assert!(names.contains(&format!("binary/{}", lower(op)).as_str()));
    }
    for (ta, tb) in TRANSPOSES {
        let pair = format!("{}{}", flag(ta), flag(tb));
        assert!(names.contains(&format!("matmul/{pair}").as_str()));
        assert!(names.contains(&format!("matmul/layouts_{pair}").as_str()));
        assert!(names.contains(&format!("grad/matmul/{pair}").as_str()));
    }
    for n in ["sum", "mean", "sqnorm", "dot"] {
        assert!(names.contains(&format!("reduce/{n}_1000003").as_str()));
    }
    for (m, method) in methods() {
        assert!(names.contains(&format!("hypergrad/ridge/{m}").as_str()));
        // A new Method variant breaks this match: add it to methods() as well.
        match method {
            Method::Rad
            | Method::Trad { .. }
            | Method::Forward
            | Method::Cg { .. }
            | Method::Neumann { .. }
            | Method::FixedPoint { .. }
            | Method::OneStep { .. }
            | Method::Implicit
            | Method::Bda(_) => {}
        }
    }
}

#[test]
fn kernel_checks_name_their_family_and_others_have_none() {
    let all = checks();
    let family = |name: &str| {
        all.iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"))
            .kernel_family()
    };
    assert_eq!(family("unary/exp"), Some("elementwise"));
    assert_eq!(family("binary/add"), Some("elementwise"));
    assert_eq!(family("matmul/nn"), Some("matmul"));
    assert_eq!(family("shape/sum_to"), Some("reduce"));
    assert_eq!(family("shape/broadcast_to"), Some("elementwise"));
    assert_eq!(family("grad/matmul/nn"), None);
    // Every kernel check belongs to a family, so each variant is checked on all of them.
    for c in &all {
        let kernel = c.has_reference();
        assert_eq!(c.kernel_family().is_some(), kernel, "{}", c.name);
    }
}

/// On a GPU, each check of a family runs again under every other variant of that family
/// the adapter can run (lavapipe: matmul's portable kernel besides the subgroup one), and
/// the automatic choice is back afterwards.
#[test]
fn a_gpu_runs_family_checks_under_every_other_runnable_variant() {
    let Some(gpu) = crate::testing::fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().expect("a GPU device");
    let others: Vec<_> = ctx
        .kernel_variants()
        .into_iter()
        .filter(|v| v.family == "matmul" && v.runnable() && !v.default)
        .collect();
    let results = run_checks_matching(&gpu, Some("matmul/nt"), |_| {});
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&"matmul/nt"), "{names:?}");
    for v in &others {
        let name = format!("matmul/nt@{}", v.name);
        assert!(names.contains(&name.as_str()), "{name} missing: {names:?}");
    }
    for r in &results {
        assert!(r.passed, "{}", r.line());
    }
    for v in ctx.kernel_variants() {
        assert_eq!(v.active, v.default, "{}/{} left forced", v.family, v.name);
    }
}
