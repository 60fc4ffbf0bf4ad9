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

/// The tensor sent to the accelerator for this layer's real input `x`.
pub fn prepare_input(layer: &SecretLayer, x: &Tensor) -> Tensor {
    let mut t = match &layer.restore {
        Restore::GroupShuffle { groups, perm, .. } => {
            let (outer, c, inner) = around(&x.shape, 1);
            let block = c / groups * inner;
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
        Restore::FakePairs { .. } => x.clone(),
    };
    if let Some(m) = &layer.mask {
        for (v, m) in t.data.iter_mut().zip(&m.data) {
            *v += m;
        }
    }
    t
}

/// The real output of the layer from the accelerator's output `y` (already checked to
/// have `layer.public_output` as its shape and finite values).
pub fn restore_output(
    layer: &SecretLayer,
    y: &Tensor,
    real_shape: &[usize],
    axis: usize,
) -> Tensor {
    let (outer, m, inner) = around(&y.shape, axis);
    let (_, n, _) = around(real_shape, axis);
    let mut out = vec![0f32; outer * n * inner];
    match &layer.restore {
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
    }
    if let Some(c) = &layer.mask_correction {
        for (d, c) in out.iter_mut().zip(&c.data) {
            *d -= c;
        }
    }
    if let Some(b) = &layer.bias {
        for o in 0..outer {
            for (i, &b) in b.iter().enumerate() {
                for d in &mut out[(o * n + i) * inner..][..inner] {
                    *d += b;
                }
            }
        }
    }
    Tensor {
        shape: real_shape.to_vec(),
        data: out,
    }
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
                && in_shape.len() > 1
                && n.is_multiple_of(*groups)
                && in_shape[1].is_multiple_of(*groups)
                && perm.len() == *groups
                && scale.len() == n
                && is_permutation(perm)
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
