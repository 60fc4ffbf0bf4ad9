//! The ShadowNet paper's transforms (kept for comparison; docs/schemes.md).
use shadownet_ir::Tensor;
use shadownet_trusted::format::PaperTransform;

use crate::rng::Rng;

/// RMS of the fake filters relative to the (rescaled) real ones; see [`fake_pairs`].
pub const FAKE_TO_REAL: f32 = 4.0;

/// The same for head layers, whose output reaches a model output without passing another
/// outsourced layer. Restoration noise grows with the fakes' size; in an inner layer it is
/// diluted by the sums of the layers after it, but a head's lands on the output as it is.
/// On hand_landmark_lite, fakes 4× the real filters in its four dense heads alone cost
/// 1e-4 to 2.6e-4 relative error on the world landmarks (seeds 1, 7, 11, 13, 17, 23);
/// fakes as large as the real filters bring that to 3e-5 to 7e-5.
pub const HEAD_FAKE_TO_REAL: f32 = 1.0;

/// Smallest scale drawn for a filter: tiny scales would blow up the transformed weights
/// and with them the float error of restoration.
const MIN_SCALE: f32 = 0.1;

/// The paper's fake-filter transform along `axis` of `w`: the public bank and how to
/// restore. Filter i of the bank is (W_i/α − R_j(i)) / s_i, followed by the fakes R.
///
/// α_i rescales filter i so its RMS is `1/fake_to_real` of the fakes' N(0, 1). The paper
/// draws R from N(0, 1) whatever the weights' scale; for He-scaled layers (RMS ~0.03), or
/// for the near-zero filters BN folding leaves in real models, the accelerator's f32 sums
/// then carry noise tens of times the signal, which after restoration costs well over
/// 1e-4 relative error across a deep model. Each α_i is secret and folds into the secret
/// scale s_i, so this is the paper's scheme on a rescaled layer, its weakness unchanged.
pub fn fake_pairs(
    w: &Tensor,
    axis: usize,
    ratio: f32,
    fake_to_real: f32,
    rng: &mut Rng,
) -> (Tensor, PaperTransform) {
    let outer: usize = w.shape[..axis].iter().product();
    let n = w.shape[axis];
    let inner: usize = w.shape[axis + 1..].iter().product();
    let alpha: Vec<f32> = (0..n)
        .map(|i| {
            let sq: f64 = (0..outer)
                .flat_map(|o| &w.data[(o * n + i) * inner..][..inner])
                .map(|&v| v as f64 * v as f64)
                .sum();
            let rms = (sq / (outer * inner).max(1) as f64).sqrt() as f32;
            if rms.is_normal() {
                rms * fake_to_real
            } else {
                1.0
            }
        })
        .collect();
    let m = ((ratio * n as f32).ceil() as usize).max(n + 1);
    let f = m - n;
    let fakes: Vec<Vec<f32>> = (0..f).map(|_| rng.normals(outer * inner, 1.0)).collect();
    let partner: Vec<usize> = (0..n).map(|_| rng.below(f)).collect();
    let scale: Vec<f32> = (0..n).map(|_| rng.uniform(MIN_SCALE, 1.0)).collect();
    let perm = rng.permutation(m);
    let mut data = vec![0f32; outer * m * inner];
    for o in 0..outer {
        for t in 0..m {
            let dst = &mut data[(o * m + perm[t]) * inner..][..inner];
            if t < n {
                let src = &w.data[(o * n + t) * inner..][..inner];
                let r = &fakes[partner[t]][o * inner..][..inner];
                for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                    *d = (s / alpha[t] - r) / scale[t];
                }
            } else {
                dst.copy_from_slice(&fakes[t - n][o * inner..][..inner]);
            }
        }
    }
    let mut shape = w.shape.clone();
    shape[axis] = m;
    let t = PaperTransform::FakePairs {
        real_pos: (0..n).map(|i| perm[i] as u32).collect(),
        fake_pos: (0..n).map(|i| perm[n + partner[i]] as u32).collect(),
        scale: scale.iter().zip(&alpha).map(|(s, a)| s * a).collect(),
        fake_scale: alpha,
    };
    (Tensor { shape, data }, t)
}

/// ShuffleChannel for grouped and depthwise convs: groups are permuted and every output
/// channel's filter is divided by a secret scale.
pub fn group_shuffle(w: &Tensor, groups: usize, rng: &mut Rng) -> (Tensor, PaperTransform) {
    let o = w.shape[0];
    let per: usize = w.shape[1..].iter().product();
    let og = o / groups;
    let perm = rng.permutation(groups);
    let scale: Vec<f32> = (0..o).map(|_| rng.uniform(MIN_SCALE, 1.0)).collect();
    let mut data = vec![0f32; w.len()];
    for (q, &p) in perm.iter().enumerate() {
        for r in 0..og {
            let real = p * og + r;
            let src = &w.data[real * per..(real + 1) * per];
            for (d, &s) in data[(q * og + r) * per..][..per].iter_mut().zip(src) {
                *d = s / scale[real];
            }
        }
    }
    (
        Tensor {
            shape: w.shape.clone(),
            data,
        },
        PaperTransform::GroupShuffle {
            groups,
            perm: perm.iter().map(|&p| p as u32).collect(),
            scale,
        },
    )
}

/// The axis masks are drawn per channel along: 1 for images, the last axis otherwise.
pub fn mask_axis(shape: &[usize]) -> usize {
    if shape.len() == 4 {
        1
    } else {
        shape.len().saturating_sub(1)
    }
}

/// The per-channel size of the mask that hides `t`: its RMS (means count too: a mask must
/// hide a constant offset as well), but at least half its largest magnitude, so the few
/// large values of a sparse post-ReLU channel do not stand out of a mask sized by the many
/// zeros.
pub fn channel_rms(t: &Tensor) -> Vec<f32> {
    if t.shape.is_empty() {
        return vec![t.data.first().map_or(1.0, |v| v.abs().max(1e-3))];
    }
    let axis = mask_axis(&t.shape);
    let c = t.shape[axis].max(1);
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut acc = vec![0f64; c];
    let mut peak = vec![0f32; c];
    for (i, v) in t.data.iter().enumerate() {
        let ch = (i / inner.max(1)) % c;
        acc[ch] += (*v as f64).powi(2);
        peak[ch] = peak[ch].max(v.abs());
    }
    let per = (t.len() / c).max(1) as f64;
    acc.iter()
        .zip(&peak)
        .map(|(a, &p)| ((a / per).sqrt() as f32).max(0.5 * p).max(1e-3))
        .collect()
}

/// A mask for an input of `shape` whose channels have RMS `rms`.
pub fn draw_mask(shape: &[usize], rms: &[f32], scale: f32, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let axis = mask_axis(shape);
    let c = shape.get(axis).copied().unwrap_or(1).max(1);
    let inner: usize = shape
        .get(axis + 1..)
        .map_or(1, |s| s.iter().product::<usize>().max(1));
    let mut data = rng.normals(n, 1.0);
    for (i, v) in data.iter_mut().enumerate() {
        *v *= scale * rms.get((i / inner) % c).copied().unwrap_or(1.0);
    }
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}
