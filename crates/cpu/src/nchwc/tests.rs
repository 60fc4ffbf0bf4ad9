//! The blocked kernels against the portable NCHW kernels.
use shadownet_ir::{Conv, Tensor};

use super::conv::{Act, ConvIo, InGeom, InputKind, PackedConv, Stage};
use super::*;

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    hw: [usize; 2],
    c: Conv,
    planar: bool,
}

fn check(case: &Case, seed: u64, act: Option<Act>, residual: bool) {
    let Case {
        n,
        cin,
        cout,
        hw,
        ref c,
        planar,
    } = *case;
    let depthwise = c.groups > 1;
    let cg = if depthwise { 1 } else { cin };
    let [kh, kw] = c.kernel;
    let x = Tensor::new(
        vec![n, cin, hw[0], hw[1]],
        rand(n * cin * hw[0] * hw[1], seed),
    )
    .unwrap();
    let w = Tensor::new(vec![cout, cg, kh, kw], rand(cout * cg * kh * kw, seed ^ 1)).unwrap();
    let b = Tensor::new(vec![cout], rand(cout, seed ^ 2)).unwrap();
    let y = shadownet_kernels::eval("c", &shadownet_ir::Op::Conv(c.clone()), &[&x, &w, &b])
        .unwrap()
        .remove(0);
    let (oh, ow) = (y.shape[2], y.shape[3]);
    let r = rand(y.len(), seed ^ 3);
    let mut want = y.data.clone();
    if residual {
        want.iter_mut().zip(&r).for_each(|(v, r)| *v += r);
    }
    if let Some(a) = act {
        want.iter_mut().for_each(|v| *v = a.apply(*v));
    }
    let halo = c.pads.iter().copied().max().unwrap();
    let kind = if planar {
        InputKind::Planar
    } else {
        InputKind::Blocked
    };
    let mut p = PackedConv::new(c, &w.data, &w.shape, Some(&b.data), cin, ow, kind).unwrap();
    if residual {
        p.epilogue.stages.push(Stage::AddResidual);
    }
    if let Some(a) = act {
        p.epilogue.stages.push(Stage::Act(a));
    }
    let (xin, ing) = if planar {
        let pg = Planar {
            n,
            c: cin,
            h: hw[0],
            w: hw[1],
            halo,
        };
        let mut buf = vec![0f32; pg.len()];
        to_planar(&x.data, &pg, &mut buf);
        (buf, InGeom::Planar(pg))
    } else {
        let g = Geom::new([n, cin, hw[0], hw[1]], halo);
        let mut buf = vec![f32::NAN; g.len()];
        to_blocked(&x.data, &g, &mut buf);
        (buf, InGeom::Blocked(g))
    };
    let og = Geom::new([n, cout, oh, ow], 1);
    let rg = Geom::new([n, cout, oh, ow], 0);
    let mut rbuf = vec![0f32; rg.len()];
    to_blocked(&r, &rg, &mut rbuf);
    for portable in [false, true] {
        let mut out = vec![f32::NAN; og.len()];
        let io = ConvIo {
            inp: xin.as_ptr(),
            in_geom: ing,
            out: out.as_mut_ptr(),
            out_geom: og,
            res: rbuf.as_ptr(),
            res_geom: residual.then_some(rg),
        };
        let run = || unsafe { p.run(&io) };
        if portable {
            portable_only(run);
        } else {
            crate::team::with_team(2, run);
        }
        // Halo and padded channels are zeros.
        for cb in 0..og.cb() {
            for y in -1..=oh as isize {
                for xx in -1..=ow as isize {
                    let inside = y >= 0 && xx >= 0 && y < oh as isize && xx < ow as isize;
                    for l in 0..B {
                        let v = out[og.at(0, cb, y, xx) + l];
                        if !inside || cb * B + l >= cout {
                            assert_eq!(v, 0.0, "halo/pad at cb {cb} y {y} x {xx} lane {l}");
                        }
                    }
                }
            }
        }
        let mut got = vec![0f32; y.len()];
        from_blocked(&out, &og, &mut got);
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(
            err < 1e-5,
            "portable={portable} cin {cin} cout {cout} {hw:?} {c:?} planar={planar}: err {err}"
        );
    }
}

fn conv(k: usize, s: usize, p: [usize; 4], d: usize, groups: usize) -> Conv {
    Conv {
        kernel: [k, k],
        stride: [s, s],
        dilation: [d, d],
        pads: p,
        groups,
    }
}

#[test]
fn dense_convs_match() {
    let mut seed = 0;
    for &(cin, cout) in &[(3, 8), (16, 16), (8, 40), (35, 70), (64, 64), (20, 100)] {
        for &(k, s, pad, d) in &[
            (3, 1, 1, 1),
            (1, 1, 0, 1),
            (3, 2, 1, 1),
            (5, 1, 2, 1),
            (3, 1, 2, 2),
            (1, 2, 0, 1),
        ] {
            for &hw in &[[7, 7], [9, 13], [32, 32], [4, 30]] {
                seed += 1;
                let c = conv(k, s, [pad; 4], d, 1);
                let case = Case {
                    n: 1,
                    cin,
                    cout,
                    hw,
                    c,
                    planar: false,
                };
                check(&case, seed, Some(Act::Relu), seed % 3 == 0);
                if cin <= 8 {
                    check(
                        &Case {
                            planar: true,
                            ..case
                        },
                        seed,
                        None,
                        false,
                    );
                }
            }
        }
    }
    // Asymmetric padding, batch of two, every activation.
    let c = Conv {
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [0, 0, 1, 1],
        groups: 1,
    };
    for (i, a) in [
        Act::LeakyRelu(0.1),
        Act::Clip(0.0, 6.0),
        Act::HardSigmoid(0.2, 0.5),
        Act::HardSwish,
        Act::Other(shadownet_ir::Activation::Sigmoid),
    ]
    .into_iter()
    .enumerate()
    {
        check(
            &Case {
                n: 2,
                cin: 17,
                cout: 33,
                hw: [10, 11],
                c: c.clone(),
                planar: false,
            },
            100 + i as u64,
            Some(a),
            true,
        );
    }
}

#[test]
fn depthwise_convs_match() {
    let mut seed = 1000;
    for &ch in &[8, 16, 40, 88] {
        for &(k, s, pad) in &[(3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2)] {
            for &hw in &[[7, 7], [12, 96], [3, 5]] {
                seed += 1;
                let case = Case {
                    n: 1,
                    cin: ch,
                    cout: ch,
                    hw,
                    c: conv(k, s, [pad; 4], 1, ch),
                    planar: false,
                };
                check(&case, seed, Some(Act::Relu), seed % 2 == 0);
            }
        }
    }
}

#[test]
fn blocked_pooling_matches_the_portable_kernel_with_nans() {
    use super::ops::{pool, CPtr, Ptr};
    use shadownet_ir::Pool;
    let mut seed = 7;
    for &(c, h, w) in &[(16, 9, 13), (20, 8, 8), (3, 12, 5)] {
        for &(k, s, pads, extra) in &[
            (2, 2, [0; 4], [0; 2]),
            (3, 1, [1; 4], [0; 2]),
            (3, 2, [0, 0, 1, 1], [1, 1]),
            (2, 1, [0, 0, 1, 1], [0; 2]),
        ] {
            for max in [true, false] {
                seed += 1;
                let mut x = Tensor::new(vec![1, c, h, w], rand(c * h * w, seed)).unwrap();
                // A few NaNs, which max pooling must carry through.
                for i in (0..x.len()).step_by(37) {
                    x.data[i] = f32::NAN;
                }
                let p = Pool {
                    kernel: [k, k],
                    stride: [s, s],
                    dilation: [1, 1],
                    pads,
                    extra_end: extra,
                    count_include_pad: seed % 2 == 0,
                };
                let op = if max {
                    shadownet_ir::Op::MaxPool(p.clone())
                } else {
                    shadownet_ir::Op::AvgPool(p.clone())
                };
                let want = shadownet_kernels::eval("p", &op, &[&x]).unwrap().remove(0);
                let xg = Geom::new([1, c, h, w], 1);
                let og = Geom::new([1, c, want.shape[2], want.shape[3]], 1);
                let mut xb = AlignedBuf::zeros(xg.len());
                to_blocked(&x.data, &xg, xb.as_mut_slice());
                for portable in [false, true] {
                    let mut ob = AlignedBuf::zeros(og.len());
                    let out = Ptr(ob.as_mut_slice().as_mut_ptr());
                    let run =
                        || unsafe { pool(CPtr(xb.as_slice().as_ptr()), &xg, out, &og, &p, max) };
                    if portable {
                        portable_only(run);
                    } else {
                        run();
                    }
                    let mut got = vec![0f32; want.len()];
                    from_blocked(ob.as_slice(), &og, &mut got);
                    for (a, b) in got.iter().zip(&want.data) {
                        assert!(
                            (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                            "{a} vs {b} (k {k} s {s} pads {pads:?} max {max} portable {portable})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn reorders_match_the_scalar_loops() {
    // Odd channel counts (a partial last block), widths around the 16-pixel tile, halos.
    for (n, c, h, w, halo) in [
        (1, 37, 3, 19, 1),
        (2, 16, 5, 16, 0),
        (1, 5, 2, 33, 2),
        (1, 77, 7, 7, 1),
        (1, 512, 14, 14, 1),
    ] {
        let g = Geom::new([n, c, h, w], halo);
        let x = rand(n * c * h * w, (c * w) as u64);
        let mut fast = vec![f32::NAN; g.len()];
        let mut slow = vec![f32::NAN; g.len()];
        to_blocked(&x, &g, &mut fast);
        crate::nchwc::portable_only(|| to_blocked(&x, &g, &mut slow));
        assert_eq!(fast.len(), slow.len());
        assert!(
            fast.iter()
                .zip(&slow)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "to_blocked {n}x{c}x{h}x{w} halo {halo}"
        );
        let mut back = vec![f32::NAN; x.len()];
        from_blocked(&fast, &g, &mut back);
        assert_eq!(back, x, "from_blocked {n}x{c}x{h}x{w} halo {halo}");
        let mut back_slow = vec![f32::NAN; x.len()];
        crate::nchwc::portable_only(|| from_blocked(&fast, &g, &mut back_slow));
        assert_eq!(back_slow, x);
    }
}

#[test]
fn a_large_dense_layer_gives_the_same_bits_whether_one_thread_or_two_run_it() {
    use super::dense::PackedDense;
    use super::ops::{CPtr, Ptr};
    // MiniVGG's fc1 (4096 × 512): far above the size split over threads. When another
    // caller held the team, this layer once ran on one thread in a different summation
    // order, and the same inference came out with other low bits.
    let (k, n) = (4096, 512);
    let w = rand(k * n, 7);
    let d = PackedDense::new(&w, k, n);
    for m in [1, 3] {
        let x = rand(m * k, 8);
        let run = |threads: usize| {
            let mut y = vec![0f32; m * n];
            let yp = Ptr(y.as_mut_ptr());
            let go = || unsafe { d.run(CPtr(x.as_ptr()), m, yp) };
            if threads > 1 {
                crate::team::with_team(threads, go);
            } else {
                go();
            }
            y
        };
        let one = run(1);
        for (i, g) in one.iter().enumerate() {
            let (r, j) = (i / n, i % n);
            let want: f64 = (0..k)
                .map(|t| x[r * k + t] as f64 * w[t * n + j] as f64)
                .sum();
            assert!(
                (*g as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()),
                "{g} vs {want}"
            );
        }
        for threads in [2, 3] {
            assert_eq!(run(threads), one, "m {m}, {threads} threads");
        }
    }
}
