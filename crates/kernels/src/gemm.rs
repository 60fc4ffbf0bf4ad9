//! Row-major single-precision GEMM in safe, portable Rust: C = A·B (+ C when
//! accumulating).
//!
//! This is the trusted core's GEMM (layers kept inside the TEE, nothing else), so it must
//! stay `no_std` and free of `unsafe`; the host's fast paths live in `shadownet-cpu`. It is
//! register-blocked (4 rows × 16 columns of C held in fixed-size arrays, which the
//! compiler keeps in vector registers) with the 4 rows of A packed contiguously, so every
//! B row segment loaded is used four times.

/// A row-major matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        MatRef {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub fn transposed(data: &'a [f32], ld: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// Elements spanned by a `rows × cols` view (0 when empty).
    pub fn span(&self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

const MR: usize = 4;
const NR: usize = 16;
/// Reduction block: 4 packed A rows and a 16-wide B strip of this depth stay in L1.
const KC: usize = 256;

/// C[m×n] (row stride `ldc`) = A[m×k]·B[k×n], added to C when `accumulate`.
///
/// Panics if a view is too short for the sizes given (a caller bug, never data-dependent).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.span(m, k) <= a.data.len(), "sgemm: A out of bounds");
    assert!(b.span(k, n) <= b.data.len(), "sgemm: B out of bounds");
    assert!(
        (m - 1) * ldc + n <= c.len() && ldc >= n,
        "sgemm: C out of bounds"
    );
    if !accumulate {
        for i in 0..m {
            c[i * ldc..i * ldc + n].fill(0.0);
        }
    }
    if k == 0 {
        return;
    }
    let mut apack = [0f32; MR * KC];
    let mut bstrip = [0f32; NR * KC];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for i0 in (0..m).step_by(MR) {
            let mr = MR.min(m - i0);
            // A block packed p-major: apack[p * MR + r] = A[i0 + r, k0 + p].
            for p in 0..kc {
                for r in 0..MR {
                    apack[p * MR + r] = if r < mr { a.at(i0 + r, k0 + p) } else { 0.0 };
                }
            }
            for j0 in (0..n).step_by(NR) {
                let nr = NR.min(n - j0);
                let mut acc = [[0f32; NR]; MR];
                if nr == NR && b.cs == 1 {
                    for p in 0..kc {
                        let start = (k0 + p) * b.rs + j0;
                        let row: &[f32; NR] = match b.data[start..start + NR].try_into() {
                            Ok(r) => r,
                            Err(_) => unreachable!("length checked by the slice"),
                        };
                        let av = &apack[p * MR..p * MR + MR];
                        for r in 0..MR {
                            for j in 0..NR {
                                acc[r][j] += av[r] * row[j];
                            }
                        }
                    }
                } else {
                    // Edge strip (or strided B): copy it once, then the same loop.
                    for p in 0..kc {
                        for j in 0..NR {
                            bstrip[p * NR + j] = if j < nr { b.at(k0 + p, j0 + j) } else { 0.0 };
                        }
                    }
                    for p in 0..kc {
                        let row = &bstrip[p * NR..p * NR + NR];
                        let av = &apack[p * MR..p * MR + MR];
                        for r in 0..MR {
                            for j in 0..NR {
                                acc[r][j] += av[r] * row[j];
                            }
                        }
                    }
                }
                for (r, acc_row) in acc.iter().enumerate().take(mr) {
                    let dst = &mut c[(i0 + r) * ldc + j0..(i0 + r) * ldc + j0 + nr];
                    for (d, v) in dst.iter_mut().zip(acc_row) {
                        *d += v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a.at(i, p) as f64 * b.at(p, j) as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_on_ragged_sizes_and_strides() {
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(m, n, k) in &[(1, 1, 1), (5, 17, 3), (4, 16, 300), (9, 33, 513), (3, 7, 0)] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            for transposed_a in [false, true] {
                let av = if transposed_a {
                    // The same values stored k × m.
                    let mut t = vec![0f32; k * m];
                    for i in 0..m {
                        for p in 0..k {
                            t[p * m + i] = a[i * k + p];
                        }
                    }
                    t
                } else {
                    a.clone()
                };
                let aref = if transposed_a {
                    MatRef::transposed(&av, m)
                } else {
                    MatRef::rows(&av, k)
                };
                let want = naive(m, n, k, aref, MatRef::rows(&b, n));
                let mut c = vec![1f32; m * n];
                sgemm(m, n, k, aref, MatRef::rows(&b, n), &mut c, n, true);
                for (g, w) in c.iter().zip(&want) {
                    assert!(
                        (g - (w + 1.0)).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{g} vs {w}"
                    );
                }
                sgemm(m, n, k, aref, MatRef::rows(&b, n), &mut c, n, false);
                for (g, w) in c.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
                }
            }
        }
    }
}
