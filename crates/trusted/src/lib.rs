//! The shadownet trusted core.
//!
//! Everything secret lives here: the restoration parameters of every outsourced linear
//! layer, the biases, the masks, the layers kept whole in the TEE and every nonlinear
//! layer. The core is an I/O-free state machine: the host hands it a [`HostToTee`] message
//! and gets back a [`TeeToHost`] message, as an ECALL/OCALL pair would on a real TEE. It
//! has no threads, no files and no clock, links no accelerator or host code, and forbids
//! unsafe code; it only opens packages signed by a vendor key pinned at provisioning.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod core;
pub mod crypto;
mod error;
pub mod exact;
pub mod field;
pub mod format;
pub mod paper;
pub mod platform;
pub mod pool;

pub use crate::core::{
    chunk_aad, ChunkId, HostToTee, HostToTeeRef, Payload, PayloadRef, PoolEntryRef, PoolPart,
    TeeToHost, TrustedCore, MAX_PRECOMPUTE,
};
pub use error::TeeError;
pub use format::{LinearKind, PublicHeader, PublicLayer, Scheme, SecretModel};
pub use platform::{Counter, Platform, PlatformError};
