//! Sealing the secret part to one device: X25519 + HKDF-SHA256 + ChaCha20-Poly1305, the
//! same shape as HPKE's base mode (RFC 9180) with a fresh ephemeral key per package.
//!
//! File layout: magic (8) | conversion id (16) | ephemeral public key (32) | nonce (12) |
//! ciphertext with tag. The conversion id, the ephemeral key and the SHA-256 of the
//! public part are authenticated as associated data, so a sealed secret opens only with
//! the public part it was made with.
use alloc::vec::Vec;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

pub const SEAL_MAGIC: &[u8; 8] = b"SNSEALv1";
const INFO: &[u8] = b"shadownet/seal/v1";
const HEADER: usize = 8 + 16 + 32 + 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// Too short or wrong magic: not a sealed shadownet secret.
    Malformed,
    /// The secret belongs to another conversion than the public part.
    WrongPackage,
    /// Authentication failed: wrong device key, or the file was altered.
    AuthFailed,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn cipher(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> ChaCha20Poly1305 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(INFO, &mut key);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

fn aad(conversion_id: &[u8; 16], eph: &[u8; 32], public_hash: &[u8; 32]) -> Vec<u8> {
    let mut a = Vec::with_capacity(8 + 16 + 32 + 32);
    a.extend_from_slice(SEAL_MAGIC);
    a.extend_from_slice(conversion_id);
    a.extend_from_slice(eph);
    a.extend_from_slice(public_hash);
    a
}

/// Public key of a device secret key.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// Seals `plaintext` to `recipient`. The ephemeral key and nonce come from `rng`.
pub fn seal(
    rng: &mut impl CryptoRngCore,
    recipient: &[u8; 32],
    conversion_id: &[u8; 16],
    public_hash: &[u8; 32],
    plaintext: &[u8],
) -> Vec<u8> {
    let eph_secret = StaticSecret::random_from_rng(&mut *rng);
    let eph = PublicKey::from(&eph_secret).to_bytes();
    let shared = eph_secret
        .diffie_hellman(&PublicKey::from(*recipient))
        .to_bytes();
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let ad = aad(conversion_id, &eph, public_hash);
    let ct = cipher(&shared, &eph, recipient)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        // Encryption only fails for messages beyond ChaCha20's 256 GiB limit.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + ct.len());
    out.extend_from_slice(SEAL_MAGIC);
    out.extend_from_slice(conversion_id);
    out.extend_from_slice(&eph);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// The conversion id a sealed file claims (unauthenticated until [`open`] succeeds).
pub fn sealed_conversion_id(sealed: &[u8]) -> Result<[u8; 16], SealError> {
    if sealed.len() < HEADER + 16 || &sealed[..8] != SEAL_MAGIC {
        return Err(SealError::Malformed);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&sealed[8..24]);
    Ok(id)
}

/// Opens a sealed secret with the device key, for the public part hashing to `public_hash`
/// whose conversion id is `conversion_id`.
pub fn open(
    device_secret: &[u8; 32],
    conversion_id: &[u8; 16],
    public_hash: &[u8; 32],
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    if &sealed_conversion_id(sealed)? != conversion_id {
        return Err(SealError::WrongPackage);
    }
    let mut eph = [0u8; 32];
    eph.copy_from_slice(&sealed[24..56]);
    let nonce = &sealed[56..68];
    let secret = StaticSecret::from(*device_secret);
    let recipient = PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(eph)).to_bytes();
    let ad = aad(conversion_id, &eph, public_hash);
    cipher(&shared, &eph, &recipient)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: &sealed[HEADER..],
                aad: &ad,
            },
        )
        .map_err(|_| SealError::AuthFailed)
}
