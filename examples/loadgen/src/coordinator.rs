//! The coordinator's side of the worker processes: starting them, sending commands, gathering
//! and summing their answers (see protocol.rs for the messages).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::cli::Options;
use crate::hist::Histogram;
use crate::protocol::{to_line, Answer, Command, Stream};

/// How long a worker may take to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Summed worker reports: counters add up, `*_ns` timestamps take the latest.
#[derive(Default, Debug)]
pub struct Report(pub BTreeMap<String, u64>);

impl Report {
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    pub fn add(&mut self, counters: &BTreeMap<String, u64>) {
        for (key, &value) in counters {
            let slot = self.0.entry(key.clone()).or_default();
            if key.ends_with("_ns") {
                *slot = (*slot).max(value);
            } else {
                *slot += value;
            }
        }
    }
}

/// The connections one worker holds (global indices first..first+count) and how it opens them.
#[derive(Clone, Copy)]
pub struct WorkerPlan {
    pub first: usize,
    pub count: usize,
    pub connect_rate: f64,
    pub max_inflight: usize,
}

pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    /// (worker index, answer; None at end of output); notes are printed by the reader threads
    /// and not forwarded.
    answers: mpsc::Receiver<(usize, Option<Answer>)>,
    /// Connection range (first, count) of each worker.
    pub ranges: Vec<(usize, usize)>,
}

impl Workers {
    /// --workers workers sharing --conns connections evenly.
    pub fn spawn(o: &Options) -> Result<Workers, String> {
        let per_worker = o.conns.div_ceil(o.workers);
        let rate_per_worker = o.connect_rate / o.workers as f64;
        let plans: Vec<WorkerPlan> = (0..o.workers)
            .map(|index| {
                let first = index * per_worker;
                WorkerPlan {
                    first,
                    count: per_worker.min(o.conns - first),
                    connect_rate: rate_per_worker,
                    max_inflight: o.max_inflight,
                }
            })
            .collect();
        Workers::spawn_plans(o, &plans)
    }

    pub fn spawn_plans(o: &Options, plans: &[WorkerPlan]) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let (tx, answers) = mpsc::channel();
        let mut workers = Workers { children: Vec::new(), stdins: Vec::new(), answers, ranges: Vec::new() };
        for (index, plan) in plans.iter().enumerate() {
            let WorkerPlan { first, count, connect_rate: rate_per_worker, max_inflight } = *plan;
            let mut command = Process::new(&exe);
            command
                .arg("--worker")
                .args(["--url", &o.urls()])
                .args(["--conns", &o.conns.to_string()])
                .args(["--tabs", &o.tabs.to_string()])
                .args(["--worker-first", &first.to_string()])
                .args(["--worker-count", &count.to_string()])
                .args(["--connect-rate", &rate_per_worker.to_string()])
                .args(["--max-inflight", &max_inflight.to_string()])
                .args(["--connect-timeout", &o.connect_timeout.to_string()])
                .args(["--source-ips", &o.source_ips.to_string()])
                .args(["--source-base", &o.source_base.to_string()])
                .args(["--seed", &(o.seed.wrapping_add(index as u64 + 1)).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if !o.bind_sources {
                command.arg("--no-source-bind");
            }
            if o.v1 {
                command.arg("--v1");
            }
            command.args(o.peer.worker_args());
            let mut child = command.spawn().map_err(|e| format!("cannot start worker: {e}"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("worker pipes missing".into());
            };
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Answer>(&line) {
                        Ok(Answer::Note { text }) => eprintln!("loadgen: worker {index}: {text}"),
                        Ok(answer) => {
                            if tx.send((index, Some(answer))).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("loadgen: worker {index}: unreadable answer {line:?}: {e}"),
                    }
                }
                let _ = tx.send((index, None));
            });
            workers.children.push(child);
            workers.stdins.push(stdin);
            workers.ranges.push((first, count));
        }
        Ok(workers)
    }

    pub fn send(&mut self, index: usize, command: &Command) -> Result<(), String> {
        let line = to_line(command);
        let stdin = &mut self.stdins[index];
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("worker {index} is gone: {e}"))
    }

    pub fn send_all(&mut self, command: &Command) -> Result<(), String> {
        (0..self.stdins.len()).try_for_each(|index| self.send(index, command))
    }

    /// The next answer from any worker.
    fn next_answer(&mut self, waiting_for: &str) -> Result<(usize, Answer), String> {
        let (index, answer) = self
            .answers
            .recv_timeout(ANSWER_TIMEOUT)
            .map_err(|_| format!("workers did not answer {waiting_for} within {} s", ANSWER_TIMEOUT.as_secs()))?;
        let answer = answer.ok_or_else(|| format!("worker {index} exited unexpectedly"))?;
        Ok((index, answer))
    }

    /// One answer named `name` from every worker, in worker order.
    pub fn collect(&mut self, name: &str) -> Result<Vec<Answer>, String> {
        let all: Vec<usize> = (0..self.stdins.len()).collect();
        self.collect_from(&all, name)
    }

    /// One answer named `name` from each of the workers `from`, in that order.
    pub fn collect_from(&mut self, from: &[usize], name: &str) -> Result<Vec<Answer>, String> {
        let mut answers: Vec<Option<Answer>> = (0..self.stdins.len()).map(|_| None).collect();
        let mut missing = from.len();
        while missing > 0 {
            let (index, answer) = self.next_answer(name)?;
            if answer.name() == name && from.contains(&index) && answers[index].is_none() {
                answers[index] = Some(answer);
                missing -= 1;
            } else {
                eprintln!("loadgen: worker {index}: unexpected answer {answer:?}");
            }
        }
        Ok(from.iter().filter_map(|&index| answers[index].take()).collect())
    }

    /// Sends `command` to every worker and gathers the `record` answers each sends, until every
    /// worker has sent its `end` answer.
    pub fn records(&mut self, command: &Command, record: &str, end: &str) -> Result<Vec<Answer>, String> {
        self.send_all(command)?;
        let mut ended = vec![false; self.stdins.len()];
        let mut records = Vec::new();
        while ended.iter().any(|done| !done) {
            let (index, answer) = self.next_answer(record)?;
            match answer.name() {
                name if name == record => records.push(answer),
                name if name == end => ended[index] = true,
                _ => eprintln!("loadgen: worker {index}: unexpected answer {answer:?}"),
            }
        }
        Ok(records)
    }

    pub fn ask_all(&mut self, command: &Command, name: &str) -> Result<Vec<Answer>, String> {
        self.send_all(command)?;
        self.collect(name)
    }

    /// The summed report of the workers `from`.
    pub fn report_from(&mut self, from: &[usize]) -> Result<Report, String> {
        for &index in from {
            self.send(index, &Command::Report)?;
        }
        Ok(sum_reports(self.collect_from(from, "report")?))
    }

    pub fn report(&mut self) -> Result<Report, String> {
        Ok(sum_reports(self.ask_all(&Command::Report, "report")?))
    }

    /// Every worker's histogram of `stream`, merged; with `reset`, the workers start afresh.
    pub fn histogram(&mut self, stream: Stream, reset: bool) -> Result<Histogram, String> {
        let mut merged = Histogram::default();
        for answer in self.ask_all(&Command::Hist { stream, reset }, "hist")? {
            if let Answer::Hist { histogram } = answer {
                let part = Histogram::from_wire(&histogram).map_err(|e| format!("histogram from a worker: {e}"))?;
                merged.merge(&part)?;
            }
        }
        Ok(merged)
    }

    pub fn finish(mut self) {
        let _ = self.send_all(&Command::Quit);
        drop(std::mem::take(&mut self.stdins));
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

fn sum_reports(answers: Vec<Answer>) -> Report {
    let mut report = Report::default();
    for answer in answers {
        if let Answer::Report { counters } = answer {
            report.add(&counters);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_add_counters_and_keep_the_latest_timestamp() {
        let mut report = Report::default();
        report.add(&BTreeMap::from([("open".to_string(), 3), ("last_open_ns".to_string(), 50)]));
        report.add(&BTreeMap::from([("open".to_string(), 4), ("last_open_ns".to_string(), 20)]));
        assert_eq!((report.get("open"), report.get("last_open_ns"), report.get("absent")), (7, 50, 0));
    }
}
