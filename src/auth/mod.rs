//! API keys and the project (tenant) each one acts for.
//!
//! A key is `sk-batchd-` and 64 hex digits (256 bits from the OS RNG),
//! shown once at creation. The store keeps its SHA-256 and a redacted form.
//! While no key exists the API is open and every request acts for the
//! `default` project (and `batchd serve` refuses a non-loopback address
//! unless `server.allow_unauthenticated` says otherwise); once one exists,
//! every `/v1` request needs `Authorization: Bearer <key>`.

pub mod keys;

pub use keys::{ApiKey, KeyService, NewKey, Principal};

/// The project of requests made while no API key exists.
pub const DEFAULT_PROJECT: &str = "default";
