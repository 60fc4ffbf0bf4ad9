//! Secure inference from the command line's point of view: convert, open, run.
use std::path::Path;

use anyhow::{Context, Result};
use shadownet_ir::Graph;
use shadownet_protect::{Converted, Options};
use shadownet_untrusted::{
    Accelerator, CpuAccelerator, Enclave, InProcEnclave, ProcessEnclave, SecureModel,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EnclaveMode {
    /// The trusted core in this process, behind its message API (no isolation).
    Inproc,
    /// The trusted core in the dedicated, sandboxed `shadownet-enclave` process.
    Process,
}

/// Converts `g` with `opts`, printing progress on a terminal (a line per tenth in logs).
pub fn convert(g: &Graph, opts: &Options, show_progress: bool) -> Result<Converted> {
    use std::io::IsTerminal;
    let tty = show_progress && std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        if tty {
            eprint!("\rconverting: layer {done}/{total}");
            if done == total {
                eprintln!();
            }
        } else if show_progress && (done * 10 / total != (done - 1) * 10 / total || done == total) {
            eprintln!("converting: layer {done}/{total}");
        }
    };
    Ok(shadownet_protect::convert(g, opts, &mut progress)?)
}

/// Seals `c` to `device_pub`, signs it with `vendor_secret` and writes the package.
pub fn write(
    c: &Converted,
    device_pub: &[u8; 32],
    vendor_secret: &[u8; 32],
    out: &Path,
) -> Result<()> {
    let p = shadownet_protect::seal(c, device_pub, vendor_secret)?;
    shadownet_protect::write_package(out, &p)?;
    Ok(())
}

/// The trusted core where `mode` says, for the device whose record is `key_file`.
pub fn enclave(key_file: &Path, mode: EnclaveMode) -> Result<Box<dyn Enclave>> {
    Ok(match mode {
        EnclaveMode::Inproc => Box::new(InProcEnclave::with_file_counters(key_file)?),
        EnclaveMode::Process => {
            // The child reads the key itself, but fail early here on an unreadable path.
            if !key_file.is_file() {
                anyhow::bail!("cannot read device key {}", key_file.display());
            }
            let exe = shadownet_untrusted::enclave::enclave_binary()?;
            Box::new(ProcessEnclave::spawn(&exe, key_file)?)
        }
    })
}

/// Opens a package with the trusted core where `mode` says and `accel` as the accelerator.
pub fn open(
    pkg: &Path,
    key_file: &Path,
    mode: EnclaveMode,
    accel: Box<dyn Accelerator>,
) -> Result<SecureModel> {
    SecureModel::open(pkg, enclave(key_file, mode)?, accel)
        .with_context(|| format!("cannot open package {}", pkg.display()))
}

pub fn open_cpu(pkg: &Path, key_file: &Path, mode: EnclaveMode) -> Result<SecureModel> {
    open(pkg, key_file, mode, Box::new(CpuAccelerator::new()))
}
