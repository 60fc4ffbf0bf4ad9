//! The host's CPU kernels: the untrusted side's accelerator and its plain engine.
//!
//! Plain inference compiles a graph into a [`Plan`] once: weights packed for the
//! blocked-layout (NCHWc) AVX-512 kernels of [`nchwc`], elementwise ops fused into the
//! convolutions, one arena laid out by liveness, and a team of spinning threads for the
//! whole run. [`PackedLayer`] is the same machinery for one linear layer (an accelerator
//! backend's unit of work). Node-by-node evaluation ([`eval`], [`run_graph_observed`])
//! keeps the packed SIMD GEMM of the `gemm` crate with rayon threads. Every op without a
//! fast kernel, and every op's semantics, comes from the portable `shadownet-kernels`,
//! which is all the trusted core links: nothing in this crate may ever be a dependency
//! of `shadownet-trusted`.

pub mod conv;
pub mod gemm;
mod layer;
pub mod nchwc;
mod par;
pub mod plan;
pub mod pool;
pub mod qconv;
pub mod ring;
mod team;

pub use layer::PackedLayer;
pub use par::{sequential, threads};
pub use plan::{Plan, StepTime};
pub use shadownet_kernels::{elementwise, layout, norm, Error, Result};

use shadownet_ir::{infer_shapes, Graph, Op, Tensor};

/// Evaluates one op on its inputs. The output shapes are re-derived from the actual input
/// shapes, so a caller passing inconsistent tensors gets an error, not a wrong answer.
pub fn eval(node: &str, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
    let outs = infer_shapes(node, op, &shapes)?;
    eval_unchecked(op, inputs, &outs)
}

/// The host's dispatch: accelerated kernels where there are any, the portable ones for
/// the rest.
pub fn eval_unchecked(op: &Op, x: &[&Tensor], outs: &[Vec<usize>]) -> Result<Vec<Tensor>> {
    let out = &outs[0];
    Ok(vec![match op {
        Op::Conv(c) => conv::conv2d(x[0], x[1], x.get(2).copied(), c, out),
        Op::ConvTranspose(c) => conv::conv_transpose2d(x[0], x[1], x.get(2).copied(), c, out),
        Op::MatMul => conv::matmul(x[0], x[1], out),
        Op::QConv { conv, q } => qconv::qconv2d(x[0], x[1], conv, q, out),
        Op::MaxPool(p) => pool::pool2d(x[0], p, true, out),
        Op::AvgPool(p) => pool::pool2d(x[0], p, false, out),
        Op::Act(a) => {
            let mut t = x[0].clone();
            par::for_each_chunk(&mut t.data, 16 * 1024, |_, c| {
                elementwise::activation_inplace(*a, c)
            });
            t
        }
        _ => return shadownet_kernels::eval_unchecked(op, x, outs),
    }])
}

/// Runs a whole graph on its inputs (in graph-input order) and returns its outputs.
///
/// Compiles a [`Plan`] for the one call: callers that run a graph repeatedly should
/// compile once and call [`Plan::run`], which skips the weight packing.
pub fn run_graph(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    Plan::compile(g)?.run(inputs)
}

/// Like [`run_graph`], calling `observe(node_index, outputs)` after each node, for tracing:
/// node by node through [`eval_unchecked`] (no fusion, so every node's output exists).
pub fn run_graph_observed(
    g: &Graph,
    inputs: &[Tensor],
    observe: impl FnMut(usize, &[&Tensor]),
) -> Result<Vec<Tensor>> {
    shadownet_kernels::run_graph_with(g, inputs, eval_unchecked, observe)
}
