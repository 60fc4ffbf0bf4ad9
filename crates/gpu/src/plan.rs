//! How a layer maps onto the shaders: weight re-layout, tap tables, passes and grids.
//! Pure host code, so every decision here is testable without a GPU.
use shadownet_ir::{Conv, ConvTranspose};
use shadownet_trusted::LinearKind;

use crate::shaders::{
    depthwise_patch_cap, Arith, DepthwiseParams, GemmParams, Mode, ShaderKey, Tile,
    DEPTHWISE_TAP_CAP, K_ALIGN, PARAM_WORDS,
};

/// Most workgroups a dispatch may have along one axis (WebGPU's default limit).
pub const MAX_GROUPS: u32 = 65_535;

/// One dispatch.
#[derive(Clone, Debug)]
pub struct PassPlan {
    pub key: ShaderKey,
    pub params: [u32; PARAM_WORDS],
    pub grid: [u32; 3],
}

/// Everything a layer needs on the device for one arithmetic.
#[derive(Clone, Debug)]
pub struct LayerPlan<T> {
    /// The weights in the layout the passes read (zero-padded GEMM rows, or as given).
    pub weights: Vec<T>,
    /// Gather passes' taps: (row offset, column offset, channel offset, 0).
    pub table: Vec<[i32; 4]>,
    pub passes: Vec<PassPlan>,
}

fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

fn u32_of(v: usize, what: &str) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v} does not fit the GPU's 32-bit indices"))
}

fn grid(x: usize, y: usize, z: usize) -> Result<[u32; 3], String> {
    let g = [u32_of(x, "grid")?, u32_of(y, "grid")?, u32_of(z, "grid")?];
    if g.iter().any(|&v| v > MAX_GROUPS) {
        return Err(format!(
            "needs a grid of {g:?} workgroups, over the limit of {MAX_GROUPS} per axis"
        ));
    }
    Ok(g)
}

/// Plans one layer. The shapes must already have been checked with `infer_shapes`.
pub fn plan<T: Copy + Default>(
    kind: &LinearKind,
    arith: Arith,
    input: &[usize],
    wshape: &[usize],
    w: &[T],
    output: &[usize],
) -> Result<LayerPlan<T>, String> {
    // Every flat index the shaders form is a u32.
    for (what, n) in [
        ("input", input.iter().product::<usize>()),
        ("output", output.iter().product::<usize>()),
        ("weight", w.len()),
    ] {
        u32_of(n, &format!("{what} size"))?;
    }
    match kind {
        LinearKind::Conv(c) => {
            if c.groups > 1 && wshape[1] == 1 {
                if let Some(p) = depthwise(c, arith, input, wshape, w, output)? {
                    return Ok(p);
                }
            }
            conv(c, arith, input, wshape, w, output)
        }
        LinearKind::ConvTranspose(c) => conv_transpose(c, arith, input, wshape, w, output),
        LinearKind::MatMul => dense(arith, input, wshape, w),
    }
}

/// A[gi][m][k] (rows padded to `mpad`, depth to `kpad`) from `at(gi, m, k)`.
fn gemm_a<T: Copy + Default>(
    groups: usize,
    m: usize,
    k: usize,
    mpad: usize,
    kpad: usize,
    at: impl Fn(usize, usize, usize) -> T,
) -> Vec<T> {
    let mut a = vec![T::default(); groups * mpad * kpad];
    for gi in 0..groups {
        for mi in 0..m {
            let row = &mut a[(gi * mpad + mi) * kpad..][..k];
            for (ki, v) in row.iter_mut().enumerate() {
                *v = at(gi, mi, ki);
            }
        }
    }
    a
}

fn conv<T: Copy + Default>(
    c: &Conv,
    arith: Arith,
    input: &[usize],
    wshape: &[usize],
    w: &[T],
    output: &[usize],
) -> Result<LayerPlan<T>, String> {
    let (n, cin, h, wd) = (input[0], input[1], input[2], input[3]);
    let (o, cg, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
    let (oh, ow) = (output[2], output[3]);
    let g = c.groups;
    let og = o / g;
    let k = cg * kh * kw;
    let hw_out = oh * ow;
    let tile = Tile::choose(og, hw_out);
    let kpad = round_up(k, K_ALIGN);
    let mpad = round_up(og, tile.bm() as usize);
    let weights = gemm_a(g, og, k, mpad, kpad, |gi, m, ki| w[(gi * og + m) * k + ki]);
    let vw = match arith {
        Arith::F32 => 4,
        Arith::Ring => 2,
    };
    let pointwise =
        [kh, kw] == [1, 1] && c.stride == [1, 1] && c.pads == [0; 4] && hw_out.is_multiple_of(vw);
    let mut table = Vec::new();
    if !pointwise {
        for ci in 0..cg {
            for ky in 0..kh {
                for kx in 0..kw {
                    table.push([
                        i32::try_from(ky * c.dilation[0]).map_err(|e| e.to_string())?,
                        i32::try_from(kx * c.dilation[1]).map_err(|e| e.to_string())?,
                        i32::try_from(ci * h * wd).map_err(|e| e.to_string())?,
                        0,
                    ]);
                }
            }
        }
    }
    let p = GemmParams {
        m: u32_of(og, "filters")?,
        n: u32_of(hw_out, "pixels")?,
        k: u32_of(k, "depth")?,
        kpad: u32_of(kpad, "depth")?,
        a_off: 0,
        a_gs: u32_of(mpad * kpad, "weights")?,
        t_off: 0,
        groups: u32_of(g, "groups")?,
        cin: u32_of(cin, "channels")?,
        cg: u32_of(cg, "channels")?,
        h: u32_of(h, "height")?,
        w: u32_of(wd, "width")?,
        ncols: u32_of(ow, "width")?,
        ys: u32_of(c.stride[0], "stride")?,
        xs: u32_of(c.stride[1], "stride")?,
        yo: i32::try_from(c.pads[0]).map_err(|e| e.to_string())?,
        xo: i32::try_from(c.pads[1]).map_err(|e| e.to_string())?,
        oys: 1,
        oyo: 0,
        oxs: 1,
        oxo: 0,
        o: u32_of(o, "channels")?,
        ohw: u32_of(hw_out, "pixels")?,
        ow: u32_of(ow, "width")?,
    };
    let mode = if pointwise {
        Mode::Pointwise
    } else {
        Mode::Gather
    };
    Ok(LayerPlan {
        weights,
        table,
        passes: vec![PassPlan {
            key: ShaderKey::Gemm { arith, tile, mode },
            params: p.words(),
            grid: grid(
                hw_out.div_ceil(tile.bn() as usize),
                mpad / tile.bm() as usize,
                n * g,
            )?,
        }],
    })
}

/// The depthwise kernel's tiling, or `None` when one output's window does not fit its
/// workgroup memory (huge dilated kernels: the GEMM path takes those).
fn depthwise<T: Copy + Default>(
    c: &Conv,
    arith: Arith,
    input: &[usize],
    wshape: &[usize],
    w: &[T],
    output: &[usize],
) -> Result<Option<LayerPlan<T>>, String> {
    let (n, cin, h, wd) = (input[0], input[1], input[2], input[3]);
    let (o, kh, kw) = (wshape[0], wshape[2], wshape[3]);
    let (oh, ow) = (output[2], output[3]);
    let cap = depthwise_patch_cap(arith);
    let taps = kh * kw;
    if taps > DEPTHWISE_TAP_CAP {
        return Ok(None);
    }
    let window = |side: usize| {
        (
            (side - 1) * c.stride[0] + (kh - 1) * c.dilation[0] + 1,
            (side - 1) * c.stride[1] + (kw - 1) * c.dilation[1] + 1,
        )
    };
    // The smallest power-of-two tile covering the plane (up to 16), so small planes share
    // a workgroup among channels; a larger one where that does not fit.
    let mut side = oh.max(ow).min(16).next_power_of_two();
    let fits = |side: usize| {
        let cpw = (16 / side) * (16 / side);
        let (ph, pw) = window(side);
        cpw * ph * pw <= cap && cpw * taps <= DEPTHWISE_TAP_CAP
    };
    while !fits(side) {
        if side == 16 {
            return Ok(None);
        }
        side *= 2;
    }
    let cpw = (16 / side) * (16 / side);
    let (ph, pw) = window(side);
    let tiles_x = ow.div_ceil(side);
    let tiles_y = oh.div_ceil(side);
    let p = DepthwiseParams {
        cin: u32_of(cin, "channels")?,
        og: u32_of(o / cin, "multiplier")?,
        o: u32_of(o, "channels")?,
        h: u32_of(h, "height")?,
        w: u32_of(wd, "width")?,
        oh: u32_of(oh, "height")?,
        ow: u32_of(ow, "width")?,
        kh: u32_of(kh, "kernel")?,
        kw: u32_of(kw, "kernel")?,
        sh: u32_of(c.stride[0], "stride")?,
        sw: u32_of(c.stride[1], "stride")?,
        dh: u32_of(c.dilation[0], "dilation")?,
        dw: u32_of(c.dilation[1], "dilation")?,
        pt: u32_of(c.pads[0], "pad")?,
        pl: u32_of(c.pads[1], "pad")?,
        side: side as u32,
        lside: side.trailing_zeros(),
        cpw: cpw as u32,
        ph: ph as u32,
        pw: pw as u32,
        tiles_x: u32_of(tiles_x, "tiles")?,
    };
    let mut weights = w.to_vec();
    // Whole vec4s at the end, like every other weight buffer.
    weights.resize(round_up(w.len().max(1), 4), T::default());
    Ok(Some(LayerPlan {
        weights,
        table: Vec::new(),
        passes: vec![PassPlan {
            key: ShaderKey::Depthwise { arith },
            params: p.words(),
            grid: grid(tiles_x * tiles_y, o.div_ceil(cpw), n)?,
        }],
    }))
}

/// A transposed convolution as one GEMM per output phase (y mod stride, x mod stride):
/// within a phase every output pixel gathers the same taps, so no multiply is spent on
/// the zeros a scatter-free formulation would otherwise insert between input pixels.
fn conv_transpose<T: Copy + Default>(
    c: &ConvTranspose,
    arith: Arith,
    input: &[usize],
    wshape: &[usize],
    w: &[T],
    output: &[usize],
) -> Result<LayerPlan<T>, String> {
    let (n, cin, h, wd) = (input[0], input[1], input[2], input[3]);
    let (og, kh, kw) = (wshape[1], wshape[2], wshape[3]);
    let g = c.groups;
    let cg = cin / g;
    let o = og * g;
    let (oh, ow) = (output[2], output[3]);
    let [sh, sw] = c.stride;
    // Taps of phase r along one axis: those with (r + pad − k·dil) ≡ 0 (mod stride),
    // with the input offset (r + pad − k·dil) / stride they read at.
    let taps = |r: usize, pad: usize, dil: usize, stride: usize, kn: usize| -> Vec<(usize, i64)> {
        (0..kn)
            .filter_map(|k| {
                let num = r as i64 + pad as i64 - (k * dil) as i64;
                (num.rem_euclid(stride as i64) == 0).then_some((k, num / stride as i64))
            })
            .collect()
    };
    struct Phase {
        ry: usize,
        rx: usize,
        ny: usize,
        nx: usize,
        ty: Vec<(usize, i64)>,
        tx: Vec<(usize, i64)>,
    }
    let mut phases = Vec::new();
    for ry in 0..sh.min(oh) {
        for rx in 0..sw.min(ow) {
            phases.push(Phase {
                ry,
                rx,
                ny: (oh - ry).div_ceil(sh),
                nx: (ow - rx).div_ceil(sw),
                ty: taps(ry, c.pads[0], c.dilation[0], sh, kh),
                tx: taps(rx, c.pads[1], c.dilation[1], sw, kw),
            });
        }
    }
    let max_n = phases.iter().map(|p| p.ny * p.nx).max().unwrap_or(0);
    let tile = Tile::choose(og, max_n);
    let mpad = round_up(og, tile.bm() as usize);
    let mut weights = Vec::new();
    let mut table = Vec::new();
    let mut passes = Vec::new();
    for ph in &phases {
        let k = cg * ph.ty.len() * ph.tx.len();
        let kpad = round_up(k, K_ALIGN);
        let a_off = weights.len();
        let t_off = table.len();
        let a = gemm_a(g, og, k, mpad, kpad, |gi, m, ki| {
            let ci = ki / (ph.ty.len() * ph.tx.len());
            let r = ki % (ph.ty.len() * ph.tx.len());
            let (ky, kx) = (ph.ty[r / ph.tx.len()].0, ph.tx[r % ph.tx.len()].0);
            w[(((gi * cg + ci) * og + m) * kh + ky) * kw + kx]
        });
        weights.extend_from_slice(&a);
        for ci in 0..cg {
            for &(_, dy) in &ph.ty {
                for &(_, dx) in &ph.tx {
                    table.push([
                        i32::try_from(dy).map_err(|e| e.to_string())?,
                        i32::try_from(dx).map_err(|e| e.to_string())?,
                        i32::try_from(ci * h * wd).map_err(|e| e.to_string())?,
                        0,
                    ]);
                }
            }
        }
        let np = ph.ny * ph.nx;
        let p = GemmParams {
            m: u32_of(og, "filters")?,
            n: u32_of(np, "pixels")?,
            k: u32_of(k, "depth")?,
            kpad: u32_of(kpad, "depth")?,
            a_off: u32_of(a_off, "weights")?,
            a_gs: u32_of(mpad * kpad, "weights")?,
            t_off: u32_of(t_off, "taps")?,
            groups: u32_of(g, "groups")?,
            cin: u32_of(cin, "channels")?,
            cg: u32_of(cg, "channels")?,
            h: u32_of(h, "height")?,
            w: u32_of(wd, "width")?,
            ncols: u32_of(ph.nx, "width")?,
            ys: 1,
            xs: 1,
            yo: 0,
            xo: 0,
            oys: u32_of(sh, "stride")?,
            oyo: u32_of(ph.ry, "phase")?,
            oxs: u32_of(sw, "stride")?,
            oxo: u32_of(ph.rx, "phase")?,
            o: u32_of(o, "channels")?,
            ohw: u32_of(oh * ow, "pixels")?,
            ow: u32_of(ow, "width")?,
        };
        passes.push(PassPlan {
            key: ShaderKey::Gemm {
                arith,
                tile,
                mode: Mode::Gather,
            },
            params: p.words(),
            grid: grid(
                np.div_ceil(tile.bn() as usize),
                mpad / tile.bm() as usize,
                n * g,
            )?,
        });
    }
    if weights.is_empty() {
        // Kernels smaller than the stride and such: still a buffer to bind.
        weights.resize(4, T::default());
    }
    Ok(LayerPlan {
        weights,
        table,
        passes,
    })
}

fn dense<T: Copy + Default>(
    arith: Arith,
    input: &[usize],
    wshape: &[usize],
    w: &[T],
) -> Result<LayerPlan<T>, String> {
    if wshape.len() != 2 {
        return Err(format!(
            "the GPU runs MatMul with 2-D weights [K, M], got {wshape:?}"
        ));
    }
    let (k, m) = (wshape[0], wshape[1]);
    let rows = input.iter().product::<usize>() / k.max(1);
    let tile = Tile::choose(m, rows);
    let kpad = round_up(k, K_ALIGN);
    let mpad = round_up(m, tile.bm() as usize);
    // A[m][k] = W[k][m]: the shader reads weight rows along k.
    let weights = gemm_a(1, m, k, mpad, kpad, |_, mi, ki| w[ki * m + mi]);
    let p = GemmParams {
        m: u32_of(m, "columns")?,
        n: u32_of(rows, "rows")?,
        k: u32_of(k, "depth")?,
        kpad: u32_of(kpad, "depth")?,
        a_gs: u32_of(mpad * kpad, "weights")?,
        groups: 1,
        ..Default::default()
    };
    let mut weights = weights;
    if weights.is_empty() {
        weights.resize(4, T::default());
    }
    Ok(LayerPlan {
        weights,
        table: Vec::new(),
        passes: vec![PassPlan {
            key: ShaderKey::Gemm {
                arith,
                tile,
                mode: Mode::Dense,
            },
            params: p.words(),
            grid: grid(
                rows.div_ceil(tile.bn() as usize),
                mpad / tile.bm() as usize,
                1,
            )?,
        }],
    })
}
