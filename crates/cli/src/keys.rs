//! Device key files: `device.key` (secret, for the trusted side) and `device.pub` (for
//! vendors converting models to this device). 8 bytes of magic, then the 32-byte key.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand_core::{OsRng, RngCore};

const SECRET_MAGIC: &[u8; 8] = b"SNKEYv1\0";
const PUBLIC_MAGIC: &[u8; 8] = b"SNPUBv1\0";

/// Creates `dir/device.key` and `dir/device.pub`; refuses to overwrite a key.
pub fn keygen(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (sk_path, pk_path) = (dir.join("device.key"), dir.join("device.pub"));
    if sk_path.exists() && !force {
        bail!("{} already exists; pass --force to replace it (models sealed to it will no longer open)", sk_path.display());
    }
    let mut sk = [0u8; 32];
    OsRng.fill_bytes(&mut sk);
    let pk = shadownet_trusted::seal::public_key(&sk);
    write_private(&sk_path, &[SECRET_MAGIC.as_slice(), &sk].concat())?;
    std::fs::write(&pk_path, [PUBLIC_MAGIC.as_slice(), &pk].concat())
        .with_context(|| format!("cannot write {}", pk_path.display()))?;
    Ok((sk_path, pk_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn read_key(path: &Path, magic: &[u8; 8], what: &str) -> Result<[u8; 32]> {
    let b =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if b.len() != 40 || &b[..8] != magic {
        let other = if magic == SECRET_MAGIC {
            PUBLIC_MAGIC
        } else {
            SECRET_MAGIC
        };
        if b.len() == 40 && &b[..8] == other {
            bail!(
                "{} is a {} key, but a {what} is needed",
                path.display(),
                if other == SECRET_MAGIC {
                    "secret device"
                } else {
                    "public device"
                }
            );
        }
        bail!(
            "{} is not a shadownet {what} (made by `shadownet keygen`)",
            path.display()
        );
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[8..]);
    Ok(k)
}

pub fn read_secret_key(path: &Path) -> Result<[u8; 32]> {
    read_key(path, SECRET_MAGIC, "device secret key")
}

pub fn read_public_key(path: &Path) -> Result<[u8; 32]> {
    read_key(path, PUBLIC_MAGIC, "device public key")
}
