//! The untrusted host. It sees only the public part of a package and the masked,
//! transformed tensors the trusted core chooses to hand out; it never holds a real
//! weight, bias, mask, scale, permutation or plain activation.
pub mod accel;
pub mod enclave;
mod host;

pub use accel::{Accelerator, CpuAccelerator, SpyAccelerator};
pub use enclave::{Enclave, FilePlatform, InProcEnclave, MemoryPlatform, ProcessEnclave};
pub use host::SecureModel;

use shadownet_trusted::TeeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
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
