//! Drives one secure inference: trusted core ⇄ host ⇄ accelerator.
use std::path::Path;

use shadownet_ir::Tensor;
use shadownet_trusted::format::{PUBLIC_FILE, SECRET_FILE};
use shadownet_trusted::{decode_public, HostToTee, PublicPackage, TeeError, TeeToHost};

use crate::{Accelerator, Enclave, Error, Result};

pub struct SecureModel {
    pub public: PublicPackage,
    enclave: Box<dyn Enclave>,
    accel: Box<dyn Accelerator>,
    /// Bytes the model keeps resident in the trusted core, as it reported.
    pub resident_bytes: u64,
    /// Peak activation bytes of one inference in the trusted core, as it reported.
    pub peak_activation_bytes: u64,
    /// Round trips of the last inference.
    pub last_round_trips: usize,
    /// Time the accelerator took in the last inference (the rest of it is the trusted
    /// core, the transport between the two, and the host's bookkeeping).
    pub last_accel_time: std::time::Duration,
    /// Where sealed one-time mask entries are kept (hardened packages).
    pool_dir: Option<std::path::PathBuf>,
    /// Let the trusted core make masks on the spot when the pool is empty.
    pub allow_slow_masks: bool,
}

/// Pool entries are files named by their 16-digit index, used in order.
fn entry_name(index: u64) -> String {
    format!("{index:016}.entry")
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::Io {
        path: p.display().to_string(),
        source: e,
    })
}

impl SecureModel {
    /// Opens a package directory: the public part goes to the accelerator, and both parts
    /// go to the trusted core, which alone can open the secret.
    pub fn open(
        pkg: &Path,
        enclave: Box<dyn Enclave>,
        accel: Box<dyn Accelerator>,
    ) -> Result<Self> {
        let public_bytes = read(&pkg.join(PUBLIC_FILE))?;
        let sealed = read(&pkg.join(SECRET_FILE))?;
        let mut m = Self::from_parts(public_bytes, sealed, enclave, accel)?;
        m.pool_dir = Some(pkg.join("pool"));
        Ok(m)
    }

    pub fn from_parts(
        public_bytes: Vec<u8>,
        sealed: Vec<u8>,
        mut enclave: Box<dyn Enclave>,
        mut accel: Box<dyn Accelerator>,
    ) -> Result<Self> {
        let public = decode_public(&public_bytes).map_err(Error::Tee)?;
        accel.load(&public.layers)?;
        match enclave.call(HostToTee::Open {
            public: public_bytes,
            sealed,
        })? {
            TeeToHost::Opened {
                layers,
                resident_bytes,
                peak_activation_bytes,
            } if layers as usize == public.layers.len() => Ok(SecureModel {
                public,
                enclave,
                accel,
                resident_bytes,
                peak_activation_bytes,
                last_round_trips: 0,
                last_accel_time: std::time::Duration::ZERO,
                pool_dir: None,
                allow_slow_masks: false,
            }),
            TeeToHost::Failed { error } => Err(Error::Tee(error)),
            other => Err(Error::Protocol(format!(
                "unexpected reply to Open: {}",
                reply_name(&other)
            ))),
        }
    }

    /// Runs one inference on the model inputs (in model-input order).
    pub fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        // Driven from a worker of the CPU accelerator's pool: each layer then starts on
        // this thread at once, while an idle pool asleep through the trusted core's turn
        // wakes up beside it. From outside the pool every layer first waited for a
        // sleeping worker to wake (~50 µs a layer: a fifth of MiniVGG's secure run).
        rayon::scope(|_| self.infer_here(inputs))
    }

    fn infer_here(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let entry = self.next_pool_entry()?;
        let mut msg = HostToTee::Begin {
            inputs,
            pool_entry: entry.as_ref().map(|(_, b)| b.clone()),
            allow_slow_masks: self.allow_slow_masks,
        };
        let first = self.enclave.call(msg)?;
        // An entry the trusted core took, or refused as spent or unreadable, is useless
        // from now on; one refused as out of order stays for its turn.
        if let Some((path, _)) = entry {
            let keep = matches!(
                &first,
                TeeToHost::Failed {
                    error: TeeError::PoolOutOfOrder { .. }
                        | TeeError::Poisoned(_)
                        | TeeError::BadInput(_)
                }
            );
            if !keep {
                let _ = std::fs::remove_file(path);
            }
        }
        msg = match first {
            TeeToHost::RunLinear { layer, input } => {
                self.last_round_trips = 1;
                self.last_accel_time = std::time::Duration::ZERO;
                let output = self.run_accel(layer, &input)?;
                HostToTee::LinearDone { layer, output }
            }
            TeeToHost::Done { outputs } => return Ok(outputs),
            TeeToHost::Failed { error } => return Err(Error::Tee(error)),
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected reply to Begin: {}",
                    reply_name(&other)
                )))
            }
        };
        loop {
            match self.enclave.call(msg)? {
                TeeToHost::RunLinear { layer, input } => {
                    self.last_round_trips += 1;
                    let output = self.run_accel(layer, &input)?;
                    msg = HostToTee::LinearDone { layer, output };
                }
                TeeToHost::Done { outputs } => return Ok(outputs),
                TeeToHost::Failed { error } => return Err(Error::Tee(error)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected reply during inference: {}",
                        reply_name(&other)
                    )))
                }
            }
        }
    }
}

impl SecureModel {
    fn run_accel(&mut self, layer: u32, input: &Tensor) -> Result<Tensor> {
        let t0 = std::time::Instant::now();
        let out = self.accel.run(layer, input);
        self.last_accel_time += t0.elapsed();
        out
    }

    /// The lowest-numbered pool entry file, if any.
    fn next_pool_entry(&self) -> Result<Option<(std::path::PathBuf, Vec<u8>)>> {
        let Some(dir) = &self.pool_dir else {
            return Ok(None);
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(None);
        };
        let mut names: Vec<std::path::PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "entry"))
            .collect();
        names.sort();
        match names.into_iter().next() {
            Some(p) => {
                let b = read(&p)?;
                Ok(Some((p, b)))
            }
            None => Ok(None),
        }
    }

    /// Entries left in the pool.
    pub fn pool_len(&self) -> usize {
        self.pool_dir
            .as_ref()
            .and_then(|d| std::fs::read_dir(d).ok())
            .map_or(0, |rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "entry"))
                    .count()
            })
    }

    /// Has the trusted core make `count` one-time mask entries and stores them in the
    /// package's pool, calling `progress(done, count)` along the way.
    pub fn precompute(
        &mut self,
        count: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<usize> {
        let dir = self.pool_dir.clone().ok_or_else(|| {
            Error::Protocol("this package has no directory for a mask pool".into())
        })?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        let mut bytes = 0;
        let mut done = 0;
        while done < count {
            let n = (count - done).min(8);
            let entries = match self
                .enclave
                .call(HostToTee::Precompute { count: n as u32 })?
            {
                TeeToHost::Pool { entries } => entries,
                TeeToHost::Failed { error } => return Err(Error::Tee(error)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected reply to Precompute: {}",
                        reply_name(&other)
                    )))
                }
            };
            for e in entries {
                let index = shadownet_trusted::onetime::entry_index(&e)
                    .ok_or_else(|| Error::Protocol("short pool entry".into()))?;
                let p = dir.join(entry_name(index));
                std::fs::write(&p, &e).map_err(|err| Error::Io {
                    path: p.display().to_string(),
                    source: err,
                })?;
                bytes = e.len();
                done += 1;
            }
            progress(done, count);
        }
        Ok(bytes)
    }
}

fn reply_name(r: &TeeToHost) -> &'static str {
    match r {
        TeeToHost::Pool { .. } => "Pool",
        TeeToHost::Opened { .. } => "Opened",
        TeeToHost::RunLinear { .. } => "RunLinear",
        TeeToHost::Done { .. } => "Done",
        TeeToHost::Failed { .. } => "Failed",
    }
}
