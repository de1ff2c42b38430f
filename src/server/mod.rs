//! The `batchd serve` process around the router: the HTTP listener with its
//! connection limits and timeouts (`listener`), TLS (`tls`), the data
//! directory lock (`lock`) and the one owner of every background task
//! (`tasks`). `app.rs` wires them together.

pub mod listener;
pub mod lock;
pub mod tasks;
pub mod tls;
