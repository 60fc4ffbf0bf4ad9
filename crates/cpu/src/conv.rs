//! Convolution, transposed convolution and matmul.
//!
//! Dense convolutions run as packed GEMM: 1×1 stride-1 convs multiply the weights by the
//! input planes directly; everything else builds the im2col matrix one cache-sized tile
//! of output pixels at a time, so the copy stays in L2 and each tile's GEMM reads it hot.
//! Depthwise convs (one input channel per group) run a direct kernel instead, since their
//! GEMMs would be too thin to pay for packing.

use shadownet_ir::{Conv, ConvTranspose, Tensor};

use shadownet_kernels::conv::{dw_plane as dw_plane_impl, im2col, DwGeom, DW_BLOCK};

use crate::gemm::{sgemm, MatRef};
use crate::par;

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

/// A 1×1 convolution: out (og × hw) += w (og × k) · x (k × hw). Threads take column
/// blocks, each a single-threaded GEMM, as the tiled path does (see `conv_tiles`).
fn pointwise_gemm(og: usize, hw: usize, k: usize, w: &[f32], x: &[f32], out: &mut [f32]) {
    let threads = if og * k * hw < crate::gemm::PARALLEL_MIN_MACS {
        1
    } else {
        par::threads()
    };
    {
        // Blocks of whole 16-float vectors, two per thread.
        let block = hw.div_ceil(2 * threads).next_multiple_of(16);
        if threads > 1 && block >= 64 && hw > block {
            return pointwise_parallel(og, hw, k, w, x, out, block);
        }
    }
    sgemm(
        og,
        hw,
        k,
        MatRef::rows(w, k),
        MatRef::rows(x, hw),
        out,
        hw,
        true,
        threads,
    );
}

fn pointwise_parallel(
    og: usize,
    hw: usize,
    k: usize,
    w: &[f32],
    x: &[f32],
    out: &mut [f32],
    block: usize,
) {
    struct OutPtr(*mut f32);
    // SAFETY: each task writes only its own columns [p0, p0 + len) of every row, so no
    // two tasks touch the same element, and `out` outlives the parallel loop.
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}
    assert!(out.len() >= og * hw && x.len() >= k * hw);
    let ptr = OutPtr(out.as_mut_ptr());
    par::for_each_index_with(
        hw.div_ceil(block),
        || (),
        |_, t| {
            let p0 = t * block;
            let len = block.min(hw - p0);
            let p = &ptr;
            // SAFETY: see OutPtr; rows are hw apart and p0 + len <= hw; columns p0.. of
            // x's k rows lie within x[p0..].
            unsafe {
                crate::gemm::sgemm_raw(
                    og,
                    len,
                    k,
                    MatRef::rows(w, k),
                    MatRef::rows(&x[p0..], hw),
                    p.0.add(p0),
                    hw,
                    true,
                )
            }
        },
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
    let threads = if og * k * hw < crate::gemm::PARALLEL_MIN_MACS {
        1
    } else {
        par::threads()
    };
    // Threads share out tiles, each a single-threaded GEMM: the `gemm` crate's own
    // threading on a tile's small GEMM ran 2.6× slower than one thread (3×3 32→36 at 32²),
    // so tiles are cut small enough for two per thread where the image allows.
    let mut tile = (TILE_FLOATS / k).clamp(64, 2048).min(hw);
    if threads > 1 {
        tile = tile.min(hw.div_ceil(2 * threads).max(64));
    }
    let ntiles = hw.div_ceil(tile);
    if ntiles < 2 * threads || threads == 1 {
        // Too few tiles to share out: let the GEMM itself use the pool.
        let mut buf = vec![0f32; k * tile];
        for t in 0..ntiles {
            let p0 = t * tile;
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
                threads,
            );
        }
        return;
    }
    conv_tiles_parallel(x, in_hw, w, og, c, out, out_hw, k, tile, ntiles);
}

#[allow(clippy::too_many_arguments)]
fn conv_tiles_parallel(
    x: &[f32],
    in_hw: [usize; 2],
    w: &[f32],
    og: usize,
    c: &Conv,
    out: &mut [f32],
    out_hw: [usize; 2],
    k: usize,
    tile: usize,
    ntiles: usize,
) {
    struct OutPtr(*mut f32);
    // SAFETY: each task writes only its own columns [p0, p0 + len) of every row, so no
    // two tasks touch the same element, and `out` outlives the parallel loop.
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}
    let hw = out_hw[0] * out_hw[1];
    assert!(out.len() >= og * hw);
    let ptr = OutPtr(out.as_mut_ptr());
    par::for_each_index_with(
        ntiles,
        || vec![0f32; k * tile],
        |buf, t| {
            let p0 = t * tile;
            let len = tile.min(hw - p0);
            im2col(x, in_hw, c, out_hw, p0, len, &mut buf[..k * len]);
            let p = &ptr;
            // SAFETY: see OutPtr; rows are hw apart and p0 + len <= hw.
            unsafe {
                crate::gemm::sgemm_raw(
                    og,
                    len,
                    k,
                    MatRef::rows(w, k),
                    MatRef::rows(buf, len),
                    p.0.add(p0),
                    hw,
                    true,
                )
            }
        },
    );
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
    par::for_each_chunk_with(
        out,
        oh * ow,
        || vec![0f32; scratch],
        |buf, plane_idx, plane| {
            let (b, oc) = (plane_idx / o, plane_idx % o);
            let ic = oc / mult;
            let xin = &x.data[(b * cin + ic) * h * wd..(b * cin + ic + 1) * h * wd];
            let wk = &w.data[oc * kh * kw..(oc + 1) * kh * kw];
            let b = bias.map_or(0.0, |t| t.data[oc]);
            dw_plane(&geom, xin, wk, b, buf, plane);
        },
    );
}

fn dw_plane(g: &DwGeom, x: &[f32], w: &[f32], bias: f32, buf: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { dw_plane_avx512(g, x, w, bias, buf, out) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dw_plane_avx2(g, x, w, bias, buf, out) };
        }
    }
    dw_plane_impl(g, x, w, bias, buf, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dw_plane_avx512(
    g: &DwGeom,
    x: &[f32],
    w: &[f32],
    bias: f32,
    buf: &mut [f32],
    out: &mut [f32],
) {
    dw_plane_impl(g, x, w, bias, buf, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dw_plane_avx2(
    g: &DwGeom,
    x: &[f32],
    w: &[f32],
    bias: f32,
    buf: &mut [f32],
    out: &mut [f32],
) {
    dw_plane_impl(g, x, w, bias, buf, out)
}

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
                par::threads(),
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
    let threads = par::threads();
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
            threads,
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
                threads,
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
