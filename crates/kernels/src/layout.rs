//! Data movement: transpose, slice, concat, split, gather, pad, expand, tile, resize,
//! depth/space rearrangements.
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{CoordMode, NearestRound, PadMode, Resize, ResizeMode, Tensor};

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// out[c] = src[base + Σ c_d·strides_d] over every coordinate c of `out_shape`.
fn strided_copy(src: &[f32], out_shape: &[usize], base: isize, st: &[isize]) -> Vec<f32> {
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let r = out_shape.len();
    if r == 0 {
        out.push(src[base as usize]);
        return out;
    }
    let inner = out_shape[r - 1];
    let is = st[r - 1];
    let mut coord = vec![0usize; r - 1];
    let mut off = base;
    loop {
        if is == 1 {
            out.extend_from_slice(&src[off as usize..off as usize + inner]);
        } else {
            for j in 0..inner as isize {
                out.push(src[(off + j * is) as usize]);
            }
        }
        let mut d = r - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            coord[d] += 1;
            off += st[d];
            if coord[d] < out_shape[d] {
                break;
            }
            off -= st[d] * coord[d] as isize;
            coord[d] = 0;
        }
    }
}

pub fn transpose(x: &Tensor, perm: &[usize], out_shape: &[usize]) -> Tensor {
    let s = strides(&x.shape);
    let st: Vec<isize> = perm.iter().map(|&p| s[p] as isize).collect();
    Tensor {
        shape: out_shape.to_vec(),
        data: strided_copy(&x.data, out_shape, 0, &st),
    }
}

pub fn expand(x: &Tensor, out_shape: &[usize]) -> Tensor {
    let st: Vec<isize> = crate::elementwise::broadcast_strides(&x.shape, out_shape)
        .into_iter()
        .map(|v| v as isize)
        .collect();
    Tensor {
        shape: out_shape.to_vec(),
        data: strided_copy(&x.data, out_shape, 0, &st),
    }
}

pub fn slice(
    x: &Tensor,
    axes: &[usize],
    starts: &[usize],
    steps: &[i64],
    out_shape: &[usize],
) -> Tensor {
    let s = strides(&x.shape);
    let mut st: Vec<isize> = s.iter().map(|&v| v as isize).collect();
    let mut base = 0isize;
    for k in 0..axes.len() {
        let a = axes[k];
        base += starts[k] as isize * s[a] as isize;
        st[a] = steps[k] as isize * s[a] as isize;
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: strided_copy(&x.data, out_shape, base, &st),
    }
}

pub fn concat(xs: &[&Tensor], axis: usize, out_shape: &[usize]) -> Tensor {
    let outer: usize = out_shape[..axis].iter().product();
    let inner: usize = out_shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let len = x.shape[axis] * inner;
            out.extend_from_slice(&x.data[o * len..(o + 1) * len]);
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

pub fn split(x: &Tensor, axis: usize, out_shapes: &[Vec<usize>]) -> Vec<Tensor> {
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let total = x.shape[axis] * inner;
    let mut start = 0;
    out_shapes
        .iter()
        .map(|s| {
            let len = s[axis] * inner;
            let mut data = Vec::with_capacity(outer * len);
            for o in 0..outer {
                data.extend_from_slice(&x.data[o * total + start..o * total + start + len]);
            }
            start += len;
            Tensor {
                shape: s.clone(),
                data,
            }
        })
        .collect()
}

pub fn gather(x: &Tensor, axis: usize, indices: &[usize], out_shape: &[usize]) -> Tensor {
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let n = x.shape[axis];
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for o in 0..outer {
        for &i in indices {
            let b = (o * n + i) * inner;
            out.extend_from_slice(&x.data[b..b + inner]);
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

pub fn tile(x: &Tensor, out_shape: &[usize]) -> Tensor {
    let maps: Vec<Vec<Option<usize>>> = out_shape
        .iter()
        .zip(&x.shape)
        .map(|(&o, &i)| (0..o).map(|c| Some(c % i)).collect())
        .collect();
    index_map_copy(x, &maps, 0.0, out_shape)
}

pub fn pad(
    x: &Tensor,
    pads: &[(usize, usize)],
    mode: PadMode,
    value: f32,
    out_shape: &[usize],
) -> Tensor {
    let maps: Vec<Vec<Option<usize>>> = x
        .shape
        .iter()
        .zip(pads)
        .map(|(&n, &(before, after))| {
            (0..n + before + after)
                .map(|c| {
                    let i = c as isize - before as isize;
                    let n = n as isize;
                    match mode {
                        _ if (0..n).contains(&i) => Some(i as usize),
                        PadMode::Constant => None,
                        PadMode::Edge => Some(i.clamp(0, n - 1) as usize),
                        PadMode::Reflect => {
                            if n == 1 {
                                return Some(0);
                            }
                            let period = 2 * (n - 1);
                            let m = i.rem_euclid(period);
                            Some(if m < n { m } else { period - m } as usize)
                        }
                    }
                })
                .collect()
        })
        .collect();
    index_map_copy(x, &maps, value, out_shape)
}

/// out[c] = x[map_0[c_0], map_1[c_1], …], or `fill` where any map gives None.
fn index_map_copy(
    x: &Tensor,
    maps: &[Vec<Option<usize>>],
    fill: f32,
    out_shape: &[usize],
) -> Tensor {
    let s = strides(&x.shape);
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let r = out_shape.len();
    if n == 0 {
        return Tensor {
            shape: out_shape.to_vec(),
            data: out,
        };
    }
    let mut coord = vec![0usize; r];
    'outer: loop {
        let mut off = 0usize;
        let mut hole = false;
        for d in 0..r {
            match maps[d][coord[d]] {
                Some(i) => off += i * s[d],
                None => hole = true,
            }
        }
        out.push(if hole { fill } else { x.data[off] });
        let mut d = r;
        loop {
            if d == 0 {
                break 'outer;
            }
            d -= 1;
            coord[d] += 1;
            if coord[d] < out_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

fn source_coord(coord: CoordMode, x: usize, scale: f32, in_len: usize, out_len: usize) -> f32 {
    let x = x as f32;
    match coord {
        CoordMode::HalfPixel => (x + 0.5) / scale - 0.5,
        CoordMode::PytorchHalfPixel => {
            if out_len > 1 {
                (x + 0.5) / scale - 0.5
            } else {
                0.0
            }
        }
        CoordMode::AlignCorners => {
            if out_len > 1 {
                x * (in_len as f32 - 1.0) / (out_len as f32 - 1.0)
            } else {
                0.0
            }
        }
        CoordMode::Asymmetric => x / scale,
        CoordMode::TfHalfPixelForNn => (x + 0.5) / scale,
    }
}

/// Resampling is separable, so each resized axis is done in its own pass.
pub fn resize(x: &Tensor, r: &Resize) -> Tensor {
    let mut cur = x.clone();
    for d in 0..x.rank() {
        let (in_len, out_len) = (cur.shape[d], r.out_shape[d]);
        if in_len == out_len && r.scales[d] == 1.0 {
            continue;
        }
        let outer: usize = cur.shape[..d].iter().product();
        let inner: usize = cur.shape[d + 1..].iter().product();
        let mut shape = cur.shape.clone();
        shape[d] = out_len;
        let mut out = vec![0f32; outer * out_len * inner];
        // (i0, i1, weight of i1) for every output position.
        let taps: Vec<(usize, usize, f32)> = (0..out_len)
            .map(|o| {
                let s = source_coord(r.coord, o, r.scales[d], in_len, out_len);
                let last = in_len as f32 - 1.0;
                match r.mode {
                    ResizeMode::Nearest(round) => {
                        let i = match round {
                            NearestRound::RoundPreferFloor => {
                                if s - libm::floorf(s) == 0.5 {
                                    libm::floorf(s)
                                } else {
                                    libm::roundf(s)
                                }
                            }
                            NearestRound::RoundPreferCeil => libm::floorf(s + 0.5),
                            NearestRound::Floor => libm::floorf(s),
                            NearestRound::Ceil => libm::ceilf(s),
                        };
                        let i = i.clamp(0.0, last) as usize;
                        (i, i, 0.0)
                    }
                    ResizeMode::Linear => {
                        let s = s.clamp(0.0, last);
                        let i0 = libm::floorf(s) as usize;
                        let i1 = (i0 + 1).min(in_len - 1);
                        (i0, i1, s - i0 as f32)
                    }
                }
            })
            .collect();
        for o in 0..outer {
            let src = &cur.data[o * in_len * inner..(o + 1) * in_len * inner];
            let dst = &mut out[o * out_len * inner..(o + 1) * out_len * inner];
            for (k, &(i0, i1, w)) in taps.iter().enumerate() {
                let d = &mut dst[k * inner..(k + 1) * inner];
                let a = &src[i0 * inner..(i0 + 1) * inner];
                if w == 0.0 {
                    d.copy_from_slice(a);
                } else {
                    let b = &src[i1 * inner..(i1 + 1) * inner];
                    for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                        *d = a + (b - a) * w;
                    }
                }
            }
        }
        cur = Tensor { shape, data: out };
    }
    cur
}

pub fn depth_to_space(x: &Tensor, block: usize, crd: bool, out_shape: &[usize]) -> Tensor {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let b = block;
    let oc = c / (b * b);
    // View x as 6-D and permute, as the ONNX spec defines it.
    let (shape6, perm) = if crd {
        ([n, oc, b, b, h, w], [0, 1, 4, 2, 5, 3])
    } else {
        ([n, b, b, oc, h, w], [0, 3, 4, 1, 5, 2])
    };
    let s = strides(&shape6);
    let st: Vec<isize> = perm.iter().map(|&p| s[p] as isize).collect();
    let out6: Vec<usize> = perm.iter().map(|&p| shape6[p]).collect();
    Tensor {
        shape: out_shape.to_vec(),
        data: strided_copy(&x.data, &out6, 0, &st),
    }
}

pub fn space_to_depth(x: &Tensor, block: usize, out_shape: &[usize]) -> Tensor {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let b = block;
    let shape6 = [n, c, h / b, b, w / b, b];
    let perm = [0, 3, 5, 1, 2, 4];
    let s = strides(&shape6);
    let st: Vec<isize> = perm.iter().map(|&p| s[p] as isize).collect();
    let out6: Vec<usize> = perm.iter().map(|&p| shape6[p]).collect();
    Tensor {
        shape: out_shape.to_vec(),
        data: strided_copy(&x.data, &out6, 0, &st),
    }
}
