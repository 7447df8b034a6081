//! One admin connection: hyper serves its requests over a socket we keep a handle to, while this
//! task enforces the deadlines (first byte, idle, whole request), tells the connection table what
//! the connection is doing (so that only connections without a request in progress are evicted),
//! and closes without losing the last response.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::http::StatusCode;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

use super::routes;
#[cfg(test)]
use super::MAX_ADMIN_CONNECTIONS_PER_PEER;
use super::{Admin, MAX_HEADERS, MAX_HEAD_BYTES, REQUEST_TIMEOUT};
use crate::guard::Activity;
use crate::log::ErrorClass;

/// Time a new connection has to send the first byte of its first request: clients send at once,
/// and a socket that sends nothing holds a slot for nothing.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a response that ends the connection: how long, and how much, to read and discard of what
/// the client still sends (see `linger_close`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Bound on writing a response hyper does not write (a timeout's 408, the 503 when crowded).
const RAW_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 16 * 1024;

/// Where a connection is between its requests, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing of the next request has arrived (or of the first one, on a new connection).
    Waiting { since: Instant },
    /// Bytes of a request arrived; its head is not complete yet.
    Receiving { since: Instant },
    /// The request is with the service, which bounds the wait for its body itself.
    Serving,
}

struct TrackerState {
    phase: Phase,
    /// Whether a request on this connection passed the admin protections and the token.
    proven: bool,
    /// What the connection table was last told.
    activity: Activity,
}

/// What a connection is doing, shared by its socket (bytes arrive), its requests (served) and its
/// task (deadlines).
pub struct Tracker {
    id: u64,
    admin: Arc<Admin>,
    state: Mutex<TrackerState>,
    /// Signalled when the deadline may have moved earlier (a request started arriving).
    changed: Notify,
}

impl Tracker {
    fn new(id: u64, admin: Arc<Admin>) -> Tracker {
        let state = TrackerState {
            phase: Phase::Waiting { since: Instant::now() },
            proven: false,
            activity: Activity::Unproven,
        };
        Tracker { id, admin, state: Mutex::new(state), changed: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // A few field writes under the lock: the state stays consistent even after a panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change`, then tells the connection table when the activity changed: unproven
    /// until a request passed the checks, then idle between requests and busy within one.
    fn update(&self, change: impl FnOnce(&mut TrackerState)) {
        let mut state = self.lock();
        change(&mut state);
        let activity = match (state.proven, state.phase) {
            (false, _) => Activity::Unproven,
            (true, Phase::Waiting { .. }) => Activity::Idle,
            (true, _) => Activity::Busy,
        };
        if activity != state.activity {
            state.activity = activity;
            self.admin.connections.set_activity(self.id, activity);
        }
    }

    /// Bytes arrived from the client.
    fn input(&self) {
        let mut started = false;
        self.update(|state| {
            if let Phase::Waiting { .. } = state.phase {
                state.phase = Phase::Receiving { since: Instant::now() };
                started = true;
            }
        });
        if started {
            self.changed.notify_one();
        }
    }

    /// hyper hands a request to the service; returns when its first byte arrived.
    pub fn request_started(&self) -> Instant {
        let mut started = Instant::now();
        self.update(|state| {
            if let Phase::Receiving { since } = state.phase {
                started = since;
            }
            state.phase = Phase::Serving;
        });
        started
    }

    /// The request passed the admin protections and the token: the connection is a client's.
    pub fn prove(&self) {
        self.update(|state| state.proven = true);
    }

    /// The service answered; the connection waits for the next request.
    pub fn responded(&self) {
        self.update(|state| state.phase = Phase::Waiting { since: Instant::now() });
        self.changed.notify_one();
    }

    /// When the connection times out in its current phase, and whether a request is then
    /// half-received (it gets a 408). `None` while the service has the request.
    fn deadline(&self, first_byte_timeout: Duration, idle_timeout: Duration) -> Option<(Instant, bool)> {
        let state = self.lock();
        match state.phase {
            Phase::Waiting { since } if state.proven => Some((since + idle_timeout, false)),
            Phase::Waiting { since } => Some((since + first_byte_timeout, false)),
            Phase::Receiving { since } => Some((since + REQUEST_TIMEOUT, true)),
            Phase::Serving => None,
        }
    }

    fn is_receiving(&self) -> bool {
        matches!(self.lock().phase, Phase::Receiving { .. })
    }
}

/// The socket as hyper sees it. The task keeps another handle to the same socket, to answer and
/// close it properly whatever state hyper left it in.
struct TrackedSocket {
    stream: Arc<TcpStream>,
    tracker: Arc<Tracker>,
    /// Where reads land before hyper's buffer takes them: allocated (and zeroed) once per
    /// connection, not per read.
    scratch: Box<[u8]>,
}

impl hyper::rt::Read for TrackedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = buf.remaining().min(this.scratch.len());
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            match this.stream.try_read(&mut this.scratch[..room]) {
                Ok(read) => {
                    if read > 0 {
                        this.tracker.input();
                    }
                    buf.put_slice(&this.scratch[..read]);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: poll again, which registers for the next wake-up.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl hyper::rt::Write for TrackedSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // nothing is buffered here
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.stream))
    }
}

/// Sends FIN: the response is complete, the client may still send (and we read and discard).
fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// How hyper's part of a connection ended.
enum Ending {
    /// hyper finished: the client closed, or a response ended the connection.
    Finished(Result<(), hyper::Error>),
    /// A deadline passed; `half_received` when part of a request had arrived.
    TimedOut { half_received: bool },
    /// Closed to make room for a newcomer while part of a request head had arrived.
    Evicted,
}

/// Serves one admin connection until it ends, then frees its slot in the table.
pub async fn serve(admin: Arc<Admin>, stream: TcpStream, id: u64, mut eviction: oneshot::Receiver<()>) {
    // Responses are small and written whole; don't let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let tracker = Arc::new(Tracker::new(id, Arc::clone(&admin)));
    let socket = TrackedSocket {
        stream: Arc::clone(&stream),
        tracker: Arc::clone(&tracker),
        scratch: vec![0; READ_CHUNK].into_boxed_slice(),
    };
    let service = {
        let (admin, tracker) = (Arc::clone(&admin), Arc::clone(&tracker));
        service_fn(move |request| {
            let (admin, tracker) = (Arc::clone(&admin), Arc::clone(&tracker));
            async move { Ok::<_, std::convert::Infallible>(routes::respond(admin, tracker, request).await) }
        })
    };
    let mut http = http1::Builder::new();
    http.max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        // No `pipeline_flush`: with unparsable input left in its read buffer, hyper then never
        // flushes its automatic 400/431 (pipelined requests are answered in order either way).
        .auto_date_header(false)
        // The deadlines are ours (see `serve`): hyper's would also end idle keep-alive connections.
        .header_read_timeout(None);
    let mut connection = Box::pin(http.serve_connection(socket, service));

    let first_byte_timeout = FIRST_BYTE_TIMEOUT.min(admin.idle_timeout);
    let mut evicted = false;
    let ending = loop {
        let deadline = tracker.deadline(first_byte_timeout, admin.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => break Ending::Finished(result),
            _ = &mut eviction, if !evicted => {
                evicted = true;
                if tracker.is_receiving() {
                    break Ending::Evicted;
                }
                // Not busy (the table never evicts a busy connection): hyper closes it at once,
                // or after the response it may still be writing.
                connection.as_mut().graceful_shutdown();
            }
            () = tracker.changed.notified() => {}
            () = sleep_until(deadline.map(|(at, _)| at)), if deadline.is_some() => {
                let now = Instant::now();
                match tracker.deadline(first_byte_timeout, admin.idle_timeout) {
                    Some((at, half_received)) if at <= now => break Ending::TimedOut { half_received },
                    _ => {}
                }
            }
        }
    };
    drop(connection);

    match ending {
        // An evicted connection had no request in progress: no response to protect, and its
        // descriptor is released at once (newcomers may be evicting many).
        Ending::Finished(Ok(())) if evicted => {}
        Ending::Finished(Ok(())) => linger_close(&stream, &mut eviction).await,
        Ending::Finished(Err(e)) => {
            report_hyper_error(&admin, &e);
            if !evicted {
                linger_close(&stream, &mut eviction).await;
            }
        }
        Ending::TimedOut { half_received: true } => {
            let response = raw_response(StatusCode::REQUEST_TIMEOUT, "request not received in time");
            if write_raw(&stream, &response).await.is_ok() && !evicted {
                linger_close(&stream, &mut eviction).await;
            }
        }
        Ending::TimedOut { half_received: false } | Ending::Evicted => {}
    }
    admin.connections.remove(id);
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// hyper answered a request it could not parse (400, or 431 for a head over the limit) and ended
/// the connection; other errors are I/O.
fn report_hyper_error(admin: &Admin, error: &hyper::Error) {
    if error.is_parse_too_large() || error.is_parse() {
        admin.client_errors_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = if error.is_parse_too_large() { 431 } else { 400 };
        admin.errors.report(ErrorClass::AdminBadRequest, &format!("{status} {error}"));
        return;
    }
    let io_error = std::error::Error::source(error).and_then(|source| source.downcast_ref::<io::Error>());
    match io_error {
        Some(e) if is_disconnect(e) => {}
        Some(e) => admin.errors.report(ErrorClass::AdminIo, &e.to_string()),
        // The client closed in the middle of a request, or hyper's own bookkeeping: nothing to say.
        None if error.is_incomplete_message() || error.is_canceled() || error.is_closed() => {}
        None => admin.errors.report(ErrorClass::AdminIo, &error.to_string()),
    }
}

/// Errors that just mean the peer went away: not worth a log line.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// Ends a connection without losing the response just written: closing a socket that still has
/// unread input makes the kernel send RST, which can discard the response before the client reads
/// it (e.g. a 413 while the client is still sending the body). So: send FIN, then read and discard
/// what the client still sends, for a bounded time and amount. An eviction cuts it short.
async fn linger_close(stream: &TcpStream, eviction: &mut oneshot::Receiver<()>) {
    // hyper may have sent FIN already; a second shutdown is harmless.
    let _ = shutdown_write(stream);
    let drain = async {
        let mut discarded = 0;
        let mut sink = [0u8; 8192];
        while discarded < LINGER_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(read) => discarded += read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        () = drain => {}
        () = tokio::time::sleep(LINGER_TIME) => {}
        _ = eviction => {}
    }
}

/// A whole response with a one-line text body, for the two answers given outside an HTTP exchange
/// hyper runs: a request not received in time, and no slot for a new connection.
pub fn raw_response(status: StatusCode, reason: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// Writes `bytes` whole within `RAW_WRITE_TIMEOUT`.
pub async fn write_raw(stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let write_all = async {
        let mut rest = bytes;
        while !rest.is_empty() {
            stream.writable().await?;
            match stream.try_write(rest) {
                Ok(written) => rest = &rest[written..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    tokio::time::timeout(RAW_WRITE_TIMEOUT, write_all).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Admission;

    #[test]
    fn the_table_learns_what_the_connection_does_and_the_deadline_follows() {
        let (server, admin) = super::super::tests::admin_over_engine();
        let admin = Arc::new(admin);
        let peer: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let (ours, mut our_eviction) = oneshot::channel();
        let Admission::Admitted { id, .. } = admin.connections.admit(peer, ours) else { panic!("refused") };
        let tracker = Tracker::new(id, Arc::clone(&admin));
        let (first_byte, idle) = (Duration::from_secs(2), Duration::from_secs(30));
        let deadline =
            |tracker: &Tracker| tracker.deadline(first_byte, idle).map(|(at, half)| (at - Instant::now(), half));

        // New: two seconds for the first byte; then ten for the whole request, which gets a 408.
        let (left, half_received) = deadline(&tracker).unwrap();
        assert!(left <= first_byte && left > first_byte / 2 && !half_received);
        tracker.input();
        let (left, half_received) = deadline(&tracker).unwrap();
        assert!(left <= REQUEST_TIMEOUT && left > first_byte && half_received);
        // With the service, which bounds the body itself.
        assert!(tracker.request_started() <= Instant::now());
        assert_eq!(deadline(&tracker), None);
        tracker.prove();

        // Busy now, like every other connection of the address: a newcomer over the per-address
        // limit finds nobody to evict.
        let others: Vec<_> = (1..MAX_ADMIN_CONNECTIONS_PER_PEER)
            .map(|_| {
                let (evict, eviction) = oneshot::channel();
                let Admission::Admitted { id, evicted: None } = admin.connections.admit(peer, evict) else {
                    panic!("no room")
                };
                admin.connections.set_activity(id, Activity::Busy);
                eviction
            })
            .collect();
        assert!(matches!(admin.connections.admit(peer, oneshot::channel().0), Admission::Refused));

        // Answered: idle, with the idle timeout, and the slot a newcomer may take.
        tracker.responded();
        let (left, half_received) = deadline(&tracker).unwrap();
        assert!(left <= idle && left > first_byte && !half_received);
        let Admission::Admitted { evicted: Some(evicted), .. } = admin.connections.admit(peer, oneshot::channel().0)
        else {
            panic!("the idle connection was not evicted")
        };
        assert!(evicted.send(()).is_ok());
        assert!(our_eviction.try_recv().is_ok(), "another connection was evicted");
        drop(others);
        server.stop();
    }

    #[test]
    fn raw_responses_take_their_reason_phrase_from_the_status() {
        let text = String::from_utf8(raw_response(StatusCode::REQUEST_TIMEOUT, "too slow")).unwrap();
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
        assert!(text.ends_with("content-length: 9\r\nconnection: close\r\n\r\ntoo slow\n"), "{text}");
    }
}
