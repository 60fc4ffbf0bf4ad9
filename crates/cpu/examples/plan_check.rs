//! Compiles a model, checks the plan against the node-by-node executor and times both.
//!   cargo run --release -p shadownet-cpu --example plan_check -- MODEL [NAME=1,3,48,192] [runs]
use std::time::Instant;

use shadownet_ir::Tensor;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(&args[1]);
    let mut shapes = Vec::new();
    let mut runs = 20;
    for a in &args[2..] {
        if let Some((n, d)) = a.split_once('=') {
            shapes.push((
                n.to_string(),
                d.split(',').map(|x| x.parse().unwrap()).collect(),
            ));
        } else {
            runs = a.parse().unwrap();
        }
    }
    let m = shadownet_import::load_model(&path, &shapes).unwrap();
    let g = &m.graph;
    let mut s = 12345u64;
    let xs: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|&i| {
            let shape = g.values[i].shape.clone();
            let n = shape.iter().product();
            let d = (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
                })
                .collect();
            Tensor::new(shape, d).unwrap()
        })
        .collect();
    let t0 = Instant::now();
    let mut plan = shadownet_cpu::Plan::compile(g).unwrap();
    eprintln!(
        "compile {:.1} ms, {} steps, arena {:.1} MiB",
        t0.elapsed().as_secs_f64() * 1e3,
        plan.len(),
        plan.arena_bytes() as f64 / 1048576.0
    );
    let want = shadownet_cpu::run_graph_observed(g, &xs, |_, _| {}).unwrap();
    let got = plan.run(&xs).unwrap();
    for (a, b) in got.iter().zip(&want) {
        let scale = b.data.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let err = a
            .data
            .iter()
            .zip(&b.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        eprintln!("output {:?}: max rel err {err:.2e}", a.shape);
    }
    let mut tp = Vec::new();
    let mut to = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        plan.run(&xs).unwrap();
        tp.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        shadownet_cpu::run_graph_observed(g, &xs, |_, _| {}).unwrap();
        to.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    tp.sort_by(f64::total_cmp);
    to.sort_by(f64::total_cmp);
    eprintln!(
        "plan median {:.3} ms (min {:.3}), old median {:.3} ms (min {:.3})",
        tp[runs / 2],
        tp[0],
        to[runs / 2],
        to[0]
    );
    if std::env::var_os("PROFILE").is_some() {
        let (_, prof) = plan.run_profiled(&xs).unwrap();
        let mut total = 0.0;
        for p in &prof {
            total += p.ms;
            eprintln!(
                "{:9.3} ms {:7.1} GFLOP/s  {}",
                p.ms,
                2.0 * p.macs as f64 / p.ms / 1e6,
                p.name
            );
        }
        eprintln!("total {total:.3} ms");
    }
}
