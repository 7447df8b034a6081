//! Positions in a user's stream as a client sees them: `EPOCH:OFFSET`.

use std::fmt;

/// Which incarnation of a user's stream offsets count in. A new epoch starts whenever history
/// behind it may have been lost, so a client is never told "recovered" across a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epoch {
    /// A stream's random epoch, written as 16 hex digits.
    Stream(u64),
    /// The user has no stream: `store` names the store's incarnation, `losses` counts streams it
    /// had dropped by then. A stream created later without a loss in between continues from
    /// here (offset 0), so a client that joined before the user's first message can still
    /// resume. Written `n<store in hex>.<losses>`.
    NoStream { store: u64, losses: u64 },
}

/// A position in a user's stream: the epoch and the last offset (0 before the first message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Epoch::Stream(id) => write!(f, "{id:016x}"),
            Epoch::NoStream { store, losses } => write!(f, "n{store:016x}.{losses}"),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

fn hex_u64(text: &str) -> Option<u64> {
    (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u64::from_str_radix(text, 16).ok())?
}

fn decimal_u64(text: &str) -> Option<u64> {
    // No sign, no leading '+': exactly what Display writes.
    (!text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
}

impl std::str::FromStr for Epoch {
    type Err = ();
    fn from_str(text: &str) -> Result<Epoch, ()> {
        if let Some(rest) = text.strip_prefix('n') {
            let (store, losses) = rest.split_once('.').ok_or(())?;
            return Ok(Epoch::NoStream { store: hex_u64(store).ok_or(())?, losses: decimal_u64(losses).ok_or(())? });
        }
        hex_u64(text).map(Epoch::Stream).ok_or(())
    }
}

impl std::str::FromStr for Position {
    type Err = ();
    /// `EPOCH:OFFSET`, as in a resuming client's `since` parameter (already percent-decoded).
    fn from_str(text: &str) -> Result<Position, ()> {
        let (epoch, offset) = text.rsplit_once(':').ok_or(())?;
        Ok(Position { epoch: epoch.parse()?, offset: decimal_u64(offset).ok_or(())? })
    }
}

/// 64 random bits from the kernel (epochs must not repeat across restarts); falls back to a
/// randomly keyed hash of the time if getrandom(2) is unavailable.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for writes of its length; getrandom writes at most that many.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_what_they_write() {
        for position in [
            Position { epoch: Epoch::Stream(0x0123_4567_89ab_cdef), offset: 42 },
            Position { epoch: Epoch::Stream(u64::MAX), offset: u64::MAX },
            Position { epoch: Epoch::NoStream { store: 7, losses: 0 }, offset: 0 },
        ] {
            assert_eq!(position.to_string().parse::<Position>(), Ok(position));
        }
        assert_eq!(Position { epoch: Epoch::Stream(1), offset: 2 }.to_string(), "0000000000000001:2");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            ":",
            "0000000000000001",
            "0000000000000001:",
            "0000000000000001:-1",
            "0000000000000001:+1",
            "000000000000001:1",
            "00000000000000012:1",
            "000000000000000g:1",
            "0000000000000001:18446744073709551616",
            "n0000000000000001:0",
            "n0000000000000001.:0",
            "n0000000000000001.x:0",
            "x:1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }
}
