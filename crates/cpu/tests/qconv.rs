//! The host's integer convolution (packed u8 × s8 GEMM, VNNI where present, direct
//! depthwise) gives exactly the integers of the portable kernel the trusted core runs.
use shadownet_ir::{Conv, Op, QFlavor, QLinear, QOutput, QParam, Tensor};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u32) as i32
    }
}

#[test]
fn host_qconv_matches_portable() {
    let mut r = Lcg(7);
    for case in 0..60 {
        let groups = [1, 1, 2, 0][case % 4];
        let cin = r.range(1, 6) as usize * if groups == 2 { 2 } else { 1 };
        let depthwise = groups == 0;
        let g = if depthwise { cin } else { groups };
        let o = if depthwise {
            cin
        } else {
            r.range(1, 20) as usize * g
        };
        let k = [1, 3, 5][r.range(0, 2) as usize];
        let stride = r.range(1, 2) as usize;
        let pad = r.range(0, 2) as usize;
        let (h, w) = (
            r.range(k as i32, 13) as usize,
            r.range(k as i32, 11) as usize,
        );
        let signed = case % 3 == 0;
        let (lo, hi) = if signed { (-128, 127) } else { (0, 255) };
        let zx = r.range(lo, hi);
        let x: Vec<f32> = (0..2 * cin * h * w)
            .map(|_| r.range(lo, hi) as f32)
            .collect();
        let per_channel = case % 2 == 0;
        let nw = if per_channel { o } else { 1 };
        let wz: Vec<i32> = (0..nw)
            .map(|_| if case % 5 == 0 { r.range(-3, 3) } else { 0 })
            .collect();
        let wv: Vec<f32> = (0..o * (cin / g) * k * k)
            .map(|_| r.range(-125, 125) as f32)
            .collect();
        let flavor = if case % 2 == 1 {
            QFlavor::Tflite
        } else {
            QFlavor::Onnx
        };
        let q = QLinear {
            x: QParam {
                scale: 0.02,
                zero_point: zx,
            },
            w_scale: (0..nw).map(|i| 0.001 + 0.0003 * i as f32).collect(),
            w_zero: wz,
            bias: (0..o).map(|_| r.range(-5000, 5000)).collect(),
            alpha: 1.0,
            out: QOutput::Quantized {
                y: QParam {
                    scale: 0.05,
                    zero_point: r.range(lo, hi) / 2,
                },
                min: lo,
                max: hi,
            },
            flavor,
        };
        let op = Op::QConv {
            conv: Conv {
                kernel: [k, k],
                stride: [stride, stride],
                dilation: [1, 1],
                pads: [pad, pad, pad, pad],
                groups: g,
            },
            q,
        };
        let xt = Tensor::new(vec![2, cin, h, w], x).unwrap();
        let wt = Tensor::new(vec![o, cin / g, k, k], wv).unwrap();
        let fast = shadownet_cpu::eval("q", &op, &[&xt, &wt]).unwrap();
        let slow = shadownet_kernels::eval("q", &op, &[&xt, &wt]).unwrap();
        assert_eq!(fast, slow, "case {case}: {op:?}");
        let distinct = fast[0]
            .data
            .iter()
            .map(|&v| v as i32)
            .collect::<std::collections::BTreeSet<_>>();
        assert!(distinct.len() > 2, "case {case}: degenerate output");
    }
}
