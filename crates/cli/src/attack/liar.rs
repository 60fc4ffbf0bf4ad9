//! `attack --kind liar`: an accelerator that lies.
//!
//! On each run the liar alters one value of one layer's result (the layer cycles through
//! the package): on the paper scheme, which checks nothing but NaN and infinity, by ten
//! times the layer's largest output (the biggest lie that stays finite and plausible);
//! on the hardened scheme by +1 over Z/2^64, the smallest lie there is (any larger one
//! within the bound B fails Freivalds' check the same way, one beyond it fails the range
//! check). The report counts the lies the core let through and, of those, the runs whose
//! top-1 output changed against an honest run of the same input.
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde::Serialize;
use shadownet_ir::{Graph, RingTensor, Tensor};
use shadownet_untrusted::{Accelerator, CpuAccelerator, PublicModel};

use super::{PublicPackage, Rng};
use crate::secure::{self, EnclaveMode};

/// Where the next lie goes: (layer, element), shared with the attack loop.
type Target = Arc<Mutex<Option<(u32, usize)>>>;

pub struct LiarAccelerator {
    inner: CpuAccelerator,
    target: Target,
}

impl Accelerator for LiarAccelerator {
    fn name(&self) -> &str {
        "liar"
    }
    fn load(&mut self, model: &PublicModel) -> shadownet_untrusted::Result<()> {
        self.inner.load(model)
    }
    fn run(&mut self, layer: u32, input: &Tensor) -> shadownet_untrusted::Result<Tensor> {
        let mut y = self.inner.run(layer, input)?;
        if let Ok(t) = self.target.lock() {
            if let Some((l, e)) = *t {
                if l == layer && !y.data.is_empty() {
                    let peak = y.data.iter().fold(0f32, |a, &v| a.max(v.abs())).max(1.0);
                    let i = e % y.data.len();
                    y.data[i] += 10.0 * peak;
                }
            }
        }
        Ok(y)
    }
    fn run_ring(
        &mut self,
        layer: u32,
        input: &RingTensor,
    ) -> shadownet_untrusted::Result<RingTensor> {
        let mut y = self.inner.run_ring(layer, input)?;
        if let Ok(t) = self.target.lock() {
            if let Some((l, e)) = *t {
                if l == layer && !y.data.is_empty() {
                    let i = e % y.data.len();
                    y.data[i] = y.data[i].wrapping_add(1);
                }
            }
        }
        Ok(y)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LiarReport {
    pub runs: usize,
    /// The lie each run told.
    pub lie: String,
    /// Runs whose altered result the core accepted (returned outputs).
    pub accepted: usize,
    /// Accepted runs whose top-1 differs from the honest run's.
    pub top1_changed: usize,
    /// Honest runs (no lie) the core refused: false alarms.
    pub false_alarms: usize,
    pub seconds: f64,
}

fn argmax(t: &Tensor) -> usize {
    (0..t.data.len())
        .max_by(|&i, &j| t.data[i].total_cmp(&t.data[j]))
        .unwrap_or(0)
}

pub fn run(
    pkg: &std::path::Path,
    key: &std::path::Path,
    public: &PublicPackage,
    _g: &Graph,
    runs: usize,
    seed: u64,
) -> Result<LiarReport> {
    let t0 = std::time::Instant::now();
    let target: Target = Default::default();
    // The core poisons itself on a refused result: a refusal costs the liar a restart.
    let open = |target: &Target| -> Result<shadownet_untrusted::SecureModel> {
        let liar = LiarAccelerator {
            inner: CpuAccelerator::new(),
            target: target.clone(),
        };
        let mut sm = secure::open(pkg, key, EnclaveMode::Inproc, Box::new(liar))?;
        sm.allow_slow_masks = true;
        Ok(sm)
    };
    let mut sm = open(&target)?;
    let mut rng = Rng::new(seed ^ 0x11a2);
    let layers = public.layers.len().max(1);
    let (mut accepted, mut changed, mut false_alarms) = (0, 0, 0);
    for r in 0..runs {
        let xs = public.random_inputs(&mut rng);
        if let Ok(mut t) = target.lock() {
            *t = None;
        }
        // The honest answer of this device for the same input.
        let honest = match sm.infer(xs.clone()) {
            Ok(o) => o,
            Err(_) => {
                false_alarms += 1;
                sm = open(&target)?;
                continue;
            }
        };
        let elem = (rng.next_u64() % (1 << 30)) as usize;
        if let Ok(mut t) = target.lock() {
            *t = Some(((r % layers) as u32, elem));
        }
        match sm.infer(xs) {
            Ok(out) => {
                accepted += 1;
                if out
                    .first()
                    .zip(honest.first())
                    .is_some_and(|(a, b)| argmax(a) != argmax(b))
                {
                    changed += 1;
                }
            }
            Err(_) => sm = open(&target)?,
        }
    }
    Ok(LiarReport {
        runs,
        lie: if public.layers.first().is_some_and(|l| l.int_weights) {
            "+1 on one value of one layer (Z/2^64)".into()
        } else {
            "+10 x the layer's largest output on one value of one layer".into()
        },
        accepted,
        top1_changed: changed,
        false_alarms,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl LiarReport {
    pub fn to_table(&self) -> String {
        format!(
            "\nliar ({} runs; lie: {}): {} accepted by the core, {} of them changed the top-1; {} false alarms on honest runs; {:.1} s\n",
            self.runs, self.lie, self.accepted, self.top1_changed, self.false_alarms, self.seconds
        )
    }
}
