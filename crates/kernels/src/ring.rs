//! Exact linear layers over the ring Z/2^64: the reference semantics of the hardened
//! scheme's outsourced layers, and the trusted core's own implementation of them (for the
//! one-time masks' corrections).
//!
//! Inputs are [`RingTensor`]s (u64, any value), weights are [`IntTensor`]s (i32,
//! sign-extended into the ring), every product and sum wraps modulo 2^64. Zero padding.
//! An accelerator must return exactly these values; any other is caught by the trusted
//! core's Freivalds check.
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{Conv, ConvTranspose, IntTensor, RingTensor};

use crate::conv::valid_range;

/// u64 values of im2col tile kept at once (half of a 1 MiB L2).
const TILE_VALUES: usize = 64 * 1024;

/// `c[i, j] += Σ_p a[i, p] · b[p, j]` over Z/2^64, `a` m×k (i32, row stride `lda`),
/// `b` k×n (row stride `ldb`), `c` m×n (row stride `ldc`). The inner loop is a
/// wrapping multiply-add over a row of `b`, which vectorises where the target has
/// 64-bit vector multiplies.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[i32],
    lda: usize,
    b: &[u64],
    ldb: usize,
    c: &mut [u64],
    ldc: usize,
) {
    for i in 0..m {
        let crow = &mut c[i * ldc..i * ldc + n];
        for p in 0..k {
            let w = a[i * lda + p] as i64 as u64;
            if w == 0 {
                continue;
            }
            let brow = &b[p * ldb..p * ldb + n];
            for (d, &x) in crow.iter_mut().zip(brow) {
                *d = d.wrapping_add(w.wrapping_mul(x));
            }
        }
    }
}

/// A convolution (any groups, strides, dilations, pads) over Z/2^64.
pub fn conv2d(x: &RingTensor, w: &IntTensor, c: &Conv, out_shape: &[usize]) -> RingTensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg) = (w.shape[0], w.shape[1]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let g = c.groups;
    let og = o / g;
    let hw = oh * ow;
    let k = cg * c.kernel[0] * c.kernel[1];
    let mut out = vec![0u64; n * o * hw];
    let tile = (TILE_VALUES / k.max(1)).clamp(16, 4096).min(hw.max(1));
    let mut buf = vec![0u64; k * tile];
    for b in 0..n {
        for gi in 0..g {
            let xg = &x.data[(b * cin + gi * cg) * h * wd..(b * cin + (gi + 1) * cg) * h * wd];
            let wg = &w.data[gi * og * k..(gi + 1) * og * k];
            let outg = &mut out[(b * o + gi * og) * hw..(b * o + (gi + 1) * og) * hw];
            for p0 in (0..hw).step_by(tile) {
                let len = tile.min(hw - p0);
                im2col(xg, [h, wd], cg, c, [oh, ow], p0, len, &mut buf[..k * len]);
                gemm(og, len, k, wg, k, &buf, len, &mut outg[p0..], hw);
            }
        }
    }
    RingTensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// The im2col columns (k × len) of output pixels p0..p0+len, zero in the padding (`x`: one
/// group's `cg` input planes).
#[allow(clippy::too_many_arguments)]
pub fn im2col(
    x: &[u64],
    [h, w]: [usize; 2],
    cg: usize,
    c: &Conv,
    [_, ow]: [usize; 2],
    p0: usize,
    len: usize,
    buf: &mut [u64],
) {
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let [dh, dw] = c.dilation;
    let (pt, pl) = (c.pads[0] as isize, c.pads[1] as isize);
    for ci in 0..cg {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (ci * kh + ky) * kw + kx;
                let row = &mut buf[r * len..(r + 1) * len];
                let xoff = (kx * dw) as isize - pl;
                let mut j = 0;
                let mut p = p0;
                while j < len {
                    let (oy, ox0) = (p / ow, p % ow);
                    let seg_len = (ow - ox0).min(len - j);
                    let seg = &mut row[j..j + seg_len];
                    let iy = (oy * sh + ky * dh) as isize - pt;
                    if iy < 0 || iy >= h as isize {
                        seg.fill(0);
                    } else {
                        let in_row = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let (a, b) = valid_range(ox0, seg_len, sw, xoff, w);
                        seg[..a].fill(0);
                        seg[b..].fill(0);
                        for (q, v) in seg[a..b].iter_mut().enumerate() {
                            *v = in_row[(((ox0 + a + q) * sw) as isize + xoff) as usize];
                        }
                    }
                    j += seg_len;
                    p += seg_len;
                }
            }
        }
    }
}

/// A transposed convolution (weights [C, O/g, kh, kw]) over Z/2^64.
pub fn conv_transpose2d(
    x: &RingTensor,
    w: &IntTensor,
    c: &ConvTranspose,
    out_shape: &[usize],
) -> RingTensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let og = w.shape[1];
    let g = c.groups;
    let cg = cin / g;
    let o = og * g;
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let [kh, kw] = c.kernel;
    let mut out = vec![0u64; n * o * oh * ow];
    for b in 0..n {
        for gi in 0..g {
            for ci in 0..cg {
                let ic = gi * cg + ci;
                let plane = &x.data[(b * cin + ic) * h * wd..(b * cin + ic + 1) * h * wd];
                for oc in 0..og {
                    let dst = &mut out[(b * o + gi * og + oc) * oh * ow..][..oh * ow];
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let wv = w.data[((ic * og + oc) * kh + ky) * kw + kx] as i64 as u64;
                            if wv == 0 {
                                continue;
                            }
                            for iy in 0..h {
                                let y = (iy * c.stride[0] + ky * c.dilation[0]) as isize
                                    - c.pads[0] as isize;
                                if y < 0 || y >= oh as isize {
                                    continue;
                                }
                                for ix in 0..wd {
                                    let xo = (ix * c.stride[1] + kx * c.dilation[1]) as isize
                                        - c.pads[1] as isize;
                                    if xo >= 0 && xo < ow as isize {
                                        let d = &mut dst[y as usize * ow + xo as usize];
                                        *d = d.wrapping_add(wv.wrapping_mul(plane[iy * wd + ix]));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    RingTensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// x [.., K] · W [K, M] over Z/2^64 (the dense layers' orientation).
pub fn matmul(x: &RingTensor, w: &IntTensor) -> RingTensor {
    let k = w.shape[0];
    let m = w.shape[1];
    let rows = x.data.len() / k.max(1);
    let mut out = vec![0u64; rows * m];
    for r in 0..rows {
        let xr = &x.data[r * k..(r + 1) * k];
        let orow = &mut out[r * m..(r + 1) * m];
        for (p, &xv) in xr.iter().enumerate() {
            let wrow = &w.data[p * m..(p + 1) * m];
            for (d, &wv) in orow.iter_mut().zip(wrow) {
                *d = d.wrapping_add((wv as i64 as u64).wrapping_mul(xv));
            }
        }
    }
    let mut shape = x.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    RingTensor { shape, data: out }
}

/// The result a naive loop over the definition gives, for tests of every implementation.
pub fn conv2d_naive(x: &RingTensor, w: &IntTensor, c: &Conv, out_shape: &[usize]) -> RingTensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg) = (w.shape[0], w.shape[1]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let og = o / c.groups;
    let [kh, kw] = c.kernel;
    let mut out: Vec<u64> = vec![0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            let gi = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0u64;
                    for ci in 0..cg {
                        let ic = gi * cg + ci;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize
                                    - c.pads[0] as isize;
                                let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                    - c.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv =
                                    x.data[((b * cin + ic) * h + iy as usize) * wd + ix as usize];
                                let wv = w.data[((oc * cg + ci) * kh + ky) * kw + kx] as i64 as u64;
                                acc = acc.wrapping_add(wv.wrapping_mul(xv));
                            }
                        }
                    }
                    out[((b * o + oc) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    RingTensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadownet_ir::{infer_shapes, Op};

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn ring_conv_matches_the_definition_with_full_range_values() {
        let mut s = 0x9e3779b97f4a7c15u64;
        for &(cin, o, g, k, st, pad, dil) in &[
            (3usize, 4usize, 1usize, 3usize, 1usize, 1usize, 1usize),
            (4, 8, 2, 3, 2, 1, 1),
            (6, 6, 6, 3, 1, 2, 2),
            (5, 7, 1, 1, 1, 0, 1),
        ] {
            let c = Conv {
                kernel: [k, k],
                stride: [st, st],
                pads: [pad; 4],
                dilation: [dil, dil],
                groups: g,
            };
            let x = RingTensor {
                shape: vec![1, cin, 7, 6],
                data: (0..cin * 42).map(|_| rng(&mut s)).collect(),
            };
            let w = IntTensor {
                shape: vec![o, cin / g, k, k],
                data: (0..o * cin / g * k * k)
                    .map(|_| (rng(&mut s) >> 40) as i32 - (1 << 23))
                    .collect(),
            };
            let out = infer_shapes(
                "t",
                &Op::Conv(c.clone()),
                &[x.shape.clone(), w.shape.clone()],
            )
            .unwrap();
            assert_eq!(
                conv2d(&x, &w, &c, &out[0]),
                conv2d_naive(&x, &w, &c, &out[0])
            );
        }
    }
}
