//! Recycled host arrays for CPU tensors.
//!
//! A meta-learning or hypergradient loop allocates and frees the same few array sizes
//! hundreds of times per step. Arrays of a few hundred KB come from the allocator's
//! mmap or from the top of its heap, which it hands back to the kernel when freed, so
//! every step faulted fresh zeroed pages in again: measured, a fifth of a MAML step on
//! the CPU (32 tasks, 1-40-40-1) was page faults, page clearing and unmapping. Here the
//! arrays of dropped CPU tensors (from [`MIN_BYTES`] up) wait in per-length free lists
//! and the CPU ops take their outputs from them. A thread running half of a split task
//! batch uses a pool of its own, from [`HALF_MIN_BYTES`] up.
//!
//! The pool is bounded: past [`MAX_BYTES`] it is emptied (everything handed back to the
//! allocator) before taking the new array, so a program whose sizes change does not
//! keep the old ones forever. Recycling changes no value: a taken array is empty, and
//! an op that takes a [`stale`] one (old values) writes every element of it.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::dtype::DType;
use crate::dtype::Element;

/// Arrays smaller than this go straight back to the allocator, whose bins serve them
/// well and reuse their memory for other sizes, which an exact-length pool cannot:
/// measured, pooling from 16 KB slowed a hyper-cleaning RAD hypergradient (its
/// [500, 10] arrays are 20 KB) by 7 %, from 48 KB MAML (its [32, 10, 40] activations
/// are 51 KB) by half; from 32 KB neither.
const MIN_BYTES: usize = 32 * 1024;
/// The smallest array kept by the pool of a thread running half of a split task batch
/// ([`in_two`](super::threads::in_two)), which is its own (no lock between the halves;
/// bounded by [`MAX_BYTES`] like the shared one, and kept for the thread's next half).
/// It keeps smaller arrays than the shared pool because with two threads running,
/// every time the allocator hands memory back to the kernel (trimming its heap after
/// a free) the other core's TLB is flushed by an interrupt: measured, with halves of
/// 16 sinusoid tasks (activations of 26 KB) that was a quarter of L2F's meta-gradient,
/// which then took longer on two cores than on one.
const HALF_MIN_BYTES: usize = 4 * 1024;
/// Arrays larger than this go back to the allocator too: they are rare within a step,
/// and filling them costs far more than mapping them.
const MAX_ARRAY_BYTES: usize = 4 << 20;
/// Most bytes the pool holds (per element type).
const MAX_BYTES: usize = 32 << 20;

/// Free arrays by capacity (in elements).
struct Pool<T> {
    free: HashMap<usize, Vec<Vec<T>>>,
    bytes: usize,
}

static F32: Mutex<Option<Pool<f32>>> = Mutex::new(None);
static F64: Mutex<Option<Pool<f64>>> = Mutex::new(None);

thread_local! {
    /// This thread's own pools, used while it runs half of a split task batch (a
    /// `Mutex` only to share the shared pools' code; it is never contended).
    static HALF_F32: Mutex<Option<Pool<f32>>> = const { Mutex::new(None) };
    static HALF_F64: Mutex<Option<Pool<f64>>> = const { Mutex::new(None) };
}

fn bytes_of<T>(elements: usize) -> usize {
    elements * std::mem::size_of::<T>()
}

/// `f` on the pool of `U` (f32 or f64).
fn with_pool<U, R>(pool: &Mutex<Option<Pool<U>>>, f: impl FnOnce(&mut Pool<U>) -> R) -> R {
    let mut guard = pool.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(|| Pool {
        free: HashMap::new(),
        bytes: 0,
    }))
}

fn take_from<U>(pool: &Mutex<Option<Pool<U>>>, len: usize) -> Option<Vec<U>> {
    with_pool(pool, |p| {
        let v = p.free.get_mut(&len).and_then(Vec::pop)?;
        p.bytes -= bytes_of::<U>(len);
        Some(v)
    })
}

fn give_to<U>(pool: &Mutex<Option<Pool<U>>>, v: Vec<U>) {
    let cap = v.capacity();
    let bytes = bytes_of::<U>(cap);
    let emptied = with_pool(pool, |p| {
        let emptied = (p.bytes + bytes > MAX_BYTES).then(|| {
            p.bytes = 0;
            std::mem::take(&mut p.free)
        });
        p.bytes += bytes;
        p.free.entry(cap).or_default().push(v);
        emptied
    });
    // Freed outside the lock.
    drop(emptied);
}

/// An empty array with room for `len` elements: a recycled one of exactly that
/// capacity when the pool has it.
pub(crate) fn take<T: Element>(len: usize) -> Vec<T> {
    let mut v = recycled(len);
    v.clear();
    v
}

/// `len` elements of unspecified value (a recycled array's old contents, or zeros):
/// for an output that its kernel overwrites entirely, which saves zeroing it first.
pub(crate) fn stale<T: Element>(len: usize) -> Vec<T> {
    let mut v = recycled(len);
    v.resize(len, T::zero());
    v
}

/// A recycled array of capacity `len` as it was given back (its elements kept), or an
/// empty one with that capacity.
fn recycled<T: Element>(len: usize) -> Vec<T> {
    let half = super::threads::inside_half();
    let min = if half { HALF_MIN_BYTES } else { MIN_BYTES };
    if bytes_of::<T>(len) >= min {
        // The element type is f32 or f64 by its DType; the casts are checked (size
        // and alignment), so another type simply gets a fresh array.
        let recycled = match (T::DTYPE, half) {
            (DType::F32, false) => take_from(&F32, len).and_then(cast),
            (DType::F64, false) => take_from(&F64, len).and_then(cast),
            (DType::F32, true) => HALF_F32.with(|p| take_from(p, len)).and_then(cast),
            (DType::F64, true) => HALF_F64.with(|p| take_from(p, len)).and_then(cast),
        };
        if let Some(v) = recycled {
            return v;
        }
    }
    Vec::with_capacity(len)
}

/// `len` zeros, in a recycled array when there is one.
pub(crate) fn zeros<T: Element>(len: usize) -> Vec<T> {
    let mut v = take(len);
    v.resize(len, T::zero());
    v
}

/// `v` as a vector of `U` when `T` is `U` (the casts are checked: size and alignment).
fn cast<T: bytemuck::Pod, U: bytemuck::Pod>(v: Vec<T>) -> Option<Vec<U>> {
    bytemuck::try_cast_vec(v).ok()
}

/// Hands `v` to the pool the calling thread uses now, unless it is small or large.
pub(crate) fn give<T: Element>(v: Vec<T>) {
    let half = super::threads::inside_half();
    let min = if half { HALF_MIN_BYTES } else { MIN_BYTES };
    if !(min..=MAX_ARRAY_BYTES).contains(&bytes_of::<T>(v.capacity())) {
        return;
    }
    match (T::DTYPE, half) {
        (DType::F32, false) => cast(v).map(|v| give_to(&F32, v)),
        (DType::F64, false) => cast(v).map(|v| give_to(&F64, v)),
        (DType::F32, true) => cast(v).map(|v| HALF_F32.with(|p| give_to(p, v))),
        (DType::F64, true) => cast(v).map(|v| HALF_F64.with(|p| give_to(p, v))),
    };
}

/// Bytes the f64 pool holds now.
#[cfg(test)]
fn pooled_bytes_f64() -> usize {
    with_pool(&F64, |p| p.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inside half of a split batch, arrays from [`HALF_MIN_BYTES`] (below the shared
    /// pool's minimum) come back from the thread's own pool, which stays bounded; the
    /// pool is the thread's alone, so this checks pointers exactly.
    #[test]
    fn a_half_recycles_smaller_arrays_in_its_own_pool() {
        let checks = super::super::threads::in_two(&|_| {
            let len = HALF_MIN_BYTES / 8 + 11;
            assert!(bytes_of::<f64>(len) < MIN_BYTES);
            let v: Vec<f64> = vec![2.0; len];
            let ptr = v.as_ptr();
            give(v);
            let again: Vec<f64> = take(len);
            let recycled = again.as_ptr() == ptr && again.is_empty() && again.capacity() == len;
            for _ in 0..((2 * MAX_BYTES) >> 20) {
                give(vec![0.0f64; (1 << 20) / 8]);
            }
            let bounded = HALF_F64.with(|p| with_pool(p, |p| p.bytes)) <= MAX_BYTES;
            (recycled, bounded)
        });
        assert_eq!(checks, [(true, true), (true, true)]);
    }

    /// A large array comes back with its capacity and is handed out again empty; small
    /// ones are not kept; the pool never holds more than its bound. Uses f64 at a
    /// length no other test allocates, and checks only its own bucket and the bound
    /// (tests run in parallel and share the pool).
    #[test]
    fn pool_recycles_large_arrays_and_stays_bounded() {
        let len = MIN_BYTES / 8 + 1237;
        let v: Vec<f64> = vec![3.0; len];
        let ptr = v.as_ptr();
        give(v);
        let again: Vec<f64> = take(len);
        assert!(again.is_empty() && again.capacity() == len);
        // Another test may have taken it in between; then the allocator gave a new one.
        let recycled = again.as_ptr() == ptr;
        let z: Vec<f64> = {
            give(again);
            zeros(len)
        };
        assert!(z.iter().all(|&x| x == 0.0) && z.len() == len);
        if recycled {
            assert_eq!(z.as_ptr(), ptr, "the array given back is taken again");
        }
        give(vec![1.0f64; 10]);
        let small: Vec<f64> = take(10);
        assert_eq!(small.capacity(), 10);
        // Far more than the bound, in arrays of 1 MB: the pool empties and refills.
        for _ in 0..((2 * MAX_BYTES) >> 20) {
            give(vec![0.0f64; (1 << 20) / 8]);
            assert!(pooled_bytes_f64() <= MAX_BYTES);
        }
    }
}
