//! Bytes stored per meta-gradient step by MAML (its S + 1 inner iterates, for the
//! reverse sweep) and by WarpGrad (the current iterate and the warp gradient's
//! accumulator) at S = 5, 20 and 100, on 32 sinusoid tasks, K = 10, MLP 1-40-40-1, f32,
//! CPU backend: `cargo run --release --example meta_memory`. These are the numbers of
//! the table in `blo::meta::warpgrad`'s docs and the README.
use blo::meta::{Activation, MetaMethod, MetaParams, Mlp, StepSize, meta_gradient_with};
use blo::problems::Sinusoid;
use blo::{DType, Device};

fn main() -> blo::Result<()> {
    let dev = Device::cpu();
    let model = Mlp::new(&[1, 40, 40, 1], Activation::Relu)?;
    let tasks = Sinusoid::new(32, 10, 10, 0, &dev, DType::F32)?.batch(0)?;
    let theta = model.init(0, &dev, DType::F32)?;
    println!(
        "{:>4} | {:>12} | {:>12}",
        "S", "MAML bytes", "WarpGrad bytes"
    );
    for steps in [5, 20, 100] {
        let mut bytes = Vec::new();
        for method in [MetaMethod::Maml, MetaMethod::WarpGrad { layers: None }] {
            let params = MetaParams {
                theta: theta.clone(),
                alpha: StepSize::Scalar(0.01),
                extra: method.init_extra(&model, 0, &dev, DType::F32)?,
            };
            let g = meta_gradient_with(&method, &model, &tasks, &params, steps, 0)?;
            bytes.push(g.stored_bytes);
        }
        println!("{steps:>4} | {:>12} | {:>12}", bytes[0], bytes[1]);
    }
    Ok(())
}
