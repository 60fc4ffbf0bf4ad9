//! The per-layer arithmetic on the trusted side: preparing the accelerator's input
//! (ShuffleChannel + AddMask) and restoring its output (LinearTransform, unmask, bias).
use alloc::vec;

use shadownet_ir::Tensor;

use crate::format::{Restore, SecretLayer};

/// Splits `shape` around `axis` into (outer, channels, inner).
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// The tensor sent to the accelerator for this layer's real input `x` with its fixed mask.
pub fn prepare_input(layer: &SecretLayer, x: &Tensor) -> Tensor {
    let mut t = shuffle_input(&layer.restore, x);
    if let Some(m) = &layer.mask {
        add_assign(&mut t, m);
    }
    t
}

pub fn add_assign(t: &mut Tensor, m: &Tensor) {
    for (v, m) in t.data.iter_mut().zip(&m.data) {
        *v += m;
    }
}

pub fn sub_assign(t: &mut Tensor, c: &Tensor) {
    for (d, c) in t.data.iter_mut().zip(&c.data) {
        *d -= c;
    }
}

/// The channel shuffle (ShuffleChannel) part of preparing an input.
pub fn shuffle_input(restore: &Restore, x: &Tensor) -> Tensor {
    let perm = match restore {
        Restore::GroupShuffle { perm, .. } => perm,
        Restore::Mix { in_perm, .. } if !in_perm.is_empty() => in_perm,
        _ => return x.clone(),
    };
    let (outer, c, inner) = around(&x.shape, 1);
    let block = c / perm.len() * inner;
    let mut data = vec![0f32; x.len()];
    for o in 0..outer {
        let base = o * c * inner;
        for (q, &p) in perm.iter().enumerate() {
            let src = base + p as usize * block;
            data[base + q * block..base + (q + 1) * block]
                .copy_from_slice(&x.data[src..src + block]);
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

/// The real output of the layer from the accelerator's output `y` (already checked to
/// have `layer.public_output` as its shape and finite values), with the fixed mask's
/// correction.
pub fn restore_output(
    layer: &SecretLayer,
    y: &Tensor,
    real_shape: &[usize],
    axis: usize,
) -> Tensor {
    let mut out = unmix(&layer.restore, y, real_shape, axis);
    if let Some(c) = &layer.mask_correction {
        sub_assign(&mut out, c);
    }
    add_bias(layer, &mut out, axis);
    out
}

pub fn add_bias(layer: &SecretLayer, out: &mut Tensor, axis: usize) {
    let (outer, n, inner) = around(&out.shape, axis);
    if let Some(b) = &layer.bias {
        for o in 0..outer {
            for (i, &b) in b.iter().enumerate().take(n) {
                for d in &mut out.data[(o * n + i) * inner..][..inner] {
                    *d += b;
                }
            }
        }
    }
}

/// The linear part of restoration: undoes fakes, mixing, scales and shuffles, but not the
/// mask or the bias.
pub fn unmix(restore: &Restore, y: &Tensor, real_shape: &[usize], axis: usize) -> Tensor {
    let (outer, m, inner) = around(&y.shape, axis);
    let (_, n, _) = around(real_shape, axis);
    let mut out = vec![0f32; outer * n * inner];
    match restore {
        Restore::FakePairs {
            real_pos,
            fake_pos,
            scale,
            fake_scale,
        } => {
            for o in 0..outer {
                for i in 0..n {
                    let r = &y.data[(o * m + real_pos[i] as usize) * inner..][..inner];
                    let f = &y.data[(o * m + fake_pos[i] as usize) * inner..][..inner];
                    let d = &mut out[(o * n + i) * inner..][..inner];
                    let (s, fs) = (scale[i], fake_scale[i]);
                    for ((d, &r), &f) in d.iter_mut().zip(r).zip(f) {
                        *d = s * r + fs * f;
                    }
                }
            }
        }
        Restore::GroupShuffle {
            groups,
            perm,
            scale,
        } => {
            let og = n / groups;
            for o in 0..outer {
                for (q, &p) in perm.iter().enumerate() {
                    for r in 0..og {
                        let real = p as usize * og + r;
                        let src = &y.data[(o * m + q * og + r) * inner..][..inner];
                        let d = &mut out[(o * n + real) * inner..][..inner];
                        let s = scale[real];
                        for (d, &v) in d.iter_mut().zip(src) {
                            *d = s * v;
                        }
                    }
                }
            }
        }
        Restore::Mix { taps, .. } => {
            for o in 0..outer {
                for (i, t) in taps.iter().enumerate() {
                    let d = &mut out[(o * n + i) * inner..][..inner];
                    for &(p, c) in t {
                        let src = &y.data[(o * m + p as usize) * inner..][..inner];
                        for (d, &v) in d.iter_mut().zip(src) {
                            *d += c * v;
                        }
                    }
                }
            }
        }
    }
    Tensor {
        shape: real_shape.to_vec(),
        data: out,
    }
}

/// The axis masks are drawn per channel along: 1 for images, the last axis otherwise.
pub fn mask_axis(shape: &[usize]) -> usize {
    if shape.len() == 4 {
        1
    } else {
        shape.len().saturating_sub(1)
    }
}

pub fn mask_channels(shape: &[usize]) -> usize {
    shape.get(mask_axis(shape)).copied().unwrap_or(1)
}

/// Checks that a layer's restoration parameters index within the shapes they will meet,
/// so a faulty (even if authentic) secret gives an error rather than a panic.
pub fn validate(layer: &SecretLayer, in_shape: &[usize], real_out: &[usize], axis: usize) -> bool {
    let p = &layer.public_output;
    if p.len() != real_out.len() || axis >= p.len() {
        return false;
    }
    let (m, n) = (p[axis], real_out[axis]);
    let same_elsewhere = p
        .iter()
        .zip(real_out)
        .enumerate()
        .all(|(d, (a, b))| d == axis || a == b);
    let perm_ok = |perm: &[u32]| {
        in_shape.len() > 1
            && !perm.is_empty()
            && in_shape[1].is_multiple_of(perm.len())
            && is_permutation(perm)
    };
    let restore_ok = match &layer.restore {
        Restore::FakePairs {
            real_pos,
            fake_pos,
            scale,
            fake_scale,
        } => {
            real_pos.len() == n
                && fake_pos.len() == n
                && scale.len() == n
                && fake_scale.len() == n
                && real_pos.iter().chain(fake_pos).all(|&i| (i as usize) < m)
        }
        Restore::GroupShuffle {
            groups,
            perm,
            scale,
        } => {
            *groups > 0
                && m == n
                && n.is_multiple_of(*groups)
                && perm.len() == *groups
                && scale.len() == n
                && perm_ok(perm)
        }
        Restore::Mix { taps, in_perm } => {
            taps.len() == n
                && taps.iter().flatten().all(|&(p, _)| (p as usize) < m)
                && (in_perm.is_empty() || perm_ok(in_perm))
        }
    };
    let numel = |s: &[usize]| s.iter().product::<usize>();
    restore_ok
        && same_elsewhere
        && layer.bias.as_ref().is_none_or(|b| b.len() == n)
        && layer.mask.as_ref().is_none_or(|t| t.shape == in_shape)
        && layer
            .mask_correction
            .as_ref()
            .is_none_or(|t| numel(&t.shape) == numel(real_out))
        && (layer.mask_rms.is_empty() || layer.mask_rms.len() == mask_channels(in_shape))
}

fn is_permutation(p: &[u32]) -> bool {
    let mut seen = vec![false; p.len()];
    p.iter().all(|&i| match seen.get_mut(i as usize) {
        Some(s) if !*s => {
            *s = true;
            true
        }
        _ => false,
    })
}
