//! dbt Cloud's webhook signature: the `Authorization` header is the hex HMAC-SHA256 of the
//! exact raw body, keyed with the subscription's secret. Verified in constant time against
//! every configured secret so that secrets can be rotated.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. Never carries the header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Authorization signature")]
    Missing,
    #[error("Authorization is not a hex HMAC-SHA256 signature")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

impl SignatureError {
    /// A short label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// The lowercase hex signature of `body` under `secret`, as dbt Cloud computes it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks `header` against the body under each secret. Hex is case-insensitive; the
/// comparison is constant-time (`verify_slice`), and every secret is tried so the time
/// taken does not tell which one matched.
pub fn verify(header: Option<&str>, body: &[u8], secrets: &[Secret]) -> Result<(), SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing)?;
    if header.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(header).map_err(|_| SignatureError::Malformed)?;
    let mut matched = false;
    for secret in secrets {
        let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(body);
        matched |= mac.verify_slice(&expected).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Compares two secrets in constant time, whatever their lengths (both are hashed first, so
/// not even the length of the expected value leaks).
pub fn secrets_equal(given: &str, expected: &Secret) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|v| Secret::new(*v)).collect()
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_lower_and_upper_hex_and_any_configured_secret() {
        let body = br#"{"eventId":"wev_1"}"#;
        let signature = sign(b"second", body);
        let configured = secrets(&["first", "second"]);
        assert_eq!(verify(Some(&signature), body, &configured), Ok(()));
        assert_eq!(
            verify(Some(&signature.to_uppercase()), body, &configured),
            Ok(())
        );
    }

    #[test]
    fn refuses_missing_malformed_and_wrong() {
        let body = b"{}";
        let configured = secrets(&["first"]);
        assert_eq!(
            verify(None, body, &configured),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("sha256=abc"), body, &configured),
            Err(SignatureError::Malformed)
        );
        let other = sign(b"other", body);
        assert_eq!(
            verify(Some(&other), body, &configured),
            Err(SignatureError::Mismatch)
        );
        let tampered = sign(b"first", b"{ }");
        assert_eq!(
            verify(Some(&tampered), body, &configured),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&sign(b"first", body)), body, &[]),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn token_comparison() {
        let expected = Secret::new("tok-123");
        assert!(secrets_equal("tok-123", &expected));
        assert!(!secrets_equal("tok-12", &expected));
        assert!(!secrets_equal("", &expected));
    }
}
