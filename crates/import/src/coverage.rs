//! What the importers cover: the ops of a model they do not map (all of them, before
//! any import is tried), and docs/ops.md, generated from the importers' own tables.
use std::fmt::Write;
use std::path::Path;

use crate::{onnx, tflite, Error, Result};

/// An op a model uses that the importer does not map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedOp {
    /// The op type (ONNX, with its domain when not the default one) or TFLite operator.
    pub op: String,
    /// How many nodes use it.
    pub count: usize,
    /// The first such node (ONNX node name, TFLite output tensor).
    pub first_node: String,
}

/// Every op of the model at `path` that the importer does not map, in order of first use.
pub fn unsupported_ops(path: &Path) -> Result<Vec<UnsupportedOp>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    unsupported_ops_bytes(&bytes)
}

pub fn unsupported_ops_bytes(bytes: &[u8]) -> Result<Vec<UnsupportedOp>> {
    let list = if bytes.len() >= 8 && &bytes[4..8] == b"TFL3" {
        tflite::unsupported_ops(bytes)?
    } else {
        onnx::unsupported_ops(bytes)?
    };
    Ok(list
        .into_iter()
        .map(|(op, count, first_node)| UnsupportedOp {
            op,
            count,
            first_node,
        })
        .collect())
}

/// docs/ops.md: every ONNX op (with the opsets it is mapped for) and every TFLite
/// operator the importers map, from the tables the importers dispatch on.
pub fn ops_markdown() -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Supported operators\n\n\
         Generated from the importers' own tables (`cargo test -p shadownet-import --test ops_doc` \
         checks this file; `SHADOWNET_BLESS=1` rewrites it). A model using anything else is \
         refused with the op named; `shadownet inspect MODEL` lists every unsupported op of a \
         model at once.\n\n\
         Quantized (int8/uint8) tensors flow as exact integers; the integer ops compute in i32 \
         and requantise as ONNX Runtime (ONNX models) or LiteRT (TFLite models) do.\n"
    );
    let ops = onnx::supported_ops();
    let contrib = ops.iter().filter(|o| !o.0.is_empty()).count();
    let _ = writeln!(
        s,
        "## ONNX ({} ops, {contrib} contrib ops)\n\nDefault domain; opsets 7 (or the op's first opset) to {}.\n",
        ops.len() - contrib,
        onnx::OPSET_MAX
    );
    let _ = writeln!(s, "| op | opsets |\n|---|---|");
    let mut default: Vec<_> = ops.iter().filter(|o| o.0.is_empty()).collect();
    default.sort_by_key(|o| o.1);
    for (_, op, a, b) in default {
        let _ = writeln!(s, "| {op} | {a}–{b} |");
    }
    let _ = writeln!(
        s,
        "\nONNX Runtime contrib ops (domain `com.microsoft`, as its quantization tool writes \
         them in QOperator format):\n"
    );
    let _ = writeln!(s, "| op | opset |\n|---|---|");
    for (_, op, a, _) in ops.iter().filter(|o| !o.0.is_empty()) {
        let _ = writeln!(s, "| {op} | {a} |");
    }
    let (builtins, customs) = tflite::supported_ops();
    let _ = writeln!(
        s,
        "\nQDQ groups `DequantizeLinear → Conv / MatMul / Gemm → QuantizeLinear` (constant \
         weights and int32 bias) become one integer op, as ONNX Runtime fuses them.\n"
    );
    let _ = writeln!(
        s,
        "## TFLite ({} builtins, {} custom)\n\n\
         Sparse constants (the tensor `sparsity` field, CSR and block layouts) are expanded \
         at load, so DENSIFY folds away. Builtins marked int8 / uint8 also take integer \
         activations (per-tensor) with per-tensor or per-channel weights; any other builtin \
         on integer activations is refused by name.\n",
        builtins.len(),
        customs.len()
    );
    let integer = tflite::integer_ops();
    let _ = writeln!(s, "| builtin | code | int8 / uint8 |\n|---|---|---|");
    for (code, name) in &builtins {
        let int = if integer.iter().any(|(c, _)| c == code) {
            "yes"
        } else {
            ""
        };
        let _ = writeln!(s, "| {name} | {code} | {int} |");
    }
    let _ = writeln!(s, "\nCustom operators:\n");
    for c in customs {
        let _ = writeln!(s, "- {c}");
    }
    s
}
