//! The admin API's defences against hostile clients, kept apart from the hand-written HTTP server
//! so that they carry over to another one: which requests a browser page may have sent (none may
//! run) and which Host names are ours (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a request is refused: its status and a one-line reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const BROWSER_ORIGIN: Refusal =
    Refusal { status: 403, reason: "requests with an Origin header (sent by browsers) are refused by the admin API" };
const CROSS_SITE: Refusal =
    Refusal { status: 403, reason: "cross-site requests (Sec-Fetch-Site) are refused by the admin API" };
const MISSING_HOST: Refusal = Refusal { status: 400, reason: "missing Host header" };
const DUPLICATE_HOST: Refusal = Refusal { status: 400, reason: "more than one Host header" };
const INVALID_HOST: Refusal = Refusal { status: 400, reason: "invalid Host header" };
const FOREIGN_HOST: Refusal = Refusal {
    status: 421,
    reason: "unknown Host: the admin API answers to IP addresses, localhost and --admin-allowed-host names",
};

/// Host names the admin API answers to besides IP addresses and `localhost`, lowercase and without
/// a trailing dot.
#[derive(Debug, Default, Clone)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// From names already checked with [`host_name`].
    pub fn new(names: Vec<String>) -> AllowedHosts {
        AllowedHosts { names }
    }

    fn allows(&self, host: &Host) -> bool {
        match host {
            // DNS rebinding needs a name the attacker's DNS answers for; a page whose URL holds an
            // address talks to that address, so an address in Host is never a rebound name.
            Host::Ip(_) => true,
            Host::Name(name) => name == "localhost" || self.names.iter().any(|allowed| allowed == name),
        }
    }
}

/// Decides from a request's headers whether it may run. Refused: anything a browser page could
/// have sent from another origin (an `Origin` header, which browsers add to cross-origin and to
/// every POST request, whatever its value since no page of ours calls the API; a `Sec-Fetch-Site`
/// other than `none` or `same-origin`), and a Host that is not ours (DNS rebinding), missing
/// (HTTP/1.1 requires it) or malformed. Header names are matched without regard to case.
pub fn check_request_source<'h>(
    http_1_1: bool,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    allowed: &AllowedHosts,
) -> Result<(), Refusal> {
    let mut origin = false;
    let mut cross_site = false;
    let mut hosts: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case("origin") {
            origin = true;
        } else if name.eq_ignore_ascii_case("sec-fetch-site") {
            cross_site |= !(value.eq_ignore_ascii_case(b"none") || value.eq_ignore_ascii_case(b"same-origin"));
        } else if name.eq_ignore_ascii_case("host") {
            hosts.push(value);
        }
    }
    if origin {
        return Err(BROWSER_ORIGIN);
    }
    if cross_site {
        return Err(CROSS_SITE);
    }
    match hosts[..] {
        [] if http_1_1 => Err(MISSING_HOST),
        [] => Ok(()),
        [host] => match parse_host(host) {
            Some(host) if allowed.allows(&host) => Ok(()),
            Some(_) => Err(FOREIGN_HOST),
            None => Err(INVALID_HOST),
        },
        _ => Err(DUPLICATE_HOST),
    }
}

/// The host part of a Host header.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Parses `host[:port]` (RFC 9110 section 7.2); the port is not checked against ours (a tunnel or
/// a forwarded port may name another). `None` when malformed.
fn parse_host(value: &[u8]) -> Option<Host> {
    let value = std::str::from_utf8(value).ok()?;
    let (host, port) = if let Some(bracketed) = value.strip_prefix('[') {
        let (address, rest) = bracketed.split_once(']')?;
        let port = if rest.is_empty() { "" } else { rest.strip_prefix(':')? };
        (Host::Ip(IpAddr::V6(address.parse::<Ipv6Addr>().ok()?)), port)
    } else {
        let (host, port) = value.split_once(':').unwrap_or((value, ""));
        let host = match host.parse::<Ipv4Addr>() {
            Ok(address) => Host::Ip(IpAddr::V4(address)),
            Err(_) => Host::Name(host_name(host)?),
        };
        (host, port)
    };
    port.bytes().all(|b| b.is_ascii_digit()).then_some(host)
}

/// A DNS name as compared: lowercase, without the trailing dot of a fully qualified name. `None`
/// unless it is made of letters, digits, '-', '_' and dots. Also checks --admin-allowed-host.
pub fn host_name(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.split('.').any(str::is_empty);
    valid.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[(&str, &str)]) -> Result<(), Refusal> {
        let allowed = AllowedHosts::new(vec!["push-admin.internal".into()]);
        check_request_source(true, headers.iter().map(|(name, value)| (*name, value.as_bytes())), &allowed)
    }

    #[test]
    fn requests_a_browser_page_could_send_are_refused() {
        let host = ("Host", "127.0.0.1:8081");
        for refused in [
            [host, ("Origin", "https://evil.example")],
            [host, ("origin", "null")],
            [host, ("Origin", "http://127.0.0.1:8081")],
            [host, ("Sec-Fetch-Site", "cross-site")],
            [host, ("sec-fetch-site", "same-site")],
            [host, ("Sec-Fetch-Site", "")],
        ] {
            assert_eq!(check(&refused).map_err(|r| r.status), Err(403), "{refused:?}");
        }
        assert_eq!(check(&[host]), Ok(()));
        assert_eq!(check(&[host, ("Sec-Fetch-Site", "none")]), Ok(()));
        assert_eq!(check(&[host, ("Sec-Fetch-Site", "Same-Origin")]), Ok(()));
        // One refused value among several is enough.
        assert!(check(&[host, ("Sec-Fetch-Site", "none"), ("Sec-Fetch-Site", "cross-site")]).is_err());
        // A browser request names a foreign host too; the browser check speaks first.
        assert_eq!(check(&[("Host", "evil.example"), ("Origin", "https://evil.example")]), Err(BROWSER_ORIGIN));
    }

    #[test]
    fn only_our_host_names_are_served() {
        for allowed in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "10.0.0.7:8081",
            "[::1]:8081",
            "[::1]",
            "[2001:db8::1]:80",
            "localhost",
            "LOCALHOST:8081",
            "localhost.:8081",
            "localhost:",
            "push-admin.internal:9000",
            "Push-Admin.Internal",
        ] {
            assert_eq!(check(&[("Host", allowed)]), Ok(()), "{allowed}");
        }
        for foreign in
            ["evil.example", "rebind.evil.example:8081", "localhost.evil.example", "127.0.0.1.nip.io", "internal"]
        {
            assert_eq!(check(&[("Host", foreign)]), Err(FOREIGN_HOST), "{foreign}");
        }
        for malformed in
            ["", "a b", "me@localhost", "localhost:80a", "[::1", "[::1]x", "[evil.example]", "a..b", "é.example"]
        {
            assert_eq!(check(&[("Host", malformed)]), Err(INVALID_HOST), "{malformed:?}");
        }
        assert_eq!(check(&[]), Err(MISSING_HOST));
        assert_eq!(check(&[("Host", "localhost"), ("host", "localhost")]), Err(DUPLICATE_HOST));
        // HTTP/1.0 does not require Host, but one that is there is checked.
        assert_eq!(check_request_source(false, [], &AllowedHosts::default()), Ok(()));
        let foreign = [("Host", b"evil.example".as_slice())];
        assert_eq!(check_request_source(false, foreign, &AllowedHosts::default()), Err(FOREIGN_HOST));
    }

    #[test]
    fn allowed_host_flag_values_are_names() {
        assert_eq!(host_name("Push-Admin.Internal.").as_deref(), Some("push-admin.internal"));
        for bad in ["", ".", "a:80", "a b", "a/b", "a..b", "[::1]"] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }
}
