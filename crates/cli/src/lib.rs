//! The `shadownet` command line, as a library so integration tests can drive it.
pub mod accel;
pub mod attack;
pub mod audit;
pub mod bench;
pub mod keys;
pub mod npy;
pub mod plain;
pub mod record;
pub mod secure;
pub mod trace;
