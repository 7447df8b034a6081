//! Criterion micro-benchmarks of the engine's hot paths:
//! `cargo bench --features bench-internals --bench hot_paths`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wspush::internals::{
    apply_mask, decode_next, frame_text, parse_frame_header, parse_upgrade, sign_jwt, DecoderState, JwtVerifier,
    Registry,
};
use wspush::Config;

/// What Chromium sends when a page opens `new WebSocket("ws://host/ws?user=...")`.
const BROWSER_UPGRADE: &[u8] = b"GET /ws?user=u123456 HTTP/1.1\r\nHost: push.mail.example:8080\r\nConnection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\nOrigin: https://mail.example\r\nSec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\nCookie: session=0123456789abcdef0123456789abcdef\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn upgrade(c: &mut Criterion) {
    let config = Config::default();
    assert!(parse_upgrade(BROWSER_UPGRADE, &config).is_some());
    let mut group = c.benchmark_group("upgrade");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_and_validate_browser_request", |b| {
        b.iter(|| parse_upgrade(black_box(BROWSER_UPGRADE), &config))
    });
    // What a typical identity provider issues for a mail session.
    let secret = b"0123456789abcdef0123456789abcdef";
    let claims = r#"{"sub":"u123456","iss":"https://id.mail.example","aud":"push","iat":1800000000,"exp":1800000900}"#;
    let token = sign_jwt(r#"{"alg":"HS256","typ":"JWT"}"#, claims, secret);
    let verifier = JwtVerifier::new(secret, std::time::Duration::from_secs(30));
    assert_eq!(verifier.verify_at(token.as_bytes(), 1_800_000_100.0).as_deref(), Some(&b"u123456"[..]));
    group.bench_function("verify_jwt_hs256", |b| {
        b.iter(|| verifier.verify_at(black_box(token.as_bytes()), 1_800_000_100.0))
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    // A masked 20-byte text frame, as a browser sends it.
    let header = [0x81u8, 0x80 | 20, 1, 2, 3, 4];
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_client_header", |b| b.iter(|| parse_frame_header(black_box(&header), 65536)));
    // The whole per-frame path of an open connection: header, unmask, UTF-8, sequencing.
    let text_frame: Vec<u8> =
        header.iter().copied().chain((0..20u8).map(|i| (b'a' + i) ^ [1, 2, 3, 4][usize::from(i) % 4])).collect();
    group.bench_function("decode_text_frame", |b| {
        let mut buf = text_frame.clone();
        b.iter(|| {
            buf.copy_from_slice(&text_frame);
            let mut state = DecoderState::default();
            let (used, _) = decode_next(black_box(&mut buf), &mut state, 65536);
            used
        })
    });
    for size in [20usize, 1024, 65536] {
        let mut payload = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("unmask", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut payload), [1, 2, 3, 4], 0))
        });
        let message = vec![b'x'; size];
        group.bench_with_input(BenchmarkId::new("frame_publish", size), &size, |b, _| {
            b.iter(|| frame_text(black_box(&message)))
        });
    }
    group.finish();
}

fn registry(c: &mut Criterion) {
    let registry = Registry::default();
    let users = 100_000u64;
    for user in 0..users {
        registry.add(format!("u{user}").as_bytes(), user + 1);
    }
    let names: Vec<Vec<u8>> = (0..1024).map(|i| format!("u{}", i * 97 % users).into_bytes()).collect();
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("lookup_among_100k_users", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            registry.lookup(black_box(&names[i]))
        })
    });
    group.finish();
}

/// `ServerHandle::publish`, history off and on side by side: to 10,000 offline users (the call,
/// the registry and, with history on, the append: a store of a million messages, so mostly cache
/// misses), and to one user with a connection whose client reads everything (frame, queue to the
/// I/O thread, its wake-up: what a mail notification costs the publishing thread).
fn publish(c: &mut Criterion) {
    let names: Vec<Vec<u8>> = (0..10_000).map(|user| format!("user{user:07}").into_bytes()).collect();
    let payload = vec![b'x'; 100];
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(1));
    for (history, history_max_messages) in [("history_off", 0), ("history_on", 100)] {
        let config = Config {
            listen: "127.0.0.1:0".into(),
            threads: 1,
            history_max_messages,
            history_max_bytes: 1 << 30,
            ..Config::default()
        };
        let server = wspush::Server::start(config, ByQuery).expect("server starts");
        let mut i = 0;
        group.bench_function(format!("offline_{history}"), |b| {
            b.iter(|| {
                i = (i + 1) % names.len();
                server.publish(black_box(&names[i]), black_box(&payload), wspush::MessageKind::Text)
            })
        });
        let reader = drained_client(server.local_addr());
        while server.stats().connections == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        group.bench_function(format!("one_connection_{history}"), |b| {
            b.iter(|| server.publish(black_box(b"reader"), black_box(&payload), wspush::MessageKind::Text))
        });
        drop(server);
        let _ = reader.join();
    }
    group.finish();
}

/// A client of user "reader" that reads and discards everything until the server goes away.
fn drained_client(addr: std::net::SocketAddr) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = "GET /ws?user=reader HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).expect("upgrade");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    })
}

/// Accepts `?user=...`.
struct ByQuery;

impl wspush::Handler for ByQuery {
    fn on_upgrade(&self, _: &wspush::ServerHandle, request: &wspush::Request<'_>) -> wspush::UpgradeDecision {
        let user = request.query_param("user").unwrap_or("nobody");
        wspush::UpgradeDecision::Accept(user.as_bytes().to_vec())
    }
    fn on_message(&self, _: &wspush::ServerHandle, _: wspush::ConnId, _: &[u8], _: wspush::MessageKind, _: &[u8]) {}
}

criterion_group!(benches, upgrade, frames, registry, publish);
criterion_main!(benches);
