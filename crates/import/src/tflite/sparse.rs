//! Sparse TFLite constants (the `sparsity` field, expanded by DENSIFY) folded to dense
//! tensors at load time, following the schema's traversal semantics: the stored values are
//! visited level by level in `traversal_order` over the tensor's dimensions followed by
//! its block dimensions, each level either dense or compressed (CSR).
use super::reader::{bad, DimMeta, Sparsity};
use crate::Result;

/// Expands `values` (the stored elements, in traversal order) into a dense row-major
/// tensor of `shape`. Every index is checked: hostile metadata gives an error, never a panic.
pub(crate) fn densify<T: Copy + Default>(
    sp: &Sparsity,
    shape: &[usize],
    values: &[T],
) -> Result<Vec<T>> {
    let n = shape.len();
    let k = sp.block_map.len();
    let levels = n + k;
    if sp.traversal_order.len() != levels || sp.dims.len() != levels {
        return Err(bad(format!(
            "sparsity of a rank-{n} tensor with {k} block dimensions lists {} traversal entries and {} dimension records",
            sp.traversal_order.len(),
            sp.dims.len()
        )));
    }
    let mut seen = vec![false; levels];
    for &d in &sp.traversal_order {
        if d >= levels || std::mem::replace(&mut seen[d], true) {
            return Err(bad(format!(
                "traversal order {:?} is not a permutation",
                sp.traversal_order
            )));
        }
    }
    // Size of every expanded dimension: original ones divided by their block size, then
    // the block dimensions themselves (whose dense_size gives the block size).
    let mut block = vec![1usize; n];
    let mut block_of = vec![None; n];
    for (j, &d) in sp.block_map.iter().enumerate() {
        let level = sp
            .traversal_order
            .iter()
            .position(|&t| t == n + j)
            .ok_or_else(|| bad("block dimension missing from the traversal order"))?;
        let size = match sp.dims[level] {
            DimMeta::Dense(s) if s > 0 => s,
            _ => return Err(bad("a block dimension must be dense with a positive size")),
        };
        if d >= n || block_of[d].is_some() || !shape[d].is_multiple_of(size) {
            return Err(bad(format!(
                "block map {:?} does not fit shape {shape:?}",
                sp.block_map
            )));
        }
        block[d] = size;
        block_of[d] = Some(j);
    }
    let mut expanded: Vec<usize> = (0..n).map(|d| shape[d] / block[d]).collect();
    expanded.extend(sp.block_map.iter().map(|&d| block[d]));
    for (level, m) in sp.dims.iter().enumerate() {
        if let DimMeta::Dense(s) = m {
            if *s != expanded[sp.traversal_order[level]] {
                return Err(bad(format!(
                    "dense level {level} has size {s}, the dimension has {}",
                    expanded[sp.traversal_order[level]]
                )));
            }
        }
    }
    let total = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("sparse tensor of shape {shape:?} is too large")))?;
    let mut w = Walk {
        sp,
        shape,
        block,
        block_of,
        n,
        values,
        next: 0,
        idx: vec![0; levels],
        out: vec![T::default(); total],
    };
    w.visit(0, 0)?;
    if w.next != values.len() {
        return Err(bad(format!(
            "sparse tensor stores {} values but its layout uses {}",
            values.len(),
            w.next
        )));
    }
    Ok(w.out)
}

struct Walk<'a, T> {
    sp: &'a Sparsity,
    shape: &'a [usize],
    block: Vec<usize>,
    block_of: Vec<Option<usize>>,
    n: usize,
    values: &'a [T],
    next: usize,
    /// Index along every expanded dimension (by dimension, not by level).
    idx: Vec<usize>,
    out: Vec<T>,
}

impl<T: Copy> Walk<'_, T> {
    fn visit(&mut self, level: usize, prev: usize) -> Result<()> {
        if level == self.idx.len() {
            return self.store();
        }
        let dim = self.sp.traversal_order[level];
        match &self.sp.dims[level] {
            DimMeta::Dense(size) => {
                for i in 0..*size {
                    self.idx[dim] = i;
                    let p = prev
                        .checked_mul(*size)
                        .and_then(|p| p.checked_add(i))
                        .ok_or_else(|| bad("sparse position overflows"))?;
                    self.visit(level + 1, p)?;
                }
            }
            DimMeta::Csr { segments, indices } => {
                let (lo, hi) = match (segments.get(prev), segments.get(prev + 1)) {
                    (Some(&a), Some(&b)) if a <= b && b <= indices.len() => (a, b),
                    _ => return Err(bad(format!("CSR segment {prev} lies outside its arrays"))),
                };
                for (p, &i) in indices.iter().enumerate().take(hi).skip(lo) {
                    self.idx[dim] = i;
                    self.visit(level + 1, p)?;
                }
            }
        }
        Ok(())
    }

    fn store(&mut self) -> Result<()> {
        let mut flat = 0usize;
        for d in 0..self.n {
            let mut i = self.idx[d];
            if let Some(j) = self.block_of[d] {
                i = i * self.block[d] + self.idx[self.n + j];
            }
            if i >= self.shape[d] {
                return Err(bad(format!(
                    "sparse index {i} out of range for dimension {d} of {:?}",
                    self.shape
                )));
            }
            flat = flat * self.shape[d] + i;
        }
        let v = *self
            .values
            .get(self.next)
            .ok_or_else(|| bad("sparse layout addresses more values than are stored"))?;
        self.out[flat] = v;
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_matrix() {
        // [[1, 0, 2], [0, 0, 3]] as CSR rows.
        let sp = Sparsity {
            traversal_order: vec![0, 1],
            block_map: vec![],
            dims: vec![
                DimMeta::Dense(2),
                DimMeta::Csr {
                    segments: vec![0, 2, 3],
                    indices: vec![0, 2, 2],
                },
            ],
        };
        let d = densify(&sp, &[2, 3], &[1.0f32, 2.0, 3.0]).unwrap();
        assert_eq!(d, vec![1.0, 0.0, 2.0, 0.0, 0.0, 3.0]);
    }

    #[test]
    fn blocked_column_major() {
        // A 2x4 matrix in 1x2 blocks, walked block column first: block (r, c) holds
        // columns 2c..2c+2 of row r; only blocks (1,0) and (0,1) are stored.
        let sp = Sparsity {
            traversal_order: vec![1, 0, 2],
            block_map: vec![1],
            dims: vec![
                DimMeta::Dense(2),
                DimMeta::Csr {
                    segments: vec![0, 1, 2],
                    indices: vec![1, 0],
                },
                DimMeta::Dense(2),
            ],
        };
        let d = densify(&sp, &[2, 4], &[5, 6, 7, 8]).unwrap();
        assert_eq!(d, vec![0, 0, 7, 8, 5, 6, 0, 0]);
    }

    #[test]
    fn hostile_metadata_is_an_error() {
        let sp = Sparsity {
            traversal_order: vec![0, 1],
            block_map: vec![],
            dims: vec![
                DimMeta::Dense(2),
                DimMeta::Csr {
                    segments: vec![0, 2, 9],
                    indices: vec![0, 7],
                },
            ],
        };
        assert!(densify(&sp, &[2, 3], &[1.0f32, 2.0]).is_err());
        let short = Sparsity {
            traversal_order: vec![0],
            block_map: vec![],
            dims: vec![DimMeta::Dense(3)],
        };
        assert!(densify(&short, &[3], &[1.0f32]).is_err());
    }
}
