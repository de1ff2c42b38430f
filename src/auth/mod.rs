//! API keys and the project (tenant) each one acts for.
//!
//! A key is `sk-batchd-` and 64 hex digits (two v4 UUIDs: 244 random bits
//! from the OS RNG), shown once at creation. The store keeps its SHA-256 and
//! a redacted form. Until the first key is created (and unless
//! `server.require_keys` is set) the API is open and every request acts for
//! the `default` project, and `batchd serve` refuses a non-loopback address
//! unless `server.allow_unauthenticated` says otherwise. Once a key has ever
//! existed, every `/v1` request needs `Authorization: Bearer <key>`, even
//! after every key is revoked: authentication never reopens.

pub mod keys;

pub use keys::{KeyService, NewKey, Principal};

/// The project of requests made while no API key exists.
pub const DEFAULT_PROJECT: &str = "default";
