//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")), where the key is the base64
//! after `whsec_` (the UTF-8 bytes of the secret if the prefix is absent, as
//! the SDKs do; `config::webhook_key` reads it).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub fn signature(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::webhook_key;

    #[test]
    fn matches_the_openai_sdk_test_vector() {
        let key = webhook_key("whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c=").unwrap();
        let body = br#"{"id": "evt_685c059ae3a481909bdc86819b066fb6", "object": "event", "created_at": 1750861210, "type": "response.completed", "data": {"id": "resp_123"}}"#;
        assert_eq!(
            signature(&key, "wh_685c059ae39c8190af8c71ed1022a24d", 1750861210, body),
            "v1,gUAg4R2hWouRZqRQG4uJypNS8YK885G838+EHb4nKBY="
        );
    }
}
