//! OpenAI request bodies as the engine understands them, checked before any
//! token reaches llama.cpp: every problem becomes a 400, never an abort.

use serde::Deserialize;
use serde_json::Value;

use super::chat_template::Message;
use super::core::SamplingParams;
use crate::openai_error::ApiError;

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;

#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Value,
    #[serde(default)]
    pub max_tokens: Option<Value>,
    #[serde(default)]
    pub max_completion_tokens: Option<Value>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub prompt: Value,
    #[serde(default)]
    pub max_tokens: Option<Value>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Deserialize)]
pub struct EmbeddingRequest {
    pub input: Value,
}

/// Parameters shared by chat and text completions.
#[derive(Deserialize, Default)]
pub struct Common {
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    pub temperature: Option<Value>,
    #[serde(default)]
    pub top_p: Option<Value>,
    #[serde(default)]
    pub seed: Option<Value>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub n: Option<Value>,
    #[serde(default)]
    pub stream: Option<Value>,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param), Some("invalid_value"))
}

fn number(v: &Option<Value>, param: &str, min: f64, max: f64, default: f64) -> Result<f64, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if (min..=max).contains(&x) {
                Ok(x)
            } else {
                Err(bad(
                    format!("'{param}' must be between {min} and {max}, got {x}."),
                    param,
                ))
            }
        }
        Some(_) => Err(bad(format!("'{param}' must be a number."), param)),
    }
}

fn integer(v: &Option<Value>, param: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(bad(
                format!("'{param}' must be an integer between {min} and {max}."),
                param,
            )),
        },
        Some(_) => Err(bad(format!("'{param}' must be an integer."), param)),
    }
}

pub struct Checked {
    pub params: SamplingParams,
    /// `None`: generate until the context is full.
    pub max_tokens: Option<u32>,
    pub n: u32,
}

/// Checks the sampling parameters. `max_tokens` comes from whichever field the
/// endpoint uses.
pub fn check_common(common: &Common, max_tokens: &Option<Value>, max_tokens_param: &str) -> Result<Checked, ApiError> {
    if matches!(common.stream, Some(Value::Bool(true))) {
        return Err(bad("Streaming is not supported by the embedded engine.", "stream"));
    }
    let temperature = number(&common.temperature, "temperature", 0.0, 2.0, 1.0)? as f32;
    let top_p = number(&common.top_p, "top_p", 0.0, 1.0, 1.0)? as f32;
    let seed = match &common.seed {
        None | Some(Value::Null) => fastrand::u32(..),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|s| s as u32)
            .ok_or_else(|| bad("'seed' must be an integer.", "seed"))?,
        Some(_) => return Err(bad("'seed' must be an integer.", "seed")),
    };
    let stop = match &common.stop {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("'stop' must hold strings.", "stop"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("'stop' must be a string or up to 4 strings.", "stop")),
    };
    let n = integer(&common.n, "n", 1, u64::from(MAX_N))?.unwrap_or(1) as u32;
    let max_tokens = integer(max_tokens, max_tokens_param, 1, u64::from(u32::MAX))?.map(|m| m as u32);
    Ok(Checked {
        params: SamplingParams {
            max_tokens: max_tokens.unwrap_or(0),
            temperature,
            top_p,
            seed,
            stop,
            ignore_eos: common.ignore_eos.unwrap_or(false),
        },
        max_tokens,
        n,
    })
}

/// Flattens `messages` into role + text (text parts are joined; other parts
/// are refused, since the engine has no vision).
pub fn messages(v: &Value) -> Result<Vec<Message>, ApiError> {
    let Value::Array(items) = v else {
        return Err(bad("'messages' must be an array.", "messages"));
    };
    if items.is_empty() {
        return Err(bad("'messages' must not be empty.", "messages"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("messages[{i}].role must be a string."), "messages"))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => Ok(t.to_owned()),
                            _ => Err(bad(
                                format!("messages[{i}]: only text content parts are supported."),
                                "messages",
                            )),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n"),
                Some(_) => {
                    return Err(bad(
                        format!("messages[{i}].content must be a string or parts."),
                        "messages",
                    ));
                }
            };
            Ok(Message {
                role: role.to_owned(),
                content,
            })
        })
        .collect()
}

/// A prompt or embeddings input: text, or already-tokenized ids.
pub enum Prompt {
    Text(String),
    Tokens(Vec<i64>),
}

/// `prompt` / `input`: a string, an array of strings, an array of token ids,
/// or an array of token-id arrays.
pub fn prompts(v: &Value, param: &str) -> Result<Vec<Prompt>, ApiError> {
    let as_tokens = |items: &Vec<Value>| -> Option<Vec<i64>> { items.iter().map(Value::as_i64).collect() };
    match v {
        Value::String(s) => Ok(vec![Prompt::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => Err(bad(format!("'{param}' must not be empty."), param)),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .map(|s| Prompt::Text(s.as_str().unwrap_or_default().to_owned()))
            .collect()),
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![Prompt::Tokens(
            as_tokens(items).ok_or_else(|| bad("token ids must be integers.", param))?,
        )]),
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|i| {
                i.as_array()
                    .and_then(as_tokens)
                    .map(Prompt::Tokens)
                    .ok_or_else(|| bad("token ids must be integers.", param))
            })
            .collect(),
        _ => Err(bad(
            format!("'{param}' must be a string, strings, or token ids."),
            param,
        )),
    }
}

/// Most inputs in one embeddings request, as OpenAI.
pub const MAX_EMBEDDING_INPUTS: usize = 2048;
/// Most tokens summed over one embeddings request's inputs, as OpenAI.
pub const MAX_EMBEDDING_TOKENS: usize = 300_000;

/// Embeddings run on the engine thread between generation steps, so one
/// request with a huge input list would stall every other request.
pub fn check_embedding_inputs(count: usize) -> Result<(), ApiError> {
    if count > MAX_EMBEDDING_INPUTS {
        return Err(bad(
            format!("'input' has {count} items; the maximum is {MAX_EMBEDDING_INPUTS}."),
            "input",
        ));
    }
    Ok(())
}

pub fn check_embedding_tokens(tokens: usize) -> Result<(), ApiError> {
    if tokens > MAX_EMBEDDING_TOKENS {
        return Err(ApiError::bad_request(
            format!("The inputs have {tokens} tokens in total; the maximum per request is {MAX_EMBEDDING_TOKENS}."),
            Some("input"),
            Some("max_tokens_per_request"),
        ));
    }
    Ok(())
}
