//! The engine's HTTP face: the same OpenAI-compatible routes vLLM serves, so
//! batchd drives it through exactly the code path it uses for vLLM.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::chat_template::ChatTemplate;
use super::core::{EmbedJob, EngineShape, GenerateJob, Generated, Job};
use super::metrics::EngineMetrics;
use super::requests::{self, ChatRequest, Checked, CompletionRequest, EmbeddingRequest, Prompt};
use crate::ids;
use crate::openai_error::ApiError;

#[derive(Clone)]
pub struct EngineState {
    pub model: Arc<LlamaModel>,
    pub name: String,
    pub jobs: mpsc::Sender<Job>,
    pub template: Arc<ChatTemplate>,
    pub metrics: Arc<EngineMetrics>,
    pub shape: EngineShape,
}

pub fn router(state: EngineState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::openai_error::openai_errors))
        // axum's 2 MB default is below batchd's `max_line_bytes`: a line that
        // passed validation must not fail here with 413.
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::config::ENGINE_MAX_REQUEST_BYTES as usize,
        ))
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}."), None, None))
}

impl EngineState {
    /// vLLM answers 404 for a model it does not serve; so does the engine.
    fn check_model(&self, model: &Option<Value>) -> Result<(), ApiError> {
        match model {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(m)) if *m == self.name => Ok(()),
            Some(other) => Err(ApiError::bad_request(
                format!("The model `{}` does not exist.", other.as_str().unwrap_or("?")),
                Some("model"),
                Some("model_not_found"),
            )
            .with_status(StatusCode::NOT_FOUND)),
        }
    }

    fn tokenize(&self, prompt: &Prompt, add_special: bool, param: &str) -> Result<Vec<LlamaToken>, ApiError> {
        let tokens = match prompt {
            Prompt::Text(text) => self.model.vocab().tokenize(text.as_bytes(), add_special, true),
            Prompt::Tokens(ids) => {
                let n_vocab = i64::from(self.model.n_vocab());
                ids.iter()
                    .map(|&id| {
                        if (0..n_vocab).contains(&id) {
                            Ok(LlamaToken(id as i32))
                        } else {
                            Err(ApiError::bad_request(
                                format!("Token id {id} is out of vocabulary."),
                                Some(param),
                                Some("invalid_value"),
                            ))
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        if tokens.is_empty() {
            return Err(ApiError::bad_request(
                "The prompt is empty.",
                Some(param),
                Some("invalid_value"),
            ));
        }
        Ok(tokens)
    }

    /// The completion budget of a prompt, refusing what would overflow the
    /// sequence's share of the KV cache (vLLM's wording).
    fn budget(&self, prompt_len: usize, max_tokens: Option<u32>) -> Result<u32, ApiError> {
        let limit = self.shape.ctx_per_seq as usize;
        let available = limit.saturating_sub(prompt_len);
        let wanted = max_tokens.map(|m| m as usize).unwrap_or(available);
        if available == 0 || wanted > available {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({prompt_len} in the messages, {wanted} in the completion). Please reduce the length of the messages or completion.",
                    prompt_len + wanted
                ),
                None,
                Some("context_length_exceeded"),
            ));
        }
        Ok(wanted as u32)
    }

    /// Generates `checked.n` choices for `prompt`, all queued at once.
    async fn generate(&self, prompt: Vec<LlamaToken>, checked: &Checked) -> Result<Vec<Generated>, ApiError> {
        let max_tokens = self.budget(prompt.len(), checked.max_tokens)?;
        self.metrics.prompt_tokens.fetch_add(
            prompt.len() as u64 * u64::from(checked.n),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut waits = Vec::new();
        for i in 0..checked.n {
            let (reply, wait) = oneshot::channel();
            let mut params = checked.params.clone();
            params.max_tokens = max_tokens;
            params.seed = params.seed.wrapping_add(i);
            let job = GenerateJob {
                prompt: prompt.clone(),
                params,
                reply,
            };
            self.jobs.send(Job::Generate(job)).await.map_err(|_| engine_gone())?;
            waits.push(wait);
        }
        let mut out = Vec::new();
        for wait in waits {
            out.push(wait.await.map_err(|_| engine_gone())?);
        }
        Ok(out)
    }
}

fn engine_gone() -> ApiError {
    ApiError::bad_request("The engine failed while generating.", None, None)
        .with_status(StatusCode::INTERNAL_SERVER_ERROR)
}

fn usage(prompt: usize, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion as usize})
}

async fn chat(State(s): State<EngineState>, body: Bytes) -> Result<Response, ApiError> {
    let request: ChatRequest = parse(&body)?;
    s.check_model(&request.common.model)?;
    let max = request.max_completion_tokens.clone().or(request.max_tokens.clone());
    let param = if request.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let checked = requests::check_common(&request.common, &max, param)?;
    let messages = requests::messages(&request.messages)?;
    let text = s
        .template
        .render(&messages)
        .map_err(|e| ApiError::bad_request(e, Some("messages"), None))?;
    // The template writes the BOS token itself.
    let prompt = s.tokenize(&Prompt::Text(text), false, "messages")?;
    let prompt_len = prompt.len();
    let results = s.generate(prompt, &checked).await?;
    let completion: u32 = results.iter().map(|r| r.completion_tokens).sum();
    let choices: Vec<Value> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"index": i, "message": {"role": "assistant", "content": r.text},
                   "logprobs": null, "finish_reason": r.finish_reason.as_str()})
        })
        .collect();
    Ok(Json(json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()), "object": "chat.completion",
        "created": ids::now(), "model": s.name, "choices": choices, "usage": usage(prompt_len, completion),
    }))
    .into_response())
}

async fn completions(State(s): State<EngineState>, body: Bytes) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse(&body)?;
    s.check_model(&request.common.model)?;
    let checked = requests::check_common(&request.common, &request.max_tokens, "max_tokens")?;
    // OpenAI's default for legacy completions is 16 tokens.
    let checked = Checked {
        max_tokens: checked.max_tokens.or(Some(16)),
        ..checked
    };
    let prompts = requests::prompts(&request.prompt, "prompt")?;
    let mut tokenized = Vec::new();
    for p in &prompts {
        tokenized.push(s.tokenize(p, true, "prompt")?);
    }
    let prompt_total: usize = tokenized.iter().map(Vec::len).sum();
    let mut choices = Vec::new();
    let mut completion = 0;
    for tokens in tokenized {
        for r in s.generate(tokens, &checked).await? {
            completion += r.completion_tokens;
            choices.push(json!({"index": choices.len(), "text": r.text, "logprobs": null,
                                "finish_reason": r.finish_reason.as_str()}));
        }
    }
    Ok(Json(json!({
        "id": format!("cmpl-{}", uuid::Uuid::new_v4().simple()), "object": "text_completion",
        "created": ids::now(), "model": s.name, "choices": choices, "usage": usage(prompt_total, completion),
    }))
    .into_response())
}

async fn embeddings(State(s): State<EngineState>, body: Bytes) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = parse(&body)?;
    let model: Option<Value> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("model").cloned());
    s.check_model(&model)?;
    let inputs = requests::prompts(&request.input, "input")?;
    requests::check_embedding_inputs(inputs.len())?;
    let mut tokenized = Vec::new();
    for input in &inputs {
        let tokens = s.tokenize(input, true, "input")?;
        if tokens.len() > s.shape.ctx_per_seq as usize {
            return Err(ApiError::bad_request(
                format!(
                    "An input has {} tokens; the maximum is {}.",
                    tokens.len(),
                    s.shape.ctx_per_seq
                ),
                Some("input"),
                Some("context_length_exceeded"),
            ));
        }
        tokenized.push(tokens);
    }
    let prompt_tokens: usize = tokenized.iter().map(Vec::len).sum();
    requests::check_embedding_tokens(prompt_tokens)?;
    let (reply, wait) = oneshot::channel();
    s.jobs
        .send(Job::Embed(EmbedJob {
            inputs: tokenized,
            reply,
        }))
        .await
        .map_err(|_| engine_gone())?;
    let vectors = wait.await.map_err(|_| engine_gone())?.map_err(|e| {
        ApiError::bad_request(format!("Embedding failed: {e}"), None, None)
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
    })?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": s.name,
                   "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}))
    .into_response())
}

async fn models(State(s): State<EngineState>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": s.name, "object": "model", "created": 0, "owned_by": "batchd-engine",
                 "max_model_len": s.shape.ctx_per_seq}]}),
    )
}

async fn metrics(State(s): State<EngineState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(&s.name),
    )
}
