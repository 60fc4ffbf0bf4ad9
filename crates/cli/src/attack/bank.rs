//! Filter banks as the attacks crate takes them: a layer's filters as the rows of an f64
//! matrix, with the layout of a filter's coordinates.
use anyhow::{bail, Context, Result};
use serde::Serialize;
use shadownet_attacks::score::{self, Floor, Score, Verdict};
use shadownet_attacks::unmix::Geometry;
use shadownet_attacks::Mat;
use shadownet_ir::{Graph, Tensor};
use shadownet_trusted::LinearKind;

use super::PublicLayer;

use super::fake_partner::{filter_axis, filters};

/// The filters of `w` (a weight of `kind`) as rows.
pub fn bank(w: &Tensor, kind: &LinearKind) -> Mat {
    let (f, n, d) = filters(w, filter_axis(kind));
    Mat::from_f32(n, d, &f).unwrap_or_default()
}

/// How a filter's coordinates are laid out: input channels (per group) × kernel taps;
/// dense filters have one tap.
pub fn geometry(w: &Tensor, kind: &LinearKind) -> Geometry {
    let s = &w.shape;
    match kind {
        // [O, C/g, kh, kw]
        LinearKind::Conv(_) if s.len() == 4 => Geometry {
            channels: s[1],
            taps: s[2] * s[3],
        },
        // [C, O, kh, kw]: a filter is C × kh·kw.
        LinearKind::ConvTranspose(_) if s.len() == 4 => Geometry {
            channels: s[0],
            taps: s[2] * s[3],
        },
        _ => Geometry {
            channels: s.first().copied().unwrap_or(0),
            taps: 1,
        },
    }
}

/// The public bank of a package layer.
pub fn public_bank(l: &PublicLayer) -> (Mat, Geometry) {
    (bank(&l.weight, &l.kind), geometry(&l.weight, &l.kind))
}

/// The real filters of reference node `n` (scoring only), without the all-zero ones: a
/// dead channel (trained models have many: BatchNorm folding zeroes pruned channels) has
/// no direction to recover, and would count as a failure of every attack.
pub fn real_bank(g: &Graph, n: usize, kind: &LinearKind, k: usize) -> Result<Mat> {
    let w = g
        .constant(g.nodes[n].inputs[1])
        .with_context(|| format!("layer {k}: the reference has no constant weight"))?;
    let b = bank(w, kind);
    let live: Vec<usize> = (0..b.rows)
        .filter(|&i| b.row(i).iter().any(|&v| v != 0.0))
        .collect();
    Ok(b.select_rows(&live))
}

/// Checks that real and public filters have the same length.
pub fn check_dims(real: &Mat, public: &Mat, k: usize) -> Result<()> {
    if real.cols != public.cols {
        bail!(
            "layer {k}: reference filters have length {}, the package's {}: wrong --reference?",
            real.cols,
            public.cols
        );
    }
    Ok(())
}

/// A recovery result with its floors and verdict, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct Judged {
    pub score: Score,
    /// As many i.i.d. random guesses as candidates (exact expectation).
    pub random_floor: Floor,
    pub verdict: Verdict,
}

/// Judges candidates whose best cosines are `best` (`candidates` of them) against the
/// public floor, the random floor for that many guesses and any `extra` floors.
pub fn judge(best: &[f64], candidates: usize, d: usize, public: &Floor, extra: &[Floor]) -> Judged {
    let s = Score::from_best(best, candidates);
    let random_floor = score::iid_floor(best.len(), d, candidates);
    let verdict = score::judge(&s, d, public, extra);
    Judged {
        score: s,
        random_floor,
        verdict,
    }
}

/// Totals over layers, filter-weighted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub layers: usize,
    pub filters: usize,
    pub recovered: usize,
    pub exact: usize,
    pub fraction: f64,
    pub mean_cos: f64,
    pub public_floor_fraction: f64,
    pub public_floor_mean_cos: f64,
    pub random_floor_fraction: f64,
    pub random_floor_mean_cos: f64,
    pub layers_at_floor: usize,
}

impl Totals {
    pub fn add(&mut self, j: &Judged, public: &Floor) {
        let n = j.score.filters as f64;
        self.layers += 1;
        self.filters += j.score.filters;
        self.recovered += j.score.recovered;
        self.exact += j.score.exact;
        self.mean_cos += j.score.mean_cos * n;
        self.public_floor_fraction += public.fraction * n;
        self.public_floor_mean_cos += public.mean_cos * n;
        self.random_floor_fraction += j.random_floor.fraction * n;
        self.random_floor_mean_cos += j.random_floor.mean_cos * n;
        self.layers_at_floor += usize::from(j.verdict.at_floor);
    }

    /// Turns the sums into filter-weighted means.
    pub fn finish(mut self) -> Self {
        let n = self.filters.max(1) as f64;
        self.fraction = self.recovered as f64 / n;
        self.mean_cos /= n;
        self.public_floor_fraction /= n;
        self.public_floor_mean_cos /= n;
        self.random_floor_fraction /= n;
        self.random_floor_mean_cos /= n;
        self
    }
}

/// "12.5%" of a share.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// One line of totals.
pub fn totals_line(name: &str, t: &Totals) -> String {
    format!(
        "{name}: {} layers, {}/{} filters recovered ({}; exact {}), mean best cos {:.3}; floors: public {} / {:.3}, random {} / {:.3}; {} of {} layers at the floor\n",
        t.layers,
        t.recovered,
        t.filters,
        pct(t.fraction),
        t.exact,
        t.mean_cos,
        pct(t.public_floor_fraction),
        t.public_floor_mean_cos,
        pct(t.random_floor_fraction),
        t.random_floor_mean_cos,
        t.layers_at_floor,
        t.layers
    )
}
