//! batchd: a self-hosted, OpenAI-compatible Batch API server.
//!
//! See `ARCHITECTURE.md` for the map. In one line each:
//! `api` is the HTTP edge, `domain` holds the records every layer shares,
//! `files` and `batch` their services, `store` persists metadata, `backends`
//! talks to model servers, `models` starts, swaps and schedules managed model
//! servers, `engine` is the embedded CPU inference server, `auth` holds API
//! keys and tenants, `webhooks` delivers batch events, `metrics` renders
//! `/metrics`, `openai_error` is the error envelope both HTTP servers answer
//! with, and `app` wires them together. Which module may import which is the
//! table in `tests/boundaries.rs`.

pub mod api;
pub mod app;
pub mod auth;
pub mod backends;
pub mod batch;
pub mod config;
pub mod domain;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
pub mod files;
pub mod http_client;
pub mod ids;
pub mod metrics;
pub mod models;
pub mod openai_error;
pub mod server;
pub mod store;
pub mod testing;
pub mod webhooks;
