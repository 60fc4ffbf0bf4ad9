//! A team of persistent worker threads for compiled plans.
//!
//! Rayon wakes a sleeping worker for every parallel call; at 10–30 µs per layer on a
//! 32×32 input that wake-up ate the second thread's whole gain. Here an idle worker spins
//! for a while (the next layer's job usually comes within microseconds) and only then
//! sleeps; the leader pays a wake-up call only for a sleeping worker, and never waits for
//! it: work is split into items claimed from one atomic counter, so the leader takes
//! whatever a late or descheduled worker has not claimed yet. Spinning through a whole
//! inference instead made the worker look like a CPU hog to the scheduler of a busy
//! machine, which then descheduled it in the middle of its items (a long tail of slow
//! runs at two threads). A thread that has spun for 20 µs also yields the CPU between
//! checks: on an oversubscribed machine the thread it waits for may need that very core.
//! (Yielding from the first microsecond kept the worker off the CPU whenever other jobs
//! were runnable, and two threads ran no faster than one.)
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// What the workers see. `claim` packs the job's epoch (high 32 bits) and the next item
/// index (low 32 bits), so a worker that wakes late cannot take an item of a newer job
/// with an older job's closure.
struct Shared {
    claim: AtomicU64,
    /// Items in the current job.
    items: AtomicUsize,
    /// Workers (by id) allowed to take part in the current job.
    helpers: AtomicUsize,
    /// A `*const &Job` with its lifetime erased: it points at the leader's stack, valid
    /// while the job's items are unfinished.
    job: AtomicPtr<()>,
    done: AtomicUsize,
    panicked: AtomicBool,
    /// Workers asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

pub(crate) struct Team {
    shared: Arc<Shared>,
    workers: usize,
    busy: AtomicBool,
}

/// How long an idle worker spins before it sleeps: longer than the gap between two
/// layers, shorter than a scheduler time slice. The gap includes a round trip to the
/// enclave process (two pipe wake-ups and the core's pass: 60–100 µs here); at 100 µs the
/// worker often fell asleep during it and the next layer paid a wake-up (ResNet-404,
/// shadownet scheme in process mode, 3 alternating runs: accelerator 32.5–35.2 ms at
/// 100 µs, 22.7–30.7 at 400). The spinning worker yields after 20 µs, so it holds the
/// core only while nothing else wants it.
const IDLE_SPIN: Duration = Duration::from_micros(400);

/// How long a thread spins before it starts yielding the CPU between checks: waits
/// between layers of two running threads are far shorter.
const YIELD_AFTER: Duration = Duration::from_micros(20);

impl Team {
    fn new(workers: usize) -> Team {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            items: AtomicUsize::new(0),
            helpers: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        for id in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("shadownet-team-{id}"))
                .spawn(move || worker(&s, id))
                .expect("cannot start a worker thread");
        }
        Team {
            shared,
            workers,
            busy: AtomicBool::new(false),
        }
    }
}

fn worker(s: &Shared, id: usize) {
    let mut seen_epoch = 0u64;
    loop {
        // Wait for a job with a new epoch: spin, then sleep.
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(SeqCst) {
                return;
            }
            let c = s.claim.load(SeqCst);
            if c >> 32 != seen_epoch {
                seen_epoch = c >> 32;
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && t0.elapsed() > YIELD_AFTER {
                // A long wait: on a busy machine the leader may need this very core.
                std::thread::yield_now();
            }
            if spins.is_multiple_of(64) && t0.elapsed() > IDLE_SPIN {
                let mut g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                // Re-checked after announcing the sleep: the leader publishes the epoch
                // before it reads `sleepers`, so one of the two sees the other.
                while s.claim.load(SeqCst) >> 32 == seen_epoch && !s.shutdown.load(SeqCst) {
                    g = s
                        .wake
                        .wait_timeout(g, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                s.sleepers.fetch_sub(1, SeqCst);
                drop(g);
            }
        }
        if id >= s.helpers.load(SeqCst) {
            continue;
        }
        run_items(s, seen_epoch);
    }
}

/// Takes and runs items of job `epoch` until none are left.
fn run_items(s: &Shared, epoch: u64) {
    loop {
        let c = s.claim.load(SeqCst);
        if c >> 32 != epoch {
            return;
        }
        let i = (c & 0xffff_ffff) as usize;
        let n = s.items.load(SeqCst);
        if i >= n {
            return;
        }
        // Read the job before claiming: a successful claim proves the job was still
        // current (its epoch unchanged and item i unclaimed), so its closure is alive
        // until this item is counted done.
        let job = s.job.load(SeqCst) as *const &Job;
        if s.claim.compare_exchange(c, c + 1, SeqCst, SeqCst).is_err() {
            continue;
        }
        // SAFETY: see above; `Team::run` stored a pointer to its `&Job`.
        let f: &Job = unsafe { *job };
        if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.done.fetch_add(1, SeqCst);
    }
}

impl Team {
    /// Runs `f(i)` for i in 0..n on this thread and up to `threads - 1` workers.
    fn run(&self, n: usize, threads: usize, f: &Job) {
        let s = &*self.shared;
        if n == 0 {
            return;
        }
        let f_ref: &Job = f;
        s.done.store(0, SeqCst);
        s.panicked.store(false, SeqCst);
        s.items.store(n, SeqCst);
        s.helpers
            .store(threads.saturating_sub(1).min(self.workers), SeqCst);
        s.job.store(&f_ref as *const &Job as *mut (), SeqCst);
        let epoch = (s.claim.load(SeqCst) >> 32) + 1;
        s.claim.store(epoch << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        run_items(s, epoch);
        let mut spins = 0u32;
        let t0 = Instant::now();
        while s.done.load(SeqCst) < n {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && t0.elapsed() > YIELD_AFTER {
                // A long wait: the worker finishing its item may need this core.
                std::thread::yield_now();
            }
        }
        if s.panicked.load(SeqCst) {
            resume_unwind(Box::new("a worker thread panicked in a kernel"));
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        self.shared.wake.notify_all();
    }
}

static TEAM: OnceLock<Mutex<Option<Arc<Team>>>> = OnceLock::new();

thread_local! {
    /// The team this thread leads during `with_team`, and how many threads it may use.
    static CURRENT: Cell<Option<(*const Team, usize)>> = const { Cell::new(None) };
}

/// Runs `body` with a team of `threads` threads (this one included) spinning, ready for
/// [`parallel_for`]. Falls back to one thread when another caller holds the team.
pub(crate) fn with_team<R>(threads: usize, body: impl FnOnce() -> R) -> R {
    if threads <= 1 || CURRENT.with(|c| c.get()).is_some() {
        return body();
    }
    let team = {
        let mut slot = TEAM
            .get_or_init(|| Mutex::new(None))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(t) if t.workers + 1 >= threads => t.clone(),
            _ => {
                let t = Arc::new(Team::new(threads - 1));
                *slot = Some(t.clone());
                t
            }
        }
    };
    if team.busy.swap(true, SeqCst) {
        return body();
    }
    struct Release<'a>(&'a Team);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(None));
            self.0.busy.store(false, SeqCst);
        }
    }
    let _release = Release(&team);
    CURRENT.with(|c| c.set(Some((Arc::as_ptr(&team), threads))));
    body()
}

/// Threads available to [`parallel_for`] on this thread right now.
pub(crate) fn team_threads() -> usize {
    CURRENT.with(|c| c.get()).map_or(1, |(_, t)| t)
}

/// Calls `f(i)` for every i in 0..n, spread over the current team (or on this thread).
pub(crate) fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    match CURRENT.with(|c| c.get()) {
        Some((team, threads)) if n > 1 && threads > 1 => {
            // SAFETY: `with_team` keeps the Arc alive while CURRENT is set.
            let team = unsafe { &*team };
            // A kernel that itself calls parallel_for runs its inner loop here.
            CURRENT.with(|c| c.set(None));
            struct Restore(Option<(*const Team, usize)>);
            impl Drop for Restore {
                fn drop(&mut self) {
                    CURRENT.with(|c| c.set(self.0));
                }
            }
            let _r = Restore(Some((team as *const Team, threads)));
            let res = catch_unwind(AssertUnwindSafe(|| team.run(n, threads, f)));
            if let Err(p) = res {
                resume_unwind(p);
            }
        }
        _ => (0..n).for_each(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        with_team(2, || {
            for _ in 0..50 {
                parallel_for(hits.len(), &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
            }
        });
        assert!(hits.iter().all(|h| h.load(SeqCst) == 50));
    }

    #[test]
    fn a_panicking_item_reaches_the_caller() {
        let r = catch_unwind(|| {
            with_team(2, || {
                parallel_for(64, &|i| {
                    if i == 63 {
                        panic!("boom");
                    }
                })
            })
        });
        assert!(r.is_err());
        // The team is usable afterwards.
        let n = AtomicUsize::new(0);
        with_team(2, || {
            parallel_for(10, &|_| {
                n.fetch_add(1, SeqCst);
            })
        });
        assert_eq!(n.load(SeqCst), 10);
    }
}
