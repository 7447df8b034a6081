//! The PROXY protocol header parser (v1 text, v2 binary) that every connection from a trusted
//! load balancer goes through before its HTTP request.
//!
//! Input: the bytes a balancer (or anyone on a trusted address) sends first. Checks: no panic;
//! an accepted header is 0 < len <= input and within the v1/v2 caps; the verdict on exactly
//! the header's bytes is the same (what follows cannot change it) and every shorter prefix is
//! Incomplete (the connection waits rather than deciding early); an Incomplete input minus its
//! last byte is still Incomplete; a v1 line ends with CRLF and the source it reports is the
//! line's second and fourth fields; a v2 IPv4/IPv6 source is the bytes at the spec's offsets.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use wspush::internals::{parse_proxy_header, ProxyHeader, PROXY_V1_MAX_LEN, PROXY_V2_MAX_LEN};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|data: &[u8]| {
    match parse_proxy_header(data) {
        ProxyHeader::Header { len, source } => {
            assert!(len > 0 && len <= data.len(), "len {len} of {}", data.len());
            let header = &data[..len];
            assert_eq!(parse_proxy_header(header), ProxyHeader::Header { len, source });
            for end in [0, len / 2, len - 1] {
                assert_eq!(parse_proxy_header(&header[..end]), ProxyHeader::Incomplete, "prefix of {end}");
            }
            if header.starts_with(V2_SIGNATURE) {
                assert!(len <= PROXY_V2_MAX_LEN);
                check_v2(header, source);
            } else {
                assert!(header.starts_with(b"PROXY ") && header.ends_with(b"\r\n") && len <= PROXY_V1_MAX_LEN);
                check_v1(header, source);
            }
        }
        ProxyHeader::Incomplete => {
            if let Some((_, shorter)) = data.split_last() {
                assert_eq!(parse_proxy_header(shorter), ProxyHeader::Incomplete);
            }
        }
        ProxyHeader::Invalid => {}
    }
});

fn check_v1(header: &[u8], source: Option<SocketAddr>) {
    let line = std::str::from_utf8(&header[6..header.len() - 2]).expect("an accepted v1 line is text");
    let fields: Vec<&str> = line.split(' ').collect();
    match fields[0] {
        "UNKNOWN" => assert_eq!(source, None),
        "TCP4" | "TCP6" => {
            assert_eq!(fields.len(), 5, "{line:?}");
            let source = source.expect("TCP4/TCP6 carry a source");
            assert_eq!(fields[1].parse::<IpAddr>(), Ok(source.ip()));
            assert_eq!(fields[3].parse::<u16>(), Ok(source.port()));
            assert_eq!(source.is_ipv4(), fields[0] == "TCP4");
        }
        other => panic!("accepted v1 protocol {other:?}"),
    }
}

fn check_v2(header: &[u8], source: Option<SocketAddr>) {
    let (command, family, transport) = (header[12] & 0x0f, header[13] >> 4, header[13] & 0x0f);
    assert_eq!(header[12] >> 4, 2, "version");
    assert_eq!(usize::from(u16::from_be_bytes([header[14], header[15]])) + 16, header.len());
    let expected = match (command, family, transport) {
        (1, 1, 1) => {
            let ip = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([header[24], header[25]])))
        }
        (1, 2, 1) => {
            let octets: [u8; 16] = header[16..32].try_into().unwrap();
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([header[48], header[49]])))
        }
        _ => None,
    };
    assert_eq!(source, expected);
}
