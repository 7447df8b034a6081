//! One client connection's state. Clients are cheap: a socket plus two empty Vecs and three
//! sequence checkers (~250 bytes with the v1 fields); a connection keeps bytes only while a frame is incomplete or
//! the socket would not take a whole frame.

use mio::net::TcpStream;

use super::seq::SeqCheck;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum State {
    NotStarted,
    Connecting,
    Handshaking,
    Open,
    /// Resume phase, clean drop: our close frame is sent; waiting for the server to end the
    /// connection.
    Closing,
    Closed,
}

pub struct Client {
    pub stream: Option<TcpStream>,
    pub state: State,
    /// Part of an incoming frame (or upgrade response) not complete yet; usually empty.
    pub inbuf: Vec<u8>,
    /// Bytes the socket did not take yet; usually empty.
    pub outbuf: Vec<u8>,
    /// A fragmented message being reassembled (the server is not expected to fragment); boxed
    /// to keep the per-connection struct small.
    #[allow(clippy::box_collection)]
    pub fragments: Option<Box<Vec<u8>>>,
    pub publishes: SeqCheck,
    pub broadcasts: SeqCheck,
    pub ever_open: bool,
    /// Soak mode: when this incarnation's 101 was read, and the first publish number it got
    /// (0 = none yet); `publishes` then counts relative to that number (first = 1).
    pub opened_ns: u64,
    pub first_pub: u32,
    pub warm: bool,
    /// Takes part in the echo phase (one message in flight).
    pub echo: bool,
    /// The node (index of the --url) this connection goes to.
    pub node: u16,
    /// wspush.v1 bookkeeping (unused for raw clients).
    pub v1: V1,
    /// A peer protocol's login (Centrifugo's connect command) is sent and not answered yet; the
    /// state stays Handshaking until it is.
    pub peer_login: bool,
}

/// A wspush.v1 client's view of its user's stream, and its resume check.
#[derive(Default)]
pub struct V1 {
    /// The stream's epoch, as the last welcome (or a message at offset 1) said.
    pub epoch: String,
    /// The last stream offset processed: every message with an offset must carry this + 1.
    pub last_offset: u64,
    /// When the current connection attempt started (socket creation), mono_ns.
    pub connect_start_ns: u64,
    /// This connection reconnected with `since` = `since_offset` (resume phase).
    pub resuming: bool,
    pub since_offset: u64,
    /// Resume payload numbers (`r SEQ T`) received since the reconnect.
    pub resumed: SeqCheck,
    /// The last missed message (`r missed`) arrived: the recovery's time is recorded.
    pub recovered_all: bool,
}

impl Client {
    pub fn new(node: u16) -> Client {
        Client {
            node,
            stream: None,
            state: State::NotStarted,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            fragments: None,
            publishes: SeqCheck::default(),
            broadcasts: SeqCheck::default(),
            ever_open: false,
            opened_ns: 0,
            first_pub: 0,
            warm: false,
            echo: false,
            v1: V1::default(),
            peer_login: false,
        }
    }
}

/// Why a connection attempt failed.
#[derive(Clone, Copy)]
pub enum Failure {
    Refused,
    Timeout,
    Http(u16),
    Reset,
    Other,
}

/// How a connection must end, decided while parsing its input.
pub enum Stop {
    Failed(Failure, String),
    ServerClosed(String),
    ProtocolError(String),
    WriteFailed(String),
}
