//! Best-of-N time of every plan step of a model (to compare thread counts).
//!   RAYON_NUM_THREADS=2 cargo run --release -p shadownet-cpu --example stepmin -- MODEL [NAME=dims] [runs]
use shadownet_ir::Tensor;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut shapes = Vec::new();
    let mut runs = 50;
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
    let m = shadownet_import::load_model(std::path::Path::new(&args[1]), &shapes).unwrap();
    let g = &m.graph;
    let xs: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|&i| {
            let s = g.values[i].shape.clone();
            let n = s.iter().product();
            Tensor::new(
                s,
                (0..n)
                    .map(|j| ((j * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect(),
            )
            .unwrap()
        })
        .collect();
    let mut plan = shadownet_cpu::Plan::compile(g).unwrap();
    let mut best: Vec<f64> = Vec::new();
    let mut names = Vec::new();
    let mut total_best = f64::MAX;
    for _ in 0..runs {
        let t0 = std::time::Instant::now();
        let (_, prof) = plan.run_profiled(&xs).unwrap();
        total_best = total_best.min(t0.elapsed().as_secs_f64() * 1e3);
        if best.is_empty() {
            best = vec![f64::MAX; prof.len()];
            names = prof.iter().map(|p| p.name.clone()).collect();
        }
        for (b, p) in best.iter_mut().zip(&prof) {
            *b = b.min(p.ms);
        }
    }
    let sum: f64 = best.iter().sum();
    println!("best total {total_best:.3} ms, sum of best steps {sum:.3} ms");
    for (b, n) in best.iter().zip(&names) {
        println!("{:8.1} us  {n}", b * 1e3);
    }
}
