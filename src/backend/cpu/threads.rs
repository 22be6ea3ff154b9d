//! A second core for large CPU matrix–vector passes.
//!
//! A ridge hypergradient is hundreds of passes over one matrix that fits in L2, each
//! ~17 µs on one core: too short for spawning threads (~20 µs) or a pool whose idle
//! threads sleep (a futex wake-up costs as much as the pass). Instead one helper
//! thread spins briefly after each job, so back-to-back passes find it awake, and each
//! pass is split in two halves that either thread may claim. The caller never waits
//! for a helper that has not started: it claims whatever half is left itself, and
//! waits only for a half the helper is already running. On a loaded machine this
//! degrades to the single-threaded pass, not to a scheduler tick. The helper prefers
//! the second half and the caller the first, so each core keeps re-reading the same
//! half of the matrix from its own L2.
//!
//! The same helper runs half of a coarser computation ([`in_two`]): a meta-gradient's
//! task batch is split in two halves, one per core.
//!
//! [`cores`] is the one count of CPU threads blo uses: `BLO_CPU_THREADS=1` keeps every
//! pass, RAD's reverse sweep, large GEMMs and meta-gradient halves on the calling
//! thread.

// Only the x86-64 kernels split passes; elsewhere just `cores`, `both_cores_busy` and
// `in_two` are used.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long the helper stays awake after its last job, and how much of that it spins
/// without yielding the core.
const SPIN: Duration = Duration::from_micros(200);
const SPIN_HARD: Duration = Duration::from_micros(20);

/// Two halves of one piece of work; each is claimed exactly once, by either thread.
struct Job<'a> {
    run: &'a (dyn Fn(usize) + Sync),
    claimed: [AtomicBool; 2],
    /// Set when a half panicked on the helper thread; the caller re-raises it.
    panicked: AtomicBool,
}

impl Job<'_> {
    fn claim_and_run(&self, half: usize) {
        if !self.claimed[half].swap(true, Ordering::AcqRel) {
            (self.run)(half);
        }
    }
}

struct Helper {
    /// The published job (lifetime erased), or null.
    job: AtomicPtr<Job<'static>>,
    /// Bumped with every published job (jobs from one call site share an address).
    epoch: AtomicUsize,
    /// True while the helper may be reading the published job.
    active: AtomicBool,
    /// True while some caller owns the helper; other callers run alone.
    busy: AtomicBool,
    parked: AtomicBool,
    thread: Thread,
}

fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();
    *HELPER.get_or_init(|| {
        if cores() < 2 {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel::<&'static Helper>();
        let spawned = std::thread::Builder::new()
            .name("blo-cpu-pair".into())
            // It runs whole meta-gradients (half a task batch): the main thread's usual
            // stack, not a spawned thread's 2 MiB.
            .stack_size(8 << 20)
            .spawn(move || {
                let helper: &'static Helper = Box::leak(Box::new(Helper {
                    job: AtomicPtr::new(std::ptr::null_mut()),
                    epoch: AtomicUsize::new(0),
                    active: AtomicBool::new(false),
                    busy: AtomicBool::new(false),
                    parked: AtomicBool::new(false),
                    thread: std::thread::current(),
                }));
                if tx.send(helper).is_ok() {
                    serve(helper);
                }
            });
        spawned.ok().and_then(|_| rx.recv().ok())
    })
}

fn serve(h: &Helper) {
    let mut idle_since = Instant::now();
    let mut idle = Duration::ZERO;
    let mut served = h.epoch.load(Ordering::SeqCst);
    let mut polls = 0u32;
    loop {
        let epoch = h.epoch.load(Ordering::SeqCst);
        if epoch != served {
            served = epoch;
            // Announce before reading the job: a caller retracting its job either sees
            // `active` and waits, or this read sees the retraction (both SeqCst).
            h.active.store(true, Ordering::SeqCst);
            let p = h.job.load(Ordering::SeqCst);
            if !p.is_null() {
                // SAFETY: a published job outlives every moment `active` is set:
                // `run_halves` retracts it and then waits for `active` to drop.
                let job = unsafe { &*p };
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    job.claim_and_run(1);
                    job.claim_and_run(0);
                }));
                if ran.is_err() {
                    job.panicked.store(true, Ordering::SeqCst);
                }
            }
            h.active.store(false, Ordering::SeqCst);
            idle_since = Instant::now();
            idle = Duration::ZERO;
            continue;
        }
        // Reading the clock costs more than a poll (a VM may trap it), so read it rarely.
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(256) {
            idle = idle_since.elapsed();
        }
        if idle < SPIN && BOTH_BUSY.load(Ordering::Relaxed) == 0 {
            // Spin for the first stretch (back-to-back passes), then keep checking but
            // hand the core to anything else runnable (another process, the caller's
            // own threads) between checks.
            if idle < SPIN_HARD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        h.parked.store(true, Ordering::SeqCst);
        if h.epoch.load(Ordering::SeqCst) == served {
            std::thread::park();
        }
        h.parked.store(false, Ordering::SeqCst);
        idle_since = Instant::now();
        idle = Duration::ZERO;
    }
}

/// Cores this process may use (at least 1).
pub(crate) fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| match std::env::var("BLO_CPU_THREADS") {
        Ok(v) => v.trim().parse::<usize>().unwrap_or(2).max(1),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// Sections of coarser parallelism (two threads each running their own ops) in
/// progress; while any is, passes are not split, since no core is idle.
static BOTH_BUSY: AtomicUsize = AtomicUsize::new(0);

/// Marks both cores busy until the guard drops.
pub(crate) fn both_cores_busy() -> BothBusy {
    BOTH_BUSY.fetch_add(1, Ordering::SeqCst);
    BothBusy
}

pub(crate) struct BothBusy;

impl Drop for BothBusy {
    fn drop(&mut self) {
        BOTH_BUSY.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job published to the helper; dropping it retracts the job, waits out a helper
/// still inside it, and frees the helper for the next caller.
struct Published(&'static Helper);

impl Drop for Published {
    fn drop(&mut self) {
        let h = self.0;
        h.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        let mut spins = 0u32;
        while h.active.load(Ordering::SeqCst) {
            // The helper is inside its half; if it was preempted there, let it run.
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        h.busy.store(false, Ordering::Release);
    }
}

thread_local! {
    /// True on a thread while it runs a half of [`in_two`].
    static IN_HALF: Cell<bool> = const { Cell::new(false) };
}

/// True while the calling thread runs a half of [`in_two`]: a computation that splits
/// itself in two does not split again inside a half.
pub(crate) fn inside_half() -> bool {
    IN_HALF.with(Cell::get)
}

/// Sets [`IN_HALF`] for this thread until dropped (also when a half unwinds).
struct InHalf(bool);

impl InHalf {
    fn enter() -> InHalf {
        InHalf(IN_HALF.with(|f| f.replace(true)))
    }
}

impl Drop for InHalf {
    fn drop(&mut self) {
        IN_HALF.with(|f| f.set(self.0));
    }
}

/// `[work(0), work(1)]` for two halves that are whole computations of their own: on
/// the two cores when the helper is free, one after the other on this thread
/// otherwise, so what they return does not depend on which happened. Both cores count
/// as busy meanwhile (passes inside stay on their own thread, and RAD's reverse sweep
/// starts no thread), and [`inside_half`] is true inside either half.
pub(crate) fn in_two<R: Send>(work: &(dyn Fn(usize) -> R + Sync)) -> [R; 2] {
    let slots: [Mutex<Option<R>>; 2] = [Mutex::new(None), Mutex::new(None)];
    let run = |half: usize| {
        let _inside = InHalf::enter();
        let out = work(half);
        *slots[half].lock().unwrap_or_else(PoisonError::into_inner) = Some(out);
    };
    run_halves_with(&run, true);
    slots.map(|slot| {
        slot.into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("run_halves runs each half exactly once")
    })
}

/// Runs `work(0)` and `work(1)`, on two cores when the helper is free.
pub(crate) fn run_halves(work: &(dyn Fn(usize) + Sync)) {
    run_halves_with(work, false)
}

/// [`run_halves`], with both cores marked busy while the halves run when `mark_busy`.
fn run_halves_with(work: &(dyn Fn(usize) + Sync), mark_busy: bool) {
    let free = helper()
        .filter(|_| BOTH_BUSY.load(Ordering::Relaxed) == 0)
        .filter(|h| !h.busy.swap(true, Ordering::Acquire));
    // Marked only now: the helper is taken only when no coarser section is running.
    let _busy = mark_busy.then(both_cores_busy);
    let Some(h) = free else {
        work(0);
        work(1);
        return;
    };
    let job = Job {
        run: work,
        claimed: [AtomicBool::new(false), AtomicBool::new(false)],
        panicked: AtomicBool::new(false),
    };
    let ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
    h.job.store(ptr, Ordering::SeqCst);
    // From here until the guard drops, the helper may hold `job`: the guard retracts it
    // and waits the helper out even when a half panics on this thread and unwinds.
    let published = Published(h);
    h.epoch.fetch_add(1, Ordering::SeqCst);
    if h.parked.load(Ordering::SeqCst) {
        h.thread.unpark();
    }
    job.claim_and_run(0);
    job.claim_and_run(1);
    drop(published);
    assert!(
        !job.panicked.load(Ordering::SeqCst),
        "a half of a CPU computation panicked on the helper thread"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `in_two` returns the halves' results in order, marks the threads running them
    /// (and only while they do), and a panicking half comes out of it.
    #[test]
    fn in_two_returns_both_halves_in_order() {
        for _ in 0..200 {
            let got = in_two(&|h| (h * 10 + 1, inside_half(), BOTH_BUSY.load(Ordering::SeqCst)));
            assert_eq!(got.map(|r| r.0), [1, 11]);
            assert!(got.iter().all(|r| r.1 && r.2 > 0), "{got:?}");
            assert!(!inside_half());
        }
        let nested = in_two(&|h| in_two(&|g| 2 * h + g));
        assert_eq!(nested, [[0, 1], [2, 3]]);
        let outcome = std::panic::catch_unwind(|| in_two(&|h| assert_ne!(h, 1, "half 1 fails")));
        assert!(outcome.is_err());
        assert!(!inside_half(), "the flag is cleared when a half unwinds");
    }

    /// Both halves run exactly once whichever thread takes them, thousands of times in a
    /// row (one job address reused); a panicking half, on either thread, comes out of
    /// `run_halves` as a panic and leaves the helper usable.
    #[test]
    fn halves_run_once_and_panics_come_out() {
        for _ in 0..5000 {
            let runs = [AtomicUsize::new(0), AtomicUsize::new(0)];
            run_halves(&|h| {
                runs[h].fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(runs.each_ref().map(|r| r.load(Ordering::SeqCst)), [1, 1]);
        }
        for bad in [0, 1] {
            let outcome = std::panic::catch_unwind(|| {
                run_halves(&|h| {
                    if h == bad {
                        panic!("half {h} fails on purpose");
                    }
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(50) {}
                });
            });
            assert!(outcome.is_err(), "a panic in half {bad} must come out");
            let runs = AtomicUsize::new(0);
            run_halves(&|_| {
                runs.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(
                runs.load(Ordering::SeqCst),
                2,
                "after a panic in half {bad}"
            );
        }
    }
}
