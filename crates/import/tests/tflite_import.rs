//! TFLite importer tests on tiny models built here with the flatbuffers builder, so
//! no model file outside the repository is needed.
use flatbuffers::FlatBufferBuilder;
use shadownet_import::{tflite, Error};
use shadownet_ir::Op;

struct TensorSpec {
    name: &'static str,
    shape: Vec<i32>,
    signature: Option<Vec<i32>>,
    ty: i8,
    data: Option<Vec<u8>>,
}

fn act(name: &'static str, shape: &[i32]) -> TensorSpec {
    TensorSpec {
        name,
        shape: shape.to_vec(),
        signature: None,
        ty: 0,
        data: None,
    }
}

fn f32_const(name: &'static str, shape: &[i32], vals: &[f32]) -> TensorSpec {
    TensorSpec {
        name,
        shape: shape.to_vec(),
        signature: None,
        ty: 0,
        data: Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

#[allow(clippy::too_many_arguments)]
/// A one-operator model. `conv` adds Conv2DOptions (SAME, stride 1).
fn build(
    tensors: &[TensorSpec],
    inputs: &[i32],
    outputs: &[i32],
    builtin: i32,
    custom: Option<&str>,
    op_in: &[i32],
    op_out: &[i32],
    conv: bool,
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    // Buffer 0 is the conventional empty buffer.
    let mut buffers = vec![{
        let t = b.start_table();
        b.end_table(t)
    }];
    let mut tensor_offs = Vec::new();
    for t in tensors {
        let buffer = match &t.data {
            Some(d) => {
                let v = b.create_vector(d);
                let bt = b.start_table();
                b.push_slot_always(4, v);
                buffers.push(b.end_table(bt));
                buffers.len() as u32 - 1
            }
            None => 0,
        };
        let shape = b.create_vector(&t.shape);
        let sig = t.signature.as_ref().map(|s| b.create_vector(s));
        let name = b.create_string(t.name);
        let tt = b.start_table();
        b.push_slot_always(4, shape);
        b.push_slot::<i8>(6, t.ty, 0);
        b.push_slot::<u32>(8, buffer, 0);
        b.push_slot_always(10, name);
        if let Some(s) = sig {
            b.push_slot_always(18, s);
        }
        tensor_offs.push(b.end_table(tt));
    }
    let options = conv.then(|| {
        let o = b.start_table();
        b.push_slot::<i8>(4, 0, 1); // padding SAME
        b.push_slot::<i32>(6, 1, 0); // stride_w
        b.push_slot::<i32>(8, 1, 0); // stride_h
        b.end_table(o)
    });
    let oi = b.create_vector(op_in);
    let oo = b.create_vector(op_out);
    let ot = b.start_table();
    b.push_slot::<u32>(4, 0, 1);
    b.push_slot_always(6, oi);
    b.push_slot_always(8, oo);
    if let Some(o) = options {
        b.push_slot::<u8>(10, 1, 0); // BuiltinOptions.Conv2DOptions
        b.push_slot_always(12, o);
    }
    let operator = b.end_table(ot);
    let tensors_v = b.create_vector(&tensor_offs);
    let in_v = b.create_vector(inputs);
    let out_v = b.create_vector(outputs);
    let ops_v = b.create_vector(&[operator]);
    let sg = b.start_table();
    b.push_slot_always(4, tensors_v);
    b.push_slot_always(6, in_v);
    b.push_slot_always(8, out_v);
    b.push_slot_always(10, ops_v);
    let sg = b.end_table(sg);
    let custom = custom.map(|c| b.create_string(c));
    let oc = b.start_table();
    b.push_slot::<i8>(4, builtin.min(127) as i8, 0);
    if let Some(c) = custom {
        b.push_slot_always(6, c);
    }
    b.push_slot::<i32>(8, 1, 0);
    b.push_slot::<i32>(10, builtin, 0);
    let oc = b.end_table(oc);
    let codes = b.create_vector(&[oc]);
    let sgs = b.create_vector(&[sg]);
    let bufs = b.create_vector(&buffers);
    let m = b.start_table();
    b.push_slot::<u32>(4, 3, 0);
    b.push_slot_always(6, codes);
    b.push_slot_always(8, sgs);
    b.push_slot_always(12, bufs);
    let m = b.end_table(m);
    b.finish(m, Some("TFL3"));
    b.finished_data().to_vec()
}

const CONV_2D: i32 = 3;
const ADD: i32 = 0;
const ARG_MAX: i32 = 56;
const CUSTOM: i32 = 32;

/// x [1,4,4,2] -> CONV_2D (1x1, 3 filters, bias) -> y [1,4,4,3].
fn conv_model(x: TensorSpec) -> Vec<u8> {
    let w: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let tensors = [
        x,
        f32_const("w", &[3, 1, 1, 2], &w),
        f32_const("b", &[3], &[1.0, 2.0, 3.0]),
        act("y", &[1, 4, 4, 3]),
    ];
    build(&tensors, &[0], &[3], CONV_2D, None, &[0, 1, 2], &[3], true)
}

fn shape_of(g: &shadownet_ir::Graph, v: usize) -> (String, Vec<usize>) {
    (g.values[v].name.clone(), g.values[v].shape.clone())
}

#[test]
fn conv_model_keeps_nhwc_interface() {
    let g = tflite::import(&conv_model(act("x", &[1, 4, 4, 2])), &[]).unwrap();
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(
        shape_of(&g, g.inputs[0]),
        ("x".to_string(), vec![1, 4, 4, 2])
    );
    assert_eq!(g.outputs.len(), 1);
    assert_eq!(
        shape_of(&g, g.outputs[0]),
        ("y".to_string(), vec![1, 4, 4, 3])
    );
    let convs: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_)))
        .collect();
    assert_eq!(convs.len(), 1);
    // The filter is stored OIHW and the conv sees NCHW.
    assert_eq!(g.values[convs[0].inputs[1]].shape, vec![3, 2, 1, 1]);
    assert_eq!(g.values[convs[0].inputs[0]].shape, vec![1, 2, 4, 4]);
    assert!(matches!(&g.nodes[0].op, Op::Transpose { perm } if perm == &[0, 3, 1, 2]));
    assert!(matches!(&g.nodes.last().unwrap().op, Op::Transpose { perm } if perm == &[0, 2, 3, 1]));
}

#[test]
fn broadcast_constant_goes_to_channel_axis() {
    let tensors = [
        act("x", &[1, 2, 2, 3]),
        f32_const("c", &[3], &[1.0, 2.0, 3.0]),
        act("y", &[1, 2, 2, 3]),
    ];
    let bytes = build(&tensors, &[0], &[2], ADD, None, &[0, 1], &[2], false);
    let g = tflite::import(&bytes, &[]).unwrap();
    assert_eq!(
        shape_of(&g, g.outputs[0]),
        ("y".to_string(), vec![1, 2, 2, 3])
    );
    let add = g
        .nodes
        .iter()
        .find(|n| matches!(n.op, Op::Binary(_)))
        .unwrap();
    assert_eq!(g.values[add.inputs[1]].shape, vec![3, 1, 1]);
}

#[test]
fn random_bytes_are_decode_errors() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for len in [8usize, 16, 64, 300, 4096] {
        for _ in 0..50 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            bytes[4..8].copy_from_slice(b"TFL3");
            match tflite::import(&bytes, &[]) {
                Err(Error::Decode {
                    format: "TFLite", ..
                }) => {}
                // Random bytes may happen to form tables that then fail on content.
                Err(_) => {}
                Ok(g) => assert!(g.nodes.is_empty()),
            }
        }
    }
}

#[test]
fn truncated_model_is_an_error_not_a_panic() {
    let full = conv_model(act("x", &[1, 4, 4, 2]));
    for len in 0..full.len() {
        assert!(
            tflite::import(&full[..len], &[]).is_err(),
            "truncated to {len} bytes"
        );
    }
    assert!(matches!(
        tflite::import(&full[..full.len() / 2], &[]),
        Err(Error::Decode {
            format: "TFLite",
            ..
        })
    ));
}

#[test]
fn unsupported_builtin_names_op_and_node() {
    let tensors = [act("x", &[1, 5]), act("idx", &[1])];
    let bytes = build(&tensors, &[0], &[1], ARG_MAX, None, &[0], &[1], false);
    match tflite::import(&bytes, &[]) {
        Err(Error::Unsupported { node, op, .. }) => {
            assert_eq!(node, "idx");
            assert_eq!(op, "ARG_MAX");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn unsupported_custom_op_is_named_by_custom_code() {
    let tensors = [act("x", &[1, 5]), act("y", &[1, 5])];
    let bytes = build(
        &tensors,
        &[0],
        &[1],
        CUSTOM,
        Some("MyFancyOp"),
        &[0],
        &[1],
        false,
    );
    match tflite::import(&bytes, &[]) {
        Err(Error::Unsupported { node, op, .. }) => {
            assert_eq!(node, "y");
            assert_eq!(op, "MyFancyOp");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn dynamic_input_needs_a_shape() {
    let mut x = act("x", &[1, 4, 4, 2]);
    x.signature = Some(vec![-1, 4, 4, 2]);
    let bytes = conv_model(x);
    assert!(
        matches!(tflite::import(&bytes, &[]), Err(Error::DynamicInput { name, .. }) if name == "x")
    );
    let g = tflite::import(&bytes, &[("x".to_string(), vec![2, 4, 4, 2])]).unwrap();
    assert_eq!(shape_of(&g, g.inputs[0]).1, vec![2, 4, 4, 2]);
    assert_eq!(shape_of(&g, g.outputs[0]).1, vec![2, 4, 4, 3]);
    assert!(matches!(
        tflite::import(&bytes, &[("nope".to_string(), vec![1])]),
        Err(Error::UnknownInput(n)) if n == "nope"
    ));
}

#[test]
fn integer_graph_inputs_are_unsupported() {
    let mut x = act("x", &[1, 4, 4, 2]);
    x.ty = 9; // INT8
    assert!(matches!(
        tflite::import(&conv_model(x), &[]),
        Err(Error::Unsupported { node, .. }) if node == "x"
    ));
}
