//! Standard Webhooks secrets: `whsec_` followed by the base64 of the HMAC key.

use base64::Engine as _;

const SECRET_PREFIX: &str = "whsec_";

/// Standard base64, padding optional (secrets are pasted by hand).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The decoded HMAC key of `secret` (the bytes after `whsec_`), if it has the format.
pub(super) fn key(secret: &str) -> Option<Vec<u8>> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b64| BASE64.decode(b64).ok())
}

/// `whsec_` + base64 of a non-empty key; the error never contains the secret.
pub fn check_secret(s: &str) -> Result<(), String> {
    let Some(b64) = s.strip_prefix(SECRET_PREFIX) else {
        return Err("must start with `whsec_` (Standard Webhooks secret format)".to_owned());
    };
    match BASE64.decode(b64) {
        Ok(key) if key.is_empty() => Err("the key after `whsec_` is empty".to_owned()),
        Ok(_) => Ok(()),
        Err(_) => Err("the part after `whsec_` is not valid base64".to_owned()),
    }
}
