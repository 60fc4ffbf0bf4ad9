//! A plain row-major f64 matrix (a bank of filters: one filter per row) and the few dense
//! linear-algebra operations the attacks need, delegated to faer where the sizes make it
//! worth it (products, symmetric eigen-decompositions, SVD, solves).
use faer::Side;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    /// Row-major, `rows * cols` values.
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Mat::zeros(n, n);
        for i in 0..n {
            m[(i, i)] = 1.0;
        }
        m
    }

    /// From row-major data; `None` when the length does not match.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Option<Self> {
        (data.len() == rows * cols).then_some(Mat { rows, cols, data })
    }

    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Option<Self> {
        Mat::from_vec(rows, cols, data.iter().map(|&v| v as f64).collect())
    }

    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Mat { rows, cols, data }
    }

    /// Stacks rows of equal length (an empty list gives a 0×0 matrix).
    pub fn from_rows(rows: &[Vec<f64>]) -> Self {
        let cols = rows.first().map_or(0, |r| r.len());
        let mut data = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            assert_eq!(r.len(), cols, "rows of different lengths");
            data.extend_from_slice(r);
        }
        Mat {
            rows: rows.len(),
            cols,
            data,
        }
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_iter(&self) -> impl Iterator<Item = &[f64]> {
        // chunks(0) panics: a matrix without columns has empty rows.
        (0..self.rows).map(move |i| self.row(i))
    }

    /// The rows `idx`, in that order.
    pub fn select_rows(&self, idx: &[usize]) -> Mat {
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Mat {
            rows: idx.len(),
            cols: self.cols,
            data,
        }
    }

    /// Rows `start..start + len`.
    pub fn row_range(&self, start: usize, len: usize) -> Mat {
        Mat {
            rows: len,
            cols: self.cols,
            data: self.data[start * self.cols..(start + len) * self.cols].to_vec(),
        }
    }

    /// The columns `idx`, in that order.
    pub fn select_cols(&self, idx: &[usize]) -> Mat {
        Mat::from_fn(self.rows, idx.len(), |i, j| self[(i, idx[j])])
    }

    /// Appends the rows of `other` (same number of columns, or `self` empty).
    pub fn append_rows(&mut self, other: &Mat) {
        if self.rows == 0 {
            *self = other.clone();
            return;
        }
        assert_eq!(self.cols, other.cols, "appending rows of another length");
        self.data.extend_from_slice(&other.data);
        self.rows += other.rows;
    }

    pub fn transpose(&self) -> Mat {
        Mat::from_fn(self.cols, self.rows, |i, j| self[(j, i)])
    }

    /// Every row scaled to unit Euclidean norm (zero rows stay zero).
    pub fn normalized_rows(&self) -> Mat {
        let mut m = self.clone();
        for i in 0..m.rows {
            let r = m.row_mut(i);
            let n = norm(r);
            if n > 0.0 {
                r.iter_mut().for_each(|v| *v /= n);
            }
        }
        m
    }

    /// self · other.
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows, "matmul: inner sizes differ");
        from_faer(to_faer(self).as_ref() * to_faer(other).as_ref())
    }

    /// self · otherᵀ (e.g. all cosines between two normalised banks).
    pub fn matmul_t(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.cols, "matmul_t: row lengths differ");
        if self.rows == 0 || other.rows == 0 {
            return Mat::zeros(self.rows, other.rows);
        }
        from_faer(to_faer(self).as_ref() * to_faer(other).as_ref().transpose())
    }

    /// selfᵀ · self / scale: the Gram matrix of the columns.
    pub fn gram_cols(&self) -> Mat {
        let f = to_faer(self);
        from_faer(f.as_ref().transpose() * f.as_ref())
    }

    /// self · selfᵀ: the Gram matrix of the rows.
    pub fn gram_rows(&self) -> Mat {
        self.matmul_t(self)
    }

    pub fn scale(&mut self, s: f64) {
        self.data.iter_mut().for_each(|v| *v *= s);
    }

    pub fn frobenius(&self) -> f64 {
        norm(&self.data)
    }
}

impl std::ops::Index<(usize, usize)> for Mat {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        &self.data[i * self.cols + j]
    }
}

impl std::ops::IndexMut<(usize, usize)> for Mat {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// |cos| of two vectors (0 when either is zero).
pub fn abs_cos(a: &[f64], b: &[f64]) -> f64 {
    let d = norm(a) * norm(b);
    if d > 0.0 {
        (dot(a, b) / d).abs()
    } else {
        0.0
    }
}

pub(crate) fn to_faer(m: &Mat) -> faer::Mat<f64> {
    faer::Mat::from_fn(m.rows, m.cols, |i, j| m[(i, j)])
}

pub(crate) fn from_faer(m: faer::Mat<f64>) -> Mat {
    let (r, c) = (m.nrows(), m.ncols());
    Mat::from_fn(r, c, |i, j| m[(i, j)])
}

pub(crate) fn from_faer_ref(m: faer::MatRef<'_, f64>) -> Mat {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)])
}

/// Eigen-decomposition of a symmetric matrix: eigenvalues in decreasing order and the
/// matching unit eigenvectors as the columns of the returned matrix.
pub fn sym_eig(a: &Mat) -> (Vec<f64>, Mat) {
    assert_eq!(a.rows, a.cols, "sym_eig needs a square matrix");
    let n = a.rows;
    if n == 0 {
        return (Vec::new(), Mat::zeros(0, 0));
    }
    // Symmetrise: rounding in a Gram product leaves tiny asymmetries.
    let s = Mat::from_fn(n, n, |i, j| 0.5 * (a[(i, j)] + a[(j, i)]));
    match to_faer(&s).self_adjoint_eigen(Side::Lower) {
        Ok(e) => {
            let vals = e.S().column_vector();
            let u = e.U();
            // faer sorts increasing; reverse.
            let order: Vec<usize> = (0..n).rev().collect();
            let values = order.iter().map(|&k| vals[k]).collect();
            let vecs = Mat::from_fn(n, n, |i, j| u[(i, order[j])]);
            (values, vecs)
        }
        // Not expected for finite symmetric input; fall back to Jacobi.
        Err(_) => jacobi_eig(&s),
    }
}

/// Cyclic Jacobi for small symmetric matrices (fallback only).
fn jacobi_eig(a: &Mat) -> (Vec<f64>, Mat) {
    let n = a.rows;
    let mut m = a.clone();
    let mut v = Mat::identity(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[(i, j)].powi(2))
            .sum();
        if off < 1e-22 * m.frobenius().powi(2).max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if m[(p, q)].abs() < 1e-300 {
                    continue;
                }
                let theta = (m[(q, q)] - m[(p, p)]) / (2.0 * m[(p, q)]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[(k, p)], m[(k, q)]);
                    m[(k, p)] = c * mkp - s * mkq;
                    m[(k, q)] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[(p, k)], m[(q, k)]);
                    m[(p, k)] = c * mpk - s * mqk;
                    m[(q, k)] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[(k, p)], v[(k, q)]);
                    v[(k, p)] = c * vkp - s * vkq;
                    v[(k, q)] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| m[(y, y)].total_cmp(&m[(x, x)]));
    let values = order.iter().map(|&k| m[(k, k)]).collect();
    let vecs = Mat::from_fn(n, n, |i, j| v[(i, order[j])]);
    (values, vecs)
}

/// Thin SVD a = U·diag(s)·Vᵀ: returns (U as columns, s decreasing, Vᵀ as rows).
pub fn svd(a: &Mat) -> Option<(Mat, Vec<f64>, Mat)> {
    if a.rows == 0 || a.cols == 0 {
        return Some((Mat::zeros(a.rows, 0), Vec::new(), Mat::zeros(0, a.cols)));
    }
    let s = to_faer(a).thin_svd().ok()?;
    let sv = s.S().column_vector();
    let k = a.rows.min(a.cols);
    let vals = (0..k).map(|i| sv[i]).collect();
    let u = from_faer_ref(s.U());
    let vt = from_faer_ref(s.V()).transpose();
    Some((u, vals, vt))
}

/// Solves the symmetric positive-definite system a·x = b (b with several columns);
/// `None` when a is not positive definite.
pub fn solve_spd(a: &Mat, b: &Mat) -> Option<Mat> {
    let llt = to_faer(a).llt(Side::Lower).ok()?;
    use faer::linalg::solvers::Solve;
    Some(from_faer(llt.solve(to_faer(b).as_ref())))
}

/// Solves a·x = b for square a by LU with partial pivoting (`None` if a is singular to
/// working precision).
pub fn solve(a: &Mat, b: &Mat) -> Option<Mat> {
    assert_eq!(a.rows, a.cols);
    let (_, s, _) = svd(a)?;
    let smax = s.first().copied().unwrap_or(0.0);
    let smin = s.last().copied().unwrap_or(0.0);
    // NaN compares false: refuse it too.
    if smin.is_nan() || smin <= smax * 1e-13 {
        return None;
    }
    use faer::linalg::solvers::Solve;
    let lu = to_faer(a).partial_piv_lu();
    Some(from_faer(lu.solve(to_faer(b).as_ref())))
}

/// An orthonormal basis (as rows) of the row span of `a`, keeping directions whose
/// singular value is above `rel_tol` times the largest.
pub fn row_span(a: &Mat, rel_tol: f64) -> Mat {
    let Some((_, s, vt)) = svd(a) else {
        return Mat::zeros(0, a.cols);
    };
    let smax = s.first().copied().unwrap_or(0.0);
    let k = s
        .iter()
        .take_while(|&&v| v > smax * rel_tol && v > 0.0)
        .count();
    vt.row_range(0, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eig_and_svd_reconstruct() {
        let a = Mat::from_fn(5, 3, |i, j| {
            ((i * 7 + j * 3) % 5) as f64 - 1.5 + (i == j) as u8 as f64
        });
        let g = a.gram_cols();
        let (vals, vecs) = sym_eig(&g);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
        for k in 0..3 {
            let v: Vec<f64> = (0..3).map(|i| vecs[(i, k)]).collect();
            let gv: Vec<f64> = (0..3).map(|i| dot(g.row(i), &v)).collect();
            for i in 0..3 {
                assert!((gv[i] - vals[k] * v[i]).abs() < 1e-9);
            }
        }
        let (u, s, vt) = svd(&a).unwrap();
        let us = Mat::from_fn(5, 3, |i, j| u[(i, j)] * s[j]);
        let back = us.matmul(&vt);
        for (x, y) in back.data.iter().zip(&a.data) {
            assert!((x - y).abs() < 1e-9);
        }
        let (jv, _) = jacobi_eig(&g);
        for (x, y) in jv.iter().zip(&vals) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn solves() {
        let a = Mat::from_vec(2, 2, vec![4.0, 1.0, 1.0, 3.0]).unwrap();
        let b = Mat::from_vec(2, 1, vec![1.0, 2.0]).unwrap();
        for x in [solve_spd(&a, &b).unwrap(), solve(&a, &b).unwrap()] {
            assert!((4.0 * x.data[0] + x.data[1] - 1.0).abs() < 1e-12);
            assert!((x.data[0] + 3.0 * x.data[1] - 2.0).abs() < 1e-12);
        }
        let singular = Mat::from_vec(2, 2, vec![1.0, 2.0, 2.0, 4.0]).unwrap();
        assert!(solve(&singular, &b).is_none());
    }
}
