//! The paper scheme's per-layer arithmetic on the trusted side: preparing the
//! accelerator's input (ShuffleChannel + AddMask with the fixed mask) and restoring its
//! output (LinearTransform or un-shuffle, minus the fixed mask's correction, plus bias,
//! plus the fused activation) in one pass.
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{Activation, Tensor};

use crate::format::PaperTransform;

/// Splits `shape` around `axis` into (outer, channels, inner).
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// A bfloat16 mask value (the upper half of an f32).
#[inline]
pub fn bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Rounds to bfloat16 (to nearest, ties to even): how the converter stores fixed masks.
pub fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The order the layer's input channel groups are sent in, if it shuffles them.
pub fn input_perm(t: &PaperTransform) -> Option<&[u32]> {
    match t {
        PaperTransform::GroupShuffle { perm, .. } => Some(perm),
        PaperTransform::FakePairs { .. } => None,
    }
}

/// The tensor sent to the accelerator for real input `x`: channel groups in the secret
/// order, plus the fixed mask (already in that order) when there is one. Takes `x` by value
/// so that an unshuffled input is masked where it lies.
pub fn prepare_input(t: &PaperTransform, mask: Option<&[u16]>, mut x: Tensor) -> Tensor {
    match input_perm(t) {
        Some(perm) => {
            let (outer, c, inner) = around(&x.shape, 1);
            let block = c / perm.len().max(1) * inner;
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
                                    .zip(&m[at..at + block])
                                    .map(|(v, &m)| v + bf16(m)),
                            );
                        }
                        None => data.extend_from_slice(src),
                    }
                }
            }
            Tensor {
                shape: x.shape,
                data,
            }
        }
        None => {
            if let Some(m) = mask {
                add_mask(&mut x.data, m);
            }
            x
        }
    }
}

fn add_mask(t: &mut [f32], m: &[u16]) {
    for (v, &m) in t.iter_mut().zip(m) {
        *v += bf16(m);
    }
}

/// The f32 values of little-endian bytes (the accelerator's result as it crossed the
/// boundary: read in place, wherever it lies in the host's buffer, with no copy).
#[inline]
fn le_f32s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// [`all_finite`] on little-endian bytes.
fn all_finite_le(b: &[u8]) -> bool {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let mut chunks = b.chunks_exact(4 * L);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(le_f32s(c)) {
            *a += x * 0.0;
        }
    }
    le_f32s(chunks.remainder()).all(f32::is_finite) && acc.iter().all(|&a| a == 0.0)
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

/// Where the restored output goes next: straight on as the input of the one outsourced
/// layer that alone reads it, in that layer's channel order with its fixed mask.
pub struct Forward<'a> {
    pub transform: &'a PaperTransform,
    pub mask: Option<&'a [u16]>,
}

/// Everything the core does to a layer's result, in one pass per output channel while it
/// is in cache: undo fakes, scales and shuffles, subtract `offset` (the fixed mask's
/// correction with the bias folded in), add `bias` (layers without a fixed mask), apply
/// `act`, and with `next` write the result as the next layer's input.
///
/// A public channel holding a NaN or an infinity is refused with its index: `y` comes from
/// the untrusted accelerator. Separate passes for each step made the core's share of
/// MobileNet-v1 as long as the whole plain inference; it is memory-bound. `y` is the
/// result's little-endian bytes, read where the host put them.
#[allow(clippy::too_many_arguments)]
pub fn restore_fused(
    t: &PaperTransform,
    y: &[u8],
    y_shape: &[usize],
    real_shape: &[usize],
    axis: usize,
    offset: Option<&[f32]>,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    next: Option<Forward<'_>>,
) -> Result<Tensor, usize> {
    let (outer, m, inner) = around(y_shape, axis);
    let (_, n, _) = around(real_shape, axis);
    let mut out = Vec::with_capacity(outer * n * inner);
    if Some(y.len()) != outer.checked_mul(m * inner * 4) {
        return Err(0);
    }
    let channel = |o: usize, p: usize| &y[(o * m + p) * inner * 4..][..inner * 4];
    // Channels no restoration reads (fakes without a partner) are checked on their own.
    let mut read = vec![false; m];
    let mut group_at = Vec::new();
    if let PaperTransform::GroupShuffle { perm, .. } = t {
        group_at = vec![0usize; perm.len()];
        for (q, &p) in perm.iter().enumerate() {
            group_at[p as usize] = q;
        }
    }
    let (next_perm, next_mask) = match &next {
        Some(f) => (input_perm(f.transform), f.mask),
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
            match t {
                PaperTransform::FakePairs {
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
                    out.extend(le_f32s(r).zip(le_f32s(f)).map(|(r, f)| s * r + fs * f));
                }
                PaperTransform::GroupShuffle { groups, scale, .. } => {
                    let og = n / groups;
                    let p = group_at[i / og] * og + i % og;
                    read[p] = true;
                    let s = scale[i];
                    out.extend(le_f32s(channel(o, p)).map(|v| s * v));
                }
            }
            let d = &mut out[at..at + inner];
            if !all_finite(d) {
                return Err(first_bad_channel(y, y_shape, axis));
            }
            if let Some(c) = offset {
                for (d, &c) in d.iter_mut().zip(&c[real_at..real_at + inner]) {
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
                    add_mask(d, &m[at..at + inner]);
                }
            }
        }
    }
    for (p, _) in read.iter().enumerate().filter(|(_, r)| !**r) {
        if (0..outer).any(|o| !all_finite_le(channel(o, p))) {
            return Err(p);
        }
    }
    if inner < 64 {
        if let Some(a) = act {
            shadownet_kernels::elementwise::activation_inplace(a, &mut out);
        }
        if let Some(m) = next_mask {
            add_mask(&mut out, m);
        }
    }
    Ok(Tensor {
        shape: real_shape.to_vec(),
        data: out,
    })
}

/// The first public channel of `y` along `axis` with a non-finite value (0 if none).
pub fn first_bad_channel(y: &[u8], y_shape: &[usize], axis: usize) -> usize {
    let (_, m, inner) = around(y_shape, axis);
    le_f32s(y)
        .position(|v| !v.is_finite())
        .map_or(0, |i| i / inner.max(1) % m.max(1))
}

/// Checks that a transform indexes within the shapes it will meet (`m` public and `n`
/// real output channels, `c` input channels), so an authentic but faulty secret gives an
/// error rather than a panic.
pub fn validate(t: &PaperTransform, m: usize, n: usize, c: usize) -> bool {
    match t {
        PaperTransform::FakePairs {
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
        PaperTransform::GroupShuffle {
            groups,
            perm,
            scale,
        } => {
            *groups > 0
                && m == n
                && n.is_multiple_of(*groups)
                && c.is_multiple_of(*groups)
                && perm.len() == *groups
                && scale.len() == n
                && is_permutation(perm)
        }
    }
}

pub fn is_permutation(p: &[u32]) -> bool {
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

    fn le(t: &Tensor) -> Vec<u8> {
        t.data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn tensor(shape: &[usize], seed: u32) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: values(shape.iter().product(), seed),
        }
    }

    /// Restoration written out value by value from the definitions in docs/schemes.md.
    fn reference(
        t: &PaperTransform,
        y: &Tensor,
        real: &[usize],
        corr: Option<&[f32]>,
        bias: &[f32],
        act: Activation,
    ) -> Tensor {
        let (n, hw) = (real[1], real[2] * real[3]);
        let pubc = |p: usize, q: usize| y.data[p * hw + q];
        let mut data = vec![0f32; n * hw];
        for i in 0..n {
            for q in 0..hw {
                let v = match t {
                    PaperTransform::FakePairs {
                        real_pos,
                        fake_pos,
                        scale,
                        fake_scale,
                    } => {
                        scale[i] * pubc(real_pos[i] as usize, q)
                            + fake_scale[i] * pubc(fake_pos[i] as usize, q)
                    }
                    PaperTransform::GroupShuffle {
                        groups,
                        perm,
                        scale,
                    } => {
                        let og = n / groups;
                        let q_group = perm.iter().position(|&g| g as usize == i / og).unwrap();
                        scale[i] * pubc(q_group * og + i % og, q)
                    }
                };
                let c = corr.map_or(0.0, |c| c[i * hw + q]);
                data[i * hw + q] = shadownet_kernels::elementwise::apply(act, v - c + bias[i]);
            }
        }
        Tensor {
            shape: real.to_vec(),
            data,
        }
    }

    fn fake_pairs(n: usize, m: usize) -> PaperTransform {
        // Public channel m-1 is a fake no real channel is paired with.
        PaperTransform::FakePairs {
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
        let act = Activation::Clip { min: 0.0, max: 0.5 };
        let shuffle = PaperTransform::GroupShuffle {
            groups: 3,
            perm: vec![2, 0, 1],
            scale: values(n, 5),
        };
        let bias = values(n, 9);
        let corr = values(n * 100, 12);
        for (t, public) in [(fake_pairs(n, m), public), (shuffle, real)] {
            let y = tensor(&public, 2);
            for with_corr in [false, true] {
                let c = with_corr.then_some(&corr[..]);
                let want = reference(&t, &y, &real, c, &bias, act);
                let got = restore_fused(
                    &t,
                    &le(&y),
                    &y.shape,
                    &real,
                    1,
                    c,
                    Some(&bias),
                    Some(act),
                    None,
                )
                .unwrap();
                for (a, b) in got.data.iter().zip(&want.data) {
                    assert!((a - b).abs() < 1e-5, "{t:?}: {a} vs {b}");
                }
                // Straight on into a layer that shuffles and masks its input.
                let next_t = PaperTransform::GroupShuffle {
                    groups: 2,
                    perm: vec![1, 0],
                    scale: values(n, 6),
                };
                let mask: Vec<u16> = values(n * 100, 13).iter().map(|&v| to_bf16(v)).collect();
                let want_next = prepare_input(&next_t, Some(&mask), want.clone());
                let got_next = restore_fused(
                    &t,
                    &le(&y),
                    &y.shape,
                    &real,
                    1,
                    c,
                    Some(&bias),
                    Some(act),
                    Some(Forward {
                        transform: &next_t,
                        mask: Some(&mask),
                    }),
                )
                .unwrap();
                for (a, b) in got_next.data.iter().zip(&want_next.data) {
                    assert!((a - b).abs() < 1e-5, "{t:?} forward: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn a_non_finite_value_is_refused_even_in_an_unread_channel() {
        let (n, m) = (4, 7);
        let real = [1, n, 3, 30];
        let public = [1, m, 3, 30];
        for (channel, bad) in [(0, f32::NAN), (m - 1, f32::INFINITY), (n, f32::NAN)] {
            let mut y = tensor(&public, 1);
            y.data[channel * 90 + 17] = bad;
            let e = restore_fused(
                &fake_pairs(n, m),
                &le(&y),
                &y.shape,
                &real,
                1,
                None,
                None,
                None,
                None,
            );
            assert_eq!(e.err(), Some(channel), "{bad} in channel {channel}");
        }
        assert!(all_finite(&values(1000, 2)));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(bf16(to_bf16(-2.5)), -2.5);
    }
}
