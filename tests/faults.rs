//! Faults a push server meets on the open internet, over real sockets: a peer that stops halfway
//! through a frame, a peer that resets while a large queue is being written to it, writes to
//! peers that are gone (no SIGPIPE may reach the host, whose signal dispositions stay as they
//! were), and a peer behind a link that silently drops every packet (network namespace + veth),
//! which only the heartbeat can detect.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use wspush::MessageKind;

/// Heartbeat settings short enough for tests: a ping after 200 ms of silence, closed after 600.
fn heartbeat_config() -> wspush::Config {
    wspush::Config { ping_interval: Duration::from_millis(200), idle_timeout: Duration::from_millis(600), ..config() }
}

/// Makes `close()` of this socket send RST instead of FIN (SO_LINGER with a zero timeout).
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the descriptor is an open socket; the option value is a live `linger` of that size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Every on_close event of `conn` seen within `settle` (including ones already received).
fn close_events_of(events: &mut Events, conn: u64, settle: Duration) -> Vec<u16> {
    events
        .collect_for(settle)
        .into_iter()
        .filter_map(|e| match e {
            Event::Close { conn: c, code, .. } if c == conn => Some(code),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------ half a frame, then silence

#[test]
fn half_a_frame_then_silence_is_closed_by_the_heartbeat() {
    let (server, mut events) = start(heartbeat_config());
    let mut raw = Raw::upgrade(server.local_addr(), "/ws?user=stalled");
    let conn = events.opened(b"stalled");

    // A masked text frame announcing 10 payload bytes; only its header, mask and 3 bytes arrive.
    let whole = frame(0x81, b"0123456789");
    raw.send(&whole[..2 + 4 + 3]);
    let silent_since = Instant::now();

    // The server pings the silent peer, then gives up on it: no pong ever comes.
    let ping = raw.read_frame().expect("a ping before the server gives up");
    assert_eq!(ping.opcode, 9, "expected a heartbeat ping, got {ping:?}");
    raw.read_end();
    let gone_after = silent_since.elapsed();

    assert_eq!(events.closed(conn), 1006, "closed for silence: abnormal closure");
    assert!(
        gone_after >= Duration::from_millis(400),
        "closed after {gone_after:?}, before the 600 ms idle timeout could pass"
    );
    assert!(gone_after < Duration::from_secs(3), "closed only after {gone_after:?}");
    assert!(close_events_of(&mut events, conn, Duration::from_millis(300)).is_empty(), "on_close fired twice");
    let stats = stats_until(&server, "no connections left", |s| s.connections == 0);
    assert_eq!((stats.handshakes, stats.users, stats.timeouts_total), (0, 0, 1), "{stats:?}");
}

#[test]
fn half_an_upgrade_request_then_silence_is_closed_by_the_handshake_deadline() {
    let (server, mut events) =
        start(wspush::Config { handshake_timeout: Duration::from_millis(300), ..heartbeat_config() });
    let mut raw = Raw::connect(server.local_addr());
    let request = upgrade_request("/ws?user=slowloris", "");
    raw.send(&request.as_bytes()[..request.len() / 2]);
    let started = Instant::now();
    stats_until(&server, "the handshake to be counted", |s| s.handshakes == 1);

    raw.read_end();
    let gone_after = started.elapsed();
    assert!(gone_after >= Duration::from_millis(200), "closed after {gone_after:?}: before the deadline");
    assert!(gone_after < Duration::from_secs(3), "closed only after {gone_after:?}");
    let stats = stats_until(&server, "the handshake to be gone", |s| s.handshakes == 0);
    assert_eq!((stats.connections, stats.upgrades_total, stats.timeouts_total), (0, 0, 1), "{stats:?}");
    // Never opened, so never closed: the host hears nothing of it.
    events.assert_none("a callback for an unfinished upgrade", Duration::from_millis(100), |_| true);
}

// ---------------------------------------------------------- RST while a large queue is written

#[test]
fn reset_while_a_large_queue_is_written_frees_the_connection_and_spares_the_others() {
    let (server, mut events) = start(wspush::Config { max_queue_bytes: 64 * 1024 * 1024, ..config() });
    let addr = server.local_addr();

    // The slow peer advertises a tiny window and never reads.
    let mut slow = Raw::from_stream(connect_small_rcvbuf(addr, 4096));
    slow.handshake("/ws?user=slow", "");
    let slow_conn = events.opened(b"slow");
    let mut fast = ws_connect(addr, "fast");
    let fast_conn = events.opened(b"fast");

    // 16 MiB for the slow peer: far more than socket buffers hold, so most of it waits in the
    // server's queue for that connection.
    let chunk = vec![b's'; 512 * 1024];
    let published = 32;
    for _ in 0..published {
        assert_eq!(server.publish(b"slow", &chunk, MessageKind::Binary).unwrap(), 1);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = server.stats();
    let total = (published * chunk.len()) as u64;
    assert!(
        before.bytes_out_total < total - 4 * 1024 * 1024,
        "at least 4 MiB should still be queued, yet {} of {total} bytes were written",
        before.bytes_out_total
    );
    assert_eq!(before.slow_consumer_closes_total, 0, "the queue limit was not reached: {before:?}");

    // The slow peer vanishes with a reset while the server still has megabytes for it.
    set_linger_zero(&slow.stream);
    drop(slow);

    assert_eq!(events.closed(slow_conn), 1006, "a reset is an abnormal closure");
    assert!(close_events_of(&mut events, slow_conn, Duration::from_millis(200)).is_empty(), "on_close twice");
    let stats = stats_until(&server, "the slow connection to be gone", |s| s.connections == 1);
    assert_eq!(stats.users, 1, "only the fast user is left: {stats:?}");
    assert_eq!(server.publish(b"slow", b"anyone?", MessageKind::Text).unwrap(), 0);

    // The other connection is untouched and still gets its messages, in order.
    for i in 0..20 {
        assert_eq!(server.publish(b"fast", format!("after reset {i}").as_bytes(), MessageKind::Text).unwrap(), 1);
    }
    for i in 0..20 {
        assert_eq!(ws_text(&mut fast), format!("after reset {i}"));
    }
    let end = server.stats();
    assert_eq!((end.dropped_total, end.slow_consumer_closes_total), (0, 0), "{end:?}");
    events.assert_none(
        "a close of the fast connection",
        Duration::from_millis(100),
        |e| matches!(e, Event::Close { conn, .. } if *conn == fast_conn),
    );
}

// ---------------------------------------------------------------------- SIGPIPE and dispositions

/// Every signal's disposition (handler address and flags) in this process.
fn signal_dispositions() -> Vec<(libc::c_int, libc::sighandler_t, libc::c_int)> {
    (1..libc::SIGRTMAX())
        .filter_map(|signal| {
            // SAFETY: sigaction with a NULL new action only reads the disposition into `old`.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
            (rc == 0).then_some((signal, old.sa_sigaction, old.sa_flags))
        })
        .collect()
}

/// The writes-to-gone-peers scenario, in a process whose SIGPIPE disposition is the default
/// (terminate). Ignored in a normal run because it changes the disposition for the whole test
/// process: `writes_to_gone_peers_never_raise_sigpipe_in_the_host` runs it alone in a child.
#[test]
#[ignore = "changes the process's SIGPIPE disposition; run in a child process by the test below"]
fn sigpipe_child_process() {
    // The Rust runtime ignores SIGPIPE at startup; a C host normally does not.
    // SAFETY: setting a standard disposition; no handler code is involved.
    assert_ne!(unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) }, libc::SIG_ERR);
    let before = signal_dispositions();

    // A queue cap the (never reading) doomed peers can't reach in their short lives.
    let (server, mut events) = start(wspush::Config { threads: 2, max_queue_bytes: 64 * 1024 * 1024, ..config() });
    assert_eq!(signal_dispositions(), before, "starting the engine changed signal dispositions");
    let addr = server.local_addr();

    // Publishers hammer the users whose peers are about to vanish, so writes race the resets.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let deliveries = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..2)
        .map(|_| {
            let (handle, stop, deliveries) = (server.handle(), stop_publishing.clone(), deliveries.clone());
            std::thread::spawn(move || {
                let payload = vec![b'p'; 256];
                while !stop.load(Ordering::Relaxed) {
                    let n = handle.publish(b"doomed", &payload, MessageKind::Binary).unwrap();
                    deliveries.fetch_add(n as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(20));
                }
            })
        })
        .collect();

    let rounds = 15;
    let per_round = 20;
    for round in 0..rounds {
        let peers: Vec<Raw> = (0..per_round).map(|_| Raw::upgrade(addr, "/ws?user=doomed")).collect();
        stats_until(&server, "the peers to open", |s| s.connections as usize >= per_round);
        // Each peer reads for a while, drains what has arrived, and closes while messages are
        // still streaming to it: a FIN on an empty receive buffer (the server's next segment is
        // then answered with RST, and the write after that fails with EPIPE) or, for every
        // other peer, a reset.
        let closers: Vec<_> = peers
            .into_iter()
            .enumerate()
            .map(|(i, peer)| {
                std::thread::spawn(move || {
                    let mut stream = peer.stream;
                    let reset = (i + round) % 2 == 0;
                    let until = Instant::now() + Duration::from_millis(5 + (i as u64 * 7) % 30);
                    stream.set_nonblocking(true).unwrap();
                    let mut sink = [0u8; 64 * 1024];
                    while Instant::now() < until {
                        match std::io::Read::read(&mut stream, &mut sink) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                            Err(_) => break,
                        }
                    }
                    while matches!(std::io::Read::read(&mut stream, &mut sink), Ok(n) if n > 0) {}
                    if reset {
                        set_linger_zero(&stream);
                    }
                })
            })
            .collect();
        for closer in closers {
            closer.join().unwrap();
        }
        stats_until(&server, "the peers to be gone", |s| s.connections == 0);
    }
    stop_publishing.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let closes =
        events.collect_for(Duration::from_millis(100)).iter().filter(|e| matches!(e, Event::Close { .. })).count();
    assert_eq!(closes, rounds * per_round, "one on_close per vanished peer");

    // The engine still serves after all that.
    let mut alive = ws_connect(addr, "alive");
    events.opened(b"alive");
    assert_eq!(server.publish(b"alive", b"still here", MessageKind::Text).unwrap(), 1);
    assert_eq!(ws_text(&mut alive), "still here");

    server.stop();
    drop(server);
    assert_eq!(signal_dispositions(), before, "running and stopping the engine changed signal dispositions");
    // The parent looks for this line: reaching it means no SIGPIPE killed the process.
    println!("SIGPIPE-CHILD-SURVIVED deliveries={}", deliveries.load(Ordering::Relaxed));
}

/// Without MSG_NOSIGNAL on the engine's sends, the child dies of SIGPIPE (checked by removing
/// the flag from src/socket.rs: 3 runs out of 3 failed).
#[test]
fn writes_to_gone_peers_never_raise_sigpipe_in_the_host() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["sigpipe_child_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_ne!(output.status.signal(), Some(libc::SIGPIPE), "the host was killed by SIGPIPE\n{stdout}\n{stderr}");
    assert!(output.status.success(), "child failed: {:?}\n{stdout}\n{stderr}", output.status);
    let marker = "SIGPIPE-CHILD-SURVIVED deliveries=";
    let at = stdout.find(marker).unwrap_or_else(|| panic!("the child did not run to its end:\n{stdout}\n{stderr}"));
    let digits: String = stdout[at + marker.len()..].chars().take_while(char::is_ascii_digit).collect();
    let deliveries: u64 = digits.parse().unwrap();
    assert!(deliveries > 0, "the publishers never reached a doomed peer: the test proved nothing");
}

// ------------------------------------------------------------- a link that drops every packet

/// A network namespace joined to this one by a veth pair; removed on drop, even when a test
/// fails halfway.
struct NetnsLink {
    namespace: String,
    host_side: String,
    peer_side: String,
    host_addr: std::net::Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl NetnsLink {
    /// Names and a /30 subnet derived from the process ID, so parallel runs don't collide.
    fn create() -> Result<NetnsLink, String> {
        let pid = std::process::id();
        let (third, fourth) = ((pid >> 6) & 0xff, (pid & 0x3f) * 4);
        let link = NetnsLink {
            namespace: format!("wspush-fault-{pid}"),
            host_side: format!("wsf{pid}h"),
            peer_side: format!("wsf{pid}p"),
            host_addr: std::net::Ipv4Addr::new(10, 213, third as u8, fourth as u8 + 1),
        };
        let peer_addr = std::net::Ipv4Addr::new(10, 213, third as u8, fourth as u8 + 2);
        ip(&["netns", "add", &link.namespace])?;
        // From here on, Drop cleans up whatever was made.
        ip(&["link", "add", &link.host_side, "type", "veth", "peer", "name", &link.peer_side])?;
        ip(&["link", "set", &link.peer_side, "netns", &link.namespace])?;
        ip(&["addr", "add", &format!("{}/30", link.host_addr), "dev", &link.host_side])?;
        ip(&["link", "set", &link.host_side, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &link.namespace, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&["addr", "add", &format!("{peer_addr}/30"), "dev", &link.peer_side])?;
        in_ns(&["link", "set", &link.peer_side, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(link)
    }

    /// Connects to `addr` from inside the namespace: a thread joins it (network namespaces are
    /// per thread), makes the socket, and hands it back; the socket stays in the namespace.
    fn connect_from_inside(&self, addr: SocketAddr) -> TcpStream {
        let path = format!("/var/run/netns/{}", self.namespace);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on an open namespace file; it changes only this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpStream::connect_timeout(&addr, WAIT).expect("connect from the namespace")
        })
        .join()
        .unwrap()
    }

    /// The link goes dead: the namespace's end is taken down, so nothing crosses either way and
    /// neither side is told (no RST, no ICMP).
    fn drop_all_packets(&self) {
        ip(&["netns", "exec", &self.namespace, "ip", "link", "set", &self.peer_side, "down"]).unwrap();
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = ip(&["link", "del", &self.host_side]);
        if let Err(e) = ip(&["netns", "del", &self.namespace]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Whether netns tests can run here; when they can't, say so loudly, and fail instead when
/// WSPUSH_REQUIRE_NETNS=1 (CI runs as root with iproute2).
fn netns_available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    Command::new("ip").arg("-V").output().map_err(|e| format!("no `ip` command (iproute2): {e}"))?;
    Ok(())
}

fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("WSPUSH_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("{test}: cannot run ({why}) but WSPUSH_REQUIRE_NETNS=1");
    }
    eprintln!("\n*** SKIPPED {test}: {why}. Run as root with iproute2 (CI sets WSPUSH_REQUIRE_NETNS=1). ***\n");
}

#[test]
fn a_peer_behind_a_link_that_drops_everything_is_detected_by_the_heartbeat() {
    const TEST: &str = "a_peer_behind_a_link_that_drops_everything_is_detected_by_the_heartbeat";
    if let Err(why) = netns_available() {
        return skip_or_fail(TEST, &why);
    }
    let link = match NetnsLink::create() {
        Ok(link) => link,
        Err(why) => return skip_or_fail(TEST, &format!("cannot create a namespace and veth pair: {why}")),
    };
    // After the first round the engine pings at about idle - ping of silence and then allows
    // about one ping interval for the pong: 400 ms leaves room for a loaded CI machine.
    let idle = Duration::from_millis(1200);
    let (server, mut events) = start(wspush::Config {
        listen: format!("{}:0", link.host_addr),
        ping_interval: Duration::from_millis(400),
        idle_timeout: idle,
        ..config()
    });
    let mut client = Raw::from_stream(link.connect_from_inside(server.local_addr()));
    client.handshake("/ws?user=remote", "");
    let conn = events.opened(b"remote");

    // While the link works, answering pings keeps the connection open past the idle timeout.
    let alive_until = Instant::now() + idle + Duration::from_millis(400);
    let mut pongs = 0;
    while Instant::now() < alive_until {
        let frame = client.read_frame().expect("the server keeps a responsive peer");
        assert_eq!(frame.opcode, 9, "only pings while idle: {frame:?}");
        client.send_frame(0x8a, &frame.payload);
        pongs += 1;
    }
    assert!(pongs >= 2, "answered only {pongs} pings");
    assert_eq!(server.stats().connections, 1, "a responsive peer is kept");

    link.drop_all_packets();
    let dropped_at = Instant::now();
    assert_eq!(events.closed(conn), 1006, "a vanished peer: abnormal closure");
    let detected_after = dropped_at.elapsed();
    // The last pong came at most one ping interval before the drop; the deadline is the idle
    // timeout after it, give or take a wheel tick.
    assert!(detected_after >= idle / 2, "closed {detected_after:?} after the drop: too early");
    assert!(detected_after < idle + Duration::from_secs(2), "detected only {detected_after:?} after the drop");
    let stats = stats_until(&server, "no connections left", |s| s.connections == 0);
    assert!(stats.timeouts_total == 1 && stats.pings_total >= 3, "{stats:?}");
    drop(client);
    drop(server);
    drop(link);
}

// ------------------------------------------------------------------- a panic on an I/O thread

/// A panic payload whose Drop panics too: the engine's callback guard catches the first panic
/// and then drops the payload outside any guard, so the second one unwinds through the I/O
/// thread itself. The one way a host's callback can make an I/O thread panic.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("panic payload dropped");
    }
}

#[test]
fn a_callback_panic_whose_payload_panics_when_dropped_is_still_contained() {
    let (server, mut events) = Harness::new(config())
        .on_message(|_, _, _, _, payload| {
            if payload == b"explode" {
                std::panic::resume_unwind(Box::new(PanicsWhenDropped));
            }
        })
        .start();
    let addr = server.local_addr();
    let mut alice = ws_connect(addr, "alice");
    let alice_conn = events.opened(b"alice");
    let mut bob = ws_connect(addr, "bob");
    events.opened(b"bob");

    alice.send(Message::text("explode")).unwrap();
    assert_eq!(events.message(alice_conn).1, b"explode");
    // The I/O thread survived its callback: both connections stay open and keep receiving.
    for (user, ws) in [("alice", &mut alice), ("bob", &mut bob)] {
        assert_eq!(server.publish(user.as_bytes(), b"still here", MessageKind::Text).unwrap(), 1);
        assert_eq!(ws_text(ws), "still here");
    }
    events.assert_none("an on_close", Duration::from_millis(200), |e| matches!(e, Event::Close { .. }));
}
