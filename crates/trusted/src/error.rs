//! The core's errors: plain codes, rustls style. They cross to the untrusted host, so they
//! carry nothing of the secret graph (no node names, no real shapes, no values); the only
//! payloads are numbers the host already knows (public layer and pool-entry indices).
use core::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TeeError {
    // --- the package -------------------------------------------------------------------
    /// A package format this core does not read (an older shadownet wrote it).
    UnsupportedVersion,
    /// The public part does not decode or does not describe a well-formed package.
    CorruptPublic,
    /// The package's signature file is missing its magic or is truncated.
    CorruptSignature,
    /// The package is signed by a vendor key this device was not provisioned to trust.
    UntrustedVendor,
    /// The vendor signature does not verify over this public part and sealed secret.
    BadSignature,
    /// The sealed secret does not open: sealed to another device, or altered.
    SealOpen,
    /// The secret opened but does not decode or does not fit its public part.
    CorruptSecret,
    /// The device record (key and pinned vendor keys) is malformed or was altered.
    BadDeviceRecord,
    /// A streamed chunk of the secret, of a public layer or of a pool entry is missing,
    /// truncated, altered, or belongs elsewhere.
    BadChunk,

    // --- the protocol ------------------------------------------------------------------
    /// A message that makes no sense in the core's current state.
    UnexpectedMessage,
    /// A count or size beyond what the core accepts.
    TooLarge,

    // --- inputs --------------------------------------------------------------------------
    /// The number of model inputs is wrong.
    InputCount,
    /// Model input `index` has the wrong shape.
    InputShape { index: u32 },
    /// A value too large (or not finite) to be represented in the exact arithmetic of a
    /// masked layer.
    OutOfRange,

    // --- the accelerator -----------------------------------------------------------------
    /// The accelerator answered for another layer than the one requested.
    WrongLayer { layer: u32 },
    /// The accelerator's result for public layer `layer` has the wrong shape or type.
    BadResult { layer: u32 },
    /// The accelerator's result for public layer `layer` holds a NaN or an infinity.
    NonFinite { layer: u32 },
    /// The result for public layer `layer` failed the integrity check: the accelerator
    /// lied, or the pool entry's part for that layer was altered.
    Integrity { layer: u32 },

    // --- the one-time mask pool ----------------------------------------------------------
    /// No pool entry was given and on-the-spot masks were not allowed.
    PoolEmpty,
    /// A pool entry below the consumed counter: replayed.
    PoolReplayed { index: u64, next: u64 },
    /// A pool entry that does not open for this package and device.
    PoolCorrupt,
    /// A pool entry made under a counter that has since been deleted and re-created.
    PoolEpoch,

    // --- the platform ----------------------------------------------------------------------
    /// The platform's monotonic counter is missing, unreadable or could not be advanced.
    Storage,
    /// The platform's random source failed.
    Random,

    // --- running --------------------------------------------------------------------------
    /// A trusted op failed.
    Kernel,
    /// An earlier error stopped the core; open the package again.
    Poisoned,
}

impl fmt::Display for TeeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TeeError::*;
        match self {
            UnsupportedVersion => write!(f, "unsupported package format or scheme version (made by an older shadownet?): convert the model again"),
            CorruptPublic => write!(f, "the package's public part is corrupt"),
            CorruptSignature => write!(f, "the package's signature file is corrupt"),
            UntrustedVendor => write!(f, "the package is signed by a vendor key this device does not trust"),
            BadSignature => write!(f, "the package's vendor signature does not verify: the package was altered or assembled from different packages"),
            SealOpen => write!(f, "the sealed secret does not open: it was sealed to another device, or altered"),
            CorruptSecret => write!(f, "the package's secret is corrupt"),
            BadDeviceRecord => write!(f, "the device record (device key and pinned vendor keys) is corrupt or was altered"),
            BadChunk => write!(f, "a streamed part of the package or of a pool entry is missing, truncated or altered"),
            UnexpectedMessage => write!(f, "a message the trusted core did not expect in its state"),
            TooLarge => write!(f, "a count or size beyond the trusted core's limits"),
            InputCount => write!(f, "wrong number of model inputs"),
            InputShape { index } => write!(f, "model input {index} has the wrong shape"),
            OutOfRange => write!(f, "a value is not finite or too large for the exact arithmetic of a masked layer"),
            WrongLayer { layer } => write!(f, "the accelerator answered for layer {layer}, which was not requested"),
            BadResult { layer } => write!(f, "the accelerator's result for layer {layer} has the wrong shape or type"),
            NonFinite { layer } => write!(f, "the accelerator's result for layer {layer} holds a NaN or an infinity"),
            Integrity { layer } => write!(f, "the result for layer {layer} failed the integrity check: the accelerator returned a wrong result, or the pool entry was altered"),
            PoolEmpty => write!(f, "the one-time mask pool is empty: run `shadownet precompute PKG --key KEY --count N`, or pass --allow-slow-masks to compute masks on the spot"),
            PoolReplayed { index, next } => write!(f, "mask-pool entry {index} was already used (next is {next}): replay refused"),
            PoolCorrupt => write!(f, "a mask-pool entry does not open: altered, or made for another package or device"),
            PoolEpoch => write!(f, "a mask-pool entry was made under a monotonic counter that has since been deleted or reset: refused"),
            Storage => write!(f, "the platform's monotonic counter is missing, unreadable or could not be advanced (rollback protection lost): refused"),
            Random => write!(f, "the platform's random source failed"),
            Kernel => write!(f, "a trusted op failed"),
            Poisoned => write!(f, "the trusted core stopped after an earlier error; open the package again"),
        }
    }
}

impl core::error::Error for TeeError {}
