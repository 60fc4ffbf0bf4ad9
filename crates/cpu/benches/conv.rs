//! GFLOP/s of the plain engine's kernels on the shapes the benchmark models run, next to
//! the machine's peak measured the same way (`peak_fma`: independent AVX-512 multiply-adds,
//! nothing loaded). Criterion's "thrpt" is in FLOP/s (elements = 2 · multiply-adds).
//!
//!   cargo bench -p shadownet-cpu --bench conv             # one thread
//!   RAYON_NUM_THREADS=2 cargo bench -p shadownet-cpu --bench conv -- plan
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadownet_cpu::nchwc::conv::{ConvIo, InGeom, InputKind, PackedConv};
use shadownet_cpu::nchwc::{to_blocked, to_planar, AlignedBuf, Geom, Planar};
use shadownet_cpu::PackedLayer;
use shadownet_ir::{Conv, Op, Tensor};

fn data(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// One convolution on the blocked kernels alone (input already blocked, no reorders).
#[allow(clippy::too_many_arguments)]
fn conv(
    c: &mut Criterion,
    name: &str,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
    depthwise: bool,
) {
    let conv = Conv {
        kernel: [k, k],
        stride: [stride; 2],
        dilation: [1, 1],
        pads: [k / 2; 4],
        groups: if depthwise { cin } else { 1 },
    };
    let cg = if depthwise { 1 } else { cin };
    let oh = (hw + 2 * (k / 2) - k) / stride + 1;
    let planar = cin < 16 && !depthwise;
    let kind = if planar {
        InputKind::Planar
    } else {
        InputKind::Blocked
    };
    let w = data(cout * cg * k * k);
    let p = PackedConv::new(&conv, &w, &[cout, cg, k, k], None, cin, oh, kind).unwrap();
    let x = data(cin * hw * hw);
    let (xin, ing) = if planar {
        let pg = Planar {
            n: 1,
            c: cin,
            h: hw,
            w: hw,
            halo: k / 2,
        };
        let mut b = AlignedBuf::zeros(pg.len());
        to_planar(&x, &pg, b.as_mut_slice());
        (b, InGeom::Planar(pg))
    } else {
        let g = Geom::new([1, cin, hw, hw], k / 2);
        let mut b = AlignedBuf::zeros(g.len());
        to_blocked(&x, &g, b.as_mut_slice());
        (b, InGeom::Blocked(g))
    };
    let og = Geom::new([1, cout, oh, oh], 1);
    let mut out = AlignedBuf::zeros(og.len());
    let io = ConvIo {
        inp: xin.as_slice().as_ptr(),
        in_geom: ing,
        out: out.as_mut_slice().as_mut_ptr(),
        out_geom: og,
        res: std::ptr::null(),
        res_geom: None,
    };
    let mut g = c.benchmark_group("kernel");
    g.throughput(Throughput::Elements(2 * p.macs([oh, oh]) as u64));
    // SAFETY: the views above span the geometries, output disjoint from input.
    g.bench_function(name, |b| b.iter(|| unsafe { p.run(&io) }));
    g.finish();
}

/// A dense layer (matrix-vector product) as an accelerator would run it.
fn dense(c: &mut Criterion, name: &str, k: usize, n: usize) {
    let w = Tensor::new(vec![k, n], data(k * n)).unwrap();
    let x = Tensor::new(vec![1, k], data(k)).unwrap();
    let mut layer = PackedLayer::new(&Op::MatMul, &w, None, &[1, k]).unwrap();
    let mut g = c.benchmark_group("kernel");
    g.throughput(Throughput::Elements(2 * (k * n) as u64));
    g.bench_function(name, |b| b.iter(|| layer.run(&x).unwrap()));
    g.finish();
}

/// The machine's multiply-add peak on one thread, measured like the kernels.
fn peak(c: &mut Criterion) {
    const ITERS: usize = 100_000;
    let mut g = c.benchmark_group("kernel");
    // 12 independent accumulators × 16 lanes × 2 FLOP per iteration.
    g.throughput(Throughput::Elements((ITERS * 12 * 16 * 2) as u64));
    g.bench_function("peak_fma", |b| {
        b.iter(|| std::hint::black_box(fma_loop(ITERS)));
    });
    g.finish();
}

fn fma_loop(iters: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { fma_loop_avx512(iters) };
    }
    let mut acc = [1f32; 12 * 16];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(1.000_001, 1e-7);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (m, k) = (_mm512_set1_ps(1.000_001), _mm512_set1_ps(1e-7));
    let mut a = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in a.iter_mut() {
            *v = _mm512_fmadd_ps(*v, m, k);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in a {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

fn benches(c: &mut Criterion) {
    peak(c);
    // ResNet-44 / 404 stages, MobileNet-v1 pointwise and depthwise, YOLOv4-tiny, first layers.
    conv(c, "conv3x3_16x16_32", 16, 16, 32, 3, 1, false);
    conv(c, "conv3x3_64x64_8", 64, 64, 8, 3, 1, false);
    conv(c, "conv1x1_32x64_112", 32, 64, 112, 1, 1, false);
    conv(c, "conv1x1_512x512_14", 512, 512, 14, 1, 1, false);
    conv(c, "conv3x3_64x64_104", 64, 64, 104, 3, 1, false);
    conv(c, "conv3x3s2_3x32_224", 3, 32, 224, 3, 2, false);
    conv(c, "dw3x3_128_56", 128, 128, 56, 3, 1, true);
    conv(c, "dw3x3s2_64_112", 64, 64, 112, 3, 2, true);
    dense(c, "dense_4096x512", 4096, 512);
}

criterion_group! {
    name = g;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(g);
