//! The coordinator/worker protocol: one JSON object per line, commands on the worker's stdin,
//! answers on its stdout.
//!
//! Every command is answered with one answer unless noted: `connect`, `probe`, `echo`,
//! `soak_mode`, `reconnect` and `resume` have none (the coordinator polls with `report`); `incarnations` is
//! answered with one `inc` per incarnation and then `incs_end`. A worker also sends unsolicited
//! `note`s for first-of-a-kind errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::WireHistogram;

/// Which message stream a tally or histogram is about.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Publishes to users.
    Pub,
    /// Publishes made through another node's admin API than the receiving connection's node
    /// (histograms only; a subset of `Pub`).
    PubRemote,
    /// Broadcasts to everyone.
    Bcast,
    /// Echo round trips (histograms only).
    Echo,
    /// The resume phase: what each reconnected client got after `since` (replayed, then live);
    /// its histogram is reconnect-to-last-replayed-message per client.
    Resume,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Start opening every connection (at the configured rate).
    Connect,
    /// Every open connection sends one text frame ("i") for the idle phase's memory figures.
    Probe,
    /// Publishes each user got: `counts[i]` for user `first_user + i`. Answer: `ok`.
    ExpectPub {
        first_user: usize,
        counts: Vec<u32>,
    },
    /// Broadcasts sent to every connection. Answer: `ok`.
    ExpectBcast {
        count: u32,
    },
    /// `conns` open connections ping-pong echo messages for `millis`.
    Echo {
        conns: usize,
        millis: u64,
    },
    /// Answer: `report`.
    Report,
    /// Loss and unexpected messages over every connection ever opened. Answer: `final`.
    Final {
        stream: Stream,
    },
    /// Answer: `hist`; with `reset`, the worker starts the histogram afresh after sending it.
    Hist {
        stream: Stream,
        reset: bool,
    },
    /// From now on publish numbers are checked per incarnation (the soak).
    SoakMode,
    /// Kill that share of the open connections with an RST and reconnect them. Answer: `churned`.
    Churn {
        fraction: f64,
    },
    /// Close every connection. Answer: `left`.
    Leave,
    /// Start every closed connection again.
    Reconnect,
    /// Soak: per user from `first_user`, publishes sent and when the last one was started
    /// (mono_ns); publishes started less than `grace_ns` after an incarnation opened need not
    /// reach it. Answer: `ok`.
    ExpectSoak {
        grace_ns: u64,
        first_user: usize,
        users: Vec<(u32, u64)>,
    },
    /// Answer: one `inc` per incarnation, then `incs_end`.
    Incarnations,
    /// Resume phase (wspush.v1): every open connection goes away, with an RST (SO_LINGER 0) or a
    /// clean close (close frame, then waiting for the server to end it: `closing` counts those
    /// still waiting). Answer: `dropped`.
    Drop {
        rst: bool,
    },
    /// Resume phase: every dropped connection reconnects with `since` = the epoch and the last
    /// offset it processed, and must be sent `missed` messages `r 1 T` .. `r missed T` first.
    Resume {
        missed: u32,
    },
    /// Resume phase: each resumed connection must have received `r 1` .. `r count` in all.
    /// Answer: `ok`.
    ExpectResume {
        count: u32,
    },
    Quit,
}

/// How an incarnation ended (still open when the records were asked for: `Live`).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum End {
    Live,
    Killed,
    ServerClosed,
}

/// What one incarnation (one connection of a client slot, from its 101 to its end) received.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Incarnation {
    pub user: usize,
    pub opened_ns: u64,
    pub end: End,
    /// First and highest publish number received (0, 0 when none), distinct numbers received.
    pub first: u32,
    pub last: u32,
    pub distinct: u32,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Ok,
    /// First-of-a-kind error text, printed by the coordinator.
    Note {
        text: String,
    },
    /// Counters by name (see worker::Counters, plus `http_STATUS` per failed upgrade status).
    /// Counters add up over workers; `*_ns` timestamps take the latest.
    Report {
        counters: BTreeMap<String, u64>,
    },
    Final {
        lost: u64,
        unexpected: u64,
    },
    Hist {
        histogram: WireHistogram,
    },
    Churned {
        killed: u64,
    },
    Left {
        count: u64,
    },
    Inc {
        incarnation: Incarnation,
    },
    IncsEnd {
        count: u64,
    },
    Dropped {
        count: u64,
    },
}

impl Answer {
    /// The answer's name on the wire, for matching and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::Note { .. } => "note",
            Answer::Report { .. } => "report",
            Answer::Final { .. } => "final",
            Answer::Hist { .. } => "hist",
            Answer::Churned { .. } => "churned",
            Answer::Left { .. } => "left",
            Answer::Inc { .. } => "inc",
            Answer::IncsEnd { .. } => "incs_end",
            Answer::Dropped { .. } => "dropped",
        }
    }
}

/// One line of JSON. Serialising these plain types cannot fail; an empty object is sent if it
/// ever did, and the reader reports it.
pub fn to_line<T: Serialize>(message: &T) -> String {
    serde_json::to_string(message).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_answers_survive_a_line() {
        let command = Command::ExpectSoak { grace_ns: 5, first_user: 3, users: vec![(2, 100), (0, 0)] };
        let line = to_line(&command);
        assert!(!line.contains('\n'));
        match serde_json::from_str::<Command>(&line).unwrap() {
            Command::ExpectSoak { grace_ns: 5, first_user: 3, users } => assert_eq!(users, vec![(2, 100), (0, 0)]),
            other => panic!("{other:?}"),
        }
        let inc = Incarnation { user: 7, opened_ns: 9, end: End::ServerClosed, first: 1, last: 4, distinct: 4 };
        let line = to_line(&Answer::Inc { incarnation: inc });
        assert_eq!(
            line,
            r#"{"answer":"inc","incarnation":{"user":7,"opened_ns":9,"end":"server_closed","first":1,"last":4,"distinct":4}}"#
        );
        assert_eq!(serde_json::from_str::<Answer>(&line).unwrap().name(), "inc");
    }
}
