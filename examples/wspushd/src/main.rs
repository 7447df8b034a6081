//! wspushd: a standalone WebSocket push daemon on the wspush engine's Rust API.
//!
//! Clients connect to the public port; the backend pushes to users through a plain-HTTP admin API
//! on a separate address (see `wspushd --help`, or src/cli.rs for the text).
//!
//! ```text
//! cargo run --release -p wspushd -- --demo
//! # open http://127.0.0.1:8080/?user=alice, then:
//! curl -d 'You have new mail' 'http://127.0.0.1:8081/publish?user=alice'
//! ```

mod admin;
mod cli;
mod demo;
mod guard;
mod log;
mod public;
mod query;
mod signals;

/// The daemon's allocator: jemalloc without per-thread caches, returning pages left unused for a
/// second from a background thread (so an idle daemon gets there too). With glibc's malloc the
/// daemon kept 2-15% of a soak's peak resident after every client had left: chunks cached per
/// thread and the tops of per-thread arenas (which `malloc_trim` leaves alone) pin their pages.
/// The library itself uses whatever allocator its host has. Unit tests keep the system allocator
/// so that AddressSanitizer sees their heap.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads this before main; `_RJEM_MALLOC_CONF` in the environment overrides it.
#[cfg(not(test))]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: JemallocOptions = JemallocOptions(
    c"background_thread:true,max_background_threads:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr(),
);

/// A C string pointer as jemalloc expects `malloc_conf` (`const char *`).
#[cfg(not(test))]
#[repr(transparent)]
struct JemallocOptions(*const std::ffi::c_char);

// SAFETY: the pointer is to an immutable static string, so sharing it between threads is sound.
#[cfg(not(test))]
unsafe impl Sync for JemallocOptions {}

use std::io::Write;
use std::net::TcpListener;
use std::process::exit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wspush::{Server, ServerHandle, Stats};

use crate::admin::Admin;
use crate::cli::{Command, Options};
use crate::guard::AllowedHosts;
use crate::log::{ErrorClass, ErrorLog};
use crate::public::Daemon;
use crate::signals::{block_shutdown_signals, signal_name, wait_for_signal};

/// Exit status for command-line mistakes (as the contract and sysexits-style tools expect).
const USAGE_ERROR: i32 = 2;
/// Exit status for failures at run time (address in use, ...).
const RUNTIME_ERROR: i32 = 1;

/// The host of a listen address `HOST:PORT` when it is a name, not an IP address.
fn listen_host_name(listen: &str) -> Option<String> {
    let (host, _port) = listen.rsplit_once(':')?;
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    guard::host_name(host)
}

fn main() {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => *options,
        Ok(Command::Print(text)) => {
            println!("{}", text.trim_end());
            exit(0);
        }
        Err(reason) => {
            eprintln!("wspushd: {reason}\n\n{}", cli::usage_hint());
            exit(USAGE_ERROR);
        }
    };
    if !options.demo && options.config.jwt_hs256_secret.is_none() {
        eprintln!(
            "wspushd: no authentication mode configured. Pass --jwt-secret-file PATH to accept \
             HS256-signed JSON Web Tokens (the `sub` claim is the user ID), or --demo to take the \
             user ID from the `user` query parameter WITHOUT authentication (development only). \
             See wspushd --help."
        );
        exit(USAGE_ERROR);
    }
    // Before any thread exists, so that every thread inherits the mask and the signals wait for
    // sigwait in main instead of killing the process mid-drain.
    let shutdown_signals = block_shutdown_signals();
    run(options, &shutdown_signals);
}

fn run(options: Options, shutdown_signals: &libc::sigset_t) {
    let Options { config, admin_listen, demo, echo, admin_idle_timeout, admin_token, mut admin_allowed_hosts } =
        options;
    if demo {
        eprintln!(
            "wspushd: WARNING: DEMO MODE, NO AUTHENTICATION. Any client can connect as any user \
             with ?user=NAME and read that user's notifications. Never use --demo in production."
        );
    }
    let admin_listener = TcpListener::bind(&admin_listen).unwrap_or_else(|e| {
        eprintln!("wspushd: cannot listen on admin address {admin_listen}: {e}");
        exit(RUNTIME_ERROR);
    });
    let admin_addr = admin_listener.local_addr().unwrap_or_else(|e| {
        eprintln!("wspushd: cannot read the admin address: {e}");
        exit(RUNTIME_ERROR);
    });

    // The engine refuses publishes larger than this, so the admin API refuses such bodies early.
    let max_body = config.max_message_size.max(config.max_queue_bytes);
    let threads = if config.threads > 0 {
        config.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(255))
    };
    let daemon = Daemon {
        demo,
        echo,
        ws_path: config.path.clone(),
        demo_page: demo.then(|| demo::demo_page(&config.path, admin_addr)),
    };
    let ws_path = config.path.clone();
    let listen = config.listen.clone();
    let max_connections = config.max_connections;
    // Behind a balancer every peer is the balancer: say whose addresses the per-IP limits count.
    let clients = if config.proxy_protocol {
        let trusted: Vec<String> = config.trusted_proxies.iter().map(|n| n.to_string()).collect();
        format!("client addresses from PROXY headers of {}", trusted.join(", "))
    } else {
        "client addresses from the sockets".to_string()
    };
    let server = match Server::start(config, daemon) {
        Ok(server) => server,
        Err(e @ (wspush::Error::InvalidConfig(_) | wspush::Error::InvalidAddress)) => {
            eprintln!("wspushd: {e} (--listen {listen})");
            exit(USAGE_ERROR);
        }
        Err(e) => {
            eprintln!("wspushd: cannot start on {listen}: {e}");
            exit(RUNTIME_ERROR);
        }
    };

    let errors = Arc::new(ErrorLog::default());
    // A name in --admin-listen is the one backends use to reach the API.
    admin_allowed_hosts.extend(listen_host_name(&admin_listen));
    let allowed_hosts = AllowedHosts::new(admin_allowed_hosts);
    let admin = Arc::new(Admin::new(
        server.handle(),
        max_body,
        admin_idle_timeout,
        admin_token,
        allowed_hosts,
        Arc::clone(&errors),
    ));
    let runtime = admin::runtime().unwrap_or_else(|e| {
        eprintln!("wspushd: cannot start the admin API's runtime: {e}");
        exit(RUNTIME_ERROR);
    });
    spawn("wspushd-admin", move || {
        if let Err(e) = runtime.block_on(admin::serve(admin_listener, admin)) {
            eprintln!("wspushd: the admin API stopped: {e}");
            exit(RUNTIME_ERROR);
        }
    });
    let watched = server.handle();
    spawn("wspushd-watch", move || watch(&watched, &errors));

    let mode = if demo { "demo (NO AUTHENTICATION)" } else { "JWT (HS256)" };
    let echo = if echo { "on" } else { "off" };
    println!(
        "wspushd {} starting: {threads} I/O threads, mode {mode}, echo {echo}, max {max_connections} connections, \
         {clients}",
        wspush::VERSION
    );
    println!("wspushd listening on ws://{}{ws_path}, admin on http://{admin_addr}", server.local_addr());
    let _ = std::io::stdout().flush();

    let signal = wait_for_signal(shutdown_signals);
    let open = server.stats().connections;
    println!("wspushd stopping on {}: closing {open} connections with 1001", signal_name(signal));
    let _ = std::io::stdout().flush();
    // Further signals must not turn the graceful stop into a failure: some senders deliver one
    // twice (GNU timeout signals the child and its process group), and the drain is bounded by
    // --drain-timeout-ms anyway. Keep taking them so they stay harmless.
    let later_signals = *shutdown_signals;
    spawn("wspushd-signal", move || {
        let signal = wait_for_signal(&later_signals);
        eprintln!(
            "wspushd: {} while stopping: already stopping, the drain ends within --drain-timeout-ms",
            signal_name(signal)
        );
        loop {
            wait_for_signal(&later_signals);
        }
    });
    let started = Instant::now();
    server.stop();
    println!("wspushd stopped in {} ms", started.elapsed().as_millis());
    let _ = std::io::stdout().flush();
    exit(0);
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(body) {
        eprintln!("wspushd: cannot start thread {name}: {e}");
        exit(RUNTIME_ERROR);
    }
}

/// Once a second: logs the first occurrence of each engine-side error class, from the counters
/// (the engine does not log, and per-connection log lines would flood the log).
fn watch(server: &ServerHandle, errors: &ErrorLog) {
    type Counter = fn(&Stats) -> u64;
    let watched: [(ErrorClass, Counter); 5] = [
        (ErrorClass::OverCapacity, |s| s.over_capacity_total),
        (ErrorClass::IpLimited, |s| s.ip_limited_total),
        (ErrorClass::SlowConsumerClose, |s| s.slow_consumer_closes_total),
        (ErrorClass::SlowConsumerDrop, |s| s.dropped_total),
        (ErrorClass::ProtocolError, |s| s.protocol_errors_total),
    ];
    while !server.is_stopped() {
        let stats = server.stats();
        for (class, counter) in watched {
            let count = counter(&stats);
            if count > 0 {
                errors.report(class, &format!("{count} so far"));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_in_the_admin_listen_address_is_an_allowed_host() {
        assert_eq!(listen_host_name("Admin.Internal:8081").as_deref(), Some("admin.internal"));
        assert_eq!(listen_host_name("localhost:8081").as_deref(), Some("localhost"));
        for address in ["127.0.0.1:8081", "[::1]:8081", "0.0.0.0:0", "nonsense"] {
            assert_eq!(listen_host_name(address), None, "{address}");
        }
    }
}
