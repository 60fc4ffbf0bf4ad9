//! The per-layer arithmetic on the trusted side: preparing the accelerator's input
//! (ShuffleChannel + AddMask) and restoring its output (LinearTransform, unmask, bias).
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{Activation, Tensor};

use crate::format::{Mask, Restore, SecretLayer};

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
    match (input_perm(&layer.restore), &layer.mask) {
        (Some(perm), mask) => shuffle_masked(perm, x, mask.as_ref()),
        (None, Some(m)) => Tensor {
            shape: x.shape.clone(),
            data: x
                .data
                .iter()
                .zip(&m.bits)
                .map(|(x, &m)| x + Mask::value(m))
                .collect(),
        },
        (None, None) => x.clone(),
    }
}

/// [`prepare_input`] for an `x` nothing else will read: masked in place when the layer
/// shuffles no channels, saving a copy of the activation.
pub fn prepare_owned_input(layer: &SecretLayer, mut x: Tensor) -> Tensor {
    if input_perm(&layer.restore).is_some() {
        return prepare_input(layer, &x);
    }
    if let Some(m) = &layer.mask {
        add_mask(&mut x.data, &m.bits);
    }
    x
}

/// Whether the layer sends its input channels in a secret order.
pub fn shuffles_input(layer: &SecretLayer) -> bool {
    input_perm(&layer.restore).is_some()
}

/// The order the layer's input channel groups are sent in, if it shuffles them.
fn input_perm(restore: &Restore) -> Option<&[u32]> {
    match restore {
        Restore::GroupShuffle { perm, .. } => Some(perm),
        Restore::Mix { in_perm, .. } if !in_perm.is_empty() => Some(in_perm),
        _ => None,
    }
}

/// Folds the bias into the fixed mask's correction (`c − b`), so restoring subtracts one
/// tensor instead of also adding a bias: one stream less through memory per layer.
pub fn fold_bias(layer: &mut SecretLayer, axis: usize) {
    let (Some(c), Some(b)) = (layer.mask_correction.as_mut(), layer.bias.as_ref()) else {
        return;
    };
    let (outer, n, inner) = around(&c.shape, axis);
    if b.len() != n {
        return;
    }
    for o in 0..outer {
        for (i, &b) in b.iter().enumerate() {
            for v in &mut c.data[(o * n + i) * inner..][..inner] {
                *v -= b;
            }
        }
    }
    layer.bias = None;
}

pub fn add_assign(t: &mut Tensor, m: &Tensor) {
    for (v, m) in t.data.iter_mut().zip(&m.data) {
        *v += m;
    }
}

fn add_mask(t: &mut [f32], m: &[u16]) {
    for (v, &m) in t.iter_mut().zip(m) {
        *v += Mask::value(m);
    }
}

pub fn sub_assign(t: &mut Tensor, c: &Tensor) {
    for (d, c) in t.data.iter_mut().zip(&c.data) {
        *d -= c;
    }
}

/// The channel shuffle (ShuffleChannel) part of preparing an input.
pub fn shuffle_input(restore: &Restore, x: &Tensor) -> Tensor {
    match input_perm(restore) {
        Some(perm) => shuffle_masked(perm, x, None),
        None => x.clone(),
    }
}

/// Channel groups of `x` in the order `perm`, plus `mask` (already in that order), in one
/// pass.
fn shuffle_masked(perm: &[u32], x: &Tensor, mask: Option<&Mask>) -> Tensor {
    let (outer, c, inner) = around(&x.shape, 1);
    let block = c / perm.len() * inner;
    let mut data = Vec::with_capacity(x.len());
    for o in 0..outer {
        let base = o * c * inner;
        for &p in perm {
            let src = &x.data[base + p as usize * block..][..block];
            match mask {
                Some(m) => {
                    let at = data.len();
                    data.extend(
                        src.iter()
                            .zip(&m.bits[at..at + block])
                            .map(|(x, &m)| x + Mask::value(m)),
                    );
                }
                None => data.extend_from_slice(src),
            }
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

/// True when no value is NaN or infinite. `x · 0` is 0 for finite x and NaN otherwise;
/// summing it lane-wise keeps the loop branch-free, so it runs at memory speed.
pub fn all_finite(v: &[f32]) -> bool {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let mut chunks = v.chunks_exact(L);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x * 0.0;
        }
    }
    chunks.remainder().iter().all(|x| x.is_finite()) && acc.iter().all(|&a| a == 0.0)
}

/// Everything the trusted core does to a layer's result, in one pass per output channel
/// while it is in cache: undo fakes, mixing, scales and shuffles, subtract `offset` (the
/// mask's correction, a tensor of the real output's size), add `bias`, and apply `act`
/// (the activation that follows the layer, fused as the paper's TeeShadow ops do).
///
/// With `next`, the layer this output alone feeds, the result goes straight on as that
/// layer's input: in its channel order, its fixed mask added.
///
/// A public channel holding a NaN or an infinity is refused with its index: `y` comes
/// from the untrusted accelerator. Separate passes for each step made the trusted core's
/// share of MobileNet-v1 as long as the whole plain inference; it is memory-bound.
#[allow(clippy::too_many_arguments)]
pub fn restore_fused(
    restore: &Restore,
    y: &Tensor,
    real_shape: &[usize],
    axis: usize,
    offset: Option<&Tensor>,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    next: Option<&SecretLayer>,
) -> Result<Tensor, usize> {
    let (outer, m, inner) = around(&y.shape, axis);
    let (_, n, _) = around(real_shape, axis);
    // Filled channel by channel with `extend`, not zeroed first: zeroing a reused
    // allocation is one more pass over memory.
    let mut out = Vec::with_capacity(outer * n * inner);
    let channel = |o: usize, p: usize| &y.data[(o * m + p) * inner..][..inner];
    // Channels no restoration reads (fakes without a partner) are checked on their own.
    let mut read = vec![false; m];
    // GroupShuffle: real group perm[q] sits at public group q.
    let mut group_at = Vec::new();
    if let Restore::GroupShuffle { perm, .. } = restore {
        group_at = vec![0usize; perm.len()];
        for (q, &p) in perm.iter().enumerate() {
            group_at[p as usize] = q;
        }
    }
    let (next_perm, next_mask) = match next {
        Some(l) => (input_perm(&l.restore), l.mask.as_ref()),
        None => (None, None),
    };
    let next_group = next_perm.map_or(1, |p| n / p.len().max(1)).max(1);
    for o in 0..outer {
        // Channels come out in the order the next layer is sent them: position j holds
        // real channel i.
        for j in 0..n {
            let i = match next_perm {
                Some(p) => p[j / next_group] as usize * next_group + j % next_group,
                None => j,
            };
            let at = (o * n + j) * inner;
            let real_at = (o * n + i) * inner;
            match restore {
                Restore::FakePairs {
                    real_pos,
                    fake_pos,
                    scale,
                    fake_scale,
                } => {
                    let (rp, fp) = (real_pos[i] as usize, fake_pos[i] as usize);
                    read[rp] = true;
                    read[fp] = true;
                    let (r, f) = (channel(o, rp), channel(o, fp));
                    let (s, fs) = (scale[i], fake_scale[i]);
                    out.extend(r.iter().zip(f).map(|(&r, &f)| s * r + fs * f));
                }
                Restore::GroupShuffle { groups, scale, .. } => {
                    let og = n / groups;
                    let p = group_at[i / og] * og + i % og;
                    read[p] = true;
                    let s = scale[i];
                    out.extend(channel(o, p).iter().map(|&v| s * v));
                }
                Restore::Mix { taps, .. } => {
                    out.resize(at + inner, 0.0);
                    let d = &mut out[at..];
                    for &(p, c) in &taps[i] {
                        read[p as usize] = true;
                        for (d, &v) in d.iter_mut().zip(channel(o, p as usize)) {
                            *d += c * v;
                        }
                    }
                }
            }
            let d = &mut out[at..at + inner];
            if !all_finite(d) {
                return Err(first_bad_channel(y, axis));
            }
            if let Some(c) = offset {
                for (d, &c) in d.iter_mut().zip(&c.data[real_at..real_at + inner]) {
                    *d -= c;
                }
            }
            if let Some(&b) = bias.and_then(|b| b.get(i)) {
                for d in d.iter_mut() {
                    *d += b;
                }
            }
            // Short channels (a dense layer's features) get the activation in one go below.
            if inner >= 64 {
                if let Some(a) = act {
                    shadownet_kernels::elementwise::activation_inplace(a, d);
                }
                if let Some(m) = next_mask {
                    add_mask(d, &m.bits[at..at + inner]);
                }
            }
        }
    }
    for (p, _) in read.iter().enumerate().filter(|(_, r)| !**r) {
        if (0..outer).any(|o| !all_finite(channel(o, p))) {
            return Err(p);
        }
    }
    if inner < 64 {
        if let Some(a) = act {
            shadownet_kernels::elementwise::activation_inplace(a, &mut out);
        }
        if let Some(m) = next_mask {
            add_mask(&mut out, &m.bits);
        }
    }
    Ok(Tensor {
        shape: real_shape.to_vec(),
        data: out,
    })
}

/// The first public channel of `y` along `axis` with a non-finite value (0 if none).
pub fn first_bad_channel(y: &Tensor, axis: usize) -> usize {
    let (_, m, inner) = around(&y.shape, axis);
    y.data
        .iter()
        .position(|v| !v.is_finite())
        .map_or(0, |i| i / inner.max(1) % m.max(1))
}

/// The linear part of restoration: undoes fakes, mixing, scales and shuffles, but not the
/// mask or the bias. A non-finite value in `y` makes the whole result NaN (callers that
/// must refuse such results use [`restore_fused`], which names the channel).
pub fn unmix(restore: &Restore, y: &Tensor, real_shape: &[usize], axis: usize) -> Tensor {
    restore_fused(restore, y, real_shape, axis, None, None, None, None).unwrap_or_else(|_| Tensor {
        shape: real_shape.to_vec(),
        data: vec![f32::NAN; real_shape.iter().product()],
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn tensor(shape: &[usize], seed: u32) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: values(shape.iter().product(), seed),
        }
    }

    fn layer(restore: Restore, real: &[usize], public: &[usize], masked: bool) -> SecretLayer {
        SecretLayer {
            node: 0,
            public_output: public.to_vec(),
            restore,
            bias: Some(values(real[1], 9)),
            mask: masked.then(|| Mask::from_f32(&tensor(real, 11))),
            mask_correction: masked.then(|| tensor(real, 12)),
            mask_rms: Vec::new(),
        }
    }

    /// The step-by-step path the fused one replaces.
    /// Restoration written out value by value from the definitions in docs/schemes.md.
    fn reference(l: &SecretLayer, y: &Tensor, real: &[usize], act: Activation) -> Tensor {
        let (n, hw) = (real[1], real[2] * real[3]);
        let pubc = |p: usize, q: usize| y.data[p * hw + q];
        let mut data = vec![0f32; n * hw];
        for i in 0..n {
            for q in 0..hw {
                let v = match &l.restore {
                    Restore::FakePairs {
                        real_pos,
                        fake_pos,
                        scale,
                        fake_scale,
                    } => {
                        scale[i] * pubc(real_pos[i] as usize, q)
                            + fake_scale[i] * pubc(fake_pos[i] as usize, q)
                    }
                    Restore::GroupShuffle {
                        groups,
                        perm,
                        scale,
                    } => {
                        let og = n / groups;
                        let q_group = perm.iter().position(|&g| g as usize == i / og).unwrap();
                        scale[i] * pubc(q_group * og + i % og, q)
                    }
                    Restore::Mix { taps, .. } => {
                        taps[i].iter().map(|&(p, c)| c * pubc(p as usize, q)).sum()
                    }
                };
                let c = l
                    .mask_correction
                    .as_ref()
                    .map_or(0.0, |c| c.data[i * hw + q]);
                let b = l.bias.as_ref().map_or(0.0, |b| b[i]);
                data[i * hw + q] = shadownet_kernels::elementwise::apply(act, v - c + b);
            }
        }
        Tensor {
            shape: real.to_vec(),
            data,
        }
    }

    fn fake_pairs(n: usize, m: usize) -> Restore {
        // Public channel m-1 is a fake no real channel is paired with.
        Restore::FakePairs {
            real_pos: (0..n as u32).rev().collect(),
            fake_pos: (0..n).map(|i| (n + i % (m - n - 1)) as u32).collect(),
            scale: values(n, 3),
            fake_scale: values(n, 4),
        }
    }

    #[test]
    fn fused_restore_matches_the_definition() {
        let (n, m, hw) = (6, 9, [5, 20]);
        let real = [1, n, hw[0], hw[1]];
        let public = [1, m, hw[0], hw[1]];
        let y = tensor(&public, 1);
        let act = Activation::Clip { min: 0.0, max: 0.5 };
        let shuffle = Restore::GroupShuffle {
            groups: 3,
            perm: vec![2, 0, 1],
            scale: values(n, 5),
        };
        let mix = Restore::Mix {
            taps: (0..n)
                .map(|i| vec![(i as u32, 0.5), ((i + 3) as u32 % m as u32, -0.25)])
                .collect(),
            in_perm: Vec::new(),
        };
        for (restore, public) in [(fake_pairs(n, m), public), (shuffle, real), (mix, public)] {
            let y = if public == real {
                tensor(&real, 2)
            } else {
                y.clone()
            };
            for masked in [false, true] {
                let l = layer(restore.clone(), &real, &public, masked);
                let want = reference(&l, &y, &real, act);
                let mut folded = l.clone();
                fold_bias(&mut folded, 1);
                let fused = |next| {
                    restore_fused(
                        &folded.restore,
                        &y,
                        &real,
                        1,
                        folded.mask_correction.as_ref(),
                        folded.bias.as_deref(),
                        Some(act),
                        next,
                    )
                    .unwrap()
                };
                let got = fused(None);
                assert_eq!(got.shape, want.shape);
                for (a, b) in got.data.iter().zip(&want.data) {
                    assert!((a - b).abs() < 1e-5, "{restore:?}: {a} vs {b}");
                }
                // Straight on into a layer that shuffles and masks its input.
                let next = layer(
                    Restore::GroupShuffle {
                        groups: 2,
                        perm: vec![1, 0],
                        scale: values(n, 6),
                    },
                    &real,
                    &real,
                    true,
                );
                let want_next = prepare_input(&next, &want);
                let got_next = fused(Some(&next));
                for (a, b) in got_next.data.iter().zip(&want_next.data) {
                    assert!((a - b).abs() < 1e-5, "{restore:?} forward: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn a_non_finite_value_is_refused_even_in_an_unread_channel() {
        let (n, m) = (4, 7);
        let real = [1, n, 3, 30];
        let public = [1, m, 3, 30];
        let l = layer(fake_pairs(n, m), &real, &public, false);
        for (channel, bad) in [(0, f32::NAN), (m - 1, f32::INFINITY), (n, f32::NAN)] {
            let mut y = tensor(&public, 1);
            y.data[channel * 90 + 17] = bad;
            let e = restore_fused(&l.restore, &y, &real, 1, None, None, None, None);
            assert_eq!(e.err(), Some(channel), "{bad} in channel {channel}");
        }
        assert!(all_finite(&values(1000, 2)));
    }
}
