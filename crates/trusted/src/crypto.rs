//! The core's cryptography, all from RustCrypto and the `hpke` crate:
//! - opening the sealed secret: HPKE (RFC 9180) base mode, X25519-HKDF-SHA256,
//!   HKDF-SHA256, ChaCha20-Poly1305 (the crate refuses all-zero shared secrets, i.e.
//!   low-order encapsulated keys);
//! - vendor signatures: Ed25519 (strict verification), against keys pinned at provisioning;
//! - the device record: the device's X25519 key and its pinned vendor keys, MACed with a
//!   key derived from the device key so the host cannot add a vendor of its own;
//! - streamed chunks: ChaCha8-Poly1305 with the chunk index as nonce (tens of megabytes per
//!   inference for the paper scheme: 2.5 GB/s against ChaCha20-Poly1305's 1.5 on one core
//!   here; the same 8-round assumption as the keystreams below);
//! - keystreams (one-time masks, pool corrections): ChaCha8.
use alloc::vec::Vec;

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha8Poly1305;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use hpke::aead::ChaCha20Poly1305 as HpkeChaCha;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::TeeError;

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// HKDF-SHA256 of `ikm` with `salt`, expanded to 32 bytes for `info`.
pub fn derive(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 8160, so expand cannot fail.
    let _ = hk.expand_multi_info(info, out.as_mut());
    out
}

/// Opens an HPKE base-mode ciphertext sealed to the X25519 key `secret`.
pub fn hpke_open(
    secret: &[u8; 32],
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TeeError> {
    let sk = <X25519HkdfSha256 as KemTrait>::PrivateKey::from_bytes(secret)
        .map_err(|_| TeeError::BadDeviceRecord)?;
    let enc = <X25519HkdfSha256 as KemTrait>::EncappedKey::from_bytes(enc)
        .map_err(|_| TeeError::SealOpen)?;
    hpke::single_shot_open::<HpkeChaCha, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ct,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| TeeError::SealOpen)
}

/// The X25519 public key of an HPKE secret key.
pub fn hpke_public(secret: &[u8; 32]) -> Result<[u8; 32], TeeError> {
    let sk = <X25519HkdfSha256 as KemTrait>::PrivateKey::from_bytes(secret)
        .map_err(|_| TeeError::BadDeviceRecord)?;
    let pk = <X25519HkdfSha256 as KemTrait>::sk_to_pk(&sk);
    let mut out = [0u8; 32];
    out.copy_from_slice(&pk.to_bytes());
    Ok(out)
}

/// Verifies an Ed25519 signature (strict: no malleable or small-order keys).
pub fn verify_signature(vendor: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), TeeError> {
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(vendor).map_err(|_| TeeError::BadSignature)?;
    key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .map_err(|_| TeeError::BadSignature)
}

const DEVICE_MAGIC: &[u8; 8] = b"SNDEVv1\0";
const MAX_PINS: usize = 64;

/// What a device is provisioned with: its secret key and the vendor keys it trusts. On a
/// real device this lives in the TEE's secure storage; here it is the `device.key` file,
/// MACed under a key derived from the device secret so that whoever owns the disk cannot
/// pin a vendor key of their own.
pub struct DeviceRecord {
    pub secret: Zeroizing<[u8; 32]>,
    pub pinned: Vec<[u8; 32]>,
}

impl DeviceRecord {
    fn mac_key(secret: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        derive(secret, b"", &[b"shadownet/device-record/v1"])
    }

    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(DEVICE_MAGIC.to_vec());
        v.extend_from_slice(self.secret.as_ref());
        v.push(self.pinned.len().min(MAX_PINS) as u8);
        for p in self.pinned.iter().take(MAX_PINS) {
            v.extend_from_slice(p);
        }
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(Self::mac_key(&self.secret).as_ref())
            .expect("HMAC takes keys of any length");
        mac.update(&v);
        let tag = mac.finalize().into_bytes();
        v.extend_from_slice(&tag);
        v
    }

    pub fn decode(b: &[u8]) -> Result<Self, TeeError> {
        let bad = TeeError::BadDeviceRecord;
        if b.len() < 8 + 32 + 1 + 32 || &b[..8] != DEVICE_MAGIC {
            return Err(bad);
        }
        let n = b[40] as usize;
        if n > MAX_PINS || b.len() != 41 + 32 * n + 32 {
            return Err(bad);
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&b[8..40]);
        let body = &b[..41 + 32 * n];
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(Self::mac_key(&secret).as_ref())
            .map_err(|_| bad)?;
        mac.update(body);
        mac.verify_slice(&b[41 + 32 * n..]).map_err(|_| bad)?;
        let pinned = b[41..41 + 32 * n]
            .chunks_exact(32)
            .map(|c| {
                let mut k = [0u8; 32];
                k.copy_from_slice(c);
                k
            })
            .collect();
        Ok(DeviceRecord { secret, pinned })
    }
}

fn nonce12(index: u64, domain: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n[8..].copy_from_slice(&domain.to_le_bytes());
    n
}

/// Bytes a sealed chunk has beyond its plaintext (the Poly1305 tag).
pub const TAG_LEN: usize = 16;

/// Seals chunk `index` (vendor side, and pool entries' headers on the device).
pub fn seal_chunk(key: &[u8; 32], index: u64, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    ChaCha8Poly1305::new(key.into())
        .encrypt((&nonce12(index, 0)).into(), Payload { msg: plain, aad })
        // Only fails beyond ChaCha's 256 GiB message limit, far above MAX_CHUNK.
        .unwrap_or_default()
}

/// [`open_chunk`] into `buf` (its old contents overwritten, its capacity reused): the core
/// opens tens of megabytes of chunks per inference, and freeing each opened chunk meant
/// zeroising it first (about 6 GB/s, a sixth of the time spent opening). On failure `buf`
/// holds no plaintext.
pub fn open_chunk_into(
    key: &[u8; 32],
    index: u64,
    aad: &[u8],
    sealed: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), TeeError> {
    use chacha20poly1305::aead::AeadInPlace;
    let Some(body_len) = sealed.len().checked_sub(TAG_LEN) else {
        return Err(TeeError::BadChunk);
    };
    let (body, tag) = sealed.split_at(body_len);
    if buf.capacity() < body.len() {
        // Growing would move the old plaintext and free it as it is.
        zeroize::Zeroize::zeroize(buf);
        *buf = Vec::with_capacity(body.len());
    }
    // Copied in first: the tag is checked on the core's copy, which is the one decrypted.
    buf.clear();
    buf.extend_from_slice(body);
    ChaCha8Poly1305::new(key.into())
        .decrypt_in_place_detached((&nonce12(index, 0)).into(), aad, buf, tag.into())
        .map_err(|_| {
            buf.clear();
            TeeError::BadChunk
        })
}

/// Opens a chunk sealed by [`seal_chunk`] under the same key, index and associated data.
pub fn open_chunk(
    key: &[u8; 32],
    index: u64,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TeeError> {
    ChaCha8Poly1305::new(key.into())
        .decrypt((&nonce12(index, 0)).into(), Payload { msg: sealed, aad })
        .map(Zeroizing::new)
        .map_err(|_| TeeError::BadChunk)
}

/// A ChaCha8 keystream for (`key`, `stream`), read as little-endian u64 words from word
/// `start` on. ChaCha8: the best known attacks reach 7 rounds, and these streams are most
/// of an inference's random bytes.
pub struct Keystream(chacha20::ChaCha8);

impl Keystream {
    pub fn new(key: &[u8; 32], stream: u64, domain: u32) -> Self {
        Keystream(chacha20::ChaCha8::new(
            key.into(),
            (&nonce12(stream, domain)).into(),
        ))
    }

    /// Positions the stream at u64 word `word`.
    pub fn seek_word(&mut self, word: u64) {
        self.0.seek(word.saturating_mul(8));
    }

    /// XORs the next `out.len()` words of keystream into `out`, in place (the words'
    /// little-endian bytes are the keystream's order; on a big-endian machine the XOR still
    /// applies a keystream, in another byte order, consistently on both sides).
    pub fn xor_words(&mut self, out: &mut [u64]) {
        self.0.apply_keystream(bytemuck::cast_slice_mut(out));
    }

    /// Fills `out` with the next words of keystream.
    pub fn fill_words(&mut self, out: &mut [u64]) {
        out.fill(0);
        self.xor_words(out);
    }

    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        out.fill(0);
        self.0.apply_keystream(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9180, appendix A.2.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    /// ChaCha20Poly1305, base mode): the first encryption, opened as the core opens a
    /// sealed secret.
    #[test]
    fn hpke_open_matches_rfc9180_test_vector() {
        let sk = hex("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb");
        let pk = hex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        let enc = hex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
        let info = hex("4f6465206f6e2061204772656369616e2055726e");
        let aad = hex("436f756e742d30");
        let ct = hex("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28");
        let pt = hex("4265617574792069732074727574682c20747275746820626561757479");
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&sk);
        assert_eq!(hpke_public(&secret).unwrap().to_vec(), pk);
        assert_eq!(
            hpke_open(&secret, &enc, &info, &aad, &ct)
                .unwrap()
                .as_slice(),
            &pt[..]
        );
        // Any change to the ciphertext, the aad or the info is refused.
        let mut bad = ct.clone();
        bad[3] ^= 1;
        assert_eq!(
            hpke_open(&secret, &enc, &info, &aad, &bad).unwrap_err(),
            TeeError::SealOpen
        );
        assert!(hpke_open(&secret, &enc, &info, b"Count-1", &ct).is_err());
        assert!(hpke_open(&secret, &enc, b"other", &aad, &ct).is_err());
    }

    #[test]
    fn low_order_encapsulated_keys_are_refused() {
        let secret = [7u8; 32];
        // The all-zero point and the other small-order points give an all-zero shared
        // secret, which RFC 9180 requires a recipient to refuse.
        let mut one = [0u8; 32];
        one[0] = 1;
        for enc in [[0u8; 32], one] {
            assert_eq!(
                hpke_open(&secret, &enc, b"i", b"a", &[0u8; 40]).unwrap_err(),
                TeeError::SealOpen
            );
        }
    }

    #[test]
    fn device_record_round_trips_and_refuses_any_change() {
        let rec = DeviceRecord {
            secret: Zeroizing::new([9u8; 32]),
            pinned: alloc::vec![[1u8; 32], [2u8; 32]],
        };
        let b = rec.encode();
        let back = DeviceRecord::decode(&b).unwrap();
        assert_eq!(back.pinned, rec.pinned);
        assert_eq!(*back.secret, [9u8; 32]);
        for i in 0..b.len() {
            let mut t = b.to_vec();
            t[i] ^= 0x10;
            assert!(DeviceRecord::decode(&t).is_err(), "byte {i}");
        }
        // Adding a pin without the device key does not verify.
        let mut forged = b[..b.len() - 32].to_vec();
        forged[40] = 3;
        forged.extend_from_slice(&[3u8; 32]);
        forged.extend_from_slice(&[0u8; 32]);
        assert!(DeviceRecord::decode(&forged).is_err());
        assert!(DeviceRecord::decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn chunks_open_only_with_their_key_index_and_aad() {
        let key = [5u8; 32];
        let s = seal_chunk(&key, 3, b"pkg", b"hello");
        assert_eq!(
            open_chunk(&key, 3, b"pkg", &s).unwrap().as_slice(),
            b"hello"
        );
        assert!(open_chunk(&key, 4, b"pkg", &s).is_err());
        assert!(open_chunk(&key, 3, b"pkh", &s).is_err());
        assert!(open_chunk(&[6u8; 32], 3, b"pkg", &s).is_err());
        assert!(open_chunk(&key, 3, b"pkg", &s[..s.len() - 1]).is_err());
    }

    #[test]
    fn chunks_open_into_a_reused_buffer() {
        let key = [5u8; 32];
        let big = alloc::vec![7u8; 1000];
        let mut buf = Vec::new();
        // Small, then larger (the buffer grows), then small again (its capacity stays).
        for (i, plain) in [&b"hello"[..], &big, b"hi"].into_iter().enumerate() {
            let s = seal_chunk(&key, i as u64, b"pkg", plain);
            open_chunk_into(&key, i as u64, b"pkg", &s, &mut buf).unwrap();
            assert_eq!(buf.as_slice(), plain);
        }
        assert!(buf.capacity() >= 1000);
        // A tampered chunk is refused and leaves no plaintext behind.
        let mut s = seal_chunk(&key, 9, b"pkg", b"secret");
        s[2] ^= 1;
        assert!(open_chunk_into(&key, 9, b"pkg", &s, &mut buf).is_err());
        assert!(buf.is_empty());
        assert!(open_chunk_into(&key, 9, b"pkg", &s[..10], &mut buf).is_err());
    }

    #[test]
    fn keystream_seeks_and_differs_per_stream() {
        let key = [1u8; 32];
        let mut a = alloc::vec![0u64; 100];
        Keystream::new(&key, 0, 0).fill_words(&mut a);
        let mut b = alloc::vec![0u64; 10];
        let mut k = Keystream::new(&key, 0, 0);
        k.seek_word(90);
        k.fill_words(&mut b);
        assert_eq!(&a[90..], &b[..]);
        let mut c = alloc::vec![0u64; 100];
        Keystream::new(&key, 1, 0).fill_words(&mut c);
        assert_ne!(a, c);
        let mut d = alloc::vec![0u64; 100];
        Keystream::new(&key, 0, 1).fill_words(&mut d);
        assert_ne!(a, d);
    }
}
