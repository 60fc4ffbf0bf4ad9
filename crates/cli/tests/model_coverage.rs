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

/// The quantisation step of a graph output: the scale of the Dequantize that makes it
/// (through any reshapes or layout transposes).
fn output_step(g: &shadownet_ir::Graph, mut v: usize) -> f32 {
    use shadownet_ir::Op;
    loop {
        let n = g
            .nodes
            .iter()
            .find(|n| n.outputs.contains(&v))
            .unwrap_or_else(|| panic!("output {} has no producer", g.values[v].name));
        match &n.op {
            Op::Dequantize(q) => return q.scale,
            Op::Identity | Op::Reshape { .. } | Op::Transpose { .. } => v = n.inputs[0],
            op => panic!(
                "output {} comes from {}, not a Dequantize",
                g.values[v].name,
                op.name()
            ),
        }
    }
}

fn argmax(t: &Tensor) -> usize {
    t.data
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// An int8 model made by ONNX Runtime's quantize_static matches ONNX Runtime (default
/// optimisations, so its integer kernels) within one quantisation step of every output,
/// with the same top-1 class.
fn check_int8(case: &str) {
    let path = model_path(case);
    let m = shadownet_import::load_model(&path, &[]).ok();
    let results = run_case(&path, case);
    let g = m.map(|m| m.graph);
    if let Some(g) = &g {
        // Every conv and matmul must run as an integer op, none in float.
        let count = |f: fn(&shadownet_ir::Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
        let (int, float) = (count(|o| o.is_quantized_linear()), count(|o| o.is_linear()));
        eprintln!("{case}: {int} integer conv/matmul, {float} float");
        assert!(
            int > 0 && float == 0,
            "{case}: {int} integer and {float} float linear ops"
        );
    }
    for (k, (o, ours, want)) in results.iter().enumerate() {
        let step = match &g {
            Some(g) => output_step(g, g.outputs[k]),
            None => {
                // Models with free input sizes need the case's shapes: reload with them.
                let dir = fixtures().join("cases").join(case);
                let inputs = npy::read_npz(&dir.join("inputs.npz")).unwrap();
                let shapes: Vec<(String, Vec<usize>)> = inputs
                    .iter()
                    .map(|(k, t)| (k.clone(), t.shape.clone()))
                    .collect();
                let g = shadownet_import::load_model(&path, &shapes).unwrap().graph;
                output_step(&g, g.outputs[k])
            }
        };
        let d = max_abs_diff(ours, want);
        let off = ours
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| (*a - *b).abs() > step * 0.5)
            .count();
        eprintln!(
            "{case}/{o}: max |diff| {d:.3e} = {:.2} steps ({off} of {} values differ), top-1 {} vs {}",
            d / step,
            ours.len(),
            argmax(ours),
            argmax(want)
        );
        assert!(
            d <= step * 1.001,
            "{case}/{o}: max |diff| {d} > one step {step}"
        );
        assert_eq!(argmax(ours), argmax(want), "{case}/{o}: top-1 differs");
    }
}

macro_rules! int8_cases {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_int8(stringify!($name));
        }
    )*};
}

int8_cases!(
    mobilenet_v1_int8_qdq,
    mobilenet_v1_int8_qop,
    resnet44_int8_qdq,
    resnet44_int8_qop,
    ppocr_cls_int8_qdq,
    ppocr_cls_int8_qop,
);

/// `inspect` names every unsupported op of a model up front, not only the first.
#[test]
fn inspect_lists_every_unsupported_op() {
    use shadownet_import::onnx::proto::{
        tensor_shape_proto::{dimension, Dimension},
        type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
        TypeProto, ValueInfoProto,
    };
    let info = |name: &str| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: [1, 4]
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = |op: &str, domain: &str, i: &str, o: &str| NodeProto {
        op_type: Some(op.into()),
        domain: Some(domain.into()),
        name: Some(format!("{op}_node")),
        input: vec![i.into()],
        output: vec![o.into()],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![
                node("Relu", "", "x", "a"),
                node("Hardmax", "", "a", "b"),
                node("Det", "", "b", "c"),
                node("Sigmoid", "", "c", "d"),
                node("Det", "", "d", "e"),
                node("FancyOp", "example.domain", "e", "y"),
            ],
            input: vec![info("x")],
            output: vec![info("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("shadownet-coverage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("three_unsupported.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&model)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadownet"))
        .args(["inspect", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "inspect accepted the model: {err}");
    assert!(err.contains("3 unsupported ops"), "{err}");
    for want in [
        "Hardmax (1 nodes, first 'Hardmax_node')",
        "Det (2 nodes, first 'Det_node')",
        "example.domain.FancyOp (1 nodes",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert!(!err.contains("Relu") && !err.contains("Sigmoid"), "{err}");
}

/// A full-integer TFLite model (written by scripts/make_tflite_int8.py: int8 conv,
/// depthwise, add, mul, pools, concatenation, resize, logistic, fully connected) matches
/// LiteRT within one quantisation step, with the same top-1.
#[test]
fn tiny_int8() {
    check_int8("tiny_int8");
}

/// ConvInteger, MatMulInteger (int32 accumulators, cast to float) and QLinearMatMul
/// against ONNX Runtime: the accumulators exactly, the requantised output within a step.
#[test]
fn integer_ops() {
    let case = "integer_ops";
    let results = run_case(&model_path(case), case);
    for (o, ours, want) in &results {
        let d = max_abs_diff(ours, want);
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{case}/{o}: max |diff| {d:.3e} (max |ref| {scale:.3e})");
        match o.as_str() {
            // float(acc) * scale: the same f32 product as ONNX Runtime's Mul.
            "conv" => assert!(d <= scale * 1e-6, "{o}: {d}"),
            "matmul_integer" => assert_eq!(ours.data, want.data, "{o}"),
            "qlinear" => assert!(d <= 0.25 * 1.001, "{o}: {d} > one step"),
            other => panic!("unexpected output {other}"),
        }
        assert!(scale > 0.0, "{o}: all zero");
    }
}
