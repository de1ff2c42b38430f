//! Test doubles and fixtures shipped with batchd so that its own tests, the
//! SDK compatibility suites and the benchmarks share them. Nothing in the
//! server depends on this module.

pub mod fake_backend;
pub mod tiny_gguf;
