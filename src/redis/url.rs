//! `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, the address form every Redis client takes.

/// Where Redis is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl {
    /// "host:port", resolved at each connection attempt (the address may move).
    pub(crate) address: String,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: u32,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: configurations end up in logs.
        write!(f, "redis://{}/{}", self.address, self.db)
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = &'static str;

    fn from_str(url: &str) -> Result<RedisUrl, &'static str> {
        const BAD: &str = "redis URL must look like redis://[[user]:password@]host[:port][/db]";
        let rest = url.strip_prefix("redis://").ok_or(BAD)?;
        let (authority, db) = match rest.split_once('/') {
            Some((authority, "")) => (authority, 0),
            Some((authority, db)) => (authority, db.parse().map_err(|_| BAD)?),
            None => (rest, 0),
        };
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((credentials, host_port)) => (Some(credentials), host_port),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = credentials.split_once(':').ok_or(BAD)?;
                let user = (!user.is_empty()).then(|| percent_decoded(user)).transpose()?;
                (user, Some(percent_decoded(password)?))
            }
        };
        if host_port.is_empty() || host_port.contains(['?', '#']) {
            return Err(BAD);
        }
        // HOST, HOST:PORT, [IPV6] or [IPV6]:PORT; a port is 1-65535.
        let (host, port) = match host_port.strip_prefix('[') {
            Some(bracketed) => {
                let (ip, rest) = bracketed.split_once(']').ok_or(BAD)?;
                (ip, if rest.is_empty() { "6379" } else { rest.strip_prefix(':').ok_or(BAD)? })
            }
            None => host_port.split_once(':').unwrap_or((host_port, "6379")),
        };
        let port: u16 = port.parse().ok().filter(|&port| port != 0).ok_or(BAD)?;
        if host.is_empty() {
            return Err(BAD);
        }
        let address = if host_port.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(RedisUrl { address, user, password, db })
    }
}

fn percent_decoded(text: &str) -> Result<String, &'static str> {
    const BAD: &str = "bad percent-encoding in the redis URL";
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3).ok_or(BAD)?).map_err(|_| BAD)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| BAD)?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (String, Option<String>, Option<String>, u32) {
        let url: RedisUrl = url.parse().unwrap();
        (url.address, url.user, url.password, url.db)
    }

    #[test]
    fn the_usual_forms_parse() {
        assert_eq!(parsed("redis://127.0.0.1:6380"), ("127.0.0.1:6380".into(), None, None, 0));
        assert_eq!(parsed("redis://cache"), ("cache:6379".into(), None, None, 0));
        assert_eq!(parsed("redis://cache/3"), ("cache:6379".into(), None, None, 3));
        assert_eq!(parsed("redis://:s%40cret@cache:1/2"), ("cache:1".into(), None, Some("s@cret".into()), 2));
        assert_eq!(
            parsed("redis://push:pw@[::1]:7000"),
            ("[::1]:7000".into(), Some("push".into()), Some("pw".into()), 0)
        );
        assert_eq!(parsed("redis://[::1]"), ("[::1]:6379".into(), None, None, 0));
    }

    #[test]
    fn malformed_urls_are_refused_and_passwords_never_printed() {
        for bad in [
            "127.0.0.1:6379",
            "redis://",
            "redis://h/x",
            "redis://user@h",
            "redis://:%zz@h",
            "redis://h?x=1",
            "redis://h:notaport",
            "redis://h:0",
            "redis://h:70000",
            "redis://::1:6379",
            "redis://[::1",
            "redis://:6379",
        ] {
            assert!(bad.parse::<RedisUrl>().is_err(), "{bad}");
        }
        let url: RedisUrl = "redis://:hunter2@h:1".parse().unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
