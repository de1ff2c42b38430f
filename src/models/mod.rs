//! Model management: batchd starts, health-checks, swaps and stops the model
//! servers of `command` and `engine` models, and decides which batch runs on
//! which model when (`policy.rs`). Models with a fixed `url` are not managed
//! but share the same per-model FIFO turns.

pub mod launch;
pub mod manager;
pub mod policy;
pub mod process;

pub use manager::{Lease, ModelManager, ModelStatus, TurnRequest};
