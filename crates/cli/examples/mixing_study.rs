//! What a filter-mixing design needs to resist the statistical attacks, measured on
//! trained filters: the real filters of the chosen models' layers are mixed as a scheme
//! would (fakes added, every filter normalised to unit RMS, groups of h mixed by a secret
//! matrix), then attacked with FastICA, the sparsity search, PCA and the low-rank search,
//! with the group membership known to the attacker or hidden (the public bank shuffled
//! across groups, so only whole-layer attacks apply), and scored against the real filters
//! with both floors.
//!
//! Usage: cargo run --release -p shadownet --example mixing_study -- [--seed S]
//!            [--h 8,16,32,64] [--per-class K] [--json OUT.jsonl] MODEL[:NAME=1,3,H,W] ...
//!
//! Layers: per model the K largest (most filters) of each class with filter length ≥ 16:
//! 3×3 (or larger) convs, 1×1 convs that expand (more filters than inputs) and 1×1 convs
//! that contract, dense layers.
use std::io::Write as _;

use anyhow::{bail, Context, Result};
use shadownet_attacks::ica::{Contrast, Mode};
use shadownet_attacks::score::{self, iid_floor};
use shadownet_attacks::unmix::{self, Geometry, Grouping, Method, SearchBudget, UnmixOptions};
use shadownet_attacks::{Mat, Rng};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fakes {
    /// i.i.d. Gaussian fakes.
    Gaussian,
    /// Random combinations of the layer's real filters (today's hardened scheme).
    RealLike,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mixing {
    /// Dense i.i.d. Gaussian A.
    Gauss,
    /// Haar-orthogonal times a diagonal in [0.75, 1.33].
    OrthDiag,
}

struct Layer {
    model: String,
    name: String,
    class: &'static str,
    real: Mat,
    geom: Geometry,
}

fn parse_model(arg: &str) -> (String, Vec<(String, Vec<usize>)>) {
    match arg.split_once(':') {
        Some((path, shape)) => {
            let (name, dims) = shape.split_once('=').unwrap_or(("x", shape));
            let dims = dims.split(',').filter_map(|d| d.parse().ok()).collect();
            (path.to_string(), vec![(name.to_string(), dims)])
        }
        None => (arg.to_string(), Vec::new()),
    }
}

fn layers_of(path: &str, shapes: &[(String, Vec<usize>)], per_class: usize) -> Result<Vec<Layer>> {
    let g = shadownet_import::load_model(std::path::Path::new(path), shapes)
        .with_context(|| format!("cannot load {path}"))?
        .graph;
    let model = std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut all = Vec::new();
    for n in &g.nodes {
        let Some(kind) = shadownet_protect::outsourced_kind(&g, n) else {
            continue;
        };
        if matches!(&kind, shadownet_trusted::LinearKind::Conv(c) if c.groups > 1) {
            continue;
        }
        let Some(w) = g.constant(n.inputs[1]) else {
            continue;
        };
        let real = shadownet::attack::bank::bank(w, &kind);
        let geom = shadownet::attack::bank::geometry(w, &kind);
        if real.cols < 16 || real.rows < 8 {
            continue;
        }
        let class = match (&kind, geom.taps) {
            (shadownet_trusted::LinearKind::MatMul, _) => "dense",
            (_, t) if t > 1 => "3x3",
            _ if real.rows > real.cols => "1x1 expand",
            _ => "1x1 contract",
        };
        all.push(Layer {
            model: model.clone(),
            name: short_name(&n.name),
            class,
            real,
            geom,
        });
    }
    // The largest first; then up to `per_class` of each class.
    all.sort_by_key(|l| std::cmp::Reverse(l.real.rows * l.real.cols));
    let mut out = Vec::new();
    for class in ["3x3", "1x1 expand", "1x1 contract", "dense"] {
        let mut taken = 0;
        all.retain(|l| {
            if l.class == class && taken < per_class {
                taken += 1;
                out.push(Layer {
                    model: l.model.clone(),
                    name: l.name.clone(),
                    class: l.class,
                    real: l.real.clone(),
                    geom: l.geom,
                });
                false
            } else {
                true
            }
        });
    }
    Ok(out)
}

/// A readable layer name: TFLite names join every fused op with ';' — keep the conv's.
fn short_name(name: &str) -> String {
    let part = name
        .split(';')
        .find(|p| p.to_ascii_lowercase().contains("conv"))
        .unwrap_or_else(|| name.split(';').next_back().unwrap_or(name));
    let comps: Vec<&str> = part.split('/').filter(|c| !c.is_empty()).collect();
    let keep = comps.len().saturating_sub(2);
    comps[keep..].join("/")
}

/// Unit-RMS rows.
fn unit_rms(m: &Mat) -> Mat {
    let mut n = m.normalized_rows();
    n.scale((m.cols as f64).sqrt());
    n
}

/// The public bank of a design, and the number of real filters.
fn publish(real: &Mat, fakes: Fakes, mixing: Mixing, h: usize, hidden: bool, rng: &mut Rng) -> Mat {
    let (n, d) = (real.rows, real.cols);
    let m = ((1.2 * n as f64).ceil() as usize).max(n + 1);
    let mut bank = unit_rms(real);
    let extra = match fakes {
        Fakes::Gaussian => rng.gaussian(m - n, d),
        Fakes::RealLike => {
            let mut g = rng.gaussian(m - n, n);
            g.scale(1.0 / (n as f64).sqrt());
            g.matmul(real)
        }
    };
    bank.append_rows(&unit_rms(&extra));
    let slot = rng.permutation(m);
    let bank = bank.select_rows(&slot);
    let mut public = Mat::zeros(0, d);
    for (s, len) in unmix::near_equal_groups(m, h) {
        let a = match mixing {
            Mixing::Gauss => {
                let mut a = rng.gaussian(len, len);
                a.scale(1.0 / (len as f64).sqrt());
                a
            }
            Mixing::OrthDiag => {
                let q = rng.orthogonal(len);
                let dg: Vec<f64> = (0..len).map(|_| rng.uniform(0.75, 1.33)).collect();
                Mat::from_fn(len, len, |r, c| q[(r, c)] * dg[c])
            }
        };
        public.append_rows(&a.matmul(&bank.row_range(s, len)));
    }
    if hidden {
        let p = rng.permutation(m);
        public = public.select_rows(&p);
    }
    public
}

struct Row {
    layer: String,
    class: &'static str,
    n: usize,
    d: usize,
    fakes: Fakes,
    mixing: Mixing,
    h: usize,
    hidden: bool,
    recovered: f64,
    exact: f64,
    mean_cos: f64,
    best: String,
    best_fraction: f64,
    candidates: usize,
    public_floor: f64,
    random_floor: f64,
    at_floor: bool,
    skipped: Option<String>,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut seed = 1u64;
    let mut hs = vec![8usize, 16, 32, 64];
    let mut per_class = 1usize;
    let mut json: Option<std::path::PathBuf> = None;
    let mut models = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => seed = args.next().context("--seed N")?.parse()?,
            "--h" => {
                hs = args
                    .next()
                    .context("--h LIST")?
                    .split(',')
                    .map(|v| v.parse())
                    .collect::<Result<_, _>>()?
            }
            "--per-class" => per_class = args.next().context("--per-class K")?.parse()?,
            "--json" => json = Some(args.next().context("--json FILE")?.into()),
            _ => models.push(a),
        }
    }
    if models.is_empty() {
        bail!("usage: mixing_study [--seed S] [--h 8,16,32,64] [--per-class K] [--json OUT] MODEL[:NAME=dims] ...");
    }
    let mut layers = Vec::new();
    for m in &models {
        let (path, shapes) = parse_model(m);
        layers.extend(layers_of(&path, &shapes, per_class)?);
    }
    let designs = [
        (Fakes::Gaussian, Mixing::Gauss),
        (Fakes::RealLike, Mixing::Gauss),
        (Fakes::RealLike, Mixing::OrthDiag),
    ];
    let budget = SearchBudget::default();
    let mut rows = Vec::new();
    let mut out = match &json {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };
    for l in &layers {
        eprintln!(
            "study: {}/{} ({}, {} filters of {})",
            l.model, l.name, l.class, l.real.rows, l.real.cols
        );
        for &(fakes, mixing) in &designs {
            for &h in &hs {
                for hidden in [false, true] {
                    let mut rng = Rng::new(seed ^ (h as u64) << 8 ^ u64::from(hidden) << 4);
                    let public = publish(&l.real, fakes, mixing, h, hidden, &mut rng);
                    let m = public.rows;
                    let groupings = if hidden {
                        vec![Grouping::whole(m)]
                    } else {
                        vec![Grouping::near_equal(m, h)]
                    };
                    let mut methods = vec![
                        Method::Pca,
                        Method::Ica(Contrast::LogCosh, Mode::Symmetric),
                        Method::Ica(Contrast::Kurtosis, Mode::Deflation),
                        Method::Sparse,
                    ];
                    if l.geom.taps > 1 {
                        methods.push(Method::LowRank);
                    }
                    let opts = UnmixOptions {
                        groupings,
                        methods,
                        pairs: false,
                        budget: budget.clone(),
                        seed,
                    };
                    let sets = unmix::unmix_layer(&public, l.geom, None, &opts);
                    let mut union = vec![0.0f64; l.real.rows];
                    let mut k = 0;
                    let mut best = (String::from("-"), 0.0f64);
                    let mut skipped = None;
                    for s in &sets {
                        if let Some(why) = &s.skipped {
                            skipped = Some(why.clone());
                            continue;
                        }
                        let b = score::best_abs_cos(&l.real, &s.candidates);
                        let sc = score::Score::from_best(&b, s.candidates.rows);
                        if sc.fraction > best.1 || best.0 == "-" {
                            best = (s.method.clone(), sc.fraction);
                        }
                        for (u, v) in union.iter_mut().zip(&b) {
                            *u = u.max(*v);
                        }
                        k += s.candidates.rows;
                    }
                    let sc = score::Score::from_best(&union, k);
                    let pf = score::public_floor(&l.real, &public);
                    let v = score::judge(&sc, l.real.cols, &pf, &[]);
                    let row = Row {
                        layer: format!("{}/{}", l.model, l.name),
                        class: l.class,
                        n: l.real.rows,
                        d: l.real.cols,
                        fakes,
                        mixing,
                        h,
                        hidden,
                        recovered: sc.fraction,
                        exact: sc.exact as f64 / sc.filters.max(1) as f64,
                        mean_cos: sc.mean_cos,
                        best: best.0,
                        best_fraction: best.1,
                        candidates: k,
                        public_floor: pf.fraction,
                        random_floor: iid_floor(l.real.rows, l.real.cols, k).fraction,
                        at_floor: v.at_floor,
                        skipped: if k == 0 { skipped } else { None },
                    };
                    if let Some(f) = out.as_mut() {
                        writeln!(
                            f,
                            "{{\"layer\":{:?},\"class\":{:?},\"n\":{},\"d\":{},\"fakes\":\"{:?}\",\"mixing\":\"{:?}\",\"h\":{},\"hidden\":{},\"recovered\":{},\"exact\":{},\"mean_cos\":{},\"best\":{:?},\"candidates\":{},\"public_floor\":{},\"random_floor\":{},\"at_floor\":{},\"skipped\":{:?}}}",
                            row.layer, row.class, row.n, row.d, row.fakes, row.mixing, row.h, row.hidden,
                            row.recovered, row.exact, row.mean_cos, row.best, row.candidates,
                            row.public_floor, row.random_floor, row.at_floor, row.skipped
                        )?;
                    }
                    rows.push(row);
                }
            }
        }
    }
    // Summary: per class, design and membership, recovered % by h (filter-weighted over
    // layers), then every row.
    println!("mixing study, seed {seed}: recovered % of real filters at |cos| >= 0.95 (union of PCA, FastICA logcosh/kurtosis, sparsest-in-span, low-rank), filter-weighted over layers; public and random floors 0.0% unless noted\n");
    print!("| layers | fakes | mixing | membership |");
    for h in &hs {
        print!(" h={h} |");
    }
    println!();
    print!("|---|---|---|---|");
    for _ in &hs {
        print!("---|");
    }
    println!();
    for class in ["3x3", "1x1 expand", "1x1 contract", "dense"] {
        for &(fakes, mixing) in &designs {
            for hidden in [false, true] {
                let sel: Vec<&Row> = rows
                    .iter()
                    .filter(|r| {
                        r.class == class
                            && r.fakes == fakes
                            && r.mixing == mixing
                            && r.hidden == hidden
                    })
                    .collect();
                if sel.is_empty() {
                    continue;
                }
                let nl = sel
                    .iter()
                    .map(|r| &r.layer)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                print!(
                    "| {class} ({nl}) | {} | {} | {} |",
                    match fakes {
                        Fakes::Gaussian => "Gaussian",
                        Fakes::RealLike => "real-like",
                    },
                    match mixing {
                        Mixing::Gauss => "iid Gaussian",
                        Mixing::OrthDiag => "orth × diag",
                    },
                    if hidden { "hidden" } else { "known" }
                );
                for &h in &hs {
                    let hr: Vec<&&Row> = sel.iter().filter(|r| r.h == h).collect();
                    let done: Vec<&&&Row> = hr.iter().filter(|r| r.skipped.is_none()).collect();
                    if done.is_empty() {
                        print!(" n/a |");
                        continue;
                    }
                    let nf: usize = done.iter().map(|r| r.n).sum();
                    let rec: f64 =
                        done.iter().map(|r| r.recovered * r.n as f64).sum::<f64>() / nf as f64;
                    let floor: f64 = done
                        .iter()
                        .map(|r| r.public_floor.max(r.random_floor) * r.n as f64)
                        .sum::<f64>()
                        / nf as f64;
                    let at = done.iter().filter(|r| r.at_floor).count();
                    if floor >= 0.0005 {
                        print!(
                            " {:.1}% (floor {:.1}%, {at}/{} at floor) |",
                            100.0 * rec,
                            100.0 * floor,
                            done.len()
                        );
                    } else {
                        print!(" {:.1}% ({at}/{} at floor) |", 100.0 * rec, done.len());
                    }
                }
                println!();
            }
        }
    }
    println!("\n| layer | class | N | d | fakes | mixing | h | membership | recovered | exact | mean cos | best attack | candidates | public floor | random floor | at floor |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        if let Some(why) = &r.skipped {
            println!(
                "| {} | {} | {} | {} | {:?} | {:?} | {} | {} | n/a: {why} | | | | | | | |",
                r.layer,
                r.class,
                r.n,
                r.d,
                r.fakes,
                r.mixing,
                r.h,
                if r.hidden { "hidden" } else { "known" }
            );
            continue;
        }
        println!(
            "| {} | {} | {} | {} | {:?} | {:?} | {} | {} | {:.1}% | {:.1}% | {:.3} | {} ({:.1}%) | {} | {:.1}% | {:.1}% | {} |",
            r.layer,
            r.class,
            r.n,
            r.d,
            r.fakes,
            r.mixing,
            r.h,
            if r.hidden { "hidden" } else { "known" },
            100.0 * r.recovered,
            100.0 * r.exact,
            r.mean_cos,
            r.best,
            100.0 * r.best_fraction,
            r.candidates,
            100.0 * r.public_floor,
            100.0 * r.random_floor,
            if r.at_floor { "yes" } else { "no" }
        );
    }
    Ok(())
}
