//! Splits a stream of bytes into JSONL lines without holding more than one line
//! (and one read chunk) in memory.

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};

use crate::files::blobs::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line {line} is longer than {limit} bytes")]
    TooLong { line: u64, limit: u64 },
    #[error(transparent)]
    Read(#[from] BlobError),
}

pub struct LineReader {
    stream: BoxStream<'static, Result<Bytes, BlobError>>,
    buf: BytesMut,
    /// Number of the last line handed out (1-based; blank lines count).
    line_no: u64,
    max_line_bytes: u64,
    eof: bool,
}

/// One non-blank line and its 1-based position in the file.
#[derive(Debug)]
pub struct Line {
    pub number: u64,
    pub bytes: Bytes,
}

impl LineReader {
    pub fn new(stream: BoxStream<'static, Result<Bytes, BlobError>>, max_line_bytes: u64) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            line_no: 0,
            max_line_bytes,
            eof: false,
        }
    }

    /// The next non-blank line, or `None` at the end of the file. Blank lines
    /// (for example a trailing newline) are skipped but keep their number.
    pub async fn next_line(&mut self) -> Option<Result<Line, LineError>> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf) {
                let mut raw = self.buf.split_to(pos + 1);
                raw.truncate(pos);
                self.line_no += 1;
                if let Some(line) = self.finish_line(raw) {
                    return Some(line);
                }
                continue;
            }
            if self.buf.len() as u64 > self.max_line_bytes {
                return Some(Err(LineError::TooLong {
                    line: self.line_no + 1,
                    limit: self.max_line_bytes,
                }));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return None;
                }
                let raw = self.buf.split();
                self.line_no += 1;
                if let Some(line) = self.finish_line(raw) {
                    return Some(line);
                }
                return None;
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(e.into())),
                None => self.eof = true,
            }
        }
    }

    fn finish_line(&self, mut raw: BytesMut) -> Option<Result<Line, LineError>> {
        if raw.last() == Some(&b'\r') {
            raw.truncate(raw.len() - 1);
        }
        if raw.len() as u64 > self.max_line_bytes {
            return Some(Err(LineError::TooLong {
                line: self.line_no,
                limit: self.max_line_bytes,
            }));
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(Ok(Line {
            number: self.line_no,
            bytes: raw.freeze(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(chunks: &[&'static str], max: u64) -> LineReader {
        let items: Vec<Result<Bytes, BlobError>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes()))).collect();
        LineReader::new(futures::stream::iter(items).boxed(), max)
    }

    async fn collect(mut r: LineReader) -> Vec<(u64, String)> {
        let mut out = vec![];
        while let Some(line) = r.next_line().await {
            let line = line.unwrap();
            out.push((line.number, String::from_utf8(line.bytes.to_vec()).unwrap()));
        }
        out
    }

    #[tokio::test]
    async fn splits_across_chunks_and_numbers_blank_lines() {
        let lines = collect(reader(&["{\"a\"", ":1}\r\n\n  \n{\"b\":2}"], 100)).await;
        assert_eq!(lines, vec![(1, "{\"a\":1}".to_string()), (4, "{\"b\":2}".to_string())]);
    }

    #[tokio::test]
    async fn too_long_line_is_reported_with_its_number() {
        let mut r = reader(&["{}\n", "0123456789ABC"], 8);
        assert!(r.next_line().await.unwrap().is_ok());
        match r.next_line().await.unwrap() {
            Err(LineError::TooLong { line, .. }) => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }
}
