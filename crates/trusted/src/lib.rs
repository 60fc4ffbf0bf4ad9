//! The shadownet trusted core.
//!
//! Everything secret lives here: the restoration parameters of every outsourced linear
//! layer, the biases, the masks and every nonlinear layer. The core is an I/O-free state
//! machine: the host hands it a [`HostToTee`] message and gets back a [`TeeToHost`]
//! message, as an ECALL/OCALL pair would on a real TEE. It has no threads, no files and no
//! clock, and it depends on no accelerator or host code.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod core;
pub mod format;
pub mod freivalds;
pub mod onetime;
pub mod platform;
pub mod restore;
pub mod seal;

pub use crate::core::{decode_public, HostToTee, TeeError, TeeToHost, TrustedCore};
pub use format::{
    LinearKind, Mask, PublicLayer, PublicPackage, Restore, Scheme, SecretLayer, SecretModel,
};
pub use platform::{CounterError, Platform};
