//! Built-in authentication: JSON Web Tokens signed with HMAC-SHA256 (RFC 7519, RFC 7515, RFC 7518
//! §3.2). Only what a push server needs: alg must be HS256, the signature is compared in constant
//! time before any claim is read, `exp` is required, `nbf` honoured, both with a small leeway for
//! clock skew, and `sub` becomes the user ID.
//!
//! Why a crate here: HMAC-SHA256 is cryptography, which we take from RustCrypto's audited `hmac`
//! and `sha2` (their `verify_slice` compares in constant time) instead of writing our own.

mod json;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use json::Value;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub(crate) const MIN_SECRET_LEN: usize = 32;

/// Why a token was refused. Never sent to the peer (it only sees "invalid token"); kept for tests
/// and for reasoning about each check.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not three base64url parts of well-formed JSON objects.
    Malformed,
    /// `alg` is not HS256 (this refuses "none"), or the header lists `crit` extensions.
    Algorithm,
    Signature,
    /// `exp` missing, not a number, or in the past.
    Expired,
    /// `nbf` in the future, or not a number.
    NotYetValid,
    /// `sub` missing, not a string, empty or longer than a user ID may be.
    Subject,
}

/// Checks tokens against one shared secret. Holds the keyed HMAC state, cloned per token, so the
/// key is hashed once at start instead of on every handshake.
pub(crate) struct JwtVerifier {
    keyed: Hmac<Sha256>,
    leeway: f64,
}

impl JwtVerifier {
    /// `secret` must be at least [`MIN_SECRET_LEN`] bytes (checked by `Config::validate`).
    pub(crate) fn new(secret: &[u8], leeway: Duration) -> JwtVerifier {
        // HMAC takes keys of any length (long ones are hashed first): this cannot fail.
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        JwtVerifier { keyed, leeway: leeway.as_secs_f64() }
    }

    /// The user ID (`sub`) of a valid `token`, at the current time.
    pub(crate) fn verify(&self, token: &[u8]) -> Result<Vec<u8>, Invalid> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.verify_at(token, now)
    }

    /// The user ID of a valid `token` when the time is `now` (seconds since the Unix epoch).
    pub(crate) fn verify_at(&self, token: &[u8], now: f64) -> Result<Vec<u8>, Invalid> {
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Malformed); // JWE (five parts) and anything else
        };
        let header = json::object_members(&decode(header)?).map_err(|_| Invalid::Malformed)?;
        let algorithm_ok = member(&header, "alg") == Some(&Value::String("HS256".into()));
        if !algorithm_ok || member(&header, "crit").is_some() {
            return Err(Invalid::Algorithm);
        }
        let mut mac = self.keyed.clone();
        mac.update(&token[..token.len() - signature.len() - 1]);
        mac.verify_slice(&decode(signature)?).map_err(|_| Invalid::Signature)?;

        let claims = json::object_members(&decode(claims)?).map_err(|_| Invalid::Malformed)?;
        match member(&claims, "exp") {
            Some(Value::Number(exp)) if now < exp + self.leeway => {}
            _ => return Err(Invalid::Expired),
        }
        match member(&claims, "nbf") {
            None => {}
            Some(Value::Number(nbf)) if now + self.leeway >= *nbf => {}
            Some(_) => return Err(Invalid::NotYetValid),
        }
        match member(&claims, "sub") {
            Some(Value::String(sub)) if crate::types::check_user_id(sub.as_bytes()).is_ok() => {
                Ok(sub.clone().into_bytes())
            }
            _ => Err(Invalid::Subject),
        }
    }
}

fn decode(part: &[u8]) -> Result<Vec<u8>, Invalid> {
    BASE64URL_NOPAD.decode(part).map_err(|_| Invalid::Malformed)
}

fn member<'a>(members: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    members.iter().find(|(key, _)| key == name).map(|(_, value)| value)
}

/// Signs `header.claims` (both JSON text) with `secret`, as an issuer would: for tests, the
/// benches and the fuzzer.
#[cfg(any(test, feature = "bench-internals"))]
pub(crate) fn sign(header: &str, claims: &str, secret: &[u8]) -> String {
    let signing_input =
        format!("{}.{}", BASE64URL_NOPAD.encode(header.as_bytes()), BASE64URL_NOPAD.encode(claims.as_bytes()));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: f64 = 1_800_000_000.0;

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn check(token: &str) -> Result<Vec<u8>, Invalid> {
        JwtVerifier::new(SECRET, Duration::from_secs(30)).verify_at(token.as_bytes(), NOW)
    }

    #[test]
    fn accepts_a_valid_token_and_returns_its_subject() {
        let token = sign(HS256, r#"{"sub":"alice","exp":1800000060,"nbf":1799999990,"iat":1799999990}"#, SECRET);
        assert_eq!(check(&token), Ok(b"alice".to_vec()));
        // RFC 7515 appendix A.1's example (HS256, exp 1300819380) against its own key and time.
        let key = BASE64URL_NOPAD
            .decode(b"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let rfc = b"eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let verifier = JwtVerifier::new(&key, Duration::ZERO);
        assert_eq!(verifier.verify_at(rfc, 1_300_819_379.0), Err(Invalid::Subject), "valid signature, no sub");
        assert_eq!(verifier.verify_at(rfc, 1_300_819_380.0), Err(Invalid::Expired));
    }

    #[test]
    fn refuses_other_algorithms_and_alg_none() {
        let claims = r#"{"sub":"alice","exp":1800000060}"#;
        for header in [r#"{"alg":"none"}"#, r#"{"alg":"HS512"}"#, r#"{"alg":"RS256"}"#, r#"{"alg":"hs256"}"#, "{}"] {
            assert_eq!(check(&sign(header, claims, SECRET)), Err(Invalid::Algorithm), "{header}");
        }
        let unsigned = format!("{}.", sign(r#"{"alg":"none"}"#, claims, SECRET).rsplit_once('.').unwrap().0);
        assert_eq!(check(&unsigned), Err(Invalid::Algorithm));
        assert_eq!(check(&sign(r#"{"alg":"HS256","crit":["exp"]}"#, claims, SECRET)), Err(Invalid::Algorithm));
    }

    #[test]
    fn refuses_a_bad_signature() {
        let claims = r#"{"sub":"alice","exp":1800000060}"#;
        assert_eq!(check(&sign(HS256, claims, b"another secret of thirty-two bytes!")), Err(Invalid::Signature));
        let token = sign(HS256, claims, SECRET);
        // Same header and signature, different claims: the signature no longer matches.
        let (head, rest) = token.split_once('.').unwrap();
        let signature = rest.rsplit_once('.').unwrap().1;
        let forged = format!("{head}.{}.{signature}", BASE64URL_NOPAD.encode(br#"{"sub":"bob","exp":1800000060}"#));
        assert_eq!(check(&forged), Err(Invalid::Signature));
        let truncated = &token[..token.len() - 2];
        assert_ne!(check(truncated), Ok(b"alice".to_vec()));
    }

    #[test]
    fn enforces_exp_and_nbf_with_leeway() {
        let with = |claims: &str| check(&sign(HS256, claims, SECRET));
        assert_eq!(with(r#"{"sub":"a"}"#), Err(Invalid::Expired), "exp is required");
        assert_eq!(with(r#"{"sub":"a","exp":"1800000060"}"#), Err(Invalid::Expired), "exp must be a number");
        assert_eq!(with(r#"{"sub":"a","exp":1799999971}"#), Ok(b"a".to_vec()), "29 s ago: within the leeway");
        assert_eq!(with(r#"{"sub":"a","exp":1799999970}"#), Err(Invalid::Expired), "30 s ago");
        assert_eq!(with(r#"{"sub":"a","exp":1800000060,"nbf":1800000030}"#), Ok(b"a".to_vec()), "nbf within leeway");
        assert_eq!(with(r#"{"sub":"a","exp":1800000060,"nbf":1800000031}"#), Err(Invalid::NotYetValid));
        assert_eq!(with(r#"{"sub":"a","exp":1800000060,"nbf":null}"#), Err(Invalid::NotYetValid));
    }

    #[test]
    fn requires_a_usable_subject() {
        let with = |claims: &str| check(&sign(HS256, claims, SECRET));
        assert_eq!(with(r#"{"exp":1800000060}"#), Err(Invalid::Subject));
        assert_eq!(with(r#"{"sub":"","exp":1800000060}"#), Err(Invalid::Subject));
        assert_eq!(with(r#"{"sub":42,"exp":1800000060}"#), Err(Invalid::Subject));
        let long = format!(r#"{{"sub":"{}","exp":1800000060}}"#, "u".repeat(256));
        assert_eq!(with(&long), Err(Invalid::Subject));
        assert_eq!(with(r#"{"sub":"a","sub":"b","exp":1800000060}"#), Err(Invalid::Malformed), "duplicate claim");
        assert_eq!(with(r#"{"sub":"\u00e9l\u00e8ve","exp":1800000060}"#), Ok("élève".as_bytes().to_vec()));
        // A C host would read "ali\0ce" as "ali", another user: a NUL makes the token invalid.
        assert_eq!(with(r#"{"sub":"ali\u0000ce","exp":1800000060}"#), Err(Invalid::Subject));
        assert_eq!(with(r#"{"sub":"\u0000","exp":1800000060}"#), Err(Invalid::Subject));
    }

    #[test]
    fn refuses_malformed_tokens() {
        let token = sign(HS256, r#"{"sub":"a","exp":1800000060}"#, SECRET);
        for bad in ["", ".", "..", "a.b", "a.b.c.d.e", &format!("{token}."), &format!("{token}=")] {
            assert_eq!(check(bad), Err(Invalid::Malformed), "{bad:?}");
        }
        let padded = token.replacen('.', "=.", 1);
        assert_eq!(check(&padded), Err(Invalid::Malformed), "padding is not base64url without padding");
    }
}
