//! loadgen: load generation and measurement for servers that follow the wspushd contract.
//!
//! WebSocket clients connect to `ws://HOST:PORT/PATH?user=U`; an admin HTTP API on another port
//! takes `POST /publish?user=U` and `POST /broadcast` (body = payload) and answers
//! `200 {"delivered":N}`. Run `target/release/loadgen --help` for every option.
//!
//! The coordinator (this process) parses options, checks the target, samples memory, drives the
//! admin API and prints results; the client connections live in worker processes (this same
//! executable with a hidden `--worker` flag), at most 19,000 sockets each because of the 20,000
//! open-file limit. They talk over the workers' stdin/stdout, one JSON object per line
//! (protocol.rs).
//!
//! Modules by job: cli (flags), coordinator (the workers seen from here), protocol (the
//! messages), run (the phase sequence and shared waits), phases/ (one per phase), lanes
//! (publishing threads), report (table and JSON), hist (latency histograms), admin (the admin
//! API client), sys (/proc and the clock), worker/ (the worker process: connection loop, frame
//! codec, socket setup, soak bookkeeping).

mod admin;
mod cli;
mod coordinator;
mod hist;
mod lanes;
mod peer;
mod phases;
mod protocol;
mod report;
mod run;
mod sys;
mod worker;

use std::time::Duration;

use cli::Options;

fn main() {
    let options = match Options::from_command_line() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("loadgen: {message}\n(see loadgen --help)");
            std::process::exit(2);
        }
    };
    if options.worker {
        let config = worker::WorkerConfig {
            first: options.worker_first,
            count: options.worker_count,
            tabs: options.tabs,
            targets: options.targets.clone(),
            sources: options.bind_sources.then_some((options.source_base, options.source_ips.max(1) as u32)),
            connect_rate: options.connect_rate,
            max_inflight: options.max_inflight,
            connect_timeout: Duration::from_secs_f64(options.connect_timeout),
            seed: options.seed,
            v1: options.v1,
            peer: options.peer.clone(),
        };
        if let Err(e) = worker::run(config) {
            eprintln!("loadgen worker: {e}");
            std::process::exit(2);
        }
        return;
    }
    match run::run(options) {
        Ok(code) => std::process::exit(code),
        Err(message) => {
            eprintln!("loadgen: {message}");
            std::process::exit(2);
        }
    }
}
