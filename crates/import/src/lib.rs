//! Model importers: ONNX (protobuf) and TFLite (flatbuffers) into a static-shape
//! [`shadownet_ir::Graph`].
pub mod coverage;
mod error;
pub mod onnx;
pub mod passes;
pub mod tflite;

pub use coverage::{unsupported_ops, UnsupportedOp};
pub use error::{Error, Result};

use std::path::Path;

use shadownet_ir::Graph;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Onnx,
    Tflite,
}

/// An imported model: a graph whose inputs and outputs use the model's own layout
/// (NCHW for ONNX, NHWC for TFLite) and names.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    pub format: Format,
}

/// User-given sizes for inputs whose declared shape has free dimensions.
pub type InputShapes = [(String, Vec<usize>)];

/// Loads an ONNX or TFLite model, chosen by content (TFLite files carry "TFL3" at byte 4).
pub fn load_model(path: &Path, input_shapes: &InputShapes) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    load_with_base(&bytes, path.parent(), input_shapes)
}

pub fn load_model_bytes(bytes: &[u8], input_shapes: &InputShapes) -> Result<Model> {
    load_with_base(bytes, None, input_shapes)
}

/// `base_dir` locates ONNX external-data files; byte-only loads have none.
fn load_with_base(
    bytes: &[u8],
    base_dir: Option<&Path>,
    input_shapes: &InputShapes,
) -> Result<Model> {
    let (graph, format) = if bytes.len() >= 8 && &bytes[4..8] == b"TFL3" {
        (tflite::import(bytes, input_shapes)?, Format::Tflite)
    } else {
        (onnx::import(bytes, base_dir, input_shapes)?, Format::Onnx)
    };
    let graph = passes::optimize(graph)?;
    Ok(Model { graph, format })
}
