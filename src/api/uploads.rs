//! `/v1/uploads`: create, add part (multipart field `data`), complete, cancel.
//! There is no GET, as on OpenAI.

use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

use super::AppState;
use super::fields::{missing, required_string, whole_number};
use super::files::{clean_filename, malformed};
use super::project::Project;
use super::wire::FileObject;
use crate::domain::{FileRecord, MAX_EXPIRES_AFTER_SECS, Purpose, UploadPart, UploadRecord};
use crate::error::truncate;
use crate::files::uploads::NewUpload;
use crate::openai_error::{ApiError, ApiResult};

#[derive(Serialize)]
struct UploadObject<'a> {
    id: &'a str,
    object: &'static str,
    bytes: i64,
    created_at: i64,
    expires_at: i64,
    filename: &'a str,
    purpose: &'a str,
    status: &'a str,
    file: Option<FileObject<'a>>,
}

fn upload_json(upload: &UploadRecord, file: Option<&FileRecord>) -> Json<Value> {
    Json(
        serde_json::to_value(UploadObject {
            id: &upload.id,
            object: "upload",
            bytes: upload.bytes,
            created_at: upload.created_at,
            expires_at: upload.expires_at,
            filename: &upload.filename,
            purpose: &upload.purpose,
            status: upload.status.as_str(),
            file: file.map(FileObject::from),
        })
        .expect("serializable"),
    )
}

fn json_object(body: &Bytes) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::bad_request("The body must be a JSON object.", None, None)),
    }
}

pub async fn create(State(app): State<AppState>, Project(project_id): Project, body: Bytes) -> ApiResult<Json<Value>> {
    let map = json_object(&body)?;
    let bytes = match map.get("bytes") {
        None | Some(Value::Null) => return Err(missing("bytes")),
        Some(v) => whole_number(v).ok_or_else(|| {
            ApiError::bad_request(
                "Invalid type for 'bytes': expected an integer.",
                Some("bytes"),
                Some("invalid_type"),
            )
        })?,
    };
    let filename = clean_filename(required_string(&map, "filename")?);
    // The SDK's own example passes "txt": any string is accepted.
    let mime_type = required_string(&map, "mime_type")?.to_owned();
    let purpose_text = required_string(&map, "purpose")?;
    let purpose = Purpose::parse_uploadable(purpose_text).ok_or_else(|| {
        ApiError::bad_request(
            format!("Invalid value for 'purpose': '{}'.", truncate(purpose_text)),
            Some("purpose"),
            Some("invalid_value"),
        )
    })?;
    let expires_after = match map.get("expires_after") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => {
            let seconds = e.get("seconds").and_then(whole_number);
            match (e.get("anchor").and_then(Value::as_str), seconds) {
                (Some("created_at"), Some(s)) if (app.min_expires_after_secs..=MAX_EXPIRES_AFTER_SECS).contains(&s) => {
                    Some(s)
                }
                _ => {
                    return Err(ApiError::bad_request(
                        format!(
                            "Invalid value for 'expires_after': expected {{\"anchor\": \"created_at\", \"seconds\": {}..{MAX_EXPIRES_AFTER_SECS}}}.",
                            app.min_expires_after_secs
                        ),
                        Some("expires_after"),
                        Some("invalid_value"),
                    ));
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid type for 'expires_after'.",
                Some("expires_after"),
                Some("invalid_type"),
            ));
        }
    };
    let upload = app
        .uploads
        .create(NewUpload {
            project_id,
            filename,
            purpose,
            mime_type,
            bytes,
            expires_after,
        })
        .await?;
    Ok(upload_json(&upload, None))
}

#[derive(Serialize)]
struct PartObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: i64,
    upload_id: &'a str,
}

pub async fn add_part(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(upload_id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<Value>> {
    let mut multipart = multipart
        .map_err(|e| ApiError::bad_request(format!("The request must be multipart/form-data: {e}"), None, None))?;
    let mut part: Option<UploadPart> = None;
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        if field.name() == Some("data") && part.is_none() {
            part = Some(
                app.uploads
                    .add_part(&project_id, &upload_id, field.map_err(|e| e.body_text()))
                    .await?,
            );
        }
    }
    let part = part.ok_or_else(|| missing("data"))?;
    Ok(Json(
        serde_json::to_value(PartObject {
            id: &part.id,
            object: "upload.part",
            created_at: part.created_at,
            upload_id: &part.upload_id,
        })
        .expect("serializable"),
    ))
}

pub async fn complete(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(upload_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let map = json_object(&body)?;
    let part_ids: Vec<String> = match map.get("part_ids") {
        None | Some(Value::Null) => return Err(missing("part_ids")),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::bad_request(
                    "'part_ids' must be an array of strings.",
                    Some("part_ids"),
                    Some("invalid_type"),
                )
            })?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "'part_ids' must be an array of strings.",
                Some("part_ids"),
                Some("invalid_type"),
            ));
        }
    };
    let md5 = match map.get("md5") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        Some(Value::String(_)) => None,
        Some(_) => {
            return Err(ApiError::bad_request(
                "'md5' must be a string.",
                Some("md5"),
                Some("invalid_type"),
            ));
        }
    };
    let (upload, file) = app.uploads.complete(&project_id, &upload_id, &part_ids, md5).await?;
    Ok(upload_json(&upload, Some(&file)))
}

pub async fn cancel(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(upload_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let upload = app.uploads.cancel(&project_id, &upload_id).await?;
    Ok(upload_json(&upload, None))
}
