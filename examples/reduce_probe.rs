//! Time per op of the reductions and softmax losses on the GPU device, without sync
//! overhead: each op is recorded `reps` times back to back and the device synced once.
//! `BLO_KERNELS` picks the variants (e.g. `BLO_KERNELS=gpu`, `BLO_KERNELS=cpu`).
//!
//! `cargo run --release --example reduce_probe`

use std::time::Instant;

use blo::{Device, Result, Tensor};

/// Median over `rounds` of the time per op of `reps` ops recorded back to back.
fn per_op(dev: &Device, reps: usize, op: &dyn Fn() -> Result<Tensor>) -> Result<f64> {
    // Warm-up: compiles pipelines and fills the buffer pool.
    for _ in 0..3 {
        drop(op()?);
    }
    dev.sync()?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut keep = Vec::with_capacity(reps);
        for _ in 0..reps {
            keep.push(op()?);
        }
        dev.sync()?;
        times.push(start.elapsed().as_secs_f64() / reps as f64);
        drop(keep);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2] * 1e6)
}

fn main() -> Result<()> {
    let dev = Device::gpu()?;
    let ctx = dev.gpu_context().expect("a GPU device");
    let active: Vec<String> = ctx
        .kernel_variants()
        .into_iter()
        .filter(|v| v.active && (v.family == "reduce" || v.family == "loss"))
        .map(|v| format!("{}/{}", v.family, v.name))
        .collect();
    println!("{} — {}", ctx.info().name, active.join(", "));
    for n in [1usize << 20, 1 << 24] {
        let x = Tensor::rand_uniform(&[n], -1.0, 1.0, 1, &dev)?;
        let us = per_op(&dev, 100, &|| x.sum())?;
        println!(
            "sum {n:>9}: {us:8.1} us/op ({:.2} GB/s)",
            n as f64 * 4.0 / us / 1e3
        );
    }
    for (rows, c) in [(500usize, 10usize), (64, 4096)] {
        let z = Tensor::rand_uniform(&[rows, c], -4.0, 4.0, 2, &dev)?;
        let labels: Vec<f32> = (0..rows).map(|r| ((r * 7 + 3) % c) as f32).collect();
        let y = Tensor::from_vec(labels, &[rows], &dev)?;
        let ce = per_op(&dev, 100, &|| z.cross_entropy(&y, None))?;
        let sm = per_op(&dev, 100, &|| z.log_softmax())?;
        println!("[{rows}, {c}]: cross_entropy {ce:8.1} us/op, log_softmax {sm:8.1} us/op");
    }
    Ok(())
}
