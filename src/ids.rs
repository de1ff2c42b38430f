//! Object ids in OpenAI's observed formats. Ids are opaque to clients; the
//! prefixes only make logs and support tickets readable.

use uuid::Uuid;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `file-` + 22 base62 characters, as OpenAI issues them.
pub fn file_id() -> String {
    let mut n = Uuid::new_v4().as_u128();
    let mut out = [0u8; 22];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    format!("file-{}", std::str::from_utf8(&out).expect("base62 is ascii"))
}

/// `batch_` + 32 hex characters.
pub fn batch_id() -> String {
    format!("batch_{}", Uuid::new_v4().simple())
}

/// `batch_req_` + 32 hex characters: the id of one output or error line.
pub fn batch_request_id() -> String {
    format!("batch_req_{}", Uuid::new_v4().simple())
}

/// `req_` + 32 hex characters: an HTTP request id (`x-request-id`).
pub fn request_id() -> String {
    format!("req_{}", Uuid::new_v4().simple())
}

/// Current time as integer Unix seconds, the only timestamp format of the API.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_openai_shapes() {
        let f = file_id();
        assert!(f.starts_with("file-") && f.len() == 27, "{f}");
        assert!(f[5..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(batch_id().len(), "batch_".len() + 32);
        assert!(batch_request_id().starts_with("batch_req_"));
        assert_ne!(file_id(), file_id());
    }
}
