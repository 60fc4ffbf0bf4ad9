//! Blocked-layout ops other than convolution: pooling, elementwise chains, channel concat
//! and split, nearest resize. Plain loops over 16-lane pixels, compiled a second time with
//! AVX-512 enabled so they vectorise; every op keeps the halo and the padded channels zero.
//!
//! All functions take raw views: the caller guarantees the geometries describe valid,
//! non-overlapping spans (except where an op is documented as working in place).
use shadownet_ir::{BinaryOp, Pool};

use super::conv::zero_halo_rows;
use super::{has_avx512, Geom, B};
use crate::team::parallel_for;

/// Runs `f` compiled for AVX-512 when the CPU has it (the body is inlined into both).
macro_rules! simd {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if has_avx512() {
                // SAFETY: the CPU has AVX-512F.
                unsafe { wide(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// A raw pointer that may cross to the team's threads (each writes disjoint rows).
#[derive(Clone, Copy)]
pub(crate) struct Ptr(pub *mut f32);
// SAFETY: only dereferenced by kernels that write disjoint parts (see the callers).
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}
#[derive(Clone, Copy, Debug)]
pub(crate) struct CPtr(pub *const f32);
// SAFETY: read-only views of data that outlives the parallel loop.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

// Methods (not field reads) so closures capture the Send wrapper, not the raw pointer.
impl Ptr {
    #[inline(always)]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
impl CPtr {
    #[inline(always)]
    pub(crate) fn get(self) -> *const f32 {
        self.0
    }
}

/// Rows (n, cb, y) of `g` split into about `items` items; calls `f(n, cb, y0, y1)`.
fn for_rows(g: &Geom, work_per_row: usize, f: &(dyn Fn(usize, usize, usize, usize) + Sync)) {
    let rows = g.n * g.cb() * g.h;
    // Small ops stay on one thread: the hand-off costs more than it saves.
    let items = ((rows * work_per_row) / (32 * 1024)).clamp(1, 4 * crate::team::team_threads());
    let items = items.min(rows.max(1));
    let per = rows.div_ceil(items);
    parallel_for(rows.div_ceil(per), &|i| {
        let (r0, r1) = (i * per, ((i + 1) * per).min(rows));
        let mut r = r0;
        while r < r1 {
            let y = r % g.h;
            let nb = r / g.h;
            let y1 = (y + (r1 - r)).min(g.h);
            f(nb / g.cb(), nb % g.cb(), y, y1);
            r += y1 - y;
        }
    });
}

/// Zeros the lanes past the real channels of one row of the last block.
#[inline]
fn mask_row(row: &mut [f32], g: &Geom, cb: usize) {
    let tail = g.c % B;
    if tail != 0 && cb + 1 == g.cb() {
        for px in row.chunks_exact_mut(B) {
            px[tail..].fill(0.0);
        }
    }
}

/// Max or average pooling, as `shadownet_kernels::pool` defines it.
///
/// # Safety
/// Views as the module says.
pub(crate) unsafe fn pool(x: CPtr, xg: &Geom, out: Ptr, og: &Geom, p: &Pool, max: bool) {
    let (h, w) = (xg.h as isize, xg.w as isize);
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let (pt, pl) = (p.pads[0] as isize, p.pads[1] as isize);
    let (hp, wp) = (h + p.pads[2] as isize, w + p.pads[3] as isize);
    // Windows wholly inside the input (no padding, no ceil-mode extra): no bounds, no
    // counts, each window a fixed sequence of vector steps.
    let inside = p.pads == [0; 4]
        && p.extra_end == [0; 2]
        && (og.h - 1) * sh + (kh - 1) * dh < xg.h
        && (og.w - 1) * sw + (kw - 1) * dw < xg.w;
    if inside {
        let div = (kh * kw) as f32;
        for_rows(og, og.w * kh * kw * B, &|n, cb, y0, y1| {
            simd!({
                for oy in y0..y1 {
                    let orow = std::slice::from_raw_parts_mut(
                        out.get().add(og.at(n, cb, oy as isize, 0)),
                        og.w * B,
                    );
                    let row0 = x.get().add(xg.at(n, cb, (oy * sh) as isize, 0));
                    let geo = PoolRow {
                        kernel: [kh, kw],
                        stride: sw,
                        dilation: [dh, dw],
                        row_stride: xg.row_stride(),
                        div,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if has_avx512() {
                        pool_row_avx512(row0, &geo, orow, max);
                        continue;
                    }
                    pool_row(row0, &geo, orow, max);
                }
                zero_halo_rows(out.get(), og, n, cb, y0, y1);
            })
        });
        return;
    }
    for_rows(og, og.w * kh * kw * B, &|n, cb, y0, y1| {
        simd!({
            for oy in y0..y1 {
                let orow = std::slice::from_raw_parts_mut(
                    out.get().add(og.at(n, cb, oy as isize, 0)),
                    og.w * B,
                );
                for ox in 0..og.w {
                    let yb = (oy * sh) as isize - pt;
                    let xb = (ox * sw) as isize - pl;
                    let mut acc = [if max { f32::NEG_INFINITY } else { 0.0 }; B];
                    let (mut count, mut padded) = (0usize, 0usize);
                    for ky in 0..kh {
                        let iy = yb + (ky * dh) as isize;
                        if iy >= hp {
                            break;
                        }
                        let row_in = iy >= 0 && iy < h;
                        for kx in 0..kw {
                            let ix = xb + (kx * dw) as isize;
                            if ix >= wp {
                                break;
                            }
                            padded += 1;
                            if row_in && ix >= 0 && ix < w {
                                let v = std::slice::from_raw_parts(
                                    x.get().add(xg.at(n, cb, iy, ix)),
                                    B,
                                );
                                if max {
                                    for (a, &v) in acc.iter_mut().zip(v) {
                                        // NaN propagates like the portable kernel.
                                        *a = if v > *a || v.is_nan() { v } else { *a };
                                    }
                                } else {
                                    for (a, &v) in acc.iter_mut().zip(v) {
                                        *a += v;
                                    }
                                }
                                count += 1;
                            }
                        }
                    }
                    if !max {
                        let div = if p.count_include_pad { padded } else { count };
                        for a in acc.iter_mut() {
                            *a = if div == 0 { 0.0 } else { *a / div as f32 };
                        }
                    }
                    orow[ox * B..(ox + 1) * B].copy_from_slice(&acc);
                }
                mask_row(orow, og, cb);
            }
            zero_halo_rows(out.get(), og, n, cb, y0, y1);
        })
    });
}

/// One output row of a pooling whose windows lie inside the input.
struct PoolRow {
    kernel: [usize; 2],
    stride: usize,
    dilation: [usize; 2],
    row_stride: usize,
    div: f32,
}

/// The portable row: `row0` is the window's first input row.
unsafe fn pool_row(row0: *const f32, g: &PoolRow, orow: &mut [f32], max: bool) {
    let [kh, kw] = g.kernel;
    for (ox, o) in orow.chunks_exact_mut(B).enumerate() {
        let mut acc = [if max { f32::NEG_INFINITY } else { 0.0 }; B];
        for ky in 0..kh {
            let row = row0.add(ky * g.dilation[0] * g.row_stride);
            for kx in 0..kw {
                let v = std::slice::from_raw_parts(
                    row.add((ox * g.stride + kx * g.dilation[1]) * B),
                    B,
                );
                for (a, &v) in acc.iter_mut().zip(v) {
                    // NaN propagates like the portable kernel.
                    *a = if !max {
                        *a + v
                    } else if v > *a || v.is_nan() {
                        v
                    } else {
                        *a
                    };
                }
            }
        }
        if !max {
            acc.iter_mut().for_each(|a| *a /= g.div);
        }
        o.copy_from_slice(&acc);
    }
}

/// The AVX-512 row, four output pixels at a time so their chains of compares (or adds)
/// overlap; the same steps as `pool_row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_row_avx512(row0: *const f32, g: &PoolRow, orow: &mut [f32], max: bool) {
    use core::arch::x86_64::*;
    let [kh, kw] = g.kernel;
    let ow = orow.len() / B;
    let init = _mm512_set1_ps(if max { f32::NEG_INFINITY } else { 0.0 });
    let step = |a: __m512, v: __m512| -> __m512 {
        if max {
            let take =
                _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, a) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            _mm512_mask_mov_ps(a, take, v)
        } else {
            _mm512_add_ps(a, v)
        }
    };
    let finish = |a: __m512| {
        if max {
            a
        } else {
            _mm512_div_ps(a, _mm512_set1_ps(g.div))
        }
    };
    let mut ox = 0;
    while ox + 4 <= ow {
        let mut acc = [init; 4];
        for ky in 0..kh {
            let row = row0.add(ky * g.dilation[0] * g.row_stride);
            for kx in 0..kw {
                for (q, a) in acc.iter_mut().enumerate() {
                    let v =
                        _mm512_loadu_ps(row.add(((ox + q) * g.stride + kx * g.dilation[1]) * B));
                    *a = step(*a, v);
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(orow.as_mut_ptr().add((ox + q) * B), finish(*a));
        }
        ox += 4;
    }
    while ox < ow {
        let mut a = init;
        for ky in 0..kh {
            let row = row0.add(ky * g.dilation[0] * g.row_stride);
            for kx in 0..kw {
                a = step(
                    a,
                    _mm512_loadu_ps(row.add((ox * g.stride + kx * g.dilation[1]) * B)),
                );
            }
        }
        _mm512_storeu_ps(orow.as_mut_ptr().add(ox * B), finish(a));
        ox += 1;
    }
}

/// Global average or max pooling into a 1×1 blocked output.
///
/// # Safety
/// Views as the module says.
pub(crate) unsafe fn global_pool(x: CPtr, xg: &Geom, out: Ptr, og: &Geom, max: bool) {
    let units = xg.n * xg.cb();
    let work = xg.h * xg.w * B;
    let items = if units * work < 64 * 1024 { 1 } else { units };
    let per = units.div_ceil(items);
    parallel_for(units.div_ceil(per), &|i| {
        simd!({
            for u in i * per..((i + 1) * per).min(units) {
                let (n, cb) = (u / xg.cb(), u % xg.cb());
                let mut acc = [if max { f32::NEG_INFINITY } else { 0.0 }; B];
                for y in 0..xg.h {
                    let row = std::slice::from_raw_parts(
                        x.get().add(xg.at(n, cb, y as isize, 0)),
                        xg.w * B,
                    );
                    for px in row.chunks_exact(B) {
                        if max {
                            for (a, &v) in acc.iter_mut().zip(px) {
                                *a = a.max(v);
                            }
                        } else {
                            for (a, &v) in acc.iter_mut().zip(px) {
                                *a += v;
                            }
                        }
                    }
                }
                if !max {
                    let hw = (xg.h * xg.w) as f32;
                    acc.iter_mut().for_each(|a| *a /= hw);
                }
                let o = std::slice::from_raw_parts_mut(out.get().add(og.at(n, cb, 0, 0)), B);
                o.copy_from_slice(&acc);
                mask_row(o, og, cb);
                zero_halo_rows(out.get(), og, n, cb, 0, 1);
            }
        })
    });
}

/// One stage of an elementwise chain on blocked rows.
#[derive(Clone, Debug)]
pub(crate) enum EStage {
    Act(super::conv::Act),
    /// `v = v op k[c]` (`rev`: `v = k[c] op v`); k padded to whole blocks.
    Channel {
        op: BinaryOp,
        k: Vec<f32>,
        rev: bool,
    },
    /// `v = v op t` with a tensor of the same shape (`rev`: `t op v`).
    Tensor {
        op: BinaryOp,
        t: CPtr,
        g: Geom,
        rev: bool,
    },
    /// `v = v op t[n, c]` with a blocked [N or 1, C, 1, 1] tensor.
    ChanTensor {
        op: BinaryOp,
        t: CPtr,
        g: Geom,
        rev: bool,
    },
}

#[inline(always)]
fn bin(op: BinaryOp, a: f32, b: f32, rev: bool) -> f32 {
    if rev {
        shadownet_kernels::elementwise::binary(op, b, a)
    } else {
        shadownet_kernels::elementwise::binary(op, a, b)
    }
}

/// Applies `f(a, b)` lane by lane with the common ops spelled out, so each compiles to
/// one vector instruction.
#[inline(always)]
fn bin_slice(op: BinaryOp, v: &mut [f32], t: &[f32], rev: bool) {
    macro_rules! each {
        ($f:expr) => {
            for (a, &b) in v.iter_mut().zip(t) {
                *a = $f(*a, b);
            }
        };
    }
    match (op, rev) {
        (BinaryOp::Add, _) => each!(|a: f32, b: f32| a + b),
        (BinaryOp::Mul, _) => each!(|a: f32, b: f32| a * b),
        (BinaryOp::Sub, false) => each!(|a: f32, b: f32| a - b),
        (BinaryOp::Sub, true) => each!(|a: f32, b: f32| b - a),
        (BinaryOp::Div, false) => each!(|a: f32, b: f32| a / b),
        (BinaryOp::Div, true) => each!(|a: f32, b: f32| b / a),
        _ => each!(|a: f32, b: f32| bin(op, a, b, rev)),
    }
}

/// `out = stages(x)`, row by row (in place when `out` is `x`).
///
/// # Safety
/// Views as the module says; `out` may equal `x` with the same geometry.
pub(crate) unsafe fn eltwise(x: CPtr, xg: &Geom, out: Ptr, og: &Geom, stages: &[EStage]) {
    for_rows(og, og.w * B * (1 + stages.len()), &|n, cb, y0, y1| {
        simd!({
            let mut kbuf = [0f32; B];
            for y in y0..y1 {
                let o = std::slice::from_raw_parts_mut(
                    out.get().add(og.at(n, cb, y as isize, 0)),
                    og.w * B,
                );
                let src = x.get().add(xg.at(n, cb, y as isize, 0));
                if src != o.as_ptr() {
                    std::ptr::copy_nonoverlapping(src, o.as_mut_ptr(), og.w * B);
                }
                for s in stages {
                    match s {
                        EStage::Act(a) => act_slice(a, o),
                        EStage::Channel { op, k, rev } => {
                            let kv = &k[cb * B..(cb + 1) * B];
                            for px in o.chunks_exact_mut(B) {
                                bin_slice(*op, px, kv, *rev);
                            }
                        }
                        EStage::Tensor { op, t, g, rev } => {
                            let tr = std::slice::from_raw_parts(
                                t.get().add(g.at(n, cb, y as isize, 0)),
                                og.w * B,
                            );
                            bin_slice(*op, o, tr, *rev);
                        }
                        EStage::ChanTensor { op, t, g, rev } => {
                            let tn = if g.n == 1 { 0 } else { n };
                            kbuf.copy_from_slice(std::slice::from_raw_parts(
                                t.get().add(g.at(tn, cb, 0, 0)),
                                B,
                            ));
                            for px in o.chunks_exact_mut(B) {
                                bin_slice(*op, px, &kbuf, *rev);
                            }
                        }
                    }
                }
                mask_row(o, og, cb);
            }
            zero_halo_rows(out.get(), og, n, cb, y0, y1);
        })
    });
}

/// An activation over a slice, one loop per function so each vectorises.
#[inline(always)]
pub(crate) fn act_slice(a: &super::conv::Act, v: &mut [f32]) {
    use super::conv::Act;
    match *a {
        Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Act::Clip(lo, hi) => v.iter_mut().for_each(|x| *x = x.max(lo).min(hi)),
        Act::LeakyRelu(al) => v
            .iter_mut()
            .for_each(|x| *x = if *x >= 0.0 { *x } else { al * *x }),
        Act::HardSigmoid(al, be) => v
            .iter_mut()
            .for_each(|x| *x = (al * *x + be).clamp(0.0, 1.0)),
        Act::HardSwish => v
            .iter_mut()
            .for_each(|x| *x = *x * (*x / 6.0 + 0.5).clamp(0.0, 1.0)),
        ref other => v.iter_mut().for_each(|x| *x = other.apply(*x)),
    }
}

/// Copies `x` into blocks [cb0, cb0 + xg.cb()) of `out` (one input of a block-aligned
/// channel concat), with those blocks' halo.
///
/// # Safety
/// Views as the module says.
pub(crate) unsafe fn concat_part(x: CPtr, xg: &Geom, out: Ptr, og: &Geom, cb0: usize) {
    for_rows(xg, xg.w * B, &|n, cb, y0, y1| {
        for y in y0..y1 {
            std::ptr::copy_nonoverlapping(
                x.get().add(xg.at(n, cb, y as isize, 0)),
                out.get().add(og.at(n, cb0 + cb, y as isize, 0)),
                og.w * B,
            );
        }
        zero_halo_rows(out.get(), og, n, cb0 + cb, y0, y1);
    });
}

/// Copies channel blocks [cb0, cb0 + og.cb()) of `x` into `out` (a block-aligned split).
///
/// # Safety
/// Views as the module says.
pub(crate) unsafe fn channel_slice(x: CPtr, xg: &Geom, cb0: usize, out: Ptr, og: &Geom) {
    for_rows(og, og.w * B, &|n, cb, y0, y1| {
        for y in y0..y1 {
            std::ptr::copy_nonoverlapping(
                x.get().add(xg.at(n, cb0 + cb, y as isize, 0)),
                out.get().add(og.at(n, cb, y as isize, 0)),
                og.w * B,
            );
            if cb + 1 == og.cb() {
                let o = std::slice::from_raw_parts_mut(
                    out.get().add(og.at(n, cb, y as isize, 0)),
                    og.w * B,
                );
                mask_row(o, og, cb);
            }
        }
        zero_halo_rows(out.get(), og, n, cb, y0, y1);
    });
}

/// Nearest resize of H and W: output pixel (y, x) copies input pixel (ymap[y], xmap[x]).
///
/// # Safety
/// Views as the module says.
pub(crate) unsafe fn resize_nearest(
    x: CPtr,
    xg: &Geom,
    out: Ptr,
    og: &Geom,
    ymap: &[usize],
    xmap: &[usize],
) {
    for_rows(og, og.w * B, &|n, cb, y0, y1| {
        for (y, &iy) in ymap.iter().enumerate().take(y1).skip(y0) {
            let src = x.get().add(xg.at(n, cb, iy as isize, 0));
            let dst = out.get().add(og.at(n, cb, y as isize, 0));
            for (ox, &ix) in xmap.iter().enumerate() {
                std::ptr::copy_nonoverlapping(src.add(ix * B), dst.add(ox * B), B);
            }
        }
        zero_halo_rows(out.get(), og, n, cb, y0, y1);
    });
}
