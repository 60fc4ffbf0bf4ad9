//! Times plain inference of one model, one run per request, for benchmarks that interleave
//! shadownet with another engine run by run (scripts/bench_int8.py).
//!
//! `timer MODEL INPUT.npy THREADS`: loads the model, then reads lines from stdin; for each
//! line it runs the model once and prints the wall time of that run in milliseconds.
//! Model loading stays outside the timings, as an engine's session creation does.
use std::io::{BufRead, Write};

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, input, threads] = args.as_slice() else {
        anyhow::bail!("usage: timer MODEL INPUT.npy THREADS");
    };
    let x = shadownet::npy::read_npy(std::path::Path::new(input)).context("reading the input")?;
    let threads: usize = threads.parse().context("THREADS")?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("thread pool")?;
    // Benchmarked models have fixed input sizes.
    let m = shadownet_import::load_model(std::path::Path::new(model), &[])
        .context("loading the model")?;
    let inputs = vec![x];
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        line?;
        let t = std::time::Instant::now();
        let y = shadownet_cpu::run_graph(&m.graph, &inputs)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box(y);
        writeln!(out, "{ms:.4}")?;
        out.flush()?;
    }
    Ok(())
}
