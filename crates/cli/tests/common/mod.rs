//! Helpers shared by the secure-inference test binaries.
#![allow(dead_code)]
use std::path::PathBuf;

use shadownet_ir::{Graph, Tensor};

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

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shadownet-secure-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .data
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.data
        .iter()
        .zip(&b.data)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}
