//! Reading fields of request bodies (JSON objects and form fields) with
//! OpenAI's error for each way a field can be wrong: missing, of the wrong
//! type, or not a whole number.

use serde_json::{Map, Value};

use crate::openai_error::{ApiError, ApiResult};

pub fn missing(name: &str) -> ApiError {
    ApiError::bad_request(
        format!("Missing required parameter: '{name}'."),
        Some(name),
        Some("missing_required_parameter"),
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::bad_request(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
        Some(param),
        Some("invalid_type"),
    )
}

/// A required string field; null counts as missing.
pub fn required_string<'a>(body: &'a Map<String, Value>, name: &str) -> ApiResult<&'a str> {
    match body.get(name) {
        None | Some(Value::Null) => Err(missing(name)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid_type(name, "a string", other)),
    }
}

/// An integer, also when written as a float with no fraction (`3600.0`): JSON
/// does not tell the two apart, and neither does JSON Schema's `integer`.
pub fn whole_number(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().and_then(whole))
}

/// The same for a form field's text.
pub fn parse_whole_number(text: &str) -> Option<i64> {
    let text = text.trim();
    text.parse::<i64>()
        .ok()
        .or_else(|| text.parse::<f64>().ok().and_then(whole))
}

fn whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}
