//! The HTTP/1.1 upgrade: parse the request head in place (httparse, no header copies), validate
//! it against RFC 6455 §4.2.1 and the configuration, check the token it carries, and write the
//! responses.

use std::io::Write;
use std::net::SocketAddr;

use crate::config::Config;
use crate::jwt::JwtVerifier;
use crate::request::{HttpResponse, Request};
use crate::types::ConnId;

/// Most headers a request may carry; more is answered 431.
pub(crate) const MAX_HEADERS: usize = 64;

/// What the bytes received so far amount to.
pub(crate) enum Head<'a> {
    /// The head is not complete yet.
    Incomplete,
    /// A valid WebSocket upgrade of `len` bytes; `accept_key` goes into the 101 response.
    Upgrade { len: usize, request: Request<'a>, accept_key: String },
    /// A complete request that does not ask for a WebSocket upgrade.
    Plain { request: Request<'a> },
    /// Answer with this status and close.
    Reject(u16),
}

fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A Sec-WebSocket-Key must be the base64 form of exactly 16 bytes.
fn is_valid_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22].iter().all(|c| ALPHABET.contains(c))
        // the last character carries 2 meaningful bits; the 4 padding bits must be zero
        && ALPHABET.iter().position(|&a| a == key[21]).is_some_and(|v| v & 0x0f == 0)
}

/// Parses and validates the request head at the start of `buf`.
pub(crate) fn parse<'a>(
    buf: &'a [u8],
    headers: &'a mut [httparse::Header<'a>; MAX_HEADERS],
    config: &Config,
    ticket: ConnId,
    peer: impl FnOnce() -> Option<SocketAddr>,
) -> Head<'a> {
    let mut parsed = httparse::Request::new(headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > config.max_header_bytes => return Head::Reject(431),
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Head::Reject(431),
        Err(_) => return Head::Reject(400),
    };
    if len > config.max_header_bytes {
        return Head::Reject(431);
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version) else {
        return Head::Reject(400);
    };
    let request = Request { method, target, headers: parsed.headers, peer: peer(), ticket, verified_user: None };

    let upgrade = request.header("upgrade").is_some_and(|v| has_token(v, "websocket"));
    if !upgrade {
        return Head::Plain { request };
    }
    if method != "GET" || version != 1 || request.header("host").is_none() {
        return Head::Reject(400);
    }
    if request.path() != config.path {
        return Head::Reject(404);
    }
    if !request.header("connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Head::Reject(400);
    }
    if request.header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Head::Reject(426);
    }
    let Some(key) = request.header("sec-websocket-key").map(<[u8]>::trim_ascii).filter(|k| is_valid_key(k)) else {
        return Head::Reject(400);
    };
    if !config.allowed_origins.is_empty() {
        // Browsers always send Origin; a request without one is not a cross-site browser request.
        if let Some(origin) = request.header("origin") {
            if !config.allowed_origins.iter().any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin)) {
                return Head::Reject(403);
            }
        }
    }
    let accept_key = tungstenite::handshake::derive_accept_key(key);
    Head::Upgrade { len, request, accept_key }
}

/// Token checking, part of every upgrade when `Config::jwt_hs256_secret` is set: the request's
/// `verified_user` becomes the `sub` of the valid token it carries. Returns whether a secret is
/// set and the request carries no valid token (a 401 then says "invalid token").
pub(crate) fn check_token(request: &mut Request<'_>, jwt: Option<&JwtVerifier>) -> bool {
    let Some(jwt) = jwt else { return false };
    request.verified_user = token_of(request).and_then(|token| jwt.verify(token).ok());
    request.verified_user.is_none()
}

/// The token a request carries: an `Authorization: Bearer` header (non-browser clients), else the
/// `token` query parameter (browsers cannot set headers on a WebSocket).
fn token_of<'a>(request: &Request<'a>) -> Option<&'a [u8]> {
    if let Some(value) = request.header("authorization") {
        let value = value.trim_ascii();
        let (scheme, rest) = value.split_at_checked(7)?;
        return scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii());
    }
    request.query_param("token").map(str::as_bytes)
}

/// The response refusing an upgrade with the host's `status` (outside 400-599: 500). A 401 for a
/// request without a valid token says so, and only that: which check failed stays private,
/// nothing to refine a forgery with.
pub(crate) fn refusal(status: u16, invalid_token: bool) -> Vec<u8> {
    match status {
        401 if invalid_token => response(401, "text/plain; charset=utf-8", b"invalid token\n"),
        400..=599 => error_response(status),
        _ => error_response(500),
    }
}

/// The 101 response completing an upgrade, selecting `subprotocol` if there is one.
pub(crate) fn switching_protocols(accept_key: &str, subprotocol: Option<&str>) -> Vec<u8> {
    let selected = subprotocol.map(|name| format!("Sec-WebSocket-Protocol: {name}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{selected}\r\n"
    )
    .into_bytes()
}

pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A complete HTTP response that ends the connection. A host-supplied status outside 100-599 or a
/// content type with control characters (header injection) is replaced by a 500.
pub(crate) fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    if !(100..=599).contains(&status) || content_type.chars().any(char::is_control) {
        return error_response(500);
    }
    let mut out = Vec::with_capacity(160 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    if status == 426 {
        out.extend_from_slice(b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The response for a rejected request: status line and a one-line reason.
pub(crate) fn error_response(status: u16) -> Vec<u8> {
    let body = format!("{}\n", reason_phrase(status));
    response(status, "text/plain; charset=utf-8", body.as_bytes())
}

pub(crate) fn host_response(r: &HttpResponse) -> Vec<u8> {
    response(r.status, &r.content_type, &r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, config: &Config) -> Result<String, u16> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(raw.as_bytes(), &mut headers, config, 7, || None) {
            Head::Upgrade { accept_key, request, .. } => {
                assert_eq!(request.ticket(), 7);
                Ok(accept_key)
            }
            Head::Plain { .. } => Err(0),
            Head::Incomplete => Err(1),
            Head::Reject(status) => Err(status),
        }
    }

    const GOOD: &str = "GET /ws?user=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://mail.example\r\n\r\n";

    #[test]
    fn accepts_the_rfc_example() {
        assert_eq!(check(GOOD, &Config::default()), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()));
    }

    #[test]
    fn rejects_with_the_right_status() {
        let c = Config::default();
        assert_eq!(check(&GOOD.replace("/ws?", "/other?"), &c), Err(404));
        assert_eq!(check(&GOOD.replace("Version: 13", "Version: 8"), &c), Err(426));
        assert_eq!(check(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), &c), Err(400));
        assert_eq!(check(&GOOD.replace("keep-alive, Upgrade", "keep-alive"), &c), Err(400));
        assert_eq!(check(&GOOD.replace("GET", "POST"), &c), Err(400));
        assert_eq!(check("GARBAGE\r\n\r\n", &c), Err(400));
        assert_eq!(check(&GOOD[..40], &c), Err(1), "incomplete");
        assert_eq!(check("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &c), Err(0), "plain HTTP");
        let big = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(check(&big, &c), Err(431));
        let mut origin = Config { allowed_origins: vec!["https://other.example".into()], ..Config::default() };
        assert_eq!(check(GOOD, &origin), Err(403));
        origin.allowed_origins.push("https://MAIL.example".into());
        assert!(check(GOOD, &origin).is_ok());
    }
}
