//! A connection: the state machine handshake → open → closing, its input parsed into frames and
//! messages, its output with a queue that exists only while bytes wait.
//!
//! [`Conn`] is one slab entry of its I/O thread; its methods take the thread's [`Context`] (the
//! loop's state apart from the slab) as a separate borrow, and report with [`Gone`] when the
//! connection is over so the loop removes it from the slab (`lifecycle.rs`: `Conn::finish`).
//! - `input.rs`: reading, the PROXY header, the upgrade request, frames from the client;
//! - `output.rs`: messages, control frames and the queue, under the slow-consumer policy;
//! - `lifecycle.rs`: admission, opening, closing and teardown, side by side, and the timers.
//!
//! An idle open connection is a [`Conn`] of 48 bytes: the socket, its generation, the tick of its
//! last input, state, flags, close code, its user ID (inline when ≤ 22 bytes) and one
//! `Option<Box<Spill>>` that stays `None` unless input or output is actually pending.
//!
//! What a client can make the engine hold for it is bounded whatever it sends or fails to read:
//! input ≤ one frame (sized to that frame) plus a reassembly ≤ `max_message_size`, and a started
//! frame or message must complete within `message_timeout`; output ≤ `max_queue_bytes` plus the
//! control frames (one pong however many pings, one close); a connection whose output is at the
//! cap is not read from until it drains.

mod input;
mod lifecycle;
mod output;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;

use crate::codec::{close, DecoderState, Frame};
use crate::config::Config;
use crate::conn_id;
use crate::handle::{ServerHandle, Shared, ThreadShared};
use crate::handler::Handler;
use crate::history::Position;
use crate::ip_limits::IpKey;
use crate::registry::UserId;
use crate::stats::ThreadStats;
use crate::subprotocol::Negotiated;
use crate::timer::{Ticks, TimerWheel};
use crate::types::ConnId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// From a trusted load balancer: reading the PROXY protocol header (src/proxy_protocol.rs).
    ProxyHeader,
    /// Reading the HTTP request head.
    Handshake,
    /// Waiting for the host's deferred upgrade decision.
    Deciding,
    /// Upgraded: frames flow.
    Open,
    /// Our last bytes (close frame or HTTP error) are queued; input is discarded until the peer
    /// closes or the close timeout passes. Holds no handshake slot (a lingering close).
    Closing,
}

const PINGED: u8 = 1;
const WRITE_SHUT: u8 = 2;
/// The peer's close frame has arrived: once ours is flushed the close handshake is complete.
const CLOSE_RECEIVED: u8 = 4;
/// Output reached `max_queue_bytes`: input is left in the kernel until the output drains to half.
const INPUT_PAUSED: u8 = 8;
/// The connection is on its thread's list of partial inputs whose deadline is watched.
const PARTIAL_TRACKED: u8 = 16;
/// The connection speaks `wspush.v1` (src/subprotocol.rs).
const V1: u8 = 32;
/// The upper 2 bits of `flags` number the connection's current timer entry (see `rearm_timer`):
/// it has at most three (accept, open, closing), so four numbers tell the current one apart.
const EPOCH_SHIFT: u8 = 6;

pub(crate) struct Conn {
    stream: TcpStream,
    generation: u32,
    /// Tick of the last input (or of accept, or of the start of closing).
    last_rx: u32,
    state: State,
    flags: u8,
    /// Code reported to `on_close`.
    close_code: u16,
    user: Option<UserId>,
    spill: Option<Box<Spill>>,
}

/// The connection is over: the loop removes it from its slab and finishes it
/// (`Conn::finish`), reporting this close code to `on_close`.
#[derive(Debug)]
pub(crate) struct Gone(pub(crate) u16);

/// What a connection's methods return: `Err(Gone)` when the connection must be finished.
pub(crate) type Step = Result<(), Gone>;

/// What one read from the socket gave.
pub(crate) enum Received {
    /// Fresh bytes at the start of the read buffer, to be consumed.
    Bytes(usize),
    /// Bytes read and thrown away (a closing connection that expects nothing more).
    Discarded,
    /// Nothing now: the socket is drained, or input is paused by backpressure.
    Nothing,
    /// The read was interrupted: try again.
    Retry,
}

/// Why consuming input stopped before the end of what was read, for the loop to act on: the
/// host's answers to earlier messages must go out first (its commands may touch any
/// connection, so the loop runs them), or the connection is over.
pub(crate) enum Interrupt {
    /// The peer's close frame with this code arrived; the rest of the input follows it.
    PeerClose(u16),
    /// A protocol violation (RFC 6455 §7.1.7): fail with this code, discarding the rest.
    Fail(u16),
    /// The connection is over.
    Gone(Gone),
}

impl From<Gone> for Interrupt {
    fn from(gone: Gone) -> Interrupt {
        Interrupt::Gone(gone)
    }
}

/// The loop's state a connection works with: everything of its I/O thread but the slab, so that
/// a connection and its context are borrowed apart.
pub(crate) struct Context {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) server: ServerHandle,
    /// The host's callbacks.
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) wheel: TimerWheel,
    pub(crate) ticks: Ticks,
    /// Connections of this thread not yet upgraded.
    pub(crate) handshakes: usize,
    /// The listener may hold connections we left there (handshake limit, out of descriptors).
    pub(crate) accept_pending: bool,
    /// Accepting failed for lack of descriptors: retry when a connection closes.
    pub(crate) accept_after_close: bool,
    /// Connections that still had input when their read budget ran out.
    pub(crate) again: Vec<usize>,
    /// With per-address limits on: the address each slot's connection is counted under.
    pub(crate) ip_keys: Vec<IpKey>,
    /// Connections holding an incomplete frame or message, as (slot, generation): each must
    /// complete within `message_timeout`. Flagged `PARTIAL_TRACKED` while listed.
    pub(crate) partial_inputs: Vec<(usize, u32)>,
    /// With Redis: connections waiting for the bridge (their user's subscription, their
    /// welcome), by slot, with what was published to them meanwhile.
    pub(crate) awaiting_welcome: HashMap<usize, AwaitingWelcome>,
}

/// What a connection was sent while it waits for the Redis bridge (its user's subscription, its
/// welcome): queued after the welcome unless the welcome's replay already holds it.
pub(crate) struct AwaitingWelcome {
    pub(crate) generation: u32,
    pub(crate) held: Vec<(Frame, Option<Position>)>,
    pub(crate) bytes: usize,
    /// The 101 response, when it waits too (a connection that is not welcomed from Redis waits
    /// for its user's subscription before its upgrade is answered), and the frames that follow
    /// it at once (the history-less `wspush.v1` welcome).
    pub(crate) upgrade: Option<(Vec<u8>, Vec<Frame>)>,
}

impl Context {
    /// This thread's part of the shared state.
    pub(crate) fn me(&self) -> &ThreadShared {
        &self.shared.threads[self.index]
    }

    pub(crate) fn stats(&self) -> &ThreadStats {
        &self.me().stats
    }

    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    fn conn_id(&self, slot: usize, generation: u32) -> ConnId {
        conn_id::make(self.index, slot, generation)
    }
}

/// Whatever a connection holds only while bytes are in flight.
#[derive(Default)]
struct Spill {
    /// Received bytes not consumed yet: part of a request head or of a frame (sized to the
    /// frame once its header is in).
    input: Vec<u8>,
    /// Reassembly of a fragmented message, progress through a partly arrived frame.
    decoder: DecoderState,
    /// Tick at which the current incomplete frame or message began (`message_timeout`).
    input_since: u32,
    /// Bytes of incomplete input counted in the server's `partial_input_bytes`.
    held: usize,
    /// Frames the socket has not taken yet; the front one may be partly sent.
    queue: VecDeque<Frame>,
    front_sent: usize,
    queued_bytes: usize,
    /// Where in `queue` a pong waits that has not started to go out: a newer ping replaces it.
    pong_at: Option<usize>,
    /// Sec-WebSocket-Accept for a deferred upgrade.
    accept_key: Option<Box<str>>,
    /// What a deferred upgrade asked of the subprotocol.
    negotiated: Negotiated,
    /// The client's address from a PROXY header, until the request head is parsed.
    client_addr: Option<SocketAddr>,
}

impl Spill {
    fn is_empty(&self) -> bool {
        self.input.is_empty()
            && self.decoder.is_idle()
            && self.held == 0
            && self.queue.is_empty()
            && self.accept_key.is_none()
            && self.client_addr.is_none()
    }
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, generation: u32, now: u32) -> Conn {
        Conn {
            stream,
            generation,
            last_rx: now,
            state: State::Handshake,
            flags: 0,
            close_code: close::ABNORMAL,
            user: None,
            spill: None,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    pub(crate) fn close_code(&self) -> u16 {
        self.close_code
    }

    /// The connection ends as it is (peer gone, socket error): finish it with its close code.
    fn gone(&self) -> Gone {
        Gone(self.close_code)
    }

    pub(crate) fn user(&self) -> Option<&[u8]> {
        self.user.as_deref()
    }

    fn spill(&mut self) -> &mut Spill {
        self.spill.get_or_insert_with(Box::default)
    }

    /// Frees the spill once nothing is pending: idle connections own no buffer.
    fn release_spill(&mut self) {
        if self.spill.as_ref().is_some_and(|s| s.is_empty()) {
            self.spill = None;
        }
    }

    /// The socket's peer: the client, or the load balancer in front of it.
    fn socket_peer(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Whether the connection speaks `wspush.v1`: its messages are JSON (src/subprotocol.rs).
    pub(crate) fn speaks_v1(&self) -> bool {
        self.flags & V1 != 0
    }

    fn has_queued_output(&self) -> bool {
        self.spill.as_ref().is_some_and(|s| !s.queue.is_empty())
    }

    fn queued_bytes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.queued_bytes)
    }
}

#[cfg(test)]
mod tests {
    /// The cost of an idle connection: reassembly and every other in-flight state live behind the
    /// lazily allocated spill, not inline. Release builds only: in debug builds mio's stream
    /// carries an extra selector ID for its own registration checks.
    #[test]
    #[cfg(all(target_pointer_width = "64", not(debug_assertions)))]
    fn an_idle_connection_is_48_bytes() {
        assert_eq!(std::mem::size_of::<super::Conn>(), 48);
    }
}
