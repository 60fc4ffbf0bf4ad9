//! Compiled plans against the node-by-node executor on the graph patterns the planner
//! fuses or lays out specially: conv + batch norm + activation, residual adds, ONNX
//! hard-swish, squeeze-excite blocks, pooling, channel concat / split (block-aligned or
//! not), nearest resize, dense layers with bias, fallback ops, values read twice, graph
//! outputs in the middle of a chain; channel counts off the 16-lane blocks; one and two
//! threads; SIMD and portable kernels.
use shadownet_cpu::{nchwc, Plan};
use shadownet_ir::{Activation, BinaryOp, Conv, Graph, Op, Pool, Resize, Tensor, ValueId};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(|_| self.next()).collect()).unwrap()
    }
}

struct B {
    g: Graph,
    rng: Rng,
    n: usize,
}

impl B {
    fn new(seed: u64) -> B {
        B {
            g: Graph::new(),
            rng: Rng(seed),
            n: 0,
        }
    }
    fn name(&mut self) -> String {
        self.n += 1;
        format!("n{}", self.n)
    }
    fn konst(&mut self, shape: &[usize]) -> ValueId {
        let t = self.rng.tensor(shape);
        let n = self.name();
        self.g.add_const(n, t)
    }
    fn node(&mut self, op: Op, ins: Vec<ValueId>) -> ValueId {
        let n = self.name();
        self.g.add_node(n, op, ins, &[]).unwrap()[0]
    }
    fn conv(&mut self, x: ValueId, cout: usize, k: usize, stride: usize, groups: usize) -> ValueId {
        let cin = self.g.shape(x)[1];
        let w = self.konst(&[cout, cin / groups, k, k]);
        let b = self.konst(&[cout]);
        let c = Conv {
            kernel: [k, k],
            stride: [stride; 2],
            dilation: [1, 1],
            pads: [k / 2; 4],
            groups,
        };
        self.node(Op::Conv(c), vec![x, w, b])
    }
    fn act(&mut self, x: ValueId, a: Activation) -> ValueId {
        self.node(Op::Act(a), vec![x])
    }
    fn bin(&mut self, op: BinaryOp, a: ValueId, b: ValueId) -> ValueId {
        self.node(Op::Binary(op), vec![a, b])
    }
    fn scalar(&mut self, v: f32) -> ValueId {
        let n = self.name();
        self.g.add_const(n, Tensor::scalar(v))
    }
}

/// Checks the plan against the node-by-node executor; returns its step names.
fn check(mut b: B, outputs: Vec<ValueId>) -> Vec<String> {
    b.g.outputs = outputs;
    let inputs: Vec<Tensor> =
        b.g.inputs
            .clone()
            .iter()
            .map(|&i| {
                let s = b.g.shape(i).to_vec();
                b.rng.tensor(&s)
            })
            .collect();
    let want = shadownet_cpu::run_graph_observed(&b.g, &inputs, |_, _| {}).unwrap();
    let run = |threads: usize, portable: bool| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut plan = Plan::compile(&b.g).unwrap();
            // Twice: the second run reuses an arena the first left dirty.
            plan.run(&inputs).unwrap();
            if portable {
                shadownet_cpu::sequential(|| nchwc::portable_only(|| plan.run(&inputs).unwrap()))
            } else {
                plan.run(&inputs).unwrap()
            }
        })
    };
    // The same kernels give the same bits on one thread or two: how work is split over
    // threads must not change any sum's order (a busy team runs a plan on one thread).
    let one = run(1, false);
    for (threads, portable) in [(1, false), (2, false), (1, true)] {
        let got = run(threads, portable);
        if !portable {
            for (o, (a, b)) in got.iter().zip(&one).enumerate() {
                let same = a.data.len() == b.data.len()
                    && a.data
                        .iter()
                        .zip(&b.data)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "output {o}: {threads} threads changed the bits");
            }
        }
        assert_eq!(got.len(), want.len());
        for (o, (a, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.shape, w.shape, "output {o}");
            let scale = w.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let err = a.data.iter().zip(&w.data).fold(0f32, |m, (x, y)| {
                if (x - y).is_nan() {
                    f32::INFINITY
                } else {
                    m.max((x - y).abs())
                }
            }) / scale;
            assert!(
                err < 1e-5,
                "output {o} (threads {threads}, portable {portable}): rel err {err}"
            );
        }
    }
    Plan::compile(&b.g).unwrap().step_names().to_vec()
}

#[test]
fn conv_bn_act_chains_and_residuals() {
    for (seed, c) in [(1, 16), (2, 24), (3, 8)] {
        let mut b = B::new(seed);
        let x = b.g.add_input("x", vec![1, 3, 20, 18]);
        let y = b.conv(x, c, 3, 2, 1);
        let bn: Vec<ValueId> = [c, c, c, c].iter().map(|&n| b.konst(&[n])).collect();
        // Variance must be positive.
        let var = b.g.values[bn[3]].data.as_mut().unwrap();
        var.data.iter_mut().for_each(|v| *v = v.abs() + 0.1);
        let y = b.node(
            Op::BatchNorm { epsilon: 1e-5 },
            vec![y, bn[0], bn[1], bn[2], bn[3]],
        );
        let y = b.act(y, Activation::Relu);
        let z = b.conv(y, c, 3, 1, 1);
        let z = b.act(z, Activation::LeakyRelu { alpha: 0.1 });
        let z = b.conv(z, c, 3, 1, 1);
        let z = b.bin(BinaryOp::Add, y, z);
        let z = b.act(z, Activation::Relu);
        // A value read by two later ops, and a mid-chain graph output.
        let d = b.conv(z, c, 3, 1, c);
        let e = b.act(d, Activation::Clip { min: 0.0, max: 6.0 });
        let f = b.conv(e, 2 * c, 1, 1, 1);
        let k = b.konst(&[1, 2 * c, 1, 1]);
        let f = b.bin(BinaryOp::Mul, f, k);
        let s = b.scalar(0.5);
        let f = b.bin(BinaryOp::Sub, s, f);
        let steps = check(b, vec![f, d, z]);
        // Batch norm, activations and the residual add fused into the convolutions
        // (a step name lists the nodes it covers).
        assert!(
            steps.iter().filter(|s| s.split('+').count() == 3).count() >= 2,
            "{steps:?}"
        );
        assert!(
            steps.iter().filter(|s| s.starts_with("to_")).count() <= 2,
            "{steps:?}"
        );
    }
}

#[test]
fn hard_swish_and_squeeze_excite() {
    for (seed, c) in [(4, 16), (5, 88), (6, 40)] {
        let mut b = B::new(seed);
        let x = b.g.add_input("x", vec![1, 8, 6, 30]);
        let y = b.conv(x, c, 1, 1, 1);
        let three = b.scalar(3.0);
        let t = b.bin(BinaryOp::Add, y, three);
        let u = b.act(t, Activation::Clip { min: 0.0, max: 6.0 });
        let m = b.bin(BinaryOp::Mul, y, u);
        let six = b.scalar(6.0);
        let hs = b.bin(BinaryOp::Div, m, six);
        let d = b.conv(hs, c, 5, 1, c);
        let p = b.node(Op::GlobalAvgPool, vec![d]);
        let s1 = b.conv(p, c / 4, 1, 1, 1);
        let s1 = b.act(s1, Activation::Relu);
        let s2 = b.conv(s1, c, 1, 1, 1);
        let s2 = b.act(
            s2,
            Activation::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
        );
        let se = b.bin(BinaryOp::Mul, d, s2);
        let o = b.conv(se, 16, 1, 1, 1);
        let o = b.bin(BinaryOp::Add, o, o);
        let o = b.act(o, Activation::Sigmoid);
        let g = b.node(Op::GlobalMaxPool, vec![o]);
        let steps = check(b, vec![g, o]);
        // conv + the four hard-swish nodes; conv + bias + hard-sigmoid.
        assert!(steps.iter().any(|s| s.split('+').count() == 5), "{steps:?}");
        assert!(
            steps.iter().filter(|s| s.split('+').count() == 2).count() >= 2,
            "{steps:?}"
        );
    }
}

#[test]
fn pooling_concat_split_resize() {
    for (seed, c) in [(7, 32), (8, 20)] {
        let mut b = B::new(seed);
        let x = b.g.add_input("x", vec![1, 3, 26, 26]);
        let a = b.conv(x, c, 3, 1, 1);
        let a = b.act(a, Activation::LeakyRelu { alpha: 0.1 });
        let parts =
            b.g.add_node(
                "split",
                Op::Split {
                    axis: 1,
                    sizes: vec![16, c - 16],
                },
                vec![a],
                &[],
            )
            .unwrap();
        let q = b.conv(parts[1], 16, 3, 1, 1);
        let cat = b.node(Op::Concat { axis: 1 }, vec![a, q]);
        let cat2 = b.node(Op::Concat { axis: 1 }, vec![q, a]);
        let mp = Pool {
            kernel: [2, 2],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [0; 4],
            extra_end: [0, 0],
            count_include_pad: false,
        };
        let m = b.node(Op::MaxPool(mp.clone()), vec![cat]);
        let padded = Pool {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            count_include_pad: true,
            ..mp
        };
        let m2 = b.node(Op::AvgPool(padded.clone()), vec![m]);
        let m3 = b.node(
            Op::MaxPool(Pool {
                count_include_pad: false,
                pads: [0, 0, 1, 1],
                kernel: [2, 2],
                ..padded
            }),
            vec![m2],
        );
        let shape = b.g.shape(m3).to_vec();
        let r = Resize {
            mode: shadownet_ir::ResizeMode::Nearest(shadownet_ir::NearestRound::Floor),
            coord: shadownet_ir::CoordMode::Asymmetric,
            out_shape: vec![shape[0], shape[1], shape[2] * 2, shape[3] * 2],
            scales: vec![1.0, 1.0, 2.0, 2.0],
        };
        let up = b.node(Op::Resize(r), vec![m3]);
        let y = b.conv(up, 8, 3, 1, 1);
        check(b, vec![y, cat2]);
    }
}

#[test]
fn dense_layers_and_fallbacks() {
    let mut b = B::new(9);
    let x = b.g.add_input("x", vec![1, 3, 8, 8]);
    let y = b.conv(x, 32, 3, 1, 1);
    let y = b.act(y, Activation::Relu);
    let flat = b.node(
        Op::Reshape {
            shape: vec![1, 32 * 64],
        },
        vec![y],
    );
    let w = b.konst(&[32 * 64, 70]);
    let d = b.node(Op::MatMul, vec![flat, w]);
    let bias = b.konst(&[70]);
    let d = b.bin(BinaryOp::Add, d, bias);
    let d = b.act(d, Activation::Relu);
    let w2 = b.konst(&[70, 10]);
    let e = b.node(Op::MatMul, vec![d, w2]);
    let s = b.node(Op::Softmax { axis: 1 }, vec![e]);
    check(b, vec![s]);

    // Batched dense input straight from the graph input.
    let mut b = B::new(10);
    let x = b.g.add_input("x", vec![3, 40]);
    let w = b.konst(&[40, 17]);
    let d = b.node(Op::MatMul, vec![x, w]);
    let d = b.act(d, Activation::Tanh);
    check(b, vec![d]);
}
