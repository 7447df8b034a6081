//! Centrifugo v6 as a peer: its bidirectional JSON client protocol and its HTTP API, as far as
//! loadgen needs them. Facts relied on (from the v6.9.1 sources, centrifugal/centrifuge client.go
//! and centrifugal/protocol, and centrifugal.dev/docs/transports/client_protocol):
//! - after the upgrade the client sends `{"id":1,"connect":{"token":JWT}}`; the server answers
//!   `{"id":1,"connect":{...,"subs":{"#USER":{...}},"pong":true}}` or `{"id":1,"error":{...}}`;
//! - several JSON messages may share one WebSocket frame, separated by `\n`;
//! - the server pings with an empty message `{}`; when the connect result said `"pong":true` the
//!   client must answer `{}` within the pong timeout (10 s by default) or be disconnected, and a
//!   pong nobody asked for is a bad request (disconnect);
//! - a command other than a pong must carry an id > 0;
//! - a publication to a channel the connection is subscribed to (here the server-side personal
//!   channel) arrives as `{"push":{"channel":"#USER","pub":{"data":DATA,...}}}`, DATA being the
//!   JSON value given to the API;
//! - HTTP API: `POST /api/publish {"channel","data"}` and `POST /api/broadcast {"channels","data"}`
//!   with the `X-API-Key` header; a refused command still answers HTTP 200, with `{"error":{...}}`
//!   at the top (publish) or per channel (broadcast).

use std::borrow::Cow;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::admin::{AdminClient, Response};

/// The id of the connect command (the first command on every connection).
pub const CONNECT_ID: u32 = 1;
/// The id of the idle phase's probe, a command that always gets a reply (an error: no RPC handler
/// is configured) and changes nothing on the server.
pub const PROBE_ID: u32 = 2;
/// The idle phase's probe: every connection sends one frame and must get one back.
pub const PROBE: &[u8] = br#"{"id":2,"rpc":{"method":"loadgen_probe"}}"#;
/// The answer to a server ping.
pub const PONG: &[u8] = b"{}";
/// Channels per /api/broadcast request (each answer entry is ~14 bytes: `{"result":{}},`).
const BROADCAST_BATCH: usize = 64;
/// How long the connection tokens stay valid.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

#[derive(Clone)]
pub struct Settings {
    secret: String,
    api_key: String,
    prefix: String,
    /// The admin request's header lines.
    headers: String,
}

// The secret and key stay out of debug output.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("centrifugo::Settings").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Settings {
    pub fn new(secret: &str, api_key: &str, prefix: &str) -> Settings {
        Settings {
            secret: secret.to_string(),
            api_key: api_key.to_string(),
            prefix: prefix.to_string(),
            headers: format!("Content-Type: application/json\r\nX-API-Key: {api_key}\r\n"),
        }
    }

    pub fn worker_args(&self) -> Vec<String> {
        [
            "--peer",
            "centrifugo",
            "--centrifugo-secret",
            &self.secret,
            "--centrifugo-api-key",
            &self.api_key,
            "--centrifugo-user-prefix",
            &self.prefix,
        ]
        .map(String::from)
        .to_vec()
    }

    /// User number `user`'s Centrifugo user ID.
    pub fn user_id(&self, user: usize) -> String {
        format!("{}{user}", self.prefix)
    }

    /// User `user`'s personal channel (Centrifugo's user boundary `#` + user ID, with no personal
    /// channel namespace configured).
    pub fn channel(&self, user: usize) -> String {
        format!("#{}{user}", self.prefix)
    }

    /// An HS256 connection JWT for `user`: `sub` = user ID, expiring in a day.
    pub fn token(&self, user: usize) -> String {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + TOKEN_LIFETIME_SECS;
        sign_hs256(&json!({ "sub": self.user_id(user), "exp": exp }).to_string(), self.secret.as_bytes())
    }

    /// The first frame of a connection: the connect command with `user`'s token.
    pub fn connect_command(&self, user: usize) -> Vec<u8> {
        json!({ "id": CONNECT_ID, "connect": { "token": self.token(user), "name": "loadgen" } })
            .to_string()
            .into_bytes()
    }

    /// `POST /publish?user=uN` becomes /api/publish to #PREFIXN, `POST /broadcast` /api/broadcast
    /// to the personal channels of users 0..users (in batches of 64); `body` (loadgen's text
    /// payload) is sent as a JSON string in `data`.
    pub fn post(&self, admin: &mut AdminClient, target: &str, body: &[u8], users: usize) -> io::Result<Response> {
        let data =
            std::str::from_utf8(body).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload not UTF-8"))?;
        admin.set_headers(&self.headers);
        if let Some(user) = target.strip_prefix("/publish?user=u") {
            let user: usize = user
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad target {target}")))?;
            let request = json!({ "channel": self.channel(user), "data": data });
            return Ok(judge_api_response(admin.post("/api/publish", request.to_string().as_bytes())?));
        }
        if target != "/broadcast" {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no Centrifugo equivalent of {target}")));
        }
        // In batches: the answer holds one entry per channel, and Go's net/http switches to a
        // chunked response (which AdminClient does not read) past 2 KiB of body.
        let mut last = Response { status: 200, body: Vec::new() };
        for first in (0..users).step_by(BROADCAST_BATCH) {
            let channels: Vec<String> = (first..users.min(first + BROADCAST_BATCH)).map(|u| self.channel(u)).collect();
            let request = json!({ "channels": channels, "data": data });
            last = judge_api_response(admin.post("/api/broadcast", request.to_string().as_bytes())?);
            if last.status != 200 {
                break;
            }
        }
        Ok(last)
    }
}

/// HS256 JWT over `claims` (JSON text), header `{"alg":"HS256","typ":"JWT"}` (RFC 7519, 7515).
pub fn sign_hs256(claims: &str, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        BASE64URL_NOPAD.encode(claims.as_bytes())
    );
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&mac.finalize().into_bytes()))
}

/// HTTP 200 stays 200 only when no command error is inside (top-level `error`, or an `error` in
/// any of a broadcast's `result.responses`); otherwise the status becomes 500 and the body the
/// first error, so the callers count it as a failed request.
fn judge_api_response(response: Response) -> Response {
    if response.status != 200 {
        return response;
    }
    let Ok(value) = serde_json::from_slice::<Value>(&response.body) else {
        return Response { status: 500, body: b"unparsable API response".to_vec() };
    };
    let nested = value
        .pointer("/result/responses")
        .and_then(Value::as_array)
        .and_then(|responses| responses.iter().find_map(|r| r.get("error")).cloned());
    match value.get("error").cloned().or(nested) {
        Some(error) => Response { status: 500, body: error.to_string().into_bytes() },
        None => response,
    }
}

/// One message from the server, as far as loadgen cares (borrowing from the frame).
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `{}`: a ping.
    Ping,
    /// The reply to the connect command: `pong` says whether pings must be answered.
    Connected { pong: bool },
    /// An error reply to command `id` (for the connect command: refused).
    Error { id: u32, text: String },
    /// A successful reply to command `id` other than connect.
    Reply { id: u32 },
    /// A publication's data, when it is a JSON string (loadgen's payloads always are; without
    /// escapes, as they are, it is borrowed from the frame).
    Publication(Cow<'a, str>),
    /// A disconnect push.
    Disconnect(String),
    /// Anything else (other pushes, unparsable lines).
    Other,
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(default)]
    id: u32,
    error: Option<ReplyError>,
    connect: Option<ConnectResult>,
    #[serde(borrow)]
    push: Option<Push<'a>>,
}

#[derive(Deserialize)]
struct ReplyError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ConnectResult {
    #[serde(default)]
    pong: bool,
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(rename = "pub", borrow)]
    publication: Option<Publication<'a>>,
    disconnect: Option<Disconnect>,
}

/// `data` must be a JSON string (loadgen publishes nothing else); another type makes the whole
/// message unreadable, counted as unknown. (serde borrows a `Cow<str>` field only when it is not
/// inside an Option: a missing `data` becomes "", an unknown message too.)
#[derive(Deserialize)]
struct Publication<'a> {
    #[serde(borrow, default)]
    data: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Disconnect {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    reason: String,
}

/// Calls `on_event` with every message in one WebSocket frame (newline-separated JSON), in order,
/// until it returns an error.
pub fn for_each_message<E>(payload: &[u8], mut on_event: impl FnMut(Event<'_>) -> Result<(), E>) -> Result<(), E> {
    for line in payload.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if !line.is_empty() {
            on_event(parse_message(line))?;
        }
    }
    Ok(())
}

fn parse_message(line: &[u8]) -> Event<'_> {
    if line == b"{}" {
        return Event::Ping;
    }
    let Ok(reply) = serde_json::from_slice::<Reply>(line) else { return Event::Other };
    if let Some(error) = reply.error {
        return Event::Error { id: reply.id, text: format!("error {} {}", error.code, error.message) };
    }
    if let Some(connect) = reply.connect {
        return Event::Connected { pong: connect.pong };
    }
    if reply.id > 0 {
        return Event::Reply { id: reply.id };
    }
    match reply.push {
        Some(Push { publication: Some(Publication { data }), .. }) => Event::Publication(data),
        Some(Push { disconnect: Some(d), .. }) => Event::Disconnect(format!("disconnect {} {}", d.code, d.reason)),
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_messages() {
        fn events(frame: &[u8]) -> Vec<String> {
            let mut seen = Vec::new();
            for_each_message(frame, |event| {
                if let Event::Publication(data) = &event {
                    assert!(matches!(data, Cow::Borrowed(_)), "unescaped data is borrowed");
                }
                seen.push(format!("{event:?}"));
                Ok::<(), ()>(())
            })
            .unwrap();
            seen
        }
        let frame = b"{\"id\":1,\"connect\":{\"client\":\"c\",\"version\":\"6.9.1\",\"subs\":{\"#u3\":{}},\"ping\":25,\"pong\":true}}\n\
            {\"push\":{\"channel\":\"#u3\",\"pub\":{\"data\":\"p 1 42\",\"offset\":1}}}\n{}";
        assert_eq!(events(frame), ["Connected { pong: true }", "Publication(\"p 1 42\")", "Ping"]);
        assert_eq!(
            events(br#"{"id":2,"error":{"code":108,"message":"not available"}}"#),
            ["Error { id: 2, text: \"error 108 not available\" }"]
        );
        assert_eq!(events(br#"{"id":2,"rpc":{}}"#), ["Reply { id: 2 }"]);
        assert_eq!(
            events(br#"{"push":{"disconnect":{"code":3501,"reason":"bad request"}}}"#),
            ["Disconnect(\"disconnect 3501 bad request\")"]
        );
        assert_eq!(events(br##"{"push":{"channel":"#u3","join":{}}}"##), ["Other"]);
        assert_eq!(events(br##"{"push":{"channel":"#u3","pub":{"data":{"a":1}}}}"##), ["Other"]);
        assert_eq!(events(b"not json\n\n"), ["Other"]);
        // The callback's error stops the walk.
        let mut calls = 0;
        assert_eq!(
            for_each_message(b"{}\n{}", |_| {
                calls += 1;
                Err("stop")
            }),
            Err("stop")
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn token_is_hs256_over_the_claims() {
        // The expected signature was computed independently (python3 hmac + hashlib + base64) over
        // the same signing input.
        let token = sign_hs256(r#"{"sub":"u7"}"#, b"secret");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(BASE64URL_NOPAD.decode(parts[0].as_bytes()).unwrap(), br#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap(), br#"{"sub":"u7"}"#);
        assert_eq!(parts[2], EXPECTED_SIGNATURE);
        let settings = Settings::new("s", "k", "a");
        let claims: Value = serde_json::from_slice(
            &BASE64URL_NOPAD.decode(settings.token(12).split('.').nth(1).unwrap().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sub"], "a12");
        assert_eq!(settings.channel(12), "#a12");
    }

    const EXPECTED_SIGNATURE: &str = "f6xG1OumrBWx02zwP6xOHa29G5FZFHnGq8ds5dpCZEY";

    #[test]
    fn api_errors_become_failures() {
        let ok = |body: &str| judge_api_response(Response { status: 200, body: body.as_bytes().to_vec() }).status;
        assert_eq!(ok(r#"{"result":{}}"#), 200);
        assert_eq!(ok(r#"{"error":{"code":102,"message":"unknown channel"}}"#), 500);
        assert_eq!(ok(r#"{"result":{"responses":[{"result":{}},{"error":{"code":102}}]}}"#), 500);
        assert_eq!(ok(r#"{"result":{"responses":[{"result":{}},{"result":{}}]}}"#), 200);
        assert_eq!(ok("garbage"), 500);
    }
}
