//! Matrix multiplication throughput. Each product counts 2·m·n·k elements, so criterion's
//! elem/s reads as FLOP/s. Run with `cargo bench --bench kernels -- matmul`.

use blo::Tensor;
use criterion::{BenchmarkId, Criterion, Throughput};

use crate::{devices, timed};

pub fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    for (label, dev) in devices() {
        for &n in &[256usize, 512, 1024, 2048] {
            let a = Tensor::rand_uniform(&[n, n], -1.0, 1.0, 1, &dev).unwrap();
            let b = Tensor::rand_uniform(&[n, n], -1.0, 1.0, 2, &dev).unwrap();
            group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
            group.bench_function(BenchmarkId::new(format!("{label}/a.b"), n), |bench| {
                bench.iter_custom(|iters| timed(&dev, iters, || a.matmul(&b).map(drop)))
            });
            // The form autodiff uses for the gradient of the right operand.
            if n == 1024 {
                group.bench_function(BenchmarkId::new(format!("{label}/at.b"), n), |bench| {
                    bench.iter_custom(|iters| {
                        timed(&dev, iters, || a.matmul_t(&b, true, false).map(drop))
                    })
                });
            }
        }
    }
    group.finish();
}
