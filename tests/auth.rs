//! Built-in JWT authentication and per-address limits, over real sockets: what a client sees
//! (101, 401 "invalid token", 429) and what the host's callbacks see.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use wspush::{default_upgrade_decision, ffi, Config, Handler, MessageKind, Server, UpgradeDecision};

const SECRET: &[u8] = b"an HS256 secret of at least 32 bytes";

fn jwt_config() -> Config {
    Config { jwt_hs256_secret: Some(SECRET.into()), ..config() }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A token for `sub`, valid for the next minute.
fn token_for(sub: &str) -> String {
    sign_jwt(r#"{"alg":"HS256","typ":"JWT"}"#, &format!(r#"{{"sub":"{sub}","exp":{}}}"#, now() + 60), SECRET)
}

/// The raw HTTP answer to an upgrade request for `target` with extra header lines.
fn upgrade_answer(addr: SocketAddr, target: &str, extra: &str) -> RawResponse {
    Raw::request(addr, &upgrade_request(target, extra))
}

#[test]
fn a_valid_token_in_the_query_or_header_opens_as_its_subject_without_any_on_upgrade() {
    // A handler that implements nothing: the default upgrade decision applies.
    struct Silent;
    impl Handler for Silent {}
    let server = Server::start(jwt_config(), Silent).unwrap();
    let addr = server.local_addr();

    let mut by_query = ws_try_connect(addr, &format!("/ws?token={}", token_for("alice"))).expect("query token");
    let bearer = format!("Bearer {}", token_for("bob"));
    let mut by_header = ws_try_connect_with(addr, "/ws", &[("Authorization", &bearer)]).expect("header token");
    stats_until(&server, "two users", |s| s.users == 2);
    assert_eq!(server.publish(b"alice", b"for alice", MessageKind::Text).unwrap(), 1);
    assert_eq!(server.publish(b"bob", b"for bob", MessageKind::Text).unwrap(), 1);
    assert_eq!(ws_text(&mut by_query), "for alice");
    assert_eq!(ws_text(&mut by_header), "for bob");
}

#[test]
fn every_invalid_token_gets_401_invalid_token_and_nothing_more() {
    let (server, mut events) = Harness::new(jwt_config()).on_upgrade(|_, req| default_upgrade_decision(req)).start();
    let addr = server.local_addr();
    let exp = now() + 60;
    let claims = format!(r#"{{"sub":"mallory","exp":{exp}}}"#);
    let valid = token_for("mallory");
    let (valid_head, valid_rest) = valid.split_once('.').unwrap();
    let forged_claims = format!(
        "{valid_head}.{}.{}",
        data_encoding::BASE64URL_NOPAD.encode(format!(r#"{{"sub":"admin","exp":{exp}}}"#).as_bytes()),
        valid_rest.rsplit_once('.').unwrap().1
    );
    let unsigned_none = {
        let signed = sign_jwt(r#"{"alg":"none"}"#, &claims, SECRET);
        format!("{}.", signed.rsplit_once('.').unwrap().0)
    };
    let cases = [
        ("no token", String::new()),
        ("garbage", "token=not.a.jwt".to_string()),
        ("alg none", format!("token={unsigned_none}")),
        ("HS512 header", format!("token={}", sign_jwt(r#"{"alg":"HS512"}"#, &claims, SECRET))),
        (
            "other secret",
            format!("token={}", sign_jwt(r#"{"alg":"HS256"}"#, &claims, b"some other secret, 32 bytes long!")),
        ),
        ("forged claims", format!("token={forged_claims}")),
        (
            "expired",
            format!(
                "token={}",
                sign_jwt(r#"{"alg":"HS256"}"#, &format!(r#"{{"sub":"m","exp":{}}}"#, now() - 120), SECRET)
            ),
        ),
        ("no exp", format!("token={}", sign_jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"m"}"#, SECRET))),
        (
            "not yet valid",
            format!(
                "token={}",
                sign_jwt(r#"{"alg":"HS256"}"#, &format!(r#"{{"sub":"m","exp":{exp},"nbf":{}}}"#, now() + 300), SECRET)
            ),
        ),
        ("no sub", format!("token={}", sign_jwt(r#"{"alg":"HS256"}"#, &format!(r#"{{"exp":{exp}}}"#), SECRET))),
        // A C host would read "ali\0ce" as the C string "ali": another user.
        ("NUL in sub", format!("token={}", token_for(r"ali\u0000ce"))),
    ];
    for (what, query) in cases {
        let response = upgrade_answer(addr, &format!("/ws?{query}"), "");
        assert_eq!(response.status, 401, "{what}");
        assert_eq!(response.body, b"invalid token\n", "{what}");
    }
    let wrong_scheme = upgrade_answer(addr, "/ws", &format!("Authorization: Basic {valid}\r\n"));
    assert_eq!(wrong_scheme.status, 401, "only Bearer carries a token");
    events.assert_none("no connection opened", Duration::from_millis(100), |_| true);
    assert_eq!(server.stats().upgrades_total, 0);
}

#[test]
fn a_host_on_upgrade_sees_the_verified_subject_and_decides() {
    // The host keeps its own rules on top of the token: here, "banned" is refused with 403.
    let harness = Harness::new(jwt_config()).on_upgrade(|_, req| match req.verified_user() {
        Some(b"banned") => UpgradeDecision::Reject(403),
        Some(user) => UpgradeDecision::Accept([b"verified:", user].concat()),
        None => UpgradeDecision::Reject(401),
    });
    let (server, mut events) = harness.start();
    let addr = server.local_addr();
    let _ws = ws_try_connect(addr, &format!("/ws?token={}", token_for("carol"))).unwrap();
    events.opened(b"verified:carol");
    assert_eq!(ws_try_connect(addr, &format!("/ws?token={}", token_for("banned"))).err(), Some(403));
}

#[test]
fn a_host_refusing_a_valid_token_does_not_call_it_invalid() {
    let (server, _events) = Harness::new(jwt_config()).on_upgrade(|_, _| UpgradeDecision::Reject(401)).start();
    let response = upgrade_answer(server.local_addr(), &format!("/ws?token={}", token_for("erin")), "");
    assert_eq!(response.status, 401);
    assert_eq!(response.body, b"Unauthorized\n");
}

#[test]
fn without_a_secret_no_request_is_verified() {
    let (server, _events) = Harness::new(config())
        .on_upgrade(|_, req| {
            assert_eq!(req.verified_user(), None);
            UpgradeDecision::Reject(401)
        })
        .start();
    let response = upgrade_answer(server.local_addr(), &format!("/ws?token={}", token_for("alice")), "");
    assert_eq!(response.status, 401);
    assert_ne!(response.body, b"invalid token\n", "no token talk when tokens are not in use");
}

#[test]
fn a_short_secret_is_refused_at_start() {
    let short = Config { jwt_hs256_secret: Some(b"too short".as_slice().into()), ..config() };
    struct Silent;
    impl Handler for Silent {}
    assert!(matches!(Server::start(short, Silent), Err(wspush::Error::InvalidConfig(_))));
    assert!(format!("{:?}", jwt_config()).contains("redacted"), "Debug never prints the secret");
    assert!(!format!("{:?}", jwt_config()).contains("HS256 secret"));
}

#[test]
fn the_c_api_verifies_tokens_without_an_on_upgrade_callback() {
    // SAFETY: every pointer below comes from the library and is used as the header documents.
    unsafe {
        let config = ffi::wspush_config_new();
        let listen = "127.0.0.1:0";
        assert_eq!(ffi::wspush_config_set_listen(config, listen.as_ptr().cast(), listen.len()), ffi::wspush_result::Ok);
        assert_eq!(
            ffi::wspush_config_set_jwt_hs256_secret(config, b"short".as_ptr(), 5),
            ffi::wspush_result::InvalidArgument
        );
        assert_eq!(
            ffi::wspush_config_set_jwt_hs256_secret(config, SECRET.as_ptr(), SECRET.len()),
            ffi::wspush_result::Ok
        );
        let mut server: *const ffi::wspush_server = std::ptr::null();
        assert_eq!(ffi::wspush_server_start(config, &mut server), ffi::wspush_result::Ok);
        ffi::wspush_config_free(config);
        let mut port = 0u16;
        assert_eq!(ffi::wspush_server_local_port(server, &mut port), ffi::wspush_result::Ok);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

        let mut ws = ws_try_connect(addr, &format!("/ws?token={}", token_for("dave"))).expect("valid token");
        assert_eq!(upgrade_answer(addr, "/ws?token=x.y.z", "").status, 401);
        let mut delivered = 0usize;
        common::eventually("dave registered", || {
            ffi::wspush_publish(
                server,
                b"dave".as_ptr(),
                4,
                b"hi".as_ptr(),
                2,
                ffi::WSPUSH_MESSAGE_KIND_TEXT,
                &mut delivered,
            );
            delivered == 1
        });
        assert_eq!(ws_text(&mut ws), "hi");
        assert_eq!(ffi::wspush_server_stop(server), ffi::wspush_result::Ok);
        ffi::wspush_server_free(server);
    }
}

// ----------------------------------------------------------------------------- per-IP limits

#[test]
fn max_connections_per_ip_answers_429_and_frees_the_place_on_close() {
    let (server, mut events) = start(Config { max_connections_per_ip: 2, ..config() });
    let addr = server.local_addr();
    let first = ws_connect(addr, "a");
    let _second = ws_connect(addr, "b");
    let first_id = events.opened(b"a");
    events.opened(b"b");
    for _ in 0..3 {
        assert_eq!(ws_try_connect(addr, "/ws?user=c").err(), Some(429), "third connection from one address");
    }
    assert_eq!(server.stats().ip_limited_total, 3);
    // A different source address has its own allowance.
    let from_other = other_source_connect(addr, "d");
    assert!(from_other.is_ok(), "127.0.0.2 is not limited by 127.0.0.1's connections");

    drop(first);
    events.closed(first_id);
    let _third = ws_connect(addr, "c");
    events.opened(b"c");
}

/// A refused socket is answered at once and lingers (holding no handshake slot) so that a request
/// sent after the answer is read and discarded: the client reads its 429 and an orderly close.
#[test]
fn a_refused_client_reads_its_429_even_when_its_request_comes_late() {
    let (server, mut events) = start(Config { max_connections_per_ip: 1, ..config() });
    let addr = server.local_addr();
    let _first = ws_connect(addr, "a");
    events.opened(b"a");
    let stream = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.set_nonblocking(true).unwrap();
    let answered = matches!(stream.peek(&mut [0u8; 1]), Ok(1));
    assert!(answered, "the refusal is answered without waiting for the request");
    stream.set_nonblocking(false).unwrap();
    let mut late = Raw::from_stream(stream);
    late.send(upgrade_request("/ws?user=b", "").as_bytes());
    assert_eq!(late.read_response().status, 429);
    assert_eq!(late.read_end(), End::Eof, "an orderly close after the answer, not a reset");
    stats_until(&server, "the refused socket is gone", |s| s.handshakes == 0 && s.ip_limited_total == 1);
}

#[test]
fn max_handshakes_per_ip_per_sec_answers_429_past_the_burst() {
    let (server, _events) = start(Config { max_handshakes_per_ip_per_sec: 5, ..config() });
    let addr = server.local_addr();
    let mut outcomes = Vec::new();
    for i in 0..12 {
        outcomes.push(ws_try_connect(addr, &format!("/ws?user=u{i}")).err());
    }
    let opened = outcomes.iter().filter(|o| o.is_none()).count();
    let limited = outcomes.iter().filter(|o| **o == Some(429)).count();
    // A burst of 5 plus whatever refilled (5/s) while the 12 attempts ran.
    assert!((5..12).contains(&opened), "opened {opened}: {outcomes:?}");
    assert_eq!(opened + limited, 12, "every refused attempt got a 429: {outcomes:?}");
    assert_eq!(server.stats().ip_limited_total, limited as u64);
    std::thread::sleep(Duration::from_millis(1100)); // the bucket refills
    assert!(ws_try_connect(addr, "/ws?user=later").is_ok());
}

/// A WebSocket to `addr` from source address 127.0.0.2.
fn other_source_connect(addr: SocketAddr, user: &str) -> Result<Ws, String> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(target) = addr else { return Err("IPv4 only".into()) };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the sockaddr structs live
    // across the calls that read them.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err("socket".into());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let source = sockaddr(std::net::Ipv4Addr::new(127, 0, 0, 2), 0);
        if libc::bind(fd, (&raw const source).cast(), len) != 0 {
            return Err(format!("bind 127.0.0.2: {}", std::io::Error::last_os_error()));
        }
        let target = sockaddr(*target.ip(), target.port());
        if libc::connect(fd, (&raw const target).cast(), len) != 0 {
            return Err(format!("connect: {}", std::io::Error::last_os_error()));
        }
        stream
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(format!("ws://{addr}/ws?user={user}"), stream).map(|(ws, _)| ws).map_err(|e| e.to_string())
}
