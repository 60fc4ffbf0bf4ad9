//! Every outsourced op on the GPU against the CPU: f32 within 1e-5 of the CPU backend
//! (max error over the output's largest magnitude), and the exact ring bit for bit
//! against `shadownet_kernels::ring`, with full-range u64 inputs and i32 weights of both
//! signs. Shapes are chosen to cross every tile edge (M, N and K not multiples of the
//! tiles), every shader path (gather, pointwise, dense, depthwise, phases of transposed
//! convolutions) and every tile shape.
//!
//! These tests need a GPU adapter; on a machine without one, Mesa's lavapipe
//! (`apt-get install mesa-vulkan-drivers libvulkan1`) provides it. With neither they fail
//! and say so: they never skip.
use shadownet_gpu::{GpuAccelerator, LayerSpec, Weights};
use shadownet_ir::{infer_shapes, Conv, ConvTranspose, IntTensor, RingTensor, Tensor};
use shadownet_trusted::format::{PublicWeight, WeightMeta, WeightType};
use shadownet_trusted::{LinearKind, PublicHeader, PublicLayer, Scheme};
use shadownet_untrusted::{Accelerator, CpuAccelerator, PublicModel};

fn gpu() -> GpuAccelerator {
    GpuAccelerator::new().unwrap_or_else(|e| panic!("the GPU tests need an adapter: {e}"))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// Full-range i32 weights, salted with the extremes.
    fn weight(&mut self) -> i32 {
        match self.next() % 16 {
            0 => i32::MIN,
            1 => i32::MAX,
            2 => -1,
            3 => 0,
            4..=7 => (self.next() as i32) >> 12,
            _ => self.next() as i32,
        }
    }
    fn value(&mut self) -> u64 {
        match self.next() % 16 {
            0 => u64::MAX,
            1 => 1 << 63,
            2 => 0,
            _ => self.next(),
        }
    }
}

fn conv(
    kernel: usize,
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    groups: usize,
) -> LinearKind {
    LinearKind::Conv(Conv {
        kernel: [kernel, kernel],
        stride: [stride, stride],
        dilation: [dilation, dilation],
        pads,
        groups,
    })
}

fn convt(
    kernel: usize,
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    output_padding: usize,
    groups: usize,
) -> LinearKind {
    LinearKind::ConvTranspose(ConvTranspose {
        kernel: [kernel, kernel],
        stride: [stride, stride],
        dilation: [dilation, dilation],
        pads,
        output_padding: [output_padding, output_padding],
        groups,
    })
}

/// (name, op, input shape, weight shape)
fn cases() -> Vec<(&'static str, LinearKind, Vec<usize>, Vec<usize>)> {
    vec![
        (
            "conv3x3 batch 2, M/N/K off the tiles",
            conv(3, 1, [1; 4], 1, 1),
            vec![2, 5, 17, 19],
            vec![70, 5, 3, 3],
        ),
        (
            "conv strided, uneven pads",
            conv(3, 2, [1, 0, 2, 1], 1, 1),
            vec![1, 8, 15, 16],
            vec![24, 8, 3, 3],
        ),
        (
            "conv dilated",
            conv(3, 1, [2; 4], 2, 1),
            vec![1, 6, 12, 11],
            vec![10, 6, 3, 3],
        ),
        (
            "conv grouped",
            conv(3, 1, [1; 4], 1, 4),
            vec![1, 12, 9, 10],
            vec![8, 3, 3, 3],
        ),
        (
            "conv stem stride 2",
            conv(3, 2, [1; 4], 1, 1),
            vec![1, 3, 32, 30],
            vec![16, 3, 3, 3],
        ),
        (
            "conv few pixels (gemv tile)",
            conv(3, 1, [1; 4], 1, 1),
            vec![1, 64, 2, 2],
            vec![130, 64, 3, 3],
        ),
        (
            "depthwise 3x3",
            conv(3, 1, [1; 4], 1, 32),
            vec![1, 32, 20, 21],
            vec![32, 1, 3, 3],
        ),
        (
            "depthwise 5x5 stride 2 multiplier 2",
            conv(5, 2, [2; 4], 1, 6),
            vec![2, 6, 33, 35],
            vec![12, 1, 5, 5],
        ),
        (
            "depthwise small planes",
            conv(3, 1, [1; 4], 1, 64),
            vec![1, 64, 7, 7],
            vec![64, 1, 3, 3],
        ),
        (
            "depthwise tiny planes",
            conv(3, 1, [1; 4], 1, 40),
            vec![1, 40, 2, 3],
            vec![40, 1, 3, 3],
        ),
        (
            "depthwise 7x7 window, 12x20 plane",
            conv(7, 1, [3; 4], 1, 3),
            vec![1, 3, 12, 20],
            vec![3, 1, 7, 7],
        ),
        (
            "depthwise dilation 40 (GEMM fallback)",
            conv(3, 1, [0; 4], 40, 2),
            vec![1, 2, 85, 85],
            vec![2, 1, 3, 3],
        ),
        (
            "pointwise",
            conv(1, 1, [0; 4], 1, 1),
            vec![1, 40, 8, 8],
            vec![72, 40, 1, 1],
        ),
        (
            "pointwise odd plane",
            conv(1, 1, [0; 4], 1, 1),
            vec![1, 16, 5, 5],
            vec![24, 16, 1, 1],
        ),
        (
            "pointwise plane of 18",
            conv(1, 1, [0; 4], 1, 2),
            vec![1, 16, 3, 6],
            vec![20, 8, 1, 1],
        ),
        (
            "pointwise few filters",
            conv(1, 1, [0; 4], 1, 1),
            vec![1, 12, 4, 6],
            vec![16, 12, 1, 1],
        ),
        (
            "pointwise 2x2 plane (gemv tile)",
            conv(1, 1, [0; 4], 1, 1),
            vec![1, 32, 2, 2],
            vec![40, 32, 1, 1],
        ),
        (
            "conv1x1 strided",
            conv(1, 2, [0; 4], 1, 1),
            vec![1, 8, 9, 9],
            vec![12, 8, 1, 1],
        ),
        (
            "transposed k3 s2 p1 op1",
            convt(3, 2, [1; 4], 1, 1, 1),
            vec![1, 6, 7, 8],
            vec![6, 5, 3, 3],
        ),
        (
            "transposed k4 s2 grouped",
            convt(4, 2, [1; 4], 1, 0, 2),
            vec![1, 8, 5, 6],
            vec![8, 3, 4, 4],
        ),
        (
            "transposed kernel < stride",
            convt(2, 3, [0; 4], 1, 0, 1),
            vec![1, 4, 4, 5],
            vec![4, 3, 2, 2],
        ),
        (
            "transposed dilated",
            convt(3, 2, [0, 1, 1, 0], 2, 0, 1),
            vec![1, 3, 5, 5],
            vec![3, 4, 3, 3],
        ),
        (
            "transposed stride 1",
            convt(3, 1, [1; 4], 1, 0, 1),
            vec![2, 4, 6, 6],
            vec![4, 20, 3, 3],
        ),
        (
            "dense one row",
            LinearKind::MatMul,
            vec![1, 300],
            vec![300, 70],
        ),
        (
            "dense 7 rows",
            LinearKind::MatMul,
            vec![7, 33],
            vec![33, 20],
        ),
        (
            "dense rank-3 input",
            LinearKind::MatMul,
            vec![2, 3, 50],
            vec![50, 10],
        ),
        (
            "dense wide",
            LinearKind::MatMul,
            vec![1, 64],
            vec![64, 1000],
        ),
    ]
}

fn out_shape(kind: &LinearKind, x: &[usize], w: &[usize]) -> Vec<usize> {
    infer_shapes("t", &kind.op(), &[x.to_vec(), w.to_vec()])
        .unwrap()
        .remove(0)
}

/// The cases reach every shader: both arithmetics, every tile shape in every mode, and
/// the depthwise kernel.
#[test]
fn cases_cover_every_shader() {
    use shadownet_gpu::plan::plan;
    use shadownet_gpu::shaders::{Arith, Mode, ShaderKey, Tile};
    use std::collections::HashSet;
    let mut used = HashSet::new();
    for (name, kind, xs, ws) in cases() {
        let out = out_shape(&kind, &xs, &ws);
        let n: usize = ws.iter().product();
        for arith in [Arith::F32, Arith::Ring] {
            let p = plan(&kind, arith, &xs, &ws, &vec![0f32; n], &out)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            used.extend(p.passes.iter().map(|p| p.key));
        }
    }
    for arith in [Arith::F32, Arith::Ring] {
        assert!(
            used.contains(&ShaderKey::Depthwise { arith }),
            "{arith:?} depthwise"
        );
        for tile in [Tile::Big, Tile::Narrow, Tile::Gemv] {
            for mode in [Mode::Gather, Mode::Pointwise, Mode::Dense] {
                let key = ShaderKey::Gemm { arith, tile, mode };
                assert!(used.contains(&key), "no case runs {key:?}");
            }
        }
    }
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    let scale = b
        .data
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.data
        .iter()
        .zip(&b.data)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn f32_ops_match_the_cpu_backend() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let cases = cases();
    let mut specs = Vec::new();
    let mut data = Vec::new();
    for (_, kind, xs, ws) in &cases {
        let w = Tensor::new(
            ws.clone(),
            (0..ws.iter().product()).map(|_| rng.unit()).collect(),
        )
        .unwrap();
        let x = Tensor::new(
            xs.clone(),
            (0..xs.iter().product()).map(|_| rng.unit()).collect(),
        )
        .unwrap();
        specs.push(LayerSpec {
            kind: kind.clone(),
            weights: Weights::F32(w.clone()),
            input_shape: xs.clone(),
            output_shape: out_shape(kind, xs, ws),
        });
        data.push((x, w));
    }
    let mut g = gpu();
    g.load_layers(&specs).unwrap();
    // Twice, in opposite orders: the shared activation buffers carry nothing over.
    let mut worst = (0f32, "");
    for round in 0..2 {
        for i in 0..cases.len() {
            let i = if round == 0 { i } else { cases.len() - 1 - i };
            let (name, kind, _, _) = &cases[i];
            let (x, w) = &data[i];
            let want = shadownet_cpu::eval("t", &kind.op(), &[x, w])
                .unwrap()
                .remove(0);
            let got = g
                .run_f32(i as u32, x)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let e = rel_err(&got, &want);
            assert!(e <= 1e-5, "{name}: relative error {e:.2e}");
            if e > worst.0 {
                worst = (e, name);
            }
        }
    }
    eprintln!("f32: largest relative error {:.2e} ({})", worst.0, worst.1);
    let t = g.timings().take();
    assert_eq!(t.calls, 2 * cases.len() as u64);
    assert!(t.compute > std::time::Duration::ZERO);
}

fn ring_reference(kind: &LinearKind, x: &RingTensor, w: &IntTensor) -> RingTensor {
    use shadownet_kernels::ring;
    let out = out_shape(kind, &x.shape, &w.shape);
    match kind {
        LinearKind::Conv(c) => ring::conv2d(x, w, c, &out),
        LinearKind::ConvTranspose(c) => ring::conv_transpose2d(x, w, c, &out),
        LinearKind::MatMul => ring::matmul(x, w),
    }
}

#[test]
fn ring_ops_are_exact() {
    let mut rng = Rng(0x0bad_cafe_f00d_0001);
    let cases = cases();
    let mut specs = Vec::new();
    let mut data = Vec::new();
    for (_, kind, xs, ws) in &cases {
        let w = IntTensor::new(
            ws.clone(),
            (0..ws.iter().product()).map(|_| rng.weight()).collect(),
        )
        .unwrap();
        let x = RingTensor::new(
            xs.clone(),
            (0..xs.iter().product()).map(|_| rng.value()).collect(),
        )
        .unwrap();
        specs.push(LayerSpec {
            kind: kind.clone(),
            weights: Weights::Int(w.clone()),
            input_shape: xs.clone(),
            output_shape: out_shape(kind, xs, ws),
        });
        data.push((x, w));
    }
    let mut g = gpu();
    g.load_layers(&specs).unwrap();
    for (i, (name, kind, _, _)) in cases.iter().enumerate() {
        let (x, w) = &data[i];
        let want = ring_reference(kind, x, w);
        // The reference itself against the definition, where there is one.
        if let LinearKind::Conv(c) = kind {
            assert_eq!(
                want,
                shadownet_kernels::ring::conv2d_naive(x, w, c, &want.shape),
                "{name}"
            );
        }
        let got = g
            .run_exact(i as u32, x)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.shape, want.shape, "{name}");
        let bad = got
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(bad, 0, "{name}: {bad} of {} values differ", want.data.len());
    }
    // The trait entry point, and f32 on a ring-only layer is refused.
    assert_eq!(
        g.run_ring(0, &data[0].0).unwrap(),
        ring_reference(&cases[0].1, &data[0].0, &data[0].1)
    );
    let x = Tensor::zeros(&cases[0].2);
    let e = g.run_f32(0, &x).unwrap_err().to_string();
    assert!(e.contains("without f32 weights"), "{e}");
}

/// Through the `Accelerator` trait with a package's public part: f32 layers as the CPU
/// backend computes them, integer layers exactly as on the CPU, and each kind of layer
/// refuses the other arithmetic on both backends.
#[test]
fn public_layers_through_the_trait_match_the_cpu_accelerator() {
    let mut rng = Rng(77);
    let (mut layers, mut weights) = (Vec::new(), Vec::new());
    for (_, kind, xs, ws) in cases().into_iter().step_by(3) {
        let n: usize = ws.iter().product();
        let output_shape = out_shape(&kind, &xs, &ws);
        for int in [false, true] {
            let (dtype, w) = if int {
                let w: Vec<i32> = (0..n).map(|_| rng.next() as i32).collect();
                (
                    WeightType::I32,
                    PublicWeight::I32(IntTensor::new(ws.clone(), w).unwrap()),
                )
            } else {
                let w: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
                (
                    WeightType::F32,
                    PublicWeight::F32(Tensor::new(ws.clone(), w).unwrap()),
                )
            };
            layers.push(PublicLayer {
                kind: kind.clone(),
                // Accelerators take the decoded weights; offsets and hashes are the
                // package reader's business.
                weight: WeightMeta {
                    dtype,
                    shape: ws.clone(),
                    offset: 0,
                    sha256: [0; 32],
                },
                input_shape: xs.clone(),
                output_shape: output_shape.clone(),
            });
            weights.push(w);
        }
    }
    let model = PublicModel {
        header: PublicHeader {
            scheme: Scheme::Hardened,
            package_id: [0; 16],
            inputs: Vec::new(),
            outputs: Vec::new(),
            layers,
        },
        weights,
    };
    let mut g = gpu();
    let mut c = CpuAccelerator::new();
    g.load(&model).unwrap();
    c.load(&model).unwrap();
    for (i, (l, w)) in model.header.layers.iter().zip(&model.weights).enumerate() {
        let i = i as u32;
        let n: usize = l.input_shape.iter().product();
        let x = Tensor::new(l.input_shape.clone(), (0..n).map(|_| rng.unit()).collect()).unwrap();
        let xr =
            RingTensor::new(l.input_shape.clone(), (0..n).map(|_| rng.value()).collect()).unwrap();
        match w {
            PublicWeight::F32(_) => {
                let e = rel_err(&g.run(i, &x).unwrap(), &c.run(i, &x).unwrap());
                assert!(e <= 1e-5, "layer {i}: {e:.2e}");
                assert!(g.run_ring(i, &xr).is_err(), "layer {i}");
                assert!(c.run_ring(i, &xr).is_err(), "layer {i}");
            }
            PublicWeight::I32(_) => {
                assert_eq!(g.run_ring(i, &xr).unwrap(), c.run_ring(i, &xr).unwrap());
                assert!(g.run(i, &x).is_err(), "layer {i}");
                assert!(c.run(i, &x).is_err(), "layer {i}");
            }
        }
    }
}

#[test]
fn bad_calls_are_errors() {
    let mut g = gpu();
    let kind = conv(3, 1, [1; 4], 1, 1);
    let w = Tensor::zeros(&[4, 3, 3, 3]);
    let spec = |out: Vec<usize>| LayerSpec {
        kind: kind.clone(),
        weights: Weights::F32(w.clone()),
        input_shape: vec![1, 3, 8, 8],
        output_shape: out,
    };
    let e = g
        .load_layers(&[spec(vec![1, 4, 7, 8])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not follow"), "{e}");
    g.load_layers(&[spec(vec![1, 4, 8, 8])]).unwrap();
    let e = g
        .run_f32(0, &Tensor::zeros(&[1, 3, 8, 9]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("input shape"), "{e}");
    let e = g
        .run_f32(1, &Tensor::zeros(&[1, 3, 8, 8]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not loaded"), "{e}");
    let e = g
        .run_exact(0, &RingTensor::zeros(&[1, 3, 8, 8]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("without integer weights"), "{e}");
    let bad = LayerSpec {
        kind: LinearKind::MatMul,
        weights: Weights::F32(Tensor::zeros(&[2, 3, 4])),
        input_shape: vec![1, 3],
        output_shape: vec![1, 2, 4],
    };
    assert!(g.load_layers(&[bad]).is_err());
}
