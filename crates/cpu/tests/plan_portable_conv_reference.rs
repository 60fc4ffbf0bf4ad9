//! The shared conv / pool cases through a compiled plan on the portable (non-SIMD)
//! kernels, one thread, as on a CPU without AVX-512.
use shadownet_cpu::{Plan, Result};
use shadownet_ir::Graph;

fn eval(
    node: &str,
    op: &shadownet_ir::Op,
    inputs: &[&shadownet_ir::Tensor],
) -> Result<Vec<shadownet_ir::Tensor>> {
    let mut g = Graph::new();
    let mut ids = vec![g.add_input("x", inputs[0].shape.clone())];
    for (i, t) in inputs[1..].iter().enumerate() {
        ids.push(g.add_const(format!("c{i}"), (*t).clone()));
    }
    g.outputs = g.add_node(node, op.clone(), ids, &[])?;
    shadownet_cpu::sequential(|| {
        shadownet_cpu::nchwc::portable_only(|| Plan::compile(&g)?.run(&[inputs[0].clone()]))
    })
}

include!("../../kernels/tests/common/conv_cases.rs");
