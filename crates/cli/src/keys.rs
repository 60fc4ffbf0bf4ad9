//! Key files.
//!
//! - `device.key`: the device record: its X25519 secret key and the vendor keys it was
//!   provisioned to trust, MACed under a key derived from the secret
//!   (`shadownet_trusted::crypto::DeviceRecord`). On a real device this lives in the TEE's
//!   secure storage; only the trusted core (or the enclave process) reads it.
//! - `device.pub`: `SNPUBv1\0` + the X25519 public key, for vendors converting to it.
//! - `vendor.key`: `SNVKEYv1` + an Ed25519 signing key seed (the vendor keeps it).
//! - `vendor.pub`: `SNVPUBv1` + the Ed25519 public key (pinned into devices).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand_core::{OsRng, RngCore};
use shadownet_trusted::crypto::DeviceRecord;
use zeroize::Zeroizing;

const DEVICE_PUB_MAGIC: &[u8; 8] = b"SNPUBv1\0";
const VENDOR_KEY_MAGIC: &[u8; 8] = b"SNVKEYv1";
const VENDOR_PUB_MAGIC: &[u8; 8] = b"SNVPUBv1";

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let tmp = path.with_extension("partial");
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn refuse_overwrite(p: &Path, force: bool) -> Result<()> {
    if p.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it (what was made for the old key will no longer open)",
            p.display()
        );
    }
    Ok(())
}

/// Creates `dir/device.key` (trusting `pinned` vendor keys) and `dir/device.pub`.
pub fn device_keygen(dir: &Path, pinned: &[[u8; 32]], force: bool) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (sk_path, pk_path) = (dir.join("device.key"), dir.join("device.pub"));
    refuse_overwrite(&sk_path, force)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(secret.as_mut());
    let pk = shadownet_trusted::crypto::hpke_public(&secret)
        .map_err(|e| anyhow::anyhow!("cannot derive the public key: {e}"))?;
    let record = DeviceRecord {
        secret,
        pinned: pinned.to_vec(),
    };
    write_private(&sk_path, &record.encode())?;
    // A fresh key starts with fresh counters.
    let mut counters = sk_path.as_os_str().to_owned();
    counters.push(".counters");
    let _ = std::fs::remove_file(PathBuf::from(counters));
    std::fs::write(&pk_path, [DEVICE_PUB_MAGIC.as_slice(), &pk].concat())
        .with_context(|| format!("cannot write {}", pk_path.display()))?;
    Ok((sk_path, pk_path))
}

/// Adds vendor keys to a device's trusted set (provisioning).
pub fn device_trust(key_file: &Path, vendors: &[[u8; 32]]) -> Result<usize> {
    let mut rec = read_device(key_file)?;
    for v in vendors {
        if !rec.pinned.contains(v) {
            rec.pinned.push(*v);
        }
    }
    write_private(key_file, &rec.encode())?;
    Ok(rec.pinned.len())
}

pub fn read_device(path: &Path) -> Result<DeviceRecord> {
    let b = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read device key {}", path.display()))?,
    );
    DeviceRecord::decode(&b).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a shadownet device key (made by `shadownet keygen`), or it was altered: {e}",
            path.display()
        )
    })
}

/// Creates `dir/vendor.key` and `dir/vendor.pub`.
pub fn vendor_keygen(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (sk_path, pk_path) = (dir.join("vendor.key"), dir.join("vendor.pub"));
    refuse_overwrite(&sk_path, force)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(seed.as_mut());
    let pk = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    write_private(
        &sk_path,
        &[VENDOR_KEY_MAGIC.as_slice(), seed.as_ref()].concat(),
    )?;
    std::fs::write(&pk_path, [VENDOR_PUB_MAGIC.as_slice(), &pk].concat())
        .with_context(|| format!("cannot write {}", pk_path.display()))?;
    Ok((sk_path, pk_path))
}

fn read_tagged(path: &Path, magic: &[u8; 8], what: &str, made_by: &str) -> Result<[u8; 32]> {
    let b = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?,
    );
    if b.len() != 40 || &b[..8] != magic {
        let kind = [
            (DEVICE_PUB_MAGIC, "a device public key"),
            (VENDOR_KEY_MAGIC, "a vendor signing key"),
            (VENDOR_PUB_MAGIC, "a vendor public key"),
        ]
        .iter()
        .find(|(m, _)| b.len() == 40 && &b[..8] == *m)
        .map(|(_, k)| *k)
        .or_else(|| {
            DeviceRecord::decode(&b)
                .is_ok()
                .then_some("a device secret key")
        });
        match kind {
            Some(k) => bail!("{} is {k}, but {what} is needed", path.display()),
            None => bail!("{} is not {what} (made by `{made_by}`)", path.display()),
        }
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[8..]);
    Ok(k)
}

pub fn read_device_public(path: &Path) -> Result<[u8; 32]> {
    read_tagged(
        path,
        DEVICE_PUB_MAGIC,
        "a device public key",
        "shadownet keygen",
    )
}

pub fn read_vendor_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    read_tagged(
        path,
        VENDOR_KEY_MAGIC,
        "a vendor signing key",
        "shadownet keygen --vendor",
    )
    .map(Zeroizing::new)
}

pub fn read_vendor_public(path: &Path) -> Result<[u8; 32]> {
    read_tagged(
        path,
        VENDOR_PUB_MAGIC,
        "a vendor public key",
        "shadownet keygen --vendor",
    )
}

/// A throwaway device that trusts a throwaway vendor, in `dir` (tests, demo, bench).
pub struct TestDevice {
    pub device_key: PathBuf,
    pub device_pub: [u8; 32],
    pub vendor_secret: Zeroizing<[u8; 32]>,
}

impl TestDevice {
    pub fn new(dir: &Path) -> Result<Self> {
        let (vsk, vpk) = vendor_keygen(&dir.join("vendor"), true)?;
        let vendor_pub = read_vendor_public(&vpk)?;
        let (dsk, dpk) = device_keygen(&dir.join("device"), &[vendor_pub], true)?;
        Ok(TestDevice {
            device_key: dsk,
            device_pub: read_device_public(&dpk)?,
            vendor_secret: read_vendor_secret(&vsk)?,
        })
    }
}
