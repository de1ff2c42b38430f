//! Rendering one line of a batch's output or error file, exactly as OpenAI
//! writes them: `{"id","custom_id","response":{status_code,request_id,body}|null,"error":{code,message}|null}`.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::backends::Outcome;
use crate::backends::usage::extract_usage;
use crate::batch::record::Usage;
use crate::ids;

#[derive(Serialize)]
struct OutputLine<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<ResponsePart<'a>>,
    error: Option<ErrorPart<'a>>,
}

#[derive(Serialize)]
struct ResponsePart<'a> {
    status_code: u16,
    request_id: &'a str,
    body: &'a RawValue,
}

#[derive(Serialize)]
struct ErrorPart<'a> {
    code: &'a str,
    message: &'a str,
}

/// A rendered result: which file it belongs to, the line, and its token usage.
pub struct Rendered {
    pub is_error: bool,
    pub line: String,
    pub usage: Usage,
}

fn render(custom_id: &str, response: Option<ResponsePart<'_>>, error: Option<ErrorPart<'_>>) -> String {
    let line = OutputLine {
        id: ids::batch_request_id(),
        custom_id,
        response,
        error,
    };
    serde_json::to_string(&line).expect("output lines always serialize")
}

/// A line that never ran (cancelled or expired batch), or that failed without
/// any HTTP response from the backend.
pub fn error_line(custom_id: &str, code: &str, message: &str) -> Rendered {
    Rendered {
        is_error: true,
        line: render(custom_id, None, Some(ErrorPart { code, message })),
        usage: Usage::default(),
    }
}

/// Renders what the backend did with a line. A 2xx with a JSON body goes to the
/// output file; any other status goes to the error file with the response filled
/// in, as OpenAI does.
pub fn from_outcome(custom_id: &str, outcome: &Outcome) -> Rendered {
    let (status, request_id, body) = match outcome {
        Outcome::Unreachable { message } => return error_line(custom_id, "backend_unavailable", message),
        Outcome::Response {
            status,
            request_id,
            body,
        } => (*status, request_id, body),
    };
    let generated_id;
    let request_id = match request_id {
        Some(id) => id.as_str(),
        None => {
            generated_id = ids::request_id();
            generated_id.as_str()
        }
    };
    let parsed: Option<&RawValue> = std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
        .filter(|raw| raw.get().starts_with('{'));
    let success = (200..300).contains(&status);
    match (success, parsed) {
        (true, Some(body_json)) => Rendered {
            is_error: false,
            line: render(
                custom_id,
                Some(ResponsePart {
                    status_code: status,
                    request_id,
                    body: body_json,
                }),
                None,
            ),
            usage: extract_usage(body.as_ref()),
        },
        (true, None) => error_line(
            custom_id,
            "invalid_backend_response",
            "The model server answered with a body that is not a JSON object.",
        ),
        (false, Some(body_json)) => Rendered {
            is_error: true,
            line: render(
                custom_id,
                Some(ResponsePart {
                    status_code: status,
                    request_id,
                    body: body_json,
                }),
                None,
            ),
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
            let wrapped = RawValue::from_string(wrapped.to_string()).expect("valid json");
            Rendered {
                is_error: true,
                line: render(
                    custom_id,
                    Some(ResponsePart {
                        status_code: status,
                        request_id,
                        body: &wrapped,
                    }),
                    None,
                ),
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

    #[test]
    fn success_goes_to_output_with_body_as_object() {
        let outcome = Outcome::Response {
            status: 200,
            request_id: Some("req_1".into()),
            body: Bytes::from_static(br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}}"#),
        };
        let r = from_outcome("c1", &outcome);
        let v = parse(&r);
        assert!(!r.is_error);
        assert!(v["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(v["custom_id"], "c1");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["response"]["request_id"], "req_1");
        assert_eq!(v["response"]["body"]["id"], "x");
        assert!(v["error"].is_null());
        assert_eq!(r.usage.total_tokens, 3);
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
}
