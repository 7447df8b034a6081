//! rust-tokio: the wspushd contract written the way a tokio user would write it today:
//! tokio-tungstenite with its default configuration, one task per connection, an unbounded mpsc
//! per connection feeding the writer, and an axum admin API.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const NAME: &str = "rust-tokio";

struct Options {
    listen: String,
    admin_listen: String,
    path: String,
    echo: bool,
}

/// user -> (connection id -> that connection's outbound queue). A std Mutex rather than DashMap:
/// every critical section is a short map operation with no await inside (tokio's own advice for
/// such state), and it keeps the dependency list to what most tokio servers already have.
type Registry = Mutex<HashMap<String, HashMap<u64, UnboundedSender<Message>>>>;

struct Shared {
    registry: Registry,
    next_id: AtomicU64,
    path: String,
    echo: bool,
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

#[derive(Serialize)]
struct Delivered {
    delivered: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:8080".into(),
        admin_listen: "127.0.0.1:8081".into(),
        path: "/ws".into(),
        echo: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg, None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--admin-listen" => options.admin_listen = value()?,
            "--path" => options.path = value()?,
            "--echo" => options.echo = true,
            "--demo" => {} // wspushd's "user from the query" mode, which is the only mode here
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() {
    let options = parse_args().unwrap_or_else(|e| {
        eprintln!("{NAME}: {e}\nusage: {NAME} [--listen ADDR] [--admin-listen ADDR] [--path /ws] [--echo]");
        std::process::exit(2);
    });
    let (ws_listener, ws_addr) = bind(&options.listen).await;
    let (admin_listener, admin_addr) = bind(&options.admin_listen).await;
    let shared = Arc::new(Shared {
        registry: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        path: options.path,
        echo: options.echo,
    });

    let admin = Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin).await {
            eprintln!("{NAME}: admin server failed: {e}");
            std::process::exit(1);
        }
    });

    println!("{NAME} listening on ws://{ws_addr}{}, admin on http://{admin_addr}", shared.path);
    let _ = std::io::stdout().flush();

    tokio::select! {
        _ = accept_loop(ws_listener, shared) => {}
        _ = shutdown_signal() => {}
    }
    std::process::exit(0);
}

async fn bind(addr: &str) -> (TcpListener, SocketAddr) {
    let bound = TcpListener::bind(addr).await.and_then(|listener| Ok((listener.local_addr()?, listener)));
    match bound {
        Ok((local, listener)) => (listener, local),
        Err(e) => {
            eprintln!("{NAME}: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("{NAME}: cannot watch SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle_connection(stream, shared.clone()));
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("{NAME}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut user = None;
    #[allow(clippy::result_large_err)] // the shape tungstenite's handshake callback requires
    let check_request = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != shared.path {
            return Err(error_response(StatusCode::NOT_FOUND, "not found"));
        }
        match serde_urlencoded::from_str::<UserQuery>(request.uri().query().unwrap_or("")) {
            Ok(query) if !query.user.is_empty() => {
                user = Some(query.user);
                Ok(response)
            }
            _ => Err(error_response(StatusCode::BAD_REQUEST, "missing ?user=")),
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check_request).await else {
        return;
    };
    let Some(user) = user else { return };

    let (tx, mut rx) = unbounded_channel();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.registry.lock().unwrap().entry(user.clone()).or_default().insert(id, tx.clone());

    let (mut write, mut read) = ws.split();
    let writer = async {
        while let Some(message) = rx.recv().await {
            if write.send(message).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        // Runs until the peer's close handshake completes or the connection fails; tungstenite
        // answers pings and close frames by itself.
        while let Some(Ok(message)) = read.next().await {
            if shared.echo && (message.is_text() || message.is_binary()) && tx.send(message).is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }

    let mut registry = shared.registry.lock().unwrap();
    if let Some(connections) = registry.get_mut(&user) {
        connections.remove(&id);
        if connections.is_empty() {
            registry.remove(&user);
        }
    }
}

fn error_response(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{reason}\n")));
    *response.status_mut() = status;
    response
}

/// The frame for an admin body: binary for application/octet-stream, text otherwise.
fn message_for(headers: &HeaderMap, body: Bytes) -> Result<Message, (StatusCode, &'static str)> {
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/octet-stream"));
    if binary {
        return Ok(Message::Binary(body));
    }
    match Utf8Bytes::try_from(body) {
        Ok(text) => Ok(Message::Text(text)),
        Err(_) => Err((StatusCode::BAD_REQUEST, "text payload is not UTF-8\n")),
    }
}

async fn publish(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<UserQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Delivered>, (StatusCode, &'static str)> {
    let message = message_for(&headers, body)?;
    let registry = shared.registry.lock().unwrap();
    let delivered = registry
        .get(&query.user)
        .map_or(0, |connections| connections.values().filter(|tx| tx.send(message.clone()).is_ok()).count());
    Ok(Json(Delivered { delivered }))
}

async fn broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Delivered>, (StatusCode, &'static str)> {
    let message = message_for(&headers, body)?;
    let registry = shared.registry.lock().unwrap();
    let delivered = registry
        .values()
        .flat_map(|connections| connections.values())
        .filter(|tx| tx.send(message.clone()).is_ok())
        .count();
    Ok(Json(Delivered { delivered }))
}
