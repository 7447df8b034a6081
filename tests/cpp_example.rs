//! The C ABI as a C++ host sees it: builds examples/cpp/push_server.cpp (with its RAII wrapper
//! examples/cpp/wspush.hpp) with g++ -std=c++17 against the unchanged include/wspush.h and the
//! libwspush.so cargo just built, runs it, and talks to it with a real WebSocket client.

mod example_host;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use example_host::*;
use tungstenite::Message;

/// The flags the example must build with: a host's usual strict warning set.
const CXX_FLAGS: &[&str] = &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"];

/// Builds the example once per test run.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let output = tmp_dir().join("push_server_cpp");
        compile("g++", CXX_FLAGS, &repo().join("examples/cpp/push_server.cpp"), &output, true);
        output
    })
}

#[test]
fn cpp_host_authenticates_welcomes_publishes_and_stops_on_sigterm() {
    let (mut host, port) = Host::start(example_binary());

    let mut alice_tab1 = connect(port, "user=alice&token=alice-secret").unwrap();
    assert_eq!(read_text(&mut alice_tab1), "welcome alice", "welcome sent from inside on_open");
    let mut alice_tab2 = connect(port, "user=alice&token=alice-secret").unwrap();
    assert_eq!(read_text(&mut alice_tab2), "welcome alice");
    // Each tab is welcomed once: the welcome goes to the new connection, not to the user.
    host.expect_line("open conn=");
    host.expect_line("open conn=");

    assert_eq!(rejected_status(connect(port, "user=alice&token=bob-secret")), 401);
    assert_eq!(rejected_status(connect(port, "token=alice-secret")), 401);
    assert!(host.expect_line("reject ").ends_with("bad token for alice"));

    host.write_stdin("alice\tyou have 3 new messages\n");
    assert_eq!(read_text(&mut alice_tab1), "you have 3 new messages");
    assert_eq!(read_text(&mut alice_tab2), "you have 3 new messages");
    assert_eq!(host.expect_line("publish user=alice"), "publish user=alice delivered=2 offset=1");
    // A line split across writes is published once whole; an unknown user reaches nobody.
    host.write_stdin("bob\tnobody ");
    host.write_stdin("home\r\n");
    // Offsets are assigned while the user is away, for a wspush.v1 tab that resumes.
    assert_eq!(host.expect_line("publish user=bob"), "publish user=bob delivered=0 offset=1");
    host.write_stdin("\tempty user\n");
    // WSPUSH_RESULT_INVALID_USER_ID, reported through the wrapper's std::error_code.
    assert!(host.expect_line("publish user= ").starts_with("publish user= failed: wspush:6 ("));

    alice_tab2.send(Message::text("read receipt 42")).unwrap();
    let line = host.expect_line("message conn=");
    assert!(line.ends_with("user=alice text=read receipt 42"), "{line}");

    let mut health = TcpStream::connect(("127.0.0.1", port)).unwrap();
    health.set_read_timeout(Some(WAIT)).unwrap();
    health.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    health.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");

    host.signal(libc::SIGTERM);
    expect_going_away(&mut alice_tab1);
    expect_going_away(&mut alice_tab2);
    host.expect_line("signal Terminated");
    assert!(host.expect_line("close conn=").ends_with("user=alice code=1001"));
    assert!(host.expect_line("close conn=").ends_with("user=alice code=1001"));
    host.expect_line("stopped: 2 opened, 1 messages in");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn cpp_host_stops_on_sigint() {
    let (mut host, port) = Host::start(example_binary());
    let mut bob = connect(port, "user=bob&token=bob-secret").unwrap();
    assert_eq!(read_text(&mut bob), "welcome bob");
    host.signal(libc::SIGINT);
    expect_going_away(&mut bob);
    host.expect_line("signal Interrupt");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn cpp_host_exits_cleanly_when_stdin_ends() {
    let (mut host, port) = Host::start(example_binary());
    let mut bob = connect(port, "user=bob&token=bob-secret").unwrap();
    assert_eq!(read_text(&mut bob), "welcome bob");
    host.close_stdin();
    expect_going_away(&mut bob);
    host.expect_line("stopping");
    host.expect_line("stopped: 1 opened, 0 messages in");
    assert_eq!(host.wait_exit().code(), Some(0));
}

/// A start failure surfaces as the wrapper's exception, with the engine's description.
#[test]
fn cpp_host_reports_a_busy_port_and_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut host = Host::spawn(example_binary(), &format!("127.0.0.1:{port}"));
    // WSPUSH_RESULT_BIND_FAILED, thrown by PushServer::start as wspush::Error.
    assert!(host.expect_line("push_server: start: ").ends_with("[wspush:5]"));
    host.expect_line("push_server: is another process listening on ");
    assert_eq!(host.wait_exit().code(), Some(1));
}

/// A redis-server child, killed (SIGKILL) when dropped: a failing test leaves none behind.
struct Redis(std::process::Child);

impl Redis {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway redis-server (no persistence) on a free port; None (the test skips) when
/// redis-server is not on PATH, unless WSPUSH_REQUIRE_REDIS=1.
fn start_redis() -> Option<(Redis, u16)> {
    use std::process::{Command, Stdio};
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .current_dir(tmp_dir())
        .stdout(Stdio::null())
        .spawn();
    let redis = match spawned {
        Ok(redis) => Redis(redis),
        Err(e) if std::env::var("WSPUSH_REQUIRE_REDIS").as_deref() == Ok("1") => {
            panic!("WSPUSH_REQUIRE_REDIS=1 but redis-server could not be started: {e}")
        }
        Err(e) => {
            eprintln!("skipped: redis-server not available ({e}); WSPUSH_REQUIRE_REDIS=1 makes this a failure");
            return None;
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if redis_command(port, &["PING"]).is_ok_and(|reply| reply == "+PONG\r\n") {
            return Some((redis, port));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(redis);
    panic!("redis-server did not answer PING on port {port}");
}

/// One command on a fresh connection; the raw reply (small replies only).
fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request += &format!("${}\r\n{arg}\r\n", arg.len());
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = vec![0; 512];
    let n = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
}

/// Two C++ hosts share alice through Redis (WSPUSH_REDIS_URL): a line published on A reaches her
/// tab on B, publish_wait counts one node and Redis numbers the message; once Redis is killed,
/// publish_wait reports WSPUSH_RESULT_UNAVAILABLE within the host's 500 ms Redis timeout.
#[test]
fn cpp_hosts_share_users_through_redis() {
    let Some((mut redis, redis_port)) = start_redis() else { return };
    let host_with_redis = || {
        let mut command = std::process::Command::new(example_binary());
        command.arg("127.0.0.1:0").env("WSPUSH_REDIS_URL", format!("redis://127.0.0.1:{redis_port}"));
        Host::port_of(Host::spawn_command(command))
    };
    let (mut host_a, _) = host_with_redis();
    let (mut host_b, port_b) = host_with_redis();

    let mut alice = connect(port_b, "user=alice&token=alice-secret").unwrap();
    assert_eq!(read_text(&mut alice), "welcome alice");
    // B subscribes to alice's channel (named as in src/redis/keys.rs); watched in Redis, since a
    // probing publish would take an offset.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !redis_command(redis_port, &["PUBSUB", "SHARDNUMSUB", "wspush:{u:alice}:c"]).unwrap().ends_with(":1\r\n") {
        assert!(std::time::Instant::now() < deadline, "host B did not subscribe to alice");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    host_a.write_stdin("alice\thello through redis\n");
    assert_eq!(host_a.expect_line("publish user=alice"), "publish user=alice delivered=1 offset=1");
    assert_eq!(read_text(&mut alice), "hello through redis");

    redis.kill(); // SIGKILL
    let started = std::time::Instant::now();
    host_a.write_stdin("alice\tafter the kill\n");
    let line = host_a.expect_line("publish user=alice");
    assert!(line.starts_with("publish user=alice failed: wspush:16 ("), "{line}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "took {:?}", started.elapsed());

    host_a.close_stdin();
    host_b.close_stdin();
    expect_going_away(&mut alice);
    assert_eq!(host_a.wait_exit().code(), Some(0));
    assert_eq!(host_b.wait_exit().code(), Some(0));
}
