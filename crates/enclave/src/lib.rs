//! Hosting the trusted core where there is no TEE.
//!
//! - [`wire`]: the framing between the host and the enclave process (length-prefixed
//!   postcard frames on the child's stdin/stdout, bounded in size) and the envelope that
//!   carries core messages and the enclave's own memory statistics.
//! - [`platform`]: what the core gets from the platform here: the OS random source and
//!   monotonic counters in a file, MACed with a key derived from the device key (corrupt
//!   or forged state is an error) but, being a file, not safe from rollback; see
//!   `shadownet_trusted::platform` for what a real TEE's storage must add.
//! - [`sandbox`] (Linux): the enclave process made as tight as the OS allows: not
//!   dumpable or ptraceable, memory locked, and a seccomp filter that kills it on any
//!   system call beyond its pipe and counter-file I/O.
//!
//! The `shadownet-enclave` binary is the trusted core plus this crate and nothing else: no
//! path in its dependencies leads to the host's kernels.
pub mod platform;
#[cfg(target_os = "linux")]
pub mod sandbox;
pub mod wire;

pub use platform::{FilePlatform, MemoryPlatform};
