//! Exact linear layers over Z/2^64 (the hardened scheme's outsourced layers) on the host:
//! the same results as `shadownet_kernels::ring`, bit for bit.
//!
//! Convolutions are a packed GEMM, BLIS style: the weights are packed once (sign-extended
//! into the ring, panels of [`MR`] output channels), each tile of output positions is
//! im2col'd straight into panels of [`NR`] columns, and an 8×16 micro-kernel keeps its 16
//! accumulators (8 rows × two 8-lane vectors) in AVX-512 registers, one 64-bit lane
//! multiply (`vpmullq`) and add per multiply-accumulate. Tiles are shared out over the
//! pool. CPUs without AVX-512DQ run the same loop in portable Rust.
use rayon::prelude::*;
use shadownet_ir::{Conv, IntTensor, RingTensor};

use crate::par;

pub const MR: usize = 8;
pub const NR: usize = 16;
/// u64 values of packed im2col tile per worker (about half of a 1 MiB L2).
const TILE_VALUES: usize = 64 * 1024;

/// A conv's weights packed for the micro-kernel: per group, panels of MR output channels,
/// each stored reduction-step-major (`[p][r]`), sign-extended into the ring.
#[derive(Clone, Debug)]
pub struct PackedConv {
    pub conv: Conv,
    /// Output channels per group and reduction length (C/g·kh·kw).
    og: usize,
    k: usize,
    panels: usize,
    data: Vec<u64>,
}

impl PackedConv {
    pub fn new(w: &IntTensor, conv: &Conv) -> Self {
        let g = conv.groups.max(1);
        let o = w.shape[0];
        let og = o / g;
        let k = w.shape[1..].iter().product::<usize>();
        let panels = og.div_ceil(MR);
        let mut data = vec![0u64; g * panels * MR * k];
        for gi in 0..g {
            for pi in 0..panels {
                let base = (gi * panels + pi) * MR * k;
                for r in 0..MR {
                    let oc = pi * MR + r;
                    if oc >= og {
                        continue;
                    }
                    let row = &w.data[(gi * og + oc) * k..(gi * og + oc + 1) * k];
                    for (p, &v) in row.iter().enumerate() {
                        data[base + p * MR + r] = v as i64 as u64;
                    }
                }
            }
        }
        PackedConv {
            conv: conv.clone(),
            og,
            k,
            panels,
            data,
        }
    }

    fn panel(&self, group: usize, pi: usize) -> &[u64] {
        let base = (group * self.panels + pi) * MR * self.k;
        &self.data[base..base + MR * self.k]
    }
}

/// `acc[r][j] = Σ_p a[p·MR + r] · b[p·NR + j]` over Z/2^64.
fn kernel(k: usize, a: &[u64], b: &[u64], acc: &mut [[u64; NR]; MR]) {
    assert!(a.len() >= k * MR && b.len() >= k * NR);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU has AVX-512F/DQ (checked just above); the slices hold the k
            // steps the kernel reads (asserted above).
            return unsafe { kernel_avx512(k, a.as_ptr(), b.as_ptr(), acc) };
        }
    }
    for p in 0..k {
        let av = &a[p * MR..p * MR + MR];
        let bv = &b[p * NR..p * NR + NR];
        for r in 0..MR {
            for j in 0..NR {
                acc[r][j] = acc[r][j].wrapping_add(av[r].wrapping_mul(bv[j]));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn kernel_avx512(k: usize, a: *const u64, b: *const u64, acc: &mut [[u64; NR]; MR]) {
    use std::arch::x86_64::*;
    let mut c = [_mm512_setzero_si512(); 2 * MR];
    for p in 0..k {
        let b0 = _mm512_loadu_si512(b.add(p * NR) as *const _);
        let b1 = _mm512_loadu_si512(b.add(p * NR + 8) as *const _);
        let ap = a.add(p * MR);
        for r in 0..MR {
            let av = _mm512_set1_epi64(*ap.add(r) as i64);
            c[2 * r] = _mm512_add_epi64(c[2 * r], _mm512_mullo_epi64(av, b0));
            c[2 * r + 1] = _mm512_add_epi64(c[2 * r + 1], _mm512_mullo_epi64(av, b1));
        }
    }
    for r in 0..MR {
        let lo = &mut acc[r][..8];
        let mut t = [0u64; 8];
        _mm512_storeu_si512(t.as_mut_ptr() as *mut _, c[2 * r]);
        for (d, v) in lo.iter_mut().zip(t) {
            *d = d.wrapping_add(v);
        }
        _mm512_storeu_si512(t.as_mut_ptr() as *mut _, c[2 * r + 1]);
        for (d, v) in acc[r][8..].iter_mut().zip(t) {
            *d = d.wrapping_add(v);
        }
    }
}

/// im2col of output positions p0..p0+len of one group's `cg` input planes, packed in
/// panels of NR columns (`[panel][p][j]`, zero beyond `len` and in the padding). Walks
/// each (channel, tap) row of the im2col matrix in runs of one output row, so stride-1
/// layers copy contiguous input.
#[allow(clippy::too_many_arguments)]
fn im2col_packed(
    x: &[u64],
    [h, w]: [usize; 2],
    cg: usize,
    c: &Conv,
    ow: usize,
    p0: usize,
    len: usize,
    out: &mut Vec<u64>,
) {
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let [dh, dw] = c.dilation;
    let k = cg * kh * kw;
    let panels = len.div_ceil(NR);
    out.clear();
    out.resize(panels * k * NR, 0);
    let (pt, pl) = (c.pads[0] as isize, c.pads[1] as isize);
    for ci in 0..cg {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let p = (ci * kh + ky) * kw + kx;
                let xoff = (kx * dw) as isize - pl;
                let mut j = 0;
                while j < len {
                    let pos = p0 + j;
                    let (oy, ox0) = (pos / ow, pos % ow);
                    let seg = (ow - ox0).min(len - j);
                    let iy = (oy * sh + ky * dh) as isize - pt;
                    if iy >= 0 && iy < h as isize {
                        let row = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let (a, b) = shadownet_kernels::conv::valid_range(ox0, seg, sw, xoff, w);
                        for q in a..b {
                            let jj = j + q;
                            let ix = (((ox0 + q) * sw) as isize + xoff) as usize;
                            out[(jj / NR) * k * NR + p * NR + jj % NR] = row[ix];
                        }
                    }
                    j += seg;
                }
            }
        }
    }
}

/// One tile of one group: out tile [og × len] (row-major, row stride len).
#[allow(clippy::too_many_arguments)]
fn conv_tile(
    pw: &PackedConv,
    group: usize,
    xg: &[u64],
    in_hw: [usize; 2],
    ow: usize,
    p0: usize,
    len: usize,
    bp: &mut Vec<u64>,
    res: &mut Vec<u64>,
) {
    let k = pw.k;
    let cg = k / (pw.conv.kernel[0] * pw.conv.kernel[1]);
    im2col_packed(xg, in_hw, cg, &pw.conv, ow, p0, len, bp);
    res.clear();
    res.resize(pw.og * len, 0);
    for pi in 0..pw.panels {
        let a = pw.panel(group, pi);
        for (bj, b) in bp.chunks(k * NR).enumerate() {
            let mut acc = [[0u64; NR]; MR];
            kernel(k, a, b, &mut acc);
            for (r, row) in acc.iter().enumerate() {
                let oc = pi * MR + r;
                if oc >= pw.og {
                    break;
                }
                let j0 = bj * NR;
                let n = NR.min(len - j0);
                res[oc * len + j0..oc * len + j0 + n].copy_from_slice(&row[..n]);
            }
        }
    }
}

/// A convolution (any groups, strides, dilations, pads) over Z/2^64 with prepacked weights.
pub fn conv2d_packed(x: &RingTensor, pw: &PackedConv, out_shape: &[usize]) -> RingTensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let g = pw.conv.groups.max(1);
    let cg = cin / g;
    let og = pw.og;
    let o = og * g;
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let hw = oh * ow;
    let k = pw.k;
    let mut out = vec![0u64; n * o * hw];
    let tile = ((TILE_VALUES / k.max(1)) / NR * NR)
        .clamp(NR, 1024)
        .min(hw.max(1));
    let ntiles = hw.div_ceil(tile);
    let threads = if og * k * hw < crate::gemm::PARALLEL_MIN_MACS / 2 {
        1
    } else {
        par::threads()
    };
    for b in 0..n {
        for gi in 0..g {
            let xg = &x.data[(b * cin + gi * cg) * h * wd..(b * cin + (gi + 1) * cg) * h * wd];
            let outg = &mut out[(b * o + gi * og) * hw..(b * o + (gi + 1) * og) * hw];
            let place = |outg: &mut [u64], t: usize, len: usize, res: &[u64]| {
                for r in 0..og {
                    outg[r * hw + t * tile..r * hw + t * tile + len]
                        .copy_from_slice(&res[r * len..(r + 1) * len]);
                }
            };
            if threads == 1 || ntiles < 2 {
                let (mut bp, mut res) = (Vec::new(), Vec::new());
                for t in 0..ntiles {
                    let len = tile.min(hw - t * tile);
                    conv_tile(pw, gi, xg, [h, wd], ow, t * tile, len, &mut bp, &mut res);
                    place(outg, t, len, &res);
                }
            } else {
                let parts: Vec<(usize, usize, Vec<u64>)> = (0..ntiles)
                    .into_par_iter()
                    .map_init(
                        || (Vec::new(), Vec::new()),
                        |(bp, res), t| {
                            let len = tile.min(hw - t * tile);
                            conv_tile(pw, gi, xg, [h, wd], ow, t * tile, len, bp, res);
                            (t, len, std::mem::take(res))
                        },
                    )
                    .collect();
                for (t, len, res) in parts {
                    place(outg, t, len, &res);
                }
            }
        }
    }
    RingTensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// A convolution over Z/2^64 (packs the weights for this call).
pub fn conv2d(x: &RingTensor, w: &IntTensor, c: &Conv, out_shape: &[usize]) -> RingTensor {
    conv2d_packed(x, &PackedConv::new(w, c), out_shape)
}

/// x [.., K] · W [K, M] over Z/2^64: per row of x, a wrapping multiply-add over W's rows,
/// which vectorises over M (a dense layer at batch 1 reads W once: memory-bound).
pub fn matmul(x: &RingTensor, w: &IntTensor) -> RingTensor {
    let k = w.shape[0];
    let m = w.shape[1];
    let rows = x.data.len() / k.max(1);
    let mut out = vec![0u64; rows * m];
    let row_job = |r: usize, orow: &mut [u64]| {
        let xr = &x.data[r * k..(r + 1) * k];
        for (p, &xv) in xr.iter().enumerate() {
            let wrow = &w.data[p * m..(p + 1) * m];
            for (d, &wv) in orow.iter_mut().zip(wrow) {
                *d = d.wrapping_add((wv as i64 as u64).wrapping_mul(xv));
            }
        }
    };
    if rows > 1 && par::threads() > 1 && rows * k * m >= crate::gemm::PARALLEL_MIN_MACS {
        out.par_chunks_mut(m.max(1))
            .enumerate()
            .for_each(|(r, orow)| row_job(r, orow));
    } else {
        for (r, orow) in out.chunks_mut(m.max(1)).enumerate() {
            row_job(r, orow);
        }
    }
    let mut shape = x.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    RingTensor { shape, data: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn host_ring_kernels_match_the_portable_ones_bit_for_bit() {
        let mut s = 0x9e3779b97f4a7c15u64;
        for &(cin, o, g, k, st, pad, hw) in &[
            (3usize, 5usize, 1usize, 3usize, 1usize, 1usize, 9usize),
            (8, 8, 2, 3, 2, 1, 20),
            (16, 40, 1, 1, 1, 0, 70),
            (32, 33, 1, 3, 1, 1, 64),
            (6, 6, 6, 3, 1, 1, 17),
        ] {
            let c = Conv {
                kernel: [k, k],
                stride: [st, st],
                pads: [pad; 4],
                dilation: [1, 1],
                groups: g,
            };
            let x = RingTensor {
                shape: vec![1, cin, hw, hw],
                data: (0..cin * hw * hw).map(|_| rng(&mut s)).collect(),
            };
            let w = IntTensor {
                shape: vec![o, cin / g, k, k],
                data: (0..o * cin / g * k * k)
                    .map(|_| (rng(&mut s) >> 40) as i32 - (1 << 23))
                    .collect(),
            };
            let out = shadownet_ir::infer_shapes(
                "t",
                &shadownet_ir::Op::Conv(c.clone()),
                &[x.shape.clone(), w.shape.clone()],
            )
            .unwrap();
            assert_eq!(
                conv2d(&x, &w, &c, &out[0]),
                shadownet_kernels::ring::conv2d(&x, &w, &c, &out[0]),
                "{cin}->{o} g{g} {k}x{k} s{st}"
            );
        }
        let x = RingTensor {
            shape: vec![3, 50],
            data: (0..150).map(|_| rng(&mut s)).collect(),
        };
        let w = IntTensor {
            shape: vec![50, 21],
            data: (0..1050).map(|_| rng(&mut s) as i32).collect(),
        };
        assert_eq!(matmul(&x, &w), shadownet_kernels::ring::matmul(&x, &w));
    }
}
