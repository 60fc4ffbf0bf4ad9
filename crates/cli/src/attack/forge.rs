//! `attack --kind forge`: a package of the attacker's own making, sealed to the device's
//! public key, reusing the victim's public part.
//!
//! The attacker converts a dummy of the same architecture (weights of its own choosing),
//! swaps in the victim's public header and weights (byte for byte: the forged `public.bin`
//! is the victim's), seals its own secret to `device.pub`, signs with a vendor key of its
//! own and puts the victim's one-time pool entries (made for the victim's package on this
//! device) into the forged package's pool. Then it asks the device to run it:
//! 1. as is: a device that trusts only the real vendor must refuse the signature;
//! 2. after provisioning its own vendor key into a copy of the device record (the owner
//!    can, on this file-backed platform): the package opens, and the question is whether
//!    the core takes the victim's pool entries (and with them the victim's corrections
//!    and check vectors). Pool keys derive from the sealed secret's randomness, the device
//!    key and the header hash, so a forged secret should open none.
//!
//! The device's key file is only handed to the device's own core (and, copied, to the
//! provisioning step); the attack never decodes it or the victim's secret.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use shadownet_ir::Graph;
use shadownet_trusted::format::{self, PUBLIC_FILE};
use shadownet_untrusted::CpuAccelerator;

use super::PublicPackage;
use crate::secure::{self, EnclaveMode};

#[derive(Clone, Debug, Serialize)]
pub struct ForgeReport {
    /// The forged package's public.bin is byte for byte the victim's.
    pub public_identical: bool,
    /// Outcome of opening the forged package on the unmodified device.
    pub untrusted_signer: String,
    /// Outcome of opening it after the owner trusts its own vendor key.
    pub own_signer: String,
    /// Victim pool entries copied into the forged package's pool.
    pub victim_entries: usize,
    /// Outcome of an inference that must take a victim entry (no on-the-spot masks).
    pub victim_pool: String,
    /// The core used a victim entry (and so its corrections and check vectors).
    pub victim_pool_used: bool,
    pub seconds: f64,
}

fn outcome<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "accepted".into(),
        Err(e) => format!("refused: {}", format!("{e:#}").replace('\n', " ")),
    }
}

pub fn run(
    pkg: &Path,
    key: &Path,
    public: &PublicPackage,
    g: &Graph,
    device_pub: &Path,
    seed: u64,
) -> Result<ForgeReport> {
    let t0 = std::time::Instant::now();
    let work =
        std::env::temp_dir().join(format!("shadownet-forge-{}-{}", std::process::id(), seed));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let r = forge_in(&work, pkg, key, public, g, device_pub, seed);
    let _ = std::fs::remove_dir_all(&work);
    let mut r = r?;
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

fn forge_in(
    work: &Path,
    pkg: &Path,
    key: &Path,
    public: &PublicPackage,
    g: &Graph,
    device_pub: &Path,
    seed: u64,
) -> Result<ForgeReport> {
    // The victim's pool: the owner asks its device for entries (hardened packages).
    let hardened = public.scheme == shadownet_trusted::Scheme::Hardened;
    if hardened {
        let mut sm = secure::open(
            pkg,
            key,
            EnclaveMode::Inproc,
            Box::new(CpuAccelerator::new()),
        )?;
        if sm.pool_len() < 2 {
            sm.precompute(2, &mut |_, _| {})
                .context("precomputing victim pool entries")?;
        }
    }
    // The attacker's own conversion of a dummy, with the victim's public part.
    let victim_public = std::fs::read(pkg.join(PUBLIC_FILE))?;
    let parts = format::split_public(&victim_public).map_err(|e| anyhow!("public.bin: {e}"))?;
    let dummy = super::seed::dummy_of(g, seed);
    let opts = shadownet_protect::Options {
        scheme: public.scheme,
        ratio: super::seed::ratio_of(public, g, &super::reference_layers(g, public)?),
        ..Default::default()
    };
    let mut c = shadownet_protect::convert(&dummy, &opts, &mut |_, _| {})
        .context("converting the attacker's dummy")?;
    c.header = parts.header.clone();
    c.weights = parts
        .header
        .layers
        .iter()
        .map(|l| format::weight_blob(parts.weights, l).map(|b| b.to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow!("public.bin: {e}"))?;
    c.secret.package_id = parts.header.package_id;
    let (vsk, vpk) = crate::keys::vendor_keygen(&work.join("attacker"), true)?;
    let vendor = crate::keys::read_vendor_secret(&vsk)?;
    let dpub = crate::keys::read_device_public(device_pub)?;
    let forged = work.join("forged");
    secure::write(&c, &dpub, &vendor, &forged)?;
    let public_identical = std::fs::read(forged.join(PUBLIC_FILE))? == victim_public;
    let copy_pool = |dst: &Path| -> Result<usize> {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(pkg.join("pool")) {
            std::fs::create_dir_all(dst)?;
            for e in rd {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "entry") {
                    std::fs::copy(&p, dst.join(p.file_name().unwrap_or_default()))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    };
    let victim_entries = copy_pool(&forged.join("pool"))?;
    // 1. The device as it is.
    let untrusted_signer = outcome(&secure::open(
        &forged,
        key,
        EnclaveMode::Inproc,
        Box::new(CpuAccelerator::new()),
    ));
    // 2. The owner trusts its own vendor key (on a copy of the device record, with the
    //    counters beside it, so the victim's device is left as it was).
    let key2: PathBuf = work.join("device.key");
    std::fs::copy(key, &key2)?;
    let counters = PathBuf::from(format!("{}.counters", key.display()));
    if counters.exists() {
        std::fs::copy(&counters, format!("{}.counters", key2.display()))?;
    }
    crate::keys::device_trust(&key2, &[crate::keys::read_vendor_public(&vpk)?])?;
    let opened = secure::open(
        &forged,
        &key2,
        EnclaveMode::Inproc,
        Box::new(CpuAccelerator::new()),
    );
    let own_signer = outcome(&opened);
    let (victim_pool, used) = match opened {
        Ok(mut sm) if hardened => {
            sm.allow_slow_masks = false;
            let xs = public
                .inputs
                .iter()
                .map(|(_, s)| shadownet_ir::Tensor::zeros(s))
                .collect();
            let r = sm.infer(xs).map_err(anyhow::Error::from);
            let used = r.is_ok();
            (outcome(&r), used)
        }
        Ok(_) => ("no pool (paper scheme)".into(), false),
        Err(_) => ("not reached".into(), false),
    };
    Ok(ForgeReport {
        public_identical,
        untrusted_signer,
        own_signer,
        victim_entries,
        victim_pool,
        victim_pool_used: used,
        seconds: 0.0,
    })
}

impl ForgeReport {
    pub fn to_table(&self) -> String {
        format!(
            "\nforge (own secret sealed to device.pub, the victim's public.bin{}):\n  signed by an untrusted key: {}\n  after trusting its own key: {}\n  with {} victim pool entries: {} (victim pool used: {})\n",
            if self.public_identical { ", byte-identical" } else { "" },
            self.untrusted_signer,
            self.own_signer,
            self.victim_entries,
            self.victim_pool,
            self.victim_pool_used
        )
    }
}
