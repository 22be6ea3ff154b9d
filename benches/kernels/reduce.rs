//! Reductions and losses. GB/s counts the bytes of the input read once (the output is
//! negligible); cross-entropy also counts its labels and weights.

use blo::Tensor;
use criterion::{BenchmarkId, Criterion, Throughput};

use crate::{devices, timed};

pub fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("reduce");
    for (label, dev) in devices() {
        for &n in &[1usize << 20, 1 << 24] {
            let x = Tensor::rand_uniform(&[n], -1.0, 1.0, 1, &dev).unwrap();
            group.throughput(Throughput::Bytes((n * 4) as u64));
            group.bench_function(BenchmarkId::new(format!("{label}/sum"), n), |b| {
                b.iter_custom(|iters| timed(&dev, iters, || x.sum().map(drop)))
            });
        }
        let m = Tensor::rand_uniform(&[4096, 4096], -1.0, 1.0, 2, &dev).unwrap();
        group.throughput(Throughput::Bytes((4096 * 4096 * 4) as u64));
        for axis in [0, 1] {
            group.bench_function(
                BenchmarkId::new(format!("{label}/sum_axis{axis}"), "4096x4096"),
                |b| b.iter_custom(|iters| timed(&dev, iters, || m.sum_axis(axis, false).map(drop))),
            );
        }
        let (n, k) = (1000, 10);
        let z = Tensor::rand_uniform(&[n, k], -3.0, 3.0, 3, &dev).unwrap();
        let labels: Vec<f32> = (0..n).map(|i| (i * 7 % k) as f32).collect();
        let y = Tensor::from_vec(labels, &[n], &dev).unwrap();
        let w = Tensor::rand_uniform(&[n], 0.0, 1.0, 4, &dev).unwrap();
        group.throughput(Throughput::Bytes((n * (k + 2) * 4) as u64));
        group.bench_function(
            BenchmarkId::new(format!("{label}/cross_entropy_weighted"), "1000x10"),
            |b| {
                b.iter_custom(|iters| {
                    timed(&dev, iters, || z.cross_entropy(&y, Some(&w)).map(drop))
                })
            },
        );
    }
    group.finish();
}
