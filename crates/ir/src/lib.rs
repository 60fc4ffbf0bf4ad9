//! The shared vocabulary of shadownet: f32 tensors with static shapes, a closed set of
//! CNN ops, and a graph of them.
//!
//! This crate is `no_std + alloc` because the trusted core evaluates the same op
//! definitions as the host engine; one definition keeps the two from drifting apart.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod error;
mod graph;
mod op;
mod shape;
mod tensor;

pub use error::{Error, Result};
pub use graph::{Graph, Node, Value, ValueId};
pub use op::*;
pub use shape::{broadcast_shapes, checked_numel, infer_shapes, numel};
pub use tensor::{IntTensor, RingTensor, Tensor};
