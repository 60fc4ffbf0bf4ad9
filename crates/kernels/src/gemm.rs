//! Row-major single-precision GEMM: C = A·B (+ C when accumulating).
//!
//! With `std` this is the `gemm` crate's packed, cache-blocked SIMD kernel (AVX-512 via
//! runtime dispatch); without it (the trusted core) a simple blocked loop suffices, since
//! the trusted core never runs the heavy linear layers.

/// Multiply-adds below which a kernel stays on one thread.
pub const PARALLEL_MIN_MACS: usize = 1 << 22;

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

    fn span(&self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }
    }
}

/// C[m×n] (row stride `ldc`) = A[m×k]·B[k×n], added to C when `accumulate`.
/// `threads` > 1 lets the kernel split the work over the rayon pool.
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
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The raw-pointer kernel below trusts these bounds; checking them here keeps the
    // whole function safe to call.
    assert!(a.span(m, k) <= a.data.len(), "sgemm: A out of bounds");
    assert!(b.span(k, n) <= b.data.len(), "sgemm: B out of bounds");
    assert!(
        (m - 1) * ldc + n <= c.len() && ldc >= n,
        "sgemm: C out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    imp::sgemm(m, n, k, a, b, c, ldc, accumulate, threads)
}

/// Like [`sgemm`] but writes through a raw pointer, so parallel tasks can each fill a
/// disjoint block of columns of one output matrix.
///
/// # Safety
/// `c` must be valid for writes at `i * ldc + j` for i < m, j < n, no other thread may
/// touch those elements during the call, and A and B must be in bounds as in [`sgemm`].
#[cfg(feature = "std")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(a.span(m, k) <= a.data.len() && b.span(k, n) <= b.data.len());
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

#[cfg(feature = "std")]
mod imp {
    use super::{MatRef, PARALLEL_MIN_MACS};

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
        threads: usize,
    ) {
        // Waking the pool costs tens of microseconds: below a few million multiply-adds
        // one thread finishes first.
        #[cfg(feature = "rayon")]
        let par = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        #[cfg(not(feature = "rayon"))]
        let par = {
            let _ = threads;
            gemm::Parallelism::None
        };
        // SAFETY: `super::sgemm` checked that every index the kernel touches lies inside
        // the three slices, and `c` is borrowed mutably so nothing aliases it.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                ldc as isize,
                accumulate,
                a.data.as_ptr(),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr(),
                b.cs as isize,
                b.rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    use super::MatRef;

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
        _threads: usize,
    ) {
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            if !accumulate {
                row.fill(0.0);
            }
            for p in 0..k {
                let av = a.data[i * a.rs + p * a.cs];
                if av == 0.0 {
                    continue;
                }
                for (j, out) in row.iter_mut().enumerate() {
                    *out += av * b.data[p * b.rs + j * b.cs];
                }
            }
        }
    }
}
