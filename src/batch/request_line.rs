//! Parsing one JSONL input line into a typed request. This is the only place
//! that reads a line's JSON: validation and execution both go through it.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::Endpoint;

/// A well-formed input line. `body` borrows the line's bytes, so the backend
/// receives the body exactly as the user wrote it.
#[derive(Debug)]
pub struct RequestLine<'a> {
    pub custom_id: String,
    pub model: String,
    pub body: &'a RawValue,
}

/// Why a line is not a valid request: becomes one entry of the batch's `errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl LineProblem {
    fn new(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            code,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }
}

#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

/// The body keys validation looks at; everything else passes through untouched.
#[derive(Deserialize)]
struct BodyView<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

fn missing(field: &str) -> LineProblem {
    LineProblem::new(
        "missing_required_parameter",
        format!("Missing required parameter: '{field}'."),
        Some(field),
    )
}

/// A JSON string value, or `None` for any other JSON type (including `null`).
fn as_string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

/// Parses and checks one line against the batch's endpoint. Model availability
/// and uniqueness of `custom_id` are file-level checks made by the caller.
pub fn parse_line(bytes: &[u8], endpoint: Endpoint) -> Result<RequestLine<'_>, LineProblem> {
    let invalid_json = || LineProblem::new("invalid_json_line", "This line is not parseable as valid JSON.", None);
    let text = std::str::from_utf8(bytes).map_err(|_| invalid_json())?;
    let raw: RawLine<'_> = serde_json::from_str(text).map_err(|_| invalid_json())?;

    if is_null(raw.custom_id) {
        return Err(missing("custom_id"));
    }
    let custom_id = raw.custom_id.and_then(as_string).ok_or_else(|| {
        LineProblem::new(
            "invalid_type",
            "Invalid type for 'custom_id': expected a string.",
            Some("custom_id"),
        )
    })?;
    if is_null(raw.method) {
        return Err(missing("method"));
    }
    if raw.method.and_then(as_string).as_deref() != Some("POST") {
        return Err(LineProblem::new(
            "invalid_method",
            "Invalid method: only 'POST' is supported in the Batch API.",
            Some("method"),
        ));
    }
    if is_null(raw.url) {
        return Err(missing("url"));
    }
    if raw.url.and_then(as_string).as_deref() != Some(endpoint.path()) {
        return Err(LineProblem::new(
            "invalid_url",
            "The URL provided for this request does not match the batch endpoint.",
            Some("url"),
        ));
    }
    let body = match raw.body {
        Some(body) if body.get() != "null" => body,
        _ => return Err(missing("body")),
    };
    let view: BodyView<'_> = serde_json::from_str(body.get()).map_err(|_| {
        LineProblem::new(
            "invalid_type",
            "Invalid type for 'body': expected an object.",
            Some("body"),
        )
    })?;
    if view.stream.is_some_and(|s| s.get() == "true") {
        return Err(LineProblem::new(
            "streaming_unsupported",
            format!("{}: Streaming is not supported in the Batch API.", endpoint.label()),
            Some("body.stream"),
        ));
    }
    if is_null(view.model) {
        return Err(LineProblem::new(
            "invalid_request",
            "Model parameter is required.",
            Some("body.model"),
        ));
    }
    let model = view.model.and_then(as_string).ok_or_else(|| {
        LineProblem::new(
            "invalid_type",
            "Invalid type for 'body.model': expected a string.",
            Some("body.model"),
        )
    })?;
    let required = match endpoint.required_field() {
        "messages" => view.messages,
        "prompt" => view.prompt,
        _ => view.input,
    };
    if is_null(required) {
        let field = endpoint.required_field();
        let mut name = field.to_owned();
        name[..1].make_ascii_uppercase();
        return Err(LineProblem::new(
            "invalid_request",
            format!("{name} parameter is required."),
            Some(&format!("body.{field}")),
        ));
    }
    Ok(RequestLine { custom_id, model, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: Endpoint = Endpoint::ChatCompletions;

    fn code(line: &str) -> (&'static str, Option<String>) {
        let p = parse_line(line.as_bytes(), CHAT).unwrap_err();
        (p.code, p.param)
    }

    #[test]
    fn a_good_line_keeps_its_body_verbatim() {
        let line = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}], "max_tokens": 5}}"#;
        let parsed = parse_line(line.as_bytes(), CHAT).unwrap();
        assert_eq!(parsed.custom_id, "a");
        assert_eq!(parsed.model, "m");
        assert_eq!(
            parsed.body.get(),
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}], "max_tokens": 5}"#
        );
    }

    #[test]
    fn each_problem_has_its_code_and_param() {
        assert_eq!(code("not json").0, "invalid_json_line");
        assert_eq!(code("[1,2]").0, "invalid_json_line");
        assert_eq!(code("\u{feff}{}").0, "invalid_json_line");
        assert_eq!(
            code(r#"{"method":"POST"}"#),
            ("missing_required_parameter", Some("custom_id".into()))
        );
        assert_eq!(
            code(r#"{"custom_id":"a"}"#),
            ("missing_required_parameter", Some("method".into()))
        );
        assert_eq!(code(r#"{"custom_id":"a","method":"GET"}"#).0, "invalid_method");
        assert_eq!(
            code(r#"{"custom_id":"a","method":"POST"}"#),
            ("missing_required_parameter", Some("url".into()))
        );
        assert_eq!(
            code(r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{}}"#).0,
            "invalid_url"
        );
        assert_eq!(
            code(r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}"#),
            ("missing_required_parameter", Some("body".into()))
        );
        assert_eq!(
            code(
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[],"stream":true}}"#
            ),
            ("streaming_unsupported", Some("body.stream".into()))
        );
        assert_eq!(
            code(r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}"#),
            ("invalid_request", Some("body.model".into()))
        );
        assert_eq!(
            code(r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#),
            ("invalid_request", Some("body.messages".into()))
        );
        assert_eq!(
            code(r#"{"custom_id":7,"method":"POST"}"#),
            ("invalid_type", Some("custom_id".into()))
        );
    }
}
