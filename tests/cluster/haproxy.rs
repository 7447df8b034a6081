//! HAProxy in front of the nodes (as tests/proxy.rs runs it in front of one wspushd), and
//! WebSocket clients that connect through it from a chosen 127.0.0.0/8 source address.
//!
//! Needs the `haproxy` binary (Debian package haproxy). Without it the test is skipped with a
//! loud message, unless WSPUSH_REQUIRE_HAPROXY=1 (CI sets it), where it fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;

use crate::common::processes::spawn_haproxy;
use crate::common::{self, Ws};
use crate::redis::free_port;

pub use crate::common::processes::haproxy_available;

/// A running HAProxy with two frontends, each forwarding with a PROXY v2 header:
/// `round_robin` spreads connections over all the nodes (`balance roundrobin`), `first_node`
/// sends every connection to the first node only. One HAProxy thread (`nbthread 1`): with
/// several, round robin is not strictly in turn across threads (three clients were seen landing
/// on nodes 2, 0, 1 times).
pub struct Haproxy {
    child: Child,
    dir: PathBuf,
    pub round_robin: u16,
    pub first_node: u16,
}

impl Haproxy {
    pub fn start(nodes: &[SocketAddr]) -> Haproxy {
        let (round_robin, first_node) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("wspush-cluster-haproxy-{}-{round_robin}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String =
            nodes.iter().enumerate().map(|(i, addr)| format!("    server node{i} {addr} send-proxy-v2\n")).collect();
        let config = format!(
            "global\n    maxconn 256\n    nbthread 1\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             frontend round_robin\n    bind 127.0.0.1:{round_robin}\n    default_backend all_nodes\n\
             backend all_nodes\n    balance roundrobin\n{servers}\
             frontend first_node\n    bind 127.0.0.1:{first_node}\n    default_backend node0\n\
             backend node0\n    server node0 {} send-proxy-v2\n",
            nodes[0]
        );
        let child = spawn_haproxy(&config, &dir, &[round_robin, first_node]);
        // The probes above were forwarded to nodes too (in TCP mode HAProxy connects to a server
        // at once) and closed; they moved the round-robin position, but any three consecutive
        // connections still land on three different nodes.
        Haproxy { child, dir, round_robin, first_node }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A WebSocket upgrade as `user` (no subprotocol) through HAProxy's `port`, from `source`;
/// `Err(status)` when the node refuses it.
pub fn upgrade_via(port: u16, source: Ipv4Addr, user: &str) -> Result<Ws, u16> {
    let stream = common::connect_from(SocketAddr::from(([127, 0, 0, 1], port)), source);
    match tungstenite::client(format!("ws://127.0.0.1:{port}/ws?user={user}"), stream) {
        Ok((ws, response)) => {
            assert_eq!(response.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(tungstenite::HandshakeError::Failure(e)) => panic!("handshake through HAProxy failed: {e}"),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake through HAProxy timed out"),
    }
}
