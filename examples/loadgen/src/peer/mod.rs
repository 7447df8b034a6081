//! Servers that do wspushd's job but speak another protocol (`--peer`). The default, `wspush`,
//! is the wspushd contract every other module assumes; a peer changes only the wire: how a
//! client logs in after the upgrade, how pushes are framed, and how the admin API is called.
//! Everything else (phases, sequence and latency accounting, reports) stays the same.
//!
//! Hooks used by the rest of loadgen: [`PeerArgs`] (flattened into the command line),
//! [`PeerOptions::worker_args`] (passed on to worker processes), [`post`] (every admin request),
//! [`PeerOptions::reports_delivered`], and the worker side in `worker/centrifugo.rs`.

pub mod centrifugo;

use std::io;

use clap::{Args, ValueEnum};

use crate::admin::{AdminClient, Response};
use crate::cli::{Options, Phase};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum PeerKind {
    /// The wspushd contract (ws://HOST:PORT/PATH?user=U; POST /publish?user=U, /broadcast).
    Wspush,
    /// Centrifugo v6, bidirectional JSON protocol over WebSocket (/connection/websocket) with an
    /// HS256 connection JWT; each user subscribed server-side to its personal channel `#USER`;
    /// publishes through the HTTP API (POST /api/publish, /api/broadcast with X-API-Key).
    Centrifugo,
}

/// The peer flags, flattened into loadgen's command line.
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Which server protocol to speak (see benches/peers/centrifugo/README.md for Centrifugo).
    #[arg(long, value_name = "KIND", value_enum, default_value = "wspush", help_heading = "PEER")]
    peer: PeerKind,
    /// Centrifugo: HMAC secret of the connection JWTs (its client.token.hmac_secret_key).
    #[arg(long, value_name = "SECRET", default_value = "", help_heading = "PEER")]
    centrifugo_secret: String,
    /// Centrifugo: HTTP API key (its http_api.key), sent as X-API-Key.
    #[arg(long, value_name = "KEY", default_value = "", help_heading = "PEER")]
    centrifugo_api_key: String,
    /// Centrifugo: user IDs are PREFIX0, PREFIX1, ... (the JWT `sub`); their personal channels
    /// are #PREFIX0, ... Give each loadgen process sharing a Centrifugo cluster its own prefix.
    #[arg(long, value_name = "PREFIX", default_value = "u", help_heading = "PEER")]
    centrifugo_user_prefix: String,
}

/// The peer as the rest of loadgen sees it.
#[derive(Clone, Debug)]
pub enum PeerOptions {
    Wspush,
    Centrifugo(centrifugo::Settings),
}

impl PeerOptions {
    pub fn from_args(args: PeerArgs) -> Result<PeerOptions, String> {
        match args.peer {
            PeerKind::Wspush => Ok(PeerOptions::Wspush),
            PeerKind::Centrifugo => {
                if args.centrifugo_secret.is_empty() || args.centrifugo_api_key.is_empty() {
                    return Err("--peer centrifugo needs --centrifugo-secret and --centrifugo-api-key".into());
                }
                let prefix = args.centrifugo_user_prefix;
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    return Err("--centrifugo-user-prefix must be letters, digits, _ or -".into());
                }
                Ok(PeerOptions::Centrifugo(centrifugo::Settings::new(
                    &args.centrifugo_secret,
                    &args.centrifugo_api_key,
                    &prefix,
                )))
            }
        }
    }

    /// Checks the phases: a peer supports only those whose admin calls it can translate.
    pub fn validate(&self, phases: &[Phase]) -> Result<(), String> {
        if let PeerOptions::Centrifugo(_) = self {
            if let Some(p) =
                phases.iter().find(|p| !matches!(p, Phase::Connect | Phase::Idle | Phase::Publish | Phase::Broadcast))
            {
                return Err(format!(
                    "--peer centrifugo supports the connect, idle, publish and broadcast phases (not {})",
                    p.name()
                ));
            }
        }
        Ok(())
    }

    /// The flags a worker process needs to speak the same protocol.
    pub fn worker_args(&self) -> Vec<String> {
        match self {
            PeerOptions::Wspush => Vec::new(),
            PeerOptions::Centrifugo(settings) => settings.worker_args(),
        }
    }

    /// Whether the admin API answers with the number of connections it delivered to (wspushd's
    /// `{"delivered":N}`); Centrifugo's API does not say.
    pub fn reports_delivered(&self) -> bool {
        matches!(self, PeerOptions::Wspush)
    }
}

/// One admin request in wspushd's terms (`POST /publish?user=uN`, `POST /broadcast`), carried
/// out in the peer's: the answer has status 200 only when the peer took the request.
pub fn post(o: &Options, admin: &mut AdminClient, target: &str, body: &[u8]) -> io::Result<Response> {
    match &o.peer {
        PeerOptions::Wspush => admin.post(target, body),
        PeerOptions::Centrifugo(settings) => settings.post(admin, target, body, o.conns.div_ceil(o.tabs)),
    }
}
