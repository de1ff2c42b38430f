//! Reading token usage out of a backend's response body. Chat and text
//! completions and embeddings report `prompt_tokens`/`completion_tokens`; the
//! Responses API reports `input_tokens`/`output_tokens`. Both map onto the
//! Batch object's `usage`.

use serde::Deserialize;

use crate::domain::Usage;

#[derive(Deserialize, Default)]
struct Body {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize, Default)]
struct RawUsage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    total_tokens: Option<i64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<i64>,
    reasoning_tokens: Option<i64>,
}

/// Checks that `body` is exactly one JSON object and reads the usage it
/// reports (zeros if none). `None` if the body is not a JSON object. One pass
/// over the body does both, which matters at tens of thousands of lines a second.
pub fn parse_object_usage(body: &[u8]) -> Option<Usage> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(parsed) => Some(parsed.usage.map(to_usage).unwrap_or_default()),
        // Valid JSON whose `usage` has an unexpected shape still counts as a
        // response; it just reports no tokens.
        Err(_) => serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .ok()
            .map(|_| Usage::default()),
    }
}

/// Most tokens one line may report for each count. A backend that reports
/// more (a bug, or a hostile endpoint) is not believed: sums over a batch
/// stay far from `i64::MAX`, so the batch's counters can neither wrap nor turn
/// into SQLite REALs (audit M3).
pub const MAX_LINE_TOKENS: i64 = i32::MAX as i64;

fn clamp(tokens: i64) -> i64 {
    tokens.clamp(0, MAX_LINE_TOKENS)
}

fn to_usage(u: RawUsage) -> Usage {
    let input = clamp(u.prompt_tokens.or(u.input_tokens).unwrap_or(0));
    let output = clamp(u.completion_tokens.or(u.output_tokens).unwrap_or(0));
    let input_details = u.prompt_tokens_details.or(u.input_tokens_details).unwrap_or_default();
    let output_details = u
        .completion_tokens_details
        .or(u.output_tokens_details)
        .unwrap_or_default();
    Usage {
        input_tokens: input,
        cached_tokens: clamp(input_details.cached_tokens.unwrap_or(0)),
        output_tokens: output,
        reasoning_tokens: clamp(output_details.reasoning_tokens.unwrap_or(0)),
        total_tokens: clamp(u.total_tokens.unwrap_or(input + output)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_responses_usage_map_to_batch_usage() {
        let chat = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1}}}"#;
        let u = parse_object_usage(chat).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens, u.cached_tokens),
            (3, 4, 7, 1)
        );
        let resp = br#"{"usage":{"input_tokens":2,"output_tokens":5,"output_tokens_details":{"reasoning_tokens":3}}}"#;
        let u = parse_object_usage(resp).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens, u.reasoning_tokens),
            (2, 5, 7, 3)
        );
        let emb = br#"{"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(parse_object_usage(emb).unwrap().output_tokens, 0);
        assert_eq!(parse_object_usage(b"{}"), Some(Usage::default()));
        assert_eq!(parse_object_usage(b"garbage"), None);
        assert_eq!(parse_object_usage(b"[1]"), None);
        assert_eq!(parse_object_usage(b"{} {}"), None);
        assert_eq!(parse_object_usage(br#"{"usage":"odd"}"#), Some(Usage::default()));
    }

    #[test]
    fn absurd_counts_are_clamped_per_line() {
        let huge = format!(
            r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":{max},"prompt_tokens_details":{{"cached_tokens":-5}}}}}}"#,
            max = i64::MAX
        );
        let u = parse_object_usage(huge.as_bytes()).unwrap();
        assert_eq!(u.input_tokens, MAX_LINE_TOKENS);
        assert_eq!(u.output_tokens, MAX_LINE_TOKENS);
        // The derived total is clamped too, and never computed with an overflow.
        assert_eq!(u.total_tokens, MAX_LINE_TOKENS);
        assert_eq!(u.cached_tokens, 0);
    }
}
