use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::{Error, Op, Result};

/// Elements of a shape; saturates at `usize::MAX` when the product overflows, so such a
/// shape never matches real data (use [`checked_numel`] to refuse it).
pub fn numel(shape: &[usize]) -> usize {
    checked_numel(shape).unwrap_or(usize::MAX)
}

/// Elements of a shape, or `None` when the product overflows.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// numpy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

fn mismatch(node: &str, expected: impl Into<String>, inputs: &[Vec<usize>]) -> Error {
    Error::ShapeMismatch {
        node: node.to_string(),
        expected: expected.into(),
        got: inputs.to_vec(),
    }
}

fn arity(node: &str, op: &Op, expected: &'static str, got: usize) -> Error {
    Error::Arity {
        node: node.to_string(),
        op: op.name(),
        expected,
        got,
    }
}

/// Output size of a windowed op along one axis, or None if the window does not fit.
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let eff = dilation.checked_mul(kernel - 1)? + 1;
    let padded = input.checked_add(pad)?;
    if padded < eff {
        return None;
    }
    Some((padded - eff) / stride + 1)
}

/// Per-channel parameters of an integer conv / matmul come one per output channel or once.
fn check_qlinear(
    node: &str,
    q: &crate::QLinear,
    channels: usize,
    inputs: &[Vec<usize>],
) -> Result<()> {
    let fits = |n: usize| n == 1 || n == channels;
    if !fits(q.w_scale.len())
        || !fits(q.w_zero.len())
        || !(q.bias.is_empty() || q.bias.len() == channels)
    {
        return Err(mismatch(
            node,
            format!(
                "weight scales, zero points and bias for {channels} output channels (got {}, {}, {})",
                q.w_scale.len(),
                q.w_zero.len(),
                q.bias.len()
            ),
            inputs,
        ));
    }
    Ok(())
}

/// Infers the output shapes of `op` from its input shapes, checking that they fit.
pub fn infer_shapes(node: &str, op: &Op, inputs: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
    let need = |lo: usize, hi: usize, what: &'static str| -> Result<()> {
        if inputs.len() < lo || inputs.len() > hi {
            Err(arity(node, op, what, inputs.len()))
        } else {
            Ok(())
        }
    };
    let x = inputs.first().cloned().unwrap_or_default();
    let out = match op {
        Op::Conv(c) => {
            need(2, 3, "2 or 3")?;
            let w = &inputs[1];
            if x.len() != 4 || w.len() != 4 || c.groups == 0 {
                return Err(mismatch(node, "x [N,C,H,W] and w [O,C/g,kh,kw]", inputs));
            }
            if x[1] != w[1] * c.groups || !w[0].is_multiple_of(c.groups) || [w[2], w[3]] != c.kernel
            {
                return Err(mismatch(
                    node,
                    format!(
                        "C = {} x groups {} and kernel {:?}",
                        w[1], c.groups, c.kernel
                    ),
                    inputs,
                ));
            }
            if inputs.len() == 3 && inputs[2] != [w[0]] {
                return Err(mismatch(node, format!("bias of shape [{}]", w[0]), inputs));
            }
            let oh = window_out(
                x[2],
                c.kernel[0],
                c.stride[0],
                c.dilation[0],
                c.pads[0] + c.pads[2],
            );
            let ow = window_out(
                x[3],
                c.kernel[1],
                c.stride[1],
                c.dilation[1],
                c.pads[1] + c.pads[3],
            );
            match (oh, ow) {
                (Some(oh), Some(ow)) => vec![vec![x[0], w[0], oh, ow]],
                _ => return Err(mismatch(node, "kernel no larger than padded input", inputs)),
            }
        }
        Op::ConvTranspose(c) => {
            need(2, 3, "2 or 3")?;
            let w = &inputs[1];
            if x.len() != 4
                || w.len() != 4
                || c.groups == 0
                || x[1] != w[0]
                || !w[0].is_multiple_of(c.groups)
                || c.kernel.contains(&0)
                || c.stride.contains(&0)
                || c.dilation.contains(&0)
            {
                return Err(mismatch(node, "x [N,C,H,W] and w [C,O/g,kh,kw]", inputs));
            }
            let o = w[1] * c.groups;
            if inputs.len() == 3 && inputs[2] != [o] {
                return Err(mismatch(node, format!("bias of shape [{o}]"), inputs));
            }
            let mut dims = [0usize; 2];
            if x[2] == 0 || x[3] == 0 {
                return Err(mismatch(node, "a non-empty input", inputs));
            }
            for a in 0..2 {
                let full = c.stride[a] * (x[2 + a] - 1)
                    + c.output_padding[a]
                    + (c.kernel[a] - 1) * c.dilation[a]
                    + 1;
                let crop = c.pads[a] + c.pads[a + 2];
                if full <= crop {
                    return Err(mismatch(node, "output larger than its padding", inputs));
                }
                dims[a] = full - crop;
            }
            vec![vec![x[0], o, dims[0], dims[1]]]
        }
        Op::MatMul => {
            need(2, 2, "2")?;
            let (a, b) = (&inputs[0], &inputs[1]);
            if a.is_empty() || b.is_empty() {
                return Err(mismatch(node, "operands of rank >= 1", inputs));
            }
            let a2 = if a.len() == 1 {
                vec![1, a[0]]
            } else {
                a.clone()
            };
            let b2 = if b.len() == 1 {
                vec![b[0], 1]
            } else {
                b.clone()
            };
            let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
            let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
            if k != k2 {
                return Err(mismatch(
                    node,
                    format!("inner dimensions equal ({k} vs {k2})"),
                    inputs,
                ));
            }
            let batch = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2])
                .ok_or_else(|| mismatch(node, "broadcastable batch axes", inputs))?;
            let mut s = batch;
            if a.len() > 1 {
                s.push(m);
            }
            if b.len() > 1 {
                s.push(n);
            }
            vec![s]
        }
        Op::BatchNorm { .. } => {
            need(5, 5, "5")?;
            if x.len() < 2 || inputs[1..].iter().any(|s| numel(s) != x[1]) {
                return Err(mismatch(
                    node,
                    "per-channel scale, bias, mean and var",
                    inputs,
                ));
            }
            vec![x]
        }
        Op::InstanceNorm { .. } => {
            need(3, 3, "3")?;
            if x.len() < 3 || inputs[1..].iter().any(|s| numel(s) != x[1]) {
                return Err(mismatch(node, "per-channel scale and bias", inputs));
            }
            vec![x]
        }
        Op::LayerNorm { axis, .. } => {
            need(2, 3, "2 or 3")?;
            if *axis >= x.len() || inputs[1..].iter().any(|s| numel(s) != numel(&x[*axis..])) {
                return Err(mismatch(
                    node,
                    "scale/bias over the normalised axes",
                    inputs,
                ));
            }
            vec![x]
        }
        Op::Act(_) | Op::Identity | Op::Quantize { .. } | Op::Dequantize(_) => {
            need(1, 1, "1")?;
            vec![x]
        }
        Op::QConv { conv, q } => {
            need(2, 2, "2")?;
            let o = inputs[1].first().copied().unwrap_or(0);
            check_qlinear(node, q, o, inputs)?;
            return infer_shapes(node, &Op::Conv(conv.clone()), inputs);
        }
        Op::QMatMul(q) => {
            need(2, 2, "2")?;
            if inputs[1].len() != 2 {
                return Err(mismatch(node, "a [K, N] weight matrix", inputs));
            }
            check_qlinear(node, q, inputs[1][1], inputs)?;
            return infer_shapes(node, &Op::MatMul, inputs);
        }
        Op::QBinary(_) => {
            need(2, 2, "2")?;
            vec![broadcast_shapes(&inputs[0], &inputs[1])
                .ok_or_else(|| mismatch(node, "broadcastable operands", inputs))?]
        }
        Op::Binary(_) => {
            need(2, 2, "2")?;
            vec![broadcast_shapes(&inputs[0], &inputs[1])
                .ok_or_else(|| mismatch(node, "broadcastable operands", inputs))?]
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            need(1, 1, "1")?;
            if *axis >= x.len() {
                return Err(mismatch(
                    node,
                    format!("an axis {axis} within rank"),
                    inputs,
                ));
            }
            vec![x]
        }
        Op::Concat { axis } => {
            if inputs.is_empty() {
                return Err(arity(node, op, "at least 1", 0));
            }
            let mut s = x.clone();
            if *axis >= s.len() {
                return Err(mismatch(node, format!("axis {axis} within rank"), inputs));
            }
            s[*axis] = 0;
            for i in inputs {
                let ok = i.len() == x.len()
                    && i.iter()
                        .zip(&x)
                        .enumerate()
                        .all(|(d, (a, b))| d == *axis || a == b);
                if !ok {
                    return Err(mismatch(
                        node,
                        format!("equal shapes except axis {axis}"),
                        inputs,
                    ));
                }
                s[*axis] += i[*axis];
            }
            vec![s]
        }
        Op::Split { axis, sizes } => {
            need(1, 1, "1")?;
            if *axis >= x.len() || sizes.iter().sum::<usize>() != x[*axis] {
                return Err(mismatch(
                    node,
                    format!("split sizes {sizes:?} on axis {axis}"),
                    inputs,
                ));
            }
            sizes
                .iter()
                .map(|&n| {
                    let mut s = x.clone();
                    s[*axis] = n;
                    s
                })
                .collect()
        }
        Op::Slice {
            axes,
            starts,
            steps,
            counts,
        } => {
            need(1, 1, "1")?;
            let n = axes.len();
            if starts.len() != n || steps.len() != n || counts.len() != n {
                return Err(mismatch(
                    node,
                    "one start, step and count per sliced axis",
                    inputs,
                ));
            }
            let mut s = x.clone();
            for k in 0..n {
                let (a, st, step, c) = (axes[k], starts[k] as i64, steps[k], counts[k] as i64);
                let last = st + (c - 1).max(0) * step;
                if a >= x.len()
                    || step == 0
                    || (c > 0 && (st >= x[a] as i64 || last < 0 || last >= x[a] as i64))
                {
                    return Err(mismatch(
                        node,
                        format!("slice of axis {a} within bounds"),
                        inputs,
                    ));
                }
                s[a] = counts[k];
            }
            vec![s]
        }
        Op::Gather {
            axis,
            indices,
            indices_shape,
        } => {
            need(1, 1, "1")?;
            if *axis >= x.len()
                || indices.iter().any(|&i| i >= x[*axis])
                || numel(indices_shape) != indices.len()
            {
                return Err(mismatch(
                    node,
                    format!("indices within axis {axis}"),
                    inputs,
                ));
            }
            let mut s = x[..*axis].to_vec();
            s.extend_from_slice(indices_shape);
            s.extend_from_slice(&x[*axis + 1..]);
            vec![s]
        }
        Op::Reshape { shape } => {
            need(1, 1, "1")?;
            if numel(shape) != numel(&x) {
                return Err(mismatch(
                    node,
                    format!("{} elements for {shape:?}", numel(shape)),
                    inputs,
                ));
            }
            vec![shape.clone()]
        }
        Op::Transpose { perm } => {
            need(1, 1, "1")?;
            let mut seen = vec![false; x.len()];
            if perm.len() != x.len()
                || perm
                    .iter()
                    .any(|&p| p >= x.len() || core::mem::replace(&mut seen[p], true))
            {
                return Err(mismatch(
                    node,
                    format!("a permutation {perm:?} of the axes"),
                    inputs,
                ));
            }
            vec![perm.iter().map(|&p| x[p]).collect()]
        }
        Op::Expand { shape } => {
            need(1, 1, "1")?;
            match broadcast_shapes(&x, shape) {
                Some(s) if &s == shape => vec![s],
                _ => {
                    return Err(mismatch(
                        node,
                        format!("broadcastable to {shape:?}"),
                        inputs,
                    ))
                }
            }
        }
        Op::Tile { repeats } => {
            need(1, 1, "1")?;
            if repeats.len() != x.len() {
                return Err(mismatch(node, "one repeat per axis", inputs));
            }
            vec![x.iter().zip(repeats).map(|(a, b)| a * b).collect()]
        }
        Op::Pad { pads, mode, .. } => {
            need(1, 1, "1")?;
            if pads.len() != x.len() {
                return Err(mismatch(node, "one (before, after) pad per axis", inputs));
            }
            if *mode == crate::PadMode::Reflect
                && pads
                    .iter()
                    .zip(&x)
                    .any(|(p, &d)| p.0 >= d.max(1) || p.1 >= d.max(1))
            {
                return Err(mismatch(node, "reflect pads smaller than the axis", inputs));
            }
            vec![x.iter().zip(pads).map(|(d, p)| d + p.0 + p.1).collect()]
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            need(1, 1, "1")?;
            if x.len() != 4 {
                return Err(mismatch(node, "x [N,C,H,W]", inputs));
            }
            let oh = window_out(
                x[2],
                p.kernel[0],
                p.stride[0],
                p.dilation[0],
                p.pads[0] + p.pads[2] + p.extra_end[0],
            );
            let ow = window_out(
                x[3],
                p.kernel[1],
                p.stride[1],
                p.dilation[1],
                p.pads[1] + p.pads[3] + p.extra_end[1],
            );
            match (oh, ow) {
                (Some(oh), Some(ow)) => vec![vec![x[0], x[1], oh, ow]],
                _ => return Err(mismatch(node, "window no larger than padded input", inputs)),
            }
        }
        Op::GlobalAvgPool | Op::GlobalMaxPool => {
            need(1, 1, "1")?;
            if x.len() < 3 {
                return Err(mismatch(node, "x [N,C,spatial...]", inputs));
            }
            let mut s = x.clone();
            for d in s.iter_mut().skip(2) {
                *d = 1;
            }
            vec![s]
        }
        Op::Reduce { axes, keepdims, .. } => {
            need(1, 1, "1")?;
            if axes.iter().any(|&a| a >= x.len()) {
                return Err(mismatch(node, format!("axes {axes:?} within rank"), inputs));
            }
            let mut s = Vec::new();
            for (d, &n) in x.iter().enumerate() {
                if axes.contains(&d) {
                    if *keepdims {
                        s.push(1);
                    }
                } else {
                    s.push(n);
                }
            }
            vec![s]
        }
        Op::Resize(r) => {
            need(1, 1, "1")?;
            if r.out_shape.len() != x.len() || r.scales.len() != x.len() {
                return Err(mismatch(node, "one output size per axis", inputs));
            }
            vec![r.out_shape.clone()]
        }
        Op::DepthToSpace { block, .. } => {
            need(1, 1, "1")?;
            let b = *block;
            if x.len() != 4 || b == 0 || x[1] % (b * b) != 0 {
                return Err(mismatch(
                    node,
                    format!("channels divisible by {}", b * b),
                    inputs,
                ));
            }
            vec![vec![x[0], x[1] / (b * b), x[2] * b, x[3] * b]]
        }
        Op::SpaceToDepth { block } => {
            need(1, 1, "1")?;
            let b = *block;
            if x.len() != 4 || b == 0 || x[2] % b != 0 || x[3] % b != 0 {
                return Err(mismatch(
                    node,
                    format!("spatial dims divisible by {b}"),
                    inputs,
                ));
            }
            vec![vec![x[0], x[1] * b * b, x[2] / b, x[3] / b]]
        }
    };
    // A shape whose element count overflows can never be allocated or indexed: refused
    // here, where every node is wired in.
    if let Some(bad) = out.iter().find(|s| checked_numel(s).is_none()) {
        return Err(mismatch(
            node,
            format!("an output shape {bad:?} with fewer than 2^64 elements"),
            inputs,
        ));
    }
    Ok(out)
}
