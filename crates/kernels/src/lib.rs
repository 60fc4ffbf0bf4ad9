//! Portable kernels for the shadownet op set and a graph executor.
//!
//! `no_std + alloc`, single-threaded and free of `unsafe`: this is the only kernel code the
//! trusted core links, so the code its tests run is the code it ships. The host's fast
//! paths (SIMD GEMM, threads) live in `shadownet-cpu`, which falls back to these kernels
//! for every op it does not accelerate, so both sides agree on the nonlinear ops.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod conv;
pub mod elementwise;
mod error;
pub mod gemm;
pub mod layout;
pub mod norm;
pub mod pool;
pub mod quant;
pub mod ring;

pub use error::{Error, Result};

use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{infer_shapes, Graph, Op, Tensor};

/// Evaluates one op on its inputs. The output shapes are re-derived from the actual input
/// shapes, so a caller passing inconsistent tensors gets an error, not a wrong answer.
pub fn eval(node: &str, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
    let outs = infer_shapes(node, op, &shapes)?;
    eval_unchecked(op, inputs, &outs)
}

/// Evaluates `op` for inputs whose shapes already produced `outs` through `infer_shapes`.
pub fn eval_unchecked(op: &Op, x: &[&Tensor], outs: &[Vec<usize>]) -> Result<Vec<Tensor>> {
    let out = &outs[0];
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Op::Conv(c) => one(conv::conv2d(x[0], x[1], x.get(2).copied(), c, out)),
        Op::ConvTranspose(c) => one(conv::conv_transpose2d(
            x[0],
            x[1],
            x.get(2).copied(),
            c,
            out,
        )),
        Op::MatMul => one(conv::matmul(x[0], x[1], out)),
        Op::BatchNorm { epsilon } => {
            one(norm::batch_norm(x[0], [x[1], x[2], x[3], x[4]], *epsilon))
        }
        Op::InstanceNorm { epsilon } => one(norm::instance_norm(x[0], x[1], x[2], *epsilon)),
        Op::LayerNorm { axis, epsilon } => one(norm::layer_norm(
            x[0],
            *axis,
            x[1],
            x.get(2).copied(),
            *epsilon,
        )),
        Op::Act(a) => {
            let mut t = x[0].clone();
            elementwise::activation_inplace(*a, &mut t.data);
            one(t)
        }
        Op::Binary(b) => one(elementwise::binary_broadcast(*b, x[0], x[1], out)),
        Op::Softmax { axis } => one(norm::softmax(x[0], *axis, false)),
        Op::LogSoftmax { axis } => one(norm::softmax(x[0], *axis, true)),
        Op::Concat { axis } => one(layout::concat(x, *axis, out)),
        Op::Split { axis, .. } => Ok(layout::split(x[0], *axis, outs)),
        Op::Slice {
            axes,
            starts,
            steps,
            ..
        } => one(layout::slice(x[0], axes, starts, steps, out)),
        Op::Gather { axis, indices, .. } => one(layout::gather(x[0], *axis, indices, out)),
        Op::Reshape { shape } | Op::Expand { shape } if shape == &x[0].shape => one(x[0].clone()),
        Op::Reshape { shape } => one(Tensor {
            shape: shape.clone(),
            data: x[0].data.clone(),
        }),
        Op::Identity => one(x[0].clone()),
        Op::Transpose { perm } => one(layout::transpose(x[0], perm, out)),
        Op::Expand { .. } => one(layout::expand(x[0], out)),
        Op::Tile { .. } => one(layout::tile(x[0], out)),
        Op::Pad { pads, mode, value } => one(layout::pad(x[0], pads, *mode, *value, out)),
        Op::MaxPool(p) => one(pool::pool2d(x[0], p, true, out)),
        Op::AvgPool(p) => one(pool::pool2d(x[0], p, false, out)),
        Op::GlobalAvgPool => one(pool::global_pool(x[0], false, out)),
        Op::GlobalMaxPool => one(pool::global_pool(x[0], true, out)),
        Op::Reduce { op, axes, .. } => one(norm::reduce(x[0], *op, axes, out)),
        Op::Resize(r) => one(layout::resize(x[0], r)),
        Op::DepthToSpace { block, crd } => one(layout::depth_to_space(x[0], *block, *crd, out)),
        Op::SpaceToDepth { block } => one(layout::space_to_depth(x[0], *block, out)),
        Op::Quantize {
            q,
            min,
            max,
            flavor,
        } => one(quant::quantize(x[0], *q, *min, *max, *flavor)),
        Op::Dequantize(q) => one(quant::dequantize(x[0], *q)),
        Op::QConv { conv, q } => one(quant::qconv2d(x[0], x[1], conv, q, out)),
        Op::QMatMul(q) => one(quant::qmatmul(x[0], x[1], q, out)),
        Op::QBinary(b) => one(quant::qbinary(x[0], x[1], b, out)),
    }
}

/// Runs a whole graph on its inputs (in graph-input order) and returns its outputs.
pub fn run_graph(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_graph_with(g, inputs, eval_unchecked, |_, _| {})
}

/// Like [`run_graph`], calling `observe(node_index, outputs)` after each node, for tracing.
pub fn run_graph_observed(
    g: &Graph,
    inputs: &[Tensor],
    observe: impl FnMut(usize, &[&Tensor]),
) -> Result<Vec<Tensor>> {
    run_graph_with(g, inputs, eval_unchecked, observe)
}

/// The executor behind [`run_graph`], with the kernel dispatch `eval` (called like
/// [`eval_unchecked`]) supplied by the caller: the host passes its accelerated one.
pub fn run_graph_with(
    g: &Graph,
    inputs: &[Tensor],
    eval: impl Fn(&Op, &[&Tensor], &[Vec<usize>]) -> Result<Vec<Tensor>>,
    mut observe: impl FnMut(usize, &[&Tensor]),
) -> Result<Vec<Tensor>> {
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    if inputs.len() != g.inputs.len() {
        let missing = g.inputs.get(inputs.len()).unwrap_or(&g.inputs[0]);
        return Err(Error::GraphInput {
            name: g.values[*missing].name.clone(),
            expected: g.values[*missing].shape.clone(),
            got: None,
        });
    }
    for (&id, t) in g.inputs.iter().zip(inputs) {
        let v = &g.values[id];
        if t.shape != v.shape || t.data.len() != t.shape.iter().product::<usize>() {
            return Err(Error::GraphInput {
                name: v.name.clone(),
                expected: v.shape.clone(),
                got: Some(t.shape.clone()),
            });
        }
        vals[id] = Some(t.clone());
    }
    let last = g.last_uses();
    for (k, node) in g.nodes.iter().enumerate() {
        let outs = {
            let mut xs = Vec::with_capacity(node.inputs.len());
            for &i in &node.inputs {
                let t = match g.values[i].data.as_ref() {
                    Some(c) => c,
                    None => vals[i].as_ref().ok_or_else(|| Error::Unsupported {
                        node: node.name.clone(),
                        op: "input computed after its use (graph not topologically sorted)",
                    })?,
                };
                xs.push(t);
            }
            let shapes: Vec<Vec<usize>> = node
                .outputs
                .iter()
                .map(|&o| g.values[o].shape.clone())
                .collect();
            eval(&node.op, &xs, &shapes)?
        };
        {
            let refs: Vec<&Tensor> = outs.iter().collect();
            observe(k, &refs);
        }
        for (&o, t) in node.outputs.iter().zip(outs) {
            vals[o] = Some(t);
        }
        // Free activations nobody reads any more, keeping peak memory near the widest cut.
        for &i in &node.inputs {
            if last[i] == k && !g.inputs.contains(&i) {
                vals[i] = None;
            }
        }
    }
    g.outputs
        .iter()
        .map(|&o| {
            g.values[o]
                .data
                .clone()
                .or_else(|| vals[o].take())
                .ok_or_else(|| Error::Unsupported {
                    node: g.values[o].name.clone(),
                    op: "graph output never computed",
                })
        })
        .collect()
}
