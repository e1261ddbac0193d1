//! `forge runner`: a remote runner agent (see docs/runners.md).

pub mod protocol;
