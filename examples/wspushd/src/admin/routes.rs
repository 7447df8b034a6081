//! One admin request, from hyper's parsed head to the reply: the admin protections and the token
//! first (before any body byte is read), then the body within its limits, then the route.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde::Serialize;
use tokio::sync::oneshot;
use wspush::{is_valid_close_code, MessageKind, Published, MAX_USER_ID_LEN};

use super::connection::Tracker;
use super::stats::{metrics_text, stats_json, AdminCounts};
use super::{Admin, REQUEST_TIMEOUT};
use crate::guard;
use crate::log::ErrorClass;
use crate::query::parse_query;

/// A response before hyper writes it.
#[derive(Debug)]
pub struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    /// A header such as `Allow` or `WWW-Authenticate`.
    extra_header: Option<(header::HeaderName, &'static str)>,
    /// End the connection after this reply: the rest of its stream is not to be trusted, or not
    /// worth reading.
    close: bool,
}

impl Reply {
    fn json(document: impl Serialize) -> Reply {
        // Our documents are maps of numbers: serializing them cannot fail.
        let body = serde_json::to_vec(&document).unwrap_or_default();
        Reply::new(StatusCode::OK, "application/json", body)
    }

    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply { status, content_type, body: body.into(), extra_header: None, close: false }
    }

    /// An error with its reason as a one-line text body.
    pub fn error(status: StatusCode, reason: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", format!("{reason}\n"))
    }

    fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Reply {
        self.extra_header = Some((name, value));
        self
    }

    fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Some((name, value)) = self.extra_header {
            headers.insert(name, HeaderValue::from_static(value));
        }
        if self.close {
            // hyper ends the connection after a response that says so.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Answers one request (hyper's service).
pub async fn respond(admin: Arc<Admin>, tracker: Arc<Tracker>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = tracker.request_started();
    let reply = answer(&admin, &tracker, request, started).await;
    tracker.responded();
    reply.into_response()
}

async fn answer(admin: &Admin, tracker: &Tracker, request: Request<Incoming>, started: Instant) -> Reply {
    let (head, body) = request.into_parts();
    let path = head.uri.path();
    let refuse = |class: ErrorClass, reply: Reply| {
        admin.client_errors_total.fetch_add(1, Ordering::Relaxed);
        let reason = String::from_utf8_lossy(&reply.body);
        admin.errors.report(class, &format!("{} {path}: {} {}", head.method, reply.status.as_u16(), reason.trim_end()));
        reply.closing()
    };
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        let reply =
            Reply::error(StatusCode::LENGTH_REQUIRED, "send the body with Content-Length, not Transfer-Encoding");
        return refuse(ErrorClass::AdminBadRequest, reply);
    }
    let headers = head.headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
    if let Err(refusal) = guard::check_request_source(head.version == Version::HTTP_11, headers, &admin.allowed_hosts) {
        // Before the token and the body, like a 401: the connection ends here.
        let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
        return refuse(ErrorClass::AdminForeign, Reply::error(status, refusal.reason));
    }
    if !admin.authorized(bearer(&head.headers)) {
        // Before the body is read (so before any 100 Continue): a caller without the token cannot
        // make us buffer anything. The connection ends here.
        let reply = Reply::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
            .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"wspushd-admin\"");
        return refuse(ErrorClass::AdminUnauthorized, reply);
    }
    // hyper has checked the framing: one valid Content-Length (or none: no body).
    let length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    if length > admin.max_body as u64 {
        return refuse(
            ErrorClass::AdminBadRequest,
            Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        );
    }
    tracker.prove();
    // Reading the body sends `100 Continue` first when the client asked for it.
    let body =
        match tokio::time::timeout_at((started + REQUEST_TIMEOUT).into(), Limited::new(body, admin.max_body).collect())
            .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => return Reply::error(StatusCode::BAD_REQUEST, "request body not received").closing(),
            Err(_) => return Reply::error(StatusCode::REQUEST_TIMEOUT, "request not received in time").closing(),
        };
    let request = AdminRequest {
        method: &head.method,
        path,
        query: head.uri.query().unwrap_or(""),
        binary: is_binary(&head.headers),
        body: &body,
    };
    let reply = match route(admin, &request) {
        Routed::Now(reply) => reply,
        Routed::Publishing(outcome) => published_reply(outcome.await.unwrap_or(Err(wspush::Error::Unavailable))),
    };
    if reply.status.is_client_error() {
        admin.client_errors_total.fetch_add(1, Ordering::Relaxed);
        let reason = String::from_utf8_lossy(&reply.body);
        admin.errors.report(ErrorClass::AdminBadRequest, &format!("{} {}", reply.status.as_u16(), reason.trim_end()));
    }
    admin.requests_total.fetch_add(1, Ordering::Relaxed);
    reply
}

/// The credentials of an `Authorization: Bearer` header (the last one, when several).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get_all(header::AUTHORIZATION).iter().next_back()?.as_bytes().trim_ascii();
    let (scheme, credentials) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| credentials.trim_ascii())
}

/// Whether the body is a binary message: `Content-Type: application/octet-stream` (parameters
/// allowed). Anything else is text.
fn is_binary(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let media_type = value.as_bytes().split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        media_type.eq_ignore_ascii_case(b"application/octet-stream")
    })
}

/// What routing needs of a request whose checks passed and whose body arrived.
struct AdminRequest<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    binary: bool,
    body: &'a [u8],
}

#[derive(Serialize)]
struct Delivered {
    delivered: usize,
    /// The message's offset in the user's stream (publish with history on).
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

#[derive(Serialize)]
struct Disconnected {
    disconnected: usize,
}

/// What routing a request gave: a reply, or a publish whose outcome is awaited (with Redis it
/// comes once Redis confirms it, or fails after the engine's Redis timeout: the admin thread
/// never blocks on it).
enum Routed {
    Now(Reply),
    Publishing(oneshot::Receiver<Result<Published, wspush::Error>>),
}

impl From<Reply> for Routed {
    fn from(reply: Reply) -> Routed {
        Routed::Now(reply)
    }
}

fn published_reply(outcome: Result<Published, wspush::Error>) -> Reply {
    match outcome {
        Ok(Published { delivered, offset }) => Reply::json(Delivered { delivered, offset }),
        Err(e) => engine_error(e),
    }
}

/// Routes one request to the engine.
fn route(admin: &Admin, request: &AdminRequest<'_>) -> Routed {
    let path = request.path;
    let (allowed, allow_header): (&[Method], &'static str) = match path {
        "/publish" | "/broadcast" | "/disconnect" => (&[Method::POST], "POST"),
        "/stats" | "/metrics" | "/healthz" => (&[Method::GET, Method::HEAD], "GET, HEAD"),
        _ => return Reply::error(StatusCode::NOT_FOUND, "unknown path").into(),
    };
    if !allowed.contains(request.method) {
        let reason = format!("method {} not allowed; use {}", request.method, allowed[0]);
        return Reply::error(StatusCode::METHOD_NOT_ALLOWED, &reason).with_header(header::ALLOW, allow_header).into();
    }
    let params = match parse_query(request.query) {
        Ok(params) => params,
        Err(reason) => return Reply::error(StatusCode::BAD_REQUEST, reason).into(),
    };
    let param = |name: &str| params.iter().find(|(key, _)| key == name.as_bytes()).map(|(_, value)| value.as_slice());
    let server = &admin.server;
    let reply = match path {
        "/publish" | "/broadcast" => {
            let kind = if request.binary { MessageKind::Binary } else { MessageKind::Text };
            if kind == MessageKind::Text && std::str::from_utf8(request.body).is_err() {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "text payload is not UTF-8 (send binary with Content-Type: application/octet-stream)",
                )
                .into();
            }
            if path == "/broadcast" {
                let result =
                    server.broadcast(request.body, kind).map(|delivered| Published { delivered, offset: None });
                return published_reply(result).into();
            }
            let user = match user_param(param("user")) {
                Ok(user) => user,
                Err(reply) => return reply.into(),
            };
            let (answer, outcome) = oneshot::channel();
            return match server.publish_async(user, request.body, kind, move |outcome| {
                let _ = answer.send(outcome);
            }) {
                Ok(()) => Routed::Publishing(outcome),
                Err(e) => engine_error(e).into(),
            };
        }
        "/disconnect" => {
            let user = match user_param(param("user")) {
                Ok(user) => user,
                Err(reply) => return reply.into(),
            };
            let code = match param("code") {
                None => 1000,
                Some(code) => match std::str::from_utf8(code).ok().and_then(|c| c.parse::<u16>().ok()) {
                    Some(code) if is_valid_close_code(code) => code,
                    _ => {
                        return Reply::error(
                            StatusCode::BAD_REQUEST,
                            "invalid close code (use 1000-1003, 1007-1014 or 3000-4999)",
                        )
                        .into()
                    }
                },
            };
            match server.disconnect_user(user, code) {
                Ok(disconnected) => Reply::json(Disconnected { disconnected }),
                Err(e) => engine_error(e),
            }
        }
        "/stats" => Reply::new(StatusCode::OK, "application/json", stats_json(&server.stats())),
        "/metrics" => {
            let counts = AdminCounts {
                requests: admin.requests_total.load(Ordering::Relaxed),
                client_errors: admin.client_errors_total.load(Ordering::Relaxed),
                evicted: admin.evicted_total.load(Ordering::Relaxed),
            };
            Reply::new(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics_text(&server.stats(), counts),
            )
        }
        "/healthz" if server.is_stopped() => Reply::error(StatusCode::SERVICE_UNAVAILABLE, "stopping"),
        "/healthz" => Reply::new(StatusCode::OK, "text/plain; charset=utf-8", &b"ok"[..]),
        _ => Reply::error(StatusCode::NOT_FOUND, "unknown path"),
    };
    reply.into()
}

fn user_param(user: Option<&[u8]>) -> Result<&[u8], Reply> {
    match user {
        None | Some([]) => Err(Reply::error(StatusCode::BAD_REQUEST, "missing user parameter")),
        Some(user) if user.len() > MAX_USER_ID_LEN => {
            Err(Reply::error(StatusCode::BAD_REQUEST, "user must be 1 to 255 bytes"))
        }
        Some(user) => Ok(user),
    }
}

fn engine_error(e: wspush::Error) -> Reply {
    match e {
        wspush::Error::Stopped => Reply::error(StatusCode::SERVICE_UNAVAILABLE, "server is stopping"),
        wspush::Error::MessageTooLarge => Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "message too large"),
        wspush::Error::InvalidUserId => Reply::error(StatusCode::BAD_REQUEST, "user must be 1 to 255 bytes"),
        wspush::Error::InvalidCloseCode => Reply::error(StatusCode::BAD_REQUEST, "invalid close code"),
        wspush::Error::Unavailable => {
            Reply::error(StatusCode::SERVICE_UNAVAILABLE, "Redis did not confirm the publish in time")
        }
        other => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_bearer_token_is_read_case_insensitively_and_trimmed() {
        assert_eq!(bearer(&headers(&[("authorization", "Bearer abc ")])), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers(&[("authorization", "bearer  abc")])), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bear")])), None);
        assert_eq!(bearer(&headers(&[])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")])), Some(&b"b"[..]));
    }

    #[test]
    fn only_octet_stream_is_binary() {
        assert!(is_binary(&headers(&[("content-type", "application/octet-stream; x=y")])));
        assert!(is_binary(&headers(&[("content-type", "Application/Octet-Stream")])));
        assert!(!is_binary(&headers(&[("content-type", "application/json")])));
        assert!(!is_binary(&headers(&[])));
    }

    #[test]
    fn replies_carry_their_status_reason_and_connection_fate() {
        let response = Reply::error(StatusCode::UNAUTHORIZED, "no")
            .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"wspushd-admin\"")
            .closing()
            .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"wspushd-admin\"");
        let response = Reply::json(Delivered { delivered: 2, offset: None }).into_response();
        assert!(response.headers().get(header::CONNECTION).is_none());
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    fn call(admin: &Admin, method: Method, target: &str, body: &[u8]) -> (u16, String, Option<String>) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let request = AdminRequest { method: &method, path, query, binary: false, body };
        let reply = match route(admin, &request) {
            Routed::Now(reply) => reply,
            Routed::Publishing(mut outcome) => {
                published_reply(outcome.try_recv().expect("answered at once without Redis"))
            }
        };
        let allow = reply.extra_header.filter(|(name, _)| name == header::ALLOW).map(|(_, value)| value.to_string());
        (reply.status.as_u16(), String::from_utf8(reply.body.to_vec()).unwrap(), allow)
    }

    #[test]
    fn requests_are_routed_to_the_engine_with_their_status_and_reason() {
        let (server, admin) = super::super::tests::admin_over_engine();
        let reply = |method: Method, target: &str, body: &[u8]| call(&admin, method, target, body);
        assert_eq!(reply(Method::GET, "/nope", b""), (404, "unknown path\n".into(), None));
        assert_eq!(reply(Method::POST, "/stats", b"").2.as_deref(), Some("GET, HEAD"));
        assert_eq!(reply(Method::GET, "/publish?user=a", b"").2.as_deref(), Some("POST"));
        assert_eq!(reply(Method::GET, "/publish?user=a", b"").0, 405);
        assert_eq!(reply(Method::POST, "/publish", b"x"), (400, "missing user parameter\n".into(), None));
        assert_eq!(reply(Method::POST, "/publish?user=%zz", b"x").0, 400);
        assert_eq!(reply(Method::POST, "/publish?user=alice", &[0xff]).0, 400, "text must be UTF-8");
        assert_eq!(reply(Method::POST, "/publish?user=alice", b"hi"), (200, r#"{"delivered":0}"#.into(), None));
        assert_eq!(reply(Method::POST, "/broadcast", b"hi").1, r#"{"delivered":0}"#);
        assert_eq!(reply(Method::POST, "/disconnect?user=alice&code=1005", b"").0, 400);
        assert_eq!(reply(Method::POST, "/disconnect?user=alice&code=4000", b"").1, r#"{"disconnected":0}"#);
        assert_eq!(reply(Method::HEAD, "/healthz", b""), (200, "ok".into(), None));
        let (status, stats, _) = reply(Method::GET, "/stats", b"");
        assert_eq!(status, 200);
        assert!(stats.contains(r#""publishes_total":1"#) && stats.contains(r#""broadcasts_total":1"#), "{stats}");
        assert!(reply(Method::GET, "/metrics", b"").1.contains("\nwspushd_admin_requests_total 0\n"));
        server.stop();
        assert_eq!(reply(Method::GET, "/healthz", b""), (503, "stopping\n".into(), None));
    }

    #[test]
    fn user_ids_are_one_to_255_bytes() {
        assert!(user_param(None).is_err());
        assert!(user_param(Some(b"")).is_err());
        assert!(user_param(Some(&[b'u'; 256])).is_err());
        assert_eq!(user_param(Some(&[b'u'; 255])).map(<[u8]>::len).ok(), Some(255));
    }
}
