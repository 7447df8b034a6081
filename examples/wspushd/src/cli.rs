//! The command line: flags declared with clap (help text, defaults, both `--flag value` and
//! `--flag=value`), then turned into the engine's `Config` and checked across options. Errors name
//! the option and the bad value, and are usage errors (exit status 2).

use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};
use wspush::{Config, SlowConsumerPolicy, TrustedProxy};

use crate::guard;

/// Shortest admin token accepted: 16 bytes of a random token are 128 bits or less of guessing.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Production defaults the library leaves off: one address cannot take the whole server.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
const DEFAULT_MAX_HANDSHAKES_PER_IP_PER_SEC: u32 = 100;
const DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP: usize = 64;
/// History is on in the daemon (off in the library): 100 messages per user for 10 minutes, at
/// most 64 MiB in all: a tab that was away through a Wi-Fi change or a deploy gets what it missed.
const DEFAULT_HISTORY_MESSAGES: usize = 100;
const DEFAULT_HISTORY_TTL_SECS: u64 = 600;
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
const DEFAULT_ADMIN_IDLE_TIMEOUT_MS: u64 = 30_000;

const USAGE: &str = "wspushd --jwt-secret-file PATH [OPTIONS]\n    wspushd --demo [OPTIONS]";

const ABOUT: &str = "\
wspushd: standalone WebSocket push daemon built on the wspush engine.

Clients connect to ws://LISTEN/PATH. Your backend pushes to them through the admin HTTP API,
which is served on a separate address and must never be exposed publicly.";

const HELP_TEMPLATE: &str = "{about}\n\nUSAGE:\n    {usage}\n\n{all-args}{after-help}";

const AFTER_HELP: &str = "\
ADMIN API ENDPOINTS (on --admin-listen; query values are URL-decoded: %XX, and '+' for space):
    POST /publish?user=U           Body is the message: binary frame when Content-Type is
                                   application/octet-stream, else text (must be UTF-8).
                                   Answers 200 {\"delivered\":N} (N = connections reached)
    POST /broadcast                Same, to every connection
    POST /disconnect?user=U[&code=C]
                                   Close every connection of U with close code C [default: 1000].
                                   Answers 200 {\"disconnected\":N}
    GET  /stats                    JSON of every engine counter
    GET  /metrics                  Prometheus text format
    GET  /healthz                  \"ok\" (503 while stopping)
    Request bodies need Content-Length and may be at most max(--max-message-size,
    --max-queue-bytes) bytes (else 413). HTTP/1.1 keep-alive and pipelining are supported.
    The API is for backends, never for browsers: a request with an Origin header (any value)
    or a Sec-Fetch-Site other than none/same-origin gets 403; a Host that is not an IP
    address, localhost or an allowed name (DNS rebinding) gets 421; HTTP/1.1 without Host 400.
    Each closes the connection, as a 401 does. A new connection must send its first byte
    within 2 s. At most 256 connections (32 per client address) are open at once; a newcomer
    beyond that takes the place of the oldest one with no request in progress, else gets 503.

SIGNALS:
    SIGINT, SIGTERM                Graceful stop: close every connection with 1001, drain
                                   (at most --drain-timeout-ms), exit 0.

EXIT STATUS: 0 after a graceful stop, 1 on a runtime error (e.g. address in use), 2 on a usage
error.
";

const AUTHENTICATION: &str = "AUTHENTICATION (exactly one is required)";
const PUBLIC: &str = "PUBLIC WEBSOCKET PORT";
const LIMITS: &str = "LIMITS (per connection, per client address, in all)";
const TIMING: &str = "TIMING";
const PROXY: &str = "BEHIND A LOAD BALANCER";
const HISTORY: &str = "HISTORY (wspush.v1 clients resume with since=EPOCH:OFFSET)";
const ADMIN: &str = "ADMIN API OPTIONS";
const CLUSTER: &str = "SEVERAL NODES (through Redis; README, Running several nodes)";

/// The library's defaults, which the daemon's flags keep unless said otherwise.
fn engine() -> Config {
    Config::default()
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SlowConsumer {
    Close,
    Drop,
}

/// The flags as typed; [`Options`] is what they mean.
#[derive(Parser, Debug)]
#[command(
    name = "wspushd",
    version = wspush::VERSION,
    about = ABOUT,
    override_usage = USAGE,
    help_template = HELP_TEMPLATE,
    after_help = AFTER_HELP,
    max_term_width = 100,
    term_width = 100,
    // As before: a flag given twice takes its last value (repeatable ones collect every value).
    args_override_self = true,
    allow_negative_numbers = true,
    disable_help_subcommand = true
)]
struct Args {
    /// Authenticate upgrades with JSON Web Tokens signed with HS256 using the secret in PATH (at
    /// least 32 bytes; one trailing newline is ignored). The token comes from an `Authorization:
    /// Bearer` header or the `token` query parameter (browsers); its `sub` claim is the user ID;
    /// `exp` is required. Anything else is answered 401 "invalid token".
    #[arg(long, value_name = "PATH", help_heading = AUTHENTICATION)]
    jwt_secret_file: Option<String>,

    /// Clock skew allowed for `exp` and `nbf`, in milliseconds.
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = ms(engine().jwt_leeway), help_heading = AUTHENTICATION)]
    jwt_leeway_ms: u64,

    /// Take the user ID from the `user` query parameter of the WebSocket URL, WITHOUT ANY
    /// AUTHENTICATION (development only), and serve a demo inbox page at GET / on the public port.
    #[arg(long, help_heading = AUTHENTICATION)]
    demo: bool,

    /// Public WebSocket address.
    #[arg(long, value_name = "ADDR", default_value_t = engine().listen, help_heading = PUBLIC)]
    listen: String,

    /// Request path accepting WebSocket upgrades.
    #[arg(long, value_name = "PATH", value_parser = request_path, default_value_t = engine().path, help_heading = PUBLIC)]
    path: String,

    /// Send every client message back to its sender (same kind); for conformance and load tests.
    /// Every echo must fit in the send queue: --max-message-size plus its frame header (2, 4 or 10
    /// bytes) at most --max-queue-bytes, else a usage error.
    #[arg(long, help_heading = PUBLIC)]
    echo: bool,

    /// I/O threads; 0 = one per core (at most 255).
    #[arg(long, value_name = "N", value_parser = count, default_value_t = engine().threads, help_heading = PUBLIC)]
    threads: usize,

    /// Accept browser upgrades only from this Origin (repeatable; e.g. https://mail.example.com).
    /// Default: any origin.
    #[arg(long, value_name = "ORIGIN", value_parser = origin, action = ArgAction::Append, help_heading = PUBLIC)]
    allowed_origin: Vec<String>,

    /// Open + handshaking connections; beyond, 503.
    #[arg(long, value_name = "N", value_parser = count, default_value_t = engine().max_connections, help_heading = LIMITS)]
    max_connections: usize,

    /// Connections per user; 0 = no limit; beyond, 429.
    #[arg(long, value_name = "N", value_parser = count, default_value_t = engine().max_connections_per_user, help_heading = LIMITS)]
    max_connections_per_user: usize,

    /// Upgrades in progress per I/O thread; beyond, that thread stops accepting until one
    /// completes (a connection storm waits in the kernel's backlog).
    #[arg(long, value_name = "N", value_parser = count, default_value_t = engine().max_handshakes_per_thread, help_heading = LIMITS)]
    max_handshakes_per_thread: usize,

    /// Connections per client IP address (IPv6: per /64); 0 = no limit; beyond, 429.
    #[arg(long, value_name = "N", value_parser = count, default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP, help_heading = LIMITS)]
    max_connections_per_ip: usize,

    /// New connections per second per client IP address (IPv6: /64), in bursts of up to N; 0 = no
    /// limit; beyond, 429.
    #[arg(long, value_name = "N", value_parser = rate, default_value_t = DEFAULT_MAX_HANDSHAKES_PER_IP_PER_SEC, help_heading = LIMITS)]
    max_handshakes_per_ip_per_sec: u32,

    /// Upgrades in progress per client IP address (IPv6: /64), so idle sockets from one address
    /// can't hold every handshake slot; 0 = no limit; beyond, 429.
    #[arg(long, value_name = "N", value_parser = count, default_value_t = DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP, help_heading = LIMITS)]
    max_pending_handshakes_per_ip: usize,

    /// Largest message a client may send, in bytes; larger closes with 1009.
    #[arg(long, value_name = "BYTES", value_parser = count, default_value_t = engine().max_message_size, help_heading = LIMITS)]
    max_message_size: usize,

    /// Bytes all connections together may hold for incomplete frames and messages; the connection
    /// that would pass it is closed with 1013.
    #[arg(long, value_name = "BYTES", value_parser = count, default_value_t = engine().max_partial_input_bytes, help_heading = LIMITS)]
    max_partial_input_bytes: usize,

    /// Unsent bytes queued per connection before the slow-consumer policy applies.
    #[arg(long, value_name = "BYTES", value_parser = count, default_value_t = engine().max_queue_bytes, help_heading = LIMITS)]
    max_queue_bytes: usize,

    /// A connection whose send queue is full: close: close it with 1008; drop: drop the message
    /// for that connection only.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = SlowConsumer::Close, help_heading = LIMITS)]
    slow_consumer: SlowConsumer,

    /// Messages kept per user for clients that reconnect; 0 turns history off (no offsets).
    #[arg(long, value_name = "N", value_parser = count, default_value_t = DEFAULT_HISTORY_MESSAGES, help_heading = HISTORY)]
    history_messages: usize,

    /// Seconds a message is kept; a user's stream whose newest message expired starts a new epoch.
    #[arg(long, value_name = "SECS", value_parser = seconds, default_value_t = DEFAULT_HISTORY_TTL_SECS, help_heading = HISTORY)]
    history_ttl: u64,

    /// Bytes all histories may take; past it the least recently published users' streams go.
    #[arg(long, value_name = "BYTES", value_parser = count, default_value_t = engine().history_max_bytes, help_heading = HISTORY)]
    history_max_bytes: usize,

    /// Share users with other wspushd nodes through this Redis (7 or later):
    /// redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]. A publish on any node reaches the user's
    /// connections on every node; history lives in Redis (--history-max-bytes does not apply).
    #[arg(long, value_name = "URL", value_parser = redis_url, help_heading = CLUSTER)]
    redis: Option<String>,

    /// How long Redis may take to answer before a publish fails (admin API: 503).
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = ms(engine().redis_timeout), help_heading = CLUSTER)]
    redis_timeout_ms: u64,

    /// Time a client has to finish a frame or fragmented message it has started, in
    /// milliseconds; then 1008.
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = ms(engine().message_timeout), help_heading = TIMING)]
    message_timeout_ms: u64,

    /// Ping a connection silent this long, in milliseconds.
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = ms(engine().ping_interval), help_heading = TIMING)]
    ping_interval_ms: u64,

    /// Close a connection silent this long, in milliseconds (more than --ping-interval-ms).
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = ms(engine().idle_timeout), help_heading = TIMING)]
    idle_timeout_ms: u64,

    /// Time allowed from accept to completed upgrade, in milliseconds.
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = ms(engine().handshake_timeout), help_heading = TIMING)]
    handshake_timeout_ms: u64,

    /// On shutdown, time allowed to flush and close, in milliseconds.
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = ms(engine().drain_timeout), help_heading = TIMING)]
    drain_timeout_ms: u64,

    /// Connections from a --trusted-proxy must open with a PROXY protocol header (v1 or v2;
    /// HAProxy send-proxy, nginx proxy_protocol, cloud TCP balancers), else 400. Its client address
    /// is what per-IP limits count. Others are served directly; a PROXY header from them gets 400.
    #[arg(long, help_heading = PROXY)]
    proxy_protocol: bool,

    /// A balancer address or network allowed to send PROXY headers (repeatable; e.g. 10.0.0.0/8,
    /// 127.0.0.1, fd00::/8); at least one is required with --proxy-protocol.
    #[arg(long, value_name = "ADDR[/BITS]", value_parser = network, action = ArgAction::Append, help_heading = PROXY)]
    trusted_proxy: Vec<TrustedProxy>,

    /// Admin HTTP API address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN, help_heading = ADMIN)]
    admin_listen: String,

    /// Close admin connections idle this long, in milliseconds.
    #[arg(long, value_name = "MS", value_parser = millis, default_value_t = DEFAULT_ADMIN_IDLE_TIMEOUT_MS, help_heading = ADMIN)]
    admin_idle_timeout_ms: u64,

    /// Require `Authorization: Bearer TOKEN` on every admin request, TOKEN being the content of
    /// PATH (at least 16 bytes; one trailing newline is ignored); others get 401.
    #[arg(long, value_name = "PATH", help_heading = ADMIN)]
    admin_token_file: Option<String>,

    /// Also answer admin requests whose Host is NAME, any port (repeatable; e.g.
    /// push-admin.internal). Always answered: IP addresses, localhost, and the name in
    /// --admin-listen.
    #[arg(long, value_name = "NAME", value_parser = allowed_host, action = ArgAction::Append, help_heading = ADMIN)]
    admin_allowed_host: Vec<String>,
}

/// Everything the command line decides.
#[derive(Debug)]
pub struct Options {
    pub config: Config,
    pub admin_listen: String,
    pub demo: bool,
    pub echo: bool,
    pub admin_idle_timeout: Duration,
    /// Bearer token the admin API requires, when set.
    pub admin_token: Option<Vec<u8>>,
    /// Host names the admin API answers to besides IP addresses and localhost (checked, lowercase).
    pub admin_allowed_hosts: Vec<String>,
}

/// What the command line asks for.
pub enum Command {
    Run(Box<Options>),
    /// Print this text (help or version) to stdout and exit 0.
    Print(String),
}

/// The short usage shown after a usage error.
pub fn usage_hint() -> String {
    format!("USAGE:\n    {USAGE}\n\nSee wspushd --help for every option.")
}

/// Parses the arguments after the program name. `Err` carries a one-line reason.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let command = Args::command();
    let argv = std::iter::once("wspushd".to_string()).chain(args);
    let matches = match command.try_get_matches_from(argv) {
        Ok(matches) => matches,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Command::Print(e.render().to_string()))
        }
        Err(e) => return Err(describe(&e)),
    };
    let args = Args::from_arg_matches(&matches).map_err(|e| describe(&e))?;
    let options = options(args)?;
    check(&options)?;
    Ok(Command::Run(Box::new(options)))
}

/// One line naming the option and the value, in the words of the flag's own checks.
fn describe(error: &clap::Error) -> String {
    let context = |kind: ContextKind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        Some(ContextValue::Strings(texts)) => texts.first().cloned(),
        _ => None,
    };
    // "--threads <N>" -> "--threads"
    let flag = context(ContextKind::InvalidArg)
        .map(|arg| arg.split([' ', '=']).next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let value = context(ContextKind::InvalidValue);
    match error.kind() {
        ErrorKind::UnknownArgument => {
            let given = flag.clone();
            match context(ContextKind::InvalidArg) {
                Some(arg) if arg.starts_with('-') => {
                    // `--demo=yes` on a flag that takes none comes back as an unknown argument.
                    match arg.split_once('=') {
                        Some((known, _)) if Args::command().get_arguments().any(|a| is_flag_named(a, known)) => {
                            format!("option {known} takes no value")
                        }
                        _ => format!("unknown option '{given}'"),
                    }
                }
                Some(arg) => format!("unexpected argument '{arg}'"),
                None => first_line(error),
            }
        }
        ErrorKind::InvalidValue if value.as_deref().is_none_or(str::is_empty) => format!("option {flag} needs a value"),
        ErrorKind::InvalidValue => {
            let accepted = match error.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(values)) => values.join("' or '"),
                _ => String::new(),
            };
            format!("{flag} must be '{accepted}', got '{}'", value.unwrap_or_default())
        }
        ErrorKind::ValueValidation => {
            let reason = std::error::Error::source(error).map(|source| source.to_string()).unwrap_or_default();
            format!("{flag} {reason}, got '{}'", value.unwrap_or_default())
        }
        ErrorKind::TooManyValues => format!("option {flag} takes no value"),
        _ => first_line(error),
    }
}

fn is_flag_named(arg: &clap::Arg, flag: &str) -> bool {
    arg.get_long().is_some_and(|long| flag.strip_prefix("--") == Some(long))
        && matches!(arg.get_action(), ArgAction::SetTrue)
}

/// clap's own message without its "error: " prefix and usage footer.
fn first_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

// Value checks: each error is what follows the flag's name, e.g. "--threads takes ...".

fn count(value: &str) -> Result<usize, String> {
    value.parse().map_err(|_| "takes a non-negative integer".to_string())
}

fn rate(value: &str) -> Result<u32, String> {
    value.parse().map_err(|_| "takes an integer from 0 to 4294967295".to_string())
}

fn seconds(value: &str) -> Result<u64, String> {
    match value.parse() {
        Ok(0) | Err(_) => Err("takes a whole number of seconds, at least 1".to_string()),
        Ok(secs) => Ok(secs),
    }
}

fn millis(value: &str) -> Result<u64, String> {
    value.parse().map_err(|_| "takes a whole number of milliseconds".to_string())
}

fn redis_url(value: &str) -> Result<String, String> {
    // The engine checks the rest when it starts (and says what is wrong).
    match value.strip_prefix("redis://") {
        Some(rest) if !rest.is_empty() => Ok(value.to_string()),
        _ => Err("takes a URL like redis://127.0.0.1:6379 or redis://:PASSWORD@HOST:PORT/DB".into()),
    }
}

fn request_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') || value.contains(['?', '#', ' ']) {
        return Err("must start with '/' and contain no '?', '#' or space".into());
    }
    Ok(value.to_string())
}

fn origin(value: &str) -> Result<String, String> {
    if value.is_empty() || value.ends_with('/') {
        return Err("takes an origin like https://mail.example.com (no path)".into());
    }
    Ok(value.to_string())
}

fn network(value: &str) -> Result<TrustedProxy, String> {
    // The engine's own check; its wording ("expected ...") does not follow a flag's name.
    value.parse().map_err(|_| "takes an IP address or a network like 10.0.0.0/8 or fd00::/8".to_string())
}

fn allowed_host(value: &str) -> Result<String, String> {
    guard::host_name(value).ok_or_else(|| "takes a host name without port (any port is accepted)".into())
}

/// The flags' meaning: the engine's configuration and the daemon's own settings.
fn options(args: Args) -> Result<Options, String> {
    let mut config = engine();
    config.listen = args.listen;
    config.path = args.path;
    config.threads = args.threads;
    config.allowed_origins = args.allowed_origin;
    config.max_connections = args.max_connections;
    config.max_connections_per_user = args.max_connections_per_user;
    config.max_handshakes_per_thread = args.max_handshakes_per_thread;
    config.max_connections_per_ip = args.max_connections_per_ip;
    config.max_handshakes_per_ip_per_sec = args.max_handshakes_per_ip_per_sec;
    config.max_pending_handshakes_per_ip = args.max_pending_handshakes_per_ip;
    config.max_message_size = args.max_message_size;
    config.max_partial_input_bytes = args.max_partial_input_bytes;
    config.max_queue_bytes = args.max_queue_bytes;
    config.slow_consumer = match args.slow_consumer {
        SlowConsumer::Close => SlowConsumerPolicy::Close,
        SlowConsumer::Drop => SlowConsumerPolicy::Drop,
    };
    config.message_timeout = Duration::from_millis(args.message_timeout_ms);
    config.ping_interval = Duration::from_millis(args.ping_interval_ms);
    config.idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    config.handshake_timeout = Duration::from_millis(args.handshake_timeout_ms);
    config.drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    config.jwt_leeway = Duration::from_millis(args.jwt_leeway_ms);
    config.proxy_protocol = args.proxy_protocol;
    config.trusted_proxies = args.trusted_proxy;
    config.history_max_messages = args.history_messages;
    config.history_ttl = Duration::from_secs(args.history_ttl);
    config.history_max_bytes = args.history_max_bytes;
    config.redis_url = args.redis;
    config.redis_timeout = Duration::from_millis(args.redis_timeout_ms);
    if let Some(path) = &args.jwt_secret_file {
        let secret = secret_file("--jwt-secret-file", path, wspush::JWT_MIN_SECRET_LEN)?;
        config.jwt_hs256_secret = Some(secret.into());
    }
    let admin_token = match &args.admin_token_file {
        Some(path) => Some(secret_file("--admin-token-file", path, MIN_ADMIN_TOKEN_LEN)?),
        None => None,
    };
    Ok(Options {
        config,
        admin_listen: args.admin_listen,
        demo: args.demo,
        echo: args.echo,
        admin_idle_timeout: Duration::from_millis(args.admin_idle_timeout_ms),
        admin_token,
        admin_allowed_hosts: args.admin_allowed_host,
    })
}

/// Reads a secret from a file (never from the command line, where `ps` shows it to everyone),
/// without one trailing newline (what editors and `echo` add).
fn secret_file(flag: &str, path: &str, min_len: usize) -> Result<Vec<u8>, String> {
    let mut secret = std::fs::read(path).map_err(|e| format!("{flag}: cannot read '{path}': {e}"))?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.len() < min_len {
        return Err(format!(
            "{flag}: the secret in '{path}' is {} bytes; at least {min_len} are required",
            secret.len()
        ));
    }
    Ok(secret)
}

/// Cross-option checks the engine would not explain as clearly.
fn check(options: &Options) -> Result<(), String> {
    let config = &options.config;
    if options.demo && config.jwt_hs256_secret.is_some() {
        return Err("--demo and --jwt-secret-file exclude each other: pick one authentication mode".into());
    }
    if config.ping_interval.is_zero() || config.idle_timeout.is_zero() || config.handshake_timeout.is_zero() {
        return Err("--ping-interval-ms, --idle-timeout-ms and --handshake-timeout-ms must be > 0".into());
    }
    if options.admin_idle_timeout.is_zero() {
        return Err("--admin-idle-timeout-ms must be > 0".into());
    }
    if config.idle_timeout <= config.ping_interval {
        // Otherwise every quiet connection is closed before it is ever pinged.
        return Err(format!(
            "--idle-timeout-ms ({}) must be greater than --ping-interval-ms ({})",
            config.idle_timeout.as_millis(),
            config.ping_interval.as_millis()
        ));
    }
    if config.max_message_size == 0
        || config.max_connections == 0
        || config.max_queue_bytes == 0
        || config.max_handshakes_per_thread == 0
    {
        return Err(
            "--max-message-size, --max-connections, --max-queue-bytes and --max-handshakes-per-thread must be > 0"
                .into(),
        );
    }
    if options.echo {
        // The engine refuses to send a message that does not fit in the send queue, so the echo
        // of a larger one would never come and its client would wait until its idle timeout.
        let header = frame_header_len(config.max_message_size);
        if config.max_message_size > config.max_queue_bytes.saturating_sub(header) {
            let frame = config.max_message_size.saturating_add(header);
            return Err(format!(
                "--echo: a message of --max-message-size ({}) bytes is echoed as a {frame}-byte frame, which \
                 does not fit in --max-queue-bytes ({}); raise --max-queue-bytes to at least {frame} or lower \
                 --max-message-size",
                config.max_message_size, config.max_queue_bytes
            ));
        }
    }
    if config.threads > 255 {
        return Err("--threads must be at most 255".into());
    }
    if config.proxy_protocol && config.trusted_proxies.is_empty() {
        return Err("--proxy-protocol needs at least one --trusted-proxy (the balancers' addresses)".into());
    }
    if !config.proxy_protocol && !config.trusted_proxies.is_empty() {
        return Err("--trusted-proxy only means something with --proxy-protocol".into());
    }
    if options.admin_listen == config.listen && !config.listen.ends_with(":0") {
        return Err("--admin-listen must differ from --listen: the admin API never shares the public port".into());
    }
    Ok(())
}

/// Size of the header of a server (unmasked) frame with a payload of `len` bytes (RFC 6455 5.2).
fn frame_header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(options) => Ok(*options),
            Command::Print(_) => Err("not a run".into()),
        }
    }

    #[test]
    fn the_flag_declarations_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let options = run(&[]).unwrap();
        assert_eq!(options.config.listen, "127.0.0.1:8080");
        assert_eq!(options.config.path, "/ws");
        assert_eq!(options.admin_listen, "127.0.0.1:8081");
        assert!(!options.demo && !options.echo);
        assert_eq!(options.config.max_connections_per_ip, 1000, "per-IP limits are on in the daemon");
        assert_eq!(options.config.max_handshakes_per_ip_per_sec, 100);
        assert_eq!(options.config.max_pending_handshakes_per_ip, 64);
        assert!(options.config.jwt_hs256_secret.is_none() && options.admin_token.is_none());
        assert_eq!(options.admin_idle_timeout, Duration::from_secs(30));
        // Everything else is the engine's default.
        let engine = Config::default();
        assert_eq!(options.config.max_connections, engine.max_connections);
        assert_eq!(options.config.max_message_size, engine.max_message_size);
        assert_eq!(options.config.max_queue_bytes, engine.max_queue_bytes);
        assert_eq!(options.config.ping_interval, engine.ping_interval);
        assert_eq!(options.config.idle_timeout, engine.idle_timeout);
        assert_eq!(options.config.message_timeout, engine.message_timeout);
        assert_eq!(options.config.slow_consumer, engine.slow_consumer);
    }

    #[test]
    fn help_shows_every_flag_with_its_default() {
        let Command::Print(help) = parse(["--help".to_string()]).unwrap() else { panic!("no help") };
        for flag in Args::command().get_arguments().filter_map(|arg| arg.get_long()) {
            assert!(help.contains(&format!("--{flag}")), "--{flag} missing from\n{help}");
        }
        for default in ["[default: 127.0.0.1:8080]", "[default: 1000000]", "[default: 30000]", "[default: close]"] {
            assert!(help.contains(default), "{default} missing from\n{help}");
        }
        assert!(help.contains("USAGE:") && help.contains("GET  /stats") && help.contains("EXIT STATUS"));
        let Command::Print(version) = parse(["-V".to_string()]).unwrap() else { panic!("no version") };
        assert_eq!(version.trim(), format!("wspushd {}", wspush::VERSION));
    }

    #[test]
    fn secrets_are_read_from_files_and_checked() {
        let dir = std::env::temp_dir().join(format!("wspushd-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, content: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path.to_str().unwrap().to_string()
        };
        let secret = write("secret", b"0123456789abcdef0123456789abcdef\n");
        let token = write("token", b"admin-token-16-bytes\r\n");
        let short = write("short", b"0123456789abcdef0123456789abcde\n");
        let options = run(&["--jwt-secret-file", &secret, "--admin-token-file", &token]).unwrap();
        assert_eq!(options.config.jwt_hs256_secret.unwrap().expose(), b"0123456789abcdef0123456789abcdef");
        assert_eq!(options.admin_token.unwrap(), b"admin-token-16-bytes");
        assert!(run(&["--jwt-secret-file", &short]).unwrap_err().contains("at least 32"));
        assert!(run(&["--admin-token-file", &short]).is_ok(), "31 bytes is plenty for an admin token");
        assert!(run(&["--admin-token-file", &write("tiny", b"abc")]).unwrap_err().contains("at least 16"));
        assert!(run(&["--jwt-secret-file", "/nonexistent/x"]).unwrap_err().contains("cannot read"));
        assert!(run(&["--demo", "--jwt-secret-file", &secret]).unwrap_err().contains("exclude"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn per_ip_limits_can_be_turned_off() {
        let options = run(&["--max-connections-per-ip", "0", "--max-handshakes-per-ip-per-sec=0"]).unwrap();
        assert_eq!((options.config.max_connections_per_ip, options.config.max_handshakes_per_ip_per_sec), (0, 0));
        assert_eq!(
            run(&["--max-handshakes-per-ip-per-sec", "-1"]).unwrap_err(),
            "--max-handshakes-per-ip-per-sec takes an integer from 0 to 4294967295, got '-1'"
        );
    }

    #[test]
    fn values_are_taken_in_both_spellings() {
        let options = run(&[
            "--demo",
            "--listen=0.0.0.0:9000",
            "--threads",
            "3",
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin=https://b.example",
            "--slow-consumer",
            "drop",
            "--ping-interval-ms",
            "200",
            "--idle-timeout-ms=500",
        ])
        .unwrap();
        assert!(options.demo);
        assert_eq!(options.config.listen, "0.0.0.0:9000");
        assert_eq!(options.config.threads, 3);
        assert_eq!(options.config.allowed_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(options.config.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(options.config.ping_interval, Duration::from_millis(200));
        assert_eq!(options.config.idle_timeout, Duration::from_millis(500));
        // A flag given twice takes its last value.
        assert_eq!(run(&["--threads", "3", "--threads", "4"]).unwrap().config.threads, 4);
    }

    #[test]
    fn proxy_protocol_takes_trusted_networks() {
        let options = run(&["--proxy-protocol", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy=::1"]).unwrap();
        assert!(options.config.proxy_protocol);
        let trusted: Vec<String> = options.config.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(trusted, ["10.0.0.0/8", "::1/128"]);
        assert!(run(&["--proxy-protocol"]).unwrap_err().contains("--trusted-proxy"));
        assert!(run(&["--trusted-proxy", "10.0.0.1"]).unwrap_err().contains("--proxy-protocol"));
        assert!(run(&["--proxy-protocol", "--trusted-proxy", "10.0.0.0/33"]).unwrap_err().contains("'10.0.0.0/33'"));
        assert!(run(&["--proxy-protocol=yes"]).unwrap_err().contains("no value"));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(run(&["--bogus"]).unwrap_err(), "unknown option '--bogus'");
        assert_eq!(run(&["--threads"]).unwrap_err(), "option --threads needs a value");
        assert_eq!(run(&["--threads", "x"]).unwrap_err(), "--threads takes a non-negative integer, got 'x'");
        assert_eq!(
            run(&["--slow-consumer", "maybe"]).unwrap_err(),
            "--slow-consumer must be 'close' or 'drop', got 'maybe'"
        );
        assert_eq!(run(&["--demo=yes"]).unwrap_err(), "option --demo takes no value");
        assert!(run(&["--ping-interval-ms", "1000", "--idle-timeout-ms", "1000"]).unwrap_err().contains("greater"));
        assert!(run(&["--listen", "127.0.0.1:9", "--admin-listen", "127.0.0.1:9"]).unwrap_err().contains("differ"));
        assert!(run(&["stray"]).unwrap_err().contains("stray"));
        assert!(run(&["--admin-allowed-host", "admin.example:8081"]).unwrap_err().contains("without port"));
        assert!(run(&["--path", "ws"]).unwrap_err().contains("must start with '/'"));
        assert!(run(&["--allowed-origin", "https://a.example/"]).unwrap_err().contains("no path"));
        assert!(run(&["--idle-timeout-ms", "1.5"]).unwrap_err().contains("milliseconds, got '1.5'"));
    }

    #[test]
    fn allowed_admin_hosts_are_collected_normalized() {
        let options = run(&["--admin-allowed-host", "Push-Admin.Internal.", "--admin-allowed-host=b.example"]).unwrap();
        assert_eq!(options.admin_allowed_hosts, ["push-admin.internal", "b.example"]);
    }

    #[test]
    fn echo_needs_every_message_to_fit_in_the_send_queue() {
        let sizes = |message: &str, queue: &str| {
            run(&["--echo", "--max-message-size", message, "--max-queue-bytes", queue]).map(|_| ())
        };
        // Header sizes: 2 bytes up to 125, 4 up to 65535, 10 beyond.
        assert_eq!(sizes("123", "125"), Ok(()));
        assert!(sizes("124", "125").unwrap_err().contains("at least 126"));
        assert_eq!(sizes("65535", "65539"), Ok(()));
        assert!(sizes("65535", "65538").is_err());
        assert_eq!(sizes("65536", "65546"), Ok(()));
        assert!(sizes("65536", "65545").unwrap_err().contains("a 65546-byte frame"));
        assert!(sizes(&usize::MAX.to_string(), &usize::MAX.to_string()).is_err(), "no overflow");
        // Without --echo nothing is sent back, so any combination goes.
        assert!(run(&["--max-message-size", "2048", "--max-queue-bytes", "1024"]).is_ok());
        assert!(run(&[]).is_ok_and(|o| !o.echo) && run(&["--echo"]).is_ok(), "the defaults fit");
    }
}
