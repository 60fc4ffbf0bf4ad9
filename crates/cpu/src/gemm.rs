//! Row-major single-precision GEMM: C = A·B (+ C when accumulating).
//!
//! The `gemm` crate's packed, cache-blocked SIMD kernel (AVX-512 via runtime dispatch).

/// Multiply-adds below which a kernel stays on one thread.
pub const PARALLEL_MIN_MACS: usize = 1 << 22;

pub use shadownet_kernels::gemm::MatRef;

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
        let par = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
            gemm::Parallelism::Rayon(threads)
        } else {
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
