//! The built-in JWT verifier, fed by an attacker who does not know the secret (forgery) and by an
//! issuer who does (claims and JSON edge cases), checked against serde_json as an independent
//! reading of the same JSON.
//!
//! Input: byte 0 picks the mode, the rest is its data.
//! - even: the rest is a token as a client would send it. Accepted only if its signature really
//!   is HS256 over its first two parts with the secret (the fuzzer cannot forge one).
//! - odd: byte 1 splits the rest into header JSON and claims JSON, which are signed with the
//!   secret. Accepted must mean: both are JSON objects, alg is exactly "HS256", no `crit`, `exp`
//!   a number in the future (with leeway), `nbf` absent or a number in the past, `sub` a
//!   1-255-byte string without NUL (user IDs never hold one), and the subject returned is
//!   serde_json's reading of `sub`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wspush::internals::{sign_jwt, JwtVerifier};

const SECRET: &[u8] = b"fuzzing secret, at least 32 bytes long";
const NOW: f64 = 1_800_000_000.0;
const LEEWAY: f64 = 30.0;

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| JwtVerifier::new(SECRET, Duration::from_secs_f64(LEEWAY)))
}

/// What an accepted token must satisfy, read with serde_json.
fn model_subject(header: &[u8], claims: &[u8]) -> Option<String> {
    let header: Value = serde_json::from_slice(header).ok()?;
    let claims: Value = serde_json::from_slice(claims).ok()?;
    let (header, claims) = (header.as_object()?, claims.as_object()?);
    if header.get("alg")?.as_str()? != "HS256" || header.contains_key("crit") {
        return None;
    }
    if !(NOW < claims.get("exp")?.as_f64()? + LEEWAY) {
        return None;
    }
    if let Some(nbf) = claims.get("nbf") {
        if !(NOW + LEEWAY >= nbf.as_f64()?) {
            return None;
        }
    }
    let sub = claims.get("sub")?.as_str()?;
    ((1..=255).contains(&sub.len()) && !sub.contains('\0')).then(|| sub.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        if verifier().verify_at(rest, NOW).is_some() {
            let text = std::str::from_utf8(rest).expect("an accepted token is ASCII");
            let (signed, signature) = text.rsplit_once('.').expect("an accepted token has parts");
            let (header, claims) = signed.split_once('.').expect("three parts");
            let genuine = sign_jwt_parts(header, claims);
            assert_eq!(signature, genuine, "a token was accepted without the secret's signature");
        }
        return;
    }
    let Some((&split, json)) = rest.split_first() else { return };
    let split = usize::from(split).min(json.len());
    let (header, claims) = json.split_at(split);
    // The issuer signs whatever bytes it has; the verifier base64url-decodes them back exactly.
    let (Ok(header_text), Ok(claims_text)) = (std::str::from_utf8(header), std::str::from_utf8(claims)) else {
        return;
    };
    let token = sign_jwt(header_text, claims_text, SECRET);
    let got = verifier().verify_at(token.as_bytes(), NOW);
    if let Some(subject) = &got {
        // serde_json keeps the last of duplicate names; ours refuses them, so when we accept
        // there is one of each and the two readings must agree.
        let expected = model_subject(header, claims);
        assert_eq!(expected.as_deref().map(str::as_bytes), Some(subject.as_slice()), "accepted, model disagrees");
    } else if let Some(expected) = model_subject(header, claims) {
        // Refused although serde_json reads a valid token: only our stricter rules may explain it.
        let strict = |json: &[u8]| has_duplicate_names(json) || depth(&serde_json::from_slice(json).unwrap()) > 16;
        assert!(strict(header) || strict(claims), "refused a valid token for {expected:?}");
    }
});

/// Whether the top-level object of `json` names a member twice (serde_json keeps the last).
fn has_duplicate_names(json: &[u8]) -> bool {
    struct Names(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Names, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Names, A::Error> {
                    let mut names = Vec::new();
                    while let Some((name, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        names.push(name);
                    }
                    Ok(Names(names))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    let Ok(Names(mut names)) = serde_json::from_slice::<Names>(json) else { return false };
    let count = names.len();
    names.sort();
    names.dedup();
    names.len() != count
}

/// Nesting depth: a scalar is 0, a container one more than its deepest element.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The base64url HS256 signature of `header.claims` (already base64url parts) under the secret.
fn sign_jwt_parts(header_b64: &str, claims_b64: &str) -> String {
    // sign_jwt encodes its inputs; decode first so it re-encodes to the same parts. Parts that are
    // not canonical base64url were refused by the verifier before the signature was checked.
    use data_encoding::BASE64URL_NOPAD;
    let header = BASE64URL_NOPAD.decode(header_b64.as_bytes()).expect("accepted header decodes");
    let claims = BASE64URL_NOPAD.decode(claims_b64.as_bytes()).expect("accepted claims decode");
    let header = String::from_utf8(header).expect("accepted header is UTF-8");
    let claims = String::from_utf8(claims).expect("accepted claims are UTF-8");
    let token = sign_jwt(&header, &claims, SECRET);
    token.rsplit_once('.').map(|(_, signature)| signature.to_string()).unwrap_or_default()
}
