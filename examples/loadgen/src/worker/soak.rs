//! The soak's bookkeeping in a worker: incarnations (one connection of a client slot, from its
//! 101 to its end; a reconnect starts a new one), churn with an RST, leaving and reconnecting.
//! In soak mode each incarnation's publish numbers must run strictly consecutively from the
//! first it received: duplicates, reorders and holes are counted in messages.rs, and the
//! coordinator judges the rest (what each incarnation had to receive) from the records.

use super::client::State;
use super::socket::set_linger_zero;
use super::Worker;
use crate::protocol::{End, Incarnation};

impl Worker {
    pub(super) fn incarnation(&self, index: usize, end: End) -> Incarnation {
        let client = &self.clients[index];
        let (first, last, distinct) = if client.first_pub == 0 {
            (0, 0, 0)
        } else {
            let seen = &client.publishes;
            (client.first_pub, client.first_pub + seen.max_seen().max(1) - 1, seen.distinct())
        };
        Incarnation {
            user: (self.config.first + index) / self.config.tabs,
            opened_ns: client.opened_ns,
            end,
            first,
            last,
            distinct,
        }
    }

    pub(super) fn queue_restart(&mut self, index: usize, churned: bool) {
        self.restart.push_back((index, churned));
        self.context.counters.pending += 1;
    }

    /// Kills `fraction` of the open connections, chosen at random, with an RST (SO_LINGER 0,
    /// then close) and queues them to reconnect at once. Returns how many were killed.
    pub(super) fn churn(&mut self, fraction: f64) -> usize {
        let mut open: Vec<usize> = (0..self.clients.len()).filter(|&i| self.clients[i].state == State::Open).collect();
        let count = ((open.len() as f64 * fraction).round() as usize).min(open.len());
        for i in 0..count {
            let j = i + (self.context.next_random() % (open.len() - i) as u64) as usize;
            open.swap(i, j);
        }
        for &index in &open[..count] {
            if self.context.soak {
                let record = self.incarnation(index, End::Killed);
                self.finished.push(record);
            }
            if let Some(Err(error)) = self.clients[index].stream.as_ref().map(set_linger_zero) {
                // The close below then ends with a FIN instead of an RST: say so.
                self.context.note_once("linger", &format!("SO_LINGER failed, closing with FIN: {error}"));
            }
            let counters = &mut self.context.counters;
            counters.open -= 1;
            counters.killed += 1;
            if self.clients[index].echo {
                self.clients[index].echo = false;
                counters.echo_inflight -= 1;
            }
            self.drop_socket(index);
            self.queue_restart(index, true);
        }
        count
    }

    /// Closes every connection (a plain close: FIN) and forgets pending starts and finished
    /// incarnations. Returns how many connections were open or opening.
    pub(super) fn leave(&mut self) -> usize {
        self.finished.clear();
        let counters = &mut self.context.counters;
        counters.pending -= self.restart.len() as u64;
        self.restart.clear();
        counters.pending -= (self.clients.len() - self.next_to_start) as u64;
        self.next_to_start = self.clients.len();
        let mut left = 0;
        for index in 0..self.clients.len() {
            let counters = &mut self.context.counters;
            match self.clients[index].state {
                State::Open => counters.open -= 1,
                State::Connecting | State::Handshaking => counters.inflight -= 1,
                State::Closing => counters.closing -= 1,
                State::NotStarted | State::Closed => continue,
            }
            if self.clients[index].echo {
                self.clients[index].echo = false;
                counters.echo_inflight -= 1;
            }
            counters.left += 1;
            left += 1;
            self.drop_socket(index);
        }
        left
    }

    /// Live incarnations still missing a publish they must get: the last one sent to their user
    /// went out at least `grace_ns` after they opened, and they have not received up to it.
    pub(super) fn soak_behind(&self) -> u64 {
        if self.context.soak_expected.is_empty() {
            return 0;
        }
        let mut behind = 0;
        for (index, client) in self.clients.iter().enumerate().filter(|(_, c)| c.state == State::Open) {
            let user = (self.config.first + index) / self.config.tabs;
            let Some(&(count, last_ns)) =
                user.checked_sub(self.context.expected_first_user).and_then(|i| self.context.soak_expected.get(i))
            else {
                continue;
            };
            if count == 0 || last_ns < client.opened_ns + self.context.grace_ns {
                continue;
            }
            let record = self.incarnation(index, End::Live);
            if record.first == 0 || record.last < count || record.last - record.first + 1 > record.distinct {
                behind += 1;
            }
        }
        behind
    }
}
