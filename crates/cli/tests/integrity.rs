//! The hardened scheme against a lying accelerator, and its mask pool against replay.
//!
//! Every lying mode must be caught, and an honest accelerator never flagged. The quick
//! tests run a few trials per mode; `integrity_1000_trials` (ignored by default, run in
//! release by scripts/test.sh) runs 1000 per mode and 1000 clean runs on ResNet-44.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shadownet::secure::{self, EnclaveMode};
use shadownet_ir::{Graph, Tensor};
use shadownet_protect::Options;
use shadownet_trusted::{PublicLayer, Scheme};
use shadownet_untrusted::{
    Accelerator, CpuAccelerator, InProcEnclave, MemoryPlatform, SecureModel,
};

mod common;
use common::{case, tmpdir};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lie {
    /// Flip one random exponent or sign bit of a random sizeable element.
    FlipBits,
    /// Add a bias of 5% of the output's RMS to every position of one channel.
    BiasChannel,
    /// Skip the layer and hand back its input (or as much of it as fits).
    SkipReturnInput,
    /// Skip the layer and hand back zeros.
    SkipReturnZeros,
    /// Hand back this layer's result from an earlier inference.
    Replay,
    /// Compute the layer with another package's weights.
    OtherWeights,
}

const LIES: [Lie; 6] = [
    Lie::FlipBits,
    Lie::BiasChannel,
    Lie::SkipReturnInput,
    Lie::SkipReturnZeros,
    Lie::Replay,
    Lie::OtherWeights,
];

struct State {
    lie: Option<Lie>,
    /// The one layer corrupted in this inference.
    target: u32,
    rng: u64,
    history: HashMap<u32, Tensor>,
}

impl State {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

struct Liar {
    honest: CpuAccelerator,
    other: CpuAccelerator,
    state: Arc<Mutex<State>>,
}

impl Accelerator for Liar {
    fn name(&self) -> &str {
        "liar"
    }

    fn load(&mut self, layers: &[PublicLayer]) -> shadownet_untrusted::Result<()> {
        self.honest.load(layers)
    }

    fn run(&mut self, layer: u32, input: &Tensor) -> shadownet_untrusted::Result<Tensor> {
        let mut y = self.honest.run(layer, input)?;
        let mut st = self.state.lock().unwrap();
        let previous = st.history.insert(layer, y.clone());
        let Some(lie) = st.lie.filter(|_| st.target == layer) else {
            return Ok(y);
        };
        match lie {
            Lie::FlipBits => {
                let mut mags: Vec<f32> = y.data.iter().map(|v| v.abs()).collect();
                mags.sort_by(f32::total_cmp);
                let median = mags[mags.len() / 2];
                loop {
                    let i = (st.next() % y.len() as u64) as usize;
                    if y.data[i].abs() >= median {
                        let bit = 23 + (st.next() % 9) as u32;
                        y.data[i] = f32::from_bits(y.data[i].to_bits() ^ (1 << bit));
                        break;
                    }
                }
            }
            Lie::BiasChannel => {
                let rms = (y.data.iter().map(|v| v * v).sum::<f32>() / y.len() as f32).sqrt();
                let (c, inner) = if y.shape.len() == 4 {
                    (y.shape[1], y.shape[2] * y.shape[3])
                } else {
                    (*y.shape.last().unwrap(), 1)
                };
                let ch = (st.next() % c as u64) as usize;
                for (i, v) in y.data.iter_mut().enumerate() {
                    if (i / inner) % c == ch {
                        *v += 0.05 * rms;
                    }
                }
            }
            Lie::SkipReturnInput => {
                let mut data = input.data.clone();
                data.resize(y.len(), 0.0);
                y.data = data;
            }
            Lie::SkipReturnZeros => y.data.iter_mut().for_each(|v| *v = 0.0),
            Lie::Replay => {
                if let Some(p) = previous {
                    y = p;
                }
            }
            Lie::OtherWeights => {
                y = self.other.run(layer, input)?;
            }
        }
        Ok(y)
    }
}

struct Bench {
    g: Graph,
    xs: Vec<Tensor>,
    public: Vec<u8>,
    sealed: Vec<u8>,
    other_layers: Vec<PublicLayer>,
    key: [u8; 32],
}

fn setup(name: &str) -> Bench {
    let (g, xs) = case(name);
    let key = [5u8; 32];
    let conv = |seed| {
        let opts = Options {
            scheme: Scheme::Hardened,
            seed: Some(seed),
            ..Default::default()
        };
        shadownet_protect::convert(&g, &opts, &mut |_, _| {}).unwrap()
    };
    let c = conv(1);
    let other = conv(2);
    let public = shadownet_protect::encode_public(&c.public);
    let sealed = shadownet_protect::seal_secret(
        &c.secret,
        &shadownet_trusted::seal::public_key(&key),
        &public,
    );
    Bench {
        g,
        xs,
        public,
        sealed,
        other_layers: other.public.layers,
        key,
    }
}

fn open(b: &Bench, state: Arc<Mutex<State>>) -> SecureModel {
    let mut other = CpuAccelerator::new();
    other.load(&b.other_layers).unwrap();
    let liar = Liar {
        honest: CpuAccelerator::new(),
        other,
        state,
    };
    let enclave = InProcEnclave::new(b.key, Box::new(MemoryPlatform::default())).unwrap();
    let mut m = SecureModel::from_parts(
        b.public.clone(),
        b.sealed.clone(),
        Box::new(enclave),
        Box::new(liar),
    )
    .unwrap();
    m.allow_slow_masks = true;
    m
}

/// Runs `trials` inferences with `lie` on one random layer each; returns how many were
/// refused (must be all of them) and how many clean runs raised an alarm (must be none).
fn trials(b: &Bench, lie: Option<Lie>, trials: usize, seed: u64) -> usize {
    let state = Arc::new(Mutex::new(State {
        lie: None,
        target: 0,
        rng: seed | 1,
        history: HashMap::new(),
    }));
    let mut m = open(b, state.clone());
    let layers = m.public.layers.len() as u64;
    // One honest run first, so replay has something to replay.
    m.infer(b.xs.clone()).unwrap();
    let mut flagged = 0;
    for _ in 0..trials {
        {
            let mut st = state.lock().unwrap();
            st.lie = lie;
            st.target = (st.next() % layers) as u32;
        }
        match m.infer(b.xs.clone()) {
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("integrity check") || msg.contains("unusable result"),
                    "{lie:?}: unexpected error {msg}"
                );
                flagged += 1;
                // A caught lie poisons the trusted core: open the package again.
                m = open(b, state.clone());
            }
        }
    }
    let _ = &b.g;
    flagged
}

fn check_all(name: &str, n: usize) {
    let b = setup(name);
    for (k, lie) in LIES.iter().enumerate() {
        let caught = trials(&b, Some(*lie), n, 0x9e37_79b9 + k as u64);
        eprintln!("{name}: {lie:?} caught in {caught}/{n} trials");
        assert_eq!(
            caught,
            n,
            "{name}: {lie:?} went unnoticed in {} of {n} trials",
            n - caught
        );
    }
    let alarms = trials(&b, None, n, 7);
    eprintln!("{name}: {alarms} false alarms in {n} clean runs");
    assert_eq!(alarms, 0, "{name}: false alarms on an honest accelerator");
}

#[test]
fn every_lie_is_caught_resnet44() {
    check_all("resnet44", 20);
}

#[test]
fn every_lie_is_caught_mobilenet_v1() {
    check_all("mobilenet_v1", 5);
}

#[test]
#[ignore = "1000 trials per mode: run by scripts/test.sh in release"]
fn integrity_1000_trials() {
    check_all("resnet44", 1000);
}

// ---------------------------------------------------------------------------------------
// The mask pool

#[test]
fn pool_entries_are_used_once_and_in_order() {
    let (g, xs) = case("minivgg");
    let dir = tmpdir("pool");
    let (sk, pk) = shadownet::keys::keygen(&dir.join("keys"), false).unwrap();
    let pkg = dir.join("pkg");
    let opts = Options {
        scheme: Scheme::Hardened,
        seed: Some(3),
        ..Default::default()
    };
    secure::convert_to_dir(
        &g,
        &shadownet::keys::read_public_key(&pk).unwrap(),
        &pkg,
        &opts,
        false,
    )
    .unwrap();
    let open = || secure::open_cpu(&pkg, &sk, EnclaveMode::Inproc).unwrap();
    let err = |m: &mut SecureModel| {
        m.infer(xs.clone())
            .expect_err("must be refused")
            .to_string()
    };

    let mut m = open();
    assert!(err(&mut m).contains("mask pool is empty"));
    let mut m = open();
    m.allow_slow_masks = true;
    m.infer(xs.clone()).unwrap();

    let mut m = open();
    m.precompute(4, &mut |_, _| {}).unwrap();
    let pool = pkg.join("pool");
    let entry = |i: u64| pool.join(format!("{i:016}.entry"));
    let first = std::fs::read(entry(0)).unwrap();
    m.infer(xs.clone()).unwrap();
    assert!(!entry(0).exists(), "a used entry is removed");
    // Replayed: the host puts a used entry back.
    std::fs::write(entry(0), &first).unwrap();
    let mut m = open();
    let e = err(&mut m);
    assert!(e.contains("already used"), "{e}");
    assert!(!entry(0).exists(), "a spent entry is dropped");
    // Reordered: the host skips entry 1.
    let second = std::fs::read(entry(1)).unwrap();
    std::fs::remove_file(entry(1)).unwrap();
    let mut m = open();
    let e = err(&mut m);
    assert!(e.contains("out of order"), "{e}");
    // Tampered: a flipped byte, under the right name.
    let mut bad = second.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(entry(1), &bad).unwrap();
    let mut m = open();
    assert!(err(&mut m).contains("does not open"));
    // Put back intact, the entries are accepted in order.
    std::fs::write(entry(1), &second).unwrap();
    let mut m = open();
    m.infer(xs.clone()).unwrap();
    m.infer(xs.clone()).unwrap();
    m.infer(xs.clone()).unwrap();
    assert_eq!(m.pool_len(), 0);
}
