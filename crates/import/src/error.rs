use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The bytes are not a valid model file of the format.
    #[error("not a valid {format} model: {detail}")]
    Decode {
        format: &'static str,
        detail: String,
    },
    #[error("node '{node}': unsupported op {op}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    Unsupported {
        node: String,
        op: String,
        detail: String,
    },
    /// An input dimension is not fixed by the model and was not given by the user.
    #[error("input '{name}' has free dimensions {dims}; give its size with --input-shape {name}=1,3,224,224 (for example)")]
    DynamicInput { name: String, dims: String },
    #[error("--input-shape names '{0}', which is not an input of the model")]
    UnknownInput(String),
    #[error("node '{node}': {what}")]
    Invalid { node: String, what: String },
    #[error(transparent)]
    Ir(#[from] shadownet_ir::Error),
    #[error(transparent)]
    Kernel(#[from] shadownet_kernels::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
