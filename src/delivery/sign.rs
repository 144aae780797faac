//! Standard Webhooks v1 signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! The key is the base64 part of a `whsec_…` secret. [`Signer::new`] is the one parser of
//! secrets: the config, delivery and `walhook listen` all go through it, so a secret is
//! accepted everywhere or nowhere. The signature covers the exact bytes sent, so a receiver
//! must verify the raw body before parsing it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const SECRET_PREFIX: &str = "whsec_";

/// Standard base64 with padding optional: secrets are pasted by hand, and some generators
/// drop the `=`.
const SECRET_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Why a secret cannot be used; the message never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSecret {
    /// No `whsec_` prefix.
    #[error("must start with `whsec_` (Standard Webhooks secret format)")]
    NoPrefix,
    /// Nothing after the prefix.
    #[error("the key after `whsec_` is empty")]
    Empty,
    /// The part after the prefix does not decode.
    #[error("the part after `whsec_` is not valid base64")]
    NotBase64,
}

/// A keyed signer; keying happens once, each signature clones the keyed state.
#[derive(Clone)]
pub struct Signer {
    mac: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// Decodes a `whsec_<base64>` secret into a signer.
    pub fn new(secret: &str) -> Result<Signer, BadSecret> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(BadSecret::NoPrefix)?;
        let key = SECRET_BASE64
            .decode(encoded.trim())
            .map_err(|_| BadSecret::NotBase64)?;
        if key.is_empty() {
            return Err(BadSecret::Empty);
        }
        // HMAC takes keys of any length; this cannot fail for a non-empty key.
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| BadSecret::Empty)?;
        Ok(Signer { mac })
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        let mut out = String::with_capacity(3 + 44);
        out.push_str("v1,");
        BASE64.encode_string(tag, &mut out);
        out
    }

    /// True if any `v1,` entry of a space-separated signature header matches (constant time).
    pub fn verify(&self, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
        let mut ok = false;
        for entry in header.split_ascii_whitespace() {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                continue; // other schemes (v1a, …) are not ours to judge
            };
            let Ok(tag) = BASE64.decode(encoded) else {
                continue;
            };
            // verify_slice compares in constant time; keep going so timing does not say which.
            ok |= self.mac(id, timestamp, body).verify_slice(&tag).is_ok();
        }
        ok
    }
}

/// Checks a `webhook-signature` header against a `whsec_…` secret (false for a bad secret).
///
/// The header may hold several space-separated signatures (key rotation); one match is enough.
/// The timestamp is not checked for freshness: that is the receiver's replay policy.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
) -> bool {
    Signer::new(secret).is_ok_and(|s| s.verify(id, timestamp, body, signature_header))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_specification_test_vector() {
        assert_eq!(Signer::new(SECRET).unwrap().sign(ID, TS, BODY), SIG);
    }

    #[test]
    fn prefix_is_required_and_padding_optional() {
        let bare = SECRET.strip_prefix("whsec_").unwrap();
        assert_eq!(Signer::new(bare).unwrap_err(), BadSecret::NoPrefix);
        // "ab" is YWI= in base64: with or without the padding it is the same key.
        let a = Signer::new("whsec_YWI").unwrap().sign(ID, TS, BODY);
        let b = Signer::new("whsec_YWI=").unwrap().sign(ID, TS, BODY);
        assert_eq!(a, b);
    }

    #[test]
    fn verifies_the_vector_and_rejects_tampering() {
        assert!(verify(SECRET, ID, TS, BODY, SIG));
        assert!(!verify(SECRET, ID, TS, br#"{"test": 2432232315}"#, SIG));
        assert!(!verify(SECRET, "msg_other", TS, BODY, SIG));
        assert!(!verify(SECRET, ID, "1614265331", BODY, SIG));
        assert!(!verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAA", ID, TS, BODY, SIG));
    }

    #[test]
    fn accepts_any_of_several_signatures() {
        let header = format!("v1,bm9wZQ== v1a,xyz garbage {SIG}");
        assert!(verify(SECRET, ID, TS, BODY, &header));
        assert!(!verify(SECRET, ID, TS, BODY, "v1,bm9wZQ== v1,!!!notbase64"));
        assert!(!verify(SECRET, ID, TS, BODY, ""));
    }

    #[test]
    fn a_bad_secret_is_an_error_and_never_verifies() {
        assert_eq!(
            Signer::new("whsec_not base64!").unwrap_err(),
            BadSecret::NotBase64
        );
        assert_eq!(Signer::new("whsec_").unwrap_err(), BadSecret::Empty);
        assert!(!verify("whsec_not base64!", ID, TS, BODY, SIG));
    }

    #[test]
    fn debug_does_not_leak_the_key() {
        assert_eq!(format!("{:?}", Signer::new(SECRET).unwrap()), "Signer(..)");
    }
}
