use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The op (or this configuration of it) has no kernel.
    Unsupported {
        node: String,
        op: &'static str,
    },
    /// An input tensor does not have the shape the graph promised.
    BadInput {
        node: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A graph input is missing or has the wrong shape.
    GraphInput {
        name: String,
        expected: Vec<usize>,
        got: Option<Vec<usize>>,
    },
    Ir(shadownet_ir::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unsupported { node, op } => write!(f, "node '{node}': no kernel for {op}"),
            Error::BadInput {
                node,
                expected,
                got,
            } => {
                write!(
                    f,
                    "node '{node}': expected input of shape {expected:?}, got {got:?}"
                )
            }
            Error::GraphInput {
                name,
                expected,
                got: Some(got),
            } => write!(
                f,
                "input '{name}' has shape {got:?}, but the model expects {expected:?}"
            ),
            Error::GraphInput {
                name,
                expected,
                got: None,
            } => {
                write!(f, "input '{name}' (shape {expected:?}) was not given")
            }
            Error::Ir(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for Error {}

impl From<shadownet_ir::Error> for Error {
    fn from(e: shadownet_ir::Error) -> Self {
        Error::Ir(e)
    }
}

pub type Result<T> = core::result::Result<T, Error>;
