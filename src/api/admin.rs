//! The admin API (admin keys only): API keys for any project.
//! `POST /admin/keys` `{"project_id", "name", "admin"?}` answers the key with
//! its `secret`, shown this once; `GET /admin/keys[?project_id=]` lists keys
//! without secrets; `DELETE /admin/keys/{key_id}` revokes one.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::query::Params;
use crate::openai_error::{ApiError, ApiResult};

#[derive(Deserialize)]
pub struct CreateKey {
    project_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    admin: bool,
}

pub async fn create_key(State(app): State<AppState>, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let request: CreateKey = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            format!("The body must be {{\"project_id\": string, \"name\"?: string, \"admin\"?: bool}}: {e}"),
            None,
            None,
        )
    })?;
    let key = app
        .keys
        .create(&request.project_id, &request.name, request.admin)
        .await?;
    Ok(Json(json!(key)))
}

pub async fn list_keys(State(app): State<AppState>, params: Params) -> ApiResult<Json<Value>> {
    let keys = app.keys.list(params.string("project_id")).await?;
    Ok(Json(json!({"object": "list", "data": keys})))
}

pub async fn revoke_key(State(app): State<AppState>, Path(key_id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.keys.revoke(&key_id).await?)))
}
