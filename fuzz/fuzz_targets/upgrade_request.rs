//! Arbitrary bytes as the start of an HTTP request on a fresh connection: the upgrade parser must
//! never panic (nor reading what it asks of wspush.v1), and an accepted head must be
//! self-consistent. The same bytes as a resume position must read back as written.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wspush::internals::parse_upgrade;
use wspush::{Config, Position};

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        // The default, and one with an Origin allow-list (the only config-dependent branch left).
        let with_origins = Config { allowed_origins: vec!["https://mail.example".into()], ..Config::default() };
        [Config::default(), with_origins]
    })
}

fuzz_target!(|data: &[u8]| {
    // A resume position (`since=EPOCH:OFFSET`) is read back exactly as it is written.
    if let Some(position) = std::str::from_utf8(data).ok().and_then(|text| text.parse::<Position>().ok()) {
        assert_eq!(position.to_string().parse::<Position>(), Ok(position));
    }
    for config in configs() {
        let Some(len) = parse_upgrade(data, config) else { continue };
        assert!(len > 0 && len <= data.len(), "head length {len} outside the {}-byte input", data.len());
        assert!(len <= config.max_header_bytes, "head of {len} bytes passed max_header_bytes");
        let head = &data[..len];
        // httparse takes LF or CRLF line ends, mixed too: the head ends "\n\n" or "\n\r\n".
        assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"), "head does not end with a blank line");
        // Bytes after the head (the client's first frames) must not change the decision...
        assert_eq!(parse_upgrade(head, config), Some(len), "trailing bytes changed the verdict");
        // ...and a head cut short is never an upgrade yet.
        assert_eq!(parse_upgrade(&head[..len - 1], config), None, "a truncated head was accepted");
        // Whatever the config, an upgrade accepted with an Origin allow-list is accepted without one.
        assert_eq!(parse_upgrade(data, &configs()[0]), Some(len));
    }
});
