//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `id.timestamp.body`, keyed with the base64-decoded secret (its `whsec_` prefix removed).
//!
//! During a secret rotation the sink holds several secrets and sends one signature per secret,
//! space-separated, as the specification allows: receivers on the old or the new secret verify.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// The HMAC key of a `whsec_...` secret (the prefix is optional, as in the reference libraries).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix(PREFIX).unwrap_or(secret);
    match STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err("secret is not a Standard Webhooks secret: expected \"whsec_\" followed by base64".to_string()),
    }
}

#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    pub fn new(secrets: &[String]) -> Result<Signer, String> {
        let keys = secrets.iter().map(|s| decode_secret(s)).collect::<Result<_, _>>()?;
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value, or None without secrets.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        if self.keys.is_empty() {
            return None;
        }
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|key| format!("v1,{}", STANDARD.encode(hmac(key, id, timestamp, body))))
            .collect();
        Some(signatures.join(" "))
    }
}

fn hmac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/data/standard-webhooks.json`, the reference libraries' shared vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const PAYLOAD: &str = r#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        let signer = Signer::new(&[SECRET.to_string()]).unwrap();
        assert_eq!(signer.sign(MSG_ID, TIMESTAMP, PAYLOAD.as_bytes()).unwrap(), EXPECTED);
    }

    #[test]
    fn the_vector_file_agrees_with_the_constants_above() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/standard-webhooks.json");
        let text = std::fs::read_to_string(path).expect("tests/data/standard-webhooks.json is in the repository");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let signer = Signer::new(&[v["secret"].as_str().unwrap().to_string()]).unwrap();
        let sig = signer.sign(
            v["msg_id"].as_str().unwrap(),
            v["timestamp"].as_i64().unwrap(),
            v["payload"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(sig.as_deref(), v["expected_signature"].as_str());
    }

    #[test]
    fn several_secrets_give_one_signature_each_space_separated() {
        let signer = Signer::new(&[SECRET.to_string(), "whsec_c2Vjb25kIHNlY3JldA==".to_string()]).unwrap();
        let header = signer.sign(MSG_ID, TIMESTAMP, PAYLOAD.as_bytes()).unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], EXPECTED);
        assert!(parts[1].starts_with("v1,") && parts[1] != EXPECTED);
    }

    #[test]
    fn the_signature_covers_id_timestamp_and_body() {
        let signer = Signer::new(&[SECRET.to_string()]).unwrap();
        let base = signer.sign(MSG_ID, TIMESTAMP, PAYLOAD.as_bytes());
        assert_ne!(signer.sign("msg_other", TIMESTAMP, PAYLOAD.as_bytes()), base);
        assert_ne!(signer.sign(MSG_ID, TIMESTAMP + 1, PAYLOAD.as_bytes()), base);
        assert_ne!(signer.sign(MSG_ID, TIMESTAMP, b"{}"), base);
    }

    #[test]
    fn without_secrets_nothing_is_signed_and_bad_secrets_are_refused() {
        assert_eq!(Signer::new(&[]).unwrap().sign(MSG_ID, TIMESTAMP, b"{}"), None);
        assert!(Signer::new(&["whsec_not base64!".to_string()]).is_err());
    }
}
