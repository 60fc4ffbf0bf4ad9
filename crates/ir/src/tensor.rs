use alloc::vec;
use alloc::vec::Vec;

use crate::{numel, Error, Result};

/// A dense row-major f32 tensor. Integer data (indices, shapes) never reaches the
/// engine: importers fold it into op attributes.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        if numel(&shape) != data.len() {
            return Err(Error::TensorSize {
                shape,
                len: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; numel(shape)],
        }
    }

    pub fn scalar(v: f32) -> Self {
        Tensor {
            shape: Vec::new(),
            data: vec![v],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        strides_of(&self.shape)
    }

    /// Same data, new shape of the same size.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Result<Self> {
        if numel(&shape) != self.data.len() {
            return Err(Error::TensorSize {
                shape,
                len: self.data.len(),
            });
        }
        self.shape = shape;
        Ok(self)
    }
}

pub(crate) fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
