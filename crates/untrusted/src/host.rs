//! Drives one secure inference: trusted core ⇄ host ⇄ accelerator.
use std::path::Path;

use shadownet_ir::Tensor;
use shadownet_trusted::format::{PUBLIC_FILE, SECRET_FILE};
use shadownet_trusted::{decode_public, HostToTee, PublicPackage, TeeToHost};

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
        Self::from_parts(public_bytes, sealed, enclave, accel)
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
        let mut msg = HostToTee::Begin { inputs };
        self.last_round_trips = 0;
        loop {
            match self.enclave.call(msg)? {
                TeeToHost::RunLinear { layer, input } => {
                    self.last_round_trips += 1;
                    let output = self.accel.run(layer, &input)?;
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

fn reply_name(r: &TeeToHost) -> &'static str {
    match r {
        TeeToHost::Opened { .. } => "Opened",
        TeeToHost::RunLinear { .. } => "RunLinear",
        TeeToHost::Done { .. } => "Done",
        TeeToHost::Failed { .. } => "Failed",
    }
}
