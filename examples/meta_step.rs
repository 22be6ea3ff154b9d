//! Times one meta-gradient step (MAML, FOMAML, Meta-SGD, L2F, MT-Net, WarpGrad) on 32
//! sinusoid tasks, K = 10, S = 5, MLP 1-40-40-1, on the CPU backend: `cargo run
//! --release --example meta_step [ITERS] [B] [METHOD]` (METHOD: time only the methods
//! whose name contains it).
use blo::meta::{Activation, MetaMethod, MetaParams, Mlp, StepSize, meta_gradient_with};
use blo::problems::Sinusoid;
use blo::{DType, Device};

fn main() -> blo::Result<()> {
    let mut args = std::env::args().skip(1);
    let iters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let b: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let only = args.next().unwrap_or_default();
    let dev = Device::cpu();
    let model = Mlp::new(&[1, 40, 40, 1], Activation::Relu)?;
    let tasks = Sinusoid::new(b, 10, 10, 0, &dev, DType::F32)?.batch(0)?;
    let theta = model.init(0, &dev, DType::F32)?;
    for (method, alpha) in [
        (MetaMethod::Maml, StepSize::Scalar(0.01)),
        (MetaMethod::Fomaml, StepSize::Scalar(0.01)),
        (
            MetaMethod::MetaSgd,
            StepSize::PerParameter(theta.full_like(0.01)?),
        ),
        (MetaMethod::L2f { hidden: None }, StepSize::Scalar(0.01)),
        (
            MetaMethod::MtNet {
                temperature: 1.0,
                masked: true,
            },
            StepSize::Scalar(0.01),
        ),
        (
            MetaMethod::WarpGrad { layers: None },
            StepSize::Scalar(0.01),
        ),
    ] {
        if !method.name().contains(only.as_str()) {
            continue;
        }
        let params = MetaParams {
            theta: theta.clone(),
            alpha,
            extra: method.init_extra(&model, 0, &dev, DType::F32)?,
        };
        let mut times = Vec::new();
        for i in 0..iters {
            let t = std::time::Instant::now();
            meta_gradient_with(&method, &model, &tasks, &params, 5, i as u64)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{:<9} B = {b}: min {:.3} ms, median {:.3} ms",
            method.name(),
            times[0],
            times[times.len() / 2]
        );
    }
    Ok(())
}
