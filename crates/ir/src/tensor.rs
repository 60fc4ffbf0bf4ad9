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

/// A tensor over the ring Z/2^64: the masked activations and results of the hardened
/// scheme's exact linear layers. Arithmetic on it wraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingTensor {
    pub shape: Vec<usize>,
    pub data: Vec<u64>,
}

impl RingTensor {
    pub fn new(shape: Vec<usize>, data: Vec<u64>) -> Result<Self> {
        if numel(&shape) != data.len() {
            return Err(Error::TensorSize {
                shape,
                len: data.len(),
            });
        }
        Ok(RingTensor { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        RingTensor {
            shape: shape.to_vec(),
            data: vec![0; numel(shape)],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Small signed integers: the public weights of the hardened scheme's exact layers
/// (sign-extended into the ring when multiplied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntTensor {
    pub shape: Vec<usize>,
    pub data: Vec<i32>,
}

impl IntTensor {
    pub fn new(shape: Vec<usize>, data: Vec<i32>) -> Result<Self> {
        if numel(&shape) != data.len() {
            return Err(Error::TensorSize {
                shape,
                len: data.len(),
            });
        }
        Ok(IntTensor { shape, data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
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
    use core::marker::PhantomData;

    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeTuple, Serializer};
    use serde::{Deserialize, Serialize};

    use super::{IntTensor, RingTensor, Tensor};

    /// Element types that serialise as little-endian bytes.
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    trait Elem: bytemuck::Pod {
        const NAME: &'static str;
        fn from_le(b: &[u8]) -> Self;
        fn to_le(self, out: &mut Vec<u8>);
    }

    macro_rules! elem {
        ($t:ty, $name:literal) => {
            impl Elem for $t {
                const NAME: &'static str = $name;
                fn from_le(b: &[u8]) -> Self {
                    let mut a = [0u8; core::mem::size_of::<$t>()];
                    a.copy_from_slice(b);
                    <$t>::from_le_bytes(a)
                }
                fn to_le(self, out: &mut Vec<u8>) {
                    out.extend_from_slice(&self.to_le_bytes());
                }
            }
        };
    }
    elem!(f32, "little-endian f32 bytes");
    elem!(u64, "little-endian u64 bytes");
    elem!(i32, "little-endian i32 bytes");

    struct Blob<'a, T>(&'a [T]);

    impl<T: Elem> Serialize for Blob<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            // Activations cross the enclave pipe as these blobs on every layer: on
            // little-endian machines the values are their own encoding, no copy needed.
            #[cfg(target_endian = "little")]
            {
                s.serialize_bytes(bytemuck::cast_slice(self.0))
            }
            #[cfg(not(target_endian = "little"))]
            {
                let mut bytes = Vec::with_capacity(core::mem::size_of_val(self.0));
                for &v in self.0 {
                    v.to_le(&mut bytes);
                }
                s.serialize_bytes(&bytes)
            }
        }
    }

    struct ElemsVisitor<T>(PhantomData<T>);

    impl<'de, T: Elem> Visitor<'de> for ElemsVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::NAME)
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Vec<T>, E> {
            let w = core::mem::size_of::<T>();
            if !b.len().is_multiple_of(w) {
                return Err(E::invalid_length(b.len(), &self));
            }
            #[cfg(target_endian = "little")]
            {
                Ok(bytemuck::pod_collect_to_vec(b))
            }
            #[cfg(not(target_endian = "little"))]
            {
                Ok(b.chunks_exact(w).map(T::from_le).collect())
            }
        }
    }

    struct Elems<T>(Vec<T>);

    impl<'de, T: Elem> Deserialize<'de> for Elems<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_bytes(ElemsVisitor(PhantomData)).map(Elems)
        }
    }

    macro_rules! tensor_serde {
        ($tensor:ident, $elem:ty) => {
            impl Serialize for $tensor {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    let mut t = s.serialize_tuple(2)?;
                    t.serialize_element(&self.shape)?;
                    t.serialize_element(&Blob(&self.data))?;
                    t.end()
                }
            }

            impl<'de> Deserialize<'de> for $tensor {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct V;
                    impl<'de> Visitor<'de> for V {
                        type Value = $tensor;

                        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                            f.write_str("a tensor (shape, data)")
                        }

                        fn visit_seq<A: SeqAccess<'de>>(
                            self,
                            mut seq: A,
                        ) -> Result<$tensor, A::Error> {
                            let shape: Vec<usize> = seq
                                .next_element()?
                                .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                            let Elems::<$elem>(data) = seq
                                .next_element()?
                                .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                            // Data that does not fill its shape is corrupt input, not a
                            // panic later.
                            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                            if n != Some(data.len()) {
                                return Err(de::Error::custom(
                                    "tensor data does not match its shape",
                                ));
                            }
                            Ok($tensor { shape, data })
                        }
                    }
                    d.deserialize_tuple(2, V)
                }
            }
        };
    }
    tensor_serde!(Tensor, f32);
    tensor_serde!(RingTensor, u64);
    tensor_serde!(IntTensor, i32);
}
