//! What the trusted core needs from the platform it runs on, and nothing more: entropy
//! from the TEE's own source (never from the untrusted host, which could make masks
//! predictable) and monotonic counters in rollback-protected storage.
//!
//! The counters are what stops a one-time mask from being used twice. The core keys them
//! by secret randomness, gives each a random epoch when it creates it, and binds every pool
//! entry to that epoch, so a deleted (and re-created) counter invalidates every entry made
//! before. What the core cannot see is a counter rolled back to an earlier value of the
//! same epoch: that is the storage's job. A platform must therefore keep these counters
//! where the device owner cannot restore an older copy: OP-TEE's RPMB-backed secure
//! storage, SGX monotonic counters / a TPM NV counter, or a replay-protected memory block
//! of the SoC. The file-backed platform of this repository (`FilePlatform`) cannot, and
//! says so (docs/security.md: the `rollback` attack).

/// A counter's state: the epoch it was created in and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    pub epoch: [u8; 16],
    pub value: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// The counter was never created.
    NotFound,
    /// `create_counter` for a counter that exists.
    Exists,
    /// A new value not above the current one.
    NotMonotonic,
    /// The storage is unreadable, corrupt or could not be written.
    Storage,
    /// The random source failed.
    Random,
}

pub trait Platform: Send {
    /// Fills `buf` with cryptographically secure random bytes.
    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError>;
    /// The counter's state; `NotFound` if it was never created. Corrupt storage is an
    /// error, never a zero.
    fn read_counter(&mut self, name: &[u8; 32]) -> Result<Counter, PlatformError>;
    /// Creates a counter at value 0 in `epoch`; `Exists` if it is there already.
    fn create_counter(&mut self, name: &[u8; 32], epoch: [u8; 16]) -> Result<(), PlatformError>;
    /// Raises a counter to `value` (> its current value); durable when it returns.
    fn advance_counter(&mut self, name: &[u8; 32], value: u64) -> Result<(), PlatformError>;
    /// The trusted memory the core may use, in bytes. The core keeps a package's opened
    /// secret chunks resident only within what this leaves beside the model and one
    /// inference's working set; the rest it opens again on every inference. The default
    /// is OP-TEE's default secure-world heap.
    fn memory_budget(&self) -> usize {
        DEFAULT_MEMORY_BUDGET
    }
}

/// 16 MiB: OP-TEE's default trusted memory.
pub const DEFAULT_MEMORY_BUDGET: usize = 16 << 20;
