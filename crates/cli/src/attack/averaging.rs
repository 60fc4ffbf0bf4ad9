//! `attack --kind averaging`: repeat chosen inputs, average what the accelerator receives,
//! and regress every layer's weights on the recovered activations.
//!
//! The attacker runs each of `inputs` chosen inputs `runs` times and averages every
//! outsourced layer's accelerator input. Fresh zero-mean masks average away (error
//! σ/√T); a mask that repeats bit for bit (the paper's scheme: fixed at conversion) does
//! not, and is removed with the mask-reuse anchor instead (the per-element minimum over
//! chosen probes, exact wherever a ReLU switched the element off). A layer whose average
//! correlates with the attacker's own input (above 0.2) is fed by the model input, and the
//! attacker uses its input as it is.
//!
//! Then, per layer k, the public output ŷ′ = L(x̂_k, W′) is computed from the recovered
//! input and the public weights, and for the nearest later layers j whose input has the
//! same spatial size, each channel of x̂_j is fitted (ridge) on ŷ′'s channels, plus as
//! extra features the recovered activations and public outputs of neighbouring layers of
//! that size (residual branches), once on the samples where the target is clearly
//! positive (ReLU's linear part) and once on all. The coefficients on ŷ′ mapped through
//! W′ are the candidate filters (Σ_r c_r·W′_r).
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shadownet_attacks::averaging::{pearson, regress_filters, Mean, Region};
use shadownet_attacks::score::{self, Floor};
use shadownet_attacks::Mat;
use shadownet_ir::{Graph, Tensor};
use shadownet_trusted::LinearKind;

use super::PublicPackage;

use super::bank::{self, Judged, Totals};
use super::fake_partner::protection;
use super::mask_reuse::{self, Oracle};
use super::{match_groups, op_name, Rng, CORR_RECOVERED, MIN_CORR_ELEMENTS};

/// A layer whose averaged input correlates with the attacker's own input above this is
/// taken to be fed by the model input. One observation under a mask twice the input's
/// size already correlates ~0.45 with it; unrelated activations of thousands of values
/// correlate ~0.02.
const MODEL_INPUT_CORR: f64 = 0.2;

#[derive(Clone, Debug)]
pub struct AveragingConfig {
    /// Runs per chosen input (T).
    pub runs: usize,
    /// Distinct chosen inputs.
    pub inputs: usize,
    /// Probes for the fixed-mask anchors (only used when a mask repeats).
    pub probes: usize,
    /// Ridge λ relative to the mean diagonal of the normal matrix.
    pub lambda: f64,
    /// Layers with more public channels than this are not regressed (cost ~ M³ per
    /// target channel); their activations are still reported.
    pub max_features: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AvgLayer {
    pub layer: usize,
    pub op: String,
    pub depthwise: bool,
    /// The attacker took this layer's input to be its own (fed by the model input).
    pub model_input: bool,
    /// The layer's mask repeated exactly across runs (removed with anchors).
    pub fixed_mask: bool,
    /// Mean over the chosen inputs of the correlation of the recovered input with the
    /// real one.
    pub corr: f64,
    /// Values in the activation (below [`MIN_CORR_ELEMENTS`] the correlation does not
    /// count as a recovery).
    pub elements: usize,
    /// Layers whose inputs the regression targeted.
    pub targets: Vec<usize>,
    pub features: usize,
    pub median_r2: f64,
    pub real_filters: usize,
    pub public_floor: Floor,
    /// The regressed filters (empty when the layer was not regressed).
    pub filters: Judged,
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AveragingReport {
    pub runs: usize,
    pub inputs: usize,
    pub inferences: usize,
    pub layers: Vec<AvgLayer>,
    /// Layers whose input the attacker saw only masked.
    pub masked_layers: usize,
    /// ... of which recovered to correlation ≥ 0.95.
    pub recovered_corr: usize,
    pub recovered_corr_fraction: f64,
    pub median_corr: f64,
    pub dense: Totals,
    pub depthwise: Totals,
    pub seconds: f64,
}

fn first_per_layer(obs: Vec<super::Observed>, l: usize) -> Result<Vec<Tensor>> {
    let mut out: Vec<Option<Tensor>> = vec![None; l];
    for o in obs {
        if let Some(s) = out.get_mut(o.layer as usize) {
            if s.is_none() {
                *s = Some(o.input);
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(k, t)| t.with_context(|| format!("layer {k} never reached the accelerator")))
        .collect()
}

/// Spatial signature of an activation for pairing: (batch, positions...) without the
/// channel axis.
fn spatial(shape: &[usize], kind_is_matmul: bool) -> Vec<usize> {
    if kind_is_matmul || shape.len() != 4 {
        shape[..shape.len().saturating_sub(1)].to_vec()
    } else {
        vec![shape[0], shape[2], shape[3]]
    }
}

/// Rows = samples (batch × positions), columns = channels.
fn samples_by_channel(t: &Tensor, matmul_like: bool) -> Mat {
    let s = &t.shape;
    if matmul_like || s.len() != 4 {
        let c = *s.last().unwrap_or(&1);
        let n = t.len() / c.max(1);
        return Mat::from_fn(n, c, |i, j| t.data[i * c + j] as f64);
    }
    let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
    Mat::from_fn(b * hw, c, |i, j| {
        let (n, p) = (i / hw, i % hw);
        t.data[(n * c + j) * hw + p] as f64
    })
}

fn hstack(parts: &[&Mat]) -> Mat {
    let rows = parts.first().map_or(0, |m| m.rows);
    let cols: usize = parts.iter().map(|m| m.cols).sum();
    let mut out = Mat::zeros(rows, cols);
    for i in 0..rows {
        let mut off = 0;
        for p in parts {
            out.row_mut(i)[off..off + p.cols].copy_from_slice(p.row(i));
            off += p.cols;
        }
    }
    out
}

fn vstack(parts: &[Mat]) -> Mat {
    let mut out = Mat::zeros(0, parts.first().map_or(0, |m| m.cols));
    for p in parts {
        out.append_rows(p);
    }
    out
}

/// The attack. Returns per layer and chosen input the recovered accelerator input, whether
/// the attacker took it as the model input, whether its mask was fixed, and the inputs.
#[allow(clippy::type_complexity)]
pub fn recover(
    public: &PublicPackage,
    oracle: &mut dyn Oracle,
    cfg: &AveragingConfig,
) -> Result<(
    Vec<Vec<Tensor>>,
    Vec<bool>,
    Vec<bool>,
    Vec<Vec<Tensor>>,
    usize,
)> {
    let l = public.layers.len();
    let mut rng = Rng::new(cfg.seed ^ 0xa7e4);
    let mut chosen = Vec::new();
    let mut recovered: Vec<Vec<Tensor>> = Vec::new(); // [input][layer]
    let mut fixed = vec![true; l];
    let mut plain = vec![true; l];
    let mut inferences = 0;
    for _ in 0..cfg.inputs.max(1) {
        let xs = public.random_inputs(&mut rng);
        let mut means: Vec<Mean> = vec![Mean::default(); l];
        let mut first: Vec<Tensor> = Vec::new();
        for t in 0..cfg.runs.max(1) {
            let seen = first_per_layer(oracle.query(xs.clone())?, l)?;
            inferences += 1;
            for (k, x) in seen.iter().enumerate() {
                means[k].add(&x.data);
            }
            if t == 0 {
                for (k, x) in seen.iter().enumerate() {
                    plain[k] &= xs.iter().any(|q| q.shape == x.shape && q.data == x.data);
                }
                first = seen;
            } else {
                for (k, x) in seen.iter().enumerate() {
                    fixed[k] &= x.data == first[k].data;
                }
            }
        }
        let per_layer: Vec<Tensor> = means
            .iter()
            .zip(&first)
            .map(|(m, f)| Tensor {
                shape: f.shape.clone(),
                data: m.mean().into_iter().map(|v| v as f32).collect(),
            })
            .collect();
        recovered.push(per_layer);
        chosen.push(xs);
    }
    if cfg.runs < 2 {
        fixed.iter_mut().for_each(|f| *f = false);
    }
    // Fixed masks: the per-element minimum over probes anchors them (mask-reuse).
    if fixed.iter().zip(&plain).any(|(&f, &p)| f && !p) {
        let shapes: Vec<Vec<usize>> = public.inputs.iter().map(|(_, s)| s.clone()).collect();
        let mut prng = Rng::new(cfg.seed ^ 0x9b0e);
        let mut mins: Vec<Vec<f32>> = recovered[0].iter().map(|t| t.data.clone()).collect();
        for q in 0..cfg.probes.max(2) {
            let probe = mask_reuse::probe(&shapes, q, &mut prng);
            let seen = first_per_layer(oracle.query(probe)?, l)?;
            inferences += 1;
            for (k, x) in seen.iter().enumerate() {
                for (m, &v) in mins[k].iter_mut().zip(&x.data) {
                    *m = m.min(v);
                }
            }
        }
        for per in recovered.iter_mut() {
            for (k, t) in per.iter_mut().enumerate() {
                if fixed[k] && !plain[k] {
                    for (v, m) in t.data.iter_mut().zip(&mins[k]) {
                        *v -= m;
                    }
                }
            }
        }
    }
    // Layers fed by the model input: the attacker knows that input.
    let mut model_input = vec![false; l];
    for (k, mi) in model_input.iter_mut().enumerate() {
        let hits = recovered.iter().zip(&chosen).all(|(per, xs)| {
            xs.iter().any(|q| {
                q.shape == per[k].shape && {
                    let a: Vec<f64> = q.data.iter().map(|&v| v as f64).collect();
                    let b: Vec<f64> = per[k].data.iter().map(|&v| v as f64).collect();
                    pearson(&a, &b) > MODEL_INPUT_CORR
                }
            })
        });
        if hits || plain[k] {
            *mi = true;
            for (per, xs) in recovered.iter_mut().zip(&chosen) {
                if let Some(q) = xs.iter().find(|q| q.shape == per[k].shape) {
                    per[k] = q.clone();
                }
            }
        }
    }
    Ok((recovered, model_input, fixed, chosen, inferences))
}

/// Regresses every layer's filters from the recovered activations (public data and the
/// attack's own estimates only). Returns per layer (candidates, targets, features, R²s,
/// why skipped).
#[allow(clippy::type_complexity)]
pub fn regress(
    public: &PublicPackage,
    recovered: &[Vec<Tensor>],
    cfg: &AveragingConfig,
) -> Result<Vec<(Mat, Vec<usize>, usize, Vec<f64>, Option<String>)>> {
    let l = public.layers.len();
    let is_mm = |k: usize| matches!(public.layers[k].kind, LinearKind::MatMul);
    // Public-output estimates ŷ′_k per input.
    let mut yhat: Vec<Vec<Tensor>> = Vec::new(); // [input][layer]
    for per in recovered {
        let mut v = Vec::with_capacity(l);
        for (k, x) in per.iter().enumerate() {
            let pl = &public.layers[k];
            let mut out = shadownet_cpu::eval("avg", &pl.kind.op(), &[x, &pl.weight])
                .with_context(|| format!("layer {k}: computing the public output"))?;
            v.push(out.remove(0));
        }
        yhat.push(v);
    }
    let in_sp: Vec<Vec<usize>> = (0..l)
        .map(|k| spatial(&recovered[0][k].shape, is_mm(k)))
        .collect();
    let out_sp: Vec<Vec<usize>> = (0..l)
        .map(|k| spatial(&yhat[0][k].shape, is_mm(k)))
        .collect();
    let mut rng = Rng::new(cfg.seed ^ 0x5a3);
    let mut out = Vec::with_capacity(l);
    for k in 0..l {
        let pl = &public.layers[k];
        let (pb, _) = bank::public_bank(pl);
        let m = pb.rows;
        let mm = is_mm(k);
        if m > cfg.max_features {
            out.push((
                Mat::zeros(0, pb.cols),
                Vec::new(),
                m,
                Vec::new(),
                Some(format!(
                    "{m} public channels > --max-features {}",
                    cfg.max_features
                )),
            ));
            continue;
        }
        let targets: Vec<usize> = (k + 1..l)
            .filter(|&j| in_sp[j] == out_sp[k] && is_mm(j) == mm)
            .take(2)
            .collect();
        if targets.is_empty() {
            out.push((
                Mat::zeros(0, pb.cols),
                Vec::new(),
                m,
                Vec::new(),
                Some("no later layer reads an activation of this layer's output size".into()),
            ));
            continue;
        }
        // Extra features: recovered inputs of layers ≤ k and public outputs of other
        // layers near k, of the same size as the output (residual branches).
        // Only layers up to k: a later layer's output is computed from the target itself.
        // At most 4·M features in all.
        let chans = |t: &Tensor| {
            if mm || t.shape.len() != 4 {
                *t.shape.last().unwrap_or(&1)
            } else {
                t.shape[1]
            }
        };
        let mut budget = 3 * m;
        let mut extra_in: Vec<usize> = Vec::new();
        for i in (0..=k).rev().filter(|&i| in_sp[i] == out_sp[k]).take(2) {
            let c = chans(&recovered[0][i]);
            if c <= budget {
                budget -= c;
                extra_in.push(i);
            }
        }
        extra_in.sort();
        let mut extra_out: Vec<usize> = Vec::new();
        let near = k.saturating_sub(3)..k;
        for i in near
            .rev()
            .filter(|&i| out_sp[i] == out_sp[k] && is_mm(i) == mm)
            .take(2)
        {
            let c = chans(&yhat[0][i]);
            if c <= budget {
                budget -= c;
                extra_out.push(i);
            }
        }
        let feats: Vec<Mat> = recovered
            .iter()
            .zip(&yhat)
            .map(|(per, ys)| {
                let mut parts = vec![samples_by_channel(&ys[k], mm)];
                parts.extend(extra_in.iter().map(|&i| samples_by_channel(&per[i], mm)));
                parts.extend(extra_out.iter().map(|&i| samples_by_channel(&ys[i], mm)));
                let refs: Vec<&Mat> = parts.iter().collect();
                hstack(&refs)
            })
            .collect();
        let x = vstack(&feats);
        let p = x.cols;
        if x.rows < p + 2 {
            out.push((
                Mat::zeros(0, pb.cols),
                targets,
                p,
                Vec::new(),
                Some(format!(
                    "{} samples for {p} features: more chosen inputs (--inputs) needed",
                    x.rows
                )),
            ));
            continue;
        }
        // Samples: at most 8 per feature (the fit's cost is samples × p² per target).
        let cap = (8 * p).max(2000);
        let keep: Vec<usize> = if x.rows > cap {
            let mut idx = rng.permutation(x.rows);
            idx.truncate(cap);
            idx.sort();
            idx
        } else {
            (0..x.rows).collect()
        };
        let x = x.select_rows(&keep);
        let mut cands = Mat::zeros(0, pb.cols);
        let mut r2s = Vec::new();
        for &j in &targets {
            let y = vstack(
                &recovered
                    .iter()
                    .map(|per| samples_by_channel(&per[j], mm))
                    .collect::<Vec<_>>(),
            )
            .select_rows(&keep);
            for region in [Region::Positive { frac: 0.05 }, Region::All] {
                let r = regress_filters(&pb, &x, &y, region, cfg.lambda);
                r2s.extend(r.r2.iter().copied());
                cands.append_rows(&r.filters);
            }
        }
        out.push((cands, targets, p, r2s, None));
    }
    Ok(out)
}

/// Runs the attack through `oracle` and scores it against `g`.
pub fn run(
    public: &PublicPackage,
    oracle: &mut dyn Oracle,
    g: &Graph,
    nodes: &[usize],
    cfg: &AveragingConfig,
) -> Result<AveragingReport> {
    if !(1..=4096).contains(&cfg.runs) {
        bail!("--runs must be between 1 and 4096, got {}", cfg.runs);
    }
    let t0 = Instant::now();
    let (recovered, model_input, fixed, chosen, inferences) = recover(public, oracle, cfg)?;
    let regressed = regress(public, &recovered, cfg)?;
    // Scoring: the plain model's real input of every outsourced node on the same inputs.
    let want: Vec<usize> = nodes.iter().map(|&n| g.nodes[n].inputs[0]).collect();
    let mut real_acts: Vec<Vec<Tensor>> = Vec::new();
    for xs in &chosen {
        let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for (&i, t) in g.inputs.iter().zip(xs) {
            vals[i] = Some(t.clone());
        }
        shadownet_cpu::run_graph_observed(g, xs, |k, outs| {
            for (&o, t) in g.nodes[k].outputs.iter().zip(outs) {
                if want.contains(&o) {
                    vals[o] = Some((*t).clone());
                }
            }
        })
        .context("running the reference model")?;
        real_acts.push(
            want.iter()
                .enumerate()
                .map(|(k, &v)| {
                    vals[v]
                        .clone()
                        .with_context(|| format!("layer {k}: no reference activation"))
                })
                .collect::<Result<_>>()?,
        );
    }
    let mut layers = Vec::new();
    let (mut dense, mut dw) = (Totals::default(), Totals::default());
    for (k, (l, &n)) in public.layers.iter().zip(nodes).enumerate() {
        let grouped = matches!(&l.kind, LinearKind::Conv(c) if c.groups > 1);
        let mut cs = Vec::new();
        for (per, real) in recovered.iter().zip(&real_acts) {
            let real = &real[k];
            let rec = match &l.kind {
                LinearKind::Conv(c) if grouped && !model_input[k] => {
                    match_groups(&per[k], real, c.groups)
                }
                _ => per[k].clone(),
            };
            if rec.data.len() != real.data.len() {
                bail!("layer {k}: recovered and real activations differ in size");
            }
            let a: Vec<f64> = rec.data.iter().map(|&v| v as f64).collect();
            let b: Vec<f64> = real.data.iter().map(|&v| v as f64).collect();
            cs.push(pearson(&a, &b));
        }
        let corr = cs.iter().sum::<f64>() / cs.len().max(1) as f64;
        let elements = real_acts.first().map_or(0, |r| r[k].data.len());
        let real = bank::real_bank(g, n, &l.kind, k)?;
        let (pb, _) = bank::public_bank(l);
        bank::check_dims(&real, &pb, k)?;
        let public_floor = score::public_floor(&real, &pb);
        let (cands, targets, features, r2s, skipped) = &regressed[k];
        let best = score::best_abs_cos(&real, cands);
        let judged = bank::judge(&best, cands.rows, pb.cols, &public_floor, &[]);
        let depthwise = protection(l, public.scheme).depthwise();
        if depthwise {
            dw.add(&judged, &public_floor);
        } else {
            dense.add(&judged, &public_floor);
        }
        let mut r2 = r2s.clone();
        r2.sort_by(|a, b| a.total_cmp(b));
        layers.push(AvgLayer {
            layer: k,
            op: op_name(&l.kind),
            depthwise,
            model_input: model_input[k],
            fixed_mask: fixed[k] && !model_input[k],
            corr,
            elements,
            targets: targets.clone(),
            features: *features,
            median_r2: r2.get(r2.len() / 2).copied().unwrap_or(0.0),
            real_filters: real.rows,
            public_floor,
            filters: judged,
            skipped: skipped.clone(),
        });
    }
    let masked: Vec<&AvgLayer> = layers.iter().filter(|l| !l.model_input).collect();
    let mut corrs: Vec<f64> = masked.iter().map(|l| l.corr).collect();
    corrs.sort_by(|a, b| a.total_cmp(b));
    let recovered_corr = masked
        .iter()
        .filter(|l| l.elements >= MIN_CORR_ELEMENTS && l.corr >= CORR_RECOVERED as f64)
        .count();
    Ok(AveragingReport {
        runs: cfg.runs,
        inputs: cfg.inputs,
        inferences,
        masked_layers: masked.len(),
        recovered_corr,
        recovered_corr_fraction: recovered_corr as f64 / masked.len().max(1) as f64,
        median_corr: corrs.get(corrs.len() / 2).copied().unwrap_or(0.0),
        layers,
        dense: dense.finish(),
        depthwise: dw.finish(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl AveragingReport {
    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\naveraging ({} runs x {} chosen inputs = {} inferences; activations recovered at corr >= 0.95, filters at |cos| >= 0.95)",
            self.runs, self.inputs, self.inferences
        );
        let _ = writeln!(
            s,
            "{:>5} {:<14} {:>7} {:>8} {:>8} {:>7} {:>9} {:>7} {:>9} {:>6}",
            "layer",
            "op",
            "input",
            "corr",
            "targets",
            "med R2",
            "recovered",
            "cos",
            "pub floor",
            "floor?"
        );
        for l in &self.layers {
            let _ = writeln!(
                s,
                "{:>5} {:<14} {:>7} {:>8.4} {:>8} {:>7.3} {:>9} {:>7.3} {:>9} {:>6}",
                l.layer,
                l.op,
                if l.model_input {
                    "model"
                } else if l.fixed_mask {
                    "fixed"
                } else {
                    "masked"
                },
                l.corr,
                l.targets
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join("+"),
                l.median_r2,
                bank::pct(l.filters.score.fraction),
                l.filters.score.mean_cos,
                bank::pct(l.public_floor.fraction),
                if l.filters.verdict.at_floor {
                    "yes"
                } else {
                    "NO"
                }
            );
        }
        let _ = writeln!(
            s,
            "masked layers: {}; activations recovered (corr >= 0.95): {} ({}); median corr {:.4}",
            self.masked_layers,
            self.recovered_corr,
            bank::pct(self.recovered_corr_fraction),
            self.median_corr
        );
        s.push_str(&bank::totals_line("dense-like layers", &self.dense));
        s.push_str(&bank::totals_line("depthwise layers", &self.depthwise));
        let _ = writeln!(s, "averaging took {:.1} s", self.seconds);
        s
    }
}
