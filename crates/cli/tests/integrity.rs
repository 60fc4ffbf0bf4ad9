//! The hardened scheme's integrity check against lying accelerators: every lie, from one
//! unit in one value to a replayed or foreign result, is caught, and honest results never
//! raise an alarm. A quick version runs with `cargo test`; the 1000-trial one is
//! `--ignored` (scripts/test.sh runs it).
use std::sync::{Arc, Mutex};

use shadownet::secure::{self, EnclaveMode};
use shadownet_ir::{RingTensor, Tensor};
use shadownet_trusted::{Scheme, TeeError};
use shadownet_untrusted::{Accelerator, CpuAccelerator, PublicModel, Result};

mod common;
use common::{case, opts, package, tmpdir};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// No lie: honest results must pass.
    Honest,
    /// One random bit of one value flipped.
    BitFlip,
    /// One value off by one: the smallest possible error.
    PlusOne,
    /// One value off by 2^63: a zero divisor of Z/2^64, which a check over the ring would
    /// miss half the time.
    HalfRing,
    /// One value off by p = 2^61 − 1: invisible to a check modulo that prime, were it
    /// not for the range check.
    PlusPrime,
    /// The layer skipped: zeros.
    Zeros,
    /// The result of the same layer in the previous inference.
    Replay,
    /// The layer computed with other weights (another package's).
    OtherWeights,
}

struct State {
    lie: Lie,
    /// Layer to lie on in the current inference.
    target: u32,
    rng: u64,
    last: Vec<Option<RingTensor>>,
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
    inner: CpuAccelerator,
    other: CpuAccelerator,
    state: Arc<Mutex<State>>,
}

impl Accelerator for Liar {
    fn name(&self) -> &str {
        "liar"
    }
    fn load(&mut self, m: &PublicModel) -> Result<()> {
        // "Other weights": every weight of the package, plus one.
        let mut m2 = m.clone();
        for w in &mut m2.weights {
            if let shadownet_trusted::format::PublicWeight::I32(t) = w {
                t.data.iter_mut().for_each(|v| *v = v.wrapping_add(1));
            }
        }
        self.other.load(&m2)?;
        self.inner.load(m)
    }
    fn run(&mut self, layer: u32, x: &Tensor) -> Result<Tensor> {
        self.inner.run(layer, x)
    }
    fn run_ring(&mut self, layer: u32, x: &RingTensor) -> Result<RingTensor> {
        let honest = self.inner.run_ring(layer, x)?;
        let mut s = self.state.lock().unwrap();
        let l = layer as usize;
        if s.last.len() <= l {
            s.last.resize(l + 1, None);
        }
        let previous = s.last[l].replace(honest.clone());
        if layer != s.target {
            return Ok(honest);
        }
        let mut y = honest;
        let at = (s.next() % y.data.len() as u64) as usize;
        match s.lie {
            Lie::Honest => {}
            Lie::BitFlip => {
                let bit = s.next() % 64;
                y.data[at] ^= 1 << bit;
            }
            Lie::PlusOne => y.data[at] = y.data[at].wrapping_add(1),
            Lie::HalfRing => y.data[at] = y.data[at].wrapping_add(1 << 63),
            Lie::PlusPrime => y.data[at] = y.data[at].wrapping_add((1 << 61) - 1),
            Lie::Zeros => y.data.iter_mut().for_each(|v| *v = 0),
            Lie::Replay => {
                if let Some(p) = previous {
                    y = p;
                } else {
                    y.data[at] ^= 1;
                }
            }
            Lie::OtherWeights => y = self.other.run_ring(layer, x)?,
        }
        Ok(y)
    }
}

/// A small model (conv, ReLU, conv, ReLU, dense) for the long run: the check's soundness
/// does not depend on the model's size, the trials' run time does.
fn small_model() -> (shadownet_ir::Graph, Vec<Tensor>) {
    use shadownet_ir::{Activation, Conv, Graph, Op};
    let mut s = 7u64;
    let mut w = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 2001) as f32 / 2000.0 - 0.5
                })
                .collect(),
        }
    };
    let conv = Conv {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [1; 4],
        groups: 1,
    };
    let mut g = Graph::new();
    let x = g.add_input("x", vec![1, 3, 12, 12]);
    let w1 = g.add_const("w1", w(&[8, 3, 3, 3]));
    let b1 = g.add_const("b1", w(&[8]));
    let h = g
        .add_node("c1", Op::Conv(conv.clone()), vec![x, w1, b1], &[])
        .unwrap()[0];
    let h = g
        .add_node("r1", Op::Act(Activation::Relu), vec![h], &[])
        .unwrap()[0];
    let w2 = g.add_const("w2", w(&[8, 8, 3, 3]));
    let h = g.add_node("c2", Op::Conv(conv), vec![h, w2], &[]).unwrap()[0];
    let h = g
        .add_node("r2", Op::Act(Activation::Relu), vec![h], &[])
        .unwrap()[0];
    let h = g
        .add_node(
            "flat",
            Op::Reshape {
                shape: vec![1, 8 * 144],
            },
            vec![h],
            &[],
        )
        .unwrap()[0];
    let w3 = g.add_const("w3", w(&[8 * 144, 10]));
    let y = g.add_node("fc", Op::MatMul, vec![h, w3], &[]).unwrap()[0];
    g.outputs = vec![y];
    let xs = vec![w(&[1, 3, 12, 12])];
    (g, xs)
}

fn trials(name: &str, n: usize) {
    let (g, xs) = if name == "small" {
        small_model()
    } else {
        case(name)
    };
    let dir = tmpdir(&format!("integrity-{name}"));
    let (dev, pkg, c) = package(&dir, &g, &opts(Scheme::Hardened));
    let layers = c.header.layers.len() as u64;
    let state = Arc::new(Mutex::new(State {
        lie: Lie::Honest,
        target: 0,
        rng: 0x2545_f491_4f6c_dd1d,
        last: Vec::new(),
    }));
    let liar = Liar {
        inner: CpuAccelerator::new(),
        other: CpuAccelerator::new(),
        state: state.clone(),
    };
    let mut sm = secure::open(&pkg, &dev.device_key, EnclaveMode::Inproc, Box::new(liar)).unwrap();
    // Masks made on the spot: every trial gets fresh ones, no pool files pile up.
    sm.allow_slow_masks = true;
    for lie in [
        Lie::Honest,
        Lie::BitFlip,
        Lie::PlusOne,
        Lie::HalfRing,
        Lie::PlusPrime,
        Lie::Zeros,
        Lie::Replay,
        Lie::OtherWeights,
    ] {
        let mut caught = 0;
        for _ in 0..n {
            {
                let mut s = state.lock().unwrap();
                s.lie = lie;
                s.target = (s.next() % layers) as u32;
            }
            match sm.infer(xs.clone()) {
                Ok(_) => {}
                Err(shadownet_untrusted::Error::Tee(TeeError::Integrity { layer })) => {
                    assert_eq!(
                        layer,
                        state.lock().unwrap().target,
                        "{lie:?}: blamed the wrong layer"
                    );
                    caught += 1;
                    // The core is poisoned after an error: open the package again.
                    let liar = Liar {
                        inner: CpuAccelerator::new(),
                        other: CpuAccelerator::new(),
                        state: state.clone(),
                    };
                    sm = secure::open(&pkg, &dev.device_key, EnclaveMode::Inproc, Box::new(liar))
                        .unwrap();
                    sm.allow_slow_masks = true;
                }
                Err(e) => panic!("{lie:?}: unexpected error {e}"),
            }
        }
        eprintln!("{name}: {lie:?} caught in {caught}/{n} trials");
        if lie == Lie::Honest {
            assert_eq!(caught, 0, "{name}: false alarms on honest results");
        } else {
            assert_eq!(
                caught,
                n,
                "{name}: {lie:?} got through {} times",
                n - caught
            );
        }
    }
}

#[test]
fn every_lie_is_caught_quick() {
    trials("minivgg", 25);
}

#[test]
#[ignore = "1000 trials per lie: a minute or two; scripts/test.sh runs it"]
fn every_lie_is_caught_1000_trials() {
    trials("small", 1000);
}
