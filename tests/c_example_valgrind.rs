//! examples/c/push_server.c under valgrind memcheck: start, 100 WebSocket connections,
//! publishes to them, stop, free; memcheck must report no errors and no definitely lost bytes.
//! Covers what a C host exercises: the config and callback structs, strings lent to callbacks,
//! the server handle across threads, and teardown releasing everything.
//!
//! Skipped, loudly, when valgrind is not installed, unless WSPUSH_REQUIRE_VALGRIND=1 (.ci/run
//! sets it), in which case that is a failure.

mod example_host;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use example_host::*;

/// The example's per-user limit is 16 and it knows two users, so the 100 connections come in
/// four rounds of 25; the last round is still open when the host stops.
const ROUNDS: usize = 4;
const PER_ROUND: usize = 25;

fn valgrind_available() -> bool {
    let found = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert_ne!(
            std::env::var("WSPUSH_REQUIRE_VALGRIND").as_deref(),
            Ok("1"),
            "valgrind is not installed but WSPUSH_REQUIRE_VALGRIND=1"
        );
        eprintln!("\n*** SKIPPED the valgrind run of the C example: valgrind is not installed. ***\n");
    }
    found
}

#[test]
fn c_example_is_memcheck_clean_with_100_connections() {
    if !valgrind_available() {
        return;
    }
    let binary = tmp_dir().join("push_server_valgrind");
    compile(
        "gcc",
        &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"],
        &repo().join("examples/c/push_server.c"),
        &binary,
        true,
    );
    let log: PathBuf = tmp_dir().join("push_server_valgrind.log");
    let mut command = Command::new("valgrind");
    command
        .args(["--tool=memcheck", "--error-exitcode=99", "--leak-check=full"])
        .args(["--errors-for-leak-kinds=definite", "--show-leak-kinds=definite"])
        .arg(format!("--log-file={}", log.display()))
        .arg(&binary)
        .arg("127.0.0.1:0");
    let (mut host, port) = Host::port_of(Host::spawn_command(command));

    let mut open = Vec::new();
    for round in 0..ROUNDS {
        let mut clients = Vec::new();
        for i in 0..PER_ROUND {
            let user = if i % 2 == 0 { "alice" } else { "bob" };
            let mut client = connect(port, &format!("user={user}&token={user}-secret")).unwrap();
            assert_eq!(read_text(&mut client), format!("welcome {user}"));
            clients.push((user, client));
        }
        let alices = clients.iter().filter(|(user, _)| *user == "alice").count();
        host.write_stdin(&format!("alice\tround {round} for alice\nbob\tround {round} for bob\n"));
        assert_eq!(host.expect_line("publish user=alice"), format!("publish user=alice result=ok delivered={alices}"));
        assert_eq!(
            host.expect_line("publish user=bob"),
            format!("publish user=bob result=ok delivered={}", PER_ROUND - alices)
        );
        for (user, client) in &mut clients {
            assert_eq!(read_text(client), format!("round {round} for {user}"));
        }
        if round + 1 < ROUNDS {
            for (_, mut client) in clients {
                client.close(None).unwrap();
                // Through the server's close frame to the end of the stream.
                while client.read().is_ok() {}
            }
        } else {
            open = clients;
        }
    }

    host.close_stdin(); // the example then stops, frees and exits
    for (_, client) in &mut open {
        expect_going_away(client);
    }
    host.expect_line(&format!("stopped: {} opened", ROUNDS * PER_ROUND));
    // Valgrind's leak check at exit takes a moment.
    let status = host.wait_exit_within(Duration::from_secs(60));
    let report = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "memcheck found problems (exit {status:?}):\n{report}");
    assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
    assert!(report.contains("All heap blocks were freed") || report.contains("definitely lost: 0 bytes"), "{report}");
    // Shown with --nocapture: the summary CI logs keep.
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| {
            [
                "total heap usage",
                "in use at exit",
                "definitely lost",
                "indirectly lost",
                "possibly lost",
                "ERROR SUMMARY",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect();
    println!("valgrind summary:\n{}", summary.join("\n"));
}
