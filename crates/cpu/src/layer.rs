//! One linear layer with fixed weights, packed once and run many times on NCHW tensors:
//! what an accelerator backend holds for each public layer of a secure package.
use shadownet_ir::{Graph, Op, Tensor};

use crate::{Error, Plan, Result};

/// A convolution, depthwise convolution, transposed convolution or dense layer (MatMul
/// with constant right operand) compiled for one input shape. Convolutions and dense
/// layers run on the packed blocked kernels (input reordered in, output reordered out);
/// the rest (transposed and grouped convolutions) on the portable-semantics host kernels.
///
/// ```
/// use shadownet_cpu::PackedLayer;
/// use shadownet_ir::{Conv, Op, Tensor};
/// let c = Conv { kernel: [3, 3], stride: [1, 1], dilation: [1, 1], pads: [1; 4], groups: 1 };
/// let w = Tensor::new(vec![8, 3, 3, 3], vec![0.1; 8 * 27]).unwrap();
/// let mut layer = PackedLayer::new(&Op::Conv(c), &w, None, &[1, 3, 10, 10]).unwrap();
/// let y = layer.run(&Tensor::zeros(&[1, 3, 10, 10])).unwrap();
/// assert_eq!(y.shape, vec![1, 8, 10, 10]);
/// ```
#[derive(Debug)]
pub struct PackedLayer {
    plan: Plan,
    input_shape: Vec<usize>,
}

impl PackedLayer {
    /// Packs `weight` (and `bias`, for convolutions) for inputs of `input_shape`.
    pub fn new(
        op: &Op,
        weight: &Tensor,
        bias: Option<&Tensor>,
        input_shape: &[usize],
    ) -> Result<PackedLayer> {
        if !op.is_linear() {
            return Err(Error::Unsupported {
                node: "packed layer".into(),
                op: "not a linear op (conv, transposed conv, matmul)",
            });
        }
        if bias.is_some() && matches!(op, Op::MatMul) {
            return Err(Error::Unsupported {
                node: "packed layer".into(),
                op: "a bias on a dense layer (add it as a separate op)",
            });
        }
        let mut g = Graph::new();
        let x = g.add_input("x", input_shape.to_vec());
        let mut ins = vec![x, g.add_const("w", weight.clone())];
        if let Some(b) = bias {
            ins.push(g.add_const("b", b.clone()));
        }
        g.outputs = g.add_node("layer", op.clone(), ins, &[])?;
        Ok(PackedLayer {
            plan: Plan::compile(&g)?,
            input_shape: input_shape.to_vec(),
        })
    }

    /// The shape `run` expects.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Runs the layer on `input` (NCHW, or [.., K] for dense layers).
    pub fn run(&mut self, input: &Tensor) -> Result<Tensor> {
        let mut out = self.plan.run(std::slice::from_ref(input))?;
        Ok(out.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadownet_ir::{Conv, ConvTranspose};

    fn t(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect(),
        )
        .unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.shape, b.shape);
        let scale = b.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = a
            .data
            .iter()
            .zip(&b.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err / scale < 1e-5, "rel err {}", err / scale);
    }

    #[test]
    fn every_linear_kind_matches_eval() {
        let conv = |k: usize, s: usize, g: usize| Conv {
            kernel: [k, k],
            stride: [s, s],
            dilation: [1, 1],
            pads: [k / 2; 4],
            groups: g,
        };
        let cases: Vec<(Op, Tensor, Vec<usize>)> = vec![
            (
                Op::Conv(conv(3, 1, 1)),
                t(&[20, 17, 3, 3], 1),
                vec![1, 17, 12, 9],
            ),
            (
                Op::Conv(conv(1, 1, 1)),
                t(&[33, 40, 1, 1], 2),
                vec![2, 40, 7, 7],
            ),
            (
                Op::Conv(conv(3, 2, 24)),
                t(&[24, 1, 3, 3], 3),
                vec![1, 24, 15, 15],
            ),
            (
                Op::Conv(conv(3, 2, 1)),
                t(&[16, 3, 3, 3], 4),
                vec![1, 3, 32, 32],
            ),
            (
                Op::Conv(conv(3, 1, 2)),
                t(&[8, 4, 3, 3], 5),
                vec![1, 8, 6, 6],
            ),
            (Op::MatMul, t(&[64, 10], 6), vec![1, 64]),
            (Op::MatMul, t(&[64, 10], 7), vec![4, 64]),
            (
                Op::ConvTranspose(ConvTranspose {
                    kernel: [2, 2],
                    stride: [2, 2],
                    dilation: [1, 1],
                    pads: [0; 4],
                    output_padding: [0, 0],
                    groups: 1,
                }),
                t(&[8, 4, 2, 2], 8),
                vec![1, 8, 5, 5],
            ),
        ];
        for (op, w, shape) in cases {
            let x = t(&shape, 9);
            let want = crate::eval("l", &op, &[&x, &w]).unwrap().remove(0);
            let mut layer = PackedLayer::new(&op, &w, None, &shape).unwrap();
            close(&layer.run(&x).unwrap(), &want);
            // Packed once, run again on other data.
            let x2 = t(&shape, 10);
            let want2 = crate::eval("l", &op, &[&x2, &w]).unwrap().remove(0);
            close(&layer.run(&x2).unwrap(), &want2);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = Conv {
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [1; 4],
            groups: 1,
        };
        let w = t(&[4, 3, 3, 3], 1);
        // Weights that do not fit the input.
        assert!(PackedLayer::new(&Op::Conv(c.clone()), &w, None, &[1, 5, 8, 8]).is_err());
        // Not a linear op.
        assert!(PackedLayer::new(&Op::Identity, &w, None, &[1, 3, 8, 8]).is_err());
        let mut l = PackedLayer::new(&Op::Conv(c), &w, None, &[1, 3, 8, 8]).unwrap();
        // An input of another shape.
        assert!(l.run(&t(&[1, 3, 9, 8], 2)).is_err());
    }
}
