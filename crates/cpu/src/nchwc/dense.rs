//! Dense layers (MatMul with constant weights): y[m, :] = x[m, :] · W, then the fused
//! per-column epilogue (bias add, activation).
//!
//! One row of x (batch 1, the usual case) is a matrix-vector product bound by reading W:
//! W is packed in stripes of 64 columns, each stripe one contiguous run of memory that a
//! thread streams once (x broadcast from L1); row-major W, read stripe by stripe, made
//! the hardware prefetcher chase a 2 KiB stride. More rows go through the packed GEMM
//! on row-major W.
use super::ops::{act_slice, CPtr, EStage, Ptr};
use super::{has_avx512, AlignedBuf, B};
use crate::team::{parallel_for, team_threads};

#[derive(Clone, Debug)]
pub struct PackedDense {
    pub k: usize,
    pub n: usize,
    /// For one row: W in stripes [n / 64][k][64] (the last stripe padded with zeros).
    /// For more rows: W row-major (k × n), rows `ldw` apart.
    w: AlignedBuf,
    ldw: usize,
    striped: bool,
    pub(crate) stages: Vec<EStage>,
}

/// Columns per work item of the matrix-vector product (four vectors).
const STRIPE: usize = 64;

impl PackedDense {
    /// Packs W (k × n, row-major) for products with `m` rows of x.
    pub fn new(w: &[f32], k: usize, n: usize, m: usize) -> PackedDense {
        if m == 1 {
            let stripes = n.div_ceil(STRIPE);
            let mut wp = AlignedBuf::zeros(stripes * k * STRIPE);
            let d = wp.as_mut_slice();
            for s in 0..stripes {
                let c0 = s * STRIPE;
                let cols = STRIPE.min(n - c0);
                for r in 0..k {
                    let o = (s * k + r) * STRIPE;
                    d[o..o + cols].copy_from_slice(&w[r * n + c0..r * n + c0 + cols]);
                }
            }
            return PackedDense {
                k,
                n,
                w: wp,
                ldw: STRIPE,
                striped: true,
                stages: Vec::new(),
            };
        }
        PackedDense {
            k,
            n,
            w: AlignedBuf::from_slice(w),
            ldw: n,
            striped: false,
            stages: Vec::new(),
        }
    }

    /// y (m × n) = x (m × k) · W, then the epilogue.
    ///
    /// # Safety
    /// `x` spans m·k floats, `y` m·n floats, disjoint.
    pub(crate) unsafe fn run(&self, x: CPtr, m: usize, y: Ptr) {
        let (k, n) = (self.k, self.n);
        if self.striped {
            debug_assert_eq!(m, 1);
            let stripes = n.div_ceil(STRIPE);
            let items = if k * n < 256 * 1024 {
                1
            } else {
                stripes.min(8 * team_threads())
            };
            let per = stripes.div_ceil(items);
            parallel_for(stripes.div_ceil(per), &|i| {
                let (s0, s1) = (i * per, ((i + 1) * per).min(stripes));
                for s in s0..s1 {
                    let c0 = s * STRIPE;
                    let cols = STRIPE.min(n - c0);
                    let mut acc = [0f32; STRIPE];
                    self.gemv_stripe(x.get(), c0, &mut acc);
                    let out = std::slice::from_raw_parts_mut(y.get().add(c0), cols);
                    out.copy_from_slice(&acc[..cols]);
                }
            });
        } else {
            let out = std::slice::from_raw_parts_mut(y.get(), m * n);
            let xs = std::slice::from_raw_parts(x.get(), m * k);
            crate::gemm::sgemm(
                m,
                n,
                k,
                crate::gemm::MatRef::rows(xs, k),
                crate::gemm::MatRef::rows(self.w.as_slice(), self.ldw),
                out,
                n,
                false,
                team_threads(),
            );
        }
        if !self.stages.is_empty() {
            for r in 0..m {
                let row = std::slice::from_raw_parts_mut(y.get().add(r * n), n);
                self.epilogue(row);
            }
        }
    }

    /// acc[j] = Σ_r x[r] · W[r, c0 + j] for one stripe.
    unsafe fn gemv_stripe(&self, x: *const f32, c0: usize, acc: &mut [f32; STRIPE]) {
        let w = self.w.as_slice().as_ptr().add(c0 * self.k);
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            return gemv_stripe_avx512(x, w, STRIPE, self.k, acc);
        }
        let _ = has_avx512;
        for r in 0..self.k {
            let xv = *x.add(r);
            let row = std::slice::from_raw_parts(w.add(r * STRIPE), STRIPE);
            for (a, &wv) in acc.iter_mut().zip(row) {
                *a += xv * wv;
            }
        }
    }

    fn epilogue(&self, row: &mut [f32]) {
        for s in &self.stages {
            match s {
                EStage::Act(a) => act_slice(a, row),
                EStage::Channel { op, k, rev } => {
                    for (v, &c) in row.iter_mut().zip(k.iter()) {
                        *v = if *rev {
                            shadownet_kernels::elementwise::binary(*op, c, *v)
                        } else {
                            shadownet_kernels::elementwise::binary(*op, *v, c)
                        };
                    }
                }
                // The plan only fuses the two stages above into dense layers.
                EStage::Tensor { .. } | EStage::ChanTensor { .. } => {
                    unreachable!("dense epilogues hold activations and per-column constants")
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_stripe_avx512(
    x: *const f32,
    w: *const f32,
    ldw: usize,
    k: usize,
    acc: &mut [f32; STRIPE],
) {
    use core::arch::x86_64::*;
    // Two sets of four accumulators (even / odd rows) hide the multiply-add latency.
    let mut a = [_mm512_setzero_ps(); 8];
    let mut r = 0;
    while r + 2 <= k {
        let x0 = _mm512_set1_ps(*x.add(r));
        let x1 = _mm512_set1_ps(*x.add(r + 1));
        let w0 = w.add(r * ldw);
        let w1 = w.add((r + 1) * ldw);
        for j in 0..4 {
            a[j] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w0.add(j * B)), a[j]);
            a[4 + j] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(w1.add(j * B)), a[4 + j]);
        }
        r += 2;
    }
    if r < k {
        let x0 = _mm512_set1_ps(*x.add(r));
        let w0 = w.add(r * ldw);
        for (j, aj) in a.iter_mut().take(4).enumerate() {
            *aj = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w0.add(j * B)), *aj);
        }
    }
    for j in 0..4 {
        _mm512_storeu_ps(acc.as_mut_ptr().add(j * B), _mm512_add_ps(a[j], a[4 + j]));
    }
}
