//! ONNX importer: decodes a ModelProto, fixes every shape statically (free input dims come
//! from the user), folds shape arithmetic away and maps the remaining nodes onto the IR.
mod ops;
pub use ops::OPSET_MAX;
#[rustfmt::skip]
pub mod proto;
mod quant;
mod tensor;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use prost::Message;
use shadownet_ir::{infer_shapes, Graph, Op, ValueId};

use crate::{Error, InputShapes, Result};
use proto::{type_proto, ModelProto, NodeProto};
use tensor::CTensor;

/// A value as the importer sees it: either something the IR graph computes, or a constant
/// it knows the contents of (kept out of the graph until an IR node actually reads it).
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Act(ValueId),
    Const { name: String, t: Rc<CTensor> },
}

impl Val {
    fn konst(&self) -> Option<&CTensor> {
        match self {
            Val::Const { t, .. } => Some(t),
            Val::Act(_) => None,
        }
    }
}

pub(crate) struct Importer<'a> {
    g: Graph,
    vals: HashMap<String, Val>,
    /// Element types of integer constants and quantized activations, by name: a zero
    /// point's type fixes the saturation range.
    elem: HashMap<String, i32>,
    /// DequantizeLinear outputs and where their integers come from (QDQ fusion).
    dq: HashMap<String, quant::Dq>,
    /// Every node of the graph, the nodes reading each value, and the graph outputs, so a
    /// QDQ group can be recognised from its first node.
    nodes: &'a [NodeProto],
    consumers: HashMap<String, Vec<usize>>,
    graph_outputs: HashSet<String>,
    /// Nodes already absorbed into a fused op.
    skip: HashSet<usize>,
    /// Constants already placed in the graph, by name, so shared weights stay shared.
    placed: HashMap<String, ValueId>,
    opset: i64,
    base_dir: Option<&'a Path>,
    counter: usize,
}

/// Imports an ONNX model. `base_dir` is where external-data files are looked up (the
/// model file's directory); without it, models with external data are refused.
pub fn import(bytes: &[u8], base_dir: Option<&Path>, input_shapes: &InputShapes) -> Result<Graph> {
    let model = ModelProto::decode(bytes).map_err(|e| Error::Decode {
        format: "ONNX",
        detail: e.to_string(),
    })?;
    let graph = model.graph.as_ref().ok_or_else(|| Error::Decode {
        format: "ONNX",
        detail: "the model has no graph".into(),
    })?;
    if graph.node.is_empty() {
        return Err(Error::Decode {
            format: "ONNX",
            detail: "the graph has no nodes".into(),
        });
    }
    if graph.output.is_empty() {
        return Err(Error::Decode {
            format: "ONNX",
            detail: "the graph has no outputs".into(),
        });
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .unwrap_or(21);
    let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
    for (k, n) in graph.node.iter().enumerate() {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            let v = consumers.entry(i.clone()).or_default();
            if v.last() != Some(&k) {
                v.push(k);
            }
        }
    }
    let mut im = Importer {
        g: Graph::new(),
        vals: HashMap::new(),
        elem: HashMap::new(),
        dq: HashMap::new(),
        nodes: &graph.node,
        consumers,
        graph_outputs: graph.output.iter().map(|o| o.name().to_string()).collect(),
        skip: HashSet::new(),
        placed: HashMap::new(),
        opset,
        base_dir,
        counter: 0,
    };
    for init in &graph.initializer {
        let t = tensor::from_proto(init, base_dir)?;
        im.elem.insert(init.name().to_string(), init.data_type());
        im.set_const(init.name(), t);
    }
    im.add_inputs(&graph.input, input_shapes)?;
    for (k, n) in graph.node.iter().enumerate() {
        im.node(k, n)?;
    }
    for o in &graph.output {
        let name = o.name();
        let v = im.vals.get(name).cloned().ok_or_else(|| Error::Invalid {
            node: format!("output '{name}'"),
            what: "the graph output is never computed".into(),
        })?;
        let id = match v {
            Val::Act(id)
                if !im.g.inputs.contains(&id)
                    && im.g.constant(id).is_none()
                    && !im.g.outputs.contains(&id) =>
            {
                // An aliased output (Identity, Dropout) takes the output's name, which
                // is the name users and reference files know it by.
                im.g.values[id].name = name.to_string();
                id
            }
            // An IR graph output must be produced by a node, so aliases get an Identity.
            other => {
                let src = im.place(&other)?;
                im.g.add_node(
                    format!("{name}/identity"),
                    Op::Identity,
                    vec![src],
                    &[name.to_string()],
                )?[0]
            }
        };
        im.g.outputs.push(id);
    }
    Ok(im.g)
}

/// Every op of the model the importer does not map: (domain-qualified op, node count,
/// first node's name), in order of first appearance.
pub fn unsupported_ops(bytes: &[u8]) -> Result<Vec<(String, usize, String)>> {
    let model = ModelProto::decode(bytes).map_err(|e| Error::Decode {
        format: "ONNX",
        detail: e.to_string(),
    })?;
    let mut out: Vec<(String, usize, String)> = Vec::new();
    for (k, n) in model.graph.iter().flat_map(|g| g.node.iter()).enumerate() {
        if ops::is_mapped(n.domain(), n.op_type()) {
            continue;
        }
        let op = match n.domain() {
            "" | "ai.onnx" => n.op_type().to_string(),
            d => format!("{d}.{}", n.op_type()),
        };
        match out.iter_mut().find(|(o, _, _)| *o == op) {
            Some(e) => e.1 += 1,
            None => {
                let node = match n.name() {
                    "" => format!("{}#{k}", n.op_type()),
                    s => s.to_string(),
                };
                out.push((op, 1, node));
            }
        }
    }
    Ok(out)
}

/// The ops the importer maps: (domain, op, first opset, last opset).
pub fn supported_ops() -> Vec<(&'static str, &'static str, i64, i64)> {
    let mut v: Vec<_> = ops::ONNX_OPS
        .iter()
        .map(|&(o, a, b)| ("", o, a, b))
        .collect();
    v.extend(ops::CONTRIB.iter().map(|&o| ("com.microsoft", o, 1, 1)));
    v
}

fn dim_text(d: &proto::tensor_shape_proto::Dimension) -> String {
    use proto::tensor_shape_proto::dimension::Value;
    match &d.value {
        Some(Value::DimValue(v)) if *v > 0 => v.to_string(),
        Some(Value::DimParam(p)) if !p.is_empty() => p.clone(),
        _ => "?".into(),
    }
}

impl<'a> Importer<'a> {
    fn set_const(&mut self, name: &str, t: CTensor) {
        self.vals.insert(
            name.to_string(),
            Val::Const {
                name: name.to_string(),
                t: Rc::new(t),
            },
        );
    }

    fn add_inputs(&mut self, inputs: &[proto::ValueInfoProto], given: &InputShapes) -> Result<()> {
        for (gname, _) in given {
            let is_input = inputs
                .iter()
                .any(|i| i.name() == gname && !self.vals.contains_key(gname.as_str()));
            if !is_input {
                return Err(Error::UnknownInput(gname.clone()));
            }
        }
        for inp in inputs {
            let name = inp.name();
            if self.vals.contains_key(name) {
                // Older exporters list initializers among the inputs too.
                continue;
            }
            let tt = match inp.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(t)) => t,
                _ => {
                    return Err(Error::Unsupported {
                        node: format!("input '{name}'"),
                        op: "input".into(),
                        detail: "only tensor inputs are supported".into(),
                    })
                }
            };
            if tt.elem_type() != tensor::FLOAT {
                return Err(Error::Unsupported {
                    node: format!("input '{name}'"),
                    op: "input".into(),
                    detail: format!(
                        "element type {}; only float32 inputs are supported",
                        tensor::type_name(tt.elem_type())
                    ),
                });
            }
            let user = given.iter().find(|(n, _)| n == name).map(|(_, d)| d);
            let shape = match (&tt.shape, user) {
                (Some(decl), Some(user)) => {
                    if decl.dim.len() != user.len() {
                        return Err(Error::Invalid {
                            node: format!("input '{name}'"),
                            what: format!(
                                "--input-shape gives {} dimensions {user:?}, the model declares {}",
                                user.len(),
                                decl.dim.len()
                            ),
                        });
                    }
                    for (k, (d, &u)) in decl.dim.iter().zip(user).enumerate() {
                        if let Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) =
                            d.value
                        {
                            if v > 0 && v as usize != u {
                                return Err(Error::Invalid {
                                    node: format!("input '{name}'"),
                                    what: format!(
                                        "--input-shape gives {u} for dimension {k}, but the model fixes it to {v}"
                                    ),
                                });
                            }
                        }
                    }
                    user.clone()
                }
                (None, Some(user)) => user.clone(),
                (Some(decl), None) => {
                    let mut s = Vec::with_capacity(decl.dim.len());
                    for d in &decl.dim {
                        match d.value {
                            Some(proto::tensor_shape_proto::dimension::Value::DimValue(v))
                                if v > 0 =>
                            {
                                s.push(v as usize)
                            }
                            _ => {
                                let dims: Vec<String> = decl.dim.iter().map(dim_text).collect();
                                return Err(Error::DynamicInput {
                                    name: name.to_string(),
                                    dims: format!("[{}]", dims.join(", ")),
                                });
                            }
                        }
                    }
                    s
                }
                (None, None) => {
                    return Err(Error::DynamicInput {
                        name: name.to_string(),
                        dims: "(rank unknown)".into(),
                    })
                }
            };
            let id = self.g.add_input(name, shape);
            self.vals.insert(name.to_string(), Val::Act(id));
        }
        Ok(())
    }

    /// The IR value for `v`, placing a constant into the graph on first use.
    fn place(&mut self, v: &Val) -> Result<ValueId> {
        match v {
            Val::Act(id) => Ok(*id),
            Val::Const { name, t } => {
                if let Some(&id) = self.placed.get(name) {
                    return Ok(id);
                }
                let id = self.g.add_const(name.clone(), t.to_tensor());
                self.placed.insert(name.clone(), id);
                Ok(id)
            }
        }
    }

    pub(crate) fn shape(&self, v: &Val) -> Vec<usize> {
        match v {
            Val::Act(id) => self.g.shape(*id).to_vec(),
            Val::Const { t, .. } => t.shape.clone(),
        }
    }

    /// A fresh name for values the importer introduces itself.
    pub(crate) fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}/{}", self.counter)
    }

    pub(crate) fn konst(&mut self, base: &str, t: CTensor) -> Val {
        let name = self.fresh(base);
        Val::Const {
            name,
            t: Rc::new(t),
        }
    }

    /// Adds an IR node reading `ins`, naming its outputs `outs`. When every input is a
    /// known constant the op is evaluated right away and its outputs stay constants.
    pub(crate) fn emit(
        &mut self,
        node: &str,
        op: Op,
        ins: &[Val],
        outs: &[String],
    ) -> Result<Vec<Val>> {
        let consts: Option<Vec<&CTensor>> = ins.iter().map(Val::konst).collect();
        if let Some(cs) = consts.filter(|c| !c.is_empty()) {
            let shapes: Vec<Vec<usize>> = cs.iter().map(|c| c.shape.clone()).collect();
            let out_shapes = infer_shapes(node, &op, &shapes)?;
            if out_shapes.iter().any(|s| {
                s.iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .is_none_or(|n| n > tensor::MAX_CONST_ELEMS)
            }) {
                return Err(Error::Invalid {
                    node: node.to_string(),
                    what: format!("constant result of shape {out_shapes:?} is too large"),
                });
            }
            let folded = match tensor::fold(&op, &cs, &out_shapes) {
                Some(r) => Some(r),
                None if cs.iter().all(|c| c.is_float()) => {
                    let ts: Vec<shadownet_ir::Tensor> = cs.iter().map(|c| c.to_tensor()).collect();
                    let refs: Vec<&shadownet_ir::Tensor> = ts.iter().collect();
                    // Kernels may not cover every op yet; an unevaluated node is still correct.
                    shadownet_kernels::eval(node, &op, &refs)
                        .ok()
                        .map(|r| r.into_iter().map(CTensor::from_tensor).collect())
                }
                None => None,
            };
            if let Some(r) = folded {
                let mut res = Vec::with_capacity(r.len());
                for (k, t) in r.into_iter().enumerate() {
                    let name = outs
                        .get(k)
                        .cloned()
                        .unwrap_or_else(|| format!("{node}:{k}"));
                    self.set_const(&name, t);
                    res.push(self.vals[&name].clone());
                }
                return Ok(res);
            }
        }
        let mut ids = Vec::with_capacity(ins.len());
        for v in ins {
            ids.push(self.place(v)?);
        }
        let out_ids = self.g.add_node(node, op, ids, outs)?;
        let mut res = Vec::with_capacity(out_ids.len());
        for (k, id) in out_ids.into_iter().enumerate() {
            let v = Val::Act(id);
            if let Some(n) = outs.get(k) {
                self.vals.insert(n.clone(), v.clone());
            }
            res.push(v);
        }
        Ok(res)
    }

    fn node(&mut self, index: usize, n: &NodeProto) -> Result<()> {
        if self.skip.contains(&index) {
            return Ok(());
        }
        let name = match n.name() {
            "" => format!("{}#{index}", n.op_type()),
            s => s.to_string(),
        };
        let contrib = n.domain() == "com.microsoft" && ops::CONTRIB.contains(&n.op_type());
        if matches!(n.domain(), "" | "ai.onnx") && !ops::is_mapped("", n.op_type()) {
            return Err(Error::Unsupported {
                node: name,
                op: n.op_type().to_string(),
                detail: String::new(),
            });
        }
        if !matches!(n.domain(), "" | "ai.onnx") && !contrib {
            return Err(Error::Unsupported {
                node: name,
                op: n.op_type().to_string(),
                detail: format!("operator domain '{}'", n.domain()),
            });
        }
        let mut ins = Vec::with_capacity(n.input.len());
        for i in &n.input {
            if i.is_empty() {
                ins.push(None);
                continue;
            }
            let v = self.vals.get(i).cloned().ok_or_else(|| Error::Invalid {
                node: name.clone(),
                what: format!(
                    "input '{i}' is not defined before this node (graph not topologically sorted?)"
                ),
            })?;
            ins.push(Some(v));
        }
        let ctx = ops::Ctx {
            name,
            p: n,
            ins,
            opset: self.opset,
        };
        self.map_node(&ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed op reaches a mapping of its own (with no inputs it fails on those,
    /// never on the fallback arm), so the table and the dispatch cannot drift apart.
    #[test]
    fn every_listed_op_is_mapped() {
        for (domain, op, _, last) in supported_ops() {
            let n = NodeProto {
                op_type: Some(op.to_string()),
                domain: Some(domain.to_string()),
                ..Default::default()
            };
            let mut im = Importer {
                g: Graph::new(),
                vals: HashMap::new(),
                elem: HashMap::new(),
                dq: HashMap::new(),
                nodes: &[],
                consumers: HashMap::new(),
                graph_outputs: HashSet::new(),
                skip: HashSet::new(),
                placed: HashMap::new(),
                opset: last,
                base_dir: None,
                counter: 0,
            };
            let ctx = ops::Ctx {
                name: op.to_string(),
                p: &n,
                ins: vec![],
                opset: last,
            };
            if let Err(e) = im.map_node(&ctx) {
                assert!(
                    !e.to_string().contains(ops::NOT_MAPPED),
                    "{domain}.{op}: {e}"
                );
            }
        }
    }
}
