// Shared by the portable (`shadownet-kernels`) and host (`shadownet-cpu`) kernel tests:
// the including file brings `eval` into scope.
//
// Every conv path (pointwise GEMM, tiled im2col, depthwise, grouped, transposed) against
// a naive loop over the definition.
use proptest::prelude::*;
use shadownet_ir::{Conv, ConvTranspose, Op, Pool, Tensor};

fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn naive_conv(x: &Tensor, w: &Tensor, b: &Tensor, c: &Conv, out: &[usize]) -> Vec<f32> {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg) = (w.shape[0], w.shape[1]);
    let og = o / c.groups;
    let mut y = vec![0f32; out.iter().product()];
    for bn in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for oy in 0..out[2] {
                for ox in 0..out[3] {
                    let mut acc = b.data[oc] as f64;
                    for ci in 0..cg {
                        for ky in 0..c.kernel[0] {
                            for kx in 0..c.kernel[1] {
                                let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize
                                    - c.pads[0] as isize;
                                let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                    - c.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x.data[((bn * cin + g * cg + ci) * h + iy as usize) * wd
                                    + ix as usize];
                                let wv =
                                    w.data[((oc * cg + ci) * c.kernel[0] + ky) * c.kernel[1] + kx];
                                acc += (xv * wv) as f64;
                            }
                        }
                    }
                    y[((bn * o + oc) * out[2] + oy) * out[3] + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// The largest error relative to the largest expected value, or to 1 where every value
/// is smaller: inputs and weights lie in [-1, 1], so rounding is relative to the terms'
/// size (about 1), and a case whose few outputs happen to cancel near zero must not
/// count its rounding as a relative error.
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn conv_matches_naive(
        n in 1usize..3, cg in 1usize..6, og in 1usize..7, groups in 1usize..4,
        h in 1usize..12, w in 1usize..12, kh in 1usize..4, kw in 1usize..4,
        sh in 1usize..3, sw in 1usize..3, dh in 1usize..3, dw in 1usize..3,
        pads in proptest::array::uniform4(0usize..3), seed in any::<u64>(), depthwise in any::<bool>(),
    ) {
        let (cg, groups) = if depthwise { (1, groups + cg) } else { (cg, groups) };
        let c = Conv { kernel: [kh, kw], stride: [sh, sw], dilation: [dh, dw], pads, groups };
        let x = rand_tensor(&[n, cg * groups, h, w], seed);
        let wt = rand_tensor(&[og * groups, cg, kh, kw], seed ^ 1);
        let b = rand_tensor(&[og * groups], seed ^ 2);
        let op = Op::Conv(c.clone());
        match eval("c", &op, &[&x, &wt, &b]) {
            Ok(y) => {
                let want = naive_conv(&x, &wt, &b, &c, &y[0].shape);
                prop_assert!(max_rel(&y[0].data, &want) < 1e-5, "rel err {}", max_rel(&y[0].data, &want));
            }
            // Only a kernel larger than the padded input may be refused.
            Err(_) => prop_assert!(h + pads[0] + pads[2] < dh * (kh - 1) + 1 || w + pads[1] + pads[3] < dw * (kw - 1) + 1),
        }
    }

    #[test]
    fn conv_transpose_is_adjoint_of_conv(
        cg in 1usize..4, og in 1usize..4, h in 2usize..8, w in 2usize..8, k in 1usize..4,
        s in 1usize..3, d in 1usize..3, p in 0usize..2, seed in any::<u64>(),
    ) {
        // <conv(x, W), y> == <x, convT(y, W)> for matching strides/pads: checks the
        // transposed kernel without a second naive implementation.
        let c = Conv { kernel: [k, k], stride: [s, s], dilation: [d, d], pads: [p; 4], groups: 1 };
        let x = rand_tensor(&[1, cg, h, w], seed);
        let wt = rand_tensor(&[og, cg, k, k], seed ^ 1);
        let Ok(y) = eval("c", &Op::Conv(c), &[&x, &wt]) else { return Ok(()) };
        let y = &y[0];
        let (oh, ow) = (y.shape[2], y.shape[3]);
        let full_h = s * (oh - 1) + (k - 1) * d + 1;
        let full_w = s * (ow - 1) + (k - 1) * d + 1;
        let out_pad = [h + 2 * p - full_h, w + 2 * p - full_w];
        prop_assume!(out_pad[0] < s.max(d) && out_pad[1] < s.max(d));
        let ct = ConvTranspose { kernel: [k, k], stride: [s, s], dilation: [d, d], pads: [p; 4], output_padding: out_pad, groups: 1 };
        let r = rand_tensor(&y.shape, seed ^ 3);
        let xt = eval("t", &Op::ConvTranspose(ct), &[&r, &wt]).unwrap();
        prop_assert_eq!(&xt[0].shape, &x.shape);
        let lhs: f64 = y.data.iter().zip(&r.data).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.data.iter().zip(&xt[0].data).map(|(a, b)| (a * b) as f64).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
    }
}

#[test]
fn large_conv_uses_parallel_tiles_and_matches() {
    // Big enough for several im2col tiles per thread.
    let c = Conv {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [1; 4],
        groups: 1,
    };
    let x = rand_tensor(&[1, 16, 40, 40], 7);
    let w = rand_tensor(&[24, 16, 3, 3], 8);
    let b = rand_tensor(&[24], 9);
    let y = eval("c", &Op::Conv(c.clone()), &[&x, &w, &b]).unwrap();
    let want = naive_conv(&x, &w, &b, &c, &y[0].shape);
    assert!(max_rel(&y[0].data, &want) < 1e-5);
}

#[test]
fn avg_pool_count_include_pad_both_ways() {
    let x = Tensor::new(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let mut p = Pool {
        kernel: [2, 2],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [1, 1, 0, 0],
        extra_end: [0, 0],
        count_include_pad: true,
    };
    let y = eval("p", &Op::AvgPool(p.clone()), &[&x]).unwrap();
    assert_eq!(y[0].data, vec![0.25, 0.75, 1.0, 2.5]);
    p.count_include_pad = false;
    let y = eval("p", &Op::AvgPool(p), &[&x]).unwrap();
    assert_eq!(y[0].data, vec![1.0, 1.5, 2.0, 2.5]);
}

#[test]
fn eval_rejects_inconsistent_inputs() {
    let c = Conv {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [0; 4],
        groups: 1,
    };
    let x = rand_tensor(&[1, 4, 5, 5], 1);
    let w = rand_tensor(&[2, 3, 3, 3], 2);
    assert!(eval("c", &Op::Conv(c), &[&x, &w]).is_err());
}

fn naive_pool(x: &Tensor, k: [usize; 2], s: [usize; 2], max: bool, out: &[usize]) -> Vec<f32> {
    let (h, w) = (x.shape[2], x.shape[3]);
    let mut y = Vec::new();
    for plane in 0..x.shape[0] * x.shape[1] {
        for oy in 0..out[2] {
            for ox in 0..out[3] {
                let vals: Vec<f32> = (0..k[0])
                    .flat_map(|ky| (0..k[1]).map(move |kx| (oy * s[0] + ky, ox * s[1] + kx)))
                    .map(|(iy, ix)| x.data[plane * h * w + iy * w + ix])
                    .collect();
                y.push(if max {
                    if vals.iter().any(|v| v.is_nan()) {
                        f32::NAN
                    } else {
                        vals.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    }
                } else {
                    vals.iter().sum::<f32>() / vals.len() as f32
                });
            }
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Non-overlapping windows (the fast path) and overlapping ones (the general path),
    /// odd sizes that leave a remainder, and a NaN that max pooling must carry through.
    #[test]
    fn pooling_matches_the_definition(
        k in 1usize..4, overlap in 0usize..2, h in 3usize..12, w in 3usize..12,
        c in 1usize..4, max in any::<bool>(), nan in any::<bool>(), seed in 0u64..1000,
    ) {
        let s = k.saturating_sub(overlap).max(1);
        prop_assume!(k <= h && k <= w);
        let mut x = rand_tensor(&[1, c, h, w], seed);
        if nan {
            x.data[(seed as usize * 7) % (c * h * w)] = f32::NAN;
        }
        let p = Pool {
            kernel: [k, k],
            stride: [s, s],
            dilation: [1, 1],
            pads: [0; 4],
            extra_end: [0, 0],
            count_include_pad: false,
        };
        let op = if max { Op::MaxPool(p) } else { Op::AvgPool(p) };
        let y = eval("p", &op, &[&x]).unwrap();
        let want = naive_pool(&x, [k, k], [s, s], max, &y[0].shape);
        prop_assert_eq!(y[0].data.len(), want.len());
        for (a, b) in y[0].data.iter().zip(&want) {
            prop_assert!(
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{} vs {}", a, b
            );
        }
    }
}
