//! Meta-learning task distributions: sinusoid regression (Finn et al. 2017) and N-way
//! K-shot classification episodes on the built-in UCI digits. Both are seeded: batch
//! `i` of a generator with seed `s` is the same on every run and every device.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::data::{Matrix, digits};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::meta::{TaskBatch, TaskLoss, TaskSampler};
use crate::tensor::{DType, Tensor};

/// The random stream of batch `index` of a generator seeded with `seed`.
fn stream(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Host arrays of a task batch: support x, y and query x, y, each flat row-major
/// `[tasks, points, features]` (y: `[tasks, points]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTasks {
    /// Support inputs.
    pub support_x: Vec<f64>,
    /// Support targets or labels.
    pub support_y: Vec<f64>,
    /// Query inputs.
    pub query_x: Vec<f64>,
    /// Query targets or labels.
    pub query_y: Vec<f64>,
    /// Tasks.
    pub tasks: usize,
    /// Support points per task.
    pub support: usize,
    /// Query points per task.
    pub query: usize,
    /// Features per point.
    pub features: usize,
}

impl HostTasks {
    /// The batch as tensors on `device`.
    pub fn to_batch(&self, loss: TaskLoss, device: &Device, dtype: DType) -> Result<TaskBatch> {
        let (b, f) = (self.tasks, self.features);
        TaskBatch::new(
            Tensor::from_f64(&self.support_x, &[b, self.support, f], device, dtype)?,
            Tensor::from_f64(&self.support_y, &[b, self.support], device, dtype)?,
            Tensor::from_f64(&self.query_x, &[b, self.query, f], device, dtype)?,
            Tensor::from_f64(&self.query_y, &[b, self.query], device, dtype)?,
            loss,
        )
    }
}

/// Sinusoid regression (Finn et al. 2017): each task is y = A·sin(x − φ) with amplitude
/// A ~ U[0.1, 5] and phase φ ~ U[0, π], and its K support and K query points have
/// x ~ U[−5, 5]. The loss is the MSE (a mean, no ½); the usual model is an MLP
/// 1-40-40-1 with ReLU.
#[derive(Debug, Clone)]
pub struct Sinusoid {
    tasks: usize,
    support: usize,
    query: usize,
    seed: u64,
    device: Device,
    dtype: DType,
}

impl Sinusoid {
    /// Batches of `tasks` tasks with `support` and `query` points each, seeded.
    pub fn new(
        tasks: usize,
        support: usize,
        query: usize,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if tasks == 0 || support == 0 || query == 0 {
            return Err(invalid(
                "sinusoid",
                format!(
                    "tasks, support and query points must be ≥ 1; got {tasks}, {support}, {query}"
                ),
            ));
        }
        Ok(Self {
            tasks,
            support,
            query,
            seed,
            device: device.clone(),
            dtype,
        })
    }

    /// The host arrays of batch `index`, with each task's (A, φ).
    pub fn host_batch(&self, index: u64) -> (HostTasks, Vec<(f64, f64)>) {
        let mut rng = stream(self.seed, index);
        let mut h = HostTasks {
            support_x: Vec::new(),
            support_y: Vec::new(),
            query_x: Vec::new(),
            query_y: Vec::new(),
            tasks: self.tasks,
            support: self.support,
            query: self.query,
            features: 1,
        };
        let mut params = Vec::with_capacity(self.tasks);
        for _ in 0..self.tasks {
            let a: f64 = rng.random_range(0.1..5.0);
            let phase: f64 = rng.random_range(0.0..std::f64::consts::PI);
            params.push((a, phase));
            for (n, xs, ys) in [
                (self.support, &mut h.support_x, &mut h.support_y),
                (self.query, &mut h.query_x, &mut h.query_y),
            ] {
                for _ in 0..n {
                    let x: f64 = rng.random_range(-5.0..5.0);
                    xs.push(x);
                    ys.push(a * (x - phase).sin());
                }
            }
        }
        (h, params)
    }

    /// Batch `index` as tensors.
    pub fn batch(&self, index: u64) -> Result<TaskBatch> {
        self.host_batch(index)
            .0
            .to_batch(TaskLoss::Mse, &self.device, self.dtype)
    }
}

impl TaskSampler for Sinusoid {
    fn sample(&mut self, iteration: usize) -> Result<TaskBatch> {
        self.batch(iteration as u64)
    }
}

/// Which classes a few-shot generator draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassSplit {
    /// Meta-training classes: digits 0–5.
    Train,
    /// Meta-test classes: digits 6–9 (disjoint from the training ones).
    Test,
}

impl ClassSplit {
    /// The digit classes of the split.
    pub fn classes(self) -> Vec<usize> {
        match self {
            ClassSplit::Train => (0..6).collect(),
            ClassSplit::Test => (6..10).collect(),
        }
    }
}

/// N-way K-shot classification episodes on the built-in UCI digits (64 pixels in
/// [0, 1]): each task draws N distinct classes of its split, labels them 0..N−1 in a
/// random order, and draws K support and Q query images per class, without
/// replacement. Meta-training classes (0–5) and meta-test classes (6–9) are disjoint.
/// The loss is cross-entropy; report the query accuracy.
#[derive(Debug, Clone)]
pub struct DigitsFewShot {
    ways: usize,
    shots: usize,
    queries: usize,
    tasks: usize,
    seed: u64,
    pixels: Matrix,
    by_class: Vec<Vec<usize>>,
    device: Device,
    dtype: DType,
}

impl DigitsFewShot {
    /// Batches of `tasks` `ways`-way `shots`-shot episodes with `queries` query images per
    /// class, from the classes of `split`, seeded.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ways: usize,
        shots: usize,
        queries: usize,
        tasks: usize,
        split: ClassSplit,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let classes = split.classes();
        let (pixels, labels) = digits();
        let by_class: Vec<Vec<usize>> = classes
            .iter()
            .map(|&c| (0..labels.len()).filter(|&i| labels[i] == c).collect())
            .collect();
        let fewest = by_class.iter().map(Vec::len).min().unwrap_or(0);
        if ways < 2 || ways > classes.len() || shots == 0 || queries == 0 || tasks == 0 {
            return Err(invalid(
                "digits-fewshot",
                format!(
                    "need 2 ≤ ways ≤ {} (the {:?} split's classes), shots, queries and tasks ≥ 1; got ways {ways}, shots {shots}, queries {queries}, tasks {tasks}",
                    classes.len(),
                    split
                ),
            ));
        }
        if shots + queries > fewest {
            return Err(invalid(
                "digits-fewshot",
                format!(
                    "shots + queries = {} exceeds the {fewest} images of the smallest class",
                    shots + queries
                ),
            ));
        }
        Ok(Self {
            ways,
            shots,
            queries,
            tasks,
            seed,
            pixels,
            by_class,
            device: device.clone(),
            dtype,
        })
    }

    /// The host arrays of batch `index`.
    pub fn host_batch(&self, index: u64) -> HostTasks {
        let mut rng = stream(self.seed, index);
        let f = self.pixels.cols;
        let mut h = HostTasks {
            support_x: Vec::new(),
            support_y: Vec::new(),
            query_x: Vec::new(),
            query_y: Vec::new(),
            tasks: self.tasks,
            support: self.ways * self.shots,
            query: self.ways * self.queries,
            features: f,
        };
        let mut order: Vec<usize> = (0..self.by_class.len()).collect();
        for _ in 0..self.tasks {
            order.shuffle(&mut rng);
            for (label, &c) in order[..self.ways].iter().enumerate() {
                let picked: Vec<usize> = self.by_class[c]
                    .choose_multiple(&mut rng, self.shots + self.queries)
                    .copied()
                    .collect();
                for (j, &i) in picked.iter().enumerate() {
                    let row = &self.pixels.data[i * f..(i + 1) * f];
                    let (xs, ys) = if j < self.shots {
                        (&mut h.support_x, &mut h.support_y)
                    } else {
                        (&mut h.query_x, &mut h.query_y)
                    };
                    xs.extend_from_slice(row);
                    ys.push(label as f64);
                }
            }
        }
        h
    }

    /// Batch `index` as tensors.
    pub fn batch(&self, index: u64) -> Result<TaskBatch> {
        self.host_batch(index)
            .to_batch(TaskLoss::CrossEntropy, &self.device, self.dtype)
    }
}

impl TaskSampler for DigitsFewShot {
    fn sample(&mut self, iteration: usize) -> Result<TaskBatch> {
        self.batch(iteration as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_tasks_follow_their_definition_and_are_seeded() {
        let g = Sinusoid::new(50, 5, 7, 3, &Device::cpu(), DType::F64).unwrap();
        let (h, params) = g.host_batch(2);
        assert_eq!(h, g.host_batch(2).0);
        assert_ne!(h, g.host_batch(3).0);
        assert_eq!((h.support_x.len(), h.query_x.len()), (250, 350));
        for (t, &(a, p)) in params.iter().enumerate() {
            assert!((0.1..5.0).contains(&a) && (0.0..std::f64::consts::PI).contains(&p));
            for i in 0..5 {
                let x = h.support_x[t * 5 + i];
                assert!((-5.0..5.0).contains(&x));
                assert!((h.support_y[t * 5 + i] - a * (x - p).sin()).abs() < 1e-12);
            }
        }
        let b = g.batch(0).unwrap();
        assert_eq!(b.support_y().shape(), &[50, 5, 1]);
    }

    #[test]
    fn fewshot_episodes_use_disjoint_classes_and_balanced_labels() {
        let (pixels, labels) = digits();
        let g = DigitsFewShot::new(3, 2, 4, 5, ClassSplit::Test, 1, &Device::cpu(), DType::F64)
            .unwrap();
        let h = g.host_batch(0);
        assert_eq!(h, g.host_batch(0));
        assert_eq!((h.support, h.query, h.features), (6, 12, 64));
        // Every support image is a test-split digit, and each label holds one class.
        for t in 0..5 {
            let mut class_of = [None; 3];
            for j in 0..6 {
                let row = &h.support_x[(t * 6 + j) * 64..(t * 6 + j + 1) * 64];
                let i = (0..labels.len())
                    .find(|&i| &pixels.data[i * 64..(i + 1) * 64] == row)
                    .unwrap();
                assert!(labels[i] >= 6);
                let l = h.support_y[t * 6 + j] as usize;
                assert_eq!(*class_of[l].get_or_insert(labels[i]), labels[i]);
            }
        }
        assert!(
            DigitsFewShot::new(5, 1, 1, 1, ClassSplit::Test, 0, &Device::cpu(), DType::F64)
                .is_err()
        );
    }
}
