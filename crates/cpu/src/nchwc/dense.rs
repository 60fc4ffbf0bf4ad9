//! Dense layers (MatMul with constant weights): y[m, :] = x[m, :] · W, then the fused
//! per-column epilogue (bias add, activation).
//!
//! One row of x (batch 1, the usual case) is a matrix-vector product bound by reading W,
//! usually from memory (the other layers' weights evicted it since the last inference).
//! W is streamed row after row, four rows at a time, into partial sums kept in L1, with
//! software prefetches 32 rows ahead into L2: from memory that ran at 18-19 GB/s on one
//! core against 12-13 GB/s without them (the hardware prefetcher alone, whether W was
//! read by rows or in column stripes). Threads take contiguous bands of rows and their
//! partial sums are added in a fixed order. The number of bands is fixed too, not the
//! number of threads free: a busy team runs a layer on one thread, and with bands per
//! thread the same inference then summed in another order and its bits changed. More
//! rows of x go through the packed GEMM.
use std::sync::Mutex;

use super::ops::{act_slice, CPtr, EStage, Ptr};
use super::{has_avx512, AlignedBuf, B};
use crate::team::{parallel_for, team_threads};

#[derive(Debug)]
pub struct PackedDense {
    pub k: usize,
    pub n: usize,
    /// W row-major (k × n), rows padded with zeros to `ldw`, a multiple of 16.
    w: AlignedBuf,
    ldw: usize,
    pub(crate) stages: Vec<EStage>,
    /// Partial sums of the row bands (one `ldw` row per band), reused every run.
    scratch: Mutex<AlignedBuf>,
}

impl Clone for PackedDense {
    fn clone(&self) -> Self {
        PackedDense {
            k: self.k,
            n: self.n,
            w: self.w.clone(),
            ldw: self.ldw,
            stages: self.stages.clone(),
            scratch: Mutex::new(AlignedBuf::zeros(0)),
        }
    }
}

/// Rows of W fetched ahead of use (into L2) by the matrix-vector product.
const AHEAD: usize = 32;

/// Below this many bytes of W one thread streams it alone.
const PARALLEL_BYTES: usize = 512 * 1024;

/// Row bands of a large matrix-vector product, whatever the threads: enough for the
/// machines we run on to share them out evenly.
const BANDS: usize = 8;

impl PackedDense {
    /// Packs W (k × n, row-major).
    pub fn new(w: &[f32], k: usize, n: usize) -> PackedDense {
        let ldw = n.next_multiple_of(B);
        let mut wp = AlignedBuf::zeros(k * ldw);
        for r in 0..k {
            wp.as_mut_slice()[r * ldw..r * ldw + n].copy_from_slice(&w[r * n..(r + 1) * n]);
        }
        PackedDense {
            k,
            n,
            w: wp,
            ldw,
            stages: Vec::new(),
            scratch: Mutex::new(AlignedBuf::zeros(0)),
        }
    }

    /// y (m × n) = x (m × k) · W, then the epilogue.
    ///
    /// # Safety
    /// `x` spans m·k floats, `y` m·n floats, disjoint.
    pub(crate) unsafe fn run(&self, x: CPtr, m: usize, y: Ptr) {
        let (k, n, ldw) = (self.k, self.n, self.ldw);
        if m == 1 {
            let bands = if k * ldw * 4 < PARALLEL_BYTES {
                1
            } else {
                BANDS.min(k)
            };
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            if scratch.len() < bands * ldw {
                *scratch = AlignedBuf::zeros(bands * ldw);
            }
            let part = Ptr(scratch.as_mut_slice().as_mut_ptr());
            let per = k.div_ceil(bands);
            parallel_for(bands, &|b| {
                let (r0, r1) = (b * per, ((b + 1) * per).min(k));
                self.gemv_rows(x.get(), r0, r1, part.get().add(b * ldw));
            });
            let parts = std::slice::from_raw_parts(part.get(), bands * ldw);
            let out = std::slice::from_raw_parts_mut(y.get(), n);
            out.copy_from_slice(&parts[..n]);
            for b in 1..bands {
                for (o, p) in out.iter_mut().zip(&parts[b * ldw..]) {
                    *o += p;
                }
            }
        } else {
            let out = std::slice::from_raw_parts_mut(y.get(), m * n);
            let xs = std::slice::from_raw_parts(x.get(), m * k);
            crate::gemm::sgemm(
                m,
                n,
                k,
                crate::gemm::MatRef::rows(xs, k),
                crate::gemm::MatRef::rows(self.w.as_slice(), ldw),
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

    /// acc[0..ldw] = Σ_{r0 ≤ r < r1} x[r] · W[r, :].
    unsafe fn gemv_rows(&self, x: *const f32, r0: usize, r1: usize, acc: *mut f32) {
        let ldw = self.ldw;
        let w = self.w.as_slice().as_ptr();
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            return gemv_rows_avx512(x, w, ldw, r0, r1, acc);
        }
        let _ = has_avx512;
        let acc = std::slice::from_raw_parts_mut(acc, ldw);
        acc.fill(0.0);
        for r in r0..r1 {
            let xv = *x.add(r);
            let row = std::slice::from_raw_parts(w.add(r * ldw), ldw);
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
unsafe fn gemv_rows_avx512(
    x: *const f32,
    w: *const f32,
    ldw: usize,
    r0: usize,
    r1: usize,
    acc: *mut f32,
) {
    use core::arch::x86_64::*;
    for j in (0..ldw).step_by(B) {
        _mm512_storeu_ps(acc.add(j), _mm512_setzero_ps());
    }
    let mut r = r0;
    // Four rows per pass: the partial sums are loaded and stored once per four rows.
    while r + 4 <= r1 {
        let xs = [0, 1, 2, 3].map(|i| _mm512_set1_ps(*x.add(r + i)));
        let rows = [0, 1, 2, 3].map(|i| w.add((r + i) * ldw));
        let ahead = [0, 1, 2, 3].map(|i| w.wrapping_add((r + AHEAD + i) * ldw) as *const i8);
        for j in (0..ldw).step_by(B) {
            for a in ahead {
                _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(4 * j));
            }
            let t0 = _mm512_fmadd_ps(
                xs[1],
                _mm512_load_ps(rows[1].add(j)),
                _mm512_mul_ps(xs[0], _mm512_load_ps(rows[0].add(j))),
            );
            let t1 = _mm512_fmadd_ps(
                xs[3],
                _mm512_load_ps(rows[3].add(j)),
                _mm512_mul_ps(xs[2], _mm512_load_ps(rows[2].add(j))),
            );
            let a = _mm512_add_ps(_mm512_loadu_ps(acc.add(j)), _mm512_add_ps(t0, t1));
            _mm512_storeu_ps(acc.add(j), a);
        }
        r += 4;
    }
    while r < r1 {
        let x0 = _mm512_set1_ps(*x.add(r));
        let row = w.add(r * ldw);
        for j in (0..ldw).step_by(B) {
            let a = _mm512_fmadd_ps(x0, _mm512_load_ps(row.add(j)), _mm512_loadu_ps(acc.add(j)));
            _mm512_storeu_ps(acc.add(j), a);
        }
        r += 1;
    }
}
