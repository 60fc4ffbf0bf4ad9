//! The host kernels against naive loops: the same cases as the portable kernels'.
use shadownet_cpu::eval;

include!("../../kernels/tests/common/conv_cases.rs");
