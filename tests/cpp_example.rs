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
