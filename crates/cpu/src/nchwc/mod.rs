//! The blocked channel layout (NCHWc, c = 16) of the compiled plans, as MLAS uses it.
//!
//! An activation [N, C, H, W] is stored as [N][⌈C/16⌉][H + 2h][W + 2h][16]: one AVX-512
//! vector holds 16 channels of one pixel, so a convolution broadcasts one input value
//! against a vector of 16 output channels' weights with no packing of the input at all,
//! and a depthwise convolution is one vector multiply-add per tap. The spatial halo `h`
//! (zeros, rewritten by every producer) stands for the consumers' zero padding, so the
//! kernels never test bounds. Channels past C in the last block are kept at zero.
//!
//! The first convolution of a network (3 input channels) reads a "planar" layout instead:
//! [N][C][H + 2h][W + 2h], one scalar per pixel, with the same halo.

pub mod conv;
pub mod dense;
#[cfg(target_arch = "x86_64")]
mod layout_x86;
pub(crate) mod ops;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Channels per block: one AVX-512 vector of f32.
pub const B: usize = 16;

/// Where a blocked tensor lives inside a buffer: its shape, halo and strides. Channel
/// slices of a bigger tensor (a concat's inputs, a split's outputs) are views with the
/// parent's image stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub halo: usize,
    /// Floats between images (≥ cb · block stride).
    pub image_stride: usize,
}

impl Geom {
    pub fn new(shape: [usize; 4], halo: usize) -> Geom {
        let [n, c, h, w] = shape;
        let mut g = Geom {
            n,
            c,
            h,
            w,
            halo,
            image_stride: 0,
        };
        g.image_stride = g.cb() * g.block_stride();
        g
    }
    pub fn cb(&self) -> usize {
        self.c.div_ceil(B)
    }
    pub fn pw(&self) -> usize {
        self.w + 2 * self.halo
    }
    pub fn ph(&self) -> usize {
        self.h + 2 * self.halo
    }
    pub fn row_stride(&self) -> usize {
        self.pw() * B
    }
    pub fn block_stride(&self) -> usize {
        self.ph() * self.row_stride()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Floats the whole tensor spans.
    pub fn len(&self) -> usize {
        if self.n == 0 {
            return 0;
        }
        (self.n - 1) * self.image_stride + self.cb() * self.block_stride()
    }
    /// Offset of pixel (y, x) (interior coordinates, may be negative into the halo) of
    /// channel block `cb` of image `n`.
    pub fn at(&self, n: usize, cb: usize, y: isize, x: isize) -> usize {
        let yy = (y + self.halo as isize) as usize;
        let xx = (x + self.halo as isize) as usize;
        n * self.image_stride + cb * self.block_stride() + yy * self.row_stride() + xx * B
    }
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
}

/// Floats below which a reorder stays on one thread (the hand-off costs more).
const REORDER_PARALLEL: usize = 1 << 15;

/// NCHW → blocked (writes the halo and the padded channels as zeros).
pub fn to_blocked(x: &[f32], g: &Geom, out: &mut [f32]) {
    assert!(x.len() >= g.n * g.c * g.h * g.w && out.len() >= g.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let (src, dst) = (ops::CPtr(x.as_ptr()), ops::Ptr(out.as_mut_ptr()));
        let blocks = g.n * g.cb();
        let one = |i: usize| {
            let (n, cb) = (i / g.cb(), i % g.cb());
            // SAFETY: AVX-512F is there; the lengths are checked above, and each block
            // writes only its own span of `out` (its halo and its interior).
            unsafe { layout_x86::to_blocked_block(src.get(), g, n, cb, dst.get()) }
        };
        if x.len() >= REORDER_PARALLEL {
            crate::team::parallel_for(blocks, &one);
        } else {
            (0..blocks).for_each(one);
        }
        return;
    }
    to_blocked_scalar(x, g, out)
}

fn to_blocked_scalar(x: &[f32], g: &Geom, out: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    for n in 0..g.n {
        for cb in 0..g.cb() {
            let cs = B.min(g.c - cb * B);
            zero_halo_block(g, n, cb, out);
            for y in 0..h {
                let o = g.at(n, cb, y as isize, 0);
                let row = &mut out[o..o + w * B];
                if cs < B {
                    row.fill(0.0);
                }
                for ci in 0..cs {
                    let src = &x[((n * g.c + cb * B + ci) * h + y) * w..][..w];
                    for (px, &v) in src.iter().enumerate() {
                        row[px * B + ci] = v;
                    }
                }
            }
        }
    }
}

/// Blocked → NCHW.
pub fn from_blocked(x: &[f32], g: &Geom, out: &mut [f32]) {
    assert!(x.len() >= g.len() && out.len() >= g.n * g.c * g.h * g.w);
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let (src, dst) = (ops::CPtr(x.as_ptr()), ops::Ptr(out.as_mut_ptr()));
        let blocks = g.n * g.cb();
        let one = |i: usize| {
            // SAFETY: AVX-512F is there; the lengths are checked above, and each block
            // writes only its own channels of `out`.
            unsafe {
                layout_x86::from_blocked_block(src.get(), g, i / g.cb(), i % g.cb(), dst.get())
            }
        };
        if out.len() >= REORDER_PARALLEL {
            crate::team::parallel_for(blocks, &one);
        } else {
            (0..blocks).for_each(one);
        }
        return;
    }
    from_blocked_scalar(x, g, out)
}

fn from_blocked_scalar(x: &[f32], g: &Geom, out: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    for n in 0..g.n {
        for cb in 0..g.cb() {
            let cs = B.min(g.c - cb * B);
            for y in 0..h {
                let o = g.at(n, cb, y as isize, 0);
                let row = &x[o..o + w * B];
                for ci in 0..cs {
                    let dst = &mut out[((n * g.c + cb * B + ci) * h + y) * w..][..w];
                    for (px, d) in dst.iter_mut().enumerate() {
                        *d = row[px * B + ci];
                    }
                }
            }
        }
    }
}

/// Zeros the halo of one channel block (top and bottom rows, left and right columns).
pub fn zero_halo_block(g: &Geom, n: usize, cb: usize, out: &mut [f32]) {
    let hl = g.halo;
    if hl == 0 {
        return;
    }
    let base = n * g.image_stride + cb * g.block_stride();
    let rs = g.row_stride();
    out[base..base + hl * rs].fill(0.0);
    let bottom = base + (hl + g.h) * rs;
    out[bottom..bottom + hl * rs].fill(0.0);
    for y in 0..g.h {
        let r = base + (hl + y) * rs;
        out[r..r + hl * B].fill(0.0);
        let right = r + (hl + g.w) * B;
        out[right..right + hl * B].fill(0.0);
    }
}

/// A planar (NCHW with a halo) tensor, what the first convolution reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planar {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub halo: usize,
}

impl Planar {
    pub fn pw(&self) -> usize {
        self.w + 2 * self.halo
    }
    pub fn plane(&self) -> usize {
        (self.h + 2 * self.halo) * self.pw()
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.plane()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn at(&self, n: usize, c: usize, y: isize, x: isize) -> usize {
        (n * self.c + c) * self.plane()
            + (y + self.halo as isize) as usize * self.pw()
            + (x + self.halo as isize) as usize
    }
}

/// NCHW → planar with a zero halo.
pub fn to_planar(x: &[f32], p: &Planar, out: &mut [f32]) {
    let (h, w) = (p.h, p.w);
    for plane in 0..p.n * p.c {
        let o = &mut out[plane * p.plane()..(plane + 1) * p.plane()];
        let hl = p.halo;
        o[..hl * p.pw()].fill(0.0);
        o[(hl + h) * p.pw()..].fill(0.0);
        for y in 0..h {
            let row = &mut o[(hl + y) * p.pw()..(hl + y + 1) * p.pw()];
            row[..hl].fill(0.0);
            row[hl + w..].fill(0.0);
            row[hl..hl + w].copy_from_slice(&x[(plane * h + y) * w..][..w]);
        }
    }
}

/// A 64-byte aligned, zero-initialised buffer of f32 (AVX-512 loads of whole cache lines).
pub struct AlignedBuf {
    raw: Vec<Align64>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([f32; B]);

impl AlignedBuf {
    pub fn zeros(len: usize) -> AlignedBuf {
        AlignedBuf {
            raw: vec![Align64([0.0; B]); len.div_ceil(B)],
            len,
        }
    }
    pub fn from_slice(v: &[f32]) -> AlignedBuf {
        let mut b = AlignedBuf::zeros(v.len());
        b.as_mut_slice().copy_from_slice(v);
        b
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: Align64 is repr(C) [f32; 16]; `raw` holds at least `len` floats.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr() as *const f32, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.raw.as_mut_ptr() as *mut f32, self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        AlignedBuf {
            raw: self.raw.clone(),
            len: self.len,
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} floats)", self.len)
    }
}

std::thread_local! {
    static PORTABLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the portable kernels only on this thread (tests compare both paths).
pub fn portable_only<R>(f: impl FnOnce() -> R) -> R {
    let before = PORTABLE_ONLY.with(|p| p.replace(true));
    let r = f();
    PORTABLE_ONLY.with(|p| p.set(before));
    r
}

/// Whether the AVX-512 kernels may run (the CPU check is done once).
pub fn has_avx512() -> bool {
    if PORTABLE_ONLY.with(|p| p.get()) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::env::var_os("SHADOWNET_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
