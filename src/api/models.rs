//! `GET /v1/models`: the models batches may name.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;

pub async fn list(State(app): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = app
        .models
        .names()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "batchd"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
