//! Redis Cluster: which primary serves each of the 16,384 hash slots (from CLUSTER SLOTS), and
//! the slot of a key (CRC16 of its hash tag). With one Redis there is no table: everything goes
//! to shard 0.

use crate::redis::resp::Reply;

pub(super) const SLOTS: usize = 16384;

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the first `{` and
/// the next `}`, when not empty), else of the whole key, modulo 16,384.
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The primaries ("host:port") and, for every slot, the index of the one serving it; None if the
/// reply is not a CLUSTER SLOTS table covering every slot.
pub(super) fn parse_cluster_slots(reply: &Reply) -> Option<(Vec<String>, Box<[u16]>)> {
    let mut primaries: Vec<String> = Vec::new();
    let mut table = vec![u16::MAX; SLOTS].into_boxed_slice();
    for range in reply.as_array()? {
        let range = range.as_array()?;
        let (first, last) =
            (usize::try_from(range.first()?.as_int()?).ok()?, usize::try_from(range.get(1)?.as_int()?).ok()?);
        let primary = range.get(2)?.as_array()?;
        let host = std::str::from_utf8(primary.first()?.as_bytes()?).ok()?;
        let port = primary.get(1)?.as_int()?;
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let index = match primaries.iter().position(|known| *known == address) {
            Some(index) => index,
            None => {
                primaries.push(address);
                primaries.len() - 1
            }
        };
        for slot in table.get_mut(first..=last)? {
            *slot = u16::try_from(index).ok()?;
        }
    }
    table.iter().all(|&shard| shard != u16::MAX).then_some((primaries, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis() {
        // CRC16/XMODEM's check value, and slots Redis itself reports (CLUSTER KEYSLOT).
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot_of(b"wspush:{u:alice}:h"), 5797);
        assert_eq!(slot_of(b"wspush:{u:alice}:c"), slot_of(b"u:alice"));
        assert_eq!(slot_of(b"a{}b"), crc16(b"a{}b") % 16384, "an empty tag hashes the whole key");
    }

    #[test]
    fn a_cluster_slots_table_maps_every_slot_to_its_primary() {
        let node = |port: i64| Reply::Array(Some(vec![Reply::Bulk(Some(b"127.0.0.1".to_vec())), Reply::Int(port)]));
        let range = |a: i64, b: i64, port: i64| {
            Reply::Array(Some(vec![Reply::Int(a), Reply::Int(b), node(port), node(port + 1)]))
        };
        let reply = Reply::Array(Some(vec![range(0, 5460, 7000), range(5461, 10922, 7002), range(10923, 16383, 7000)]));
        let (primaries, table) = parse_cluster_slots(&reply).unwrap();
        assert_eq!(primaries, ["127.0.0.1:7000", "127.0.0.1:7002"]);
        assert_eq!((table[0], table[5461], table[16383]), (0, 1, 0));
        let partial = Reply::Array(Some(vec![range(0, 100, 7000)]));
        assert!(parse_cluster_slots(&partial).is_none(), "slots left uncovered");
    }
}
