//! WGSL sources, generated per arithmetic, tile shape and operand layout.
//!
//! Every convolution, transposed convolution and dense layer runs as one tiled GEMM
//! `out[m, n] = Σ_k A[m, k] · B[k, n]` per (batch, group): A is the layer's weights,
//! re-laid out at load into zero-padded rows that the shader reads as `vec4`s, and B is
//! gathered from the activation (implicit im2col through a per-layer table of tap
//! offsets, or read as `vec4`s where the layout allows). A workgroup stages a BK-deep
//! slice of A and B in workgroup memory and each of its invocations keeps a TM × TN
//! block of accumulators in registers. Depthwise convolutions, where a GEMM would have one
//! row, have their own kernel: a workgroup stages an input patch and the taps of a few
//! channels and computes an output tile from them.
//!
//! WGSL has no 64-bit integers, so the exact ring Z/2^64 keeps a value as `vec2<u32>`
//! (low, high word) and builds each 32 × 64 → 64-bit product from 16-bit halves; see
//! [`RING_MAC`].

/// The arithmetic a shader computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arith {
    /// IEEE f32 (the paper scheme).
    F32,
    /// Z/2^64: u64 activations as (low, high) u32 pairs, i32 weights, wrapping.
    Ring,
}

/// Workgroup tile shapes. Each needs at most 12 KiB of workgroup memory, inside
/// WebGPU's guaranteed 16 KiB, and at most 256 invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 64 × 64 outputs: layers with many filters and pixels. f32 keeps 8 × 8 per
    /// invocation (64 invocations); the ring's accumulators are twice as wide and its
    /// multiply-add needs temporaries, so it keeps 4 × 4 (256 invocations).
    Big,
    /// 16 filters × 128 pixels, 1 × 8 per invocation: few filters per group.
    Narrow,
    /// 64 filters × 4 columns: dense layers on a single row (matrix-vector).
    Gemv,
}

impl Tile {
    /// (BM, BN, BK, TM, TN)
    pub fn dims(self, arith: Arith) -> (u32, u32, u32, u32, u32) {
        match self {
            Tile::Big if arith == Arith::Ring => (64, 64, 16, 4, 4),
            Tile::Big => (64, 64, 16, 8, 8),
            Tile::Narrow => (16, 128, 8, 1, 8),
            Tile::Gemv => (64, 4, 16, 1, 4),
        }
    }

    /// Rows and columns of the tile (the same in both arithmetics).
    pub fn bm(self) -> u32 {
        self.dims(Arith::F32).0
    }

    pub fn bn(self) -> u32 {
        self.dims(Arith::F32).1
    }

    /// The tile for a GEMM of `m` rows (filters per group) and `n` columns.
    pub fn choose(m: usize, n: usize) -> Tile {
        if n <= 4 {
            Tile::Gemv
        } else if m <= 16 {
            Tile::Narrow
        } else {
            Tile::Big
        }
    }
}

/// Weight rows are padded to a multiple of this (the deepest BK), so A loads need no
/// bounds checks and are whole `vec4`s.
pub const K_ALIGN: usize = 16;

/// How B (the activation side) is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Implicit im2col of a (transposed-phase) convolution through a table of taps.
    Gather,
    /// A 1×1, stride-1, unpadded convolution: B rows are input planes, read as `vec4`s.
    Pointwise,
    /// x [rows, K] · W [K, M]: B[k, n] = x[n, k]; the output is [rows, M].
    Dense,
}

/// Which shader a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderKey {
    Gemm {
        arith: Arith,
        tile: Tile,
        mode: Mode,
    },
    Depthwise {
        arith: Arith,
    },
}

/// Number of u32 words in every shader's parameter block (a 128-byte uniform).
pub const PARAM_WORDS: usize = 32;

/// Parameters of a GEMM pass, in the order of the WGSL struct `P`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmParams {
    /// Filters per group (rows of A), output columns (pixels or rows), depth.
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// Row length of A (K padded to [`K_ALIGN`]).
    pub kpad: u32,
    /// Offset of this pass's A in the weight buffer and the stride between groups, in
    /// elements (multiples of 4).
    pub a_off: u32,
    pub a_gs: u32,
    /// Offset of this pass's taps in the table.
    pub t_off: u32,
    pub groups: u32,
    /// Input channels, channels per group, input height and width.
    pub cin: u32,
    pub cg: u32,
    pub h: u32,
    pub w: u32,
    /// Column n is (n / ncols, n % ncols); its window starts at
    /// (row · ys − yo, col · xs − xo) in the input.
    pub ncols: u32,
    pub ys: u32,
    pub xs: u32,
    pub yo: i32,
    pub xo: i32,
    /// ... and is stored at (row · oys + oyo, col · oxs + oxo) of an output plane.
    pub oys: u32,
    pub oyo: u32,
    pub oxs: u32,
    pub oxo: u32,
    /// Output channels, output plane size and width.
    pub o: u32,
    pub ohw: u32,
    pub ow: u32,
}

impl GemmParams {
    pub fn words(&self) -> [u32; PARAM_WORDS] {
        let v = [
            self.m,
            self.n,
            self.k,
            self.kpad,
            self.a_off,
            self.a_gs,
            self.t_off,
            self.groups,
            self.cin,
            self.cg,
            self.h,
            self.w,
            self.ncols,
            self.ys,
            self.xs,
            self.yo as u32,
            self.xo as u32,
            self.oys,
            self.oyo,
            self.oxs,
            self.oxo,
            self.o,
            self.ohw,
            self.ow,
        ];
        let mut w = [0u32; PARAM_WORDS];
        w[..v.len()].copy_from_slice(&v);
        w
    }
}

const GEMM_PARAMS_WGSL: &str = "
struct P {
    m: u32, n: u32, k: u32, kpad: u32,
    a_off: u32, a_gs: u32, t_off: u32, groups: u32,
    cin: u32, cg: u32, h: u32, w: u32,
    ncols: u32, ys: u32, xs: u32, yo: i32,
    xo: i32, oys: u32, oyo: u32, oxs: u32,
    oxo: u32, o: u32, ohw: u32, ow: u32,
    pad0: vec4<u32>, pad1: vec4<u32>,
}
";

/// Parameters of a depthwise pass, in the order of the WGSL struct `D`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DepthwiseParams {
    pub cin: u32,
    /// Output channels per input channel (the depth multiplier).
    pub og: u32,
    pub o: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub sh: u32,
    pub sw: u32,
    pub dh: u32,
    pub dw: u32,
    pub pt: u32,
    pub pl: u32,
    /// Output tile side (a power of two up to 16) and its log2, channels per workgroup
    /// ((16 / side)^2), input patch, tiles per row.
    pub side: u32,
    pub lside: u32,
    pub cpw: u32,
    pub ph: u32,
    pub pw: u32,
    pub tiles_x: u32,
}

impl DepthwiseParams {
    pub fn words(&self) -> [u32; PARAM_WORDS] {
        let v = [
            self.cin,
            self.og,
            self.o,
            self.h,
            self.w,
            self.oh,
            self.ow,
            self.kh,
            self.kw,
            self.sh,
            self.sw,
            self.dh,
            self.dw,
            self.pt,
            self.pl,
            self.side,
            self.lside,
            self.cpw,
            self.ph,
            self.pw,
            self.tiles_x,
        ];
        let mut w = [0u32; PARAM_WORDS];
        w[..v.len()].copy_from_slice(&v);
        w
    }
}

const DEPTHWISE_PARAMS_WGSL: &str = "
struct D {
    cin: u32, og: u32, o: u32, h: u32,
    w: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, dh: u32,
    dw: u32, pt: u32, pl: u32, side: u32,
    lside: u32, cpw: u32, ph: u32, pw: u32,
    tiles_x: u32, pad0: u32, pad1: u32, pad2: u32,
    pad3: vec4<u32>, pad4: vec4<u32>,
}
";

/// Depthwise workgroup memory: input patch values and taps.
pub fn depthwise_patch_cap(arith: Arith) -> usize {
    match arith {
        Arith::F32 => 3072,
        Arith::Ring => 1536,
    }
}
pub const DEPTHWISE_TAP_CAP: usize = 512;

/// One exact multiply-add over Z/2^64: `acc + w · x` with w an i32 (sign-extended) and x a
/// u64 = (xl, xh). With wu the bits of w: w·x ≡ wu·xl + 2^32·(wu·xh − [w<0]·xl) (mod 2^64),
/// and the 64-bit wu·xl is assembled from the four 16 × 16-bit products of the halves
/// (a0, a1 of wu; b0, b1 of xl), which cannot overflow a u32. `nm` is all ones when w < 0.
/// The halves are split once per staged value, outside this function, and reused across
/// the invocation's register tile.
pub const RING_MAC: &str = "
fn mac(acc: vec2<u32>, wu: u32, a0: u32, a1: u32, nm: u32, xl: u32, xh: u32, b0: u32, b1: u32) -> vec2<u32> {
    let lo = wu * xl;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u) + wu * xh - (xl & nm);
    let nlo = acc.x + lo;
    return vec2<u32>(nlo, acc.y + hi + select(0u, 1u, nlo < lo));
}
";

/// The WGSL of `key`.
pub fn source(key: ShaderKey) -> String {
    match key {
        ShaderKey::Gemm { arith, tile, mode } => gemm(arith, tile, mode),
        ShaderKey::Depthwise { arith } => depthwise(arith),
    }
}

/// Substitutes `$NAME` tokens, longest names first (so `$BK` never eats part of a longer
/// name that starts with it).
fn fill(template: &str, subs: &[(&str, String)]) -> String {
    let mut subs: Vec<&(&str, String)> = subs.iter().collect();
    subs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let mut s = template.to_string();
    for (k, v) in subs {
        s = s.replace(&format!("${k}"), v);
    }
    s
}

fn gemm(arith: Arith, tile: Tile, mode: Mode) -> String {
    let (bm, bn, bk, tm, tn) = tile.dims(arith);
    let tx = bn / tn;
    let ty = bm / tm;
    let wg = tx * ty;
    // Gather / dense B loads give each invocation one column.
    assert_eq!(wg % bn, 0, "a tile needs a multiple of BN invocations");
    let ring = arith == Arith::Ring;
    // Element types: staged A, staged B / accumulator, weight vectors, activations.
    let (sa, sb, wvec, zero_b) = if ring {
        ("u32", "vec2<u32>", "vec4<i32>", "vec2<u32>(0u, 0u)")
    } else {
        ("f32", "f32", "vec4<f32>", "0.0")
    };
    let x_elem = match (mode, ring) {
        (Mode::Pointwise, false) => "vec4<f32>",
        (Mode::Pointwise, true) => "vec4<u32>",
        (_, false) => "f32",
        (_, true) => "vec2<u32>",
    };
    let a_store = if ring {
        "As[(c * 4u) * $BMu + r] = bitcast<u32>(v.x);
        As[(c * 4u + 1u) * $BMu + r] = bitcast<u32>(v.y);
        As[(c * 4u + 2u) * $BMu + r] = bitcast<u32>(v.z);
        As[(c * 4u + 3u) * $BMu + r] = bitcast<u32>(v.w);"
    } else {
        "As[(c * 4u) * $BMu + r] = v.x;
        As[(c * 4u + 1u) * $BMu + r] = v.y;
        As[(c * 4u + 2u) * $BMu + r] = v.z;
        As[(c * 4u + 3u) * $BMu + r] = v.w;"
    };
    let b_setup = match mode {
        Mode::Gather => {
            "let nn = lid % $BNu;
    let kr = lid / $BNu;
    let ncol = n0 + nn;
    let nvalid = ncol < p.n;
    let by = i32((ncol / p.ncols) * p.ys) - p.yo;
    let bx = i32((ncol % p.ncols) * p.xs) - p.xo;
    let xbase = (b * p.cin + gi * p.cg) * p.h * p.w;"
        }
        Mode::Dense => {
            "let nn = lid % $BNu;
    let kr = lid / $BNu;
    let ncol = n0 + nn;
    let nvalid = ncol < p.n;"
        }
        Mode::Pointwise => "let xplane = b * p.cin + gi * p.cg;",
    };
    let b_load = match mode {
        Mode::Gather => {
            "for (var j = 0u; j < $BPASSESu; j++) {
            let kk = kr + j * $RPu;
            if (kk < $BKu) {
                let k = k0 + kk;
                var v = $ZB;
                if (nvalid && k < p.k) {
                    let e = tab[p.t_off + k];
                    let iy = by + e.x;
                    let ix = bx + e.y;
                    if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                        v = xb[xbase + u32(e.z) + u32(iy) * p.w + u32(ix)];
                    }
                }
                Bs[kk * $BNu + nn] = v;
            }
        }"
        }
        Mode::Dense => {
            "for (var j = 0u; j < $BPASSESu; j++) {
            let kk = kr + j * $RPu;
            if (kk < $BKu) {
                let k = k0 + kk;
                var v = $ZB;
                if (nvalid && k < p.k) {
                    v = xb[ncol * p.k + k];
                }
                Bs[kk * $BNu + nn] = v;
            }
        }"
        }
        Mode::Pointwise => {
            if ring {
                "for (var i = lid; i < $BKu * $BNu / 2u; i += $WGu) {
            let kk = i / ($BNu / 2u);
            let c = i % ($BNu / 2u);
            let k = k0 + kk;
            let n = n0 + c * 2u;
            var v = vec4<u32>(0u, 0u, 0u, 0u);
            if (k < p.k && n < p.n) {
                v = xb[((xplane + k) * p.ohw + n) / 2u];
            }
            Bs[kk * $BNu + c * 2u] = v.xy;
            Bs[kk * $BNu + c * 2u + 1u] = v.zw;
        }"
            } else {
                "for (var i = lid; i < $BKu * $BNu / 4u; i += $WGu) {
            let kk = i / ($BNu / 4u);
            let c = i % ($BNu / 4u);
            let k = k0 + kk;
            let n = n0 + c * 4u;
            var v = vec4<f32>(0.0, 0.0, 0.0, 0.0);
            if (k < p.k && n < p.n) {
                v = xb[((xplane + k) * p.ohw + n) / 4u];
            }
            Bs[kk * $BNu + c * 4u] = v.x;
            Bs[kk * $BNu + c * 4u + 1u] = v.y;
            Bs[kk * $BNu + c * 4u + 2u] = v.z;
            Bs[kk * $BNu + c * 4u + 3u] = v.w;
        }"
            }
        }
    };
    // The register tile as named scalars, unrolled here, so that no driver compiler has
    // to promote a loop-indexed private array to registers (on lavapipe this alone made
    // the f32 GEMM ~1.6x faster, in an unpaired run on a busy machine).
    let mut inner = String::new();
    for i in 0..tm {
        if ring {
            inner += &format!(
                "let w{i} = As[kk * $BMu + ty + {}u];
            let a0_{i} = w{i} & 0xffffu;
            let a1_{i} = w{i} >> 16u;
            let nm{i} = bitcast<u32>(bitcast<i32>(w{i}) >> 31u);
            ",
                i * ty
            );
        } else {
            inner += &format!("let a{i} = As[kk * $BMu + ty + {}u];\n            ", i * ty);
        }
    }
    for j in 0..tn {
        if ring {
            inner += &format!(
                "let x{j} = Bs[kk * $BNu + tx + {}u];
            let b0_{j} = x{j}.x & 0xffffu;
            let b1_{j} = x{j}.x >> 16u;
            ",
                j * tx
            );
        } else {
            inner += &format!("let x{j} = Bs[kk * $BNu + tx + {}u];\n            ", j * tx);
        }
    }
    for i in 0..tm {
        for j in 0..tn {
            if ring {
                inner += &format!(
                    "acc{i}_{j} = mac(acc{i}_{j}, w{i}, a0_{i}, a1_{i}, nm{i}, x{j}.x, x{j}.y, b0_{j}, b1_{j});\n            "
                );
            } else {
                inner += &format!("acc{i}_{j} = fma(a{i}, x{j}, acc{i}_{j});\n            ");
            }
        }
    }
    let mut accs = String::new();
    for i in 0..tm {
        for j in 0..tn {
            accs += &format!("var acc{i}_{j} = $ZB;\n    ");
        }
    }
    let store_one = match mode {
        Mode::Dense => "yb[n * p.m + m] = $ACCV;",
        _ => {
            "yb[(b * p.o + gi * p.m + m) * p.ohw + ((n / p.ncols) * p.oys + p.oyo) * p.ow + (n % p.ncols) * p.oxs + p.oxo] = $ACCV;"
        }
    };
    let mut store = String::new();
    for i in 0..tm {
        for j in 0..tn {
            store += &format!(
                "{{
        let m = m0 + ty + {}u;
        let n = n0 + tx + {}u;
        if (m < p.m && n < p.n) {{
            {}
        }}
    }}
    ",
                i * ty,
                j * tx,
                store_one.replace("$ACCV", &format!("acc{i}_{j}"))
            );
        }
    }
    let table = if mode == Mode::Gather {
        "@group(0) @binding(4) var<storage, read> tab: array<vec4<i32>>;"
    } else {
        ""
    };
    let rp = (wg / bn).max(1); // B rows one pass of the workgroup loads (gather / dense)
    let template = "
$PARAMS
$MAC
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> wa: array<$WVEC>;
@group(0) @binding(2) var<storage, read> xb: array<$XE>;
@group(0) @binding(3) var<storage, read_write> yb: array<$SB>;
$TABLE

var<workgroup> As: array<$SA, $ASIZE>;
var<workgroup> Bs: array<$SB, $BSIZE>;

@compute @workgroup_size($WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let gi = wg.z % p.groups;
    let b = wg.z / p.groups;
    let m0 = wg.y * $BMu;
    let n0 = wg.x * $BNu;
    let tx = lid % $TXu;
    let ty = lid / $TXu;
    $BSETUP
    // A rows of this tile, in vec4 units (a_off, a_gs and kpad are multiples of 4).
    let a_base = (p.a_off + gi * p.a_gs + m0 * p.kpad) / 4u;
    let a_row = p.kpad / 4u;
    $ACCS
    for (var k0 = 0u; k0 < p.kpad; k0 += $BKu) {
        for (var i = lid; i < $BMu * $BKu / 4u; i += $WGu) {
            let r = i / ($BKu / 4u);
            let c = i % ($BKu / 4u);
            let v = wa[a_base + r * a_row + k0 / 4u + c];
            $ASTORE
        }
        $BLOAD
        workgroupBarrier();
        for (var kk = 0u; kk < $BKu; kk++) {
            $INNER
        }
        workgroupBarrier();
    }
    $STORE
}
";
    // Statements first: they contain tokens filled in the second round.
    let s = fill(
        template,
        &[
            ("BSETUP", b_setup.into()),
            ("BLOAD", b_load.into()),
            ("INNER", inner),
            ("STORE", store),
            ("ACCS", accs),
            ("ASTORE", a_store.into()),
        ],
    );
    fill(
        &s,
        &[
            ("PARAMS", GEMM_PARAMS_WGSL.into()),
            ("MAC", if ring { RING_MAC.into() } else { String::new() }),
            ("TABLE", table.into()),
            ("WVEC", wvec.into()),
            ("XE", x_elem.into()),
            ("SA", sa.into()),
            ("SB", sb.into()),
            ("ZB", zero_b.into()),
            ("ASIZE", (bm * bk).to_string()),
            ("BSIZE", (bk * bn).to_string()),
            ("BPASSES", bk.div_ceil(rp).to_string()),
            ("RP", rp.to_string()),
            ("BM", bm.to_string()),
            ("BN", bn.to_string()),
            ("BK", bk.to_string()),
            ("TX", tx.to_string()),
            ("WG", wg.to_string()),
        ],
    )
}

/// A 16 × 16 workgroup holds (16 / side)^2 channels' side × side output tiles, one
/// output per invocation: the tiles' input patches and taps are staged in workgroup
/// memory and every index is a shift or a mask (no integer division per element, which
/// GPUs and software rasterisers alike emulate slowly).
fn depthwise(arith: Arith) -> String {
    let ring = arith == Arith::Ring;
    let (sa, sb, welem, zero_a, zero_b, load_w) = if ring {
        (
            "u32",
            "vec2<u32>",
            "i32",
            "0u",
            "vec2<u32>(0u, 0u)",
            "bitcast<u32>(wa[oc * kk + t])",
        )
    } else {
        ("f32", "f32", "f32", "0.0", "0.0", "wa[oc * kk + t]")
    };
    let tap = if ring {
        "let w = wts[wrow + ky * p.kw + kx];
                let x = tilein[prow + (ly * p.sh + ky * p.dh) * p.pw + lx * p.sw + kx * p.dw];
                acc = mac(acc, w, w & 0xffffu, w >> 16u, bitcast<u32>(bitcast<i32>(w) >> 31u), x.x, x.y, x.x & 0xffffu, x.x >> 16u);"
    } else {
        "acc = fma(wts[wrow + ky * p.kw + kx], tilein[prow + (ly * p.sh + ky * p.dh) * p.pw + lx * p.sw + kx * p.dw], acc);"
    };
    let template = "
$PARAMS
$MAC
@group(0) @binding(0) var<uniform> p: D;
@group(0) @binding(1) var<storage, read> wa: array<$WE>;
@group(0) @binding(2) var<storage, read> xb: array<$SB>;
@group(0) @binding(3) var<storage, read_write> yb: array<$SB>;

var<workgroup> tilein: array<$SB, $PCAP>;
var<workgroup> wts: array<$SA, $WCAP>;

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) li: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let b = wg.z;
    let sub = (li.y >> p.lside) * (16u >> p.lside) + (li.x >> p.lside);
    let ly = li.y & (p.side - 1u);
    let lx = li.x & (p.side - 1u);
    let oc = wg.y * p.cpw + sub;
    let live = oc < p.o;
    let oy0 = (wg.x / p.tiles_x) * p.side;
    let ox0 = (wg.x % p.tiles_x) * p.side;
    let prow = sub * p.ph * p.pw;
    let iy0 = i32(oy0 * p.sh) - i32(p.pt);
    let ix0 = i32(ox0 * p.sw) - i32(p.pl);
    let xplane = (b * p.cin + oc / p.og) * p.h * p.w;
    for (var r = ly; r < p.ph; r += p.side) {
        let iy = iy0 + i32(r);
        for (var q = lx; q < p.pw; q += p.side) {
            let ix = ix0 + i32(q);
            var v = $ZB;
            if (live && iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                v = xb[xplane + u32(iy) * p.w + u32(ix)];
            }
            tilein[prow + r * p.pw + q] = v;
        }
    }
    let kk = p.kh * p.kw;
    let wrow = sub * kk;
    for (var t = ly * p.side + lx; t < kk; t += p.side * p.side) {
        var v = $ZA;
        if (live) {
            v = $LOADW;
        }
        wts[wrow + t] = v;
    }
    workgroupBarrier();
    let oy = oy0 + ly;
    let ox = ox0 + lx;
    if (live && oy < p.oh && ox < p.ow) {
        var acc = $ZB;
        for (var ky = 0u; ky < p.kh; ky++) {
            for (var kx = 0u; kx < p.kw; kx++) {
                $TAP
            }
        }
        yb[((b * p.o + oc) * p.oh + oy) * p.ow + ox] = acc;
    }
}
";
    let s = fill(template, &[("TAP", tap.into()), ("LOADW", load_w.into())]);
    fill(
        &s,
        &[
            ("PARAMS", DEPTHWISE_PARAMS_WGSL.into()),
            ("MAC", if ring { RING_MAC.into() } else { String::new() }),
            ("WE", welem.into()),
            ("SA", sa.into()),
            ("SB", sb.into()),
            ("ZA", zero_a.into()),
            ("ZB", zero_b.into()),
            ("PCAP", depthwise_patch_cap(arith).to_string()),
            ("WCAP", DEPTHWISE_TAP_CAP.to_string()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shader parses and validates with naga (no GPU needed).
    #[test]
    fn every_shader_validates() {
        let mut keys = vec![];
        for arith in [Arith::F32, Arith::Ring] {
            keys.push(ShaderKey::Depthwise { arith });
            for tile in [Tile::Big, Tile::Narrow, Tile::Gemv] {
                for mode in [Mode::Gather, Mode::Pointwise, Mode::Dense] {
                    keys.push(ShaderKey::Gemm { arith, tile, mode });
                }
            }
        }
        for key in keys {
            let src = source(key);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{key:?}: {}\n{src}", e.emit_to_string(&src)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{key:?}: {e:?}"));
        }
    }

    /// The ring multiply-add, run on the CPU with u32 wrapping arithmetic, is exact.
    #[test]
    fn ring_mac_formula_is_exact() {
        fn mac(acc: u64, w: i32, x: u64) -> u64 {
            let wu = w as u32;
            let (a0, a1) = (wu & 0xffff, wu >> 16);
            let nm = (w >> 31) as u32;
            let (xl, xh) = (x as u32, (x >> 32) as u32);
            let (b0, b1) = (xl & 0xffff, xl >> 16);
            let lo = wu.wrapping_mul(xl);
            let p00 = a0 * b0;
            let p01 = a0 * b1;
            let p10 = a1 * b0;
            let p11 = a1 * b1;
            let mid = (p00 >> 16) + (p01 & 0xffff) + (p10 & 0xffff);
            let hi = (p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16))
                .wrapping_add(wu.wrapping_mul(xh))
                .wrapping_sub(xl & nm);
            let (al, ah) = (acc as u32, (acc >> 32) as u32);
            let nlo = al.wrapping_add(lo);
            let nhi = ah.wrapping_add(hi).wrapping_add((nlo < lo) as u32);
            (nhi as u64) << 32 | nlo as u64
        }
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let edges_w = [0, 1, -1, i32::MAX, i32::MIN, 0xffff, -0x10000];
        let edges_x = [0, 1, u64::MAX, 1 << 63, 0xffff_ffff, 1 << 32];
        for &w in &edges_w {
            for &x in &edges_x {
                for &acc in &edges_x {
                    let want = acc.wrapping_add((w as i64 as u64).wrapping_mul(x));
                    assert_eq!(mac(acc, w, x), want, "w {w} x {x} acc {acc}");
                }
            }
        }
        for _ in 0..100_000 {
            let (acc, w, x) = (next(), next() as i32, next());
            let want = acc.wrapping_add((w as i64 as u64).wrapping_mul(x));
            assert_eq!(mac(acc, w, x), want);
        }
    }
}
