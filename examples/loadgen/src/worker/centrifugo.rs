//! The Centrifugo side of a worker (`--peer centrifugo`; the protocol itself is in
//! peer/centrifugo.rs). After the 101 a client sends its connect command and stays handshaking
//! (so the connect timeout still applies) until the connect reply, which is when it counts as
//! open: only then is its user subscribed to its personal channel. Server pings are answered when
//! the connect reply asks for pongs; publication data goes on to the usual handling
//! (messages.rs), so sequence, loss and latency accounting is the same as for wspushd.

use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::client::{Client, Failure, Stop};
use super::codec::{encode_masked, write_frame};
use super::connection::mark_open;
use super::messages::on_message;
use super::Context;
use crate::peer::centrifugo::{for_each_message, Event, Settings, CONNECT_ID, PONG, PROBE, PROBE_ID};
use crate::peer::PeerOptions;

/// What a worker keeps for Centrifugo.
pub struct PeerState {
    settings: Settings,
    /// The connect replies said `"pong":true`: pings must be answered.
    answer_pings: bool,
}

impl PeerState {
    pub fn new(peer: &PeerOptions) -> Option<PeerState> {
        match peer {
            PeerOptions::Wspush => None,
            PeerOptions::Centrifugo(settings) => Some(PeerState { settings: settings.clone(), answer_pings: false }),
        }
    }

    /// The idle phase's probe frame.
    pub fn probe(&self) -> &'static [u8] {
        PROBE
    }
}

/// Right after the 101: sends `user`'s connect command.
pub fn login(client: &mut Client, context: &mut Context, user: usize) -> Result<(), Stop> {
    let Some(peer) = context.peer.as_ref() else { return Ok(()) };
    let command = peer.settings.connect_command(user);
    client.peer_login = true;
    send_text(client, context, &command)
}

/// One complete data frame from the server.
pub fn on_frame(payload: &[u8], client: &mut Client, context: &mut Context) -> Result<(), Stop> {
    for_each_message(payload, |event| on_event(event, client, context))
}

fn on_event(event: Event<'_>, client: &mut Client, context: &mut Context) -> Result<(), Stop> {
    match event {
        Event::Ping => {
            if context.peer.as_ref().is_some_and(|p| p.answer_pings) {
                return send_text(client, context, PONG);
            }
        }
        Event::Connected { pong } if client.peer_login => {
            if let Some(peer) = context.peer.as_mut() {
                peer.answer_pings = pong;
            }
            client.peer_login = false;
            mark_open(client, context);
        }
        Event::Error { id: CONNECT_ID, text } if client.peer_login => {
            return Err(Stop::Failed(Failure::Other, format!("connect refused: {text}")));
        }
        Event::Reply { id: PROBE_ID } | Event::Error { id: PROBE_ID, .. } => context.counters.probe_echoes += 1,
        Event::Publication(data) => return on_message(data.as_bytes(), client, context),
        Event::Disconnect(text) => return Err(Stop::ServerClosed(text)),
        Event::Connected { .. } | Event::Error { .. } | Event::Reply { .. } | Event::Other => {
            context.counters.unknown_msgs += 1
        }
    }
    Ok(())
}

fn send_text(client: &mut Client, context: &mut Context, payload: &[u8]) -> Result<(), Stop> {
    let mask = context.next_random() as u32;
    encode_masked(&mut context.frame, OpCode::Data(Data::Text), payload, mask.to_ne_bytes());
    write_frame(client, &context.frame)
}
