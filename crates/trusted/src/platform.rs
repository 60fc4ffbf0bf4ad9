//! What the trusted core needs from the platform it runs on, and nothing more: entropy
//! from the TEE's own source (never from the untrusted host, which could make masks
//! predictable) and rollback-protected monotonic counters (e.g. OP-TEE's RPMB storage).

pub trait Platform: Send {
    /// Fills `buf` with cryptographically secure random bytes.
    fn random(&mut self, buf: &mut [u8]);
    /// The value of a monotonic counter (0 if never set).
    fn counter(&mut self, name: &[u8]) -> u64;
    /// Raises a counter; must be durable when it returns. Lowering is refused.
    fn advance_counter(&mut self, name: &[u8], value: u64) -> Result<(), CounterError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterError {
    /// The storage could not be written.
    Storage,
    /// The new value is not above the current one.
    NotMonotonic,
}
