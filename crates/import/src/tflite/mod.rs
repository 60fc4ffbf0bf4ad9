//! TFLite (flatbuffer) importer.
//!
//! TFLite activations are NHWC while the IR is NCHW. The graph's inputs and outputs keep
//! the model's NHWC layout and names; inside, every 4-D activation produced by a
//! layout-aware op is kept in NCHW and axis attributes are translated, so the only
//! transposes left are at the boundary and around layout-blind ops such as RESHAPE.
mod names;
mod ops;
mod quant;
mod reader;
mod sparse;

use std::collections::{HashMap, HashSet};

use shadownet_ir::{Activation, Graph, Op, Tensor, ValueId};

use crate::{Error, InputShapes, Result};
use reader::{bad, ttype, ModelDef, OperatorDef, TensorDef};

const NHWC_TO_NCHW: [usize; 4] = [0, 3, 1, 2];
const NCHW_TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// Position in NCHW of each NHWC axis.
const AXIS_TO_NCHW: [usize; 4] = [0, 2, 3, 1];

pub fn import(bytes: &[u8], input_shapes: &InputShapes) -> Result<Graph> {
    let model = reader::parse(bytes)?;
    let mut imp = Importer::new(&model);
    imp.inputs(input_shapes)?;
    for op in &model.operators {
        imp.operator(op)?;
    }
    imp.outputs()?;
    Ok(imp.g)
}

/// Every operator of the model the importer does not map: (op name, operator count,
/// first operator's output tensor), in order of first appearance.
pub fn unsupported_ops(bytes: &[u8]) -> Result<Vec<(String, usize, String)>> {
    let m = reader::parse(bytes)?;
    let mut out: Vec<(String, usize, String)> = Vec::new();
    for op in &m.operators {
        let Some(code) = m.opcodes.get(op.opcode) else {
            continue;
        };
        if ops::is_mapped(code.builtin, code.custom.as_deref()) {
            continue;
        }
        let name = match (code.builtin, &code.custom) {
            (names::CUSTOM, Some(c)) => c.clone(),
            (b, _) => names::builtin_name(b).map_or_else(|| format!("BUILTIN_{b}"), str::to_string),
        };
        match out.iter_mut().find(|(o, _, _)| *o == name) {
            Some(e) => e.1 += 1,
            None => {
                let node = op
                    .outputs
                    .first()
                    .and_then(|&t| usize::try_from(t).ok())
                    .and_then(|t| m.tensors.get(t))
                    .map_or_else(String::new, |t| t.name.clone());
                out.push((name, 1, node));
            }
        }
    }
    Ok(out)
}

/// The builtins (code, name) the importer maps on int8 / uint8 activations.
pub fn integer_ops() -> Vec<(i32, &'static str)> {
    let mut b: Vec<(i32, &'static str)> = quant::INTEGER_BUILTINS
        .iter()
        .map(|&c| (c, names::builtin_name(c).unwrap_or("?")))
        .collect();
    b.sort_unstable();
    b
}

/// The builtins (code, name) and custom operators the importer maps.
pub fn supported_ops() -> (Vec<(i32, &'static str)>, &'static [&'static str]) {
    let mut b: Vec<(i32, &'static str)> = ops::BUILTINS
        .iter()
        .map(|&c| (c, names::builtin_name(c).unwrap_or("?")))
        .collect();
    b.sort_unstable();
    (b, ops::CUSTOM_OPS)
}

/// A constant in TFLite layout. Integer tensors keep their exact values for attributes.
#[derive(Clone, Debug)]
pub(crate) struct Konst {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub ints: Option<Vec<i64>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Entry {
    Const(Konst),
    /// `nchw`: the value holds the NCHW permutation of a 4-D NHWC tensor.
    Act {
        id: ValueId,
        nchw: bool,
    },
}

pub(crate) struct Importer<'m, 'a> {
    m: &'m ModelDef<'a>,
    pub g: Graph,
    vals: Vec<Option<Entry>>,
    /// IR values made from a tensor for a layout: 0 TFLite layout, 1 NCHW, 2 NHWC copy.
    cache: HashMap<(usize, u8), ValueId>,
    graph_outputs: HashSet<usize>,
    /// Name of the operator being translated (its first output tensor), for errors.
    node: String,
    op_name: String,
}

/// TFLite's SAME padding along one axis: (before, after).
pub(crate) fn same_pads(input: usize, k: usize, s: usize, d: usize) -> (usize, usize) {
    let s = s.max(1);
    let out = input.div_ceil(s);
    let eff = (k.max(1) - 1) * d.max(1) + 1;
    let total = ((out.max(1) - 1) * s + eff).saturating_sub(input);
    (total / 2, total - total / 2)
}

pub(crate) fn permute(shape: &[usize], data: &[f32], perm: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let r = shape.len();
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut in_strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        let src: usize = (0..r).map(|a| idx[a] * in_strides[perm[a]]).sum();
        out.push(data.get(src).copied().unwrap_or(0.0));
        for a in (0..r).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    (out_shape, out)
}

impl<'m, 'a> Importer<'m, 'a> {
    fn new(m: &'m ModelDef<'a>) -> Self {
        let graph_outputs = m
            .outputs
            .iter()
            .filter_map(|&o| usize::try_from(o).ok())
            .collect();
        Importer {
            m,
            g: Graph::new(),
            vals: vec![None; m.tensors.len()],
            cache: HashMap::new(),
            graph_outputs,
            node: String::new(),
            op_name: String::new(),
        }
    }

    pub fn unsupported(&self, detail: impl Into<String>) -> Error {
        Error::Unsupported {
            node: self.node.clone(),
            op: self.op_name.clone(),
            detail: detail.into(),
        }
    }

    pub fn invalid(&self, what: impl Into<String>) -> Error {
        Error::Invalid {
            node: self.node.clone(),
            what: what.into(),
        }
    }

    pub fn tensor(&self, t: i32) -> Result<&'m TensorDef<'a>> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.m.tensors.get(i))
            .ok_or_else(|| {
                bad(format!(
                    "operator '{}' names tensor {t}, which does not exist",
                    self.node
                ))
            })
    }

    fn inputs(&mut self, input_shapes: &InputShapes) -> Result<()> {
        let names: Vec<&str> = self
            .m
            .inputs
            .iter()
            .map(|&i| self.tensor(i).map(|t| t.name.as_str()))
            .collect::<Result<_>>()?;
        if let Some((n, _)) = input_shapes
            .iter()
            .find(|(n, _)| !names.contains(&n.as_str()))
        {
            return Err(Error::UnknownInput(n.clone()));
        }
        for &i in &self.m.inputs {
            let t = self.tensor(i)?;
            if t.ty != ttype::FLOAT32 {
                return Err(Error::Unsupported {
                    node: t.name.clone(),
                    op: format!("{} input", ttype::name(t.ty)),
                    detail: "integer model inputs are not supported (integer activations inside are: give the model a float input that it QUANTIZEs)".into(),
                });
            }
            let sig = t.signature.as_ref().unwrap_or(&t.shape);
            let given = input_shapes
                .iter()
                .find(|(n, _)| *n == t.name)
                .map(|(_, d)| d);
            let shape: Vec<usize> = match given {
                Some(d) => {
                    let fits = d.len() == sig.len()
                        && d.iter().zip(sig).all(|(&g, &s)| s < 0 || g == s as usize);
                    if !fits {
                        return Err(Error::Invalid {
                            node: t.name.clone(),
                            what: format!(
                                "given input shape {d:?} does not match the model's {sig:?}"
                            ),
                        });
                    }
                    d.clone()
                }
                None if sig.iter().any(|&d| d < 0) => {
                    return Err(Error::DynamicInput {
                        name: t.name.clone(),
                        dims: format!("{sig:?}"),
                    })
                }
                None => sig.iter().map(|&d| d as usize).collect(),
            };
            let id = self.g.add_input(t.name.clone(), shape);
            self.vals[i as usize] = Some(Entry::Act { id, nchw: false });
        }
        Ok(())
    }

    fn outputs(&mut self) -> Result<()> {
        self.op_name = "output".into();
        for &o in &self.m.outputs {
            let t = self.tensor(o)?;
            self.node = t.name.clone();
            let id = match self.entry(o)? {
                Entry::Act { id, nchw: true } => {
                    let name = t.name.clone();
                    let perm = NCHW_TO_NHWC.to_vec();
                    self.g
                        .add_node(name.clone(), Op::Transpose { perm }, vec![id], &[name])?[0]
                }
                Entry::Act { id, nchw: false } => id,
                Entry::Const(k) => self
                    .g
                    .add_const(t.name.clone(), Tensor::new(k.shape, k.data)?),
            };
            self.g.outputs.push(id);
        }
        Ok(())
    }

    fn operator(&mut self, op: &OperatorDef<'a>) -> Result<()> {
        let code = self.m.opcodes.get(op.opcode).ok_or_else(|| {
            bad(format!(
                "operator uses opcode {} of {}",
                op.opcode,
                self.m.opcodes.len()
            ))
        })?;
        let first = op.outputs.first().copied().unwrap_or(-1);
        self.node = match self.tensor(first) {
            Ok(t) => t.name.clone(),
            Err(_) => return Err(bad("an operator has no valid output tensor")),
        };
        self.op_name = match (code.builtin, &code.custom) {
            (names::CUSTOM, Some(c)) => c.clone(),
            (b, _) => names::builtin_name(b).map_or_else(|| format!("BUILTIN_{b}"), str::to_string),
        };
        if !ops::is_mapped(code.builtin, code.custom.as_deref()) {
            return Err(self.unsupported(""));
        }
        if self.reads_or_writes_integers(op)? {
            return quant::translate(self, code.builtin, op);
        }
        ops::translate(self, code.builtin, op)
    }

    /// Turns a constant tensor's bytes into f32 values (dequantizing hybrid weights).
    fn load_const(&self, t: &TensorDef, data: &[u8]) -> Result<Konst> {
        self.load_const_as(t, data, true)
    }

    /// A constant's stored integers, not dequantized (int8 weights, int32 biases).
    pub fn konst_raw(&self, t: i32) -> Result<Konst> {
        let td = self.tensor(t)?;
        match td.data {
            Some(d) => self.load_const_as(td, d, false),
            None => Err(self.unsupported(format!("input '{}' must be a constant", td.name))),
        }
    }

    fn load_const_as(&self, t: &TensorDef, data: &[u8], dequantize_ints: bool) -> Result<Konst> {
        let shape = t
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| bad(format!("constant '{}' has shape {:?}", t.name, t.shape)))
            })
            .collect::<Result<Vec<usize>>>()?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "constant '{}' of shape {shape:?} is too large",
                    t.name
                ))
            })?;
        let elem = match t.ty {
            ttype::FLOAT32 | ttype::INT32 => 4,
            ttype::FLOAT16 | ttype::INT16 => 2,
            ttype::INT8 | ttype::UINT8 | ttype::BOOL => 1,
            ttype::INT64 | ttype::FLOAT64 => 8,
            ty => {
                return Err(self.unsupported(format!(
                    "constant '{}' of type {}",
                    t.name,
                    ttype::name(ty)
                )))
            }
        };
        // Sparse constants store only their non-zero blocks; the count follows from the layout.
        let stored = if t.sparsity.is_some() {
            data.len() / elem
        } else {
            n
        };
        if stored.checked_mul(elem) != Some(data.len()) {
            return Err(bad(format!(
                "constant '{}' of shape {shape:?} holds {} bytes, not {stored} x {elem}",
                t.name,
                data.len()
            )));
        }
        let le = |c: &[u8]| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            b
        };
        let chunks = data.chunks_exact(elem);
        let (floats, ints): (Option<Vec<f32>>, Option<Vec<i64>>) = match t.ty {
            ttype::FLOAT32 => (
                Some(
                    chunks
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                None,
            ),
            ttype::FLOAT16 => (
                Some(
                    chunks
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                None,
            ),
            ttype::FLOAT64 => (
                Some(chunks.map(|c| f64::from_le_bytes(le(c)) as f32).collect()),
                None,
            ),
            ttype::INT32 => (
                None,
                Some(
                    chunks
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect(),
                ),
            ),
            ttype::INT16 => (
                None,
                Some(
                    chunks
                        .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                        .collect(),
                ),
            ),
            ttype::INT8 => (None, Some(chunks.map(|c| c[0] as i8 as i64).collect())),
            ttype::UINT8 | ttype::BOOL => (None, Some(chunks.map(|c| c[0] as i64).collect())),
            _ => (
                None,
                Some(chunks.map(|c| i64::from_le_bytes(le(c))).collect()),
            ),
        };
        let (floats, ints) = match &t.sparsity {
            Some(sp) => (
                floats
                    .map(|f| sparse::densify(sp, &shape, &f))
                    .transpose()?,
                ints.map(|i| sparse::densify(sp, &shape, &i)).transpose()?,
            ),
            None => (floats, ints),
        };
        if let (Some(q), Some(iv), true) = (&t.quant, &ints, dequantize_ints) {
            return Ok(Konst {
                data: dequantize(t, q, iv, &shape)?,
                shape,
                ints: None,
            });
        }
        Ok(match (floats, ints) {
            (Some(f), _) => Konst {
                shape,
                data: f,
                ints: None,
            },
            (None, Some(i)) => Konst {
                shape,
                data: i.iter().map(|&v| v as f32).collect(),
                ints: Some(i),
            },
            (None, None) => Konst {
                shape,
                data: Vec::new(),
                ints: None,
            },
        })
    }

    pub fn entry(&self, t: i32) -> Result<Entry> {
        let td = self.tensor(t)?;
        if let Some(e) = &self.vals[t as usize] {
            return Ok(e.clone());
        }
        match td.data {
            Some(d) => Ok(Entry::Const(self.load_const(td, d)?)),
            None => Err(self.invalid(format!(
                "reads tensor '{}' before any operator produces it",
                td.name
            ))),
        }
    }

    pub fn is_const(&self, t: i32) -> Result<bool> {
        Ok(matches!(self.entry(t)?, Entry::Const(_)))
    }

    pub fn konst(&self, t: i32) -> Result<Konst> {
        match self.entry(t)? {
            Entry::Const(k) => Ok(k),
            Entry::Act { .. } => Err(self.unsupported(format!(
                "input '{}' must be a constant",
                self.tensor(t)?.name
            ))),
        }
    }

    pub fn ints(&self, t: i32) -> Result<Vec<i64>> {
        let k = self.konst(t)?;
        Ok(k.ints
            .unwrap_or_else(|| k.data.iter().map(|&v| v as i64).collect()))
    }

    /// The tensor's shape in TFLite layout.
    pub fn shape(&self, t: i32) -> Result<Vec<usize>> {
        Ok(match self.entry(t)? {
            Entry::Const(k) => k.shape,
            Entry::Act { id, nchw: false } => self.g.shape(id).to_vec(),
            Entry::Act { id, nchw: true } => {
                let s = self.g.shape(id);
                NCHW_TO_NHWC.iter().map(|&p| s[p]).collect()
            }
        })
    }

    pub fn rank(&self, t: i32) -> Result<usize> {
        Ok(self.shape(t)?.len())
    }

    fn cached_const(
        &mut self,
        t: i32,
        key: u8,
        shape: Vec<usize>,
        data: Vec<f32>,
        suffix: &str,
    ) -> Result<ValueId> {
        if let Some(&id) = self.cache.get(&(t as usize, key)) {
            return Ok(id);
        }
        let name = format!("{}{suffix}", self.tensor(t)?.name);
        let id = self.g.add_const(name, Tensor::new(shape, data)?);
        self.cache.insert((t as usize, key), id);
        Ok(id)
    }

    fn cached_transpose(
        &mut self,
        t: i32,
        key: u8,
        id: ValueId,
        perm: &[usize],
        suffix: &str,
    ) -> Result<ValueId> {
        if let Some(&id) = self.cache.get(&(t as usize, key)) {
            return Ok(id);
        }
        let name = format!("{}{suffix}", self.tensor(t)?.name);
        let out = self.node_out(
            &name,
            Op::Transpose {
                perm: perm.to_vec(),
            },
            vec![id],
        )?;
        self.cache.insert((t as usize, key), out);
        Ok(out)
    }

    pub fn node_out(&mut self, name: &str, op: Op, inputs: Vec<ValueId>) -> Result<ValueId> {
        Ok(self.g.add_node(name, op, inputs, &[name.to_string()])?[0])
    }

    /// The tensor in TFLite layout.
    pub fn plain(&mut self, t: i32) -> Result<ValueId> {
        match self.entry(t)? {
            Entry::Const(k) => self.cached_const(t, 0, k.shape, k.data, ""),
            Entry::Act { id, nchw: false } => Ok(id),
            Entry::Act { id, nchw: true } => {
                self.cached_transpose(t, 2, id, &NCHW_TO_NHWC, "/nhwc")
            }
        }
    }

    /// The tensor as NCHW; tensors of lower rank are first broadcast to 4-D the way
    /// TFLite broadcasts them against NHWC (leading 1s).
    pub fn nchw(&mut self, t: i32) -> Result<ValueId> {
        let rank = self.rank(t)?;
        if rank > 4 {
            return Err(self.unsupported(format!("a rank-{rank} operand next to 4-D activations")));
        }
        match self.entry(t)? {
            Entry::Act { id, nchw: true } => Ok(id),
            Entry::Const(k) => {
                let mut s4 = vec![1usize; 4 - rank];
                s4.extend_from_slice(&k.shape);
                let (s, d) = permute(&s4, &k.data, &NHWC_TO_NCHW);
                // A rank-1 [C] constant stays compact as [C, 1, 1], which broadcasts the
                // same way against [N, C, H, W].
                let s = if rank <= 3 { s[1..].to_vec() } else { s };
                self.cached_const(t, 1, s, d, "/nchw")
            }
            Entry::Act { id, nchw: false } => {
                let id = if rank < 4 {
                    let mut s4 = vec![1usize; 4 - rank];
                    s4.extend_from_slice(self.g.shape(id));
                    let name = format!("{}/4d", self.tensor(t)?.name);
                    self.node_out(&name, Op::Reshape { shape: s4 }, vec![id])?
                } else {
                    id
                };
                self.cached_transpose(t, 1, id, &NHWC_TO_NCHW, "/nchw")
            }
        }
    }

    /// The tensor as it is stored (activations) or in TFLite layout (constants).
    pub fn any(&mut self, t: i32) -> Result<(ValueId, bool)> {
        match self.entry(t)? {
            Entry::Act { id, nchw } => Ok((id, nchw)),
            Entry::Const(_) => Ok((self.plain(t)?, false)),
        }
    }

    pub fn set_const(&mut self, t: i32, k: Konst) -> Result<()> {
        self.tensor(t)?;
        self.vals[t as usize] = Some(Entry::Const(k));
        Ok(())
    }

    /// Name for the IR value of tensor `t`. A 4-D graph output held in NCHW gets a
    /// suffix because its NHWC twin, made at the end, carries the user-facing name.
    pub fn out_name(&self, t: i32, nchw: bool) -> Result<String> {
        let name = self.tensor(t)?.name.clone();
        Ok(if nchw && self.graph_outputs.contains(&(t as usize)) {
            format!("{name}/nchw")
        } else {
            name
        })
    }

    /// Adds `op` producing tensor `t`, followed by the fused activation.
    pub fn emit(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        t: i32,
        nchw: bool,
        act: Option<Activation>,
    ) -> Result<ValueId> {
        let name = self.out_name(t, nchw)?;
        let id = match act {
            None => self.node_out(&name, op, inputs)?,
            Some(a) => {
                let pre = self.node_out(&format!("{name}/pre_act"), op, inputs)?;
                self.node_out(&name, Op::Act(a), vec![pre])?
            }
        };
        self.set(t, id, nchw)?;
        Ok(id)
    }

    pub fn emit_multi(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        outs: &[i32],
        nchw: bool,
    ) -> Result<()> {
        let names = outs
            .iter()
            .map(|&t| self.out_name(t, nchw))
            .collect::<Result<Vec<_>>>()?;
        let ids = self.g.add_node(names[0].clone(), op, inputs, &names)?;
        for (&t, id) in outs.iter().zip(ids) {
            self.set(t, id, nchw)?;
        }
        Ok(())
    }

    pub fn set(&mut self, t: i32, id: ValueId, nchw: bool) -> Result<()> {
        self.tensor(t)?;
        self.vals[t as usize] = Some(Entry::Act { id, nchw });
        Ok(())
    }
}

fn dequantize(t: &TensorDef, q: &reader::Quant, vals: &[i64], shape: &[usize]) -> Result<Vec<f32>> {
    let per_channel = q.scale.len() > 1;
    let (dim_len, stride) = if per_channel {
        let d = usize::try_from(q.dim).ok().filter(|&d| d < shape.len());
        match d {
            Some(d) if shape[d] == q.scale.len() => {
                (shape[d], shape[d + 1..].iter().product::<usize>())
            }
            _ => {
                return Err(bad(format!(
                    "tensor '{}' has {} scales for quantized dimension {} of shape {shape:?}",
                    t.name,
                    q.scale.len(),
                    q.dim
                )))
            }
        }
    } else {
        (1, 1)
    };
    Ok(vals
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / stride.max(1)) % dim_len.max(1);
            let s = q.scale.get(c).copied().unwrap_or(1.0);
            let zp = q
                .zero_point
                .get(c)
                .or(q.zero_point.first())
                .copied()
                .unwrap_or(0);
            s * (v - zp) as f32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed builtin reaches a translation of its own (with no tensors it fails
    /// on those, never on the fallback arm).
    #[test]
    fn every_listed_builtin_is_mapped() {
        let (builtins, customs) = supported_ops();
        let model = ModelDef {
            opcodes: Vec::new(),
            tensors: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            operators: Vec::new(),
        };
        let op = OperatorDef {
            opcode: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            options: None,
            custom_options: None,
        };
        let mut cases: Vec<(i32, String)> =
            builtins.iter().map(|&(c, n)| (c, n.to_string())).collect();
        cases.extend(customs.iter().map(|c| (names::CUSTOM, c.to_string())));
        for (code, name) in cases {
            let mut imp = Importer::new(&model);
            imp.op_name = name.clone();
            if let Err(e) = ops::translate(&mut imp, code, &op) {
                assert!(!e.to_string().contains(ops::NOT_MAPPED), "{name}: {e}");
            }
        }
    }
}
