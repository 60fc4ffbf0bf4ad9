//! `attack --kind rollback`: the device owner rolls the disk back.
//!
//! The hardened scheme's one-time pool entries are refused once the package's `consumed`
//! counter has passed them, and the counter lives in platform storage. This repository's
//! file-backed platform keeps it in `<device key>.counters`, a file the owner can copy and
//! put back. The attack precomputes one entry, snapshots the counter file and the pool,
//! and before every chosen query puts both back and restarts the core: if the core takes
//! the same entry again, every query runs under the same mask r, and the mask-reuse
//! attack applies with ring arithmetic: each observed input minus the first query's,
//! x̃_i − x̃_0 = x_q,i − x_q,0 (mod 2^64, small as a signed integer), the per-element
//! minimum over ReLU-switched-off queries anchors −x_q,0, and the victim's quantised
//! activation x_q,v comes out exactly (in units of its per-inference scale, so its
//! correlation with the real activation is what counts). A platform with rollback-protected
//! storage (RPMB, monotonic counters) refuses the second use; the report says which.
//!
//! The attacker touches only files outside the core (the counter file, the pool) and what
//! the accelerator sees; it never reads the key or the secret.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use shadownet_ir::{RingTensor, Tensor};
use shadownet_trusted::Payload;
use shadownet_untrusted::{CpuAccelerator, SecureModel, SpyAccelerator};

use super::{mask_reuse, Observed};
use crate::secure::{self, EnclaveMode};

/// Files outside the core, as they were after the precompute.
struct Snapshot {
    counters: PathBuf,
    counter_bytes: Option<Vec<u8>>,
    pool: PathBuf,
    entries: Vec<(PathBuf, Vec<u8>)>,
}

impl Snapshot {
    fn take(counters: &Path, pool: &Path) -> Result<Self> {
        let counter_bytes = std::fs::read(counters).ok();
        let mut entries = Vec::new();
        for e in
            std::fs::read_dir(pool).with_context(|| format!("cannot read {}", pool.display()))?
        {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "entry") {
                let b = std::fs::read(&p)?;
                entries.push((p, b));
            }
        }
        Ok(Snapshot {
            counters: counters.to_path_buf(),
            counter_bytes,
            pool: pool.to_path_buf(),
            entries,
        })
    }

    fn restore(&self) -> Result<()> {
        match &self.counter_bytes {
            Some(b) => std::fs::write(&self.counters, b)?,
            None => {
                let _ = std::fs::remove_file(&self.counters);
            }
        }
        std::fs::create_dir_all(&self.pool)?;
        for (p, b) in &self.entries {
            std::fs::write(p, b)?;
        }
        Ok(())
    }
}

/// Queries that each start from the rolled-back files, read as differences from the
/// first query's accelerator inputs.
pub struct RollbackOracle {
    pkg: PathBuf,
    key: PathBuf,
    snap: Snapshot,
    first: Vec<Option<RingTensor>>,
    /// Queries the core ran from the rolled-back pool.
    pub accepted: usize,
    /// The core's refusal, if it refused.
    pub refused: Option<String>,
    /// Two accepted queries saw the same mask (same input, same accelerator input).
    pub mask_reused: Option<bool>,
}

impl RollbackOracle {
    /// Precomputes one entry for the package and snapshots the files.
    pub fn new(pkg: &Path, key: &Path, layers: usize) -> Result<Self> {
        let mut sm = secure::open(
            pkg,
            key,
            EnclaveMode::Inproc,
            Box::new(CpuAccelerator::new()),
        )?;
        sm.precompute(1, &mut |_, _| {})
            .context("precomputing a pool entry")?;
        drop(sm);
        let counters = PathBuf::from(format!("{}.counters", key.display()));
        let snap = Snapshot::take(&counters, &pkg.join("pool"))?;
        Ok(RollbackOracle {
            pkg: pkg.into(),
            key: key.into(),
            snap,
            first: vec![None; layers],
            accepted: 0,
            refused: None,
            mask_reused: None,
        })
    }

    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<shadownet_untrusted::Observed>> {
        self.snap.restore()?;
        let spy = SpyAccelerator::new(CpuAccelerator::new());
        let seen: Arc<Mutex<Vec<shadownet_untrusted::Observed>>> = spy.seen.clone();
        let mut sm: SecureModel =
            secure::open(&self.pkg, &self.key, EnclaveMode::Inproc, Box::new(spy))?;
        sm.allow_slow_masks = false;
        if let Err(e) = sm.infer(inputs) {
            self.refused = Some(e.to_string());
            return Err(anyhow!("the core refused the rolled-back pool: {e}"));
        }
        self.accepted += 1;
        let s = seen.lock().map_err(|_| anyhow!("spy records poisoned"))?;
        Ok(s.clone())
    }

    /// Runs `inputs` twice from the rolled-back files and says whether the accelerator saw
    /// the same thing both times (the same mask used twice).
    pub fn check_reuse(&mut self, inputs: Vec<Tensor>) -> Result<bool> {
        let a = self.run(inputs.clone())?;
        let b = self.run(inputs)?;
        let same = a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| match (&x.input, &y.input) {
                (Payload::Ring(p), Payload::Ring(q)) => p.data == q.data,
                _ => false,
            });
        self.mask_reused = Some(same);
        Ok(same)
    }
}

impl mask_reuse::Oracle for RollbackOracle {
    fn query(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Observed>> {
        let seen = self.run(inputs)?;
        let mut out = Vec::with_capacity(seen.len());
        for o in &seen {
            let Payload::Ring(x) = &o.input else {
                return Err(anyhow!("rollback applies to ring (hardened) layers only"));
            };
            let k = o.layer as usize;
            let slot = self
                .first
                .get_mut(k)
                .ok_or_else(|| anyhow!("layer {k} out of range"))?;
            let base = slot.get_or_insert_with(|| x.clone());
            if base.data.len() != x.data.len() {
                return Err(anyhow!("layer {k}: the accelerator input changed size"));
            }
            let d = Tensor {
                shape: x.shape.clone(),
                data: x
                    .data
                    .iter()
                    .zip(&base.data)
                    .map(|(&v, &b)| v.wrapping_sub(b) as i64 as f32)
                    .collect(),
            };
            out.push(Observed {
                layer: o.layer,
                output: d.clone(),
                input: d,
                ring: true,
            });
        }
        Ok(out)
    }
}
