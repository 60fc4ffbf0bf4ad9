use alloc::vec;
use alloc::vec::Vec;

use crate::{numel, Error, Result};

/// A dense row-major f32 tensor. Integer data (indices, shapes) never reaches the
/// engine: importers fold it into op attributes.
#[derive(Clone, Debug, PartialEq)]
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

/// Tensors serialise as their shape and one little-endian byte blob: element-wise
/// sequences made every boundary crossing, package load and mask-pool entry pay per float.
#[cfg(feature = "serde")]
mod serde_impl {
    use alloc::vec::Vec;
    use core::fmt;

    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeTuple, Serializer};
    use serde::{Deserialize, Serialize};

    use super::Tensor;

    struct Blob<'a>(&'a [f32]);

    impl Serialize for Blob<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            // Activations cross the enclave pipe as these blobs on every layer: on
            // little-endian machines the floats are their own encoding, no copy needed.
            #[cfg(target_endian = "little")]
            {
                s.serialize_bytes(bytemuck::cast_slice(self.0))
            }
            #[cfg(not(target_endian = "little"))]
            {
                let mut bytes = Vec::with_capacity(self.0.len() * 4);
                for v in self.0 {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                s.serialize_bytes(&bytes)
            }
        }
    }

    impl Serialize for Tensor {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&self.shape)?;
            t.serialize_element(&Blob(&self.data))?;
            t.end()
        }
    }

    struct FloatsVisitor;

    impl<'de> Visitor<'de> for FloatsVisitor {
        type Value = Vec<f32>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("little-endian f32 bytes")
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Vec<f32>, E> {
            if !b.len().is_multiple_of(4) {
                return Err(E::invalid_length(b.len(), &self));
            }
            #[cfg(target_endian = "little")]
            {
                Ok(bytemuck::pod_collect_to_vec(b))
            }
            #[cfg(not(target_endian = "little"))]
            {
                Ok(b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
        }
    }

    struct Floats(Vec<f32>);

    impl<'de> Deserialize<'de> for Floats {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_bytes(FloatsVisitor).map(Floats)
        }
    }

    struct TensorVisitor;

    impl<'de> Visitor<'de> for TensorVisitor {
        type Value = Tensor;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a tensor (shape, data)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tensor, A::Error> {
            let shape: Vec<usize> = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(0, &self))?;
            let Floats(data) = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(1, &self))?;
            // A tensor whose data does not fill its shape is corrupt input, not a panic later.
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n != Some(data.len()) {
                return Err(de::Error::custom("tensor data does not match its shape"));
            }
            Ok(Tensor { shape, data })
        }
    }

    impl<'de> Deserialize<'de> for Tensor {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_tuple(2, TensorVisitor)
        }
    }
}
