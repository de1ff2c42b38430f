//! `GET /v1/models`: the models batches may name, with their state. `state`,
//! `running_batches`, `loads` and `last_error` are batchd's additions (the
//! SDKs keep unknown fields): `external` for a model at a fixed `url`, else
//! `unloaded`, `loading`, `loaded` (batches running), `idle`, `unloading` or
//! `sleeping`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;

pub async fn list(State(app): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = app
        .models
        .names()
        .map(|name| {
            let mut model = json!({"id": name, "object": "model", "created": 0, "owned_by": "batchd"});
            if let Some(status) = app.manager.status(name)
                && let (Some(obj), Ok(Value::Object(extra))) = (model.as_object_mut(), serde_json::to_value(status))
            {
                obj.extend(extra);
            }
            model
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
