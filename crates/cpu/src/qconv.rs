//! Integer convolution for the host.
//!
//! Dense and grouped convs run as a u8 × s8 GEMM: activations (offset to unsigned bytes)
//! are packed four reduction steps per 32-bit lane, 32 output pixels per panel, and the
//! weights (minus their zero points, signed bytes) four per 32-bit word, so one AVX-512
//! VNNI `vpdpbusd` does 64 multiply-adds into i32 (runtime detection; a portable
//! microkernel on the same packing otherwise). The offset is taken back out with the
//! weights' row sums: Σ (x − zx)·w = Σ (x + off)·w − (zx + off)·Σ w, exact in i32.
//! Depthwise convs run a direct i32 kernel per channel. Threads share out row blocks
//! (GEMM) or channels (depthwise). Anything the packing cannot represent (weights
//! outside i8 after their zero point, inputs beyond a byte) falls back to the portable
//! kernel, so results never depend on the path: every path computes the same integers.
use rayon::prelude::*;
use shadownet_ir::{Conv, QLinear, Tensor};
use shadownet_kernels::conv::valid_range;
use shadownet_kernels::quant::Requant;

/// Output channels per micro-tile.
const MR: usize = 8;
/// Output pixels per packed panel: two 16-lane vectors.
const NB: usize = 32;

pub fn qconv2d(x: &Tensor, w: &Tensor, c: &Conv, q: &QLinear, out_shape: &[usize]) -> Tensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg) = (w.shape[0], w.shape[1]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let g = c.groups;
    let og = o / g;
    let p = oh * ow;
    let req = Requant::new(q, o);
    let zx = q.x.zero_point;
    let mut out = vec![0f32; n * o * p];
    if out.is_empty() {
        return Tensor {
            shape: out_shape.to_vec(),
            data: out,
        };
    }
    // Small convs stay on this thread, as the float convs do: waking workers costs more
    // than they save (under load, far more). `with_min_len` of everything keeps a rayon
    // iterator from splitting at all.
    let macs = n * o * p * (cg * c.kernel[0] * c.kernel[1]);
    let min_len = if macs >= crate::gemm::PARALLEL_MIN_MACS && crate::par::threads() > 1 {
        1
    } else {
        usize::MAX
    };
    // One vectorised pass each turns the exact-integer floats into integers; everything
    // after works on integers.
    let xi: Vec<i32> = x.data.iter().map(|&v| v as i32).collect();
    let wi: Vec<i32> = w.data.iter().map(|&v| v as i32).collect();
    // Depthwise windows of up to 8x8 taps run direct; larger ones go through the GEMM.
    if cg == 1 && og == 1 && c.kernel[0] * c.kernel[1] <= 64 {
        let k = c.kernel[0] * c.kernel[1];
        out.par_chunks_mut(p.max(1))
            .with_min_len(min_len)
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(acc, xc), (plane, dst)| {
                    let ch = plane % o;
                    xc.clear();
                    xc.extend(
                        xi[plane * h * wd..(plane + 1) * h * wd]
                            .iter()
                            .map(|&v| v.wrapping_sub(zx)),
                    );
                    let zw = pick(&q.w_zero, ch);
                    let mut taps = [0i32; 64];
                    let taps = &mut taps[..k];
                    for (t, &v) in taps.iter_mut().zip(&wi[ch * k..(ch + 1) * k]) {
                        *t = v.wrapping_sub(zw);
                    }
                    depthwise_plane(xc, taps, c, [h, wd], [oh, ow], acc);
                    req.apply_row(ch, acc, bias_of(q, ch), dst);
                },
            );
        return Tensor {
            shape: out_shape.to_vec(),
            data: out,
        };
    }
    let lo = xi.iter().copied().fold(zx, i32::min);
    let hi = xi.iter().copied().fold(zx, i32::max);
    let off = if lo < 0 { 128 } else { 0 };
    // Zero points far outside a byte (only hand-built graphs have them) take the
    // portable path, which wraps like the reference engines' i32 arithmetic.
    if !(-128..=255).contains(&zx) {
        return shadownet_kernels::quant::qconv2d(x, w, c, q, out_shape);
    }
    let k = cg * c.kernel[0] * c.kernel[1];
    let k4 = k.div_ceil(4);
    let blocks = og.div_ceil(MR);
    // Weights of every group, packed per row block: [k4][MR] words of four signed bytes
    // (weight minus its zero point), with each row's sum for the offset correction.
    let mut wp = vec![0i32; g * blocks * k4 * MR];
    let mut rowsum = vec![0i32; o];
    let mut fits = lo + off >= 0 && hi + off <= 255;
    let mut rowbuf = vec![0u8; k4 * 4];
    for (ch, row) in wi.chunks(k).enumerate() {
        let zw = pick(&q.w_zero, ch);
        let (gi, r) = (ch / og, ch % og);
        let base = (gi * blocks + r / MR) * k4 * MR + r % MR;
        // Separate simple loops, so each vectorises.
        let sum: i32 = row
            .iter()
            .map(|&v| v.wrapping_sub(zw))
            .fold(0, i32::wrapping_add);
        let rlo = row.iter().map(|&v| v.wrapping_sub(zw)).fold(0, i32::min);
        let rhi = row.iter().map(|&v| v.wrapping_sub(zw)).fold(0, i32::max);
        fits &= rlo >= -128 && rhi <= 127;
        for (d, &v) in rowbuf.iter_mut().zip(row) {
            *d = v.wrapping_sub(zw) as i8 as u8;
        }
        for (kk, word) in rowbuf.chunks_exact(4).enumerate() {
            wp[base + kk * MR] = i32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        rowsum[ch] = sum;
    }
    if !fits {
        return shadownet_kernels::quant::qconv2d(x, w, c, q, out_shape);
    }
    let bytes: Vec<u8> = xi.iter().map(|&v| (v + off) as u8).collect();
    let kernel = microkernel();
    for gi in 0..g {
        let wp = &wp[gi * blocks * k4 * MR..(gi + 1) * blocks * k4 * MR];
        let rowsum = &rowsum[gi * og..(gi + 1) * og];
        for b in 0..n {
            let xg = &bytes[(b * cin + gi * cg) * h * wd..(b * cin + (gi + 1) * cg) * h * wd];
            let panels = pack_input(xg, c, [h, wd], [oh, ow], k4, (zx + off) as u8, min_len);
            let dst = &mut out[(b * o + gi * og) * p..(b * o + (gi + 1) * og) * p];
            dst.par_chunks_mut(MR * p)
                .with_min_len(min_len)
                .enumerate()
                .for_each(|(blk, rows)| {
                    let wblk = &wp[blk * k4 * MR..(blk + 1) * k4 * MR];
                    let mut acc = [0i32; MR * NB];
                    for (pb, panel) in panels.chunks(k4 * NB * 4).enumerate() {
                        kernel(k4, wblk, panel, &mut acc);
                        let p0 = pb * NB;
                        let np = NB.min(p - p0);
                        for (rr, row) in rows.chunks_mut(p).enumerate() {
                            let ch = gi * og + blk * MR + rr;
                            let fix = bias_of(q, ch)
                                .wrapping_sub((zx + off).wrapping_mul(rowsum[blk * MR + rr]));
                            let a = &acc[rr * NB..rr * NB + np];
                            req.apply_row(ch, a, fix, &mut row[p0..p0 + np]);
                        }
                    }
                });
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

fn pick<T: Copy>(v: &[T], c: usize) -> T {
    if v.len() == 1 {
        v[0]
    } else {
        v[c]
    }
}

fn bias_of(q: &QLinear, ch: usize) -> i32 {
    q.bias.get(ch).copied().unwrap_or(0)
}

/// Panels of 32 output pixels: for each group of four reduction steps, 32 lanes of four
/// unsigned bytes (the input, already offset, or `pad` where the window leaves the input).
/// Pixels past the end and reduction steps past `k` are zero bytes, which contribute
/// nothing.
fn pack_input(
    x: &[u8],
    c: &Conv,
    [h, wd]: [usize; 2],
    [oh, ow]: [usize; 2],
    k4: usize,
    pad: u8,
    min_len: usize,
) -> Vec<u8> {
    let p = oh * ow;
    let nblk = p.div_ceil(NB);
    let [kh, kw] = c.kernel;
    let cg = x.len() / (h * wd).max(1);
    let k = cg * kh * kw;
    let direct = c.kernel == [1, 1] && c.stride == [1, 1] && c.pads == [0; 4];
    let mut out = vec![0u8; nblk * k4 * NB * 4];
    out.par_chunks_mut(k4 * NB * 4)
        .with_min_len(min_len)
        .enumerate()
        .for_each(|(pb, panel)| {
            let p0 = pb * NB;
            let np = NB.min(p - p0);
            for kk in 0..k {
                let at = (kk / 4) * NB * 4 + kk % 4;
                let (ci, r) = (kk / (kh * kw), kk % (kh * kw));
                let plane = &x[ci * h * wd..(ci + 1) * h * wd];
                if direct {
                    // 1x1, stride 1, no padding: the im2col row is the input plane itself.
                    let lanes = panel[at..].chunks_mut(4);
                    for (d, &v) in lanes.zip(&plane[p0..p0 + np]) {
                        d[0] = v;
                    }
                    continue;
                }
                let dy = (r / kw * c.dilation[0]) as isize - c.pads[0] as isize;
                let dx = (r % kw * c.dilation[1]) as isize - c.pads[1] as isize;
                // Output pixels of the panel, one output row segment at a time: the input
                // row is fixed per segment and the valid columns are one range.
                let (mut j, mut oy, mut ox) = (0, p0 / ow, p0 % ow);
                while j < np {
                    let seg = (ow - ox).min(np - j);
                    let iy = (oy * c.stride[0]) as isize + dy;
                    let dst = &mut panel[at + j * 4..];
                    if iy < 0 || iy as usize >= h {
                        for q in 0..seg {
                            dst[q * 4] = pad;
                        }
                    } else {
                        let row = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                        let sw = c.stride[1];
                        let (a, b) = valid_range(ox, seg, sw, dx, wd);
                        for q in (0..a).chain(b..seg) {
                            dst[q * 4] = pad;
                        }
                        if b > a {
                            let s0 = (((ox + a) * sw) as isize + dx) as usize;
                            let src = row[s0..].iter().step_by(sw).take(b - a);
                            for (d, &v) in dst[a * 4..].chunks_mut(4).zip(src) {
                                d[0] = v;
                            }
                        }
                    }
                    j += seg;
                    ox = 0;
                    oy += 1;
                }
            }
        });
    out
}

/// One depthwise channel: acc[oy][ox] = Σ taps w · xc, where `xc` is the plane minus its
/// zero point (so the padding, which holds the zero point, adds nothing).
fn depthwise_plane(
    xc: &[i32],
    w: &[i32],
    c: &Conv,
    [h, wd]: [usize; 2],
    [oh, ow]: [usize; 2],
    acc: &mut Vec<i32>,
) {
    acc.clear();
    acc.resize(oh * ow, 0);
    let [kh, kw] = c.kernel;
    let (sh, sw) = (c.stride[0], c.stride[1]);
    for oy in 0..oh {
        let arow = &mut acc[oy * ow..(oy + 1) * ow];
        for ky in 0..kh {
            let iy = (oy * sh + ky * c.dilation[0]) as isize - c.pads[0] as isize;
            if iy < 0 || iy as usize >= h {
                continue;
            }
            let row = &xc[iy as usize * wd..(iy as usize + 1) * wd];
            for kx in 0..kw {
                let wv = w[ky * kw + kx];
                if wv == 0 {
                    continue;
                }
                let xoff = (kx * c.dilation[1]) as isize - c.pads[1] as isize;
                let (a, b) = valid_range(0, ow, sw, xoff, wd);
                if a >= b {
                    continue;
                }
                let s0 = ((a * sw) as isize + xoff) as usize;
                if sw == 1 {
                    for (d, &v) in arow[a..b].iter_mut().zip(&row[s0..s0 + (b - a)]) {
                        *d = d.wrapping_add(wv.wrapping_mul(v));
                    }
                } else {
                    for (j, d) in arow[a..b].iter_mut().enumerate() {
                        *d = d.wrapping_add(wv.wrapping_mul(row[s0 + j * sw]));
                    }
                }
            }
        }
    }
}

/// acc[r][j] = Σ over `k4` word steps of the four byte products of weight word
/// `w[kk][r]` and activation lane `u[kk][j]`.
type Microkernel = fn(usize, &[i32], &[u8], &mut [i32; MR * NB]);

fn microkernel() -> Microkernel {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = vnni::detect() {
        return k;
    }
    portable_tile
}

fn portable_tile(k4: usize, w: &[i32], u: &[u8], acc: &mut [i32; MR * NB]) {
    acc.fill(0);
    for kk in 0..k4 {
        let lanes = &u[kk * NB * 4..(kk + 1) * NB * 4];
        for r in 0..MR {
            let wb = w[kk * MR + r].to_le_bytes().map(|b| b as i8 as i32);
            let row = &mut acc[r * NB..(r + 1) * NB];
            for (a, l) in row.iter_mut().zip(lanes.chunks_exact(4)) {
                let s = l[0] as i32 * wb[0]
                    + l[1] as i32 * wb[1]
                    + l[2] as i32 * wb[2]
                    + l[3] as i32 * wb[3];
                *a = a.wrapping_add(s);
            }
        }
    }
}

/// The AVX-512 VNNI microkernel. Its intrinsics are stable from Rust 1.89; older
/// compilers build the portable microkernel only.
#[cfg(target_arch = "x86_64")]
#[rustversion::since(1.89)]
#[allow(clippy::incompatible_msrv)]
mod vnni {
    use super::{Microkernel, MR, NB};
    use std::arch::x86_64::*;

    pub fn detect() -> Option<Microkernel> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(tile as Microkernel)
    }

    fn tile(k4: usize, w: &[i32], u: &[u8], acc: &mut [i32; MR * NB]) {
        assert!(w.len() >= k4 * MR && u.len() >= k4 * NB * 4);
        // SAFETY: `detect` only hands this out when the CPU has the features, and the
        // slices hold every element the kernel reads (checked above).
        unsafe { tile_avx512(k4, w.as_ptr(), u.as_ptr(), acc) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_avx512(k4: usize, w: *const i32, u: *const u8, acc: &mut [i32; MR * NB]) {
        let mut c = [[_mm512_setzero_si512(); 2]; MR];
        for kk in 0..k4 {
            let u0 = _mm512_loadu_si512(u.add(kk * NB * 4) as *const _);
            let u1 = _mm512_loadu_si512(u.add(kk * NB * 4 + 64) as *const _);
            for (r, cr) in c.iter_mut().enumerate() {
                let wv = _mm512_set1_epi32(*w.add(kk * MR + r));
                cr[0] = _mm512_dpbusd_epi32(cr[0], u0, wv);
                cr[1] = _mm512_dpbusd_epi32(cr[1], u1, wv);
            }
        }
        for (r, cr) in c.iter().enumerate() {
            _mm512_storeu_si512(acc.as_mut_ptr().add(r * NB) as *mut _, cr[0]);
            _mm512_storeu_si512(acc.as_mut_ptr().add(r * NB + 16) as *mut _, cr[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[rustversion::before(1.89)]
mod vnni {
    pub fn detect() -> Option<super::Microkernel> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microkernels_agree() {
        let k4 = 7;
        let w: Vec<i32> = (0..k4 * MR)
            .map(|i| (i as i32).wrapping_mul(0x9e37_79b9u32 as i32))
            .collect();
        let u: Vec<u8> = (0..k4 * NB * 4).map(|i| (i * 37 % 256) as u8).collect();
        let mut a = [0i32; MR * NB];
        let mut b = [0i32; MR * NB];
        portable_tile(k4, &w, &u, &mut a);
        microkernel()(k4, &w, &u, &mut b);
        assert_eq!(a, b);
        assert!(a.iter().any(|&v| v != 0));
    }
}
