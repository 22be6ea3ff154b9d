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

#[test]
fn an_empty_w0_is_an_error_not_a_panic_in_the_problem() {
    use blo::bilevel::{Inner, InnerOptimizer, Method, Problem, hypergradient};
    let p = blo::problems::Ridge::synthetic(10, 8, 3, 1, &CPU, DType::F64).unwrap();
    let lambda = vec![Tensor::from_vec(vec![0.0f64; 3], &[3], &CPU).unwrap()];
    let inner = Inner {
        optimizer: InnerOptimizer::Gd { lr: 0.1 },
        steps: 3,
    };
    let e = hypergradient(&p, &lambda, &[], &inner, &Method::Rad).unwrap_err();
    assert!(e.to_string().contains("w0 is empty"), "{e}");
    assert!(hypergradient(&p, &lambda, &p.init_w().unwrap(), &inner, &Method::Rad).is_ok());
}
