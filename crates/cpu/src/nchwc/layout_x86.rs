//! NCHW ⇄ blocked reordering with AVX-512: 16 channels × 16 pixels at a time, transposed
//! in registers. The scalar loops wrote one float per cache line per step and were most of
//! a public layer's time on an accelerator that gets and returns NCHW tensors.
use std::arch::x86_64::*;

use super::{Geom, B};

/// Transposes a 16×16 tile held as 16 rows: row i of the result is column i of `r`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    let mut a = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // b[4i + m], 128-bit lane l: rows 4i..4i+3 of column 4l + m.
    let mut b = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (x0, x1) = (_mm512_castps_pd(a[4 * i]), _mm512_castps_pd(a[4 * i + 1]));
        let (x2, x3) = (
            _mm512_castps_pd(a[4 * i + 2]),
            _mm512_castps_pd(a[4 * i + 3]),
        );
        b[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
        b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
        b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
        b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
    }
    // A 4×4 transpose of 128-bit lanes across b[m], b[4 + m], b[8 + m], b[12 + m].
    let mut out = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        let p0 = _mm512_shuffle_f32x4::<0x44>(b[m], b[4 + m]);
        let p1 = _mm512_shuffle_f32x4::<0xEE>(b[m], b[4 + m]);
        let p2 = _mm512_shuffle_f32x4::<0x44>(b[8 + m], b[12 + m]);
        let p3 = _mm512_shuffle_f32x4::<0xEE>(b[8 + m], b[12 + m]);
        out[m] = _mm512_shuffle_f32x4::<0x88>(p0, p2);
        out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(p0, p2);
        out[8 + m] = _mm512_shuffle_f32x4::<0x88>(p1, p3);
        out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(p1, p3);
    }
    out
}

fn tail_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// Channel block `cb` of image `n`: NCHW `x` → blocked `out`, its halo zeroed.
///
/// # Safety
/// AVX-512F is available; `x` holds the NCHW tensor `g` describes and `out` its blocked
/// layout (only this block's span is written).
#[target_feature(enable = "avx512f")]
pub unsafe fn to_blocked_block(x: *const f32, g: &Geom, n: usize, cb: usize, out: *mut f32) {
    let (h, w, hl) = (g.h, g.w, g.halo);
    if hl > 0 {
        let rs = g.row_stride();
        let base = out.add(n * g.image_stride + cb * g.block_stride());
        std::ptr::write_bytes(base, 0, hl * rs);
        std::ptr::write_bytes(base.add((hl + h) * rs), 0, hl * rs);
        for y in 0..h {
            let r = base.add((hl + y) * rs);
            std::ptr::write_bytes(r, 0, hl * B);
            std::ptr::write_bytes(r.add((hl + w) * B), 0, hl * B);
        }
    }
    let cs = B.min(g.c - cb * B);
    let plane = h * w;
    let src = x.add((n * g.c + cb * B) * plane);
    let mut r = [_mm512_setzero_ps(); 16];
    for y in 0..h {
        let row = out.add(g.at(n, cb, y as isize, 0));
        let mut px = 0;
        while px < w {
            let len = (w - px).min(16);
            let m = tail_mask(len);
            for (ci, v) in r.iter_mut().enumerate().take(cs) {
                *v = _mm512_maskz_loadu_ps(m, src.add(ci * plane + y * w + px));
            }
            let t = transpose16(&r);
            for (p, v) in t.iter().enumerate().take(len) {
                _mm512_storeu_ps(row.add((px + p) * B), *v);
            }
            px += len;
        }
    }
}

/// Channel block `cb` of image `n`: blocked `x` → NCHW `out` (its real channels).
///
/// # Safety
/// As [`to_blocked_block`], the other way round.
#[target_feature(enable = "avx512f")]
pub unsafe fn from_blocked_block(x: *const f32, g: &Geom, n: usize, cb: usize, out: *mut f32) {
    let (h, w) = (g.h, g.w);
    let cs = B.min(g.c - cb * B);
    let plane = h * w;
    let dst = out.add((n * g.c + cb * B) * plane);
    let mut r = [_mm512_setzero_ps(); 16];
    for y in 0..h {
        let row = x.add(g.at(n, cb, y as isize, 0));
        let mut px = 0;
        while px < w {
            let len = (w - px).min(16);
            for (p, v) in r.iter_mut().enumerate() {
                *v = if p < len {
                    _mm512_loadu_ps(row.add((px + p) * B))
                } else {
                    _mm512_setzero_ps()
                };
            }
            let t = transpose16(&r);
            let m = tail_mask(len);
            for (ci, v) in t.iter().enumerate().take(cs) {
                _mm512_mask_storeu_ps(dst.add(ci * plane + y * w + px), m, *v);
            }
            px += len;
        }
    }
}
