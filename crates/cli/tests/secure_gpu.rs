//! Secure inference with the GPU accelerator equals plain inference: the paper models and
//! the fixture real models, both schemes, both enclave modes (as `secure.rs` checks for the
//! CPU accelerator). Built with `--features gpu`; needs a GPU adapter (Mesa's lavapipe will
//! do) and fails, saying why, without one.
use std::path::PathBuf;

use shadownet::secure::{self, EnclaveMode};
use shadownet_gpu::GpuAccelerator;
use shadownet_ir::{Graph, Tensor};
use shadownet_protect::Options;
use shadownet_trusted::Scheme;

mod common;
use common::{case, rel_err, tmpdir};

fn argmax(t: &Tensor) -> usize {
    (0..t.len())
        .max_by(|&i, &j| t.data[i].total_cmp(&t.data[j]))
        .unwrap_or(0)
}

fn package(name: &str, g: &Graph, scheme: Scheme) -> (PathBuf, PathBuf) {
    let dir = tmpdir(&format!("gpu-{name}-{}", scheme.name()));
    let (sk, pk) = shadownet::keys::keygen(&dir.join("keys"), false).unwrap();
    let pub_key = shadownet::keys::read_public_key(&pk).unwrap();
    let pkg = dir.join("pkg");
    let opts = Options {
        scheme,
        seed: Some(7),
        ..Default::default()
    };
    secure::convert_to_dir(g, &pub_key, &pkg, &opts, false).unwrap();
    (sk, pkg)
}

fn check_matches_plain(name: &str, scheme: Scheme, tolerance: f32) {
    std::env::set_var("SHADOWNET_ENCLAVE_BIN", env!("CARGO_BIN_EXE_shadownet"));
    let (g, xs) = case(name);
    let plain = shadownet_cpu::run_graph(&g, &xs).unwrap();
    let (key, pkg) = package(name, &g, scheme);
    for mode in [EnclaveMode::Inproc, EnclaveMode::Process] {
        let gpu = GpuAccelerator::new()
            .unwrap_or_else(|e| panic!("secure runs on the GPU need an adapter: {e}"));
        let timings = gpu.timings();
        let mut sm = secure::open(&pkg, &key, mode, Box::new(gpu))
            .unwrap_or_else(|e| panic!("{name} {mode:?}: {e:#}"));
        // Hardened: masks from the pool only. Masks made on the spot differ in the trusted
        // core alone (secure.rs covers them); the accelerator sees the same work, and on
        // a software GPU every run costs seconds.
        let run = if scheme == Scheme::Hardened {
            sm.precompute(1, &mut |_, _| {}).unwrap();
            "pool"
        } else {
            "fixed masks"
        };
        {
            timings.take();
            let outs = sm
                .infer(xs.clone())
                .unwrap_or_else(|e| panic!("{name} {mode:?} {run}: {e}"));
            // Every outsourced layer ran on the GPU.
            assert_eq!(timings.take().calls as usize, sm.public.layers.len());
            for (o, p) in outs.iter().zip(&plain) {
                let e = rel_err(o, p);
                eprintln!(
                    "{name} {} {mode:?} {run} on the GPU: max rel err {e:.2e}",
                    scheme.name()
                );
                assert!(e <= tolerance, "{name} {mode:?} {run}: rel err {e:.3e}");
                if p.len() > 1 {
                    assert_eq!(argmax(o), argmax(p), "{name} {mode:?}: argmax");
                }
            }
        }
    }
}

macro_rules! matches_plain {
    ($scheme:expr; $($name:ident: $tol:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_matches_plain(stringify!($name), $scheme, $tol);
        }
    )*};
}

mod shadownet_on_gpu_equals_plain {
    use super::*;
    matches_plain!(
        Scheme::ShadowNet;
        mobilenet_v1: 1e-4,
        resnet44: 1e-4,
        resnet404: 1e-4,
        minivgg: 1e-4,
        yolov4_tiny: 1e-4,
        ppocr_cls: 1e-4,
        hand_landmark_lite: 1e-4,
    );
}

mod hardened_on_gpu_equals_plain {
    use super::*;
    matches_plain!(
        Scheme::Hardened;
        mobilenet_v1: 1e-4,
        resnet44: 1e-4,
        resnet404: 1e-4,
        minivgg: 1e-4,
        yolov4_tiny: 1e-4,
        ppocr_cls: 1e-4,
        hand_landmark_lite: 1e-4,
    );
}
