//! RESP2, the Redis wire protocol: commands out (arrays of bulk strings), replies in, parsed
//! incrementally from a buffer that may hold half a reply. Replies come from the Redis server we
//! were pointed at; a malformed one is a protocol error that drops the connection, never a panic.

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(Vec<u8>),
    /// `-ERR ...`
    Error(Vec<u8>),
    Int(i64),
    /// `$-1` is `Bulk(None)`.
    Bulk(Option<Vec<u8>>),
    /// `*-1` is `Array(None)`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub(crate) fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(bytes)) | Reply::Status(bytes) => Some(bytes),
            _ => None,
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Bulk(Some(bytes)) => std::str::from_utf8(bytes).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    pub(crate) fn into_array(self) -> Option<Vec<Reply>> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }
}

/// The reply stream is not RESP (or nests or sizes beyond sanity): drop the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError;

/// Largest bulk string or array accepted (Redis's own bulk limit is 512 MB).
const MAX_LEN: usize = 512 * 1024 * 1024;
const MAX_DEPTH: usize = 8;

/// Appends a command (an array of bulk strings) to `out`.
pub(crate) fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    push_header(out, b'*', args.len());
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Parses one reply from the front of `buf`: `Ok(None)` when it is not all there yet, else the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut at = 0;
    match parse_at(buf, &mut at, 0)? {
        Some(reply) => Ok(Some((reply, at))),
        None => Ok(None),
    }
}

fn parse_at(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Reply>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError);
    }
    let Some(line) = line_at(buf, *at) else { return Ok(None) };
    let (&kind, text) = line.split_first().ok_or(ProtocolError)?;
    let next = *at + line.len() + 2;
    let reply = match kind {
        b'+' => Reply::Status(text.to_vec()),
        b'-' => Reply::Error(text.to_vec()),
        b':' => Reply::Int(int(text)?),
        b'$' => {
            let Some(len) = length(text)? else {
                *at = next;
                return Ok(Some(Reply::Bulk(None)));
            };
            let end = next.checked_add(len).ok_or(ProtocolError)?;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError);
            }
            *at = end + 2;
            return Ok(Some(Reply::Bulk(Some(buf[next..end].to_vec()))));
        }
        b'*' => {
            let Some(len) = length(text)? else {
                *at = next;
                return Ok(Some(Reply::Array(None)));
            };
            let mut cursor = next;
            // Each element takes at least 3 bytes: never reserve more than the buffer could hold.
            let mut items = Vec::with_capacity(len.min(buf.len() / 3));
            for _ in 0..len {
                match parse_at(buf, &mut cursor, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            *at = cursor;
            return Ok(Some(Reply::Array(Some(items))));
        }
        _ => return Err(ProtocolError),
    };
    *at = next;
    Ok(Some(reply))
}

/// The line starting at `from`, without its CRLF; `None` until the CRLF has arrived.
fn line_at(buf: &[u8], from: usize) -> Option<&[u8]> {
    let rest = buf.get(from..)?;
    let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
    Some(&rest[..end])
}

fn int(text: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text).ok().and_then(|text| text.parse().ok()).ok_or(ProtocolError)
}

/// A bulk or array length: `None` for -1 (null).
fn length(text: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match int(text)? {
        -1 => Ok(None),
        n if (0..=MAX_LEN as i64).contains(&n) => Ok(Some(n as usize)),
        _ => Err(ProtocolError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_type_parses_and_reports_its_length() {
        let wire = b"*5\r\n+OK\r\n-ERR no\r\n:-42\r\n$3\r\na\r\n\r\n$-1\r\n:7\r\n";
        let (reply, used) = parse(wire).unwrap().unwrap();
        assert_eq!(used, wire.len() - 4);
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Status(b"OK".to_vec()),
                Reply::Error(b"ERR no".to_vec()),
                Reply::Int(-42),
                Reply::Bulk(Some(b"a\r\n".to_vec())),
                Reply::Bulk(None),
            ]))
        );
        assert_eq!(parse(&wire[used..]).unwrap(), Some((Reply::Int(7), 4)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Reply::Array(None), 5)));
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete_not_an_error() {
        let wire = b"*2\r\n$5\r\nhello\r\n*1\r\n:1\r\n";
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse(wire).unwrap().is_some());
    }

    #[test]
    fn garbage_and_absurd_sizes_are_protocol_errors() {
        for wire in [&b"?x\r\n"[..], b"$abc\r\n", b"$-2\r\n", b"*99999999999\r\n", b"$1\r\nab\r\n", b"\r\n"] {
            assert_eq!(parse(wire), Err(ProtocolError), "{wire:?}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert_eq!(parse(deep.as_bytes()), Err(ProtocolError));
    }
}
