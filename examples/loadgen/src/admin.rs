//! A minimal blocking HTTP/1.1 keep-alive client for the admin API: `POST /publish?user=U` and
//! `POST /broadcast`, each answering `200 {"delivered":N}`, and `GET /stats` or `/healthz`. One request in flight per
//! connection, so publishes sent over one connection reach the server in order.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct AdminClient {
    addr: SocketAddr,
    host_header: String,
    stream: Option<TcpStream>,
    /// Response bytes read past the current response (never expected; kept for correctness).
    buffer: Vec<u8>,
    request: Vec<u8>,
    /// Header lines after Host (each ending in CRLF); a peer's API may need others.
    headers: String,
}

/// A parsed response.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The whole number at top-level `key` of a JSON object body such as /stats.
    pub fn json_number(&self, key: &str) -> Option<u64> {
        serde_json::from_slice::<serde_json::Value>(&self.body).ok()?.get(key)?.as_u64()
    }

    /// N from a `{"delivered":N}` body.
    pub fn delivered(&self) -> Option<u64> {
        self.json_number("delivered")
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl AdminClient {
    pub fn new(addr: SocketAddr) -> AdminClient {
        AdminClient {
            addr,
            host_header: addr.to_string(),
            stream: None,
            buffer: Vec::new(),
            request: Vec::new(),
            headers: "Content-Type: text/plain\r\n".into(),
        }
    }

    /// Replaces the header lines sent after Host (default `Content-Type: text/plain`).
    pub fn set_headers(&mut self, lines: &str) {
        if self.headers != lines {
            self.headers = lines.to_string();
        }
    }

    fn connect(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            self.buffer.clear();
            self.stream = Some(stream);
        }
        self.stream.as_mut().ok_or_else(|| io::Error::other("no admin connection"))
    }

    /// Sends one POST and waits for its response. A kept-alive connection the server has
    /// closed in the meantime is retried once on a fresh connection, but only when not a single
    /// response byte came back (the usual HTTP client rule).
    pub fn post(&mut self, target: &str, body: &[u8]) -> io::Result<Response> {
        self.request("POST", target, body)
    }

    /// `GET target` (e.g. /stats, /healthz), with the same retry rule as `post`.
    pub fn get(&mut self, target: &str) -> io::Result<Response> {
        self.request("GET", target, b"")
    }

    fn request(&mut self, method: &str, target: &str, body: &[u8]) -> io::Result<Response> {
        let reused = self.stream.is_some();
        match self.try_request(method, target, body) {
            Ok(response) => Ok(response),
            Err(PostError::BeforeResponse(_)) if reused => {
                self.stream = None;
                self.try_request(method, target, body).map_err(PostError::into_io)
            }
            Err(e) => {
                self.stream = None;
                Err(e.into_io())
            }
        }
    }

    fn try_request(&mut self, method: &str, target: &str, body: &[u8]) -> Result<Response, PostError> {
        self.request.clear();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\n{}Content-Length: {}\r\n\r\n",
            self.host_header,
            self.headers,
            body.len()
        );
        self.request.extend_from_slice(head.as_bytes());
        self.request.extend_from_slice(body);
        let request = std::mem::take(&mut self.request);
        let sent = self.connect().and_then(|stream| stream.write_all(&request));
        self.request = request;
        sent.map_err(PostError::BeforeResponse)?;
        self.read_response()
    }

    fn read_response(&mut self) -> Result<Response, PostError> {
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(pos) = find(&self.buffer, b"\r\n\r\n") {
                break pos + 4;
            }
            if self.buffer.len() > 64 * 1024 {
                return Err(PostError::During(io::Error::new(io::ErrorKind::InvalidData, "response head too long")));
            }
            let got_nothing_yet = self.buffer.is_empty();
            let n = match self.connect().and_then(|stream| stream.read(&mut chunk)) {
                Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "admin server closed the connection")),
                Ok(n) => Ok(n),
                Err(e) => Err(e),
            };
            match n {
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e)
                    if got_nothing_yet
                        && e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::TimedOut =>
                {
                    return Err(PostError::BeforeResponse(e))
                }
                Err(e) => return Err(PostError::During(e)),
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status =
            status_line.split_whitespace().nth(1).and_then(|code| code.parse::<u16>().ok()).ok_or_else(|| {
                PostError::During(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                ))
            })?;
        let mut content_length = None;
        let mut close = status_line.starts_with("HTTP/1.0");
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
                return Err(PostError::During(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunked responses are not supported",
                )));
            }
        }
        self.buffer.drain(..head_end);
        let body = match content_length {
            Some(length) => {
                while self.buffer.len() < length {
                    let n = self.connect().and_then(|stream| stream.read(&mut chunk)).map_err(PostError::During)?;
                    if n == 0 {
                        return Err(PostError::During(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated body")));
                    }
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
                self.buffer.drain(..length).collect()
            }
            None => {
                // No length: the body runs to the end of the connection.
                close = true;
                let mut body = std::mem::take(&mut self.buffer);
                let stream = self.connect().map_err(PostError::During)?;
                stream.read_to_end(&mut body).map_err(PostError::During)?;
                body
            }
        };
        if close {
            self.stream = None;
        }
        Ok(Response { status, body })
    }
}

enum PostError {
    /// Failed before any byte of the response arrived: safe to retry on a fresh connection.
    BeforeResponse(io::Error),
    During(io::Error),
}

impl PostError {
    fn into_io(self) -> io::Error {
        match self {
            PostError::BeforeResponse(e) | PostError::During(e) => e,
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
