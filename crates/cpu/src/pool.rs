//! Pooling with the planes shared out over the pool; the per-plane work is the portable
//! kernel's.
use shadownet_ir::{Pool, Tensor};

use crate::par;

pub fn pool2d(x: &Tensor, p: &Pool, max: bool, out_shape: &[usize]) -> Tensor {
    let in_hw = [x.shape[2], x.shape[3]];
    let out_hw = [out_shape[2], out_shape[3]];
    let (ip, op) = (in_hw[0] * in_hw[1], out_hw[0] * out_hw[1]);
    let mut out = vec![0f32; out_shape.iter().product()];
    // Runs of planes about 16 K outputs long, so small layers stay on one thread.
    let planes = (16 * 1024 / op.max(1)).max(1);
    par::for_each_chunk(&mut out, planes * op.max(1), |i, o| {
        let first = i * planes;
        let n = o.len() / op.max(1);
        let xin = &x.data[first * ip..(first + n) * ip];
        shadownet_kernels::pool::pool2d_planes(xin, in_hw, p, max, out_hw, o);
    });
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}
