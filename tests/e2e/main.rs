//! weir's end-to-end tests: real components (built from this workspace by
//! `weir-tests`' build script), the real `weir` binary.

mod common;
mod examples;
mod sandbox;
