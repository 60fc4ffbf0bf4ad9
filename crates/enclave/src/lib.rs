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

/// Keeps freed memory in this process's heap instead of handing it back to the OS (as a
/// TEE's fixed heap does). Every inference allocates and frees the same multi-megabyte
/// buffers, and glibc's defaults (map each block above 128 KiB fresh, trim the heap top on
/// free) made them page-fault in again on every run: MobileNet-v1, about 1,600 faults per
/// inference in the enclave process. Call it before allocating anything large.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes only the allocator's thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
