// Temporary: per-layer accelerator time vs the plain plan's steps.
use shadownet_trusted::format::{self};
use shadownet_untrusted::{Accelerator, CpuAccelerator, PublicModel};
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let m = shadownet_import::load_model(std::path::Path::new(&path), &[]).unwrap();
    let g = &m.graph;
    let opts = shadownet_protect::Options {
        insecure_seed: Some(1),
        scheme: shadownet_trusted::Scheme::ShadowNet,
        ..Default::default()
    };
    let c = shadownet_protect::convert(g, &opts, &mut |_, _| {}).unwrap();
    let weights: Vec<_> = c
        .header
        .layers
        .iter()
        .zip(&c.weights)
        .map(|(l, b)| format::decode_weight(l, b).unwrap())
        .collect();
    let pm = PublicModel {
        header: c.header.clone(),
        weights,
    };
    let mut acc = CpuAccelerator::new();
    acc.load(&pm).unwrap();
    for k in [1usize, 2, 13, 14] {
        let shadownet_trusted::format::PublicWeight::F32(w) = &pm.weights[k] else {
            panic!()
        };
        one(
            pm.header.layers[k].kind.op(),
            w.clone(),
            &pm.header.layers[k].input_shape,
        );
    }
    let mut tot = vec![0f64; pm.header.layers.len()];
    let runs = 30;
    let xs: Vec<_> = pm
        .header
        .layers
        .iter()
        .map(|l| {
            shadownet_ir::Tensor::new(
                l.input_shape.clone(),
                (0..l.input_shape.iter().product::<usize>())
                    .map(|i| (i % 7) as f32 * 0.1)
                    .collect(),
            )
            .unwrap()
        })
        .collect();
    for r in 0..runs + 3 {
        for (k, x) in xs.iter().enumerate() {
            let t = Instant::now();
            let y = acc.run(k as u32, x).unwrap();
            std::hint::black_box(y);
            if r >= 3 {
                tot[k] += t.elapsed().as_secs_f64() * 1e3 / runs as f64;
            }
        }
    }
    let mut plan = shadownet_cpu::Plan::compile(g).unwrap();
    let ins: Vec<_> = g
        .inputs
        .iter()
        .map(|&i| shadownet_ir::Tensor::zeros(&g.values[i].shape))
        .collect();
    let mut steps: Vec<(String, f64)> = Vec::new();
    for r in 0..runs + 3 {
        let (_, st) = plan.run_profiled(&ins).unwrap();
        if r == 3 {
            steps = st.iter().map(|s| (s.name.clone(), 0.0)).collect();
        }
        if r >= 3 {
            for (a, s) in steps.iter_mut().zip(&st) {
                a.1 += s.ms / runs as f64;
            }
        }
    }
    for (k, l) in pm.header.layers.iter().enumerate() {
        println!(
            "accel {k:3} {:?} in {:?} out {:?} {:.3} ms",
            l.kind.op(),
            l.input_shape,
            l.output_shape,
            tot[k]
        );
    }
    println!("accel total {:.3}", tot.iter().sum::<f64>());
    for (n, ms) in &steps {
        println!("plain {n} {ms:.3}");
    }
    println!("plain total {:.3}", steps.iter().map(|s| s.1).sum::<f64>());
}
#[allow(dead_code)]
pub fn one(op: shadownet_ir::Op, w: shadownet_ir::Tensor, shape: &[usize]) {
    let mut g = shadownet_ir::Graph::new();
    let x = g.add_input("x", shape.to_vec());
    let ins = vec![x, g.add_const("w", w)];
    g.outputs = g.add_node("layer", op, ins, &[]).unwrap();
    let mut plan = shadownet_cpu::Plan::compile(&g).unwrap();
    let xs = vec![shadownet_ir::Tensor::zeros(shape)];
    let mut acc: Vec<(String, f64)> = Vec::new();
    for r in 0..53 {
        let (_, st) = plan.run_profiled(&xs).unwrap();
        if r == 3 {
            acc = st.iter().map(|s| (s.name.clone(), 0.0)).collect();
        }
        if r >= 3 {
            for (a, s) in acc.iter_mut().zip(&st) {
                a.1 += s.ms / 50.0;
            }
        }
    }
    println!("one {shape:?}: {acc:?}");
}
