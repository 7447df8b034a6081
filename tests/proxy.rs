//! The PROXY protocol behind a load balancer: a trusted balancer's header says who the client
//! is (for `on_upgrade`'s peer and the per-address limits), everyone else is served directly,
//! and a header from anyone else is refused. First against the library with hand-made headers,
//! then against wspushd behind a real HAProxy (`send-proxy` and `send-proxy-v2`).
//!
//! The HAProxy test needs the `haproxy` binary (Debian package haproxy). Without it the test
//! is skipped with a loud message, unless WSPUSH_REQUIRE_HAPROXY=1 (CI sets it), where it fails.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{processes, upgrade_request, Harness, Raw, WAIT};
use wspush::{Config, UpgradeDecision};

/// A TCP connection to `addr` from `source` (any 127.0.0.0/8 address is local on Linux): lets
/// one test play several client hosts.
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2); the descriptor is checked and then owned by the TcpStream below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is an open socket we own and nothing else refers to.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = sockaddr(source, 0);
    // SAFETY: `local` is a valid sockaddr_in of the length given, alive during the call.
    let rc = unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) };
    assert_eq!(rc, 0, "bind {source}: {}", std::io::Error::last_os_error());
    let remote = sockaddr(*v4.ip(), v4.port());
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) };
    assert_eq!(rc, 0, "connect {addr}: {}", std::io::Error::last_os_error());
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream
}

fn v2_inet(command: u8, source: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(source) = source else { panic!("IPv4 only") };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x20 | command, 0x11, 0, 12]);
    header.extend(source.ip().octets());
    header.extend([127, 0, 0, 1]);
    header.extend(source.port().to_be_bytes());
    header.extend(80u16.to_be_bytes());
    header
}

/// A server trusting `trusted` for PROXY headers, with `per_ip` connections per address, that
/// accepts every upgrade and records the peer `on_upgrade` saw.
fn proxied_server(trusted: &str, per_ip: usize) -> (wspush::Server, Arc<Mutex<Vec<Option<SocketAddr>>>>) {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    let config = Config {
        proxy_protocol: true,
        trusted_proxies: vec![trusted.parse().unwrap()],
        max_connections_per_ip: per_ip,
        ..common::config()
    };
    let (server, _events) = Harness::new(config)
        .on_upgrade(move |_, request| {
            seen.lock().unwrap().push(request.peer_addr());
            UpgradeDecision::Accept(b"someone".to_vec())
        })
        .start();
    (server, peers)
}

fn status_after(stream: TcpStream, bytes: &[u8]) -> u16 {
    let mut raw = Raw::from_stream(stream);
    raw.send(bytes);
    raw.read_response_head().status
}

#[test]
fn a_trusted_balancers_header_is_the_peer_on_upgrade_sees_in_v1_and_v2() {
    let (server, peers) = proxied_server("127.0.0.1", 0);
    let addr = server.local_addr();
    let request = upgrade_request("/ws", "");

    // v1, header and request in one write.
    let v1 = format!("PROXY TCP4 203.0.113.7 127.0.0.1 4242 80\r\n{request}");
    assert_eq!(status_after(TcpStream::connect(addr).unwrap(), v1.as_bytes()), 101);
    // v2, the header alone first (balancers send it at connect, before the client speaks).
    let mut raw = Raw::from_stream(TcpStream::connect(addr).unwrap());
    raw.send(&v2_inet(1, "198.51.100.9:5151".parse().unwrap()));
    std::thread::sleep(Duration::from_millis(50));
    raw.send(request.as_bytes());
    assert_eq!(raw.read_response_head().status, 101);
    // v2 LOCAL (a health check): no client address, so the socket's own.
    let local = v2_inet(0, "192.0.2.1:1".parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    let socket_peer = stream.local_addr().unwrap();
    assert_eq!(status_after(stream, &[&local[..], request.as_bytes()].concat()), 101);

    let seen = peers.lock().unwrap().clone();
    let expected = ["203.0.113.7:4242", "198.51.100.9:5151"].map(|a| Some(a.parse().unwrap()));
    assert_eq!(seen, [expected[0], expected[1], Some(socket_peer)]);
}

#[test]
fn a_trusted_source_without_a_header_and_an_untrusted_one_with_a_header_get_400() {
    // Trusts 127.0.0.1 only; 127.0.0.2 is an ordinary client.
    let (server, peers) = proxied_server("127.0.0.1/32", 0);
    let addr = server.local_addr();
    let request = upgrade_request("/ws", "");
    let trusted = Ipv4Addr::new(127, 0, 0, 1);
    let untrusted = Ipv4Addr::new(127, 0, 0, 2);

    assert_eq!(status_after(connect_from(trusted, addr), request.as_bytes()), 400, "header missing");
    let garbage = format!("PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n{request}");
    assert_eq!(status_after(connect_from(trusted, addr), garbage.as_bytes()), 400, "malformed header");

    let v1 = format!("PROXY TCP4 203.0.113.7 127.0.0.1 4242 80\r\n{request}");
    assert_eq!(status_after(connect_from(untrusted, addr), v1.as_bytes()), 400, "v1 from an untrusted source");
    let v2 = [&v2_inet(1, "203.0.113.7:4242".parse().unwrap())[..], request.as_bytes()].concat();
    assert_eq!(status_after(connect_from(untrusted, addr), &v2), 400, "v2 from an untrusted source");
    assert!(peers.lock().unwrap().is_empty(), "none of these reached on_upgrade");

    // An untrusted source is served directly, under its own address.
    let stream = connect_from(untrusted, addr);
    let own = stream.local_addr().unwrap();
    assert_eq!(status_after(stream, request.as_bytes()), 101);
    assert_eq!(*peers.lock().unwrap(), [Some(own)]);
}

#[test]
fn per_address_limits_count_the_clients_behind_the_balancer_not_the_balancer() {
    let (server, _) = proxied_server("127.0.0.1", 1);
    let addr = server.local_addr();
    let request = upgrade_request("/ws", "");
    let via_balancer = |client: &str| {
        let header = format!("PROXY TCP4 {client} 127.0.0.1 4000 80\r\n");
        let mut raw = Raw::from_stream(TcpStream::connect(addr).unwrap());
        raw.send(header.as_bytes());
        raw.send(request.as_bytes());
        (raw.read_response_head().status, raw)
    };
    let (first, _a) = via_balancer("203.0.113.1");
    let (other, _b) = via_balancer("203.0.113.2");
    let (second, _c) = via_balancer("203.0.113.1");
    assert_eq!((first, other, second), (101, 101, 429), "one per client address; the balancer's own is not counted");
}

// ------------------------------------------------------------------------------ behind HAProxy

/// A free TCP port on 127.0.0.1 (free when this returns; good enough for a test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts wspushd (demo mode) with `args`; returns it and its WebSocket address once listening.
fn start_daemon(args: &[&str]) -> (Killed, SocketAddr, Arc<Mutex<String>>) {
    let mut command = Command::new(common::build_workspace_binary("wspushd"));
    command.args(["--demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--threads", "2"]).args(args);
    let daemon = processes::spawn_wspushd(command, "wspushd");
    (Killed(daemon.child), daemon.ws, daemon.stdout)
}

/// Starts HAProxy in front of `backend`: frontends on the two returned ports forward with a
/// PROXY v1 and a PROXY v2 header.
fn start_haproxy(backend: SocketAddr, dir: &std::path::Path) -> (Killed, u16, u16) {
    let (v1, v2) = (free_port(), free_port());
    let config = format!(
        "global\n    maxconn 256\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend with_v1\n    bind 127.0.0.1:{v1}\n    default_backend wspushd_v1\n\
         backend wspushd_v1\n    server ws {backend} send-proxy\n\
         frontend with_v2\n    bind 127.0.0.1:{v2}\n    default_backend wspushd_v2\n\
         backend wspushd_v2\n    server ws {backend} send-proxy-v2\n"
    );
    let child = processes::spawn_haproxy(&config, dir, &[v1, v2]);
    (Killed(child), v1, v2)
}

fn upgrade_from(source: Ipv4Addr, port: u16, user: &str) -> Result<Raw, u16> {
    let mut raw = Raw::from_stream(connect_from(source, SocketAddr::from(([127, 0, 0, 1], port))));
    raw.send(upgrade_request(&format!("/ws?user={user}"), "").as_bytes());
    match raw.read_response_head().status {
        101 => Ok(raw),
        status => Err(status),
    }
}

#[test]
fn wspushd_behind_haproxy_counts_each_client_address_and_refuses_untrusted_headers() {
    if !processes::haproxy_available("wspushd_behind_haproxy") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wspush-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_daemon, ws, log) = start_daemon(&[
        "--proxy-protocol",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        "2",
        "--max-handshakes-per-ip-per-sec",
        "0",
    ]);
    assert!(
        log.lock().unwrap().contains("client addresses from PROXY headers of 127.0.0.1/32"),
        "{}",
        log.lock().unwrap()
    );
    let (_haproxy, v1, v2) = start_haproxy(ws, &dir);
    let (alice_host, bob_host) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));

    // HAProxy connects to wspushd from 127.0.0.1 every time; the limit of 2 applies to the
    // addresses its headers carry, in either version.
    let first = upgrade_from(alice_host, v1, "a1").expect("first from 127.0.0.2 (v1)");
    let second = upgrade_from(alice_host, v2, "a2").expect("second from 127.0.0.2 (v2)");
    assert_eq!(upgrade_from(alice_host, v1, "a3").err(), Some(429), "third from 127.0.0.2 (v1)");
    assert_eq!(upgrade_from(alice_host, v2, "a4").err(), Some(429), "third from 127.0.0.2 (v2)");
    let bob = upgrade_from(bob_host, v2, "b1").expect("127.0.0.3 is another client");
    let bob2 = upgrade_from(bob_host, v1, "b2").expect("and has its own two");

    // Straight to wspushd: the trusted balancer's address without a header, and an untrusted
    // client forging one, both get 400.
    let request = upgrade_request("/ws?user=x", "");
    assert_eq!(status_after(connect_from(Ipv4Addr::LOCALHOST, ws), request.as_bytes()), 400);
    let forged = format!("PROXY TCP4 203.0.113.50 127.0.0.1 4000 80\r\n{request}");
    // (From a host of its own: 127.0.0.3 is at its limit, and limits are checked first.)
    assert_eq!(status_after(connect_from(Ipv4Addr::new(127, 0, 0, 4), ws), forged.as_bytes()), 400);

    // A slot freed behind the balancer is free again for that client.
    drop(first);
    let deadline = Instant::now() + WAIT;
    let again = loop {
        match upgrade_from(alice_host, v1, "a5") {
            Ok(raw) => break raw,
            Err(429) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(status) => panic!("after a close, 127.0.0.2 got {status}"),
        }
    };
    drop((second, bob, bob2, again));
    let _ = std::fs::remove_dir_all(&dir);
}
