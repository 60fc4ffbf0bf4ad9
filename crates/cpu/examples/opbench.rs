//! Per-step times (best of many runs) of a small plan: conv → maxpool / concat / split.
use shadownet_ir::{Conv, Graph, Op, Pool, Tensor};

fn main() {
    let mut g = Graph::new();
    let x = g.add_input("x", vec![1, 3, 104, 104]);
    let w = g.add_const(
        "w",
        Tensor::new(vec![128, 3, 1, 1], vec![0.1; 384]).unwrap(),
    );
    let c = Conv {
        kernel: [1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [0; 4],
        groups: 1,
    };
    let y = g
        .add_node("conv", Op::Conv(c.clone()), vec![x, w], &[])
        .unwrap()[0];
    let p = Pool {
        kernel: [2, 2],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [0; 4],
        extra_end: [0; 2],
        count_include_pad: false,
    };
    let m = g.add_node("maxpool", Op::MaxPool(p), vec![y], &[]).unwrap()[0];
    let s = g
        .add_node(
            "split",
            Op::Split {
                axis: 1,
                sizes: vec![64, 64],
            },
            vec![y],
            &[],
        )
        .unwrap();
    let cat = g
        .add_node("concat", Op::Concat { axis: 1 }, vec![s[1], y], &[])
        .unwrap()[0];
    let w2 = g.add_const(
        "w2",
        Tensor::new(vec![16, 192, 1, 1], vec![0.1; 16 * 192]).unwrap(),
    );
    let z = g
        .add_node("conv2", Op::Conv(c), vec![cat, w2], &[])
        .unwrap()[0];
    g.outputs = vec![m, z];
    let mut plan = shadownet_cpu::Plan::compile(&g).unwrap();
    let xs = vec![Tensor::new(
        vec![1, 3, 104, 104],
        (0..3 * 104 * 104).map(|i| (i % 17) as f32).collect(),
    )
    .unwrap()];
    let mut best: Vec<f64> = Vec::new();
    let mut names = Vec::new();
    for _ in 0..200 {
        let (_, prof) = plan.run_profiled(&xs).unwrap();
        if best.is_empty() {
            best = vec![f64::MAX; prof.len()];
            names = prof.iter().map(|p| p.name.clone()).collect();
        }
        for (b, p) in best.iter_mut().zip(&prof) {
            *b = b.min(p.ms);
        }
    }
    for (b, n) in best.iter().zip(&names) {
        println!("{:8.1} us  {n}", b * 1e3);
    }
}
