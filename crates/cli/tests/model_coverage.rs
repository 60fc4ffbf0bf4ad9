//! Model coverage beyond the float fixtures: sparse (DENSIFY) TFLite weights and int8
//! models, against LiteRT / ONNX Runtime outputs made by `scripts/make-fixtures.sh`.
use std::path::{Path, PathBuf};

use shadownet::npy;
use shadownet_ir::Tensor;

fn fixtures() -> PathBuf {
    std::env::var_os("SHADOWNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures"))
}

fn model_path(name: &str) -> PathBuf {
    let root = fixtures();
    ["onnx", "tflite"]
        .iter()
        .map(|ext| root.join("models").join(format!("{name}.{ext}")))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no model {name} under {}: run scripts/make-fixtures.sh",
                root.display()
            )
        })
}

/// Runs `model` on the case's inputs; returns (output name, ours, reference) per output.
fn run_case(model: &Path, case: &str) -> Vec<(String, Tensor, Tensor)> {
    let dir = fixtures().join("cases").join(case);
    let inputs = npy::read_npz(&dir.join("inputs.npz")).expect("inputs.npz");
    let expected = npy::read_npz(&dir.join("expected.npz")).expect("expected.npz");
    let shapes: Vec<(String, Vec<usize>)> = inputs
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    let m = shadownet_import::load_model(model, &shapes)
        .unwrap_or_else(|e| panic!("{case}: import failed: {e}"));
    let g = &m.graph;
    let ordered: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|&i| inputs[&g.values[i].name].clone())
        .collect();
    let outs =
        shadownet_cpu::run_graph(g, &ordered).unwrap_or_else(|e| panic!("{case}: run failed: {e}"));
    assert_eq!(outs.len(), expected.len(), "{case}: output count");
    g.outputs
        .iter()
        .zip(outs)
        .map(|(&o, t)| {
            let name = g.values[o].name.clone();
            let want = expected
                .get(&name)
                .unwrap_or_else(|| panic!("{case}: reference has no output {name}"))
                .clone();
            assert_eq!(t.shape, want.shape, "{case}/{name}: shape");
            (name, t, want)
        })
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.data.iter().zip(&b.data).fold(0f32, |m, (x, y)| {
        if (x - y).is_nan() {
            f32::INFINITY
        } else {
            m.max((x - y).abs())
        }
    })
}

/// Sparse fp16 weights expanded by DENSIFY (MediaPipe's full-range face detector from the
/// mediapipe wheel) match LiteRT like the dense float models do.
#[test]
fn face_detection_full_range_sparse() {
    let name = "face_detection_full_range_sparse";
    for (o, ours, want) in run_case(&model_path(name), name) {
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = max_abs_diff(&ours, &want) / scale.max(f32::MIN_POSITIVE);
        eprintln!("{name}/{o}: max rel err {e:.2e}");
        assert!(e <= 1e-4, "{name}/{o}: max rel err {e:.3e}");
    }
}
