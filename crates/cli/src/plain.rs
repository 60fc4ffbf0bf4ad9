//! Plain (unprotected) inference: load a model, bind named inputs, run, summarise.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shadownet_import::Model;
use shadownet_ir::Tensor;

use crate::npy;

/// Parses `NAME=1,3,224,224`.
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>)> {
    let (name, dims) = s
        .split_once('=')
        .with_context(|| format!("--input-shape '{s}' must look like NAME=1,3,224,224"))?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .with_context(|| format!("bad dimension '{d}' in --input-shape '{s}'"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((name.to_string(), dims))
}

/// `--input FILE.npy` (for the first input) or `--input NAME=FILE.npy`.
pub fn parse_input_arg(s: &str) -> (Option<String>, PathBuf) {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !Path::new(s).exists() => {
            (Some(name.to_string()), PathBuf::from(path))
        }
        _ => (None, PathBuf::from(s)),
    }
}

/// Reads the input files and matches them to the model's inputs by name (an unnamed file
/// goes to the first unbound input). Returns them in graph-input order.
pub fn bind_inputs(
    input_names: &[String],
    args: &[(Option<String>, PathBuf)],
) -> Result<Vec<(String, Tensor)>> {
    let mut bound: Vec<Option<Tensor>> = vec![None; input_names.len()];
    for (name, path) in args {
        let t = npy::read_npy(path)?;
        let idx = match name {
            Some(n) => input_names.iter().position(|x| x == n).with_context(|| {
                format!(
                    "the model has no input named '{n}' (inputs: {})",
                    input_names.join(", ")
                )
            })?,
            None => bound
                .iter()
                .position(Option::is_none)
                .context("more --input files than the model has inputs")?,
        };
        if bound[idx].is_some() {
            bail!("input '{}' given twice", input_names[idx]);
        }
        bound[idx] = Some(t);
    }
    input_names
        .iter()
        .zip(bound)
        .map(|(n, t)| {
            t.map(|t| (n.clone(), t))
                .with_context(|| format!("missing input '{n}': pass --input {n}=FILE.npy"))
        })
        .collect()
}

pub fn input_names(m: &Model) -> Vec<String> {
    m.graph
        .inputs
        .iter()
        .map(|&i| m.graph.values[i].name.clone())
        .collect()
}

pub fn output_names(m: &Model) -> Vec<String> {
    m.graph
        .outputs
        .iter()
        .map(|&i| m.graph.values[i].name.clone())
        .collect()
}

/// Runs the graph, checking every input's shape against the model first.
pub fn run(m: &Model, inputs: &[(String, Tensor)]) -> Result<Vec<Tensor>> {
    let ts: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    let mut plan = shadownet_cpu::Plan::compile(&m.graph)?;
    Ok(plan.run(&ts)?)
}

/// One line per output: name, shape, and the top-5 entries for class vectors.
pub fn summarize(name: &str, t: &Tensor) -> String {
    let mut s = format!("{name}: shape {:?}", t.shape);
    let classes = t.shape.iter().filter(|&&d| d > 1).count() == 1;
    if classes && t.len() > 1 {
        let mut idx: Vec<usize> = (0..t.len()).collect();
        idx.sort_by(|&a, &b| t.data[b].total_cmp(&t.data[a]));
        let top: Vec<String> = idx
            .iter()
            .take(5)
            .map(|&i| format!("{i}:{:.4}", t.data[i]))
            .collect();
        s.push_str(&format!(" top-5 [{}]", top.join(", ")));
    } else {
        let (mn, mx) = t
            .data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let mean = t.data.iter().map(|&v| v as f64).sum::<f64>() / t.len().max(1) as f64;
        s.push_str(&format!(" min {mn:.4} max {mx:.4} mean {mean:.4}"));
    }
    s
}

/// The text of `shadownet inspect`.
pub fn inspect(m: &Model) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let g = &m.graph;
    let mut s = String::new();
    let _ = writeln!(s, "format: {:?}", m.format);
    for &i in &g.inputs {
        let _ = writeln!(s, "input  {} {:?}", g.values[i].name, g.values[i].shape);
    }
    for &o in &g.outputs {
        let _ = writeln!(s, "output {} {:?}", g.values[o].name, g.values[o].shape);
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &g.nodes {
        *counts.entry(n.op.name()).or_default() += 1;
    }
    let _ = writeln!(s, "nodes: {}", g.nodes.len());
    for (op, c) in &counts {
        let _ = writeln!(s, "  {op:<22} {c}");
    }
    let _ = writeln!(s, "parameters: {}", g.param_count());
    let total: u64 = g.nodes.iter().map(|n| g.macs(n)).sum();
    let linear: u64 = g
        .nodes
        .iter()
        .filter(|n| shadownet_protect::outsourced_kind(g, n).is_some())
        .map(|n| g.macs(n))
        .sum();
    let _ = writeln!(
        s,
        "FLOPs: {:.3} G total, {:.3} G in linear layers ({:.1}%)",
        2.0 * total as f64 / 1e9,
        2.0 * linear as f64 / 1e9,
        100.0 * linear as f64 / total.max(1) as f64
    );
    let _ = writeln!(
        s,
        "layers (L = linear, outsourced to the accelerator in a secure run):"
    );
    for n in &g.nodes {
        let out = n
            .outputs
            .first()
            .map(|&o| g.values[o].shape.clone())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {} {:<22} {:<40} {:>14} FLOPs  -> {:?}",
            if shadownet_protect::outsourced_kind(g, n).is_some() {
                "L"
            } else {
                " "
            },
            n.op.name(),
            n.name,
            2 * g.macs(n),
            out
        );
    }
    s
}
