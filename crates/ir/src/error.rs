use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Errors raised while building or checking a graph. Every variant that concerns a node
/// carries its name, so a user can find it in the original model.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    ShapeMismatch {
        node: String,
        expected: String,
        got: Vec<Vec<usize>>,
    },
    Arity {
        node: String,
        op: &'static str,
        expected: &'static str,
        got: usize,
    },
    InvalidAttr {
        node: String,
        what: String,
    },
    TensorSize {
        shape: Vec<usize>,
        len: usize,
    },
    UnknownValue(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch {
                node,
                expected,
                got,
            } => write!(
                f,
                "node '{node}': expected {expected}, got input shapes {got:?}"
            ),
            Error::Arity {
                node,
                op,
                expected,
                got,
            } => write!(
                f,
                "node '{node}' ({op}): expected {expected} inputs, got {got}"
            ),
            Error::InvalidAttr { node, what } => write!(f, "node '{node}': {what}"),
            Error::TensorSize { shape, len } => {
                write!(f, "tensor of shape {shape:?} cannot hold {len} elements")
            }
            Error::UnknownValue(id) => write!(f, "graph refers to unknown value #{id}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;
