//! Secure inference from the command line's point of view: convert, open, run.
use std::path::Path;

use anyhow::{Context, Result};
use shadownet_ir::Graph;
use shadownet_protect::Options;
use shadownet_untrusted::{
    Accelerator, CpuAccelerator, Enclave, InProcEnclave, ProcessEnclave, SecureModel,
};

use crate::keys;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EnclaveMode {
    /// The trusted core in this process, behind its message API.
    Inproc,
    /// The trusted core in a child process, reached through a pipe.
    Process,
}

/// Converts `g` and writes the package; returns the number of outsourced layers.
pub fn convert_to_dir(
    g: &Graph,
    device_pub: &[u8; 32],
    out: &Path,
    opts: &Options,
    show_progress: bool,
) -> Result<usize> {
    use std::io::IsTerminal;
    let tty = show_progress && std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        // A terminal gets a live counter; logs get a line per tenth.
        if tty {
            eprint!("\rconverting: layer {done}/{total}");
            if done == total {
                eprintln!();
            }
        } else if show_progress && (done * 10 / total != (done - 1) * 10 / total || done == total) {
            eprintln!("converting: layer {done}/{total}");
        }
    };
    let c = shadownet_protect::convert(g, opts, &mut progress)?;
    let public = shadownet_protect::encode_public(&c.public);
    let sealed = shadownet_protect::seal_secret(&c.secret, device_pub, &public);
    shadownet_protect::write_package(out, &public, &sealed)?;
    Ok(c.public.layers.len())
}

/// The binary that serves `shadownet enclave`: this one, unless SHADOWNET_ENCLAVE_BIN
/// names another (tests run from a test binary, not from `shadownet`).
fn enclave_exe() -> Result<std::path::PathBuf> {
    match std::env::var_os("SHADOWNET_ENCLAVE_BIN") {
        Some(p) => Ok(p.into()),
        None => std::env::current_exe().context("cannot locate the shadownet binary"),
    }
}

/// Opens a package with the trusted core where `mode` says and `accel` as the accelerator.
pub fn open(
    pkg: &Path,
    key_file: &Path,
    mode: EnclaveMode,
    accel: Box<dyn Accelerator>,
) -> Result<SecureModel> {
    let enclave: Box<dyn Enclave> = match mode {
        EnclaveMode::Inproc => Box::new(InProcEnclave::new(
            keys::read_secret_key(key_file)?,
            Box::new(shadownet_untrusted::FilePlatform::beside_key(key_file)),
        )?),
        EnclaveMode::Process => {
            // The child reads the key itself, but fail early here on an unreadable path.
            if !key_file.is_file() {
                anyhow::bail!("cannot read device secret key {}", key_file.display());
            }
            Box::new(ProcessEnclave::spawn(&enclave_exe()?, key_file)?)
        }
    };
    SecureModel::open(pkg, enclave, accel)
        .with_context(|| format!("cannot open package {}", pkg.display()))
}

pub fn open_cpu(pkg: &Path, key_file: &Path, mode: EnclaveMode) -> Result<SecureModel> {
    open(pkg, key_file, mode, Box::new(CpuAccelerator::new()))
}
