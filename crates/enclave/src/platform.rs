//! Platforms for the trusted core outside a TEE.
//!
//! [`FilePlatform`] keeps the counters in one file beside the device key, with a sequence
//! number and an HMAC-SHA256 under a key derived from the device key: a torn, corrupt or
//! forged file is an error (the core then refuses to run hardened packages), never a
//! silent zero. (There is deliberately no second slot to fall back to: a fallback is a
//! rollback anyone could trigger by corrupting the newer one. A crash mid-update therefore
//! needs the file deleted, which voids the pool, below.) A deleted file reads as "no counter", and the core answers that by
//! creating the counter in a new epoch, which refuses every pool entry made before. What a
//! file cannot give is protection from an older copy being put back: that is the rollback
//! a real TEE's storage (RPMB, SGX/TPM monotonic counters) prevents, and
//! docs/security.md measures what it costs here.
use std::fs::File;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use shadownet_trusted::{Counter, Platform, PlatformError};

const SLOT: usize = 64 * 1024;
const SLOT_MAGIC: &[u8; 8] = b"SNCTRv1\0";
const ENTRY: usize = 32 + 16 + 8;
/// Counters one file holds (one pair per hardened package).
pub const MAX_COUNTERS: usize = (SLOT - 8 - 8 - 4 - 32) / ENTRY;

type State = Vec<([u8; 32], Counter)>;

pub struct FilePlatform {
    path: PathBuf,
    file: File,
    mac_key: [u8; 32],
    /// Sequence number and slot of the state last read or written.
    seq: u64,
}

impl FilePlatform {
    /// Opens (or creates) the counter file at `path`. `device_secret` keys its MAC.
    pub fn open(path: &Path, device_secret: &[u8; 32]) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mac_key =
            *shadownet_trusted::crypto::derive(device_secret, b"", &[b"shadownet/counters/v1"]);
        Ok(FilePlatform {
            path: path.to_path_buf(),
            file,
            mac_key,
            seq: 0,
        })
    }

    /// `<key file>.counters`.
    pub fn beside_key(key_file: &Path, device_secret: &[u8; 32]) -> std::io::Result<Self> {
        let mut p = key_file.as_os_str().to_owned();
        p.push(".counters");
        Self::open(Path::new(&p), device_secret)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn mac(&self, body: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key).expect("any key length");
        m.update(body);
        m.finalize().into_bytes().into()
    }

    fn parse_slot(&self, b: &[u8]) -> Option<(u64, State)> {
        if b.len() < 20 || &b[..8] != SLOT_MAGIC {
            return None;
        }
        let seq = u64::from_le_bytes(b[8..16].try_into().ok()?);
        let n = u32::from_le_bytes(b[16..20].try_into().ok()?) as usize;
        if n > MAX_COUNTERS {
            return None;
        }
        let end = 20 + n * ENTRY;
        let tag = b.get(end..end + 32)?;
        if self.mac(&b[..end]) != tag {
            return None;
        }
        let state = b[20..end]
            .chunks_exact(ENTRY)
            .map(|e| {
                let mut name = [0u8; 32];
                name.copy_from_slice(&e[..32]);
                let mut epoch = [0u8; 16];
                epoch.copy_from_slice(&e[32..48]);
                let value = u64::from_le_bytes(e[48..56].try_into().unwrap_or_default());
                (name, Counter { epoch, value })
            })
            .collect();
        Some((seq, state))
    }

    /// The state in the file; an empty file is an empty state; anything unreadable is
    /// corrupt storage.
    fn load(&mut self) -> Result<State, PlatformError> {
        use std::os::unix::fs::FileExt;
        let len = self
            .file
            .metadata()
            .map_err(|_| PlatformError::Storage)?
            .len();
        if len == 0 {
            self.seq = 0;
            return Ok(Vec::new());
        }
        if len != SLOT as u64 {
            return Err(PlatformError::Storage);
        }
        let mut buf = vec![0u8; SLOT];
        self.file
            .read_exact_at(&mut buf, 0)
            .map_err(|_| PlatformError::Storage)?;
        let (seq, state) = self.parse_slot(&buf).ok_or(PlatformError::Storage)?;
        self.seq = seq;
        Ok(state)
    }

    fn store(&mut self, state: &State) -> Result<(), PlatformError> {
        use std::os::unix::fs::FileExt;
        if state.len() > MAX_COUNTERS {
            return Err(PlatformError::Storage);
        }
        let seq = self.seq + 1;
        let mut b = Vec::with_capacity(SLOT);
        b.extend_from_slice(SLOT_MAGIC);
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&(state.len() as u32).to_le_bytes());
        for (name, c) in state {
            b.extend_from_slice(name);
            b.extend_from_slice(&c.epoch);
            b.extend_from_slice(&c.value.to_le_bytes());
        }
        let tag = self.mac(&b);
        b.extend_from_slice(&tag);
        b.resize(SLOT, 0);
        self.file
            .write_all_at(&b, 0)
            .map_err(|_| PlatformError::Storage)?;
        self.file.sync_data().map_err(|_| PlatformError::Storage)?;
        self.seq = seq;
        Ok(())
    }
}

impl Platform for FilePlatform {
    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        use rand_core::RngCore;
        rand_core::OsRng
            .try_fill_bytes(buf)
            .map_err(|_| PlatformError::Random)
    }

    fn read_counter(&mut self, name: &[u8; 32]) -> Result<Counter, PlatformError> {
        self.load()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .ok_or(PlatformError::NotFound)
    }

    fn create_counter(&mut self, name: &[u8; 32], epoch: [u8; 16]) -> Result<(), PlatformError> {
        let mut s = self.load()?;
        if s.iter().any(|(n, _)| n == name) {
            return Err(PlatformError::Exists);
        }
        s.push((*name, Counter { epoch, value: 0 }));
        self.store(&s)
    }

    fn advance_counter(&mut self, name: &[u8; 32], value: u64) -> Result<(), PlatformError> {
        let mut s = self.load()?;
        let c = s
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or(PlatformError::NotFound)?;
        if value <= c.1.value {
            return Err(PlatformError::NotMonotonic);
        }
        c.1.value = value;
        self.store(&s)
    }
}

/// OS randomness with counters in memory: for tests and benchmarks, where nothing outlives
/// the process; it also stands for a platform with rollback-protected storage.
#[derive(Default)]
pub struct MemoryPlatform {
    counters: State,
    /// Overrides the trusted memory budget (tests of what the core keeps open).
    budget: Option<usize>,
}

impl MemoryPlatform {
    /// A platform that gives the core `bytes` of trusted memory.
    pub fn with_budget(bytes: usize) -> Self {
        MemoryPlatform {
            budget: Some(bytes),
            ..Default::default()
        }
    }
}

impl Platform for MemoryPlatform {
    fn memory_budget(&self) -> usize {
        self.budget
            .unwrap_or(shadownet_trusted::platform::DEFAULT_MEMORY_BUDGET)
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        use rand_core::RngCore;
        rand_core::OsRng
            .try_fill_bytes(buf)
            .map_err(|_| PlatformError::Random)
    }

    fn read_counter(&mut self, name: &[u8; 32]) -> Result<Counter, PlatformError> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .ok_or(PlatformError::NotFound)
    }

    fn create_counter(&mut self, name: &[u8; 32], epoch: [u8; 16]) -> Result<(), PlatformError> {
        if self.counters.iter().any(|(n, _)| n == name) {
            return Err(PlatformError::Exists);
        }
        self.counters.push((*name, Counter { epoch, value: 0 }));
        Ok(())
    }

    fn advance_counter(&mut self, name: &[u8; 32], value: u64) -> Result<(), PlatformError> {
        let c = self
            .counters
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or(PlatformError::NotFound)?;
        if value <= c.1.value {
            return Err(PlatformError::NotMonotonic);
        }
        c.1.value = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(p: &mut dyn Platform) {
        let a = [1u8; 32];
        assert_eq!(p.read_counter(&a), Err(PlatformError::NotFound));
        p.create_counter(&a, [9; 16]).unwrap();
        assert_eq!(p.create_counter(&a, [8; 16]), Err(PlatformError::Exists));
        assert_eq!(
            p.read_counter(&a).unwrap(),
            Counter {
                epoch: [9; 16],
                value: 0
            }
        );
        p.advance_counter(&a, 3).unwrap();
        assert_eq!(p.advance_counter(&a, 3), Err(PlatformError::NotMonotonic));
        assert_eq!(p.advance_counter(&a, 2), Err(PlatformError::NotMonotonic));
        p.advance_counter(&a, 4).unwrap();
        assert_eq!(p.read_counter(&a).unwrap().value, 4);
        assert_eq!(p.advance_counter(&[2; 32], 1), Err(PlatformError::NotFound));
    }

    #[test]
    fn counters_are_monotonic_on_both_platforms() {
        exercise(&mut MemoryPlatform::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        exercise(&mut FilePlatform::open(&path, &[5; 32]).unwrap());
        // State survives reopening, under the same key only.
        let mut again = FilePlatform::open(&path, &[5; 32]).unwrap();
        assert_eq!(again.read_counter(&[1; 32]).unwrap().value, 4);
        let mut other = FilePlatform::open(&path, &[6; 32]).unwrap();
        assert_eq!(other.read_counter(&[1; 32]), Err(PlatformError::Storage));
    }

    #[test]
    fn corrupt_counter_files_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut p = FilePlatform::open(&path, &[5; 32]).unwrap();
        p.create_counter(&[1; 32], [0; 16]).unwrap();
        p.advance_counter(&[1; 32], 7).unwrap();
        let good = std::fs::read(&path).unwrap();
        // Any flipped byte, or a truncated file, is an error, never a zero.
        for at in [0, 9, 30, 20 + 56 + 5] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            std::fs::write(&path, &bad).unwrap();
            let mut q = FilePlatform::open(&path, &[5; 32]).unwrap();
            assert_eq!(
                q.read_counter(&[1; 32]),
                Err(PlatformError::Storage),
                "byte {at}"
            );
        }
        std::fs::write(&path, &good[..100]).unwrap();
        let mut q = FilePlatform::open(&path, &[5; 32]).unwrap();
        assert_eq!(q.read_counter(&[1; 32]), Err(PlatformError::Storage));
        // Deleted: no counter (the core answers with a new epoch).
        std::fs::remove_file(&path).unwrap();
        let mut q = FilePlatform::open(&path, &[5; 32]).unwrap();
        assert_eq!(q.read_counter(&[1; 32]), Err(PlatformError::NotFound));
    }
}
