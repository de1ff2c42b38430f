//! The batch input validator on arbitrary bytes: the JSONL line splitter and
//! the typed request-line parser, for every endpoint.
//!
//! Besides "never panics", it checks two properties: the verdict does not
//! depend on how the bytes were chunked when read from storage, and a file
//! judged valid has every line parse on its own.

#![no_main]

use batchd::batch::lines::LineReader;
use batchd::batch::request_line::parse_line;
use batchd::batch::validation::{Verdict, validate};
use batchd::config::LimitsConfig;
use batchd::domain::Endpoint;
use bytes::Bytes;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;

fn limits() -> LimitsConfig {
    LimitsConfig {
        max_line_bytes: 512,
        max_batch_lines: 64,
        max_batch_input_bytes: 1 << 20,
        max_reported_errors: 16,
        ..LimitsConfig::default()
    }
}

fn reader(data: &[u8], chunk: usize) -> LineReader {
    let chunks: Vec<_> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    LineReader::new(futures::stream::iter(chunks).boxed(), limits().max_line_bytes)
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let endpoint = Endpoint::ALL[usize::from(selector) % Endpoint::ALL.len()];
    let chunk = 1 + usize::from(selector >> 2);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let served = |model: &str| model.starts_with('m');
    let whole = rt
        .block_on(validate(
            reader(data, data.len()),
            data.len() as u64,
            endpoint,
            &limits(),
            served,
        ))
        .expect("reading from memory cannot fail");
    let chunked = rt
        .block_on(validate(
            reader(data, chunk),
            data.len() as u64,
            endpoint,
            &limits(),
            served,
        ))
        .expect("reading from memory cannot fail");
    assert_eq!(
        format!("{whole:?}"),
        format!("{chunked:?}"),
        "verdict depends on chunking"
    );

    match whole {
        Verdict::Valid { model, total } => {
            assert!(total >= 1 && total <= limits().max_batch_lines);
            assert!(served(&model));
            let text_lines = data
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
            for line in text_lines {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(
                    parse_line(line, endpoint).is_ok(),
                    "valid file with an unparseable line"
                );
            }
        }
        Verdict::Invalid(errors) => {
            assert!(!errors.is_empty() && errors.len() <= limits().max_reported_errors);
            let lines = data.split(|b| *b == b'\n').count() as u64;
            for e in errors {
                assert!(
                    e.line.is_none_or(|n| n >= 1 && n <= lines),
                    "error names a line that does not exist"
                );
            }
        }
    }
});
