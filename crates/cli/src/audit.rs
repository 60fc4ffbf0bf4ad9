//! `convert --keep-in-tee auto`: a conversion that audits itself. The vendor holds the real
//! weights, so it can score the static attacks of `attack --kind unmix` on its own public
//! output before shipping it; every layer where an attack beats the floor runs whole in
//! the trusted core instead, and the package is converted again (fresh randomness) and
//! audited again, until every outsourced layer is at its floor.
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use shadownet_ir::Graph;
use shadownet_protect::{Converted, Keep, Options};

use crate::attack::{unmix, PublicPackage};
use crate::secure;
use shadownet_attacks::unmix::Method;

/// The audit report a package directory keeps beside its files (`inspect` prints it).
pub const AUDIT_FILE: &str = "audit.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditedLayer {
    /// The source model's node.
    pub node: String,
    pub op: String,
    pub real_filters: usize,
    /// The best attack's share of real filters recovered (|cos| ≥ 0.95) and mean best
    /// |cos|, over every attack's candidates together.
    pub recovered: f64,
    pub mean_cos: f64,
    /// The higher of the floors (public filters as guesses, as many random guesses).
    pub floor_recovered: f64,
    pub floor_mean_cos: f64,
    pub at_floor: bool,
    /// The attack set that did best.
    pub best: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Audit {
    pub methods: Vec<String>,
    pub group_sizes: Vec<usize>,
    pub rounds: usize,
    /// Layers kept in the trusted core, with the reason (the scheme's default ones too).
    pub kept: Vec<(String, String)>,
    /// The outsourced layers of the shipped package, as the last round scored them.
    pub outsourced: Vec<AuditedLayer>,
}

/// Converts `g`, writing the package to `out` after each round, until the static attacks
/// are at their floor on every outsourced layer.
pub fn convert_auto(
    g: &Graph,
    opts: &Options,
    device_pub: &[u8; 32],
    vendor_secret: &[u8; 32],
    out: &Path,
) -> Result<(Converted, Audit)> {
    convert_auto_with(
        g,
        opts,
        device_pub,
        vendor_secret,
        out,
        unmix::default_methods(),
    )
}

/// [`convert_auto`] with the attacks of `methods` (the default: every static attack of
/// `attack --kind unmix`).
pub fn convert_auto_with(
    g: &Graph,
    opts: &Options,
    device_pub: &[u8; 32],
    vendor_secret: &[u8; 32],
    out: &Path,
    methods: Vec<Method>,
) -> Result<(Converted, Audit)> {
    let mut opts = opts.clone();
    let mut flagged: Vec<(String, String)> = Vec::new();
    // Every round moves at least one layer into the core or ends, so this ends. (A layer
    // that passed may fail in a later round: its fresh mix is a new draw.)
    for round in 1.. {
        opts.keep = if flagged.is_empty() {
            Keep::Default
        } else {
            Keep::Names(flagged.iter().map(|(n, _)| n.clone()).collect())
        };
        let mut c = match secure::convert(g, &opts, true) {
            Ok(c) => c,
            Err(e) if !flagged.is_empty() => {
                let names: Vec<&str> = flagged.iter().map(|(n, _)| n.as_str()).collect();
                bail!(
                    "--keep-in-tee auto: the static attacks beat the floor on {} layer(s) ({}), and keeping them in the TEE leaves no package: {e:#}",
                    names.len(),
                    names.join(", ")
                )
            }
            Err(e) => return Err(e),
        };
        secure::write(&c, device_pub, vendor_secret, out)?;
        // The attacker's view: public.bin exactly as shipped.
        let public = PublicPackage::read(out)?;
        let nodes: Vec<usize> = c.secret.layers.iter().map(|l| l.node as usize).collect();
        let cfg = unmix::UnmixConfig {
            group_sizes: vec![opts.group],
            whole_layer: true,
            methods: methods.clone(),
            templates: Vec::new(),
            templates_name: None,
            layers: Vec::new(),
            seed: round as u64,
        };
        let report = unmix::run(&public, g, &nodes, &cfg)?;
        let layers: Vec<AuditedLayer> = report
            .layers
            .iter()
            .map(|l| AuditedLayer {
                node: g.nodes[nodes[l.layer]].name.clone(),
                op: l.op.clone(),
                real_filters: l.real_filters,
                recovered: l.union.score.fraction,
                mean_cos: l.union.score.mean_cos,
                floor_recovered: l.union.verdict.floor_fraction,
                floor_mean_cos: l.union.verdict.floor_mean_cos,
                at_floor: l.union.verdict.at_floor,
                best: l.best.clone(),
            })
            .collect();
        let leaks: Vec<&AuditedLayer> = layers.iter().filter(|l| !l.at_floor).collect();
        eprintln!(
            "audit round {round}: {} outsourced layers, {} beat the floor",
            layers.len(),
            leaks.len()
        );
        if leaks.is_empty() {
            // The converter's reasons, with the audit's for the layers it moved.
            for (name, why) in &mut c.kept {
                if let Some((_, r)) = flagged.iter().find(|(n, _)| n == name) {
                    *why = r.clone();
                }
            }
            let audit = Audit {
                methods: report.methods.clone(),
                group_sizes: cfg.group_sizes.clone(),
                rounds: round,
                kept: c.kept.clone(),
                outsourced: layers,
            };
            let path = out.join(AUDIT_FILE);
            std::fs::write(&path, serde_json::to_string_pretty(&audit)?)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            return Ok((c, audit));
        }
        for l in leaks {
            flagged.push((
                l.node.clone(),
                format!(
                    "audit round {round}: {} recovered {:.1}% of its {} filters, mean |cos| {:.3} (floor {:.1}%, {:.3})",
                    l.best,
                    100.0 * l.recovered,
                    l.real_filters,
                    l.mean_cos,
                    100.0 * l.floor_recovered,
                    l.floor_mean_cos
                ),
            ));
        }
    }
    unreachable!("the rounds end with a package or an error")
}

/// The audit a package directory holds, if its vendor converted it with `auto`.
pub fn read(pkg: &Path) -> Result<Option<Audit>> {
    let path = pkg.join(AUDIT_FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
            anyhow::anyhow!("{}: not an audit report: {e}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}
