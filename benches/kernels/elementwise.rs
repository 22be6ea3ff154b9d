//! Elementwise throughput (GB/s counts bytes read plus bytes written) and the
//! per-dispatch overhead of a chain of small kernels.

use blo::Tensor;
use criterion::{BenchmarkId, Criterion, Throughput};

use crate::{devices, timed};

pub fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise");
    for (label, dev) in devices() {
        for &n in &[1usize << 20, 1 << 24] {
            let x = Tensor::rand_uniform(&[n], -1.0, 1.0, 1, &dev).unwrap();
            let y = Tensor::rand_uniform(&[n], -1.0, 1.0, 2, &dev).unwrap();
            group.throughput(Throughput::Bytes((n * 4 * 2) as u64));
            group.bench_function(BenchmarkId::new(format!("{label}/exp"), n), |b| {
                b.iter_custom(|iters| timed(&dev, iters, || x.exp().map(drop)))
            });
            group.throughput(Throughput::Bytes((n * 4 * 3) as u64));
            group.bench_function(BenchmarkId::new(format!("{label}/add"), n), |b| {
                b.iter_custom(|iters| timed(&dev, iters, || x.add(&y).map(drop)))
            });
        }
    }
    group.finish();

    // 1,000 dependent tiny kernels: time per dispatch, recorded in one batch.
    let mut group = c.benchmark_group("dispatch_overhead");
    for (label, dev) in devices() {
        let x = Tensor::rand_uniform(&[64], -1.0, 1.0, 3, &dev).unwrap();
        group.throughput(Throughput::Elements(1000));
        group.bench_function(format!("{label}/chain_1000_small"), |b| {
            b.iter_custom(|iters| {
                timed(&dev, iters, || {
                    let mut t = x.clone();
                    for _ in 0..1000 {
                        t = t.scale_shift(0.5, 0.25)?;
                    }
                    drop(t);
                    Ok(())
                })
            })
        });
    }
    group.finish();
}
