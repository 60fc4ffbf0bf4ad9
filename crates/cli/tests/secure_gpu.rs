//! Secure inference with the GPU accelerator equals plain inference: the paper models and
//! the fixture real models, both schemes, both enclave modes (as `secure.rs` checks for the
//! CPU accelerator). Built with `--features gpu`; needs a GPU adapter (Mesa's lavapipe will
//! do) and fails, saying why, without one.
use shadownet::secure::{self, EnclaveMode};
use shadownet_gpu::GpuAccelerator;
use shadownet_trusted::Scheme;

mod common;
use common::{argmax, assert_close, case, opts, package, tmpdir, use_built_enclave};

fn check_matches_plain(name: &str, scheme: Scheme, tolerance: f64) {
    use_built_enclave();
    let (g, xs) = case(name);
    let plain = shadownet_cpu::run_graph(&g, &xs).unwrap();
    let dir = tmpdir(&format!("gpu-{name}-{}", scheme.name()));
    let (dev, pkg, c) = package(&dir, &g, &opts(scheme));
    for mode in [EnclaveMode::Inproc, EnclaveMode::Process] {
        let gpu = GpuAccelerator::new()
            .unwrap_or_else(|e| panic!("secure runs on the GPU need an adapter: {e}"));
        let timings = gpu.timings();
        let mut sm = secure::open(&pkg, &dev.device_key, mode, Box::new(gpu))
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
        timings.take();
        let outs = sm
            .infer(xs.clone())
            .unwrap_or_else(|e| panic!("{name} {mode:?} {run}: {e}"));
        // Every outsourced layer ran on the GPU.
        assert_eq!(timings.take().calls as usize, c.header.layers.len());
        let e = assert_close(
            &format!("{name} {mode:?} {run} on the GPU"),
            &outs,
            &plain,
            0.0,
            tolerance,
        );
        eprintln!(
            "{name} {} {mode:?} {run} on the GPU: max rel err {e:.2e}",
            scheme.name()
        );
        for (o, p) in outs.iter().zip(&plain) {
            if p.len() > 1 {
                assert_eq!(argmax(o), argmax(p), "{name} {mode:?}: argmax");
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
        face_detection_short_range: 1e-4,
        // The paper scheme's float masks are large against these activations, and the
        // GPU's sums round in another order than the CPU's: measured 1.3e-4 on both.
        palm_detection_lite: 3e-4,
        selfie_segmentation: 3e-4,
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
        face_detection_short_range: 1e-4,
        palm_detection_lite: 1e-4,
        selfie_segmentation: 1e-4,
    );
}
