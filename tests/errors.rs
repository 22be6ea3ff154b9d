//! Bad input returns the right error variant, never a panic.

use blo::testing::gpu_or_skip;
use blo::{DType, Device, Error, Tensor};

const CPU: Device = Device::Cpu;

#[test]
fn shape_mismatches_name_the_op_and_both_shapes() {
    let a = Tensor::zeros(&[2, 3], &CPU).unwrap();
    let b = Tensor::zeros(&[4, 5], &CPU).unwrap();
    match a.matmul(&b) {
        Err(Error::ShapeMismatch { op, lhs, rhs }) => {
            assert!(op.contains("matmul"), "{op}");
            assert_eq!((lhs, rhs), (vec![2, 3], vec![4, 5]));
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let msg = a.add(&b).unwrap_err().to_string();
    assert!(
        msg.contains("[2, 3]") && msg.contains("[4, 5]") && msg.contains("add"),
        "{msg}"
    );
    assert!(matches!(a.dot(&b), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        a.reshape(&[7]),
        Err(Error::ShapeMismatch { op: "reshape", .. })
    ));
    assert!(matches!(
        Tensor::from_vec(vec![1.0f32; 5], &[2, 3], &CPU),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(a.axpy(1.0, &b), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(a.mse(&b), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        a.sum_axis(2, false),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn dtype_mismatches_and_f64_on_the_gpu() {
    // Shapes that fit every op, so only the dtypes are wrong: each op must reach its
    // dtype check and name itself.
    let a = Tensor::zeros(&[3], &CPU).unwrap();
    let b = a.to_dtype(DType::F64).unwrap();
    let (row, col) = (a.reshape(&[1, 3]).unwrap(), b.reshape(&[3, 1]).unwrap());
    for (want, r) in [
        ("add", a.add(&b)),
        ("eq", a.eq_mask(&b)),
        ("matmul", row.matmul(&col)),
        ("dot", a.dot(&b)),
        ("axpy", a.axpy(1.0, &b)),
        ("mse", a.mse(&b)),
    ] {
        match r {
            Err(Error::DTypeMismatch { op, lhs, rhs }) => {
                assert!(op.contains(want), "{op} for {want}");
                assert_eq!((lhs, rhs), (DType::F32, DType::F64), "{want}");
            }
            other => panic!("{want}: expected DTypeMismatch, got {other:?}"),
        }
    }
    let Some(gpu) = gpu_or_skip() else { return };
    assert!(matches!(
        b.to_device(&gpu),
        Err(Error::UnsupportedDType { .. })
    ));
    assert!(matches!(
        Tensor::from_vec(vec![1.0f64], &[1], &gpu),
        Err(Error::UnsupportedDType { .. })
    ));
}

#[test]
fn device_mismatches_are_errors() {
    let Some(gpu) = gpu_or_skip() else { return };
    let a = Tensor::zeros(&[2, 2], &CPU).unwrap();
    let g = Tensor::zeros(&[2, 2], &gpu).unwrap();
    for r in [
        a.add(&g),
        a.matmul(&g),
        a.dot(&g),
        a.axpy(1.0, &g),
        a.mse(&g),
    ] {
        assert!(matches!(r, Err(Error::DeviceMismatch { .. })), "{r:?}");
    }
    // Two GPU contexts are two devices too.
    let other = Device::gpu().unwrap();
    let h = Tensor::zeros(&[2, 2], &other).unwrap();
    assert!(matches!(g.add(&h), Err(Error::DeviceMismatch { .. })));
}

#[test]
fn a_tensor_over_the_storage_binding_limit_is_rejected() {
    let Some(gpu) = gpu_or_skip() else { return };
    let limit = gpu
        .gpu_context()
        .unwrap()
        .limits()
        .max_storage_buffer_binding_size;
    let elements = (limit / 4 + 1) as usize;
    match Tensor::zeros(&[elements], &gpu) {
        Err(Error::TooLarge {
            limit_name,
            bytes,
            limit: l,
            ..
        }) => {
            assert_eq!(limit_name, "max_storage_buffer_binding_size");
            assert_eq!((bytes, l), (elements as u64 * 4, limit));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Exactly at the limit is fine.
    let at = Tensor::zeros(&[(limit / 4) as usize], &gpu).unwrap();
    assert_eq!(at.numel() as u64 * 4, limit);
}

#[test]
fn the_no_adapter_error_says_how_to_get_one() {
    match Device::gpu_named("no adapter has this name 0xdeadbeef") {
        Err(e @ Error::NoAdapter { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no adapter has this name"), "{msg}");
        }
        other => panic!("expected NoAdapter, got {other:?}"),
    }
    let Error::NoAdapter { hint, .. } = Device::gpu_index(10_000).unwrap_err() else {
        panic!("expected NoAdapter")
    };
    // With adapters present the index is the mistake: the hint lists them (issue #13);
    // without any, it says how to install one.
    if Device::adapters().is_empty() {
        assert!(hint.contains("mesa-vulkan-drivers"), "{hint}");
    } else {
        assert!(
            hint.contains("0: ") && hint.contains("blo devices"),
            "{hint}"
        );
    }
}

#[test]
fn invalid_random_parameters_are_errors() {
    assert!(matches!(
        Tensor::rand_uniform(&[3], 1.0, 1.0, 0, &CPU),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Tensor::rand_normal(&[3], 0.0, f32::NAN, 0, &CPU),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Tensor::scalar(1.0, &CPU).unwrap().to_scalar::<f32>(),
        Ok(1.0)
    ));
    assert!(matches!(
        Tensor::zeros(&[2], &CPU).unwrap().to_scalar::<f32>(),
        Err(Error::ShapeMismatch { .. })
    ));
}

// ---- the bilevel entry points check λ, w₀ and the losses before any work ----------

mod entry {
    use super::CPU;
    use blo::bilevel::{
        HoagConfig, Inner, InnerOptimizer, Method, OuterConfig, OuterOptimizer, Problem, Tolerance,
        WarmStart, hoag, hypergradient, hypergradient_from, inner_iterate, optimize, outer_value,
        solve_inner,
    };
    use blo::problems::Ridge;
    use blo::testing::gpu_or_skip;
    use blo::{DType, Device, Result, Tensor};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Ridge in f64 with d = 3, whose losses can be given a wrong shape, and which
    /// counts its loss evaluations (the checks must come before any).
    struct Shaped {
        ridge: Ridge,
        inner_shape: Vec<usize>,
        outer_shape: Vec<usize>,
        calls: AtomicUsize,
    }

    impl Problem for Shaped {
        fn init_w(&self) -> Result<Vec<Tensor>> {
            self.ridge.init_w()
        }
        fn lambda_shapes(&self) -> Vec<Vec<usize>> {
            self.ridge.lambda_shapes()
        }
        fn inner_loss(&self, w: &[Tensor], l: &[Tensor]) -> Result<Tensor> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.ridge.inner_loss(w, l)?.reshape(&self.inner_shape)
        }
        fn outer_loss(&self, w: &[Tensor], l: &[Tensor]) -> Result<Tensor> {
            self.ridge.outer_loss(w, l)?.reshape(&self.outer_shape)
        }
    }

    fn problem(inner: &[usize], outer: &[usize]) -> Shaped {
        Shaped {
            ridge: Ridge::synthetic(10, 8, 3, 1, &CPU, DType::F64).unwrap(),
            inner_shape: inner.to_vec(),
            outer_shape: outer.to_vec(),
            calls: AtomicUsize::new(0),
        }
    }

    fn lambda(n: usize, dev: &Device, dtype: DType) -> Vec<Tensor> {
        vec![Tensor::from_f64(&vec![0.1; n], &[n], dev, dtype).unwrap()]
    }

    fn inner() -> Inner {
        Inner {
            optimizer: InnerOptimizer::Gd { lr: 0.1 },
            steps: 3,
        }
    }

    /// Runs every entry point with λ (and, where it takes one, the problem's w₀) and
    /// returns each one's error message, asserting that the problem's loss never ran.
    fn every_entry(p: &Shaped, l: &[Tensor]) -> Vec<String> {
        let init = p.init_w().unwrap();
        let w0 = &init[..];
        let cfg = OuterConfig {
            steps: 2,
            optimizer: OuterOptimizer::Sgd { lr: 0.1 },
            warm_start: WarmStart::Reinit,
        };
        let hoag_cfg = HoagConfig {
            outer_steps: 1,
            lr: 0.1,
            eps0: 1e-2,
            decay: 0.5,
            inner: InnerOptimizer::Gd { lr: 0.1 },
            max_inner_steps: 5,
            max_cg_iters: 3,
            check_every: 1,
        };
        let results = vec![
            hypergradient(p, l, &inner(), &Method::rad()).map(drop),
            hypergradient_from(p, l, w0, &inner(), &Method::cg(3)).map(drop),
            optimize(p, l, &inner(), &Method::rad(), &cfg).map(drop),
            hoag(p, l, &hoag_cfg).map(drop),
            solve_inner(p, l, w0, &opt(), &tolerance()).map(drop),
            inner_iterate(p, l, w0, &inner()).map(drop),
            outer_value(p, l, &inner()).map(drop),
        ];
        messages(p, results)
    }

    /// The entry points that take a w₀, with a good λ and the given w₀.
    fn w0_entries(p: &Shaped, w0: &[Tensor]) -> Vec<String> {
        let l = lambda(3, &CPU, DType::F64);
        let results = vec![
            hypergradient_from(p, &l, w0, &inner(), &Method::cg(3)).map(drop),
            solve_inner(p, &l, w0, &opt(), &tolerance()).map(drop),
            inner_iterate(p, &l, w0, &inner()).map(drop),
        ];
        messages(p, results)
    }

    fn messages(p: &Shaped, results: Vec<Result<()>>) -> Vec<String> {
        let msgs = results
            .into_iter()
            .map(|r| r.expect_err("a bad input must be an error").to_string())
            .collect();
        let calls = p.calls.load(Ordering::SeqCst);
        assert_eq!(calls, 0, "a loss ran before the error");
        msgs
    }

    fn opt() -> InnerOptimizer {
        InnerOptimizer::Gd { lr: 0.1 }
    }

    fn tolerance() -> Tolerance {
        Tolerance {
            tol: 1e-3,
            max_steps: 5,
            check_every: 1,
            solver: Default::default(),
        }
    }

    #[track_caller]
    fn all_say(msgs: &[String], what: &[&str]) {
        for m in msgs {
            for w in what {
                assert!(m.contains(w), "expected {w:?} in: {m}");
            }
        }
    }

    #[test]
    fn lambda_count() {
        let p = problem(&[], &[]);
        let two = [lambda(3, &CPU, DType::F64), lambda(3, &CPU, DType::F64)].concat();
        all_say(
            &every_entry(&p, &two),
            &["λ must have 1 tensor(s)", "got 2"],
        );
    }

    #[test]
    fn lambda_shape() {
        let p = problem(&[], &[]);
        let msgs = every_entry(&p, &lambda(4, &CPU, DType::F64));
        all_say(&msgs, &["λ[0] has shape [4]", "[3]"]);
        assert!(msgs[0].starts_with("hypergradient:") && msgs[2].starts_with("optimize:"));
        assert!(msgs[3].starts_with("hoag:") && msgs[4].starts_with("solve_inner:"));
    }

    #[test]
    fn lambda_dtype() {
        let p = problem(&[], &[]);
        let msgs = every_entry(&p, &lambda(3, &CPU, DType::F32));
        all_say(&msgs, &["λ[0] is F32", "computes in F64", "to_dtype"]);
    }

    #[test]
    fn lambda_device() {
        let Some(gpu) = gpu_or_skip() else { return };
        let p = problem(&[], &[]);
        // Before: "dot: operands live on different devices", deep in the loss.
        let msgs = every_entry(&p, &lambda(3, &gpu, DType::F32));
        all_say(
            &msgs,
            &["λ[0] lives on", "the problem runs on cpu", "to_device"],
        );
    }

    #[test]
    fn w0_empty_count_shape_dtype_and_device() {
        let p = problem(&[], &[]);
        all_say(&w0_entries(&p, &[]), &["w₀ is empty", "init_w()"]);
        let w = p.init_w().unwrap();
        let two = [w.clone(), w.clone()].concat();
        all_say(
            &w0_entries(&p, &two),
            &["w₀ must have 1 tensor(s)", "got 2"],
        );
        let short = vec![Tensor::from_f64(&[0.0; 2], &[2], &CPU, DType::F64).unwrap()];
        all_say(&w0_entries(&p, &short), &["w₀[0] has shape [2]", "[3]"]);
        let f32s = vec![w[0].to_dtype(DType::F32).unwrap()];
        all_say(&w0_entries(&p, &f32s), &["w₀[0] is F32", "computes in F64"]);
        let Some(gpu) = gpu_or_skip() else { return };
        let there = vec![f32s[0].to_device(&gpu).unwrap()];
        all_say(&w0_entries(&p, &there), &["w₀[0] lives on", "runs on cpu"]);
    }

    /// A loss of shape [1] was accepted although the docs say 0-d; a wrong shape now
    /// names the loss.
    #[test]
    fn losses_must_be_0d_and_errors_name_which() {
        let l = lambda(3, &CPU, DType::F64);
        for (inner_shape, outer_shape, which) in [
            (&[1][..], &[][..], "inner loss must be a 0-d tensor"),
            (&[], &[1, 1], "outer loss must be a 0-d tensor"),
        ] {
            let p = problem(inner_shape, outer_shape);
            let e = hypergradient(&p, &l, &inner(), &Method::rad()).unwrap_err();
            assert!(e.to_string().contains(which), "{e}");
            let cfg = OuterConfig {
                steps: 1,
                optimizer: OuterOptimizer::adam(0.1),
                warm_start: WarmStart::Warm,
            };
            let e = optimize(&p, &l, &inner(), &Method::rad(), &cfg).unwrap_err();
            assert!(e.to_string().contains(which), "{e}");
            let e = outer_value(&p, &l, &inner()).unwrap_err();
            assert!(e.to_string().contains(which), "{e}");
        }
        // The right shapes pass, from the problem's w₀ or a given one.
        let p = problem(&[], &[]);
        let a = hypergradient(&p, &l, &inner(), &Method::rad()).unwrap();
        let b = hypergradient_from(&p, &l, &p.init_w().unwrap(), &inner(), &Method::rad()).unwrap();
        assert_eq!(
            a.grad[0].to_vec::<f64>().unwrap(),
            b.grad[0].to_vec::<f64>().unwrap()
        );
    }

    /// A loss that is finite at w₀ with a gradient that is not (|w| through sqrt(w²) at
    /// w = 0): named as the gradient at step 0, blaming the data, not the step size.
    #[test]
    fn a_non_finite_gradient_at_step_0_blames_the_data() {
        struct Kink(Ridge);
        impl Problem for Kink {
            fn init_w(&self) -> Result<Vec<Tensor>> {
                self.0.init_w()
            }
            fn lambda_shapes(&self) -> Vec<Vec<usize>> {
                self.0.lambda_shapes()
            }
            fn inner_loss(&self, w: &[Tensor], l: &[Tensor]) -> Result<Tensor> {
                self.0.inner_loss(w, l)?.add(&w[0].square()?.sqrt()?.sum()?)
            }
            fn outer_loss(&self, w: &[Tensor], l: &[Tensor]) -> Result<Tensor> {
                self.0.outer_loss(w, l)
            }
        }
        let p = Kink(Ridge::synthetic(10, 8, 3, 1, &CPU, DType::F64).unwrap());
        let e = hypergradient(&p, &lambda(3, &CPU, DType::F64), &inner(), &Method::rad())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gradient of the inner loss is not finite"),
            "{e}"
        );
        assert!(
            e.contains("inner step 0") && e.contains("check the data and the labels"),
            "{e}"
        );
        assert!(!e.contains("lower its step size"), "{e}");
    }

    /// The finite-difference check refuses a step it cannot use, and a λ that does not
    /// fit the problem, naming it.
    #[test]
    fn fd_hypergradient_checks_its_step_and_lambda() {
        let p = problem(&[], &[]);
        let l = lambda(3, &CPU, DType::F64);
        for h in [0.0, -1e-5, f64::NAN] {
            let e = blo::check::fd_hypergradient(&p, &l, &inner(), h).unwrap_err();
            assert!(
                e.to_string().contains("the step h must be finite and > 0"),
                "{e}"
            );
        }
        let e = blo::check::fd_hypergradient(&p, &lambda(2, &CPU, DType::F64), &inner(), 1e-5)
            .unwrap_err();
        assert!(e.to_string().contains("λ[0] has shape [2]"), "{e}");
    }

    /// Labels a loss cannot take make it non-finite at the starting point: the message
    /// says to check the data and labels, not to lower the step size.
    #[test]
    fn a_non_finite_loss_at_step_0_blames_the_data() {
        struct BadLabels(Ridge);
        impl Problem for BadLabels {
            fn init_w(&self) -> Result<Vec<Tensor>> {
                self.0.init_w()
            }
            fn lambda_shapes(&self) -> Vec<Vec<usize>> {
                self.0.lambda_shapes()
            }
            fn inner_loss(&self, w: &[Tensor], l: &[Tensor]) -> Result<Tensor> {
                // ln of a "label" that is negative, times a term in w: NaN from the
                // start, in the loss and its gradient.
                let label = Tensor::from_f64(&[-1.0], &[], &CPU, DType::F64)?;
                self.0
                    .inner_loss(w, l)?
                    .add(&w[0].sum()?.mul(&label.log()?)?)
            }
            fn outer_loss(&self, w: &[Tensor], l: &[Tensor]) -> Result<Tensor> {
                self.0.outer_loss(w, l)
            }
        }
        let p = BadLabels(Ridge::synthetic(10, 8, 3, 1, &CPU, DType::F64).unwrap());
        let e = hypergradient(&p, &lambda(3, &CPU, DType::F64), &inner(), &Method::rad())
            .unwrap_err()
            .to_string();
        assert!(e.contains("check the data and the labels"), "{e}");
        assert!(!e.contains("lower its step size"), "{e}");
    }
}
