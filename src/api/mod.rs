//! The HTTP edge: axum routes for OpenAI's Files and Batches APIs. Handlers
//! parse and check the request, call a service, and render the wire object;
//! they never touch SQL or stored bytes directly.

pub mod admin;
pub mod auth;
pub mod batches;
pub mod fields;
pub mod files;
pub mod models;
pub mod project;
pub mod query;
pub mod upload_limit;
pub mod uploads;
pub mod wire;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::backends::ModelRegistry;
use crate::batch::BatchService;
use crate::files::FileService;
use crate::openai_error::{self, ApiError};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub files: FileService,
    pub batches: BatchService,
    pub models: ModelRegistry,
    pub manager: crate::models::ModelManager,
    pub keys: crate::auth::KeyService,
    pub uploads: crate::files::uploads::UploadService,
    pub max_upload_bytes: u64,
    /// `execution.allowed_completion_windows`.
    pub completion_windows: Vec<String>,
    /// `limits.min_expires_after_secs`.
    pub min_expires_after_secs: i64,
    /// `server.metrics_public`.
    pub metrics_public: bool,
    /// `limits.max_concurrent_uploads` slots, taken by each upload while it streams.
    pub upload_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Issues `req_<hex>` ids, the format OpenAI's `x-request-id` has.
#[derive(Clone, Copy)]
struct OpenAiRequestId;

impl MakeRequestId for OpenAiRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        crate::ids::request_id().parse().ok().map(RequestId::new)
    }
}

pub fn router(state: AppState) -> Router {
    let limit_uploads =
        || axum::middleware::from_fn_with_state(state.upload_slots.clone(), upload_limit::limit_uploads);
    Router::new()
        .route(
            "/v1/files",
            // Uploads are streamed and bounded by `limits.max_upload_bytes`
            // while they stream, not by axum's default 2 MB buffer limit.
            post(files::upload)
                .layer(DefaultBodyLimit::disable())
                .layer(limit_uploads())
                .get(files::list),
        )
        .route("/v1/files/{file_id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{file_id}/content", get(files::content))
        .route("/v1/uploads", post(uploads::create))
        .route(
            "/v1/uploads/{upload_id}/parts",
            // Parts stream to storage, bounded at 64 MB while they stream.
            post(uploads::add_part)
                .layer(DefaultBodyLimit::disable())
                .layer(limit_uploads()),
        )
        .route("/v1/uploads/{upload_id}/complete", post(uploads::complete))
        .route("/v1/uploads/{upload_id}/cancel", post(uploads::cancel))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{batch_id}", get(batches::retrieve))
        .route("/v1/batches/{batch_id}/cancel", post(batches::cancel))
        .route("/v1/batches/{batch_id}/stats", get(batches::stats))
        .route("/v1/models", get(models::list))
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/admin/keys/{key_id}", axum::routing::delete(admin::revoke_key))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(models::metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            auth::AuthGate {
                keys: state.keys.clone(),
                metrics_public: state.metrics_public,
            },
            auth::authenticate,
        ))
        .with_state(state)
        .layer(axum::middleware::from_fn(openai_error::openai_errors))
        // Logs method, path, status and latency; never bodies or headers.
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(OpenAiRequestId))
}

/// OpenAI answers unknown routes with 404 and `Invalid URL (METHOD /path)`.
async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::bad_request(format!("Invalid URL ({method} {})", uri.path()), None, None)
        .with_status(StatusCode::NOT_FOUND)
}
