//! The `shadownet` command line, as a library so integration tests can drive it.
pub mod accel;
pub mod bench;
pub mod keys;
pub mod npy;
pub mod plain;
pub mod secure;
pub mod trace;
