//! Direct convolution in the blocked layout, weights packed once.
//!
//! A dense convolution computes, for a run of P output pixels of one row and OB output
//! channel blocks, P·OB vectors of 16 output channels in registers: for every input
//! channel and tap it loads OB weight vectors and multiplies each by the broadcast input
//! value of every pixel. The weights are packed at load time in exactly that order
//! ([icb][tap][ic][OB][16] per group of OB output blocks), so the kernel streams them
//! linearly; the input is read in place thanks to the halo. Bias, residual add,
//! per-channel affine ops and the activation run on the accumulators before the single
//! store (the "epilogue").
//!
//! Depthwise convolutions multiply 16 channels of a pixel by 16 channels of a tap's
//! weights, one vector multiply-add per tap and pixel.
use shadownet_ir::{Activation, BinaryOp, Conv};

use super::{has_avx512, AlignedBuf, Geom, Planar, B};
use crate::team::{parallel_for, team_threads};

/// An activation the epilogue applies; the piecewise-linear ones are vectorised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Relu,
    Clip(f32, f32),
    LeakyRelu(f32),
    HardSigmoid(f32, f32),
    HardSwish,
    /// ONNX's exported hard-swish: `x * Clip(x + add, lo, hi)` then `/ div` (or `* mul`),
    /// evaluated op by op as the unfused graph would.
    HardSwishGraph {
        add: f32,
        lo: f32,
        hi: f32,
        post: BinaryOp,
        k: f32,
    },
    Other(Activation),
}

impl Act {
    pub fn of(a: Activation) -> Act {
        match a {
            Activation::Relu => Act::Relu,
            Activation::Clip { min, max } => Act::Clip(min, max),
            Activation::LeakyRelu { alpha } => Act::LeakyRelu(alpha),
            Activation::HardSigmoid { alpha, beta } => Act::HardSigmoid(alpha, beta),
            Activation::HardSwish => Act::HardSwish,
            other => Act::Other(other),
        }
    }

    /// The scalar definition (the portable kernels and the fallback lanes use it).
    #[inline]
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Act::Relu => x.max(0.0),
            Act::Clip(lo, hi) => x.max(lo).min(hi),
            Act::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Act::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Act::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Act::HardSwishGraph {
                add,
                lo,
                hi,
                post,
                k,
            } => {
                let m = x * (x + add).max(lo).min(hi);
                shadownet_kernels::elementwise::binary(post, m, k)
            }
            Act::Other(a) => shadownet_kernels::elementwise::apply(a, x),
        }
    }
}

/// One step of an epilogue, applied to each output vector in order.
#[derive(Clone, Debug)]
pub enum Stage {
    Act(Act),
    /// Adds the residual tensor (same shape as the output).
    AddResidual,
    /// `v = v op k[channel]` with per-channel constants (padded with zeros for Add/Sub
    /// and ones for Mul/Div, so padded channels stay finite).
    Channel(BinaryOp, AlignedBuf),
}

#[derive(Clone, Debug, Default)]
pub struct Epilogue {
    pub stages: Vec<Stage>,
}

/// The activation of a [`FastEpilogue`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum FastAct {
    None,
    Relu,
    Clip,
    Leaky,
}

/// The epilogues most layers have (an optional residual add, then nothing, ReLU, clip
/// or leaky ReLU), which the SIMD kernels apply without leaving registers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct FastEpilogue {
    pub residual: bool,
    pub act: FastAct,
    pub lo: f32,
    pub hi: f32,
    pub alpha: f32,
}

impl Epilogue {
    pub fn has_residual(&self) -> bool {
        self.stages.iter().any(|s| matches!(s, Stage::AddResidual))
    }

    pub(crate) fn fast(&self) -> Option<FastEpilogue> {
        let mut f = FastEpilogue {
            residual: false,
            act: FastAct::None,
            lo: 0.0,
            hi: 0.0,
            alpha: 0.0,
        };
        let mut rest = &self.stages[..];
        if let [Stage::AddResidual, tail @ ..] = rest {
            f.residual = true;
            rest = tail;
        }
        match rest {
            [] => {}
            [Stage::Act(Act::Relu)] => f.act = FastAct::Relu,
            [Stage::Act(Act::Clip(lo, hi))] => {
                f.act = FastAct::Clip;
                (f.lo, f.hi) = (*lo, *hi);
            }
            [Stage::Act(Act::LeakyRelu(a))] => {
                f.act = FastAct::Leaky;
                f.alpha = *a;
            }
            _ => return None,
        }
        Some(f)
    }
    /// Applies the epilogue to 16 channels (block `cb`) of one pixel: the scalar path.
    #[inline]
    pub(crate) fn apply_lanes(&self, v: &mut [f32; B], cb: usize, res: Option<&[f32]>) {
        for s in &self.stages {
            match s {
                Stage::Act(a) => v.iter_mut().for_each(|x| *x = a.apply(*x)),
                Stage::AddResidual => {
                    if let Some(r) = res {
                        v.iter_mut().zip(r).for_each(|(x, r)| *x += *r);
                    }
                }
                Stage::Channel(op, k) => {
                    let k = &k.as_slice()[cb * B..(cb + 1) * B];
                    v.iter_mut().zip(k).for_each(|(x, k)| {
                        *x = shadownet_kernels::elementwise::binary(*op, *x, *k)
                    });
                }
            }
        }
    }
}

/// How a convolution reads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Blocked,
    /// Planar (NCHW with halo): for a first layer with few input channels.
    Planar,
}

/// A convolution's weights packed for the blocked kernels, with its geometry.
#[derive(Clone, Debug)]
pub struct PackedConv {
    pub conv: Conv,
    pub cin: usize,
    pub cout: usize,
    pub depthwise: bool,
    pub input: InputKind,
    /// (first output block, blocks, offset into `w`) per group of output blocks.
    groups: Vec<(usize, usize, usize)>,
    w: AlignedBuf,
    bias: AlignedBuf,
    /// Input blocks (planar: input channels) and channels in a full / the last block.
    n_icb: usize,
    icn_full: usize,
    icn_last: usize,
    pub epilogue: Epilogue,
}

/// Largest pixel run per number of output blocks: P·OB accumulators plus OB weight
/// vectors must fit the 32 vector registers.
pub(crate) const fn pmax(ob: usize) -> usize {
    match ob {
        1 => 16,
        2 => 12,
        3 => 8,
        _ => 6,
    }
}
pub(crate) const DW_PMAX: usize = 8;
/// Pixels per depthwise call when each input vector of a window row is loaded once.
pub(crate) const DW_ROW_PMAX: usize = 12;

/// Splits `n` into runs of at most `pmax`, as even as possible.
pub(crate) fn runs(n: usize, pmax: usize) -> impl Iterator<Item = (usize, usize)> {
    let k = n.div_ceil(pmax).max(1);
    let (base, rem) = (n / k, n % k);
    (0..k).scan(0, move |start, i| {
        let len = base + usize::from(i < rem);
        let s = *start;
        *start += len;
        Some((s, len))
    })
}

/// Output blocks per register tile, for output rows `ow` wide. Models the cycles of one
/// input-channel step of every tile of a row — the larger of its multiply-adds (one per
/// cycle), its loads (two per cycle) and the multiply-add latency (four in flight) — and
/// takes the cheapest; ties go to the larger tile (fewer passes over the input).
fn choose_ob(cob: usize, ow: usize) -> usize {
    let row_cost = |ob: usize| -> f64 {
        let mut total = 0.0;
        let mut b0 = 0;
        while b0 < cob {
            let g = ob.min(cob - b0);
            for (_, p) in runs(ow, pmax(g)) {
                let fma = (g * p) as f64;
                total += fma.max((g + p) as f64 / 2.0).max(4.0);
            }
            b0 += g;
        }
        total
    };
    let mut best = 1;
    for ob in 2..=4.min(cob) {
        if row_cost(ob) <= row_cost(best) {
            best = ob;
        }
    }
    best
}

impl PackedConv {
    /// Packs `w` ([O, C/groups, kh, kw]) and `bias` for output rows `ow` wide. `None`
    /// when the blocked kernels do not cover this convolution (grouped but not
    /// depthwise, a channel multiplier, a stride above 2 along the width).
    pub fn new(
        c: &Conv,
        w: &[f32],
        wshape: &[usize],
        bias: Option<&[f32]>,
        cin: usize,
        ow: usize,
        input: InputKind,
    ) -> Option<PackedConv> {
        let (cout, cg) = (wshape[0], wshape[1]);
        let [kh, kw] = c.kernel;
        let depthwise = c.groups > 1 && c.groups == cin && cg == 1 && cout == cin;
        if !(c.groups == 1 || depthwise) || c.stride[1] > 2 || c.stride[1] == 0 {
            return None;
        }
        if depthwise && input == InputKind::Planar {
            return None;
        }
        let cob = cout.div_ceil(B);
        let taps = kh * kw;
        let mut bias_p = AlignedBuf::zeros(cob * B);
        if let Some(b) = bias {
            bias_p.as_mut_slice()[..cout].copy_from_slice(&b[..cout]);
        }
        if depthwise {
            // [cb][tap][16]
            let mut wp = AlignedBuf::zeros(cob * taps * B);
            let d = wp.as_mut_slice();
            for oc in 0..cout {
                for t in 0..taps {
                    d[((oc / B) * taps + t) * B + oc % B] = w[oc * taps + t];
                }
            }
            return Some(PackedConv {
                conv: c.clone(),
                cin,
                cout,
                depthwise,
                input,
                groups: Vec::new(),
                w: wp,
                bias: bias_p,
                n_icb: 0,
                icn_full: 0,
                icn_last: 0,
                epilogue: Epilogue::default(),
            });
        }
        let (n_icb, icn_full, icn_last) = match input {
            InputKind::Blocked => (cin.div_ceil(B), B, cin - (cin.div_ceil(B) - 1) * B),
            InputKind::Planar => (cin, 1, 1),
        };
        let ob = choose_ob(cob, ow);
        let mut groups = Vec::new();
        let mut off = 0;
        let mut b0 = 0;
        while b0 < cob {
            let n = ob.min(cob - b0);
            groups.push((b0, n, off));
            off += cin * taps * n * B;
            b0 += n;
        }
        let mut wp = AlignedBuf::zeros(off);
        let d = wp.as_mut_slice();
        // Walks the source in its own order (writes scatter instead): reading it with
        // the output channel innermost took most of MobileNet's compile time.
        for oc in 0..cout {
            let (ob_abs, lane) = (oc / B, oc % B);
            let &(b0, n, goff) = &groups[groups.partition_point(|g| g.0 + g.1 <= ob_abs)];
            let ob = ob_abs - b0;
            for ci in 0..cin {
                let (icb, ic) = (ci / icn_full, ci % icn_full);
                let icn = if icb + 1 == n_icb { icn_last } else { icn_full };
                let block = goff + icb * taps * icn_full * n * B;
                for t in 0..taps {
                    d[block + (t * icn + ic) * n * B + ob * B + lane] =
                        w[(oc * cg + ci) * taps + t];
                }
            }
        }
        Some(PackedConv {
            conv: c.clone(),
            cin,
            cout,
            depthwise,
            input,
            groups,
            w: wp,
            bias: bias_p,
            n_icb,
            icn_full,
            icn_last,
            epilogue: Epilogue::default(),
        })
    }

    /// Folds `v = v op k[c]` (k per output channel) into the weights and bias: only valid
    /// before any other epilogue stage.
    pub fn fold_channel(&mut self, op: BinaryOp, k: &[f32]) {
        let cout = self.cout;
        let b = self.bias.as_mut_slice();
        for oc in 0..cout {
            b[oc] = shadownet_kernels::elementwise::binary(op, b[oc], k[oc]);
        }
        if matches!(op, BinaryOp::Mul | BinaryOp::Div) {
            let taps = self.conv.kernel[0] * self.conv.kernel[1];
            let wd = self.w.as_mut_slice();
            if self.depthwise {
                for oc in 0..cout {
                    for t in 0..taps {
                        let v = &mut wd[((oc / B) * taps + t) * B + oc % B];
                        *v = shadownet_kernels::elementwise::binary(op, *v, k[oc]);
                    }
                }
            } else {
                for &(b0, n, goff) in &self.groups {
                    let mut o = goff;
                    for icb in 0..self.n_icb {
                        let icn = if icb + 1 == self.n_icb {
                            self.icn_last
                        } else {
                            self.icn_full
                        };
                        for _t in 0..taps {
                            for _ic in 0..icn {
                                for ob in 0..n {
                                    for lane in 0..B {
                                        let oc = (b0 + ob) * B + lane;
                                        if oc < cout {
                                            let v = &mut wd[o + ob * B + lane];
                                            *v = shadownet_kernels::elementwise::binary(
                                                op, *v, k[oc],
                                            );
                                        }
                                    }
                                }
                                o += n * B;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Multiply-adds per image (the real channels only).
    pub fn macs(&self, out_hw: [usize; 2]) -> usize {
        let taps = self.conv.kernel[0] * self.conv.kernel[1];
        let cg = if self.depthwise { 1 } else { self.cin };
        self.cout * cg * taps * out_hw[0] * out_hw[1]
    }
}

/// The input side of a convolution call.
#[derive(Clone, Copy, Debug)]
pub enum InGeom {
    Blocked(Geom),
    Planar(Planar),
}

/// Raw views of one convolution's tensors. The caller guarantees the spans the geometries
/// describe are valid (and the output disjoint from the inputs).
#[derive(Clone, Copy)]
pub struct ConvIo {
    pub inp: *const f32,
    pub in_geom: InGeom,
    pub out: *mut f32,
    pub out_geom: Geom,
    pub res: *const f32,
    pub res_geom: Option<Geom>,
}
// SAFETY: the pointers are only dereferenced inside `run`, on disjoint output rows.
unsafe impl Send for ConvIo {}
unsafe impl Sync for ConvIo {}

/// Everything one micro-kernel call needs.
pub(crate) struct KArgs {
    pub inp: *const f32,
    pub in_cb_stride: usize,
    pub n_icb: usize,
    pub icn_full: usize,
    pub icn_last: usize,
    pub taps: *const isize,
    pub ntaps: usize,
    pub w: *const f32,
    pub bias: *const f32,
    pub out: *mut f32,
    pub out_cb_stride: usize,
    pub res: *const f32,
    pub res_cb_stride: usize,
    pub epi: *const Epilogue,
    /// First output block of the tile (for per-channel epilogue constants).
    pub cb0: usize,
    /// Lanes of the tile's last block that hold real channels.
    pub last_mask: u16,
    /// Output blocks, pixels and input floats between pixels: compile-time constants in
    /// the SIMD kernels, read by the portable ones.
    pub nb: usize,
    pub p: usize,
    pub xs: usize,
    /// The epilogue when the kernels can apply it in registers.
    pub fast: Option<FastEpilogue>,
}

pub(crate) type KernFn = unsafe fn(&KArgs);

impl PackedConv {
    /// Tap offsets (in floats) relative to the top-left tap of output pixel (0, 0).
    fn tap_offsets(&self, ing: &InGeom) -> Vec<isize> {
        let [kh, kw] = self.conv.kernel;
        let [dh, dw] = self.conv.dilation;
        let (rs, px) = match ing {
            InGeom::Blocked(g) => (g.row_stride(), B),
            InGeom::Planar(p) => (p.pw(), 1),
        };
        let mut t = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                t.push((ky * dh * rs + kx * dw * px) as isize);
            }
        }
        t
    }

    /// Runs the convolution (and its epilogue) over the views in `io`, spreading rows and
    /// output blocks over the current team.
    ///
    /// # Safety
    /// The views must be valid as [`ConvIo`] says, with halos at least the padding.
    pub unsafe fn run(&self, io: &ConvIo) {
        let og = io.out_geom;
        let (oh, ow) = (og.h, og.w);
        let taps = self.tap_offsets(&io.in_geom);
        let c = &self.conv;
        let n = og.n;
        let avx = has_avx512();
        let (in_cb_stride, px) = match io.in_geom {
            InGeom::Blocked(g) => (g.block_stride(), B),
            InGeom::Planar(p) => (p.plane(), 1),
        };
        // Top-left tap of output pixel (oy, ox): input (oy·sh − pt, ox·sw − pl).
        let origin = |img: usize, oy: usize, ox: usize| -> isize {
            let y = (oy * c.stride[0]) as isize - c.pads[0] as isize;
            let x = (ox * c.stride[1]) as isize - c.pads[1] as isize;
            match io.in_geom {
                InGeom::Blocked(g) => g.at(img, 0, y, x) as isize,
                InGeom::Planar(p) => p.at(img, 0, y, x) as isize,
            }
        };
        let res_geom = io.res_geom;
        let cob = self.cout.div_ceil(B);
        let tail = self.cout % B;
        let last_mask_of = |b_end: usize| -> u16 {
            if b_end == cob && tail != 0 {
                ((1u32 << tail) - 1) as u16
            } else {
                0xffff
            }
        };
        let xs = c.stride[1] * px;
        let fast = self.epilogue.fast();
        // A 1×1 stride-1 convolution over an input without halo sees its pixels as one
        // flat run: tiles flow across row ends (staged through `tmp` when the output has
        // a halo there), so every tile is full. Rows 14 wide made 5 + 5 + 4 tiles.
        let flat = !self.depthwise
            && c.kernel == [1, 1]
            && c.stride == [1, 1]
            && c.pads == [0; 4]
            && res_geom.is_none()
            && matches!(io.in_geom, InGeom::Blocked(g) if g.halo == 0 && g.w == ow && g.h == oh);
        // Depthwise with the row kernels: 3- or 5-wide windows, dilation 1 along the row.
        let row_dw = self.depthwise
            && avx
            && matches!(c.kernel[1], 3 | 5)
            && c.dilation[1] == 1
            && c.stride[1] <= 2;
        // Work items: (image, group, band of rows). Bands are sized so that each thread
        // gets a few, and a single-thread run takes whole images.
        let ngroups = if self.depthwise {
            cob
        } else {
            self.groups.len()
        };
        let threads = team_threads();
        let units = n * ngroups;
        // Below ~1 µs of work the hand-off to another thread costs more than it saves.
        let small = self.macs([oh, ow]) * n < 64 * 1024;
        let bands = if threads <= 1 || small {
            1
        } else {
            (4 * threads).div_ceil(units).clamp(1, oh)
        };
        let band_rows = oh.div_ceil(bands);
        let bands = oh.div_ceil(band_rows);
        let item = |i: usize| {
            let band = i % bands;
            let gi = (i / bands) % ngroups;
            let img = i / (bands * ngroups);
            let (y0, y1) = (band * band_rows, ((band + 1) * band_rows).min(oh));
            let (b0, nb, woff) = if self.depthwise {
                (gi, 1, gi * taps.len() * B)
            } else {
                self.groups[gi]
            };
            let mut a = KArgs {
                inp: std::ptr::null(),
                in_cb_stride,
                n_icb: self.n_icb,
                icn_full: self.icn_full,
                icn_last: self.icn_last,
                taps: taps.as_ptr(),
                ntaps: taps.len(),
                w: self.w.as_slice().as_ptr().add(woff),
                bias: self.bias.as_slice().as_ptr().add(b0 * B),
                out: std::ptr::null_mut(),
                out_cb_stride: og.block_stride(),
                res: std::ptr::null(),
                res_cb_stride: res_geom.map_or(0, |g| g.block_stride()),
                epi: &self.epilogue,
                cb0: b0,
                last_mask: last_mask_of(b0 + nb),
                nb,
                p: 0,
                xs,
                fast,
            };
            if flat {
                let mut tmp = [0f32; 4 * 16 * B];
                let (p_start, p_end) = (y0 * ow, y1 * ow);
                for (t0, len) in runs(p_end - p_start, pmax(nb)) {
                    let p0 = p_start + t0;
                    let (oy, ox) = (p0 / ow, p0 % ow);
                    a.inp = io.inp.offset(origin(img, oy, ox));
                    a.p = len;
                    let k = conv_kernel_for(nb, len, xs, avx);
                    if ox + len <= ow {
                        a.out = io.out.add(og.at(img, b0, oy as isize, ox as isize));
                        a.out_cb_stride = og.block_stride();
                        k(&a);
                    } else {
                        a.out = tmp.as_mut_ptr();
                        a.out_cb_stride = len * B;
                        k(&a);
                        for ob in 0..nb {
                            for q in 0..len {
                                let p = p0 + q;
                                std::ptr::copy_nonoverlapping(
                                    tmp.as_ptr().add((ob * len + q) * B),
                                    io.out.add(og.at(
                                        img,
                                        b0 + ob,
                                        (p / ow) as isize,
                                        (p % ow) as isize,
                                    )),
                                    B,
                                );
                            }
                        }
                    }
                }
            }
            for oy in (y0..y1).filter(|_| !flat) {
                let run_max = if row_dw {
                    DW_ROW_PMAX
                } else if self.depthwise {
                    DW_PMAX
                } else {
                    pmax(nb)
                };
                for (x0, len) in runs(ow, run_max) {
                    let in_off = origin(img, oy, x0);
                    a.inp = if self.depthwise {
                        io.inp.offset(in_off + (b0 * in_cb_stride) as isize)
                    } else {
                        io.inp.offset(in_off)
                    };
                    a.out = io.out.add(og.at(img, b0, oy as isize, x0 as isize));
                    if let Some(rg) = res_geom {
                        a.res = io.res.add(rg.at(img, b0, oy as isize, x0 as isize));
                    }
                    a.p = len;
                    let k = if row_dw {
                        dw_row_kernel_for(len, c.kernel[1], c.stride[1])
                    } else if self.depthwise {
                        dw_kernel_for(len, xs, avx)
                    } else {
                        conv_kernel_for(nb, len, xs, avx)
                    };
                    k(&a);
                }
            }
            // The halo of these rows (and the top / bottom halo with the first / last band).
            for b in b0..b0 + nb {
                zero_halo_rows(io.out, &og, img, b, y0, y1);
            }
        };
        parallel_for(units * bands, &item);
    }
}

/// Zeros the halo columns of rows y0..y1 of one block, and the top / bottom halo rows
/// when the band touches them.
///
/// # Safety
/// `out` must span `g`.
pub(crate) unsafe fn zero_halo_rows(
    out: *mut f32,
    g: &Geom,
    img: usize,
    cb: usize,
    y0: usize,
    y1: usize,
) {
    let hl = g.halo;
    if hl == 0 {
        return;
    }
    let rs = g.row_stride();
    let fill = |off: usize, len: usize| std::ptr::write_bytes(out.add(off), 0, len);
    if y0 == 0 {
        fill(g.at(img, cb, -(hl as isize), -(hl as isize)), hl * rs);
    }
    if y1 == g.h {
        fill(g.at(img, cb, g.h as isize, -(hl as isize)), hl * rs);
    }
    for y in y0..y1 {
        fill(g.at(img, cb, y as isize, -(hl as isize)), hl * B);
        fill(g.at(img, cb, y as isize, g.w as isize), hl * B);
    }
}

fn conv_kernel_for(ob: usize, p: usize, xs: usize, avx: bool) -> KernFn {
    #[cfg(target_arch = "x86_64")]
    if avx {
        if let Some(k) = super::x86::conv_kernel(ob, p, xs) {
            return k;
        }
    }
    let _ = (ob, p, xs, avx);
    portable_conv
}

fn dw_row_kernel_for(p: usize, kw: usize, stride: usize) -> KernFn {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = super::x86::dw_row_kernel(p, kw, stride) {
        return k;
    }
    let _ = (p, kw, stride);
    portable_dw
}

fn dw_kernel_for(p: usize, xs: usize, avx: bool) -> KernFn {
    #[cfg(target_arch = "x86_64")]
    if avx {
        if let Some(k) = super::x86::dw_kernel(p, xs) {
            return k;
        }
    }
    let _ = (p, xs, avx);
    portable_dw
}

/// Stores one finished output vector: epilogue, padded-channel mask, store.
#[inline]
pub(crate) unsafe fn finish_lanes(a: &KArgs, ob: usize, nb: usize, p: usize, v: &mut [f32; B]) {
    let epi = &*a.epi;
    let res = if a.res.is_null() {
        None
    } else {
        Some(std::slice::from_raw_parts(
            a.res.add(ob * a.res_cb_stride + p * B),
            B,
        ))
    };
    epi.apply_lanes(v, a.cb0 + ob, res);
    if ob + 1 == nb {
        for (l, x) in v.iter_mut().enumerate() {
            if a.last_mask & (1 << l) == 0 {
                *x = 0.0;
            }
        }
    }
    std::ptr::copy_nonoverlapping(v.as_ptr(), a.out.add(ob * a.out_cb_stride + p * B), B);
}

/// The portable dense-conv kernel: any run length, plain loops.
unsafe fn portable_conv(a: &KArgs) {
    let (nb, p_len, xs) = (a.nb, a.p, a.xs);
    let mut acc = vec![[0f32; B]; nb * p_len];
    for p in 0..p_len {
        for ob in 0..nb {
            acc[p * nb + ob].copy_from_slice(std::slice::from_raw_parts(a.bias.add(ob * B), B));
        }
    }
    let mut w = a.w;
    for icb in 0..a.n_icb {
        let icn = if icb + 1 == a.n_icb {
            a.icn_last
        } else {
            a.icn_full
        };
        let blk = a.inp.add(icb * a.in_cb_stride);
        for t in 0..a.ntaps {
            let src = blk.offset(*a.taps.add(t));
            for ic in 0..icn {
                for p in 0..p_len {
                    let x = *src.add(p * xs + ic);
                    for ob in 0..nb {
                        let wv = std::slice::from_raw_parts(w.add(ob * B), B);
                        for (acc, wv) in acc[p * nb + ob].iter_mut().zip(wv) {
                            *acc += x * wv;
                        }
                    }
                }
                w = w.add(nb * B);
            }
        }
    }
    for p in 0..p_len {
        for ob in 0..nb {
            finish_lanes(a, ob, nb, p, &mut acc[p * nb + ob]);
        }
    }
}

/// The portable depthwise kernel.
unsafe fn portable_dw(a: &KArgs) {
    let (p_len, xs) = (a.p, a.xs);
    for p in 0..p_len {
        let mut acc = [0f32; B];
        acc.copy_from_slice(std::slice::from_raw_parts(a.bias, B));
        for t in 0..a.ntaps {
            let src = a.inp.offset(*a.taps.add(t)).add(p * xs);
            let (xv, wv) = (
                std::slice::from_raw_parts(src, B),
                std::slice::from_raw_parts(a.w.add(t * B), B),
            );
            for ((acc, x), w) in acc.iter_mut().zip(xv).zip(wv) {
                *acc += x * w;
            }
        }
        finish_lanes(a, 0, 1, p, &mut acc);
    }
}
