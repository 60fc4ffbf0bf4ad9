use alloc::string::String;
use alloc::vec::Vec;

use crate::{infer_shapes, Error, Op, Result, Tensor};

pub type ValueId = usize;

/// A value flowing through the graph: a model input, a constant, or a node output.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
    /// Constant data (weights, folded shape arithmetic). `None` for activations.
    pub data: Option<Tensor>,
}

#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A topologically ordered graph with static shapes. Nodes are only added through
/// [`Graph::add_node`], which checks input shapes, so an invalid graph cannot be built.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_input(&mut self, name: impl Into<String>, shape: Vec<usize>) -> ValueId {
        let id = self.push_value(name.into(), shape, None);
        self.inputs.push(id);
        id
    }

    pub fn add_const(&mut self, name: impl Into<String>, t: Tensor) -> ValueId {
        let shape = t.shape.clone();
        self.push_value(name.into(), shape, Some(t))
    }

    fn push_value(&mut self, name: String, shape: Vec<usize>, data: Option<Tensor>) -> ValueId {
        self.values.push(Value { name, shape, data });
        self.values.len() - 1
    }

    /// Wires a node in, inferring (and thereby checking) its output shapes. Output values
    /// are named `output_names[i]` when given, otherwise after the node.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<ValueId>,
        output_names: &[String],
    ) -> Result<Vec<ValueId>> {
        let name = name.into();
        let mut shapes = Vec::with_capacity(inputs.len());
        for &i in &inputs {
            shapes.push(
                self.values
                    .get(i)
                    .ok_or(Error::UnknownValue(i))?
                    .shape
                    .clone(),
            );
        }
        let out_shapes = infer_shapes(&name, &op, &shapes)?;
        let mut outputs = Vec::with_capacity(out_shapes.len());
        for (k, s) in out_shapes.into_iter().enumerate() {
            let vname = match output_names.get(k) {
                Some(n) => n.clone(),
                None if k == 0 => name.clone(),
                None => alloc::format!("{name}:{k}"),
            };
            outputs.push(self.push_value(vname, s, None));
        }
        self.nodes.push(Node {
            name,
            op,
            inputs,
            outputs: outputs.clone(),
        });
        Ok(outputs)
    }

    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.values[v].shape
    }

    pub fn constant(&self, v: ValueId) -> Option<&Tensor> {
        self.values.get(v).and_then(|x| x.data.as_ref())
    }

    /// For each value, the index of the last node that reads it (graph outputs live to the end).
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = alloc::vec![0usize; self.values.len()];
        for (k, n) in self.nodes.iter().enumerate() {
            for &i in &n.inputs {
                last[i] = k;
            }
        }
        for &o in &self.outputs {
            last[o] = usize::MAX;
        }
        last
    }

    /// Number of parameters held in the constants that nodes read (rewrites may leave
    /// orphaned constants behind; they do not count).
    pub fn param_count(&self) -> usize {
        let mut used = alloc::vec![false; self.values.len()];
        for n in &self.nodes {
            for &i in &n.inputs {
                used[i] = true;
            }
        }
        self.values
            .iter()
            .zip(used)
            .filter(|(_, u)| *u)
            .filter_map(|(v, _)| v.data.as_ref())
            .map(|t| t.len())
            .sum()
    }

    /// Multiply-accumulate count of a node (the linear ops dominate; others count one per
    /// output element so they still show up).
    pub fn macs(&self, node: &Node) -> u64 {
        let out: u64 = node
            .outputs
            .iter()
            .map(|&o| crate::numel(self.shape(o)) as u64)
            .sum();
        match &node.op {
            Op::Conv(c) | Op::QConv { conv: c, .. } => {
                let w = self.shape(node.inputs[1]);
                out * (w[1] * c.kernel[0] * c.kernel[1]) as u64
            }
            Op::ConvTranspose(c) => {
                let x = crate::numel(self.shape(node.inputs[0])) as u64;
                let w = self.shape(node.inputs[1]);
                x * (w[1] * c.kernel[0] * c.kernel[1]) as u64
            }
            Op::MatMul | Op::QMatMul(_) => {
                let a = self.shape(node.inputs[0]);
                out * *a.last().unwrap_or(&1) as u64
            }
            _ => out,
        }
    }
}
