//! Per-product cost of the GPU matrix–vector kernels without a sync around each product:
//! `reps` products recorded back to back, one sync, minus the cost of a sync alone.
//! `blo bench --only matvec` syncs around every product, so on an adapter with a large
//! submit/wait latency (lavapipe: ~100 µs) it measures mostly that latency.
//!
//! Besides wall time it reports the CPU time of all the process's threads per product
//! (Linux only: lavapipe's worker threads are ours), which a busy machine disturbs less.
//!
//! `cargo run --release --example matvec_timing [reps]` (`BLO_KERNELS=matvec=<variant>`
//! times one variant).

use std::time::Instant;

use blo::{Device, Tensor};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// CPU time of every thread of this process so far, in seconds (0 where /proc has none).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 * 1e-9
}

fn main() -> blo::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map_or(200, |s| s.parse().expect("reps: a number"));
    let dev = Device::gpu()?;
    println!("{}", dev.gpu_context().expect("a GPU").info().name);
    for (m, k, transposed) in [
        (2000, 200, false),
        (2000, 200, true),
        (20000, 1000, false),
        (20000, 1000, true),
    ] {
        let x = Tensor::from_vec(values(m * k, 1), &[m, k], &dev)?;
        let len = if transposed { m } else { k };
        let v = Tensor::from_vec(values(len, 2), &[len, 1], &dev)?;
        let product = || x.matmul_t(&v, transposed, false);
        // Pipelines compiled, buffers pooled.
        for _ in 0..3 {
            product()?;
        }
        dev.sync()?;
        let (t, c) = (Instant::now(), cpu_seconds());
        for _ in 0..20 {
            dev.sync()?;
        }
        let sync = t.elapsed().as_secs_f64() / 20.0;
        let sync_cpu = (cpu_seconds() - c) / 20.0;
        let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            let (t, c) = (Instant::now(), cpu_seconds());
            for _ in 0..reps {
                product()?;
            }
            dev.sync()?;
            best = best.min((t.elapsed().as_secs_f64() - sync) / reps as f64);
            best_cpu = best_cpu.min((cpu_seconds() - c - sync_cpu) / reps as f64);
        }
        let name = if transposed { "Xᵀ·r" } else { "X·w" };
        println!(
            "{name:5} X[{m}, {k}]: {:8.1} µs per product, {:6.2} GB/s, CPU {:8.1} µs",
            best * 1e6,
            (4 * m * k) as f64 / best / 1e9,
            best_cpu * 1e6
        );
    }
    Ok(())
}
