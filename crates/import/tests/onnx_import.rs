//! Structure and error tests of the ONNX importer on small hand-built models.
use prost::Message;
use shadownet_import::onnx::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension::Value as Dim,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use shadownet_import::{onnx, Error};
use shadownet_ir::{Graph, Op};

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn fixed(name: &str, dims: &[i64]) -> ValueInfoProto {
    let d: Vec<Dim> = dims.iter().map(|&v| Dim::DimValue(v)).collect();
    value_info(name, &d)
}

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: if name.is_empty() {
            None
        } else {
            Some(name.into())
        },
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec()),
        r#type: Some(AttributeType::String as i32),
        ..Default::default()
    }
}

fn float_init(name: &str, dims: &[i64], raw: bool) -> TensorProto {
    let n: i64 = dims.iter().product();
    let vals: Vec<f32> = (0..n).map(|k| k as f32 * 0.01).collect();
    let mut t = TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        ..Default::default()
    };
    if raw {
        t.raw_data = Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        t.float_data = vals;
    }
    t
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: &[&str],
    inits: Vec<TensorProto>,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            input: inputs,
            output: outputs.iter().map(|o| fixed(o, &[])).collect(),
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn out_shape(g: &Graph, k: usize) -> Vec<usize> {
    g.shape(g.outputs[k]).to_vec()
}

fn conv_same_model() -> Vec<u8> {
    model(
        vec![node(
            "Conv",
            "conv0",
            &["x", "w", "b"],
            &["y"],
            vec![
                string("auto_pad", "SAME_UPPER"),
                ints("strides", &[2, 2]),
                ints("kernel_shape", &[3, 3]),
            ],
        )],
        vec![fixed("x", &[1, 3, 15, 16])],
        &["y"],
        vec![
            float_init("w", &[8, 3, 3, 3], true),
            float_init("b", &[8], false),
        ],
    )
}

#[test]
fn conv_same_upper_stride2() {
    let g = onnx::import(&conv_same_model(), None, &[]).expect("import");
    assert_eq!(out_shape(&g, 0), vec![1, 8, 8, 8]);
    assert_eq!(g.nodes.len(), 1);
    match &g.nodes[0].op {
        // 15 rows: out 8, total pad (8-1)*2+3-15 = 2 → 1/1; 16 cols: total 1 → 0/1.
        Op::Conv(c) => assert_eq!(c.pads, [1, 0, 1, 1]),
        other => panic!("expected Conv, got {other:?}"),
    }
    assert_eq!(g.values[g.outputs[0]].name, "y");
}

#[test]
fn shape_subgraph_folds_into_one_reshape() {
    let i64_const = |name: &str, dims: &[i64], v: &[i64]| TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    };
    let nodes = vec![
        node("Shape", "", &["x"], &["s"], vec![]),
        node("Gather", "", &["s", "zero"], &["n"], vec![int("axis", 0)]),
        node("Unsqueeze", "", &["n", "axes0"], &["n1"], vec![]),
        node(
            "Concat",
            "",
            &["n1", "minus1"],
            &["target"],
            vec![int("axis", 0)],
        ),
        node("Reshape", "flatten", &["x", "target"], &["y"], vec![]),
    ];
    let bytes = model(
        nodes,
        vec![value_info(
            "x",
            &[
                Dim::DimParam("N".into()),
                Dim::DimValue(4),
                Dim::DimValue(5),
            ],
        )],
        &["y"],
        vec![
            i64_const("zero", &[], &[0]),
            i64_const("axes0", &[1], &[0]),
            i64_const("minus1", &[1], &[-1]),
        ],
    );
    let g = onnx::import(&bytes, None, &[("x".to_string(), vec![2, 4, 5])]).expect("import");
    assert_eq!(g.nodes.len(), 1, "{:?}", g.nodes);
    assert!(matches!(&g.nodes[0].op, Op::Reshape { shape } if shape == &vec![2, 20]));
    assert_eq!(out_shape(&g, 0), vec![2, 20]);
    // Shape arithmetic must not leave constants behind in the graph.
    assert_eq!(g.param_count(), 0);
}

#[test]
fn gemm_trans_b_becomes_dense_layer() {
    let mut alpha = AttributeProto {
        name: Some("alpha".into()),
        f: Some(2.0),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    };
    alpha.r#type = Some(AttributeType::Float as i32);
    let bytes = model(
        vec![node(
            "Gemm",
            "fc",
            &["x", "w", "b"],
            &["y"],
            vec![int("transB", 1), alpha],
        )],
        vec![fixed("x", &[2, 6])],
        &["y"],
        vec![float_init("w", &[4, 6], false), float_init("b", &[4], true)],
    );
    let g = onnx::import(&bytes, None, &[]).expect("import");
    assert_eq!(out_shape(&g, 0), vec![2, 4]);
    let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
    assert!(
        matches!(
            ops.as_slice(),
            [Op::MatMul, Op::Binary(shadownet_ir::BinaryOp::Add)]
        ),
        "{ops:?}"
    );
    let w = g.constant(g.nodes[0].inputs[1]).expect("constant weight");
    assert_eq!(w.shape, vec![6, 4]);
    // w[k][n] = alpha * B[n][k]; B[1][0] = 6 * 0.01.
    assert!((w.data[1] - 2.0 * 0.06).abs() < 1e-6);
}

#[test]
fn softmax_before_opset13_is_coerced_to_2d() {
    let mut m = ModelProto::decode(
        model(
            vec![node("Softmax", "sm", &["x"], &["y"], vec![int("axis", 1)])],
            vec![fixed("x", &[2, 3, 4])],
            &["y"],
            vec![],
        )
        .as_slice(),
    )
    .expect("decode");
    m.opset_import[0].version = Some(11);
    let g = onnx::import(&m.encode_to_vec(), None, &[]).expect("import");
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(ops, ["Reshape", "Softmax", "Reshape"]);
    assert_eq!(out_shape(&g, 0), vec![2, 3, 4]);
}

#[test]
fn output_aliasing_an_input_gets_identity() {
    let bytes = model(
        vec![node("Dropout", "", &["x"], &["y"], vec![])],
        vec![fixed("x", &[1, 2])],
        &["y"],
        vec![],
    );
    let g = onnx::import(&bytes, None, &[]).expect("import");
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].op, Op::Identity);
    assert_eq!(g.values[g.outputs[0]].name, "y");
}

#[test]
fn random_bytes_are_a_decode_error() {
    let mut s = 0x1234_5678u32;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as u8
        })
        .collect();
    let err = onnx::import(&bytes, None, &[]).expect_err("random bytes must fail");
    assert!(matches!(err, Error::Decode { format: "ONNX", .. }), "{err}");
}

#[test]
fn truncated_model_is_an_error_not_a_panic() {
    let bytes = conv_same_model();
    for cut in [1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let r = onnx::import(&bytes[..cut], None, &[]);
        assert!(r.is_err(), "cut at {cut} imported");
    }
    let err = onnx::import(&bytes[..bytes.len() - 1], None, &[]).expect_err("truncated");
    assert!(
        matches!(err, Error::Decode { .. } | Error::Invalid { .. }),
        "{err}"
    );
}

#[test]
fn empty_model_is_rejected() {
    let err =
        onnx::import(&ModelProto::default().encode_to_vec(), None, &[]).expect_err("no graph");
    assert!(err.to_string().contains("no graph"), "{err}");
    let err = onnx::import(
        &model(vec![], vec![fixed("x", &[1])], &["x"], vec![]),
        None,
        &[],
    )
    .expect_err("no nodes");
    assert!(err.to_string().contains("no nodes"), "{err}");
}

#[test]
fn unsupported_op_names_op_and_node() {
    let bytes = model(
        vec![
            node("Relu", "", &["x"], &["r"], vec![]),
            node("NonMaxSuppression", "nms_7", &["r"], &["y"], vec![]),
        ],
        vec![fixed("x", &[1, 4])],
        &["y"],
        vec![],
    );
    let err = onnx::import(&bytes, None, &[]).expect_err("unsupported");
    let msg = err.to_string();
    assert!(
        msg.contains("NonMaxSuppression") && msg.contains("nms_7"),
        "{msg}"
    );
    // Unnamed nodes are reported as op_type#index.
    let bytes = model(
        vec![node("Einsum", "", &["x"], &["y"], vec![])],
        vec![fixed("x", &[1, 4])],
        &["y"],
        vec![],
    );
    let msg = onnx::import(&bytes, None, &[])
        .expect_err("unsupported")
        .to_string();
    assert!(msg.contains("Einsum#0"), "{msg}");
}

#[test]
fn dynamic_input_needs_input_shape() {
    let bytes = model(
        vec![node("Relu", "", &["x"], &["y"], vec![])],
        vec![value_info(
            "x",
            &[
                Dim::DimParam("N".into()),
                Dim::DimValue(3),
                Dim::DimParam("H".into()),
                Dim::DimParam("W".into()),
            ],
        )],
        &["y"],
        vec![],
    );
    let err = onnx::import(&bytes, None, &[]).expect_err("dynamic");
    assert!(
        matches!(&err, Error::DynamicInput { name, dims } if name == "x" && dims == "[N, 3, H, W]"),
        "{err}"
    );
    assert!(err.to_string().contains("--input-shape"), "{err}");
    let g = onnx::import(&bytes, None, &[("x".into(), vec![1, 3, 8, 9])]).expect("with shape");
    assert_eq!(out_shape(&g, 0), vec![1, 3, 8, 9]);
    let err =
        onnx::import(&bytes, None, &[("x".into(), vec![1, 4, 8, 9])]).expect_err("contradiction");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

#[test]
fn unknown_input_shape_name() {
    let bytes = conv_same_model();
    let err =
        onnx::import(&bytes, None, &[("images".into(), vec![1, 3, 15, 16])]).expect_err("unknown");
    assert!(
        matches!(&err, Error::UnknownInput(n) if n == "images"),
        "{err}"
    );
    // Initializers are not inputs either.
    let err =
        onnx::import(&bytes, None, &[("w".into(), vec![8, 3, 3, 3])]).expect_err("initializer");
    assert!(matches!(err, Error::UnknownInput(_)), "{err}");
}

#[test]
fn undefined_input_is_reported() {
    let bytes = model(
        vec![node("Relu", "r", &["nowhere"], &["y"], vec![])],
        vec![fixed("x", &[1])],
        &["y"],
        vec![],
    );
    let msg = onnx::import(&bytes, None, &[])
        .expect_err("undefined")
        .to_string();
    assert!(msg.contains("nowhere"), "{msg}");
}

#[test]
fn slice_clamps_and_negative_steps() {
    let i64_const = |name: &str, v: &[i64]| TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    };
    let bytes = model(
        vec![node(
            "Slice",
            "s",
            &["x", "st", "en", "ax", "sp"],
            &["y"],
            vec![],
        )],
        vec![fixed("x", &[1, 3, 10, 10])],
        &["y"],
        vec![
            i64_const("st", &[1, -1]),
            i64_const("en", &[i64::MAX, i64::MIN]),
            i64_const("ax", &[2, 3]),
            i64_const("sp", &[2, -3]),
        ],
    );
    let g = onnx::import(&bytes, None, &[]).expect("import");
    // rows 1,3,5,7,9; cols 9,6,3,0.
    assert_eq!(out_shape(&g, 0), vec![1, 3, 5, 4]);
}

#[test]
fn maxpool_ceil_mode_and_pads() {
    let bytes = model(
        vec![node(
            "MaxPool",
            "p",
            &["x"],
            &["y"],
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                int("ceil_mode", 1),
            ],
        )],
        vec![fixed("x", &[1, 2, 8, 8])],
        &["y"],
        vec![],
    );
    let g = onnx::import(&bytes, None, &[]).expect("import");
    // floor mode would give 3; ceil mode gives 4.
    assert_eq!(out_shape(&g, 0), vec![1, 2, 4, 4]);
}

#[test]
fn external_data_is_read_relative_to_base_dir() {
    let dir = std::env::temp_dir().join(format!("shadownet-onnx-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let vals: Vec<u8> = (0..8).flat_map(|k| (k as f32).to_le_bytes()).collect();
    let mut file = vec![0u8; 16];
    file.extend_from_slice(&vals);
    std::fs::write(dir.join("w.bin"), &file).expect("write");
    let kv = |k: &str, v: &str| shadownet_import::onnx::proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![2, 4],
        data_type: Some(1),
        data_location: Some(1),
        external_data: vec![
            kv("location", "w.bin"),
            kv("offset", "16"),
            kv("length", "32"),
        ],
        ..Default::default()
    };
    let bytes = model(
        vec![node("MatMul", "mm", &["x", "w"], &["y"], vec![])],
        vec![fixed("x", &[3, 2])],
        &["y"],
        vec![w],
    );
    let g = onnx::import(&bytes, Some(&dir), &[]).expect("import");
    let t = g.constant(g.nodes[0].inputs[1]).expect("weight");
    assert_eq!(t.data, (0..8).map(|k| k as f32).collect::<Vec<_>>());
    let err = onnx::import(&bytes, None, &[]).expect_err("no base dir");
    assert!(err.to_string().contains("w.bin"), "{err}");
    // A location outside the model's directory is refused, absolute or by `..`, even when
    // the file exists.
    let outside = dir.with_extension("outside.bin");
    std::fs::write(&outside, &file).expect("write");
    for loc in [
        outside.display().to_string(),
        format!("../{}", outside.file_name().unwrap().to_str().unwrap()),
        "sub/../../w.bin".to_string(),
    ] {
        let w = TensorProto {
            name: Some("w".into()),
            dims: vec![2, 4],
            data_type: Some(1),
            data_location: Some(1),
            external_data: vec![kv("location", &loc), kv("offset", "16"), kv("length", "32")],
            ..Default::default()
        };
        let bytes = model(
            vec![node("MatMul", "mm", &["x", "w"], &["y"], vec![])],
            vec![fixed("x", &[3, 2])],
            &["y"],
            vec![w],
        );
        let err = onnx::import(&bytes, Some(&dir), &[]).expect_err(&loc);
        assert!(
            err.to_string().contains("not a relative path inside"),
            "{loc}: {err}"
        );
    }
    let _ = std::fs::remove_file(&outside);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every prefix and many single-byte corruptions of valid models must give an error or a
/// graph, never a panic.
#[test]
fn corrupted_models_never_panic() {
    let shape_model = {
        let c = |name: &str, v: &[i64]| TensorProto {
            name: Some(name.into()),
            dims: vec![v.len() as i64],
            data_type: Some(7),
            int64_data: v.to_vec(),
            ..Default::default()
        };
        model(
            vec![
                node("Shape", "", &["x"], &["s"], vec![]),
                node("Slice", "", &["s", "a", "b"], &["t"], vec![]),
                node("Concat", "", &["t", "m"], &["target"], vec![int("axis", 0)]),
                node("Reshape", "", &["x", "target"], &["r"], vec![]),
                node(
                    "MaxPool",
                    "",
                    &["r"],
                    &["y"],
                    vec![ints("kernel_shape", &[2, 2]), int("ceil_mode", 1)],
                ),
            ],
            vec![fixed("x", &[1, 3, 8, 8])],
            &["y"],
            vec![c("a", &[0]), c("b", &[2]), c("m", &[8, 8])],
        )
    };
    for bytes in [conv_same_model(), shape_model] {
        for cut in 0..bytes.len() {
            let _ = onnx::import(&bytes[..cut], None, &[]);
        }
        for pos in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[pos] = v;
                let _ = onnx::import(&b, None, &[]);
            }
        }
    }
}

#[test]
fn prelu_channel_slope_and_conv1d() {
    let bytes = model(
        vec![
            node(
                "Conv",
                "c1",
                &["x", "w"],
                &["c"],
                vec![ints("pads", &[1, 1])],
            ),
            node("PRelu", "p", &["c", "s"], &["y"], vec![]),
        ],
        vec![fixed("x", &[1, 3, 10])],
        &["y"],
        vec![
            float_init("w", &[4, 3, 3], true),
            float_init("s", &[4], false),
        ],
    );
    let g = onnx::import(&bytes, None, &[]).expect("import");
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    // The weight reshape folds into the constant; the activation is lifted and lowered.
    assert_eq!(ops, ["Reshape", "Conv", "Reshape", "PRelu"]);
    assert_eq!(out_shape(&g, 0), vec![1, 4, 10]);
    let slope = g.constant(g.nodes[3].inputs[1]).expect("slope");
    assert_eq!(slope.shape, vec![4, 1]);
}

#[test]
fn opset9_upsample_and_constant_cast() {
    let mut m = ModelProto::decode(
        model(
            vec![
                node("Cast", "", &["sc_i"], &["sc"], vec![int("to", 1)]),
                node(
                    "Upsample",
                    "up",
                    &["x", "sc"],
                    &["y"],
                    vec![string("mode", "nearest")],
                ),
            ],
            vec![fixed("x", &[1, 2, 3, 4])],
            &["y"],
            vec![TensorProto {
                name: Some("sc_i".into()),
                dims: vec![4],
                data_type: Some(7),
                int64_data: vec![1, 1, 2, 3],
                ..Default::default()
            }],
        )
        .as_slice(),
    )
    .expect("decode");
    m.opset_import[0].version = Some(9);
    let g = onnx::import(&m.encode_to_vec(), None, &[]).expect("import");
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(out_shape(&g, 0), vec![1, 2, 6, 12]);
}
