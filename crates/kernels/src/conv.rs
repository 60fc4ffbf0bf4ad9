//! Convolution, transposed convolution and matmul.
//!
//! Dense convolutions run as packed GEMM: 1×1 stride-1 convs multiply the weights by the
//! input planes directly; everything else builds the im2col matrix one cache-sized tile
//! of output pixels at a time, so the copy stays in L2 and each tile's GEMM reads it hot.
//! Depthwise convs (one input channel per group) run a direct kernel instead, since their
//! GEMMs would be too thin to pay for packing.
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{Conv, ConvTranspose, Tensor};

use crate::gemm::{sgemm, MatRef};

/// Floats of im2col tile kept per worker: about half of a 1 MiB L2.
const TILE_FLOATS: usize = 128 * 1024;

pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    c: &Conv,
    out_shape: &[usize],
) -> Tensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg) = (w.shape[0], w.shape[1]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let g = c.groups;
    let og = o / g;
    let hw = oh * ow;
    let mut out = vec![0f32; n * o * hw];
    if cg == 1 && g == cin {
        depthwise(x, w, bias, c, &mut out, [oh, ow]);
        return Tensor {
            shape: out_shape.to_vec(),
            data: out,
        };
    }
    if let Some(b) = bias {
        for plane in 0..n * o {
            out[plane * hw..(plane + 1) * hw].fill(b.data[plane % o]);
        }
    }
    let k = cg * c.kernel[0] * c.kernel[1];
    let pointwise = c.kernel == [1, 1] && c.stride == [1, 1] && c.pads == [0; 4];
    for b in 0..n {
        for gi in 0..g {
            let xg = &x.data[(b * cin + gi * cg) * h * wd..(b * cin + (gi + 1) * cg) * h * wd];
            let wg = &w.data[gi * og * k..(gi + 1) * og * k];
            let outg = &mut out[(b * o + gi * og) * hw..(b * o + (gi + 1) * og) * hw];
            if pointwise {
                pointwise_gemm(og, hw, k, wg, xg, outg);
            } else {
                conv_tiles(xg, [h, wd], wg, og, c, outg, [oh, ow]);
            }
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// A 1×1 convolution: out (og × hw) += w (og × k) · x (k × hw).
fn pointwise_gemm(og: usize, hw: usize, k: usize, w: &[f32], x: &[f32], out: &mut [f32]) {
    sgemm(
        og,
        hw,
        k,
        MatRef::rows(w, k),
        MatRef::rows(x, hw),
        out,
        hw,
        true,
    );
}

/// One group of one image through tiled im2col + GEMM, accumulating into `out` (og × oh·ow).
fn conv_tiles(
    x: &[f32],
    in_hw: [usize; 2],
    w: &[f32],
    og: usize,
    c: &Conv,
    out: &mut [f32],
    out_hw: [usize; 2],
) {
    let k = x.len() / (in_hw[0] * in_hw[1]) * c.kernel[0] * c.kernel[1];
    let hw = out_hw[0] * out_hw[1];
    let tile = (TILE_FLOATS / k).clamp(64, 2048).min(hw);
    let mut buf = vec![0f32; k * tile];
    for p0 in (0..hw).step_by(tile) {
        let len = tile.min(hw - p0);
        im2col(x, in_hw, c, out_hw, p0, len, &mut buf[..k * len]);
        // Columns p0.. of every output row: a strided block starting at p0.
        sgemm(
            og,
            len,
            k,
            MatRef::rows(w, k),
            MatRef::rows(&buf, len),
            &mut out[p0..],
            hw,
            true,
        );
    }
}

/// Fills `buf` (k × len, row-major) with the im2col columns of output pixels p0..p0+len.
pub fn im2col(
    x: &[f32],
    in_hw: [usize; 2],
    c: &Conv,
    out_hw: [usize; 2],
    p0: usize,
    len: usize,
    buf: &mut [f32],
) {
    let [h, w] = in_hw;
    let ow = out_hw[1];
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let [dh, dw] = c.dilation;
    let (pt, pl) = (c.pads[0] as isize, c.pads[1] as isize);
    let cg = x.len() / (h * w);
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
                    let oy = p / ow;
                    let ox0 = p % ow;
                    let seg_len = (ow - ox0).min(len - j);
                    let seg = &mut row[j..j + seg_len];
                    let iy = (oy * sh + ky * dh) as isize - pt;
                    if iy < 0 || iy >= h as isize {
                        seg.fill(0.0);
                    } else {
                        let in_row = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let (a, b) = valid_range(ox0, seg_len, sw, xoff, w);
                        seg[..a].fill(0.0);
                        seg[b..].fill(0.0);
                        if a == b {
                            // The whole segment falls in the padding.
                        } else if sw == 1 {
                            let s = ((ox0 + a) as isize + xoff) as usize;
                            seg[a..b].copy_from_slice(&in_row[s..s + (b - a)]);
                        } else {
                            for (q, v) in seg[a..b].iter_mut().enumerate() {
                                *v = in_row[(((ox0 + a + q) * sw) as isize + xoff) as usize];
                            }
                        }
                    }
                    j += seg_len;
                    p += seg_len;
                }
            }
        }
    }
}

/// For outputs ox0..ox0+len, the sub-range [a, b) (relative to ox0) whose input column
/// ox*stride + off falls inside [0, w).
pub fn valid_range(ox0: usize, len: usize, stride: usize, off: isize, w: usize) -> (usize, usize) {
    let s = stride as isize;
    // first ox with ox*s + off >= 0
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    // last ox with ox*s + off <= w-1
    let hi_incl = (w as isize - 1 - off).div_euclid(s);
    let a = (lo - ox0 as isize).clamp(0, len as isize) as usize;
    let b = (hi_incl + 1 - ox0 as isize).clamp(a as isize, len as isize) as usize;
    (a, b)
}

/// Direct depthwise kernel: output channel oc reads input channel oc / multiplier.
///
/// Each input plane is first copied into zero-padded, stride-deinterleaved "phase" planes,
/// so that every kernel tap reads a contiguous run of the phase plane for a whole output
/// row; the row is then accumulated in registers 16 outputs at a time.
fn depthwise(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    c: &Conv,
    out: &mut [f32],
    out_hw: [usize; 2],
) {
    let (cin, h, wd) = (x.shape[1], x.shape[2], x.shape[3]);
    let o = w.shape[0];
    let mult = o / cin;
    let [oh, ow] = out_hw;
    let [kh, kw] = c.kernel;
    let geom = DwGeom {
        in_hw: [h, wd],
        out_hw,
        kernel: c.kernel,
        stride: c.stride,
        dilation: c.dilation,
        pads: [c.pads[0], c.pads[1]],
        // Padded extent actually read by the windows.
        ph: (oh - 1) * c.stride[0] + (kh - 1) * c.dilation[0] + 1,
        pwp: ((ow - 1) * c.stride[1] + (kw - 1) * c.dilation[1] + 1).div_ceil(c.stride[1]),
    };
    // Slack past the last phase lets every row block read a full SIMD width.
    let scratch = geom.ph * geom.pwp * c.stride[1] + DW_BLOCK;
    let mut buf = vec![0f32; scratch];
    for (plane_idx, plane) in out.chunks_mut((oh * ow).max(1)).enumerate() {
        let (b, oc) = (plane_idx / o, plane_idx % o);
        let ic = oc / mult;
        let xin = &x.data[(b * cin + ic) * h * wd..(b * cin + ic + 1) * h * wd];
        let wk = &w.data[oc * kh * kw..(oc + 1) * kh * kw];
        let b = bias.map_or(0.0, |t| t.data[oc]);
        dw_plane(&geom, xin, wk, b, &mut buf, plane);
    }
}

pub struct DwGeom {
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pads: [usize; 2],
    pub ph: usize,
    pub pwp: usize,
}

/// One output plane of a depthwise conv (`buf`: scratch of at least
/// `ph·pwp·stride + DW_BLOCK` floats). Inlined so a host wrapper compiled for wider
/// vectors gets its own copy.
#[inline(always)]
pub fn dw_plane(g: &DwGeom, x: &[f32], w: &[f32], bias: f32, buf: &mut [f32], out: &mut [f32]) {
    let [h, wd] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [pt, pl] = g.pads;
    let (ph, pwp) = (g.ph, g.pwp);
    // Phase p holds padded columns p, p + sw, p + 2·sw, …
    for p in 0..sw {
        let phase = &mut buf[p * ph * pwp..(p + 1) * ph * pwp];
        for y in 0..ph {
            let row = &mut phase[y * pwp..(y + 1) * pwp];
            let iy = y as isize - pt as isize;
            if iy < 0 || iy >= h as isize {
                row.fill(0.0);
                continue;
            }
            let src = &x[iy as usize * wd..(iy as usize + 1) * wd];
            // Columns j with 0 <= j·sw + p − pl < wd come from the input, the rest are padding.
            let (a, b) = valid_range(0, pwp, sw, p as isize - pl as isize, wd);
            row[..a].fill(0.0);
            row[b..].fill(0.0);
            if a < b {
                let first = (a * sw + p) - pl;
                if sw == 1 {
                    row[a..b].copy_from_slice(&src[first..first + (b - a)]);
                } else {
                    for (v, s) in row[a..b].iter_mut().zip(src[first..].iter().step_by(sw)) {
                        *v = *s;
                    }
                }
            }
        }
    }
    // Offset of every tap into `buf`, relative to output pixel (0, 0): divisions are far
    // too slow for the inner loop.
    let taps = kh * kw;
    let mut tap_off = Vec::with_capacity(taps);
    for ky in 0..kh {
        for kx in 0..kw {
            let col = kx * dw;
            tap_off.push((col % sw) * ph * pwp + ky * dh * pwp + col / sw);
        }
    }
    let w = &w[..taps];
    // Several independent SIMD accumulators hide the add latency; narrow rows use fewer
    // so that less of each block is wasted past the row end.
    if ow >= 48 {
        dw_rows::<64>(&tap_off, w, bias, buf, out, [oh, ow], sh * pwp);
    } else if ow >= 24 {
        dw_rows::<32>(&tap_off, w, bias, buf, out, [oh, ow], sh * pwp);
    } else {
        dw_rows::<16>(&tap_off, w, bias, buf, out, [oh, ow], sh * pwp);
    }
}

#[inline(always)]
fn dw_rows<const B: usize>(
    tap_off: &[usize],
    w: &[f32],
    bias: f32,
    buf: &[f32],
    out: &mut [f32],
    out_hw: [usize; 2],
    row_step: usize,
) {
    let [oh, ow] = out_hw;
    for oy in 0..oh {
        let orow = &mut out[oy * ow..(oy + 1) * ow];
        let row_base = oy * row_step;
        let mut ox0 = 0;
        while ox0 < ow {
            // Lanes past the row end read slack or the next row; only n lanes are stored.
            let n = B.min(ow - ox0);
            let mut acc = [bias; B];
            for (&off, &wv) in tap_off.iter().zip(w) {
                let start = off + row_base + ox0;
                let src: &[f32; B] = match buf.get(start..start + B).and_then(|s| s.try_into().ok())
                {
                    Some(s) => s,
                    None => continue,
                };
                for i in 0..B {
                    acc[i] += wv * src[i];
                }
            }
            if n == B {
                let dst: &mut [f32; B] = match (&mut orow[ox0..ox0 + B]).try_into() {
                    Ok(d) => d,
                    Err(_) => break,
                };
                *dst = acc;
            } else {
                orow[ox0..ox0 + n].copy_from_slice(&acc[..n]);
            }
            ox0 += n;
        }
    }
}

/// The widest row block (see `dw_rows`): scratch slack so every block reads in bounds.
pub const DW_BLOCK: usize = 64;

/// Transposed convolution as GEMM + col2im: cols = Wᵀ·X, then each column is scattered
/// into the output window it came from.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    c: &ConvTranspose,
    out_shape: &[usize],
) -> Tensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let og = w.shape[1];
    let g = c.groups;
    let cg = cin / g;
    let o = og * g;
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let [kh, kw] = c.kernel;
    let kk = og * kh * kw;
    let hw = h * wd;
    let mut out = vec![0f32; n * o * oh * ow];
    if let Some(b) = bias {
        for plane in 0..n * o {
            out[plane * oh * ow..(plane + 1) * oh * ow].fill(b.data[plane % o]);
        }
    }
    let mut cols = vec![0f32; kk * hw];
    for b in 0..n {
        for gi in 0..g {
            let xg = &x.data[(b * cin + gi * cg) * hw..(b * cin + (gi + 1) * cg) * hw];
            // W_g is cg × kk row-major; we need its transpose.
            let wg = &w.data[gi * cg * kk..(gi + 1) * cg * kk];
            sgemm(
                kk,
                hw,
                cg,
                MatRef::transposed(wg, kk),
                MatRef::rows(xg, hw),
                &mut cols,
                hw,
                false,
            );
            for oc in 0..og {
                let plane = &mut out
                    [(b * o + gi * og + oc) * oh * ow..(b * o + gi * og + oc + 1) * oh * ow];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let col = &cols[((oc * kh + ky) * kw + kx) * hw..][..hw];
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
                                    plane[y as usize * ow + xo as usize] += col[iy * wd + ix];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// numpy matmul with broadcast batch axes.
pub fn matmul(a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Tensor {
    let a_shape: Vec<usize> = if a.rank() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b_shape: Vec<usize> = if b.rank() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k) = (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1]);
    let n = b_shape[b_shape.len() - 1];
    let a_batch = &a_shape[..a_shape.len() - 2];
    let b_batch = &b_shape[..b_shape.len() - 2];
    let batch = shadownet_ir::broadcast_shapes(a_batch, b_batch).unwrap_or_default();
    let nb: usize = batch.iter().product();
    let mut out = vec![0f32; nb * m * n];
    if b_batch.iter().product::<usize>() == 1
        && m * nb > 1
        && a_batch.iter().product::<usize>() == nb
    {
        // A dense layer over a batch: fold the batch into M for one big GEMM.
        sgemm(
            nb * m,
            n,
            k,
            MatRef::rows(&a.data, k),
            MatRef::rows(&b.data, n),
            &mut out,
            n,
            false,
        );
    } else {
        for bi in 0..nb {
            let ai = broadcast_index(bi, &batch, a_batch);
            let bj = broadcast_index(bi, &batch, b_batch);
            sgemm(
                m,
                n,
                k,
                MatRef::rows(&a.data[ai * m * k..(ai + 1) * m * k], k),
                MatRef::rows(&b.data[bj * k * n..(bj + 1) * k * n], n),
                &mut out[bi * m * n..(bi + 1) * m * n],
                n,
                false,
            );
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// Maps a flat index over the broadcast `full` shape to the flat index in `part`.
fn broadcast_index(mut flat: usize, full: &[usize], part: &[usize]) -> usize {
    let off = full.len() - part.len();
    let mut idx = 0;
    let mut mul = 1;
    for d in (0..full.len()).rev() {
        let coord = flat % full[d];
        flat /= full[d];
        if d >= off {
            let pd = part[d - off];
            if pd != 1 {
                idx += coord * mul;
            }
            mul *= pd;
        }
    }
    idx
}
