//! Helpers shared by the test binaries.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use shadownet::keys::TestDevice;
use shadownet_ir::{Graph, Tensor};
use shadownet_protect::{Converted, Options};
use shadownet_trusted::Scheme;

pub fn fixtures() -> PathBuf {
    std::env::var_os("SHADOWNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures"))
}

/// The model of a fixture case with its reference input (shapes from the inputs file).
pub fn case(name: &str) -> (Graph, Vec<Tensor>) {
    let root = fixtures();
    let model = ["onnx", "tflite"]
        .iter()
        .map(|e| root.join("models").join(format!("{name}.{e}")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no fixture model {name}: run scripts/make-fixtures.sh"));
    let inputs =
        shadownet::npy::read_npz(&root.join("cases").join(name).join("inputs.npz")).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = inputs
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    let g = shadownet_import::load_model(&model, &shapes).unwrap().graph;
    let xs = g
        .inputs
        .iter()
        .map(|&i| inputs[&g.values[i].name].clone())
        .collect();
    (g, xs)
}

/// A fresh directory for one test, removed first if an earlier run left it.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shadownet-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// max |a − b| / max |b| over all values; infinite on a NaN or infinity on either side, or
/// on a shape or count mismatch.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    if a.shape != b.shape || a.data.len() != b.data.len() {
        return f64::INFINITY;
    }
    let mut scale = 0f64;
    let mut worst = 0f64;
    for (&x, &y) in a.data.iter().zip(&b.data) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        scale = scale.max((y as f64).abs());
        worst = worst.max((x as f64 - y as f64).abs());
    }
    if worst == 0.0 {
        0.0
    } else {
        worst / scale.max(f64::MIN_POSITIVE)
    }
}

/// The one closeness check of the test suite: every value of `got` within
/// `atol + rtol·max|want|` of `want`; fails on NaN or infinity, on a different number of
/// tensors, and on any shape mismatch. Returns the largest relative error.
pub fn check_close(got: &[Tensor], want: &[Tensor], atol: f64, rtol: f64) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{} tensors, expected {}", got.len(), want.len()));
    }
    let mut worst = 0f64;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        if a.shape != b.shape || a.data.len() != b.data.len() {
            return Err(format!(
                "output {i} has shape {:?}, expected {:?}",
                a.shape, b.shape
            ));
        }
        let scale = b.data.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        for (j, (&x, &y)) in a.data.iter().zip(&b.data).enumerate() {
            if !(x.is_finite() && y.is_finite()) {
                return Err(format!("output {i}[{j}] is {x}, expected {y}"));
            }
            let d = (x as f64 - y as f64).abs();
            if d > atol + rtol * scale {
                return Err(format!(
                    "output {i}[{j}] = {x}, expected {y} (|diff| {d:.3e} > {atol:.1e} + {rtol:.1e}·{scale:.3e})"
                ));
            }
        }
        worst = worst.max(rel_err(a, b));
    }
    Ok(worst)
}

pub fn assert_close(what: &str, got: &[Tensor], want: &[Tensor], atol: f64, rtol: f64) -> f64 {
    check_close(got, want, atol, rtol).unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub fn argmax(t: &Tensor) -> usize {
    (0..t.len())
        .max_by(|&i, &j| t.data[i].total_cmp(&t.data[j]))
        .unwrap_or(0)
}

pub fn opts(scheme: Scheme) -> Options {
    Options {
        scheme,
        insecure_seed: Some(7),
        ..Default::default()
    }
}

/// A device trusting a vendor, and `g` converted and written for it; returns the device
/// and the package directory.
pub fn package(dir: &Path, g: &Graph, o: &Options) -> (TestDevice, PathBuf, Converted) {
    let dev = TestDevice::new(&dir.join("keys")).unwrap();
    let c = shadownet_protect::convert(g, o, &mut |_, _| {}).unwrap();
    let pkg = dir.join("pkg");
    shadownet::secure::write(&c, &dev.device_pub, &dev.vendor_secret, &pkg).unwrap();
    (dev, pkg, c)
}

/// The enclave binary of this build, for the tests that run the enclave process.
pub fn use_built_enclave() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_shadownet"));
    let enclave = exe.with_file_name(format!("shadownet-enclave{}", std::env::consts::EXE_SUFFIX));
    assert!(
        enclave.is_file(),
        "{} is missing: build the workspace (cargo build --release) before these tests",
        enclave.display()
    );
    std::env::set_var("SHADOWNET_ENCLAVE_BIN", enclave);
}

#[test]
fn closeness_fails_on_nan_shape_and_count() {
    let t = |d: Vec<f32>| Tensor {
        shape: vec![d.len()],
        data: d,
    };
    assert_eq!(
        check_close(&[t(vec![1.0, 2.0])], &[t(vec![1.0, 2.0])], 0.0, 0.0),
        Ok(0.0)
    );
    for (got, want) in [
        (vec![t(vec![f32::NAN, 2.0])], vec![t(vec![1.0, 2.0])]),
        (vec![t(vec![1.0, 2.0])], vec![t(vec![1.0, f32::NAN])]),
        (vec![t(vec![1.0, 2.0, 3.0])], vec![t(vec![1.0, 2.0])]),
        (
            vec![t(vec![1.0, 2.0]), t(vec![1.0])],
            vec![t(vec![1.0, 2.0])],
        ),
        (vec![t(vec![1.0, 2.5])], vec![t(vec![1.0, 2.0])]),
    ] {
        assert!(
            check_close(&got, &want, 1e-6, 1e-6).is_err(),
            "{got:?} vs {want:?} passed"
        );
    }
    assert!(rel_err(&t(vec![f32::NAN]), &t(vec![1.0])).is_infinite());
}
