//! Recycled host arrays for CPU tensors.
//!
//! A meta-learning or hypergradient loop allocates and frees the same few array sizes
//! hundreds of times per step. Arrays of a few hundred KB come from the allocator's
//! mmap or from the top of its heap, which it hands back to the kernel when freed, so
//! every step faulted fresh zeroed pages in again: measured, a fifth of a MAML step on
//! the CPU (32 tasks, 1-40-40-1) was page faults, page clearing and unmapping. Here the
//! arrays of dropped CPU tensors (from [`MIN_BYTES`] up) wait in per-length free lists
//! and the CPU ops take their outputs from them.
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
    if bytes_of::<T>(len) >= MIN_BYTES {
        // The element type is f32 or f64 by its DType; the casts are checked (size
        // and alignment), so another type simply gets a fresh array.
        let recycled = match T::DTYPE {
            DType::F32 => take_from(&F32, len).and_then(|v| bytemuck::try_cast_vec(v).ok()),
            DType::F64 => take_from(&F64, len).and_then(|v| bytemuck::try_cast_vec(v).ok()),
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

/// Hands `v` to the pool, unless it is small or large.
pub(crate) fn give<T: Element>(v: Vec<T>) {
    if !(MIN_BYTES..=MAX_ARRAY_BYTES).contains(&bytes_of::<T>(v.capacity())) {
        return;
    }
    match T::DTYPE {
        DType::F32 => {
            if let Ok(v) = bytemuck::try_cast_vec::<T, f32>(v) {
                give_to(&F32, v);
            }
        }
        DType::F64 => {
            if let Ok(v) = bytemuck::try_cast_vec::<T, f64>(v) {
                give_to(&F64, v);
            }
        }
    }
}

/// Bytes the f64 pool holds now.
#[cfg(test)]
fn pooled_bytes_f64() -> usize {
    with_pool(&F64, |p| p.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
