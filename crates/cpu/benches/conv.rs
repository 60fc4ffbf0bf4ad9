//! Conv kernel throughput on the shapes quoted in DEVELOPERS.md (ONNX Runtime, one core:
//! 3×3 64→64 at 56×56 in 0.92 ms, 3×3 depthwise 128 ch at 56×56 in 0.12 ms).
//! Run with `RAYON_NUM_THREADS=1 cargo bench -p shadownet-cpu` for the one-core numbers.
use criterion::{criterion_group, criterion_main, Criterion};
use shadownet_ir::{Conv, Op, Tensor};

fn t(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect(),
    )
    .unwrap()
}

#[allow(clippy::too_many_arguments)]
fn conv(
    c: &mut Criterion,
    name: &str,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
    groups: usize,
) {
    let p = k / 2;
    let op = Op::Conv(Conv {
        kernel: [k, k],
        stride: [stride; 2],
        dilation: [1, 1],
        pads: [p; 4],
        groups,
    });
    let x = t(&[1, cin, hw, hw]);
    let w = t(&[cout, cin / groups, k, k]);
    let b = t(&[cout]);
    c.bench_function(name, |bch| {
        bch.iter(|| shadownet_cpu::eval("bench", &op, &[&x, &w, &b]).unwrap())
    });
}

fn benches(c: &mut Criterion) {
    conv(c, "conv3x3_64x64_56", 64, 64, 56, 3, 1, 1);
    conv(c, "dw3x3_128_56", 128, 128, 56, 3, 1, 128);
    conv(c, "conv1x1_128x128_28", 128, 128, 28, 1, 1, 1);
    conv(c, "conv3x3s2_32x64_112", 32, 64, 112, 3, 2, 1);
}

criterion_group!(g, benches);
criterion_main!(g);
