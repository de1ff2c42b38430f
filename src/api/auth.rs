//! Authentication of `/v1` and `/admin` requests: `Authorization: Bearer`
//! with an API key once any key exists (open, as the `default` project,
//! before that). The key's project goes into the request for `Project`.
//! The admin API always needs an admin key.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::project::Project;
use crate::auth::keys::AuthFailure;
use crate::auth::{DEFAULT_PROJECT, KeyService, Principal};

pub async fn authenticate(State(keys): State<KeyService>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let is_admin_route = path.starts_with("/admin/");
    if !path.starts_with("/v1/") && !is_admin_route {
        return next.run(request).await;
    }
    let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let required = match keys.required().await {
        Ok(required) => required,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let principal = if !required && !is_admin_route {
        Principal {
            project_id: DEFAULT_PROJECT.to_owned(),
            admin: false,
        }
    } else {
        match keys.authenticate(header).await {
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
    if is_admin_route && !principal.admin {
        return ApiError::bad_request(
            "This API key is not an admin key; the admin API needs one (`batchd keys create --admin`).",
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
