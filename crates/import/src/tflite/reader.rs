//! A bounds-checked reader for the few TFLite flatbuffer tables the importer needs.
//!
//! The generated flatbuffers accessors trust offsets once verified, and the verifier
//! needs generated `Verifiable` impls for every table; reading fields through checked
//! slices instead keeps hostile files from panicking with far less code. Field ids
//! follow the official schema (tensorflow/compiler/mlir/lite/schema/schema.fbs).
use crate::{Error, Result};

pub(crate) fn bad(detail: impl Into<String>) -> Error {
    Error::Decode {
        format: "TFLite",
        detail: detail.into(),
    }
}

fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| {
            bad(format!(
                "offset {at} lies past the end of the {}-byte file",
                buf.len()
            ))
        })
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(bytes_at(buf, at)?))
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(bytes_at(buf, at)?))
}

/// One flatbuffer table, located and with its vtable checked.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vt: usize,
    vt_len: usize,
}

impl<'a> Table<'a> {
    pub fn root(buf: &'a [u8]) -> Result<Self> {
        let off = u32_at(buf, 0)? as usize;
        Self::at(buf, off)
    }

    fn at(buf: &'a [u8], pos: usize) -> Result<Self> {
        let soff = i32::from_le_bytes(bytes_at(buf, pos)?) as i64;
        let vt = pos as i64 - soff;
        if vt < 0 || vt as u64 >= buf.len() as u64 {
            return Err(bad(format!(
                "table at {pos} has its vtable outside the file"
            )));
        }
        let vt = vt as usize;
        let vt_len = u16_at(buf, vt)? as usize;
        let tbl_len = u16_at(buf, vt + 2)? as usize;
        if vt_len < 4 || vt + vt_len > buf.len() || pos + tbl_len > buf.len() {
            return Err(bad(format!("table at {pos} runs past the end of the file")));
        }
        Ok(Table {
            buf,
            pos,
            vt,
            vt_len,
        })
    }

    /// Where field `id` lies, if present.
    fn field(&self, id: usize) -> Result<Option<usize>> {
        let slot = 4 + 2 * id;
        if slot + 2 > self.vt_len {
            return Ok(None);
        }
        match u16_at(self.buf, self.vt + slot)? {
            0 => Ok(None),
            o => Ok(Some(self.pos + o as usize)),
        }
    }

    fn scalar<const N: usize>(&self, id: usize) -> Result<Option<[u8; N]>> {
        match self.field(id)? {
            Some(at) => Ok(Some(bytes_at(self.buf, at)?)),
            None => Ok(None),
        }
    }

    pub fn i8(&self, id: usize, default: i8) -> Result<i8> {
        Ok(self.scalar::<1>(id)?.map_or(default, |b| b[0] as i8))
    }

    pub fn bool(&self, id: usize) -> Result<bool> {
        Ok(self.scalar::<1>(id)?.is_some_and(|b| b[0] != 0))
    }

    pub fn i32(&self, id: usize, default: i32) -> Result<i32> {
        Ok(self.scalar(id)?.map_or(default, i32::from_le_bytes))
    }

    pub fn u32(&self, id: usize, default: u32) -> Result<u32> {
        Ok(self.scalar(id)?.map_or(default, u32::from_le_bytes))
    }

    pub fn u64(&self, id: usize, default: u64) -> Result<u64> {
        Ok(self.scalar(id)?.map_or(default, u64::from_le_bytes))
    }

    pub fn f32(&self, id: usize, default: f32) -> Result<f32> {
        Ok(self.scalar(id)?.map_or(default, f32::from_le_bytes))
    }

    /// Follows a uoffset field (table, vector or string) to its target.
    fn indirect(&self, id: usize) -> Result<Option<usize>> {
        match self.field(id)? {
            Some(at) => {
                let off = u32_at(self.buf, at)? as usize;
                Ok(Some(
                    at.checked_add(off).ok_or_else(|| bad("offset overflow"))?,
                ))
            }
            None => Ok(None),
        }
    }

    pub fn table(&self, id: usize) -> Result<Option<Table<'a>>> {
        match self.indirect(id)? {
            Some(at) => Ok(Some(Table::at(self.buf, at)?)),
            None => Ok(None),
        }
    }

    /// The element bytes of a vector of `elem`-byte scalars, checked against the file.
    fn vector(&self, id: usize, elem: usize) -> Result<Option<(&'a [u8], usize, usize)>> {
        let Some(at) = self.indirect(id)? else {
            return Ok(None);
        };
        let n = u32_at(self.buf, at)? as usize;
        let data = n
            .checked_mul(elem)
            .and_then(|len| (at + 4).checked_add(len))
            .and_then(|end| self.buf.get(at + 4..end))
            .ok_or_else(|| {
                bad(format!(
                    "vector at {at} of {n} elements runs past the end of the file"
                ))
            })?;
        Ok(Some((data, at + 4, n)))
    }

    pub fn bytes(&self, id: usize) -> Result<Option<&'a [u8]>> {
        Ok(self.vector(id, 1)?.map(|(d, _, _)| d))
    }

    pub fn string(&self, id: usize) -> Result<Option<String>> {
        Ok(self
            .bytes(id)?
            .map(|b| String::from_utf8_lossy(b).into_owned()))
    }

    pub fn tables(&self, id: usize) -> Result<Vec<Table<'a>>> {
        let Some((_, base, n)) = self.vector(id, 4)? else {
            return Ok(Vec::new());
        };
        (0..n)
            .map(|k| {
                let at = base + 4 * k;
                Table::at(self.buf, at + u32_at(self.buf, at)? as usize)
            })
            .collect()
    }

    pub fn u16s(&self, id: usize) -> Result<Option<Vec<u16>>> {
        Ok(self.vector(id, 2)?.map(|(d, _, _)| {
            d.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        }))
    }

    pub fn i32s(&self, id: usize) -> Result<Option<Vec<i32>>> {
        Ok(self.vector(id, 4)?.map(|(d, _, _)| {
            d.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }))
    }

    pub fn f32s(&self, id: usize) -> Result<Vec<f32>> {
        Ok(self.vector(id, 4)?.map_or_else(Vec::new, |(d, _, _)| {
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }))
    }

    pub fn i64s(&self, id: usize) -> Result<Vec<i64>> {
        Ok(self.vector(id, 8)?.map_or_else(Vec::new, |(d, _, _)| {
            d.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        }))
    }
}

/// TensorType values of the schema.
pub(crate) mod ttype {
    pub const FLOAT32: i8 = 0;
    pub const FLOAT16: i8 = 1;
    pub const INT32: i8 = 2;
    pub const UINT8: i8 = 3;
    pub const INT64: i8 = 4;
    pub const BOOL: i8 = 6;
    pub const INT16: i8 = 7;
    pub const INT8: i8 = 9;
    pub const FLOAT64: i8 = 10;

    pub fn name(t: i8) -> &'static str {
        const NAMES: [&str; 23] = [
            "FLOAT32",
            "FLOAT16",
            "INT32",
            "UINT8",
            "INT64",
            "STRING",
            "BOOL",
            "INT16",
            "COMPLEX64",
            "INT8",
            "FLOAT64",
            "COMPLEX128",
            "UINT64",
            "RESOURCE",
            "VARIANT",
            "UINT32",
            "UINT16",
            "INT4",
            "BFLOAT16",
            "INT2",
            "UINT4",
            "FLOAT8_E4M3FN",
            "FLOAT8_E5M2",
        ];
        usize::try_from(t)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or("unknown type")
    }
}

pub(crate) struct OpCode {
    pub builtin: i32,
    pub custom: Option<String>,
}

pub(crate) struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub dim: i32,
}

pub(crate) struct TensorDef<'a> {
    pub name: String,
    pub shape: Vec<i32>,
    pub signature: Option<Vec<i32>>,
    pub ty: i8,
    /// Constant contents; `None` for activations (buffer 0 or an empty buffer).
    pub data: Option<&'a [u8]>,
    pub quant: Option<Quant>,
    /// Sparse constants (fed to DENSIFY) store their non-zero blocks in this layout.
    pub sparsity: Option<Sparsity>,
}

/// One level of a sparse tensor's traversal: every index (dense) or the stored ones (CSR).
pub(crate) enum DimMeta {
    Dense(usize),
    Csr {
        segments: Vec<usize>,
        indices: Vec<usize>,
    },
}

/// SparsityParameters of the schema: the tensor's dimensions (then its block dimensions)
/// visited in `traversal_order`, each level dense or compressed.
pub(crate) struct Sparsity {
    pub traversal_order: Vec<usize>,
    pub block_map: Vec<usize>,
    pub dims: Vec<DimMeta>,
}

fn index_vector(dm: &Table, type_id: usize, value_id: usize) -> Result<Vec<usize>> {
    // SparseIndexVector union: Int32Vector 1, Uint16Vector 2, Uint8Vector 3; each a table
    // whose field 0 holds the values.
    let ty = dm.i8(type_id, 0)?;
    let Some(v) = dm.table(value_id)? else {
        return Err(bad("a CSR dimension lacks its segment or index vector"));
    };
    Ok(match ty {
        1 => v
            .i32s(0)?
            .unwrap_or_default()
            .into_iter()
            .map(|x| usize::try_from(x).map_err(|_| bad(format!("negative sparse index {x}"))))
            .collect::<Result<_>>()?,
        2 => v
            .u16s(0)?
            .unwrap_or_default()
            .into_iter()
            .map(usize::from)
            .collect(),
        3 => v
            .bytes(0)?
            .unwrap_or_default()
            .iter()
            .map(|&x| x as usize)
            .collect(),
        t => return Err(bad(format!("sparse index vector of unknown type {t}"))),
    })
}

fn sparsity(s: &Table) -> Result<Sparsity> {
    // SparsityParameters: traversal_order 0, block_map 1, dim_metadata 2.
    let list = |id| -> Result<Vec<usize>> {
        s.i32s(id)?
            .unwrap_or_default()
            .into_iter()
            .map(|x| usize::try_from(x).map_err(|_| bad(format!("negative sparsity entry {x}"))))
            .collect()
    };
    let dims = s
        .tables(2)?
        .iter()
        .map(|dm| {
            // DimensionMetadata: format 0 (DENSE 0, SPARSE_CSR 1), dense_size 1,
            // array_segments_type 2, array_segments 3, array_indices_type 4, array_indices 5.
            Ok(match dm.i8(0, 0)? {
                0 => DimMeta::Dense(
                    usize::try_from(dm.i32(1, 0)?)
                        .map_err(|_| bad("negative dense dimension size"))?,
                ),
                1 => DimMeta::Csr {
                    segments: index_vector(dm, 2, 3)?,
                    indices: index_vector(dm, 4, 5)?,
                },
                f => return Err(bad(format!("sparse dimension format {f}"))),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Sparsity {
        traversal_order: list(0)?,
        block_map: list(1)?,
        dims,
    })
}

pub(crate) struct OperatorDef<'a> {
    pub opcode: usize,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: Option<Table<'a>>,
    pub custom_options: Option<&'a [u8]>,
}

/// The first subgraph of a model (the others only serve control-flow ops, which the
/// importer rejects anyway).
pub(crate) struct ModelDef<'a> {
    pub opcodes: Vec<OpCode>,
    pub tensors: Vec<TensorDef<'a>>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub operators: Vec<OperatorDef<'a>>,
}

pub(crate) fn parse(buf: &[u8]) -> Result<ModelDef<'_>> {
    if buf.len() < 8 || &buf[4..8] != b"TFL3" {
        return Err(bad("missing the TFL3 file identifier"));
    }
    let model = Table::root(buf)?;
    // Model: version 0, operator_codes 1, subgraphs 2, description 3, buffers 4.
    let opcodes = model
        .tables(1)?
        .iter()
        .map(|c| {
            // OperatorCode: deprecated_builtin_code 0 (byte), custom_code 1, version 2,
            // builtin_code 3; codes above 127 only fit the newer field.
            let old = c.i8(0, 0)? as i32;
            let new = c.i32(3, 0)?;
            Ok(OpCode {
                builtin: old.max(new),
                custom: c.string(1)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let buffers = model
        .tables(4)?
        .iter()
        .map(|b| {
            // Buffer: data 0, offset 1, size 2. Files over 2 GiB keep the data after the
            // flatbuffer and point at it by absolute offset.
            let offset = b.u64(1, 0)?;
            if offset > 1 {
                let size = b.u64(2, 0)?;
                let end = offset
                    .checked_add(size)
                    .filter(|&e| e <= buf.len() as u64)
                    .ok_or_else(|| {
                        bad(format!(
                            "buffer at {offset} of {size} bytes lies past the end of the file"
                        ))
                    })?;
                Ok(&buf[offset as usize..end as usize])
            } else {
                Ok(b.bytes(0)?.unwrap_or(&[]))
            }
        })
        .collect::<Result<Vec<&[u8]>>>()?;
    let subgraphs = model.tables(2)?;
    let sg = subgraphs
        .first()
        .ok_or_else(|| bad("the model has no subgraph"))?;
    // SubGraph: tensors 0, inputs 1, outputs 2, operators 3, name 4.
    let tensors = sg
        .tables(0)?
        .iter()
        .enumerate()
        .map(|(k, t)| {
            // Tensor: shape 0, type 1, buffer 2, name 3, quantization 4, is_variable 5,
            // sparsity 6, shape_signature 7.
            let buffer = t.u32(2, 0)? as usize;
            let data = match buffer {
                0 => None,
                b => Some(*buffers.get(b).ok_or_else(|| {
                    bad(format!("tensor {k} names buffer {b} of {}", buffers.len()))
                })?),
            };
            let quant = match t.table(4)? {
                // QuantizationParameters: min 0, max 1, scale 2, zero_point 3, details_type 4,
                // details 5, quantized_dimension 6.
                Some(q) => {
                    let scale = q.f32s(2)?;
                    (!scale.is_empty())
                        .then(|| -> Result<Quant> {
                            Ok(Quant {
                                scale,
                                zero_point: q.i64s(3)?,
                                dim: q.i32(6, 0)?,
                            })
                        })
                        .transpose()?
                }
                None => None,
            };
            Ok(TensorDef {
                name: t.string(3)?.unwrap_or_else(|| format!("tensor{k}")),
                shape: t.i32s(0)?.unwrap_or_default(),
                signature: t.i32s(7)?,
                ty: t.i8(1, 0)?,
                data: data.filter(|d| !d.is_empty()),
                quant,
                sparsity: t.table(6)?.as_ref().map(sparsity).transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let operators = sg
        .tables(3)?
        .iter()
        .map(|o| {
            // Operator: opcode_index 0, inputs 1, outputs 2, builtin_options_type 3,
            // builtin_options 4, custom_options 5.
            Ok(OperatorDef {
                opcode: o.u32(0, 0)? as usize,
                inputs: o.i32s(1)?.unwrap_or_default(),
                outputs: o.i32s(2)?.unwrap_or_default(),
                options: o.table(4)?,
                custom_options: o.bytes(5)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelDef {
        opcodes,
        tensors,
        inputs: sg.i32s(1)?.unwrap_or_default(),
        outputs: sg.i32s(2)?.unwrap_or_default(),
        operators,
    })
}
