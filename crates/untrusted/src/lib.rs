//! The untrusted host. It sees only the public part of a package, the sealed chunks and
//! pool entries it stores, and the masked, transformed tensors the trusted core chooses to
//! hand out; it never holds a real weight, bias, mask, scale, permutation or plain
//! activation (in `--enclave process` mode it never holds the device key either).
pub mod accel;
pub mod enclave;
mod host;

pub use accel::{Accelerator, CpuAccelerator, Observed, PublicModel, SpyAccelerator};
pub use enclave::{Enclave, InProcEnclave, ProcessEnclave};
pub use host::{SecureModel, Stats};
pub use shadownet_enclave::{FilePlatform, MemoryPlatform};

use shadownet_trusted::TeeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    BadFile { path: String, what: String },
    #[error("{0}")]
    Tee(TeeError),
    #[error("accelerator: {0}")]
    Accel(String),
    #[error("enclave process: {0}")]
    Enclave(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;
