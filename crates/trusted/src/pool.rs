//! One-time mask pool entries (hardened scheme).
//!
//! The correction of a one-time mask costs a full linear layer, so the core makes them
//! offline (`shadownet precompute`) and the host stores them. An entry file is
//!
//! ```text
//! SNPOOLv3 ‖ index (u64 LE) ‖ epoch (16) ‖ body ‖ header
//! ```
//!
//! - body: for every outsourced layer in order, its correction Wq ⋆ r (public output
//!   layout, u64 LE) XORed with a ChaCha8 keystream under the entry's own random key. The
//!   body carries no MAC: any change to it changes T by the same amount and fails the
//!   Freivalds check (probability ≥ 1 − 2^-59), which `exact::restore` reports as one
//!   verdict together with the range check, so nothing about T leaks from which failed.
//! - header: a 24-byte random nonce and the XChaCha20-Poly1305 encryption of
//!   [`PoolHeader`] (the entry's keys and the check's folded vectors) under a key derived
//!   from the device key, the package's secret root and the public header's hash, with
//!   the magic, index and epoch as associated data.
//!
//! Random per-entry keys and random nonces: no (key, nonce) pair is ever reused, whatever
//! the host does to the counters, the files or the order of precomputes.
use alloc::vec::Vec;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::TeeError;
use crate::format::Key32;

pub const POOL_MAGIC: &[u8; 8] = b"SNPOOLv3";
/// Bytes before the body: magic, index, epoch.
pub const PREFIX: usize = 8 + 8 + 16;

#[derive(Serialize, Deserialize)]
pub struct PoolHeader {
    pub index: u64,
    pub epoch: [u8; 16],
    /// Key of the one-time masks' keystreams.
    pub mask_key: Key32,
    /// Key of the keystreams the body's corrections are encrypted with.
    pub correction_key: Key32,
    /// Key of the check's output-channel coefficients u.
    pub check_key: Key32,
    /// Per outsourced layer, f = uᵀ·Wq over F_p. Fixed-width words: with varints the
    /// sealed header's length would vary with the folds' values.
    #[serde(with = "fixed_words")]
    pub folds: Vec<Vec<u64>>,
}

/// `Vec<Vec<u64>>` as byte strings of little-endian words, so its encoded length depends
/// on the lengths only.
mod fixed_words {
    use alloc::vec::Vec;
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u64>], s: S) -> Result<S::Ok, S::Error> {
        let blobs: Vec<serde_bytes::ByteBuf> = v
            .iter()
            .map(|w| {
                serde_bytes::ByteBuf::from(
                    w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                )
            })
            .collect();
        blobs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u64>>, D::Error> {
        let blobs = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        blobs
            .into_iter()
            .map(|b| {
                if b.len() % 8 != 0 {
                    return Err(D::Error::custom("ragged words"));
                }
                Ok(b.chunks_exact(8)
                    .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect())
            })
            .collect()
    }
}

fn aad(index: u64, epoch: &[u8; 16]) -> [u8; PREFIX] {
    let mut a = [0u8; PREFIX];
    a[..8].copy_from_slice(POOL_MAGIC);
    a[8..16].copy_from_slice(&index.to_le_bytes());
    a[16..].copy_from_slice(epoch);
    a
}

/// The file prefix of entry `index` in `epoch`.
pub fn prefix(index: u64, epoch: &[u8; 16]) -> [u8; PREFIX] {
    aad(index, epoch)
}

/// Reads the plaintext prefix of an entry file: (index, epoch).
pub fn read_prefix(b: &[u8]) -> Result<(u64, [u8; 16]), TeeError> {
    if b.len() < PREFIX || &b[..8] != POOL_MAGIC {
        return Err(TeeError::PoolCorrupt);
    }
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&b[8..16]);
    let mut epoch = [0u8; 16];
    epoch.copy_from_slice(&b[16..32]);
    Ok((u64::from_le_bytes(idx), epoch))
}

/// Seals a header with `key` and a fresh random `nonce`.
pub fn seal_header(key: &[u8; 32], nonce: [u8; 24], h: &PoolHeader) -> Result<Vec<u8>, TeeError> {
    let plain = Zeroizing::new(postcard::to_allocvec(h).map_err(|_| TeeError::Kernel)?);
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &plain,
                aad: &aad(h.index, &h.epoch),
            },
        )
        .map_err(|_| TeeError::Kernel)?;
    let mut out = Vec::with_capacity(24 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens the header of entry (`index`, `epoch`).
pub fn open_header(
    key: &[u8; 32],
    index: u64,
    epoch: &[u8; 16],
    b: &[u8],
) -> Result<PoolHeader, TeeError> {
    if b.len() < 24 + 16 {
        return Err(TeeError::PoolCorrupt);
    }
    let (nonce, ct) = b.split_at(24);
    let mut n = [0u8; 24];
    n.copy_from_slice(nonce);
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new(key.into())
            .decrypt(
                (&n).into(),
                Payload {
                    msg: ct,
                    aad: &aad(index, epoch),
                },
            )
            .map_err(|_| TeeError::PoolCorrupt)?,
    );
    let h: PoolHeader = postcard::from_bytes(&plain).map_err(|_| TeeError::PoolCorrupt)?;
    if h.index != index || &h.epoch != epoch {
        return Err(TeeError::PoolCorrupt);
    }
    Ok(h)
}

/// u64 words from little-endian bytes (a correction chunk), or `None` on a ragged length.
pub fn words(b: &[u8]) -> Option<Vec<u64>> {
    if !b.len().is_multiple_of(8) {
        return None;
    }
    Some(
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}

pub fn word_bytes(w: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(w.len() * 8);
    for x in w {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(index: u64) -> PoolHeader {
        PoolHeader {
            index,
            epoch: [7; 16],
            mask_key: Key32([1; 32]),
            correction_key: Key32([2; 32]),
            check_key: Key32([3; 32]),
            folds: alloc::vec![alloc::vec![1, 2, 3]],
        }
    }

    #[test]
    fn headers_open_only_for_their_key_index_and_epoch() {
        let key = [9u8; 32];
        let s = seal_header(&key, [4; 24], &header(5)).unwrap();
        let h = open_header(&key, 5, &[7; 16], &s).unwrap();
        assert_eq!(h.folds, alloc::vec![alloc::vec![1, 2, 3]]);
        assert_eq!(
            open_header(&key, 6, &[7; 16], &s).err(),
            Some(TeeError::PoolCorrupt)
        );
        assert_eq!(
            open_header(&key, 5, &[8; 16], &s).err(),
            Some(TeeError::PoolCorrupt)
        );
        assert_eq!(
            open_header(&[0; 32], 5, &[7; 16], &s).err(),
            Some(TeeError::PoolCorrupt)
        );
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(open_header(&key, 5, &[7; 16], &t).is_err(), "byte {i}");
        }
        assert!(open_header(&key, 5, &[7; 16], &s[..s.len() - 1]).is_err());
    }

    #[test]
    fn prefixes_round_trip() {
        let p = prefix(42, &[3; 16]);
        assert_eq!(read_prefix(&p).unwrap(), (42, [3; 16]));
        assert!(read_prefix(&p[..31]).is_err());
        assert_eq!(
            words(&word_bytes(&[1, u64::MAX])).unwrap(),
            alloc::vec![1, u64::MAX]
        );
        assert!(words(&[0u8; 9]).is_none());
    }
}
