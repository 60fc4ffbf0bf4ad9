//! Windowed pooling over NCHW planes.
use alloc::vec;

use shadownet_ir::{Pool, Tensor};

pub fn pool2d(x: &Tensor, p: &Pool, max: bool, out_shape: &[usize]) -> Tensor {
    let mut out = vec![0f32; out_shape.iter().product()];
    pool2d_planes(
        &x.data,
        [x.shape[2], x.shape[3]],
        p,
        max,
        [out_shape[2], out_shape[3]],
        &mut out,
    );
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// Pools every plane of `x` (planes of `in_hw`) into the matching plane of `out` (planes
/// of `out_hw`): the host hands each thread a run of planes.
pub fn pool2d_planes(
    x: &[f32],
    in_hw: [usize; 2],
    p: &Pool,
    max: bool,
    out_hw: [usize; 2],
    out: &mut [f32],
) {
    let [h, w] = in_hw;
    let [oh, ow] = out_hw;
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let (pt, pl) = (p.pads[0] as isize, p.pads[1] as isize);
    // Windows are clipped to the explicitly padded extent for count_include_pad; the
    // ceil-mode extra never counts (ONNX Runtime's convention).
    let (hp, wp) = ((h + p.pads[2]) as isize, (w + p.pads[3]) as isize);
    // Non-overlapping windows with no padding (2×2 stride 2, the common case) lie wholly
    // inside the image: a plain loop without bounds checks, four times faster.
    let tiled = p.kernel == p.stride
        && p.pads == [0; 4]
        && p.extra_end == [0; 2]
        && p.dilation == [1, 1]
        && oh * sh <= h
        && ow * sw <= w;
    if tiled {
        for (plane, o) in out.chunks_mut((oh * ow).max(1)).enumerate() {
            let xin = &x[plane * h * w..(plane + 1) * h * w];
            tiled_plane(xin, w, [kh, kw], max, o, ow);
        }
        return;
    }
    for (plane, o) in out.chunks_mut((oh * ow).max(1)).enumerate() {
        let xin = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * sh) as isize - pt;
                let x0 = (ox * sw) as isize - pl;
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                let mut count = 0usize;
                let mut padded_count = 0usize;
                for ky in 0..kh {
                    let iy = y0 + (ky * dh) as isize;
                    if iy >= hp {
                        break;
                    }
                    let row_in = iy >= 0 && iy < h as isize;
                    for kx in 0..kw {
                        let ix = x0 + (kx * dw) as isize;
                        if ix >= wp {
                            break;
                        }
                        padded_count += 1;
                        if row_in && ix >= 0 && ix < w as isize {
                            let v = xin[iy as usize * w + ix as usize];
                            if max {
                                // NaN propagates like ONNX Runtime's max pooling.
                                if v > acc || v.is_nan() {
                                    acc = v;
                                }
                            } else {
                                acc += v;
                            }
                            count += 1;
                        }
                    }
                }
                o[oy * ow + ox] = if max {
                    acc
                } else {
                    let div = if p.count_include_pad {
                        padded_count
                    } else {
                        count
                    };
                    if div == 0 {
                        0.0
                    } else {
                        acc / div as f32
                    }
                };
            }
        }
    }
}

/// One output plane of a pooling whose windows tile the input without padding.
fn tiled_plane(xin: &[f32], w: usize, [kh, kw]: [usize; 2], max: bool, o: &mut [f32], ow: usize) {
    // The same NaN-propagating step as the general path.
    let step = |acc: f32, v: f32| if v > acc || v.is_nan() { v } else { acc };
    let div = (kh * kw) as f32;
    for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
        let rows = &xin[oy * kh * w..(oy * kh + kh) * w];
        for (ox, out) in orow.iter_mut().enumerate() {
            let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
            for r in rows.chunks_exact(w) {
                for &v in &r[ox * kw..ox * kw + kw] {
                    acc = if max { step(acc, v) } else { acc + v };
                }
            }
            *out = if max { acc } else { acc / div };
        }
    }
}

pub fn global_pool(x: &Tensor, max: bool, out_shape: &[usize]) -> Tensor {
    let spatial: usize = x.shape[2..].iter().product();
    let planes = x.shape[0] * x.shape[1];
    let mut out = vec![0f32; planes];
    for (i, o) in out.iter_mut().enumerate() {
        let s = &x.data[i * spatial..(i + 1) * spatial];
        *o = if max {
            s.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        } else {
            s.iter().sum::<f32>() / spatial as f32
        };
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}
