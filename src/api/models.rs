//! `GET /v1/models`: the models batches may name, with their state. `state`,
//! `running_batches`, `loads`, `last_error`, `replicas_loaded` and `backends`
//! are batchd's additions (the SDKs keep unknown fields): `state` is
//! `external` for a model at fixed URLs, else `unloaded`, `loading`,
//! `loaded` (batches running), `idle`, `unloading` or `sleeping`; `backends`
//! lists each server of the model (its url or device, state, lines in
//! flight, adaptive limit, lines served).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use crate::backends::{BackendSnapshot, BackendState};
use crate::metrics::BackendSample;

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
            if let (Some(obj), Some(pool)) = (model.as_object_mut(), app.models.get(name)) {
                obj.insert("backends".into(), json!(pool.snapshots()));
            }
            model
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /metrics`: Prometheus text format (see `crate::metrics`).
pub async fn metrics(State(app): State<AppState>) -> Result<String, crate::openai_error::ApiError> {
    let models = app
        .models
        .names()
        .map(|name| crate::metrics::ModelSnapshot {
            name: name.to_owned(),
            waiting_batches: app.manager.waiting(name),
            running_batches: app.manager.status(name).map_or(0, |s| s.running_batches),
            loads: app.manager.status(name).map_or(0, |s| s.loads),
            backends: app
                .models
                .get(name)
                .map(|pool| pool.snapshots().into_iter().map(sample).collect())
                .unwrap_or_default(),
        })
        .collect();
    let snapshot = crate::metrics::Snapshot {
        batches_by_status: app.batches.count_by_status().await?,
        models,
    };
    Ok(crate::metrics::render(snapshot))
}

fn sample(b: BackendSnapshot) -> BackendSample {
    BackendSample {
        id: b.id,
        up: b.state == BackendState::Healthy,
        in_flight: b.in_flight,
        concurrency_limit: b.concurrency_limit,
        lines_served: b.lines_served,
    }
}
