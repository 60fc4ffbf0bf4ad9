//! Normalisation, softmax and reductions.
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{ReduceOp, Tensor};

pub fn batch_norm(x: &Tensor, p: [&Tensor; 4], eps: f32) -> Tensor {
    let (a, b) = batch_norm_coeffs(p, eps);
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut out = x.data.clone();
    for (i, plane) in out.chunks_mut(inner.max(1)).enumerate() {
        let ch = i % c;
        for v in plane {
            *v = *v * a[ch] + b[ch];
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data: out,
    }
}

pub fn instance_norm(x: &Tensor, scale: &Tensor, bias: &Tensor, eps: f32) -> Tensor {
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut out = x.data.clone();
    for (i, plane) in out.chunks_mut(inner.max(1)).enumerate() {
        let ch = i % c;
        normalize(plane, eps);
        for v in plane.iter_mut() {
            *v = *v * scale.data[ch] + bias.data[ch];
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data: out,
    }
}

pub fn layer_norm(
    x: &Tensor,
    axis: usize,
    scale: &Tensor,
    bias: Option<&Tensor>,
    eps: f32,
) -> Tensor {
    let inner: usize = x.shape[axis..].iter().product();
    let mut out = x.data.clone();
    for row in out.chunks_mut(inner.max(1)) {
        normalize(row, eps);
        for (j, v) in row.iter_mut().enumerate() {
            *v = *v * scale.data[j] + bias.map_or(0.0, |b| b.data[j]);
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data: out,
    }
}

fn normalize(v: &mut [f32], eps: f32) {
    let n = v.len() as f32;
    let mean = v.iter().sum::<f32>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    let inv = 1.0 / libm::sqrtf(var + eps);
    for x in v {
        *x = (*x - mean) * inv;
    }
}

/// Softmax (or log-softmax) along `axis`.
pub fn softmax(x: &Tensor, axis: usize, log: bool) -> Tensor {
    let outer: usize = x.shape[..axis].iter().product();
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut out = x.data.clone();
    let mut buf = vec![0f32; n];
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            for k in 0..n {
                buf[k] = out[base + k * inner];
            }
            let m = buf.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in buf.iter_mut() {
                *v = libm::expf(*v - m);
                sum += *v;
            }
            for k in 0..n {
                out[base + k * inner] = if log {
                    out[base + k * inner] - m - libm::logf(sum)
                } else {
                    buf[k] / sum
                };
            }
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data: out,
    }
}

pub fn reduce(x: &Tensor, op: ReduceOp, axes: &[usize], out_shape: &[usize]) -> Tensor {
    let r = x.rank();
    // Output index of each input element: reduced axes get stride 0.
    let mut kept_strides = vec![0usize; r];
    let mut acc = 1;
    for d in (0..r).rev() {
        if !axes.contains(&d) {
            kept_strides[d] = acc;
            acc *= x.shape[d];
        }
    }
    let n_out: usize = acc;
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let init = match op {
        ReduceOp::Max => f32::NEG_INFINITY,
        ReduceOp::Min => f32::INFINITY,
        ReduceOp::Prod => 1.0,
        _ => 0.0,
    };
    let mut out = vec![init; n_out];
    let mut coord = vec![0usize; r];
    let mut oi = 0usize;
    for &v in &x.data {
        let o = &mut out[oi];
        match op {
            ReduceOp::Mean | ReduceOp::Sum => *o += v,
            ReduceOp::SumSquare | ReduceOp::L2 => *o += v * v,
            ReduceOp::Max => *o = o.max(v),
            ReduceOp::Min => *o = o.min(v),
            ReduceOp::Prod => *o *= v,
        }
        for d in (0..r).rev() {
            coord[d] += 1;
            oi += kept_strides[d];
            if coord[d] < x.shape[d] {
                break;
            }
            oi -= kept_strides[d] * coord[d];
            coord[d] = 0;
        }
    }
    match op {
        ReduceOp::Mean => out.iter_mut().for_each(|v| *v /= count as f32),
        ReduceOp::L2 => out.iter_mut().for_each(|v| *v = libm::sqrtf(*v)),
        _ => {}
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// Per-channel `y = x * a + b` coefficients of an inference BatchNorm.
pub fn batch_norm_coeffs(p: [&Tensor; 4], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let [scale, bias, mean, var] = p;
    scale
        .data
        .iter()
        .enumerate()
        .map(|(c, &s)| {
            let a = s / libm::sqrtf(var.data[c] + eps);
            (a, bias.data[c] - mean.data[c] * a)
        })
        .unzip()
}
