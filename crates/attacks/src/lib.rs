//! Model-extraction attacks on protected packages, as pure functions on plain data.
//!
//! The attacker of docs/security.md owns the device: it reads the public filter banks and
//! every tensor the accelerator receives and returns, chooses and repeats inputs, and
//! knows the architecture and the converter's code. Everything here works on what such an
//! attacker holds, as f64 matrices (a layer's public bank: rows = public filters, columns
//! = filter coordinates, with its [`unmix::Geometry`]; recorded activations as vectors),
//! does no I/O and is deterministic given its seeds. The real filters enter only
//! [`score`], to judge an attack against its floors.
//!
//! - [`score`](mod@score): best-|cos| matching, the public and black-box floors, the noise band and
//!   the "at the floor" verdict;
//! - [`unmix`]: static attacks on public banks (pairs, PCA, structure matching to fixed
//!   families, FastICA per group and over the whole layer, sparsity, low rank, templates);
//! - [`ica`](mod@ica): FastICA;
//! - [`lattice`]: LLL and the q-ary lattice attack on mixing modulo q;
//! - [`averaging`]: averaging masked observations and regressing the weights;
//! - [`seed`]: searching a seed space for a public value.
pub mod assign;
pub mod averaging;
pub mod ica;
pub mod lattice;
pub mod mat;
pub mod rng;
pub mod score;
pub mod seed;
pub mod unmix;

pub use mat::Mat;
pub use rng::Rng;
