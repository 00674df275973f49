//! `join`: run two closures at once, the second on a parked helper thread.
//!
//! A large request is hashed (writes) or verified (reads) in two halves on
//! two CPUs. Spawning a thread for the second half cost 40–100 µs per
//! request here — as much as hashing a quarter of a 1 MiB write — so the
//! second half goes to one of a few helper threads that live as long as
//! the process and sleep on a channel between tasks.
//!
//! The closures borrow the caller's stack, so the helper is handed a
//! lifetime-erased pointer. What keeps that sound is the task's state:
//! before `join` returns or unwinds, a guard either cancels the task (the
//! helper has not started it: it will never touch the pointer) or waits
//! until the helper has finished with it. A helper busy with another task
//! therefore never delays a caller: the caller cancels and runs the
//! second half itself.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Queued,
    Running,
    Finished,
    Cancelled,
}

struct Task {
    state: Mutex<State>,
    finished: Condvar,
    /// Valid while the state is Queued or Running (see the module doc).
    run: *const (dyn Fn() + Sync + 'static),
}

// SAFETY: `run` points at a `Sync` closure and is only dereferenced by a
// helper while the owning `join` frame is pinned by its guard.
unsafe impl Send for Task {}
// SAFETY: as above; everything else in Task is Sync.
unsafe impl Sync for Task {}

fn lock(t: &Task) -> MutexGuard<'_, State> {
    t.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Helper threads: one per CPU beyond the first (at least one). None if
/// no thread could be started; `join` then runs both halves in turn.
static HELPERS: std::sync::LazyLock<Option<crossbeam_channel::Sender<Arc<Task>>>> = std::sync::LazyLock::new(|| {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).saturating_sub(1).max(1);
    let (tx, rx) = crossbeam_channel::unbounded::<Arc<Task>>();
    let mut started = 0;
    for i in 0..n {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new().name(format!("strata-join-{i}")).spawn(move || {
            for task in rx {
                run(&task);
            }
        });
        if spawned.is_ok() {
            started += 1;
        }
    }
    (started > 0).then_some(tx)
});

fn run(task: &Task) {
    {
        let mut s = lock(task);
        if *s != State::Queued {
            return;
        }
        *s = State::Running;
    }
    // SAFETY: the state went Queued → Running under the lock, so the owner's
    // guard is now waiting for Finished and its frame (the closure) lives.
    let f = unsafe { &*task.run };
    // A panic stays in the task: the owner sees no result and re-raises.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(f));
    *lock(task) = State::Finished;
    task.finished.notify_all();
}

/// Cancels the task if a helper has not started it, else waits for it.
struct Pin<'a>(&'a Task);

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut s = lock(self.0);
        if *s == State::Queued {
            *s = State::Cancelled;
        }
        while *s == State::Running {
            s = self.0.finished.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Run `fa` here and `fb` on a helper thread, and return both results. If
/// every helper is busy, `fb` runs here after `fa`.
pub fn join<A, B: Send>(fa: impl FnOnce() -> A, fb: impl FnOnce() -> B + Send) -> (A, B) {
    let slot = Mutex::new(Some(fb));
    let out: Mutex<Option<B>> = Mutex::new(None);
    // Whichever thread gets here first runs `fb`; it runs exactly once.
    let run_b = || {
        let f = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            let b = f();
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
        }
    };
    let local: &(dyn Fn() + Sync) = &run_b;
    // SAFETY: only the lifetime changes; `Pin` below keeps every use of the
    // pointer inside this frame (module doc).
    let erased: *const (dyn Fn() + Sync + 'static) = unsafe { std::mem::transmute(local as *const (dyn Fn() + Sync)) };
    let task = Arc::new(Task { state: Mutex::new(State::Queued), finished: Condvar::new(), run: erased });
    let queued = HELPERS.as_ref().is_some_and(|tx| tx.send(task.clone()).is_ok());
    if !queued {
        *lock(&task) = State::Cancelled;
    }
    let pin = Pin(&task);
    let a = fa();
    drop(pin);
    // Not started by a helper: run it here (a no-op if a helper ran it).
    run_b();
    let b = out.into_inner().unwrap_or_else(|p| p.into_inner());
    (a, b.expect("the second half of a join panicked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_run_once_with_borrowed_data() {
        let data: Vec<u64> = (0..10_000).collect();
        for _ in 0..1000 {
            let (a, b) = join(|| data[..5000].iter().sum::<u64>(), || data[5000..].iter().sum::<u64>());
            assert_eq!(a + b, data.iter().sum::<u64>());
        }
    }

    #[test]
    fn a_busy_helper_does_not_delay_the_caller() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let holding = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Keep a helper busy for 500 ms (if one picks this task up).
            s.spawn(|| {
                join(
                    || {
                        let t = Instant::now();
                        while !holding.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(1) {
                            std::thread::yield_now();
                        }
                    },
                    || {
                        holding.store(true, Ordering::Release);
                        std::thread::sleep(Duration::from_millis(500));
                    },
                )
            });
            let t = Instant::now();
            while !holding.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(1) {
                std::thread::yield_now();
            }
            let t = Instant::now();
            for i in 0..100u64 {
                assert_eq!(join(|| i, || i * 2), (i, 2 * i));
            }
            assert!(t.elapsed() < Duration::from_millis(400), "joins waited for a busy helper: {:?}", t.elapsed());
        });
    }

    #[test]
    fn a_panic_in_either_half_reaches_the_caller_and_the_helper_survives() {
        let r = std::panic::catch_unwind(|| join(|| 1, || -> u32 { panic!("boom in fb") }));
        assert!(r.is_err());
        let r = std::panic::catch_unwind(|| join(|| -> u32 { panic!("boom in fa") }, || 2));
        assert!(r.is_err());
        assert_eq!(join(|| 3, || 4), (3, 4));
    }
}
