//! Constants known at import time: decoding TensorProto (inline and external data) and
//! folding layout/arithmetic ops on them, for both float and integer data.
use std::path::Path;

use shadownet_ir::{numel, BinaryOp, Op, ReduceOp, Tensor};

use super::proto::TensorProto;
use crate::{Error, Result};

/// Element counts beyond this are refused when a constant would be materialised from
/// values in the file (ConstantOfShape, Expand, Range ...), so a hostile model cannot make
/// the importer allocate without bound.
pub(crate) const MAX_CONST_ELEMS: usize = 1 << 28;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

/// A constant with its integer-ness kept: shape arithmetic needs exact int64 values,
/// while weights stay f32.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CTensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

// ONNX TensorProto.DataType codes.
pub(crate) const FLOAT: i32 = 1;
pub(crate) const UINT8: i32 = 2;
pub(crate) const INT8: i32 = 3;
pub(crate) const UINT16: i32 = 4;
pub(crate) const INT16: i32 = 5;
pub(crate) const INT32: i32 = 6;
pub(crate) const INT64: i32 = 7;
pub(crate) const BOOL: i32 = 9;
pub(crate) const FLOAT16: i32 = 10;
pub(crate) const DOUBLE: i32 = 11;
pub(crate) const UINT32: i32 = 12;
pub(crate) const UINT64: i32 = 13;
pub(crate) const BFLOAT16: i32 = 16;

pub(crate) fn is_float_type(t: i32) -> bool {
    matches!(t, FLOAT | FLOAT16 | DOUBLE | BFLOAT16)
}

pub(crate) fn type_name(t: i32) -> String {
    super::proto::tensor_proto::DataType::try_from(t)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("type {t}"))
}

impl CTensor {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self.data, Data::F(_))
    }

    pub fn ints(&self) -> Vec<i64> {
        match &self.data {
            Data::I(v) => v.clone(),
            Data::F(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn f64s(&self) -> Vec<f64> {
        match &self.data {
            Data::F(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            data: self.floats(),
        }
    }

    pub fn from_tensor(t: Tensor) -> Self {
        CTensor {
            shape: t.shape,
            data: Data::F(t.data),
        }
    }

    pub fn ints_of(shape: Vec<usize>, v: Vec<i64>) -> Self {
        CTensor {
            shape,
            data: Data::I(v),
        }
    }

    /// Elements at the given flat indices, as a tensor of `shape`.
    fn pick(&self, idx: &[usize], shape: Vec<usize>) -> CTensor {
        let data = match &self.data {
            Data::F(v) => Data::F(idx.iter().map(|&i| v[i]).collect()),
            Data::I(v) => Data::I(idx.iter().map(|&i| v[i]).collect()),
        };
        CTensor { shape, data }
    }
}

fn bad(name: &str, what: impl Into<String>) -> Error {
    Error::Invalid {
        node: format!("initializer '{name}'"),
        what: what.into(),
    }
}

/// Decodes a TensorProto into a constant. `base_dir` resolves external data files.
pub(crate) fn from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<CTensor> {
    let name = t.name();
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| bad(name, format!("negative dimension {d}")))?);
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_CONST_ELEMS)
        .ok_or_else(|| bad(name, format!("too many elements for shape {shape:?}")))?;
    let dt = t.data_type();
    let external;
    let raw: Option<&[u8]> = if t.data_location == Some(1) {
        external = read_external(t, base_dir)?;
        Some(&external)
    } else {
        t.raw_data.as_deref()
    };
    let data = match raw {
        Some(raw) => decode_raw(name, dt, raw, n)?,
        None => match dt {
            FLOAT => Data::F(t.float_data.clone()),
            DOUBLE => Data::F(t.double_data.iter().map(|&x| x as f32).collect()),
            FLOAT16 => Data::F(
                t.int32_data
                    .iter()
                    .map(|&x| half::f16::from_bits(x as u16).to_f32())
                    .collect(),
            ),
            BFLOAT16 => Data::F(
                t.int32_data
                    .iter()
                    .map(|&x| half::bf16::from_bits(x as u16).to_f32())
                    .collect(),
            ),
            INT64 => Data::I(t.int64_data.clone()),
            INT32 | INT16 | INT8 | UINT16 | UINT8 | BOOL => {
                Data::I(t.int32_data.iter().map(|&x| x as i64).collect())
            }
            UINT32 | UINT64 => Data::I(t.uint64_data.iter().map(|&x| x as i64).collect()),
            _ => {
                return Err(bad(
                    name,
                    format!("unsupported element type {}", type_name(dt)),
                ))
            }
        },
    };
    let c = CTensor { shape, data };
    if c.len() != n {
        return Err(bad(
            name,
            format!(
                "shape {:?} needs {n} elements, the data holds {}",
                c.shape,
                c.len()
            ),
        ));
    }
    Ok(c)
}

fn decode_raw(name: &str, dt: i32, raw: &[u8], n: usize) -> Result<Data> {
    let width = match dt {
        FLOAT | INT32 | UINT32 => 4,
        DOUBLE | INT64 | UINT64 => 8,
        FLOAT16 | BFLOAT16 | INT16 | UINT16 => 2,
        INT8 | UINT8 | BOOL => 1,
        _ => {
            return Err(bad(
                name,
                format!("unsupported element type {}", type_name(dt)),
            ))
        }
    };
    if raw.len() != n * width {
        return Err(bad(
            name,
            format!(
                "raw data has {} bytes, expected {} ({n} elements)",
                raw.len(),
                n * width
            ),
        ));
    }
    let ch = raw.chunks_exact(width);
    let arr = |c: &[u8]| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..c.len()].copy_from_slice(c);
        a
    };
    Ok(match dt {
        FLOAT => Data::F(
            ch.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DOUBLE => Data::F(ch.map(|c| f64::from_le_bytes(arr(c)) as f32).collect()),
        FLOAT16 => Data::F(
            ch.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        BFLOAT16 => Data::F(
            ch.map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        INT64 | UINT64 => Data::I(ch.map(|c| i64::from_le_bytes(arr(c))).collect()),
        INT32 => Data::I(
            ch.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        UINT32 => Data::I(
            ch.map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        INT16 => Data::I(
            ch.map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        UINT16 => Data::I(
            ch.map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        INT8 => Data::I(ch.map(|c| c[0] as i8 as i64).collect()),
        _ => Data::I(ch.map(|c| c[0] as i64).collect()),
    })
}

fn read_external(t: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>> {
    let name = t.name();
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        let parse = |v: &str| {
            v.parse::<u64>().map_err(|_| {
                bad(
                    name,
                    format!("external data {} '{v}' is not a number", kv.key()),
                )
            })
        };
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => offset = parse(kv.value())?,
            "length" => length = Some(parse(kv.value())?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| bad(name, "external data without a location"))?;
    let base = base_dir.ok_or_else(|| {
        bad(
            name,
            format!("data is stored in external file '{location}'; load the model from a file path so it can be found"),
        )
    })?;
    // A model file names a file beside it, never one elsewhere on the disk: absolute
    // paths and `..` would let a model read any file the user can.
    let rel = std::path::Path::new(&location);
    if !rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad(
            name,
            format!("external data location '{location}' is not a relative path inside the model's directory"),
        ));
    }
    let path = base.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = match length {
        Some(l) => start.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)),
        None => bytes.len(),
    };
    bytes.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
        bad(
            name,
            format!(
                "external data range {start}..{end} lies outside '{}' ({} bytes)",
                path.display(),
                bytes.len()
            ),
        )
    })
}

/// Calls `f` with every multi-index of `shape` in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        f(&idx);
        let mut k = shape.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Flat source index of each output element when `input` is numpy-broadcast to `out`.
fn broadcast_map(input: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(input);
    let off = out.len() - input.len();
    let mut m = Vec::with_capacity(numel(out));
    for_each_index(out, |o| {
        let mut s = 0;
        for k in 0..input.len() {
            if input[k] != 1 {
                s += o[k + off] * st[k];
            }
        }
        m.push(s);
    });
    m
}

fn slice_map(input: &[usize], out: &[usize], start: &[usize], step: &[i64]) -> Vec<usize> {
    let st = strides(input);
    let mut m = Vec::with_capacity(numel(out));
    for_each_index(out, |o| {
        let mut s = 0i64;
        for k in 0..o.len() {
            s += (start[k] as i64 + o[k] as i64 * step[k]) * st[k] as i64;
        }
        m.push(s as usize);
    });
    m
}

/// Evaluates the ops that shape arithmetic and weight preprocessing are made of, on
/// constants of either element kind. Returns None for ops left to the kernels.
/// `outs` come from `infer_shapes`, so the inputs are known to fit the op.
pub(crate) fn fold(op: &Op, x: &[&CTensor], outs: &[Vec<usize>]) -> Option<Vec<CTensor>> {
    let first = x.first()?;
    let out = outs.first()?.clone();
    let one = |t: CTensor| Some(vec![t]);
    match op {
        Op::Identity | Op::Reshape { .. } => one(CTensor {
            shape: out,
            data: first.data.clone(),
        }),
        Op::Transpose { perm } => {
            let st = strides(&first.shape);
            let mut m = Vec::with_capacity(first.len());
            for_each_index(&out, |o| {
                m.push(o.iter().zip(perm).map(|(&i, &p)| i * st[p]).sum())
            });
            one(first.pick(&m, out))
        }
        Op::Slice {
            axes,
            starts,
            steps,
            ..
        } => {
            let r = first.shape.len();
            let (mut start, mut step) = (vec![0usize; r], vec![1i64; r]);
            for (k, &a) in axes.iter().enumerate() {
                start[a] = starts[k];
                step[a] = steps[k];
            }
            one(first.pick(&slice_map(&first.shape, &out, &start, &step), out))
        }
        Op::Split { axis, sizes } => {
            let r = first.shape.len();
            let mut res = Vec::new();
            let mut at = 0;
            for (k, &n) in sizes.iter().enumerate() {
                let mut start = vec![0usize; r];
                start[*axis] = at;
                let m = slice_map(&first.shape, &outs[k], &start, &vec![1; r]);
                res.push(first.pick(&m, outs[k].clone()));
                at += n;
            }
            Some(res)
        }
        Op::Gather {
            axis,
            indices,
            indices_shape,
        } => {
            let st = strides(&first.shape);
            let (ia, ir) = (*axis, indices_shape.len());
            let ist = strides(indices_shape);
            let mut m = Vec::with_capacity(numel(&out));
            for_each_index(&out, |o| {
                let mut s = 0;
                for k in 0..ia {
                    s += o[k] * st[k];
                }
                let flat: usize = (0..ir).map(|k| o[ia + k] * ist[k]).sum();
                s += indices[flat] * st[ia];
                for k in ia + 1..first.shape.len() {
                    s += o[k - 1 + ir] * st[k];
                }
                m.push(s);
            });
            one(first.pick(&m, out))
        }
        Op::Expand { .. } => one(first.pick(&broadcast_map(&first.shape, &out), out)),
        Op::Tile { .. } => {
            let st = strides(&first.shape);
            let mut m = Vec::with_capacity(numel(&out));
            for_each_index(&out, |o| {
                m.push((0..o.len()).map(|k| (o[k] % first.shape[k]) * st[k]).sum())
            });
            one(first.pick(&m, out))
        }
        Op::Concat { axis } => {
            let outer: usize = out[..*axis].iter().product();
            let inner: usize = out[axis + 1..].iter().product();
            let all_int = x.iter().all(|t| !t.is_float());
            let (mut fi, mut ff) = (Vec::new(), Vec::new());
            let parts: Vec<(Vec<i64>, Vec<f32>)> = x
                .iter()
                .map(|t| {
                    if all_int {
                        (t.ints(), Vec::new())
                    } else {
                        (Vec::new(), t.floats())
                    }
                })
                .collect();
            for o in 0..outer {
                for (t, (pi, pf)) in x.iter().zip(&parts) {
                    let chunk = t.shape[*axis] * inner;
                    if all_int {
                        fi.extend_from_slice(&pi[o * chunk..(o + 1) * chunk]);
                    } else {
                        ff.extend_from_slice(&pf[o * chunk..(o + 1) * chunk]);
                    }
                }
            }
            let data = if all_int { Data::I(fi) } else { Data::F(ff) };
            one(CTensor { shape: out, data })
        }
        Op::Binary(b) if *b != BinaryOp::PRelu => {
            let y = x.get(1)?;
            let (ma, mb) = (
                broadcast_map(&first.shape, &out),
                broadcast_map(&y.shape, &out),
            );
            let data = match (&first.data, &y.data) {
                (Data::I(a), Data::I(c)) => {
                    let mut v = Vec::with_capacity(ma.len());
                    for (&i, &j) in ma.iter().zip(&mb) {
                        let (p, q) = (a[i], c[j]);
                        v.push(match b {
                            BinaryOp::Add => p.wrapping_add(q),
                            BinaryOp::Sub => p.wrapping_sub(q),
                            BinaryOp::Mul => p.wrapping_mul(q),
                            // Integer division truncates, as in ONNX Runtime; a zero divisor
                            // would trap, so it is left to the float path's inf.
                            BinaryOp::Div if q != 0 => p.wrapping_div(q),
                            BinaryOp::Div => return None,
                            BinaryOp::Pow => (p as f64).powf(q as f64) as i64,
                            BinaryOp::Max => p.max(q),
                            BinaryOp::Min => p.min(q),
                            BinaryOp::PRelu => return None,
                        });
                    }
                    Data::I(v)
                }
                _ => {
                    let (a, c) = (first.floats(), y.floats());
                    let mut v = Vec::with_capacity(ma.len());
                    for (&i, &j) in ma.iter().zip(&mb) {
                        let (p, q) = (a[i], c[j]);
                        v.push(match b {
                            BinaryOp::Add => p + q,
                            BinaryOp::Sub => p - q,
                            BinaryOp::Mul => p * q,
                            BinaryOp::Div => p / q,
                            BinaryOp::Pow => p.powf(q),
                            BinaryOp::Max => p.max(q),
                            BinaryOp::Min => p.min(q),
                            BinaryOp::PRelu => return None,
                        });
                    }
                    Data::F(v)
                }
            };
            one(CTensor { shape: out, data })
        }
        Op::Reduce { op, axes, .. } => {
            let vals = first.f64s();
            let n = numel(&out);
            let init = match op {
                ReduceOp::Prod => 1.0,
                ReduceOp::Max => f64::NEG_INFINITY,
                ReduceOp::Min => f64::INFINITY,
                _ => 0.0,
            };
            let mut acc = vec![init; n];
            let kept: Vec<usize> = (0..first.shape.len())
                .filter(|a| !axes.contains(a))
                .collect();
            let kst = strides(&kept.iter().map(|&a| first.shape[a]).collect::<Vec<_>>());
            let mut count = 0usize;
            let mut flat = 0usize;
            for_each_index(&first.shape, |i| {
                let o: usize = kept.iter().zip(&kst).map(|(&a, &s)| i[a] * s).sum();
                let v = vals[flat];
                flat += 1;
                let a = &mut acc[o];
                *a = match op {
                    ReduceOp::Sum | ReduceOp::Mean => *a + v,
                    ReduceOp::Prod => *a * v,
                    ReduceOp::Max => a.max(v),
                    ReduceOp::Min => a.min(v),
                    ReduceOp::SumSquare | ReduceOp::L2 => *a + v * v,
                };
                if o == 0 {
                    count += 1;
                }
            });
            for a in &mut acc {
                match op {
                    ReduceOp::Mean => *a /= count.max(1) as f64,
                    ReduceOp::L2 => *a = a.sqrt(),
                    _ => {}
                }
            }
            let data = if first.is_float() || matches!(op, ReduceOp::Mean | ReduceOp::L2) {
                Data::F(acc.iter().map(|&v| v as f32).collect())
            } else {
                Data::I(acc.iter().map(|&v| v as i64).collect())
            };
            one(CTensor { shape: out, data })
        }
        _ => None,
    }
}
