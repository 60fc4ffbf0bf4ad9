//! How much the hardened scheme's secret input-channel order does for the static attacks:
//! `attack --kind unmix` scores candidates against the real filters in the real input
//! order, so an attack that unmixed a bank but could not undo the order would score at the
//! floor. This example converts a model itself (with a seed, so it can read its own secret
//! in_perm: an evaluation, not an attack), puts the reference filters into the public
//! input order, and scores the same static attacks there: an upper bound for an attacker
//! who also found the order.
//!
//! cargo run --release --example unmix_public_order -- MODEL [NAME=1,3,H,W]
use anyhow::{Context, Result};
use shadownet::attack::{self, unmix, PublicPackage};
use shadownet_ir::Tensor;
use shadownet_trusted::format::LayerRestore;
use shadownet_trusted::{LinearKind, Scheme};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .context("usage: unmix_public_order MODEL [NAME=dims]")?;
    let shapes = match args.get(1) {
        Some(s) => vec![shadownet::plain::parse_input_shape(s)?],
        None => Vec::new(),
    };
    let g = shadownet_import::load_model(std::path::Path::new(path), &shapes)?.graph;
    let opts = shadownet_protect::Options {
        scheme: Scheme::Hardened,
        insecure_seed: Some(11),
        ..Default::default()
    };
    let c = shadownet_protect::convert(&g, &opts, &mut |_, _| {})?;
    let mut bytes = shadownet_protect::encode_header(&c.header)?;
    for w in &c.weights {
        bytes.extend_from_slice(w);
    }
    let (m, _) =
        shadownet_untrusted::PublicModel::decode(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = PublicPackage::from_model(&m);
    let nodes = attack::reference_layers(&g, &public)?;
    // The reference with every outsourced weight's input axis in the public order.
    let mut gp = g.clone();
    for (sl, (&n, l)) in c.secret.layers.iter().zip(nodes.iter().zip(&public.layers)) {
        let LayerRestore::Exact(e) = &sl.restore else {
            continue;
        };
        if e.in_perm.is_empty() {
            continue;
        }
        let v = g.nodes[n].inputs[1];
        let w = g.constant(v).context("weight")?;
        let axis = match l.kind {
            LinearKind::Conv(_) => 1,
            _ => 0,
        };
        let outer: usize = w.shape[..axis].iter().product();
        let ch = w.shape[axis];
        let inner: usize = w.shape[axis + 1..].iter().product();
        let mut data = vec![0f32; w.len()];
        for o in 0..outer {
            for (q, &p) in e.in_perm.iter().enumerate() {
                data[(o * ch + q) * inner..][..inner]
                    .copy_from_slice(&w.data[(o * ch + p as usize) * inner..][..inner]);
            }
        }
        gp.values[v].data = Some(Tensor {
            shape: w.shape.clone(),
            data,
        });
    }
    let cfg = unmix::UnmixConfig {
        group_sizes: vec![16],
        whole_layer: true,
        methods: ["pca", "ica-logcosh-sym", "sparse-l4"]
            .iter()
            .filter_map(|m| unmix::parse_method(m))
            .collect(),
        templates: Vec::new(),
        templates_name: None,
        layers: Vec::new(),
        seed: 1,
    };
    for (name, graph) in [("real input order", &g), ("public input order", &gp)] {
        let r = unmix::run(&public, graph, &nodes, &cfg)?;
        println!("{name}:");
        print!(
            "{}",
            shadownet::attack::bank::totals_line("  dense-like", &r.dense)
        );
    }
    Ok(())
}
