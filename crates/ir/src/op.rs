//! The closed op set. Every op works on NCHW activations; importers of NHWC formats
//! translate axes and weights on the way in. Attributes are fully resolved for the
//! concrete input size (no dynamic shapes survive import), so each op's output shape
//! follows from its attributes and input shapes alone.
use alloc::vec::Vec;

/// 2-D convolution. Inputs: x [N, C, H, W], w [O, C/groups, kh, kw], optional bias [O].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Conv {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
    pub groups: usize,
}

/// Transposed 2-D convolution. Inputs: x [N, C, H, W], w [C, O/groups, kh, kw], optional bias [O].
/// `pads` are the amounts cropped from the full output (top, left, bottom, right).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConvTranspose {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pads: [usize; 4],
    pub output_padding: [usize; 2],
    pub groups: usize,
}

/// Max or average pooling over the two trailing axes of an NCHW tensor.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Pool {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
    /// Output size when ceil_mode was requested is folded into `extra_end`: the extra
    /// bottom/right padding that lets the last window start past the explicit padding.
    pub extra_end: [usize; 2],
    /// Average pooling only: divide by the full window, padding included.
    pub count_include_pad: bool,
}

/// Elementwise unary functions. The trusted core runs all of these.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Activation {
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    LeakyRelu {
        alpha: f32,
    },
    Elu {
        alpha: f32,
    },
    Selu {
        alpha: f32,
        gamma: f32,
    },
    Sigmoid,
    Tanh,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    Mish,
    /// x * sigmoid(x)
    Silu,
    Gelu,
    Softplus,
    Sqrt,
    Neg,
    Exp,
    Log,
    Abs,
    Reciprocal,
    Erf,
    Floor,
    Ceil,
    /// Round half to even, as ONNX and numpy do.
    Round,
    Sin,
    Cos,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// x >= 0 ? x : slope * x, with numpy broadcasting of the slope.
    PRelu,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ReduceOp {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
    SumSquare,
    L2,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ResizeMode {
    Nearest(NearestRound),
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum NearestRound {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// How an output coordinate maps back to an input coordinate (ONNX Resize's
/// coordinate_transformation_mode; TFLite's align_corners/half_pixel_centers map onto it).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CoordMode {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    /// TFLite's half_pixel_centers for nearest: (x + 0.5) * scale without the -0.5.
    TfHalfPixelForNn,
}

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Resize {
    pub mode: ResizeMode,
    pub coord: CoordMode,
    /// Output size of every axis.
    pub out_shape: Vec<usize>,
    /// The scale of every axis (out / in unless the model gave explicit scales, which
    /// some coordinate modes use directly).
    pub scales: Vec<f32>,
}

/// Affine quantisation of one tensor: real = scale * (q - zero_point).
///
/// Integer data flows through the graph as f32 tensors holding exact integer values
/// (every int8/uint8 value and every int32 up to 2^24 is exact in f32): `Tensor` stays one
/// type, every layout op (reshape, transpose, concat, pad, max-pool, nearest resize) works
/// unchanged on quantized tensors, and the quantized ops below read those values back as
/// integers and compute in i32 exactly as the reference engines do.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QParam {
    pub scale: f32,
    pub zero_point: i32,
}

/// Whose integer arithmetic a quantized op reproduces: the two engines round differently,
/// and matching one of them exactly is the point of running a quantized model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum QFlavor {
    /// ONNX Runtime (MLAS): requantisation in f32, `float(acc) * (sx * sw / sy)` rounded
    /// half to even; QuantizeLinear divides and rounds half to even.
    Onnx,
    /// TFLite / LiteRT: gemmlowp fixed point, a Q31 multiplier and a shift per channel
    /// (rounding doubling high multiply, then rounding right shift); QUANTIZE rounds half
    /// away from zero.
    Tflite,
}

/// What an integer conv / matmul produces from its i32 accumulator
/// `acc = bias[c] + sum (x - x.zero_point) * (w - w_zero[c])`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum QOutput {
    /// Requantised to `y`, saturated to [min, max] (the type's range, narrowed by a fused
    /// ReLU / ReLU6).
    Quantized { y: QParam, min: i32, max: i32 },
    /// The accumulator itself, as ConvInteger / MatMulInteger give it (int32; converting it
    /// to f32 rounds exactly like the Cast to float that always follows).
    Accumulator,
    /// Dequantised: `float(acc) * (sx * sw[c])` (QGemm without an output scale).
    Real,
}

/// Integer conv / matmul parameters. The integer weights are the op's second input (a
/// constant); scales and zero points are attributes, so a converter sees the whole
/// quantised layer in one node.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QLinear {
    pub x: QParam,
    /// One entry per output channel (per-channel weights) or a single one.
    pub w_scale: Vec<f32>,
    pub w_zero: Vec<i32>,
    /// int32 bias per output channel, already in accumulator units; empty when none.
    pub bias: Vec<i32>,
    /// Extra factor on the requantisation scale (QGemm's alpha); 1 otherwise.
    pub alpha: f32,
    pub out: QOutput,
    pub flavor: QFlavor,
}

/// A quantized elementwise binary op on two quantized tensors (numpy broadcasting).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QBinary {
    /// Add or Mul.
    pub op: BinaryOp,
    pub a: QParam,
    pub b: QParam,
    pub y: QParam,
    pub min: i32,
    pub max: i32,
    pub flavor: QFlavor,
}

/// The op set. A new variant breaks every exhaustive `match` that must decide its fate:
/// execution, shape inference, and later whether it is outsourced or stays trusted.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Op {
    Conv(Conv),
    ConvTranspose(ConvTranspose),
    /// numpy matmul of two inputs (batch axes broadcast). With a constant right operand
    /// this is a dense layer.
    MatMul,
    /// Inputs: x, scale, bias, mean, var; channel axis 1.
    BatchNorm {
        epsilon: f32,
    },
    /// Inputs: x, scale, bias; normalise over H*W per (n, c).
    InstanceNorm {
        epsilon: f32,
    },
    /// Inputs: x, scale, optional bias; normalise over the axes from `axis` on.
    LayerNorm {
        axis: usize,
        epsilon: f32,
    },
    Act(Activation),
    Binary(BinaryOp),
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    Concat {
        axis: usize,
    },
    Split {
        axis: usize,
        sizes: Vec<usize>,
    },
    /// Per listed axis: first index, step (negative walks backwards) and element count.
    Slice {
        axes: Vec<usize>,
        starts: Vec<usize>,
        steps: Vec<i64>,
        counts: Vec<usize>,
    },
    /// Gather along `axis` with constant (normalised) indices of shape `indices_shape`.
    Gather {
        axis: usize,
        indices: Vec<usize>,
        indices_shape: Vec<usize>,
    },
    /// Any pure reinterpretation of the shape (Reshape, Flatten, Squeeze, Unsqueeze).
    Reshape {
        shape: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// Broadcast to `shape` (ONNX Expand with a constant shape, Tile-free broadcasting).
    Expand {
        shape: Vec<usize>,
    },
    Tile {
        repeats: Vec<usize>,
    },
    /// Per axis (before, after) padding.
    Pad {
        pads: Vec<(usize, usize)>,
        mode: PadMode,
        value: f32,
    },
    MaxPool(Pool),
    AvgPool(Pool),
    GlobalAvgPool,
    GlobalMaxPool,
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        keepdims: bool,
    },
    Resize(Resize),
    DepthToSpace {
        block: usize,
        /// CRD (PyTorch pixel shuffle) when true, DCR (TensorFlow) otherwise.
        crd: bool,
    },
    SpaceToDepth {
        block: usize,
    },
    Identity,
    /// Real values to integers: `clamp(round(x / scale) + zero_point, min, max)`.
    Quantize {
        q: QParam,
        min: i32,
        max: i32,
        flavor: QFlavor,
    },
    /// Integers to real values: `scale * (q - zero_point)`.
    Dequantize(QParam),
    /// Integer convolution. Inputs: x (quantized, NCHW), w (constant integers, OIHW).
    QConv {
        conv: Conv,
        q: QLinear,
    },
    /// Integer matmul of a [.., M, K] quantized input by a constant [K, N] integer matrix;
    /// output channel = column.
    QMatMul(QLinear),
    QBinary(QBinary),
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(c) if c.groups > 1 => "DepthwiseOrGroupConv",
            Op::Conv(_) => "Conv",
            Op::ConvTranspose(_) => "ConvTranspose",
            Op::MatMul => "MatMul",
            Op::BatchNorm { .. } => "BatchNorm",
            Op::InstanceNorm { .. } => "InstanceNorm",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::Act(a) => a.name(),
            Op::Binary(b) => b.name(),
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::Concat { .. } => "Concat",
            Op::Split { .. } => "Split",
            Op::Slice { .. } => "Slice",
            Op::Gather { .. } => "Gather",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Expand { .. } => "Expand",
            Op::Tile { .. } => "Tile",
            Op::Pad { .. } => "Pad",
            Op::MaxPool(_) => "MaxPool",
            Op::AvgPool(_) => "AvgPool",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::Reduce { .. } => "Reduce",
            Op::Resize(_) => "Resize",
            Op::DepthToSpace { .. } => "DepthToSpace",
            Op::SpaceToDepth { .. } => "SpaceToDepth",
            Op::Identity => "Identity",
            Op::Quantize { .. } => "Quantize",
            Op::Dequantize(_) => "Dequantize",
            Op::QConv { conv, .. } if conv.groups > 1 => "QDepthwiseOrGroupConv",
            Op::QConv { .. } => "QConv",
            Op::QMatMul(_) => "QMatMul",
            Op::QBinary(b) if b.op == BinaryOp::Mul => "QMul",
            Op::QBinary(_) => "QAdd",
        }
    }

    /// Linear ops with constant weights are the ones a secure package outsources to the
    /// untrusted accelerator; everything else runs in the trusted core.
    pub fn is_linear(&self) -> bool {
        matches!(self, Op::Conv(_) | Op::ConvTranspose(_) | Op::MatMul)
    }

    /// Integer conv / matmul: linear in their integer inputs (before requantisation), so
    /// a converter can later outsource them; the float schemes do not take them yet.
    pub fn is_quantized_linear(&self) -> bool {
        matches!(self, Op::QConv { .. } | Op::QMatMul(_))
    }
}

impl Activation {
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::Clip { .. } => "Clip",
            Activation::LeakyRelu { .. } => "LeakyRelu",
            Activation::Elu { .. } => "Elu",
            Activation::Selu { .. } => "Selu",
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
            Activation::HardSigmoid { .. } => "HardSigmoid",
            Activation::HardSwish => "HardSwish",
            Activation::Mish => "Mish",
            Activation::Silu => "Silu",
            Activation::Gelu => "Gelu",
            Activation::Softplus => "Softplus",
            Activation::Sqrt => "Sqrt",
            Activation::Neg => "Neg",
            Activation::Exp => "Exp",
            Activation::Log => "Log",
            Activation::Abs => "Abs",
            Activation::Reciprocal => "Reciprocal",
            Activation::Erf => "Erf",
            Activation::Floor => "Floor",
            Activation::Ceil => "Ceil",
            Activation::Round => "Round",
            Activation::Sin => "Sin",
            Activation::Cos => "Cos",
        }
    }
}

impl BinaryOp {
    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
            BinaryOp::Pow => "Pow",
            BinaryOp::Max => "Max",
            BinaryOp::Min => "Min",
            BinaryOp::PRelu => "PRelu",
        }
    }
}
