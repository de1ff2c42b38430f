//! Authentication of `/v1`, `/admin` and `/metrics` requests:
//! `Authorization: Bearer` with an API key once any key was ever created or
//! `server.require_keys` is set (open, as the `default` project, before
//! that; never again after). The key's project goes into the request for
//! `Project`. The admin API always needs an admin key; `/metrics` needs one
//! whenever keys are required, unless `server.metrics_public`.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::project::Project;
use crate::auth::keys::AuthFailure;
use crate::auth::{DEFAULT_PROJECT, KeyService, Principal};
use crate::openai_error::ApiError;

/// What the middleware needs: the keys, and whether `/metrics` is public.
#[derive(Clone)]
pub struct AuthGate {
    pub keys: KeyService,
    /// `server.metrics_public`: scrape `/metrics` without a key even when
    /// keys are required. Off by default: the page shows every project's
    /// batch counts, model names and queue depths (audit L7).
    pub metrics_public: bool,
}

pub async fn authenticate(State(gate): State<AuthGate>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let is_admin_route = path.starts_with("/admin/");
    let is_metrics = path == "/metrics";
    if !path.starts_with("/v1/") && !is_admin_route && !is_metrics {
        return next.run(request).await;
    }
    let required = match gate.keys.required().await {
        Ok(required) => required,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if is_metrics && (!required || gate.metrics_public) {
        return next.run(request).await;
    }
    // `/metrics` spans every project, so it takes an admin key.
    let needs_admin = is_admin_route || is_metrics;
    let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = if !required && !needs_admin {
        Principal {
            project_id: DEFAULT_PROJECT.to_owned(),
            admin: false,
        }
    } else {
        match gate.keys.authenticate(header).await {
            Ok(Ok(principal)) => principal,
            Ok(Err(AuthFailure::Missing)) => {
                return unauthorized(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".into(),
                    None,
                );
            }
            Ok(Err(AuthFailure::Invalid(redacted))) => {
                return unauthorized(
                    format!("Incorrect API key provided: {redacted}."),
                    Some("invalid_api_key"),
                );
            }
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    if needs_admin && !principal.admin {
        return ApiError::bad_request(
            "This API key is not an admin key; the admin API and /metrics need one (`batchd keys create --admin`).",
            None,
            Some("insufficient_permissions"),
        )
        .with_status(StatusCode::FORBIDDEN)
        .into_response();
    }
    request.extensions_mut().insert(Project(principal.project_id));
    next.run(request).await
}

fn unauthorized(message: String, code: Option<&str>) -> Response {
    ApiError::bad_request(message, None, code)
        .with_status(StatusCode::UNAUTHORIZED)
        .into_response()
}
