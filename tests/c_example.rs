//! The C surface as a C host sees it: builds examples/c/push_server.c with gcc against
//! include/wspush.h and the libwspush.so cargo just built, runs it, and talks to it with a real
//! WebSocket client. Also checks the header under g++ and that C and Rust agree on struct layout.

mod example_host;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use example_host::*;
use tungstenite::Message;

/// The C compiler flags the example must build with.
const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];

/// Builds the example once per test run.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let output = tmp_dir().join("push_server");
        compile("gcc", C_FLAGS, &repo().join("examples/c/push_server.c"), &output, true);
        output
    })
}

#[test]
fn example_host_authenticates_welcomes_publishes_and_stops_on_sigterm() {
    let (mut host, port) = Host::start(example_binary());

    let mut alice = connect(port, "user=alice&token=alice-secret").unwrap();
    assert_eq!(read_text(&mut alice), "welcome alice", "welcome pushed from inside on_open");
    host.expect_line("open conn=");

    assert_eq!(rejected_status(connect(port, "user=alice&token=wrong")), 401);
    assert_eq!(rejected_status(connect(port, "token=alice-secret")), 401);

    host.write_stdin("alice\tyou have 3 new messages\n");
    assert_eq!(read_text(&mut alice), "you have 3 new messages");
    assert_eq!(host.expect_line("publish user=alice"), "publish user=alice result=ok delivered=1");
    host.write_stdin("bob\tnobody home\n");
    assert_eq!(host.expect_line("publish user=bob"), "publish user=bob result=ok delivered=0");

    alice.send(Message::text("read receipt 42")).unwrap();
    let line = host.expect_line("message conn=");
    assert!(line.ends_with("user=alice text=read receipt 42"), "{line}");

    let mut health = TcpStream::connect(("127.0.0.1", port)).unwrap();
    health.set_read_timeout(Some(WAIT)).unwrap();
    health.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    health.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("Content-Type: text/plain\r\n") && response.ends_with("\r\n\r\nok\n"), "{response}");

    host.signal(libc::SIGTERM);
    expect_going_away(&mut alice);
    let line = host.expect_line("close conn=");
    assert!(line.ends_with("user=alice code=1001"), "{line}");
    host.expect_line("stopped: 1 opened, 1 messages in");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn example_host_exits_cleanly_when_stdin_ends() {
    let (mut host, port) = Host::start(example_binary());
    let mut bob = connect(port, "user=bob&token=bob-secret").unwrap();
    assert_eq!(read_text(&mut bob), "welcome bob");
    host.close_stdin();
    host.expect_line("stopping");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn header_compiles_as_cpp17() {
    let source = tmp_dir().join("header_check.cpp");
    std::fs::write(
        &source,
        "#include \"wspush.h\"\n\
         #include <cstring>\n\
         int main() {\n\
             wspush_callbacks callbacks{};\n\
             callbacks.size = sizeof callbacks;\n\
             wspush_config *config = wspush_config_new();\n\
             wspush_result result = wspush_config_set_callbacks(config, &callbacks);\n\
             wspush_config_free(config);\n\
             return result == WSPUSH_RESULT_OK && std::strlen(wspush_version()) > 0 ? 0 : 1;\n\
         }\n",
    )
    .unwrap();
    let output = tmp_dir().join("header_check_cpp");
    compile("g++", &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"], &source, &output, true);
    let status = Command::new(&output).status().unwrap();
    assert!(status.success(), "C++ program using the header failed: {status}");
}

/// C and Rust must agree on the layout of every struct the host fills or reads.
#[test]
fn c_and_rust_agree_on_struct_layout() {
    use std::mem::{offset_of, size_of};
    use wspush::ffi::{wspush_callbacks, wspush_stats_snapshot};

    let source = tmp_dir().join("layout_check.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include \"wspush.h\"\n\
         int main(void) {\n\
             printf(\"%zu %zu %zu %zu %zu\\n\", sizeof(wspush_callbacks),\n\
                    offsetof(wspush_callbacks, on_upgrade), offsetof(wspush_callbacks, on_http),\n\
                    sizeof(wspush_stats_snapshot), offsetof(wspush_stats_snapshot, pings_total));\n\
             return 0;\n\
         }\n",
    )
    .unwrap();
    let output = tmp_dir().join("layout_check");
    compile("gcc", C_FLAGS, &source, &output, false);
    let printed = Command::new(&output).output().unwrap();
    let expected = format!(
        "{} {} {} {} {}\n",
        size_of::<wspush_callbacks>(),
        offset_of!(wspush_callbacks, on_upgrade),
        offset_of!(wspush_callbacks, on_http),
        size_of::<wspush_stats_snapshot>(),
        offset_of!(wspush_stats_snapshot, pings_total),
    );
    assert_eq!(String::from_utf8_lossy(&printed.stdout), expected);
}
