//! The portable kernels against naive loops (see common/conv_cases.rs).
use shadownet_kernels::eval;

include!("common/conv_cases.rs");
