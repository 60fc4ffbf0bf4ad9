//! A small mutation fuzzer for stable Rust (cargo-fuzz needs a nightly toolchain this
//! project does not have): starting from a corpus of valid inputs, each execution applies
//! a few random mutations (bit flips, interesting bytes, inserted or deleted runs, splices
//! of another corpus entry, truncation) and runs the target under `catch_unwind`. A panic
//! is a finding: the input is written to `findings/` and the run fails. Each target runs
//! for a bounded time (`SHADOWNET_FUZZ_SECS`, default 10 s).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: fast, seeded, good enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x10];

/// A mutated copy of `input` (`other` for splices).
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if d.len() >= 4 => {
                // A 32-bit little-endian field set to an extreme value.
                let i = rng.below(d.len() - 3);
                let v: u32 = [0, 1, u32::MAX, 0x8000_0000, 0x7fff_ffff][rng.below(5)];
                d[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 => {
                let at = rng.below(d.len() + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, ins);
            }
            4 if !d.is_empty() => {
                let at = rng.below(d.len());
                let n = (1 + rng.below(64)).min(d.len() - at);
                d.drain(at..at + n);
            }
            5 if !other.is_empty() && !d.is_empty() => {
                let at = rng.below(d.len());
                let from = rng.below(other.len());
                let n = (1 + rng.below(256)).min(other.len() - from).min(d.len() - at);
                d[at..at + n].copy_from_slice(&other[from..from + n]);
            }
            _ => {
                let keep = rng.below(d.len() + 1);
                d.truncate(keep);
            }
        }
    }
    d
}

/// What a run did.
pub struct Report {
    pub executions: u64,
    pub seconds: f64,
}

pub fn budget() -> Duration {
    let secs = std::env::var("SHADOWNET_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(secs)
}

/// Runs `target` on mutations of `corpus` for the time budget. Panics (failing the test)
/// on the first input that makes `target` panic, after saving it under `findings/`.
pub fn run(name: &str, corpus: &[Vec<u8>], seed: u64, target: impl Fn(&[u8])) -> Report {
    assert!(!corpus.is_empty(), "{name}: empty corpus");
    // Targets report bugs by panicking; the default hook would print every caught one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let budget = budget();
    let mut executions = 0u64;
    let mut finding: Option<Vec<u8>> = None;
    // The corpus itself first, then mutations.
    for input in corpus {
        executions += 1;
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            finding = Some(input.clone());
            break;
        }
    }
    while finding.is_none() && t0.elapsed() < budget {
        let a = &corpus[rng.below(corpus.len())];
        let b = &corpus[rng.below(corpus.len())];
        let input = mutate(a, b, &mut rng);
        executions += 1;
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            finding = Some(input);
        }
    }
    std::panic::set_hook(hook);
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(bad) = finding {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("findings");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}-{executions}.bin"));
        let _ = std::fs::write(&path, &bad);
        // Run it once more with the hook back, so the panic message shows.
        let _ = catch_unwind(AssertUnwindSafe(|| target(&bad)));
        panic!(
            "{name}: a panic after {executions} executions; input saved to {}",
            path.display()
        );
    }
    eprintln!("fuzz {name}: {executions} executions in {seconds:.1} s, no panic");
    Report {
        executions,
        seconds,
    }
}

/// Files of a corpus directory plus extra inputs.
pub fn corpus(dir: &Path, extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut c = extra;
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(b) = std::fs::read(&p) {
                c.push(b);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzzer_finds_a_planted_bug() {
        std::env::set_var("SHADOWNET_FUZZ_SECS", "5");
        let r = std::panic::catch_unwind(|| {
            run("planted", &[b"hello world".to_vec()], 1, |d| {
                if d.len() > 3 && d[0] == b'h' && d[1] == 0xff {
                    panic!("planted");
                }
            })
        });
        assert!(r.is_err(), "a two-byte condition was not reached in 5 s");
    }
}
