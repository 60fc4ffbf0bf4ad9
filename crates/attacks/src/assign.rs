//! Minimum-cost assignment (Hungarian algorithm with potentials, O(n³)).
use crate::mat::Mat;

/// For a square cost matrix, `col[i]` for each row i minimising Σ cost[i][col[i]].
pub fn hungarian(cost: &Mat) -> Vec<usize> {
    let n = cost.rows;
    assert_eq!(n, cost.cols, "hungarian needs a square cost matrix");
    if n == 0 {
        return Vec::new();
    }
    // 1-based arrays as in the classic formulation; p[j] = row assigned to column j.
    let inf = f64::INFINITY;
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[(i0 - 1, j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut col = vec![0usize; n];
    for j in 1..=n {
        if p[j] > 0 {
            col[p[j] - 1] = j - 1;
        }
    }
    col
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn brute(cost: &Mat) -> f64 {
        fn rec(cost: &Mat, i: usize, used: &mut Vec<bool>) -> f64 {
            if i == cost.rows {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..cost.cols {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[(i, j)] + rec(cost, i + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        rec(cost, 0, &mut vec![false; cost.cols])
    }

    #[test]
    fn optimal_on_random_matrices() {
        let mut rng = Rng::new(2);
        for n in 1..=7 {
            for _ in 0..5 {
                let c = rng.gaussian(n, n);
                let a = hungarian(&c);
                let mut seen = vec![false; n];
                for &j in &a {
                    assert!(!seen[j]);
                    seen[j] = true;
                }
                let total: f64 = a.iter().enumerate().map(|(i, &j)| c[(i, j)]).sum();
                assert!((total - brute(&c)).abs() < 1e-9);
            }
        }
    }
}
