//! Graph rewrites applied after import: constant folding, BatchNorm folded into the
//! preceding convolution, and removal of dead nodes.
use shadownet_ir::{Graph, Op, Tensor};

use crate::Result;

pub fn optimize(mut g: Graph) -> Result<Graph> {
    fold_constants(&mut g)?;
    fold_batch_norms(&mut g);
    remove_dead(&mut g);
    Ok(g)
}

/// Evaluates every node whose inputs are all constants, turning its outputs into constants.
fn fold_constants(g: &mut Graph) -> Result<()> {
    let mut keep = Vec::with_capacity(g.nodes.len());
    for node in std::mem::take(&mut g.nodes) {
        let all_const =
            !node.inputs.is_empty() && node.inputs.iter().all(|&i| g.values[i].data.is_some());
        if !all_const {
            keep.push(node);
            continue;
        }
        let inputs: Vec<&Tensor> = node
            .inputs
            .iter()
            .filter_map(|&i| g.values[i].data.as_ref())
            .collect();
        let outs = shadownet_kernels::eval(&node.name, &node.op, &inputs)?;
        for (&o, t) in node.outputs.iter().zip(outs) {
            g.values[o].data = Some(t);
        }
    }
    g.nodes = keep;
    // A graph output that became a constant still needs a node to produce it at run time
    // only if the executor cannot read constants as outputs; ours can, so nothing to do.
    Ok(())
}

fn consumers(g: &Graph, v: usize) -> usize {
    g.nodes.iter().filter(|n| n.inputs.contains(&v)).count()
        + g.outputs.iter().filter(|&&o| o == v).count()
}

/// Conv → BatchNorm becomes one Conv with scaled weights and a shifted bias, when the conv's
/// output feeds nothing but the BatchNorm.
fn fold_batch_norms(g: &mut Graph) {
    let mut k = 0;
    while k < g.nodes.len() {
        let Op::BatchNorm { epsilon } = g.nodes[k].op else {
            k += 1;
            continue;
        };
        let bn = g.nodes[k].clone();
        let x = bn.inputs[0];
        let producer = g.nodes.iter().position(|n| n.outputs.contains(&x));
        let params: Option<Vec<&Tensor>> = bn.inputs[1..]
            .iter()
            .map(|&i| g.values[i].data.as_ref())
            .collect();
        let (Some(p), Some(params)) = (producer, params) else {
            k += 1;
            continue;
        };
        let conv = &g.nodes[p];
        let foldable = matches!(conv.op, Op::Conv(_))
            && g.values[conv.inputs[1]].data.is_some()
            && conv
                .inputs
                .get(2)
                .is_none_or(|&b| g.values[b].data.is_some())
            && consumers(g, x) == 1;
        if !foldable {
            k += 1;
            continue;
        }
        let (a, b) = shadownet_kernels::norm::batch_norm_coeffs(
            [params[0], params[1], params[2], params[3]],
            epsilon,
        );
        let mut w = g.values[conv.inputs[1]]
            .data
            .clone()
            .unwrap_or_else(|| Tensor::zeros(&[0]));
        let per_out = w.len() / a.len().max(1);
        for (o, chunk) in w.data.chunks_mut(per_out.max(1)).enumerate() {
            chunk.iter_mut().for_each(|v| *v *= a[o]);
        }
        let old_bias = conv.inputs.get(2).and_then(|&i| g.values[i].data.as_ref());
        let bias: Vec<f32> = (0..a.len())
            .map(|o| old_bias.map_or(0.0, |t| t.data[o]) * a[o] + b[o])
            .collect();
        let conv_name = conv.name.clone();
        let wid = g.add_const(format!("{conv_name}/weight_bn_folded"), w);
        let bid = g.add_const(
            format!("{conv_name}/bias_bn_folded"),
            Tensor {
                shape: vec![bias.len()],
                data: bias,
            },
        );
        let conv = &mut g.nodes[p];
        conv.inputs.truncate(1);
        conv.inputs.extend([wid, bid]);
        // The conv now produces the BatchNorm's output value directly.
        conv.outputs[0] = bn.outputs[0];
        g.nodes.remove(k);
    }
}

/// Drops nodes whose outputs nobody reads.
fn remove_dead(g: &mut Graph) {
    let mut live = vec![false; g.values.len()];
    for &o in &g.outputs {
        live[o] = true;
    }
    let mut keep = vec![false; g.nodes.len()];
    for k in (0..g.nodes.len()).rev() {
        if g.nodes[k].outputs.iter().any(|&o| live[o]) {
            keep[k] = true;
            for &i in &g.nodes[k].inputs {
                live[i] = true;
            }
        }
    }
    let mut it = keep.into_iter();
    g.nodes.retain(|_| it.next().unwrap_or(true));
}
