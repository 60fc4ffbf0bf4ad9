//! Exact linear layers over Z/2^64 (the hardened scheme's outsourced layers) on the host:
//! the same results as `shadownet_kernels::ring`, bit for bit, from a register-blocked
//! wrapping-u64 GEMM compiled for AVX-512 (64-bit lane multiplies) when the CPU has it, on
//! im2col tiles shared out over the pool.
use rayon::prelude::*;
use shadownet_ir::{Conv, IntTensor, RingTensor};

use crate::par;

/// u64 values of im2col tile per worker (half of a 1 MiB L2).
const TILE_VALUES: usize = 64 * 1024;
const MR: usize = 4;
const NR: usize = 16;

/// c[m×n] (row stride ldc) += a[m×k] (i32, row stride lda) · b[k×n] (row stride ldb) over
/// Z/2^64.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[i32],
    lda: usize,
    b: &[u64],
    ldb: usize,
    c: &mut [u64],
    ldc: usize,
) {
    assert!(m == 0 || (m - 1) * lda + k <= a.len());
    assert!(k == 0 || (k - 1) * ldb + n <= b.len());
    assert!(m == 0 || (m - 1) * ldc + n <= c.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU has AVX-512F/DQ, checked just above; the kernel is safe code.
            return unsafe { gemm_avx512(m, n, k, a, lda, b, ldb, c, ldc) };
        }
    }
    gemm_blocked(m, n, k, a, lda, b, ldb, c, ldc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512(
    m: usize,
    n: usize,
    k: usize,
    a: &[i32],
    lda: usize,
    b: &[u64],
    ldb: usize,
    c: &mut [u64],
    ldc: usize,
) {
    gemm_blocked(m, n, k, a, lda, b, ldb, c, ldc)
}

/// 4 rows × 16 columns of C in registers; the 4 weights of a reduction step are
/// broadcast against a 16-wide row segment of B.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_blocked(
    m: usize,
    n: usize,
    k: usize,
    a: &[i32],
    lda: usize,
    b: &[u64],
    ldb: usize,
    c: &mut [u64],
    ldc: usize,
) {
    let mut i0 = 0;
    while i0 < m {
        let mr = MR.min(m - i0);
        // Weights of the block, sign-extended into the ring, p-major.
        let mut ap = vec![0u64; k * MR];
        for p in 0..k {
            for r in 0..mr {
                ap[p * MR + r] = a[(i0 + r) * lda + p] as i64 as u64;
            }
        }
        let mut j0 = 0;
        while j0 < n {
            let nr = NR.min(n - j0);
            let mut acc = [[0u64; NR]; MR];
            if nr == NR {
                for p in 0..k {
                    let row: &[u64; NR] = b[p * ldb + j0..p * ldb + j0 + NR]
                        .try_into()
                        .expect("length checked above");
                    let w = &ap[p * MR..p * MR + MR];
                    for r in 0..MR {
                        for j in 0..NR {
                            acc[r][j] = acc[r][j].wrapping_add(w[r].wrapping_mul(row[j]));
                        }
                    }
                }
            } else {
                for p in 0..k {
                    let row = &b[p * ldb + j0..p * ldb + j0 + nr];
                    let w = &ap[p * MR..p * MR + MR];
                    for r in 0..MR {
                        for j in 0..nr {
                            acc[r][j] = acc[r][j].wrapping_add(w[r].wrapping_mul(row[j]));
                        }
                    }
                }
            }
            for r in 0..mr {
                let dst = &mut c[(i0 + r) * ldc + j0..(i0 + r) * ldc + j0 + nr];
                for (d, v) in dst.iter_mut().zip(&acc[r]) {
                    *d = d.wrapping_add(*v);
                }
            }
            j0 += NR;
        }
        i0 += MR;
    }
}

/// A convolution (any groups, strides, dilations, pads) over Z/2^64.
pub fn conv2d(x: &RingTensor, w: &IntTensor, c: &Conv, out_shape: &[usize]) -> RingTensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg) = (w.shape[0], w.shape[1]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let g = c.groups;
    let og = o / g;
    let hw = oh * ow;
    let k = cg * c.kernel[0] * c.kernel[1];
    let mut out = vec![0u64; n * o * hw];
    let tile = (TILE_VALUES / k.max(1)).clamp(16, 4096).min(hw.max(1));
    let ntiles = hw.div_ceil(tile);
    let threads = if og * k * hw < crate::gemm::PARALLEL_MIN_MACS {
        1
    } else {
        par::threads()
    };
    for b in 0..n {
        for gi in 0..g {
            let xg = &x.data[(b * cin + gi * cg) * h * wd..(b * cin + (gi + 1) * cg) * h * wd];
            let wg = &w.data[gi * og * k..(gi + 1) * og * k];
            let outg = &mut out[(b * o + gi * og) * hw..(b * o + (gi + 1) * og) * hw];
            let run_tile = |t: usize, buf: &mut Vec<u64>, res: &mut Vec<u64>| {
                let p0 = t * tile;
                let len = tile.min(hw - p0);
                buf.resize(k * len, 0);
                shadownet_kernels::ring::im2col(xg, [h, wd], cg, c, [oh, ow], p0, len, buf);
                res.clear();
                res.resize(og * len, 0);
                gemm(og, len, k, wg, k, buf, len, res, len);
                len
            };
            if threads == 1 || ntiles < 2 {
                let (mut buf, mut res) = (Vec::new(), Vec::new());
                for t in 0..ntiles {
                    let len = run_tile(t, &mut buf, &mut res);
                    for r in 0..og {
                        outg[r * hw + t * tile..r * hw + t * tile + len]
                            .copy_from_slice(&res[r * len..(r + 1) * len]);
                    }
                }
            } else {
                // Tiles in parallel, each written back into its columns afterwards.
                let parts: Vec<(usize, usize, Vec<u64>)> = (0..ntiles)
                    .into_par_iter()
                    .map_init(
                        || (Vec::new(), Vec::new()),
                        |(buf, res), t| {
                            let len = run_tile(t, buf, res);
                            (t, len, std::mem::take(res))
                        },
                    )
                    .collect();
                for (t, len, res) in parts {
                    for r in 0..og {
                        outg[r * hw + t * tile..r * hw + t * tile + len]
                            .copy_from_slice(&res[r * len..(r + 1) * len]);
                    }
                }
            }
        }
    }
    RingTensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// x [.., K] · W [K, M] over Z/2^64: C[rows × M] = X[rows × K] · W, as Wᵀ-free GEMM with the
/// weights on the left: Cᵀ = Wᵀ·Xᵀ would need transposes, so rows of X are processed as
/// one-row GEMMs against the K×M weight (row-broadcast form).
pub fn matmul(x: &RingTensor, w: &IntTensor) -> RingTensor {
    let k = w.shape[0];
    let m = w.shape[1];
    let rows = x.data.len() / k.max(1);
    let mut out = vec![0u64; rows * m];
    let row_job = |r: usize, orow: &mut [u64]| {
        let xr = &x.data[r * k..(r + 1) * k];
        for (p, &xv) in xr.iter().enumerate() {
            let wrow = &w.data[p * m..(p + 1) * m];
            for (d, &wv) in orow.iter_mut().zip(wrow) {
                *d = d.wrapping_add((wv as i64 as u64).wrapping_mul(xv));
            }
        }
    };
    if rows > 1 && par::threads() > 1 && rows * k * m >= crate::gemm::PARALLEL_MIN_MACS {
        out.par_chunks_mut(m.max(1))
            .enumerate()
            .for_each(|(r, orow)| row_job(r, orow));
    } else {
        for (r, orow) in out.chunks_mut(m.max(1)).enumerate() {
            row_job(r, orow);
        }
    }
    let mut shape = x.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    RingTensor { shape, data: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn host_ring_kernels_match_the_portable_ones_bit_for_bit() {
        let mut s = 0x9e3779b97f4a7c15u64;
        for &(cin, o, g, k, st, pad, hw) in &[
            (3usize, 5usize, 1usize, 3usize, 1usize, 1usize, 9usize),
            (8, 8, 2, 3, 2, 1, 20),
            (16, 40, 1, 1, 1, 0, 70),
            (32, 33, 1, 3, 1, 1, 64),
        ] {
            let c = Conv {
                kernel: [k, k],
                stride: [st, st],
                pads: [pad; 4],
                dilation: [1, 1],
                groups: g,
            };
            let x = RingTensor {
                shape: vec![1, cin, hw, hw],
                data: (0..cin * hw * hw).map(|_| rng(&mut s)).collect(),
            };
            let w = IntTensor {
                shape: vec![o, cin / g, k, k],
                data: (0..o * cin / g * k * k)
                    .map(|_| (rng(&mut s) >> 40) as i32 - (1 << 23))
                    .collect(),
            };
            let out = shadownet_ir::infer_shapes(
                "t",
                &shadownet_ir::Op::Conv(c.clone()),
                &[x.shape.clone(), w.shape.clone()],
            )
            .unwrap();
            assert_eq!(
                conv2d(&x, &w, &c, &out[0]),
                shadownet_kernels::ring::conv2d(&x, &w, &c, &out[0])
            );
        }
        let x = RingTensor {
            shape: vec![3, 50],
            data: (0..150).map(|_| rng(&mut s)).collect(),
        };
        let w = IntTensor {
            shape: vec![50, 21],
            data: (0..1050).map(|_| rng(&mut s) as i32).collect(),
        };
        assert_eq!(matmul(&x, &w), shadownet_kernels::ring::matmul(&x, &w));
    }
}
