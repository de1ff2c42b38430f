//! The engine thread: continuous batching over one llama.cpp context.
//!
//! Requests join and leave the running batch at any step. Each admitted
//! request gets its own sequence (slot) in the KV cache; every step decodes
//! the next token of every generating sequence plus a chunk of the prompts
//! still being prefilled, all in one `llama_decode`. Admission guarantees that
//! a sequence never outgrows its share of the cache, so llama.cpp's capacity
//! asserts can never fire.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use super::metrics::EngineMetrics;

/// How a generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    pub stop: Vec<String>,
    /// vLLM's extension: keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
}

/// One sequence to generate (a request with `n > 1` sends several).
pub struct GenerateJob {
    pub prompt: Vec<LlamaToken>,
    pub params: SamplingParams,
    pub reply: oneshot::Sender<Generated>,
}

#[derive(Debug)]
pub struct Generated {
    pub text: String,
    pub finish_reason: FinishReason,
    pub completion_tokens: u32,
}

/// Inputs to embed, each already tokenized and within the context.
pub struct EmbedJob {
    pub inputs: Vec<Vec<LlamaToken>>,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

pub enum Job {
    Generate(GenerateJob),
    Embed(EmbedJob),
}

/// Fixed shape of the engine, chosen at start.
#[derive(Debug, Clone)]
pub struct EngineShape {
    /// Sequences generated at once.
    pub parallel: u32,
    /// KV cells per sequence: prompt + max_tokens of one request must fit.
    pub ctx_per_seq: u32,
    /// Most tokens in one decode step.
    pub batch_tokens: u32,
    pub threads: i32,
}

/// A sequence occupying a slot.
struct Active {
    slot: i32,
    job: GenerateJob,
    sampler: LlamaSampler,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Position of the next token to decode.
    pos: i32,
    /// Token to feed next once the prompt is in (the last sampled one).
    next: Option<LlamaToken>,
    generated: Vec<u8>,
    completion_tokens: u32,
    /// Index in the current batch whose logits belong to this sequence.
    logits_at: Option<i32>,
}

fn sampler_for(params: &SamplingParams) -> LlamaSampler {
    if params.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    LlamaSampler::chain_simple([
        LlamaSampler::top_p(params.top_p.clamp(0.0, 1.0), 1),
        LlamaSampler::temp(params.temperature),
        LlamaSampler::dist(params.seed),
    ])
}

/// Runs the engine loop until every sender of `jobs` is gone.
pub fn run(
    backend: &LlamaBackend,
    model: Arc<LlamaModel>,
    shape: EngineShape,
    mut jobs: mpsc::Receiver<Job>,
    metrics: Arc<EngineMetrics>,
) -> anyhow::Result<()> {
    let n_ctx = shape.ctx_per_seq * shape.parallel;
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(n_ctx))
        .with_n_batch(shape.batch_tokens)
        .with_n_ubatch(shape.batch_tokens)
        .with_n_seq_max(shape.parallel)
        .with_kv_unified(true)
        .with_n_threads(shape.threads)
        .with_n_threads_batch(shape.threads);
    let mut ctx = model.new_context(backend, params)?;
    let mut embed_ctx: Option<LlamaContext<'_>> = None;
    let vocab = model.vocab();
    let mut batch = LlamaBatch::new(shape.batch_tokens as usize, shape.parallel as i32);
    let mut free_slots: Vec<i32> = (0..shape.parallel as i32).rev().collect();
    let mut active: Vec<Active> = Vec::new();
    let mut waiting: std::collections::VecDeque<GenerateJob> = Default::default();

    loop {
        // Take new work: block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match jobs.blocking_recv() {
                Some(job) => accept(job, &mut waiting, &model, backend, &mut embed_ctx, &shape),
                None => return Ok(()),
            }
        }
        while let Ok(job) = jobs.try_recv() {
            accept(job, &mut waiting, &model, backend, &mut embed_ctx, &shape);
        }
        // Admit waiting sequences into free slots (FIFO).
        while let Some(slot) = free_slots.pop() {
            let Some(job) = waiting.pop_front() else {
                free_slots.push(slot);
                break;
            };
            if job.reply.is_closed() {
                free_slots.push(slot);
                continue;
            }
            let sampler = sampler_for(&job.params);
            active.push(Active {
                slot,
                job,
                sampler,
                prefilled: 0,
                pos: 0,
                next: None,
                generated: Vec::new(),
                completion_tokens: 0,
                logits_at: None,
            });
        }
        metrics.running.store(active.len() as u64, Ordering::Relaxed);
        metrics.waiting.store(waiting.len() as u64, Ordering::Relaxed);
        if active.is_empty() {
            continue;
        }

        // Build one step: every generating sequence's next token first (so
        // decoding never starves), then prompt chunks in the room left.
        batch.clear();
        let budget = shape.batch_tokens as usize;
        for seq in active.iter_mut() {
            seq.logits_at = None;
            if let Some(token) = seq.next {
                seq.logits_at = Some(batch.n_tokens());
                batch.add(token, seq.pos, &[seq.slot], true)?;
            }
        }
        for seq in active.iter_mut() {
            if seq.next.is_some() {
                continue;
            }
            let room = budget - batch.n_tokens() as usize;
            if room == 0 {
                break;
            }
            let remaining = &seq.job.prompt[seq.prefilled..];
            let take = remaining.len().min(room);
            for (i, token) in remaining[..take].iter().enumerate() {
                let last = seq.prefilled + i + 1 == seq.job.prompt.len();
                if last {
                    seq.logits_at = Some(batch.n_tokens());
                }
                batch.add(*token, seq.pos, &[seq.slot], last)?;
                seq.pos += 1;
            }
            seq.prefilled += take;
        }
        if let Err(e) = ctx.decode(&mut batch) {
            // Admission keeps this from happening; if it does, fail the step's
            // requests rather than the process.
            tracing::error!(error = %e, "decode failed; failing the running requests");
            for seq in active.drain(..) {
                let _ = ctx.clear_kv_cache_seq(Some(seq.slot as u32), None, None);
                free_slots.push(seq.slot);
                drop(seq.job.reply);
            }
            continue;
        }
        metrics.steps.fetch_add(1, Ordering::Relaxed);

        // Sample for every sequence that got logits, and retire finished ones.
        let mut finished = Vec::new();
        for (i, seq) in active.iter_mut().enumerate() {
            if seq.job.reply.is_closed() {
                // The client went away: free its slot instead of generating for no one.
                finished.push((i, FinishReason::Stop));
                continue;
            }
            let Some(at) = seq.logits_at else { continue };
            if seq.next.is_some() {
                seq.pos += 1; // the fed token is now in the cache
            }
            // `sample` also accepts the token into the sampler's state.
            let token = seq.sampler.sample(&ctx, at);
            metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
            if vocab.is_eog(token) && !seq.job.params.ignore_eos {
                finished.push((i, FinishReason::Stop));
                continue;
            }
            seq.completion_tokens += 1;
            let piece = vocab.token_to_piece(token, false, None);
            seq.generated.extend_from_slice(&piece);
            if let Some(cut) = stop_at(&seq.generated, &seq.job.params.stop) {
                seq.generated.truncate(cut);
                finished.push((i, FinishReason::Stop));
                continue;
            }
            if seq.completion_tokens >= seq.job.params.max_tokens {
                finished.push((i, FinishReason::Length));
                continue;
            }
            seq.next = Some(token);
        }
        let mut done = Vec::with_capacity(finished.len());
        for (i, reason) in finished.into_iter().rev() {
            let seq = active.swap_remove(i);
            let _ = ctx.clear_kv_cache_seq(Some(seq.slot as u32), None, None);
            free_slots.push(seq.slot);
            done.push((seq, reason));
        }
        // Gauges first, so a client that reads /metrics after its answer sees them current.
        metrics.running.store(active.len() as u64, Ordering::Relaxed);
        for (seq, reason) in done {
            // Pieces are bytes: a character may span tokens, so decode at the end.
            let _ = seq.job.reply.send(Generated {
                text: String::from_utf8_lossy(&seq.generated).into_owned(),
                finish_reason: reason,
                completion_tokens: seq.completion_tokens,
            });
        }
    }
}

/// Where the earliest stop string starts in `text`, if one occurs.
fn stop_at(text: &[u8], stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.windows(s.len()).position(|w| w == s.as_bytes()))
        .min()
}

fn accept<'m>(
    job: Job,
    waiting: &mut std::collections::VecDeque<GenerateJob>,
    model: &'m LlamaModel,
    backend: &LlamaBackend,
    embed_ctx: &mut Option<LlamaContext<'m>>,
    shape: &EngineShape,
) {
    match job {
        Job::Generate(job) => waiting.push_back(job),
        // Embeddings run at once, on their own context, between steps.
        Job::Embed(job) => {
            let abandoned = || job.reply.is_closed();
            let result = embed(model, backend, embed_ctx, shape, &job.inputs, abandoned);
            let _ = job.reply.send(result);
        }
    }
}

/// The model's own pooling when its GGUF declares one (embedding models such
/// as BGE or Nomic), mean pooling for generative models, which declare none.
fn pooling_for(model: &LlamaModel) -> llama_cpp_2::context::params::LlamaPoolingType {
    use llama_cpp_2::context::params::LlamaPoolingType;
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    match model.meta_val_str(&format!("{arch}.pooling_type")) {
        Ok(_) => LlamaPoolingType::Unspecified,
        Err(_) => LlamaPoolingType::Mean,
    }
}

fn embed<'m>(
    model: &'m LlamaModel,
    backend: &LlamaBackend,
    embed_ctx: &mut Option<LlamaContext<'m>>,
    shape: &EngineShape,
    inputs: &[Vec<LlamaToken>],
    abandoned: impl Fn() -> bool,
) -> Result<Vec<Vec<f32>>, String> {
    if embed_ctx.is_none() {
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(shape.ctx_per_seq))
            .with_n_batch(shape.ctx_per_seq)
            .with_n_ubatch(shape.ctx_per_seq)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(pooling_for(model))
            .with_n_threads(shape.threads)
            .with_n_threads_batch(shape.threads);
        *embed_ctx = Some(model.new_context(backend, params).map_err(|e| e.to_string())?);
    }
    let ctx = embed_ctx.as_mut().expect("created above");
    let mut out = Vec::with_capacity(inputs.len());
    let mut batch = LlamaBatch::new(shape.ctx_per_seq as usize, 1);
    for tokens in inputs {
        // The requester gave up (timed out, batchd stopped): the engine
        // thread goes back to generation instead of finishing a dead job.
        if abandoned() {
            return Err("the request was abandoned".into());
        }
        batch.clear();
        for (pos, token) in tokens.iter().enumerate() {
            batch.add(*token, pos as i32, &[0], true).map_err(|e| e.to_string())?;
        }
        let _ = ctx.clear_kv_cache_seq(Some(0), None, None);
        ctx.decode(&mut batch).map_err(|e| e.to_string())?;
        let vector = ctx.embeddings_seq_ith(0).map_err(|e| e.to_string())?;
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        out.push(vector.iter().map(|x| x / norm).collect());
        let _ = ctx.clear_kv_cache_seq(Some(0), None, None);
    }
    Ok(out)
}
