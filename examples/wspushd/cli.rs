//! Command-line options: a small hand-written parser (no argument-parsing crate), with errors that
//! name the option and the bad value.

use std::time::Duration;

use wspush::{Config, SlowConsumerPolicy};

use crate::guard;

pub const USAGE: &str = "\
wspushd: standalone WebSocket push daemon built on the wspush engine.

USAGE:
    wspushd --jwt-secret-file PATH [OPTIONS]
    wspushd --demo [OPTIONS]

Clients connect to ws://LISTEN/PATH. Your backend pushes to them through the admin HTTP API,
which is served on a separate address and must never be exposed publicly.

AUTHENTICATION (exactly one is required):
    --jwt-secret-file PATH         Authenticate upgrades with JSON Web Tokens signed with HS256
                                   using the secret in PATH (at least 32 bytes; one trailing
                                   newline is ignored). The token comes from an
                                   `Authorization: Bearer` header or the `token` query parameter
                                   (browsers); its `sub` claim is the user ID; `exp` is required.
                                   Anything else is answered 401 \"invalid token\".
    --jwt-leeway-ms MS             Clock skew allowed for `exp` and `nbf` [default: 30000]
    --demo                         Take the user ID from the `user` query parameter of the
                                   WebSocket URL, WITHOUT ANY AUTHENTICATION (development only),
                                   and serve a demo inbox page at GET / on the public port.

OPTIONS:
    --listen ADDR                  Public WebSocket address [default: 127.0.0.1:8080]
    --path PATH                    Request path accepting WebSocket upgrades [default: /ws]
    --admin-listen ADDR            Admin HTTP API address [default: 127.0.0.1:8081]
    --echo                         Send every client message back to its sender (same kind);
                                   for conformance and load tests. Every echo must fit in the
                                   send queue: --max-message-size plus its frame header (2, 4 or
                                   10 bytes) at most --max-queue-bytes, else a usage error
    --threads N                    I/O threads; 0 = one per core [default: 0]
    --max-connections N            Open + handshaking connections; beyond, 503 [default: 1000000]
    --max-connections-per-user N   Connections per user; 0 = no limit; beyond, 429 [default: 0]
    --max-handshakes-per-thread N  Upgrades in progress per I/O thread; beyond, that thread
                                   stops accepting until one completes (a connection storm
                                   waits in the kernel's backlog) [default: 1024]
    --max-connections-per-ip N     Connections per client IP address (IPv6: per /64); 0 = no
                                   limit; beyond, 429 [default: 1000]
    --max-handshakes-per-ip-per-sec N
                                   New connections per second per client IP address (IPv6: /64),
                                   in bursts of up to N; 0 = no limit; beyond, 429 [default: 100]
    --max-pending-handshakes-per-ip N
                                   Upgrades in progress per client IP address (IPv6: /64), so
                                   idle sockets from one address can't hold every handshake
                                   slot; 0 = no limit; beyond, 429 [default: 64]
    --max-message-size BYTES       Largest message a client may send; larger closes with 1009
                                   [default: 65536]
    --message-timeout-ms MS        Time a client has to finish a frame or fragmented message it
                                   has started; then 1008 [default: 5000]
    --max-partial-input-bytes BYTES
                                   Bytes all connections together may hold for incomplete
                                   frames and messages; the connection that would pass it is
                                   closed with 1013 [default: 268435456]
    --max-queue-bytes BYTES        Unsent bytes queued per connection before the slow-consumer
                                   policy applies [default: 1048576]
    --slow-consumer close|drop     close: close with 1008; drop: drop the message for that
                                   connection only [default: close]
    --ping-interval-ms MS          Ping a connection silent this long [default: 30000]
    --idle-timeout-ms MS           Close a connection silent this long [default: 75000]
    --handshake-timeout-ms MS      Time allowed from accept to completed upgrade [default: 10000]
    --drain-timeout-ms MS          On shutdown, time allowed to flush and close [default: 5000]
    --allowed-origin ORIGIN        Accept browser upgrades only from this Origin (repeatable;
                                   e.g. https://mail.example.com); default: any origin
    --proxy-protocol               Behind a load balancer: connections from a --trusted-proxy
                                   must open with a PROXY protocol header (v1 or v2; HAProxy
                                   send-proxy, nginx proxy_protocol, cloud TCP balancers), else
                                   400. Its client address is what per-IP limits count. Others
                                   are served directly; a PROXY header from them gets 400
    --trusted-proxy ADDR[/BITS]    A balancer address or network allowed to send PROXY headers
                                   (repeatable; e.g. 10.0.0.0/8, 127.0.0.1, fd00::/8); at least
                                   one is required with --proxy-protocol
    --admin-idle-timeout-ms MS     Close admin connections idle this long [default: 30000]
    --admin-token-file PATH        Require `Authorization: Bearer TOKEN` on every admin request,
                                   TOKEN being the content of PATH (at least 16 bytes; one
                                   trailing newline is ignored); others get 401
    --admin-allowed-host NAME      Also answer admin requests whose Host is NAME, any port
                                   (repeatable; e.g. push-admin.internal). Always answered: IP
                                   addresses, localhost, and the name in --admin-listen
    -h, --help                     Print this help
    -V, --version                  Print the version

ADMIN API (on --admin-listen; query values are URL-decoded: %XX, and '+' for space):
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
    Help,
    Version,
}

/// Parses the arguments after the program name. `Err` carries a one-line reason.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut options = Options {
        config: Config::default(),
        admin_listen: "127.0.0.1:8081".to_string(),
        demo: false,
        echo: false,
        admin_idle_timeout: Duration::from_secs(30),
        admin_token: None,
        admin_allowed_hosts: Vec::new(),
    };
    // Production defaults the library leaves off: one address cannot take the whole server.
    options.config.max_connections_per_ip = 1000;
    options.config.max_handshakes_per_ip_per_sec = 100;
    options.config.max_pending_handshakes_per_ip = 64;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both "--flag value" and "--flag=value".
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match inline_value.clone() {
                Some(value) => Ok(value),
                None => args.next().ok_or_else(|| format!("option {flag} needs a value")),
            }
        };
        let config = &mut options.config;
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--demo" | "--echo" | "--proxy-protocol" if inline_value.is_some() => {
                return Err(format!("option {flag} takes no value"))
            }
            "--proxy-protocol" => config.proxy_protocol = true,
            "--trusted-proxy" => {
                let network = value()?;
                let parsed = network.parse().map_err(|e| format!("--trusted-proxy: {e}, got '{network}'"))?;
                config.trusted_proxies.push(parsed);
            }
            "--demo" => options.demo = true,
            "--echo" => options.echo = true,
            "--listen" => config.listen = value()?,
            "--path" => {
                config.path = value()?;
                if !config.path.starts_with('/') || config.path.contains(['?', '#', ' ']) {
                    return Err(format!(
                        "--path must start with '/' and contain no '?', '#' or space, got '{}'",
                        config.path
                    ));
                }
            }
            "--admin-listen" => options.admin_listen = value()?,
            "--threads" => config.threads = number(&flag, &value()?)?,
            "--max-connections" => config.max_connections = number(&flag, &value()?)?,
            "--max-connections-per-user" => config.max_connections_per_user = number(&flag, &value()?)?,
            "--max-handshakes-per-thread" => config.max_handshakes_per_thread = number(&flag, &value()?)?,
            "--max-connections-per-ip" => config.max_connections_per_ip = number(&flag, &value()?)?,
            "--max-pending-handshakes-per-ip" => config.max_pending_handshakes_per_ip = number(&flag, &value()?)?,
            "--message-timeout-ms" => config.message_timeout = millis(&flag, &value()?)?,
            "--max-partial-input-bytes" => config.max_partial_input_bytes = number(&flag, &value()?)?,
            "--max-handshakes-per-ip-per-sec" => {
                let value = value()?;
                config.max_handshakes_per_ip_per_sec = value
                    .parse()
                    .map_err(|_| format!("{flag} takes an integer from 0 to 4294967295, got '{value}'"))?;
            }
            "--jwt-secret-file" => {
                let secret = secret_file(&flag, &value()?, wspush::JWT_MIN_SECRET_LEN)?;
                config.jwt_hs256_secret = Some(secret.into());
            }
            "--jwt-leeway-ms" => config.jwt_leeway = millis(&flag, &value()?)?,
            "--admin-token-file" => options.admin_token = Some(secret_file(&flag, &value()?, MIN_ADMIN_TOKEN_LEN)?),
            "--admin-allowed-host" => {
                let name = value()?;
                let checked = guard::host_name(&name).ok_or_else(|| {
                    format!("--admin-allowed-host takes a host name without port (any port is accepted), got '{name}'")
                })?;
                options.admin_allowed_hosts.push(checked);
            }
            "--max-message-size" => config.max_message_size = number(&flag, &value()?)?,
            "--max-queue-bytes" => config.max_queue_bytes = number(&flag, &value()?)?,
            "--slow-consumer" => {
                config.slow_consumer = match value()?.as_str() {
                    "close" => SlowConsumerPolicy::Close,
                    "drop" => SlowConsumerPolicy::Drop,
                    other => return Err(format!("--slow-consumer must be 'close' or 'drop', got '{other}'")),
                }
            }
            "--ping-interval-ms" => config.ping_interval = millis(&flag, &value()?)?,
            "--idle-timeout-ms" => config.idle_timeout = millis(&flag, &value()?)?,
            "--handshake-timeout-ms" => config.handshake_timeout = millis(&flag, &value()?)?,
            "--drain-timeout-ms" => config.drain_timeout = millis(&flag, &value()?)?,
            "--admin-idle-timeout-ms" => options.admin_idle_timeout = millis(&flag, &value()?)?,
            "--allowed-origin" => {
                let origin = value()?;
                if origin.is_empty() || origin.ends_with('/') {
                    return Err(format!(
                        "--allowed-origin takes an origin like https://mail.example.com (no path), got '{origin}'"
                    ));
                }
                config.allowed_origins.push(origin);
            }
            _ if arg.starts_with('-') => return Err(format!("unknown option '{flag}'")),
            _ => return Err(format!("unexpected argument '{arg}'")),
        }
    }
    check(&options)?;
    Ok(Command::Run(Box::new(options)))
}

/// Shortest admin token accepted: 16 bytes of a random token are 128 bits or less of guessing.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

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

fn number(flag: &str, value: &str) -> Result<usize, String> {
    value.parse::<usize>().map_err(|_| format!("{flag} takes a non-negative integer, got '{value}'"))
}

fn millis(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{flag} takes a whole number of milliseconds, got '{value}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(options) => Ok(*options),
            _ => Err("not a run".into()),
        }
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
        assert!(options.config.jwt_hs256_secret.is_none() && options.admin_token.is_none());
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
        assert!(run(&["--max-handshakes-per-ip-per-sec", "-1"]).unwrap_err().contains("'-1'"));
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
        assert!(run(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(run(&["--threads"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--threads", "x"]).unwrap_err().contains("'x'"));
        assert!(run(&["--slow-consumer", "maybe"]).unwrap_err().contains("maybe"));
        assert!(run(&["--demo=yes"]).unwrap_err().contains("no value"));
        assert!(run(&["--ping-interval-ms", "1000", "--idle-timeout-ms", "1000"]).unwrap_err().contains("greater"));
        assert!(run(&["--listen", "127.0.0.1:9", "--admin-listen", "127.0.0.1:9"]).unwrap_err().contains("differ"));
        assert!(run(&["stray"]).unwrap_err().contains("stray"));
        assert!(run(&["--admin-allowed-host", "admin.example:8081"]).unwrap_err().contains("without port"));
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
