//! The one place that decides between the rayon pool (host) and a plain loop (trusted core).

std::thread_local! {
    static SEQUENTIAL: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Runs `f` with every kernel on this thread single-threaded: how the host runs the
/// trusted core in-process, with a TEE's single core, without handing each call to
/// another thread.
pub fn sequential<R>(f: impl FnOnce() -> R) -> R {
    {
        let before = SEQUENTIAL.with(|s| s.replace(true));
        let r = f();
        SEQUENTIAL.with(|s| s.set(before));
        r
    }
}

/// Number of worker threads available to kernels.
pub fn threads() -> usize {
    {
        if SEQUENTIAL.with(|s| s.get()) {
            1
        } else {
            rayon::current_num_threads()
        }
    }
}

/// Calls `f(i, chunk)` for each `chunk`-sized piece of `data`, in parallel on the host.
pub fn for_each_chunk<F>(data: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Send + Sync,
{
    if chunk == 0 {
        return;
    }
    {
        use rayon::prelude::*;
        // Tiny tensors are not worth waking the pool for.
        if data.len() >= 16 * 1024 && threads() > 1 {
            data.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
    }
    for (i, c) in data.chunks_mut(chunk).enumerate() {
        f(i, c)
    }
}

/// Like [`for_each_chunk`], giving each worker its own scratch made by `init`.
pub fn for_each_chunk_with<S, I, F>(data: &mut [f32], chunk: usize, init: I, f: F)
where
    I: Fn() -> S + Send + Sync,
    F: Fn(&mut S, usize, &mut [f32]) + Send + Sync,
{
    if chunk == 0 {
        return;
    }
    {
        use rayon::prelude::*;
        if data.len() >= 16 * 1024 && threads() > 1 {
            data.par_chunks_mut(chunk)
                .enumerate()
                .for_each_init(&init, |s, (i, c)| f(s, i, c));
            return;
        }
    }
    let mut s = init();
    for (i, c) in data.chunks_mut(chunk).enumerate() {
        f(&mut s, i, c)
    }
}

/// Calls `f(i)` for i in 0..n, in parallel on the host, giving each worker its own scratch.
pub fn for_each_index_with<S, I, F>(n: usize, init: I, f: F)
where
    I: Fn() -> S + Send + Sync,
    F: Fn(&mut S, usize) + Send + Sync,
{
    {
        use rayon::prelude::*;
        if n > 1 && threads() > 1 {
            (0..n).into_par_iter().for_each_init(&init, |s, i| f(s, i));
            return;
        }
    }
    let mut s = init();
    for i in 0..n {
        f(&mut s, i)
    }
}
