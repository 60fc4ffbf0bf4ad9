//! `attack --kind unmix`: the static attacks of [`shadownet_attacks::unmix`] on every
//! public bank of a package (public.bin only), scored against the reference model.
use std::time::Instant;

use super::PublicPackage;
use anyhow::Result;
use serde::Serialize;
use shadownet_attacks::ica::{Contrast, Mode};
use shadownet_attacks::score::{self, Floor};
use shadownet_attacks::unmix::{self, Family, Grouping, Method, SearchBudget, UnmixOptions};
use shadownet_attacks::Mat;
use shadownet_ir::Graph;

use super::bank::{self, Judged, Totals};
use super::fake_partner::protection;
use super::op_name;

/// What to try.
#[derive(Clone, Debug)]
pub struct UnmixConfig {
    /// Candidate group sizes: for each h, the converter's near-equal groups of ≤ h and
    /// contiguous blocks of h (when they differ).
    pub group_sizes: Vec<usize>,
    /// Also over the whole layer (hidden group membership).
    pub whole_layer: bool,
    pub methods: Vec<Method>,
    /// Filters of a public pretrained model of the same family, by filter length.
    pub templates: Vec<Mat>,
    pub templates_name: Option<String>,
    /// Only these layers (all when empty).
    pub layers: Vec<usize>,
    pub seed: u64,
}

/// The default methods: every static attack except the family search driven by ICA,
/// whose hill-climb over the data costs ~h²·d per move (run it with --methods).
pub fn default_methods() -> Vec<Method> {
    vec![
        Method::Pca,
        Method::PcaFamily(Family::Dct2),
        Method::Ica(Contrast::LogCosh, Mode::Symmetric),
        Method::Ica(Contrast::Kurtosis, Mode::Deflation),
        Method::Sparse,
        Method::LowRank,
        Method::Templates,
    ]
}

/// Parses a method name as [`Method::name`] prints it.
pub fn parse_method(s: &str) -> Option<Method> {
    let all = [
        Method::Pca,
        Method::PcaFamily(Family::Dct2),
        Method::PcaFamily(Family::Hadamard),
        Method::Ica(Contrast::LogCosh, Mode::Symmetric),
        Method::Ica(Contrast::LogCosh, Mode::Deflation),
        Method::Ica(Contrast::Kurtosis, Mode::Symmetric),
        Method::Ica(Contrast::Kurtosis, Mode::Deflation),
        Method::Ica(Contrast::Gauss, Mode::Symmetric),
        Method::Ica(Contrast::Gauss, Mode::Deflation),
        Method::IcaFamily(Family::Dct2),
        Method::IcaFamily(Family::Hadamard),
        Method::Sparse,
        Method::LowRank,
        Method::Templates,
    ];
    all.into_iter().find(|m| m.name() == s)
}

#[derive(Clone, Debug, Serialize)]
pub struct SetResult {
    pub method: String,
    pub grouping: String,
    pub candidates: usize,
    #[serde(flatten)]
    pub judged: Judged,
    pub millis: f64,
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UnmixLayer {
    pub layer: usize,
    pub op: String,
    pub protection: String,
    pub depthwise: bool,
    pub real_filters: usize,
    pub public_filters: usize,
    pub dim: usize,
    pub public_floor: Floor,
    /// The template filters themselves as guesses (with --templates).
    pub template_floor: Option<Floor>,
    pub sets: Vec<SetResult>,
    /// The set with the most filters recovered (then the highest mean cos).
    pub best: String,
    /// Every set's candidates together.
    pub union: Judged,
    pub millis: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct UnmixReport {
    pub group_sizes: Vec<usize>,
    pub whole_layer: bool,
    pub methods: Vec<String>,
    pub templates: Option<String>,
    pub layers: Vec<UnmixLayer>,
    /// Union of all sets, over conv (groups = 1), transposed-conv and dense layers.
    pub dense: Totals,
    /// ... over depthwise/grouped layers.
    pub depthwise: Totals,
    pub seconds: f64,
}

/// Runs the static attacks on `public` and scores them against `g` (reference nodes
/// `nodes`, in package order).
pub fn run(
    public: &PublicPackage,
    g: &Graph,
    nodes: &[usize],
    cfg: &UnmixConfig,
) -> Result<UnmixReport> {
    let t0 = Instant::now();
    let mut layers = Vec::new();
    let (mut dense, mut dw) = (Totals::default(), Totals::default());
    for (k, (l, &n)) in public.layers.iter().zip(nodes).enumerate() {
        if !cfg.layers.is_empty() && !cfg.layers.contains(&k) {
            continue;
        }
        let tl = Instant::now();
        // The attack: public data (and the attacker's templates) only.
        let (pb, geom) = bank::public_bank(l);
        let prot = protection(l, public.scheme);
        let m = pb.rows;
        let mut groupings = Vec::new();
        for &h in &cfg.group_sizes {
            if h < 2 || h >= m {
                continue;
            }
            let ne = Grouping::near_equal(m, h);
            let bl = Grouping::blocks(m, h);
            let same = ne.groups == bl.groups;
            groupings.push(ne);
            if !same {
                groupings.push(bl);
            }
        }
        if cfg.whole_layer && m >= 2 {
            groupings.push(Grouping::whole(m));
        }
        let templates = cfg.templates.iter().find(|t| t.cols == pb.cols);
        let opts = UnmixOptions {
            groupings,
            methods: cfg.methods.clone(),
            pairs: prot.depthwise(),
            budget: SearchBudget::default(),
            seed: cfg.seed ^ (k as u64) << 20,
        };
        let mut sets = unmix::unmix_layer(&pb, geom, templates, &opts);
        // The public filters themselves are the first guess (the paper's ShuffleChannel
        // publishes depthwise filters only scaled and permuted): the public floor, as a set.
        sets.insert(
            0,
            unmix::CandidateSet {
                method: "public".into(),
                grouping: "as published".into(),
                candidates: pb.clone(),
                millis: 0.0,
                skipped: None,
            },
        );
        // Scoring: the reference's real filters.
        let real = bank::real_bank(g, n, &l.kind, k)?;
        bank::check_dims(&real, &pb, k)?;
        let public_floor = score::public_floor(&real, &pb);
        let template_floor = templates.map(|t| score::guesses_floor("templates", &real, t));
        let extra: Vec<Floor> = template_floor.iter().cloned().collect();
        let mut union_best = vec![0.0f64; real.rows];
        let mut union_count = 0;
        let mut results = Vec::new();
        for s in &sets {
            let best = score::best_abs_cos(&real, &s.candidates);
            for (u, b) in union_best.iter_mut().zip(&best) {
                *u = u.max(*b);
            }
            union_count += s.candidates.rows;
            results.push(SetResult {
                method: s.method.clone(),
                grouping: s.grouping.clone(),
                candidates: s.candidates.rows,
                judged: bank::judge(&best, s.candidates.rows, pb.cols, &public_floor, &extra),
                millis: s.millis,
                skipped: s.skipped.clone(),
            });
        }
        let best = results
            .iter()
            .max_by(|a, b| {
                (a.judged.score.recovered, a.judged.score.mean_cos)
                    .partial_cmp(&(b.judged.score.recovered, b.judged.score.mean_cos))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|r| format!("{} / {}", r.method, r.grouping))
            .unwrap_or_default();
        let union = bank::judge(&union_best, union_count, pb.cols, &public_floor, &extra);
        if prot.depthwise() {
            dw.add(&union, &public_floor);
        } else {
            dense.add(&union, &public_floor);
        }
        layers.push(UnmixLayer {
            layer: k,
            op: op_name(&l.kind),
            protection: prot.name().into(),
            depthwise: prot.depthwise(),
            real_filters: real.rows,
            public_filters: m,
            dim: pb.cols,
            public_floor,
            template_floor,
            sets: results,
            best,
            union,
            millis: tl.elapsed().as_secs_f64() * 1e3,
        });
    }
    Ok(UnmixReport {
        group_sizes: cfg.group_sizes.clone(),
        whole_layer: cfg.whole_layer,
        methods: cfg.methods.iter().map(|m| m.name()).collect(),
        templates: cfg.templates_name.clone(),
        layers,
        dense: dense.finish(),
        depthwise: dw.finish(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Every filter of every linear layer of `g` with constant weights, grouped by length:
/// the attacker's templates from a public pretrained model.
pub fn templates_from(g: &Graph) -> Vec<Mat> {
    let mut by_len: Vec<Mat> = Vec::new();
    for n in &g.nodes {
        let Some(kind) = shadownet_protect::outsourced_kind(g, n) else {
            continue;
        };
        let Some(w) = g.constant(n.inputs[1]) else {
            continue;
        };
        let b = bank::bank(w, &kind);
        match by_len.iter_mut().find(|m| m.cols == b.cols) {
            Some(m) => m.append_rows(&b),
            None => by_len.push(b),
        }
    }
    by_len
}

impl UnmixReport {
    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nunmix (group sizes {:?}{}; methods {}; recovered at |cos| >= 0.95, exact >= 0.999; floors: public filters, as many random guesses)",
            self.group_sizes,
            if self.whole_layer { " + whole layer" } else { "" },
            self.methods.join(",")
        );
        let _ = writeln!(
            s,
            "{:>5} {:<14} {:>6} {:>6} {:>5} {:>9} {:>7} {:>9} {:>9} {:>6}  best set",
            "layer",
            "op",
            "real",
            "public",
            "dim",
            "recovered",
            "cos",
            "pub floor",
            "rnd floor",
            "floor?"
        );
        for l in &self.layers {
            let u = &l.union;
            let _ = writeln!(
                s,
                "{:>5} {:<14} {:>6} {:>6} {:>5} {:>9} {:>7.3} {:>9} {:>9} {:>6}  {}",
                l.layer,
                l.op,
                l.real_filters,
                l.public_filters,
                l.dim,
                bank::pct(u.score.fraction),
                u.score.mean_cos,
                bank::pct(l.public_floor.fraction),
                bank::pct(u.random_floor.fraction),
                if u.verdict.at_floor { "yes" } else { "NO" },
                l.best
            );
        }
        s.push_str(&bank::totals_line("dense-like layers", &self.dense));
        s.push_str(&bank::totals_line("depthwise layers", &self.depthwise));
        let _ = writeln!(s, "unmix took {:.1} s", self.seconds);
        s
    }
}
