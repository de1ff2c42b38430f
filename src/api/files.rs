//! `/v1/files`: upload, list, retrieve, download and delete.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;

use super::AppState;
use super::fields::{missing, parse_whole_number};
use super::project::Project;
use super::query::Params;
use super::wire::{FileDeleted, FileObject, ListEnvelope};
use crate::domain::{FileListQuery, FileRecord, MAX_EXPIRES_AFTER_SECS, Order, Purpose};
use crate::error::truncate;
use crate::files::service::{NewFile, StagedFile};
use crate::openai_error::{ApiError, ApiResult};

/// Largest accepted non-file form field (`purpose`, `expires_after[...]`).
const MAX_TEXT_FIELD: usize = 4096;

#[derive(Default)]
struct UploadForm {
    purpose: Option<String>,
    anchor: Option<String>,
    seconds: Option<String>,
    filename: Option<String>,
}

pub async fn upload(
    State(app): State<AppState>,
    Project(project_id): Project,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let mut multipart = multipart
        .map_err(|e| ApiError::bad_request(format!("The request must be multipart/form-data: {e}"), None, None))?;
    let mut form = UploadForm::default();
    let mut staged: Option<StagedFile> = None;
    // Any error after bytes were staged must remove them.
    let result = async {
        while let Some(field) = multipart.next_field().await.map_err(malformed)? {
            match field.name().unwrap_or_default() {
                "file" => {
                    if staged.is_some() {
                        return Err(ApiError::bad_request(
                            "Only one 'file' may be uploaded per request.",
                            Some("file"),
                            None,
                        ));
                    }
                    form.filename = Some(clean_filename(field.file_name().unwrap_or("upload")));
                    staged = Some(app.files.stage(field.map_err(|e| e.body_text())).await?);
                }
                "purpose" => form.purpose = Some(text(field).await?),
                "expires_after[anchor]" => form.anchor = Some(text(field).await?),
                "expires_after[seconds]" => form.seconds = Some(text(field).await?),
                _ => {} // unknown fields are ignored, as the SDKs may add some
            }
        }
        let purpose = form.purpose.as_deref().ok_or_else(|| missing("purpose"))?;
        let purpose = Purpose::parse_uploadable(purpose).ok_or_else(|| {
            let allowed: Vec<&str> = Purpose::UPLOADABLE.iter().map(|p| p.as_str()).collect();
            ApiError::bad_request(
                format!(
                    "Invalid value: '{}'. Supported values are: '{}'.",
                    truncate(purpose),
                    allowed.join("', '")
                ),
                Some("purpose"),
                Some("invalid_value"),
            )
        })?;
        let expires_after = parse_expires_after(
            form.anchor.as_deref(),
            form.seconds.as_deref(),
            app.min_expires_after_secs,
        )?;
        if staged.is_none() {
            return Err(missing("file"));
        }
        Ok((purpose, expires_after))
    }
    .await;
    let (purpose, expires_after) = match result {
        Ok(ok) => ok,
        Err(e) => {
            if let Some(staged) = staged {
                app.files.discard(staged).await;
            }
            if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                drain(&mut multipart, app.max_upload_bytes).await;
            }
            return Err(e);
        }
    };
    let new = NewFile {
        project_id,
        filename: form.filename.unwrap_or_else(|| "upload".into()),
        purpose,
        expires_after,
    };
    let record = app.files.commit(staged.expect("checked above"), new).await?;
    Ok(file_json(&record))
}

/// Reads and discards what is left of a refused upload (up to `budget` bytes).
/// HTTP/1.1 clients send the whole body before reading the answer; closing the
/// connection under them turns a clear 413 into a broken pipe.
async fn drain(multipart: &mut Multipart, budget: u64) {
    let mut drained: u64 = 0;
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            drained += chunk.len() as u64;
            if drained > budget {
                return;
            }
        }
    }
}

pub(super) fn malformed(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::bad_request(
        format!("The multipart body could not be parsed: {}", e.body_text()),
        None,
        None,
    )
}

async fn text(mut field: Field<'_>) -> ApiResult<String> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_TEXT_FIELD {
            return Err(ApiError::bad_request(
                format!("The field '{name}' is too long."),
                Some(&name),
                None,
            ));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::bad_request(format!("The field '{name}' is not UTF-8 text."), Some(&name), None))
}

fn parse_expires_after(anchor: Option<&str>, seconds: Option<&str>, min_secs: i64) -> ApiResult<Option<i64>> {
    match (anchor, seconds) {
        (None, None) => Ok(None),
        (anchor, seconds) => {
            if anchor != Some("created_at") {
                return Err(ApiError::bad_request(
                    "Invalid value for 'expires_after[anchor]': the only supported anchor is 'created_at'.",
                    Some("expires_after[anchor]"),
                    Some("invalid_value"),
                ));
            }
            match seconds.and_then(parse_whole_number) {
                Some(s) if (min_secs..=MAX_EXPIRES_AFTER_SECS).contains(&s) => Ok(Some(s)),
                _ => Err(ApiError::bad_request(
                    format!(
                        "Invalid value for 'expires_after[seconds]': expected an integer between {min_secs} and {MAX_EXPIRES_AFTER_SECS}."
                    ),
                    Some("expires_after[seconds]"),
                    Some("invalid_value"),
                )),
            }
        }
    }
}

/// Keeps only the last path component, without control characters: the
/// filename is metadata, but clients may show it or save downloads under it.
pub(super) fn clean_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    match cleaned.as_str() {
        "" | "." | ".." => "upload".to_owned(),
        _ => cleaned,
    }
}

fn file_json(record: &FileRecord) -> Response {
    Json(FileObject::from(record)).into_response()
}

pub async fn list(State(app): State<AppState>, Project(project_id): Project, params: Params) -> ApiResult<Response> {
    let order = match params.value("order") {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "Invalid value: '{}'. Supported values are: 'asc' and 'desc'.",
                    truncate(other)
                ),
                Some("order"),
                Some("invalid_value"),
            ));
        }
    };
    let query = FileListQuery {
        purpose: params.string("purpose").map(str::to_owned),
        after: params.string("after").map(str::to_owned),
        limit: params.int_in("limit", 1, 10_000, 10_000)?,
        order,
    };
    let page = app.files.list(&project_id, &query).await?;
    let envelope = ListEnvelope::new(&page, |f| &f.id, FileObject::from);
    Ok(Json(envelope).into_response())
}

pub async fn retrieve(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(file_json(&app.files.get(&project_id, &id).await?))
}

pub async fn delete(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let record = app.files.delete(&project_id, &id).await?;
    let deleted = FileDeleted {
        id: &record.id,
        object: "file",
        deleted: true,
    };
    Ok(Json(deleted).into_response())
}

/// Streams the stored bytes; never reads the whole file into memory.
pub async fn content(
    State(app): State<AppState>,
    Project(project_id): Project,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (record, stream) = app.files.content(&project_id, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, record.bytes.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_directories_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\data\\in.jsonl"), "in.jsonl");
        assert_eq!(clean_filename("a\nb.jsonl"), "ab.jsonl");
        assert_eq!(clean_filename(".."), "upload");
        assert_eq!(clean_filename("batch.jsonl"), "batch.jsonl");
    }
}
