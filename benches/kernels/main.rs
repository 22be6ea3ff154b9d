//! Kernel benchmarks: `cargo bench --bench kernels`. Each family is a module; GPU work is
//! timed with a device sync inside `iter_custom`, so a measurement covers execution, not
//! just recording.

use std::time::{Duration, Instant};

use blo::{Device, Result};
use criterion::{Criterion, criterion_group, criterion_main};

mod elementwise;
mod matmul;
mod reduce;

/// The GPU device to benchmark (any adapter, software included), or `None` with a notice.
pub fn gpu() -> Option<Device> {
    match Device::gpu() {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("notice: no GPU adapter, GPU benchmarks skipped: {e}");
            None
        }
    }
}

/// The devices to run each benchmark on, with a short label.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut v = vec![("cpu", Device::Cpu)];
    if let Some(g) = gpu() {
        v.push(("gpu", g));
    }
    v
}

/// Times `iters` runs of `f` and waits for the device to finish before stopping the clock.
pub fn timed(device: &Device, iters: u64, mut f: impl FnMut() -> Result<()>) -> Duration {
    device.sync().expect("sync before timing");
    let start = Instant::now();
    for _ in 0..iters {
        f().expect("benchmarked op");
    }
    device.sync().expect("sync after timing");
    start.elapsed()
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = elementwise::bench, reduce::bench, matmul::bench
}
criterion_main!(benches);
