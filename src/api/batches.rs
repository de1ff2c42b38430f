//! `/v1/batches`: create, retrieve, cancel and list.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::AppState;
use super::fields::{invalid_type, required_string, whole_number};
use super::project::Project;
use super::query::Params;
use super::wire::{BatchObject, ListEnvelope};
use crate::batch::service::NewBatch;
use crate::config::window_seconds;
use crate::domain::{BatchRecord, Endpoint, MAX_EXPIRES_AFTER_SECS};
use crate::error::truncate;
use crate::openai_error::{ApiError, ApiResult};

const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

fn batch_json(batch: &BatchRecord) -> Response {
    Json(BatchObject::from(batch)).into_response()
}

pub async fn create(State(app): State<AppState>, Project(project_id): Project, body: Bytes) -> ApiResult<Response> {
    let new = parse_create(project_id, &body, &app.completion_windows, app.min_expires_after_secs)?;
    Ok(batch_json(&app.batches.create(new).await?))
}

pub async fn retrieve(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(batch_json(&app.batches.get(&project_id, &id).await?))
}

/// The SDKs send no body (Python sends an empty JSON content type); any body is ignored.
pub async fn cancel(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(batch_json(&app.batches.cancel(&project_id, &id).await?))
}

/// `GET /v1/batches/{id}/stats`, batchd's own: throughput and token usage of
/// one batch for its owner. Timestamps have one-second resolution, so the
/// rates of very short batches are approximate.
pub async fn stats(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let b = app.batches.get(&project_id, &id).await?;
    let end = b
        .finalizing_at
        .or(b.completed_at)
        .or(b.cancelled_at)
        .or(b.expired_at)
        .or(b.failed_at)
        .unwrap_or_else(crate::ids::now);
    let elapsed = b.in_progress_at.map_or(0, |start| (end - start).max(1));
    let done = b.request_counts.completed + b.request_counts.failed;
    let usage = b.usage.unwrap_or_default();
    let rate = |n: i64| if elapsed > 0 { n as f64 / elapsed as f64 } else { 0.0 };
    Ok(Json(serde_json::json!({
        "object": "batch.stats",
        "id": b.id,
        "status": b.status.as_str(),
        "model": b.model,
        "elapsed_seconds": elapsed,
        "lines_total": b.request_counts.total,
        "lines_done": done,
        "lines_failed": b.request_counts.failed,
        "lines_per_second": rate(done),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "output_tokens_per_second": rate(usage.output_tokens),
    }))
    .into_response())
}

pub async fn list(State(app): State<AppState>, Project(project_id): Project, params: Params) -> ApiResult<Response> {
    let limit = params.int_in("limit", 1, 100, 20)?;
    let page = app.batches.list(&project_id, params.string("after"), limit).await?;
    let envelope = ListEnvelope::new(&page, |b| &b.id, BatchObject::from);
    Ok(Json(envelope).into_response())
}

/// Checks a create request the way OpenAI does, naming the offending parameter.
/// The create-batch body's fields; anything else is a 400, as OpenAI answers
/// an unrecognized argument (audit L15), so a typo such as
/// `completion_windows` is reported instead of silently dropped.
const CREATE_FIELDS: [&str; 5] = [
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "output_expires_after",
];

fn reject_unknown_parameters(body: &Map<String, Value>) -> ApiResult<()> {
    match body.keys().find(|k| !CREATE_FIELDS.contains(&k.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(ApiError::bad_request(
            format!("Unknown parameter: '{}'.", truncate(unknown)),
            Some(&truncate(unknown)),
            Some("unknown_parameter"),
        )),
    }
}

fn parse_create(
    project_id: String,
    raw: &[u8],
    allowed_windows: &[String],
    min_expires_after_secs: i64,
) -> ApiResult<NewBatch> {
    let body: Value = serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request(
            format!("We could not parse the JSON body of your request: {e}."),
            None,
            None,
        )
    })?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
            None,
            None,
        ));
    };
    reject_unknown_parameters(&body)?;
    let input_file_id = required_string(&body, "input_file_id")?.to_owned();
    let endpoint_raw = required_string(&body, "endpoint")?;
    let endpoint = Endpoint::parse(endpoint_raw).ok_or_else(|| {
        ApiError::bad_request(
            format!(
                "Invalid value: '{}'. Supported values are: {}.",
                truncate(endpoint_raw),
                Endpoint::supported_list()
            ),
            Some("endpoint"),
            Some("invalid_value"),
        )
    })?;
    let window = required_string(&body, "completion_window")?;
    if !allowed_windows.iter().any(|w| w == window) {
        let supported: Vec<String> = allowed_windows.iter().map(|w| format!("'{w}'")).collect();
        return Err(ApiError::bad_request(
            format!(
                "Invalid value for 'completion_window': '{}'. Supported values are: {}.",
                truncate(window),
                supported.join(", ")
            ),
            Some("completion_window"),
            Some("invalid_value"),
        ));
    }
    let window_secs = window_seconds(window).expect("allowed windows are checked at start-up");
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(check_metadata(map)?),
        Some(other) => return Err(invalid_type("metadata", "an object", other)),
    };
    let output_expires_after = match body.get("output_expires_after") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(check_output_expiry(map, min_expires_after_secs)?),
        Some(other) => return Err(invalid_type("output_expires_after", "an object", other)),
    };
    Ok(NewBatch {
        project_id,
        input_file_id,
        endpoint,
        completion_window: window.to_owned(),
        window_secs,
        metadata,
        output_expires_after,
    })
}

fn check_metadata(map: &Map<String, Value>) -> ApiResult<Map<String, Value>> {
    if map.len() > MAX_METADATA_PAIRS {
        return Err(ApiError::bad_request(
            format!(
                "Invalid 'metadata': too many properties. Expected at most {MAX_METADATA_PAIRS} properties, but got {}.",
                map.len()
            ),
            Some("metadata"),
            Some("invalid_value"),
        ));
    }
    for (key, value) in map {
        let param = format!("metadata.{}", truncate(key));
        if key.chars().count() > MAX_METADATA_KEY {
            return Err(ApiError::bad_request(
                format!("Invalid 'metadata': keys may be at most {MAX_METADATA_KEY} characters long."),
                Some(&param),
                Some("invalid_value"),
            ));
        }
        match value {
            Value::String(s) if s.chars().count() > MAX_METADATA_VALUE => {
                return Err(ApiError::bad_request(
                    format!(
                        "Invalid '{param}': string too long. Expected a string with maximum length {MAX_METADATA_VALUE}, but got a string with length {} instead.",
                        s.chars().count()
                    ),
                    Some(&param),
                    Some("string_above_max_length"),
                ));
            }
            Value::String(_) => {}
            other => return Err(invalid_type(&param, "a string", other)),
        }
    }
    Ok(map.clone())
}

fn check_output_expiry(map: &Map<String, Value>, min_secs: i64) -> ApiResult<i64> {
    if map.get("anchor").and_then(Value::as_str) != Some("created_at") {
        return Err(ApiError::bad_request(
            "Invalid value for 'output_expires_after.anchor': the only supported anchor is 'created_at'.",
            Some("output_expires_after.anchor"),
            Some("invalid_value"),
        ));
    }
    match map.get("seconds").and_then(whole_number) {
        Some(s) if (min_secs..=MAX_EXPIRES_AFTER_SECS).contains(&s) => Ok(s),
        _ => Err(ApiError::bad_request(
            format!(
                "Invalid value for 'output_expires_after.seconds': expected an integer between {min_secs} and {MAX_EXPIRES_AFTER_SECS}."
            ),
            Some("output_expires_after.seconds"),
            Some("invalid_value"),
        )),
    }
}
