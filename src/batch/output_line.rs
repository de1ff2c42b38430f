//! Rendering one line of a batch's output or error file, exactly as OpenAI
//! writes them: `{"id","custom_id","response":{status_code,request_id,body}|null,"error":{code,message}|null}`.

use serde::Serialize;

use super::response_usage::parse_object_usage;
use crate::backends::Outcome;
use crate::domain::Usage;
use crate::ids;

/// A rendered result: which file it belongs to, the line, and its token usage.
pub struct Rendered {
    pub is_error: bool,
    pub line: String,
    pub usage: Usage,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<()>,
    error: ErrorPart<'a>,
}

#[derive(Serialize)]
struct ErrorPart<'a> {
    code: &'a str,
    message: &'a str,
}

/// A line that never ran (cancelled or expired batch), or that failed without
/// any HTTP response from the backend.
pub fn error_line(custom_id: &str, code: &str, message: &str) -> Rendered {
    let line = ErrorLine {
        id: ids::batch_request_id(),
        custom_id,
        response: None,
        error: ErrorPart { code, message },
    };
    Rendered {
        is_error: true,
        line: serde_json::to_string(&line).expect("error lines always serialize"),
        usage: Usage::default(),
    }
}

/// A line whose response was over `limits.max_response_bytes`.
fn too_large_line(custom_id: &str, limit: u64) -> Rendered {
    error_line(
        custom_id,
        "response_too_large",
        &format!(
            "The model server's response was larger than this server's limit of {limit} bytes (limits.max_response_bytes); it was not stored."
        ),
    )
}

/// The error line that replaces a rendered `line` the database can never
/// store (`too_large`: over its size limit; otherwise refused), so the line
/// is still accounted for and the result writer does not retry it forever.
/// `None` when `line` is not one of ours.
pub fn unstorable_line(line: &str, too_large: bool) -> Option<String> {
    let custom_id = custom_id_of(line)?;
    let rendered = if too_large {
        error_line(
            &custom_id,
            "response_too_large",
            "The model server's response was larger than the database can store.",
        )
    } else {
        error_line(
            &custom_id,
            "internal_error",
            "The result of this request could not be stored.",
        )
    };
    Some(rendered.line)
}

/// The `custom_id` of a line rendered here. Both shapes start with
/// `{"id":"batch_req_...","custom_id":<JSON string>`, so only that prefix is
/// read, however large the rest is.
fn custom_id_of(line: &str) -> Option<String> {
    use serde::Deserialize;
    let rest = line.strip_prefix("{\"id\":\"")?;
    let at = rest.find("\",\"custom_id\":")?;
    let value = &rest[at + "\",\"custom_id\":".len()..];
    String::deserialize(&mut serde_json::Deserializer::from_str(value)).ok()
}

/// A line with the backend's answer. `body` must be one valid JSON object; it
/// is embedded as is (no re-serialization, key order kept), except that line
/// breaks, which valid JSON can only hold as whitespace between tokens, become
/// spaces so the result stays one JSONL line.
fn response_line(custom_id: &str, status: u16, request_id: &str, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    let mut line = String::with_capacity(body.len() + custom_id.len() + 160);
    line.push_str("{\"id\":\"");
    line.push_str(&ids::batch_request_id());
    line.push_str("\",\"custom_id\":");
    line.push_str(&serde_json::to_string(custom_id).expect("strings serialize"));
    line.push_str(",\"response\":{\"status_code\":");
    line.push_str(&status.to_string());
    line.push_str(",\"request_id\":");
    line.push_str(&serde_json::to_string(request_id).expect("strings serialize"));
    line.push_str(",\"body\":");
    if body.contains(['\n', '\r']) {
        line.push_str(&body.replace(['\n', '\r'], " "));
    } else {
        line.push_str(body);
    }
    line.push_str("},\"error\":null}");
    line
}

/// Renders what the backend did with a line. A 2xx with a JSON object body goes
/// to the output file; any other status goes to the error file with the
/// response filled in, as OpenAI does.
pub fn from_outcome(custom_id: &str, outcome: &Outcome) -> Rendered {
    let (status, request_id, body) = match outcome {
        Outcome::Unreachable { message } => return error_line(custom_id, "backend_unavailable", message),
        Outcome::TooLarge { limit } => return too_large_line(custom_id, *limit),
        Outcome::Response {
            status,
            request_id,
            body,
        } => (*status, request_id, body),
    };
    let generated;
    let request_id = match request_id {
        Some(id) => id.as_str(),
        None => {
            generated = ids::request_id();
            generated.as_str()
        }
    };
    let success = (200..300).contains(&status);
    match (success, parse_object_usage(body)) {
        (true, Some(usage)) => Rendered {
            is_error: false,
            line: response_line(custom_id, status, request_id, body),
            usage,
        },
        (true, None) => error_line(
            custom_id,
            "invalid_backend_response",
            "The model server answered with a body that is not a JSON object.",
        ),
        (false, Some(_)) => Rendered {
            is_error: true,
            line: response_line(custom_id, status, request_id, body),
            usage: Usage::default(),
        },
        (false, None) => {
            // Keep the response shape clients expect: wrap a non-JSON error body
            // (an HTML proxy page, plain text) in OpenAI's error envelope.
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.chars().take(500).collect();
            let wrapped = serde_json::json!({"error": {
                "message": format!("The model server answered HTTP {status}: {snippet}"),
                "type": "backend_error", "param": null, "code": null}});
            Rendered {
                is_error: true,
                line: response_line(custom_id, status, request_id, wrapped.to_string().as_bytes()),
                usage: Usage::default(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(r: &Rendered) -> serde_json::Value {
        serde_json::from_str(&r.line).unwrap()
    }

    fn response(status: u16, body: &'static [u8]) -> Outcome {
        Outcome::Response {
            status,
            request_id: Some("req_1".into()),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn success_goes_to_output_with_body_as_object() {
        let r = from_outcome(
            "c\"1",
            &response(200, br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}}"#),
        );
        let v = parse(&r);
        assert!(!r.is_error);
        assert!(v["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(v["custom_id"], "c\"1");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["response"]["request_id"], "req_1");
        assert_eq!(v["response"]["body"]["id"], "x");
        assert!(v["error"].is_null());
        assert_eq!(r.usage.total_tokens, 3);
    }

    #[test]
    fn pretty_printed_bodies_stay_on_one_line() {
        let r = from_outcome(
            "c",
            &response(200, b"{\r\n  \"text\": \"a\\nb\",\n  \"n\": [1,\n 2]\n}\n"),
        );
        assert!(!r.line.contains('\n') && !r.line.contains('\r'));
        let v = parse(&r);
        assert_eq!(v["response"]["body"]["text"], "a\nb");
        assert_eq!(v["response"]["body"]["n"], serde_json::json!([1, 2]));
    }

    #[test]
    fn non_object_success_bodies_are_errors() {
        let r = from_outcome("c", &response(200, b"[1,2]"));
        assert!(r.is_error);
        assert_eq!(parse(&r)["error"]["code"], "invalid_backend_response");
    }

    #[test]
    fn http_errors_go_to_error_file_with_response_filled() {
        let outcome = Outcome::Response {
            status: 502,
            request_id: None,
            body: Bytes::from_static(b"<html>bad gateway</html>"),
        };
        let r = from_outcome("c2", &outcome);
        let v = parse(&r);
        assert!(r.is_error);
        assert_eq!(v["response"]["status_code"], 502);
        assert!(v["response"]["request_id"].as_str().unwrap().starts_with("req_"));
        assert!(
            v["response"]["body"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("502")
        );
        assert!(v["error"].is_null());
        let unreachable = from_outcome("c3", &Outcome::Unreachable { message: "down".into() });
        let v = parse(&unreachable);
        assert!(v["response"].is_null());
        assert_eq!(v["error"]["code"], "backend_unavailable");
    }

    #[test]
    fn too_large_responses_are_error_lines_naming_the_limit() {
        let r = from_outcome("c4", &Outcome::TooLarge { limit: 1024 });
        let v = parse(&r);
        assert!(r.is_error);
        assert_eq!(v["custom_id"], "c4");
        assert_eq!(v["error"]["code"], "response_too_large");
        assert!(v["error"]["message"].as_str().unwrap().contains("1024"));
    }

    #[test]
    fn an_unstorable_line_becomes_an_error_line_with_its_custom_id() {
        let ok = from_outcome("we\"ird\\id", &response(200, br#"{"id":"x"}"#));
        let replaced = unstorable_line(&ok.line, true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&replaced).unwrap();
        assert_eq!(v["custom_id"], "we\"ird\\id");
        assert_eq!(v["error"]["code"], "response_too_large");
        let err = error_line("c5", "batch_expired", "late");
        let v: serde_json::Value = serde_json::from_str(&unstorable_line(&err.line, false).unwrap()).unwrap();
        assert_eq!(
            (v["custom_id"].as_str(), v["error"]["code"].as_str()),
            (Some("c5"), Some("internal_error"))
        );
        assert_eq!(unstorable_line("not ours", true), None);
    }
}
