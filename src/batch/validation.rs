//! The `validating` phase: streams the input file once and either accepts it
//! (one model, N request lines) or lists every problem found, by line.

use std::collections::HashSet;
use std::hash::BuildHasher;

use super::lines::{LineError, LineReader};
use super::request_line::parse_line;
use crate::config::LimitsConfig;
use crate::domain::{BatchError, Endpoint};

#[derive(Debug)]
pub enum Verdict {
    Valid { model: String, total: u64 },
    Invalid(Vec<BatchError>),
}

/// Collects problems, keeping at most `max` of them.
struct Problems {
    list: Vec<BatchError>,
    max: usize,
}

impl Problems {
    fn push(&mut self, e: BatchError) {
        if self.list.len() < self.max {
            self.list.push(e);
        }
    }
}

/// Validates the whole file. `file_bytes` is the stored size, checked before
/// reading; `is_model_served` says whether a model name is configured.
pub async fn validate(
    mut reader: LineReader,
    file_bytes: u64,
    endpoint: Endpoint,
    limits: &LimitsConfig,
    is_model_served: impl Fn(&str) -> bool,
) -> Result<Verdict, LineError> {
    let mut problems = Problems {
        list: vec![],
        max: limits.max_reported_errors.max(1),
    };
    if file_bytes > limits.max_batch_input_bytes {
        problems.push(BatchError::new(
            "file_too_large",
            format!(
                "The input file is {file_bytes} bytes; the maximum for a batch is {} bytes.",
                limits.max_batch_input_bytes
            ),
            None,
            None,
        ));
        return Ok(Verdict::Invalid(problems.list));
    }
    // Duplicate detection keeps a keyed 64-bit hash per custom_id rather than the
    // string: 8 bytes a line, so even a million-line file costs a few MB.
    let hasher = std::collections::hash_map::RandomState::new();
    let mut seen_ids: HashSet<u64> = HashSet::new();
    let mut model: Option<String> = None;
    let mut unknown_models_reported: HashSet<String> = HashSet::new();
    let mut total: u64 = 0;

    while let Some(line) = reader.next_line().await {
        let line = match line {
            Ok(line) => line,
            Err(LineError::TooLong { line, limit }) => {
                problems.push(BatchError::new(
                    "line_too_large",
                    format!("This line is longer than the limit of {limit} bytes."),
                    None,
                    Some(line),
                ));
                // The rest of the file cannot be split reliably past this point.
                return Ok(Verdict::Invalid(problems.list));
            }
            Err(e) => return Err(e),
        };
        total += 1;
        if total > limits.max_batch_lines {
            problems.push(BatchError::new(
                "too_many_lines",
                format!(
                    "The input file has more than {} requests, the maximum for a batch.",
                    limits.max_batch_lines
                ),
                None,
                None,
            ));
            return Ok(Verdict::Invalid(problems.list));
        }
        let request = match parse_line(&line.bytes, endpoint) {
            Ok(request) => request,
            Err(p) => {
                problems.push(BatchError {
                    code: p.code.into(),
                    message: p.message,
                    param: p.param,
                    line: Some(line.number),
                });
                continue;
            }
        };
        if !seen_ids.insert(hasher.hash_one(&request.custom_id)) {
            problems.push(BatchError::new(
                "duplicate_custom_id",
                format!(
                    "The custom_id '{}' is used by more than one request; each must be unique within the file.",
                    request.custom_id
                ),
                Some("custom_id"),
                Some(line.number),
            ));
        }
        if !is_model_served(&request.model) {
            // One entry per unknown model, not per line, to keep errors readable.
            if unknown_models_reported.insert(request.model.clone()) {
                problems.push(BatchError::new(
                    "model_not_found",
                    format!(
                        "The provided model '{}' is not supported by the Batch API.",
                        request.model
                    ),
                    Some("body.model"),
                    Some(line.number),
                ));
            }
            continue;
        }
        match &model {
            None => model = Some(request.model),
            Some(first) if *first != request.model => problems.push(BatchError::new(
                "mixed_models",
                format!(
                    "A batch may use only one model: this line uses '{}' but earlier lines use '{first}'.",
                    request.model
                ),
                Some("body.model"),
                Some(line.number),
            )),
            Some(_) => {}
        }
    }
    if total == 0 {
        problems.push(BatchError::new(
            "empty_file",
            "The input file contains no requests.",
            None,
            None,
        ));
    }
    match (problems.list.is_empty(), model) {
        (true, Some(model)) => Ok(Verdict::Valid { model, total }),
        (true, None) => unreachable!("a file with requests and no problems has a model"),
        (false, _) => Ok(Verdict::Invalid(problems.list)),
    }
}

/// The problem of a valid batch that would take its project over
/// `limits.max_enqueued_lines_per_project`: OpenAI's enqueued token limit
/// error (code, null line and param, message), counted in lines.
pub fn enqueued_limit_error(model: &str, project_id: &str, limit: u64, enqueued: i64, total: u64) -> BatchError {
    BatchError::new(
        "token_limit_exceeded",
        format!(
            "Enqueued line limit reached for {model} in project {project_id}. Limit: {limit} enqueued lines \
             ({enqueued} already enqueued, this batch has {total}). Please try submitting fewer tasks or try \
             again once some in-progress batches have completed."
        ),
        None,
        None,
    )
}
