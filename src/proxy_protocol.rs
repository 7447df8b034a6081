//! The PROXY protocol, v1 (text) and v2 (binary), as HAProxy's proxy-protocol.txt specifies it:
//! a load balancer in front of the server opens each connection with a header that carries the
//! client's real address. Behind a balancer every socket's peer is the balancer, so without it
//! per-address limits would throttle everyone together and `on_upgrade` would see one address.
//!
//! Only sources listed in `Config::trusted_proxies` may send a header, and when
//! `Config::proxy_protocol` is on they must: the connection starts their connections in
//! `State::ProxyHeader`, counts them per address only once the header is parsed (under the
//! client's address), and answers 400 when the header is missing or malformed. Anyone else is
//! served directly; a header from them is not a valid HTTP request and gets 400 too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// What the start of a connection's input holds. (`pub` only for the fuzz target, through
/// `internals`; the module is private.)
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header: wait for more bytes.
    Incomplete,
    /// A complete header of `len` bytes. `source` is the client's address, `None` when the header
    /// carries none (v2 LOCAL, as balancers' health checks send; v1 UNKNOWN; v2 UNSPEC or UNIX).
    Header { len: usize, source: Option<SocketAddr> },
    /// Not a PROXY header, or a malformed one.
    Invalid,
}

const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 line, CRLF included (the spec's worst case, "PROXY UNKNOWN" with two IPv6
/// addresses and ports).
pub(crate) const V1_MAX_LEN: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v2 header accepted, TLVs included. The format allows 16 + 65,535 bytes; balancers
/// send addresses and a few short TLVs (IDs, TLS facts), and a connection holds its header in
/// memory until it is complete.
pub(crate) const V2_MAX_LEN: usize = 4096;

/// Parses the PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if starts_like(buf, &V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts_like(buf, V1_PREFIX) {
        parse_v1(buf)
    } else {
        Parsed::Invalid
    }
}

/// Whether `buf` starts with `prefix`, or is a start of it (more bytes may make it so).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n", "PROXY TCP6 ...", "PROXY UNKNOWN ...\r\n".
fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if buf.len() >= V1_MAX_LEN { Parsed::Invalid } else { Parsed::Incomplete };
    };
    let len = end + 2;
    let Some(line) = buf.get(V1_PREFIX.len()..end).and_then(|line| std::str::from_utf8(line).ok()) else {
        return Parsed::Invalid;
    };
    let mut fields = line.split(' ');
    let v4 = match fields.next() {
        // The rest of an UNKNOWN line is to be ignored: the balancer could not tell.
        Some("UNKNOWN") => return Parsed::Header { len, source: None },
        Some("TCP4") => true,
        Some("TCP6") => false,
        _ => return Parsed::Invalid,
    };
    let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Parsed::Invalid;
    };
    let address = |text: &str| -> Option<IpAddr> {
        if v4 {
            Ipv4Addr::from_str(text).ok().map(IpAddr::V4)
        } else {
            Ipv6Addr::from_str(text).ok().map(IpAddr::V6)
        }
    };
    // Digits only: u16's parser would also take a leading '+'.
    let port = |text: &str| -> Option<u16> {
        (!text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match (address(source), address(destination), port(source_port), port(destination_port)) {
        (Some(ip), Some(_), Some(port), Some(_)) => Parsed::Header { len, source: Some(SocketAddr::new(ip, port)) },
        _ => Parsed::Invalid,
    }
}

/// The 12-byte signature, version and command, family and transport, a big-endian length, then
/// that many bytes: addresses first, TLVs after them (skipped).
fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    if version != 2 || command > 1 || family > 3 || transport > 2 {
        return Parsed::Invalid;
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_LEN {
        return Parsed::Invalid;
    }
    let Some(body) = buf.get(16..len) else { return Parsed::Incomplete };
    const LOCAL: u8 = 0;
    const STREAM: u8 = 1;
    const DGRAM: u8 = 2;
    if command == LOCAL {
        // The balancer's own connection (health check): the socket's address is the truth.
        return Parsed::Header { len, source: None };
    }
    if transport == DGRAM {
        return Parsed::Invalid; // a datagram flow cannot arrive on a TCP listener
    }
    let source = match (family, transport) {
        (1, STREAM) => {
            let Some(a) = body.get(..12) else { return Parsed::Invalid };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        (2, STREAM) => {
            let Some(a) = body.get(..36) else { return Parsed::Invalid };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([a[32], a[33]])))
        }
        (3, _) if body.len() < 216 => return Parsed::Invalid,
        // UNSPEC family or transport, or UNIX sockets: no IP address to use.
        _ => None,
    };
    Parsed::Header { len, source }
}

/// A source allowed to send PROXY headers: one address ("127.0.0.1", "::1") or a network in
/// CIDR notation ("10.0.0.0/8", "fd00::/8"). IPv4-mapped IPv6 peers ("::ffff:10.1.2.3", as a
/// dual-stack listener sees IPv4 clients) match the IPv4 entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy {
    network: IpAddr,
    prefix: u8,
}

impl TrustedProxy {
    /// Whether `peer` is in this network.
    pub fn contains(&self, peer: IpAddr) -> bool {
        match (self.network, unmapped(peer)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// Why a trusted-proxy entry did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidTrustedProxy;

impl fmt::Display for InvalidTrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected an IP address or a network like 10.0.0.0/8 or fd00::/8")
    }
}

impl std::error::Error for InvalidTrustedProxy {}

impl FromStr for TrustedProxy {
    type Err = InvalidTrustedProxy;

    /// Host bits below the prefix are ignored: "10.1.2.3/8" is 10.0.0.0/8.
    fn from_str(text: &str) -> Result<TrustedProxy, InvalidTrustedProxy> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let ip = unmapped(IpAddr::from_str(address).map_err(|_| InvalidTrustedProxy)?);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or(InvalidTrustedProxy)?
            }
            Some(_) => return Err(InvalidTrustedProxy),
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, prefix)),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, prefix)),
        };
        Ok(TrustedProxy { network, prefix })
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize, source: &str) -> Parsed {
        Parsed::Header { len, source: Some(source.parse().unwrap()) }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown_from_the_spec() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(line), header(47, "192.168.0.1:56324"));
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 80\r\n";
        assert_eq!(parse(line), header(line.len(), "[2001:db8::1]:65535"));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Header { len: 15, source: None });
        let unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(parse(unknown), Parsed::Header { len: unknown.len(), source: None });
    }

    #[test]
    fn v1_worst_case_of_107_bytes_is_accepted_and_longer_is_refused() {
        let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {ip} {ip} 65535 65535\r\n");
        assert_eq!(line.len(), 107);
        assert_eq!(parse(line.as_bytes()), Parsed::Header { len: 107, source: None });
        let line = format!("PROXY UNKNOWN {ip} {ip} 65535 655355\r\n");
        assert_eq!(parse(line.as_bytes()), Parsed::Invalid);
        assert_eq!(parse(&line.as_bytes()[..107]), Parsed::Invalid, "107 bytes and still no CRLF");
    }

    #[test]
    fn v1_prefixes_wait_for_more() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Parsed::Incomplete, "{end} bytes");
        }
        // A bare LF does not end the line: it waits for CRLF, up to the 107-byte cap.
        assert_eq!(parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n"), Parsed::Incomplete);
    }

    #[test]
    fn v1_malformed_lines_are_invalid() {
        for bad in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 7\r\n",
            b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP6 192.168.0.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +5632 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
            b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.000.1 192.168.0.11 56324 443\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY tcp4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY \xff\r\n",
            b"PROXY \r\n",
            b"PROXY\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"proxy TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ] {
            assert_eq!(parse(bad), Parsed::Invalid, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([ver_cmd, fam]);
        header.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        header.extend(body);
        header
    }

    const INET: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb];

    #[test]
    fn v2_proxy_inet_and_inet6_give_the_source_and_skip_tlvs() {
        let mut input = v2(0x21, 0x11, &INET);
        input.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&input), header(28, "192.0.2.1:56324"));

        let mut inet6 = [0u8; 36];
        inet6[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        inet6[16..32].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        inet6[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(parse(&v2(0x21, 0x21, &inet6)), header(52, "[2001:db8::7]:443"));

        // TLVs after the addresses (here PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY) count in the length.
        let mut with_tlvs = INET.to_vec();
        with_tlvs.extend([0x01, 0x00, 0x02, b'h', b'2', 0x02, 0x00, 0x03, b'a', b'.', b'b']);
        assert_eq!(parse(&v2(0x21, 0x11, &with_tlvs)), header(16 + 23, "192.0.2.1:56324"));
    }

    #[test]
    fn v2_local_unspec_and_unix_carry_no_address() {
        // LOCAL: health checks; the address block, if any, is ignored.
        assert_eq!(parse(&v2(0x20, 0x00, &[])), Parsed::Header { len: 16, source: None });
        assert_eq!(parse(&v2(0x20, 0x11, &INET)), Parsed::Header { len: 28, source: None });
        assert_eq!(parse(&v2(0x21, 0x00, &[])), Parsed::Header { len: 16, source: None });
        assert_eq!(parse(&v2(0x21, 0x31, &[0u8; 216])), Parsed::Header { len: 232, source: None });
    }

    #[test]
    fn v2_prefixes_wait_for_more() {
        let full = v2(0x21, 0x11, &INET);
        for end in 0..full.len() {
            assert_eq!(parse(&full[..end]), Parsed::Incomplete, "{end} bytes");
        }
    }

    #[test]
    fn v2_malformed_headers_are_invalid() {
        let mut bad_signature = v2(0x21, 0x11, &INET);
        bad_signature[11] = b'X';
        for (what, bad) in [
            ("signature", bad_signature),
            ("version 1", v2(0x11, 0x11, &INET)),
            ("version 3", v2(0x31, 0x11, &INET)),
            ("command 2", v2(0x22, 0x11, &INET)),
            ("family 4", v2(0x21, 0x41, &INET)),
            ("transport 3", v2(0x21, 0x13, &INET)),
            ("datagram", v2(0x21, 0x12, &INET)),
            ("inet too short", v2(0x21, 0x11, &INET[..11])),
            ("inet6 too short", v2(0x21, 0x21, &[0u8; 35])),
            ("unix too short", v2(0x21, 0x31, &[0u8; 215])),
            ("over the cap", v2(0x21, 0x11, &[0u8; V2_MAX_LEN - 15])),
        ] {
            assert_eq!(parse(&bad), Parsed::Invalid, "{what}");
        }
        // The cap itself is accepted.
        assert_eq!(parse(&v2(0x21, 0x11, &[0u8; V2_MAX_LEN - 16])), header(V2_MAX_LEN, "0.0.0.0:0"));
        // A length field past the cap is refused before its bytes arrive.
        let mut declared = v2(0x21, 0x11, &INET);
        declared[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&declared), Parsed::Invalid);
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_networks() {
        let net = |text: &str| text.parse::<TrustedProxy>();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let private = net("10.0.0.0/8").unwrap();
        assert!(private.contains(ip("10.255.0.1")) && !private.contains(ip("11.0.0.1")));
        assert!(private.contains(ip("::ffff:10.1.2.3")), "IPv4 clients of a dual-stack listener");
        assert!(!private.contains(ip("::1")));
        let one = net("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert_eq!(one.to_string(), "127.0.0.1/32");
        let v6 = net("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")) && !v6.contains(ip("10.0.0.1")));
        assert_eq!(net("10.1.2.3/8").unwrap(), private, "host bits ignored");
        assert!(net("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(net("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(net("::1").unwrap().to_string(), "::1/128");
        for bad in
            ["", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "host", "[::1]", "10.0.0.0/8/8"]
        {
            assert_eq!(net(bad), Err(InvalidTrustedProxy), "{bad:?}");
        }
    }
}
