//! The admin HTTP API: hyper's HTTP/1.1 server (keep-alive, pipelining, `Expect: 100-continue`,
//! capped heads) on a fixed set of threads with a one-thread tokio runtime each, behind our own
//! accept loop, which gives every connection a slot in the connection table (guard.rs) or
//! refuses it.

mod connection;
mod routes;
mod stats;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::http::StatusCode;
use tokio::sync::oneshot;
use wspush::ServerHandle;

use crate::guard::{Admission, AllowedHosts, ConnectionTable};
use crate::log::{ErrorClass, ErrorLog};

/// Largest request head (request line plus headers), and most header lines.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Admin connections served at once (the API is for a few backends). A newcomer beyond it takes
/// the slot of a connection with no request in progress; when every one is busy, it gets 503.
const MAX_ADMIN_CONNECTIONS: usize = 256;
/// Likewise per client address (IPv6: per /64), so that one host cannot take every slot.
const MAX_ADMIN_CONNECTIONS_PER_PEER: usize = 32;
/// Time allowed to receive one whole request once its first byte arrived.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings and shared state of the admin server.
pub struct Admin {
    pub server: ServerHandle,
    pub max_body: usize,
    pub idle_timeout: Duration,
    /// Bearer token every request must carry, when set.
    pub token: Option<Vec<u8>>,
    /// Host names answered besides IP addresses and localhost.
    pub allowed_hosts: AllowedHosts,
    pub errors: Arc<ErrorLog>,
    pub requests_total: AtomicU64,
    pub client_errors_total: AtomicU64,
    /// Connections closed to make room for a newcomer.
    pub evicted_total: AtomicU64,
    /// The open connections, each with the signal that evicts it.
    connections: ConnectionTable<oneshot::Sender<()>>,
}

impl Admin {
    pub fn new(
        server: ServerHandle,
        max_body: usize,
        idle_timeout: Duration,
        token: Option<Vec<u8>>,
        allowed_hosts: AllowedHosts,
        errors: Arc<ErrorLog>,
    ) -> Admin {
        Admin {
            server,
            max_body,
            idle_timeout,
            token,
            allowed_hosts,
            errors,
            requests_total: AtomicU64::new(0),
            client_errors_total: AtomicU64::new(0),
            evicted_total: AtomicU64::new(0),
            connections: ConnectionTable::new(MAX_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS_PER_PEER),
        }
    }

    /// Whether a request with these bearer credentials may run (any, when no token is set).
    fn authorized(&self, bearer: Option<&[u8]>) -> bool {
        match &self.token {
            None => true,
            Some(token) => bearer.is_some_and(|given| same_token(token, given)),
        }
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guess
/// was right (the length is not secret).
fn same_token(expected: &[u8], given: &[u8]) -> bool {
    let difference = expected.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0 && expected.len() == given.len()
}

/// The runtime the admin API accepts on: one thread (the caller's). Connections are served by
/// the `ConnectionThreads`.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    one_thread_runtime()
}

fn one_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()
}

/// Threads serving admin connections, each with a one-thread runtime; connection `id` goes to
/// thread `id % CONNECTION_THREADS`. Backends publish from several threads over several
/// keep-alive connections at once: served as tasks of one runtime their requests queued behind
/// each other, and a multi-threaded runtime spent its gain waking workers (measured here at
/// 20,000 publishes/s over 4 connections, publish→delivery p50: +25 µs on one runtime thread,
/// +15 µs on two workers, against the thread-per-connection server this replaced). A fixed set
/// keeps threads and descriptors (a runtime holds two) bounded however many connections come.
const CONNECTION_THREADS: usize = 4;
/// Stack of a connection thread: hyper's state machine and our handlers need little.
const CONNECTION_THREAD_STACK: usize = 256 * 1024;

struct ConnectionThreads {
    runtimes: Vec<tokio::runtime::Handle>,
}

impl ConnectionThreads {
    fn start() -> std::io::Result<ConnectionThreads> {
        let mut runtimes = Vec::with_capacity(CONNECTION_THREADS);
        for index in 0..CONNECTION_THREADS {
            let runtime = one_thread_runtime()?;
            runtimes.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("wspushd-admin-{index}"))
                .stack_size(CONNECTION_THREAD_STACK)
                // Runs the tasks spawned onto this runtime, for the life of the process.
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        }
        Ok(ConnectionThreads { runtimes })
    }

    /// Serves one admitted connection on its thread.
    fn serve(&self, admin: Arc<Admin>, stream: tokio::net::TcpStream, id: u64, eviction: oneshot::Receiver<()>) {
        let failed = move |admin: &Admin, what: &str, e: std::io::Error| {
            admin.errors.report(ErrorClass::AdminAccept, &format!("{what}: {e}"));
            admin.connections.remove(id);
        };
        // Moved from the accepting runtime's reactor to its thread's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => return failed(&admin, "cannot take the admin socket", e),
        };
        let runtime = &self.runtimes[id as usize % self.runtimes.len()];
        runtime.spawn(async move {
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => connection::serve(admin, stream, id, eviction).await,
                Err(e) => failed(&admin, "cannot register the admin socket", e),
            }
        });
    }
}

/// Accepts admin connections forever, each served on one of the `ConnectionThreads`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let threads = ConnectionThreads::start()?;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                admin.errors.report(ErrorClass::AdminAccept, &e.to_string());
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (evict, eviction) = oneshot::channel();
        match admin.connections.admit(peer.ip(), evict) {
            Admission::Admitted { id, evicted } => {
                if let Some(evicted) = evicted {
                    admin.evicted_total.fetch_add(1, Ordering::Relaxed);
                    admin.errors.report(
                        ErrorClass::AdminCrowded,
                        &format!(
                            "over {MAX_ADMIN_CONNECTIONS_PER_PEER} connections from one address or \
                             {MAX_ADMIN_CONNECTIONS} in all: closing the oldest without a request in progress"
                        ),
                    );
                    // Its task may have ended meanwhile: nothing left to close then.
                    let _ = evicted.send(());
                }
                threads.serve(Arc::clone(&admin), stream, id, eviction);
            }
            Admission::Refused => {
                admin.errors.report(
                    ErrorClass::AdminCrowded,
                    &format!(
                        "{MAX_ADMIN_CONNECTIONS_PER_PEER} connections from one address or {MAX_ADMIN_CONNECTIONS} \
                         in all, every one with a request in progress: answering 503"
                    ),
                );
                tokio::spawn(async move {
                    let response =
                        connection::raw_response(StatusCode::SERVICE_UNAVAILABLE, "too many admin connections");
                    let _ = connection::write_raw(&stream, &response).await;
                });
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An admin API over a real engine on a free port, without token or allowed names.
    pub fn admin_over_engine() -> (wspush::Server, Admin) {
        let config = wspush::Config { listen: "127.0.0.1:0".into(), threads: 1, ..wspush::Config::default() };
        let handler = crate::public::Daemon { demo: true, echo: false, ws_path: "/ws".into(), demo_page: None };
        let server = wspush::Server::start(config, handler).expect("engine starts");
        let errors = Arc::new(ErrorLog::default());
        let admin = Admin::new(server.handle(), 1024, Duration::from_secs(1), None, AllowedHosts::default(), errors);
        (server, admin)
    }

    #[test]
    fn tokens_must_match_whole() {
        assert!(same_token(b"s3cret-token", b"s3cret-token"));
        assert!(!same_token(b"s3cret-token", b"s3cret-toke"));
        assert!(!same_token(b"s3cret-token", b"s3cret-token!"));
        assert!(!same_token(b"s3cret-token", b"S3cret-token"));
    }
}
