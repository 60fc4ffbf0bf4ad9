//! Times each shader path on representative layer shapes and prints GFLOP/s (f32) and
//! GMAC/s (ring) with the upload / compute / download split:
//! `cargo run --release -p shadownet-gpu --example gpu_opbench [runs]`.
use shadownet_gpu::{GpuAccelerator, LayerSpec, Weights};
use shadownet_ir::{infer_shapes, Conv, ConvTranspose, IntTensor, RingTensor, Tensor};
use shadownet_trusted::LinearKind;

fn conv(k: usize, s: usize, p: usize, g: usize) -> LinearKind {
    LinearKind::Conv(Conv {
        kernel: [k, k],
        stride: [s, s],
        dilation: [1, 1],
        pads: [p; 4],
        groups: g,
    })
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let cases: Vec<(&str, LinearKind, Vec<usize>, Vec<usize>)> = vec![
        (
            "conv3x3 64->64 @56",
            conv(3, 1, 1, 1),
            vec![1, 64, 56, 56],
            vec![64, 64, 3, 3],
        ),
        (
            "conv3x3 16->16 @32",
            conv(3, 1, 1, 1),
            vec![1, 16, 32, 32],
            vec![16, 16, 3, 3],
        ),
        (
            "pointwise 128->128 @28",
            conv(1, 1, 0, 1),
            vec![1, 128, 28, 28],
            vec![128, 128, 1, 1],
        ),
        (
            "depthwise3x3 128 @56",
            conv(3, 1, 1, 128),
            vec![1, 128, 56, 56],
            vec![128, 1, 3, 3],
        ),
        (
            "transposed k4 s2 64->32 @28",
            LinearKind::ConvTranspose(ConvTranspose {
                kernel: [4, 4],
                stride: [2, 2],
                dilation: [1, 1],
                pads: [1; 4],
                output_padding: [0, 0],
                groups: 1,
            }),
            vec![1, 64, 28, 28],
            vec![64, 32, 4, 4],
        ),
        (
            "dense 1024->1000",
            LinearKind::MatMul,
            vec![1, 1024],
            vec![1024, 1000],
        ),
        (
            "tiny pointwise 4->4 @4",
            conv(1, 1, 0, 1),
            vec![1, 4, 4, 4],
            vec![4, 4, 1, 1],
        ),
        (
            "tiny depthwise 4 @4",
            conv(3, 1, 1, 4),
            vec![1, 4, 4, 4],
            vec![4, 1, 3, 3],
        ),
        (
            "tiny dense 16->16",
            LinearKind::MatMul,
            vec![1, 16],
            vec![16, 16],
        ),
    ];
    let mut g = GpuAccelerator::new().unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {}", g.adapter());
    let mut specs = Vec::new();
    let mut macs = Vec::new();
    for (_, kind, xs, ws) in &cases {
        let out = infer_shapes("b", &kind.op(), &[xs.clone(), ws.clone()])
            .unwrap()
            .remove(0);
        let per_out: usize = match kind {
            LinearKind::Conv(_) => ws[1..].iter().product(),
            LinearKind::ConvTranspose(_) => 0,
            LinearKind::MatMul => ws[0],
        };
        macs.push(if per_out == 0 {
            xs.iter().product::<usize>() * ws[1..].iter().product::<usize>()
        } else {
            out.iter().product::<usize>() * per_out
        });
        let n: usize = ws.iter().product();
        for ring in [false, true] {
            specs.push(LayerSpec {
                kind: kind.clone(),
                weights: if ring {
                    Weights::Int(
                        IntTensor::new(ws.clone(), (0..n).map(|i| i as i32 * 7919).collect())
                            .unwrap(),
                    )
                } else {
                    Weights::F32(
                        Tensor::new(ws.clone(), (0..n).map(|i| (i % 7) as f32).collect()).unwrap(),
                    )
                },
                input_shape: xs.clone(),
                output_shape: out.clone(),
            });
        }
    }
    g.load_layers(&specs).unwrap();
    let t = g.timings();
    println!(
        "{:<30} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "layer", "arith", "upload ms", "compute ms", "down ms", "G(MAC)/s"
    );
    for (i, (name, _, xs, _)) in cases.iter().enumerate() {
        let n: usize = xs.iter().product();
        let xf = Tensor::new(xs.clone(), (0..n).map(|i| (i % 5) as f32).collect()).unwrap();
        let xr = RingTensor::new(
            xs.clone(),
            (0..n)
                .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect(),
        )
        .unwrap();
        for ring in [false, true] {
            let l = (2 * i + ring as usize) as u32;
            let run = |g: &GpuAccelerator| {
                if ring {
                    g.run_exact(l, &xr).map(|_| ())
                } else {
                    g.run_f32(l, &xf).map(|_| ())
                }
            };
            run(&g).unwrap();
            t.take();
            for _ in 0..runs {
                run(&g).unwrap();
            }
            let s = t.take();
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / runs as f64;
            println!(
                "{:<30} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                name,
                if ring { "ring" } else { "f32" },
                ms(s.upload),
                ms(s.compute),
                ms(s.download),
                macs[i] as f64 / (ms(s.compute) * 1e-3) / 1e9 * if ring { 1.0 } else { 2.0 }
            );
        }
    }
}
